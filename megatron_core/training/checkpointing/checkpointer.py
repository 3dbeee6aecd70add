"""Save and load a training run's checkpoints: the loop's only contact with this package.

    checkpoints = Checkpointer(run, args, chunks, backend, lr_schedule, "gpt", {"max_sequence_length": 1024},
                               vocab_size=21128, padded_vocab_size=21248)
    checkpoints.load(state)                   # --load: weights, optimizer, scheduler, RNG, counters
    while ...:
        ... one iteration ...
        if checkpoints.after_iteration(state):   # saves every --save-interval; True at --exit-interval
            break
    else:
        checkpoints.at_end(state)             # the last iteration, unless just saved

Who writes a rank's files is the backend's choice (backend.checkpoint_files): our layouts
(layout_files.py) or Megatron-LM's torch_dist (torch_dist_files.py, --ckpt-format torch_dist)
for the native backend, DeepSpeed's engine (deepspeed_engine.py) for --deepspeed. All take
the same contents (contents.py); ours and the engine write the same DeepSpeed layout
where they share it; the Checkpointer owns the tracker, the counters, the schedule and RNG.
A resume whose schedule flags differ from the checkpoint's stops unless
--override-opt_param-scheduler or --use-checkpoint-opt_param-scheduler says whose wins
(resumed_schedule.py).
Every file records the run's model family and its builder options (checkpoint/model_record.py);
a --load of another family's checkpoint is one sentence (a legacy file's family is guessed
once, with one printed line).

A save is collective. Each rank writes its files atomically (file_io.py), checksumming them
on the way; then every rank learns whether every other one succeeded, and rank 0 gets their
files' records; only then does rank 0 write the iteration's manifest (checkpoint/manifest.py)
and replace the tracker, last and atomically. So a crash or a full disk at any point leaves
the tracker naming the previous complete checkpoint, and a failed write on one rank is one
sentence on every rank instead of a hang.

A load verifies before it reads: the files it will read (all, or the weights' alone for a
weights-only load) against the manifest of the checkpoint the tracker names, the ranks
sharing the checksums. A damaged file (flipped byte, truncated, missing) stops the load with
one sentence naming it; with --keep-last 2 or more the newest earlier checkpoint whose
manifest it matches is loaded instead, with one printed line naming what was skipped (the
tracker is left as it is). A checkpoint without a manifest (older, Megatron-LM's,
DeepSpeed's, converted) loads as before.
"""
from __future__ import annotations

import os
import shutil
from typing import List, Optional

import torch.distributed as dist

from ... import mpu
from ...errors import CheckpointError, describe_os_error
from ...checkpoint import compatibility, reshard, rng_state
from .exit_conditions import ExitConditions
from .resumed_schedule import restore_schedule
from ...checkpoint.contents import model_keys, model_state, rng_state_of_rank
from ...checkpoint.file_io import write_bytes_atomically
from ...checkpoint.formats import detect_layout
from ...checkpoint.manifest import (Verification, describe_damage, has_manifest, restore_advice, verify_collectively,
                                    write_manifest)
from ...checkpoint.model_record import check_family
from ...checkpoint.state_dict_fit import load_fitting
from ...checkpoint.megatron_lm.files import FORMAT_MARK, OPTIMIZER_UNREADABLE
from ...checkpoint.torch_dist_files import check_torch_dist_model


def _print(message: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, flush=True)


class Checkpointer:
    def __init__(self, run, args, chunks: List, backend, lr_schedule, family: str, model_options: dict,
                 vocab_size: Optional[int], padded_vocab_size: Optional[int]):
        self.run, self.args, self.chunks, self.backend, self.lr_schedule = run, args, chunks, backend, lr_schedule
        self.family, self.model_options = family, model_options
        self.vocab_size, self.padded_vocab_size = vocab_size, padded_vocab_size
        self.config = run.checkpoint
        self.files = backend.checkpoint_files(run, chunks)    # who writes and reads the files
        self.layout = self.files.layout
        # what a save says it wrote: the layout, or torch_dist (Megatron-LM's layout, DCP's files)
        self.written_as = getattr(self.files, "format_name", f"{self.layout.name} layout")
        if self.config.save and self.written_as == "torch_dist":
            check_torch_dist_model(family, run.model, model_options)
        self.dp_rank = mpu.get_data_parallel_rank()
        self._last_saved: Optional[int] = None
        training = run.training
        self.exits = ExitConditions(training.exit_interval, training.exit_duration_in_mins,
                                    training.exit_signal_handler)

    # --- when to save ---------------------------------------------------------------------

    def after_iteration(self, state) -> bool:
        """Save every --save-interval; when an exit condition holds, save (if not just done) and say stop."""
        interval = self.config.save_interval
        if self.config.save and interval and state.iteration % interval == 0:
            self.save(state)
        reason = self.exits.reason(state.iteration)
        if reason is None:
            return False
        if self.config.save and self._last_saved != state.iteration:
            self.save(state)
        _print(f"exiting program at iteration {state.iteration} ({reason})")
        return True

    def at_end(self, state) -> None:
        """Megatron-LM saves the last iteration too, when --save is given."""
        if self.config.save and state.iteration > 0 and self._last_saved != state.iteration:
            self.save(state)

    # --- saving ---------------------------------------------------------------------------

    def save(self, state) -> None:
        self.save_to(self.config.save, state, self.config.keep_last)

    def save_to(self, directory: str, state, keep_last: Optional[int] = None) -> None:
        """Save the run's state as iteration state.iteration in `directory` (collective), keeping
        the newest `keep_last` there (all when None); a finetuning run keeps its best this way."""
        iteration = state.iteration
        rng_states = self._gather_over_data_parallel(rng_state.capture())
        model_path = self.files.model_file(self.layout, directory, iteration)

        def contents_for(backend_state, include_optimizer):
            return model_state(self.run, self.args, self.chunks, backend_state, self.lr_schedule, state, rng_states,
                               include_optimizer=include_optimizer, family=self.family,
                               model_options=self.model_options, vocab_size=self.vocab_size,
                               padded_vocab_size=self.padded_vocab_size)
        error, written = self.files.save(directory, iteration, model_path, contents_for)
        written = self._agree(error, f"saving the checkpoint of iteration {iteration} to {directory}", written)
        tracker_error = None
        if not dist.is_initialized() or dist.get_rank() == 0:
            try:
                write_manifest(self.layout.iteration_dir(directory, iteration), written)
                write_bytes_atomically(os.path.join(directory, self.layout.tracker_name),
                                       (self.layout.tracker_text(iteration) + "\n").encode())
            except OSError as e:
                tracker_error = describe_os_error(e)
        self._agree(tracker_error, f"updating the tracker of {directory} after iteration {iteration}")
        if directory == self.config.save:
            self._last_saved = iteration
        if keep_last and (not dist.is_initialized() or dist.get_rank() == 0):
            self._remove_older_than_last(directory, iteration, keep_last)
        _print(f"  successfully saved checkpoint from iteration {iteration:7d} to {directory} "
               f"[{self.written_as}]")

    def _remove_older_than_last(self, directory: str, newest: int, keep_last: int) -> None:
        """--keep-last N: only once the newest checkpoint is complete and named by the tracker."""
        older = sorted((i for i in self.layout.saved_iterations(directory) if i < newest), reverse=True)
        for iteration in older[keep_last - 1:]:
            shutil.rmtree(self.layout.iteration_dir(directory, iteration), ignore_errors=True)

    def _gather_over_data_parallel(self, value):
        if not dist.is_initialized() or mpu.get_data_parallel_world_size() == 1:
            return [value]
        gathered = [None] * mpu.get_data_parallel_world_size()
        dist.all_gather_object(gathered, value, group=mpu.get_data_parallel_group())
        return gathered

    def _agree(self, error: Optional[str], what: str, report: List = ()) -> List:
        """Every rank learns every rank's failure; all raise together (no rank waits forever).
        Returns every rank's `report` list joined (the files each wrote), in the same exchange."""
        reports = [(error, list(report))]
        if dist.is_initialized() and dist.get_world_size() > 1:
            reports = [None] * dist.get_world_size()
            dist.all_gather_object(reports, (error, list(report)))
        failed = [(rank, e) for rank, (e, _) in enumerate(reports) if e is not None]
        if failed:
            rank, first = failed[0]
            previous = self._tracker_note()
            raise CheckpointError(f"{what} failed on rank {rank}: {first.rstrip('.')}; {previous}.")
        return [item for _, items in reports for item in items]

    def _tracker_note(self) -> str:
        path = os.path.join(self.config.save, self.layout.tracker_name)
        try:
            with open(path) as f:
                return f"{path} still names {f.read().strip()}, which is intact"
        except OSError:
            return "no tracker was written, so nothing names the partial checkpoint"

    # --- loading --------------------------------------------------------------------------

    def load(self, state) -> None:
        directory = self.config.load
        if directory is None:
            return
        found = detect_layout(directory, self.layout)
        if found is None:
            if self.config.exit_on_missing_checkpoint:
                raise CheckpointError(f"--load {directory} holds no checkpoint (no latest_checkpointed_iteration.txt "
                                      f"or latest file) and --exit-on-missing-checkpoint is set; check the path.")
            _print(f"WARNING: no checkpoint found in --load {directory} (no latest_checkpointed_iteration.txt or "
                   f"latest file); starting from scratch.")
            return
        layout, iteration = found
        wanted_sizes = (self.run.parallel.tensor_model_parallel_size, self.run.parallel.pipeline_model_parallel_size)
        iteration_path = layout.iteration_dir(directory, iteration)
        if not os.path.isdir(iteration_path):
            raise CheckpointError(f"the tracker of {directory} names {os.path.basename(iteration_path)}, which does "
                                  f"not exist; point the tracker at a complete checkpoint or remove it.")
        iteration = self._intact_iteration(directory, layout, iteration)     # before any file is read
        iteration_path = layout.iteration_dir(directory, iteration)
        if reshard.torch_dist_directory(iteration_path):      # Megatron-LM's torch_dist: read by key, any sizes
            source = reshard.open_source(iteration_path, verify=None)
            check_family(iteration_path, source.head, list(source.owners), self.family)
            self._load_resharded(directory, layout, iteration, source.parallel, state)
            return
        first = layout.first_model_file(iteration_path)
        # Only this file's small entries are read: its tensors stay mapped, untouched.
        head = layout.read(first, mmap=True) if first else {}
        if head:
            check_family(first, head, self._tensor_names(head), self.family)
        parallel = head.get("parallel")
        # DeepSpeed's engine keeps its optimizer in its own ZeRO files: the native backend
        # reads them per parameter, as it reads another layout (reshard/engine_source.py).
        engine_files = reshard.written_by_engine(head) and self.backend.loads_per_parameter
        # Megatron-LM's own files (checkpoint/megatron_lm/) are read by their maps, at any sizes.
        foreign = bool(parallel) and FORMAT_MARK in parallel
        if parallel and (reshard.needs_resharding(parallel, self.run) or engine_files or foreign):
            self._load_resharded(directory, layout, iteration, parallel, state)
            return
        compatibility.check_parallel_sizes(iteration_path, layout.saved_parallel_sizes(iteration_path), wanted_sizes)
        model_path = self.files.model_file(layout, directory, iteration)
        if not os.path.exists(model_path):
            raise CheckpointError(f"{model_path} is missing: the checkpoint is incomplete; restore it or point the "
                                  f"tracker at an earlier one.")
        saved = layout.read(model_path)
        self._restore(directory, iteration, saved, model_path, layout, state, release=iteration is None)
        _print(f"  successfully loaded checkpoint from {directory} [{layout.name} layout] at iteration "
               f"{state.iteration}")

    def _intact_iteration(self, directory: str, layout, iteration: Optional[int]) -> Optional[int]:
        """The iteration to load: the tracker's, when the files this load reads match its
        manifest; else, with --keep-last 2 or more, the newest earlier one that matches its own
        (one printed line). Collective: the ranks share the checksums and decide alike."""
        weights_only = iteration is None or self.config.finetune or self.config.no_load_optim
        verification = Verification(checksums=not self.config.no_verify_checkpoint, optimizer=not weights_only)
        damage = verify_collectively(layout.iteration_dir(directory, iteration), verification)
        if not damage:
            return iteration
        keep_last = self.config.keep_last or 0
        falls_back = iteration is not None and keep_last >= 2
        skipped = [(iteration, damage)]
        if falls_back:
            # Only a checkpoint with a manifest is known to be complete (the manifest is written
            # after every rank's files); rank 0's listing, so that every rank tries the same ones.
            earlier = self._from_rank0([older for older in reversed(layout.saved_iterations(directory))
                                        if older < iteration and has_manifest(layout.iteration_dir(directory, older))])
            for older in earlier:
                found = verify_collectively(layout.iteration_dir(directory, older), verification)
                if not found:
                    listed = "; ".join(f"iteration {i}: {describe_damage(d)}" for i, d in skipped)
                    _print(f"WARNING: skipped the damaged checkpoint{'s' if len(skipped) > 1 else ''} in {directory} "
                           f"({listed}); loading iteration {older}, the newest intact one (--keep-last {keep_last}).")
                    return older
                skipped.append((older, found))
        where = "the release checkpoint" if iteration is None else f"the checkpoint of iteration {iteration}"
        restore = restore_advice(layout.iteration_dir(directory, iteration))
        if falls_back:
            fix = f"no earlier checkpoint in {directory} is intact either ({len(skipped) - 1} checked); {restore}"
        else:
            tracker = os.path.join(directory, layout.tracker_name)
            fix = (f"{restore}, or load an earlier checkpoint: write its "
                   f"{'tag' if layout.name == 'deepspeed' else 'iteration'} into {tracker}, or give --keep-last 2 or "
                   f"more to load the newest intact one")
        raise CheckpointError(f"{describe_damage(damage)}: {where} in {directory} was damaged after it was saved; "
                              f"{fix}.")

    @staticmethod
    def _from_rank0(value):
        if not dist.is_initialized() or dist.get_world_size() == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @staticmethod
    def _tensor_names(head: dict) -> List[str]:
        """The model tensors' names in one rank file (its chunks' state dicts)."""
        return [key for name, chunk in head.items() if name == "model" or (name.startswith("model")
                and name[5:].isdigit()) if isinstance(chunk, dict) for key in chunk]

    def _load_resharded(self, directory: str, layout, iteration, parallel: dict, state) -> None:
        """Another TP / PP / DP size or optimizer layout: this rank reads the slices of its
        chunks' tensors and optimizer state (reshard/on_load.py); counters, scheduler and
        loss scaler as saved. RNG streams belong to the saved ranks and are not restored."""
        if not self.backend.loads_per_parameter:
            raise CheckpointError(f"{directory} was saved at TP={parallel['tensor_model_parallel_size']} "
                                  f"PP={parallel['pipeline_model_parallel_size']} DP={parallel.get('data_parallel_size')}, "
                                  f"and a DeepSpeed-engine run cannot reshard on load; resume at the sizes it was "
                                  f"saved with, or without --deepspeed, or reshard it first with tools/change_mp.py "
                                  f"and resume that without --deepspeed.")
        source = reshard.open_source(layout.iteration_dir(directory, iteration), layout.name, verify=None)
        where = source.model_path(0, 0)
        compatibility.check_model(where, source.head, self.run, self.padded_vocab_size)
        release = iteration is None
        weights_only = release or self.config.finetune
        load_optimizer = not weights_only and not self.config.no_load_optim
        if load_optimizer and parallel.get(OPTIMIZER_UNREADABLE):    # a Megatron-LM optimizer we cannot read
            raise CheckpointError(parallel[OPTIMIZER_UNREADABLE])
        with_optimizer = load_optimizer and not parallel.get("optimizer_dropped")
        if load_optimizer and not with_optimizer:
            why = ("Megatron-LM's files: none saved"
                   if FORMAT_MARK in parallel else "resharded with --no-optim")
            _print(f"note: {where} holds no optimizer state ({why}); starting a fresh optimizer from its weights.")
        states, optimizer = reshard.resharded_chunk_states(
            source, self.chunks, mpu.get_tensor_model_parallel_rank(), self.run.parallel.tensor_model_parallel_size,
            self.padded_vocab_size, with_optimizer)
        for key, chunk, chunk_state in zip(model_keys(len(self.chunks)), self.chunks, states):
            load_fitting(chunk, chunk_state, f"{where}: {key} does not fit this model",
                         "use the model flags it was saved with.")
        head = source.head
        backend_state = {}
        if not weights_only:
            state.iteration = int(head["iteration"])
            state.consumed_samples = int(head.get("consumed_train_samples", 0))
            state.consumed_valid_samples = int(head.get("consumed_valid_samples", 0))
            if "grad_scaler" in head:
                backend_state["grad_scaler"] = head["grad_scaler"]
        if with_optimizer:
            self._check_backend_takes_per_parameter(where)
            backend_state[reshard.PER_PARAMETER] = optimizer
        if load_optimizer:
            self._restore_schedule(head["opt_param_scheduler"], directory)
        self.backend.load_state_dict(backend_state)
        origin = (" (from the DeepSpeed engine's files)" if source.engine else
                  f" (from Megatron-LM's files, {parallel[FORMAT_MARK]} key names)" if FORMAT_MARK in parallel else "")
        saved_as = parallel.get("saved_as")     # torch_dist holds whole tensors; the sizes it was saved at
        shown = dict(parallel, tensor_model_parallel_size=saved_as[0],
                     pipeline_model_parallel_size=saved_as[1]) if saved_as else parallel
        _print(reshard.describe(shown, self.run, iteration) + origin)
        _print(f"  successfully loaded checkpoint from {directory} [{layout.name} layout] at iteration "
               f"{state.iteration}")

    def _restore_schedule(self, saved: dict, directory: str) -> None:
        """The step count, once the flags' schedule agrees with the checkpoint's (resumed_schedule.py)."""
        note = restore_schedule(self.lr_schedule, saved, self.run, directory)
        if note:
            _print(note)

    def _check_backend_takes_per_parameter(self, path: str) -> None:
        if not self.backend.loads_per_parameter:
            raise CheckpointError(f"{path} needs its optimizer state resharded, which this training backend "
                                  f"(--deepspeed) cannot load; add --no-load-optim to load the weights with a fresh "
                                  f"optimizer, or resume at the sizes it was saved with.")

    def _restore(self, directory: str, iteration: Optional[int], saved: dict, model_path: str, layout, state,
                 release: bool) -> None:
        parallel = saved.get("parallel") or {}
        if parallel:
            compatibility.check_parallel_sizes(model_path, (parallel["tensor_model_parallel_size"],
                                                            parallel["pipeline_model_parallel_size"]),
                                               (self.run.parallel.tensor_model_parallel_size,
                                                self.run.parallel.pipeline_model_parallel_size))
        compatibility.check_virtual_stages(model_path, parallel, self.run)
        compatibility.check_model(model_path, saved, self.run, self.padded_vocab_size)
        keys = model_keys(len(self.chunks))
        missing = [key for key in keys if key not in saved]
        if missing:
            raise CheckpointError(f"{model_path} holds no {missing[0]} entry (it has {', '.join(sorted(saved))}); it "
                                  f"is not a training checkpoint of this model.")
        weights_only = release or self.config.finetune
        load_optimizer = not weights_only and not self.config.no_load_optim
        self.files.restore(directory, iteration, layout, saved, model_path, load_optimizer=load_optimizer,
                           keep_scaler=not weights_only)
        if not weights_only:
            state.iteration = int(saved["iteration"])
            state.consumed_samples = int(saved.get("consumed_train_samples", 0))
            state.consumed_valid_samples = int(saved.get("consumed_valid_samples", 0))
        if load_optimizer:
            self._restore_schedule(saved["opt_param_scheduler"], directory)
        if not weights_only and not self.config.no_load_rng:
            streams = rng_state_of_rank(saved.get("rng_state"), self.dp_rank)
            if streams is not None:
                rng_state.restore(streams)
