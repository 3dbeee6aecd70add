"""Chinese-Transformer-XL's released checkpoints -> our checkpoint (any TP x PP, either layout).

    summary = import_chinese_txl("txl-2.9B/", "ckpt_txl/", tensor_model_parallel_size=2)

Their layout (THUDM/Chinese-Transformer-XL utils.py: DeepSpeed's save_checkpoint with the
iteration as the tag, Megatron's tracker name):

    <dir>/latest_checkpointed_iteration.txt             "160000" (or "release")
    <dir>/160000/mp_rank_00_model_states.pt             one per model-parallel rank (no pipeline)

Each file is DeepSpeed's dict: `module` (the GPT2Model state dict, fp16 for the released
model; an FP16_Module wrapper adds no prefix, a stray "module." prefix is dropped),
`buffer_names`, `optimizer`, `lr_scheduler`, `csr_tensor_module_names` (a set),
`skipped_steps`, `global_steps`, `global_samples`, `dp_world_size`, `mp_world_size`,
`ds_config`, `ds_version`, and their client state: `iteration`, `client_lr_scheduler` and
the RNG states `random_rng_state` (a tuple), `np_rng_state` (numpy's MT19937 tuple with an
ndarray), `torch_rng_state`, `cuda_rng_state`, `rng_tracker_states`. They pickle no args
(Megatron-LM's files pickle an argparse.Namespace as `args`). So a file is read with
torch.load(weights_only=True) plus exactly these data-only constructors: argparse.Namespace
and numpy's array reconstruction (ndarray, dtype); any other global in the pickle stream is
refused with one sentence and nothing from the file runs.

How their model parallelism splits `module` (their mpu, GPT2ParallelTransformer):
word_embeddings.weight by rows (VocabParallelEmbedding, rows padded to a multiple of
make_vocab_size_divisible_by x TP); attention.query_key_value by rows with stride 3 (rank r
holds [q_r | k_r | v_r] of the full [q | k | v]); attention.relative and mlp.dense_h_to_4h
by rows (column parallel, bias too); transformer.r_w_bias / r_r_bias [heads, d] by heads;
attention.dense and mlp.dense_4h_to_h weights by columns (row parallel); layer norms, the
row-parallel biases and position_embeddings.inv_freq replicated. Once merged,
models/transformer_xl.from_chinese_txl_state_dict renames the keys and regroups q|k|v per
head. Their fixed choices become our config: pre-LN LayerNorm (eps 1e-5), tanh GELU, shared
r_w_bias / r_r_bias, output tied to the word table, biases everywhere.
"""
from __future__ import annotations

import argparse
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import CheckpointError, ConversionError
from ..mpu.layout import merge_shards
from ..checkpoint.file_io import load_file
from ..checkpoint.weights_checkpoint import serial_world, write_weights_checkpoint
from ..transformer.config import TransformerConfig
from .checkpoint_spec import args_record
from ..models.hf.common import ModelSpec, count_layers
from ..models.registry import get_family
from ..models.transformer_xl import TransformerXLModel, from_chinese_txl_state_dict

TRACKER = "latest_checkpointed_iteration.txt"
_RANK_FILE = re.compile(r"^mp_rank_(\d{2})_model_states\.pt$")

# (key pattern, split dimension, stride) of their tensor-parallel tensors; anything else is replicated.
_SPLITS = (
    (re.compile(r"^word_embeddings\.weight$"), 0, 1),
    (re.compile(r"^transformer\.r_[wr]_bias$"), 0, 1),
    (re.compile(r"\.attention\.query_key_value\.(weight|bias)$"), 0, 3),
    (re.compile(r"\.attention\.relative\.(weight|bias)$"), 0, 1),
    (re.compile(r"\.mlp\.dense_h_to_4h\.(weight|bias)$"), 0, 1),
    (re.compile(r"\.attention\.dense\.weight$"), 1, 1),
    (re.compile(r"\.mlp\.dense_4h_to_h\.weight$"), 1, 1),
)


def _numpy_array_globals() -> list:
    """numpy's array reconstruction (data only), which their np_rng_state needs."""
    try:
        import numpy as np
    except ImportError:
        return []
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def load_foreign_file(path: str, mmap: bool = False):
    """A Megatron-LM / DeepSpeed / Chinese-Transformer-XL file, read as the module docstring says."""
    with torch.serialization.safe_globals(_numpy_array_globals()):
        return load_file(path, mmap=mmap, allow_namespace=True)


def split_of(key: str) -> Tuple[Optional[int], int]:
    """(split dimension or None, stride) of one of their state-dict keys."""
    for pattern, dim, stride in _SPLITS:
        if pattern.search(key):
            return dim, stride
    return None, 1


def find_chinese_txl_files(directory: str) -> Tuple[str, List[str]]:
    """(the iteration directory, its mp_rank files in rank order); CheckpointError if it is not their layout."""
    tracker = os.path.join(directory, TRACKER)
    if os.path.isfile(tracker):
        with open(tracker) as f:
            tag = f.read().strip()
        iteration_dir = os.path.join(directory, tag)
    elif any(_RANK_FILE.match(name) for name in os.listdir(directory)):
        iteration_dir = directory
    else:
        raise CheckpointError(f"{directory} has no {TRACKER} and no mp_rank_XX_model_states.pt files; pass a "
                              f"Chinese-Transformer-XL checkpoint directory.")
    names = sorted(n for n in os.listdir(iteration_dir) if _RANK_FILE.match(n)) if os.path.isdir(iteration_dir) \
        else []
    if not names:
        raise CheckpointError(f"{iteration_dir} holds no mp_rank_XX_model_states.pt files; the tracker of {directory} "
                              f"must name the directory of a complete checkpoint.")
    ranks = [int(_RANK_FILE.match(n).group(1)) for n in names]
    if ranks != list(range(len(ranks))):
        raise CheckpointError(f"{iteration_dir} holds the files of model-parallel ranks {ranks}, not 0..{len(ranks) - 1}; "
                              f"the checkpoint is incomplete.")
    return iteration_dir, [os.path.join(iteration_dir, n) for n in names]


def _module(state, path: str) -> Dict[str, torch.Tensor]:
    module = state.get("module") if isinstance(state, Mapping) else None
    if not isinstance(module, Mapping):
        raise CheckpointError(f"{path} has no 'module' state dict; it is not a DeepSpeed model-states file.")
    if module and all(k.startswith("module.") for k in module):
        module = {k[len("module."):]: v for k, v in module.items()}
    return dict(module)


def merge_chinese_txl_shards(shards: List[Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Their full (TP=1) `module` dict from every model-parallel rank's, in fp32."""
    merged = {}
    for key in shards[0]:
        if key.endswith("position_embeddings.inv_freq"):
            continue    # a buffer recomputed from the hidden size
        dim, stride = split_of(key)
        parts = [shard[key] for shard in shards]
        tensor = parts[0] if dim is None or len(parts) == 1 else merge_shards(parts, dim, stride)
        merged[key] = tensor.float().clone()
    return merged


def config_of(module: Mapping[str, torch.Tensor], args: Optional[argparse.Namespace]) -> TransformerConfig:
    """Our TransformerConfig for their merged module (shapes decide; their fixed choices fill the rest)."""
    heads, head_size = module["transformer.r_w_bias"].shape
    hidden = module["word_embeddings.weight"].shape[1]
    return TransformerConfig(
        num_layers=count_layers(module, "transformer.layers."), hidden_size=hidden, num_attention_heads=heads,
        kv_channels=head_size, ffn_hidden_size=module["transformer.layers.0.mlp.dense_h_to_4h.weight"].shape[0],
        layernorm_epsilon=getattr(args, "layernorm_epsilon", 1e-5), activation="gelu_tanh",
        position_embedding_type="relative_xl", hidden_dropout=getattr(args, "hidden_dropout", 0.1),
        attention_dropout=getattr(args, "attention_dropout", 0.1), share_embeddings_and_output_weights=True)


def import_chinese_txl(directory: str, output: str, tensor_model_parallel_size: int = 1,
                       pipeline_model_parallel_size: int = 1, ckpt_format: str = "megatron",
                       make_vocab_size_divisible_by: int = 128, tokenizer_args: Optional[Mapping] = None,
                       flag_defaults: Optional[Mapping] = None) -> dict:
    """Write our checkpoint of their checkpoint in `directory`; returns what was written.
    `flag_defaults`: as hf_import.import_checkpoint's.

    Their word table keeps its rows (the padded vocabulary); the tokenizer's size, when
    --tokenizer-type and its files are given, is recorded as the real vocabulary."""
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    iteration_dir, paths = find_chinese_txl_files(directory)
    states = [load_foreign_file(path, mmap=True) for path in paths]
    shards = [_module(state, path) for state, path in zip(states, paths)]
    args = states[0].get("args") if isinstance(states[0].get("args"), argparse.Namespace) else None
    module = merge_chinese_txl_shards(shards)
    del shards, states
    if "transformer.r_w_bias" not in module:
        raise ConversionError(f"{paths[0]} holds no transformer.r_w_bias: it is a plain GPT-2 checkpoint of their code, "
                              f"not a --transformer-xl one; only Transformer-XL checkpoints convert here.")
    config = config_of(module, args).replace(make_vocab_size_divisible_by=make_vocab_size_divisible_by)
    padded = module["word_embeddings.weight"].shape[0]
    if padded % tp:
        raise ConversionError(f"their word table has {padded} rows, which do not split over {tp} tensor-parallel "
                              f"ranks; pick a --tensor-model-parallel-size that divides it.")
    if config.num_layers % pp:
        raise ConversionError(f"the model has {config.num_layers} layers, which do not split over {pp} pipeline "
                              f"stages; pick a --pipeline-model-parallel-size that divides it.")
    tokenizer_args = dict(tokenizer_args or {})
    vocab_size = padded
    if tokenizer_args.get("tokenizer_type"):
        from ..data.tokenizers.factory import build_tokenizer
        vocab_size = build_tokenizer(tokenizer_args["tokenizer_type"], vocab_file=tokenizer_args.get("vocab_file"),
                                     merge_file=tokenizer_args.get("merge_file"),
                                     tokenizer_model=tokenizer_args.get("tokenizer_model")).vocab_size
        if vocab_size > padded:
            raise ConversionError(f"the tokenizer has {vocab_size} tokens but their word table only {padded} rows; "
                                  f"pass the tokenizer the model was trained with.")
    mem_length = int(getattr(args, "mem_length", 0) or 0)
    full = from_chinese_txl_state_dict(module, config)
    del module
    spec = ModelSpec("transformer_xl", config, vocab_size, padded, "ChineseTransformerXL", {})
    record = args_record(spec, tokenizer_args, flag_defaults or {})
    record.update(mem_length=mem_length or None, chinese_txl_source=os.path.abspath(iteration_dir))
    with serial_world():
        written = write_weights_checkpoint(
            output, full, lambda stage: TransformerXLModel(config, padded, mem_length, stage=stage), record, config,
            vocab_size, padded, tp, pp, ckpt_format, family="transformer_xl",
            model_options=get_family("transformer_xl").options(record))   # mem_length: theirs, else seq_length
    return {"family": "transformer_xl", "source": iteration_dir, "directory": written, "source_ranks": len(paths),
            "tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp, "layout": ckpt_format,
            "num_layers": config.num_layers, "hidden_size": config.hidden_size,
            "num_attention_heads": config.num_attention_heads, "padded_vocab_size": padded, "vocab_size": vocab_size}
