"""The interleaved plan, checked exhaustively without processes.

All ranks are simulated together in "time" order (rank r's step t happens at time t + r;
see pipeline/interleaved.py). Every message carries the (model piece, micro-batch) it
belongs to, so the simulation checks that each forward consumes the output of the piece
before it for the same micro-batch, each backward the gradient of the piece after it, that
every send meets a receive inside the receiver's own step range, and that nothing is
left over.
"""
import itertools
from collections import deque

import pytest

from megatron_core.pipeline.interleaved import InterleavedPlan

pytestmark = pytest.mark.quick


def _simulate(p, v, m, forward_only=False):
    plan = InterleavedPlan(p, v, m, forward_only)
    inbox_fwd = [[deque() for _ in range(v)] for _ in range(p)]
    inbox_bwd = [[deque() for _ in range(v)] for _ in range(p)]
    done_f = [[] for _ in range(p)]
    done_b = [[] for _ in range(p)]
    peak_alive = [0] * p
    alive = [0] * p
    last_time = max(plan.last_step(r) + r for r in range(p))
    for time in range(-1, last_time + 1):
        outgoing = []  # (dest rank, kind, chunk, tag)
        flags = {}
        for r in range(p):
            step = time - r
            if not -1 <= step <= plan.last_step(r):
                continue
            f = plan.flags(r, step)
            flags[r] = f
            if f.forward is not None:
                chunk, mb = plan.forward_chunk(f.forward), plan.microbatch(f.forward)
                piece = chunk * p + r
                if piece > 0:
                    assert inbox_fwd[r][chunk] and inbox_fwd[r][chunk].popleft() == (piece - 1, mb)
                done_f[r].append((chunk, mb))
                alive[r] += 1
                peak_alive[r] = max(peak_alive[r], alive[r])
                assert f.send_next == (piece < p * v - 1)
                if f.send_next:
                    dest = (r + 1) % p
                    outgoing.append((dest, "f", chunk + (1 if r == p - 1 else 0), (piece, mb)))
            else:
                assert not f.send_next
            if f.backward is not None:
                chunk, mb = plan.backward_chunk(f.backward), plan.microbatch(f.backward)
                piece = chunk * p + r
                if piece < p * v - 1:
                    assert inbox_bwd[r][chunk] and inbox_bwd[r][chunk].popleft() == (piece + 1, mb)
                done_b[r].append((chunk, mb))
                alive[r] -= 1
                assert f.send_prev == (piece > 0)
                if f.send_prev:
                    dest = (r - 1) % p
                    outgoing.append((dest, "b", chunk - (1 if r == 0 else 0), (piece, mb)))
            else:
                assert not f.send_prev
        # Every message is expected by a receive at the same time, and vice versa.
        # The plan also names the chunk each arrival feeds: it must be the sender's target.
        expected_recv = {(r, "f", f.recv_prev_chunk) for r, f in flags.items() if f.recv_prev} | \
                        {(r, "b", f.recv_next_chunk) for r, f in flags.items() if f.recv_next}
        sent = {(dest, kind, chunk) for dest, kind, chunk, _ in outgoing}
        assert sent == expected_recv, (time, sent, expected_recv)
        assert len(outgoing) == len(sent)
        for dest, kind, chunk, tag in outgoing:
            (inbox_fwd if kind == "f" else inbox_bwd)[dest][chunk].append(tag)
    everything = sorted(itertools.product(range(v), range(m)))
    for r in range(p):
        assert sorted(done_f[r]) == everything
        assert sorted(done_b[r]) == ([] if forward_only else everything)
        assert all(not q for q in inbox_fwd[r] + inbox_bwd[r])
    return plan, peak_alive


@pytest.mark.parametrize("p,v", [(2, 1), (2, 2), (2, 3), (3, 2), (4, 2), (4, 3)])
@pytest.mark.parametrize("groups", [1, 2, 3])
@pytest.mark.parametrize("forward_only", [False, True])
def test_interleaved_plan_pairs_every_message_and_meets_every_dependency(p, v, groups, forward_only):
    _simulate(p, v, groups * p, forward_only)


def test_interleaved_plan_keeps_memory_bounded_by_warmup():
    # Activations alive on rank r never exceed its warm-up + 1 (Megatron's memory bound),
    # however many micro-batches run.
    plan, peak = _simulate(4, 2, 32)
    for r in range(4):
        assert peak[r] == min(plan.warmup(r) + 1, plan.total)


def test_interleaved_plan_rejects_microbatches_not_multiple_of_stages():
    with pytest.raises(ValueError, match="multiple of the pipeline size"):
        InterleavedPlan(4, 2, 6)
