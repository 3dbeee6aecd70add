"""A model for inference from a training checkpoint (--load DIR): weights only, no optimizer.

    loaded = load_checkpoint_model("ckpt/")        # after torch.distributed is initialized
    loaded.model, loaded.family, loaded.args, loaded.vocab_size, loaded.padded_vocab_size

The checkpoint says everything: its stored TransformerConfig (`model_config`), its flags
as plain values (`args`: tokenizer, max positions, T5 decoder layers, Transformer-XL
memory, BERT binary head) and its parallel sizes. Two ways to run it:
  * a world of TP x PP processes (torchrun): model parallelism is initialized at the
    checkpoint's own sizes and every rank loads its own mp_rank file;
  * one process: every shard is read and put together with the checkpoint's sharding map
    (mpu.merge_tensor_parallel, merge_pipeline_stages) into the serial model.
Other sizes need the checkpoint resharded first (tools/change_mp.py).

The family is read off the state dict's names: Transformer-XL holds r_w_bias, T5 holds
cross-attention (or a pipeline split rank), BERT and RoFormer an `encoder` (RoFormer:
rotary positions), GPT a `decoder` without cross-attention.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch.distributed as dist

from .. import mpu
from ..errors import CheckpointError
from ..models.bert import BertModel
from ..models.gpt import GPTModel
from ..models.roformer import RoFormerModel
from ..models.t5 import T5Model
from ..models.transformer_xl import TransformerXLModel
from ..mpu.layout import PipelineStage
from ..mpu.sharding_map import ShardingMap, merge_pipeline_stages, merge_tensor_parallel
from ..training.checkpoint.file_io import load_file
from ..training.checkpoint.formats import tracked_checkpoint
from ..transformer.config import TransformerConfig


@dataclass
class LoadedModel:
    model: object
    family: str               # "gpt", "bert", "roformer", "t5", "transformer_xl"
    config: TransformerConfig
    args: Dict                # the checkpoint's flags (plain values)
    vocab_size: int           # the tokenizer's
    padded_vocab_size: int
    path: str


def model_family(state_keys, args: Dict) -> str:
    keys = list(state_keys)
    if any(k == "r_w_bias" or k.endswith(".r_w_bias") for k in keys):
        return "transformer_xl"
    if any(".inter_attention." in k or k.startswith(("encoder_relative_bias", "decoder_relative_bias")) for k in keys) \
            or (args.get("pipeline_model_parallel_size", 1) > 1 and args.get("pipeline_model_parallel_split_rank")):
        return "t5"
    if any(k.startswith("encoder.") for k in keys):
        return "roformer" if args.get("position_embedding_type") == "rope" else "bert"
    return "gpt"


def build_model(family: str, config: TransformerConfig, args: Dict, padded_vocab_size: int, stage: PipelineStage):
    max_positions = args.get("max_position_embeddings") or args.get("seq_length") or 512
    if family == "gpt":
        return GPTModel(config, padded_vocab_size, max_positions, stage=stage)
    if family == "roformer":
        return RoFormerModel(config, padded_vocab_size, max_positions, stage=stage)
    if family == "bert":
        binary = bool(args.get("bert_binary_head", False))
        return BertModel(config, padded_vocab_size, max_positions, num_tokentypes=2 if binary else 0,
                         add_binary_head=binary, stage=stage)
    if family == "t5":
        return T5Model(config, padded_vocab_size, args.get("decoder_num_layers"), max_positions,
                       stage=stage if stage.size > 1 else None)
    # Transformer-XL: the entry point's relative positions and tanh GELU (pretrain_transformer_xl.py).
    config = config.replace(position_embedding_type="relative_xl",
                            activation="gelu_tanh" if config.activation == "gelu" else config.activation)
    mem_length = args.get("mem_length")
    return TransformerXLModel(config, padded_vocab_size, args.get("seq_length") if mem_length is None else mem_length,
                              stage=stage)


def _read(path: str, layout) -> Dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete; restore it or load another one.")
    saved = layout.from_file(load_file(path))
    if "model" not in saved:
        raise CheckpointError(f"{path} holds no single 'model' entry (virtual pipeline chunks: "
                              f"{', '.join(sorted(k for k in saved if k.startswith('model')))}); reshard it with "
                              f"tools/change_mp.py first.")
    if not isinstance(saved.get("model_config"), dict) or not isinstance(saved.get("args"), dict):
        raise CheckpointError(f"{path} stores no model_config and args as plain values; generation needs a "
                              f"checkpoint saved by this package.")
    return saved


def _sizes(saved: Dict) -> Tuple[int, int]:
    parallel = saved.get("parallel") or {}
    return int(parallel.get("tensor_model_parallel_size", 1)), int(parallel.get("pipeline_model_parallel_size", 1))


def load_checkpoint_model(directory: str) -> LoadedModel:
    """Initialize model parallelism for this world and load the checkpoint (module doc)."""
    layout, iteration, first = tracked_checkpoint(directory)
    head = _read(first, layout)
    tp, pp = _sizes(head)
    world = dist.get_world_size() if dist.is_initialized() else 1
    if world not in (1, tp * pp):
        raise CheckpointError(f"{directory} was saved with TP={tp} x PP={pp}; run on 1 process or on {tp * pp} "
                              f"(torchrun --nproc-per-node {tp * pp}), not {world}, or reshard it with "
                              f"tools/change_mp.py.")
    args = head["args"]
    config = TransformerConfig.from_dict(head["model_config"])
    # Dropout and recomputation mean nothing here; sequence parallelism cannot split one new token.
    inference = dict(sequence_parallel=False, recompute_granularity=None, hidden_dropout=0.0, attention_dropout=0.0)
    padded = int(head.get("padded_vocab_size") or args.get("padded_vocab_size"))
    vocab = int(head.get("vocab_size") or padded)
    if world == 1:
        mpu.initialize_model_parallel(1, 1)
        state, family = _merged_state(directory, layout, iteration, tp, pp, args)
        config = config.replace(tensor_model_parallel_size=1, **inference)
        model = build_model(family, config, args, padded, PipelineStage())
    else:
        split = args.get("pipeline_model_parallel_split_rank") if pp > 1 else None
        mpu.initialize_model_parallel(tp, pp, pipeline_model_parallel_split_rank=split)
        path = layout.model_file(directory, iteration, mpu.get_tensor_model_parallel_rank(), tp,
                                 mpu.get_pipeline_model_parallel_rank(), pp)
        state = _read(path, layout)["model"]
        family = model_family(state, args)
        config = config.replace(**inference)
        model = build_model(family, config, args, padded, mpu.get_pipeline_stage())
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"{directory}: the weights do not fit the {family} model its stored config describes "
                              f"({str(error).splitlines()[0]}).") from None
    model.eval()
    return LoadedModel(model, family, config, args, vocab, padded, directory)


def _merged_state(directory, layout, iteration, tp: int, pp: int, args: Dict):
    """The serial model's state dict from every mp_rank file (sharding maps), and the family."""
    stages: List[Tuple[Dict, ShardingMap]] = []
    keys = set()
    for pp_rank in range(pp):
        shards, smap = [], None
        for tp_rank in range(tp):
            saved = _read(layout.model_file(directory, iteration, tp_rank, tp, pp_rank, pp), layout)
            shards.append(saved["model"])
            if smap is None:
                maps = saved.get("sharding_map") or {}
                if "model" not in maps:
                    raise CheckpointError(f"{directory} stores no sharding map; load it on {tp * pp} processes "
                                          f"(torchrun --nproc-per-node {tp * pp}) instead of one.")
                smap = ShardingMap.from_dict(maps["model"])
        keys.update(shards[0])
        stages.append((merge_tensor_parallel(shards, smap) if tp > 1 else shards[0], smap))
    state = stages[0][0] if pp == 1 else merge_pipeline_stages(stages)[0]
    return state, model_family(keys, args)
