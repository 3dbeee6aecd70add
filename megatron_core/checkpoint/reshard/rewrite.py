"""tools/change_mp.py's work: a whole checkpoint rewritten for other parallel sizes.

Streaming: each output file is written by streaming_writer one tensor at a time, each
weight and each optimizer field (fp32 master, exp_avg, exp_avg_sq) read just then from the
source files into the writer's one reused buffer (targets.py; lazy_files.py reads the bytes
with explicit file reads, not through the mappings; a field spread over the distributed
optimizer's data-parallel shards is gathered first into one reused buffer per source rank).
So the peak memory is about the largest output tensor plus one source piece, never a whole
shard or model.

Kept: iteration, consumed samples, the scheduler, the loss scaler, args and model config
(with the new sizes), the model's family and options (a checkpoint written before they were
recorded gets them here: the family guessed once, the options from its args by the caller's
`legacy_options`, models/registry.py's), the padded vocabulary (unless re-padded on request), and the
optimizer state, per parameter (the native backend loads it at any data-parallel size,
with or without the distributed optimizer). Dropped: the RNG streams, which belong to
the saved ranks (a resumed run seeds afresh; the training data order does not depend on
them). The tracker is written last.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from ...errors import CheckpointError
from ...mpu.layout import pad_vocab_size
from ..contents import PER_PARAMETER
from ..file_io import write_bytes_atomically
from ..formats import layout_named
from ..manifest import Verification
from ..megatron_lm.files import FORMAT_MARK, OPTIMIZER_UNREADABLE
from ..model_record import FAMILY_KEY, OPTIONS_KEY, saved_family
from .lazy_files import DEFAULT_BUDGET_BYTES, FieldScratch
from .source import SavedCheckpoint
from .torch_dist_source import open_source
from .stages import TargetChunk, source_split_rank, target_chunks
from .streaming_writer import LazyTensor, save_streamed
from .targets import target_optimizer_field, target_weight


@dataclass
class Target:
    tensor_model_parallel_size: int
    pipeline_model_parallel_size: int = 1
    data_parallel_size: Optional[int] = None       # default: the source's
    keep_optimizer: bool = True
    ckpt_format: Optional[str] = None              # default: the source's layout
    make_vocab_size_divisible_by: Optional[int] = None   # re-pad the vocabulary (None: keep the padded size)
    pipeline_split_rank: Optional[int] = None      # an encoder-decoder's first decoder stage (None: the source's)


def _padded_vocab(source: SavedCheckpoint, target: Target) -> Optional[int]:
    saved = source.padded_vocab_size
    size = target.tensor_model_parallel_size
    if target.make_vocab_size_divisible_by:
        vocab = source.head.get("vocab_size") or source.whole_model_map().vocab_size
        if vocab is None:
            raise CheckpointError(f"{source.iteration_path} does not record its true vocabulary size, so it cannot be "
                                  f"re-padded; drop --make-vocab-size-divisible-by to keep its {saved} rows.")
        return pad_vocab_size(vocab, target.make_vocab_size_divisible_by, size)
    if saved is not None and saved % size:
        raise CheckpointError(f"the padded vocabulary of {source.iteration_path} ({saved} rows) does not split over "
                              f"{size} tensor-parallel ranks; re-pad it with --make-vocab-size-divisible-by (e.g. 128).")
    return saved


def _split_rank(source: SavedCheckpoint, target: Target) -> Optional[int]:
    if target.pipeline_model_parallel_size == 1:
        return None
    if target.pipeline_split_rank is not None:
        return target.pipeline_split_rank
    return source_split_rank(source) if target.pipeline_model_parallel_size == source.pp else None


def _shape(source: SavedCheckpoint, name: str, spec, size: int, padded: Optional[int]) -> tuple:
    saved = source.owner(name).spec
    shape = list(source.weight(name, 0).shape)
    if not saved.replicated:
        full = padded if (saved.vocab and padded) else shape[saved.split_dim] * source.tp
        if full % (size * saved.stride):
            raise CheckpointError(f"{name} has {full} along dimension {saved.split_dim}, which does not split into "
                                  f"{size} tensor-parallel ranks x stride {saved.stride}; choose another "
                                  f"--target-tensor-parallel-size.")
        shape[saved.split_dim] = full // size
    return tuple(shape)


def _file_state(source: SavedCheckpoint, chunks: List[TargetChunk], target: Target, tensor_rank: int,
                padded: Optional[int], model: Dict) -> Dict:
    size = target.tensor_model_parallel_size
    head = {k: v for k, v in source.head.items() if k not in ("rng_state", "sharding_map")}
    head.update(model)
    parallel = {k: v for k, v in source.parallel.items() if k not in (FORMAT_MARK, "saved_as")}   # ours now
    parallel = dict(parallel, tensor_model_parallel_size=size,
                    pipeline_model_parallel_size=target.pipeline_model_parallel_size,
                    data_parallel_size=target.data_parallel_size or source.parallel.get("data_parallel_size"))
    if target.pipeline_model_parallel_size != source.pp:
        parallel["virtual_pipeline_model_parallel_size"] = None
    if not target.keep_optimizer:
        parallel["optimizer_dropped"] = True
    else:   # per parameter, in the model file: it loads with either optimizer layout at any DP size
        parallel.update(use_distributed_optimizer=False, optimizer_per_parameter=True)
    args = dict(head.get("args") or {}, tensor_model_parallel_size=size,
                pipeline_model_parallel_size=target.pipeline_model_parallel_size, padded_vocab_size=padded)
    if target.make_vocab_size_divisible_by:
        args["make_vocab_size_divisible_by"] = target.make_vocab_size_divisible_by
    if target.pipeline_model_parallel_size != source.pp:
        args["num_layers_per_virtual_pipeline_stage"] = None
    if "pipeline_model_parallel_split_rank" in args or target.pipeline_split_rank is not None:
        args["pipeline_model_parallel_split_rank"] = _split_rank(source, target)
    config = dict(head.get("model_config") or {})
    if "tensor_model_parallel_size" in config:
        config["tensor_model_parallel_size"] = size
    state = dict(head, parallel=parallel, args=args, model_config=config, padded_vocab_size=padded,
                 sharding_map={c.chunk: c.smap.to_dict() for c in chunks})
    scratch = FieldScratch()     # one per file: the distributed optimizer's pieces gathered in reused buffers
    optimizer: Dict = {}
    for chunk in chunks:
        weights = {}
        for local, (name, spec) in chunk.entries.items():
            weights[local] = LazyTensor.filled(
                _shape(source, name, spec, size, padded), source.weight(name, 0).dtype,
                lambda out, name=name, spec=spec: target_weight(source, name, spec, tensor_rank, size, padded, out=out))
            if not target.keep_optimizer:
                continue
            fields = {}
            for field, kind in source.optimizer_fields(name).items():
                if isinstance(kind, torch.dtype):    # read into the writer's reused buffer, like the weights
                    fields[field] = LazyTensor.filled(
                        weights[local].shape, kind, lambda out, name=name, spec=spec, field=field: target_optimizer_field(
                            source, name, spec, field, tensor_rank, size, padded, out=out, scratch=scratch))
                else:
                    fields[field] = kind
            if fields:
                optimizer.setdefault(chunk.chunk, {})[local] = fields
        state[chunk.chunk] = weights
    if target.keep_optimizer:
        state["optimizer"] = {PER_PARAMETER: optimizer}
    return state


def reshard_checkpoint(source_dir: str, output_dir: str, target: Target,
                       budget_bytes: int = DEFAULT_BUDGET_BYTES, progress: Callable[[str], None] = print,
                       legacy_options: Optional[Callable[[str, Dict], Dict]] = None,
                       verify_checksums: bool = True) -> Dict:
    """Write `source_dir`'s checkpoint to `output_dir` at the target sizes; returns a summary.
    `legacy_options(family, args)`: the model options of a source that records none.
    The files read are checked against the source's manifest first (sizes; checksums unless
    verify_checksums is False)."""
    source = open_source(source_dir, target.ckpt_format or "megatron", budget_bytes=budget_bytes,
                         verify=Verification(checksums=verify_checksums, optimizer=target.keep_optimizer))
    try:
        return _rewrite(source, output_dir, target, progress, legacy_options)
    finally:
        source.files.release()


def _model_entries(source: SavedCheckpoint, legacy_options: Optional[Callable[[str, Dict], Dict]]) -> Dict:
    family = saved_family(source.iteration_path, source.head, list(source.owners), say=print)
    options = source.head.get(OPTIONS_KEY)
    if options is None and legacy_options is not None:
        options = legacy_options(family, dict(source.head.get("args") or {}))
    return {FAMILY_KEY: family, **({OPTIONS_KEY: options} if options is not None else {})}


def _rewrite(source: SavedCheckpoint, output_dir: str, target: Target, progress: Callable[[str], None],
             legacy_options: Optional[Callable[[str, Dict], Dict]] = None) -> Dict:
    if os.path.abspath(output_dir) in (os.path.abspath(source.root), os.path.abspath(source.iteration_path)):
        raise CheckpointError(f"--output {output_dir} is the checkpoint being resharded; write to a new directory.")
    if target.keep_optimizer and source.engine and not source.has_optimizer():
        progress(f"note: the DeepSpeed engine's optimizer state in {source.iteration_path} cannot be carried (a "
                 f"ZeRO-0 file that does not name its parameters); writing the weights only, as --no-optim.")
        target = dataclasses.replace(target, keep_optimizer=False)
    if target.keep_optimizer and source.parallel.get(OPTIMIZER_UNREADABLE):
        raise CheckpointError(source.parallel[OPTIMIZER_UNREADABLE])
    if target.keep_optimizer and source.parallel.get(FORMAT_MARK) and source.parallel.get("optimizer_dropped"):
        progress(f"note: {source.iteration_path} is Megatron-LM's and holds no optimizer state this package reads "
                 f"(none saved, or a distributed optimizer's in torch_dist); writing the weights alone, as --no-optim.")
        target = dataclasses.replace(target, keep_optimizer=False)
    if target.keep_optimizer and not source.has_optimizer():
        raise CheckpointError(f"{source.iteration_path} holds no optimizer state; reshard it with --no-optim.")
    layout = layout_named(target.ckpt_format) if target.ckpt_format else source.layout
    padded = _padded_vocab(source, target)
    model = _model_entries(source, legacy_options)
    chunks = target_chunks(source, target.tensor_model_parallel_size, target.pipeline_model_parallel_size, padded,
                           _split_rank(source, target))
    written = 0
    for pipeline_rank in range(target.pipeline_model_parallel_size):
        mine = [c for c in chunks if c.pipeline_rank == pipeline_rank]
        for tensor_rank in range(target.tensor_model_parallel_size):
            path = layout.model_file(output_dir, source.iteration, tensor_rank, target.tensor_model_parallel_size,
                                     pipeline_rank, target.pipeline_model_parallel_size)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_streamed(layout.to_file(_file_state(source, mine, target, tensor_rank, padded, model)), path)
            written += os.path.getsize(path)
            progress(f"  wrote {path}")
    if source.iteration is not None:
        write_bytes_atomically(os.path.join(output_dir, layout.tracker_name),
                               (layout.tracker_text(source.iteration) + "\n").encode())
    else:
        write_bytes_atomically(os.path.join(output_dir, layout.tracker_name), b"release\n")
    return {"iteration": source.iteration, "source": (source.tp, source.pp, source.parallel.get("data_parallel_size")),
            "layout": layout.name, "bytes_written": written, "padded_vocab_size": padded,
            "optimizer": target.keep_optimizer, "family": model[FAMILY_KEY]}
