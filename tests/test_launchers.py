"""pretrain_gpt.py, unedited, under DeepSpeed's launcher and OpenMPI's mpirun logs the plain PyTorch loop's losses.

The reference is tests.harness.plain_gpt_loop (the serial model under torch.optim.AdamW,
one process, no launcher). torchrun --nproc-per-node at TP=2 and DP=2 is test_training_loop's;
here each other launcher starts 2 ranks on this host, each at one layout:

- `deepspeed --hostfile hostfiles/localhost --no_ssh --node_rank 0 --master_addr 127.0.0.1` at TP=2;
- `deepspeed --num_gpus 2` (no hostfile) at DP=2 with the DeepSpeed engine (ZeRO-1): the
  session's shared ZeRO-1 run (testing/engine_runs.py), whose checkpoints other tests read;
- `mpirun -np 2` at DP=2: ranks read OMPI_COMM_WORLD_*, not RANK.

Bad launcher environments end in one sentence before any process group waits for a peer.
"""
import subprocess

import pytest

from tests.harness.deepspeed_op_cache import deepspeed_test_env  # noqa: F401 (conftest starts the op build)
from tests.harness.distributed import find_free_port
from tests.harness.entry_points import (assert_logged_losses, clean_env, failure_report,
                                                run_entry_point, tiny_gpt_flags)
from tests.harness.launch_commands import deepspeed_hostfile_command, missing_programs, mpirun_command
from tests.harness.tiny_corpus import ROOT

TIMEOUT = 600


def launch(command, env=None):
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                          env={**clean_env(), **(env or {})})


def test_deepspeed_hostfile_localhost_without_ssh_at_tp2_logs_the_plain_pytorch_losses(gpt_corpus, plain_gpt):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")
    flags = [*tiny_gpt_flags(gpt_corpus), "--tensor-model-parallel-size", "2"]
    command = deepspeed_hostfile_command(f"{ROOT}/hostfiles/localhost", "pretrain_gpt.py", flags, "127.0.0.1",
                                         find_free_port(), no_ssh=True)
    assert_logged_losses(launch(command), plain_gpt["losses"])


def test_deepspeed_num_gpus_2_on_a_gpu_less_host_with_zero1_at_dp2_logs_the_plain_pytorch_losses(
        engine_runs, plain_gpt):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")
    # The session's ZeRO-1 run is this launcher's (testing/engine_runs.py): `deepspeed --num_gpus 2
    # pretrain_gpt.py <tiny_gpt_flags> --deepspeed --deepspeed_config ds.json --save ...`.
    assert_logged_losses(engine_runs.get("zero1-dp2").done, plain_gpt["losses"])


def test_mpirun_np_2_at_dp2_logs_the_plain_pytorch_losses(gpt_corpus, plain_gpt):
    if missing_programs("mpirun"):
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    # Only the port is given: every rank is on this host, so the rendezvous is 127.0.0.1.
    environment = {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(find_free_port())}
    command = mpirun_command(["localhost:2"], "pretrain_gpt.py", tiny_gpt_flags(gpt_corpus), environment)
    assert_logged_losses(launch(command), plain_gpt["losses"])


@pytest.mark.parametrize("env, sentence", [
    ({"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "RANK='2' is not in [0, WORLD_SIZE=2)"),
    ({"RANK": "0", "WORLD_SIZE": "3", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "the world size 3 (WORLD_SIZE, the launched processes) is not divisible by --tensor-model-parallel-size 2"),
    ({"RANK": "0", "WORLD_SIZE": "2", "MASTER_PORT": "29500"}, "but not MASTER_ADDR"),
])
def test_a_launcher_environment_that_does_not_add_up_exits_2_with_one_sentence_before_any_rendezvous(
        gpt_corpus, env, sentence):
    flags = [*tiny_gpt_flags(gpt_corpus), "--tensor-model-parallel-size", "2"]
    done = run_entry_point("pretrain_gpt.py", flags, env=env, timeout=120)
    assert done.returncode == 2, failure_report(done)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and sentence in lines[0], failure_report(done)
