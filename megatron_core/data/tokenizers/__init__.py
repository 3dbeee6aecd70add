"""Tokenizers with Megatron-LM's names and interface, backed by HuggingFace `tokenizers`
and `sentencepiece`; everything works offline from local files."""
from megatron_core.data.tokenizers.base import AbstractTokenizer
from megatron_core.data.tokenizers.factory import (
    TOKENIZER_TYPES,
    build_tokenizer,
    build_tokenizer_from_args,
)

__all__ = ["AbstractTokenizer", "TOKENIZER_TYPES", "build_tokenizer",
           "build_tokenizer_from_args"]
