"""A model for inference from a training checkpoint (--load DIR): weights only, no optimizer.

    loaded = load_checkpoint_model("ckpt/")        # after torch.distributed is initialized
    loaded = load_checkpoint_model("ckpt/", tensor_model_parallel_size=1, pipeline_model_parallel_size=2)
    loaded.model, loaded.family, loaded.args, loaded.vocab_size, loaded.padded_vocab_size

The checkpoint says everything: its family and the builder's options (`model_family`,
`model_options`: max positions, T5 decoder layers, Transformer-XL memory, BERT binary
head...), its stored TransformerConfig (`model_config`), its flags as plain values (`args`:
the tokenizer) and its parallel sizes. The model is built by the family's spec
(models/registry.py). The run's layout is TP x PP = the
world size: the sizes asked for, else the checkpoint's own when the world has that many
processes, else TP = PP = 1 on one process. Model parallelism is initialized at that
layout and every rank reads its own slices of the saved tensors through the training
loop's resharding on load (checkpoint/reshard/on_load.py): any saved TP x PP
(virtual pipeline chunks included) loads at any other, reading only what the rank holds.
The padded vocabulary is the checkpoint's (re-padded only if the run's TP does not
divide it; the extra rows are never sampled).

A checkpoint written before families were recorded has its family guessed once from its
tensor names (checkpoint/model_record.py, one printed line) and its options taken from
its args by the family's rule.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch.distributed as dist

from .. import mpu
from ..errors import CheckpointError
from ..models.registry import checkpoint_model_options, get_family
from ..checkpoint.formats import tracked_checkpoint
from ..checkpoint.model_record import saved_family
from ..checkpoint.manifest import Verification, check_intact
from ..checkpoint.reshard import checkpoint_iteration_path, open_source, resharded_chunk_states, torch_dist_directory
from ..checkpoint.state_dict_fit import load_fitting
from ..transformer.config import TransformerConfig


@dataclass
class LoadedModel:
    model: object
    family: str               # the checkpoint's family (models/registry.py): "gpt", "bert", ...
    config: TransformerConfig
    args: Dict                # the checkpoint's flags (plain values)
    vocab_size: int           # the tokenizer's
    padded_vocab_size: int
    path: str


def inference_layout(saved: Tuple[int, int], world: int, tensor_model_parallel_size: Optional[int] = None,
                     pipeline_model_parallel_size: Optional[int] = None) -> Tuple[int, int]:
    """(TP, PP) of a generation run of `world` processes for a checkpoint saved at `saved` (module doc)."""
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    if tp is None and pp is None:
        if world == saved[0] * saved[1]:
            return saved
        if world == 1:
            return 1, 1
        raise CheckpointError(f"the checkpoint was saved with TP={saved[0]} x PP={saved[1]} and this run has {world} "
                              f"processes; give --tensor-model-parallel-size and --pipeline-model-parallel-size whose "
                              f"product is {world}.")
    tp = tp if tp is not None else max(world // (pp or 1), 1)
    pp = pp if pp is not None else max(world // tp, 1)
    if tp < 1 or pp < 1 or tp * pp != world:
        raise CheckpointError(f"--tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp} does not "
                              f"equal the {world} processes of this run; launch {max(tp * pp, 1)} processes (torchrun "
                              f"--nproc-per-node {max(tp * pp, 1)}) or change the sizes.")
    return tp, pp


def _check_head(path: str, head: Dict) -> None:
    if not isinstance(head.get("model_config"), dict) or not isinstance(head.get("args"), dict):
        raise CheckpointError(f"{path} stores no model_config and args as plain values; generation needs a "
                              f"checkpoint saved by this package.")


def _print_rank0(line: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(line, file=sys.stderr, flush=True)


def load_checkpoint_model(directory: str, tensor_model_parallel_size: Optional[int] = None,
                          pipeline_model_parallel_size: Optional[int] = None,
                          verify_checksums: bool = True) -> LoadedModel:
    """Initialize model parallelism for this world and load the checkpoint (module doc).
    Every rank calls it: the weights' files are checked against the checkpoint's manifest
    first, each rank checking its share (sizes always, checksums unless verify_checksums is False)."""
    if torch_dist_directory(directory) is None:
        tracked_checkpoint(directory)       # one sentence for a directory that holds no checkpoint
    check_intact(checkpoint_iteration_path(directory), Verification(checksums=verify_checksums, optimizer=False),
                 collectively=True)
    source = open_source(directory, verify=None)
    head = source.head
    where = source.model_path(0, 0)
    _check_head(where, head)
    saved = (int(source.tp), int(source.pp))
    world = dist.get_world_size() if dist.is_initialized() else 1
    tp, pp = inference_layout(saved, world, tensor_model_parallel_size, pipeline_model_parallel_size)
    args = head["args"]
    family = get_family(saved_family(where, head, list(source.owners)))
    options = checkpoint_model_options(family, head)
    config = TransformerConfig.from_dict(head["model_config"])
    # Dropout and recomputation mean nothing here; sequence parallelism cannot split one new token.
    config = config.replace(tensor_model_parallel_size=tp, sequence_parallel=False, recompute_granularity=None,
                            hidden_dropout=0.0, attention_dropout=0.0)
    padded = int(head.get("padded_vocab_size") or args.get("padded_vocab_size"))
    vocab = int(head.get("vocab_size") or padded)
    if padded % tp:
        padded = mpu.pad_vocab_size(padded, config.make_vocab_size_divisible_by, tp)
    split = None
    if family.encoder_decoder and pp > 1:
        split = args.get("pipeline_model_parallel_split_rank") if pp == saved[1] else None
        split = split or pp // 2      # encoder stages first, then as many decoder stages
    mpu.initialize_model_parallel(tp, pp, pipeline_model_parallel_split_rank=split)
    model = family.build_model(config, padded, options, mpu.get_pipeline_stage())
    states, _ = resharded_chunk_states(source, [model], mpu.get_tensor_model_parallel_rank(), tp, padded,
                                       with_optimizer=False)
    load_fitting(model, states[0], f"{directory}: the weights do not fit the {family.name} model its stored config "
                                   f"describes", "the checkpoint was changed after it was written; restore it.")
    if (tp, pp) != saved:
        _print_rank0(f"resharded checkpoint {directory} from TP={saved[0]} PP={saved[1]} to TP={tp} PP={pp} on load")
    model.eval()
    return LoadedModel(model, family.name, config, args, vocab, padded, directory)
