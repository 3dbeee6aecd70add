"""The interface every tokenizer offers, shaped like Megatron-LM's AbstractTokenizer."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

if TYPE_CHECKING:
    from tokenizers import Tokenizer


class AbstractTokenizer(ABC):
    """Text <-> token ids. Special-token ids are None where a tokenizer has no such token."""

    def __init__(self, name: str):
        self.name = name

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (the model pads its embedding; see
        TransformerConfig.pad_vocab)."""

    @property
    @abstractmethod
    def vocab(self) -> Dict[str, int]:
        ...

    @property
    @abstractmethod
    def inv_vocab(self) -> Dict[int, str]:
        ...

    @abstractmethod
    def tokenize(self, text: str) -> List[int]:
        ...

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        """Many texts at once; subclasses backed by Rust/C++ encode them in one call."""
        return [self.tokenize(text) for text in texts]

    @abstractmethod
    def detokenize(self, token_ids: Sequence[int]) -> str:
        ...

    # Special tokens. Megatron's datasets ask for these by role, not by string.
    cls: Optional[int] = None
    sep: Optional[int] = None
    pad: Optional[int] = None
    mask: Optional[int] = None
    bos: Optional[int] = None
    eos: Optional[int] = None
    eod: Optional[int] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"


class DictVocabTokenizer(AbstractTokenizer):
    """A tokenizer whose vocabulary is held as `_vocab` (token -> id) and `_inv_vocab` (id -> token)."""

    _vocab: Dict[str, int]
    _inv_vocab: Dict[int, str]

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def vocab(self) -> Dict[str, int]:
        return self._vocab

    @property
    def inv_vocab(self) -> Dict[int, str]:
        return self._inv_vocab


class RustBackedTokenizer(DictVocabTokenizer):
    """Encoding and decoding through a HuggingFace `tokenizers.Tokenizer` held as `_tokenizer`.

    `_add_special_tokens` says whether encoding applies the backend's post-processor (its
    own [CLS]/<s> template); decoding keeps special tokens.
    """

    _tokenizer: "Tokenizer"
    _add_special_tokens: bool = False

    @property
    def backend(self) -> "Tokenizer":
        return self._tokenizer

    def tokenize(self, text: str) -> List[int]:
        return self._tokenizer.encode(text, add_special_tokens=self._add_special_tokens).ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets, which we never
        # use: about 20 % less CPU on Chinese BERT text, same ids.
        encode = getattr(self._tokenizer, "encode_batch_fast", None) or self._tokenizer.encode_batch
        return [e.ids for e in encode(list(texts), add_special_tokens=self._add_special_tokens)]

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode([int(i) for i in token_ids], skip_special_tokens=False)
