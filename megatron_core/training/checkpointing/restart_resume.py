"""A group that torchrun --max-restarts restarted resumes from the newest checkpoint it saved.

torchrun restarts every rank of a group with the same command and TORCHELASTIC_RESTART_COUNT
raised. Whatever --load named (nothing for a run from scratch, a pretrained model for a
--finetune run), the work a restarted attempt must go on from is in --save: when --save holds
a checkpoint, the restart loads it as a resume (iteration, optimizer, data position: no
--finetune), with one printed line. Without one the attempt starts as the first did. The first
attempt of any run is untouched (Megatron-LM's flags decide it).
"""
from __future__ import annotations

import os

from ...checkpoint.formats import LAYOUTS, detect_layout


def restart_count() -> int:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def _holds_checkpoint(directory: str) -> bool:
    return detect_layout(directory, LAYOUTS["megatron"]) is not None      # a tracker of either layout


def resume_after_restart(args) -> None:
    """On a restarted attempt, point --load at --save when it holds a checkpoint (in place)."""
    attempt = restart_count()
    save = getattr(args, "save", None)
    if attempt == 0 or not save or not _holds_checkpoint(save):
        return
    if os.path.abspath(args.load or "") != os.path.abspath(save) or getattr(args, "finetune", False):
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"restart {attempt}: resuming from the newest checkpoint in --save {save}"
                  + (f" (not --load {args.load})" if args.load else ""), flush=True)
        args.load, args.finetune = save, False
