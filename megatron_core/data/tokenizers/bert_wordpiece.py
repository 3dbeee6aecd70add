"""BERT WordPiece (Megatron's BertWordPieceLowerCase / BertWordPieceCase).

Backed by HuggingFace `tokenizers` and configured as transformers' BertTokenizerFast is,
so ids match it: BERT normalizer (clean text, one token per CJK character, lowercase and
accent stripping for the LowerCase variant), whitespace+punctuation pre-split, greedy
longest-match WordPiece. As in Megatron, [BOS], [EOS] and `vocab_extra_ids` sentinels
<extra_id_N> get the ids after the vocab file's, and `eod` is [EOS].

Decoding is HF's WordPiece decoder (## pieces joined, its clean-up of spaces before
punctuation) followed by `join_cjk`: the normalizer put a space around every CJK
character and the pre-tokenizer one around every punctuation mark, so BertTokenizer's
and Megatron's decoders print "清 华 大 学" (users strip the spaces by hand). Here a space
next to a CJK character, CJK punctuation mark or full-width form is dropped; spaces
between Latin words stay ("gpt - 2 模型": a space written before 模 is lost).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from megatron_core.data.tokenizers.base import RustBackedTokenizer
from megatron_core.data.tokenizers.files import read_wordpiece_vocab, require_file
from megatron_core.errors import DataError

_REQUIRED = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


def _is_wide(char: str) -> bool:
    """CJK ideographs (BERT's _is_chinese_char ranges), CJK symbols and punctuation,
    CJK compatibility forms and the full-width forms (１２３, ，！)."""
    o = ord(char)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FA1F or 0xF900 <= o <= 0xFAFF
            or 0x3000 <= o <= 0x303F or 0xFE30 <= o <= 0xFE4F or 0xFF00 <= o <= 0xFFEF)


def join_cjk(text: str) -> str:
    """Drop the spaces WordPiece decoding leaves around CJK characters (module doc)."""
    if " " not in text:
        return text
    kept = []
    for i, char in enumerate(text):
        if char == " " and 0 < i < len(text) - 1:
            if _is_wide(text[i - 1]) or _is_wide(text[i + 1]):
                continue
        kept.append(char)
    return "".join(kept)


class BertWordPieceTokenizer(RustBackedTokenizer):
    def __init__(self, vocab_file: str, lower_case: bool = True, vocab_extra_ids: int = 0):
        kind = "BertWordPieceLowerCase" if lower_case else "BertWordPieceCase"
        super().__init__(kind)
        require_file(vocab_file, "--vocab-file", kind)
        vocab = read_wordpiece_vocab(vocab_file)
        missing = [t for t in _REQUIRED if t not in vocab]
        if missing:
            raise DataError(
                f"--vocab-file {vocab_file} lacks {', '.join(missing)}; pass a BERT WordPiece "
                f"vocab.txt (GPT-2 needs --tokenizer-type GPT2BPETokenizer).")

        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        # transformers treats the vocab's own special tokens as atomic in text; so do we.
        tok.add_special_tokens([AddedToken(t, special=True) for t in _REQUIRED])

        self._vocab: Dict[str, int] = dict(vocab)
        self._next_id = max(vocab.values()) + 1
        self.additional_special_tokens = [f"<extra_id_{i}>" for i in range(vocab_extra_ids)]
        for token in ["[BOS]", "[EOS]"] + self.additional_special_tokens:
            self._add_token(tok, token)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        self._tokenizer = tok

        self.cls, self.sep = vocab["[CLS]"], vocab["[SEP]"]
        self.pad, self.mask = vocab["[PAD]"], vocab["[MASK]"]
        self.bos, self.eos = self._vocab["[BOS]"], self._vocab["[EOS]"]
        self.eod = self.eos

    def _add_token(self, tok: Tokenizer, token: str) -> None:
        if token in self._vocab:
            return
        tok.add_special_tokens([AddedToken(token, special=True)])
        # The added id must be the next free one, or ids would disagree with Megatron's.
        if tok.token_to_id(token) != self._next_id:
            raise DataError(
                f"the vocab file reuses ids, so {token} cannot take id {self._next_id}; "
                f"remove duplicate lines from --vocab-file.")
        self._vocab[token] = self._next_id
        self._next_id += 1

    def detokenize(self, token_ids: Sequence[int]) -> str:
        return join_cjk(super().detokenize(token_ids))

    @property
    def additional_special_tokens_ids(self) -> List[int]:
        return [self._vocab[t] for t in self.additional_special_tokens]
