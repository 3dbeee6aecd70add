#!/usr/bin/env python
"""Answer source/target JSON lines with a finetuned T5 checkpoint and score the answers.

    python tools/predict_t5.py --load t5_summaries/ --predict-data test.jsonl --predict-output predictions.jsonl
    torchrun --nproc-per-node 2 tools/predict_t5.py --load t5_summaries/ --predict-data test.jsonl \\
        --predict-output predictions.jsonl --tensor-model-parallel-size 2

Each line's source (--source-key, default the checkpoint's or "source") is answered
greedily, or with --beam-size N > 1 by beam search (the best of N beams, scored by the
summed log-probability / length ** --length-penalty; inference/beam_search.py), up to
--max-target-length tokens (default the checkpoint's --decoder-seq-length);
--predict-output gets {"source", "prediction", "target"} lines ("target" where the line
has one). With targets, exact match and character-level ROUGE-L F1
(tasks/generation_metrics.py) are printed as one JSON line and written to
--metrics-output (default: the predictions' name with .metrics.json). The checkpoint
loads at any TP x PP, as tools/generate_text.py's (its tokenizer unless overridden).
"""
import argparse
import json
import os

from megatron_core.atomic_files import write_atomically
from megatron_core.cli import run
from megatron_core.data.seq2seq_dataset import read_source_target_lines
from megatron_core.errors import ConfigError
from megatron_core.inference.beam_search import BeamSettings
from megatron_core.inference.tool_setup import add_checkpoint_arguments, is_first_rank, load_text_generator
from megatron_core.tasks.generation_metrics import corpus_scores
from megatron_core.tasks.t5_predictions import checkpoint_lengths, predict_targets, write_predictions


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p)
    p.add_argument("--predict-data", required=True, help="JSON lines with a source (and a target to score against)")
    p.add_argument("--predict-output", required=True, help="the predictions, one JSON line per input line")
    p.add_argument("--metrics-output", default=None, help="default: --predict-output's name with .metrics.json")
    p.add_argument("--max-target-length", type=int, default=None, help="most tokens per answer")
    p.add_argument("--source-key", default=None)
    p.add_argument("--target-key", default=None)
    p.add_argument("--batch-size", type=int, default=16, help="sources answered together")
    p.add_argument("--beam-size", type=int, default=1, help="beams per source (1: greedy decoding)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam score = summed log-probability / length ** this (0: the plain sum)")
    args = p.parse_args(argv)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    args.beams = BeamSettings(args.beam_size, args.length_penalty)
    if args.metrics_output is None:
        args.metrics_output = os.path.splitext(args.predict_output)[0] + ".metrics.json"
    return args


def main(argv=None):
    args = parse_args(argv)
    generator = load_text_generator(args)        # the world, the checkpoint at its layout, its tokenizer
    loaded, tokenizer = generator.loaded, generator.tokenizer
    lengths = checkpoint_lengths(loaded, args.max_target_length)
    source_key = args.source_key or loaded.args.get("source_key") or "source"
    target_key = args.target_key or loaded.args.get("target_key") or "target"
    pairs = read_source_target_lines(args.predict_data, source_key, target_key, require_target=False)
    predictions = predict_targets(loaded, tokenizer, [p.source for p in pairs], lengths, args.batch_size,
                                  args.beams)
    if not is_first_rank():
        return 0
    write_predictions(args.predict_output, pairs, predictions)
    print(f"wrote {len(predictions)} predictions to {args.predict_output}", flush=True)
    scored = [(prediction, p.target) for p, prediction in zip(pairs, predictions) if p.target is not None]
    if scored:
        line = json.dumps(corpus_scores(scored))
        write_atomically(args.metrics_output, lambda f, _tmp: f.write((line + "\n").encode("utf-8")))
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    run(main)
