"""tools/preprocess_data.py run as users run it, on real files, read back through IndexedDataset."""
import errno
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from megatron_core.data.indexed_dataset import IndexedDataset
from tests.harness import output_faults
from tests.harness.tiny_corpus import GBK_VOCAB_BAD_BYTE, write_gbk_vocab

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data")
TOOL = os.path.join(ROOT, "tools", "preprocess_data.py")
ZH = os.path.join(DATA, "zh_news_200.jsonl")
BERT_VOCAB = os.path.join(DATA, "vocab", "bert-base-chinese-vocab.txt")
GPT2_VOCAB = os.path.join(DATA, "vocab", "gpt2-vocab.json")
GPT2_MERGES = os.path.join(DATA, "vocab", "gpt2-merges.txt")
BERT = ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB]

EXTRA = [
    "The Quick Brown Fox jumps over the lazy dog.",
    "Café déjà vu — naïve résumé, ÜBER straße!",
    "中文与English混合，100％正确！ e-mail a.b@c.org",
    "Tabs\tand\nnewlines and emoji 😀",
]


def zh_texts():
    with open(ZH, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return str(path)


def run_tool(*args, check=True, timeout=120):
    proc = subprocess.run([sys.executable, TOOL, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def documents(prefix):
    """Each document of a dataset as one flat list of ids."""
    ds = IndexedDataset(prefix)
    doc = ds.document_indices
    return [np.concatenate(ds[int(doc[i]):int(doc[i + 1])]).tolist() for i in range(len(doc) - 1)]


@pytest.fixture(scope="module")
def hf_bert(tmp_path_factory):
    """transformers' BertTokenizerFast for the same vocab file, built offline."""
    from transformers import BertTokenizerFast

    d = tmp_path_factory.mktemp("hf_bert")
    shutil.copy(BERT_VOCAB, d / "vocab.txt")
    tok = BertTokenizerFast.from_pretrained(str(d), do_lower_case=True)
    assert tok("迈向", add_special_tokens=False)["input_ids"] == [6815, 1403]
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def files_under(directory):
    return sorted(os.listdir(directory))


# --- ids equal the reference tokenizers ---------------------------------------------------


@pytest.mark.quick
def test_bert_ids_equal_transformers_with_eod(tmp_path, hf_bert):
    texts = zh_texts() + EXTRA
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    proc = run_tool("--input", src, "--output-prefix", tmp_path / "zh", *BERT, "--append-eod",
                    "--workers", 2, "--batch-lines", 37, "--log-interval", 50)
    eod = 21129  # Megatron's [EOS], the first id after the vocab file's [BOS]
    expected = [hf_bert(t) + [eod] for t in texts]
    prefix = str(tmp_path / "zh_text_document")
    assert documents(prefix) == expected
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.uint16 and len(ds) == len(texts)
    # progress while running, then the summary
    progress = [line for line in proc.stderr.splitlines() if line.startswith("processed ")]
    assert progress and all(w in progress[-1] for w in ("docs/s", "tokens/s", "MB/s", "ETA"))
    total = sum(map(len, expected))
    assert f"text: {len(texts)} documents, {len(texts)} sequences, {total} tokens" in proc.stderr


def test_gpt2_ids_equal_transformers(tmp_path):
    from transformers import GPT2TokenizerFast

    texts = EXTRA + zh_texts()[:40] + ["  leading and trailing  ", "It's don't we'll"]
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    run_tool("--input", src, "--output-prefix", tmp_path / "en", "--tokenizer-type", "GPT2BPETokenizer",
             "--vocab-file", GPT2_VOCAB, "--merge-file", GPT2_MERGES)
    d = tmp_path / "hf_gpt2"
    d.mkdir()
    shutil.copy(GPT2_VOCAB, d / "vocab.json")
    shutil.copy(GPT2_MERGES, d / "merges.txt")
    reference = GPT2TokenizerFast.from_pretrained(str(d))
    assert reference("Hello world")["input_ids"] == [15496, 995]
    expected = [reference(t)["input_ids"] for t in texts]
    assert documents(str(tmp_path / "en_text_document")) == expected
    assert IndexedDataset(str(tmp_path / "en_text_document")).dtype == np.uint16  # 50257 < 65500


def test_sentencepiece_ids_equal_sentencepiece(tmp_path):
    import sentencepiece

    texts = zh_texts()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(tmp_path / "sp"), vocab_size=2000,
        model_type="bpe", num_threads=1, minloglevel=2)
    model = str(tmp_path / "sp.model")
    sp = sentencepiece.SentencePieceProcessor(model_file=model)
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    run_tool("--input", src, "--output-prefix", tmp_path / "sp", "--tokenizer-type",
             "SentencePieceTokenizer", "--tokenizer-model", model, "--append-eod")
    eod = 2000 + 2  # Megatron's <CLS>, <SEP>, then <EOD> after the model's pieces
    assert documents(str(tmp_path / "sp_text_document")) == [sp.encode(t) + [eod] for t in texts]


# --- flags ---------------------------------------------------------------------------------


def test_split_sentences_chinese_and_english(tmp_path, hf_bert):
    docs = {
        "今天下雨了。我们去哪里？去公园吧！": ["今天下雨了。", "我们去哪里？", "去公园吧！"],
        "He left. She stayed! Why? Pi is 3.14 here.": ["He left.", "She stayed!", "Why?", "Pi is 3.14 here."],
        "他说：“好。”然后走了": ["他说：“好。”", "然后走了"],
        "一句话": ["一句话"],
    }
    src = write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in docs])
    run_tool("--input", src, "--output-prefix", tmp_path / "s", *BERT, "--split-sentences", "--append-eod")
    assert not os.path.exists(tmp_path / "s_text_document.bin")
    ds = IndexedDataset(str(tmp_path / "s_text_sentence"))
    expected = []
    for sentences in docs.values():
        ids = [hf_bert(s) for s in sentences]
        ids[-1] = ids[-1] + [21129]  # eod closes the document's last sentence
        expected.append(ids)
    assert ds.document_indices.tolist() == np.cumsum([0] + [len(s) for s in docs.values()]).tolist()
    assert [x.tolist() for x in ds[:]] == [ids for doc in expected for ids in doc]


def test_several_json_keys(tmp_path, hf_bert):
    texts = zh_texts()[:30]
    records = [{"title": f"标题{i} Title", "text": t, "id": i} for i, t in enumerate(texts)]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    run_tool("--input", src, "--output-prefix", tmp_path / "k", *BERT, "--json-keys", "text", "title")
    for key in ("text", "title"):
        expected = [hf_bert(r[key]) for r in records]
        assert documents(str(tmp_path / f"k_{key}_document")) == expected


def test_gzip_input_gives_the_same_bytes(tmp_path):
    gz = tmp_path / "in.jsonl.gz"
    with open(ZH, "rb") as f, gzip.open(gz, "wb") as out:
        out.write(f.read())
    run_tool("--input", ZH, "--output-prefix", tmp_path / "plain", *BERT)
    run_tool("--input", gz, "--output-prefix", tmp_path / "gz", *BERT)
    for ext in (".bin", ".idx"):
        assert (tmp_path / f"plain_text_document{ext}").read_bytes() == \
            (tmp_path / f"gz_text_document{ext}").read_bytes()


def test_truncated_gzip_is_one_sentence(tmp_path):
    data = gzip.compress(open(ZH, "rb").read())
    src = tmp_path / "cut.jsonl.gz"
    src.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    out.mkdir()
    for workers in (1, 2):
        proc = run_tool("--input", src, "--output-prefix", out / "cut", *BERT, "--workers", workers,
                        "--batch-lines", 10, "--log-interval", 0, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "truncated or corrupt gzip file" in lines[0] and "after line" in lines[0]
    assert files_under(out) == []


def test_two_workers_give_the_same_bytes_as_one(tmp_path):
    # many small batches, finished out of order by two workers, with bad lines between
    lines = [json.dumps({"text": t}, ensure_ascii=False) for t in zh_texts()]
    lines[50:50] = ["{broken", '{"other": 1}']
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = {}
    for workers in (1, 2):
        proc = run_tool("--input", src, "--output-prefix", tmp_path / f"w{workers}", *BERT,
                        "--append-eod", "--workers", workers, "--batch-lines", 9)
        assert "skipped 2 bad lines" in proc.stderr
        out[workers] = [(tmp_path / f"w{workers}_text_document{e}").read_bytes() for e in (".bin", ".idx")]
    assert out[1] == out[2]
    assert len(IndexedDataset(str(tmp_path / "w2_text_document"))) == 200


# --- bad input -----------------------------------------------------------------------------


def bad_corpus(path):
    good = zh_texts()[:6]
    lines = [
        json.dumps({"text": good[0]}, ensure_ascii=False).encode(),  # 1
        b'{"text": "unterminated',                                     # 2 invalid JSON
        json.dumps({"text": good[1]}, ensure_ascii=False).encode(),  # 3
        b'{"body": "no text key"}',                                    # 4 missing key
        b'{"text": "\xff\xfe bad bytes"}',                             # 5 invalid UTF-8
        json.dumps({"text": good[2]}, ensure_ascii=False).encode(),  # 6
        b'{"text": 12345}',                                            # 7 non-string value
        b"",                                                           # 8 blank
        json.dumps({"text": good[3]}, ensure_ascii=False).encode(),  # 9
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path), [good[0], good[1], good[2], good[3]]


@pytest.mark.quick
def test_bad_lines_are_counted_reported_and_skipped(tmp_path, hf_bert):
    src, kept = bad_corpus(tmp_path / "bad.jsonl")
    proc = run_tool("--input", src, "--output-prefix", tmp_path / "b", *BERT, "--workers", 2,
                    "--batch-lines", 2)
    err = proc.stderr
    assert f"{src}, line 2: invalid JSON" in err
    assert f"{src}, line 4: missing key" in err
    assert f"{src}, line 5: invalid UTF-8" in err
    assert f"{src}, line 7: non-string value" in err
    summary = err[err.index("done in"):]
    assert "skipped 4 bad lines" in summary
    for reason in ("invalid JSON: 1", "missing key: 1", "invalid UTF-8: 1", "non-string value: 1"):
        assert reason in summary
    assert "ignored 1 blank lines" in summary
    assert documents(str(tmp_path / "b_text_document")) == \
        [hf_bert(t) for t in kept]


def test_only_the_first_bad_lines_are_shown(tmp_path):
    lines = ['{"text": "好"}'] + ["not json"] * 25 + ['{"text": "好"}']
    src = tmp_path / "many.jsonl"
    src.write_text("\n".join(lines) + "\n")
    proc = run_tool("--input", src, "--output-prefix", tmp_path / "m", *BERT)
    shown = [line for line in proc.stderr.splitlines() if line.startswith("skipping ")]
    assert len(shown) == 10 and "line 2:" in shown[0] and "line 11:" in shown[-1]
    assert "further bad lines are counted but not shown" in proc.stderr
    assert "skipped 25 bad lines (invalid JSON: 25)" in proc.stderr
    assert len(IndexedDataset(str(tmp_path / "m_text_document"))) == 2


def test_strict_stops_at_the_first_bad_line(tmp_path):
    src, _ = bad_corpus(tmp_path / "bad.jsonl")
    out = tmp_path / "out"
    out.mkdir()
    proc = run_tool("--input", src, "--output-prefix", out / "b", *BERT, "--strict", "--workers", 2,
                    "--batch-lines", 1, check=False)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {src}, line 2: invalid JSON")
    assert "--strict" in last and "Traceback" not in proc.stderr
    assert files_under(out) == []  # no outputs, no temporaries


@pytest.mark.quick
def test_missing_vocab_file_is_one_sentence(tmp_path):
    for extra in ([], ["--vocab-file", tmp_path / "nope.txt"]):
        proc = run_tool("--input", ZH, "--output-prefix", tmp_path / "v",
                        "--tokenizer-type", "BertWordPieceLowerCase", *extra, check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--vocab-file" in lines[0] and lines[0].startswith("error: ")
    assert files_under(tmp_path) == []


def test_a_vocab_file_that_is_not_utf8_is_one_sentence(tmp_path):
    vocab = write_gbk_vocab(tmp_path)
    proc = run_tool("--input", ZH, "--output-prefix", tmp_path / "v",
                    "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", vocab, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"error: --vocab-file {vocab} is not UTF-8 text ({GBK_VOCAB_BAD_BYTE}); pass a "
                     f"WordPiece vocab.txt saved as UTF-8 (e.g. iconv -t UTF-8), one token per line."]
    assert files_under(tmp_path) == ["vocab-gbk.txt"]


def test_missing_input_and_output_dir(tmp_path):
    proc = run_tool("--input", DATA, "--output-prefix", tmp_path / "x", *BERT, check=False)
    assert proc.returncode == 2 and "is a directory" in proc.stderr and "merge_datasets" in proc.stderr
    proc = run_tool("--input", ZH, "--output-prefix", tmp_path / "x", *BERT, "--json-keys", "text", "text",
                    check=False)
    assert proc.returncode == 2 and "--json-keys names text more than once" in proc.stderr
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    proc = run_tool("--input", empty, "--output-prefix", tmp_path / "x", *BERT, check=False)
    assert proc.returncode == 2 and "produced no documents" in proc.stderr
    assert [f for f in files_under(tmp_path) if f.startswith("x")] == []
    proc = run_tool("--input", tmp_path / "no.jsonl", "--output-prefix", tmp_path / "x", *BERT, check=False)
    assert proc.returncode == 2 and "--input" in proc.stderr and "does not exist" in proc.stderr
    proc = run_tool("--input", ZH, "--output-prefix", tmp_path / "no_dir" / "x", *BERT, check=False)
    assert proc.returncode == 2 and "--output-prefix" in proc.stderr and "create it" in proc.stderr


# --- failures leave nothing under the final name --------------------------------------------


def _big_input(tmp_path, copies):
    line_block = open(ZH, "rb").read()
    src = tmp_path / "big.jsonl"
    src.write_bytes(line_block * copies)
    return src


def _processes_mentioning(text, wait=3.0):
    """pids whose command line contains `text`, after giving dying ones `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_interrupted_run_leaves_no_file_under_the_final_name(tmp_path, sig):
    src = _big_input(tmp_path, 150)  # 30,000 lines (9 MB): seconds of work even on a fast machine
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(
        [sys.executable, TOOL, "--input", str(src), "--output-prefix", str(out / "big"), *BERT,
         "--workers", "2", "--batch-lines", "100", "--log-interval", "100"],
        stderr=subprocess.PIPE, text=True, start_new_session=True,
        # A shell starts background jobs with SIGINT ignored, and Python then never installs
        # its Ctrl-C handler; give the tool the disposition a terminal user's run has.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # wait until it is writing (first progress line), then interrupt it as Ctrl-C would
    first = proc.stderr.readline()
    assert first.startswith("processed "), first
    assert [f for f in files_under(out) if f.endswith(".tmp")], "expected temporaries while running"
    os.killpg(proc.pid, sig)
    try:
        _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # never hang the suite: clean up, then fail
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"preprocess_data.py did not exit within 60 s of {sig.name}")
    final = [f for f in files_under(out) if not f.endswith(".tmp")]
    assert final == []
    if sig == signal.SIGINT:
        assert proc.returncode == 130
        assert "interrupted; no output was written." in rest
    elif sig == signal.SIGTERM:
        assert proc.returncode == 143
        assert "terminated (SIGTERM); no output was written." in rest
    assert _processes_mentioning(str(out)) == [], "workers outlived the interrupted run"
    if sig != signal.SIGKILL:  # SIGKILL cannot be caught: only temporaries may remain
        assert files_under(out) == []  # temporaries removed too
        assert "Traceback" not in rest


def test_failure_mid_run_removes_temporaries(tmp_path, monkeypatch):
    from megatron_core.data import preprocess as pp
    from megatron_core.data import preprocess_workers

    real = preprocess_workers.encode_batch
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real(batch)

    monkeypatch.setattr(preprocess_workers, "encode_batch", failing)
    out = tmp_path / "out"
    out.mkdir()
    options = pp.PreprocessOptions(input=ZH, output_prefix=str(out / "f"), tokenizer_type="BertWordPieceLowerCase",
                                   vocab_file=BERT_VOCAB, batch_lines=20, log_interval=0)
    with pytest.raises(RuntimeError, match="disk on fire"):
        pp.preprocess(options, log=lambda msg: None)
    assert len(calls) == 3
    assert files_under(out) == []
    # and the same options without the fault write both files
    monkeypatch.setattr(preprocess_workers, "encode_batch", real)
    summary = pp.preprocess(options, log=lambda msg: None)
    assert summary.documents["text"] == 200
    assert files_under(out) == ["f_text_document.bin", "f_text_document.idx"]


def test_utf8_bom_on_the_first_line_is_accepted(tmp_path, hf_bert):
    from megatron_core.data import preprocess as pp

    src = tmp_path / "bom.jsonl"
    src.write_bytes("\ufeff".encode() + '{"text": "新年讲话"}\n{"text": "好"}\n'.encode())
    summary = pp.preprocess(pp.PreprocessOptions(
        input=str(src), output_prefix=str(tmp_path / "bom"), tokenizer_type="BertWordPieceLowerCase",
        vocab_file=BERT_VOCAB, log_interval=0), log=lambda msg: None)
    assert summary.documents["text"] == 2 and not summary.skipped
    assert documents(str(tmp_path / "bom_text_document")) == [hf_bert("新年讲话"), hf_bert("好")]


# --- OS errors: one sentence naming the path, exit 2, nothing left behind -------------------


@pytest.mark.parametrize("kind", output_faults.KINDS)
def test_os_error_on_the_output_is_one_sentence_and_leaves_nothing(tmp_path, kind):
    def command(directory):
        return [sys.executable, TOOL, "--input", ZH, "--output-prefix", os.path.join(directory, "x"),
                *BERT, "--workers", "2", "--batch-lines", "20", "--log-interval", "0"]
    line, directory = output_faults.failure_line_or_skip(kind, str(tmp_path), command, timeout=120,
                                                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if kind == "missing_parent":
        assert line.startswith(f"error: --output-prefix {directory}/x: directory {directory} ")
    else:
        assert line.startswith(f"error: cannot use {directory}/x_text_document.")
    assert _processes_mentioning(directory) == [], "workers outlived the failed run"


def test_a_key_finished_before_a_later_key_fails_is_removed_too(tmp_path, monkeypatch):
    from megatron_core.data import indexed_dataset

    real = indexed_dataset.IndexedDatasetBuilder.finalize
    finished = []

    def finalize_then_fail_the_second(builder, idx_path):
        if finished:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), idx_path)
        real(builder, idx_path)
        finished.append(idx_path)

    monkeypatch.setattr(indexed_dataset.IndexedDatasetBuilder, "finalize", finalize_then_fail_the_second)
    src = write_jsonl(tmp_path / "two.jsonl", [{"a": "迈向新世纪", "b": "中国人民"}] * 5)
    out = tmp_path / "out"
    out.mkdir()
    from megatron_core.data import preprocess as pp
    options = pp.PreprocessOptions(input=src, output_prefix=str(out / "k"), json_keys=["a", "b"],
                                   tokenizer_type="BertWordPieceLowerCase", vocab_file=BERT_VOCAB,
                                   log_interval=0)
    with pytest.raises(OSError, match="No space left"):
        pp.preprocess(options, log=lambda msg: None)
    assert finished == [str(out / "k_a_document.idx")]  # the first key was published...
    assert files_under(out) == []                        # ...and removed with the rest
