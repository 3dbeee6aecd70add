"""Reading task files line by line, each mistake one sentence naming the file and line.

`json_lines(path, result)` yields a `Line` per non-blank line (blank lines are counted in
`result.skipped`); a `Line` hands out its fields, and a missing or mistyped field, a bad
JSON line or a label outside the task's set stops the reading with the file, the line
number, the value and the fix.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

from megatron_core.errors import DataError
from megatron_core.tasks.examples import ReadResult


def require_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"task file {path} does not exist; check the data path.")


@dataclass
class Line:
    path: str
    number: int          # 1-based, as editors show it
    record: dict

    @property
    def where(self) -> str:
        return f"{self.path} line {self.number}"

    @property
    def index(self) -> int:
        """0-based position of the line in the file: the guid of a line without an id."""
        return self.number - 1

    def guid(self, id_key: str = "id") -> str:
        return str(self.record[id_key]) if id_key in self.record else str(self.index)

    def field(self, key: str, hint: str = "") -> Any:
        if key not in self.record:
            fields = ", ".join(sorted(map(str, self.record))) or "none"
            raise DataError(f"{self.where} has no \"{key}\" field (it has {fields}){hint}; "
                            f"fix the line or pick the task or key that matches the file.")
        return self.record[key]

    def text(self, key: str, hint: str = "") -> str:
        value = self.field(key, hint)
        if not isinstance(value, str):
            raise DataError(f"{self.where}: field \"{key}\" is a JSON {type(value).__name__}, "
                            f"not a string; fix the line or pick the key that holds the text.")
        return value

    def label(self, key: str, labels: Optional[Sequence[str]]) -> Optional[str]:
        """The line's label as a string, None when the line has none (a test file); a value
        outside `labels` is one sentence with the allowed set."""
        if key not in self.record:
            return None
        value = self.record[key]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise DataError(f"{self.where}: label {value!r} in \"{key}\" is not a string or an "
                            f"integer; fix the line.")
        value = str(value)
        if labels is not None and value not in labels:
            raise DataError(f"{self.where} has label {value!r}, which is not one of the task's "
                            f"labels ({', '.join(labels)}); fix the line or pick the task "
                            f"these labels belong to.")
        return value


def json_lines(path: str, result: ReadResult) -> Iterator[Line]:
    """Each non-blank line of `path` as a `Line`; blank lines counted in `result`."""
    require_file(path)
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                result.skip("blank line")
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path} line {number} is not valid UTF-8; re-save the file "
                                f"as UTF-8.") from None
            except json.JSONDecodeError as error:
                raise DataError(f"{path} line {number} is not valid JSON ({error.msg} at column "
                                f"{error.colno}); fix or remove that line.") from None
            if not isinstance(record, dict):
                raise DataError(f"{path} line {number} is a JSON {type(record).__name__}, not an "
                                f"object; each line must be one {{...}} record.")
            yield Line(path, number, record)


def check_all_or_none_labelled(result: ReadResult, unlabelled_lines: Sequence[int],
                               labelled_line: Optional[int], label_key: str) -> None:
    """A file is labelled (train, dev) or not (test): a mix means a damaged line."""
    if unlabelled_lines and labelled_line is not None:
        raise DataError(f"{result.path} line {unlabelled_lines[0]} has no \"{label_key}\" "
                        f"field while line {labelled_line} has one; give every line of a "
                        f"train or dev file a label, or none in a test file.")
