"""Mixed precision in the native backend at DP=2 with ZeRO-1.

bf16 weights with fp32 master weights stay within bf16 rounding of the fp32 run for 5
steps. fp16 with dynamic loss scaling: an inf injected into one rank's gradient shard makes
every rank skip (found-inf agreed over data parallelism), the weights stay untouched, and
the scale halves on the second overflow (hysteresis 2). Without a scaler (bf16) a NaN
gradient on one rank also skips the step everywhere.
"""
import math

import torch

from megatron_core.mpu import parallel_state as ps
from tests.harness import run_distributed
from tests.harness.gpt_fixture import global_batches, gpt_step, tiny_gpt
from tests.harness.training_steps import backend_steps
from megatron_core.training.config import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_core.training.grad_buffer import shard_range
from megatron_core.training.backends.native import build_backend

OPT = OptimizerConfig(lr=1e-3, weight_decay=0.1, clip_grad=0.5)
ZERO = ParallelConfig(use_distributed_optimizer=True, overlap_grad_reduce=True, ddp_bucket_size=400, world_size=2)
# The fault injections write the local gradient before the reduce-scatter: no overlap there.
ZERO_AT_STEP = ParallelConfig(use_distributed_optimizer=True, ddp_bucket_size=400, world_size=2)
STEPS, MICROBATCHES = 5, 4


def _train(dtype, precision, before_step=None, steps=STEPS):
    model = tiny_gpt(dtype=dtype)
    backend = build_backend([model], OPT, precision, ZERO)
    results = backend_steps([model], backend, global_batches(steps, MICROBATCHES), gpt_step, before_step=before_step)
    return model, backend, results


def _inject_on_rank_1(backend, value):
    """Put `value` into rank 1's local gradient where rank 1 owns the reduced shard: only
    rank 1 sees it after the reduce-scatter."""
    def inject(index):
        if index in (1, 2) and ps.get_data_parallel_rank() == 1:
            buffer = backend.buffers[0]
            start, _ = shard_range(buffer.plans[0], 1, 2)
            buffer.grad_data[start] = value
    return inject


def _bf16_and_fp16():
    ps.initialize_model_parallel(1, 1)
    reference, _, _ = _train(torch.float32, PrecisionConfig())
    model, backend, results = _train(torch.bfloat16, PrecisionConfig(bf16=True))
    assert all(r.updated and r.loss_scale is None for r in results)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert backend.masters and all(m.param.dtype == torch.float32 for m in backend.masters)
    for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
        # bf16 keeps 8 bits of mantissa: the weights are the fp32 run's up to its rounding.
        torch.testing.assert_close(p.float(), ref, atol=4e-3, rtol=2 ** -6, msg=lambda m: f"{name}: {m}")

    # fp16: an inf on rank 1 only, at steps 1 and 2.
    precision = PrecisionConfig(fp16=True, initial_loss_scale=2.0 ** 10, hysteresis=2, loss_scale_window=1000)
    model = tiny_gpt(dtype=torch.float16)
    backend = build_backend([model], OPT, precision, ZERO_AT_STEP)
    snapshots = []
    inject = _inject_on_rank_1(backend, math.inf)

    def snapshot_and_inject(index):
        snapshots.append([p.detach().clone() for p in model.parameters()])
        inject(index)

    results = backend_steps([model], backend, global_batches(STEPS, MICROBATCHES), gpt_step,
                            before_step=snapshot_and_inject)
    assert [r.updated for r in results] == [True, False, False, True, True]
    assert [r.loss_scale for r in results] == [1024.0, 1024.0, 1024.0, 512.0, 512.0]
    assert results[1].grad_norm is None and results[2].grad_norm is None
    assert backend.loss_scale == 512.0
    for before, after in zip(snapshots[1], snapshots[3]):   # the skipped steps left the weights alone
        assert torch.equal(before, after)
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[0], snapshots[1]))
    assert all(p.dtype == torch.float16 and torch.isfinite(p).all() for p in model.parameters())

    # bf16 without a scaler: a NaN gradient still skips, everywhere.
    model = tiny_gpt(dtype=torch.bfloat16)
    backend = build_backend([model], OPT, PrecisionConfig(bf16=True), ZERO_AT_STEP)
    results = backend_steps([model], backend, global_batches(4, MICROBATCHES), gpt_step,
                            before_step=_inject_on_rank_1(backend, math.nan))
    assert [r.updated for r in results] == [True, False, False, True]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_masters_near_fp32_and_fp16_inf_on_one_rank_skips_everywhere_and_halves_scale():
    run_distributed(_bf16_and_fp16, 2, timeout=240)
