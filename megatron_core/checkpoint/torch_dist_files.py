"""--ckpt-format torch_dist: the training loop's saves in Megatron-LM's torch_dist format.

    files = TorchDistFiles(run, chunks, backend)     # backend.checkpoint_files(run, chunks)
    error, written = files.save(directory, iteration, path, contents_for)   # every rank, collectively

What one save writes (megatron_lm/torch_dist.py describes the files):

    <save>/iter_NNNNNNN/.metadata, __<rank>_0.distcp   every (TP, PP) rank's tensors, written in
                                              parallel by torch.distributed.checkpoint
    <save>/iter_NNNNNNN/common.pt, metadata.json       rank 0: args (Megatron-LM's Namespace),
                                              checkpoint_version 3.0, iteration, opt_param_scheduler
    <save>/iter_NNNNNNN/checkpoint_manifest.json   the Checkpointer: every file above, its size and
                                              checksums (manifest.py); each rank reads back the
                                              .distcp file DCP wrote for it, rank 0 the others
    <save>/latest_checkpointed_iteration.txt   the Checkpointer, last, once every rank succeeded

Each (TP, PP) rank of data-parallel rank 0 passes its chunks' tensors under megatron-core's
names, numbered across the model (its sharding map's global_key), as a slice of the whole
tensor: where the map says it is split (split_dim; stride 2 is SwiGLU's [gate; up]: gated),
replicated tensors whole (torch.distributed.checkpoint keeps one copy). A stage's copy of a
tensor another stage owns (the tied output table of the last stage) is not written:
megatron-core's torch_dist holds the first stage's only. Data-parallel ranks > 0 pass nothing
but still take part: the save is collective over the whole world. Each (TP, PP) rank also
writes its RNG state as Megatron-LM's `rng_state/shard_<pp>.<tp>_<PP>.<TP>` object.

A T5 (Megatron-LM's: learned positions, one pipeline stage; arguments.py refuses a split) is
written as megatron-core's T5Model asks for it: its position table and LM head under both of
their names (key_names.T5_ALIASES), their optimizer state too, and common.pt's args with the two
stack depths pretrain_t5.py builds from. megatron-core's T5 head has the vocabulary bias exactly
when it is tied, so a tied run without it (--no-t5-lm-head-bias) is refused at the start.

The optimizer's state goes with it as megatron-core's torch_dist keeps it (torch_dist_optimizer.py:
the plain optimizer's layout, or with --use-distributed-optimizer megatron-core's
fully_reshardable one, joined from the data-parallel ranks), so Megatron-LM's --load and ours
resume with it. Loading is the resharder's (reshard/torch_dist_source.py), at any TP x PP x DP,
so everything else here is LayoutFiles'.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from .. import mpu
from ..errors import CheckpointError, describe_os_error
from ..mpu.sharding_map import ShardingMap
from .checksums import FileRecord, file_checksums
from .contents import MEGATRON_CHECKPOINT_VERSION
from .layout_files import LayoutFiles
from .model_record import FAMILY_KEY
from .megatron_lm.args import check_megatron_can_build, megatron_args_of
from .megatron_lm.key_names import mcore_names
from .megatron_lm.rng import torch_dist_rng_object
from .megatron_lm.optimizer import adam_hyperparameters
from .megatron_lm.torch_dist import write_torch_dist, write_torch_dist_shards
from .torch_dist_optimizer import (common_optimizer, content_metadata, layout_for, optimizer_tensors, shard_of,
                                   whole_parameter_states)

# The families megatron-core's GPTModel, BertModel and T5Model hold; their torch_dist names are known.
TORCH_DIST_FAMILIES = ("gpt", "bert", "t5")


def check_torch_dist_model(family: str, config, options: Mapping) -> None:
    """One sentence when megatron-core could not build this run's model to load its torch_dist save:
    another family, what Megatron-LM's models do not build, or a T5 whose LM head differs from
    megatron-core's (T5LMHead has the vocabulary bias exactly when it is tied to the word table)."""
    if family not in TORCH_DIST_FAMILIES:
        raise CheckpointError(f"--ckpt-format torch_dist writes megatron-core's GPT, BERT and T5 models "
                              f"({', '.join(TORCH_DIST_FAMILIES)}), not a {family} model; save it with "
                              f"--ckpt-format megatron.")
    check_megatron_can_build(config, "--ckpt-format torch_dist: this run")
    if family == "t5" and config.share_embeddings_and_output_weights and not options.get("lm_head_bias"):
        raise CheckpointError("--ckpt-format torch_dist writes megatron-core's T5, whose LM head tied to the word "
                              "embeddings adds a vocabulary bias this run does not have (--no-t5-lm-head-bias), so "
                              "megatron-core could not load the save; drop --no-t5-lm-head-bias, or save with "
                              "--ckpt-format megatron.")


def local_torch_dist_state(contents: Mapping, tensor_rank: int, tensor_size: int) -> Dict[str, object]:
    """{megatron-core key numbered across the model: Shard or whole tensor} of one rank's
    contents (contents.py: its chunks' state dicts and their sharding maps)."""
    state: Dict[str, object] = {}
    maps, family = contents.get("sharding_map") or {}, contents.get(FAMILY_KEY)
    for chunk_key, chunk_state in ((k, v) for k, v in contents.items() if k in maps):
        smap = ShardingMap.from_dict(maps[chunk_key])
        for key, tensor in chunk_state.items():
            spec = smap[key]
            if spec.copy_of is not None:        # another stage's tensor: written by its owner
                continue
            shard = shard_of(tensor, spec, tensor_rank, tensor_size, key)
            for name in mcore_names(smap.global_key(key), family):     # a T5's two names of one tensor
                state[name] = shard
    if not state:
        raise CheckpointError("this rank's model chunks carry no sharding map, so their torch_dist slices are "
                              "unknown; save with --ckpt-format megatron.")
    return state


def torch_dist_common(contents: Mapping, config, tp: int, pp: int) -> dict:
    """common.pt of the save: Megatron-LM's args, version, iteration and scheduler."""
    args = megatron_args_of(contents, config, tp, pp, contents.get("padded_vocab_size"))
    return {"args": args, "checkpoint_version": MEGATRON_CHECKPOINT_VERSION, "iteration": int(contents["iteration"]),
            "opt_param_scheduler": dict(contents.get("opt_param_scheduler") or {})}


def rng_objects(contents: Mapping, tensor_rank: int, tensor_size: int, pipeline_rank: int,
                pipeline_size: int) -> Dict[str, object]:
    """This (TP, PP) rank's rng_state sharded object, as Megatron-LM names it."""
    seed = int((contents.get("args") or {}).get("seed") or 1234)
    return torch_dist_rng_object(list(contents.get("rng_state") or []), seed, tensor_rank, tensor_size, pipeline_rank,
                                 pipeline_size)


class TorchDistFiles(LayoutFiles):
    format_name = "torch_dist"

    def save(self, directory: str, iteration: int, model_path: str,
             contents_for: Callable) -> Tuple[Optional[str], List[FileRecord]]:
        """Every rank calls (collective): (the first failing rank's error as a sentence or None,
        this rank's files' records)."""
        p = self.run.parallel
        tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
        tp_rank, pp_rank = mpu.get_tensor_model_parallel_rank(), mpu.get_pipeline_model_parallel_rank()
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        iteration_dir = self.layout.iteration_dir(directory, iteration)
        layout = layout_for(p.use_distributed_optimizer)
        local, objects, common, error = {}, {}, {}, None
        try:        # everything that can fail before the collective write, agreed on first
            contents = contents_for(self.backend.state_dict(), include_optimizer=True)
            common = torch_dist_common(contents, self.run.model, tp, pp)
            common["content_metadata"] = content_metadata(layout)
            states, step = whole_parameter_states(contents, distributed=p.use_distributed_optimizer)
            common["optimizer"] = common_optimizer(step, adam_hyperparameters(dataclasses.asdict(self.run.optimizer)),
                                                   self.run.model.params_dtype != torch.float32, layout)
            if self.dp_rank == 0:
                local = local_torch_dist_state(contents, tp_rank, tp)
                local.update(optimizer_tensors(contents, states, layout, tp_rank, tp))
                objects = rng_objects(contents, tp_rank, tp, pp_rank, pp)
            os.makedirs(iteration_dir, exist_ok=True)
            stale = os.path.join(iteration_dir, "metadata.json")
            if rank0 and os.path.exists(stale):     # a save over an earlier one reads as unfinished until done
                os.remove(stale)
        except OSError as e:
            error = describe_os_error(e)
        except CheckpointError as e:
            error = str(e)
        if _any_rank_failed(error is not None):
            return error, []    # None on the ranks that succeeded: the Checkpointer names the failing one
        try:
            if dist.is_initialized():
                write_torch_dist_shards(iteration_dir, local, common, objects=objects)
            else:
                write_torch_dist(iteration_dir, local, common, write_tracker=False, objects=objects)
            return None, written_files(iteration_dir, dist.get_rank() if dist.is_initialized() else 0)
        except OSError as e:
            return describe_os_error(e), []
        except CheckpointException as e:
            causes = [failure[0] if isinstance(failure, tuple) else failure for failure in e.failures.values()]
            errors = [cause for cause in causes if isinstance(cause, OSError)]
            return (describe_os_error(errors[0]) if errors else str(e)), []


def written_files(iteration_dir: str, rank: int) -> List[FileRecord]:
    """The records of what `rank` wrote: DCP names a rank's files __<rank>_<n>.distcp (its
    FileSystemWriter writes them itself, so they are read back here, still in the page cache);
    rank 0 also wrote .metadata, common.pt and metadata.json."""
    names = sorted(n for n in os.listdir(iteration_dir) if n.startswith(f"__{rank}_") and n.endswith(".distcp"))
    if rank == 0:
        names += [".metadata", "common.pt", "metadata.json"]
    return [file_checksums(os.path.join(iteration_dir, name)) for name in names]


def _any_rank_failed(failed: bool) -> bool:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return failed
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, failed)      # any backend (a CPU tensor would not do for NCCL)
    return any(everyone)
