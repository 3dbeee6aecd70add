"""pretrain_gpt.py --deepspeed --save/--load: DeepSpeed's engine writes its own layout with our state inside.

ZeRO-1 and ZeRO-2 (bf16) at DP=2 train a tiny GPT (dropout on, so the RNG streams matter) for 4
iterations without a break, saving at 2 and 4, and again from its iteration-2 checkpoint
(tests.harness.resume_check). ZeRO-3 at DP=2 and ZeRO-1 at TP=2 resume the session's
shared runs (testing/engine_runs.py: 5 iterations, saved at 2 and 5, no dropout, constant lr,
whose losses test_deepspeed_backend checks against the plain loop): one launch each. Dropout with
Megatron's (cosine) schedule through an engine checkpoint is test_deepspeed_checkpoint_tools'
bf16 PP=2 resume. The resumed run must log the same strings (loss,
learning rate, grad norm, consumed samples, validations) and end with the same tensors in
every file. ZeRO-1 and ZeRO-2 let a DeepSpeed scheduler from ds.json set
the learning rate (WarmupCosineLR, WarmupDecayLR), whose logged rates must follow
DeepSpeed's documented formulas, computed here.
DeepSpeed's zero_to_fp32 must recover the weights the training model holds (ZeRO-1, fp32).
The ZeRO-2 layout runs in bf16 (the scheduler and the precision are separate claims one pair
of runs shows): it resumes bit-exactly, and change_mp carries its fp32 masters, which are
what zero_to_fp32 recovers. A DeepSpeed start costs more than the steps, so each pair of runs
is a module fixture read by every assertion on that layout, and the ranks start directly
(testing/engine_runs.run_engine_ranks), without a launcher process.

DeepSpeed compiles its CPU comm op at every engine start; the op cache is
tests.harness.deepspeed_op_cache. Skipped when deepspeed is not installed.
"""
import glob
import json
import math
import os
import shutil

import pytest
import torch

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")

from megatron_core.checkpoint.manifest import MANIFEST, read_manifest  # noqa: E402
from tests.harness.deepspeed_op_cache import deepspeed_test_env  # noqa: E402,F401 (conftest starts the op build)
from tests.harness.engine_runs import assert_bf16_masters_carried, load_engine_file as load, run_engine_ranks  # noqa: E402
from tests.harness.entry_points import TINY_GPT_STEPS, failure_report, logged_values  # noqa: E402
from tests.harness.resume_check import COUNTERS, check_exact_resume, check_resume_of  # noqa: E402
from tests.harness.tiny_corpus import BERT_VOCAB  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

ITERS = 4
LR = 3e-3
WARMUP_COSINE = {"type": "WarmupCosineLR", "params": {"warmup_num_steps": 2, "warmup_min_ratio": 0.1,
                                                      "warmup_type": "linear", "cos_min_ratio": 0.01}}
WARMUP_DECAY = {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 3, "warmup_min_lr": 1e-4}}


@pytest.fixture(scope="module")
def corpus(gpt_corpus):
    """The session's tiny news corpus (tests/conftest.py): its data prefix."""
    return os.path.join(gpt_corpus, "zh_text_document")


def flags(corpus, *extra):
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(ITERS), "--lr", str(LR),
            "--weight-decay", "0.1", "--clip-grad", "1.0", "--log-interval", "1", "--eval-interval", "2",
            "--eval-iters", "1", "--split", "90,10,0", "--data-path", corpus,
            "--data-cache-path", os.path.join(os.path.dirname(corpus), "cache"), "--tokenizer-type",
            "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB, "--num-workers", "0", *extra]


def run(corpus, config_path, *extra, nproc=2):
    done = run_engine_ranks(flags(corpus, *extra), config_path, nproc=nproc)
    assert done.returncode == 0, failure_report(done)
    return done



def files_of(directory):
    return sorted(os.path.relpath(p, directory) for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
                  if os.path.isfile(p))


def resume(corpus, tmp, config, extra=(), nproc=2):
    """The uninterrupted run and the one resumed from its iteration-2 checkpoint; checks their logs
    and final files agree (DeepSpeed's scheduler state too)."""
    config_path = os.path.join(tmp, "ds.json")
    with open(config_path, "w") as f:
        json.dump(config, f)
    return check_exact_resume(lambda run_flags: run(corpus, config_path, *extra, *run_flags, nproc=nproc),
                              [], tmp, iters=ITERS, break_at=2, load=load, compared_keys=COUNTERS + ("lr_scheduler",))


def assert_deepspeed_layout(directory, model_files, optimizer_files, tp=1, dp=2, num_layers=2, valid_samples=8,
                            zero3=False):
    """DeepSpeed's names, `latest` naming the tag, our state riding in the model-states files, and
    our manifest listing every file the engine wrote (ZeRO 1-2's optimizer files as optimizer state alone)."""
    with open(os.path.join(directory, "latest")) as f:
        assert f.read().strip() == "global_step2"
    assert files_of(os.path.join(directory, "global_step2")) == sorted(model_files + optimizer_files + [MANIFEST])
    listed = read_manifest(os.path.join(directory, "global_step2"))["files"]
    assert {name: entry.get("optimizer_only", False) for name, entry in listed.items()} == {
        **{name: False for name in model_files}, **{name: not zero3 for name in optimizer_files}}
    for name in model_files:
        state = load(os.path.join(directory, "global_step2", name))
        assert state["iteration"] == 2 and state["global_steps"] == 2
        assert state["consumed_train_samples"] == 16 and state["consumed_valid_samples"] == valid_samples
        assert len(state["rng_state"]) == dp and {"torch_rng_state", "rng_tracker_states"} <= set(state["rng_state"][0])
        assert state["args"]["deepspeed"] is True and state["args"]["tensor_model_parallel_size"] == tp
        assert state["model_config"]["num_layers"] == num_layers and state["model_config"]["hidden_size"] == 32
        assert state["parallel"]["tensor_model_parallel_size"] == tp and state["parallel"]["data_parallel_size"] == dp
        assert state["mp_world_size"] == tp and state["dp_world_size"] == dp
        assert state["padded_vocab_size"] % tp == 0 and state["vocab_size"] <= state["padded_vocab_size"]
        assert set(state["sharding_map"]) == {"model"} and state["format_version"] >= 1
        assert state["lr_scheduler"]["num_steps"] == 16        # Megatron's schedule state counts samples
        assert set(state["module"]) == set(state["sharding_map"]["model"]["tensors"])


def zero_file(dp_rank, mp_rank=0, bf16=False):
    """DeepSpeed's optimizer-partition file name (its bf16 optimizer's files carry a bf16_ prefix)."""
    return f"{'bf16_' if bf16 else ''}zero_pp_rank_{dp_rank}_mp_rank_{mp_rank:02d}_optim_states.pt"


def deepspeed_lr(scheduler, update):
    """The rate DeepSpeed's scheduler gives update `update` (1-based): the engine steps it once after
    each update, from last_batch_iteration -1 (deepspeed.ai/docs, runtime/lr_schedules: log or linear
    warmup over max(2, warmup_num_steps) steps, then WarmupDecayLR decays linearly to total_num_steps,
    WarmupCosineLR follows a cosine from 1 to cos_min_ratio of the optimizer's lr)."""
    p, k = scheduler["params"], update - 2
    warmup = max(2, p["warmup_num_steps"])
    if p.get("warmup_type", "log") == "log":
        rise = math.log(k + 1) / math.log(warmup) if k >= 0 else 0.0
    else:
        rise = k / warmup
    if scheduler["type"] == "WarmupDecayLR":
        low, high = p.get("warmup_min_lr", 0.0), LR
        if k < 0:
            return low
        gamma = rise if k < warmup else max(0.0, (ITERS - k) / max(1.0, ITERS - warmup))
        return low + (high - low) * gamma
    if k < 0:
        return 0.0
    if k < warmup:
        return LR * (p["warmup_min_ratio"] + (1 - p["warmup_min_ratio"]) * rise)
    progress = min(1.0, (k - warmup + 1) / max(1, ITERS - warmup))
    return LR * max(0.0, p["cos_min_ratio"] + (1 - p["cos_min_ratio"]) * (1 + math.cos(math.pi * progress)) / 2)


def assert_logged_rates_follow(scheduler, stdout):
    logged = logged_values(stdout, "learning rate")
    assert sorted(logged) == list(range(1, ITERS + 1))
    expected = [deepspeed_lr(scheduler, update) for update in range(1, ITERS + 1)]
    assert len(set(expected)) >= 3                 # the schedule moves over these steps
    for update, want in enumerate(expected, 1):
        assert logged[update] == pytest.approx(want, rel=1e-6, abs=1e-12), (update, logged, expected)


BF16 = {"bf16": {"enabled": True}}


@pytest.fixture(scope="module")
def zero1_runs(corpus, tmp_path_factory):
    config = {"zero_optimization": {"stage": 1}, "scheduler": WARMUP_COSINE}
    return resume(corpus, str(tmp_path_factory.mktemp("zero1")), config)


@pytest.fixture(scope="module")
def zero2_runs(corpus, tmp_path_factory):
    config = {"zero_optimization": {"stage": 2}, "scheduler": WARMUP_DECAY, **BF16}
    return resume(corpus, str(tmp_path_factory.mktemp("zero2")), config, ["--bf16"])


def test_zero1_at_dp2_resumes_exactly_under_a_deepspeed_warmup_cosine_scheduler(zero1_runs):
    assert_deepspeed_layout(zero1_runs.break_dir, ["mp_rank_00_model_states.pt"], [zero_file(0), zero_file(1)])
    assert_logged_rates_follow(WARMUP_COSINE, zero1_runs.full.stdout)


def test_zero2_bf16_at_dp2_resumes_exactly_under_a_deepspeed_warmup_decay_scheduler(zero2_runs):
    assert_deepspeed_layout(zero2_runs.break_dir, ["mp_rank_00_model_states.pt"],
                            [zero_file(0, bf16=True), zero_file(1, bf16=True)])
    assert_logged_rates_follow(WARMUP_DECAY, zero2_runs.full.stdout)
    state = load(os.path.join(zero2_runs.break_dir, "global_step2", "mp_rank_00_model_states.pt"))
    assert state["lr_scheduler"]["last_batch_iteration"] == 1    # DeepSpeed's scheduler state rides along


def resume_shared_run(engine_runs, name, tmp):
    """The session's engine run `name` (testing/engine_runs.py: tiny_gpt_flags, no dropout, constant
    lr; test_deepspeed_backend checks its losses against the plain loop) as the uninterrupted run,
    and one run resumed from its iteration-2 checkpoint, checked as resume() checks."""
    shared = engine_runs.get(name)
    assert shared.done.returncode == 0, failure_report(shared.done)
    return check_resume_of(shared.done, shared.full, shared.halfway,
                           lambda run_flags: run_engine_ranks([*shared.flags, *run_flags], shared.config_path),
                           [], tmp, iters=TINY_GPT_STEPS, break_at=2, load=load,
                           compared_keys=COUNTERS + ("lr_scheduler",))


SHARED_LAYOUT = {"num_layers": 4, "valid_samples": 0}     # tiny_gpt_flags: 4 layers, validation at the end


def test_zero3_at_dp2_resumes_exactly(engine_runs, tmp_path):
    runs = resume_shared_run(engine_runs, "zero3-dp2", str(tmp_path))
    # ZeRO-3 partitions the weights too: each data-parallel rank writes its model-states file.
    assert_deepspeed_layout(runs.break_dir, ["zero_pp_rank_0_mp_rank_00_model_states.pt",
                                               "zero_pp_rank_1_mp_rank_00_model_states.pt"],
                            [zero_file(0), zero_file(1)], zero3=True, **SHARED_LAYOUT)


def test_zero1_at_tp2_resumes_exactly(engine_runs, tmp_path):
    runs = resume_shared_run(engine_runs, "zero1-tp2", str(tmp_path))
    assert_deepspeed_layout(runs.break_dir, ["mp_rank_00_model_states.pt", "mp_rank_01_model_states.pt"],
                            [zero_file(0, 0), zero_file(0, 1)], tp=2, dp=1, **SHARED_LAYOUT)


def test_change_mp_of_a_bf16_engine_checkpoint_carries_its_fp32_masters_which_zero_to_fp32_recovers(
        zero2_runs, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    output = str(tmp_path / "merged")
    run_tool_main("change_mp.py", zero2_runs.break_dir, "--target-tensor-parallel-size", "1", "--output", output)
    optimizer = assert_bf16_masters_carried(output)
    recovered = get_fp32_state_dict_from_zero_checkpoint(zero2_runs.break_dir, tag="global_step2")
    assert set(recovered) <= set(optimizer)
    for key, tensor in recovered.items():       # DeepSpeed's own recovery gives the same fp32 masters
        assert torch.equal(optimizer[key]["fp32_master"], tensor), key


def test_zero_to_fp32_recovers_the_weights_the_training_model_holds(zero1_runs):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    directory = zero1_runs.resumed_dir
    recovered = get_fp32_state_dict_from_zero_checkpoint(directory, tag=f"global_step{ITERS}")
    # The model's own state dict, saved by the engine from the live (fp32) module, against the
    # weights zero_to_fp32 reassembles from the optimizer's partitions on the two ranks.
    module = load(os.path.join(directory, f"global_step{ITERS}", "mp_rank_00_model_states.pt"))["module"]
    params = {k: v for k, v in module.items() if not k.endswith("_extra_state")}
    assert set(recovered) == set(params)
    for key, tensor in params.items():
        assert torch.equal(recovered[key], tensor), key


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_in_a_zero_optimizer_file_is_refused_and_never_runs(corpus, zero2_runs, tmp_path):
    # The engine alone reads the optim_states files: our checkpoint engine loads them weights_only.
    directory = str(tmp_path / "tampered")
    shutil.copytree(zero2_runs.break_dir, directory)
    marker = str(tmp_path / "payload_ran")
    for dp_rank in (0, 1):
        path = os.path.join(directory, "global_step2", zero_file(dp_rank, bf16=True))
        state = load(path)
        state["extra"] = _Payload(marker)
        torch.save(state, path)
    # (A manifest is no defense against tampering, which can rewrite it too; weights_only loading is.)
    os.remove(os.path.join(directory, "global_step2", MANIFEST))
    done = run_engine_ranks(flags(corpus, "--bf16", "--load", directory),
                            os.path.join(os.path.dirname(zero2_runs.break_dir), "ds.json"))
    assert done.returncode != 0
    assert "carries a pickle payload that safe loading refuses" in done.stderr, failure_report(done)
    assert not os.path.exists(marker)
