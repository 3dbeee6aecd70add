"""How a model family trains: the training half of its spec, and what the loop hands it.

    spec = TrainSpec("gpt", forward_step, datasets_provider, add_arguments=add_data_options_arguments,
                     data_on_every_stage=lambda run: run.data_options.reset_attention_mask)
    pretrain(spec, argv)                          # training/loop.py

    forward_step(data_iterator, model, run) -> (output, loss_func)
    datasets_provider(run, [train, valid, test] sample counts) -> (train, valid, test) datasets

The model half (config, builder per stage, options, parameter count, generation, HF
mapping) is the family's ModelFamily in models/registry.py, named by `family`; models/
may not import training/, so the batch, loss and datasets live here and with the entry
point (pretrain_*.py holds its TrainSpec, as Megatron's entry points hold their forward
step and providers). No table of TrainSpecs: only an entry point trains a family.

`run` (TrainRun) is how the loop hands the forward step and the providers the run's
config, built once from the flags: no attribute set on an nn.Module, no global.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Union

import torch

from ..models.registry import ModelFamily, get_family
from ..mpu.layout import PipelineStage
from .config import RunConfig
from .data_options import DataOptions, data_options_from_args
from .vocabulary import Vocabulary


@dataclass(frozen=True)
class TrainRun:
    """What a family's training pieces read of the run."""
    config: RunConfig
    family: ModelFamily
    model_options: Dict[str, Any]       # the builder's arguments beyond the config; recorded in checkpoints
    padded_vocab_size: Optional[int]
    tokenizer: Any                      # None in a dry run given --vocab-size
    data_options: DataOptions = field(default_factory=DataOptions)

    def build_model(self, stage: Optional[PipelineStage] = None) -> torch.nn.Module:
        """One pipeline chunk of the run's model (stage None: the whole model)."""
        return self.family.build_model(self.config.model, self.padded_vocab_size, self.model_options, stage)

    def model_shape(self):
        """The model without weights: its parameter count and memory estimate."""
        flags = {"decoder_seq_length": self.data_options.decoder_seq_length}
        return self.family.model_shape(self.config.model, self.padded_vocab_size, self.model_options, flags)


@dataclass(frozen=True)
class TrainSpec:
    family: str                                    # models/registry.py's name
    forward_step: Callable                         # (data_iterator, model, run) -> (output, loss_func)
    datasets_provider: Callable                    # (run, sample counts) -> (train, valid, test)
    add_arguments: Optional[Callable] = None       # the family's own flags: parser -> parser
    data_on_every_stage: Union[bool, Callable[[TrainRun], bool]] = False   # middle stages need batches too
    p2p_config: Optional[Callable] = None          # (run) -> P2PConfig, when stages exchange more than one tensor
    # Downstream tasks: a whole-set evaluation in place of the validation loss (loop.LoopContext, at),
    # the extra iterations to run it at (an epoch's end), and what runs after the last one (--predict).
    initialize_weights: Optional[Callable] = None      # (run, chunks, state) after --load -> whether it loaded weights
    evaluation: Optional[Callable] = None
    evaluation_iterations: Optional[Callable] = None   # (run) -> set of iterations
    after_training: Optional[Callable] = None          # (LoopContext) -> None

    def reads_data_on_every_stage(self, run: TrainRun) -> bool:
        return self.data_on_every_stage(run) if callable(self.data_on_every_stage) else self.data_on_every_stage


def train_run(spec: TrainSpec, args, config: RunConfig, vocabulary: Vocabulary) -> TrainRun:
    """The TrainRun of validated flags and the run's vocabulary (vocabulary.py's)."""
    family = get_family(spec.family)
    return TrainRun(config, family, family.options(vars(args)), vocabulary.padded_size, vocabulary.tokenizer,
                    data_options_from_args(args))
