"""Predictions in CLUE's submission format.

One JSON object a line, in the order of the test file: {"id": ..., "label": ...}, the label
string for the classification tasks and the index of the chosen answer for C3; FewCLUE's
CHID writes {"id": ..., "answer": index}. An id that is a decimal number is written as a
JSON number, as the test files and CLUE's examples spell it ({"id": 0, "label": "0"}).

File names, from CLUE's submission rules (the README of clue_submit_examples.zip, update
of 2021-09-04: "<task><version>_predict.json"; CLUE 1.1 renamed the files of the tasks
whose test set changed) and FewCLUE's examples (resources/fewclue_submit_examples/):

    afqmc_predict.json  tnews11_predict.json  iflytek_predict.json  ocnli_50k_predict.json
    cmnli_predict.json  csl_predict.json      cluewsc11_predict.json  c311_predict.json
    chidf_predict.json (FewCLUE)

CLUE 1.0 test sets take tnews10_, cluewsc10_ and c310_predict.json instead. Any other task
(the jsonl task) writes <task>_predict.json.
"""
from __future__ import annotations

import json
import os
from typing import Sequence, Union

from megatron_core.atomic_files import write_atomically

PREDICTION_FILES = {
    "afqmc": "afqmc_predict.json",
    "tnews": "tnews11_predict.json",
    "iflytek": "iflytek_predict.json",
    "ocnli": "ocnli_50k_predict.json",
    "cmnli": "cmnli_predict.json",
    "csl": "csl_predict.json",
    "wsc": "cluewsc11_predict.json",
    "cluewsc2020": "cluewsc11_predict.json",
    "c3": "c311_predict.json",
    "chid": "chidf_predict.json",
}
PREDICTION_KEYS = {"chid": "answer"}


def prediction_file_name(task: str) -> str:
    return PREDICTION_FILES.get(task, f"{task}_predict.json")


def _submission_id(guid: str) -> Union[int, str]:
    return int(guid) if guid.isdigit() else guid


def write_clue_predictions(path: str, guids: Sequence[str], predictions: Sequence[Union[str, int]],
                           key: str = "label") -> None:
    """One {"id": guid, key: prediction} line per example, published atomically at `path`."""
    if len(guids) != len(predictions):
        raise ValueError(f"{len(guids)} examples but {len(predictions)} predictions")
    lines = [json.dumps({"id": _submission_id(str(guid)), key: prediction}, ensure_ascii=False)
             for guid, prediction in zip(guids, predictions)]
    text = "".join(line + "\n" for line in lines).encode("utf-8")
    write_atomically(path, lambda f, _tmp: f.write(text))


def write_task_predictions(directory: str, task: str, guids: Sequence[str],
                           predictions: Sequence[Union[str, int]]) -> str:
    """The task's submission file in `directory` (CLUE's name and key); returns its path."""
    path = os.path.join(directory, prediction_file_name(task))
    write_clue_predictions(path, guids, predictions, PREDICTION_KEYS.get(task, "label"))
    return path
