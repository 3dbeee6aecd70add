"""build_tokenizer: Megatron's tokenizer names and flags -> a tokenizer object."""
from __future__ import annotations

from typing import Optional

from megatron_core.data.tokenizers.base import AbstractTokenizer
from megatron_core.errors import DataError

TOKENIZER_TYPES = (
    "BertWordPieceLowerCase",
    "BertWordPieceCase",
    "GPT2BPETokenizer",
    "SentencePieceTokenizer",
    "GPTSentencePieceTokenizer",
    "HuggingFaceTokenizer",
    "NullTokenizer",
)


def build_tokenizer(tokenizer_type: str, vocab_file: Optional[str] = None,
                    merge_file: Optional[str] = None, tokenizer_model: Optional[str] = None,
                    vocab_extra_ids: int = 0, vocab_size: Optional[int] = None) -> AbstractTokenizer:
    """Build a tokenizer. Padding its vocab_size for the embedding is the model's business
    (the padded size is stored in checkpoints), not the tokenizer's."""
    if tokenizer_type in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        from megatron_core.data.tokenizers.bert_wordpiece import BertWordPieceTokenizer
        tokenizer = BertWordPieceTokenizer(
            vocab_file, lower_case=tokenizer_type == "BertWordPieceLowerCase",
            vocab_extra_ids=vocab_extra_ids)
    elif tokenizer_type == "GPT2BPETokenizer":
        from megatron_core.data.tokenizers.gpt2_bpe import GPT2BPETokenizer
        tokenizer = GPT2BPETokenizer(vocab_file, merge_file)
    elif tokenizer_type == "SentencePieceTokenizer":
        from megatron_core.data.tokenizers.sentencepiece_tokenizer import SentencePieceTokenizer
        tokenizer = SentencePieceTokenizer(tokenizer_model, vocab_extra_ids=vocab_extra_ids)
    elif tokenizer_type == "GPTSentencePieceTokenizer":
        from megatron_core.data.tokenizers.sentencepiece_tokenizer import GPTSentencePieceTokenizer
        tokenizer = GPTSentencePieceTokenizer(tokenizer_model)
    elif tokenizer_type == "NullTokenizer":
        from megatron_core.data.tokenizers.null import NullTokenizer
        tokenizer = NullTokenizer(vocab_size)
    elif tokenizer_type == "HuggingFaceTokenizer":
        from megatron_core.data.tokenizers.huggingface import HuggingFaceTokenizer
        tokenizer = HuggingFaceTokenizer(tokenizer_model)
    else:
        raise DataError(
            f"--tokenizer-type {tokenizer_type!r} is not supported; use one of "
            f"{', '.join(TOKENIZER_TYPES)}.")
    return tokenizer


def build_tokenizer_from_args(args) -> AbstractTokenizer:
    """Same, from an argparse namespace that uses Megatron's flag names."""
    return build_tokenizer(
        args.tokenizer_type,
        vocab_file=getattr(args, "vocab_file", None),
        merge_file=getattr(args, "merge_file", None),
        tokenizer_model=getattr(args, "tokenizer_model", None),
        vocab_extra_ids=getattr(args, "vocab_extra_ids", 0) or 0,
        vocab_size=getattr(args, "vocab_size", None),
    )
