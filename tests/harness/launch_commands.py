"""The command lines of the three launchers, as a user types them, for tests on one host or two.

    deepspeed_hostfile_command(hostfile, script, flags, master_addr, port, no_ssh=True)
    deepspeed_num_gpus_command(2, script, flags, port)
    mpirun_command(["127.0.0.1:2"], script, flags, environment={"MASTER_PORT": "29611"})
    torchrun_node_command(nnodes=2, node_rank=1, nproc=1, master_addr, port, script, flags)

Each runs the entry point unchanged; only the launcher differs. mpirun as root needs
--allow-run-as-root (added when this process is root); its ranks get no environment of
ours unless exported with -x, so `environment` names what to pass (PYTHONPATH,
OMP_NUM_THREADS, the rendezvous, GLOO_SOCKET_IFNAME).
"""
from __future__ import annotations

import os
import shutil
import sys
from typing import Dict, List, Optional, Sequence

from .tiny_corpus import ROOT


def script_path(script: str) -> str:
    return os.path.join(ROOT, script)


def missing_programs(*names: str) -> List[str]:
    return [name for name in names if shutil.which(name) is None]


def deepspeed_hostfile_command(hostfile: str, script: str, flags: Sequence[str], master_addr: str, port: int,
                               no_ssh: bool = False) -> List[str]:
    """`deepspeed --hostfile F [--no_ssh --node_rank 0] --master_addr A --master_port P script flags`."""
    local = ["--no_ssh", "--node_rank", "0"] if no_ssh else []
    return ["deepspeed", "--hostfile", hostfile, *local, "--master_addr", master_addr, "--master_port", str(port),
            script_path(script), *flags]


def deepspeed_num_gpus_command(num_gpus: int, script: str, flags: Sequence[str], port: int) -> List[str]:
    """`deepspeed --num_gpus N --master_port P script flags`: one host, no hostfile."""
    return ["deepspeed", "--num_gpus", str(num_gpus), "--master_port", str(port), script_path(script), *flags]


def mpirun_command(hosts: Sequence[str], script: str, flags: Sequence[str], environment: Dict[str, str],
                   mca: Optional[Dict[str, str]] = None) -> List[str]:
    """`mpirun -np N --host h:slots,... -x NAME=value ... python script flags` (N = the slots summed)."""
    np = sum(int(host.rsplit(":", 1)[1]) for host in hosts)
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    exports = [arg for name, value in environment.items() for arg in ("-x", f"{name}={value}")]
    params = [arg for name, value in (mca or {}).items() for arg in ("--mca", name, value)]
    return ["mpirun", "-np", str(np), *root, "--host", ",".join(hosts), "--bind-to", "none", *params, *exports,
            sys.executable, script_path(script), *flags]


def torchrun_node_command(nnodes: int, node_rank: int, nproc: int, master_addr: str, port: int, script: str,
                          flags: Sequence[str]) -> List[str]:
    """One node's `torchrun --nnodes N --node-rank R --nproc-per-node n --master-addr A --master-port P`."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node-rank", str(node_rank),
            "--nproc-per-node", str(nproc), "--master-addr", master_addr, "--master-port", str(port),
            script_path(script), *flags]
