"""The optimizer state of Megatron-LM's torch_dist checkpoints, proven against NVIDIA's own code
(megatron-core 0.16.1 on CPU, tests/harness/megatron_lm.py): megatron-core's Llama and BERT,
trained 2 steps at TP=2 and saved in torch_dist with their Adam state, read through
reshard.open_source and cut back to TP=2 give, for every parameter and rank, exactly the
moments and step the live optimizer held (read off it by parameter, not from the files);
pretrain_gpt.py resumes the directory with that state, and change_mp keeps it.
"""
import pytest
import torch

pytest.importorskip("megatron.core")

from megatron_core.checkpoint import reshard  # noqa: E402
from megatron_core.checkpoint.megatron_lm.key_names import ours_from_mcore  # noqa: E402
from megatron_core.checkpoint.reshard.targets import target_optimizer_state  # noqa: E402
from tests.harness import megatron_lm  # noqa: E402
from tests.harness.datasets import null_tokenizer_run_flags  # noqa: E402
from tests.harness.entry_points import failure_report, logged_values, run_ranks  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

TP = 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """{name: (directory, SavedReference)}: each model saved by megatron-core at TP=2 in torch_dist
    after 2 optimizer steps, at iteration 7."""
    root = tmp_path_factory.mktemp("torch_dist_optimizer")
    return {name: (root / name, megatron_lm.save_checkpoint(name, str(root / name), tp=TP, pp=1, fmt="torch_dist",
                                                           seed=1234, iteration=7, with_optimizer=True, steps=2))
            for name in ("llama", "bert")}


def _assert_state_is_the_live_optimizers(source, reference) -> None:
    """Every parameter of every TP rank of `reference.optimizer`, cut from `source` at TP=2, holds
    exactly the live optimizer's exp_avg, exp_avg_sq and step (an fp32 model: no masters)."""
    smap = source.whole_model_map()
    checked = set()
    for (tp_rank, _), by_name in reference.optimizer.items():
        for theirs, fields in by_name.items():
            ours = ours_from_mcore(theirs)
            got = target_optimizer_state(source, ours, smap.tensors[ours], tp_rank, TP, source.padded_vocab_size)
            assert set(got) == set(fields) == {"exp_avg", "exp_avg_sq", "step"}, theirs
            for field, want in fields.items():
                assert got[field].shape == want.shape and torch.equal(got[field], want), (theirs, tp_rank, field)
            checked.add((tp_rank, ours))
    assert checked == {(t, name) for t in range(TP) for name in source.owners}


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_torch_dist_adam_state_is_megatron_cores_by_parameter(saved, name):
    directory, reference = saved[name]
    source = reshard.open_source(str(directory))
    assert source.has_optimizer() and not source.parallel["optimizer_dropped"]
    _assert_state_is_the_live_optimizers(source, reference)


def test_change_mp_keeps_the_torch_dist_optimizer_state(saved, tmp_path):
    """TP=1 in our files, then cut back to TP=2: still exactly megatron-core's state."""
    directory, reference = saved["llama"]
    tp1 = tmp_path / "tp1"
    run_tool_main("change_mp.py", directory, "--target-tensor-parallel-size", 1, "--output", tp1)
    merged = reshard.SavedCheckpoint(str(tp1))
    assert merged.has_optimizer()
    _assert_state_is_the_live_optimizers(merged, reference)


def test_pretrain_gpt_resumes_a_torch_dist_checkpoint_with_its_optimizer(saved, tmp_path):
    """--load of the TP=2 torch_dist Llama at TP=1, the model flags from its args: iteration 8 on,
    with Megatron-LM's Adam state (no fresh-optimizer note); iteration 9's loss, after one update,
    is not the one a fresh optimizer (--no-load-optim) gives."""
    directory, _ = saved["llama"]
    flags = null_tokenizer_run_flags(directory, tmp_path) + ["--train-iters", "9"]
    losses = {}
    for extra in ([], ["--no-load-optim"]):
        done = run_ranks("pretrain_gpt.py", flags + extra, 1)
        assert done.returncode == 0, failure_report(done)
        assert "successfully loaded checkpoint" in done.stdout, failure_report(done)
        assert "fresh optimizer" not in done.stdout and "holds no optimizer state" not in done.stdout
        losses[bool(extra)] = logged_values(done.stdout, "lm loss")
        assert sorted(losses[bool(extra)]) == [8, 9], failure_report(done)
    assert all(0 < loss < 10 for loss in losses[False].values())
    assert losses[False][8] == losses[True][8] and losses[False][9] != losses[True][9]


@pytest.fixture(scope="module")
def distributed_saves(tmp_path_factory):
    """{sharding type: (directory, SavedReference)}: megatron-core's Llama trained 2 steps with its
    DistributedOptimizer and saved in torch_dist: fully_reshardable at TP=2 x DP=2 (what
    Megatron-LM's --dist-ckpt-optim-fully-reshardable writes), dp_reshardable at TP=1 x DP=2
    (its default)."""
    root = tmp_path_factory.mktemp("distributed_optimizer")
    return {sharding: (root / sharding, megatron_lm.save_checkpoint(
                "llama", str(root / sharding), tp=tp, dp=2, fmt="torch_dist", iteration=7, with_optimizer=True,
                steps=2, distributed_optimizer=True, sharding_type=sharding))
            for sharding, tp in (("fully_reshardable", TP), ("dp_reshardable", 1))}


def test_a_distributed_optimizers_fully_reshardable_state_is_megatron_cores_by_parameter(distributed_saves):
    """The elements each data-parallel rank stepped, joined by parameter (read off the live
    optimizers, not the files), are exactly what the directory gives at TP=2; the step is the
    one the param groups carry."""
    directory, reference = distributed_saves["fully_reshardable"]
    source = reshard.open_source(str(directory))
    assert source.has_optimizer() and not source.parallel["optimizer_dropped"]
    _assert_state_is_the_live_optimizers(source, reference)


def test_a_dp_reshardable_state_stops_a_resume_in_one_sentence(distributed_saves, tmp_path):
    """Megatron-LM's default layout of a distributed optimizer (grad-buffer slices per data-parallel
    rank) is not read: a run that wants the optimizer stops on one sentence naming the sharding type
    and the two ways on; --no-load-optim loads the weights."""
    directory, _ = distributed_saves["dp_reshardable"]
    flags = null_tokenizer_run_flags(directory, tmp_path) + ["--train-iters", "8"]
    done = run_ranks("pretrain_gpt.py", flags, 1)
    assert done.returncode != 0
    assert "'dp_reshardable' sharding type" in done.stderr + done.stdout
    assert "--dist-ckpt-optim-fully-reshardable" in done.stderr + done.stdout
    done = run_ranks("pretrain_gpt.py", flags + ["--no-load-optim"], 1)
    assert done.returncode == 0, failure_report(done)
    assert sorted(logged_values(done.stdout, "lm loss")) == [8]
