"""Pipeline parallelism: the model-chunk contract, p2p exchange between stages, the
per-micro-batch steps and the forward/backward schedules."""
from .chunk import PipelineChunk, PipelineChunkMixin, mark_stage_copy, unwrap_model
from .finalize_grads import finalize_model_grads
from .p2p import P2PConfig
from .schedules import get_forward_backward_func

__all__ = ["P2PConfig", "PipelineChunk", "PipelineChunkMixin", "finalize_model_grads", "get_forward_backward_func",
           "mark_stage_copy", "unwrap_model"]
