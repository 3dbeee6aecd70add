"""Group membership follows Megatron's rank order, in layout arithmetic and in real groups."""
import pytest
import torch
import torch.distributed as dist

from megatron_core import mpu
from megatron_core.mpu.parallel_state import ParallelLayout
from tests.harness import run_distributed

pytestmark = pytest.mark.quick


def test_layout_matches_megatron_documented_example():
    # Megatron-LM's docstring: 16 GPUs, TP=2, PP=4.
    layout = ParallelLayout(16, 2, 4)
    assert layout.data_parallel_size == 2
    assert layout.tensor_groups() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9], [10, 11], [12, 13], [14, 15]]
    assert layout.pipeline_groups() == [[0, 4, 8, 12], [1, 5, 9, 13], [2, 6, 10, 14], [3, 7, 11, 15]]
    assert layout.data_groups() == [[0, 2], [1, 3], [4, 6], [5, 7], [8, 10], [9, 11], [12, 14], [13, 15]]
    assert layout.embedding_groups() == [[0, 12], [1, 13], [2, 14], [3, 15]]
    assert layout.model_groups() == [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]]


def test_layout_design_example():
    layout = ParallelLayout(8, 2, 2)
    assert layout.tensor_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert layout.pipeline_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert layout.data_groups() == [[0, 2], [1, 3], [4, 6], [5, 7]]


def test_layout_split_rank_joins_embedding_group():
    layout = ParallelLayout(4, 1, 4, pipeline_model_parallel_split_rank=2)
    assert layout.embedding_groups() == [[0, 2, 3]]
    assert layout.position_embedding_groups() == [[0, 2]]


@pytest.mark.parametrize("world,tp,pp", [(6, 4, 1), (8, 3, 1), (8, 2, 3)])
def test_world_size_that_does_not_divide_is_one_sentence(world, tp, pp):
    with pytest.raises(ValueError, match=rf"world size {world} is not divisible by .* = {tp * pp}"):
        ParallelLayout(world, tp, pp)


def _group_sum(group) -> int:
    value = torch.tensor([dist.get_rank()], dtype=torch.long)
    dist.all_reduce(value, group=group)
    return int(value.item())


def _check_groups(layouts):
    rank, world = dist.get_rank(), dist.get_world_size()
    for tp, pp, vpp in layouts:
        mpu.initialize_model_parallel(tp, pp, vpp)
        layout = ParallelLayout(world, tp, pp)
        expected = {
            "tensor": next(g for g in layout.tensor_groups() if rank in g),
            "pipeline": next(g for g in layout.pipeline_groups() if rank in g),
            "data": next(g for g in layout.data_groups() if rank in g),
        }
        assert mpu.get_tensor_model_parallel_world_size() == tp
        assert mpu.get_pipeline_model_parallel_world_size() == pp
        assert mpu.get_data_parallel_world_size() == world // (tp * pp)
        assert mpu.get_tensor_model_parallel_rank() == expected["tensor"].index(rank)
        assert mpu.get_pipeline_model_parallel_rank() == expected["pipeline"].index(rank)
        assert mpu.get_data_parallel_rank() == expected["data"].index(rank)
        assert mpu.get_tensor_model_parallel_src_rank() == expected["tensor"][0]
        # The real process groups hold exactly those ranks: an all-reduce of rank ids sums them.
        assert _group_sum(mpu.get_tensor_model_parallel_group()) == sum(expected["tensor"])
        assert _group_sum(mpu.get_pipeline_model_parallel_group()) == sum(expected["pipeline"])
        assert _group_sum(mpu.get_data_parallel_group()) == sum(expected["data"])
        model_group = next(g for g in layout.model_groups() if rank in g)
        assert _group_sum(mpu.get_model_parallel_group()) == sum(model_group)
        pipe = expected["pipeline"]
        stage = pipe.index(rank)
        assert mpu.is_pipeline_first_stage(ignore_virtual=True) == (stage == 0)
        assert mpu.is_pipeline_last_stage(ignore_virtual=True) == (stage == pp - 1)
        assert mpu.get_pipeline_model_parallel_next_rank() == pipe[(stage + 1) % pp]
        assert mpu.get_pipeline_model_parallel_prev_rank() == pipe[(stage - 1) % pp]
        if rank in (pipe[0], pipe[-1]):
            assert _group_sum(mpu.get_embedding_group()) == sum({pipe[0], pipe[-1]})
        assert mpu.is_rank_in_embedding_group(ignore_virtual=True) == (rank in (pipe[0], pipe[-1]))
        if vpp is None:
            assert mpu.get_pipeline_stage() == mpu.PipelineStage(stage, pp)
        else:
            assert mpu.get_pipeline_stage(vpp - 1) == mpu.PipelineStage(stage, pp, vpp - 1, vpp)
            # Only the first virtual chunk of the first stage is "first".
            assert mpu.get_virtual_pipeline_model_parallel_world_size() == vpp
            mpu.set_virtual_pipeline_model_parallel_rank(1)
            assert not mpu.is_pipeline_first_stage()
            assert mpu.is_pipeline_first_stage(ignore_virtual=True) == (stage == 0)
            mpu.set_virtual_pipeline_model_parallel_rank(vpp - 1)
            assert mpu.is_pipeline_last_stage() == (stage == pp - 1)
        assert mpu.model_parallel_is_initialized()
        mpu.destroy_model_parallel()
        assert not mpu.model_parallel_is_initialized()


def _check_bad_sizes():
    with pytest.raises(ValueError, match="world size 4 is not divisible by tensor-parallel size 3"):
        mpu.initialize_model_parallel(3)
    assert not mpu.model_parallel_is_initialized()
    with pytest.raises(RuntimeError, match="not initialized"):
        mpu.get_tensor_model_parallel_rank()


def test_groups_world4_several_layouts():
    run_distributed(_check_groups, 4, [(1, 1, None), (2, 1, None), (4, 1, None), (1, 4, None),
                                       (2, 2, None), (1, 2, 2), (1, 4, 2)])
    run_distributed(_check_bad_sizes, 4)


def test_groups_world8_tp2_pp2():
    run_distributed(_check_groups, 8, [(2, 2, None), (2, 4, 2), (4, 2, None)], timeout=240)
