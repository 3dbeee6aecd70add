"""DeepSpeed's checkpoint layout (what Megatron-DeepSpeed and Chinese-Transformer-XL ship).

    <save>/latest                                          "global_step5"
    <save>/global_step5/mp_rank_00_model_states.pt         one per model-parallel rank
    <save>/global_step5/zero_pp_rank_1_mp_rank_00_optim_states.pt   distributed optimizer:
                                                           data-parallel rank 1's shard

The model-parallel rank is DeepSpeed's (Megatron's get_model_parallel_rank): the position
in the TP x PP group, pipeline_rank * TP + tensor_rank. DeepSpeed's engine keys sit at the
top of a model file: `module` (the weights; with virtual pipeline stages a dict of
`model0`, `model1`, ...), `buffer_names`, `optimizer` (None when sharded), `lr_scheduler`,
`global_steps`, `global_samples`, `skipped_steps`, `dp_world_size`, `mp_world_size`,
`ds_config`, `ds_version`; everything else of contents.py rides along as the client state
(as Megatron-DeepSpeed passes its iteration, args and RNG states). A shard file holds
`optimizer_state_dict`.
"""
from __future__ import annotations

import os
import re
from typing import List, Optional

from ..errors import CheckpointError
from .file_io import load_file

TRACKER = "latest"
_TAG = re.compile(r"^global_step(\d+)$")
_MODEL_FILE = re.compile(r"^mp_rank_(\d{2})_model_states\.pt$")
DS_VERSION = "megatron_core"


def tag(iteration: int) -> str:
    return f"global_step{iteration}"


class DeepSpeedLayout:
    name = "deepspeed"
    tracker_name = TRACKER

    def tracker_text(self, iteration: int) -> str:
        return tag(iteration)

    def parse_tracker(self, text: str, path: str) -> Optional[int]:
        value = text.strip()
        match = _TAG.match(value)
        if not match:
            raise CheckpointError(f"{path} names {value!r}, not a tag global_step<N> of this package's DeepSpeed "
                                  f"layout; write the tag of a complete checkpoint into it.")
        return int(match.group(1))

    def iteration_dir(self, directory: str, iteration: Optional[int]) -> str:
        return os.path.join(directory, tag(iteration) if iteration is not None else "release")

    def model_file(self, directory, iteration, tensor_rank, tensor_size, pipeline_rank, pipeline_size) -> str:
        mp_rank = pipeline_rank * tensor_size + tensor_rank
        return os.path.join(self.iteration_dir(directory, iteration), f"mp_rank_{mp_rank:02d}_model_states.pt")

    def optimizer_shard_file(self, model_path: str, data_parallel_rank: int) -> str:
        mp = os.path.basename(model_path)[len("mp_rank_"):][:2]
        return os.path.join(os.path.dirname(model_path),
                            f"zero_pp_rank_{data_parallel_rank}_mp_rank_{mp}_optim_states.pt")

    def saved_parallel_sizes(self, iteration_path: str):
        return None   # TP and PP are not in the names; contents.py's `parallel` entry is checked instead

    def saved_iterations(self, directory: str) -> List[int]:
        names = os.listdir(directory) if os.path.isdir(directory) else []
        return sorted(int(m.group(1)) for m in map(_TAG.match, names) if m)

    def first_model_file(self, iteration_path: str) -> Optional[str]:
        """mp_rank_00_model_states.pt, or under the engine's ZeRO-3 (every data-parallel rank
        writes its own) data-parallel rank 0's zero_pp_rank_0_mp_rank_00_model_states.pt."""
        for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt"):
            path = os.path.join(iteration_path, name)
            if os.path.isfile(path):
                return path
        return None

    def to_file(self, state: dict) -> dict:
        state = dict(state)
        if "data_parallel_rank" in state:     # an optimizer shard
            state["optimizer_state_dict"] = state.pop("optimizer")
            state.update(ds_config=None, ds_version=DS_VERSION)
            return state
        chunks = sorted(k for k in state if re.fullmatch(r"model\d*", k))
        module = state.pop(chunks[0]) if chunks == ["model"] else {k: state.pop(k) for k in chunks}
        first = module if chunks == ["model"] else module[chunks[0]]
        parallel = state["parallel"]
        state.update(
            module=module, buffer_names=[k for k in first if "buffer" in k],
            optimizer=state.pop("optimizer", None), lr_scheduler=state.pop("opt_param_scheduler"),
            global_steps=state["iteration"], global_samples=state["consumed_train_samples"], skipped_steps=0,
            dp_world_size=parallel["data_parallel_size"],
            mp_world_size=parallel["tensor_model_parallel_size"] * parallel["pipeline_model_parallel_size"],
            ds_config=None, ds_version=DS_VERSION)
        return state

    allowed_globals = ()

    def read(self, path: str, mmap: bool = False) -> dict:
        """The contents of the rank file `path` (tensors mapped with mmap=True)."""
        return self.from_file(load_file(path, mmap=mmap), path)

    def from_file(self, state: dict, path: Optional[str] = None) -> dict:
        state = dict(state)
        if "optimizer_state_dict" in state:
            state["optimizer"] = state.pop("optimizer_state_dict")
            return state
        if "module" not in state:
            raise CheckpointError("a DeepSpeed model-states file without a 'module' entry is not a model checkpoint.")
        module = state.pop("module")
        if module and all(re.fullmatch(r"model\d+", k) and isinstance(v, dict) for k, v in module.items()):
            state.update(module)
        else:
            state["model"] = module
        if state.get("optimizer") is None:
            state.pop("optimizer", None)
        state["opt_param_scheduler"] = state.pop("lr_scheduler", None)
        state.setdefault("iteration", state.get("global_steps", 0))
        return state
