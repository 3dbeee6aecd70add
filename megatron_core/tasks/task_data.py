"""What a --task and its files give a finetuning run: the reader, the labels, the datasets.

    task = resolve_task(args)                       # one sentence for a bad --task or missing key
    task.labels, task.multiple_choice, task.num_choices
    result = task.read(path)                        # ReadResult: examples + skipped counts
    dataset = task.dataset(result.examples, tokenizer, seq_length)

CLUE's classification tasks carry their label sets; `--task jsonl` takes its labels from the
training file (sorted); chid and c3 are multiple choice (one logit per choice).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from ..errors import ConfigError
from .clue import CLUE_TASKS
from .encoding import ClassificationDataset, MultipleChoiceDataset
from .examples import ReadResult
from .jsonl_task import jsonl_task, labels_from_file
from .multiple_choice import MULTIPLE_CHOICE_TASKS

TASK_NAMES = tuple(sorted(CLUE_TASKS)) + tuple(sorted(MULTIPLE_CHOICE_TASKS)) + ("jsonl",)


@dataclass(frozen=True)
class Task:
    name: str
    reader: Callable[[str], ReadResult]
    labels: Tuple[str, ...]               # class labels; for multiple choice the choice indices as text
    multiple_choice: bool = False
    num_choices: Optional[int] = None

    @property
    def num_classes(self) -> int:
        return 1 if self.multiple_choice else len(self.labels)

    def read(self, path: str, log: Callable[[str], None] = print) -> ReadResult:
        result = self.reader(path)
        log(result.summary())
        return result

    def dataset(self, examples, tokenizer, seq_length: int, log: Callable[[str], None] = print):
        if self.multiple_choice:
            return MultipleChoiceDataset(examples, tokenizer, seq_length, self.num_choices, log=log)
        return ClassificationDataset(examples, tokenizer, seq_length, self.labels, log=log)


def resolve_task(args) -> Task:
    name = args.task
    if name is None:
        raise ConfigError(f"--task is required: one of {', '.join(TASK_NAMES)}.")
    if name in CLUE_TASKS:
        spec = CLUE_TASKS[name]
        return Task(name, spec.reader, tuple(spec.labels))
    if name in MULTIPLE_CHOICE_TASKS:
        spec = MULTIPLE_CHOICE_TASKS[name]
        return Task(name, spec.reader, tuple(str(i) for i in range(spec.num_choices)), True, spec.num_choices)
    if name == "jsonl":
        if not args.text_key or not args.label_key:
            raise ConfigError("--task jsonl needs --text-key and --label-key (and --text-pair-key for pairs).")
        if not args.train_data:
            raise ConfigError("--task jsonl takes its labels from --train-data; give it.")
        spec = jsonl_task(args.text_key, args.label_key, args.text_pair_key)
        return Task(name, spec.reader, tuple(labels_from_file(args.train_data, args.label_key)))
    raise ConfigError(f"--task {name} is unknown; use one of {', '.join(TASK_NAMES)}.")
