"""What a task reader returns: the examples of one file and what it skipped.

`guid` is the id CLUE's submission file repeats (the line's "id" field, or the line's
0-based index where the file has none); `label` is a string as the file spells it, None
in an unlabelled test file. A multiple-choice example holds every choice as the
(text_a, text_b) pair that is encoded for it, and the index of the right one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from megatron_core.errors import DataError


@dataclass
class Example:
    guid: str
    text_a: str
    text_b: Optional[str] = None
    label: Optional[str] = None


@dataclass
class MultipleChoiceExample:
    guid: str
    choices: List[Tuple[str, Optional[str]]]
    label: Optional[int] = None


@dataclass
class ReadResult:
    """The examples read from `path`, and {reason: count} of the lines left out."""
    examples: List[Union[Example, MultipleChoiceExample]]
    skipped: Dict[str, int] = field(default_factory=dict)
    path: str = ""

    @property
    def labelled(self) -> bool:
        return any(example.label is not None for example in self.examples)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def summary(self) -> str:
        """e.g. "read 1000 examples from dev.json (skipped 12: label '-')"."""
        line = f"read {len(self.examples)} examples from {self.path}"
        if not self.labelled and self.examples:
            line += " (unlabelled)"
        total = sum(self.skipped.values())
        if total:
            if len(self.skipped) == 1:
                reasons = next(iter(self.skipped))
            else:
                reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
            line += f" (skipped {total}: {reasons})"
        return line

    def require_labels(self, label_key: str = "label") -> "ReadResult":
        """This result, or one sentence when the file has no labels at all (a training or
        dev file read with the wrong --label-key, or a test file given for training)."""
        if not self.labelled:
            raise DataError(f"{self.path} has no labels (no line has a \"{label_key}\" field); "
                            f"training and dev files need one on every line: check the file "
                            f"or the label key.")
        return self
