"""Shared machinery for the pipeline tests: run a model family serially and through a
pipeline schedule inside the same worker processes, and compare losses and gradients.

The serial run happens first on every rank with TP=1, PP=1 (the whole world is data
parallel, so nothing is split); then the parallel state is rebuilt with the layout under
test. Per-component seeding makes every stage hold exactly the serial weights, so the
losses and gradients must agree to float tolerance. `build(stage)` builds one model chunk
(an mpu.PipelineStage); a chunk's parameter names go to the serial model's by its
sharding map.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from megatron_core.mpu import parallel_state as ps
from megatron_core.mpu.grads import clip_grad_norm
from megatron_core.mpu.layout import PipelineStage
from megatron_core.pipeline.finalize_grads import allreduce_data_parallel_grads, finalize_model_grads
from megatron_core.pipeline.p2p import P2PConfig
from megatron_core.pipeline.schedules import get_forward_backward_func
from tests.harness.model_checks import local_shard


@dataclass
class SerialStep:
    losses: List[float]
    grads: Dict[str, torch.Tensor]
    grad_norm: float                          # 2-norm over every parameter's gradient
    weights_after: Dict[str, torch.Tensor]    # after one step of make_optimizer (if given)


def serial_step(build: Callable, batches: List[dict], step: Callable,
                make_optimizer: Optional[Callable] = None) -> SerialStep:
    """The serial model's losses, gradients, gradient norm and (with make_optimizer, a
    function of the parameter list) its weights after one optimizer step."""
    ps.initialize_model_parallel(1, 1)
    model = build(PipelineStage())
    losses = []
    for batch in batches:
        loss = step(model, batch) / len(batches)
        loss.backward()
        losses.append(loss.item() * len(batches))
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])).item()
    weights = {}
    if make_optimizer is not None:
        make_optimizer(list(model.parameters())).step()
        weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    ps.destroy_model_parallel()
    return SerialStep(losses, grads, norm, weights)


def check_norm_and_step(chunks, reference: SerialStep, make_optimizer: Callable) -> None:
    """The pipeline's gradient norm (mpu.clip_grad_norm over this replica) is the serial
    norm, and after one optimizer step every parameter, copies of shared tables included,
    holds its slice of the serial weights (named through the chunk's sharding map)."""
    params = [p for chunk in chunks for p in chunk.parameters()]
    norm = clip_grad_norm(params, max_norm=1e9)
    assert abs(norm - reference.grad_norm) <= 1e-5 * max(1.0, reference.grad_norm), (norm, reference.grad_norm)
    make_optimizer(params).step()
    for chunk in chunks:
        sharding = chunk.sharding_map()
        for name, param in chunk.named_parameters():
            want = local_shard(param, reference.weights_after[sharding.global_key(name)])
            torch.testing.assert_close(param.detach(), want, atol=1e-6, rtol=1e-5,
                                       msg=lambda m: f"{name} after the step: {m}")


def run_pipeline(build: Callable, batches: List[dict], step: Callable, tp: int, pp: int,
                 virtual: Optional[int], p2p_config: P2PConfig, forward_only: bool = False,
                 split_rank: Optional[int] = None):
    """This rank's model chunks and loss stats after one schedule run over its batches."""
    ps.initialize_model_parallel(tp, pp, virtual, pipeline_model_parallel_split_rank=split_rank)
    chunks = []
    for v in range(virtual or 1):
        chunks.append(build(ps.get_pipeline_stage(v if virtual else None)))
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    per_rank = len(batches) // dp
    mine = batches[dp_rank * per_rank:(dp_rank + 1) * per_rank]

    def forward_step_func(data_iterator, model):
        batch = next(data_iterator)
        output = step(model, batch)
        return output, lambda out: (out, {"loss": out.detach().clone()})

    iterators = [iter(mine) for _ in chunks]
    schedule = get_forward_backward_func()
    stats = schedule(forward_step_func=forward_step_func, data_iterator=iterators if virtual else iterators[0],
                     model=chunks if virtual else chunks[0], num_microbatches=per_rank, p2p_config=p2p_config,
                     forward_only=forward_only)
    if not forward_only:
        finalize_model_grads(chunks if virtual else chunks[0])
        allreduce_data_parallel_grads([p for chunk in chunks for p in chunk.parameters()])
    return chunks, stats, mine


def check_grads(chunks, serial: Dict[str, torch.Tensor], atol=1e-5, rtol=1e-4) -> int:
    """Every parameter's gradient on this rank equals its slice of the serial gradient (the
    chunk's sharding map names the serial parameter: global layer index, copies' original)."""
    checked = 0
    for chunk in chunks:
        sharding = chunk.sharding_map()
        for name, param in chunk.named_parameters():
            ref = local_shard(param, serial[sharding.global_key(name)])
            assert param.grad is not None, f"{name} got no gradient"
            torch.testing.assert_close(param.grad, ref, atol=atol, rtol=rtol, msg=lambda m: f"{name}: {m}")
            checked += 1
    return checked
