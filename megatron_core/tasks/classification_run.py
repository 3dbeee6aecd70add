"""finetune_classification.py's run: a downstream task trained by the shared loop.

    options, argv = task_options(argv)       # the task, its files, --train-iters from --epochs
    pretrain(classification_spec(options), argv)

As Megatron-LM's tasks/finetune_utils: --epochs passes over the training set (each in its
own shuffled order, data/epoch_dataset.py), an incomplete last global batch dropped; the
model is the registry's "classification" family (models/classification.py) started from
--pretrained-checkpoint's encoder (tasks/pretrained.py). The whole validation set is scored
every --eval-interval iterations and at each epoch's end (classification_eval.py): accuracy
and macro F1 on one line, `validation accuracy: 0.8123 | macro F1: 0.8011`, the same names in
TensorBoard, and with --save the best so far kept in <save>/best. --predict then writes CLUE's
submission file for --test-data with the best weights.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..data.epoch_dataset import EpochShuffledDataset
from ..errors import ConfigError, DataError
from ..pipeline import P2PConfig
from ..training.arguments import parse_args
from ..training.batches import receive_micro_batch
from ..training.dry_run import intended_world_size
from ..training.train_spec import TrainSpec
from .arguments import add_task_arguments
from .classification_eval import BestScore, evaluate_task, predict_task
from .pretrained import load_pretrained_encoder
from .task_data import Task, resolve_task


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    task: Task
    train_data: str
    valid_data: Optional[str]
    test_data: Optional[str]
    pretrained_checkpoint: Optional[str]
    predict: bool
    predict_output: Optional[str]
    save: Optional[str]
    seq_length: int
    epochs: int
    iterations_per_epoch: int


def _given(argv: List[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in argv)


def task_options(argv: Optional[List[str]]) -> Tuple[TaskOptions, List[str]]:
    """The task's options, and `argv` with --train-iters (from --epochs), --num-classes and
    --multiple-choice that the task and its training file imply (and, with --save, a
    --save-interval of one epoch unless given)."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, add_task_arguments)
    task = resolve_task(args)
    if not args.train_data:
        raise ConfigError("--train-data is required: the task's training file (CLUE: train.json).")
    if args.epochs is None or args.epochs < 1:
        raise ConfigError("--epochs N (1 or more) is required: it sets --train-iters to N passes over --train-data.")
    if _given(argv, "--train-iters"):
        raise ConfigError("--train-iters follows from --epochs and the training file here; give --epochs only.")
    if args.seq_length is None:
        raise ConfigError("--seq-length is required: every example is cut or padded to it.")
    if args.predict and not (args.test_data or args.valid_data):
        raise ConfigError("--predict writes predictions for --test-data (or --valid-data); give one.")
    examples = len(task.reader(args.train_data).examples)
    world = intended_world_size(args)
    data_parallel = max(1, world // (args.tensor_model_parallel_size * args.pipeline_model_parallel_size))
    global_batch = args.global_batch_size or args.micro_batch_size * data_parallel
    per_epoch = examples // global_batch
    if per_epoch < 1:
        raise ConfigError(f"--train-data {args.train_data} holds {examples} examples, fewer than one global batch "
                          f"({global_batch}); lower --global-batch-size or --micro-batch-size.")
    if args.num_classes is not None and args.num_classes != task.num_classes:
        raise ConfigError(f"--num-classes {args.num_classes} disagrees with --task {task.name}, which has "
                          f"{task.num_classes} ({', '.join(task.labels)}); drop --num-classes.")
    argv += ["--train-iters", str(args.epochs * per_epoch)]
    if args.num_classes is None:
        argv += ["--num-classes", str(task.num_classes)]
    if task.multiple_choice and not args.multiple_choice:
        argv.append("--multiple-choice")
    if args.class_labels is None:
        argv += ["--class-labels", json.dumps(list(task.labels), ensure_ascii=False)]
    if args.save and args.save_interval is None:       # a checkpoint at each epoch's end
        argv += ["--save-interval", str(per_epoch)]
    options = TaskOptions(task, args.train_data, args.valid_data, args.test_data, args.pretrained_checkpoint,
                          args.predict, args.predict_output, args.save, args.seq_length, args.epochs, per_epoch)
    return options, argv


# --- the forward step ---------------------------------------------------------------------------------------
def forward_step(data_iterator, model, run, multiple_choice: bool, with_predictions: bool = False):
    keys = ["text", "types", "padding_mask", "label", "uid"] + (["choice_mask"] if multiple_choice else [])
    data = receive_micro_batch(data_iterator, keys)
    if data is None:
        raise DataError("a pipeline stage has no batch; the classification run reads data on every stage.")
    logits = model(data["text"], data["padding_mask"], data["types"])

    def loss_func(logits):
        logits = logits.float()
        if multiple_choice:         # padded choices (C3 questions with fewer) are never chosen
            logits = logits.masked_fill(data["choice_mask"] == 0, float("-inf"))
        labels = data["label"]
        counted = (labels >= 0).float()
        per_example = F.cross_entropy(logits, labels.clamp(min=0), reduction="none")
        loss = (per_example * counted).sum() / counted.sum().clamp(min=1.0)
        stats = {"lm loss": loss.detach()}
        if with_predictions:
            stats.update(predictions=logits.argmax(dim=-1), labels=labels, uids=data["uid"])
        return loss, stats
    return logits, loss_func


def _p2p_config(run, num_choices: Optional[int]) -> P2PConfig:
    """Pipeline stages send [seq, micro-batch (x choices), hidden]."""
    config = run.config
    scale = config.parallel.tensor_model_parallel_size if config.parallel.sequence_parallel else 1
    rows = config.training.micro_batch_size * (num_choices or 1)
    shape = (config.training.seq_length // scale, rows, config.model.hidden_size)
    return P2PConfig(stage_output_shapes=lambda stage: [shape], dtype=config.model.params_dtype)


def classification_spec(options: TaskOptions) -> TrainSpec:
    task = options.task
    best = BestScore()

    def read(path: str, run):
        return task.dataset(task.read(path, log=_print).examples, run.tokenizer, options.seq_length, log=_print)

    def datasets_provider(run, train_valid_test_num_samples):
        train = read(options.train_data, run)
        return EpochShuffledDataset(train, train_valid_test_num_samples[0], run.config.training.seed), None, None

    def initialize_weights(run, chunks, state) -> bool:
        if options.pretrained_checkpoint and state.iteration == 0:   # a resumed finetuning run has its own
            load_pretrained_encoder(options.pretrained_checkpoint, run, chunks)
            return True
        return False

    valid_set, test_set = {}, {}

    def evaluation(context, at: str):
        if not options.valid_data:
            return
        if "set" not in valid_set:
            valid_set["set"] = read(options.valid_data, context.run)
        step = functools.partial(forward_step, run=context.run, multiple_choice=task.multiple_choice,
                                 with_predictions=True)
        epoch = context.state.iteration / options.iterations_per_epoch
        evaluate_task(context, step, valid_set["set"], task, at, epoch, best,
                      os.path.join(options.save, "best") if options.save else None)

    def after_training(context):
        if not options.predict:
            return
        path = options.test_data or options.valid_data
        dataset = test_set.setdefault("set", read(path, context.run))
        step = functools.partial(forward_step, run=context.run, multiple_choice=task.multiple_choice,
                                 with_predictions=True)
        best_dir = os.path.join(options.save, "best") if options.save and best.iteration is not None else None
        predict_task(context, step, dataset, task, options.predict_output or options.save or ".", best_dir)

    return TrainSpec("classification", functools.partial(forward_step, multiple_choice=task.multiple_choice),
                     datasets_provider, add_task_arguments, data_on_every_stage=True,
                     p2p_config=lambda run: _p2p_config(run, task.num_choices),
                     initialize_weights=initialize_weights, evaluation=evaluation,
                     evaluation_iterations=lambda run: {k * options.iterations_per_epoch
                                                        for k in range(1, options.epochs + 1)},
                     after_training=after_training)


def _print(line: str) -> None:
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(line, flush=True)
