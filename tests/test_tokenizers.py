"""Tokenizers give the same ids as transformers / sentencepiece, plus Megatron's extras."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from megatron_core.data.tokenizers import TOKENIZER_TYPES, build_tokenizer
from megatron_core.errors import DataError
from megatron_core import mpu
from tests.harness import output_faults
from tests.harness.tiny_corpus import GBK_VOCAB_BAD_BYTE, write_gbk_vocab

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
BERT_VOCAB = os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt")
GPT2_VOCAB = os.path.join(DATA, "vocab", "gpt2-vocab.json")
GPT2_MERGES = os.path.join(DATA, "vocab", "gpt2-merges.txt")

ENGLISH = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Café déjà vu — naïve résumé, ÜBER straße!",
    "  leading and trailing spaces  ",
    "Numbers 3.14159, 1,000,000 and e-mail a.b@c.org; URLs https://x.y/z?q=1",
    "Tabs\tand\nnewlines\r\nand emoji 😀👍",
    "It's don't can't we'll I'd",
    "",
]


def zh_texts():
    with open(os.path.join(DATA, "zh_news_200.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


TEXTS = zh_texts() + ENGLISH + ["中文与English混合，100％正确！", "全角ＡＢＣ１２３"]


@pytest.fixture(scope="module", autouse=True)
def offline():
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE")
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="module")
def hf_bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_bert")
    shutil.copy(BERT_VOCAB, d / "vocab.txt")
    return str(d)


@pytest.fixture(scope="module")
def hf_gpt2_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_gpt2")
    shutil.copy(GPT2_VOCAB, d / "vocab.json")
    shutil.copy(GPT2_MERGES, d / "merges.txt")
    return str(d)


@pytest.mark.parametrize("lower", [True, False])
def test_bert_ids_equal_transformers(hf_bert_dir, lower):
    from transformers import BertTokenizerFast

    reference = BertTokenizerFast.from_pretrained(hf_bert_dir, do_lower_case=lower)
    kind = "BertWordPieceLowerCase" if lower else "BertWordPieceCase"
    ours = build_tokenizer(kind, vocab_file=BERT_VOCAB)
    expected = [reference(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    assert [ours.tokenize(t) for t in TEXTS] == expected
    assert ours.tokenize_batch(TEXTS) == expected
    # Chinese characters are one token each
    assert len(ours.tokenize("迈向充满希望的新世纪")) == 10


def test_bert_vocab_and_megatron_special_tokens():
    tok = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB, vocab_extra_ids=3)
    # 21128 lines; U+2028 is entry 343 and must not shift later ids
    assert tok.vocab["\u2028"] == 343
    assert tok.vocab["[CLS]"] == 101 and tok.inv_vocab[101] == "[CLS]"
    assert max(i for t, i in tok.vocab.items() if not t.startswith(("[BOS]", "[EOS]", "<extra_id_"))) == 21127
    assert (tok.pad, tok.cls, tok.sep, tok.mask) == (0, 101, 102, 103)
    # Megatron appends [BOS], [EOS] and the T5 sentinels after the file's ids
    assert (tok.bos, tok.eos, tok.eod) == (21128, 21129, 21129)
    assert tok.additional_special_tokens_ids == [21130, 21131, 21132]
    assert tok.vocab_size == 21133
    assert tok.tokenize("a <extra_id_1> b") == [tok.vocab["a"], 21131, tok.vocab["b"]]
    assert tok.detokenize(tok.tokenize("hello world")) == "hello world"
    assert tok.detokenize([tok.eod]) == "[EOS]"


def test_vocab_size_is_the_tokenizers_and_padding_is_the_models():
    tok = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    assert tok.vocab_size == 21130
    assert not hasattr(tok, "padded_vocab_size")
    assert mpu.pad_vocab_size(tok.vocab_size, 128, 4) == 21504
    gpt2 = build_tokenizer("GPT2BPETokenizer", vocab_file=GPT2_VOCAB, merge_file=GPT2_MERGES)
    assert mpu.pad_vocab_size(gpt2.vocab_size, 128, 1) == 50304


def test_no_data_module_imports_mpu():
    """Data code (preprocessing workers above all) never pulls in the model-parallel core,
    not even from inside a function."""
    import ast
    import megatron_core.data

    offenders = []
    for folder, _, files in os.walk(os.path.dirname(megatron_core.data.__file__)):
        for name in (f for f in files if f.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = [node.module or ""] + [alias.name for alias in node.names]
                else:
                    continue
                if any(m == "mpu" or m.startswith("mpu.") or ".mpu" in m for m in modules):
                    offenders.append(f"{path}:{node.lineno}")
    assert offenders == []


def test_gpt2_ids_equal_transformers(hf_gpt2_dir):
    from transformers import GPT2TokenizerFast

    reference = GPT2TokenizerFast.from_pretrained(hf_gpt2_dir)
    ours = build_tokenizer("GPT2BPETokenizer", vocab_file=GPT2_VOCAB, merge_file=GPT2_MERGES)
    texts = TEXTS + ["text<|endoftext|>more"]
    expected = [reference(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert [ours.tokenize(t) for t in texts] == expected
    assert ours.tokenize_batch(texts) == expected
    assert ours.tokenize("Hello world") == [15496, 995]
    assert ours.vocab_size == 50257 and ours.eod == 50256
    for text in ENGLISH + TEXTS[:20]:
        assert ours.detokenize(ours.tokenize(text)) == text


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    prefix = str(tmp_path_factory.mktemp("sp") / "zh")
    subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "train_tokenizer.py"),
         "--input", os.path.join(DATA, "zh_news_200.jsonl"), "--model-prefix", prefix,
         "--vocab-size", "1500", "--model-type", "bpe", "--threads", "1"],
        check=True, capture_output=True, timeout=120)
    return prefix + ".model"


def test_sentencepiece_ids_equal_sentencepiece(sp_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    assert sp.get_piece_size() == 1500
    for kind in ("SentencePieceTokenizer", "GPTSentencePieceTokenizer"):
        ours = build_tokenizer(kind, tokenizer_model=sp_model)
        assert [ours.tokenize(t) for t in TEXTS] == [sp.encode(t) for t in TEXTS]
        assert ours.tokenize_batch(TEXTS) == sp.encode(TEXTS)
        assert ours.detokenize(ours.tokenize(TEXTS[0])) == sp.decode(sp.encode(TEXTS[0]))


def test_sentencepiece_megatron_special_tokens(sp_model):
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=sp_model)
    tok = build_tokenizer("SentencePieceTokenizer", tokenizer_model=sp_model, vocab_extra_ids=2)
    # <CLS> <SEP> <EOD> <MASK>, <PAD> (the model has none), then 2 sentinels; bos/eos are the model's
    assert (tok.cls, tok.sep, tok.eod, tok.mask, tok.pad) == (1500, 1501, 1502, 1503, 1504)
    assert (tok.bos, tok.eos) == (sp.bos_id(), sp.eos_id())
    assert tok.additional_special_tokens_ids == [1505, 1506]
    assert tok.vocab_size == 1507
    text = "新年讲话<EOD>中共中央"
    assert tok.tokenize(text) == sp.encode("新年讲话") + [1502] + sp.encode("中共中央")
    assert tok.tokenize_batch([text, "新年"]) == [tok.tokenize(text), sp.encode("新年")]
    gpt = build_tokenizer("GPTSentencePieceTokenizer", tokenizer_model=sp_model)
    assert gpt.vocab_size == 1500 and gpt.eod == sp.eos_id()


def test_huggingface_tokenizer_json(tmp_path, hf_gpt2_dir, hf_bert_dir):
    from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast

    for cls, source in ((GPT2TokenizerFast, hf_gpt2_dir), (BertTokenizerFast, hf_bert_dir)):
        saved = tmp_path / os.path.basename(source)
        cls.from_pretrained(source).save_pretrained(str(saved))
        reference = AutoTokenizer.from_pretrained(str(saved))
        ours = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(saved))
        assert [ours.tokenize(t) for t in TEXTS[:50]] == [reference(t)["input_ids"] for t in TEXTS[:50]]
        assert ours.vocab_size == len(reference)
        # a bare tokenizer.json path works too
        bare = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(saved / "tokenizer.json"))
        assert bare.tokenize(TEXTS[0]) == ours.tokenize(TEXTS[0])
    gpt2 = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / os.path.basename(hf_gpt2_dir)))
    assert gpt2.eod == 50256
    bert = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=str(tmp_path / os.path.basename(hf_bert_dir)))
    assert (bert.cls, bert.sep, bert.mask, bert.pad) == (101, 102, 103, 0)


@pytest.mark.parametrize("kwargs, flag", [
    (dict(tokenizer_type="BertWordPieceLowerCase"), "needs --vocab-file"),
    (dict(tokenizer_type="BertWordPieceLowerCase", vocab_file="/no/such/vocab.txt"), "does not exist"),
    (dict(tokenizer_type="BertWordPieceLowerCase", vocab_file=GPT2_MERGES), "lacks [UNK]"),
    (dict(tokenizer_type="GPT2BPETokenizer", vocab_file=BERT_VOCAB, merge_file=GPT2_MERGES), "not GPT-2's vocab.json"),
    (dict(tokenizer_type="GPT2BPETokenizer", vocab_file=GPT2_VOCAB), "needs --merge-file"),
    (dict(tokenizer_type="SentencePieceTokenizer", tokenizer_model=BERT_VOCAB), "not a SentencePiece model"),
    (dict(tokenizer_type="HuggingFaceTokenizer", tokenizer_model=DATA), "no tokenizer.json"),
    (dict(tokenizer_type="WordPiece"), "is not supported"),
])
def test_bad_tokenizer_flags_name_the_flag(kwargs, flag):
    with pytest.raises(DataError) as info:
        build_tokenizer(**kwargs)
    assert flag in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind, flag, kwargs", [
    ("BertWordPieceLowerCase", "--vocab-file", dict(vocab_file="bad")),
    ("GPT2BPETokenizer", "--vocab-file", dict(vocab_file="bad", merge_file=GPT2_MERGES)),
    ("GPT2BPETokenizer", "--merge-file", dict(vocab_file=GPT2_VOCAB, merge_file="bad")),
    ("HuggingFaceTokenizer", "--tokenizer-model", dict(tokenizer_model="bad")),
])
def test_a_tokenizer_file_that_is_not_utf8_is_one_sentence_naming_the_flag_and_the_file(tmp_path, kind, flag,
                                                                                        kwargs):
    bad = write_gbk_vocab(tmp_path)
    kwargs = {key: str(bad) if value == "bad" else value for key, value in kwargs.items()}
    with pytest.raises(DataError) as info:
        build_tokenizer(kind, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{flag} {bad} is not UTF-8 text ({GBK_VOCAB_BAD_BYTE}); "), message
    fix = message.split("; ", 1)[1]
    assert "\n" not in message and ("pass" in fix or "save" in fix) and fix.endswith(".")


def test_all_types_listed():
    assert set(TOKENIZER_TYPES) >= {"BertWordPieceLowerCase", "BertWordPieceCase", "GPT2BPETokenizer",
                                    "SentencePieceTokenizer", "HuggingFaceTokenizer"}


def test_train_tokenizer_reports_and_rejects(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "一二三四五"}\nnot json\n{"other": 1}\n' * 20, encoding="utf-8")
    tool = os.path.join(ROOT, "tools", "train_tokenizer.py")
    ok = subprocess.run([sys.executable, tool, "--input", str(corpus), "--model-prefix", str(tmp_path / "m"),
                         "--vocab-size", "8", "--model-type", "char", "--threads", "1"],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "on 20 texts" in ok.stderr and "40 skipped" in ok.stderr
    assert "line 2: invalid JSON" in ok.stderr and "line 3: missing key" in ok.stderr
    assert os.path.exists(tmp_path / "m.model")
    bad = subprocess.run([sys.executable, tool, "--input", str(corpus), "--model-prefix", str(tmp_path / "m2"),
                          "--vocab-size", "5000", "--threads", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --vocab-size 5000 is too large")
    assert "Traceback" not in bad.stderr


def test_train_tokenizer_small_vocab_and_truncated_gzip(tmp_path):
    import gzip

    tool = os.path.join(ROOT, "tools", "train_tokenizer.py")
    src = os.path.join(DATA, "zh_news_200.jsonl")
    small = subprocess.run([sys.executable, tool, "--input", src, "--model-prefix", str(tmp_path / "s"),
                            "--vocab-size", "100", "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert small.returncode == 2
    last = small.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --vocab-size 100 is smaller than the") and "--character-coverage" in last
    data = gzip.compress(open(src, "rb").read())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    bad = subprocess.run([sys.executable, tool, "--input", str(cut), "--model-prefix", str(tmp_path / "c"),
                          "--vocab-size", "300", "--model-type", "char", "--threads", "1"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "truncated or corrupt gzip file" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not os.path.exists(tmp_path / "c.model")


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_train_tokenizer_writes_what_sentencepiece_itself_writes(tmp_path, model_type):
    """The tool writes the .model/.vocab itself (so a full disk is an error, not a
    truncated file): same pieces and byte-identical .vocab as sentencepiece's own writer."""
    import sentencepiece as spm

    src = os.path.join(DATA, "zh_news_200.jsonl")
    tool = os.path.join(ROOT, "tools", "train_tokenizer.py")
    done = subprocess.run([sys.executable, tool, "--input", src, "--model-prefix", str(tmp_path / "ours"),
                           "--vocab-size", "1500", "--model-type", model_type, "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with open(src, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(tmp_path / "ref"), vocab_size=1500,
        model_type=model_type, character_coverage=0.9995, input_sentence_size=0,
        shuffle_input_sentence=True, max_sentence_length=16384, num_threads=1, minloglevel=2)
    assert (tmp_path / "ours.vocab").read_bytes() == (tmp_path / "ref.vocab").read_bytes()
    ours = spm.SentencePieceProcessor(model_file=str(tmp_path / "ours.model"))
    ref = spm.SentencePieceProcessor(model_file=str(tmp_path / "ref.model"))
    assert ours.encode(texts[:20]) == ref.encode(texts[:20])
    assert sorted(os.listdir(tmp_path)) == ["ours.model", "ours.vocab", "ref.model", "ref.vocab"]


@pytest.mark.parametrize("kind", output_faults.KINDS)
def test_train_tokenizer_os_error_is_one_sentence_and_leaves_nothing(tmp_path, kind):
    src = os.path.join(DATA, "zh_news_200.jsonl")
    tool = os.path.join(ROOT, "tools", "train_tokenizer.py")

    def command(directory):
        return [sys.executable, tool, "--input", src, "--model-prefix", os.path.join(directory, "zh"),
                "--vocab-size", "1500", "--model-type", "bpe", "--threads", "1"]
    line, directory = output_faults.failure_line_or_skip(kind, str(tmp_path), command, timeout=300)
    if kind == "missing_parent":
        assert line.startswith(f"error: --model-prefix {directory}/zh: directory {directory} ")
    else:
        assert line.startswith(f"error: cannot use {directory}/zh.")
