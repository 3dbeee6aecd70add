"""Tiny checkpoints for the generation tools' tests, written in seconds without training:
a random-weight model of one family at TP=1 (seeded, wide init so greedy tokens are far
from ties), split into a checkpoint of any TP x PP by the converters' writer
(checkpoint/weights_checkpoint.py), with the BERT Chinese vocabulary as its
tokenizer, so `tools/generate_text.py --load DIR` runs on it as on a training run's.

    write_tiny_checkpoint(str(tmp / "ckpt"), "gpt", tensor_model_parallel_size=2)
"""
from __future__ import annotations

from typing import Dict

from megatron_core import mpu
from megatron_core.models.llama import llama_config
from megatron_core.models.registry import get_family
from megatron_core.mpu.layout import PipelineStage
from megatron_core.checkpoint.weights_checkpoint import serial_world, write_weights_checkpoint
from megatron_core.transformer.config import TransformerConfig
from .tiny_corpus import BERT_VOCAB

BERT_VOCAB_SIZE = 21130             # the file's 21,128 entries + Megatron's [BOS], [EOS]
MAX_POSITIONS = 64
MEM_LENGTH = 8
_SHAPE = dict(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48, hidden_dropout=0.0,
              attention_dropout=0.0, init_method_std=0.3)


def tiny_config(family: str) -> TransformerConfig:
    if family == "gpt":
        return TransformerConfig(activation="gelu_tanh", **_SHAPE)
    if family == "llama":
        return llama_config(num_layers=2, hidden_size=32, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=48, init_method_std=0.3)
    if family == "t5":
        return TransformerConfig(kv_channels=8, normalization="RMSNorm", layernorm_epsilon=1e-6,
                                 add_bias_linear=False, position_embedding_type="t5_relative", softmax_scale=1.0,
                                 activation="relu", relative_attention_num_buckets=8,
                                 relative_attention_max_distance=16, **_SHAPE)
    if family == "transformer_xl":
        return TransformerConfig(position_embedding_type="relative_xl", activation="gelu_tanh", **_SHAPE)
    if family == "bert":        # HF BertForMaskedLM's layout: post-LN, exact GELU
        return TransformerConfig(layernorm_position="post", **_SHAPE)
    raise ValueError(f"no tiny checkpoint for family {family!r}")


def build_tiny_model(family: str, config: TransformerConfig, padded_vocab_size: int, stage: PipelineStage):
    """The tiny model of `family`, built as a checkpoint of it is: by its registry entry."""
    return get_family(tiny_family(family)).build_model(config, padded_vocab_size, tiny_model_options(family), stage)


def tiny_args_record(family: str, tp: int, pp: int) -> Dict:
    """The flags a training run stores in `args` that loading for generation reads."""
    record = {"tokenizer_type": "BertWordPieceLowerCase", "vocab_file": BERT_VOCAB,
              "max_position_embeddings": MAX_POSITIONS, "seq_length": MAX_POSITIONS,
              "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp}
    if family == "t5":
        record.update(decoder_num_layers=_SHAPE["num_layers"], encoder_seq_length=MAX_POSITIONS,
                      decoder_seq_length=MAX_POSITIONS)
        if pp > 1:
            record["pipeline_model_parallel_split_rank"] = pp // 2
    if family == "transformer_xl":
        record.update(mem_length=MEM_LENGTH, seq_length=MAX_POSITIONS)
    return record


def tiny_family(family: str) -> str:
    """Our family name of a tiny model ("llama" is a GPT with Llama's config)."""
    return "gpt" if family == "llama" else family


def tiny_model_options(family: str) -> Dict:
    """What the checkpoint records for build_tiny_model's other arguments (models/registry.py)."""
    if family in ("gpt", "llama"):
        return {"max_sequence_length": MAX_POSITIONS}
    if family == "t5":
        return {"decoder_num_layers": _SHAPE["num_layers"], "max_sequence_length": MAX_POSITIONS, "lm_head_bias": False}
    if family == "bert":        # an MLM head only (HF BertForMaskedLM), token types as HF's
        return {"max_sequence_length": MAX_POSITIONS, "num_tokentypes": 2, "add_binary_head": False,
                "add_pooler": False}
    return {"mem_length": MEM_LENGTH}


def tiny_padded_vocab_size(family: str) -> int:
    return mpu.pad_vocab_size(BERT_VOCAB_SIZE, tiny_config(family).make_vocab_size_divisible_by, 1)


def tiny_serial_model(family: str, seed: int = 1234):
    """The TP=1, PP=1 model whose weights write_tiny_checkpoint(..., seed) stores, built
    from the seed alone (an independent reference); call it inside a one-process world."""
    mpu.model_parallel_manual_seed(seed)
    return build_tiny_model(family, tiny_config(family), tiny_padded_vocab_size(family), PipelineStage()).eval()


def write_tiny_checkpoint(directory: str, family: str, tensor_model_parallel_size: int = 1,
                          pipeline_model_parallel_size: int = 1, seed: int = 1234) -> str:
    """A weights-only checkpoint (Megatron layout, `release`) of the tiny `family` model
    ("gpt", "llama", "t5", "transformer_xl", "bert") at the given TP x PP; returns its directory."""
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    config, padded = tiny_config(family), tiny_padded_vocab_size(family)
    record = tiny_args_record(family, tp, pp)
    split = record.get("pipeline_model_parallel_split_rank")
    with serial_world():
        full = {k: v.detach().clone() for k, v in tiny_serial_model(family, seed).state_dict().items()}
        write_weights_checkpoint(directory, full,
                                 lambda stage: build_tiny_model(family, config, padded, PipelineStage(
                                     stage.rank, stage.size, split_rank=split)),
                                 record, config, BERT_VOCAB_SIZE, padded, tp, pp, family=tiny_family(family),
                                 model_options=tiny_model_options(family))
    return directory
