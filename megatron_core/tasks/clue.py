"""CLUE's classification tasks, read from the JSON-lines files CLUE distributes.

Each task directory holds train.json, dev.json and test.json, one JSON object a line; test
lines carry an "id" and no label. Field names and label sets follow CLUE's README and its
baselines (CLUEbenchmark/CLUE: baselines/models/classifier_utils.py and
baselines/models_pytorch/classifier_pytorch/processors/clue.py):

| task  | text_a                         | text_b      | labels                              |
|-------|--------------------------------|-------------|-------------------------------------|
| afqmc | sentence1                      | sentence2   | "0", "1"                            |
| tnews | sentence                       | -           | "100".."116" but "105", "111" (15)  |
| iflytek | sentence                     | -           | "0".."118"                          |
| ocnli, cmnli | sentence1               | sentence2   | entailment, neutral, contradiction  |
| csl   | the "keyword" list joined by " " | abst      | "0", "1"                            |
| wsc   | text with the spans marked     | -           | "true", "false"                     |

OCNLI and CMNLI lines whose label is "-" (annotators did not agree) are skipped and
counted, as CLUE's baseline drops them. For WSC (CLUEWSC2020) the baseline marks the noun
(target.span1_text at span1_index) with "_" on both sides and the pronoun (span2_text at
span2_index) with "[" and "]", and classifies that one text: "_床_上 ... [它]".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

from megatron_core.errors import DataError
from megatron_core.tasks.examples import Example, ReadResult
from megatron_core.tasks.json_lines import Line, check_all_or_none_labelled, json_lines

TextsOfLine = Callable[[Line], Tuple[str, Optional[str]]]


@dataclass(frozen=True)
class TaskSpec:
    """A classification task: its labels (the strings its files use; None where they are
    taken from the training file), whether it classifies a pair, and its file reader."""
    name: str
    labels: Optional[Tuple[str, ...]]
    pair: bool
    reader: Callable[[str], ReadResult]


def read_classification(path: str, texts: TextsOfLine, labels: Optional[Sequence[str]],
                        label_key: str = "label", skip_labels: Sequence[str] = ()) -> ReadResult:
    """Examples from a JSON-lines file: `texts(line)` gives (text_a, text_b); lines whose label
    is in `skip_labels` are counted as skipped ("label '-'")."""
    result = ReadResult(examples=[], path=path)
    unlabelled_lines, labelled_line = [], None
    for line in json_lines(path, result):
        raw_label = line.record.get(label_key)
        if raw_label is not None and str(raw_label) in skip_labels:
            result.skip(f"label {str(raw_label)!r}")
            continue
        label = line.label(label_key, labels)
        if label is None:
            unlabelled_lines.append(line.number)
        elif labelled_line is None:
            labelled_line = line.number
        text_a, text_b = texts(line)
        result.examples.append(Example(guid=line.guid(), text_a=text_a, text_b=text_b, label=label))
    check_all_or_none_labelled(result, unlabelled_lines, labelled_line, label_key)
    return result


def mark_wsc_spans(text: str, noun: str, noun_index: int, pronoun: str, pronoun_index: int,
                   where: str = "the text") -> str:
    """CLUE's WSC input: the noun between "_" and "_", the pronoun between "[" and "]"."""
    spans = sorted([(noun_index, noun, "_", "_"), (pronoun_index, pronoun, "[", "]")])
    for start, span, _, _ in spans:
        if not isinstance(start, int) or text[start:start + len(span)] != span:
            raise DataError(f"{where}: target span {span!r} is not at index {start} of the text; "
                            f"fix span1_index/span2_index of that line.")
    (first, first_span, _, _), (second, _, _, _) = spans
    if first + len(first_span) > second:
        raise DataError(f"{where}: the target spans overlap; fix span1/span2 of that line.")
    pieces, cursor = [], 0
    for start, span, left, right in spans:
        pieces += [text[cursor:start], left, span, right]
        cursor = start + len(span)
    return "".join(pieces + [text[cursor:]])


def _wsc_text(line: Line) -> Tuple[str, None]:
    target = line.field("target")
    if not isinstance(target, dict):
        raise DataError(f"{line.where}: \"target\" is not an object; fix the line.")
    missing = [k for k in ("span1_text", "span1_index", "span2_text", "span2_index") if k not in target]
    if missing:
        raise DataError(f"{line.where}: \"target\" has no {', '.join(missing)}; fix the line.")
    return mark_wsc_spans(line.text("text"), target["span1_text"], target["span1_index"],
                          target["span2_text"], target["span2_index"], line.where), None


def _csl_texts(line: Line) -> Tuple[str, str]:
    keywords = line.field("keyword")
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise DataError(f"{line.where}: \"keyword\" is not a list of strings; fix the line.")
    return " ".join(keywords), line.text("abst")


def _sentence(line: Line) -> Tuple[str, None]:
    return line.text("sentence"), None


def _sentence_pair(line: Line) -> Tuple[str, str]:
    return line.text("sentence1"), line.text("sentence2")


def _clue_task(name: str, labels: Tuple[str, ...], pair: bool, texts: TextsOfLine,
               skip_labels: Sequence[str] = ()) -> TaskSpec:
    def reader(path: str) -> ReadResult:
        return read_classification(path, texts, labels, skip_labels=skip_labels)
    return TaskSpec(name=name, labels=labels, pair=pair, reader=reader)


TNEWS_LABELS = tuple(str(100 + i) for i in range(17) if i not in (5, 11))
NLI_LABELS = ("entailment", "neutral", "contradiction")

CLUE_TASKS: Dict[str, TaskSpec] = {
    "afqmc": _clue_task("afqmc", ("0", "1"), True, _sentence_pair),
    "tnews": _clue_task("tnews", TNEWS_LABELS, False, _sentence),
    "iflytek": _clue_task("iflytek", tuple(str(i) for i in range(119)), False, _sentence),
    "ocnli": _clue_task("ocnli", NLI_LABELS, True, _sentence_pair, skip_labels=("-",)),
    "cmnli": _clue_task("cmnli", NLI_LABELS, True, _sentence_pair, skip_labels=("-",)),
    "csl": _clue_task("csl", ("0", "1"), True, _csl_texts),
    "wsc": _clue_task("wsc", ("true", "false"), False, _wsc_text),
}
CLUE_TASKS["cluewsc2020"] = CLUE_TASKS["wsc"]
