"""`deepspeed` with its hostfile checked first: `python -m megatron_core.launch <deepspeed's arguments>`.

    python -m megatron_core.launch --hostfile hostfiles/2x8 pretrain_gpt.py <flags>
    python -m megatron_core.launch --hostfile hostfiles/localhost pretrain_gpt.py <flags>

DeepSpeed's launcher, given a --hostfile that does not exist, only logs a warning and
trains on this host's "local resources" (on a GPU-less box: one process per NUMA node),
so a typo in the path becomes a run of the wrong size that fails later, if at all; an
empty or malformed hostfile is a ValueError traceback. This wrapper reads the hostfile the
way DeepSpeed does (`host slots=N` per line, `#` comments and blank lines ignored) and
turns each of those cases into one sentence (exit 2), then execs `deepspeed` with the same
arguments. Given a hostfile whose only host is this one (localhost, 127.0.0.1 or this
host's name) and neither --no_ssh nor --master_addr, it adds
`--no_ssh --node_rank 0 --master_addr 127.0.0.1`: without them DeepSpeed first checks
that it can ssh to localhost, which a laptop or CI box has no reason to allow. Without
--hostfile (DeepSpeed's `--num_gpus N` on one host, its default /job/hostfile absent), the
arguments pass through unchanged. The arguments are read by DeepSpeed's own parser, so
they mean exactly what they mean to `deepspeed`.

    python -m megatron_core.launch --hostfile hostfiles/4x8 pretrain_gpt.py <flags> --dry-run

When the entry point's flags hold its own `--dry-run`, nothing is launched on the hosts
(`deepspeed` would ssh to each to run it there): the entry point runs here, once, with
`--dry-run-world-size` set to the hostfile's slots (unless given), so it checks the flags
and the DeepSpeed config at the cluster's world size; DeepSpeed need not be installed.
The entry point is the first argument ending in `.py`.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import sys
from typing import Dict, List, Optional, Sequence

from .cli import run
from .errors import LaunchError

_ENTRY = re.compile(r"^(\S+)\s+slots=(\d+)")     # what DeepSpeed's launcher accepts as a line
LOCAL_HOSTS = ("localhost", "127.0.0.1")
# DeepSpeed's default --hostfile; absent, the launcher uses this host alone (--num_gpus N).
DEEPSPEED_DEFAULT_HOSTFILE = "/job/hostfile"
LOCAL_LAUNCH = ["--no_ssh", "--node_rank", "0", "--master_addr", "127.0.0.1"]


def parse_hostfile(text: str, path: str) -> Dict[str, int]:
    """{host: slots} in file order; a line DeepSpeed would refuse, a repeated host, zero slots or no host
    at all is one sentence naming `path`."""
    hosts: Dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise LaunchError(f"{path} line {number} is {line!r}, not `<host> slots=<N>`; write one host per line "
                              f"as `worker-1 slots=8`.")
        host, slots = match.group(1), int(match.group(2))
        if host in hosts:
            raise LaunchError(f"{path} names {host} twice (line {number}); give each host one line with its total "
                              f"slots.")
        if slots < 1:
            raise LaunchError(f"{path} line {number} gives {host} slots=0; give it at least 1 slot or delete the "
                              f"line.")
        hosts[host] = slots
    if not hosts:
        raise LaunchError(f"the hostfile {path} names no host; add a line `<host> slots=<N>` per host "
                          f"(hostfiles/localhost: `localhost slots=2`).")
    return hosts


def read_hostfile(path: str) -> Dict[str, int]:
    if not os.path.isfile(path):
        raise LaunchError(f"the hostfile {path} does not exist (deepspeed would silently train on this host "
                          f"alone); check the path, or drop --hostfile and pass --num_gpus N for one host.")
    with open(path, encoding="utf-8") as f:
        return parse_hostfile(f.read(), path)


def hostfile_world_size(path: str) -> int:
    return sum(read_hostfile(path).values())


def dry_run_command(argv: Sequence[str], python: str) -> Optional[List[str]]:
    """`python ENTRY FLAGS --dry-run-world-size <slots>` when FLAGS hold the entry point's --dry-run (module
    doc); None otherwise."""
    argv = list(argv)
    entry = next((i for i, arg in enumerate(argv) if arg.endswith(".py")), None)
    if entry is None or "--dry-run" not in argv[entry + 1:]:
        return None
    launcher, flags = argv[:entry], argv[entry + 1:]
    if not any(flag.split("=")[0] == "--dry-run-world-size" for flag in flags):
        flags += ["--dry-run-world-size", str(_launch_world_size(launcher))]
    return [python, argv[entry], *flags]


def _launch_world_size(launcher_args: Sequence[str]) -> int:
    """The world the launcher's own arguments describe: the hostfile's slots, else --num_gpus on one host."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-H", "--hostfile", default=DEEPSPEED_DEFAULT_HOSTFILE)
    parser.add_argument("--num_gpus", "--num_accelerators", type=int, default=None)
    known, _ = parser.parse_known_args(list(launcher_args))
    if known.hostfile != DEEPSPEED_DEFAULT_HOSTFILE or os.path.isfile(known.hostfile):
        return hostfile_world_size(known.hostfile)
    if known.num_gpus is not None and known.num_gpus > 0:
        return known.num_gpus
    raise LaunchError("a dry run through the launcher checks the layout at the launch's world size; pass "
                      "--hostfile (its slots) or --num_gpus N, or give the entry point --dry-run-world-size N.")


def deepspeed_arguments(argv: Sequence[str]):
    """DeepSpeed's own reading of its command line (hostfile, no_ssh, master_addr, user_script, ...)."""
    try:
        from deepspeed.launcher.runner import parse_args
    except ImportError:
        raise LaunchError("deepspeed is not installed; pip install 'mcore-pretrain[deepspeed]'.") from None
    return parse_args(list(argv))


def deepspeed_command(argv: Sequence[str], this_host: str) -> List[str]:
    """`deepspeed <argv>` after the hostfile check; a hostfile of this host alone gets LOCAL_LAUNCH."""
    argv = list(argv)
    args = deepspeed_arguments(argv)
    if args.hostfile == DEEPSPEED_DEFAULT_HOSTFILE and not os.path.isfile(args.hostfile):
        return ["deepspeed", *argv]      # no --hostfile: one host, as DeepSpeed documents
    hosts = read_hostfile(args.hostfile)
    local = all(host in (*LOCAL_HOSTS, this_host) for host in hosts)
    if local and not args.no_ssh and not args.master_addr:
        argv = LOCAL_LAUNCH + argv
    return ["deepspeed", *argv]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = dry_run_command(argv, sys.executable)
    if command is None:
        command = deepspeed_command(argv, socket.gethostname())
    if command[0] == "deepspeed" and shutil.which("deepspeed") is None:
        raise LaunchError("the deepspeed launcher is not on PATH; pip install 'mcore-pretrain[deepspeed]'.")
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 0     # not reached: exec replaced this process


if __name__ == "__main__":
    run(main)
