"""CLUE's and FewCLUE's task files read into examples, encoded as BertTokenizer encodes them,
and predictions written in CLUE's submission format; the generic JSON-lines task and the
learnable shuffled-sentence task."""
import json
import os

import pytest
import torch

from megatron_core.data.tokenizers.bert_wordpiece import BertWordPieceTokenizer
from megatron_core.errors import DataError
from megatron_core.tasks.clue import CLUE_TASKS, TNEWS_LABELS, mark_wsc_spans
from megatron_core.tasks.encoding import (ClassificationDataset, MultipleChoiceDataset, encode_pair,
                                          truncate_longer_first)
from megatron_core.tasks.examples import Example
from megatron_core.tasks.jsonl_task import jsonl_task, labels_from_file
from megatron_core.tasks.learnable_task import write_shuffled_sentence_task
from megatron_core.tasks.multiple_choice import MULTIPLE_CHOICE_TASKS
from megatron_core.tasks.predictions import prediction_file_name, write_clue_predictions, write_task_predictions

pytestmark = pytest.mark.quick

VOCAB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "vocab", "bert-base-chinese-vocab.txt")


def write_lines(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write((record if isinstance(record, str) else json.dumps(record, ensure_ascii=False)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return BertWordPieceTokenizer(VOCAB)


@pytest.fixture(scope="module")
def hf_tokenizer():
    transformers = pytest.importorskip("transformers")
    return transformers.BertTokenizer(VOCAB)


# ---- reading CLUE's files ----------------------------------------------------------------

def test_afqmc_reads_sentence_pairs_and_test_ids(tmp_path):
    train = write_lines(tmp_path / "train.json", [
        {"sentence1": "双十一花呗提额在哪", "sentence2": "里可以提花呗额度", "label": "0"},
        {"sentence1": "花呗怎么还款", "sentence2": "花呗如何还钱", "label": "1"}])
    test = write_lines(tmp_path / "test.json", [
        {"id": 0, "sentence1": "借呗能提前还吗", "sentence2": "借呗提前还款"},
        {"id": 1, "sentence1": "花呗逾期", "sentence2": "花呗晚还一天"}])
    read = CLUE_TASKS["afqmc"].reader(train)
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in read.examples] == [
        ("0", "双十一花呗提额在哪", "里可以提花呗额度", "0"), ("1", "花呗怎么还款", "花呗如何还钱", "1")]
    unlabelled = CLUE_TASKS["afqmc"].reader(test)
    assert [e.guid for e in unlabelled.examples] == ["0", "1"]
    assert all(e.label is None for e in unlabelled.examples) and not unlabelled.labelled
    assert CLUE_TASKS["afqmc"].pair and CLUE_TASKS["afqmc"].labels == ("0", "1")


def test_tnews_has_fifteen_labels_without_105_and_111(tmp_path):
    assert len(TNEWS_LABELS) == 15 and "105" not in TNEWS_LABELS and "111" not in TNEWS_LABELS
    assert TNEWS_LABELS[0] == "100" and TNEWS_LABELS[-1] == "116"
    path = write_lines(tmp_path / "dev.json", [
        {"label": "102", "label_desc": "news_entertainment", "sentence": "江疏影甜甜圈自拍，迷之角度竟这么好看"}])
    (example,) = CLUE_TASKS["tnews"].reader(path).examples
    assert (example.text_a, example.text_b, example.label) == ("江疏影甜甜圈自拍，迷之角度竟这么好看", None, "102")
    bad = write_lines(tmp_path / "bad.json", [{"label": "105", "label_desc": "x", "sentence": "一条新闻"}])
    with pytest.raises(DataError, match=r"bad.json line 1 has label '105', which is not one of the task's labels \(100, 101"):
        CLUE_TASKS["tnews"].reader(bad)


def test_iflytek_labels_are_0_to_118(tmp_path):
    assert CLUE_TASKS["iflytek"].labels == tuple(str(i) for i in range(119))
    path = write_lines(tmp_path / "train.json", [{"label": "110", "label_des": "社区超市", "sentence": "朴朴快送超市"}])
    assert CLUE_TASKS["iflytek"].reader(path).examples[0].label == "110"


@pytest.mark.parametrize("task", ["ocnli", "cmnli"])
def test_nli_skips_and_counts_the_dash_label(tmp_path, task):
    path = write_lines(tmp_path / "dev.json", [
        {"level": "medium", "sentence1": "身上裹一件工厂发的棉大衣,手插在袖筒里", "sentence2": "身上至少一件衣服",
         "label": "entailment", "genre": "lit", "prem_id": "lit_635", "id": 0},
        {"sentence1": "外贸经营权进一步放开", "sentence2": "外贸经营权经历了先收缩再放开的过程。", "label": "-", "id": 1},
        "",
        {"sentence1": "新的权利已经足够好了", "sentence2": "每个人都很喜欢最新的福利", "label": "neutral", "id": 2}])
    read = CLUE_TASKS[task].reader(path)
    assert [(e.guid, e.label) for e in read.examples] == [("0", "entailment"), ("2", "neutral")]
    assert read.skipped == {"label '-'": 1, "blank line": 1}
    assert read.summary() == f"read 2 examples from {path} (skipped 2: 1 blank line, 1 label '-')"
    only_dash = write_lines(tmp_path / "d.json", [{"sentence1": "a", "sentence2": "b", "label": "-"},
                                                  {"sentence1": "a", "sentence2": "c", "label": "contradiction"}])
    assert CLUE_TASKS[task].reader(only_dash).summary() == f"read 1 examples from {only_dash} (skipped 1: label '-')"


def test_csl_pairs_the_joined_keywords_with_the_abstract(tmp_path):
    path = write_lines(tmp_path / "train.json", [
        {"id": 1, "abst": "为解决传统均匀FFT波束形成算法引起的问题", "keyword": ["水声学", "FFT", "波束形成"], "label": "1"}])
    (example,) = CLUE_TASKS["csl"].reader(path).examples
    assert (example.guid, example.text_a, example.text_b, example.label) == (
        "1", "水声学 FFT 波束形成", "为解决传统均匀FFT波束形成算法引起的问题", "1")


def test_wsc_marks_the_noun_and_the_pronoun_as_clues_baseline_does(tmp_path):
    text = "这时候放在床上枕头旁边的手机响了，我感到奇怪，因为欠费已被停机两个月，现在它突然响了。"
    path = write_lines(tmp_path / "train.json", [
        {"target": {"span2_index": 37, "span1_index": 5, "span1_text": "床", "span2_text": "它"},
         "idx": 261, "label": "false", "text": text}])
    (example,) = CLUE_TASKS["wsc"].reader(path).examples
    assert example.text_a == "这时候放在_床_上枕头旁边的手机响了，我感到奇怪，因为欠费已被停机两个月，现在[它]突然响了。"
    assert example.label == "false" and CLUE_TASKS["cluewsc2020"] is CLUE_TASKS["wsc"]
    assert mark_wsc_spans("它说小明来了", "小明", 2, "它", 0) == "[它]说_小明_来了"
    with pytest.raises(DataError, match="line 3: target span '床' is not at index 6"):
        mark_wsc_spans(text, "床", 6, "它", 37, "line 3")


def test_a_bad_json_line_is_one_sentence_with_file_and_line(tmp_path):
    path = write_lines(tmp_path / "dev.json", [{"sentence1": "a", "sentence2": "b", "label": "1"}, '{"sentence1": "a",'])
    with pytest.raises(DataError) as error:
        CLUE_TASKS["afqmc"].reader(path)
    assert str(error.value).startswith(f"{path} line 2 is not valid JSON (")
    assert str(error.value).endswith("; fix or remove that line.")


def test_a_file_mixing_labelled_and_unlabelled_lines_is_refused(tmp_path):
    path = write_lines(tmp_path / "train.json", [{"sentence": "一", "label": "3"}, {"sentence": "二"}])
    with pytest.raises(DataError, match='line 2 has no "label" field while line 1 has one'):
        CLUE_TASKS["iflytek"].reader(path)


# ---- the generic JSON-lines task ------------------------------------------------------------

def test_jsonl_task_reads_any_keys_and_takes_labels_from_the_training_file(tmp_path):
    train = write_lines(tmp_path / "train.jsonl", [
        {"q": "一", "p": "二", "y": "b"}, {"q": "三", "p": "四", "y": 1}, {"q": "五", "p": "六", "y": "b"}])
    assert labels_from_file(train, "y") == ("1", "b")
    spec = jsonl_task("q", "y", text_pair_key="p")
    assert spec.pair and spec.labels is None
    assert [(e.text_a, e.text_b, e.label) for e in spec.reader(train).examples] == [
        ("一", "二", "b"), ("三", "四", "1"), ("五", "六", "b")]
    with pytest.raises(DataError, match=r"line 1 has label 'b', which is not one of the task's labels \(0, 1\)"):
        jsonl_task("q", "y", labels=[0, 1]).reader(train)


def test_jsonl_task_mistakes_are_one_sentence(tmp_path):
    missing = write_lines(tmp_path / "train.jsonl", [{"text": "好", "label": "1"}, {"txt": "坏", "label": "0"}])
    with pytest.raises(DataError) as error:
        jsonl_task("text", "label").reader(missing)
    assert str(error.value) == (f'{missing} line 2 has no "text" field (it has label, txt) (--text-key text); '
                                f"fix the line or pick the task or key that matches the file.")
    with pytest.raises(DataError, match=r'train.jsonl line 1 has no "lable" field .*\(--label-key lable\)'):
        labels_from_file(missing, "lable")
    no_labels = write_lines(tmp_path / "nolabel.jsonl", [{"text": "好", "y": "1"}])
    with pytest.raises(DataError, match='has no labels \\(no line has a "label" field\\)'):
        jsonl_task("text", "label").reader(no_labels).require_labels("label")
    broken = write_lines(tmp_path / "broken.jsonl", [{"text": "好", "label": "1"}, "not json"])
    with pytest.raises(DataError, match="broken.jsonl line 2 is not valid JSON"):
        jsonl_task("text", "label").reader(broken)
    with pytest.raises(DataError, match="does not exist"):
        jsonl_task("text", "label").reader(str(tmp_path / "missing.jsonl"))


# ---- multiple choice ------------------------------------------------------------------------

def test_chid_fills_the_blank_with_each_candidate(tmp_path):
    path = write_lines(tmp_path / "train_0.json", [
        {"id": 242, "candidates": ["风云人物", "气势汹汹", "予取予求"], "content": "新八国联军#idiom#逼近附近海域", "answer": 1}])
    (example,) = MULTIPLE_CHOICE_TASKS["chid"].reader(path).examples
    assert example.guid == "242" and example.label == 1
    assert example.choices == [("新八国联军风云人物逼近附近海域", None), ("新八国联军气势汹汹逼近附近海域", None),
                               ("新八国联军予取予求逼近附近海域", None)]
    test = write_lines(tmp_path / "test.json", [{"id": 3000, "candidates": ["鸡犬不宁", "是非曲直"], "content": "被坑得#idiom#!"}])
    assert MULTIPLE_CHOICE_TASKS["chid"].reader(test).examples[0].label is None


def test_c3_makes_one_example_per_question(tmp_path):
    documents = [
        [["男：你今天晚上有时间吗?我们一起去看电影吧?", "女：你喜欢恐怖片和爱情片，但是我喜欢喜剧片。"],
         [{"question": "女的最喜欢哪种电影?", "choice": ["恐怖片", "爱情片", "喜剧片", "科幻片"], "answer": "喜剧片"},
          {"question": "他们要去哪里?", "choice": ["电影院", "学校"], "answer": "电影院"}], "25-35"]]
    path = tmp_path / "d-dev.json"
    path.write_text(json.dumps(documents, ensure_ascii=False), encoding="utf-8")
    first, second = MULTIPLE_CHOICE_TASKS["c3"].reader(str(path)).examples
    context = "男：你今天晚上有时间吗?我们一起去看电影吧?\n女：你喜欢恐怖片和爱情片，但是我喜欢喜剧片。"
    assert first.guid == "25-35-0" and first.label == 2
    assert first.choices[0] == (context, "女的最喜欢哪种电影?恐怖片")
    assert second.guid == "25-35-1" and second.label == 0 and len(second.choices) == 2
    test = tmp_path / "test1.1.json"
    test.write_text(json.dumps([[["短文"], [{"question": "问?", "choice": ["甲", "乙"], "id": 7}], "t-1"]]), encoding="utf-8")
    (unlabelled,) = MULTIPLE_CHOICE_TASKS["c3"].reader(str(test)).examples
    assert unlabelled.guid == "7" and unlabelled.label is None


def test_multiple_choice_dataset_pads_choices_and_masks_them(tmp_path, tokenizer):
    path = tmp_path / "m-train.json"
    path.write_text(json.dumps([[["短文一"], [{"question": "问?", "choice": ["甲", "乙"], "answer": "乙"}], "m-1"]],
                               ensure_ascii=False), encoding="utf-8")
    examples = MULTIPLE_CHOICE_TASKS["c3"].reader(str(path)).examples
    lines = []
    dataset = MultipleChoiceDataset(examples, tokenizer, 16, num_choices=4, log=lines.append)
    item = dataset[0]
    assert item["text"].shape == (4, 16) and item["types"].shape == (4, 16) and item["padding_mask"].shape == (4, 16)
    assert item["choice_mask"].tolist() == [1, 1, 0, 0] and int(item["label"]) == 1
    assert item["text"][2, :2].tolist() == [tokenizer.cls, tokenizer.sep]
    assert lines == ["truncated 0 of 1 examples to --seq-length 16 (the longer text loses tokens); "
                     "padded 1 examples to 4 choices"]


# ---- encoding -------------------------------------------------------------------------------

def assert_same_as_transformers(ours, hf):
    assert ours.ids == hf["input_ids"]
    assert ours.types == hf["token_type_ids"]
    assert ours.padding_mask == hf["attention_mask"]


@pytest.mark.parametrize("text_a,text_b,seq_length", [
    ("花呗怎么还款", None, 16),                                     # single text, padded
    ("这时候放在床上枕头旁边的手机响了，我感到奇怪", None, 10),      # single text, cut
    ("双十一花呗提额在哪", "里可以提花呗额度", 32),                  # pair, padded
    ("为解决传统均匀FFT波束形成算法引起的3维声呐成像分辨率降低的问题", "水声学 FFT 波束形成", 20),  # a is longer
    ("水声学", "为解决传统均匀FFT波束形成算法引起的3维声呐成像分辨率降低的问题", 12),  # b is longer
    ("一二三四五六", "七八九十百千", 11),                            # equal, even number to remove
    ("一二三四五六七八", "七八九", 8),                               # a is cut below b's length
])
def test_encode_pair_matches_bert_tokenizer(tokenizer, hf_tokenizer, text_a, text_b, seq_length):
    ours = encode_pair(tokenizer, text_a, text_b, seq_length)
    hf = hf_tokenizer(text_a, text_b, truncation="longest_first", max_length=seq_length, padding="max_length")
    assert_same_as_transformers(ours, hf)
    assert len(ours.ids) == seq_length
    n_a = len(tokenizer.tokenize(text_a))
    n_b = len(tokenizer.tokenize(text_b)) if text_b is not None else -1
    assert ours.truncated == (n_a + n_b + 3 > seq_length)


def test_pair_truncation_takes_from_the_longer_text_and_from_b_on_a_tie():
    assert truncate_longer_first(list(range(6)), list(range(10, 16)), 9) == ([0, 1, 2, 3, 4], [10, 11, 12, 13])
    assert truncate_longer_first(list(range(9)), [10, 11], 6) == ([0, 1, 2, 3], [10, 11])
    assert truncate_longer_first([1], [2], 5) == ([1], [2])


def test_encoded_types_and_mask_follow_the_layout(tokenizer):
    encoded = encode_pair(tokenizer, "你好", "世界", 10)
    assert encoded.ids[:7] == [tokenizer.cls] + tokenizer.tokenize("你好") + [tokenizer.sep] + tokenizer.tokenize("世界") + [tokenizer.sep]
    assert encoded.types == [0, 0, 0, 0, 1, 1, 1, 0, 0, 0]
    assert encoded.padding_mask == [1] * 7 + [0] * 3 and encoded.ids[7:] == [tokenizer.pad] * 3
    assert not encoded.truncated


def test_classification_dataset_items_and_truncation_count(tokenizer):
    examples = [Example("0", "花呗怎么还款", "花呗如何还钱", "1"),
                Example("1", "为解决传统均匀FFT波束形成算法引起的问题", "水声学", "0"),
                Example("2", "测试", "没有标签", None)]
    lines = []
    dataset = ClassificationDataset(examples, tokenizer, 16, ("0", "1"), log=lines.append)
    assert dataset.truncated == 1
    assert lines == ["truncated 1 of 3 examples to --seq-length 16 (the longer text loses tokens)"]
    item = dataset[0]
    assert set(item) == {"text", "types", "padding_mask", "label", "uid"}
    assert all(t.dtype == torch.int64 for t in item.values())
    assert item["text"].shape == (16,) and int(item["label"]) == 1 and int(item["uid"]) == 0
    assert int(dataset[2]["label"]) == -1
    with pytest.raises(DataError, match="example 0 has label '1', which is not among the task's labels \\(a, b\\)"):
        ClassificationDataset(examples, tokenizer, 16, ("a", "b"), log=lines.append)


# ---- predictions ----------------------------------------------------------------------------

def test_predictions_are_clues_submission_lines(tmp_path):
    path = str(tmp_path / prediction_file_name("afqmc"))
    write_clue_predictions(path, ["0", "1", "x-2"], ["0", "1", "1"])
    assert open(path, encoding="utf-8").read() == ('{"id": 0, "label": "0"}\n{"id": 1, "label": "1"}\n'
                                                   '{"id": "x-2", "label": "1"}\n')
    assert os.listdir(tmp_path) == ["afqmc_predict.json"]
    chid = write_task_predictions(str(tmp_path), "chid", ["3000"], [2])
    assert os.path.basename(chid) == "chidf_predict.json"
    assert open(chid).read() == '{"id": 3000, "answer": 2}\n'
    assert [prediction_file_name(t) for t in ("tnews", "ocnli", "wsc", "c3", "jsonl")] == [
        "tnews11_predict.json", "ocnli_50k_predict.json", "cluewsc11_predict.json", "c311_predict.json",
        "jsonl_predict.json"]


# ---- the learnable task ---------------------------------------------------------------------

def test_shuffled_sentence_task_is_balanced_deterministic_and_readable(tmp_path):
    train, dev = write_shuffled_sentence_task(str(tmp_path / "a"), 40, 20, seed=3)
    again, _ = write_shuffled_sentence_task(str(tmp_path / "b"), 40, 20, seed=3)
    other, _ = write_shuffled_sentence_task(str(tmp_path / "c"), 40, 20, seed=4)
    assert open(train).read() == open(again).read() != open(other).read()
    spec = jsonl_task("text", "label", labels=("0", "1"))
    train_examples, dev_examples = spec.reader(train).examples, spec.reader(dev).examples
    assert len(train_examples) == 40 and len(dev_examples) == 20
    for examples in (train_examples, dev_examples):
        assert sum(e.label == "1" for e in examples) == len(examples) // 2
        originals = {e.text_a for e in examples if e.label == "1"}
        shuffles = [e.text_a for e in examples if e.label == "0"]
        assert all(20 <= len(text) <= 60 for text in originals)
        assert all(text not in originals for text in shuffles)
        assert sorted("".join(sorted(t)) for t in shuffles) == sorted("".join(sorted(t)) for t in originals)
    assert not {e.text_a for e in train_examples if e.label == "1"} & {e.text_a for e in dev_examples if e.label == "1"}
    assert labels_from_file(train, "label") == ("0", "1")
