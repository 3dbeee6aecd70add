"""DeepSpeed-engine checkpoints (pretrain_gpt.py --deepspeed --save) as sources for our tools,
and the engine layouts test_deepspeed_checkpoint.py does not cover (PP=2, bf16).

What change_mp.py writes from an engine checkpoint is our native layout (DeepSpeed's file
names, optimizer per parameter): `--load` without --deepspeed resumes it at any TP / PP / DP.
The claims, each against an independent reference:

* change_mp of a ZeRO-1 (fp32, DP=2) engine checkpoint to TP=2, and the native backend loading
  the engine checkpoint itself at DP=2 with the distributed optimizer (resharding on load),
  resume to the losses of the uninterrupted engine run (which equals the native run, issue 11
  point 2) within 1e-5; a ZeRO-3 checkpoint (weights and optimizer only in DeepSpeed's
  partitions) and a ZeRO-0 one (the torch optimizer's positional state) likewise.
* The whole model read from an engine checkpoint (convert_checkpoint --to-hf's reader) equals
  DeepSpeed's own zero_to_fp32 recovery; --to-hf and generate_text run on it.
* ZeRO-1 bf16 at PP=2, with dropout and Megatron's cosine schedule, saves and resumes
  bit-exactly (the same log lines as the uninterrupted bf16 run); change_mp reads it (fp32 masters carried, PP=2 -> PP=1). ZeRO-2 bf16 at DP=2 is
  test_deepspeed_checkpoint's ZeRO-2 layout.
* A pickle payload in a ZeRO file is refused by change_mp and never runs; an engine run given
  change_mp's output refuses its (per-parameter) optimizer in one sentence.

Engine runs cost ~10 s of DeepSpeed start each: the ZeRO 0, 1 and 3 checkpoints are those of
the session's `engine_runs` (testing/engine_runs.py: tiny_gpt_flags at DP=2, saved at 2, whose
losses test_deepspeed_backend checks against the plain loop), and the engine runs and native
resumes fork their ranks (entry_points.run_forked_ranks), without a launcher process. Skipped when deepspeed is not installed.
"""
import os
import shutil

import pytest
import torch

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")

from tests.harness.deepspeed_op_cache import deepspeed_test_env  # noqa: E402,F401 (conftest starts the op build)
from tests.harness.engine_runs import (as_one_run, assert_bf16_masters_carried,  # noqa: E402
                                               load_engine_file as load, run_engine_ranks, write_deepspeed_config)
from tests.harness.entry_points import (TINY_GPT_STEPS, failure_report, logged_values,  # noqa: E402
                                                run_entry_point, run_forked_ranks, tiny_run_flags)
from tests.harness.tiny_corpus import BERT_VOCAB  # noqa: E402
from tests.harness.resume_check import COUNTERS, check_exact_resume  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402
from megatron_core.checkpoint.manifest import MANIFEST  # noqa: E402
from megatron_core.checkpoint.saved_model import read_full_model_state  # noqa: E402

ITERS = 4


@pytest.fixture(scope="module")
def corpus(gpt_corpus):
    """The session's tiny news corpus (tests/conftest.py)."""
    return gpt_corpus


def model_flags(corpus, *extra):
    return [*tiny_run_flags(os.path.join(corpus, "zh_text_document"), os.path.join(corpus, "cache"),
                            train_iters=ITERS, seq_length=32), *extra]


def engine_run(corpus, tmp, config, *extra, nproc=2):
    done = run_engine_ranks(model_flags(corpus, *extra), write_deepspeed_config(tmp, config), nproc=nproc)
    assert done.returncode == 0, failure_report(done)
    return done


def native_run(engine_runs, *extra, nproc=2):
    """pretrain_gpt.py on the shared runs' flags with the native backend, forked ranks (no launcher)."""
    done = as_one_run(run_forked_ranks("pretrain_gpt.py", [*engine_runs.flags(), *extra], nproc, timeout=600,
                                       grace=60))
    assert done.returncode == 0, failure_report(done)
    return done


def tool(script, *args):
    done = run_entry_point(os.path.join("tools", script), list(args), timeout=300)
    return done


def assert_losses_continue(reference, resumed, rel=1e-5):
    want, got = logged_values(reference.stdout, "lm loss"), logged_values(resumed.stdout, "lm loss")
    assert sorted(got) == list(range(3, TINY_GPT_STEPS + 1)), failure_report(resumed)
    for iteration in range(3, TINY_GPT_STEPS + 1):
        assert got[iteration] == pytest.approx(want[iteration], rel=rel), (iteration, got, want)


def zero_to_fp32(directory):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    return get_fp32_state_dict_from_zero_checkpoint(directory, tag="global_step2")



# --- ZeRO-1, fp32, DP=2: the tools, and the native backend loading it ----------------------------

def shared_run(engine_runs, name):
    """The session's engine run `name` (tiny_gpt_flags at DP=2): {"full": its run, "save": its
    iteration-2 checkpoint, "config": its ds.json}."""
    run = engine_runs.get(name)
    assert run.done.returncode == 0, failure_report(run.done)
    return {"full": run.done, "save": run.halfway, "config": run.config_path}


@pytest.fixture(scope="module")
def zero1(engine_runs):
    """The uninterrupted ZeRO-1 engine run, saving at 2, 4 and the end; its iteration-2 checkpoint is `save`."""
    return shared_run(engine_runs, "zero1-dp2")


def test_change_mp_of_a_zero1_engine_checkpoint_resumes_natively_at_tp2_with_the_engine_losses(
        engine_runs, zero1, tmp_path):
    output = str(tmp_path / "tp2")
    done = tool("change_mp.py", zero1["save"], "--target-tensor-parallel-size", "2", "--output", output)
    assert done.returncode == 0, failure_report(done)
    assert "with optimizer" in done.stdout
    resumed = native_run(engine_runs, "--tensor-model-parallel-size", "2", "--load", output)
    assert "successfully loaded checkpoint" in resumed.stdout
    assert_losses_continue(zero1["full"], resumed)


def test_native_load_of_a_zero1_engine_checkpoint_reshards_to_the_distributed_optimizer(engine_runs, zero1):
    resumed = native_run(engine_runs, "--use-distributed-optimizer", "--load", zero1["save"])
    assert "(from the DeepSpeed engine's files)" in resumed.stdout, failure_report(resumed)
    assert_losses_continue(zero1["full"], resumed)


def test_the_whole_model_read_from_an_engine_checkpoint_is_what_zero_to_fp32_recovers(zero1):
    state, info = read_full_model_state(zero1["save"])
    recovered = zero_to_fp32(zero1["save"])
    assert info["iteration"] == 2 and set(recovered) <= set(state)
    assert info["model_family"] == "gpt" and "max_sequence_length" in info["model_options"]   # the client state
    for key, tensor in recovered.items():
        assert torch.equal(state[key], tensor), key


def test_convert_to_hf_and_generate_text_read_an_engine_checkpoint(zero1, tmp_path):
    run_tool_main("convert_checkpoint.py", "--to-hf", "--load", zero1["save"], "--output", str(tmp_path / "hf"))
    from safetensors.torch import load_file
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    recovered = zero_to_fp32(zero1["save"])
    # GPT2LMHeadModel's token table is ours cut to the true vocabulary.
    vocab = exported["transformer.wte.weight"].shape[0]
    assert torch.equal(exported["transformer.wte.weight"], recovered["embedding.word_embeddings.weight"][:vocab])
    copy = str(tmp_path / "native_tp1")     # the same weights in our native files
    run_tool_main("change_mp.py", zero1["save"], "1", "--no-optim", "--output", copy)
    texts = []
    for directory in (zero1["save"], copy):
        done = tool("generate_text.py", "--load", directory, "--vocab-file", BERT_VOCAB, "--prompt", "清华大学",
                    "--greedy", "--out-seq-length", "6")
        assert done.returncode == 0, failure_report(done)
        texts.append(done.stdout.strip().splitlines()[-1])
    assert texts[0].startswith("清华大学") and len(set(texts)) == 1, texts


def test_a_pickle_payload_in_an_engine_zero_file_is_refused_by_change_mp(zero1, tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))
    directory = str(tmp_path / "tampered")
    shutil.copytree(zero1["save"], directory)
    path = os.path.join(directory, "global_step2", "zero_pp_rank_1_mp_rank_00_optim_states.pt")
    state = load(path)
    state["extra"] = Payload()
    torch.save(state, path)
    os.remove(os.path.join(directory, "global_step2", MANIFEST))    # (tampering can rewrite it too)
    done = tool("change_mp.py", directory, "--target-tensor-parallel-size", "2", "--output", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "carries a pickle payload that safe loading refuses" in done.stderr, failure_report(done)
    assert not os.path.exists(tmp_path / "ran")


# --- ZeRO-3 (weights and optimizer only in DeepSpeed's partitions) and ZeRO-0 (positional) --------

@pytest.mark.parametrize("stage", [0, 3])
def test_a_zero0_or_zero3_engine_checkpoint_resumes_natively_with_the_engine_losses(engine_runs, zero1, stage):
    save = shared_run(engine_runs, f"zero{stage}-dp2")["save"]
    state, _ = read_full_model_state(save)
    if stage == 3:
        for key, tensor in zero_to_fp32(save).items():
            assert torch.equal(state[key], tensor), key
    resumed = native_run(engine_runs, "--load", save)
    # ZeRO 0, 1 and 3 at DP=2 all train as the native run does (issue 11 point 2).
    assert_losses_continue(zero1["full"], resumed)


# --- bf16 ZeRO-1 at PP=2: exact engine resume, read by change_mp ---------------------------------

def engine_resume(corpus, tmp, config, *extra):
    """The uninterrupted engine run and the one resumed from its iteration-2 checkpoint, after
    checking the resumed one logs the same lines and ends with the same files (resume_check)."""
    runs = check_exact_resume(lambda flags: engine_run(corpus, tmp, config, *extra, *flags), [], tmp, iters=ITERS,
                              break_at=2, load=load, compared_keys=COUNTERS + ("lr_scheduler",))
    return runs.break_dir, runs.full


BF16 = {"bf16": {"enabled": True}}


# Dropout on and Megatron's cosine schedule: the RNG streams and the schedule's state ride in the
# engine checkpoint (the runs test_deepspeed_checkpoint resumes at ZeRO-3 and TP=2 have neither).
DROPOUT_AND_MEGATRON_SCHEDULE = ["--hidden-dropout", "0.1", "--attention-dropout", "0.1", "--lr-decay-style", "cosine",
                                 "--lr-warmup-iters", "1"]


def test_a_bf16_zero1_engine_checkpoint_at_pp2_resumes_bit_exactly_and_change_mp_carries_its_fp32_masters(
        corpus, tmp_path):
    save, full = engine_resume(corpus, str(tmp_path), {"zero_optimization": {"stage": 1}, **BF16}, "--bf16",
                               "--pipeline-model-parallel-size", "2", *DROPOUT_AND_MEGATRON_SCHEDULE)
    assert len(set(logged_values(full.stdout, "learning rate").values())) >= 3     # the schedule moves
    output = str(tmp_path / "pp1")
    run_tool_main("change_mp.py", save, "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "1",
                  "--output", output)
    assert_bf16_masters_carried(output)


def test_an_engine_run_refuses_the_optimizer_of_a_change_mp_output_in_one_sentence(engine_runs, zero1, tmp_path):
    output = str(tmp_path / "native")
    run_tool_main("change_mp.py", zero1["save"], "1", "--output", output)
    done = run_engine_ranks([*engine_runs.flags(), "--load", output], zero1["config"])
    assert done.returncode != 0, failure_report(done)        # each rank exits 2
    assert "was written by the native backend or tools/change_mp.py" in done.stderr, failure_report(done)
    assert "resume it without --deepspeed, or add --no-load-optim" in done.stderr
