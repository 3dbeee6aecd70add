"""Run an entry point (pretrain_*.py) as a user runs it and read back its Megatron log lines.

    done = run_entry_point("pretrain_bert.py", flags)              # plain python, one process
    done = run_entry_point("pretrain_bert.py", flags, nproc=2)     # torchrun --nproc-per-node 2
    losses = logged_losses(done.stdout)     # {1: {"lm loss": 10.4, "sop loss": 0.69}, 2: {...}, ...}
    flags = tiny_run_flags(prefix, cache_dir, train_iters=5)       # a tiny fp32 model, no dropout

The child processes get this checkout on PYTHONPATH, one OpenMP thread each and none of
the launcher variables of the calling process, so a test run under torchrun (or a
leftover RANK) cannot leak into them.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from .distributed import find_free_port
from .tiny_corpus import BERT_VOCAB, ROOT

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def entry_point_env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def run_entry_point(script: str, flags: Sequence[str], nproc: Optional[int] = None,
                    timeout: float = 300, extra_env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """`python <script> flags` (nproc None) or `torchrun --nproc-per-node nproc <script> flags`,
    from the repository root; stdout and stderr captured as text; `extra_env` added to the
    children's environment."""
    path = os.path.join(ROOT, script)
    if nproc is None:
        command = [sys.executable, path, *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(find_free_port()), path, *flags]
    env = dict(entry_point_env(), **(extra_env or {}))
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT)


def failure_report(done: subprocess.CompletedProcess) -> str:
    """The ends of both streams, for an assertion message."""
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-2000:]}\n--- stderr ---\n{done.stderr[-4000:]}"


def parse_log_line(line: str) -> Optional[tuple]:
    """(iteration, {loss name: value}) of one Megatron training line, else None.

    The line is `iteration N/ M | key: value | ... |`; the losses are the keys ending in
    "loss" ("lm loss", "sop loss"; not "loss scale")."""
    fields = [field.strip() for field in line.split("|")]
    head = fields[0].split("iteration", 1)
    if len(head) != 2 or "/" not in head[1]:
        return None
    iteration = int(head[1].split("/")[0])
    losses = {}
    for field in fields[1:]:
        name, sep, value = field.partition(":")
        if sep and name.strip().endswith("loss"):
            losses[name.strip()] = float(value)
    return iteration, losses


def logged_losses(stdout: str) -> Dict[int, Dict[str, float]]:
    """{iteration: {loss name: value}} of every training log line in `stdout`."""
    result = {}
    for line in stdout.splitlines():
        if " iteration " in line and " consumed samples:" in line:
            parsed = parse_log_line(line)
            if parsed is not None:
                result[parsed[0]] = parsed[1]
    return result


def tiny_run_flags(data_prefix: str, cache_dir: str, train_iters: int = 5, seq_length: int = 64,
                   num_layers: int = 2) -> List[str]:
    """A tiny fp32 model without dropout on the BERT Chinese vocabulary: micro-batch 2, global
    batch 8, constant lr, a log line every iteration, one validation batch at the end."""
    return ["--num-layers", str(num_layers), "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", str(seq_length), "--micro-batch-size", "2", "--global-batch-size", "8",
            "--train-iters", str(train_iters), "--lr", "3e-3", "--lr-decay-style", "constant",
            "--weight-decay", "0.01", "--clip-grad", "1.0", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--log-interval", "1", "--eval-interval", str(train_iters), "--eval-iters", "1", "--split", "90,10,0",
            "--data-path", data_prefix, "--data-cache-path", cache_dir, "--num-workers", "0",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB]
