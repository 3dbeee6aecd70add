"""Checkpoints: Megatron-LM's and DeepSpeed's layouts, atomic saves, exact resume.

    from megatron_core.training.checkpoint import Checkpointer

One idea per file:
  megatron_layout.py   iter_NNNNNNN/mp_rank_XX[_YYY]/model_optim_rng.pt + latest_checkpointed_iteration.txt
  deepspeed_layout.py  <tag>/mp_rank_XX_model_states.pt (+ zero_pp_rank_D_..._optim_states.pt) + latest
  layout_files.py      the native backend's files, written and read through a layout
  deepspeed_engine.py  the DeepSpeed backend's: engine.save_checkpoint/load_checkpoint, our state as client_state
  formats.py           --ckpt-format, and which layout a directory holds
  contents.py          what a rank's file holds (model chunks, optimizer, scaler, scheduler, RNG, args, ...)
  rng_state.py         every random stream as weights_only-safe values
  run_record.py        the flags as plain values
  file_io.py           atomic writes (temporary, fsync, rename); weights_only reads
  compatibility.py     the sentence for a checkpoint of another model or parallel layout
  checkpointer.py      when to save, and the collective save / load the loop calls
"""
from .checkpointer import Checkpointer

__all__ = ["Checkpointer"]
