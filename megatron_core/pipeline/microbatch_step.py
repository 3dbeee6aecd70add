"""One micro-batch forward and backward through one model chunk: what every schedule repeats.

The user's `forward_step_func(data_iterator, model)` runs the micro-batch and returns
`(output, loss_func)`. On a stage that is not the last, `output` goes to the next stage: a
tensor, or a flat list of tensors (T5's decoder stages pass the encoder output on). On the
last stage `loss_func(output)` returns `(loss, stats_dict)`; the loss is divided by the
number of micro-batches before its backward, so the accumulated gradients are those of
the mean loss over the batch. A result that breaks this contract is a UserError sentence
here, not a failure deep inside the p2p code.
"""
from __future__ import annotations

from typing import Callable, List, Optional

import torch

from ..errors import UserError
from .chunk import PipelineChunk, unwrap_model


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of ({', '.join(_describe(v) for v in value)})"
    return type(value).__name__


def _check_output(output, is_last_stage: bool) -> None:
    parts = output if isinstance(output, (list, tuple)) else [output]
    if any(isinstance(part, (list, tuple)) for part in parts):
        raise UserError(
            f"forward_step_func returned {_describe(output)} as its output, a nested pair like a "
            f"Transformer-XL model's (output, mems); return the output alone (`output, _ = model(..., "
            f"use_memory=True)`: each stage keeps its own mems in model.memory).")
    if not is_last_stage and not all(isinstance(part, torch.Tensor) for part in parts):
        raise UserError(f"forward_step_func returned {_describe(output)} on a pipeline stage that is not the "
                        f"last; it must return the stage's output tensor (or a list of tensors) and loss_func.")


def forward_step(forward_step_func: Callable, data_iterator, model, microbatch: int, num_microbatches: int,
                 input_tensor, stats: List[dict], is_last_stage: bool):
    """Micro-batch `microbatch` through one chunk; on the last stage returns its scaled loss."""
    chunk = unwrap_model(model)
    if not isinstance(chunk, PipelineChunk):
        raise UserError(f"{type(chunk).__name__} is not a pipeline model chunk; give it pre_process, "
                        f"post_process and the methods of megatron_core.pipeline.chunk.PipelineChunk "
                        f"(PipelineChunkMixin implements them).")
    chunk.set_input_tensor(input_tensor)
    chunk.set_current_microbatch(microbatch)
    result = forward_step_func(data_iterator, model)
    if not (isinstance(result, (list, tuple)) and len(result) == 2 and callable(result[1])):
        raise UserError(f"forward_step_func returned {_describe(result)}; it must return (output, loss_func).")
    output, loss_func = result
    _check_output(output, is_last_stage)
    if is_last_stage:
        reported = loss_func(output)
        if not (isinstance(reported, (list, tuple)) and len(reported) == 2 and isinstance(reported[0], torch.Tensor)
                and reported[0].numel() == 1 and isinstance(reported[1], dict)):
            raise UserError(f"loss_func returned {_describe(reported)}; it must return (scalar loss tensor, "
                            f"dict of stats).")
        loss, loss_stats = reported
        stats.append(loss_stats)
        output = loss / num_microbatches
    return output


def backward_step(input_tensor, output_tensor, output_tensor_grad):
    """Backward through one chunk; returns the gradient(s) for the previous stage.

    Tensors may be lists (stages that pass several tensors on, like T5's decoder stages
    forwarding the encoder output); a passed-through input then gets its gradient from
    both its use on this stage and the next stage."""
    inputs = input_tensor if isinstance(input_tensor, (list, tuple)) else [input_tensor]
    for t in inputs:
        if t is not None:
            t.retain_grad()
    if output_tensor_grad is None:  # last stage: output_tensor is the scalar loss
        torch.autograd.backward(output_tensor)
    else:
        outputs = list(output_tensor) if isinstance(output_tensor, (list, tuple)) else [output_tensor]
        grads = list(output_tensor_grad) if isinstance(output_tensor_grad, (list, tuple)) else [output_tensor_grad]
        if len(outputs) != len(grads):
            raise RuntimeError(f"stage produced {len(outputs)} outputs but received {len(grads)} gradients; "
                               f"check P2PConfig.stage_output_shapes.")
        torch.autograd.backward(outputs, grad_tensors=grads)
    grads_in: List[Optional[torch.Tensor]] = [t.grad if t is not None else None for t in inputs]
    return grads_in if isinstance(input_tensor, (list, tuple)) else grads_in[0]
