"""Pretraining samplers: a run resumed from its consumed-samples count sees the same stream."""
import itertools

import numpy as np
import pytest

from megatron_core.data.samplers import MegatronPretrainingRandomSampler, MegatronPretrainingSampler

pytestmark = pytest.mark.quick

TOTAL = 203  # not a multiple of any batch below, so the ragged end is exercised


def _steps(make, dp, consumed, num_steps):
    """`num_steps` global steps from `consumed`: per step, each rank's micro-batch."""
    iters = [iter(make(consumed, rank)) for rank in range(dp)]
    return [[next(it) for it in iters] for _ in range(num_steps)]


def _random_stream(dp, mbs, consumed, num_steps, seed=11, sharding=True):
    samplers = [MegatronPretrainingRandomSampler(TOTAL, consumed, mbs, rank, dp, seed=seed,
                                                 data_sharding=sharding) for rank in range(dp)]
    # Iterate again when an epoch ends, as a cycling training loop does.
    iters = [itertools.chain.from_iterable(iter(lambda s=s: iter(s), None)) for s in samplers]
    return [[next(it) for it in iters] for _ in range(num_steps)]


@pytest.mark.parametrize("dp,mbs", [(1, 1), (1, 4), (2, 3), (4, 2), (3, 5)])
def test_sequential_sampler_resumes_exactly(dp, mbs):
    def make(consumed, rank):
        return MegatronPretrainingSampler(TOTAL, consumed, mbs, rank, dp)

    step = dp * mbs
    full = _steps(make, dp, 0, TOTAL // step)
    flat = [i for batches in full for batch in batches for i in batch]
    assert flat == list(range(len(flat)))  # in order, every sample once, rank slices adjacent
    for stop in (1, 3, TOTAL // step - 1):
        resumed = _steps(make, dp, stop * step, TOTAL // step - stop)
        assert full[:stop] + resumed == full
    # The ragged end: dropped by default, shared out with drop_last=False.
    assert all(len(b) == mbs for b in MegatronPretrainingSampler(TOTAL, 0, mbs, 0, dp))
    if TOTAL % step:
        start = TOTAL - TOTAL % step
        tail = [b for r in range(dp)
                for b in MegatronPretrainingSampler(TOTAL, start, mbs, r, dp, drop_last=False)]
        assert sorted(i for b in tail for i in b) == list(range(start, TOTAL))


@pytest.mark.parametrize("sharding", [True, False])
@pytest.mark.parametrize("dp,mbs", [(1, 1), (1, 4), (2, 3), (4, 2), (3, 5)])
def test_random_sampler_resumes_exactly_across_epochs(dp, mbs, sharding):
    step = dp * mbs
    per_epoch_steps = TOTAL // step
    num_steps = 2 * per_epoch_steps + 3  # into the third epoch
    full = _random_stream(dp, mbs, 0, num_steps, sharding=sharding)
    for stop in (1, per_epoch_steps - 1, per_epoch_steps, per_epoch_steps + 2):
        resumed = _random_stream(dp, mbs, stop * step, num_steps - stop, sharding=sharding)
        assert full[:stop] + resumed == full, stop
    # Each epoch visits distinct samples and all ranks together use TOTAL - TOTAL % step of them.
    for epoch in range(2):
        steps = full[epoch * per_epoch_steps:(epoch + 1) * per_epoch_steps]
        seen = [i for batches in steps for batch in batches for i in batch]
        assert all(len(batch) == mbs for batches in steps for batch in batches)
        assert len(set(seen)) == len(seen) == per_epoch_steps * step
        assert max(seen) < TOTAL
    # Epochs are shuffled differently.
    assert full[:per_epoch_steps] != full[per_epoch_steps:2 * per_epoch_steps]


def test_random_sampler_depends_on_seed():
    first = _random_stream(2, 2, 0, 5, seed=1)
    assert first == _random_stream(2, 2, 0, 5, seed=1)
    assert first != _random_stream(2, 2, 0, 5, seed=2)


def test_sampler_mistakes_are_named():
    with pytest.raises(ValueError, match="not a multiple"):
        MegatronPretrainingRandomSampler(TOTAL, 5, 2, 0, 2)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        MegatronPretrainingSampler(TOTAL, 0, 2, 2, 2)
    with pytest.raises(ValueError, match="nothing is left"):
        MegatronPretrainingSampler(TOTAL, TOTAL, 2, 0, 2)
    with pytest.raises(ValueError, match="--micro-batch-size"):
        MegatronPretrainingSampler(TOTAL, 0, 0, 0, 1)


def test_random_sampler_feeds_a_dataloader():
    import torch
    data = np.arange(TOTAL) * 10
    sampler = MegatronPretrainingRandomSampler(TOTAL, 0, 4, 1, 2, seed=3)
    loader = torch.utils.data.DataLoader(data, batch_sampler=sampler)
    batches = list(loader)
    assert len(batches) == TOTAL // 8 and all(b.shape == (4,) for b in batches)
    assert sampler.consumed_samples == (TOTAL // 8) * 8
