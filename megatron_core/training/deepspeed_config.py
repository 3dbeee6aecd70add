"""A DeepSpeed config (ds.json) checked against Megatron's flags, and filled where it is silent.

    ds = read_deepspeed_config(path)                        # ConfigError for a missing or bad file
    resolved = resolve_deepspeed_config(ds, settings)       # pure: no process, no deepspeed import

The flags stay the source of truth for what the loop does (our schedules run the
micro-batches, our lr schedule sets the learning rate unless ds.json has a scheduler, our
data iterators make the batches); ds.json chooses what DeepSpeed owns (the ZeRO stage,
offload, communication knobs, its scheduler). Where both speak they must agree, and a
disagreement is one sentence naming the ds.json key and the flag:

* train_batch_size = --global-batch-size, train_micro_batch_size_per_gpu =
  --micro-batch-size, gradient_accumulation_steps = global / (micro x DP);
  a missing key is filled from the flags;
* fp16 / bf16 "enabled" = --fp16 / --bf16 (a missing section is filled from the flag);
  fp16's loss_scale, initial_scale_power, loss_scale_window, hysteresis, min_loss_scale
  are DeepSpeed's and used as written, filled from --loss-scale ... when absent;
* gradient_clipping = --clip-grad (filled when absent);
* "optimizer": its type must be Adam/AdamW (for --optimizer adam) or SGD, and its lr,
  betas, eps and weight_decay equal --lr, --adam-beta1/2, --adam-eps, --weight-decay;
  DeepSpeed then builds it (DeepSpeedCPUAdam under offload_optimizer), and our lr
  schedule writes each step's lr into it as it does for the native optimizer;
* "scheduler" (one of DeepSpeed's: WarmupLR, WarmupDecayLR, WarmupCosineLR, OneCycle,
  LRRangeTest): DeepSpeed's scheduler then sets the learning rate (deepspeed_lr_schedule.py),
  so Megatron's schedule flags (--lr-decay-style, --lr-warmup-*, --lr-decay-*, --min-lr,
  --lr-wsd-*) must stay unset; warmup_max_lr (WarmupLR, WarmupDecayLR) = --lr, and
  total_num_steps (WarmupDecayLR, WarmupCosineLR) is filled from --train-iters when absent;
* ZeRO-2/3 reduce gradients during backward, inside DeepSpeed's hooks; with
  --pipeline-model-parallel-size > 1 the stage copies must be summed first, so PP takes
  ZeRO 0/1; --sequence-parallel likewise; ZeRO-3 and offload_optimizer run at
  --tensor-model-parallel-size 1; --rampup-batch-size changes the accumulation count
  that ds.json fixes.

DeepSpeed is told `managed_gradient_accumulation: false`: it does not count
micro-batches, every engine.step() is the accumulation boundary, which is what our
schedules (that run all micro-batches of a step before backend.step()) need.
"""
from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Tuple

from ..errors import ConfigError

OPTIMIZER_TYPES = {"adam": ("adam", "adamw"), "sgd": ("sgd",)}
DEEPSPEED_SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")


@dataclass(frozen=True)
class FlagSettings:
    """What the flags say about the things ds.json may also say."""
    global_batch_size: int
    micro_batch_size: int
    data_parallel_size: int
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    sequence_parallel: bool = False
    rampup: bool = False
    fp16: bool = False
    bf16: bool = False
    clip_grad: float = 1.0
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.01
    adam_betas: Tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    loss_scale: Optional[float] = None
    initial_loss_scale: float = 2.0 ** 32
    min_loss_scale: float = 1.0
    loss_scale_window: int = 1000
    hysteresis: int = 2
    train_iters: Optional[int] = None
    # Megatron's own schedule flags given away from their defaults, as "--flag value" (a
    # ds.json scheduler contradicts them).
    lr_schedule_flags: Tuple[str, ...] = ()


def read_deepspeed_config(path: Optional[str]) -> dict:
    if not path:
        raise ConfigError("--deepspeed needs --deepspeed_config ds.json (the DeepSpeed config; see "
                          "examples/ds_config_zero1.json).")
    if not os.path.isfile(path):
        raise ConfigError(f"--deepspeed_config {path}: no such file.")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--deepspeed_config {path} is not valid JSON ({e}); fix the file.") from None
    if not isinstance(config, dict):
        raise ConfigError(f"--deepspeed_config {path} holds a {type(config).__name__}, not a JSON object.")
    return config


def _disagree(key: str, value, flag: str, expected) -> ConfigError:
    return ConfigError(f"the DeepSpeed config says {key} {value} but {flag} gives {expected}; make them agree "
                       f"(or drop {key} from the config and let the flags fill it).")


def _agree(config: dict, key: str, expected, flag: str) -> None:
    """config[key] must equal `expected` (filled when absent or "auto")."""
    value = config.get(key, "auto")
    if value == "auto":
        config[key] = expected
    elif value != expected:
        raise _disagree(key, value, flag, expected)


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def offloads_optimizer(config: dict) -> bool:
    offload = config.get("zero_optimization", {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


def _check_batch(config: dict, flags: FlagSettings) -> None:
    if flags.rampup:
        raise ConfigError("--rampup-batch-size changes the gradient accumulation steps that the DeepSpeed config "
                          "fixes; drop --rampup-batch-size with --deepspeed.")
    per_step = flags.micro_batch_size * flags.data_parallel_size
    _agree(config, "train_micro_batch_size_per_gpu", flags.micro_batch_size, "--micro-batch-size")
    _agree(config, "train_batch_size", flags.global_batch_size, "--global-batch-size")
    _agree(config, "gradient_accumulation_steps", flags.global_batch_size // per_step,
           f"--global-batch-size {flags.global_batch_size} / (--micro-batch-size {flags.micro_batch_size} x "
           f"data-parallel size {flags.data_parallel_size})")


def _check_precision(config: dict, flags: FlagSettings) -> None:
    for name, flag, on in (("fp16", "--fp16", flags.fp16), ("bf16", "--bf16", flags.bf16)):
        section = config.setdefault(name, {})
        enabled = section.get("enabled", "auto")
        if enabled == "auto":
            section["enabled"] = on
        elif bool(enabled) != on:
            raise ConfigError(f"the DeepSpeed config says {name}.enabled {str(enabled).lower()} but {flag} is "
                              f"{'given' if on else 'not given'}; make them agree.")
    if flags.fp16:
        fp16 = config["fp16"]
        fp16.setdefault("loss_scale", flags.loss_scale or 0)            # 0: dynamic, as DeepSpeed spells it
        fp16.setdefault("initial_scale_power", int(round(math.log2(flags.initial_loss_scale))))
        fp16.setdefault("loss_scale_window", flags.loss_scale_window)
        fp16.setdefault("hysteresis", flags.hysteresis)
        fp16.setdefault("min_loss_scale", flags.min_loss_scale)


def _check_optimizer(config: dict, flags: FlagSettings) -> None:
    _agree(config, "gradient_clipping", flags.clip_grad, "--clip-grad")
    _check_scheduler(config, flags)
    optimizer = config.get("optimizer")
    if optimizer is None:
        return
    kind = str(optimizer.get("type", "")).lower()
    if kind not in OPTIMIZER_TYPES.get(flags.optimizer, ()):
        raise _disagree("optimizer.type", optimizer.get("type"), "--optimizer", flags.optimizer)
    params = optimizer.setdefault("params", {})
    expected = {"lr": ("--lr", flags.lr), "weight_decay": ("--weight-decay", flags.weight_decay)}
    if flags.optimizer == "adam":
        expected.update(betas=("--adam-beta1/--adam-beta2", list(flags.adam_betas)), eps=("--adam-eps", flags.adam_eps))
        # Megatron's Adam decouples weight decay (AdamW); DeepSpeed's Adam does only with adam_w_mode.
        if params.get("adam_w_mode", True) is False:
            raise ConfigError("the DeepSpeed config sets optimizer.params.adam_w_mode false (L2 weight decay), but "
                              "--optimizer adam is Adam with decoupled weight decay; drop adam_w_mode.")
    for key, (flag, value) in expected.items():
        given = params.get(key, "auto")
        if given == "auto":
            params[key] = value
        elif (list(given) if isinstance(given, (list, tuple)) else given) != value:
            raise _disagree(f"optimizer.params.{key}", given, flag, value)


def _check_scheduler(config: dict, flags: FlagSettings) -> None:
    scheduler = config.get("scheduler")
    if scheduler is None:
        return
    kind = scheduler.get("type") if isinstance(scheduler, dict) else None
    if kind not in DEEPSPEED_SCHEDULERS:
        raise ConfigError(f"the DeepSpeed config's scheduler.type {kind!r} is not one of DeepSpeed's schedulers "
                          f"({', '.join(DEEPSPEED_SCHEDULERS)}); fix the type or drop the scheduler.")
    if flags.lr_schedule_flags:
        raise ConfigError(f"the DeepSpeed config's scheduler {kind} sets the learning rate but "
                          f"{flags.lr_schedule_flags[0]} asks Megatron's schedule to; drop the scheduler from the "
                          f"config or the --lr-*/--min-lr schedule flags.")
    params = scheduler.setdefault("params", {})
    if kind in ("WarmupLR", "WarmupDecayLR"):
        peak = params.get("warmup_max_lr", "auto")
        if peak == "auto":
            params["warmup_max_lr"] = flags.lr
        elif peak != flags.lr:
            raise _disagree("scheduler.params.warmup_max_lr", peak, "--lr", flags.lr)
    if kind in ("WarmupDecayLR", "WarmupCosineLR") and params.get("total_num_steps", "auto") == "auto":
        if not flags.train_iters:
            raise ConfigError(f"the DeepSpeed config's scheduler {kind} needs scheduler.params.total_num_steps "
                              f"(optimizer steps) when the run is sized by --train-samples; set it.")
        params["total_num_steps"] = flags.train_iters


def _check_layout(config: dict, flags: FlagSettings) -> None:
    stage = zero_stage(config)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"the DeepSpeed config says zero_optimization.stage {stage}; use 0, 1, 2 or 3.")
    if stage >= 2 and flags.pipeline_model_parallel_size > 1:
        raise ConfigError(f"ZeRO stage {stage} partitions gradients during backward, before the pipeline stages' "
                          f"shared copies are summed; with --pipeline-model-parallel-size "
                          f"{flags.pipeline_model_parallel_size} use zero_optimization.stage 0 or 1.")
    if stage >= 2 and flags.sequence_parallel:
        raise ConfigError(f"ZeRO stage {stage} partitions gradients during backward, before --sequence-parallel "
                          f"sums the norm gradients over the tensor-parallel group; use zero_optimization.stage "
                          f"0 or 1, or drop --sequence-parallel.")
    if (stage == 3 or offloads_optimizer(config)) and flags.tensor_model_parallel_size > 1:
        what = "ZeRO stage 3" if stage == 3 else "offload_optimizer"
        raise ConfigError(f"{what} runs at --tensor-model-parallel-size 1 here, not "
                          f"{flags.tensor_model_parallel_size}; use zero_optimization.stage 1 or 2 with tensor "
                          f"parallelism.")
    if config.get("managed_gradient_accumulation", False) is not False:
        raise ConfigError("the DeepSpeed config sets managed_gradient_accumulation true; our pipeline schedules run "
                          "the micro-batches and every step is the accumulation boundary, so drop the key.")


def resolve_deepspeed_config(config: dict, flags: FlagSettings) -> dict:
    """A copy of `config` checked against the flags and completed from them (see the module
    docstring); raises ConfigError naming both sides of a contradiction."""
    config = copy.deepcopy(config)
    _check_layout(config, flags)
    _check_batch(config, flags)
    _check_precision(config, flags)
    _check_optimizer(config, flags)
    config["managed_gradient_accumulation"] = False
    config.setdefault("steps_per_print", 2 ** 62)        # our log lines report progress
    config.setdefault("wall_clock_breakdown", False)
    if offloads_optimizer(config) and "optimizer" not in config:
        # Offload steps on the CPU with DeepSpeedCPUAdam, which DeepSpeed builds from an
        # optimizer section; the flags give it (a client torch optimizer would need
        # zero_force_ds_cpu_optimizer false and lose the fused CPU step).
        if flags.optimizer != "adam":
            raise ConfigError("offload_optimizer steps with DeepSpeedCPUAdam; use --optimizer adam.")
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": flags.lr, "betas": list(flags.adam_betas), "eps": flags.adam_eps,
            "weight_decay": flags.weight_decay}}
    return config
