#!/usr/bin/env python
"""Peak memory of tools/preprocess_data.py as the input grows; prints JSON.

    python -m bench.preprocess_memory [--input /work/shared/data/zh_news_1998.jsonl] [--sizes 1 4 16] [--workers 2]

For each size k the input is repeated k times in a temporary directory and the tool is
run on it (BERT Chinese vocab, --workers N). Two numbers per run:

* max_process_rss_mib: the largest peak RSS of any one process of the tool (main or
  worker), from the kernel's rusage of the finished process tree (os.wait4);
* peak_total_rss_mib: the largest sum of RSS over the tool and all its workers, sampled
  from /proc every 50 ms while it runs.

A streaming tool keeps both flat while the input grows 16x; one that reads the whole
input (or keeps the tokens) in memory grows with it.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

from bench.preprocess import DEFAULT_INPUT, TOKENIZER, TOOL, VOCAB, repeat_file
from megatron_core.cli import run

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def tree_rss(pid: int) -> int:
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += _rss(p)
        stack.extend(_children(p))
    return total


def measure(path: str, out_dir: str, workers: int) -> dict:
    prefix = os.path.join(out_dir, "mem")
    cmd = [sys.executable, TOOL, "--input", path, "--output-prefix", prefix,
           "--tokenizer-type", TOKENIZER, "--vocab-file", VOCAB, "--workers", str(workers),
           "--log-interval", "0"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stderr = proc.stderr.read()
    # wait4 on this one child: its rusage covers it and every worker it reaped.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"preprocess_data.py failed:\n{stderr.decode(errors='replace')}")
    out_mb = sum(os.path.getsize(f"{prefix}_text_document{e}") for e in (".bin", ".idx")) / 1e6
    for ext in (".bin", ".idx"):
        os.remove(f"{prefix}_text_document{ext}")
    return {"input_mb": round(os.path.getsize(path) / 1e6, 1), "output_mb": round(out_mb, 1),
            "wall_s": round(elapsed, 2),
            "max_process_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
            "peak_total_rss_mib": round(peak[0] / 2**20, 1)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", default=DEFAULT_INPUT)
    p.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in args.sizes:
            path = os.path.join(tmp, f"corpus_x{k}.jsonl")
            repeat_file(args.input, k, path)
            runs[f"x{k}"] = measure(path, tmp, args.workers)
            os.remove(path)
    peaks = [r["peak_total_rss_mib"] for r in runs.values()]
    print(json.dumps({
        "bench": "preprocess_data_memory", "input": os.path.basename(args.input),
        "tokenizer": TOKENIZER, "workers": args.workers, "runs": runs,
        "largest_over_smallest_peak_total_rss": round(max(peaks) / min(peaks), 3),
    }, indent=2))


if __name__ == "__main__":
    run(main)
