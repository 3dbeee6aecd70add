"""Checkpoints through pretrain_gpt.py (and pretrain_bert.py) as users run them: exact resume, flags, faults.

An uninterrupted run of 6 iterations, saving at 3 and 6, is the reference. The resumed run
loads its checkpoint of iteration 3 and trains 3 more: it must log the same strings for
iterations 4-6 and the validations (loss, lr, loss scale, grad norm, consumed samples) and
end with bit-identical weights and optimizer state (tests.harness.resume_check).
A run stopped by --exit-interval saves exactly that iteration-3 state (checked once). A file
damaged after its save (flipped byte, truncated, missing) is named before anything is loaded, and
--keep-last 2 loads the older intact checkpoint instead.
Dropout stays on, so the RNG streams must be restored too. The runs whose subject is what is
saved and loaded are forked from the session's fork server (entry_points.run_forked, and
run_ranks for several ranks): the checkpoint is the subject here; the runs that must end in one
sentence on stderr, the kill and the signal start fresh processes as a user's would, and
tests/test_training_loop.py and tests/test_rank_failure.py run pretrain_gpt.py under torchrun.
"""
import glob
import math
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from megatron_core.checkpoint.manifest import MANIFEST
from tests.harness.damaged_files import flip_a_byte
from tests.harness.entry_points import (clean_env, entry_point_command, logged_iterations, logged_values,
                                        run_entry_point, run_forked, run_ranks)
from tests.harness.output_faults import output_fault, FaultUnavailable
from tests.harness.resume_check import assert_same_checkpoint_files, check_exact_resume, ok
from tests.harness.tiny_corpus import BERT_VOCAB, preprocess_zh_news

ITERS = 6


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return preprocess_zh_news(str(tmp_path_factory.mktemp("corpus")))


def flags(corpus, *extra):
    """A tiny GPT with dropout, a warmup + cosine lr, evaluation every 2 iterations."""
    return ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(ITERS), "--lr", "3e-3",
            "--lr-decay-style", "cosine", "--lr-warmup-iters", "2", "--weight-decay", "0.1", "--clip-grad", "1.0",
            "--log-interval", "1", "--eval-interval", "2", "--eval-iters", "1", "--split", "90,10,0",
            "--data-path", corpus, "--data-cache-path", os.path.join(os.path.dirname(corpus), "cache"),
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB, "--num-workers", "0",
            *extra]


def tracker(directory, name="latest_checkpointed_iteration.txt"):
    with open(os.path.join(directory, name)) as f:
        return f.read().strip()


def run_script(script, run_flags, nproc=None):
    """One process, or `nproc` ranks read as one run, forked (the launcher is not the subject)."""
    return run_forked(script, run_flags) if nproc is None else run_ranks(script, run_flags, nproc)


def resume_matches_uninterrupted(corpus, tmp, extra, nproc=None, script="pretrain_gpt.py"):
    """The runs (full, resumed, their directories) after checking the resumed run repeats the
    uninterrupted one from iteration 3 on."""
    runs = check_exact_resume(lambda run_flags: run_script(script, run_flags, nproc), flags(corpus, *extra),
                              tmp, iters=ITERS, break_at=3)
    assert "consumed samples:           32" in logged_iterations(runs.resumed.stdout)[4]   # data continues at 24
    return runs


@pytest.mark.parametrize("tp,pp,extra,files", [
    (2, 1, [], ["iter_0000003/mp_rank_00/model_optim_rng.pt", "iter_0000003/mp_rank_01/model_optim_rng.pt"]),
    (1, 1, ["--use-distributed-optimizer", "--ckpt-format", "deepspeed"],
     ["global_step3/mp_rank_00_model_states.pt", "global_step3/zero_pp_rank_0_mp_rank_00_optim_states.pt",
      "global_step3/zero_pp_rank_1_mp_rank_00_optim_states.pt"]),
    (1, 2, ["--num-layers-per-virtual-pipeline-stage", "1"],
     ["iter_0000003/mp_rank_00_000/model_optim_rng.pt", "iter_0000003/mp_rank_00_001/model_optim_rng.pt"]),
    (1, 1, ["--use-distributed-optimizer"],
     ["iter_0000003/mp_rank_00/model_optim_rng.pt", "iter_0000003/mp_rank_00/distrib_optim_dp_000.pt",
      "iter_0000003/mp_rank_00/distrib_optim_dp_001.pt"]),
], ids=["tp2", "dp2-distributed-optimizer-deepspeed-layout", "pp2-virtual-stages", "dp2-distributed-optimizer"])
def test_resume_on_two_ranks_logs_the_uninterrupted_losses_and_ends_bit_identical(corpus, tmp_path, tp, pp, extra,
                                                                                 files):
    extra = ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp), *extra]
    runs = resume_matches_uninterrupted(corpus, str(tmp_path), extra, nproc=2)
    half_dir = runs.break_dir
    saved = sorted(os.path.relpath(p, half_dir) for p in glob.glob(os.path.join(half_dir, "**", "*.pt"),
                                                                  recursive=True))
    assert saved == sorted(files)
    if "deepspeed" in extra:
        assert tracker(runs.full_dir, "latest") == f"global_step{ITERS}"      # as the run wrote it
        shard = torch.load(os.path.join(half_dir, files[2]), weights_only=True)
        assert shard["data_parallel_rank"] == 1 and "optimizer_state_dict" in shard
    else:
        assert tracker(runs.full_dir) == str(ITERS)
    if pp == 2:
        state = torch.load(os.path.join(half_dir, files[0]), weights_only=True)
        assert "model0" in state and "model1" in state and set(state["sharding_map"]) == {"model0", "model1"}


FP16 = ["--fp16", "--initial-loss-scale", "4096", "--loss-scale-window", "2"]


def test_resume_at_tp2_pp2_dp2_distributed_optimizer_fp16_megatron_layout_is_exact(corpus, tmp_path):
    """All of it at once on 8 processes: TP groups [0,1].., PP [0,4].., DP [0,2]..; each (TP, PP)
    rank's model file plus one optimizer shard per data-parallel rank; fp16's loss scale resumes."""
    extra = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2",
             "--use-distributed-optimizer", *FP16]
    runs = resume_matches_uninterrupted(corpus, str(tmp_path), extra, nproc=8)
    full, half_dir = runs.full, runs.break_dir
    saved = sorted(os.path.relpath(p, half_dir) for p in glob.glob(os.path.join(half_dir, "**", "*.pt"),
                                                                  recursive=True))
    ranks = [f"iter_0000003/mp_rank_{t:02d}_{p:03d}" for t in range(2) for p in range(2)]
    assert saved == sorted([f"{r}/model_optim_rng.pt" for r in ranks] +
                           [f"{r}/distrib_optim_dp_{d:03d}.pt" for r in ranks for d in range(2)])
    state = torch.load(os.path.join(half_dir, ranks[0], "model_optim_rng.pt"), weights_only=True)
    assert state["parallel"]["data_parallel_size"] == 2 and "optimizer" not in state
    logged = logged_iterations(full.stdout)[3].split("loss scale: ")[1].split(" |")[0]
    assert logged != "4096.0" and float(state["grad_scaler"]["scale"]) == float(logged)   # it moved; saved as logged


@pytest.fixture(scope="module")
def sentence_corpus(tmp_path_factory):
    return preprocess_zh_news(str(tmp_path_factory.mktemp("sentences")), split_sentences=True)


def test_bert_resume_logs_the_uninterrupted_losses_and_continues_the_data(sentence_corpus, tmp_path):
    runs = resume_matches_uninterrupted(sentence_corpus, str(tmp_path), [], script="pretrain_bert.py")
    assert "sop loss" in logged_iterations(runs.resumed.stdout)[4]    # both of BERT's losses resume


@pytest.fixture(scope="module")
def fp16_runs(corpus, tmp_path_factory):
    """The fp16 resume (DeepSpeed layout) whose checkpoint the --no-load-optim test reuses."""
    return resume_matches_uninterrupted(corpus, str(tmp_path_factory.mktemp("fp16")),
                                        FP16 + ["--ckpt-format", "deepspeed"])


def test_fp16_resume_in_deepspeed_layout_restores_the_loss_scale(fp16_runs):
    full, half_dir = fp16_runs.full, fp16_runs.break_dir
    assert tracker(fp16_runs.full_dir, "latest") == f"global_step{ITERS}"
    assert os.path.isfile(os.path.join(half_dir, "global_step3", "mp_rank_00_model_states.pt"))
    state = torch.load(os.path.join(half_dir, "global_step3", "mp_rank_00_model_states.pt"), weights_only=True)
    for key in ("module", "optimizer", "lr_scheduler", "global_steps", "dp_world_size", "mp_world_size"):
        assert key in state
    scales = {i: line.split("loss scale: ")[1].split(" |")[0] for i, line in logged_iterations(full.stdout).items()}
    assert scales[4] != "4096.0"    # the scale moved before the save, so a reset would show


def test_exit_interval_saves_the_state_the_uninterrupted_run_holds_at_that_iteration(corpus, fp16_runs, tmp_path):
    """What every resume test loads (the uninterrupted run's iteration 3) is what a run stopped
    with --exit-interval 3 saves: the same files, tensors and counters."""
    directory = str(tmp_path / "exited")
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, *FP16, "--ckpt-format", "deepspeed", "--save",
                                                  directory, "--save-interval", "100", "--exit-interval", "3")))
    assert sorted(logged_iterations(done.stdout)) == [1, 2, 3]
    assert tracker(directory, "latest") == "global_step3"
    assert_same_checkpoint_files(fp16_runs.break_dir, directory,
                                 lambda path: torch.load(path, map_location="cpu", weights_only=True))


def test_no_load_optim_keeps_the_loss_scaler_and_finetune_starts_at_iteration_0(corpus, fp16_runs):
    full, half_dir = fp16_runs.full, fp16_runs.break_dir
    reference = logged_iterations(full.stdout)
    fresh_optim = ok(run_forked("pretrain_gpt.py", flags(corpus, *FP16, "--load", half_dir, "--no-load-optim")))
    lines = logged_iterations(fresh_optim.stdout)
    assert sorted(lines) == [4, 5, 6]
    scale = reference[4].split("loss scale: ")[1].split(" |")[0]
    assert f"loss scale: {scale} |" in lines[4]
    finetune = ok(run_forked("pretrain_gpt.py", flags(corpus, *FP16, "--load", half_dir, "--finetune",
                                                      "--exit-interval", "1")))
    lines = logged_iterations(finetune.stdout)
    assert sorted(lines) == [1] and "iteration        1/       6" in lines[1]
    assert "consumed samples:            8" in lines[1] and "loss scale: 4096.0" in lines[1]
    loss = float(lines[1].split("lm loss: ")[1].split(" |")[0])
    assert loss < float(reference[1].split("lm loss: ")[1].split(" |")[0])   # the trained weights were loaded


@pytest.fixture(scope="module")
def serial_run(corpus, tmp_path_factory):
    """A single-process run from scratch that saves iteration 3 and stops: (its checkpoint, its stdout)."""
    directory = str(tmp_path_factory.mktemp("serial") / "ckpt")
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, "--save", directory, "--save-interval", "3",
                                                  "--exit-interval", "3")))
    return directory, done.stdout


@pytest.fixture(scope="module")
def serial_checkpoint(serial_run):
    """The checkpoint of iteration 3, for the fault and mismatch tests."""
    return serial_run[0]


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(corpus, serial_checkpoint, tmp_path):
    directory = str(tmp_path / "ckpt")
    shutil.copytree(serial_checkpoint, directory)
    log = open(tmp_path / "killed.log", "w+")
    # The write of iteration 6 pauses between its complete temporary and the rename.
    killed = subprocess.Popen(entry_point_command("pretrain_gpt.py", flags(
        corpus, "--load", directory, "--save", directory, "--save-interval", "3"),
        faults=["--pause-before-rename", "120"]), stdout=log,
        stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    try:
        deadline = time.time() + 240
        while not glob.glob(os.path.join(directory, "iter_0000006", "*", "*.tmp")):
            assert killed.poll() is None and time.time() < deadline, open(tmp_path / "killed.log").read()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    log.seek(0)
    before_kill = logged_iterations(log.read())
    assert sorted(before_kill) == [4, 5, 6]
    assert tracker(directory) == "3"
    assert not glob.glob(os.path.join(directory, "iter_0000006", "*", "model_optim_rng.pt"))
    resumed = ok(run_entry_point("pretrain_gpt.py", flags(corpus, "--load", directory)))
    assert logged_iterations(resumed.stdout) == before_kill


def _one_error_line(done):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), done.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("kind", ["permission_denied", "file_size_limit"])
def test_unwritable_or_full_save_is_one_sentence_and_keeps_the_previous_checkpoint(corpus, serial_checkpoint,
                                                                                    tmp_path, kind):
    try:
        with output_fault(kind, str(tmp_path)) as fault:
            directory = os.path.join(fault.directory, "ckpt")
            shutil.copytree(serial_checkpoint, directory)
            os.chmod(directory, 0o555 if kind == "permission_denied" else 0o755)
            done = run_entry_point("pretrain_gpt.py", flags(corpus, "--load", directory, "--save", directory,
                                                            "--save-interval", "3"), preexec_fn=fault.preexec_fn)
            os.chmod(directory, 0o755)
    except FaultUnavailable as e:
        pytest.skip(str(e))
    line = _one_error_line(done)
    assert "iteration 6" in line and fault.reason in line and "still names 3" in line, line
    assert tracker(directory) == "3"
    assert not glob.glob(os.path.join(directory, "**", "*.tmp"), recursive=True)
    ok(run_forked("pretrain_gpt.py", flags(corpus, "--load", directory, "--exit-interval", "4")))


def test_a_pickle_payload_is_refused_with_one_sentence_and_never_runs(corpus, serial_checkpoint, tmp_path):
    directory = str(tmp_path / "ckpt")
    shutil.copytree(serial_checkpoint, directory)
    marker = tmp_path / "payload_ran"
    target = os.path.join(directory, "iter_0000003", "mp_rank_00", "model_optim_rng.pt")
    torch.save({"model": _Payload(str(marker))}, target)
    # (A manifest is no defense against tampering, which can rewrite it too; weights_only loading is.)
    os.remove(os.path.join(directory, "iter_0000003", MANIFEST))
    line = _one_error_line(run_entry_point("pretrain_gpt.py", flags(corpus, "--load", directory)))
    assert target in line and "pickle payload" in line, line
    assert not marker.exists()


def test_a_flipped_byte_stops_the_load_with_one_sentence_naming_the_file(corpus, serial_checkpoint, tmp_path):
    """Forked, not a fresh process: the subject is the load's check, not a process start (1 s instead of 10)."""
    directory = str(tmp_path / "ckpt")
    shutil.copytree(serial_checkpoint, directory)
    target = os.path.join(directory, "iter_0000003", "mp_rank_00", "model_optim_rng.pt")
    flip_a_byte(target)
    torch.load(target, weights_only=True)          # still loads: only the manifest's checksums see it
    line = _one_error_line(run_forked("pretrain_gpt.py", flags(corpus, "--load", directory)))
    assert line.startswith(f"error: {target} fails its checksum (bytes 0 to "), line
    assert (f"the checkpoint of iteration 3 in {directory} was damaged after it was saved; restore the file from a "
            f"copy (or, if it was changed on purpose, delete {directory}/iter_0000003/checkpoint_manifest.json), or "
            f"load an earlier checkpoint: write its iteration into {directory}/latest_checkpointed_iteration.txt, or "
            f"give --keep-last 2 or more to load the newest intact one.") in line, line
    # --no-verify-checkpoint checks the sizes only (a huge checkpoint): this one then loads.
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, "--load", directory, "--no-verify-checkpoint",
                                                  "--exit-interval", "3")))     # the saved schedule, no steps
    assert f"successfully loaded checkpoint from {directory}" in done.stdout


def test_a_truncated_or_missing_rank_file_stops_the_tools_loading_code_with_one_sentence(serial_checkpoint, tmp_path):
    """tools/change_mp.py, convert_checkpoint.py and generate_text.py open checkpoints through open_source."""
    from megatron_core.checkpoint.saved_model import open_saved_model
    from megatron_core.errors import CheckpointError
    directory = str(tmp_path / "ckpt")
    shutil.copytree(serial_checkpoint, directory)
    target = os.path.join(directory, "iter_0000003", "mp_rank_00", "model_optim_rng.pt")
    size = os.path.getsize(target)
    os.truncate(target, size - 1000)
    with pytest.raises(CheckpointError, match=f"^{re.escape(target)} has {size - 1000:,} bytes, not the {size:,} "
                                              f"its save wrote: the checkpoint in .*iter_0000003 was damaged after it "
                                              f"was saved"):
        open_saved_model(directory)
    os.remove(target)
    with pytest.raises(CheckpointError, match=f"^{re.escape(target)} is missing: "):
        open_saved_model(directory)


def test_keep_last_2_skips_a_damaged_newest_checkpoint_and_resumes_from_the_older_one(corpus, fp16_runs, tmp_path):
    """The uninterrupted fp16 run's checkpoints of iterations 3 and 6 (DeepSpeed layout) side by
    side, `latest` naming 6, whose model file is damaged: the run loads 3 and logs what the
    uninterrupted run logged for 4-6."""
    directory = str(tmp_path / "ckpt")
    shutil.copytree(fp16_runs.full_dir, directory)
    shutil.copytree(os.path.join(fp16_runs.break_dir, "global_step3"), os.path.join(directory, "global_step3"))
    target = os.path.join(directory, "global_step6", "mp_rank_00_model_states.pt")
    flip_a_byte(target)
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, *FP16, "--ckpt-format", "deepspeed", "--load", directory,
                                                  "--keep-last", "2")))
    warnings = [line for line in done.stdout.splitlines() if "damaged" in line]
    assert warnings == [f"WARNING: skipped the damaged checkpoint in {directory} (iteration 6: {target} fails its "
                        f"checksum (bytes 0 to {os.path.getsize(target):,} differ from what its save wrote)); loading "
                        f"iteration 3, the newest intact one (--keep-last 2)."], done.stdout[-3000:]
    reference = logged_iterations(fp16_runs.full.stdout)
    assert logged_iterations(done.stdout) == {i: line for i, line in reference.items() if i > 3}
    assert tracker(directory, "latest") == "global_step6"        # left as it was


class _Payload:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_another_model_shape_is_one_sentence_and_another_parallel_size_reshards_on_load(corpus, serial_checkpoint):
    line = _one_error_line(run_entry_point("pretrain_gpt.py", flags(corpus, "--load", serial_checkpoint,
                                                                    "--hidden-size", "64")))
    assert "--hidden-size 32 in the checkpoint vs 64 here" in line, line
    # Another TP size used to be refused (naming tools/change_mp.py); now it is resharded on load
    # (tests/test_reshard_resume.py checks the losses that follow).
    done = ok(run_ranks("pretrain_gpt.py", flags(corpus, "--load", serial_checkpoint,
                                                 "--tensor-model-parallel-size", "2"), 2))
    assert [line.strip() for line in done.stdout.splitlines() if "resharded" in line] == [
        "resharded checkpoint iteration 3 from TP=1 PP=1 DP=1 to TP=2 PP=1 DP=1 on load"], done.stdout[-3000:]


def test_both_layouts_record_the_family_and_another_familys_entry_point_refuses_it_in_one_sentence(
        corpus, serial_checkpoint, fp16_runs):
    from megatron_core.checkpoint.saved_model import open_saved_model
    for directory in (serial_checkpoint, fp16_runs.break_dir):      # Megatron layout, DeepSpeed layout
        saved = open_saved_model(directory)
        assert saved.record["model_family"] == "gpt", directory
        assert saved.model_options == {"max_sequence_length": saved.args["max_position_embeddings"]}
    line = _one_error_line(run_entry_point("pretrain_bert.py", flags(corpus, "--load", serial_checkpoint)))
    assert "holds a gpt model and this run trains a bert model; load it with the entry point of its family" in line


def test_weights_that_do_not_fit_the_model_name_the_missing_unexpected_and_reshaped_keys(corpus, serial_checkpoint,
                                                                                        tmp_path):
    # Flags and stored config agree, the weights do not (a file edited or written by another tool).
    directory = str(tmp_path / "ckpt")
    shutil.copytree(serial_checkpoint, directory)
    target = os.path.join(directory, "iter_0000003", "mp_rank_00", "model_optim_rng.pt")
    saved = torch.load(target, weights_only=True)
    weights = saved["model"]
    del weights["decoder.final_layernorm.bias"]
    weights["decoder.layers.4.mlp.dense_h_to_4h.weight"] = torch.zeros(128, 32)
    weights["embedding.position_embeddings.weight"] = torch.zeros(33, 32)
    torch.save(saved, target)
    os.remove(os.path.join(directory, "iter_0000003", MANIFEST))      # changed on purpose, as the sentence says
    line = _one_error_line(run_entry_point("pretrain_gpt.py", flags(corpus, "--load", directory)))
    assert line == (f"error: {target}: model does not fit this model: 1 missing key (decoder.final_layernorm.bias), "
                    f"1 unexpected (decoder.layers.4.mlp.dense_h_to_4h.weight), 1 of another shape "
                    f"(embedding.position_embeddings.weight: saved [33, 32], model [32, 32]); use the model flags "
                    f"it was saved with."), line


def test_load_of_an_empty_directory_starts_from_scratch_unless_exit_on_missing_checkpoint(corpus, tmp_path):
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, "--load", str(tmp_path), "--exit-interval", "1")))
    assert "no checkpoint found" in done.stdout and sorted(logged_iterations(done.stdout)) == [1]
    line = _one_error_line(run_entry_point("pretrain_gpt.py", flags(corpus, "--load", str(tmp_path),
                                                                    "--exit-on-missing-checkpoint")))
    assert str(tmp_path) in line and "--exit-on-missing-checkpoint" in line


def test_keep_last_leaves_the_newest_checkpoints(corpus, tmp_path):
    directory = str(tmp_path / "ckpt")
    ok(run_forked("pretrain_gpt.py", flags(corpus, "--save", directory, "--save-interval", "1", "--keep-last",
                                           "2", "--train-iters", "4", "--eval-interval", "100")))
    assert sorted(os.listdir(directory)) == ["iter_0000003", "iter_0000004", "latest_checkpointed_iteration.txt"]
    assert tracker(directory) == "4"


def test_sigterm_with_exit_signal_handler_saves_and_exits_cleanly(corpus, tmp_path):
    directory, log_path = str(tmp_path / "ckpt"), tmp_path / "run.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(entry_point_command("pretrain_gpt.py", flags(
            corpus, "--save", directory, "--save-interval", "1000", "--train-iters", "1000", "--eval-interval", "1000",
            "--exit-signal-handler")), stdout=log, stderr=subprocess.STDOUT, env=clean_env())
        try:
            deadline = time.time() + 240
            while "iteration        2/" not in log_path.read_text():
                assert process.poll() is None and time.time() < deadline, log_path.read_text()[-3000:]
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=120) == 0, log_path.read_text()[-3000:]
        finally:
            if process.poll() is None:
                process.kill()
    text = log_path.read_text()
    stopped = max(logged_iterations(text))
    assert f"exiting program at iteration {stopped} (SIGTERM received" in text and stopped < 1000
    assert tracker(directory) == str(stopped)


def test_use_checkpoint_args_takes_the_model_shape_and_lists_the_differences(corpus, serial_checkpoint):
    shape = {"--hidden-size": "32", "--num-attention-heads": "4", "--num-layers": "4"}
    argv = flags(corpus, "--load", serial_checkpoint, "--use-checkpoint-args", "--lr", "1e-3",
                 "--override-opt_param-scheduler")
    argv = [a for i, a in enumerate(argv) if a not in shape and (i == 0 or argv[i - 1] not in shape)]
    assert "--hidden-size" not in argv
    done = ok(run_forked("pretrain_gpt.py", argv))
    assert sorted(logged_iterations(done.stdout)) == [4, 5, 6]
    assert "  lr: 0.003 in the checkpoint, 0.001 in this run" in done.stdout
    assert "hidden_size" not in done.stdout


def test_exit_duration_in_mins_stops_every_rank_after_the_same_iteration_and_saves(corpus, tmp_path):
    """A budget no iteration fits in: every rank is over it after iteration 1, and the
    all-reduce (MAX) makes both stop there together (no rank is left in a collective)."""
    directory = str(tmp_path / "ckpt")
    done = ok(run_ranks("pretrain_gpt.py", flags(corpus, "--tensor-model-parallel-size", "2", "--save",
                                                 directory, "--save-interval", "100",
                                                 "--exit-duration-in-mins", "1e-6"), 2))
    assert sorted(logged_iterations(done.stdout)) == [1]
    assert "exiting program at iteration 1 (--exit-duration-in-mins 1e-06 reached)" in done.stdout
    assert tracker(directory) == "1"
    assert sorted(os.listdir(os.path.join(directory, "iter_0000001"))) == ["checkpoint_manifest.json", "mp_rank_00",
                                                                           "mp_rank_01"]


def test_a_release_checkpoint_loads_its_weights_and_starts_at_iteration_0(corpus, serial_run, tmp_path):
    """Megatron-LM's converted checkpoints: the tracker says "release", the files sit in release/.
    The reference is the first iteration of the run from scratch that saved the checkpoint."""
    directory = str(tmp_path / "ckpt")
    shutil.copytree(serial_run[0], directory)
    os.rename(os.path.join(directory, "iter_0000003"), os.path.join(directory, "release"))
    with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write("release")
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, "--load", directory, "--exit-interval", "1")))
    assert "successfully loaded checkpoint from " + directory in done.stdout and "at iteration 0" in done.stdout
    lines = logged_iterations(done.stdout)
    assert sorted(lines) == [1] and "consumed samples:            8" in lines[1]
    first = logged_iterations(serial_run[1])[1]
    lr = first.split("learning rate: ")[1].split(" |")[0]
    assert f"learning rate: {lr} |" in lines[1]      # a fresh schedule, as from scratch
    loss = float(lines[1].split("lm loss: ")[1].split(" |")[0])
    assert loss < float(first.split("lm loss: ")[1].split(" |")[0])     # but the trained weights


# --- the learning-rate schedule on resume ---------------------------------------------------------

def megatron_lr(samples, max_lr=3e-3, min_lr=0.0, warmup=16, decay=48):
    """Megatron-LM's documented cosine schedule (OptimizerParamScheduler.get_lr), written out here:
    linear warmup from 0 over `warmup` samples, cosine from max_lr to min_lr until `decay`, then
    min_lr. The defaults are flags()'s: warmup 2 and decay 6 iterations of 8 samples."""
    if warmup > 0 and samples <= warmup:
        return max_lr * samples / warmup
    if samples > decay:
        return min_lr
    ratio = (samples - warmup) / (decay - warmup)
    return min_lr + (max_lr - min_lr) * 0.5 * (math.cos(math.pi * ratio) + 1)


def assert_logged_rates(done, iterations, **schedule):
    """Iteration i logs the rate for the update after i - 1 global batches of 8 samples."""
    rates = logged_values(done.stdout, "learning rate")
    assert sorted(rates) == list(iterations), done.stdout[-3000:]
    for i in iterations:
        assert rates[i] == pytest.approx(megatron_lr((i - 1) * 8, **schedule), rel=2e-6, abs=1e-12), (i, rates)


def test_resuming_a_finished_run_with_a_longer_train_iters_stops_naming_the_flag_and_both_decays(corpus, fp16_runs):
    """The uninterrupted run's checkpoint of its last iteration (6 of 6): --train-iters 10 would
    stretch its cosine over 10 iterations and raise the learning rate again."""
    directory = fp16_runs.full_dir
    line = _one_error_line(run_forked("pretrain_gpt.py", flags(corpus, *FP16, "--ckpt-format", "deepspeed",
                                                               "--train-iters", "10", "--load", directory)))
    assert line == (f"error: --train-iters 10 sets the learning-rate decay to 10 iterations (80 samples), but the "
                    f"checkpoint in {directory} has 6 iterations (48 samples); resume with the flags it was saved "
                    f"with, add --override-opt_param-scheduler to take the new schedule, or "
                    f"--use-checkpoint-opt_param-scheduler to keep the checkpoint's."), line


def test_override_opt_param_scheduler_follows_the_new_flags_schedule(corpus, serial_checkpoint):
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, "--train-iters", "10", "--load", serial_checkpoint,
                                                  "--override-opt_param-scheduler", "--eval-iters", "0")))
    assert_logged_rates(done, range(4, 11), decay=80)
    notes = [line for line in done.stdout.splitlines() if "--override-opt_param-scheduler:" in line]
    assert notes == [f"--override-opt_param-scheduler: the learning-rate schedule follows the flags, not the "
                     f"checkpoint in {serial_checkpoint}: the learning-rate decay 10 iterations (80 samples) instead "
                     f"of 6 iterations (48 samples)."], notes


def test_use_checkpoint_opt_param_scheduler_keeps_the_checkpoints_schedule(corpus, serial_checkpoint):
    """--train-iters 10 and another --min-lr: the checkpoint's decay still ends at iteration 6 at
    its minimum, 0; the run stops at the flags' length (here --exit-interval 7)."""
    done = ok(run_forked("pretrain_gpt.py", flags(corpus, "--train-iters", "10", "--min-lr", "1e-4", "--load",
                                                  serial_checkpoint, "--use-checkpoint-opt_param-scheduler",
                                                  "--exit-interval", "7", "--eval-iters", "0")))
    assert_logged_rates(done, range(4, 8))
    notes = [line for line in done.stdout.splitlines() if "--use-checkpoint-opt_param-scheduler:" in line]
    assert notes == [f"--use-checkpoint-opt_param-scheduler: the learning-rate schedule follows the checkpoint in "
                     f"{serial_checkpoint}, not the flags: the minimum learning rate 0.0 instead of 0.0001; the "
                     f"learning-rate decay 6 iterations (48 samples) instead of 10 iterations (80 samples)."], notes
