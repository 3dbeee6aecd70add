"""The DeepSpeed memory estimate (training/memory_estimate.py state_bytes) against what a real
engine holds: a tiny GPT under ZeRO 0, 1, 2 and 3 at DP=2, fp32, one training step on CPU.

Measured per rank, as the sum of the tensors' bytes (deepspeed 0.19.8's attribute names):
  weights      the module's parameters (ZeRO-3: each parameter's partition, ds_tensor)
  gradients    after backward, before the step: ZeRO 0/1 the parameters' .grad; ZeRO-2 the
               gradients of the parameters in this rank's partition (all_grad_tensors);
               ZeRO-3 its flat gradient partition (grad_partitions_flat_buffer)
  optimizer    after the step: the torch optimizer's state tensors (Adam's moments, without
               the scalar step) + DeepSpeed's fp32 weight partition
Tolerance: 2% plus the largest parameter's bytes (a parameter that straddles the partition
boundary is held whole by ZeRO-2's gradient list). All four engines start in one 2-process
group, so DeepSpeed's start-up is paid once.
"""
import json
import os

import pytest
import torch

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")

from megatron_core import mpu  # noqa: E402
from tests.harness import run_distributed  # noqa: E402
from tests.harness.deepspeed_op_cache import deepspeed_test_env  # noqa: E402
from tests.harness.gpt_fixture import global_batches, gpt_step, tiny_gpt  # noqa: E402
from megatron_core.training.config import OptimizerConfig  # noqa: E402
from megatron_core.training.memory_estimate import state_bytes  # noqa: E402

STAGES = (0, 1, 2, 3)


def nbytes(x) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(nbytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(nbytes(v) for v in x)
    return 0


def measure(stage: int) -> dict:
    from megatron_core.training.backends.deepspeed import DeepSpeedBackend
    torch.manual_seed(0)
    model = tiny_gpt()
    params = [p for p in model.parameters()]
    count, largest = sum(p.numel() for p in params), max(p.numel() * p.element_size() for p in params)
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
              "zero_optimization": {"stage": stage}, "managed_gradient_accumulation": False,
              "steps_per_print": 2 ** 62, "gradient_clipping": 1.0}
    backend = DeepSpeedBackend([model], OptimizerConfig(), config)
    zero = backend.engine.optimizer
    backend.zero_grad()
    backend.scale_loss(gpt_step(backend.modules[0], global_batches(1, 1)[0][0])).backward()
    if stage <= 1:
        gradients = sum(nbytes(p.grad) for p in params)
    elif stage == 2:
        gradients = nbytes(zero.all_grad_tensors)
    else:
        gradients = nbytes(zero.grad_partitions_flat_buffer)
    backend.step()
    weights = sum(nbytes(p.ds_tensor if hasattr(p, "ds_tensor") else p) for p in params)
    base = getattr(zero, "optimizer", zero)
    moments = sum(nbytes({k: v for k, v in s.items() if k != "step"}) for s in base.state.values())
    fp32 = {0: 0, 1: "single_partition_of_fp32_groups", 2: "single_partition_of_fp32_groups",
            3: "fp32_partitioned_groups_flat"}[stage]
    optimizer = moments + (nbytes(getattr(zero, fp32)) if fp32 else 0)
    return {"parameters": count, "largest": largest, "weights": weights, "gradients": gradients,
            "optimizer": optimizer}


def measure_all(directory: str) -> None:
    mpu.initialize_model_parallel(1, 1)
    result = {stage: measure(stage) for stage in STAGES}
    with open(os.path.join(directory, f"rank{torch.distributed.get_rank()}.json"), "w") as f:
        json.dump(result, f)


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("ds_memory"))
    saved = dict(os.environ)
    os.environ.update(deepspeed_test_env())
    try:
        run_distributed(measure_all, 2, directory, timeout=600)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return [json.load(open(os.path.join(directory, f"rank{r}.json"))) for r in range(2)]


@pytest.mark.parametrize("stage", STAGES)
def test_the_deepspeed_estimate_matches_the_bytes_a_real_engine_holds_per_rank(measured, stage):
    for rank in measured:
        m = rank[str(stage)]
        weights, gradients, optimizer = state_bytes(m["parameters"], 4, 2, "adam", 0.9, stage)
        tolerance = 0.02 * max(weights, gradients, optimizer) + m["largest"]
        assert abs(m["weights"] - weights) <= tolerance, (stage, m, weights)
        assert abs(m["gradients"] - gradients) <= tolerance, (stage, m, gradients)
        assert abs(m["optimizer"] - optimizer) <= tolerance, (stage, m, optimizer)
