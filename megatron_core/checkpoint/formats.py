"""Which layout a checkpoint directory uses: --ckpt-format picks the one to write; loading
looks at the tracker that is there (`latest_checkpointed_iteration.txt`: Megatron-LM,
`latest`: DeepSpeed), preferring the chosen format's when both exist.

`torch_dist` (Megatron-LM's torch.distributed.checkpoint files, torch_dist_files.py) keeps
Megatron-LM's directories and tracker, so its layout is the Megatron one; only the files in
an iteration's directory differ."""
from __future__ import annotations

import os
from typing import Optional, Tuple

from ..errors import CheckpointError, ConfigError
from .deepspeed_layout import DeepSpeedLayout
from .megatron_layout import MegatronLayout

LAYOUTS = {"megatron": MegatronLayout(), "deepspeed": DeepSpeedLayout()}
TORCH_DIST = "torch_dist"
CKPT_FORMATS = (*LAYOUTS, TORCH_DIST)      # what --ckpt-format accepts


def layout_named(name: str):
    """The directory layout of --ckpt-format `name`."""
    if name == TORCH_DIST:
        return LAYOUTS["megatron"]
    if name not in LAYOUTS:
        raise ConfigError(f"--ckpt-format {name} is unknown; use {', '.join(CKPT_FORMATS)}.")
    return LAYOUTS[name]


def detect_layout(directory: str, preferred) -> Optional[Tuple[object, Optional[int]]]:
    """(layout, iteration named by its tracker; None for a release), or None without a tracker."""
    candidates = [preferred] + [layout for layout in LAYOUTS.values() if layout is not preferred]
    for layout in candidates:
        path = os.path.join(directory, layout.tracker_name)
        if os.path.isfile(path):
            with open(path) as f:
                return layout, layout.parse_tracker(f.read(), path)
    return None


def tracked_checkpoint(directory: str, preferred="megatron", what: str = "--load") -> Tuple[object, Optional[int], str]:
    """(layout, iteration; None for a release, its first model file) of the checkpoint the
    tracker in `directory` names, or one CheckpointError sentence saying what is missing.
    `preferred`: a layout or its name (its tracker wins when both exist); `what`: how the
    caller's user named the directory (a flag)."""
    layout = layout_named(preferred) if isinstance(preferred, str) else preferred
    if not os.path.isdir(directory):
        raise CheckpointError(f"{what} {directory} is not a directory; give the --save directory of a training run "
                              f"(the one holding latest_checkpointed_iteration.txt or latest).")
    found = detect_layout(directory, layout)
    if found is None:
        raise CheckpointError(f"{what} {directory} holds no checkpoint (no latest_checkpointed_iteration.txt or "
                              f"latest file); give the --save directory of a training run.")
    layout, iteration = found
    iteration_path = layout.iteration_dir(directory, iteration)
    first = layout.first_model_file(iteration_path)
    if first is None:
        raise CheckpointError(f"the tracker of {directory} names {iteration_path}, which holds no model file; point "
                              f"it at a complete checkpoint.")
    return layout, iteration, first
