"""The reference the training loop is checked against: a plain PyTorch loop over the same GPT.

    python -m tests.harness.plain_gpt_loop <pretrain_gpt.py flags>   # prints one JSON line

One process, no pipeline schedule, no backend, no lr schedule object: the serial model
(GPTModel at TP=1), the same train split as pretrain_gpt.py, global batch k = samples
k*G .. (k+1)*G - 1 in micro-batches of --micro-batch-size (gradients accumulated), the
mean token loss, backward, torch's clip_grad_norm_, torch.optim.AdamW with weight decay
on matrices only. It supports what it needs to: fp32, no dropout, a constant learning
rate. Output: {"losses": [per step], "grad_norms": [per step, before clipping],
"tokens_per_second": [per --log-interval window]}.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from megatron_core import mpu
from megatron_core.data.builder import build_train_valid_test_datasets
from megatron_core.data.tokenizers import build_tokenizer_from_args
from megatron_core.models.gpt import GPTModel
from megatron_core.mpu.layout import pad_vocab_size
from megatron_core.training.arguments import parse_args, transformer_config_from_args, validate
from .distributed import find_free_port


def _check_supported(args) -> None:
    unsupported = []
    if args.fp16 or args.bf16:
        unsupported.append("--fp16/--bf16")
    if args.hidden_dropout or args.attention_dropout:
        unsupported.append("dropout (set --hidden-dropout 0 --attention-dropout 0)")
    if args.lr_decay_style != "constant" or args.lr_warmup_iters or args.lr_warmup_fraction:
        unsupported.append("an lr schedule (use --lr-decay-style constant, no warmup)")
    if args.optimizer != "adam":
        unsupported.append("--optimizer sgd")
    if unsupported:
        raise SystemExit(f"plain_gpt_loop does not model {', '.join(unsupported)}.")


def train(argv) -> dict:
    args = validate(parse_args(argv), world_size=1)
    _check_supported(args)
    config = transformer_config_from_args(args)
    vocab = pad_vocab_size(build_tokenizer_from_args(args).vocab_size, args.make_vocab_size_divisible_by, 1)
    model = GPTModel(config, vocab, args.max_position_embeddings)

    gbs, iters = args.global_batch_size, args.train_iters
    evaluations = iters // args.eval_interval + 1
    train_ds, _, _ = build_train_valid_test_datasets(
        args.data_path, args.split, [iters * gbs, evaluations * args.eval_iters * gbs, args.eval_iters * gbs],
        args.seq_length, args.seed, args.data_cache_path)

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
         {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}],
        lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps)

    losses, grad_norms, rates = [], [], []
    window_start, window_tokens = time.perf_counter(), 0
    for step in range(iters):
        text = torch.from_numpy(np.stack([train_ds[i]["text"] for i in range(step * gbs, (step + 1) * gbs)]))
        optimizer.zero_grad(set_to_none=True)
        loss = 0.0
        # Gradient accumulation over micro-batches of equal size: the mean of their means.
        micro_batches = text.split(args.micro_batch_size)
        for micro in micro_batches:
            micro_loss = model(micro[:, :-1], labels=micro[:, 1:]).float().mean() / len(micro_batches)
            micro_loss.backward()
            loss += micro_loss.item()
        # max_norm inf measures without clipping.
        norm = torch.nn.utils.clip_grad_norm_(params, args.clip_grad if args.clip_grad > 0 else float("inf"))
        grad_norms.append(norm.item())
        optimizer.step()
        losses.append(loss)
        window_tokens += gbs * args.seq_length
        if (step + 1) % args.log_interval == 0:
            rates.append(window_tokens / (time.perf_counter() - window_start))
            window_start, window_tokens = time.perf_counter(), 0
    return {"losses": losses, "grad_norms": grad_norms, "tokens_per_second": rates}


def main(argv=None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(find_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        mpu.initialize_model_parallel(1, 1)
        args_seed = parse_args(argv if argv is not None else sys.argv[1:]).seed
        mpu.model_parallel_manual_seed(args_seed)
        print(json.dumps(train(argv if argv is not None else sys.argv[1:])), flush=True)
    finally:
        mpu.destroy_model_parallel()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
