"""GPT-2 byte-level BPE (Megatron's GPT2BPETokenizer), from vocab.json + merges.txt.

Configured as transformers' GPT2TokenizerFast: byte-level pre-split with GPT-2's regex,
no prefix space, and <|endoftext|> atomic in text. `eod` is <|endoftext|>.
"""
from __future__ import annotations

import json
from typing import Dict

from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

from megatron_core.data.tokenizers.base import RustBackedTokenizer
from megatron_core.data.tokenizers.files import read_text_file, require_file
from megatron_core.errors import DataError

_EOD = "<|endoftext|>"


class GPT2BPETokenizer(RustBackedTokenizer):
    def __init__(self, vocab_file: str, merge_file: str):
        super().__init__("GPT2BPETokenizer")
        require_file(vocab_file, "--vocab-file", self.name)
        require_file(merge_file, "--merge-file", self.name)
        vocab_text = read_text_file(vocab_file, "--vocab-file", "pass GPT-2's vocab.json.")
        # The Rust loader's own message for this is "stream did not contain valid UTF-8".
        read_text_file(merge_file, "--merge-file", "pass GPT-2's merges.txt.")
        try:
            vocab = json.loads(vocab_text)
        except json.JSONDecodeError as e:
            raise DataError(
                f"--vocab-file {vocab_file} is not GPT-2's vocab.json ({e}); a BERT vocab.txt "
                f"needs --tokenizer-type BertWordPieceLowerCase.") from None
        if not isinstance(vocab, dict) or _EOD not in vocab:
            raise DataError(f"--vocab-file {vocab_file} has no {_EOD} entry; pass GPT-2's vocab.json.")
        try:
            model = BPE.from_file(vocab_file, merge_file)
        except Exception as e:  # the Rust loader reports malformed merges as a plain Exception
            raise DataError(f"--merge-file {merge_file} could not be read as BPE merges ({e}).") from None
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([AddedToken(_EOD, special=True)])
        self._tokenizer = tok
        self._vocab: Dict[str, int] = vocab
        self._inv_vocab = {i: t for t, i in vocab.items()}
        self.eod = self.eos = self.bos = vocab[_EOD]
