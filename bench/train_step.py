#!/usr/bin/env python
"""Tokens/s of the full training loop against a plain PyTorch loop of the same model; prints JSON.

    python -m bench.train_step [--rounds 5] [--iters 40] [--log-interval 10]

1. Tokenizes the 200-line Chinese news slice of tests/data in a temporary directory.
2. Each round runs, one after the other (which goes first alternates):
   * loop:  `python pretrain_gpt.py ...` (one process, TP=PP=DP=1, CPU), as a user runs it
     (lr schedule object, pipeline schedule, backend, log lines); its rate is the
     "tokens per second" of its log lines;
   * plain: `python -m tests.harness.plain_gpt_loop ...` with the same flags: the
     same GPTModel, data and AdamW, in a bare `for` loop; its rate per --log-interval
     window measured the same way.
   The first window of each is warm-up and left out; a run's rate is the median of the
   rest. ratio = loop / plain per round; reported: the median of the paired ratios
   (goal >= 0.95). Both run with the same thread count in the same environment.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

from megatron_core.cli import run as run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
VOCAB = os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt")
RATE = re.compile(r"tokens per second: ([0-9.]+) \|")


def flags(prefix, cache, iters, log_interval):
    return ["--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "64",
            "--micro-batch-size", "8", "--global-batch-size", "16", "--train-iters", str(iters),
            "--lr", "1e-3", "--lr-decay-style", "constant", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--log-interval", str(log_interval), "--eval-interval", str(iters), "--eval-iters", "1",
            "--split", "90,10,0", "--data-path", prefix, "--data-cache-path", cache, "--num-workers", "0",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB]


def run_command(command, env):
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def loop_rate(argv, env):
    rates = [float(r) for r in RATE.findall(run_command([sys.executable, os.path.join(ROOT, "pretrain_gpt.py"), *argv], env))]
    return statistics.median(rates[1:])


def plain_rate(argv, env):
    out = run_command([sys.executable, "-m", "tests.harness.plain_gpt_loop", *argv], env)
    return statistics.median(json.loads(out.strip().splitlines()[-1])["tokens_per_second"][1:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--log-interval", type=int, default=10)
    args = parser.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = ROOT
    with tempfile.TemporaryDirectory() as tmp:
        run_command([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input",
             os.path.join(DATA, "zh_news_200.jsonl"), "--output-prefix", os.path.join(tmp, "zh"),
             "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB, "--append-eod",
             "--log-interval", "0"], env)
        argv = flags(os.path.join(tmp, "zh_text_document"), os.path.join(tmp, "cache"), args.iters,
                     args.log_interval)
        rounds = []
        for r in range(args.rounds):
            if r % 2 == 0:
                loop, plain = loop_rate(argv, env), plain_rate(argv, env)
            else:
                plain, loop = plain_rate(argv, env), loop_rate(argv, env)
            rounds.append({"loop_tokens_per_s": round(loop, 1), "plain_tokens_per_s": round(plain, 1),
                           "ratio": round(loop / plain, 4)})
    print(json.dumps({"model": "GPT 4 layers, hidden 128, 4 heads, seq 64, vocab 21,248 (BERT Chinese), "
                               "global batch 16 = 2 micro-batches of 8, fp32, CPU, 1 process",
                      "iters_per_run": args.iters, "rounds": rounds,
                      "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 4)}, indent=1))


if __name__ == "__main__":
    run_cli(main)
