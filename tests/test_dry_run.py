"""--dry-run and the launch scripts of scripts/.

Each script's dry run validates its flags and ds_config at its hostfile's world size and
prints a parameter count within a few percent of the size its seed published (the
independent reference, cited below); --dry-run starts no process group; a real run prints the
same block at start."""
import os

import pytest

from tests.harness.entry_points import failure_report, run_entry_point, run_forked, run_ranks, tiny_run_flags
from tests.harness.launch_scripts import dry_run_script, estimate_fields
from tests.harness.tiny_corpus import BERT_VOCAB, ROOT, write_gbk_vocab

# script -> (published parameters, tolerance, where the number is published)
PUBLISHED = {
    "pretrain_chinese_transformer_xl_2.9b.sh": (2.9e9, 0.03, "THUDM/Chinese-Transformer-XL README: 29亿"),
    "pretrain_erlangshen_megatron_bert_1.3b.sh": (1.3e9, 0.04, "IDEA-CCNL/Erlangshen-MegatronBert-1.3B: 1.3B"),
    "pretrain_zhouwenwang_roformer_1.3b.sh": (1.3e9, 0.05, "IDEA-CCNL/Zhouwenwang-Unified-1.3B: 13亿"),
    "pretrain_wenzhong_gpt2_3.5b.sh": (3.59e9, 0.02, "IDEA-CCNL/Wenzhong-GPT2-3.5B: fp16 weights of 7.18 GB"),
    "pretrain_randeng_megatron_t5_770m.sh": (0.73e9, 0.02, "IDEA-CCNL/Randeng-MegatronT5-770M: fp16 weights of "
                                                           "1.46 GB"),
    "pretrain_llama_7b.sh": (6.7e9, 0.01, "LLaMA (Touvron et al. 2023), Table 2: 6.7B"),
}
# Each script's default hostfile and the world size its slots add up to.
HOSTFILE = {"pretrain_chinese_transformer_xl_2.9b.sh": ("hostfiles/8x8", 64),
            "pretrain_randeng_megatron_t5_770m.sh": ("hostfiles/2x8", 16)}
DEFAULT_HOSTFILE = ("hostfiles/4x8", 32)


def _assert_published_estimate(script, done):
    fields = estimate_fields(done.stdout)
    published, tolerance, source = PUBLISHED[script]
    assert abs(fields["model parameters"] / published - 1) <= tolerance, (fields, source)
    assert fields["world"] == HOSTFILE.get(script, DEFAULT_HOSTFILE)[1]
    total, per_rank = fields["model parameters"], fields["parameters per rank"]
    if fields["tp"] == fields["pp"] == 1:
        assert per_rank == total
    else:   # norms and row-parallel biases stay whole on every rank
        assert total / (fields["tp"] * fields["pp"]) < per_rank < total
    for part in ("weights", "gradients", "optimizer", "activations", "total"):
        assert f"\n  {part} " in done.stdout
    assert "no weights built" in done.stdout


def test_script_dry_run_by_the_environment_exits_0_with_the_published_parameter_count():
    """DRY_RUN=1 (the scripts' own switch; the --dry-run flag below takes the launcher's path) for one
    script: the parameter count of every script is checked below, on the --dry-run path."""
    script = "pretrain_llama_7b.sh"
    done = dry_run_script(script)
    assert done.returncode == 0, failure_report(done)
    _assert_published_estimate(script, done)


def fake_deepspeed(directory):
    """The environment of a launch whose `deepspeed` stands in for DeepSpeed's launcher: it prints
    what it was given."""
    fake = directory / "deepspeed"
    fake.write_text('#!/bin/sh\necho "deepspeed $*"\n')
    fake.chmod(0o755)
    return {"DRY_RUN": "0", "PATH": f"{directory}:{os.environ['PATH']}"}


@pytest.mark.parametrize("script", sorted(PUBLISHED))
def test_script_launches_its_entry_point_with_deepspeed_and_its_hostfile(script, tmp_path):
    pytest.importorskip("deepspeed", reason="a launch reads its arguments with DeepSpeed's parser")
    done = dry_run_script(script, ["--train-iters", "10"], env=fake_deepspeed(tmp_path))
    assert done.returncode == 0, failure_report(done)
    # megatron_core.launch checked the hostfile first (on a CPU-only box, DeepSpeed's import logs a line)
    command = next(line for line in done.stdout.splitlines() if line.startswith("deepspeed ")).split()
    assert command[:3] == ["deepspeed", "--hostfile", HOSTFILE.get(script, DEFAULT_HOSTFILE)[0]]
    assert command[3].startswith("pretrain_") and command[3].endswith(".py")
    config = command[command.index("--deepspeed_config") + 1]
    assert os.path.isfile(os.path.join(ROOT, config)) and "--deepspeed" in command
    assert command[-2:] == ["--train-iters", "10"]      # the script's own arguments come last


@pytest.mark.parametrize("script", sorted(PUBLISHED))
def test_script_given_dry_run_does_the_dry_run_at_its_hostfiles_world_and_launches_nothing(script, tmp_path):
    done = dry_run_script(script, ["--dry-run"], env=fake_deepspeed(tmp_path))
    assert done.returncode == 0, failure_report(done)
    assert "deepspeed --hostfile" not in done.stdout and "dry run: flags validated" in done.stdout
    _assert_published_estimate(script, done)       # the published size, at the hostfile's world


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]])
def test_script_checks_its_hostfile_through_megatron_core_launch_before_launching(dry_run, tmp_path):
    if not dry_run:
        pytest.importorskip("deepspeed", reason="a launch reads its arguments with DeepSpeed's parser")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("worker-1 slots=8\nworker-2 8\n")
    done = dry_run_script("pretrain_llama_7b.sh", dry_run, env={**fake_deepspeed(tmp_path), "HOSTFILE": str(hostfile)})
    assert done.returncode == 2, failure_report(done)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {hostfile} line 2 is 'worker-2 8', not `<host> slots=<N>`; write one host per line "
                      f"as `worker-1 slots=8`."], done.stderr
    assert "deepspeed --hostfile" not in done.stdout and "Traceback" not in done.stderr


def test_script_dry_run_names_a_missing_hostfile():
    done = dry_run_script("pretrain_llama_7b.sh", env={"HOSTFILE": "hostfiles/no-such-file"})
    assert done.returncode == 2
    assert "hostfile hostfiles/no-such-file is missing or empty" in done.stderr


def test_script_dry_run_checks_the_ds_config_against_the_flags():
    # ds_config_chinese_transformer_xl_2.9b.json says lr 0.0001
    done = dry_run_script("pretrain_chinese_transformer_xl_2.9b.sh", ["--lr", "2e-4"])
    assert done.returncode == 2, failure_report(done)
    assert "optimizer.params.lr 0.0001 but --lr gives 0.0002" in done.stderr
    assert "Traceback" not in done.stderr


def _tiny_gpt_dry_run_flags(tmp_path, *extra):
    return [*tiny_run_flags(str(tmp_path / "absent_text_document"), str(tmp_path / "cache")),
            "--tensor-model-parallel-size", "2", *extra, "--dry-run"]


def test_dry_run_takes_the_world_from_the_launcher_and_starts_no_process_group(tmp_path):
    # WORLD_SIZE alone (no RANK, MASTER_ADDR): initializing a process group would be a LaunchError.
    done = run_entry_point("pretrain_gpt.py", _tiny_gpt_dry_run_flags(tmp_path), env={"WORLD_SIZE": "8"}, timeout=120)
    assert done.returncode == 0, failure_report(done)
    fields = estimate_fields(done.stdout)
    assert (fields["world"], fields["tp"], fields["dp"]) == (8, 2, 4)
    assert not os.path.exists(tmp_path / "cache")      # no dataset was touched either


def test_dry_run_without_the_vocabulary_file_asks_for_vocab_size(tmp_path):
    flags = _tiny_gpt_dry_run_flags(tmp_path)
    flags[flags.index(BERT_VOCAB)] = str(tmp_path / "no-vocab.txt")
    done = run_entry_point("pretrain_gpt.py", flags, timeout=120)
    assert done.returncode == 2, failure_report(done)
    assert "--vocab-size N" in done.stderr and "Traceback" not in done.stderr
    # the two that succeed are forked from the warm server: their subject is the estimate, not the start
    with_size = run_forked("pretrain_gpt.py", flags + ["--vocab-size", "21130"], timeout=120)
    assert with_size.returncode == 0, failure_report(with_size)
    from_file = run_forked("pretrain_gpt.py", _tiny_gpt_dry_run_flags(tmp_path), timeout=120)
    # the tokenizer of the 21128-entry file has 21130 ids ([BOS], [EOS] added): the same padded count
    assert estimate_fields(from_file.stdout) == estimate_fields(with_size.stdout)


def test_a_vocabulary_file_that_is_not_utf8_is_one_sentence_before_any_step(tmp_path):
    vocab = write_gbk_vocab(tmp_path)
    real_run = tiny_run_flags(str(tmp_path / "absent_text_document"), str(tmp_path / "cache"), train_iters=1)
    for flags in (real_run, _tiny_gpt_dry_run_flags(tmp_path)):
        flags[flags.index(BERT_VOCAB)] = str(vocab)
        done = run_entry_point("pretrain_gpt.py", flags, timeout=120)
        assert done.returncode == 2, failure_report(done)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: --vocab-file {vocab} is not UTF-8 text"), lines


def test_vocab_size_that_disagrees_with_the_tokenizer_is_one_sentence(gpt_corpus):
    flags = tiny_run_flags(os.path.join(gpt_corpus, "zh_text_document"), os.path.join(gpt_corpus, "cache"),
                           train_iters=1) + ["--vocab-size", "21000"]
    done = run_entry_point("pretrain_gpt.py", flags, timeout=120)
    assert done.returncode == 2, failure_report(done)
    assert "--vocab-size 21000 disagrees with the tokenizer's 21130 tokens" in done.stderr


def test_a_real_run_prints_the_estimate_once_at_start(gpt_corpus):
    flags = tiny_run_flags(os.path.join(gpt_corpus, "zh_text_document"), os.path.join(gpt_corpus, "cache"),
                           train_iters=1)
    done = run_ranks("pretrain_gpt.py", flags + ["--tensor-model-parallel-size", "2"], 2, timeout=300)
    assert done.returncode == 0, failure_report(done)
    assert done.stdout.count("model parameters:") == 1
    dry = run_forked("pretrain_gpt.py", flags + ["--tensor-model-parallel-size", "2", "--dry-run",
                                                 "--dry-run-world-size", "2"], timeout=120)
    assert estimate_fields(done.stdout) == estimate_fields(dry.stdout)
