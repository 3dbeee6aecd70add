"""SentencePiece models (Megatron's SentencePieceTokenizer and GPTSentencePieceTokenizer).

SentencePieceTokenizer follows Megatron: <CLS>, <SEP>, <EOD>, <MASK> (and <PAD>/<BOS>/<EOS>
when the model lacks them, then <extra_id_N> sentinels) get ids after the model's pieces;
text between special-token strings is encoded by sentencepiece itself, so on ordinary text
ids equal `SentencePieceProcessor.encode`. GPTSentencePieceTokenizer adds nothing and
uses the model's </s> as end of document.
"""
from __future__ import annotations

import re
from typing import Dict, List, Sequence

from megatron_core.data.tokenizers.base import DictVocabTokenizer
from megatron_core.data.tokenizers.files import require_file
from megatron_core.errors import DataError


def _load(model_file: str, kind: str):
    import sentencepiece

    require_file(model_file, "--tokenizer-model", kind)
    try:
        return sentencepiece.SentencePieceProcessor(model_file=model_file)
    except (OSError, RuntimeError) as e:
        raise DataError(
            f"--tokenizer-model {model_file} is not a SentencePiece model ({e}); train one "
            f"with tools/train_tokenizer.py.") from None


class GPTSentencePieceTokenizer(DictVocabTokenizer):
    def __init__(self, model_file: str, name: str = "GPTSentencePieceTokenizer"):
        super().__init__(name)
        self._sp = _load(model_file, name)
        size = self._sp.get_piece_size()
        self._vocab: Dict[str, int] = {self._sp.id_to_piece(i): i for i in range(size)}
        self._inv_vocab: Dict[int, str] = {i: self._sp.id_to_piece(i) for i in range(size)}

        def known(i: int):  # sentencepiece reports a disabled special token as -1
            return i if 0 <= i < size else None

        self.pad = known(self._sp.pad_id())
        self.bos = known(self._sp.bos_id())
        self.eos = known(self._sp.eos_id())
        self.eod = self.eos

    @property
    def processor(self):
        return self._sp

    def tokenize(self, text: str) -> List[int]:
        return self._sp.encode(text)

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        return self._sp.encode(list(texts))

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in token_ids])


class SentencePieceTokenizer(GPTSentencePieceTokenizer):
    def __init__(self, model_file: str, vocab_extra_ids: int = 0):
        super().__init__(model_file, name="SentencePieceTokenizer")
        self._special: Dict[str, int] = {}
        self.cls = self._add_special("<CLS>")
        self.sep = self._add_special("<SEP>")
        self.eod = self._add_special("<EOD>")
        self.mask = self._add_special("<MASK>")
        # Megatron reuses the model's own pad/bos/eos pieces when it has them.
        for role, default in (("pad", "<PAD>"), ("bos", "<BOS>"), ("eos", "<EOS>")):
            own = getattr(self, role)
            piece = self._sp.id_to_piece(own) if own is not None else default
            setattr(self, role, self._add_special(piece))
        self.additional_special_tokens = [f"<extra_id_{i}>" for i in range(vocab_extra_ids)]
        for token in self.additional_special_tokens:
            self._add_special(token)
        self._inv_special = {i: t for t, i in self._special.items()}
        # Longest first, so a special token that contains another wins.
        alternatives = sorted(self._special, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")

    def _add_special(self, token: str) -> int:
        if token not in self._vocab:
            new_id = len(self._vocab)
            self._vocab[token] = new_id
            self._inv_vocab[new_id] = token
        self._special[token] = self._vocab[token]
        return self._vocab[token]

    def tokenize(self, text: str) -> List[int]:
        parts = self._special_re.split(text)
        if len(parts) == 1:
            return self._sp.encode(text)
        ids: List[int] = []
        # re.split with a group alternates text, special, text, special, ..., text
        for k, part in enumerate(parts):
            if k % 2:
                ids.append(self._special[part])
            elif part:
                ids.extend(self._sp.encode(part))
        return ids

    def tokenize_batch(self, texts: Sequence[str]) -> List[List[int]]:
        texts = list(texts)
        if any(self._special_re.search(t) for t in texts):
            return [self.tokenize(t) for t in texts]
        return self._sp.encode(texts)

    def detokenize(self, token_ids: Sequence[int]) -> str:
        out, run = [], []
        for i in (int(x) for x in token_ids):
            if i in self._inv_special:
                if run:
                    out.append(self._sp.decode(run))
                    run = []
                out.append(self._inv_special[i])
            else:
                run.append(i)
        if run:
            out.append(self._sp.decode(run))
        return " ".join(out)

    @property
    def additional_special_tokens_ids(self) -> List[int]:
        return [self._vocab[t] for t in self.additional_special_tokens]
