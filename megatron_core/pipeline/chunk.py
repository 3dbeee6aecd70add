"""What a model chunk offers the pipeline: the one contract GPT, BERT, T5 and Transformer-XL meet.

A chunk is the part of a model that one pipeline stage (or virtual stage) holds. The
schedules and the gradient finalization talk to it only through `PipelineChunk`:

    pre_process           the chunk embeds input ids (the first stage of its stack)
    post_process          the chunk computes the output / loss (the last stage)
                          (both follow from the chunk's `stage`, an mpu.PipelineStage:
                          is_first / is_last; the mixin reads them there, never stores them)
    set_input_tensor(t)   the previous stage's output for the next forward (None on a
                          first stage; a one-element list counts as its tensor)
    input_tensor          what set_input_tensor received
    set_current_microbatch(i) / current_microbatch
                          the index (0 .. M-1 within the global batch) of the micro-batch
                          the schedule is running; state carried per micro-batch stream
                          from one iteration to the next (Transformer-XL's mems) is keyed by it
    word_embeddings_weight()
                          this stage's copy of the word table (its input embedding, or the
                          copy a tied output layer multiplies by), None if it holds none
    stage_copies()        {key: parameter} for the parameters of which other stages hold
                          copies of their own (word and position tables, T5's relative-bias
                          tables, Transformer-XL's shared r_w_bias / r_r_bias)
    evaluation_scope()    optional: a context manager the training loop's evaluation runs
                          in, for chunks with state carried between batches
                          (Transformer-XL keeps validation's memory apart from training's)

Stage copies. One parameter of the serial model may live on several stages: the word
table on the first stage and on the last (a tied head) or the first decoder stage (T5),
a table every stage of a stack uses. Each copy is marked with `mark_stage_copy(param, key,
owner)` (mpu/sharding_map.py; `key` is the parameter's key in the whole model's state
dict); finalize_model_grads sums the gradients of all copies with the same key over the
stages that hold one (whatever the tying), so every copy takes the same optimizer step;
the copies that do not own the parameter are `shared`, so the gradient norm counts it
once, and the chunk's sharding map saves them as copies of `key`.
`PipelineChunkMixin` implements the protocol once for every model family.
"""
from __future__ import annotations

from typing import Dict, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import nn

from ..mpu.layout import PipelineStage
from ..mpu.sharding_map import STAGE_COPY_ATTRIBUTE, mark_stage_copy

__all__ = ["PipelineChunk", "PipelineChunkMixin", "mark_stage_copy", "unwrap_model"]

InputTensor = Union[None, torch.Tensor, Sequence[Optional[torch.Tensor]]]


@runtime_checkable
class PipelineChunk(Protocol):
    pre_process: bool
    post_process: bool
    input_tensor: InputTensor
    current_microbatch: Optional[int]

    def set_input_tensor(self, tensor: InputTensor) -> None: ...

    def set_current_microbatch(self, index: int) -> None: ...

    def word_embeddings_weight(self) -> Optional[torch.Tensor]: ...

    def stage_copies(self) -> Dict[str, nn.Parameter]: ...


class PipelineChunkMixin:
    """PipelineChunk for nn.Modules. Models set `stage` (the mpu.PipelineStage they build;
    pre_process / post_process are read off it) and keep the word table at
    `embedding.word_embeddings` or, as a tied head's copy, `word_embeddings`;
    `max_input_tensors` is how many tensors a stage receives (T5's decoder stages: 2)."""

    stage: PipelineStage
    max_input_tensors = 1
    input_tensor: InputTensor = None
    current_microbatch: Optional[int] = None

    @property
    def pre_process(self) -> bool:
        return self.stage.is_first

    @property
    def post_process(self) -> bool:
        return self.stage.is_last

    def set_input_tensor(self, tensor: InputTensor) -> None:
        if isinstance(tensor, (list, tuple)):
            if len(tensor) == 1:
                tensor = tensor[0]
            elif not 1 < len(tensor) <= self.max_input_tensors:
                raise ValueError(f"{type(self).__name__} takes at most {self.max_input_tensors} input tensor(s), "
                                 f"got {len(tensor)}.")
        self.input_tensor = tensor

    def set_current_microbatch(self, index: int) -> None:
        self.current_microbatch = index

    def word_embeddings_weight(self) -> Optional[torch.Tensor]:
        embedding = getattr(self, "embedding", None)
        if embedding is not None:
            return embedding.word_embeddings.weight
        copy = getattr(self, "word_embeddings", None)
        return copy.weight if copy is not None else None

    def stage_copies(self) -> Dict[str, nn.Parameter]:
        found: Dict[str, nn.Parameter] = {}
        for param in self.parameters():
            key = getattr(param, STAGE_COPY_ATTRIBUTE, None)
            if key is None:
                continue
            if key in found:
                raise RuntimeError(f"{type(self).__name__} holds two parameters marked as copies of {key!r}.")
            found[key] = param
        return found


def unwrap_model(model):
    """The chunk itself, through DDP/DeepSpeed wrappers (which keep it as `.module`)."""
    while not isinstance(model, PipelineChunk) and hasattr(model, "module"):
        model = model.module
    return model
