#!/usr/bin/env python
"""Finetuning examples/s of finetune_classification.py against a plain transformers loop; prints JSON.

    python -m bench.finetune [--rounds 5] [--iters 60] [--log-interval 10]

1. Writes the shuffled-sentence task (megatron_core/tasks/learnable_task.py) from the demo
   corpus and a random BertForSequenceClassification (4 layers, hidden 256, 4 heads, the
   BERT Chinese vocabulary), imported with convert_checkpoint --from-hf.
2. Each round runs, one after the other (which goes first alternates):
   * ours:  `python finetune_classification.py --task jsonl ... --pretrained-checkpoint`
     (one process, CPU) as a user runs it; its rate per --log-interval window is
     global batch / "elapsed time per iteration" of its log lines;
   * plain: `python -m bench.finetune --plain ...`: transformers' model of the same weights,
     AdamW, the same batch size and sequence length, tokenized by transformers' BertTokenizer,
     in a bare `for` loop timed over the same windows.
   Dropout 0.1 in both (transformers' default). The first window of each run is warm-up and
   left out; a run's rate is the median of the rest. ratio = ours / plain per round;
   reported: the median of the paired ratios (goal >= 1.0).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from megatron_core.cli import run as run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = os.path.join(ROOT, "tests", "data", "vocab", "bert-base-chinese-vocab.txt")
ELAPSED = re.compile(r"elapsed time per iteration \(ms\): ([0-9.]+) \|")
LAYERS, HIDDEN, HEADS, FFN, SEQ, BATCH, LR = 4, 256, 4, 1024, 64, 16, 1e-4


def _run(command, env):
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed:\n{done.stderr[-3000:]}{done.stdout[-2000:]}")
    return done.stdout


def ours_rate(work, iters, log_interval, env) -> float:
    argv = ["--task", "jsonl", "--text-key", "text", "--label-key", "label",
            "--train-data", os.path.join(work, "task", "train.jsonl"), "--epochs", "1",
            "--pretrained-checkpoint", os.path.join(work, "ours"),
            "--num-layers", str(LAYERS), "--hidden-size", str(HIDDEN), "--num-attention-heads", str(HEADS),
            "--ffn-hidden-size", str(FFN), "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ),
            "--layernorm-position", "post", "--norm-epsilon", "1e-12", "--micro-batch-size", str(BATCH), "--global-batch-size", str(BATCH),
            "--lr", str(LR), "--lr-decay-style", "constant", "--weight-decay", "0.01",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB,
            "--log-interval", str(log_interval), "--eval-interval", str(10 * iters)]
    out = _run([sys.executable, os.path.join(ROOT, "finetune_classification.py"), *argv], env)
    per_window = [BATCH * 1000.0 / float(ms) for ms in ELAPSED.findall(out)]
    return statistics.median(per_window[1:])


def plain_rate(work, iters, log_interval, env) -> float:
    out = _run([sys.executable, "-m", "bench.finetune", "--plain", "--work", work, "--iters", str(iters),
                "--log-interval", str(log_interval)], env)
    return statistics.median(json.loads(out.strip().splitlines()[-1])["examples_per_second"][1:])


def plain_loop(work, iters, log_interval) -> None:
    """The transformers loop (in its own process, as ours runs in its own)."""
    import torch
    import transformers

    rows = [json.loads(line) for line in open(os.path.join(work, "task", "train.jsonl"), encoding="utf-8")]
    tokenizer = transformers.BertTokenizer(VOCAB)
    model = transformers.BertForSequenceClassification.from_pretrained(os.path.join(work, "hf"))
    model.train()
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias") and "LayerNorm" not in n]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                                  lr=LR)
    rates, start = [], time.perf_counter()
    for step in range(iters):
        batch = [rows[(step * BATCH + i) % len(rows)] for i in range(BATCH)]
        encoded = tokenizer([r["text"] for r in batch], truncation=True, max_length=SEQ, padding="max_length",
                            return_tensors="pt")
        loss = model(**encoded, labels=torch.tensor([int(r["label"]) for r in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % log_interval == 0:
            now = time.perf_counter()
            rates.append(log_interval * BATCH / (now - start))
            start = now
    print(json.dumps({"examples_per_second": rates}))


def prepare(work, env, iters) -> None:
    """The task (exactly `iters` batches: one epoch is the run) and the model, both sides'."""
    import torch
    import transformers

    from megatron_core.tasks.learnable_task import DEMO_CORPUS, write_shuffled_sentence_task

    write_shuffled_sentence_task(os.path.join(work, "task"), iters * BATCH, 200, seed=1, corpus=DEMO_CORPUS)
    config = transformers.BertConfig(vocab_size=21128, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=FFN, max_position_embeddings=SEQ,
                                     id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(os.path.join(work, "hf"))
    _run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), "--from-hf", os.path.join(work, "hf"),
          "--output", os.path.join(work, "ours")], env)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--log-interval", type=int, default=10)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.plain:
        plain_loop(args.work, args.iters, args.log_interval)
        return
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["PYTHONPATH"] = ROOT
    with tempfile.TemporaryDirectory() as work:
        prepare(work, env, args.iters)
        rounds = []
        for r in range(args.rounds):
            if r % 2 == 0:
                ours, plain = ours_rate(work, args.iters, args.log_interval, env), \
                    plain_rate(work, args.iters, args.log_interval, env)
            else:
                plain = plain_rate(work, args.iters, args.log_interval, env)
                ours = ours_rate(work, args.iters, args.log_interval, env)
            rounds.append({"ours_examples_per_s": round(ours, 2), "plain_examples_per_s": round(plain, 2),
                           "ratio": round(ours / plain, 4)})
    print(json.dumps({"model": f"BERT classifier {LAYERS} layers, hidden {HIDDEN}, {HEADS} heads, seq {SEQ}, "
                               f"vocab 21,128, batch {BATCH}, fp32, CPU, 1 process, dropout 0.1",
                      "iters_per_run": args.iters, "rounds": rounds,
                      "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 4)}, indent=1))


if __name__ == "__main__":
    run_cli(main)
