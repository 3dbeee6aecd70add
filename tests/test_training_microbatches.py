"""Micro-batches per step and Megatron's batch-size ramp-up as pure functions of consumed samples."""
import math
from fractions import Fraction

import pytest

from megatron_core.errors import ConfigError
from megatron_core.training.config import TrainingConfig
from megatron_core.training.microbatches import BatchSchedule, num_microbatches

pytestmark = pytest.mark.quick


def test_micro_batches_are_the_global_batch_over_micro_times_data_parallel():
    assert num_microbatches(512, 4, 8) == 16
    assert num_microbatches(8, 8, 1) == 1
    with pytest.raises(ConfigError, match=r"--global-batch-size 100 .* --micro-batch-size 4 x data-parallel size 8 = 32"):
        num_microbatches(100, 4, 8)
    constant = BatchSchedule(512, 4, 8)
    assert [constant.global_batch_size_at(c) for c in (0, 10 ** 9)] == [512, 512]
    assert constant.num_microbatches_at(12345) == 16
    assert constant.train_iters_for_samples(512 * 10 + 511) == 10


def test_megatrons_documented_rampup_16_8_300000_to_1024():
    # "will start with global batch size 16 and over (1024 - 16) / 8 = 126 intervals will
    # increase the batch size linearly to 1024. In each interval we will use approximately
    # 300000 / 126 = 2380 samples."
    s = BatchSchedule(1024, 2, 4, (16, 8, 300000))
    per_interval = Fraction(300000, 126)
    assert s.global_batch_size_at(0) == 16
    assert s.global_batch_size_at(2380) == 16 and s.global_batch_size_at(2381) == 24
    for k in range(1, 126):
        if (k * per_interval).denominator == 1:
            continue  # an exact float boundary: left to Megatron's float rounding
        first = math.ceil(k * per_interval)   # first sample count of interval k
        assert s.global_batch_size_at(first - 1) == 16 + 8 * (k - 1), k
        assert s.global_batch_size_at(first) == 16 + 8 * k, k
    assert s.global_batch_size_at(299999) == 1016
    assert s.global_batch_size_at(300001) == 1024 and s.global_batch_size_at(10 ** 8) == 1024
    assert s.num_microbatches_at(0) == 16 // 8 and s.num_microbatches_at(300001) == 1024 // 8
    sizes = [s.global_batch_size_at(c) for c in range(0, 310000, 997)]
    assert sizes == sorted(sizes) and set(sizes) <= set(range(16, 1025, 8))


def test_sample_based_iterations_step_through_the_ramp_then_drop_a_partial_last_batch():
    # ramp 2 -> 6 by 2 over 8 samples: an increment every 4 samples; batches 2, 2, 4, 6, 6, 6 = 26
    s = BatchSchedule(6, 1, 2, (2, 2, 8))
    assert [s.global_batch_size_at(c) for c in (0, 2, 3, 4, 7, 8, 9)] == [2, 2, 2, 4, 4, 6, 6]
    assert s.train_iters_for_samples(30) == 6
    assert s.train_iters_for_samples(32) == 7
    # Megatron counts the ramp-up batch that crosses --train-samples (2, 2, 4 for 5 samples)
    assert s.train_iters_for_samples(5) == 3
    from_config = BatchSchedule.from_config(TrainingConfig(global_batch_size=6, micro_batch_size=1,
                                                           rampup_batch_size=(2, 2, 8)), 2)
    assert from_config == s


@pytest.mark.parametrize("rampup,match", [
    ((16, 8), "three numbers"),
    ((0, 8, 100), "positive"),
    ((2048, 8, 100), "does not reach"),
    ((16, 40, 100), "does not reach"),
    ((12, 4, 100), "multiples of --micro-batch-size x data-parallel size = 8"),
])
def test_rampup_that_cannot_work_is_one_sentence(rampup, match):
    with pytest.raises(ConfigError, match=match):
        BatchSchedule(1024, 2, 4, rampup)
