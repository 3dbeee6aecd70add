#!/usr/bin/env python
"""Zero-shot evaluation of a checkpoint (Megatron-LM's tasks/zeroshot_gpt), docs/evaluation.md.

    python tools/evaluate.py --task ppl --load ckpt/ --valid-data wiki.test.txt --overlapping-eval 32
    python tools/evaluate.py --task lambada --load ckpt/ --valid-data lambada_test.jsonl
    python tools/evaluate.py --task mlm-ppl --load bert_ckpt/ --valid-data news.jsonl --seq-length 128
    python tools/evaluate.py --task chid --load bert_ckpt/ --valid-data chid/dev.json --seq-length 128
    torchrun --nproc-per-node 2 tools/evaluate.py --task ppl --load ckpt/ --valid-data wiki.test.txt \\
        --tensor-model-parallel-size 2

--task ppl: the whole text (a plain file, or the --text-key texts of a JSON-lines file
joined by newlines) as one token stream, in windows of --seq-length; token-level
perplexity and Megatron's word-level "adjusted" perplexity. GPT / Llama-style: with
--overlapping-eval N the windows advance by N tokens and only the last N of each are
scored. Transformer-XL: the windows are read in order, each attending to the memory of
the ones before (--mem-length, default the checkpoint's; 0: none).
--task lambada: JSON lines; strict last-word accuracy and Megatron's last-token accuracy.
--task mlm-ppl: BERT / RoFormer pseudo-perplexity (each token masked in turn).
--task chid: FewCLUE CHID lines, zero-shot: each candidate idiom scored in the blank by the
masked LM; accuracy and every line's choice.
The metrics are printed as one JSON line (rank 0) and written to --output.
"""
import argparse
import json

from megatron_core.atomic_files import write_atomically
from megatron_core.cli import run
from megatron_core.inference.tool_setup import add_checkpoint_arguments, is_first_rank, load_model_and_tokenizer
from megatron_core.tasks.multiple_choice import chid_items
from megatron_core.tasks.zeroshot import TASKS, ZeroShotOptions, evaluate_zeroshot
from megatron_core.tasks.zeroshot.inputs import WORD_COUNTS, read_texts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--valid-data", required=True, help="a text file, or JSON lines (LAMBADA: JSON lines)")
    p.add_argument("--text-key", default="text", help="the key of the text in each JSON line")
    p.add_argument("--seq-length", type=int, default=None, help="tokens per window (default: the checkpoint's)")
    p.add_argument("--overlapping-eval", type=int, default=None,
                   help="ppl, GPT: windows advance by N tokens and score their last N")
    p.add_argument("--mem-length", type=int, default=None, help="ppl, Transformer-XL: memory positions (0: none)")
    p.add_argument("--micro-batch-size", type=int, default=8)
    p.add_argument("--word-count", default="auto", choices=WORD_COUNTS,
                   help="what counts as a word for the adjusted perplexity (auto: CJK characters for Chinese)")
    p.add_argument("--log-interval", type=int, default=10, help="a progress line every N batches")
    p.add_argument("--output", default=None, help="also write the metrics to this JSON file")
    add_checkpoint_arguments(p)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    # a bad file is one sentence before the model loads
    texts = read_texts(args.valid_data, args.text_key) if args.task != "chid" else chid_items(args.valid_data)[0]
    loaded, tokenizer = load_model_and_tokenizer(args)
    options = ZeroShotOptions(task=args.task, valid_data=args.valid_data, text_key=args.text_key,
                              seq_length=args.seq_length, overlapping_eval=args.overlapping_eval,
                              micro_batch_size=args.micro_batch_size, mem_length=args.mem_length,
                              word_count=args.word_count, log_interval=args.log_interval)
    metrics = evaluate_zeroshot(loaded, tokenizer, options, texts if args.task != "chid" else None)
    if is_first_rank():
        line = json.dumps(metrics, ensure_ascii=False)
        print(line, flush=True)
        if args.output:
            write_atomically(args.output, lambda f, _: f.write((line + "\n").encode("utf-8")))
    return 0


if __name__ == "__main__":
    run(main)
