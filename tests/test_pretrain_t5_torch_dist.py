"""pretrain_t5.py --ckpt-format torch_dist, as users run it: Megatron-LM's T5 trained at TP=2
saves Megatron-LM's torch_dist directory, which holds exactly the model the run held, which
NVIDIA's megatron-core T5Model loads (weights and optimizer), and which a run at TP=1 resumes.

The model has the shapes of tests/harness/megatron_lm_models.py's "t5" (2 encoder and 2 decoder
layers, hidden 64, 4 heads, FFN 256, encoder sequence 16, decoder sequence 8, learned positions,
LayerNorm, GeLU, biases, the LM head tied to the word table with its vocabulary bias) and a
128-id vocabulary (118 of the news slice's commonest characters and 10 sentinels,
--vocab-extra-ids), so megatron-core builds the same model. Two runs of the same 3 iterations:
one saves torch_dist at iteration 2 and stops; the reference saves our default format at 2 (and
3) without stopping. Their iteration-2 weights are equal, so the torch_dist directory is compared
tensor for tensor with the reference's files (read by open_saved_model, which knows nothing of
torch_dist); megatron-core's logits from the torch_dist directory are compared with our model's,
and its optimizer's moments with the reference's; --to-megatron-lm of the reference writes the same
tensors under the same names; and a TP=1 run resumed from it logs the reference's iteration-3 loss
(the weights, Adam's state and the data position). Which T5 runs may save torch_dist at all is
decided from the flags, with no process (the pipeline split: test_training_arguments.py).
"""
import os

import pytest
import torch

from megatron_core.checkpoint import reshard
from megatron_core.checkpoint.torch_dist_files import check_torch_dist_model
from megatron_core.checkpoint.megatron_lm.torch_dist import read_torch_dist
from megatron_core.checkpoint.saved_model import open_saved_model
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import CheckpointError
from megatron_core.models.registry import get_family
from megatron_core.training.arguments import add_encoder_decoder_arguments, build_run_config, parse_args, validate
from megatron_core.training.data_options import add_data_options_arguments
from tests.harness.datasets import write_zh_sentence_dataset
from tests.harness.entry_points import failure_report, logged_values, run_forked, run_ranks
from tests.harness.tiny_corpus import write_small_vocab

ITERS, SAVED_AT = 3, 2
SENTINELS = 10
T5 = ["--encoder-num-layers", "2", "--decoder-num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4",
      "--ffn-hidden-size", "256", "--encoder-seq-length", "16", "--decoder-seq-length", "8",
      "--max-position-embeddings", "16"]


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("t5_vocab128"))
    vocab = write_small_vocab(directory, 128 - SENTINELS)
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=vocab, vocab_extra_ids=SENTINELS)
    prefix, _, _ = write_zh_sentence_dataset(directory, tokenizer)
    return T5 + [
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", str(ITERS), "--lr", "3e-3",
        "--lr-decay-style", "constant", "--weight-decay", "0.1", "--clip-grad", "1.0", "--hidden-dropout", "0",
        "--attention-dropout", "0", "--log-interval", "1", "--eval-iters", "0",
        "--split", "90,10,0", "--data-path", prefix, "--data-cache-path", os.path.join(directory, "cache"),
        "--num-workers", "0", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", vocab,
        "--vocab-extra-ids", str(SENTINELS), "--make-vocab-size-divisible-by", "64"]   # 128 rows at TP 1 and 2


def _ok(done):
    assert done.returncode == 0, failure_report(done)
    return done


@pytest.fixture(scope="module")
def saved(flags, tmp_path_factory):
    """(torch_dist --save dir, its run, our-format --save dir, the reference run)."""
    root = tmp_path_factory.mktemp("t5_torch_dist")
    torch_dist, ours = str(root / "torch_dist"), str(root / "ours")
    tp2 = ["--tensor-model-parallel-size", "2"]
    run = _ok(run_ranks("pretrain_t5.py", flags + tp2 + [
        "--save", torch_dist, "--save-interval", str(SAVED_AT), "--exit-interval", str(SAVED_AT),
        "--ckpt-format", "torch_dist"], 2))
    reference = _ok(run_ranks("pretrain_t5.py", flags + tp2 + ["--save", ours, "--save-interval", str(SAVED_AT)], 2))
    return torch_dist, run, ours, reference


def test_the_save_holds_exactly_the_model_the_run_held_under_both_of_megatron_cores_t5_names(saved):
    directory, run, ours, _ = saved
    assert f"successfully saved checkpoint from iteration {SAVED_AT:7d} to {directory} [torch_dist]" in run.stdout
    checkpoint = read_torch_dist(directory)
    args = checkpoint.common["args"]
    assert (args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.padded_vocab_size) == (2, 1, 128)
    assert (args.encoder_num_layers, args.decoder_num_layers, args.decoder_seq_length) == (2, 2, 8)
    stored = checkpoint.tensors._reader.read_metadata().state_dict_metadata
    for original, alias in (("embedding.position_embeddings.weight", "position_embeddings.weight"),
                            ("output_layer.bias", "lm_head.output_layer.bias")):
        assert original in stored and alias in stored
        assert torch.equal(checkpoint.tensors[original], checkpoint.tensors[alias])
        for field in ("exp_avg", "exp_avg_sq"):        # megatron-core's optimizer asks for either name
            assert f"optimizer.state.{field}.{original}" in stored and f"optimizer.state.{field}.{alias}" in stored
    source = reshard.open_source(directory)
    reference = open_saved_model(os.path.join(ours, f"iter_{SAVED_AT:07d}")).state
    assert sorted(source.owners) == sorted(reference)
    assert "output_layer.bias" in reference and any("inter_attention.key_value" in name for name in reference)
    for name in reference:
        assert torch.equal(source.weight(name, 0), reference[name]), name
    assert source.head["model_family"] == "t5" and source.head["consumed_train_samples"] == 4 * SAVED_AT


def test_megatron_cores_t5_loads_it_with_our_logits_and_the_runs_optimizer_state(saved, tmp_path):
    """megatron-core's T5Model at TP=2 loads the directory strictly (dist_checkpointing.load) and
    gives the logits of our model loaded from it (at the decoder's real tokens); its optimizer
    then holds, for every parameter of both TP ranks, the moments and step the reference run saved."""
    pytest.importorskip("megatron.core")
    from megatron_core.checkpoint.megatron_lm.key_names import alias_of, ours_from_mcore
    from megatron_core.checkpoint.reshard.targets import target_optimizer_state
    from tests.harness import megatron_lm
    from tests.harness.megatron_lm_models import sample_batch

    directory, _, ours, _ = saved
    theirs, optimizer = megatron_lm.load_with_optimizer("t5", directory, tp=2, fmt="torch_dist")
    mine = megatron_lm.our_logits(directory, "t5", 1, tmp_path)
    real = sample_batch("t5")["decoder_keep"].bool()
    torch.testing.assert_close(theirs["lm"][real], mine["lm"][real], rtol=0, atol=1e-5)
    reference = reshard.SavedCheckpoint(os.path.join(ours, f"iter_{SAVED_AT:07d}"))
    checked = 0
    for (tp_rank, _), by_name in sorted(optimizer.items()):
        for name, fields in by_name.items():
            name = ours_from_mcore(alias_of(name) or name, "t5")
            expected = target_optimizer_state(reference, name, reference.owner(name).spec, tp_rank, 2)
            for field in ("exp_avg", "exp_avg_sq", "step"):
                torch.testing.assert_close(fields[field].float(), torch.as_tensor(expected[field]).float(),
                                           rtol=0, atol=0, msg=lambda m: f"{tp_rank} {name} {field}: {m}")
            checked += 1
    assert checked == 2 * len(reference.owners)


def test_a_resume_at_tp1_goes_on_from_the_saved_weights_optimizer_and_data(flags, saved):
    directory, _, _, reference = saved
    done = _ok(run_forked("pretrain_t5.py", flags + ["--load", directory]))
    assert f"resharded checkpoint iteration {SAVED_AT} from TP=2 PP=1 DP=1 to TP=1 PP=1 DP=1 on load" in done.stdout
    assert "fresh optimizer" not in done.stdout
    losses, expected = logged_values(done.stdout, "lm loss"), logged_values(reference.stdout, "lm loss")
    assert sorted(losses) == [SAVED_AT + 1], failure_report(done)
    assert losses[SAVED_AT + 1] == pytest.approx(expected[SAVED_AT + 1], rel=1e-5)


def test_the_export_of_the_reference_writes_what_the_run_wrote(saved, tmp_path):
    """tools/convert_checkpoint.py --to-megatron-lm --format torch_dist of the reference's iteration 2
    (our format) holds the same tensors under the same names as the run's own save, which
    megatron-core loads (above): the weights and Adam's moments, each under both T5 names."""
    from tests.harness.tool_main import run_tool_main

    directory, _, ours, _ = saved
    exported = tmp_path / "exported"
    run_tool_main("convert_checkpoint.py", "--to-megatron-lm", exported, "--load",
                  os.path.join(ours, f"iter_{SAVED_AT:07d}"), "--format", "torch_dist")
    run, export = read_torch_dist(directory), read_torch_dist(str(exported))
    assert sorted(export.tensors) == sorted(run.tensors)
    for name in run.tensors:
        assert torch.equal(export.tensors[name], run.tensors[name]), name
    assert sorted(export.optimizer_tensors) == sorted(run.optimizer_tensors) == ["exp_avg", "exp_avg_sq"]
    for field, tensors in run.optimizer_tensors.items():
        assert sorted(export.optimizer_tensors[field]) == sorted(tensors)
        assert "position_embeddings.weight" in tensors and "lm_head.output_layer.bias" in tensors
        for name in tensors:
            assert torch.equal(export.optimizer_tensors[field][name], tensors[name]), (field, name)


@pytest.mark.quick
@pytest.mark.parametrize("extra,refusal", [
    ("", None),
    ("--untie-embeddings-and-output-weights", None),      # megatron-core's untied T5 head has no bias either
    ("--no-t5-lm-head-bias", r"adds a vocabulary bias this run does not have \(--no-t5-lm-head-bias\).*; drop "
                             r"--no-t5-lm-head-bias, or save with --ckpt-format megatron\.$"),
], ids=["megatron_t5", "untied", "tied_without_bias"])
def test_a_t5_that_megatron_core_would_not_build_the_same_is_refused_in_one_sentence(extra, refusal):
    """The checkpointer's check at the start of a run, on the flags' config and model options."""
    line = T5 + ["--micro-batch-size", "2", "--train-iters", "1", "--lr", "1e-3", "--save", "ckpt",
                 "--save-interval", "1", "--ckpt-format", "torch_dist"] + extra.split()
    args = validate(parse_args(line, extra_args_provider=lambda p: add_data_options_arguments(
        add_encoder_decoder_arguments(p))), 1)
    config, options = build_run_config(args).model, get_family("t5").options(vars(args))
    if refusal is None:
        check_torch_dist_model("t5", config, options)
        return
    with pytest.raises(CheckpointError, match=refusal) as info:
        check_torch_dist_model("t5", config, options)
    assert "\n" not in str(info.value)


def test_megatron_cores_own_t5_keeps_the_position_tables_optimizer_state_under_its_second_name(saved, tmp_path):
    """megatron-core's T5Model asks its optimizer for the position table's state under
    `position_embeddings.weight` only (not `embedding.position_embeddings.weight`): the same save
    rewritten with those entries under the second name alone reads with the same state."""
    from megatron_core.checkpoint.megatron_lm.torch_dist import write_torch_dist

    directory = saved[0]
    checkpoint = read_torch_dist(directory)
    state = {key: checkpoint.tensors[key] for key in checkpoint.tensors}
    moved = 0
    for field, tensors in checkpoint.optimizer_tensors.items():
        for key in tensors:
            if key.startswith("embedding.position_embeddings."):
                moved += 1
                continue
            state[f"optimizer.state.{field}.{key}"] = tensors[key]
    assert moved and all(f"optimizer.state.{field}.position_embeddings.weight" in state
                         for field in checkpoint.optimizer_tensors)
    rewritten = str(tmp_path / f"iter_{SAVED_AT:07d}")
    write_torch_dist(rewritten, state, dict(checkpoint.common), write_tracker=False)
    original, second = reshard.open_source(directory), reshard.open_source(rewritten)
    name = "embedding.position_embeddings.weight"
    assert second.has_optimizer_entry(name)
    got, want = second.optimizer_fields(name), original.optimizer_fields(name)
    assert sorted(got) == sorted(want)
    for field in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(second.optimizer_field(name, 0, field), original.optimizer_field(name, 0, field))
