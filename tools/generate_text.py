#!/usr/bin/env python
"""Generate text from a training checkpoint (GPT, Llama-style, RoFormer LM mode, T5,
Transformer-XL), or fill in [MASK] tokens (BERT, MegatronBERT, RoFormer).

    python tools/generate_text.py --load ckpt/ --prompt "清华大学位于" --top-p 0.9 --out-seq-length 64
    python tools/generate_text.py --load ckpt/ --input-file prompts.txt --greedy > outputs.jsonl
    python tools/generate_text.py --load ckpt/                 # interactive, when stdin is a terminal
    torchrun --nproc-per-node 2 tools/generate_text.py --load ckpt_tp2/ --prompt "..."   # TP x PP ranks
    python tools/generate_text.py --load bert_ckpt/ --fill-mask --prompt "北京是中国的[MASK]都。"

--prompt prints the prompt and then the new text as it is produced. --input-file takes
one prompt a line and writes one JSON line per prompt to stdout:
{"prompt": ..., "text": <the new text>, "tokens": [<the new token ids>]}. Interactively
each line is a prompt, an empty line or end of input (Ctrl-D) ends the session; a
Transformer-XL model continues from the memory of the previous turns ("/reset" forgets
them). The checkpoint runs at its own TP x PP size on that many
processes, or merged on one process. Sampling: --temperature, --top-k, --top-p,
--repetition-penalty, --seed; --greedy for argmax decoding. Generation stops at the
tokenizer's end-of-document token or after --out-seq-length tokens.
"""
import argparse
import json
import sys

from megatron_core.cli import run
from megatron_core.errors import ConfigError
from megatron_core.inference.tool_setup import (add_checkpoint_arguments, add_sampling_arguments, is_first_rank,
                                                load_text_generator, sampling_params, share_from_first_rank,
                                                start_world)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_checkpoint_arguments(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", default=None, help="one prompt; the output is printed as it is produced")
    source.add_argument("--input-file", default=None, help="one prompt a line; JSON lines on stdout")
    p.add_argument("--out-seq-length", type=int, default=64, help="the most tokens to generate per prompt")
    p.add_argument("--batch-size", type=int, default=8, help="prompts of --input-file generated together")
    p.add_argument("--fill-mask", action="store_true",
                   help="BERT / RoFormer: print the --top-k (default 5) candidates of every [MASK]")
    add_sampling_arguments(p)
    args = p.parse_args(argv)
    if args.out_seq_length < 1:
        raise ConfigError(f"--out-seq-length must be at least 1, got {args.out_seq_length}.")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}.")
    return args


class StreamPrinter:
    """Prints row 0's new text as tokens arrive (rank 0). The prompt and the tokens so far are
    decoded together (so the tokenizer places the space at the seam, or none between Chinese
    characters), and what follows the decoded prompt, minus what is already shown, is printed."""

    def __init__(self, generator, prompt_tokens):
        self.generator, self.prompt_tokens, self.tokens = generator, list(prompt_tokens), []
        self.prefix = generator.detokenize(self.prompt_tokens)
        self.shown = ""

    def __call__(self, step, new_tokens, finished):
        if not self.tokens or self.tokens[-1] != self.generator.eos_id:
            self.tokens.append(new_tokens[0])
        text = self.generator.detokenize(self.prompt_tokens + self.tokens)
        text = text[len(self.prefix):] if text.startswith(self.prefix) else self.generator.detokenize(self.tokens)
        if text.startswith(self.shown):
            print(text[len(self.shown):], end="", flush=True)
            self.shown = text


def read_prompts(path):
    with open(path, encoding="utf-8") as f:
        prompts = [line.rstrip("\n") for line in f]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ConfigError(f"--input-file {path} holds no prompt; write one prompt a line.")
    return prompts


def print_fill_mask(generator, texts, top_k):
    for text, masks in zip(texts, generator.fill_mask(texts, top_k)):
        print(text)
        for index, options in enumerate(masks, 1):
            listed = "  ".join(f"{generator.tokenizer.detokenize([t])} {p:.3f}" for t, p in options)
            print(f"  [MASK] {index}: {listed}")


def generate_one(generator, args, params, prompt):
    first = is_first_rank()
    if args.fill_mask:
        if first:
            print_fill_mask(generator, [prompt], args.top_k or 5)
        else:
            generator.fill_mask([prompt], args.top_k or 5)
        return
    if first:
        print(prompt, end="", flush=True)
    printer = StreamPrinter(generator, generator.tokenize(prompt)) if first else None
    generator.generate([prompt], args.out_seq_length, params, on_step=printer)
    if first:
        print(flush=True)


def run_file(generator, args, params):
    prompts = read_prompts(args.input_file)
    if args.fill_mask:
        results = generator.fill_mask(prompts, args.top_k or 5)
        for prompt, masks in zip(prompts, results):
            if is_first_rank():
                candidates = [[{"token": generator.tokenizer.detokenize([t]), "id": t, "probability": p}
                               for t, p in options] for options in masks]
                print(json.dumps({"prompt": prompt, "masks": candidates}, ensure_ascii=False), flush=True)
        return
    for start in range(0, len(prompts), args.batch_size):
        for item in generator.generate(prompts[start:start + args.batch_size], args.out_seq_length, params):
            if is_first_rank():
                print(json.dumps({"prompt": item.prompt, "text": item.text, "tokens": item.tokens},
                                 ensure_ascii=False), flush=True)


def run_interactive(generator, args, params):
    while True:
        line = None
        if is_first_rank():
            try:
                line = input("you> " if generator.converses else "prompt> ")
            except EOFError:
                line = None
        line = share_from_first_rank(line)
        if line is None or not line.strip():      # end of input (Ctrl-D) or an empty line ends the session
            return
        if line.strip() == "/reset":
            generator.reset()
            continue
        generate_one(generator, args, params, line)


def main(argv=None):
    args = parse_args(argv)
    params = sampling_params(args)
    interactive = args.prompt is None and args.input_file is None
    start_world()
    if interactive and not share_from_first_rank(sys.stdin.isatty()):
        raise ConfigError("no prompt: give --prompt TEXT or --input-file FILE (interactive mode needs stdin to be "
                          "a terminal).")
    generator = load_text_generator(args, keep_memory=interactive)
    if args.prompt is not None:
        generate_one(generator, args, params, args.prompt)
    elif args.input_file is not None:
        run_file(generator, args, params)
    else:
        run_interactive(generator, args, params)
    return 0


if __name__ == "__main__":
    run(main)
