"""The native backend's checkpoint files: this package writes and reads them through a layout.

    files = LayoutFiles(run, chunks, backend)       # backend.checkpoint_files(run, chunks)
    path = files.model_file(layout, directory, iteration)      # this rank's model file
    error, written = files.save(directory, iteration, path, contents_for)   # written: checksums.FileRecord
    files.restore(directory, iteration, layout, saved, path, load_optimizer, keep_scaler)

--ckpt-format picks the layout (megatron_layout.py or deepspeed_layout.py). The model file
of a (TP, PP) rank is written by its data-parallel rank 0 (contents.py's keys); with the
distributed optimizer every data-parallel rank also writes its optimizer shard. `save` returns
the records (size, checksums) of the files it wrote, which the Checkpointer gathers into the
checkpoint's manifest (manifest.py).
"""
from __future__ import annotations

import os
from typing import Callable, List, Optional, Tuple

from .. import mpu
from ..errors import describe_os_error
from . import compatibility
from .checksums import FileRecord
from .contents import PER_PARAMETER, model_keys, optimizer_shard_state
from .file_io import load_file, save_file
from .formats import layout_named
from .state_dict_fit import load_fitting


class LayoutFiles:
    def __init__(self, run, chunks: List, backend):
        self.run, self.chunks, self.backend = run, chunks, backend
        self.layout = layout_named(run.checkpoint.ckpt_format)
        self.dp_rank = mpu.get_data_parallel_rank()

    def model_file(self, layout, directory: str, iteration: Optional[int]) -> str:
        """This rank's model file under `layout`."""
        p = self.run.parallel
        return layout.model_file(directory, iteration, mpu.get_tensor_model_parallel_rank(),
                                 p.tensor_model_parallel_size, mpu.get_pipeline_model_parallel_rank(),
                                 p.pipeline_model_parallel_size)

    def read(self, path: str, mmap: bool = False) -> dict:
        return load_file(path, mmap=mmap)

    def save(self, directory: str, iteration: int, model_path: str,
             contents_for: Callable) -> Tuple[Optional[str], List[FileRecord]]:
        """Write this rank's files: (the OS error as a sentence or None, the files' records)."""
        backend_state = self.backend.state_dict()
        distributed = self.run.parallel.use_distributed_optimizer
        writes = []     # (path, contents, holds optimizer state alone)
        if self.dp_rank == 0:
            writes.append((model_path, self.layout.to_file(contents_for(backend_state,
                                                                        include_optimizer=not distributed)), False))
        if distributed:
            writes.append((self.layout.optimizer_shard_file(model_path, self.dp_rank), self.layout.to_file(
                optimizer_shard_state(backend_state, iteration, self.dp_rank, self.run.parallel.data_parallel_size)),
                True))
        written = []
        try:
            for path, content, optimizer_only in writes:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                written.append(save_file(content, path, optimizer_only))
        except OSError as e:
            return describe_os_error(e), written
        return None, written

    def restore(self, directory: str, iteration: Optional[int], layout, saved: dict, model_path: str,
                load_optimizer: bool, keep_scaler: bool) -> None:
        """The chunks' weights from `saved`; the optimizer (and the loss scaler) when asked."""
        for key, chunk in zip(model_keys(len(self.chunks)), self.chunks):
            load_fitting(chunk, saved[key], f"{model_path}: {key} does not fit this model",
                         "use the model flags it was saved with.")
        backend_state = {}
        parallel = saved.get("parallel") or {}
        if load_optimizer:
            if PER_PARAMETER in (saved.get("optimizer") or {}):   # resharded: fits any DP / layout
                backend_state.update(saved["optimizer"])
            elif parallel.get("optimizer_dropped"):    # tools/change_mp.py --no-optim
                print(f"note: {model_path} holds no optimizer state (resharded with --no-optim); starting a "
                      f"fresh optimizer from its weights.", flush=True)
            else:
                compatibility.check_optimizer_layout(model_path, parallel, self.run)
                if self.run.parallel.use_distributed_optimizer:
                    shard = layout.read(layout.optimizer_shard_file(model_path, self.dp_rank))
                    backend_state.update(shard["optimizer"])
                else:
                    backend_state.update(saved["optimizer"])
        if keep_scaler and "grad_scaler" in saved:
            backend_state["grad_scaler"] = saved["grad_scaler"]
        # Without optimizer state the backend keeps a fresh optimizer and takes its fp32
        # masters from the weights just loaded.
        self.backend.load_state_dict(backend_state)
