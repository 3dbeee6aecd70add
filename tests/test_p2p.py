"""Pipeline point-to-point exchange on gloo: batched and one-by-one, fixed and exchanged shapes."""
import pytest
import torch

from megatron_core.mpu import parallel_state as ps
from megatron_core.pipeline import p2p
from megatron_core.pipeline.p2p import P2PConfig
from tests.harness.distributed import run_distributed

pytestmark = pytest.mark.quick


def _payload(rank, step, shape):
    return torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(shape) + 1000 * rank + step


def _exchange_all_modes():
    for batched in (True, False):
        for variable in (False, True):
            _exchange_both_ways(batched, variable)


def _exchange_both_ways(batched, variable):
    world = torch.distributed.get_world_size()
    ps.initialize_model_parallel(pipeline_model_parallel_size=world)
    stage = ps.get_pipeline_model_parallel_rank()
    fixed = (3, 2, 4)
    for step in range(3):
        # With variable lengths every step and direction uses another sequence length.
        fwd_shape = (3 + step + stage, 2, 4) if variable else fixed
        bwd_shape = (5 + step + stage, 2, 4) if variable else fixed
        config = P2PConfig(tensor_shape=None if variable else fixed, variable_seq_lengths=variable,
                           batch_p2p_comm=batched)
        first, last = stage == 0, stage == world - 1
        from_prev, from_next = p2p.exchange(
            config, send_next=None if last else _payload(stage, step, fwd_shape),
            send_prev=None if first else _payload(stage, step, bwd_shape),
            recv_prev=not first, recv_next=not last)
        if not first:
            want = (3 + step + stage - 1, 2, 4) if variable else fixed
            assert torch.equal(from_prev, _payload(stage - 1, step, want))
            assert from_prev.requires_grad
        else:
            assert from_prev is None
        if not last:
            want = (5 + step + stage + 1, 2, 4) if variable else fixed
            assert torch.equal(from_next, _payload(stage + 1, step, want))
        else:
            assert from_next is None
    # The named one-directional operations are no-ops at the ends of the pipeline.
    config = P2PConfig(tensor_shape=fixed, batch_p2p_comm=batched)
    p2p.send_forward(_payload(stage, 9, fixed), config)
    got = p2p.recv_forward(config)
    assert (got is None) if stage == 0 else torch.equal(got, _payload(stage - 1, 9, fixed))
    ps.destroy_model_parallel()


def test_exchange_batched_and_ordered_fixed_and_variable_shapes():
    for world in (2, 4):
        run_distributed(_exchange_all_modes, world)
