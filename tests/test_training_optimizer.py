"""The optimizer built from OptimizerConfig equals a hand-written Adam(W) / SGD-momentum update."""
import math

import pytest
import torch

from megatron_core.errors import ConfigError
from megatron_core.training.config import OptimizerConfig
from megatron_core.training.lr_schedule import LearningRateSchedule
from megatron_core.training.optimizer import build_optimizer

pytestmark = pytest.mark.quick

GRADS = [[0.5, -1.0, 2.0], [0.1, 0.3, -0.2], [-0.7, 0.0, 1.5]]


def _hand_adamw(w, grads, lr, wd, b1, b2, eps):
    """Adam with decoupled weight decay, element by element in float64."""
    w, m, v = list(w), [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        for i in range(len(w)):
            w[i] -= lr * wd * w[i]
            m[i] = b1 * m[i] + (1 - b1) * g[i]
            v[i] = b2 * v[i] + (1 - b2) * g[i] ** 2
            m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
            w[i] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return w


def test_adam_with_param_groups_equals_a_hand_computed_adamw_update():
    config = OptimizerConfig(optimizer="adam", lr=0.01, weight_decay=0.1, adam_beta1=0.8, adam_beta2=0.95,
                             adam_eps=1e-6)
    start = [1.0, -2.0, 0.5]
    decayed = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    exempt = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    groups = [{"params": [decayed], "wd_mult": 1.0, "lr_mult": 1.0},
              {"params": [exempt], "wd_mult": 0.0, "lr_mult": 0.5}]
    opt = build_optimizer(groups, config)
    assert isinstance(opt, torch.optim.AdamW)
    schedule = LearningRateSchedule(max_lr=0.01, decay_steps=10 ** 6, decay_style="constant",
                                    start_wd=0.1, end_wd=0.1)
    for g in GRADS:
        schedule.apply(opt)
        decayed.grad = torch.tensor(g, dtype=torch.float64)
        exempt.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expect_decayed = _hand_adamw(start, GRADS, lr=0.01, wd=0.1, b1=0.8, b2=0.95, eps=1e-6)
    expect_exempt = _hand_adamw(start, GRADS, lr=0.005, wd=0.0, b1=0.8, b2=0.95, eps=1e-6)
    torch.testing.assert_close(decayed.detach(), torch.tensor(expect_decayed, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exempt.detach(), torch.tensor(expect_exempt, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    assert expect_decayed != expect_exempt


def test_sgd_uses_momentum_and_weight_decay_by_hand():
    config = OptimizerConfig(optimizer="sgd", lr=0.1, weight_decay=0.01, sgd_momentum=0.9)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    opt = build_optimizer([{"params": [w]}], config)
    assert isinstance(opt, torch.optim.SGD)
    expect, buf = [1.0, -2.0, 0.5], None
    for g in GRADS:
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        d = [gi + 0.01 * wi for gi, wi in zip(g, expect)]            # L2 decay folded into the gradient
        buf = d if buf is None else [0.9 * bi + di for bi, di in zip(buf, d)]
        expect = [wi - 0.1 * bi for wi, bi in zip(expect, buf)]
    torch.testing.assert_close(w.detach(), torch.tensor(expect, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_unknown_optimizer_and_empty_model_are_one_sentence():
    with pytest.raises(ConfigError, match="--optimizer lamb"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], OptimizerConfig(optimizer="lamb"))
    with pytest.raises(ConfigError, match="no trainable parameters"):
        build_optimizer([], OptimizerConfig())
