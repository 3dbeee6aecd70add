"""--pretrained-checkpoint: a pretraining checkpoint's encoder as a finetuning model's start.

Megatron-LM's tasks load the pretrained language model and leave the new head at its
initialization. Here the checkpoint may be any of ours (any TP x PP, either layout) or
Megatron-LM's (torch or torch_dist), of the bert, roformer or classification family: each
rank reads the slices of its chunks' tensors (reshard/on_load.pretrained_chunk_states), the
pretraining heads it has no use for (masked LM, binary) stay in the file, and the keys the
checkpoint lacks (the classification head; a pooler when it was pretrained without one) start
from their initialization. Both lists are printed, so nothing changes silently.
"""
from __future__ import annotations

from typing import List

import torch

from .. import mpu
from ..checkpoint import reshard
from ..checkpoint.compatibility import check_model
from ..checkpoint.manifest import Verification
from ..errors import CheckpointError

ENCODER_FAMILIES = ("bert", "roformer", "classification")
# Fields that change what the same weights compute (beyond the shapes check_model compares):
# a run that differs would finetune another model than the one pretrained, silently.
COMPUTATION_FIELDS = {"layernorm_epsilon": "--norm-epsilon", "layernorm_position": "--layernorm-position",
                      "rotary_interleaved": "--rotary-interleaved", "rotary_base": "--rotary-base",
                      "rotary_percent": "--rotary-percent"}


def check_computation(where: str, saved: dict, wanted: dict) -> None:
    differences = [f"{flag} {saved[field]!r} in the checkpoint vs {wanted[field]!r} here"
                   for field, flag in COMPUTATION_FIELDS.items()
                   if field in saved and field in wanted and saved[field] != wanted[field]]
    if differences:
        raise CheckpointError(f"{where} was pretrained with other model flags: {'; '.join(differences)}; give the "
                              f"checkpoint's values (its 'args' entry holds them).")


def _print(message: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(message, flush=True)


def load_pretrained_encoder(directory: str, run, chunks: List[torch.nn.Module]) -> None:
    """Load what `directory`'s checkpoint holds of `chunks` (this rank's finetuning model)."""
    source = reshard.open_source(directory, verify=Verification(
        checksums=not run.config.checkpoint.no_verify_checkpoint, optimizer=False))
    where = source.iteration_path
    family = source.head.get("model_family")
    if family not in ENCODER_FAMILIES:
        raise CheckpointError(f"--pretrained-checkpoint {directory} holds a {family} model; a classifier starts "
                              f"from a {', '.join(ENCODER_FAMILIES)} checkpoint.")
    check_model(where, source.head, run.config, run.padded_vocab_size)
    check_computation(where, source.head.get("model_config") or {}, run.config.model.to_dict())
    wanted = set()
    for chunk in chunks:
        smap = chunk.sharding_map()
        wanted.update(smap.global_key(local) for local in smap.tensors)
    if torch.distributed.is_initialized():      # the other pipeline stages' keys are wanted too
        everyone = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(everyone, sorted(wanted))
        wanted = {name for names in everyone for name in names}
    unused = sorted(name for name in source.owners if name not in wanted)
    states, fresh = reshard.pretrained_chunk_states(source, chunks, mpu.get_tensor_model_parallel_rank(),
                                                    run.config.parallel.tensor_model_parallel_size,
                                                    run.padded_vocab_size)
    for chunk, state in zip(chunks, states):
        model_state = chunk.state_dict()
        for key, tensor in state.items():
            if tuple(model_state[key].shape) != tuple(tensor.shape):
                raise CheckpointError(f"{where}: {key} is {list(tensor.shape)} there and {list(model_state[key].shape)} "
                                      f"here; use the model flags it was pretrained with.")
        chunk.load_state_dict(state, strict=False)
    _print(f"loaded the pretrained {family} encoder from {where}"
           + (f"; initialized here: {', '.join(sorted(set(fresh)))}" if fresh else "")
           + (f"; left in the checkpoint: {len(unused)} tensors ({', '.join(unused[:4])}"
              f"{', ...' if len(unused) > 4 else ''})" if unused else ""))
