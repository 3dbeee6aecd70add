"""Run an entry point (pretrain_*.py, finetune_gpt.py) as a user runs it, and read its log lines.

    done = run_entry_point("pretrain_gpt.py", flags)              # plain python: one process
    done = run_entry_point("pretrain_gpt.py", flags, nproc=4)     # torchrun --nproc-per-node 4
    done = run_forked("pretrain_gpt.py", flags)                   # one process forked from the fork server
    ranks = run_plain_ranks("pretrain_gpt.py", flags, 2)          # 2 processes, no launcher (as mpirun)
    ranks = run_forked_ranks("pretrain_gpt.py", flags, 2)         # the same, forked (fork_server.py)
    done = run_ranks("pretrain_gpt.py", flags, 2)                 # those, read as one run
    lm = logged_values(done.stdout, "lm loss")                    # {iteration: value}
    losses = logged_losses(done.stdout)                           # {iteration: {"lm loss": .., "sop loss": ..}}
    lines = logged_iterations(done.stdout)                        # {iteration: the line without clock fields}
    reference = plain_gpt_reference(tiny_gpt_flags(corpus_dir))   # the plain PyTorch loop's losses

The child gets this checkout on PYTHONPATH, one intra-op thread (ranks share the cores)
and none of the launcher variables a surrounding torchrun may have set. Flag sets of tiny
fp32 runs: tiny_gpt_flags (what plain_gpt_loop models exactly), tiny_run_flags (any
family over a given prefix), corpus_flags (the data flags of a corpus built on first use).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from . import fork_server
from .distributed import find_free_port
from .tiny_corpus import BERT_VOCAB, ROOT, preprocess_zh_news

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_ITERATION = re.compile(r"iteration\s+(\d+)/\s*\d+ \|(.*)$", re.MULTILINE)
# What differs between two runs of the same computation: the clock.
_CLOCK_FIELDS = [re.compile(p) for p in (r"^ ?\[[^\]]*\] ", r" elapsed time per iteration \(ms\): [^|]*\|",
                                         r" throughput per GPU[^|]*\|", r" tokens per second: [^|]*\|",
                                         r" MFU: [^|]*\|")]


def clean_env(**extra: str) -> Dict[str, str]:
    """The caller's environment for a fresh launch: this checkout first, one thread, no launcher variables."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **extra)
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def entry_point_command(script: str, flags: Sequence[str], nproc: Optional[int] = None,
                        faults: Sequence[str] = ()) -> List[str]:
    """`python script flags`, or `torchrun --nproc-per-node nproc script flags` on a free local port.
    `faults`: faults.py's options (e.g. ["--stop-rank", "1:3"]); the script then runs under it."""
    path = os.path.join(ROOT, script)
    program = ["-m", "tests.harness.faults", *faults, path] if faults else [path]
    if nproc is None:
        return [sys.executable, *program, *flags]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-addr", "127.0.0.1", "--master-port", str(find_free_port()), *program, *flags]


def run_entry_point(script: str, flags: Sequence[str], nproc: Optional[int] = None, timeout: float = 300,
                    env: Optional[Dict[str, str]] = None, faults: Sequence[str] = (),
                    **popen) -> subprocess.CompletedProcess:
    """`script` (relative to the repository root) with `flags`, from the root; nproc=None runs it without
    a launcher. `env` adds to clean_env(); `faults` as entry_point_command's. stdout and stderr are
    captured as text."""
    return subprocess.run(entry_point_command(script, flags, nproc, faults), capture_output=True, text=True,
                          env={**clean_env(), **(env or {})}, timeout=timeout, cwd=ROOT, **popen)


def run_plain_ranks(script: str, flags: Sequence[str], nproc: int, timeout: float = 300,
                    env: Optional[Dict[str, str]] = None,
                    grace: Optional[float] = None) -> List[subprocess.CompletedProcess]:
    """`script` as `nproc` separate processes without a launcher (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT set by hand, as mpirun's ranks get them; rank 0 hosts the store), one
    CompletedProcess per rank. A rank still running at `timeout`, or `grace` seconds after the first
    rank exited (when given), is killed (returncode -9)."""
    port = str(find_free_port())
    with tempfile.TemporaryDirectory() as logs:
        processes = []
        for rank in range(nproc):
            rank_env = {**clean_env(), **(env or {}), "RANK": str(rank), "WORLD_SIZE": str(nproc),
                        "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": port}
            out, err = (open(os.path.join(logs, f"{rank}.{name}"), "w+") for name in ("out", "err"))
            processes.append((subprocess.Popen(entry_point_command(script, flags), stdout=out, stderr=err,
                                               env=rank_env, cwd=ROOT, text=True), out, err))
        deadline = time.monotonic() + timeout
        while grace is not None and time.monotonic() < deadline:
            if any(process.poll() is not None for process, _, _ in processes):
                deadline = min(deadline, time.monotonic() + grace)
                break
            time.sleep(0.1)
        results = []
        for process, out, err in processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            out.seek(0), err.seek(0)
            results.append(subprocess.CompletedProcess(process.args, process.returncode, out.read(), err.read()))
            out.close(), err.close()
    return results


def run_forked_ranks(script: str, flags: Sequence[str], nproc: int, timeout: float = 300,
                     env: Optional[Dict[str, str]] = None, grace: float = 60,
                     faults: Sequence[str] = (), preload: Sequence[str] = (),
                     launcher: bool = True) -> List[subprocess.CompletedProcess]:
    """run_plain_ranks for tests whose subject is the run and not its launcher: the ranks are forked
    (forked_ranks.py) from a starter that the session's fork server forked (fork_server.py: torch,
    torch._dynamo, the script's imports and the `preload` modules imported once a session, not ~5 s
    of CPU per rank). One CompletedProcess per rank; a rank still running `grace` seconds after the
    first one exited is killed (returncode -9), all of them at `timeout`. `faults`: faults.py's
    options, installed before the fork. launcher=False (one process): no launcher variables."""
    env = {**clean_env(), **(env or {})}
    if launcher:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(find_free_port()))
    path = os.path.join(ROOT, script)
    with tempfile.TemporaryDirectory() as logs:
        status = fork_server.launch(logs, nproc, path, flags, env, grace, faults, timeout=timeout, preload=preload,
                                    server_env=clean_env(), launcher=launcher)
        starter_output = _text_if_present(logs, "starter.log")
        # No statuses file: the starter itself failed (its output goes with rank 0's stderr).
        statuses = [int(s) for s in _text_if_present(logs, "statuses").split()] or [status or -9] * nproc
        errors = [_text_if_present(logs, f"{rank}.err") for rank in range(nproc)]
        errors[0] += starter_output
        outputs = [_text_if_present(logs, f"{rank}.out") for rank in range(nproc)]
    command = ["fork_server", str(nproc), path, *flags]
    return [subprocess.CompletedProcess(command, statuses[rank], outputs[rank], errors[rank]) for rank in range(nproc)]


def run_forked(script: str, flags: Sequence[str], timeout: float = 300,
               env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """run_entry_point(script, flags) (one process, no launcher) for tests whose subject is what the
    run computes or saves, not how a fresh process starts: forked from the session's fork server,
    without the ~5 s of imports. A test of what a user sees on a bad start (one sentence on stderr,
    exit 2) runs the script fresh with run_entry_point."""
    return run_forked_ranks(script, flags, 1, timeout=timeout, env=env, launcher=False)[0]


def run_ranks(script: str, flags: Sequence[str], nproc: int, timeout: float = 300,
              env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """run_forked_ranks read as one run: stdout and stderr of ranks 0, 1, ... joined (what torchrun
    prints, rank by rank), the first failing rank's exit status or 0. No torchrun agent, and the
    ranks' imports are paid once."""
    ranks = run_forked_ranks(script, flags, nproc, timeout=timeout, env=env)
    status = next((done.returncode for done in ranks if done.returncode != 0), 0)
    return subprocess.CompletedProcess(ranks[0].args, status, "".join(done.stdout for done in ranks),
                                       "".join(done.stderr for done in ranks))


def _text_if_present(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        return f.read()


def failure_report(done: subprocess.CompletedProcess) -> str:
    """The tail of a run's output, for an assertion message."""
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-2000:]}\n--- stderr ---\n{done.stderr[-4000:]}"


# --- reading the log --------------------------------------------------------------------------------

def logged_values(stdout: str, name: str) -> Dict[int, float]:
    """{iteration: value} of the `name: value |` field of Megatron's training log lines."""
    field = re.compile(rf"\| {re.escape(name)}:\s+(\S+) \|")
    values = {}
    for iteration, rest in _ITERATION.findall(stdout):
        match = field.search("|" + rest)
        if match:
            values[int(iteration)] = float(match.group(1))
    return values


def logged_losses(stdout: str) -> Dict[int, Dict[str, float]]:
    """{iteration: {loss name: value}}: the fields whose names end in "loss" ("lm loss", "sop loss";
    not "loss scale") of every training log line."""
    result = {}
    for iteration, rest in _ITERATION.findall(stdout):
        losses = {}
        for field in rest.split("|"):
            name, sep, value = field.partition(":")
            if sep and name.strip().endswith("loss"):
                losses[name.strip()] = float(value)
        if losses:
            result[int(iteration)] = losses
    return result


def without_clock(line: str) -> str:
    for pattern in _CLOCK_FIELDS:
        line = pattern.sub("", line)
    return line.strip()


def logged_iterations(stdout: str) -> Dict[int, str]:
    """{iteration: its training log line without the clock fields}: equal strings for equal computations."""
    result = {}
    for line in stdout.splitlines():
        match = _ITERATION.search(line)
        if match and "lm loss" in line:
            result[int(match.group(1))] = without_clock(line)
    return result


def assert_logged_losses(done: subprocess.CompletedProcess, expected: Sequence[float], rel: float = 1e-5) -> None:
    """The run succeeded and its "lm loss" lines are `expected` (iterations 1, 2, ...) within `rel`."""
    assert done.returncode == 0, failure_report(done)
    losses = {step: values["lm loss"] for step, values in logged_losses(done.stdout).items()}
    assert sorted(losses) == list(range(1, len(expected) + 1)), failure_report(done)
    for step, want in enumerate(expected, 1):
        assert abs(losses[step] - want) <= rel * abs(want), (step, losses, list(expected))


def logged_validations(stdout: str) -> List[str]:
    return [line.strip() for line in stdout.splitlines() if "validation loss at iteration" in line]


# --- flags of tiny runs -----------------------------------------------------------------------------

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


def corpus_flags(directory: str, sentences: bool = False) -> List[str]:
    """The data flags of a small preprocessed corpus in `directory` (built on first use): one document
    per paragraph with EOD (GPT, Transformer-XL), or sentence-split (BERT, T5), BERT's Chinese vocabulary,
    a 90/10 train/validation split."""
    name = "zh_sentences" if sentences else "zh_documents"
    prefix = os.path.join(directory, f"{name}_text_{'sentence' if sentences else 'document'}")
    if not os.path.exists(prefix + ".idx"):
        preprocess_zh_news(directory, split_sentences=sentences, name=name)
    return ["--data-path", prefix, "--data-cache-path", os.path.join(directory, "cache"), "--split", "90,10,0",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB, "--num-workers", "0"]


def plain_gpt_reference(flags: List[str], timeout: float = 300) -> dict:
    """plain_gpt_loop's {"losses", "grad_norms", ...} for the same flags, in a fresh process."""
    done = subprocess.run([sys.executable, "-m", "tests.harness.plain_gpt_loop", *flags],
                          capture_output=True, text=True, env=clean_env(), timeout=timeout, cwd=ROOT)
    if done.returncode != 0:
        raise AssertionError("plain_gpt_loop failed:\n" + failure_report(done))
    return json.loads(done.stdout.strip().splitlines()[-1])
