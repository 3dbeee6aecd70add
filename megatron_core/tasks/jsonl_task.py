"""Any labelled JSON-lines file as a classification task (`--task jsonl --text-key K
[--text-pair-key K2] --label-key L`).

Labels are strings as the file spells them (1 and "1" are the same label). Given no label
list, the task accepts whatever the file holds, and the caller fixes the list with
`labels_from_file(train_file, label_key)`: the sorted set of labels the training file uses,
so the label index of each class is the same on every run.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

from megatron_core.errors import DataError
from megatron_core.tasks.clue import TaskSpec, read_classification
from megatron_core.tasks.examples import ReadResult
from megatron_core.tasks.json_lines import Line, json_lines


def jsonl_task(text_key: str, label_key: str, text_pair_key: Optional[str] = None,
               labels: Optional[Sequence[str]] = None) -> TaskSpec:
    fixed = tuple(str(label) for label in labels) if labels is not None else None
    hint = f" (--text-key {text_key}" + (f", --text-pair-key {text_pair_key}" if text_pair_key else "") + ")"

    def texts(line: Line) -> Tuple[str, Optional[str]]:
        return (line.text(text_key, hint),
                line.text(text_pair_key, hint) if text_pair_key is not None else None)

    def reader(path: str) -> ReadResult:
        return read_classification(path, texts, fixed, label_key=label_key)

    return TaskSpec(name="jsonl", labels=fixed, pair=text_pair_key is not None, reader=reader)


def labels_from_file(path: str, label_key: str) -> Tuple[str, ...]:
    """The sorted set of labels of a training file; every line must have one."""
    seen = set()
    for line in json_lines(path, ReadResult(examples=[], path=path)):
        line.field(label_key, f" (--label-key {label_key})")
        seen.add(line.label(label_key, None))
    if not seen:
        raise DataError(f"{path} holds no labelled line; a training file needs lines with "
                        f"a \"{label_key}\" field.")
    return tuple(sorted(seen))
