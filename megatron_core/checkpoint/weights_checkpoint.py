"""Write a whole model's weights as a training checkpoint of any TP x PP size (a converter's output).

    with serial_world():                             # our layers need (trivial) process groups
        write_weights_checkpoint("ckpt/", full_state, build_stage, args_record, config,
                                 vocab_size=21128, padded_vocab_size=21248, tensor_model_parallel_size=2,
                                 pipeline_model_parallel_size=2, ckpt_format="megatron",
                                 family="gpt", model_options={"max_position_embeddings": 1024})

`full_state` maps the whole model's keys (TP=1, every stage) to tensors (it may be a lazy
Mapping that converts on demand, streamed_import.py); `build_stage(stage)` builds one pipeline
stage of the model at TP=1, only to read its sharding map (which keys the stage holds, their
split dimension and stride, which are copies of another stage's table), so the split is the one
the layers themselves use and the training loop loads the files with strict=True. It is called
with parameters on the meta device (mpu/parameter_device.py): no weights are made. File by file
(stage, then TP rank), each tensor is cut to that rank's shard (cloned, so no shard keeps the
full tensor alive) and the file written atomically: memory holds one output file, never the model.

The result is a weights-only checkpoint, as Megatron-LM's converters write: Megatron layout
under `release/` with the tracker "release" (loading starts at iteration 0 with a fresh
optimizer), DeepSpeed layout under `global_step0` (load it with --finetune). Each file carries
args (plain values), model_config, the model's family and options (model_record.py), the
parallel record, both vocabulary sizes and the sharding map, as a training checkpoint does
(contents.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Iterator, Mapping

import torch
import torch.distributed as dist

from .. import mpu
from ..errors import ConversionError
from ..mpu.layout import PipelineStage, shard_tensor
from ..mpu.parameter_device import parameters_on
from ..transformer.config import TransformerConfig
from .contents import FORMAT_VERSION, MEGATRON_CHECKPOINT_VERSION
from .file_io import save_file, write_bytes_atomically
from .formats import layout_named
from .model_record import model_record
from .state_dict_fit import describe_mismatch


@contextlib.contextmanager
def serial_world() -> Iterator[None]:
    """A one-process gloo world with TP = PP = 1 (an in-memory store, no port), for tools that build
    a model only to read its structure; a world already set up is reused and left in place."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    mpu.initialize_model_parallel(1)
    try:
        yield
    finally:
        mpu.destroy_model_parallel()
        if created:
            dist.destroy_process_group()


def write_weights_checkpoint(directory: str, full_state: Mapping[str, torch.Tensor],
                             build_stage: Callable[[PipelineStage], torch.nn.Module], args_record: dict,
                             config: TransformerConfig, vocab_size: int, padded_vocab_size: int,
                             tensor_model_parallel_size: int, pipeline_model_parallel_size: int = 1,
                             ckpt_format: str = "megatron", *, family: str, model_options: Mapping) -> str:
    """Write the checkpoint (see the module docstring); returns the iteration directory written."""
    layout = layout_named(ckpt_format)
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    iteration = None if layout.name == "megatron" else 0
    config = config.replace(tensor_model_parallel_size=tp)
    parallel = {"tensor_model_parallel_size": tp, "pipeline_model_parallel_size": pp,
                "virtual_pipeline_model_parallel_size": None, "data_parallel_size": 1,
                "use_distributed_optimizer": False}
    args_record = dict(args_record, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp)
    stages = []
    for p in range(pp):   # every stage's map first: a key no stage holds stops before any file is written
        with parameters_on(torch.device("meta")):      # the map only: shapes and marks, no weights
            stage_model = build_stage(PipelineStage(p, pp))
        stages.append(dataclasses.replace(stage_model.sharding_map(vocab_size=vocab_size),
                                          tensor_model_parallel_size=tp))
        del stage_model
    held = {smap.global_key(key): None for smap in stages for key in smap.tensors}   # keys only: the shapes
    mismatch = describe_mismatch(held, dict.fromkeys(full_state))        # of a streamed state cost a conversion
    if mismatch is not None:
        raise ConversionError(f"the converted weights do not fit the model: {mismatch}; the converter and the "
                              f"model disagree, please report it.")
    for p, smap in enumerate(stages):
        for rank in range(tp):   # one file's tensors at a time (a streamed full_state converts again per rank)
            shard = {}
            for key, spec in smap.tensors.items():
                full = full_state[smap.global_key(key)]
                shard[key] = full.clone() if spec.replicated else \
                    shard_tensor(full, spec.split_dim, rank, tp, spec.stride).clone()
            state = {"checkpoint_version": MEGATRON_CHECKPOINT_VERSION, "format_version": FORMAT_VERSION,
                     "iteration": 0, "consumed_train_samples": 0, "consumed_valid_samples": 0,
                     "args": args_record, "model_config": config.to_dict(),
                     **model_record(family, model_options), "parallel": parallel,
                     "vocab_size": vocab_size, "padded_vocab_size": padded_vocab_size,
                     "opt_param_scheduler": {}, "rng_state": [], "sharding_map": {"model": smap.to_dict()},
                     "model": shard}
            path = layout.model_file(directory, iteration, rank, tp, p, pp)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file(layout.to_file(state), path)
            del shard, state
    tracker = "release" if iteration is None else layout.tracker_text(iteration)
    write_bytes_atomically(os.path.join(directory, layout.tracker_name), (tracker + "\n").encode())
    return layout.iteration_dir(directory, iteration)
