"""Which layout a checkpoint directory uses: --ckpt-format picks the one to write; loading
looks at the tracker that is there (`latest_checkpointed_iteration.txt`: Megatron-LM,
`latest`: DeepSpeed), preferring the chosen format's when both exist."""
from __future__ import annotations

import os
from typing import Optional, Tuple

from ...errors import ConfigError
from .deepspeed_layout import DeepSpeedLayout
from .megatron_layout import MegatronLayout

LAYOUTS = {"megatron": MegatronLayout(), "deepspeed": DeepSpeedLayout()}


def layout_named(name: str):
    if name not in LAYOUTS:
        raise ConfigError(f"--ckpt-format {name} is unknown; use {' or '.join(LAYOUTS)}.")
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
