"""The native backend at DP=2 equals one serial process running plain AdamW for 5 steps:
plain all-reduce, overlapped bucketed all-reduce (with an unused parameter), ZeRO-1 and
ZeRO-1 overlapped; ZeRO-1 equals the plain DP=2 backend; the reported gradient norm is the
serial norm. Weight decay on matrices only and clipping are active in every run.
"""
import pytest
import torch

from megatron_core.mpu import parallel_state as ps
from tests.harness import run_distributed
from tests.harness.gpt_fixture import global_batches, gpt_step, tiny_gpt
from tests.harness.training_steps import assert_params_match, backend_steps, serial_adamw_steps
from megatron_core.training.config import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_core.training.backends.native import build_backend

pytestmark = pytest.mark.quick

OPT = OptimizerConfig(lr=1e-3, weight_decay=0.1, clip_grad=0.5)
TOL = dict(atol=1e-5, rtol=1e-4)
STEPS, MICROBATCHES = 5, 4


def _run(zero, overlap, unused=False, bucket_size=300):
    model = tiny_gpt()
    if unused:  # a parameter no forward uses: its bucket must still be reduced, at step()
        model.unused = torch.nn.Parameter(torch.zeros(3))
    parallel = ParallelConfig(use_distributed_optimizer=zero, overlap_grad_reduce=overlap, ddp_bucket_size=bucket_size,
                              world_size=2)
    backend = build_backend([model], OPT, PrecisionConfig(), parallel)
    assert len(backend.sync.buckets) > 2
    launched_in_backward = []

    def count_launched(index):
        launched_in_backward.append(sum(bucket.launched for bucket in backend.sync.buckets))

    results = backend_steps([model], backend, global_batches(STEPS, MICROBATCHES), gpt_step, before_step=count_launched)
    # Overlap: all buckets but the one holding the unused parameter went out during backward.
    want = len(backend.sync.buckets) - (1 if unused else 0) if overlap else 0
    assert launched_in_backward == [want] * STEPS, (launched_in_backward, want)
    return model, backend, results


def _dp2_equals_serial():
    ps.initialize_model_parallel(1, 1)
    serial = serial_adamw_steps(tiny_gpt(), global_batches(STEPS, MICROBATCHES), gpt_step, OPT)
    assert max(serial.grad_norms) > OPT.clip_grad  # clipping really acts
    runs = {}
    for name, kwargs in {"plain": dict(zero=False, overlap=False), "overlap": dict(zero=False, overlap=True, unused=True),
                         "zero": dict(zero=True, overlap=False), "zero_overlap": dict(zero=True, overlap=True)}.items():
        model, backend, results = _run(**kwargs)
        assert all(r.updated for r in results), name
        got = [r.grad_norm for r in results]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(serial.grad_norms), rtol=1e-5, atol=0,
                                   msg=lambda m: f"{name} grad norms: {m}")
        if kwargs.get("unused"):
            del model.unused
        assert assert_params_match([model], serial.model, **TOL) > 0, name
        runs[name] = model
    for name in ("zero", "zero_overlap"):
        for (n, a), b in zip(runs[name].named_parameters(), runs["plain"].parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=lambda m: f"{name} vs plain, {n}: {m}")


def test_dp2_plain_overlapped_and_zero1_equal_serial_adamw_for_5_steps():
    run_distributed(_dp2_equals_serial, 2, timeout=240)
