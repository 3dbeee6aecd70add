"""python -m megatron_core.launch: the hostfile DeepSpeed's launcher would read, checked before it runs.

DeepSpeed itself only warns about a missing --hostfile and trains on this host alone; the
wrapper makes that, an empty file and a malformed line one sentence (exit 2), and a
hostfile of this host alone a launch without ssh.
"""
import subprocess
import sys

import pytest

from megatron_core.errors import LaunchError
from megatron_core.launch import LOCAL_LAUNCH, parse_hostfile
from tests.harness.entry_points import clean_env
from tests.harness.tiny_corpus import ROOT


def test_hostfile_lines_are_deepspeeds_host_slots_with_comments_and_blank_lines_ignored():
    text = "# two workers\nworker-1 slots=8\n\n  worker-2   slots=4  \n"
    assert parse_hostfile(text, "hf") == {"worker-1": 8, "worker-2": 4}


@pytest.mark.parametrize("text, sentence", [
    ("", r"the hostfile hf names no host; add a line `<host> slots=<N>`"),
    ("# only a comment\n\n", r"the hostfile hf names no host"),
    ("worker-1 8\n", r"hf line 1 is 'worker-1 8', not `<host> slots=<N>`"),
    ("a slots=1\na slots=2\n", r"hf names a twice \(line 2\)"),
    ("a slots=0\n", r"hf line 1 gives a slots=0"),
])
def test_a_hostfile_deepspeed_cannot_use_is_one_sentence(text, sentence):
    with pytest.raises(LaunchError, match=sentence) as caught:
        parse_hostfile(text, "hf")
    assert "\n" not in str(caught.value)


def run_launch(*argv):
    return subprocess.run([sys.executable, "-m", "megatron_core.launch", *argv], capture_output=True, text=True,
                          env=clean_env(), cwd=ROOT, timeout=120)


def test_a_missing_or_empty_hostfile_exits_2_with_one_sentence_before_deepspeed_runs(tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")
    empty = tmp_path / "empty"
    empty.write_text("")
    for path, sentence in [(str(tmp_path / "missing"), "does not exist (deepspeed would silently train on this "
                                                        "host alone)"),
                           (str(empty), "names no host")]:
        done = run_launch("--hostfile", path, "pretrain_gpt.py", "--train-iters", "1")
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and path in errors[0] and sentence in errors[0], done.stderr
        assert "Traceback" not in done.stderr


def test_a_hostfile_of_this_host_alone_launches_without_ssh_and_others_pass_unchanged():
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")
    from megatron_core.launch import deepspeed_command
    local = ["--hostfile", f"{ROOT}/hostfiles/localhost", "pretrain_gpt.py", "--train-iters", "1"]
    assert deepspeed_command(local, "vm") == ["deepspeed", *LOCAL_LAUNCH, *local]
    given = ["--hostfile", f"{ROOT}/hostfiles/localhost", "--master_addr", "10.0.0.1", "pretrain_gpt.py"]
    assert deepspeed_command(given, "vm") == ["deepspeed", *given]
    two_hosts = ["--hostfile", f"{ROOT}/hostfiles/2x8", "pretrain_gpt.py"]
    assert deepspeed_command(two_hosts, "vm") == ["deepspeed", *two_hosts]
    assert deepspeed_command(["--num_gpus", "2", "pretrain_gpt.py"], "vm") == ["deepspeed", "--num_gpus", "2",
                                                                              "pretrain_gpt.py"]


def test_the_entry_points_dry_run_runs_here_at_the_hostfiles_world_and_needs_no_deepspeed(tmp_path):
    from megatron_core.launch import dry_run_command
    two_hosts = f"{ROOT}/hostfiles/2x8"
    flags = ["--num-layers", "2", "--dry-run"]
    assert dry_run_command(["--hostfile", two_hosts, "--master_port", "29600", "pretrain_gpt.py", *flags], "py") \
        == ["py", "pretrain_gpt.py", *flags, "--dry-run-world-size", "16"]
    assert dry_run_command(["-H", two_hosts, "pretrain_gpt.py", *flags, "--dry-run-world-size", "4"], "py") \
        == ["py", "pretrain_gpt.py", *flags, "--dry-run-world-size", "4"]
    assert dry_run_command(["--num_gpus", "2", "pretrain_gpt.py", *flags], "py")[-1] == "2"
    assert dry_run_command(["--hostfile", two_hosts, "pretrain_gpt.py", "--num-layers", "2"], "py") is None
    with pytest.raises(LaunchError, match=r"does not exist"):
        dry_run_command(["--hostfile", str(tmp_path / "missing"), "pretrain_gpt.py", *flags], "py")
    with pytest.raises(LaunchError, match=r"pass --hostfile \(its slots\) or --num_gpus N"):
        dry_run_command(["pretrain_gpt.py", *flags], "py")
