"""pretrain_gpt.py --ckpt-format torch_dist, as users run it: a Llama-style GPT trained at
TP=2 x PP=2 (4 ranks) saves Megatron-LM's torch_dist directory, which holds exactly the model
the run held, which NVIDIA's megatron-core loads, and which a run at another TP size resumes.

The model has the shapes of tests/harness/megatron_lm_models.py's "llama" (2 layers, hidden
64, 4 heads in 2 query groups, FFN 256, sequence 16, SwiGLU, RMSNorm, rotary, no biases,
untied output layer) and a 128-id vocabulary (tiny_corpus.write_small_vocab: the news slice's
commonest characters), so megatron-core builds the same model. Two runs of the same 4
iterations: one saves torch_dist at iteration 3 and stops; the reference saves our default
format at 3 (and 4) without stopping. Their iteration-3 weights are equal, so the torch_dist
directory is compared tensor for tensor with the reference's files (read by
open_saved_model, which knows nothing of torch_dist); megatron-core's logits from the
torch_dist directory are compared with our model's; and a TP=1 run resumed from it logs the
reference's iteration-4 loss (computed before that iteration's update: the weights and the
data position) with the saved optimizer state; megatron-core's optimizer loads that state
with the moments and step our reference run saved.
"""
import os
import re
import shutil

import pytest
import torch

from megatron_core.checkpoint import reshard
from megatron_core.checkpoint.manifest import MANIFEST, read_manifest
from megatron_core.checkpoint.megatron_lm.torch_dist import read_torch_dist
from megatron_core.checkpoint.reshard.targets import target_optimizer_field, target_optimizer_state
from megatron_core.checkpoint.saved_model import MergedState, open_saved_model
from megatron_core.errors import CheckpointError
from tests.harness.damaged_files import flip_a_byte
from tests.harness.entry_points import failure_report, logged_values, run_forked, run_ranks
from tests.harness.tiny_corpus import preprocess_zh_news, write_small_vocab

ITERS, SAVED_AT = 4, 3
LLAMA = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "256",
         "--seq-length", "16", "--max-position-embeddings", "16", "--swiglu", "--normalization", "RMSNorm",
         "--position-embedding-type", "rope", "--group-query-attention", "--num-query-groups", "2",
         "--disable-bias-linear", "--untie-embeddings-and-output-weights"]


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("vocab128"))
    vocab = write_small_vocab(directory, 128)
    prefix = preprocess_zh_news(directory, vocab_file=vocab)
    return LLAMA + [
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", str(ITERS), "--lr", "3e-3",
        "--lr-decay-style", "constant", "--weight-decay", "0.1", "--clip-grad", "1.0", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--log-interval", "1", "--eval-interval", "100", "--eval-iters", "1",
        "--split", "90,10,0", "--data-path", prefix, "--data-cache-path", os.path.join(directory, "cache"),
        "--num-workers", "0", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", vocab,
        "--make-vocab-size-divisible-by", "64"]      # 128 ids stay 128 rows at TP 1 and 2


def _ok(done):
    assert done.returncode == 0, failure_report(done)
    return done


@pytest.fixture(scope="module")
def saved(flags, tmp_path_factory):
    """(torch_dist --save dir, its run, our-format --save dir, the reference run)."""
    root = tmp_path_factory.mktemp("torch_dist")
    torch_dist, ours = str(root / "torch_dist"), str(root / "ours")
    sizes = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
    run = _ok(run_ranks("pretrain_gpt.py", flags + sizes + [
        "--save", torch_dist, "--save-interval", str(SAVED_AT), "--exit-interval", str(SAVED_AT),
        "--ckpt-format", "torch_dist"], 4))
    reference = _ok(run_ranks("pretrain_gpt.py", flags + sizes + ["--save", ours, "--save-interval", str(SAVED_AT)],
                              4))
    return torch_dist, run, ours, reference


def test_the_save_is_megatron_lms_torch_dist_directory(saved):
    directory, run, _, _ = saved
    iteration_dir = os.path.join(directory, f"iter_{SAVED_AT:07d}")
    with open(os.path.join(directory, "latest_checkpointed_iteration.txt")) as f:
        assert f.read().strip() == str(SAVED_AT)
    written = [".metadata", *(f"__{rank}_0.distcp" for rank in range(4)), "common.pt", "metadata.json"]
    assert sorted(os.listdir(iteration_dir)) == sorted(written + [MANIFEST])
    assert sorted(read_manifest(iteration_dir)["files"]) == written     # every rank's .distcp, read back
    checkpoint = read_torch_dist(directory)
    common, args = checkpoint.common, checkpoint.common["args"]
    assert (common["checkpoint_version"], common["iteration"]) == (3.0, SAVED_AT)
    assert common["opt_param_scheduler"]
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.padded_vocab_size) == (2, 2, 128)
    assert (args.num_layers, args.hidden_size, args.swiglu, args.untie_embeddings_and_output_weights,
            args.add_position_embedding, args.consumed_train_samples) == (2, 64, True, True, False, 12)
    stored = checkpoint.tensors._reader.read_metadata().state_dict_metadata
    assert {name for name in stored if name.startswith("rng_state/")} == {
        f"rng_state/shard_{p}.{t}_2.2" for p in range(2) for t in range(2)}
    assert {name for name in stored if name.startswith("optimizer.state.")} == {
        f"optimizer.state.{field}.{name}" for field in ("exp_avg", "exp_avg_sq") for name in stored
        if not name.startswith(("optimizer.", "rng_state/")) and "_extra_state" not in name}
    assert common["optimizer"]["state"]["common_step"].item() == SAVED_AT
    assert [group["wd_mult"] for group in common["optimizer"]["param_groups"]] == [1.0, 0.0]
    assert "not written in this format yet" not in run.stdout
    assert f"successfully saved checkpoint from iteration {SAVED_AT:7d} to {directory} [torch_dist]" in run.stdout


def test_it_reads_back_as_exactly_the_model_the_run_held(saved):
    directory, _, ours, _ = saved
    source = reshard.open_source(directory)
    reference = open_saved_model(os.path.join(ours, f"iter_{SAVED_AT:07d}")).state
    assert (source.tp, source.pp, source.head["parallel"]["saved_as"]) == (1, 1, [2, 2])
    assert sorted(source.owners) == sorted(reference)
    assert "output_layer.weight" in reference and "word_embeddings.weight" not in reference
    for name in reference:
        assert torch.equal(source.weight(name, 0), reference[name]), name
    assert source.head["iteration"] == SAVED_AT and source.head["consumed_train_samples"] == 12


def test_a_damaged_distcp_file_is_named_before_anything_is_read(saved, tmp_path):
    directory = str(tmp_path / "torch_dist")
    shutil.copytree(saved[0], directory)
    target = os.path.join(directory, f"iter_{SAVED_AT:07d}", "__2_0.distcp")
    flip_a_byte(target)
    with pytest.raises(CheckpointError, match=f"^{re.escape(target)} fails its checksum"):
        reshard.open_source(directory)


def test_megatron_core_loads_it_with_our_logits(saved, tmp_path):
    pytest.importorskip("megatron.core")
    from tests.harness import megatron_lm

    directory = saved[0]
    theirs = megatron_lm.load_and_logits("llama", directory, tp=2, pp=2, fmt="torch_dist")
    ours = megatron_lm.our_logits(directory, "llama", 1, tmp_path)
    torch.testing.assert_close(theirs["lm"], ours["lm"], rtol=0, atol=1e-5)


def test_a_resume_at_tp1_goes_on_from_the_saved_weights_and_data(flags, saved):
    """--make-vocab-size-divisible-by 256 would pad to 256 rows: a run keeps the saved 128."""
    directory, _, _, reference = saved
    done = _ok(run_forked("pretrain_gpt.py", flags + ["--load", directory, "--make-vocab-size-divisible-by", "256"]))
    assert f"resharded checkpoint iteration {SAVED_AT} from TP=2 PP=2 DP=1 to TP=1 PP=1 DP=1 on load" in done.stdout
    assert "fresh optimizer" not in done.stdout        # the saved Adam state goes on
    losses, expected = logged_values(done.stdout, "lm loss"), logged_values(reference.stdout, "lm loss")
    assert sorted(losses) == [SAVED_AT + 1], failure_report(done)
    assert losses[SAVED_AT + 1] == pytest.approx(expected[SAVED_AT + 1], rel=1e-5)
    assert logged_values(done.stdout, "consumed samples")[SAVED_AT + 1] == 16


@pytest.fixture(scope="module")
def distributed(flags, tmp_path_factory):
    """A torch_dist save of the run at TP=2 x DP=2 with --use-distributed-optimizer (4 ranks)."""
    directory = str(tmp_path_factory.mktemp("dp2") / "save")
    _ok(run_ranks("pretrain_gpt.py", flags + ["--tensor-model-parallel-size", "2", "--use-distributed-optimizer",
                                              "--save", directory, "--save-interval", str(SAVED_AT),
                                              "--exit-interval", str(SAVED_AT), "--ckpt-format", "torch_dist"], 4))
    return directory


def test_data_parallel_ranks_beyond_the_first_take_part_but_write_nothing(distributed, saved):
    """At DP=2 x TP=2 the save is still collective over all 4 ranks; only data-parallel rank 0's
    (TP, PP) ranks (global ranks 0 and 1) hold tensors, ranks 2 and 3 write empty files, and the
    result is the same model (the same computation at other sizes: equal up to rounding), with the
    distributed optimizer's state joined from both data-parallel ranks in megatron-core's
    fully_reshardable layout: whole moments equal to the reference run's (DP=1, plain optimizer)."""
    directory = distributed
    sizes = {name: os.path.getsize(os.path.join(directory, f"iter_{SAVED_AT:07d}", name))
             for name in ("__0_0.distcp", "__1_0.distcp", "__2_0.distcp", "__3_0.distcp")}
    assert sizes["__0_0.distcp"] and sizes["__1_0.distcp"] and not sizes["__2_0.distcp"] + sizes["__3_0.distcp"]
    checkpoint = read_torch_dist(directory)
    assert checkpoint.common["args"].data_parallel_size == 2
    assert checkpoint.common["content_metadata"]["distrib_optim_sharding_type"] == "fully_reshardable"
    assert checkpoint.common["optimizer"]["param_state_sharding_type"] == "fully_reshardable"
    assert sorted(checkpoint.optimizer_tensors) == ["exp_avg", "exp_avg_sq", "param"]
    source = reshard.open_source(directory)
    reference = reshard.SavedCheckpoint(os.path.join(saved[2], f"iter_{SAVED_AT:07d}"))
    assert sorted(source.owners) == sorted(reference.owners) and source.has_optimizer()
    merged = MergedState(reference)
    for name in reference.owners:
        torch.testing.assert_close(source.weight(name, 0), merged[name], rtol=1e-4, atol=1e-5)
        got, want = source.optimizer_fields(name), reference.optimizer_fields(name)
        assert sorted(got) == sorted(want) == ["exp_avg", "exp_avg_sq", "step"], name
        assert float(got["step"]) == float(want["step"]) == SAVED_AT
        for field in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(source.optimizer_field(name, 0, field),
                                       _merged_field(reference, name, field), rtol=1e-3, atol=1e-9)


def _merged_field(source, name: str, field: str) -> torch.Tensor:
    return target_optimizer_field(source, name, source.owner(name).spec, field, 0, 1, source.padded_vocab_size)


def test_megatron_cores_distributed_optimizer_loads_it_at_another_data_parallel_size(distributed, tmp_path):
    """megatron-core's DistributedOptimizer at TP=2 x DP=1 takes the fully_reshardable state (the
    sharding type named in the checkpoint's content metadata, as Megatron-LM's load reads it) with
    exactly the moments and step our reader finds there, and gives our model's logits."""
    pytest.importorskip("megatron.core")
    from megatron_core.checkpoint.megatron_lm.key_names import ours_from_mcore
    from tests.harness import megatron_lm

    source = reshard.open_source(distributed)
    logits, optimizer = megatron_lm.load_with_optimizer("llama", distributed, tp=2, fmt="torch_dist",
                                                        distributed_optimizer=True)
    checked = 0
    for (tp_rank, _), by_name in sorted(optimizer.items()):
        for theirs, fields in by_name.items():
            name = ours_from_mcore(theirs)
            expected = target_optimizer_state(source, name, source.owner(name).spec, tp_rank, 2,
                                                               source.padded_vocab_size)
            for field in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(fields[field].float(), torch.as_tensor(expected[field]).float()), (theirs, field)
            checked += 1
    assert checked == 2 * len(source.owners)
    ours = megatron_lm.our_logits(distributed, "llama", 1, tmp_path)     # the fp32 main copy went into its weights
    torch.testing.assert_close(logits["lm"], ours["lm"], rtol=0, atol=1e-5)


def test_a_resume_of_the_distributed_optimizers_save_goes_on_with_its_state(flags, distributed, saved):
    """pretrain_gpt.py at TP=1 x DP=1 (plain optimizer) resumes the DP=2 distributed optimizer's
    torch_dist save with its Adam state and logs the uninterrupted reference's next loss."""
    done = _ok(run_forked("pretrain_gpt.py", flags + ["--load", distributed]))
    assert "fresh optimizer" not in done.stdout and "holds no optimizer state" not in done.stdout
    losses, expected = logged_values(done.stdout, "lm loss"), logged_values(saved[3].stdout, "lm loss")
    assert sorted(losses) == [SAVED_AT + 1], failure_report(done)
    assert losses[SAVED_AT + 1] == pytest.approx(expected[SAVED_AT + 1], rel=1e-4)


def test_megatron_core_takes_the_optimizer_state_our_run_saved(saved):
    """megatron-core's optimizer.load_state_dict of the torch_dist directory holds, for every parameter
    of every (TP, PP) rank, the moments and step of the same run saved in our format."""
    pytest.importorskip("megatron.core")
    from megatron_core.checkpoint.megatron_lm.key_names import ours_from_mcore
    from tests.harness import megatron_lm

    directory, _, ours, _ = saved
    _, optimizer = megatron_lm.load_with_optimizer("llama", directory, tp=2, pp=2, fmt="torch_dist")
    reference = reshard.SavedCheckpoint(os.path.join(ours, f"iter_{SAVED_AT:07d}"))
    checked = 0
    for (tp_rank, pp_rank), by_name in sorted(optimizer.items()):
        for theirs, fields in by_name.items():
            global_name = re.sub(r"^decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + pp_rank}.",
                                 theirs)       # one layer per stage
            name = ours_from_mcore(global_name)
            expected = target_optimizer_state(reference, name, reference.owner(name).spec, tp_rank, 2)
            for field in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(fields[field].float(), torch.as_tensor(expected[field]).float(),
                                           rtol=0, atol=0, msg=lambda m: f"{tp_rank},{pp_rank} {theirs} {field}: {m}")
            checked += 1
    assert checked == 2 * len(reference.owners)      # every parameter, on both TP ranks of its stage
