"""The interface every tokenizer offers, shaped like Megatron-LM's AbstractTokenizer."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, List, Optional, Sequence


class AbstractTokenizer(ABC):
    """Text <-> token ids. Special-token ids are None where a tokenizer has no such token."""

    def __init__(self, name: str):
        self.name = name

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can emit (before padding for tensor parallelism)."""

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

    # Megatron pads the embedding to a multiple of divisible_by * tp; build_tokenizer sets these.
    make_vocab_size_divisible_by: int = 128
    tensor_model_parallel_size: int = 1

    @property
    def padded_vocab_size(self) -> int:
        """Embedding rows a *new* model needs; a loaded checkpoint keeps its stored size."""
        # Imported here: megatron_core.mpu pulls in torch (over a second), which the
        # preprocessing workers never need.
        from megatron_core.mpu.utils import pad_vocab_size

        return pad_vocab_size(self.vocab_size, self.make_vocab_size_divisible_by,
                              self.tensor_model_parallel_size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size})"
