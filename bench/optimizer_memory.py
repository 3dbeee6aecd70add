#!/usr/bin/env python
"""Optimizer-state memory per rank, plain vs distributed optimizer (ZeRO-1); prints JSON.

    python -m bench.optimizer_memory [--dp 1 2 4] [--layers 4] [--hidden 128]

For each data-parallel size a GPT in bf16 is built on that many gloo processes (TP=PP=1)
with the native backend, once plain and once with the distributed optimizer, and takes one
step so Adam's moments exist. Per rank it counts the bytes of the fp32 master weights plus
every tensor in the optimizer's state (exp_avg, exp_avg_sq, step); the report keeps the
largest rank. With ZeRO-1 that shrinks to about 1/DP of the plain backend's.
"""
import argparse
import json
import os
import tempfile

import torch

from megatron_core.cli import run

from megatron_core.models.gpt import GPTModel
from megatron_core.mpu import parallel_state as ps
from tests.harness import run_distributed
from megatron_core.training.config import OptimizerConfig, ParallelConfig, PrecisionConfig
from megatron_core.training.backends.native import build_backend
from megatron_core.transformer.config import TransformerConfig

VOCAB, SEQ = 1024, 32


def optimizer_state_bytes(backend) -> int:
    masters = sum(m.param.numel() * m.param.element_size() for m in backend.masters if m.write_back is not None)
    state = sum(t.numel() * t.element_size() for s in backend.optimizer.state.values()
                for t in s.values() if isinstance(t, torch.Tensor))
    return masters + state


def _measure(out_dir, layers, hidden):
    ps.initialize_model_parallel(1, 1)
    dp, rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    config = TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0,
                               params_dtype=torch.bfloat16)
    report = {}
    for zero in (False, True):
        model = GPTModel(config, VOCAB, SEQ)
        backend = build_backend([model], OptimizerConfig(), PrecisionConfig(bf16=True),
                                ParallelConfig(use_distributed_optimizer=zero, world_size=dp))
        tokens = torch.randint(0, VOCAB, (2, SEQ))
        backend.zero_grad()
        model(tokens, labels=tokens).mean().backward()
        assert backend.step().updated
        report["distributed" if zero else "plain"] = optimizer_state_bytes(backend)
        report["parameters"] = sum(p.numel() for p in model.parameters())
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dp", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args(argv)
    rows = []
    for dp in args.dp:
        with tempfile.TemporaryDirectory() as out_dir:
            run_distributed(_measure, dp, out_dir, args.layers, args.hidden, timeout=600)
            ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(dp)]
        plain = max(r["plain"] for r in ranks)
        distributed = max(r["distributed"] for r in ranks)
        rows.append({"data_parallel_size": dp, "parameters": ranks[0]["parameters"],
                     "plain_bytes_per_rank": plain, "distributed_bytes_per_rank": distributed,
                     "ratio": round(distributed / plain, 4), "ideal_ratio": round(1 / dp, 4)})
    print(json.dumps({"model": {"layers": args.layers, "hidden": args.hidden, "vocab": VOCAB, "dtype": "bf16"},
                      "results": rows}, indent=2))


if __name__ == "__main__":
    run(main)
