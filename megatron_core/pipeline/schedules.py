"""Forward/backward over the micro-batches of one global batch, with or without pipelining.

    forward_backward = get_forward_backward_func()
    losses = forward_backward(forward_step_func=step, data_iterator=it, model=model,
                              num_microbatches=8, p2p_config=P2PConfig(tensor_shape=[s, b, h]))

`forward_step_func(data_iterator, model_chunk)` runs one micro-batch through the chunk
and returns `(output, loss_func)`; on the last stage `loss_func(output)` returns
`(loss, stats_dict)` (microbatch_step.py runs one micro-batch forward and backward, the
same for every schedule). Each micro-batch's loss is divided by num_microbatches before
its backward, so the accumulated gradients are those of the mean loss over the batch.
The return value is the list of stats dicts of the last stage (empty elsewhere).

Three schedules, chosen from the parallel state like Megatron's:
  * no pipelining (PP=1): run all micro-batches one after the other, accumulating grads;
  * 1F1B (PP>1): warm up with forwards, then alternate one forward and one backward,
    then drain the backwards; at most PP micro-batches' activations are alive at once;
  * interleaved 1F1B (PP>1 with virtual stages): each rank holds several model chunks
    (`model` is a list), micro-batches go round the ring once per chunk, which shrinks
    the pipeline bubble by the number of chunks.
`forward_only=True` runs the forward passes only (evaluation) on every schedule.

Model chunks meet pipeline/chunk.py's PipelineChunk: they receive a stage's input through
`set_input_tensor(tensor)` (None on the first stage; the forward_step_func does not pass
it) and learn the index of the micro-batch being run (`current_microbatch`), which keys
state carried from one iteration to the next, like Transformer-XL's mems.
"""
from __future__ import annotations

import contextlib
from typing import Callable, List, Optional

import torch

from ..mpu import parallel_state as ps
from . import p2p
from .interleaved import forward_backward_pipelining_with_interleaving
from .microbatch_step import backward_step, forward_step
from .p2p import P2PConfig


def _no_sync(model):
    """torch DDP accumulates without all-reducing until the last micro-batch. Only DDP: a
    DeepSpeed engine also has no_sync(), but it reduces at engine.step() anyway (the
    backend turns off its managed accumulation) and refuses no_sync under ZeRO-2/3."""
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    return model.no_sync() if ddp else contextlib.nullcontext()


def _as_single_model(model):
    if isinstance(model, (list, tuple)):
        if len(model) != 1:
            raise ValueError(f"this schedule runs one model chunk per rank but got {len(model)}; "
                             f"use the interleaved schedule (virtual_pipeline_model_parallel_size).")
        return model[0]
    return model


def _one_iterator(data_iterator):
    if isinstance(data_iterator, (list, tuple)):
        return data_iterator[0]
    return data_iterator


def forward_backward_no_pipelining(*, forward_step_func: Callable, data_iterator, model,
                                   num_microbatches: int, forward_only: bool = False,
                                   p2p_config: Optional[P2PConfig] = None) -> List[dict]:
    """Gradient accumulation over micro-batches on a single stage."""
    model = _as_single_model(model)
    data_iterator = _one_iterator(data_iterator)
    stats: List[dict] = []

    def run(i):
        loss = forward_step(forward_step_func, data_iterator, model, i, num_microbatches, None, stats, True)
        if not forward_only:
            backward_step(None, loss, None)

    with _no_sync(model):
        for i in range(num_microbatches - 1):
            run(i)
    run(num_microbatches - 1)  # the last one lets DDP all-reduce
    return stats


def forward_backward_pipelining_without_interleaving(*, forward_step_func: Callable, data_iterator, model,
                                                     num_microbatches: int, p2p_config: P2PConfig,
                                                     forward_only: bool = False) -> List[dict]:
    """1F1B: warm-up forwards, steady one-forward-one-backward, cool-down backwards."""
    model = _as_single_model(model)
    data_iterator = _one_iterator(data_iterator)
    stats: List[dict] = []
    last = ps.is_pipeline_last_stage()
    stages, stage = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    # Stage i must run PP - i - 1 forwards before the first gradient can come back to it.
    warmup = min(stages - stage - 1, num_microbatches)
    steady = num_microbatches - warmup
    inputs: List[Optional[torch.Tensor]] = []
    outputs: List[torch.Tensor] = []
    started = 0  # micro-batches whose forward has run

    def forward(input_tensor):
        nonlocal started
        started += 1
        return forward_step(forward_step_func, data_iterator, model, started - 1, num_microbatches, input_tensor,
                            stats, last)

    for _ in range(warmup):
        input_tensor = p2p.recv_forward(p2p_config)
        output = forward(input_tensor)
        p2p.send_forward(output, p2p_config)
        if not forward_only:
            inputs.append(input_tensor)
            outputs.append(output)

    input_tensor = p2p.recv_forward(p2p_config) if steady > 0 else None
    for i in range(steady):
        is_last_step = i == steady - 1
        output = forward(input_tensor)
        if forward_only:
            p2p.send_forward(output, p2p_config)
            if not is_last_step:
                input_tensor = p2p.recv_forward(p2p_config)
            continue
        output_grad = p2p.send_forward_recv_backward(output, p2p_config)
        inputs.append(input_tensor)
        outputs.append(output)
        # The oldest micro-batch in flight is the one whose gradient just arrived.
        input_grad = backward_step(inputs.pop(0), outputs.pop(0), output_grad)
        if is_last_step:
            input_tensor = None
            p2p.send_backward(input_grad, p2p_config)
        else:
            input_tensor = p2p.send_backward_recv_forward(input_grad, p2p_config)

    if not forward_only:
        for _ in range(warmup):
            output_grad = p2p.recv_backward(p2p_config)
            input_grad = backward_step(inputs.pop(0), outputs.pop(0), output_grad)
            p2p.send_backward(input_grad, p2p_config)
    return stats


def get_forward_backward_func() -> Callable:
    """The schedule for the current parallel state (Megatron's entry point)."""
    if ps.get_pipeline_model_parallel_world_size() > 1:
        if ps.get_virtual_pipeline_model_parallel_world_size() is not None:
            return forward_backward_pipelining_with_interleaving
        return forward_backward_pipelining_without_interleaving
    return forward_backward_no_pipelining
