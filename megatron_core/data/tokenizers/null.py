"""Megatron-LM's NullTokenizer: text is token ids written out, for runs on synthetic or
pre-tokenized data (`--tokenizer-type NullTokenizer --vocab-size N`).

    tokenizer = NullTokenizer(127)
    tokenizer.tokenize("5 17 3")       # [5, 17, 3]
    tokenizer.eod, tokenizer.vocab_size  # 127 (the end-of-document id, after the N ids), 128

As in Megatron-LM, --vocab-size counts the ids 0..N-1 and the end-of-document id N comes on
top, so the embedding is padded from N + 1 (Megatron-LM's checkpoints of such runs store that
padded size).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from megatron_core.data.tokenizers.base import AbstractTokenizer
from megatron_core.errors import DataError


class NullTokenizer(AbstractTokenizer):
    def __init__(self, vocab_size: int):
        super().__init__("NullTokenizer")
        if vocab_size is None or int(vocab_size) < 1:
            raise DataError("--tokenizer-type NullTokenizer needs --vocab-size N: its ids are 0..N-1 and N is the "
                            "end of a document.")
        self._ids = int(vocab_size)
        self.eod = self._ids

    @property
    def vocab_size(self) -> int:
        return self._ids + 1

    @property
    def vocab(self) -> Dict[str, int]:
        return {str(i): i for i in range(self.vocab_size)}

    @property
    def inv_vocab(self) -> Dict[int, str]:
        return {i: str(i) for i in range(self.vocab_size)}

    def tokenize(self, text: str) -> List[int]:
        ids = []
        for word in text.split():
            if not word.lstrip("-").isdigit() or not 0 <= int(word) < self._ids:
                raise DataError(f"NullTokenizer reads token ids 0..{self._ids - 1} separated by spaces, got "
                                f"{word[:20]!r}; give the text as ids, or use a real tokenizer.")
            ids.append(int(word))
        return ids

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return " ".join(str(int(i)) for i in token_ids)
