#!/usr/bin/env python
"""Checkpoint file save/load time and bytes against plain torch.save / torch.load; prints JSON.

    python -m bench.checkpoint [--rounds 5] [--num-layers 5] [--hidden-size 1024] [--dir /tmp]

The state is what one rank's model_optim_rng.pt holds for a GPT (4h MLP, vocab 21,248): the
fp32 weights, Adam's two moments per parameter and the small entries (iteration, args, lr
schedule); about 1 GB at the defaults (85 M parameters x 3 tensors x 4 bytes). Each round,
in alternating order, on the same disk:

    ours:   checkpoint.file_io.save_file(state, path)   temporary file, fsync,
            rename, fsync of the directory, the checksums taken on the way; then
            load_file(path) (torch.load weights_only), and the same load after checking the
            file against its manifest (manifest.find_damage: size and crc32 of every 64 MiB
            block, as --load does unless --no-verify-checkpoint), in alternating order
    plain:  torch.save(state, path) then os.fsync of the file (the data on disk, as ours
            guarantees); then torch.load(path, weights_only=True)

The plain save is also reported without its fsync (the bytes only reach the page cache).
Ratios are speeds (plain time / ours time) per round, reported as the median of the
paired ratios; goal >= 0.9, and bytes within 1.05. Loads read from the page cache in both
cases (the files were just written). `verified_load_cost` is the verified load's time over the
unverified one's, per round (the median reported); `verify_gb_per_s` the check's own speed.
Files are removed after each round.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from megatron_core.cli import run as run_cli
from megatron_core.checkpoint.file_io import load_file, save_file
from megatron_core.checkpoint.manifest import find_damage, write_manifest

VOCAB = 21248


def gpt_checkpoint_state(num_layers: int, hidden: int, seed: int = 0) -> dict:
    """A GPT rank's checkpoint contents: weights, Adam's moments, and the small entries."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {"embedding.word_embeddings.weight": (VOCAB, hidden), "embedding.position_embeddings.weight": (1024, hidden)}
    for i in range(num_layers):
        layer = f"decoder.layers.{i}"
        shapes.update({f"{layer}.input_layernorm.weight": (hidden,), f"{layer}.input_layernorm.bias": (hidden,),
                       f"{layer}.self_attention.query_key_value.weight": (3 * hidden, hidden),
                       f"{layer}.self_attention.query_key_value.bias": (3 * hidden,),
                       f"{layer}.self_attention.dense.weight": (hidden, hidden),
                       f"{layer}.self_attention.dense.bias": (hidden,),
                       f"{layer}.post_attention_layernorm.weight": (hidden,),
                       f"{layer}.post_attention_layernorm.bias": (hidden,),
                       f"{layer}.mlp.dense_h_to_4h.weight": (4 * hidden, hidden),
                       f"{layer}.mlp.dense_h_to_4h.bias": (4 * hidden,),
                       f"{layer}.mlp.dense_4h_to_h.weight": (hidden, 4 * hidden),
                       f"{layer}.mlp.dense_4h_to_h.bias": (hidden,)})
    shapes.update({"decoder.final_layernorm.weight": (hidden,), "decoder.final_layernorm.bias": (hidden,)})

    def tensor(shape):
        return torch.randn(shape, generator=generator)
    model = {name: tensor(shape) for name, shape in shapes.items()}
    optimizer = {"state": {i: {"step": torch.tensor(100.0), "exp_avg": tensor(shape), "exp_avg_sq": tensor(shape)}
                           for i, shape in enumerate(shapes.values())},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1,
                                   "params": list(range(len(shapes)))}]}
    return {"checkpoint_version": 3.0, "iteration": 100, "model": model, "optimizer": optimizer,
            "opt_param_scheduler": {"num_steps": 100 * 512}, "args": {"num_layers": num_layers,
                                                                     "hidden_size": hidden},
            "rng_state": [{"torch": torch.get_rng_state()}]}


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def plain_save(state, path):
    torch.save(state, path)
    saved = time.perf_counter()
    with open(path, "rb+") as f:
        os.fsync(f.fileno())
    return saved


def one_round(state, directory, ours_first):
    ours_path, plain_path = os.path.join(directory, "ours.pt"), os.path.join(directory, "plain.pt")
    result = {}

    def ours():
        result["ours_save_s"], record = timed(save_file, state, ours_path)
        write_manifest(directory, [record])

        def unverified():
            result["ours_load_s"], loaded = timed(load_file, ours_path)
            del loaded

        def verified():
            start = time.perf_counter()
            damage = find_damage(directory)
            result["ours_verify_s"] = time.perf_counter() - start
            assert damage == [], damage
            loaded = load_file(ours_path)
            result["ours_load_verified_s"] = time.perf_counter() - start
            del loaded
        for load in ((unverified, verified) if ours_first else (verified, unverified)):
            load()

    def plain():
        start = time.perf_counter()
        saved = plain_save(state, plain_path)
        end = time.perf_counter()
        result["plain_save_s"], result["plain_save_without_fsync_s"] = end - start, saved - start
        result["plain_load_s"], loaded = timed(lambda: torch.load(plain_path, map_location="cpu", weights_only=True))
        del loaded

    for step in ((ours, plain) if ours_first else (plain, ours)):
        step()
    result["ours_bytes"], result["plain_bytes"] = os.path.getsize(ours_path), os.path.getsize(plain_path)
    os.remove(ours_path), os.remove(plain_path), os.remove(os.path.join(directory, "checkpoint_manifest.json"))
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--num-layers", type=int, default=5)
    parser.add_argument("--hidden-size", type=int, default=1024)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the files are written (then removed)")
    args = parser.parse_args(argv)
    state = gpt_checkpoint_state(args.num_layers, args.hidden_size)
    parameters = sum(t.numel() for t in state["model"].values())
    rounds = []
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        for r in range(args.rounds):
            result = one_round(state, directory, ours_first=r % 2 == 0)
            result.update(save_speed_ratio=result["plain_save_s"] / result["ours_save_s"],
                          save_speed_ratio_vs_no_fsync=result["plain_save_without_fsync_s"] / result["ours_save_s"],
                          load_speed_ratio=result["plain_load_s"] / result["ours_load_s"],
                          verified_load_cost=result["ours_load_verified_s"] / result["ours_load_s"],
                          verify_gb_per_s=result["ours_bytes"] / result["ours_verify_s"] / 1e9,
                          size_ratio=result["ours_bytes"] / result["plain_bytes"])
            rounds.append({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()})

    def median(key):
        return round(statistics.median(r[key] for r in rounds), 4)
    print(json.dumps({"state": f"GPT {args.num_layers} layers, hidden {args.hidden_size}, vocab {VOCAB}: "
                               f"{parameters / 1e6:.1f} M fp32 parameters + Adam moments",
                      "bytes": rounds[0]["plain_bytes"], "rounds": rounds,
                      "median_save_speed_ratio": median("save_speed_ratio"),
                      "median_save_speed_ratio_vs_no_fsync": median("save_speed_ratio_vs_no_fsync"),
                      "median_load_speed_ratio": median("load_speed_ratio"),
                      "median_load_s": median("ours_load_s"),
                      "median_load_verified_s": median("ours_load_verified_s"),
                      "median_verified_load_cost": median("verified_load_cost"),
                      "median_verify_gb_per_s": median("verify_gb_per_s"),
                      "median_size_ratio": median("size_ratio")}, indent=1))


if __name__ == "__main__":
    run_cli(main)
