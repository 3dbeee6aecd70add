"""pretrain_gpt.py across two real hosts, one rank on each, logs the plain PyTorch loop's losses.

The hosts are two network namespaces joined by a veth pair, each running its own sshd with
keys made by the test (tests.harness.two_hosts); the ranks talk gloo over the veth
(GLOO_SOCKET_IFNAME). Each launcher runs once, as a user on a cluster would start it:

- `deepspeed --hostfile` (pdsh over ssh; GLOO_SOCKET_IFNAME reaches the remote ranks through
  .deepspeed_env in the working directory) at DP=2 through the DeepSpeed engine with ZeRO-1;
- `torchrun --nnodes 2`, one torchrun per host, at TP=2;
- `mpirun --host hosta,hostb` over ssh (plm_rsh_agent: the test's ssh) at TP=2.

The reference is the plain loop (one process, no launcher): every layout is the serial model.
Skipped, with the reason, only where the machine cannot make the hosts (not root, no
`ip netns`, openssh-server / pdsh / openmpi-bin missing); .ci/run installs them.
"""
import json
import os
import subprocess

import pytest

from tests.harness.deepspeed_op_cache import deepspeed_test_env
from tests.harness.distributed import find_free_port
from tests.harness.entry_points import (assert_logged_losses, clean_env, failure_report,
                                                tiny_gpt_flags)
from tests.harness.launch_commands import (deepspeed_hostfile_command, missing_programs, mpirun_command,
                                                   torchrun_node_command)
from tests.harness.tiny_corpus import ROOT
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


def test_deepspeed_hostfile_over_pdsh_with_zero1_at_dp2_across_two_hosts_logs_the_plain_pytorch_losses(
        hosts, gpt_corpus, plain_gpt, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'mcore-pretrain[deepspeed]')")
    if missing_programs("pdsh"):
        pytest.skip("pdsh is not installed (apt-get install pdsh)")
    ops = deepspeed_test_env()
    # DeepSpeed's runner exports .deepspeed_env of its working directory to every remote rank.
    (tmp_path / ".deepspeed_env").write_text(f"GLOO_SOCKET_IFNAME={INTERFACE}\nOMP_NUM_THREADS=1\n"
                                             f"TORCH_EXTENSIONS_DIR={ops['TORCH_EXTENSIONS_DIR']}\n")
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 1}}))
    flags = [*tiny_gpt_flags(gpt_corpus), "--deepspeed", "--deepspeed_config", str(config)]
    command = deepspeed_hostfile_command(hosts.hostfile(slots=1), "pretrain_gpt.py", flags, hosts.addresses[0],
                                         find_free_port())
    logins = [hosts.ssh_logins(i) for i in range(2)]
    done = subprocess.run(hosts.run_on(0, command), capture_output=True, text=True, cwd=str(tmp_path),
                          env=rank_env(hosts, **ops), timeout=TIMEOUT)
    assert_logged_losses(done, plain_gpt["losses"])
    assert "hostb: " in done.stdout, failure_report(done)        # pdsh prefixes each line with its host
    assert all(hosts.ssh_logins(i) > logins[i] for i in range(2))    # each rank's launcher came over ssh


def test_torchrun_nnodes_2_one_per_host_at_tp2_logs_the_plain_pytorch_losses(hosts, gpt_corpus, plain_gpt):
    flags = [*tiny_gpt_flags(gpt_corpus), "--tensor-model-parallel-size", "2"]
    port = find_free_port()
    nodes = [subprocess.Popen(hosts.run_on(rank, torchrun_node_command(2, rank, 1, hosts.addresses[0], port,
                                                                         "pretrain_gpt.py", flags)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              env=rank_env(hosts))
             for rank in range(2)]
    try:
        outputs = [node.communicate(timeout=TIMEOUT) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    done = [subprocess.CompletedProcess(node.args, node.returncode, out, err) for node, (out, err) in
            zip(nodes, outputs)]
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
