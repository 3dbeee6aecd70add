"""Any local HuggingFace fast tokenizer (Megatron's HuggingFaceTokenizer), offline.

`--tokenizer-model` is a tokenizer.json or a directory holding one (as saved by
transformers' `save_pretrained`). As in Megatron, `tokenize` adds the tokenizer's own
special tokens (e.g. Llama's <s>), the same as transformers' `tokenizer(text).input_ids`.
Role ids (eos/bos/pad/...) come from tokenizer_config.json / special_tokens_map.json
beside the file when present.
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

from tokenizers import Tokenizer

from megatron_core.data.tokenizers.base import RustBackedTokenizer
from megatron_core.data.tokenizers.files import read_text_file
from megatron_core.errors import DataError

_ROLES = {"cls": "cls_token", "sep": "sep_token", "pad": "pad_token", "mask": "mask_token",
          "bos": "bos_token", "eos": "eos_token"}
# Used only when no config names the end-of-text token.
_EOS_GUESSES = ("</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>", "[EOS]")


def _token_string(value) -> Optional[str]:
    if isinstance(value, dict):  # serialized AddedToken
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_role_names(directory: str) -> Dict[str, str]:
    names: Dict[str, str] = {}
    for filename in ("special_tokens_map.json", "tokenizer_config.json"):
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            continue
        text = read_text_file(path, None, "save it as UTF-8 JSON or remove it.")
        try:
            config = json.loads(text)
        except ValueError as e:
            raise DataError(f"{path} is not valid JSON ({e}); fix or remove it.") from None
        for role, key in _ROLES.items():
            name = _token_string(config.get(key))
            if name:
                names[role] = name
    return names


class HuggingFaceTokenizer(RustBackedTokenizer):
    _add_special_tokens = True  # as Megatron: the tokenizer's own template (e.g. Llama's <s>)

    def __init__(self, tokenizer_model: str):
        super().__init__("HuggingFaceTokenizer")
        if not tokenizer_model:
            raise DataError("--tokenizer-type HuggingFaceTokenizer needs --tokenizer-model "
                            "(a tokenizer.json or a directory that holds one).")
        path = tokenizer_model
        if os.path.isdir(path):
            path = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(path):
            raise DataError(
                f"--tokenizer-model {tokenizer_model}: no tokenizer.json found; save the "
                f"tokenizer with transformers' save_pretrained (downloads are not attempted).")
        text = read_text_file(path, "--tokenizer-model", "pass a tokenizer.json saved by "
                                                         "transformers' save_pretrained.")
        try:
            self._tokenizer = Tokenizer.from_str(text)
        except Exception as e:  # the Rust loader raises a plain Exception on bad JSON
            raise DataError(f"--tokenizer-model {path} could not be loaded ({e}).") from None
        self._vocab = self._tokenizer.get_vocab(with_added_tokens=True)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}

        names = _read_role_names(os.path.dirname(os.path.abspath(path)))
        if "eos" not in names:
            names["eos"] = next((t for t in _EOS_GUESSES if t in self._vocab), None)
        for role in _ROLES:
            name = names.get(role)
            setattr(self, role, self._vocab.get(name) if name else None)
        self.eod = self.eos

    @property
    def vocab_size(self) -> int:
        # Added tokens may sit above the model's ids; the embedding must cover them all.
        return max(self._tokenizer.get_vocab_size(with_added_tokens=True),
                   max(self._vocab.values(), default=-1) + 1)
