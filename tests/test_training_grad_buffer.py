"""Bucket and shard arithmetic of the gradient buffers (no processes)."""
import pytest
import torch

from megatron_core.training.grad_buffer import build_grad_buffers, plan_buckets, shard_range

pytestmark = pytest.mark.quick


def test_buckets_hold_whole_parameters_and_close_at_the_bucket_size():
    offsets, buckets = plan_buckets([4, 3, 10, 2, 2], bucket_size=6, pad_to=1)
    assert offsets == [0, 4, 7, 17, 19]
    assert [(b.start, b.end, b.params) for b in buckets] == [(0, 7, (0, 1)), (7, 17, (2,)), (17, 21, (3, 4))]


def test_padded_buckets_split_into_equal_contiguous_shards():
    offsets, buckets = plan_buckets([5, 6, 7], bucket_size=10, pad_to=4)
    assert offsets == [0, 5, 12]      # bucket 0 is [0, 11) padded to 12
    assert [(b.start, b.end) for b in buckets] == [(0, 12), (12, 20)]
    shards = [shard_range(buckets[0], r, 4) for r in range(4)]
    assert shards == [(0, 3), (3, 6), (6, 9), (9, 12)]
    with pytest.raises(ValueError):
        plan_buckets([1], bucket_size=0, pad_to=1)


def test_main_grads_are_views_of_one_buffer_and_held_parameters_get_their_own():
    a, b, c = (torch.nn.Parameter(torch.randn(n)) for n in (3, 4, 5))
    buffers = build_grad_buffers([a, b, c], held=[b], bucket_size=100, data_parallel_size=2, flat_params=True)
    assert [buf.held for buf in buffers] == [False, True]
    assert buffers[0].params == [a, c] and buffers[1].params == [b]
    a.main_grad.fill_(1.0)
    assert buffers[0].grad_data[:3].tolist() == [1.0, 1.0, 1.0]
    before = c.detach().clone()
    assert c.data_ptr() == buffers[0].param_data[3:].data_ptr() and torch.equal(c.detach(), before)


def test_a_second_backend_on_the_same_parameters_is_refused():
    from megatron_core.errors import ConfigError
    from megatron_core.training.grad_sync import GradSync
    p = torch.nn.Parameter(torch.randn(4))
    buffers = build_grad_buffers([p], held=[], bucket_size=10, data_parallel_size=1, flat_params=False)
    first = GradSync(buffers, None, 1, 0, scatter=False, overlap=False)
    with pytest.raises(ConfigError, match="one backend per model"):
        GradSync(buffers, None, 1, 0, scatter=False, overlap=False)
    (p * 2).sum().backward()
    assert p.grad is None and p.main_grad.tolist() == [2.0] * 4
    first.remove_hooks()
    GradSync(buffers, None, 1, 0, scatter=False, overlap=False)
