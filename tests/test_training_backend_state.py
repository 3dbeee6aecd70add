"""Native backend state: saved after 3 steps and loaded into a fresh model and backend, 2
more steps give bit for bit the weights of 5 uninterrupted steps (CPU), for the plain
overlapped fp32 backend and for ZeRO-1 in fp16 (sharded Adam state with its ranges, fp32
master weights, the loss scaler under its own key). A shard saved at another layout is
refused with one sentence."""
import pytest
import torch

from megatron_core.errors import CheckpointError
from megatron_core.mpu import parallel_state as ps
from tests.harness import run_distributed
from tests.harness.gpt_fixture import global_batches, gpt_step, tiny_gpt
from tests.harness.training_steps import backend_steps
from megatron_core.training.config import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_core.training.backends.native import build_backend

OPT = OptimizerConfig(lr=1e-3, weight_decay=0.1, clip_grad=0.5)
MICROBATCHES = 4


def _round_trip(dtype, precision, parallel):
    batches = global_batches(5, MICROBATCHES)
    straight = tiny_gpt(dtype=dtype)
    backend = build_backend([straight], OPT, precision, parallel)
    backend_steps([straight], backend, batches, gpt_step)

    first = tiny_gpt(dtype=dtype)
    backend = build_backend([first], OPT, precision, parallel)
    backend_steps([first], backend, batches[:3], gpt_step)
    saved = {"model": {k: v.clone() for k, v in first.state_dict().items()}, "backend": backend.state_dict()}

    resumed = tiny_gpt(dtype=dtype)
    resumed.load_state_dict(saved["model"])
    backend = build_backend([resumed], OPT, precision, parallel)
    backend.load_state_dict(saved["backend"])
    results = backend_steps([resumed], backend, batches[3:], gpt_step)
    assert all(r.updated for r in results)
    for (name, a), b in zip(resumed.named_parameters(), straight.parameters()):
        assert torch.equal(a, b), name
    return saved["backend"]


def _state_round_trips():
    ps.initialize_model_parallel(1, 1)
    state = _round_trip(torch.float32, PrecisionConfig(),
                        ParallelConfig(overlap_grad_reduce=True, ddp_bucket_size=300, world_size=2))
    assert state["fp32_master_weights"] == [] and "grad_scaler" not in state
    zero = ParallelConfig(use_distributed_optimizer=True, ddp_bucket_size=300, world_size=2)
    precision = PrecisionConfig(fp16=True, initial_loss_scale=2.0 ** 10)
    state = _round_trip(torch.float16, precision, zero)
    assert state["grad_scaler"]["scale"].item() == 1024.0
    assert all(w.dtype == torch.float32 for w in state["fp32_master_weights"])
    rank, ranges = ps.get_data_parallel_rank(), state["shard"]["ranges"]
    assert state["shard"]["data_parallel_rank"] == rank and len(ranges) > 1
    # The rank's shard holds about half of the model.
    owned = sum(end - start for start, end in ranges)
    total = sum(p.numel() for p in tiny_gpt().parameters())
    assert total / 2 <= owned <= total / 2 + len(ranges)
    moments = sum(s["exp_avg"].numel() for s in state["optimizer"]["state"].values())
    assert moments == sum(w.numel() for w in state["fp32_master_weights"]) <= owned
    # Loading a ZeRO-1 shard into a plain backend is refused.
    plain = build_backend([tiny_gpt(dtype=torch.float16)], OPT, precision, ParallelConfig(world_size=2))
    with pytest.raises(CheckpointError, match="--use-distributed-optimizer"):
        plain.load_state_dict(state)


def test_state_round_trip_after_3_steps_then_2_equals_5_steps_bit_exact():
    run_distributed(_state_round_trips, 2, timeout=240)
