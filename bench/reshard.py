#!/usr/bin/env python
"""tools/change_mp.py against a plain copy of the same bytes; prints JSON.

    python -m bench.reshard [--hidden-size 1024 --num-layers 24] [--rounds 3]

Makes a GPT checkpoint at TP=2 with this package's save path (two gloo processes build
the TP=2 model chunks; each rank's state, sharding map and parallel record written with
checkpoint.file_io.save_file in the Megatron layout): fp32 weights only, no optimizer
state (~336M parameters at the defaults, ~1.35 GB). Then, in interleaved rounds (order
rotating),
  reshard     tools/change_mp.py TP2 -> TP1, and TP1 -> TP4 from that result, each in a
              child process: the tool's own time (its summary line: from after its imports
              to the tracker written, every file fsynced), the child's wall time (with the
              interpreter start and `import torch`), and its peak RSS (ru_maxrss, os.wait4);
  copy+fsync  shutil.copy of the same input files in a child process, each copy fsynced
              (change_mp fsyncs every file it writes, so this is the same work on the disk);
  copy        the same without fsync (the bytes reach only the page cache).
Reported per direction: medians over rounds of copy+fsync time / reshard time (the
throughput of the reshard relative to the copy; goal >= 0.5), also against the reshard's
wall time and against the copy without fsync; peak RSS / checkpoint bytes (goal <= 0.3)
next to the RSS of a child that only imports the tool (torch alone), and output bytes /
input bytes (goal <= 1.05). Everything lives in one temporary directory, removed at the end.
"""
import argparse
import json
import os
import re
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


def _child(cmd, stdout=None):
    """(wall seconds, peak RSS bytes) of a child process (stdout to the file `stdout`, if named)."""
    out = open(stdout, "w") if stdout else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1"))
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if stdout:
        out.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd} failed:\n{proc.stderr.read().decode(errors='replace')[-3000:]}")
    return elapsed, usage.ru_maxrss * 1024


_COPY = """
import os, shutil, sys
fsync = sys.argv[1] == "fsync"
for source, target in zip(sys.argv[2::2], sys.argv[3::2]):
    shutil.copy(source, target)
    if fsync:
        fd = os.open(target, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
"""


def _copy(source, target, fsync):
    pairs = []
    for i, path in enumerate(_files(source)):
        pairs += [path, os.path.join(target, f"{i}.bin")]
    shutil.rmtree(target, ignore_errors=True)
    os.makedirs(target, exist_ok=True)
    elapsed = _child([sys.executable, "-c", _COPY, "fsync" if fsync else "no", *pairs])[0]
    shutil.rmtree(target, ignore_errors=True)
    return elapsed


_TOOL_TIME = re.compile(r" MB in ([0-9.]+) s -> ")


def _reshard(source, output, size):
    """(tool's own seconds, wall seconds, peak RSS bytes) of change_mp in a child."""
    shutil.rmtree(output, ignore_errors=True)
    log = output + ".log"
    wall, rss = _child([sys.executable, TOOL, source, "--no-optim", "--target-tensor-parallel-size", size,
                        "--output", output], stdout=log)
    with open(log) as f:
        match = _TOOL_TIME.search(f.read())
    os.remove(log)
    if match is None:
        raise SystemExit(f"change_mp printed no summary line for {source} -> TP={size}")
    return float(match.group(1)), wall, rss


def _ratios(copies, reshards):
    return [round(c / t, 3) for c, t in zip(copies, reshards)]


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
        import_s, import_rss = _child([sys.executable, "-c", "import torch, megatron_core.training.checkpoint.reshard"])
        results = {}
        directions = [("tp2_to_tp1", tp2, "1"), ("tp1_to_tp4", os.path.join(work, "tp2_to_tp1"), "4")]
        samples = {name: {k: [] for k in ("reshard_s", "reshard_wall_s", "rss", "copy_fsync_s", "copy_s")}
                   for name, _, _ in directions}
        copy_dir = os.path.join(work, "copy")
        for round_index in range(args.rounds):
            for name, source, size in directions:
                output = os.path.join(work, name)
                s = samples[name]
                runs = ["reshard", "copy_fsync", "copy"]
                for what in runs[round_index % 3:] + runs[:round_index % 3]:
                    if what == "reshard":
                        own, wall, rss = _reshard(source, output, size)
                        s["reshard_s"].append(own)
                        s["reshard_wall_s"].append(round(wall, 2))
                        s["rss"].append(rss)
                    else:
                        s[what + "_s"].append(round(_copy(source, copy_dir, what == "copy_fsync"), 2))
                results[name] = {"input_bytes": _size(source), "output_bytes": _size(output)}
        for name, s in samples.items():
            r = results[name]
            r.update(throughput_vs_copy_fsync_median=statistics.median(_ratios(s["copy_fsync_s"], s["reshard_s"])),
                     throughput_vs_copy_fsync_rounds=_ratios(s["copy_fsync_s"], s["reshard_s"]),
                     wall_throughput_vs_copy_fsync_median=statistics.median(
                         _ratios(s["copy_fsync_s"], s["reshard_wall_s"])),
                     throughput_vs_copy_without_fsync_median=statistics.median(_ratios(s["copy_s"], s["reshard_s"])),
                     reshard_s=s["reshard_s"], reshard_wall_s=s["reshard_wall_s"], copy_fsync_s=s["copy_fsync_s"],
                     copy_s=s["copy_s"], peak_rss_mib=round(max(s["rss"]) / 2**20, 1),
                     peak_rss_over_checkpoint=round(max(s["rss"]) / r["input_bytes"], 3),
                     output_over_input=round(r["output_bytes"] / r["input_bytes"], 4))
        print(json.dumps({"bench": "reshard", "checkpoint": f"GPT hidden {args.hidden_size}, {args.num_layers} "
                          f"layers, vocab {args.vocab_size}, fp32 weights, no optimizer state, TP=2",
                          "checkpoint_bytes": _size(tp2), "made_in_s": round(made_s, 1), "rounds": args.rounds,
                          "import_only_rss_mib": round(import_rss / 2**20, 1), "import_only_s": round(import_s, 2),
                          "directions": results}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(main)
