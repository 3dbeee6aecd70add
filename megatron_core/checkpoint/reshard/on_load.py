"""Resharding on load: a run whose TP / PP / DP sizes (or optimizer layout) differ from
the checkpoint's reads, on each rank, only the slices its own chunks need.

The target layout is the run's own model: each chunk's sharding map names every tensor
it holds by the whole model's key (copies by their original), so a (TP, PP) rank asks
the saved checkpoint for exactly those keys at its tensor-parallel rank. The optimizer
state comes out per parameter (source.py), which the native backend loads at any
data-parallel size and with either optimizer layout, each master taking its elements.

Carried: weights, optimizer state (fp32 masters of a bf16/fp16 run included), iteration,
consumed samples (so the data goes on at the next sample of the one global order), the
scheduler and the loss scaler. Not carried: the RNG streams, which belong to the saved
ranks (Megatron-LM does not carry them across TP changes either); the run keeps the
streams it seeded from --seed at start.
"""
from __future__ import annotations

from typing import Dict, List, Optional

from ...errors import CheckpointError
from ..contents import PER_PARAMETER, model_keys
from ..formats import detect_layout
from ..state_dict_fit import describe_mismatch
from .source import SavedCheckpoint
from .targets import target_optimizer_state, target_weight


def needs_resharding(parallel: Dict, run) -> bool:
    """Whether a checkpoint saved with `parallel` (contents.parallel_record) must be resharded for `run`."""
    p = run.parallel
    if not parallel:
        return False
    sizes_differ = (parallel["tensor_model_parallel_size"], parallel["pipeline_model_parallel_size"]) != \
        (p.tensor_model_parallel_size, p.pipeline_model_parallel_size)
    if parallel.get("optimizer_per_parameter") or parallel.get("optimizer_dropped"):
        return sizes_differ     # written by change_mp: any optimizer layout and DP size load it as it is
    distributed = bool(parallel.get("use_distributed_optimizer"))
    return sizes_differ or distributed != p.use_distributed_optimizer \
        or (distributed and parallel.get("data_parallel_size") != p.data_parallel_size)


def describe(parallel: Dict, run, iteration) -> str:
    p = run.parallel
    saved = (f"TP={parallel['tensor_model_parallel_size']} PP={parallel['pipeline_model_parallel_size']} "
             f"DP={parallel.get('data_parallel_size')}")
    return (f"resharded checkpoint iteration {iteration if iteration is not None else 'release'} from {saved} to "
            f"TP={p.tensor_model_parallel_size} PP={p.pipeline_model_parallel_size} DP={p.data_parallel_size} on load")


def resharded_chunk_states(source: SavedCheckpoint, chunks: List, tensor_rank: int, tensor_size: int,
                           padded_vocab_size: Optional[int], with_optimizer: bool):
    """(state dict per chunk, per-parameter optimizer state {chunk key: {name: fields}} or None)."""
    keys = model_keys(len(chunks))
    states, optimizer = [], {} if with_optimizer else None
    if with_optimizer and not source.has_optimizer():
        raise CheckpointError(f"{source.iteration_path} holds no optimizer state to reshard; load it with "
                              f"--no-load-optim.")
    for key, chunk in zip(keys, chunks):
        target = chunk.sharding_map()
        # (keys of other pipeline stages are not this chunk's: only the missing ones can be named here)
        wanted = [target.global_key(local) for local in target.tensors]
        missing = describe_mismatch(dict.fromkeys(wanted), dict.fromkeys(n for n in wanted if n in source.owners))
        if missing is not None:
            raise CheckpointError(f"{source.iteration_path} does not fit this model: {missing}; it was saved from "
                                  f"another model: use the model flags it was saved with.")
        trainable = {name for name, p in chunk.named_parameters() if p.requires_grad}
        state = {}
        for local, spec in target.tensors.items():
            name = target.global_key(local)
            state[local] = target_weight(source, name, spec, tensor_rank, tensor_size, padded_vocab_size)
            if optimizer is not None and local in trainable:
                optimizer.setdefault(key, {})[local] = target_optimizer_state(
                    source, name, spec, tensor_rank, tensor_size, padded_vocab_size)
        states.append(state)
    source.files.release()
    return states, optimizer


def pretrained_chunk_states(source: SavedCheckpoint, chunks: List, tensor_rank: int, tensor_size: int,
                            padded_vocab_size: Optional[int]):
    """Each chunk's tensors that `source` holds, cut for this rank (no optimizer), and the chunks'
    global keys it does not hold: a finetuning model's new head starts from its initialization."""
    states, fresh = [], []
    for chunk in chunks:
        target = chunk.sharding_map()
        state = {}
        for local, spec in target.tensors.items():
            name = target.global_key(local)
            if name in source.owners:
                state[local] = target_weight(source, name, spec, tensor_rank, tensor_size, padded_vocab_size)
            else:
                fresh.append(name)
        states.append(state)
    source.files.release()
    return states, fresh


def saved_padded_vocab_size(directory: Optional[str], preferred) -> Optional[int]:
    """The padded vocabulary of the checkpoint --load names (None: no checkpoint there), read
    from its first model file's index only (memory-mapped): a run keeps it, whatever its TP."""
    if not directory:
        return None
    try:
        found = detect_layout(directory, preferred)
        if found is None:
            return None
        layout, iteration = found
        first = layout.first_model_file(layout.iteration_dir(directory, iteration))
        return layout.read(first, mmap=True).get("padded_vocab_size") if first else None
    except (CheckpointError, OSError):
        return None     # the checkpointer's load reports a damaged checkpoint in its own words


__all__ = ["needs_resharding", "describe", "resharded_chunk_states", "pretrained_chunk_states",
           "saved_padded_vocab_size", "PER_PARAMETER"]
