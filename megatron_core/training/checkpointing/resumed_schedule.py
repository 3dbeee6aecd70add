"""A resumed run's learning-rate schedule: the flags' and the checkpoint's must agree, as in Megatron-LM.

    note = restore_schedule(lr_schedule, saved["opt_param_scheduler"], run, "ckpt/")

The checkpoint's opt_param_scheduler entry records the schedule it trained on under
Megatron's keys (max_lr, min_lr, lr_warmup_steps, lr_decay_steps, lr_decay_style, start_wd,
end_wd, wd_incr_steps, wd_incr_style; lengths in samples). A resume compares each with the
value this run's flags give, before it loads the step count:

    all equal                               the run goes on exactly as saved
    one differs                             ConfigError naming the flag, both values and the ways on
      with --override-opt_param-scheduler       the flags' values: the schedule bends from here
      with --use-checkpoint-opt_param-scheduler the checkpoint's values (one printed line); the
                                                run still stops at the flags' --train-iters

Without this, resuming a finished 5-iteration cosine run with --train-iters 10 would stretch
the decay over 10 iterations and send the learning rate back up, silently. --finetune,
--no-load-optim and a release checkpoint load no schedule and compare nothing.

Two lengths are compared only where they shape a rate: the decay length when both schedules
are constant, and the weight-decay ramp when both weight decays are constant, do not.
(Megatron-LM compares them anyway, so there a longer --train-iters with a fixed
--lr-decay-iters stops on wd_incr_steps; here it goes on, as the rates are the same.)
Megatron-LM's checkpoints use the same keys; its older spellings (start_lr, warmup_steps,
decay_steps, decay_style) are read too, but not AnnealingLR's warmup_iter / end_iter, which
count iterations of a batch size the checkpoint does not record.
"""
from __future__ import annotations

from typing import Optional

from ...errors import ConfigError

OVERRIDE = "--override-opt_param-scheduler"
USE_CHECKPOINT = "--use-checkpoint-opt_param-scheduler"

# In the order a mismatch is reported: a changed decay length explains a changed
# --lr-warmup-fraction warmup, so it comes first.
_LABELS = {"max_lr": "the peak learning rate", "min_lr": "the minimum learning rate",
           "lr_decay_style": "the learning-rate decay style", "lr_decay_steps": "the learning-rate decay",
           "lr_warmup_steps": "the learning-rate warmup", "start_wd": "the starting weight decay",
           "end_wd": "the final weight decay", "wd_incr_style": "the weight-decay increment style",
           "wd_incr_steps": "the weight-decay increase"}
_LENGTHS = ("lr_decay_steps", "lr_warmup_steps", "wd_incr_steps")
_OLD_NAMES = {"max_lr": ("start_lr",), "lr_warmup_steps": ("warmup_steps",), "lr_decay_steps": ("decay_steps",),
              "lr_decay_style": ("decay_style",)}


def restore_schedule(lr_schedule, saved: dict, run, directory: str) -> Optional[str]:
    """Settle lr_schedule's values against the checkpoint's (`saved`, its opt_param_scheduler
    entry from --load `directory`), then load its step count. Returns the line to print when a
    choice flag settled a difference, else None; a difference without one raises ConfigError."""
    ours, theirs = lr_schedule.schedule_values(), _saved_values(saved)
    differing = [key for key in _LABELS if key in ours and key in theirs and ours[key] != theirs[key]
                 and _shapes_a_rate(key, ours, theirs)]
    note = None
    if differing and run.scheduler.override_opt_param_scheduler:
        note = (f"{OVERRIDE}: the learning-rate schedule follows the flags, not the checkpoint in {directory}: "
                f"{_changes(differing, ours, theirs, run)}.")
    elif differing and run.scheduler.use_checkpoint_opt_param_scheduler:
        lr_schedule.set_schedule_values({key: theirs[key] for key in differing})
        note = (f"{USE_CHECKPOINT}: the learning-rate schedule follows the checkpoint in {directory}, not the "
                f"flags: {_changes(differing, theirs, ours, run)}.")
    elif differing:
        key = differing[0]
        raise ConfigError(f"{_flag(key, run)} sets {_label(key, run)} to {_shown(key, ours[key], run)}, but the "
                          f"checkpoint in {directory} has {_shown(key, theirs[key], run)}; resume with the flags it "
                          f"was saved with, add {OVERRIDE} to take the new schedule, or {USE_CHECKPOINT} to keep "
                          f"the checkpoint's.")
    lr_schedule.load_state_dict(saved)
    return note


def _saved_values(saved: dict) -> dict:
    """The schedule values a checkpoint's opt_param_scheduler records, under Megatron's current keys."""
    values = {}
    for key in _LABELS:
        names = [name for name in (key, *_OLD_NAMES.get(key, ())) if name in saved]
        if names:
            values[key] = saved[names[0]]
    return values


def _shapes_a_rate(key: str, ours: dict, theirs: dict) -> bool:
    if key == "lr_decay_steps":
        return not ours.get("lr_decay_style") == theirs.get("lr_decay_style") == "constant"
    if key == "wd_incr_steps":
        return not ours.get("wd_incr_style") == theirs.get("wd_incr_style") == "constant"
    return True


def _changes(keys, taken: dict, instead: dict, run) -> str:
    # dict.fromkeys: a constant weight decay is start_wd and end_wd, said once
    return "; ".join(dict.fromkeys(
        f"{_label(key, run)} {_shown(key, taken[key], run)} instead of {_shown(key, instead[key], run)}"
        for key in keys))


def _label(key: str, run) -> str:
    constant_wd = run.scheduler.weight_decay_incr_style == "constant"
    return "the weight decay" if constant_wd and key in ("start_wd", "end_wd") else _LABELS[key]


def _shown(key: str, value, run) -> str:
    """A length in samples, and in iterations where the run counts them; a rate exactly."""
    if key in _LENGTHS:
        samples = _number(value)
        batch = run.training.global_batch_size
        if run.training.train_samples or float(value) % batch:
            return f"{samples} samples"
        iterations = int(value // batch)
        return f"{iterations} iteration{'' if iterations == 1 else 's'} ({samples} samples)"
    return repr(float(value)) if isinstance(value, (int, float)) else str(value)


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _flag(key: str, run) -> str:
    """The flag (with this run's value) that set `key`."""
    training, scheduler, optimizer = run.training, run.scheduler, run.optimizer
    by_samples = bool(training.train_samples)
    length = f"--train-samples {training.train_samples}" if by_samples else f"--train-iters {training.train_iters}"
    if key == "lr_decay_steps":
        explicit = scheduler.lr_decay_samples if by_samples else scheduler.lr_decay_iters
        return f"--lr-decay-{'samples' if by_samples else 'iters'} {explicit}" if explicit else length
    if key == "lr_warmup_steps":
        if scheduler.lr_warmup_fraction is not None:
            return f"--lr-warmup-fraction {scheduler.lr_warmup_fraction}"
        return (f"--lr-warmup-samples {scheduler.lr_warmup_samples}" if by_samples
                else f"--lr-warmup-iters {scheduler.lr_warmup_iters}")
    if key == "wd_incr_steps":
        return length
    constant_wd = scheduler.weight_decay_incr_style == "constant"
    return {"max_lr": f"--lr {optimizer.lr}", "min_lr": f"--min-lr {optimizer.min_lr}",
            "lr_decay_style": f"--lr-decay-style {scheduler.lr_decay_style}",
            "start_wd": f"--weight-decay {optimizer.weight_decay}" if constant_wd
            else f"--start-weight-decay {scheduler.start_weight_decay}",
            "end_wd": f"--weight-decay {optimizer.weight_decay}" if constant_wd
            else f"--end-weight-decay {scheduler.end_weight_decay}",
            "wd_incr_style": f"--weight-decay-incr-style {scheduler.weight_decay_incr_style}"}[key]
