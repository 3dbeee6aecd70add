"""A Megatron-LM torch-format checkpoint saved with --use-distributed-optimizer, written by
megatron-core's own DistributedOptimizer (0.16.1 on CPU, gloo; tests/harness/megatron_lm.py):
the moments in distrib_optim.pt come over per parameter equal to the live optimizer's, and
pretrain_gpt.py resumes with them."""

import shutil

import pytest
import torch

pytest.importorskip("megatron.core")

from megatron_core.checkpoint.megatron_lm.distrib_optim import buffer_offsets  # noqa: E402
from megatron_core.checkpoint.megatron_lm.key_names import ours_from_mcore  # noqa: E402
from megatron_core.checkpoint.reshard import SavedCheckpoint  # noqa: E402
from megatron_core.errors import CheckpointError  # noqa: E402
from tests.harness import megatron_lm  # noqa: E402
from tests.harness.datasets import null_tokenizer_run_flags  # noqa: E402
from tests.harness.entry_points import failure_report, logged_values, run_ranks  # noqa: E402


@pytest.fixture(scope="module", params=["llama", "gpt"])
def saved(tmp_path_factory, request):
    """megatron-core's model at TP=2 x DP=2 after two Adam steps of its distributed optimizer.
    Llama's parameters are all multiples of 64 elements; GPT-2's QKV bias (96 per rank) puts
    padding into the buffer."""
    directory = tmp_path_factory.mktemp("distrib_optim") / f"megatron_{request.param}"
    reference = megatron_lm.save_checkpoint(request.param, str(directory), tp=2, pp=1, dp=2, fmt="torch", seed=1234,
                                            iteration=7, with_optimizer=True, steps=2, distributed_optimizer=True)
    return directory, reference


def test_the_buffer_layout_is_reversed_and_padded_to_64_elements_inside_a_bucket():
    # the docstring's example: the last registered parameter first, the next one from 128
    assert buffer_offsets([("norm", 5, False), ("weight", 90, False)], None) == ({"weight": 0, "norm": 128}, 133)
    # a bucket closes once it holds 100 elements: the next starts where the last one ended
    assert buffer_offsets([("c", 10, False), ("b", 10, False), ("a", 100, False)], 100) == (
        {"a": 0, "b": 100, "c": 164}, 174)
    # a shared word table sits in a bucket of its own: the padding before it stays, none after it
    assert buffer_offsets([("table", 70, True), ("norm", 5, False)], None) == ({"norm": 0, "table": 64}, 134)


def test_distributed_optimizer_moments_come_over_per_parameter_at_tp2_dp2(saved):
    directory, reference = saved
    for tp_rank in (0, 1):
        rank_dir = directory / "iter_0000007" / f"mp_rank_{tp_rank:02d}"
        assert (rank_dir / "distrib_optim.pt").is_file()
        model_file = torch.load(rank_dir / "model_optim_rng.pt", weights_only=False)
        assert model_file["args"].use_distributed_optimizer and model_file["args"].data_parallel_size == 2
        assert "state" not in model_file["optimizer"]["optimizer"]      # only the param groups
    source = SavedCheckpoint(str(directory))
    assert source.has_optimizer()
    checked = 0
    for (tp_rank, _), by_name in reference.optimizer.items():
        for theirs, fields in by_name.items():
            _, pieces = source.optimizer_pieces(ours_from_mcore(theirs), tp_rank)
            for field in ("exp_avg", "exp_avg_sq"):
                (first, end, flat), = pieces[field]
                assert fields[field].abs().sum() > 0
                torch.testing.assert_close(flat, fields[field].reshape(-1), rtol=0, atol=0)
            assert float(pieces["step"]) == float(fields["step"]) == 2.0
            checked += 1
    assert len(reference.optimizer) == 2 and checked == 2 * len(source.owners)


def test_pretrain_gpt_resumes_a_distributed_optimizer_checkpoint_with_its_state(saved, tmp_path):
    """Resumed at TP=1 x DP=1: iteration 8 with no fresh-optimizer note, and its step (iteration 9's
    loss) differs from the one a fresh optimizer takes (--no-load-optim)."""
    directory, _ = saved
    flags = null_tokenizer_run_flags(directory, tmp_path) + ["--train-iters", "9"]
    losses = {}
    for mode, extra in (("resumed", []), ("fresh", ["--no-load-optim"])):
        done = run_ranks("pretrain_gpt.py", flags + extra, 1)
        assert done.returncode == 0, failure_report(done)
        losses[mode] = logged_values(done.stdout, "lm loss")
        assert sorted(losses[mode]) == [8, 9], failure_report(done)
        if mode == "resumed":
            assert "holds no optimizer state" not in done.stdout and "fresh optimizer" not in done.stdout
    assert losses["resumed"][8] == losses["fresh"][8] and losses["resumed"][9] != losses["fresh"][9]


def test_a_missing_distrib_optim_file_is_one_sentence_naming_it(saved, tmp_path):
    directory, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    missing = copy / "iter_0000007" / "mp_rank_01" / "distrib_optim.pt"
    missing.unlink()
    source = SavedCheckpoint(str(copy))       # the weights still read (--finetune, --no-load-optim)
    assert source.weight("decoder.layers.0.mlp.dense_h_to_4h.weight", 1).numel()
    with pytest.raises(CheckpointError, match="distrib_optim.pt is missing") as error:
        source.optimizer_pieces("decoder.layers.0.mlp.dense_h_to_4h.weight", 1)
    assert str(missing) in str(error.value) and "--no-load-optim" in str(error.value)


def test_without_its_distrib_optim_file_a_resume_stops_and_a_finetune_goes_on(saved, tmp_path):
    """The weights do not depend on the optimizer file: --finetune trains from them; a resume, which
    wants the optimizer, stops on one sentence naming the missing file."""
    directory, _ = saved
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    (copy / "iter_0000007" / "mp_rank_00" / "distrib_optim.pt").unlink()
    flags = null_tokenizer_run_flags(copy, tmp_path)
    finetune = run_ranks("pretrain_gpt.py", flags + ["--train-iters", "2", "--finetune"], 1)
    assert finetune.returncode == 0, failure_report(finetune)
    assert sorted(logged_values(finetune.stdout, "lm loss")) == [1, 2]
    resume = run_ranks("pretrain_gpt.py", flags + ["--train-iters", "9"], 1)
    error = [line for line in (resume.stdout + resume.stderr).splitlines() if line.startswith("error:")]
    assert resume.returncode != 0 and len(error) == 1, failure_report(resume)
    assert "distrib_optim.pt is missing" in error[0] and "--no-load-optim" in error[0]
