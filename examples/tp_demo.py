"""Tensor-parallel demo: a small next-token model trained on the bundled Chinese news slice.

    torchrun --nproc_per_node 2 examples/tp_demo.py

Every piece is tensor-parallel: a VocabParallelEmbedding, a column->row parallel MLP, a
vocabulary-parallel output layer and vocab_parallel_cross_entropy. Each rank holds half
of every weight; the loss printed is the loss of the whole (serial) model. Runs on CPU
(gloo) or GPU (nccl). It stands in for the pretraining run until the training loop lands.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_core import mpu
from megatron_core.cli import run

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "tests", "data")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensor-model-parallel-size", type=int, default=None,
                        help="default: all launched processes")
    parser.add_argument("--corpus", default=os.path.join(DATA, "zh_news_200.jsonl"))
    parser.add_argument("--vocab-file", default=os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt"))
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--context", type=int, default=4, help="previous tokens the model sees")
    parser.add_argument("--micro-batch-size", type=int, default=256)
    parser.add_argument("--train-iters", type=int, default=300)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip-grad", type=float, default=1.0)
    parser.add_argument("--log-interval", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1234)
    return parser.parse_args(argv)


def load_token_ids(corpus: str, vocab_file: str) -> torch.Tensor:
    """Character-level ids in the BERT Chinese vocabulary (one id per CJK character)."""
    with open(vocab_file, encoding="utf-8") as handle:
        vocab = {token: i for i, token in enumerate(handle.read().split("\n")) if token}
    unk, sep = vocab["[UNK]"], vocab["[SEP]"]
    ids = []
    with open(corpus, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError) as error:
                raise SystemExit(f"{corpus}, line {line_number}: not a JSON object with a 'text' key ({error}).")
            ids.extend(vocab.get(ch, unk) for ch in text)
            ids.append(sep)
    return torch.tensor(ids, dtype=torch.long), len(vocab)


class TensorParallelContextLM(torch.nn.Module):
    def __init__(self, vocab_size: int, hidden: int, context: int):
        super().__init__()
        self.context = context
        self.embedding = mpu.VocabParallelEmbedding(vocab_size, hidden, init_method=mpu.init_method_normal(0.02))
        self.position_mix = torch.nn.Parameter(torch.ones(context) / context)
        self.fc1 = mpu.ColumnParallelLinear(hidden, 4 * hidden, gather_output=False,
                                            init_method=mpu.init_method_normal(0.02))
        self.fc2 = mpu.RowParallelLinear(4 * hidden, hidden, input_is_parallel=True,
                                         init_method=mpu.init_method_normal(0.02))
        self.norm = torch.nn.LayerNorm(hidden)
        self.head = mpu.ColumnParallelLinear(hidden, vocab_size, bias=False, gather_output=False,
                                             init_method=mpu.init_method_normal(0.02))

    def forward(self, context_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = (self.embedding(context_ids) * self.position_mix[:, None]).sum(dim=1)
        h = h + self.fc2(F.gelu(self.fc1(h)[0]))[0]
        logits = self.head(self.norm(h))[0]  # [batch, vocab / tp]
        return mpu.vocab_parallel_cross_entropy(logits, targets).mean()


def main(argv=None):
    args = parse_args(argv)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    world, rank = dist.get_world_size(), dist.get_rank()
    tp = args.tensor_model_parallel_size or world
    mpu.initialize_model_parallel(tp)
    mpu.model_parallel_manual_seed(args.seed)
    device = mpu.layers.default_device()

    ids, raw_vocab = load_token_ids(args.corpus, args.vocab_file)
    vocab = mpu.pad_vocab_size(raw_vocab, 128, tp)
    model = TensorParallelContextLM(vocab, args.hidden_size, args.context).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    num_params = sum(p.numel() for p in model.parameters())
    if rank == 0:
        print(f"world {world}: TP={tp} DP={mpu.get_data_parallel_world_size()} | corpus {len(ids):,} tokens, "
              f"vocab {raw_vocab:,} padded to {vocab:,} | this rank holds {num_params:,} parameters "
              f"(embedding shard {tuple(model.embedding.weight.shape)})", flush=True)

    generator = torch.Generator().manual_seed(args.seed + mpu.get_data_parallel_rank())
    windows = ids.unfold(0, args.context + 1, 1)
    start = time.time()
    first_loss = None
    for step in range(1, args.train_iters + 1):
        rows = windows[torch.randint(0, len(windows), (args.micro_batch_size,), generator=generator)].to(device)
        # the TP group must see the same batch: its first rank's rows win
        rows = mpu.broadcast_data(["rows"], {"rows": rows}, torch.long, device=device)["rows"]
        loss = model(rows[:, :-1], rows[:, -1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if mpu.get_data_parallel_world_size() > 1:
            for p in model.parameters():
                dist.all_reduce(p.grad, group=mpu.get_data_parallel_group())
                p.grad /= mpu.get_data_parallel_world_size()
        grad_norm = mpu.clip_grad_norm(model.parameters(), args.clip_grad)
        optimizer.step()
        first_loss = first_loss if first_loss is not None else loss.item()
        if rank == 0 and (step % args.log_interval == 0 or step == 1):
            elapsed = time.time() - start
            tokens = step * args.micro_batch_size * mpu.get_data_parallel_world_size()
            eta = elapsed / step * (args.train_iters - step)
            print(f"iteration {step:5d}/{args.train_iters} | loss {loss.item():.4f} | grad norm {grad_norm:.3f} | "
                  f"{tokens / elapsed:,.0f} tokens/s | ETA {eta:.0f}s", flush=True)
    if rank == 0:
        print(f"done: loss {first_loss:.3f} -> {loss.item():.3f} in {time.time() - start:.1f}s "
              f"(uniform guess would be {torch.log(torch.tensor(float(raw_vocab))).item():.3f})", flush=True)
    mpu.destroy_model_parallel()
    dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
