"""The DeepSpeed backend's checkpoints: engine.save_checkpoint / engine.load_checkpoint, our state inside.

    files = DeepSpeedEngineFiles(run, engine)        # DeepSpeedBackend.checkpoint_files(run, chunks)
    path = files.model_file(layout, directory, iteration)      # this rank's model-states file
    error, written = files.save(directory, iteration, path, contents_for)    # written: checksums.FileRecord
    files.restore(directory, iteration, layout, saved, path, load_optimizer, keep_scaler)

The files are DeepSpeed's own layout, as Megatron-DeepSpeed writes it (tag global_step<N>):

    <save>/latest                                              "global_step<N>", written last, by us
    <save>/global_step<N>/mp_rank_XX_model_states.pt           data-parallel rank 0 of each model-parallel rank
                         (ZeRO-3: zero_pp_rank_D_mp_rank_XX_model_states.pt from every data-parallel rank D)
    <save>/global_step<N>/zero_pp_rank_D_mp_rank_XX_optim_states.pt   ZeRO 1-3: data-parallel rank D's partition
                         (bf16_zero_pp_rank_D_... under bf16, DeepSpeed's name)
    <save>/zero_to_fp32.py, zero_to_torch.py                   DeepSpeed's recovery scripts (ZeRO 1-3), beside latest

XX is the model-parallel rank pipeline_rank * TP + tensor_rank (deepspeed_layout.py's
naming; at PP=1 that is DeepSpeed's own, the tensor-parallel rank). The model-states file
is DeepSpeed's dict plus our client_state, so deepspeed_layout.py's reader (and
tools/change_mp.py, tools/convert_checkpoint.py) read it like the native backend's files:

    module                 the model's state dict (ZeRO-3: empty placeholders; the weights are in
                           the optim_states files, which zero_to_fp32 gathers)
    buffer_names, param_shapes, frozen_param_shapes, shared_params, frozen_param_fragments,
    data_sampler, random_ltd, skipped_steps, global_steps, global_samples, dp_world_size,
    mp_world_size (TP x PP), checkpoint_parallel_dimensions, ds_config, ds_version
                           DeepSpeed's, as it writes them
    optimizer              DeepSpeed's optimizer state at ZeRO stage 0, else None
    lr_scheduler           OUR schedule's state (Megatron's keys: num_steps, max_lr, ...; plus
                           DeepSpeed's last_batch_iteration when ds.json has a scheduler)
    checkpoint_version, format_version, iteration, consumed_train_samples,
    consumed_valid_samples, args, model_config, parallel, vocab_size, padded_vocab_size,
    sharding_map ({"model": map}), rng_state ([one dict per data-parallel rank])
                           contents.py's, unchanged (client_state)

A ZeRO optim_states file is DeepSpeed's: optimizer_state_dict (its partitioned fp32
weights and Adam moments), ds_config, ds_version.

Safety and order. DeepSpeed 0.19.8 saves with a plain torch.save to the final name and
loads with torch.load(weights_only=False), and writes `latest` from rank 0 right after its
own files, before the other ranks finish theirs. So the engine gets our checkpoint engine
(SafeCheckpointEngine): every file goes through file_io.save_file (temporary name, fsync,
rename) and every read through file_io.load_file (weights_only=True; a pickle payload is
one sentence and never runs). DeepSpeed's ZeRO optimizer state pickles four of its own
classes (fragment_address, ZeroStageEnum, LossScaler, DynamicLossScaler: numbers in a
named holder); the engine's loads allow exactly those by name, nothing else.
save_checkpoint runs with save_latest=False; the Checkpointer writes the manifest (every
file that went through SafeCheckpointEngine.save, with its checksums) and then `latest`
atomically after every rank reports its files written. What DeepSpeed still does its own
way: the recovery scripts are copied with shutil, and a failed makedirs/copy on one rank
raises there (the others then wait in DeepSpeed's barrier); a failed file write is caught
and reported on every rank. Loading without the optimizer at ZeRO-3 would run
zero_to_fp32's unsafe torch.load, so arguments.py refuses it.
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple

import torch

from .. import mpu
from ..errors import CheckpointError, describe_os_error
from .checksums import FileRecord
from .file_io import load_file, save_file
from .formats import layout_named
from .reshard.engine_source import OPTIMIZER_PARAM_NAMES, deepspeed_state_classes, written_by_engine
from .state_dict_fit import check_fits

# What the engine writes itself: never taken from our client_state.
ENGINE_KEYS = ("module", "buffer_names", "optimizer", "global_steps", "global_samples", "skipped_steps",
               "dp_world_size", "mp_world_size", "ds_config", "ds_version")


def _checkpoint_engine_base():
    from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointEngine
    return CheckpointEngine


class SafeCheckpointEngine(_checkpoint_engine_base()):
    """DeepSpeed's file hooks with ours underneath. A write error is kept (not raised) so
    DeepSpeed's collective save runs to its end on every rank; `error` reports it."""

    def __init__(self):
        super().__init__()
        self.name = "megatron_core"
        self.error: Optional[str] = None
        self.written: List[FileRecord] = []
        self.optimizer_only = lambda path: False     # which files hold optimizer state alone

    def create(self, info) -> None:
        self.error = None

    def save(self, state_dict, path: str) -> None:
        if self.error is None:
            try:
                self.written.append(save_file(state_dict, path, self.optimizer_only(path)))
            except OSError as e:
                self.error = describe_os_error(e)

    def makedirs(self, path, exist_ok=False) -> None:
        try:
            os.makedirs(path, exist_ok=exist_ok)
        except OSError as e:
            self.error = self.error or describe_os_error(e)

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(deepspeed_state_classes()):
            return load_file(path, map_location=map_location or "cpu")

    def commit(self, info) -> bool:
        return True


class DeepSpeedEngineFiles:
    layout = layout_named("deepspeed")

    def __init__(self, run, engine, zero_stage: int):
        self.run, self.engine, self.stage = run, engine, zero_stage
        self.safe = SafeCheckpointEngine()
        engine.checkpoint_engine = self.safe
        p = run.parallel
        if p.pipeline_model_parallel_size > 1:
            # DeepSpeed numbers files by its mpu's model-parallel rank, the tensor-parallel
            # one here: pipeline stages need the layout's pipeline_rank * TP + tensor_rank.
            engine.checkpoint_mp_rank = (mpu.get_pipeline_model_parallel_rank() * p.tensor_model_parallel_size
                                         + mpu.get_tensor_model_parallel_rank())
            engine.mp_world_size = p.tensor_model_parallel_size * p.pipeline_model_parallel_size

    def model_file(self, layout, directory: str, iteration: Optional[int]) -> str:
        """The model-states file this rank reads: mp_rank_XX_model_states.pt, or at ZeRO-3 (which
        partitions the weights) its own zero_pp_rank_D_mp_rank_XX_model_states.pt."""
        p = self.run.parallel
        path = layout.model_file(directory, iteration, mpu.get_tensor_model_parallel_rank(),
                                 p.tensor_model_parallel_size, mpu.get_pipeline_model_parallel_rank(),
                                 p.pipeline_model_parallel_size)
        if self.stage == 3:
            path = os.path.join(os.path.dirname(path),
                                f"zero_pp_rank_{mpu.get_data_parallel_rank()}_{os.path.basename(path)}")
        return path

    def read(self, path: str, mmap: bool = False) -> dict:
        """A model-states file as the engine reads it (weights_only, DeepSpeed's state classes allowed)."""
        with torch.serialization.safe_globals(deepspeed_state_classes()):
            return load_file(path, mmap=mmap)

    def save(self, directory: str, iteration: int, model_path: str,
             contents_for: Callable) -> Tuple[Optional[str], List[FileRecord]]:
        contents = self.layout.to_file(contents_for({}, include_optimizer=False))
        client_state = {key: value for key, value in contents.items() if key not in ENGINE_KEYS}
        if self.stage == 0 and isinstance(self.engine.optimizer, torch.optim.Optimizer):
            # The torch optimizer's state is positional: name its positions for the tools
            # (reshard/engine_source.py); ZeRO files name their parameters themselves.
            names = self.engine.param_names
            client_state[OPTIMIZER_PARAM_NAMES] = [[names[p] for p in group["params"]]
                                                   for group in self.engine.optimizer.param_groups]
        self.safe.error, self.safe.written = None, []
        # ZeRO 1-2 keep the weights in the model-states file, so their optim_states files hold
        # optimizer state alone; ZeRO-3's hold the weights' partitions too.
        self.safe.optimizer_only = lambda path: self.stage in (1, 2) and path.endswith("_optim_states.pt")
        self.engine.save_checkpoint(directory, tag=os.path.basename(self.layout.iteration_dir(directory, iteration)),
                                    client_state=client_state, save_latest=False)
        return self.safe.error, list(self.safe.written)

    def restore(self, directory: str, iteration: Optional[int], layout, saved: dict, model_path: str,
                load_optimizer: bool, keep_scaler: bool) -> None:
        """Weights (and the optimizer) through engine.load_checkpoint; the Checkpointer takes
        the counters, schedule and RNG from `saved`, our own safe read of the same file."""
        if layout.name != self.layout.name:
            raise CheckpointError(f"{model_path} is a {layout.name}-layout checkpoint; the DeepSpeed engine loads "
                                  f"DeepSpeed's layout (<tag>/mp_rank_XX_model_states.pt and latest); train it with "
                                  f"the native backend (drop --deepspeed) or convert it.")
        if load_optimizer and not written_by_engine(saved):
            raise CheckpointError(f"{model_path} was written by the native backend or tools/change_mp.py (its "
                                  f"optimizer state is per parameter, not in DeepSpeed's ZeRO files); resume it "
                                  f"without --deepspeed, or add --no-load-optim to load its weights into the engine "
                                  f"with a fresh optimizer.")
        saved_dp = (saved.get("parallel") or {}).get("data_parallel_size")
        if load_optimizer and self.stage >= 1 and saved_dp != self.run.parallel.data_parallel_size:
            raise CheckpointError(f"the ZeRO optimizer state in {os.path.dirname(model_path)} is partitioned over "
                                  f"data-parallel size {saved_dp}, this run has "
                                  f"{self.run.parallel.data_parallel_size}; resume with the same size, resume without "
                                  f"--deepspeed (the native backend reshards it on load; tools/change_mp.py converts "
                                  f"it), or add --no-load-optim to load the weights with a fresh optimizer.")
        if self.stage < 3 and "model" in saved:     # (a ZeRO-3 file holds partitions, not the weights)
            # DeepSpeed's own strict load would raise torch's many-line RuntimeError instead
            check_fits(self.engine.module.state_dict(), saved["model"], f"{model_path}: model does not fit this model",
                       "use the model flags it was saved with.")
        tag = os.path.basename(layout.iteration_dir(directory, iteration))
        path, _ = self.engine.load_checkpoint(directory, tag=tag, load_module_strict=True,
                                              load_optimizer_states=load_optimizer, load_lr_scheduler_states=False,
                                              load_module_only=not load_optimizer)
        if path is None:
            raise CheckpointError(f"DeepSpeed found no model states in {os.path.join(directory, tag)}; the checkpoint "
                                  f"is incomplete: restore it or point latest at an earlier one.")
