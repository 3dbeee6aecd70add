"""Score a whole labelled set (accuracy, macro F1) or predict an unlabelled one, at any TP x PP x DP.

The set is read once in order, padded to whole global batches with copies of its first
example marked uid -1 (the pipeline schedules need full micro-batches; the copies are never
counted), through the same forward step as training (forward only, eval mode), which hands
each micro-batch's argmax, labels and uids to the last pipeline stage; the data-parallel
ranks' pieces are gathered there. The logging rank prints

    validation accuracy: 0.8123 | macro F1: 0.8011 | lm loss: 0.4100 | iteration 40 (epoch 2.0)

and writes the same names to TensorBoard. A better accuracy than any before is saved to
<save>/best (every rank agrees on it first: the save is collective).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from .. import mpu
from ..training.data_iterators import build_data_iterators
from ..training.train_step import forward_backward
from .metrics import accuracy, macro_f1
from .predictions import write_task_predictions
from .pretrained import load_pretrained_encoder


@dataclasses.dataclass
class BestScore:
    accuracy: float = -1.0
    iteration: Optional[int] = None


class _Padded(torch.utils.data.Dataset):
    """`dataset` followed by copies of its first item (uid -1, label -1) up to `length`."""

    def __init__(self, dataset, length: int):
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, idx: int) -> dict:
        if idx < len(self.dataset):
            return self.dataset[idx]
        item = dict(self.dataset[0])
        item["uid"] = torch.tensor(-1)
        item["label"] = torch.tensor(-1)
        return item


def _outputs(context, step, dataset) -> Optional[Dict[str, List[int]]]:
    """{"uids", "predictions", "labels", "loss"} of every example, on the last pipeline stage
    (every DP rank of it); None elsewhere."""
    training = context.run.config.training
    data_parallel = mpu.get_data_parallel_world_size()
    global_batch = training.global_batch_size
    length = -(-len(dataset) // global_batch) * global_batch
    iterators = build_data_iterators([None, _Padded(dataset, length), None], training.micro_batch_size,
                                     every_stage=True, num_workers=0, seed=training.seed).valid
    iterators = iterators if isinstance(iterators, list) else [iterators]
    micro_batches = global_batch // (training.micro_batch_size * data_parallel)
    stats = []
    for chunk in context.chunks:
        chunk.eval()
    with torch.no_grad():
        for _ in range(length // global_batch):
            stats += forward_backward(step, iterators, context.chunks, micro_batches,
                                      context.p2p_config, forward_only=True)
    for chunk in context.chunks:
        chunk.train()
    if not mpu.is_pipeline_last_stage(ignore_virtual=True):
        return None
    mine = {name: torch.cat([s[name].reshape(-1) for s in stats]).tolist() for name in ("uids", "predictions",
                                                                                      "labels")}
    mine["loss"] = [float(s["lm loss"]) for s in stats]
    if data_parallel > 1:
        everyone = [None] * data_parallel
        dist.all_gather_object(everyone, mine, group=mpu.get_data_parallel_group())
        mine = {name: [v for part in everyone for v in part[name]] for name in mine}
    keep = [i for i, uid in enumerate(mine["uids"]) if uid >= 0]
    out = {name: [mine[name][i] for i in keep] for name in ("uids", "predictions", "labels")}
    out["loss"] = mine["loss"]
    return out


def _from_logging_rank(value):
    """The logging rank's (the last rank's) value on every rank."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=dist.get_world_size() - 1)
    return box[0]


def evaluate_task(context, step, dataset, task, at: str, epoch: float, best: BestScore,
                  best_dir: Optional[str]) -> Optional[float]:
    outputs = _outputs(context, step, dataset)
    scores = None
    if outputs is not None:
        labels = outputs["labels"]
        if labels and min(labels) < 0:
            raise ValueError("the validation set has unlabelled examples; give a labelled --valid-data.")
        num_classes = len(task.labels)
        scores = {"validation accuracy": accuracy(outputs["predictions"], labels),
                  "macro F1": macro_f1(outputs["predictions"], labels, num_classes),
                  "lm loss": sum(outputs["loss"]) / max(len(outputs["loss"]), 1)}
    scores = _from_logging_rank(scores)
    log = context.log
    iteration = context.state.iteration
    line = " | ".join(f"{name}: {value:.4f}" for name, value in scores.items())
    rule = "-" * 100
    when = f"epoch {epoch:.1f}" if at.startswith("iteration") else f"{at}, epoch {epoch:.1f}"
    for text in (rule, f" {line} | iteration {iteration} ({when})", rule):
        log.print(text)
    log.scalars(scores, iteration)
    if best_dir is not None and scores["validation accuracy"] > best.accuracy:
        best.accuracy, best.iteration = scores["validation accuracy"], iteration
        context.checkpoints.save_to(best_dir, context.state, keep_last=1)
        log.print(f" best validation accuracy so far: {best.accuracy:.4f} at iteration {iteration}, "
                  f"saved to {best_dir}")
    return scores["validation accuracy"]


def predict_task(context, step, dataset, task, output_dir: str, best_dir: Optional[str]) -> Optional[str]:
    """CLUE's submission file for `dataset` in `output_dir`, with the best weights when kept."""
    if best_dir is not None:
        load_pretrained_encoder(best_dir, context.run, context.chunks)
    outputs = _outputs(context, step, dataset)
    path = None
    if outputs is not None and (not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1):
        order = sorted(range(len(outputs["uids"])), key=lambda i: outputs["uids"][i])
        guids = [dataset.examples[outputs["uids"][i]].guid for i in order]
        predicted = [outputs["predictions"][i] for i in order]
        answers = predicted if task.multiple_choice else [task.labels[p] for p in predicted]
        os.makedirs(output_dir, exist_ok=True)
        path = write_task_predictions(output_dir, task.name, guids, answers)
        context.log.print(f" wrote {len(guids)} predictions to {path}")
    return _from_logging_rank(path)
