"""RNG streams: replicated vs tensor-parallel, determinism, and exact replay under recomputation."""
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_core import mpu
from tests.harness import run_distributed

pytestmark = pytest.mark.quick


def _gather(tensor):
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def _check_streams():
    mpu.initialize_model_parallel(2)  # world 4: TP groups [0,1] [2,3]
    mpu.model_parallel_manual_seed(123)
    replicated = torch.rand(8)
    with mpu.get_rng_tracker().fork():
        tensor_parallel = torch.rand(8)
    after = torch.rand(8)
    reps, tps = _gather(replicated), _gather(tensor_parallel)
    # replicated stream: identical on every rank
    for other in reps[1:]:
        torch.testing.assert_close(other, reps[0])
    # tensor-parallel stream: differs across TP ranks, equal across DP replicas
    assert not torch.equal(tps[0], tps[1])
    torch.testing.assert_close(tps[0], tps[2])
    torch.testing.assert_close(tps[1], tps[3])
    # forking does not advance the replicated stream
    torch.manual_seed(123)
    expected = torch.rand(16)
    torch.testing.assert_close(torch.cat([replicated, after]), expected)
    # same seed, same draws
    mpu.model_parallel_manual_seed(123)
    torch.testing.assert_close(torch.rand(8), replicated)
    with mpu.get_rng_tracker().fork():
        torch.testing.assert_close(torch.rand(8), tensor_parallel)
    # a different seed changes both streams
    mpu.model_parallel_manual_seed(124)
    assert not torch.equal(torch.rand(8), replicated)
    # the tracker's state round-trips (what checkpoints save)
    states = mpu.get_all_rng_states()
    draw = (torch.rand(4), _fork_draw())
    mpu.set_all_rng_states(states)
    torch.testing.assert_close(torch.rand(4), draw[0])
    torch.testing.assert_close(_fork_draw(), draw[1])


def _fork_draw():
    with mpu.get_rng_tracker().fork():
        return torch.rand(4)


def test_rng_streams_world4_tp2():
    run_distributed(_check_streams, 4)


def test_tracker_rejects_duplicates_and_unknown_streams():
    tracker = mpu.RNGStatesTracker()
    tracker.add("a", 1)
    for name, seed in (("a", 2), ("b", 1)):
        try:
            tracker.add(name, seed)
        except ValueError:
            pass
        else:
            raise AssertionError(f"duplicate stream {name}/{seed} accepted")
    try:
        with tracker.fork("missing"):
            pass
    except KeyError as error:
        assert "model_parallel_manual_seed" in str(error)
    else:
        raise AssertionError("unknown stream accepted")


def _block(x, w1, w2):
    """Dropout on both streams, so a wrong replay of either changes the gradients."""
    h = F.dropout(F.gelu(x @ w1), p=0.5, training=True)
    with mpu.get_rng_tracker().fork():
        h = F.dropout(h, p=0.3, training=True)
    return h @ w2


def _grads(use_checkpoint):
    mpu.model_parallel_manual_seed(7)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(6, 8, generator=generator, requires_grad=True)
    w1 = torch.randn(8, 16, generator=generator, requires_grad=True)
    w2 = torch.randn(16, 4, generator=generator, requires_grad=True)
    out = mpu.checkpoint(_block, x, w1, w2) if use_checkpoint else _block(x, w1, w2)
    # a second block after the checkpointed one must see the same RNG stream either way
    out2 = F.dropout(out, p=0.5, training=True)
    out2.square().sum().backward()
    return out2.detach(), x.grad, w1.grad, w2.grad, torch.rand(3)


def _check_recomputation():
    mpu.initialize_model_parallel(2)
    plain = _grads(False)
    recomputed = _grads(True)
    for a, b in zip(plain, recomputed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_checkpoint_replays_dropout_exactly():
    run_distributed(_check_recomputation, 2)


def _check_checkpoint_non_tensor_args():
    mpu.initialize_model_parallel(1)
    x = torch.randn(3, 4, requires_grad=True)
    scale = 2.5
    out = mpu.checkpoint(lambda t, s, flag: t * s if flag else t, x, scale, True)
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3, 4), scale))


def test_checkpoint_with_non_tensor_args():
    run_distributed(_check_checkpoint_non_tensor_args, 1)
