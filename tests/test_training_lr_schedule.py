"""The learning-rate schedule against closed forms written independently here (numpy interp for
the straight lines, cos^2 for the cosine halves), its shape at the boundaries, Megatron's
iterations-to-samples conversion, and the state that is only the step."""
import math

import numpy as np
import pytest
import torch

from megatron_core.errors import ConfigError
from megatron_core.training.config import OptimizerConfig, SchedulerConfig, TrainingConfig
from megatron_core.training.lr_schedule import LearningRateSchedule, schedule_from_config

pytestmark = pytest.mark.quick

MAX, MIN, INIT, W, D = 3e-4, 3e-5, 1e-5, 100, 1000


def _schedule(style, **kw):
    values = dict(max_lr=MAX, min_lr=MIN, init_lr=INIT, warmup_steps=W, decay_steps=D, decay_style=style)
    values.update(kw)
    return LearningRateSchedule(**values)


@pytest.mark.parametrize("style", ["constant", "linear", "cosine", "inverse-square-root", "WSD"])
def test_warmup_is_a_straight_line_from_lr_warmup_init_to_the_peak(style):
    s = _schedule(style, wsd_decay_steps=200)
    for step in (0, 1, 37, 99, 100):
        assert s.lr_at(step) == pytest.approx(float(np.interp(step, [0, W], [INIT, MAX])), rel=1e-12)
    assert s.lr_at(0) == INIT and s.lr_at(W) == pytest.approx(MAX)


def test_linear_decay_is_a_straight_line_from_peak_to_min_then_min():
    s = _schedule("linear")
    for step in (100, 101, 250, 550, 999, 1000):
        assert s.lr_at(step) == pytest.approx(float(np.interp(step, [W, D], [MAX, MIN])), rel=1e-9)
    for step in (1001, 5000):
        assert s.lr_at(step) == MIN


def test_cosine_decay_follows_a_squared_cosine_half_wave():
    s = _schedule("cosine")
    for step in (100, 133, 550, 777, 1000):
        frac = (step - W) / (D - W)
        assert s.lr_at(step) == pytest.approx(MIN + (MAX - MIN) * math.cos(math.pi * frac / 2) ** 2, rel=1e-9)
    assert s.lr_at((W + D) // 2) == pytest.approx((MAX + MIN) / 2)
    assert s.lr_at(D + 1) == MIN


def test_constant_style_keeps_the_peak_after_warmup_even_past_the_decay_length():
    s = _schedule("constant")
    assert [s.lr_at(x) for x in (101, 999, 1000, 10 ** 6)] == [MAX] * 4


def test_inverse_square_root_decays_as_one_over_sqrt_step_from_the_warmup_end_floored_at_min():
    s = _schedule("inverse-square-root")
    for step in (101, 400, 900):
        assert s.lr_at(step) == pytest.approx(MAX * (W / step) ** 0.5, rel=1e-12)
    assert s.lr_at(W + 1) < MAX
    low = _schedule("inverse-square-root", min_lr=2e-4)
    assert low.lr_at(900) == 2e-4          # MAX * sqrt(100/900) = 1e-4 < min
    no_warmup = _schedule("inverse-square-root", warmup_steps=0)
    assert no_warmup.lr_at(0) == MAX and no_warmup.lr_at(16) == pytest.approx(MAX / 4)


@pytest.mark.parametrize("wsd_style,shape", [
    ("linear", lambda q: 1 - q),
    ("cosine", lambda q: math.cos(math.pi * q / 2) ** 2),
    ("exponential", lambda q: 2 ** (1 - q) - 1),
    ("minus_sqrt", lambda q: 1 - q ** 0.5),
])
def test_wsd_is_stable_at_the_peak_then_anneals_to_min_over_the_last_decay_steps(wsd_style, shape):
    anneal = 300
    s = _schedule("WSD", wsd_decay_steps=anneal, wsd_decay_style=wsd_style)
    for step in (101, 500, D - anneal):
        assert s.lr_at(step) == MAX
    for step in (D - anneal + 1, 850, 999, D):
        q = (step - (D - anneal)) / anneal
        assert s.lr_at(step) == pytest.approx(MIN + (MAX - MIN) * shape(q), rel=1e-9, abs=1e-15)
    assert s.lr_at(D) == pytest.approx(MIN) and s.lr_at(D + 1) == MIN


@pytest.mark.parametrize("style", ["linear", "cosine", "inverse-square-root", "WSD"])
def test_after_warmup_the_rate_never_rises_and_ends_at_min(style):
    s = _schedule(style, wsd_decay_steps=400, wsd_decay_style="cosine")
    rates = [s.lr_at(x) for x in range(W, 3 * D)]
    assert all(b <= a + 1e-18 for a, b in zip(rates, rates[1:]))
    assert rates[-1] == MIN
    # continuous at the end of warmup (no jump between W and W + 1)
    assert abs(s.lr_at(W + 1) - s.lr_at(W)) < (MAX - MIN) / 100


@pytest.mark.parametrize("style,shape", [("linear", lambda r: r), ("cosine", lambda r: math.sin(math.pi * r / 2) ** 2)])
def test_weight_decay_rises_from_start_to_end_then_stays(style, shape):
    s = _schedule("linear", start_wd=0.01, end_wd=0.1, wd_incr_steps=500, wd_incr_style=style)
    for step in (0, 125, 250, 500):
        assert s.weight_decay_at(step) == pytest.approx(0.01 + 0.09 * shape(step / 500), rel=1e-9)
    assert s.weight_decay_at(501) == 0.1
    constant = _schedule("linear", start_wd=0.05, end_wd=0.05)
    assert constant.weight_decay_at(0) == constant.weight_decay_at(10 ** 6) == 0.05


def test_iteration_runs_count_the_schedule_in_samples_of_the_global_batch():
    opt = OptimizerConfig(lr=MAX, min_lr=MIN, weight_decay=0.1)
    s = schedule_from_config(opt, SchedulerConfig(lr_warmup_iters=10, lr_decay_iters=80, lr_decay_style="WSD",
                                                  lr_wsd_decay_iters=20),
                             TrainingConfig(global_batch_size=32, train_iters=100))
    assert (s.warmup_steps, s.decay_steps, s.wsd_decay_steps, s.wd_incr_steps) == (320, 2560, 640, 3200)
    assert (s.start_wd, s.end_wd) == (0.1, 0.1)
    # --lr-decay-iters defaults to --train-iters; --lr-warmup-fraction is a fraction of the decay
    s = schedule_from_config(opt, SchedulerConfig(lr_warmup_fraction=0.01), TrainingConfig(global_batch_size=8,
                                                                                          train_iters=1000))
    assert s.decay_steps == 8000 and s.warmup_steps == pytest.approx(80)
    # sample-based runs take samples as they are, even with their derived train_iters set
    s = schedule_from_config(opt, SchedulerConfig(lr_warmup_samples=64, lr_decay_samples=1000),
                             TrainingConfig(global_batch_size=8, train_samples=4000, train_iters=500))
    assert (s.warmup_steps, s.decay_steps, s.wd_incr_steps) == (64, 1000, 4000)


def test_state_is_the_step_and_restores_the_same_rates_with_megatrons_keys():
    s = _schedule("cosine")
    for _ in range(7):
        s.step(64)
    state = s.state_dict()
    assert state["num_steps"] == 448
    assert {"max_lr", "min_lr", "lr_warmup_steps", "lr_decay_steps", "lr_decay_style"} <= set(state)
    fresh = _schedule("cosine")
    fresh.load_state_dict(torch.load(_roundtrip(state), weights_only=True))
    assert fresh.num_steps == 448 and fresh.lr == s.lr == s.lr_at(448)
    legacy = _schedule("cosine")
    legacy.load_state_dict({"num_iters": 300})
    assert legacy.lr == s.lr_at(300)


def _roundtrip(state):
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_apply_writes_rate_times_lr_mult_and_decay_times_wd_mult_into_each_group():
    p1, p2 = torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [p1], "wd_mult": 1.0, "lr_mult": 0.5},
                             {"params": [p2], "wd_mult": 0.0}], lr=1.0)
    s = _schedule("linear", start_wd=0.1, end_wd=0.1)
    s.step(550)
    s.apply(opt)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * s.lr_at(550))
    assert opt.param_groups[0]["weight_decay"] == 0.1
    assert opt.param_groups[1]["lr"] == s.lr_at(550) and opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize("changes,flag", [
    (dict(warmup_steps=1000), "--lr-warmup"),
    (dict(min_lr=1.0), "--min-lr"),
    (dict(init_lr=1.0), "--lr-warmup-init"),
    (dict(decay_style="WSD"), "--lr-wsd-decay-iters"),
    (dict(decay_style="WSD", wsd_decay_steps=2000), "--lr-wsd-decay-iters"),
    (dict(decay_style="step"), "--lr-decay-style"),
    (dict(start_wd=0.1, end_wd=0.0, wd_incr_style="linear"), "--start-weight-decay"),
    (dict(start_wd=0.0, end_wd=0.1), "--weight-decay-incr-style"),
])
def test_impossible_schedules_are_one_sentence_naming_the_flag(changes, flag):
    with pytest.raises(ConfigError, match=flag):
        _schedule(changes.pop("decay_style", "linear"), **changes)
