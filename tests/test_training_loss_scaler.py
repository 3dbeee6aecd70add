"""Loss scalers with Megatron's DynamicGradScaler semantics, their state, the skip count, and
found-inf agreement across model-parallel ranks in real gloo groups."""
import io

import pytest
import torch

from megatron_core import mpu
from megatron_core.errors import ConfigError
from tests.harness import run_distributed
from megatron_core.training.config import PrecisionConfig
from megatron_core.training.loss_scaler import (ConstantLossScaler, DynamicLossScaler, build_loss_scaler,
                                                found_inf_across, unscale_and_check)

pytestmark = pytest.mark.quick


def _run(scaler, flags):
    scales = []
    for found_inf in flags:
        scaler.update(found_inf)
        scales.append(scaler.scale)
    return scales


def test_defaults_are_megatrons():
    s = DynamicLossScaler()
    assert (s.scale, s.min_scale, s.growth_factor, s.backoff_factor, s.growth_interval, s.hysteresis) == \
        (2.0 ** 32, 1.0, 2.0, 0.5, 1000, 2)


def test_hysteresis_absorbs_overflows_until_spent_then_every_overflow_halves():
    s = DynamicLossScaler(initial_scale=1024, min_scale=1, growth_interval=3, hysteresis=2)
    # inf: hysteresis 2 -> 1, kept; inf: -> 0, halved; inf: still spent, halved again
    assert _run(s, [True, True, True]) == [1024, 512, 256]
    # three clean steps in a row: doubled and the hysteresis refilled
    assert _run(s, [False, False, False]) == [256, 256, 512]
    # a clean step between overflows does not refill the hysteresis (Megatron's counter)
    assert _run(s, [True, False, True]) == [512, 512, 256]


def test_growth_needs_a_full_window_of_clean_steps_in_a_row():
    s = DynamicLossScaler(initial_scale=8, growth_interval=4, hysteresis=3)
    # an overflow restarts the window even though hysteresis keeps the scale
    assert _run(s, [False, False, False, True, False, False, False, False]) == [8, 8, 8, 8, 8, 8, 8, 16]


def test_backoff_stops_at_the_minimum_scale():
    s = DynamicLossScaler(initial_scale=8, min_scale=2, growth_interval=10, hysteresis=1)
    assert _run(s, [True, True, True, True]) == [4, 2, 2, 2]


def test_consecutive_skips_count_overflows_in_a_row_for_both_scalers():
    for scaler in (DynamicLossScaler(initial_scale=2 ** 16), ConstantLossScaler(1024.0)):
        counts = []
        for found_inf in (True, True, False, True, True, True):
            scaler.update(found_inf)
            counts.append(scaler.consecutive_skips)
        assert counts == [1, 2, 0, 1, 2, 3]
    assert scaler.scale == 1024.0


def test_state_round_trips_through_torch_save_with_megatrons_keys():
    s = DynamicLossScaler(initial_scale=2 ** 20, growth_interval=5, hysteresis=3)
    _run(s, [True, False, False, True, True])
    state = s.state_dict()
    assert isinstance(state["scale"], torch.Tensor) and state["scale"].dtype == torch.float32
    assert {"growth_tracker", "hysteresis_tracker"} <= set(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    other = DynamicLossScaler(initial_scale=2 ** 20, growth_interval=5, hysteresis=3)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    flags = [False] * 5 + [True, True, True, False]
    assert _run(other, flags) == _run(s, flags)
    assert other.consecutive_skips == s.consecutive_skips
    # a Megatron checkpoint has no skip count: it starts at zero
    megatron_state = {"scale": torch.tensor([4096.0]), "growth_tracker": 2, "hysteresis_tracker": 1}
    other.load_state_dict(megatron_state)
    assert other.scale == 4096.0 and other.consecutive_skips == 0
    assert _run(other, [True]) == [2048.0]


def test_build_picks_megatrons_scaler_for_each_precision():
    assert build_loss_scaler(PrecisionConfig()) is None
    assert build_loss_scaler(PrecisionConfig(bf16=True)) is None
    assert isinstance(build_loss_scaler(PrecisionConfig(bf16=True, loss_scale=128.0)), ConstantLossScaler)
    constant = build_loss_scaler(PrecisionConfig(fp16=True, loss_scale=512.0))
    assert isinstance(constant, ConstantLossScaler) and constant.scale == 512.0
    dynamic = build_loss_scaler(PrecisionConfig(fp16=True, initial_loss_scale=65536.0, min_loss_scale=4.0,
                                                loss_scale_window=50, hysteresis=3))
    assert (dynamic.scale, dynamic.min_scale, dynamic.growth_interval, dynamic.hysteresis) == (65536.0, 4.0, 50, 3)


@pytest.mark.parametrize("kwargs,flag", [(dict(min_scale=0.0), "--min-loss-scale"),
                                         (dict(initial_scale=1.0, min_scale=2.0), "--min-loss-scale"),
                                         (dict(hysteresis=0), "--hysteresis"),
                                         (dict(growth_interval=0), "--loss-scale-window")])
def test_bad_scaler_settings_name_the_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=flag):
        DynamicLossScaler(**kwargs)


def test_unscale_divides_every_gradient_and_reports_inf_or_nan():
    params = [torch.nn.Parameter(torch.zeros(3)) for _ in range(3)]
    params[0].grad = torch.tensor([2.0, 4.0, 8.0])
    params[1].grad = torch.tensor([1.0, -6.0, 0.5])
    assert unscale_and_check(params, 0.5) is False
    assert params[0].grad.tolist() == [1.0, 2.0, 4.0] and params[1].grad.tolist() == [0.5, -3.0, 0.25]
    for bad in (float("inf"), float("-inf"), float("nan")):
        params[2].grad = torch.tensor([1.0, bad, 1.0])
        assert unscale_and_check(params, 1.0) is True


def _check_found_inf():
    import torch.distributed as dist
    rank = dist.get_rank()
    for tp, pp, flagged_rank in ((2, 1, 1), (1, 2, 2)):
        mpu.initialize_model_parallel(tp, pp)
        layout = mpu.ParallelLayout(dist.get_world_size(), tp, pp)
        my_model_group = next(g for g in layout.model_groups() if rank in g)
        # one rank of one replica overflowed: exactly that replica's ranks skip
        found = found_inf_across(mpu.get_model_parallel_group(), rank == flagged_rank)
        assert found == (flagged_rank in my_model_group), (tp, pp, rank, found)
        # model-parallel then data-parallel: every rank skips
        assert found_inf_across([mpu.get_model_parallel_group(), mpu.get_data_parallel_group()],
                                rank == flagged_rank) is True
        # None is the whole world; nobody flagged means nobody skips
        assert found_inf_across(None, rank == flagged_rank) is True
        assert found_inf_across(mpu.get_model_parallel_group(), False) is False
        mpu.destroy_model_parallel()


def test_found_inf_is_agreed_by_max_over_the_model_parallel_group_at_tp2_and_pp2():
    run_distributed(_check_found_inf, 4)
