"""Finetune samples from prompt/text JSON lines: loss mask, truncation, bad lines."""
import json
import os

import numpy as np
import pytest

from megatron_core.data.finetune_dataset import FinetuneDataset
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import DataError

pytestmark = pytest.mark.quick

DATA = os.path.join(os.path.dirname(__file__), "data")
FIXTURE = os.path.join(DATA, "finetune_small.jsonl")
GOOD_LINES = [1, 2, 4, 7, 9]  # the other lines of the fixture are broken on purpose


@pytest.fixture(scope="module")
def bert():
    return build_tokenizer("BertWordPieceLowerCase",
                           vocab_file=os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt"))


@pytest.fixture(scope="module")
def gpt2():
    return build_tokenizer("GPT2BPETokenizer", vocab_file=os.path.join(DATA, "vocab", "gpt2-vocab.json"),
                           merge_file=os.path.join(DATA, "vocab", "gpt2-merges.txt"))


def records():
    with open(FIXTURE, encoding="utf-8") as f:
        lines = f.read().split("\n")
    return {n: json.loads(lines[n - 1]) for n in GOOD_LINES}


@pytest.mark.parametrize("which", ["bert", "gpt2"])
def test_loss_mask_covers_exactly_the_text_tokens(which, request):
    tokenizer = request.getfixturevalue(which)
    ds = FinetuneDataset(FIXTURE, tokenizer, seq_length=100)  # GPT-2 needs ~75 for Chinese
    assert ds.line_numbers == GOOD_LINES and len(ds) == 5 and ds.report.truncated == 0
    pad = tokenizer.pad if tokenizer.pad is not None else tokenizer.eod
    for i, number in enumerate(ds.line_numbers):
        record = records()[number]
        prompt, text = tokenizer.tokenize(record["prompt"]), tokenizer.tokenize(record["text"])
        sample = ds[i]
        assert sample["text"].dtype == np.int64 and sample["text"].shape == (101,)
        assert sample["loss_mask"].shape == (100,)
        tokens = prompt + text + [tokenizer.eod]
        assert sample["text"].tolist() == tokens + [pad] * (101 - len(tokens))
        labels = sample["text"][1:]
        learned = labels[sample["loss_mask"] == 1].tolist()
        # every text token and the closing eod, nothing of the prompt or the padding;
        # with an empty prompt the first text token has no context to be predicted from
        assert learned == (text if prompt else text[1:]) + [tokenizer.eod]
        first = max(len(prompt) - 1, 0)
        assert sample["loss_mask"][:first].sum() == 0


def test_bad_lines_are_skipped_and_reported_with_numbers(bert, caplog):
    with caplog.at_level("WARNING"):
        ds = FinetuneDataset(FIXTURE, bert, seq_length=64)
    report = ds.report
    assert [n for n, _ in report.bad_lines] == [3, 5, 8]
    reasons = dict(report.bad_lines)
    assert "not valid JSON" in reasons[3]
    assert 'no "text" field' in reasons[5]
    assert "not an object" in reasons[8]
    assert report.blank_lines == 1 and report.samples == 5
    assert "3 bad lines skipped (lines 3, 5, 8" in caplog.text


def test_strict_mode_names_file_and_line(bert):
    with pytest.raises(DataError) as err:
        FinetuneDataset(FIXTURE, bert, seq_length=64, strict=True)
    message = str(err.value)
    assert message.startswith(f"{FIXTURE}, line 3: it is not valid JSON")
    assert message.count("\n") == 0


def test_truncation_is_counted_and_prompt_only_windows_dropped(bert, tmp_path):
    path = tmp_path / "long.jsonl"
    lines = [{"prompt": "问：", "text": "长" * 50},           # truncated, text partly kept
             {"prompt": "问" * 20, "text": "答"},            # prompt longer than the window
             {"prompt": "问" * 9, "text": "答案"}]            # fits exactly: 9 + 2 + eod = 12
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    ds = FinetuneDataset(str(path), bert, seq_length=11)
    assert ds.report.truncated == 1 and ds.report.dropped_prompt_too_long == [2]
    assert ds.line_numbers == [1, 3]
    first = ds[0]
    assert first["text"].shape == (12,) and first["loss_mask"].sum() == 10  # labels 2..11 are text
    exact = ds[1]
    assert exact["loss_mask"].tolist() == [0] * 8 + [1] * 3
    assert "1 truncated" in ds.report.summary() and "lines 2" in ds.report.summary()


def test_unusable_files_are_clear_errors(bert, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        FinetuneDataset(str(tmp_path / "missing.jsonl"), bert, seq_length=16)
    empty = tmp_path / "bad.jsonl"
    empty.write_text('{"question": "q", "answer": "a"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no usable sample"):
        FinetuneDataset(str(empty), bert, seq_length=16)
    custom = FinetuneDataset(str(empty), bert, seq_length=16, prompt_key="question",
                             text_key="answer")
    assert len(custom) == 1
