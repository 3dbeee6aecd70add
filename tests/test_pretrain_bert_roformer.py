"""pretrain_bert.py and pretrain_roformer.py run as a user runs them (plain python and torchrun).

A parallel layout logs, step for step, the losses of the single-process run of the same
flags (fp32, no dropout, relative 1e-5); each BERT variant flag (SOP, post-LN, --wwm,
--bert-no-binary-head) reaches the run and logs Megatron's loss names. BERT's first logged
losses are recomputed by hand from the dataset samples and the model the flags build;
in-process checks read that model's layout and the loss a forward step trains (lm + sop).
The variant runs fork from the session's fork server (entry_points.run_forked): the
single-process reference and the torchrun layouts start as a user's.
"""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pretrain_bert
import pretrain_roformer
from tests.harness.entry_points import failure_report, logged_losses, run_entry_point, run_forked, tiny_run_flags
from tests.harness.tiny_corpus import preprocess_zh_news
from megatron_core.training.arguments import build_run_config, parse_args, validate
from megatron_core.training.data_iterators import build_data_iterators
from megatron_core.training.data_options import add_data_options_arguments
from megatron_core.training.data_providers import train_valid_test_num_samples
from megatron_core.training.train_spec import train_run
from megatron_core.training.vocabulary import resolve_vocabulary
from tests.harness.model_checks import single_process_world

STEPS = 5


@pytest.fixture(scope="module")
def flags(tmp_path_factory):
    """The tiny run's flags on the news slice, sentence-split (4 paragraphs a document)."""
    directory = str(tmp_path_factory.mktemp("sentences"))
    prefix = preprocess_zh_news(directory, split_sentences=True)
    return tiny_run_flags(prefix, os.path.join(directory, "cache"), train_iters=STEPS)


def run_losses(script, flags, nproc=None, forked=False):
    """The run's logged losses: `python script` (nproc None), torchrun (nproc), or one process forked
    from the session's fork server (forked: the variant runs, whose subject is the flag, not the start)."""
    done = run_forked(script, flags) if forked else run_entry_point(script, flags, nproc=nproc)
    assert done.returncode == 0, failure_report(done)
    losses = logged_losses(done.stdout)
    assert sorted(losses) == list(range(1, STEPS + 1)), failure_report(done)
    for step in losses.values():
        assert all(math.isfinite(value) for value in step.values()), losses
    return losses


def assert_same_losses(parallel, serial):
    for step in serial:
        assert parallel[step].keys() == serial[step].keys(), (step, parallel, serial)
        for name, value in serial[step].items():
            assert parallel[step][name] == pytest.approx(value, rel=1e-5), (step, name, parallel, serial)


@pytest.fixture
def one_process():
    """Our layers need (trivial) model-parallel groups: one gloo process, TP=1."""
    with single_process_world():
        yield


@pytest.fixture(scope="module")
def bert_serial(flags):
    return run_losses("pretrain_bert.py", flags)


def test_bert_single_process_logs_lm_and_sop_loss_and_the_lm_loss_falls(bert_serial):
    assert all(set(step) == {"lm loss", "sop loss"} for step in bert_serial.values()), bert_serial
    assert bert_serial[STEPS]["lm loss"] < bert_serial[1]["lm loss"]


def test_bert_pipeline_two_stages_under_torchrun_logs_the_single_process_losses(flags, bert_serial):
    parallel = run_losses("pretrain_bert.py", flags + ["--pipeline-model-parallel-size", "2"], nproc=2)
    assert_same_losses(parallel, bert_serial)


@pytest.mark.parametrize("extra,names", [
    (["--sop"], {"lm loss", "sop loss"}),
    (["--layernorm-position", "post"], {"lm loss", "sop loss"}),
    (["--wwm"], {"lm loss", "sop loss"}),
    (["--bert-no-binary-head"], {"lm loss"}),
], ids=["sop", "post-ln", "wwm", "no-binary-head"])
def test_bert_variant_flag_changes_the_run_and_logs_megatrons_loss_names(flags, bert_serial, extra, names):
    losses = run_losses("pretrain_bert.py", flags + extra, forked=True)
    assert all(set(step) == names for step in losses.values()), losses
    # The flag reached the run: another task, model or masking gives another first loss.
    first, default = losses[1], bert_serial[1]
    assert any(first[name] != pytest.approx(default[name], rel=1e-4) for name in names), (first, default)


def _run(script, flags, extra_args_provider=add_data_options_arguments):
    """What pretrain() hands the entry point's forward step and providers (its TrainRun)."""
    args = validate(parse_args(flags, extra_args_provider), 1)
    config = build_run_config(args)
    return train_run(script.TRAIN_SPEC, args, config, resolve_vocabulary(args, config))


@pytest.mark.parametrize("position,post_ln", [("pre", False), ("post", True)])
def test_layernorm_position_flag_builds_megatron_bert_pre_ln_or_original_post_ln(flags, one_process, position,
                                                                                 post_ln):
    model = _run(pretrain_bert, flags + ["--layernorm-position", position]).build_model()
    assert model.post_ln is post_ln
    # post-LN (HF BertModel): a norm on the embedding sum, none after the last layer; pre-LN the reverse.
    assert (model.embedding.layernorm is not None) is post_ln
    assert (model.encoder.final_layernorm is None) is post_ln


def test_bert_forward_step_trains_the_sum_of_lm_and_sop_loss(flags, one_process):
    run = _run(pretrain_bert, flags)
    train = pretrain_bert.train_valid_test_datasets_provider(run, [8, 0, 0])[0]
    model = run.build_model()
    output, loss_func = pretrain_bert.forward_step(build_data_iterators((train,), 2).train, model, run)
    loss, stats = loss_func(output)
    per_token, binary_logits = output
    samples = [train[0], train[1]]
    loss_mask = torch.tensor(np.stack([s["loss_mask"] for s in samples]), dtype=torch.float)
    order = torch.tensor([s["is_random"] for s in samples])
    lm = (per_token * loss_mask).sum() / loss_mask.sum()
    sop = F.cross_entropy(binary_logits, order)
    assert set(stats) == {"lm loss", "sop loss"}
    torch.testing.assert_close(stats["lm loss"], lm.detach())
    torch.testing.assert_close(stats["sop loss"], sop.detach())
    torch.testing.assert_close(loss, lm + sop)
    assert loss.requires_grad


def test_bert_first_logged_losses_are_the_initial_models_on_the_first_global_batch(flags, bert_serial, one_process):
    """Step 1 is logged before any update: the model the flags build, on samples 0..7 in
    micro-batches of 2 (Megatron's sample order), mean of the micro-batch losses."""
    run = _run(pretrain_bert, flags)
    train = pretrain_bert.train_valid_test_datasets_provider(
        run, train_valid_test_num_samples(run.config.training))[0]
    model = run.build_model()
    lm, sop = [], []
    with torch.no_grad():
        for first in range(0, 8, 2):
            batch = {key: torch.tensor(np.stack([train[i][key] for i in (first, first + 1)]))
                     for key in ("text", "types", "padding_mask", "labels", "loss_mask", "is_random")}
            per_token, binary_logits = model(batch["text"], batch["padding_mask"], tokentype_ids=batch["types"],
                                             lm_labels=batch["labels"])
            mask = batch["loss_mask"].float()
            lm.append(((per_token * mask).sum() / mask.sum()).item())
            sop.append(F.cross_entropy(binary_logits, batch["is_random"]).item())
    assert bert_serial[1]["lm loss"] == pytest.approx(sum(lm) / 4, rel=1e-5)
    assert bert_serial[1]["sop loss"] == pytest.approx(sum(sop) / 4, rel=1e-5)


def test_roformer_tensor_parallel_under_torchrun_logs_the_single_process_lm_loss(flags):
    serial = run_losses("pretrain_roformer.py", flags)
    assert all(set(step) == {"lm loss"} for step in serial.values()), serial
    assert serial[STEPS]["lm loss"] < serial[1]["lm loss"]
    parallel = run_losses("pretrain_roformer.py", flags + ["--tensor-model-parallel-size", "2"], nproc=2)
    assert_same_losses(parallel, serial)


def test_roformer_entry_point_builds_rotary_interleaved_and_mixes_lm_and_mlm_samples(flags, one_process):
    run = _run(pretrain_roformer, flags + ["--roformer-lm-prob", "0.5"], pretrain_roformer.add_roformer_arguments)
    model = run.build_model()
    assert model.config.position_embedding_type == "rope" and model.config.rotary_interleaved
    assert model.embedding.position_embeddings is None and model.binary_head is None
    train = pretrain_roformer.train_valid_test_datasets_provider(run, [16, 0, 0])[0]
    kinds = {train.is_lm_sample(i) for i in range(16)}
    assert kinds == {True, False}
