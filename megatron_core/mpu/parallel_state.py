"""Process groups for tensor, pipeline and data parallelism.

Rank order follows Megatron-LM: tensor-parallel ranks are adjacent, then data-parallel,
then pipeline. With world 8, TP=2, PP=2:
    TP groups [0,1] [2,3] [4,5] [6,7]
    DP groups [0,2] [1,3] [4,6] [5,7]
    PP groups [0,4] [1,5] [2,6] [3,7]
Every rank must call `initialize_model_parallel` with the same arguments, because
`torch.distributed.new_group` is collective over the whole world. The arithmetic of the
layout (ParallelLayout, PipelineStage) lives in layout.py and needs no processes.
`timeout` bounds every collective of the groups (as --distributed-timeout-minutes does the
world's); without it torch gives new groups its default, 30 minutes on gloo.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch.distributed as dist

from ..errors import ConfigError
from .layout import ParallelLayout, PipelineStage


@dataclass
class _State:
    layout: ParallelLayout
    rank: int
    groups: Dict[str, object] = field(default_factory=dict)
    ranks: Dict[str, List[int]] = field(default_factory=dict)
    virtual_pipeline_model_parallel_size: Optional[int] = None
    virtual_pipeline_model_parallel_rank: Optional[int] = None
    timeout: Optional[datetime.timedelta] = None


_STATE: Optional[_State] = None


def initialize_model_parallel(tensor_model_parallel_size: int = 1,
                              pipeline_model_parallel_size: int = 1,
                              virtual_pipeline_model_parallel_size: Optional[int] = None,
                              pipeline_model_parallel_split_rank: Optional[int] = None,
                              timeout: Optional[datetime.timedelta] = None) -> None:
    """Create the tensor/pipeline/data/model/embedding groups on an initialized world."""
    global _STATE
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "torch.distributed is not initialized; call torch.distributed.init_process_group "
            "(or megatron_core.training.initialize) before initialize_model_parallel."
        )
    if _STATE is not None:
        raise RuntimeError("model parallel groups are already initialized; call destroy_model_parallel() first.")
    layout = ParallelLayout(dist.get_world_size(), tensor_model_parallel_size, pipeline_model_parallel_size,
                            pipeline_model_parallel_split_rank)
    if virtual_pipeline_model_parallel_size is not None:
        if pipeline_model_parallel_size < 2:
            raise ValueError("virtual_pipeline_model_parallel_size needs pipeline_model_parallel_size >= 2.")
        if virtual_pipeline_model_parallel_size < 1:
            raise ValueError("virtual_pipeline_model_parallel_size must be at least 1.")
    rank = dist.get_rank()
    state = _State(layout=layout, rank=rank,
                   virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
                   virtual_pipeline_model_parallel_rank=0 if virtual_pipeline_model_parallel_size else None,
                   timeout=timeout)
    all_groups = {
        "tensor": layout.tensor_groups(),
        "pipeline": layout.pipeline_groups(),
        "data": layout.data_groups(),
        "model": layout.model_groups(),
        "embedding": layout.embedding_groups(),
        "position_embedding": layout.position_embedding_groups(),
    }
    for name, group_list in all_groups.items():
        for ranks in group_list:
            # new_group is collective: every rank creates every group, keeps its own.
            group = dist.new_group(ranks, timeout=timeout)
            if rank in ranks:
                state.groups[name] = group
                state.ranks[name] = ranks
    _STATE = state


def model_parallel_is_initialized() -> bool:
    return _STATE is not None


def destroy_model_parallel() -> None:
    global _STATE
    _STATE = None


def _state() -> _State:
    if _STATE is None:
        raise RuntimeError("model parallel groups are not initialized; call initialize_model_parallel() first.")
    return _STATE


def _group(name: str):
    state = _state()
    return state.groups[name]


def _ranks(name: str) -> List[int]:
    return _state().ranks[name]


# --- groups -------------------------------------------------------------------------
def get_tensor_model_parallel_group():
    return _group("tensor")


def get_pipeline_model_parallel_group():
    return _group("pipeline")


def get_data_parallel_group():
    return _group("data")


def get_model_parallel_group():
    return _group("model")


def get_pipeline_stages_group(stages: Sequence[int]):
    """(group, ranks) of this pipeline's ranks at pipeline stages `stages`; (None, []) when
    this rank is not one of them. The groups (one per pipeline) are created on the first
    call, which is collective over the whole world: every rank asks for the same stages in
    the same order, and they live until destroy_model_parallel."""
    state = _state()
    stages = tuple(sorted(set(stages)))
    name = "stages " + ",".join(map(str, stages))
    if name not in state.ranks:
        state.groups[name], state.ranks[name] = None, []
        for ranks in state.layout.pipeline_groups():
            members = [ranks[s] for s in stages]
            group = dist.new_group(members, timeout=state.timeout)
            if state.rank in members:
                state.groups[name], state.ranks[name] = group, members
    return state.groups[name], list(state.ranks[name])


def get_embedding_group():
    return _group("embedding")


def get_position_embedding_group():
    return _group("position_embedding")


def get_tensor_model_parallel_ranks() -> List[int]:
    return list(_ranks("tensor"))


def get_pipeline_model_parallel_ranks() -> List[int]:
    return list(_ranks("pipeline"))


def get_data_parallel_ranks() -> List[int]:
    return list(_ranks("data"))


def get_embedding_ranks() -> List[int]:
    return list(_ranks("embedding"))


def is_rank_in_embedding_group(ignore_virtual: bool = False) -> bool:
    # Middle pipeline stages belong to no embedding group.
    ranks = _state().ranks.get("embedding", [])
    rank = _state().rank
    if rank not in ranks:
        return False
    if ignore_virtual:
        return True
    if rank == ranks[0]:
        return is_pipeline_first_stage()
    if rank == ranks[-1]:
        return is_pipeline_last_stage()
    return True


def is_rank_in_position_embedding_group() -> bool:
    return _state().rank in _state().ranks.get("position_embedding", [])


# --- sizes and ranks -------------------------------------------------------------------
def get_tensor_model_parallel_world_size() -> int:
    return _state().layout.tensor_model_parallel_size


def get_pipeline_model_parallel_world_size() -> int:
    return _state().layout.pipeline_model_parallel_size


def get_data_parallel_world_size() -> int:
    return _state().layout.data_parallel_size


def get_tensor_model_parallel_rank() -> int:
    return _ranks("tensor").index(_state().rank)


def get_pipeline_model_parallel_rank() -> int:
    return _ranks("pipeline").index(_state().rank)


def get_data_parallel_rank() -> int:
    return _ranks("data").index(_state().rank)


def get_tensor_model_parallel_src_rank() -> int:
    """Global rank of the first member of this rank's tensor-parallel group."""
    return _ranks("tensor")[0]


def get_data_parallel_src_rank() -> int:
    return _ranks("data")[0]


def get_pipeline_model_parallel_first_rank() -> int:
    return _ranks("pipeline")[0]


def get_pipeline_model_parallel_last_rank() -> int:
    return _ranks("pipeline")[-1]


def get_pipeline_model_parallel_next_rank() -> int:
    ranks = _ranks("pipeline")
    return ranks[(ranks.index(_state().rank) + 1) % len(ranks)]


def get_pipeline_model_parallel_prev_rank() -> int:
    ranks = _ranks("pipeline")
    return ranks[(ranks.index(_state().rank) - 1) % len(ranks)]


def get_pipeline_model_parallel_split_rank() -> Optional[int]:
    """Stage where an encoder-decoder model's decoder starts (T5); None otherwise."""
    return _state().layout.pipeline_model_parallel_split_rank


# --- virtual pipeline -----------------------------------------------------------------
def get_virtual_pipeline_model_parallel_world_size() -> Optional[int]:
    return _state().virtual_pipeline_model_parallel_size


def get_virtual_pipeline_model_parallel_rank() -> Optional[int]:
    return _state().virtual_pipeline_model_parallel_rank


def set_virtual_pipeline_model_parallel_rank(rank: int) -> None:
    _state().virtual_pipeline_model_parallel_rank = rank


def get_pipeline_stage(virtual_rank: Optional[int] = None) -> PipelineStage:
    """This process's pipeline stage, to pass to a model: with virtual stages, the chunk
    `virtual_rank` (each process builds one model chunk per virtual stage)."""
    virtual_size = get_virtual_pipeline_model_parallel_world_size()
    if virtual_size is not None and virtual_rank is None:
        raise ConfigError(f"the pipeline has {virtual_size} virtual stages; pass the chunk's virtual_rank "
                          f"(0..{virtual_size - 1}) to get_pipeline_stage.")
    if virtual_size is None and virtual_rank is not None:
        raise ConfigError(f"virtual_rank {virtual_rank} given but the pipeline has no virtual stages; initialize "
                          f"with virtual_pipeline_model_parallel_size or drop virtual_rank.")
    size = get_pipeline_model_parallel_world_size()
    split = get_pipeline_model_parallel_split_rank() if size > 1 else None
    return PipelineStage(get_pipeline_model_parallel_rank(), size, virtual_rank, virtual_size, split)


# --- stage predicates -------------------------------------------------------------------
def is_pipeline_first_stage(ignore_virtual: bool = False) -> bool:
    if not ignore_virtual:
        vsize = get_virtual_pipeline_model_parallel_world_size()
        if vsize is not None and get_virtual_pipeline_model_parallel_rank() != 0:
            return False
    return get_pipeline_model_parallel_rank() == 0


def is_pipeline_last_stage(ignore_virtual: bool = False) -> bool:
    if not ignore_virtual:
        vsize = get_virtual_pipeline_model_parallel_world_size()
        if vsize is not None and get_virtual_pipeline_model_parallel_rank() != vsize - 1:
            return False
    return get_pipeline_model_parallel_rank() == get_pipeline_model_parallel_world_size() - 1


def is_pipeline_stage_before_split(rank: Optional[int] = None) -> bool:
    """True on encoder stages of an encoder-decoder pipeline (all stages if no split)."""
    split = get_pipeline_model_parallel_split_rank()
    if get_pipeline_model_parallel_world_size() == 1 or split is None:
        return True
    rank = get_pipeline_model_parallel_rank() if rank is None else rank
    return rank < split


def is_pipeline_stage_after_split(rank: Optional[int] = None) -> bool:
    split = get_pipeline_model_parallel_split_rank()
    if get_pipeline_model_parallel_world_size() == 1 or split is None:
        return True
    rank = get_pipeline_model_parallel_rank() if rank is None else rank
    return rank >= split
