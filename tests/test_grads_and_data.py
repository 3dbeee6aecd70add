"""clip_grad_norm across TP and PP equals the serial norm; broadcast_data within TP groups."""
import math

import pytest
import torch

from megatron_core import mpu
from tests.harness import run_distributed


def _serial_model_grads(pp):
    """Gradients of a toy serial model: per stage a TP-split matrix and a replicated vector,
    plus a word embedding tied between the first and the last stage."""
    generator = torch.Generator().manual_seed(42)
    stages = []
    for _ in range(pp):
        stages.append({"matrix": torch.randn(8, 3, generator=generator),
                       "bias": torch.randn(5, generator=generator)})
    embedding = torch.randn(16, 3, generator=generator)
    return stages, embedding


def _local_params(tp, pp):
    """This rank's parameters, holding the gradients it would hold in a parallel run."""
    stages, embedding = _serial_model_grads(pp)
    tp_rank, stage = mpu.get_tensor_model_parallel_rank(), mpu.get_pipeline_model_parallel_rank()
    params = []
    matrix = torch.nn.Parameter(torch.zeros(8 // tp, 3))
    matrix.grad = stages[stage]["matrix"].chunk(tp, dim=0)[tp_rank].clone()
    mpu.set_tensor_model_parallel_attributes(matrix, True, 0, 1)
    bias = torch.nn.Parameter(torch.zeros(5))
    bias.grad = stages[stage]["bias"].clone()  # replicated on every TP rank
    params += [matrix, bias]
    if mpu.is_pipeline_first_stage() or mpu.is_pipeline_last_stage():
        word = torch.nn.Parameter(torch.zeros(16 // tp, 3))
        word.grad = embedding.chunk(tp, dim=0)[tp_rank].clone()
        mpu.set_tensor_model_parallel_attributes(word, True, 0, 1)
        if not mpu.is_pipeline_first_stage() and pp > 1:
            word.shared = True  # the last stage's copy of the tied embedding
        params.append(word)
    return params, stages, embedding


def _check_clip(tp, pp):
    mpu.initialize_model_parallel(tp, pp)
    for norm_type in (2.0, math.inf):
        params, stages, embedding = _local_params(tp, pp)
        serial = [t for s in stages for t in (s["matrix"], s["bias"])] + [embedding]
        serial_params = []
        for grad in serial:
            p = torch.nn.Parameter(torch.zeros_like(grad))
            p.grad = grad.clone()
            serial_params.append(p)
        max_norm = 1.5
        expected = torch.nn.utils.clip_grad_norm_(serial_params, max_norm, norm_type=norm_type)
        total = mpu.clip_grad_norm(params, max_norm, norm_type=norm_type)
        assert total == pytest.approx(float(expected), rel=1e-5)
        assert mpu.get_grad_norm(params, norm_type) == pytest.approx(max_norm, rel=1e-4)
        # each local gradient equals its slice of the clipped serial gradient
        stage, tp_rank = mpu.get_pipeline_model_parallel_rank(), mpu.get_tensor_model_parallel_rank()
        torch.testing.assert_close(params[0].grad, serial_params[2 * stage].grad.chunk(tp, 0)[tp_rank])
        torch.testing.assert_close(params[1].grad, serial_params[2 * stage + 1].grad)
    # no clipping needed: gradients untouched
    params, _, _ = _local_params(tp, pp)
    before = [p.grad.clone() for p in params]
    mpu.clip_grad_norm(params, 1e6)
    for p, b in zip(params, before):
        assert torch.equal(p.grad, b)


@pytest.mark.parametrize("world,tp,pp", [(1, 1, 1), (2, 2, 1), (2, 1, 2), (4, 2, 2)])
def test_clip_grad_norm_equals_serial(world, tp, pp):
    run_distributed(_check_clip, world, tp, pp)


def _check_broadcast():
    mpu.initialize_model_parallel(2)  # world 4 -> TP groups [0,1] [2,3]
    group_id = mpu.get_tensor_model_parallel_src_rank()
    keys = ["text", "mask", "scalar"]
    data = None
    if mpu.get_tensor_model_parallel_rank() == 0:
        data = {"text": torch.arange(12).view(3, 4) + 100 * group_id,
                "mask": torch.ones(2, 2, 2, dtype=torch.long) * group_id,
                "scalar": torch.tensor(7 + group_id)}
    out = mpu.broadcast_data(keys, data, torch.long)
    torch.testing.assert_close(out["text"], torch.arange(12).view(3, 4) + 100 * group_id)
    torch.testing.assert_close(out["mask"], torch.ones(2, 2, 2, dtype=torch.long) * group_id)
    assert out["scalar"].shape == () and int(out["scalar"]) == 7 + group_id
    if mpu.get_tensor_model_parallel_rank() == 0:
        with pytest.raises(TypeError, match="'text' has dtype torch.int64, expected torch.float32"):
            mpu.broadcast_data(["text"], data, torch.float32)


def test_broadcast_data_within_tensor_parallel_group():
    run_distributed(_check_broadcast, 4)
