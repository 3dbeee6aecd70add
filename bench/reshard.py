#!/usr/bin/env python
"""tools/change_mp.py against a plain copy of the same bytes, optimizer state included; prints JSON.

    python -m bench.reshard [--hidden-size 768 --num-layers 12] [--rounds 3]

Makes two GPT checkpoints as the training loop saves them: pretrain_gpt.py (torchrun,
gloo) trains one bf16 iteration with Adam and saves (--save) at TP=2 with the plain
optimizer (its state in the model files), and at TP=2 x DP=2 with the distributed
optimizer (each data-parallel rank's shard in its own distrib_optim_dp_XXX.pt). Either
holds bf16 weights + fp32 master weights + exp_avg + exp_avg_sq (14 bytes a parameter;
~101M parameters at the defaults, ~1.4 GB). Directions, optimizer carried:
  tp2_to_tp1            the plain optimizer's checkpoint to TP=1
  tp1_to_tp4            that result (per-parameter optimizer state) to TP=4
  tp2_dp2_to_tp1        the distributed optimizer's checkpoint to TP=1 (fields gathered
                        over the two shard files)
In interleaved rounds (order rotating), each direction runs, in two page-cache states of
its input files -- warm (read once just before) and cold (dropped with posix_fadvise
DONTNEED just before, as for a checkpoint written long ago; bench/page_cache.py measures
the cached fraction by mincore to show the drop took effect) --
  reshard     tools/change_mp.py in a child process: the tool's own time (its summary line:
              from after its imports to the tracker written, every file fsynced), the
              child's wall time (interpreter start and `import torch` included) and its
              peak RSS (ru_maxrss, os.wait4);
  copy+fsync  shutil.copy of the same input files in a child process, each copy fsynced
              (change_mp fsyncs every file it writes: the same work on the disk);
  copy        the same without fsync (the bytes reach only the page cache).
Reported per direction and cache state: medians over rounds of baseline time / reshard
time (throughput relative to the copy; goal >= 0.5) for the tool's time and for the wall
time, each against the copy with and without fsync; peak RSS / checkpoint bytes (goal
<= 0.3) beside the RSS of a child that only imports the tool; output bytes / input bytes
(goal <= 1.05). Everything lives in one temporary directory, removed at the end.
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

from . import page_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "change_mp.py")


def _save_checkpoint(corpus, cache, directory, args, data_parallel):
    """pretrain_gpt.py: one bf16 Adam iteration at TP=2 (x DP=2 with the distributed optimizer), saved."""
    from tests.harness.entry_points import failure_report, run_entry_point, tiny_run_flags
    flags = tiny_run_flags(corpus, cache, train_iters=1, seq_length=64, num_layers=args.num_layers)
    for flag, value in (("--hidden-size", args.hidden_size), ("--num-attention-heads", args.num_attention_heads),
                        ("--micro-batch-size", 1), ("--global-batch-size", 2)):
        flags[flags.index(flag) + 1] = str(value)
    flags += ["--bf16", "--tensor-model-parallel-size", "2", "--save", directory, "--save-interval", "1"]
    if data_parallel > 1:
        flags += ["--use-distributed-optimizer"]
    done = run_entry_point("pretrain_gpt.py", flags, nproc=2 * data_parallel, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"making the checkpoint failed:\n{failure_report(done)}")


def _files(directory):
    return [os.path.join(d, n) for d, _, names in os.walk(directory) for n in names]


def _size(directory):
    return sum(os.path.getsize(p) for p in _files(directory))


def _child(cmd, stdout=None):
    """(wall seconds, peak RSS bytes) of a child process (stdout to the file `stdout`, if named)."""
    out = open(stdout, "w") if stdout else subprocess.DEVNULL
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
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
    """(tool's own seconds, wall seconds, peak RSS bytes) of change_mp in a child, optimizer carried."""
    shutil.rmtree(output, ignore_errors=True)
    log = output + ".log"
    wall, rss = _child([sys.executable, TOOL, source, "--target-tensor-parallel-size", size, "--output", output],
                       stdout=log)
    with open(log) as f:
        text = f.read()
    os.remove(log)
    match = _TOOL_TIME.search(text)
    if match is None or "with optimizer" not in text:
        raise SystemExit(f"change_mp printed no summary line with the optimizer for {source} -> TP={size}:\n{text}")
    return float(match.group(1)), wall, rss


def _set_cache(paths, state):
    """Warm: every page of `paths` read just before; cold: every page dropped. The fraction cached after."""
    if state == "warm":
        page_cache.fill(paths)
    else:
        page_cache.drop(paths)
    return page_cache.cached_fraction(paths)


def _median_ratio(baseline, reshard):
    ratios = [round(b / t, 3) for b, t in zip(baseline, reshard)]
    return statistics.median(ratios), ratios


def _summary(s, input_bytes):
    out = {}
    for own, label in (("reshard_s", "tool"), ("reshard_wall_s", "wall")):
        for baseline, against in (("copy_fsync_s", "copy_fsync"), ("copy_s", "copy_without_fsync")):
            median, rounds = _median_ratio(s[baseline], s[own])
            out[f"{label}_throughput_vs_{against}_median"] = median
            out[f"{label}_throughput_vs_{against}_rounds"] = rounds
    out.update({k: v for k, v in s.items() if k != "rss"})
    out.update(peak_rss_mib=round(max(s["rss"]) / 2**20, 1),
               peak_rss_over_checkpoint=round(max(s["rss"]) / input_bytes, 3))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden-size", type=int, default=768)
    p.add_argument("--num-layers", type=int, default=12)
    p.add_argument("--num-attention-heads", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default=None, help="where to work (default: a temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (its checkpoints) for profiling")
    args = p.parse_args(argv)
    from tests.harness.tiny_corpus import preprocess_zh_news
    work = tempfile.mkdtemp(prefix="bench_reshard_", dir=args.dir)
    try:
        corpus = preprocess_zh_news(os.path.join(work, "corpus"))
        plain, distributed = os.path.join(work, "tp2"), os.path.join(work, "tp2_dp2")
        start = time.perf_counter()
        _save_checkpoint(corpus, os.path.join(work, "cache"), plain, args, data_parallel=1)
        _save_checkpoint(corpus, os.path.join(work, "cache"), distributed, args, data_parallel=2)
        made_s = time.perf_counter() - start
        import_s, import_rss = _child([sys.executable, "-c", "import torch, megatron_core.checkpoint.reshard"])
        directions = [("tp2_to_tp1", plain, "1"), ("tp1_to_tp4", os.path.join(work, "tp2_to_tp1"), "4"),
                      ("tp2_dp2_to_tp1", distributed, "1")]
        keys = ("reshard_s", "reshard_wall_s", "rss", "copy_fsync_s", "copy_s",
                "cached_before_reshard", "cached_before_copy_fsync", "cached_before_copy")
        samples = {(name, cache): {k: [] for k in keys} for name, _, _ in directions for cache in ("warm", "cold")}
        sizes = {}
        copy_dir = os.path.join(work, "copy")
        for round_index in range(args.rounds):
            for name, source, size in directions:
                output = os.path.join(work, name)
                runs = [(what, cache) for cache in ("warm", "cold") for what in ("reshard", "copy_fsync", "copy")]
                shift = round_index % len(runs)
                for what, cache in runs[shift:] + runs[:shift]:
                    s = samples[(name, cache)]
                    s[f"cached_before_{what}"].append(_set_cache(_files(source), cache))
                    if what == "reshard":
                        own, wall, rss = _reshard(source, output, size)
                        s["reshard_s"].append(own)
                        s["reshard_wall_s"].append(round(wall, 2))
                        s["rss"].append(rss)
                    else:
                        s[what + "_s"].append(round(_copy(source, copy_dir, what == "copy_fsync"), 2))
                sizes[name] = (_size(source), _size(output))
        results = {}
        for name, _, _ in directions:
            input_bytes, output_bytes = sizes[name]
            results[name] = {"input_bytes": input_bytes, "output_bytes": output_bytes,
                             "output_over_input": round(output_bytes / input_bytes, 4),
                             **{cache: _summary(samples[(name, cache)], input_bytes)
                                for cache in ("warm", "cold")}}
        print(json.dumps({"bench": "reshard", "checkpoint": f"GPT hidden {args.hidden_size}, {args.num_layers} "
                          f"layers, BERT Chinese vocabulary, bf16 weights + fp32 masters + Adam moments, saved by "
                          f"pretrain_gpt.py at TP=2 (plain optimizer) and TP=2 x DP=2 (distributed optimizer)",
                          "checkpoint_bytes": {"tp2": _size(plain), "tp2_dp2": _size(distributed)},
                          "made_in_s": round(made_s, 1), "rounds": args.rounds,
                          "import_only_rss_mib": round(import_rss / 2**20, 1), "import_only_s": round(import_s, 2),
                          "directions": results}, indent=2))
    finally:
        if args.keep:
            shutil.rmtree(os.path.join(work, "copy"), ignore_errors=True)
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run(main)
