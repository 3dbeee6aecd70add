"""NVIDIA's megatron-core as the independent reference for Megatron-LM checkpoints, on CPU.

    ref = megatron_lm.save_checkpoint("llama", directory, tp=2, fmt="torch", seed=1234,
                                      iteration=7, with_optimizer=True)
    ref.logits["lm"]           # [2, 16, 128]: the saved model's full-vocabulary logits
    ref.args                   # the Megatron-LM args written into every file (a dict)
    logits = megatron_lm.load_and_logits("llama", directory, tp=2, fmt="torch")
    torch.testing.assert_close(logits["lm"], ref.logits["lm"], rtol=0, atol=1e-6)
    ours = megatron_lm.our_logits(directory, "llama", 2, tmp_dir)   # our model loaded from it, same batch

Models: "gpt", "llama", "bert", "t5" (megatron_lm_models.py); BERT's logits add "binary"
([2, 2], the sentence-order head); T5's are the decoder's ([2, 8, 128]). Formats: "torch" (one model_optim_rng.pt per rank) and
"torch_dist" (dist_checkpointing), laid out as megatron_lm_files.py describes.

save_checkpoint(model, directory, *, tp, pp, dp, fmt, seed, iteration, with_optimizer, steps,
                distributed_optimizer)
    Builds the model in tp * pp * dp gloo processes as Megatron-LM's model provider does (seed
    as --seed), and writes it the way Megatron-LM's save_checkpoint does (data-parallel rank 0
    writes). with_optimizer: wraps it in megatron-core's DDP, builds get_megatron_optimizer's
    Adam and the lr scheduler, takes `steps` steps on the fixed batch (pp=1 only), and saves
    optimizer and scheduler; without it the files are those of --no-save-optim.
    distributed_optimizer (with_optimizer): --use-distributed-optimizer, so the elements go to
    distrib_optim.pt (torch format, megatron_lm_files.py) or into torch_dist in megatron-core's
    `sharding_type` (fully_reshardable by default; dp_reshardable is Megatron-LM's default). Returns SavedReference(logits,
    args, optimizer).
load_and_logits(model, directory, *, tp, pp, fmt, with_optimizer)
    Builds the model from another seed, loads the directory as Megatron-LM's load_checkpoint
    does (tracker, this rank's file, checkpoint_version >= 2.0 since 0.16.1 cannot reorder
    older QKV layouts into megatron-core models, check_checkpoint_args, a strict
    load_state_dict, the RNG state, and with with_optimizer the optimizer and scheduler state)
    and returns the logits (load_with_optimizer: also what the loaded optimizer holds, by
    parameter name). A strict load that fails raises MegatronLoadError with PyTorch's
    message verbatim (every failing rank's, ranks in order).

megatron_cpu.py says how megatron-core runs without CUDA. The ranks are forked (or spawned)
by tests.harness.distributed.run_distributed; they hand results back through files.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import tempfile

import torch
import torch.distributed as dist

from .distributed import run_distributed
from .megatron_cpu import import_megatron, prepare_distributed_optimizer_load, start_ranks, stop_ranks
from .megatron_lm_args import check_checkpoint_args, megatron_lm_args
from .megatron_lm_files import (file_state_dict, load_torch_dist, load_torch_format, rank_file, read_tracker,
                                save_torch_dist, save_torch_format, strict_load_error)
from .megatron_lm_models import MODEL_NAMES, build_model, full_logits, sample_batch
from .megatron_lm_optimizer import (build_optimizer, distributed_optimizer_state_by_name, optimizer_state_by_name,
                                    take_steps)
from .megatron_lm_rng import megatron_rng_state, restore_rng_state

__all__ = ["MODEL_NAMES", "FORMATS", "SavedReference", "MegatronLoadError", "save_checkpoint", "load_and_logits",
           "load_with_optimizer",
           "our_logits"]

FORMATS = ("torch", "torch_dist")
LOAD_SEED_OFFSET = 1000     # loading builds other weights first, so only the file's can match
TIMEOUT = 180.0


class MegatronLoadError(AssertionError):
    """megatron-core refused the checkpoint's model state (strict load_state_dict)."""


@dataclasses.dataclass
class SavedReference:
    logits: dict        # {"lm": [batch, seq, vocab]} (+ "binary" for BERT), from the saved weights
    args: dict          # vars() of the args Namespace in the files
    # with_optimizer: {(tp_rank, pp_rank): {megatron-core parameter name: {field: tensor}}}, read from the
    # live optimizer by parameter object
    optimizer: dict = dataclasses.field(default_factory=dict)


def _ranks() -> tuple:
    from megatron.core import parallel_state as ps

    return (ps.get_tensor_model_parallel_rank(), ps.get_pipeline_model_parallel_rank(),
            ps.get_pipeline_model_parallel_world_size())


def sharded_metadata(sharding_type: str | None = None) -> dict:
    """_build_sharded_state_dict_metadata; `sharding_type`: the distributed optimizer's
    (Megatron-LM: fully_reshardable with --dist-ckpt-optim-fully-reshardable, else dp_reshardable)."""
    from megatron.core import parallel_state as ps

    metadata = {"singleton_local_shards": False, "chained_optim_avoid_prefix": True}
    if sharding_type is not None:
        metadata["distrib_optim_sharding_type"] = sharding_type
    return dict(metadata, dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True))


def _loaded_metadata(directory: str) -> dict:
    """What Megatron-LM's load_checkpoint builds the sharded state dict from: the checkpoint's own
    content metadata (dist_checkpointing.load_content_metadata)."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as ps
    from megatron.core.safe_globals import SAFE_GLOBALS

    from .megatron_lm_files import iteration_dir

    with torch.serialization.safe_globals(SAFE_GLOBALS):
        saved = dist_checkpointing.load_content_metadata(iteration_dir(directory, read_tracker(directory))) or {}
    return dict(saved, dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True))


def sharded_rng_state(rng_state: list, tp: int, pp: int):
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    from megatron.core import parallel_state as ps

    tp_rank, pp_rank, _ = _ranks()      # Megatron-LM: one copy per (PP, TP), data-parallel ranks are its replicas
    return ShardedObject("rng_state", rng_state, (pp, tp), (pp_rank, tp_rank),
                         replica_id=ps.get_data_parallel_rank(with_context_parallel=True))


def hand_back(out_dir: str, result) -> None:
    """The last stage's TP rank 0 (of data-parallel rank 0) writes `result` for the parent."""
    from megatron.core import parallel_state as ps

    tp_rank, pp_rank, pp_size = _ranks()
    if tp_rank == 0 and pp_rank == pp_size - 1 and ps.get_data_parallel_rank() == 0:
        torch.save(result, os.path.join(out_dir, "result.pt"))


def _save_rank(name, directory, out_dir, tp, pp, dp, fmt, seed, iteration, with_optimizer, steps, distributed,
               sharding_type):
    from megatron.core import parallel_state as ps

    start_ranks(tp, pp, seed)
    try:
        model = build_model(name, tp, pp)
        tp_rank, pp_rank, _ = _ranks()
        optimizer = scheduler = None
        if with_optimizer:
            ddp, optimizer, scheduler = build_optimizer(model, model.config, distributed=distributed)
            take_steps(name, ddp, optimizer, scheduler, steps)
            read_state = distributed_optimizer_state_by_name if distributed else optimizer_state_by_name
            by_name = read_state(model, optimizer)
            if ps.get_data_parallel_rank() == 0:
                torch.save(by_name, os.path.join(out_dir, f"optimizer_tp{tp_rank}_pp{pp_rank}.pt"))
        args = megatron_lm_args(name, tp=tp, pp=pp, rank=dist.get_rank(), iteration=iteration, seed=seed,
                                fmt=fmt, with_optimizer=with_optimizer, save_dir=directory, dp=dp,
                                distributed_optimizer=distributed)
        rng_state = megatron_rng_state(seed + 100 * pp_rank, tp_rank)
        if fmt == "torch":
            state = file_state_dict(args, iteration, model.state_dict_for_save_checkpoint(), rng_state,
                                    optimizer and optimizer.state_dict(), scheduler and scheduler.state_dict())
            save_torch_format(directory, state, optimizer if distributed else None)
        else:
            metadata = sharded_metadata(sharding_type if distributed else None)
            model_state = model.sharded_state_dict(metadata=metadata)
            state = file_state_dict(args, iteration, model_state, sharded_rng_state(rng_state, tp, pp))
            if optimizer is not None:
                state["optimizer"] = optimizer.sharded_state_dict(state, metadata=metadata)
                state["opt_param_scheduler"] = scheduler.state_dict()
            save_torch_dist(directory, state, {k: v for k, v in metadata.items() if k != "dp_cp_group"})
        hand_back(out_dir, SavedReference(full_logits(name, model), vars(args)))
    finally:
        stop_ranks()


def _load_rank(name, directory, out_dir, tp, pp, fmt, seed, with_optimizer, distributed):
    from megatron.core import parallel_state as ps

    start_ranks(tp, pp, seed + LOAD_SEED_OFFSET)
    try:
        model = build_model(name, tp, pp)
        expected = megatron_lm_args(name, tp=tp, pp=pp, rank=dist.get_rank(), iteration=0, seed=seed,
                                    fmt=fmt, with_optimizer=with_optimizer)
        if with_optimizer:
            _, optimizer, scheduler = build_optimizer(model, model.config, distributed=distributed)
        if fmt == "torch":
            if with_optimizer and distributed:
                prepare_distributed_optimizer_load(optimizer)
            state = load_torch_format(directory)
        else:
            tp_rank, pp_rank, _ = _ranks()
            metadata = _loaded_metadata(directory)
            sharded = {"model": model.sharded_state_dict(metadata=metadata),
                       "rng_state": sharded_rng_state(megatron_rng_state(0, tp_rank), tp, pp)}
            if with_optimizer:
                if distributed:
                    prepare_distributed_optimizer_load(optimizer)
                sharded["optimizer"] = optimizer.sharded_state_dict(sharded, is_loading=True, metadata=metadata)
            state = load_torch_dist(directory, sharded)
        version = state.get("checkpoint_version", 0)
        if version < 2.0:
            raise ValueError(f"checkpoint_version {version}: Megatron-LM reorders QKV only for its legacy models")
        check_checkpoint_args(state["args"], expected, use_dist_ckpt=fmt != "torch")
        error = strict_load_error(model, state["model"])
        failed = torch.tensor([error is not None], dtype=torch.int32)
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            if error is not None:
                with open(os.path.join(out_dir, f"load_error.{dist.get_rank():03d}"), "w") as f:
                    f.write(error)
            return
        if with_optimizer:
            optimizer.load_state_dict(state["optimizer"])
            if distributed and fmt == "torch":    # Megatron-LM's load_checkpoint: then the elements beside
                tp_rank, pp_rank, pp_size = _ranks()
                path = rank_file(directory, read_tracker(directory), tp_rank, pp_rank, pp_size)
                optimizer.load_parameter_state(os.path.join(os.path.dirname(path), "distrib_optim.pt"))
            scheduler.load_state_dict(state["opt_param_scheduler"])
            tp_rank, pp_rank, _ = _ranks()
            read_state = distributed_optimizer_state_by_name if distributed else optimizer_state_by_name
            by_name = read_state(model, optimizer)
            if ps.get_data_parallel_rank() == 0:
                torch.save(by_name, os.path.join(out_dir, f"optimizer_tp{tp_rank}_pp{pp_rank}.pt"))
        restore_rng_state(state["rng_state"])
        hand_back(out_dir, full_logits(name, model))
    finally:
        stop_ranks()


def _check(name: str, tp: int, pp: int, fmt: str, dp: int = 1) -> None:
    if name not in MODEL_NAMES or fmt not in FORMATS or tp not in (1, 2, 4) or pp not in (1, 2) \
            or dp not in (1, 2) or tp * pp * dp > 4:
        raise ValueError(f"the harness runs {MODEL_NAMES} in {FORMATS} at TP 1/2/4, PP 1/2 and DP 1/2 on at most 4 "
                         f"ranks, not {name!r} in {fmt!r} at TP {tp}, PP {pp}, DP {dp}")


def run_megatron(worker, name: str, directory: str, tp: int, pp: int, *rest, world: int = 0):
    """`worker(name, directory, out_dir, tp, pp, *rest)` in `world` (tp * pp) gloo ranks: what it
    handed back (hand_back), or the ranks' MegatronLoadError."""
    import_megatron()
    out_dir = tempfile.mkdtemp(prefix="megatron_lm_")
    try:
        run_distributed(worker, world or tp * pp, name, directory, out_dir, tp, pp, *rest, timeout=TIMEOUT)
        errors = sorted(glob.glob(os.path.join(out_dir, "load_error.*")))
        if errors:
            raise MegatronLoadError("\n".join(open(path).read() for path in errors))
        result = torch.load(os.path.join(out_dir, "result.pt"), weights_only=False)
        optimizer = {}
        for path in glob.glob(os.path.join(out_dir, "optimizer_tp*_pp*.pt")):
            tp_rank, pp_rank = os.path.basename(path)[len("optimizer_tp"):-len(".pt")].split("_pp")
            optimizer[(int(tp_rank), int(pp_rank))] = torch.load(path, weights_only=False)
        if isinstance(result, SavedReference):
            result.optimizer.update(optimizer)
        elif optimizer:         # a load with_optimizer: what megatron-core's optimizer holds after it
            result["optimizer_by_name"] = optimizer
        return result
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def save_checkpoint(name: str, directory: str, *, tp: int = 1, pp: int = 1, dp: int = 1, fmt: str = "torch",
                    seed: int = 1234, iteration: int = 7, with_optimizer: bool = False,
                    steps: int = 2, distributed_optimizer: bool = False,
                    sharding_type: str = "fully_reshardable") -> SavedReference:
    _check(name, tp, pp, fmt, dp)
    if distributed_optimizer and not with_optimizer:
        raise ValueError("the harness saves the distributed optimizer with_optimizer=True")
    return run_megatron(_save_rank, name, directory, tp, pp, dp, fmt, seed, iteration, with_optimizer, steps,
                distributed_optimizer, sharding_type, world=tp * pp * dp)


def load_and_logits(name: str, directory: str, *, tp: int = 1, pp: int = 1, fmt: str = "torch",
                    seed: int = 1234, with_optimizer: bool = False) -> dict:
    logits, _ = load_with_optimizer(name, directory, tp=tp, pp=pp, fmt=fmt, seed=seed, with_optimizer=with_optimizer)
    return logits


def load_with_optimizer(name: str, directory: str, *, tp: int = 1, pp: int = 1, fmt: str = "torch",
                        seed: int = 1234, with_optimizer: bool = True, dp: int = 1,
                        distributed_optimizer: bool = False) -> tuple:
    """(logits, {(tp_rank, pp_rank): {parameter name: {field: tensor}}} read off the optimizer after
    megatron-core's optimizer.load_state_dict; a distributed optimizer's joined over the `dp` ranks)."""
    _check(name, tp, pp, fmt, dp)
    result = dict(run_megatron(_load_rank, name, directory, tp, pp, fmt, seed, with_optimizer, distributed_optimizer,
                       world=tp * pp * dp))
    return result, result.pop("optimizer_by_name", {})


def _our_logits(directory, name, out):
    """Our model loaded from `directory` at TP = world size; the full-vocabulary logits of the batch."""
    from megatron_core.inference.checkpoint_model import load_checkpoint_model
    from megatron_core.models.language_model import gather_logits

    loaded = load_checkpoint_model(directory, tensor_model_parallel_size=dist.get_world_size())
    batch = sample_batch(name)
    with torch.no_grad():
        if name == "bert":
            lm, binary = loaded.model(batch["input_ids"], batch["attention_mask"], batch["tokentype_ids"])
            logits = {"lm": gather_logits(lm), "binary": binary}
        elif name == "t5":
            logits = {"lm": gather_logits(loaded.model(batch["encoder_input_ids"], batch["decoder_input_ids"],
                                                       batch["encoder_keep"], batch["decoder_keep"]))}
        else:
            logits = {"lm": gather_logits(loaded.model(batch["input_ids"], batch["position_ids"]))}
    if dist.get_rank() == 0:
        torch.save({k: v.float() for k, v in logits.items()}, out)


def our_logits(directory, name: str, tp: int, out_dir) -> dict:
    """Our model (megatron_core's, not megatron-core's) loaded from `directory` at TP=`tp` in
    `tp` gloo processes: its logits of `name`'s fixed batch, as load_and_logits returns them.
    `out_dir`: where the result is handed back (a test's tmp_path)."""
    out = os.path.join(str(out_dir), f"ours_{name}_{tp}_{len(os.listdir(out_dir))}.pt")
    run_distributed(_our_logits, tp, str(directory), name, out)
    return torch.load(out)
