#!/usr/bin/env python
"""tools/change_mp.py against a plain copy of the same bytes; prints JSON.

    python -m bench.reshard [--hidden-size 1280 --num-layers 24] [--rounds 3]

Makes a GPT checkpoint at TP=2 with this package's save path (two gloo processes build
the TP=2 model chunks; each rank's state, sharding map and parallel record written with
checkpoint.file_io.save_file in the Megatron layout): fp32 weights only, no optimizer
state (~336M parameters at the defaults, ~1.35 GB). Then, in interleaved rounds,
  reshard  tools/change_mp.py TP2 -> TP1, and TP1 -> TP4 from that result, each in a
           child process: wall time and its peak RSS (ru_maxrss of the child, os.wait4);
  copy     shutil.copy of the same input files in a child process: wall time.
Reported per direction: the median over rounds of copy_time / reshard_time (throughput
of the reshard relative to the copy; goal >= 0.5), peak RSS / checkpoint bytes (goal
<= 0.3) next to the RSS of a child that only imports the tool (torch alone), and output
bytes / input bytes (goal <= 1.05). Everything lives in one temporary directory,
removed at the end.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from megatron_core.cli import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "change_mp.py")


def _make_rank(directory, hidden, layers, heads, vocab):
    import torch.distributed as dist
    from megatron_core import mpu
    from megatron_core.models.gpt import GPTModel
    from megatron_core.mpu.layout import pad_vocab_size
    from megatron_core.training.checkpoint.contents import FORMAT_VERSION
    from megatron_core.training.checkpoint.file_io import save_file
    from megatron_core.training.checkpoint.megatron_layout import model_file
    from megatron_core.transformer import TransformerConfig
    mpu.initialize_model_parallel(2)
    config = TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                               tensor_model_parallel_size=2, init_seed=1)
    padded = pad_vocab_size(vocab, 128, 2)
    model = GPTModel(config, padded, 1024)
    rank = dist.get_rank()
    state = {"format_version": FORMAT_VERSION, "iteration": 1, "consumed_train_samples": 0,
             "consumed_valid_samples": 0, "args": {}, "model_config": config.to_dict(),
             "parallel": {"tensor_model_parallel_size": 2, "pipeline_model_parallel_size": 1,
                          "virtual_pipeline_model_parallel_size": None, "data_parallel_size": 1,
                          "use_distributed_optimizer": False},
             "vocab_size": vocab, "padded_vocab_size": padded, "opt_param_scheduler": {}, "rng_state": [],
             "model": model.state_dict(), "sharding_map": {"model": model.sharding_map(vocab).to_dict()}}
    path = model_file(directory, 1, rank, 0, 1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(state, path)
    dist.barrier()
    if rank == 0:
        with open(os.path.join(directory, "latest_checkpointed_iteration.txt"), "w") as f:
            f.write("1\n")


def _files(directory):
    return [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]


def _size(directory):
    return sum(os.path.getsize(p) for p in _files(directory))


def _child(cmd):
    """(wall seconds, peak RSS bytes) of a child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr.read().decode(errors='replace')[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024


_COPY = "import shutil, sys; [shutil.copy(s, d) for s, d in zip(sys.argv[1::2], sys.argv[2::2])]"


def _copy(source, target):
    pairs = []
    for i, path in enumerate(_files(source)):
        pairs += [path, os.path.join(target, f"{i}.bin")]
    os.makedirs(target, exist_ok=True)
    return _child([sys.executable, "-c", _COPY, *pairs])[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden-size", type=int, default=1024)
    p.add_argument("--num-layers", type=int, default=24)
    p.add_argument("--num-attention-heads", type=int, default=16)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to work (default: a temporary directory)")
    args = p.parse_args(argv)
    from megatron_core.testing import run_distributed
    work = tempfile.mkdtemp(prefix="bench_reshard_", dir=args.dir)
    try:
        tp2 = os.path.join(work, "tp2")
        start = time.perf_counter()
        run_distributed(_make_rank, 2, tp2, args.hidden_size, args.num_layers, args.num_attention_heads,
                        args.vocab_size, timeout=1200)
        made_s = time.perf_counter() - start
        import_rss = _child([sys.executable, "-c", "import torch, megatron_core.training.checkpoint.reshard"])[1]
        results = {}
        directions = [("tp2_to_tp1", tp2, "1"), ("tp1_to_tp4", os.path.join(work, "tp2_to_tp1"), "4")]
        samples = {name: {"ratio": [], "rss": [], "reshard_s": [], "copy_s": []} for name, _, _ in directions}
        for round_index in range(args.rounds):
            for name, source, size in directions:
                output = os.path.join(work, name)
                shutil.rmtree(output, ignore_errors=True)
                copy_dir = os.path.join(work, "copy")
                shutil.rmtree(copy_dir, ignore_errors=True)
                order = ("copy", "reshard") if round_index % 2 == 0 else ("reshard", "copy")
                timings = {}
                for what in order:
                    if what == "copy":
                        timings["copy"] = _copy(source, copy_dir)
                    else:
                        timings["reshard"], rss = _child([sys.executable, TOOL, source, "--no-optim",
                                                          "--target-tensor-parallel-size", size, "--output", output])
                shutil.rmtree(copy_dir, ignore_errors=True)
                s = samples[name]
                s["ratio"].append(timings["copy"] / timings["reshard"])
                s["rss"].append(rss)
                s["reshard_s"].append(round(timings["reshard"], 2))
                s["copy_s"].append(round(timings["copy"], 2))
                results[name] = {"input_bytes": _size(source), "output_bytes": _size(output)}
        for name, s in samples.items():
            r = results[name]
            r.update(throughput_vs_copy_median=round(statistics.median(s["ratio"]), 3),
                     throughput_vs_copy_rounds=[round(x, 3) for x in s["ratio"]],
                     reshard_s=s["reshard_s"], copy_s=s["copy_s"],
                     peak_rss_mib=round(max(s["rss"]) / 2**20, 1),
                     peak_rss_over_checkpoint=round(max(s["rss"]) / r["input_bytes"], 3),
                     output_over_input=round(r["output_bytes"] / r["input_bytes"], 4))
        print(json.dumps({"bench": "reshard", "checkpoint": f"GPT hidden {args.hidden_size}, {args.num_layers} "
                          f"layers, vocab {args.vocab_size}, fp32 weights, no optimizer state, TP=2",
                          "checkpoint_bytes": _size(tp2), "made_in_s": round(made_s, 1), "rounds": args.rounds,
                          "import_only_rss_mib": round(import_rss / 2**20, 1), "directions": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(main)
