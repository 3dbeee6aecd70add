"""DeepSpeed-engine runs of pretrain_gpt.py for tests, and the few runs several test modules share.

    done = run_engine_ranks(flags, config_path)        # 2 forked ranks, one CompletedProcess
    runs = SharedEngineRuns(corpus_dir, directory)     # tests/conftest.py's session fixture `engine_runs`
    run = runs.get("zero1-dp2")     # launched on first use, by whichever test asks first
    run.done                        # its CompletedProcess: the training log is in stdout
    run.halfway                     # its iteration-2 checkpoint, alone in a directory, `latest` naming it
    run.full                        # its checkpoint of the last iteration

A DeepSpeed start costs more than the steps of a tiny model (torch, torch._dynamo and deepspeed
imports in every rank, the launcher's own process), so the number of launches is the cost.
run_engine_ranks sets what mpirun would (RANK, WORLD_SIZE, MASTER_* by hand), without a launcher
process, for tests about the engine and not the launcher, and forks the ranks from the session's
fork server that has imported deepspeed (entry_points.run_forked_ranks: the imports are paid once
a session); a rank still running a minute after another one exited is killed, as torchrun would
stop it.

The shared runs are tiny_gpt_flags (fp32, no dropout, constant lr: what plain_gpt_loop models,
so their losses are the plain loop's) at DP=2 with ZeRO 0, 1 or 3, and at TP=2 with ZeRO-1,
saving at 2 (moved to `halfway`) and at the end (`full`, as resume_check's uninterrupted run).
The ZeRO-1 DP=2 run is `deepspeed --num_gpus 2` (test_launchers' claim); the others fork their
ranks. test_deepspeed_backend's loss claims, test_deepspeed_checkpoint's exact resume
at ZeRO-3 and TP=2, test_deepspeed_checkpoint_tools' engine-checkpoint sources and test_launchers
read the same runs; a test that changes a checkpoint copies it first.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch

from megatron_core.checkpoint.reshard.engine_source import deepspeed_state_classes
from .deepspeed_op_cache import deepspeed_test_env
from .distributed import find_free_port
from .entry_points import clean_env, run_forked_ranks, tiny_gpt_flags
from .launch_commands import deepspeed_num_gpus_command
from .resume_check import split_off_break_and_keep_last
from .tiny_corpus import ROOT

TIMEOUT = 600
# Ranks of one run end within seconds of each other; a rank left waiting on a peer that failed
# is stopped this long after the first exit.
GRACE_SECONDS = 60
# name: (ZeRO stage, its layout flags, launched by `deepspeed --num_gpus 2`)
SHARED_RUNS = {"zero0-dp2": (0, (), False), "zero1-dp2": (1, (), True), "zero3-dp2": (3, (), False),
               "zero1-tp2": (1, ("--tensor-model-parallel-size", "2"), False)}
SAVE_INTERVAL = 2


def as_one_run(ranks: Sequence[subprocess.CompletedProcess]) -> subprocess.CompletedProcess:
    """The ranks' outputs joined in rank order; the first failing rank's exit status, else 0."""
    failed = [rank.returncode for rank in ranks if rank.returncode != 0]
    return subprocess.CompletedProcess([rank.args for rank in ranks], failed[0] if failed else 0,
                                       "".join(rank.stdout for rank in ranks), "".join(rank.stderr for rank in ranks))


# What a DeepSpeed rank imports besides torch: deepspeed, and at the engine's start the Muon optimizer
# module, whose torch.compile wrappers import torch._inductor (~2 s of CPU per rank).
ENGINE_IMPORTS = ("deepspeed", "deepspeed.runtime.zero.muon.muon_optimizer")


def run_engine_ranks(flags: Sequence[str], config_path: str, nproc: int = 2,
                     timeout: float = TIMEOUT, script: str = "pretrain_gpt.py") -> subprocess.CompletedProcess:
    """`script` (pretrain_gpt.py) flags --deepspeed --deepspeed_config config_path in `nproc` ranks
    forked from the session's fork server that imported deepspeed (entry_points.run_forked_ranks)."""
    return as_one_run(run_forked_ranks(script, [*flags, "--deepspeed", "--deepspeed_config", config_path],
                                       nproc, timeout=timeout, env=deepspeed_test_env(), grace=GRACE_SECONDS,
                                       preload=ENGINE_IMPORTS))


def load_engine_file(path: str):
    """A DeepSpeed-layout file, weights_only, allowing only DeepSpeed's four plain state classes by name."""
    with torch.serialization.safe_globals(deepspeed_state_classes()):
        return torch.load(path, map_location="cpu", weights_only=True)


def assert_bf16_masters_carried(output: str) -> dict:
    """change_mp's TP=1 PP=1 output (iteration 2) of a bf16 engine checkpoint holds, per parameter,
    Adam's fields and the fp32 master whose bf16 rounding is the saved weight; returns that state."""
    merged = load_engine_file(os.path.join(output, "global_step2", "mp_rank_00_model_states.pt"))
    optimizer = merged["optimizer"]["per_parameter"]["model"]
    assert optimizer and all(set(fields) >= {"exp_avg", "exp_avg_sq", "step", "fp32_master"}
                             for fields in optimizer.values())
    for key, fields in optimizer.items():
        weight = merged["module"][key]
        assert weight.dtype == torch.bfloat16 and fields["fp32_master"].dtype == torch.float32
        # The bf16 weights are the engine's fp32 masters rounded (as DeepSpeed copies them back).
        assert torch.equal(fields["fp32_master"].to(torch.bfloat16), weight), key
        assert fields["exp_avg_sq"].shape == weight.shape and bool((fields["exp_avg_sq"] >= 0).all())
    return optimizer


def write_deepspeed_config(directory: str, config: dict) -> str:
    path = os.path.join(directory, "ds.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return path


@dataclass
class SharedRun:
    done: subprocess.CompletedProcess
    config_path: str
    flags: List[str]  # its flags without --save (its layout's included)
    full: str         # its --save directory: the last iteration only
    halfway: str      # iteration 2, split off with its tracker


class SharedEngineRuns:
    def __init__(self, corpus_dir: str, directory: str):
        self.corpus_dir, self.directory = corpus_dir, directory
        self._runs: Dict[str, object] = {}     # name: SharedRun, or the error its launch raised
        self._lock = threading.Lock()

    def flags(self) -> List[str]:
        return tiny_gpt_flags(self.corpus_dir)

    def get(self, name: str) -> SharedRun:
        with self._lock:
            if name not in self._runs:
                try:
                    self._runs[name] = self._launch(name)
                except Exception as error:   # a run that timed out is not started again by the next test
                    self._runs[name] = error
            if isinstance(self._runs[name], Exception):
                raise self._runs[name]
            return self._runs[name]

    def _launch(self, name: str) -> SharedRun:
        stage, layout, by_deepspeed_launcher = SHARED_RUNS[name]
        tmp = os.path.join(self.directory, name)
        os.makedirs(tmp, exist_ok=True)
        config_path = write_deepspeed_config(tmp, {"zero_optimization": {"stage": stage}})
        full = os.path.join(tmp, "full")
        flags = [*self.flags(), *layout]
        saving = [*flags, "--save", full, "--save-interval", str(SAVE_INTERVAL)]
        if by_deepspeed_launcher:
            command = deepspeed_num_gpus_command(2, "pretrain_gpt.py",
                                                 [*saving, "--deepspeed", "--deepspeed_config", config_path],
                                                 find_free_port())
            done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT,
                                  env={**clean_env(), **deepspeed_test_env()})
        else:
            done = run_engine_ranks(saving, config_path)
        halfway = os.path.join(tmp, "halfway")
        if done.returncode == 0:
            split_off_break_and_keep_last(full, SAVE_INTERVAL, halfway)
        return SharedRun(done, config_path, flags, full, halfway)
