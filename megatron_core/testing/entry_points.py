"""Run an entry point (pretrain_gpt.py, finetune_gpt.py, ...) as a user runs it, and read its log.

    done = run_entry_point("pretrain_gpt.py", flags)              # plain python: one process
    done = run_entry_point("pretrain_gpt.py", flags, nproc=4)     # torchrun --nproc-per-node 4
    losses = logged_values(done.stdout, "lm loss")                # {iteration: value}
    reference = plain_gpt_reference(tiny_gpt_flags(corpus_dir))   # the plain PyTorch loop's losses

The child gets this checkout on PYTHONPATH, one intra-op thread (ranks share the cores)
and none of the launcher variables a surrounding torchrun may have set.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional

from .distributed import find_free_port
from .tiny_corpus import BERT_VOCAB, ROOT

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_ITERATION = re.compile(r"iteration\s+(\d+)/\s*\d+ \|(.*)$", re.MULTILINE)


def clean_env() -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def run_entry_point(script: str, flags: List[str], nproc: Optional[int] = None,
                    timeout: float = 300) -> subprocess.CompletedProcess:
    """`script` (relative to the repository root) with `flags`; nproc=None runs it without a launcher."""
    path = os.path.join(ROOT, script)
    if nproc is None:
        command = [sys.executable, path, *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(find_free_port()), path, *flags]
    return subprocess.run(command, capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=ROOT)


def logged_values(stdout: str, name: str) -> Dict[int, float]:
    """{iteration: value} of the `name: value |` field of Megatron's training log lines."""
    field = re.compile(rf"\| {re.escape(name)}:\s+(\S+) \|")
    values = {}
    for iteration, rest in _ITERATION.findall(stdout):
        match = field.search("|" + rest)
        if match:
            values[int(iteration)] = float(match.group(1))
    return values


def failure_report(done: subprocess.CompletedProcess) -> str:
    """The tail of a run's output, for an assertion message."""
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-2000:]}\n--- stderr ---\n{done.stderr[-4000:]}"


TINY_GPT_STEPS = 5


def tiny_gpt_flags(corpus_dir: str) -> List[str]:
    """pretrain_gpt.py flags of a tiny GPT over tiny_corpus.preprocess_zh_news(corpus_dir): fp32, no
    dropout, constant lr, clipping and weight decay on, what plain_gpt_loop models exactly."""
    return ["--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", "--train-iters", str(TINY_GPT_STEPS),
            "--lr", "3e-3", "--lr-decay-style", "constant", "--weight-decay", "0.1", "--clip-grad", "1.0",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1",
            "--eval-interval", str(TINY_GPT_STEPS), "--eval-iters", "1", "--split", "90,10,0",
            "--data-path", os.path.join(corpus_dir, "zh_text_document"),
            "--data-cache-path", os.path.join(corpus_dir, "cache"), "--num-workers", "0",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB]


def plain_gpt_reference(flags: List[str], timeout: float = 300) -> dict:
    """plain_gpt_loop's {"losses", "grad_norms", ...} for the same flags, in a fresh process."""
    done = subprocess.run([sys.executable, "-m", "megatron_core.testing.plain_gpt_loop", *flags],
                          capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise AssertionError("plain_gpt_loop failed:\n" + failure_report(done))
    return json.loads(done.stdout.strip().splitlines()[-1])
