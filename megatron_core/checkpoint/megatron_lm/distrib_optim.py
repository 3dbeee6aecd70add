"""A Megatron-LM distributed optimizer's state (`distrib_optim.pt`) as ours, per parameter.

With --use-distributed-optimizer and --ckpt-format torch, Megatron-LM saves each (TP, PP)
rank's optimizer in two places beside each other:

    mp_rank_XX[_YYY]/model_optim_rng.pt   "optimizer": the param groups only (no "state"), each
                                          carrying Adam's `step`; "grad_scaler" in bf16/fp16
    mp_rank_XX[_YYY]/distrib_optim.pt     the elements, gathered to data-parallel rank 0:
        {"buckets_coalesced": True,
         b: {(param dtype, grad dtype): {"param": fp32 [n], "exp_avg": fp32 [n],
                                         "exp_avg_sq": fp32 [n], "numel_unpadded": n}}}

`b` numbers megatron-core's grad buffers: one per model chunk for a dense model of one
dtype, so b is the chunk's index. "param" is the fp32 main copy of the weights (the
master of a bf16/fp16 run, the weights themselves in fp32).

A buffer holds the chunk's parameters in *reverse* named_parameters order (the order
gradients arrive in backward). Each parameter starts at a multiple of 64 elements counted
from its bucket's start; the zeros between are padding. Buckets end where the run's
bucket size is reached, and a shared word table (tied embeddings over pipeline stages)
gets a bucket of its own. On disk the padding at each bucket's end (to a multiple of
lcm(DP, 128)) is cut, so the file is the same at every data-parallel size; the
64-element padding inside a bucket stays. Worked example, a stage holding a [5] norm and
a [3, 30] weight in that order, one bucket: the weight (last registered) sits at 0..90,
the norm at 128..133 (90 rounded up to 128), and n = 133.

Bucketing (megatron-core's DistributedDataParallel, Megatron-LM's setup): no bucket size
without --overlap-grad-reduce, on pipeline stages after the first, or on virtual chunks
after the first; otherwise --ddp-bucket-size, or the rank's parameter count over
--ddp-num-buckets, or max(40M, 1M x DP).

The layout is recomputed from the parameters the rank file holds, then checked: it must
end at n, and each parameter's first and last master elements must be its weights; a
file that does not line up is one sentence naming it, never a guess.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ...errors import CheckpointError
from ..file_io import load_file

FILE_NAME = "distrib_optim.pt"
_ALIGN = 64             # megatron-core pads each parameter's start to 64 elements
_FIELDS = ("exp_avg", "exp_avg_sq")
_SIXTEEN_BIT = {torch.float16, torch.bfloat16}
# (files.py keeps the weights readable without it: a run that wants the optimizer stops on this sentence)
_KEEP = "restore the file as Megatron-LM wrote it, or load the weights alone with --no-load-optim or --finetune."


def distrib_optim_path(model_path: str) -> str:
    """Megatron-LM's name: distrib_optim.pt beside the rank's model_optim_rng.pt."""
    return os.path.join(os.path.dirname(model_path), FILE_NAME)


def _bucket_size(args: Mapping, pp_rank: int, chunk_index: int, rank_numel: int) -> Optional[int]:
    if not args.get("overlap_grad_reduce") or pp_rank > 0 or chunk_index > 0 \
            or args.get("overlap_param_gather_with_optimizer_step"):
        return None
    if args.get("ddp_bucket_size"):
        return int(args["ddp_bucket_size"])
    if args.get("ddp_num_buckets"):
        return rank_numel // int(args["ddp_num_buckets"])
    return max(40_000_000, 1_000_000 * int(args.get("data_parallel_size") or 1))


def _shared_embedding(key: str, args: Mapping) -> bool:
    """A stage's copy of the word table a pipeline of tied embeddings keeps on its first and last
    stages, which megatron-core puts in a bucket of its own: our reader's keys (the last stage's
    copy is our `word_embeddings.weight`; files.py renames it so) and the names a file we write
    uses (megatron-core's table and last-stage output_layer, the legacy table and
    word_embeddings_for_head)."""
    tied = not args.get("untie_embeddings_and_output_weights", False)
    pp = int(args.get("pipeline_model_parallel_size") or 1)
    return tied and pp > 1 and key in ("embedding.word_embeddings.weight", "word_embeddings.weight",
                                       "output_layer.weight", "language_model.embedding.word_embeddings.weight",
                                       "word_embeddings_for_head.weight")


def buffer_offsets(parameters: Sequence[Tuple[str, int, bool]], bucket_size: Optional[int]) -> Tuple[Dict, int]:
    """({name: start} in the file's flat buffer, its length n) of one chunk. `parameters`:
    (name, numel, has a bucket of its own) in named_parameters order."""
    starts, position, bucket_start, in_bucket = {}, 0, 0, 0
    for name, numel, own_bucket in reversed(parameters):
        position = bucket_start + math.ceil((position - bucket_start) / _ALIGN) * _ALIGN
        if own_bucket and in_bucket:
            bucket_start, in_bucket = position, 0
        starts[name] = position
        position += numel
        in_bucket += 1
        if own_bucket or (bucket_size is not None and position - bucket_start >= bucket_size):
            bucket_start, in_bucket = position, 0
    return starts, position


def _step(saved_optimizer, model_path: str):
    refuse = (f"{model_path}: the param groups of Megatron-LM's distributed optimizer cannot be read ({{}}); "
              f"{_KEEP}")
    inner = saved_optimizer.get("optimizer") if isinstance(saved_optimizer, Mapping) else None
    groups = inner.get("param_groups") if isinstance(inner, Mapping) else None
    if not groups:
        raise CheckpointError(refuse.format(f"its 'optimizer' entry is {type(saved_optimizer).__name__} without "
                                            f"param_groups (several chained optimizers, or another format)"))
    steps = {float(g["step"]) for g in groups if g.get("step") is not None}
    if len(steps) != 1:
        raise CheckpointError(refuse.format(f"its param groups carry Adam's step as {sorted(steps) or 'nothing'}"))
    return torch.tensor(steps.pop(), dtype=torch.float32)


def distributed_optimizer_state(model_path: str, parameters: List[Tuple[str, str, torch.Tensor]], args: Mapping,
                                saved_optimizer, pp_rank: int) -> Dict:
    """{chunk: {our key: {exp_avg, exp_avg_sq, step[, fp32_master]}}} of one rank, each tensor a
    view of the mapped distrib_optim.pt in its parameter's shape. `parameters`: (chunk, our key,
    weight) in the file's model order (named_parameters order); `saved_optimizer`: the rank
    file's "optimizer" entry (the param groups and their step)."""
    path = distrib_optim_path(model_path)
    refuse = f"{path}: Megatron-LM's distributed optimizer state cannot be read ({{}}); {_KEEP}"
    if not os.path.isfile(path):
        raise CheckpointError(f"{path} is missing: {model_path} was saved with --use-distributed-optimizer and "
                              f"holds only the optimizer's param groups; {_KEEP}")
    step = _step(saved_optimizer, model_path)
    saved = load_file(path, mmap=True)
    if isinstance(saved, list):
        raise CheckpointError(refuse.format(f"it holds {len(saved)} chained optimizers' states (expert-parallel "
                                            f"or separately grouped parameters), not one"))
    if not isinstance(saved, Mapping) or not saved.get("buckets_coalesced"):
        raise CheckpointError(refuse.format("it is not the coalesced layout of Megatron-LM's "
                                            "get_parameter_state_dp_zero: no 'buckets_coalesced' entry"))
    chunks: Dict[str, List[Tuple[str, torch.Tensor]]] = {}
    for chunk, key, weight in parameters:
        chunks.setdefault(chunk, []).append((key, weight))
    buffers = sorted(k for k in saved if isinstance(k, int))
    if buffers != list(range(len(chunks))):
        raise CheckpointError(refuse.format(f"it holds grad buffers {buffers}, the rank file {len(chunks)} model "
                                            f"chunk(s) of one dtype"))
    rank_numel = sum(weight.numel() for _, _, weight in parameters)
    out: Dict[str, Dict] = {}
    for index, (chunk, members) in enumerate(chunks.items()):
        by_dtype = saved[index]
        if not isinstance(by_dtype, Mapping) or len(by_dtype) != 1:
            raise CheckpointError(refuse.format(f"grad buffer {index} is not one dtype's flat state"))
        flat = next(iter(by_dtype.values()))
        if any(not isinstance(flat.get(f), torch.Tensor) for f in ("param",) + _FIELDS):
            raise CheckpointError(refuse.format(f"grad buffer {index} lacks one of param, exp_avg, exp_avg_sq"))
        sizes = [(key, weight.numel(), _shared_embedding(key, args)) for key, weight in members]
        starts, length = buffer_offsets(sizes, _bucket_size(args, pp_rank, index, rank_numel))
        if length != flat.get("numel_unpadded") or any(flat[f].numel() != length for f in ("param",) + _FIELDS):
            raise CheckpointError(refuse.format(f"the parameters of the rank file's {chunk!r} lay out {length} "
                                                f"elements in megatron-core's order and padding, grad buffer "
                                                f"{index} holds {flat.get('numel_unpadded')}"))
        for key, weight in members:
            first, numel = starts[key], weight.numel()
            master = flat["param"][first:first + numel]
            ends = weight.reshape(-1)[[0, -1]]
            if not torch.equal(master[[0, -1]].to(ends.dtype), ends):
                raise CheckpointError(refuse.format(f"the master elements at {first}..{first + numel} are not "
                                                    f"{key}'s weights, so the layout differs from megatron-core's"))
            fields = {f: flat[f][first:first + numel].view(weight.shape) for f in _FIELDS}
            fields["step"] = step
            if weight.dtype in _SIXTEEN_BIT:
                fields["fp32_master"] = master.view(weight.shape)
            out.setdefault(chunk, {})[key] = fields
    return out


def grad_dtype(params_dtype: torch.dtype, args: Mapping) -> torch.dtype:
    """The grad buffer's dtype Megatron-LM's DDP keeps (the second half of the file's dtype key):
    fp32, except an fp16 run without --accumulate-allreduce-grads-in-fp32 (bf16 turns it on)."""
    if params_dtype == torch.float16 and not args.get("accumulate_allreduce_grads_in_fp32"):
        return torch.float16
    return torch.float32


def distrib_optim_file(chunks: Sequence[Sequence[Tuple[str, torch.Tensor, Mapping]]], args: Mapping,
                       pp_rank: int) -> Dict:
    """distrib_optim.pt of one (TP, PP) rank, the inverse of distributed_optimizer_state:
    `chunks`: each model chunk's (name, weight, our per-parameter fields) in named_parameters
    order; `args`: the Megatron-LM args the rank file carries (they decide the buckets)."""
    rank_numel = sum(weight.numel() for members in chunks for _, weight, _ in members)
    saved: Dict = {"buckets_coalesced": True}
    for index, members in enumerate(chunks):
        sizes = [(name, weight.numel(), _shared_embedding(name, args)) for name, weight, _ in members]
        starts, length = buffer_offsets(sizes, _bucket_size(args, pp_rank, index, rank_numel))
        flat = {field: torch.zeros(length, dtype=torch.float32) for field in ("param",) + _FIELDS}
        dtypes = {weight.dtype for _, weight, _ in members}
        if len(dtypes) != 1:
            raise CheckpointError(f"model chunk {index} holds parameters of {sorted(map(str, dtypes))}; Megatron-LM's "
                                  f"distributed optimizer keeps one grad buffer per dtype, written here for one.")
        for name, weight, fields in members:
            first, numel = starts[name], weight.numel()
            flat["param"][first:first + numel] = fields.get("fp32_master", weight).reshape(-1).float()
            for field in _FIELDS:
                flat[field][first:first + numel] = fields[field].reshape(-1).float()
        params_dtype = dtypes.pop()
        saved[index] = {(params_dtype, grad_dtype(params_dtype, args)): dict(flat, numel_unpadded=length)}
    return saved


__all__ = ["FILE_NAME", "distrib_optim_path", "buffer_offsets", "distributed_optimizer_state", "distrib_optim_file",
           "grad_dtype"]
