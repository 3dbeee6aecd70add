#!/usr/bin/env python
"""Measured pipeline bubble of the 1F1B and interleaved schedules, next to the theory.

Each of p gloo processes holds stages whose forward costs a fixed time per micro-batch
(backward twice that), spent sleeping so that p processes on a 2-core machine do not
compete for the CPU. A rank is idle whenever it is not running a forward or backward;
the measured bubble is idle / wall over the schedule, averaged over ranks. Theory for m
micro-batches: (p-1)/(m+p-1) for 1F1B, (p-1)/(v*m+p-1) interleaved with v chunks per rank
(each chunk costing 1/v of the stage).

    python -m bench.pipeline_bubble --stages 4 --microbatches 8 --virtual 2 --forward-ms 60

Prints one JSON object.
"""
import argparse
import json
import os
import tempfile
import time

import torch

from megatron_core.cli import run
from megatron_core.mpu import parallel_state as ps
from megatron_core.pipeline.chunk import PipelineChunkMixin
from megatron_core.pipeline.p2p import P2PConfig
from megatron_core.pipeline.schedules import get_forward_backward_func
from tests.harness.distributed import run_distributed

SHAPE = (1, 1, 4)


class _Busy:
    seconds = 0.0


class _Sleep(torch.autograd.Function):
    """Identity that costs `forward_s` forward and twice that backward."""

    @staticmethod
    def forward(ctx, x, forward_s):
        ctx.forward_s = forward_s
        _spend(forward_s)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _spend(2 * ctx.forward_s)
        return grad, None


def _spend(seconds):
    start = time.perf_counter()
    time.sleep(seconds)
    _Busy.seconds += time.perf_counter() - start


class FixedCostStage(PipelineChunkMixin, torch.nn.Module):
    def __init__(self, forward_s, stage):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.forward_s = forward_s
        self.stage = stage  # pre_process / post_process (PipelineChunkMixin) are read off it

    def forward(self):
        x = self.input_tensor if self.input_tensor is not None else torch.ones(SHAPE)
        return _Sleep.apply(x * self.weight, self.forward_s)


def _rank_main(stages, microbatches, virtual, forward_s, out_dir):
    ps.initialize_model_parallel(1, stages, virtual)
    chunks = []
    for v in range(virtual or 1):
        chunks.append(FixedCostStage(forward_s / (virtual or 1), ps.get_pipeline_stage(v if virtual else None)))

    def step(_it, model):
        return model(), lambda out: (out.sum(), {})

    schedule = get_forward_backward_func()
    kwargs = dict(forward_step_func=step, data_iterator=[None] * len(chunks) if virtual else None,
                  model=chunks if virtual else chunks[0], num_microbatches=microbatches,
                  p2p_config=P2PConfig(tensor_shape=SHAPE))
    schedule(**kwargs)  # warm up connections
    torch.distributed.barrier()
    _Busy.seconds = 0.0
    start = time.perf_counter()
    schedule(**kwargs)
    wall = time.perf_counter() - start
    with open(os.path.join(out_dir, f"rank{torch.distributed.get_rank()}.json"), "w") as f:
        json.dump({"wall_s": wall, "busy_s": _Busy.seconds}, f)


def measure(stages, microbatches, virtual, forward_s):
    with tempfile.TemporaryDirectory() as out_dir:
        run_distributed(_rank_main, stages, stages, microbatches, virtual, forward_s, out_dir, timeout=600)
        ranks = [json.load(open(os.path.join(out_dir, f"rank{r}.json"))) for r in range(stages)]
    idle = [1.0 - r["busy_s"] / r["wall_s"] for r in ranks]
    return {"wall_s": max(r["wall_s"] for r in ranks), "measured_bubble": sum(idle) / len(idle),
            "measured_bubble_per_rank": [round(x, 4) for x in idle]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stages", type=int, default=4)
    p.add_argument("--microbatches", type=int, default=8)
    p.add_argument("--virtual", type=int, default=2)
    p.add_argument("--forward-ms", type=float, default=60.0, help="forward cost of one stage per micro-batch")
    a = p.parse_args(argv)
    s, m, v = a.stages, a.microbatches, a.virtual
    one_f_one_b = measure(s, m, None, a.forward_ms / 1000)
    interleaved = measure(s, m, v, a.forward_ms / 1000)
    one_f_one_b["theoretical_bubble"] = (s - 1) / (m + s - 1)
    interleaved["theoretical_bubble"] = (s - 1) / (v * m + s - 1)
    print(json.dumps({
        "benchmark": "pipeline_bubble", "stages": s, "microbatches": m, "virtual_stages": v,
        "forward_ms_per_stage": a.forward_ms, "backward_ms_per_stage": 2 * a.forward_ms,
        "1f1b": one_f_one_b, "interleaved": interleaved,
        "interleaved_vs_1f1b_wall_ratio": interleaved["wall_s"] / one_f_one_b["wall_s"],
    }, indent=2))


if __name__ == "__main__":
    run(main)
