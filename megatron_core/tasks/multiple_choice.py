"""Multiple-choice tasks: FewCLUE's CHID and CLUE's C3.

CHID (CLUEbenchmark/FewCLUE datasets/chid/*.json) is JSON lines:
    {"id": 242, "candidates": ["风云人物", ... 7 idioms], "content": "...新八国联军#idiom#逼近...", "answer": 1}
test.json has no "answer". Choice i is the content with "#idiom#" replaced by candidate i,
encoded as a single text; the label is "answer". (CLUE's own CHID, with "#idiom000378#"
tags in a list of passages and 10 candidates, is another format and is not read here.)

C3 (CLUE's c3_public: d-train.json, m-train.json, d-dev.json, ... test1.1.json) is one
JSON array per file, one item a document:
    [["男：你今天晚上有时间吗?...", "女：..."],                       # the context paragraphs
     [{"question": "女的最喜欢哪种电影?", "choice": ["恐怖片", "爱情片", "喜剧片", "科幻片"],
       "answer": "喜剧片"}],                                          # its questions
     "25-35"]                                                         # the document id
Each question is one example: choice i is (the paragraphs joined by "\n", question + choice
i) and the label is the index of "answer" among the choices. A test question carries its
own "id" (the submission's id); other questions get "<document id>-<question index>".
Questions have 2 to 4 choices; the dataset pads to a fixed number (encoding.py).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from megatron_core.errors import DataError
from megatron_core.tasks.examples import MultipleChoiceExample, ReadResult
from megatron_core.tasks.json_lines import check_all_or_none_labelled, json_lines, require_file

IDIOM_BLANK = "#idiom#"


@dataclass(frozen=True)
class MultipleChoiceSpec:
    name: str
    num_choices: int        # the most choices an example of the task has
    reader: Callable[[str], ReadResult]


@dataclass(frozen=True)
class ClozeItem:
    """One CHID line as it is: the passage with its blank, the candidates, the answer (or None)."""
    guid: str
    content: str
    candidates: Tuple[str, ...]
    answer: Optional[int]


def chid_items(path: str) -> Tuple[ReadResult, List[ClozeItem]]:
    """read_chid's result and the lines as ClozeItems (zero-shot scoring fills the blank itself)."""
    items: List[ClozeItem] = []
    return read_chid(path, items), items


def read_chid(path: str, items: Optional[List[ClozeItem]] = None) -> ReadResult:
    result = ReadResult(examples=[], path=path)
    unlabelled_lines, labelled_line = [], None
    for line in json_lines(path, result):
        content = line.text("content")
        candidates = line.field("candidates")
        if not isinstance(candidates, list) or not candidates or not all(isinstance(c, str) for c in candidates):
            raise DataError(f"{line.where}: \"candidates\" is not a list of idioms; fix the line.")
        if IDIOM_BLANK not in content:
            raise DataError(f"{line.where}: \"content\" has no {IDIOM_BLANK} blank to fill; fix the line.")
        label = line.record.get("answer")
        if label is None:
            unlabelled_lines.append(line.number)
        else:
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(candidates):
                raise DataError(f"{line.where}: \"answer\" {label!r} is not the index of one of its "
                                f"{len(candidates)} candidates; fix the line.")
            labelled_line = labelled_line or line.number
        choices = [(content.replace(IDIOM_BLANK, candidate), None) for candidate in candidates]
        result.examples.append(MultipleChoiceExample(guid=line.guid(), choices=choices, label=label))
        if items is not None:
            items.append(ClozeItem(line.guid(), content, tuple(candidates), label))
    check_all_or_none_labelled(result, unlabelled_lines, labelled_line, "answer")
    return result


def read_c3(path: str) -> ReadResult:
    require_file(path)
    result = ReadResult(examples=[], path=path)
    try:
        with open(path, encoding="utf-8") as f:
            documents = json.load(f)
    except UnicodeDecodeError:
        raise DataError(f"{path} is not valid UTF-8; re-save the file as UTF-8.") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno} column "
                        f"{error.colno}); C3 files are one JSON array, fix the file.") from None
    if not isinstance(documents, list):
        raise DataError(f"{path} is a JSON {type(documents).__name__}, not the array of documents "
                        f"a C3 file holds; check the file.")
    unlabelled, labelled = [], None
    for d, document in enumerate(documents):
        where = f"{path} document {d}"
        if (not isinstance(document, list) or len(document) < 2 or not isinstance(document[0], list)
                or not isinstance(document[1], list)):
            raise DataError(f"{where} is not [paragraphs, questions, id]; fix the file.")
        context = "\n".join(str(paragraph) for paragraph in document[0])
        document_id = str(document[2]) if len(document) > 2 else str(d)
        for q, question in enumerate(document[1]):
            choices = question.get("choice") if isinstance(question, dict) else None
            if (not isinstance(question, dict) or not isinstance(question.get("question"), str)
                    or not isinstance(choices, list) or not choices):
                raise DataError(f"{where} question {q} lacks \"question\" or a \"choice\" list; fix the file.")
            answer = question.get("answer")
            if answer is None:
                label = None
                unlabelled.append(f"document {d} question {q}")
            elif answer in choices:
                label = choices.index(answer)
                labelled = labelled or f"document {d} question {q}"
            else:
                raise DataError(f"{where} question {q}: answer {answer!r} is not one of its choices "
                                f"{choices}; fix the file.")
            guid = str(question["id"]) if "id" in question else f"{document_id}-{q}"
            pairs = [(context, question["question"] + str(choice)) for choice in choices]
            result.examples.append(MultipleChoiceExample(guid=guid, choices=pairs, label=label))
    if unlabelled and labelled:
        raise DataError(f"{path} {unlabelled[0]} has no \"answer\" while {labelled} has one; "
                        f"answer every question of a train or dev file, or none in a test file.")
    return result


MULTIPLE_CHOICE_TASKS: Dict[str, MultipleChoiceSpec] = {
    "chid": MultipleChoiceSpec("chid", 7, read_chid),
    "c3": MultipleChoiceSpec("c3", 4, read_c3),
}
