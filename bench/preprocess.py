#!/usr/bin/env python
"""How close tools/preprocess_data.py comes to the speed of its tokenizer; prints JSON.

    python -m bench.preprocess [--input /work/shared/data/zh_news_1998.jsonl] [--repeat 4] [--workers 2]

1. Builds the input repeated `--repeat` times in a temporary directory.
2. tool_time: wall time of `tools/preprocess_data.py --workers N` on it (BERT Chinese
   vocab, BertWordPieceLowerCase), as a user would run it: interpreter start, reading,
   JSON parsing, tokenizing, writing .bin/.idx, renaming.
3. limit_time: in the same run, the time N processes need to tokenize the same texts
   when they are already decoded and in memory: each process takes an equal share and
   encodes it with the same tokenizer call the tool uses (`tokenize_batch`, in batches
   of the tool's size); the limit is
   from the first process starting to the last one finishing (tokenizer construction
   and process start-up are not counted).
4. ratio = limit_time / tool_time (1.0 means the tool adds nothing to tokenizing; the
   goal is >= 0.8). The two are measured alternately `--rounds` times and the best of
   each is reported, since the machine may be shared. On a busy machine wall times are
   noisy, so the CPU seconds of both (all processes) and their ratio are printed too.
"""
import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from megatron_core.cli import run
from megatron_core.data.preprocess_workers import BATCH_LINES  # the tool's batch size

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_INPUT = "/work/shared/data/zh_news_1998.jsonl"
VOCAB = os.path.join(ROOT, "tests", "data", "vocab", "bert-base-chinese-vocab.txt")
TOOL = os.path.join(ROOT, "tools", "preprocess_data.py")
TOKENIZER = "BertWordPieceLowerCase"


def repeat_file(src: str, times: int, dst: str) -> None:
    with open(src, "rb") as f:
        data = f.read()
    if not data.endswith(b"\n"):
        data += b"\n"
    with open(dst, "wb") as out:
        for _ in range(times):
            out.write(data)


def run_tool(path: str, out_dir: str, workers: int):
    """(wall seconds, CPU seconds of the tool and all its workers, stderr)."""
    prefix = os.path.join(out_dir, "bench")
    cmd = [sys.executable, TOOL, "--input", path, "--output-prefix", prefix,
           "--tokenizer-type", TOKENIZER, "--vocab-file", VOCAB, "--workers", str(workers),
           "--log-interval", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of the tool and the workers it reaped
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"preprocess_data.py failed:\n{stderr}")
    for ext in (".bin", ".idx"):
        os.remove(f"{prefix}_text_document{ext}")
    return elapsed, usage.ru_utime + usage.ru_stime, stderr


# --- the limit: N processes, each encoding its share of already-decoded texts ----------

_texts = []


def _encode_share(args):
    share, parts, barrier, batch = args
    from megatron_core.data.tokenizers import build_tokenizer

    tokenizer = build_tokenizer(TOKENIZER, vocab_file=VOCAB)
    mine = _texts[share::parts]
    barrier.wait()  # every process has its tokenizer: start together
    start, cpu = time.time(), time.process_time()
    tokens = 0
    for i in range(0, len(mine), batch):
        tokens += sum(map(len, tokenizer.tokenize_batch(mine[i:i + batch])))
    return start, time.time(), tokens, time.process_time() - cpu


def tokenizer_limit(workers: int, batch: int = BATCH_LINES):
    ctx = multiprocessing.get_context("fork")  # children share the decoded texts
    with ctx.Manager() as manager:
        barrier = manager.Barrier(workers)
        with ctx.Pool(workers) as pool:
            results = pool.map(_encode_share, [(k, workers, barrier, batch) for k in range(workers)])
    wall = max(r[1] for r in results) - min(r[0] for r in results)
    return wall, sum(r[3] for r in results), sum(r[2] for r in results)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=DEFAULT_INPUT)
    p.add_argument("--repeat", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"corpus_x{args.repeat}.jsonl")
        repeat_file(args.input, args.repeat, path)
        with open(path, encoding="utf-8") as f:
            _texts.extend(json.loads(line)["text"] for line in f if line.strip())
        tool_times, limit_times, tool_cpu, limit_cpu, tokens = [], [], [], [], 0
        for _ in range(args.rounds):
            limit, cpu, tokens = tokenizer_limit(args.workers)
            limit_times.append(limit)
            limit_cpu.append(cpu)
            tool, cpu, _ = run_tool(path, tmp, args.workers)
            tool_times.append(tool)
            tool_cpu.append(cpu)
        size = os.path.getsize(path)

    tool_time, limit_time = min(tool_times), min(limit_times)
    median = lambda xs: float(np.median(xs))  # noqa: E731
    print(json.dumps({
        "bench": "preprocess_data",
        "input": os.path.basename(args.input), "repeat": args.repeat,
        "input_mb": round(size / 1e6, 2), "documents": len(_texts), "tokens": tokens,
        "tokenizer": TOKENIZER, "workers": args.workers,
        "tool_time_s": round(tool_time, 3), "limit_time_s": round(limit_time, 3),
        "ratio": round(limit_time / tool_time, 3), "goal": 0.8,
        "ratio_of_medians": round(median(limit_times) / median(tool_times), 3),
        "tool_mb_per_s": round(size / 1e6 / tool_time, 2),
        # CPU seconds barely depend on what else runs on the machine: the same
        # comparison, robust to a shared CPU (tool: start-up, workers and all).
        "tool_cpu_s": round(min(tool_cpu), 3), "limit_cpu_s": round(min(limit_cpu), 3),
        "cpu_ratio": round(min(limit_cpu) / min(tool_cpu), 3),
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "tool_times_s": [round(t, 3) for t in tool_times],
        "limit_times_s": [round(t, 3) for t in limit_times],
    }, indent=2))


if __name__ == "__main__":
    run(main)
