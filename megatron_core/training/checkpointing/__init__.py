"""The run's side of checkpoints: when to save, what the run adds, how a run resumes.

    from megatron_core.training.checkpointing import Checkpointer

  checkpointer.py      when to save, and the collective save / load the loop calls
  checkpoint_args.py   --use-checkpoint-args: the model flags taken from a checkpoint
  exit_conditions.py   --exit-interval, --exit-duration-in-mins, --exit-signal-handler
  resumed_schedule.py  on resume, the flags' lr schedule against the checkpoint's
The files themselves (layouts, contents, reading, resharding) are megatron_core/checkpoint/.
"""
from .checkpointer import Checkpointer

__all__ = ["Checkpointer"]
