"""pretrain_gpt.py across two real hosts, one rank on each, logs the plain PyTorch loop's losses.

The hosts are two network namespaces joined by a veth pair, each running its own sshd with
keys made by the test (tests.harness.two_hosts); the ranks talk gloo over the veth
(GLOO_SOCKET_IFNAME). Each launcher runs once, as a user on a cluster would start it:

- `deepspeed --hostfile` (pdsh over ssh; GLOO_SOCKET_IFNAME reaches the remote ranks through
  .deepspeed_env in the working directory) at TP=2, with hostb lost mid-run (its ranks
  SIGKILLed): hosta's rank names it and exits, and the same command resumes the run;
- `torchrun --nnodes 2`, one torchrun per host, at TP=2;
- `mpirun --host hosta,hostb` over ssh (plm_rsh_agent: the test's ssh) at TP=2.

The reference is the plain loop (one process, no launcher): every layout is the serial model.
Also tools/preprocess_data.py --distributed, one torchrun per host: the hosts share this
machine's file system, as a cluster's hosts share one, and the merged dataset is byte for byte
one process's (run only with MCORE_SLOW_TESTS=1: two more torch starts than the suite's time allows).
Skipped, with the reason, only where the machine cannot make the hosts (not root, no
`ip netns`, openssh-server / pdsh / openmpi-bin missing); .ci/run installs them.
"""
import os
import shutil
import subprocess
import time

import pytest

from tests.harness.distributed import find_free_port
from tests.harness.entry_points import (assert_logged_losses, clean_env, failure_report, logged_losses,
                                        tiny_gpt_flags)
from tests.harness.launch_commands import (deepspeed_hostfile_command, missing_programs, mpirun_command,
                                                   torchrun_node_command)
from tests.harness.tiny_corpus import BERT_VOCAB, ROOT, ZH_NEWS
from tests.harness.tool_main import run_tool_forked
from tests.harness.two_hosts import INTERFACE, TwoHosts, unavailable_reason

TIMEOUT = 600


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with TwoHosts(str(tmp_path_factory.mktemp("two_hosts"))) as made:   # torn down even when a test fails
        yield made


def rank_env(hosts, **extra):
    """The launcher's environment: this checkout, one thread, gloo on the veth, the test's ssh."""
    return {**clean_env(), **hosts.client_env(), "GLOO_SOCKET_IFNAME": INTERFACE, **extra}


def test_a_lost_host_is_named_by_the_other_and_the_same_deepspeed_hostfile_command_resumes(
        hosts, gpt_corpus, plain_gpt, tmp_path):
    """`deepspeed --hostfile` (pdsh over ssh) at TP=2, rank 0 on hosta and rank 1 on hostb, saving
    every 2 iterations. Once iteration 3 is logged, hostb's ranks are SIGKILLed (the host is lost):
    hosta's rank exits with status 2 and one sentence naming rank 1 and hostb's address, well
    within --distributed-timeout-minutes. The same command again (host back) resumes from the
    checkpoint of iteration 2 and logs the plain loop's losses of iterations 3-5."""
    if missing_programs("pdsh"):
        pytest.skip("pdsh is not installed (apt-get install pdsh)")
    # DeepSpeed's runner exports .deepspeed_env of its working directory to every remote rank.
    (tmp_path / ".deepspeed_env").write_text(f"GLOO_SOCKET_IFNAME={INTERFACE}\nOMP_NUM_THREADS=1\n")
    save = str(tmp_path / "save")
    flags = [*tiny_gpt_flags(gpt_corpus), "--tensor-model-parallel-size", "2", "--save", save, "--load", save,
             "--save-interval", "2", "--distributed-timeout-minutes", "1"]
    command = hosts.run_on(0, deepspeed_hostfile_command(hosts.hostfile(slots=1), "pretrain_gpt.py", flags,
                                                         hosts.addresses[0], find_free_port()))
    logins = [hosts.ssh_logins(i) for i in range(2)]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
                           env=rank_env(hosts))
    lines, killed_at = [], None
    try:
        for line in run.stdout:
            lines.append(line)
            if killed_at is None and "iteration        3/" in line:
                assert hosts.kill_processes(1, "pretrain_gpt.py") >= 1
                killed_at = time.monotonic()
        run.wait(timeout=TIMEOUT)
    finally:
        run.kill()
    out = "".join(lines)
    assert killed_at is not None, out[-3000:]
    assert time.monotonic() - killed_at < 60, out[-3000:]          # within --distributed-timeout-minutes 1
    assert run.returncode != 0
    named = [line for line in out.splitlines() if "error: rank 1 on host " in line]
    assert named and f"({hosts.addresses[1]}) stopped responding during iteration" in named[0], out[-3000:]
    assert all(hosts.ssh_logins(i) > logins[i] for i in range(2))    # each rank's launcher came over ssh
    done = subprocess.run(command, capture_output=True, text=True, cwd=str(tmp_path), env=rank_env(hosts),
                          timeout=TIMEOUT)
    assert done.returncode == 0, failure_report(done)
    assert "successfully loaded checkpoint" in done.stdout and "at iteration 2" in done.stdout, failure_report(done)
    losses = {step: values["lm loss"] for step, values in logged_losses(done.stdout).items()}
    assert sorted(losses) == [3, 4, 5], failure_report(done)
    for step in (3, 4, 5):
        assert losses[step] == pytest.approx(plain_gpt["losses"][step - 1], rel=1e-5)


def torchrun_on_both_hosts(hosts, script, flags):
    """`torchrun --nnodes 2`, one per host (node rank = host index), one process each; each
    node's CompletedProcess."""
    port = find_free_port()
    nodes = [subprocess.Popen(hosts.run_on(rank, torchrun_node_command(2, rank, 1, hosts.addresses[0], port,
                                                                         script, flags)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=rank_env(hosts))
             for rank in range(2)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [subprocess.CompletedProcess(node.args, node.returncode, out, err) for node, (out, err) in
            zip(nodes, outputs)]


def test_torchrun_nnodes_2_one_per_host_at_tp2_logs_the_plain_pytorch_losses(hosts, gpt_corpus, plain_gpt):
    flags = [*tiny_gpt_flags(gpt_corpus), "--tensor-model-parallel-size", "2"]
    done = torchrun_on_both_hosts(hosts, "pretrain_gpt.py", flags)
    assert done[0].returncode == 0, failure_report(done[0])
    assert_logged_losses(done[1], plain_gpt["losses"])         # the last rank logs; it runs on hostb


def test_mpirun_over_ssh_one_rank_per_host_at_tp2_logs_the_plain_pytorch_losses(hosts, gpt_corpus, plain_gpt):
    if missing_programs("mpirun"):
        pytest.skip("mpirun is not installed (apt-get install openmpi-bin)")
    flags = [*tiny_gpt_flags(gpt_corpus), "--tensor-model-parallel-size", "2"]
    environment = {"PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": INTERFACE,
                   "MASTER_ADDR": hosts.addresses[0], "MASTER_PORT": str(find_free_port())}
    mca = {"plm_rsh_agent": os.path.join(hosts.bin, "ssh"), "oob_tcp_if_include": INTERFACE,
           "btl_tcp_if_include": INTERFACE}
    command = mpirun_command([f"{address}:1" for address in hosts.addresses], "pretrain_gpt.py", flags,
                             environment, mca)
    logins = hosts.ssh_logins(1)
    done = subprocess.run(hosts.run_on(0, command), capture_output=True, text=True, cwd=ROOT, env=rank_env(hosts),
                          timeout=TIMEOUT)
    assert_logged_losses(done, plain_gpt["losses"])
    assert hosts.ssh_logins(1) > logins          # rank 1's orted was started on hostb over ssh


@pytest.mark.skipif(os.environ.get("MCORE_SLOW_TESTS") != "1", reason="slow (two hosts' torch starts); set "
                    "MCORE_SLOW_TESTS=1 to run it")
def test_preprocess_distributed_with_one_torchrun_per_host_gives_the_one_process_bytes(hosts, tmp_path):
    src = str(tmp_path / "news.jsonl")
    shutil.copy(ZH_NEWS, src)
    flags = ["--input", src, "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB, "--append-eod",
             "--log-interval", "0"]
    one = run_tool_forked("preprocess_data.py", *flags, "--output-prefix", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    flags += ["--output-prefix", str(tmp_path / "two"), "--distributed", "--partitions", "6"]
    done = torchrun_on_both_hosts(hosts, "tools/preprocess_data.py", flags)
    for node in done:
        assert node.returncode == 0, failure_report(node)
    for ext in (".bin", ".idx"):
        two, one = (tmp_path / f"{name}_text_document{ext}" for name in ("two", "one"))
        assert two.read_bytes() == one.read_bytes()
    assert "all 2 ranks: 6 partitions, 200 documents" in done[0].stderr, failure_report(done[0])
    assert "rank 1 on " in done[0].stderr and "3 partitions" in done[1].stderr, failure_report(done[1])
    assert not os.path.exists(tmp_path / "two.progress")
