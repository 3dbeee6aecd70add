"""Tokenizer files both ways between our flags and an HF model directory.

Export (save_hf_tokenizer): the tokenizer a checkpoint's args name becomes an HF tokenizer
saved with save_pretrained (tokenizer_config.json, special_tokens_map.json, tokenizer.json and
the vocabulary files), so AutoTokenizer.from_pretrained(DIR) works offline and gives our ids:

    BertWordPieceLowerCase / BertWordPieceCase   BertTokenizerFast over vocab.txt, do_lower_case, plus
                                                 our [BOS], [EOS] and <extra_id_N> after the file's ids
    GPT2BPETokenizer                             GPT2TokenizerFast over vocab.json + merges.txt
    HuggingFaceTokenizer                         the --tokenizer-model directory's tokenizer, re-saved
    SentencePieceTokenizer / GPTSentencePiece..  T5Tokenizer (T5) or LlamaTokenizer around the .model

Import (tokenizer_flags_from_hf): the tokenizer files of an HF directory are copied next to the
converted checkpoint and named by our flags (vocab.txt: BertWordPiece, vocab.json + merges.txt:
GPT2BPETokenizer, tokenizer.json: HuggingFaceTokenizer), so the entry points build the same ids.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Mapping, Optional

from ..errors import ConversionError

# files an HF tokenizer directory may hold; copied whole on import
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                    "merges.txt", "spiece.model", "tokenizer.model", "added_tokens.json")


def _need_file(args: Mapping, flag: str) -> str:
    path = args.get(flag)
    if not path or not os.path.exists(path):
        raise ConversionError(f"the checkpoint's args name --{flag.replace('_', '-')} {path!r}, which does not exist "
                              f"here; pass --vocab-file/--merge-file/--tokenizer-model to convert_checkpoint.py.")
    return path


def _from_files(cls, files: Mapping[str, str], staging: str, **kwargs):
    """cls.from_pretrained over copies of our vocabulary files under HF's names (the one
    constructor spelling every transformers version reads)."""
    os.makedirs(staging, exist_ok=True)
    for hf_name, path in files.items():
        shutil.copyfile(path, os.path.join(staging, hf_name))
    return cls.from_pretrained(staging, **kwargs)


def build_hf_tokenizer(args: Mapping, family: str, staging: str):
    """The transformers tokenizer equivalent to the one our args build (None without a tokenizer);
    `staging` is a directory for the vocabulary files (the output directory will do)."""
    kind = args.get("tokenizer_type")
    if not kind or kind == "NullTokenizer":      # token ids as text: no vocabulary to give transformers
        return None
    import transformers
    if kind in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        tokenizer = _from_files(transformers.BertTokenizerFast, {"vocab.txt": _need_file(args, "vocab_file")},
                                staging, do_lower_case=kind == "BertWordPieceLowerCase")
        # ours appends [BOS], [EOS] (the eod) and the <extra_id_N> sentinels after the file's ids, as Megatron does
        extra = [f"<extra_id_{i}>" for i in range(args.get("vocab_extra_ids") or 0)]
        tokenizer.add_special_tokens({"bos_token": "[BOS]", "eos_token": "[EOS]",
                                      "additional_special_tokens": extra})
        return tokenizer
    if kind == "GPT2BPETokenizer":
        return _from_files(transformers.GPT2TokenizerFast, {"vocab.json": _need_file(args, "vocab_file"),
                                                            "merges.txt": _need_file(args, "merge_file")}, staging)
    if kind == "HuggingFaceTokenizer":
        return transformers.AutoTokenizer.from_pretrained(_need_file(args, "tokenizer_model"))
    if kind in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        if family == "t5":
            return _from_files(transformers.T5Tokenizer, {"spiece.model": _need_file(args, "tokenizer_model")},
                               staging, extra_ids=args.get("vocab_extra_ids") or 0)
        return _from_files(transformers.LlamaTokenizer, {"tokenizer.model": _need_file(args, "tokenizer_model")},
                           staging, add_bos_token=False, legacy=True)
    raise ConversionError(f"--tokenizer-type {kind} has no HF tokenizer equivalent here; export without tokenizer "
                          f"files and add them by hand.")


def save_hf_tokenizer(args: Mapping, family: str, output_dir: str) -> Optional[str]:
    """Save the HF tokenizer into output_dir; returns its class name (None: the args name none)."""
    tokenizer = build_hf_tokenizer(args, family, output_dir)
    if tokenizer is None:
        return None
    tokenizer.save_pretrained(output_dir)
    return type(tokenizer).__name__


def tokenizer_flags_from_hf(hf_dir: str, destination: str) -> Dict[str, object]:
    """Copy the HF directory's tokenizer files to `destination`; our flags naming them ({} when
    the directory has no tokenizer)."""
    present = [name for name in _TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, name))]
    if not present:
        return {}
    os.makedirs(destination, exist_ok=True)
    for name in present:
        shutil.copyfile(os.path.join(hf_dir, name), os.path.join(destination, name))
    config = {}
    if "tokenizer_config.json" in present:
        with open(os.path.join(hf_dir, "tokenizer_config.json")) as f:
            config = json.load(f)
    if "vocab.txt" in present:
        lower = config.get("do_lower_case", True)
        return {"tokenizer_type": "BertWordPieceLowerCase" if lower else "BertWordPieceCase",
                "vocab_file": os.path.join(destination, "vocab.txt")}
    if "vocab.json" in present and "merges.txt" in present:
        return {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": os.path.join(destination, "vocab.json"),
                "merge_file": os.path.join(destination, "merges.txt")}
    if "tokenizer.json" in present:
        return {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": destination}
    model = next((name for name in ("spiece.model", "tokenizer.model") if name in present), None)
    if model:
        return {"tokenizer_type": "SentencePieceTokenizer", "tokenizer_model": os.path.join(destination, model)}
    return {}
