"""tools/evaluate.py (zero-shot evaluation, Megatron-LM's tasks/zeroshot_gpt) on tiny random
checkpoints, against computations written here:

- GPT and Llama-style perplexity (overlapping windows) and LAMBADA accuracy equal plain loops
  over transformers' GPT2LMHeadModel / LlamaForCausalLM loaded from the --to-hf export,
  tokenized by the exported HF tokenizer;
- BERT pseudo-perplexity equals a loop over BertForMaskedLM on its export;
- Transformer-XL perplexity equals our serial model called window by window with memory, and
  memory changes it;
- TP=2 runs (two processes, the TP=1 checkpoint resharded on load) print the TP=1 numbers, and a
  PP=2 Transformer-XL run (each stage keeps its layers' memory) the serial ones;
- a missing file, a JSON line without the key and a text shorter than one window are one
  sentence each.
"""
import contextlib
import functools
import io
import json
import math
import os
import re

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never reach the hub
transformers = pytest.importorskip("transformers")

from megatron_core import mpu  # noqa: E402
from megatron_core.data.tokenizers import build_tokenizer  # noqa: E402
from megatron_core.errors import ConfigError, DataError  # noqa: E402
from megatron_core.tasks.zeroshot.inputs import count_words, lambada_sample  # noqa: E402
from megatron_core.tasks.zeroshot.metrics import perplexity_metrics  # noqa: E402
from megatron_core.tasks.zeroshot.windows import lm_windows  # noqa: E402
from tests.harness.entry_points import failure_report, run_entry_point, run_ranks  # noqa: E402
from tests.harness.inference_checkpoints import (BERT_VOCAB_SIZE, MEM_LENGTH, tiny_serial_model,  # noqa: E402
                                                 write_tiny_checkpoint)
from tests.harness.model_checks import single_process_world  # noqa: E402
from tests.harness.tiny_corpus import ROOT  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

DATA = os.path.join(ROOT, "tests", "data")
NEWS, SEGMENTED = os.path.join(DATA, "zh_news_200.jsonl"), os.path.join(DATA, "zh_news_200.segmented.txt")
GPT2_VOCAB = os.path.join(DATA, "vocab", "gpt2-vocab.json"), os.path.join(DATA, "vocab", "gpt2-merges.txt")
SEQ, OVERLAP, TXL_SEQ = 32, 8, 16
CJK_WORD = re.compile(r"^[\u4e00-\u9fff]+$")
REL = 1e-5


# --- the pieces that need no model -------------------------------------------------------------------

@pytest.mark.quick
def test_windows_score_every_target_once_and_later_windows_their_last_n():
    assert [(w.start, w.length, w.first_scored) for w in lm_windows(11, 4, 2)] == \
        [(0, 4, 0), (2, 4, 2), (4, 4, 2), (6, 4, 2)]
    assert [(w.start, w.length, w.first_scored) for w in lm_windows(11, 4)] == [(0, 4, 0), (4, 4, 0), (8, 2, 0)]
    for tokens, seq, overlap in [(101, 64, 16), (1000, 37, 5), (50, 8, 8), (9, 8, 3), (33, 32, 1)]:
        targets = [t for w in lm_windows(tokens, seq, overlap) for t in range(w.start + w.first_scored,
                                                                              w.start + w.length)]
        assert targets == list(range(tokens - 1))
    with pytest.raises(ConfigError, match="--overlapping-eval must be between 1 and --seq-length 4"):
        lm_windows(11, 4, 5)


@pytest.mark.quick
def test_words_are_whitespace_words_or_cjk_characters_and_adjusted_ppl_is_megatrons():
    assert count_words("the cat  sat\non the mat") == (6, "whitespace")
    assert count_words("清华大学位于北京。GPT-2 模型") == (12, "cjk-characters")   # 9 + 1 + 2
    assert count_words("清华大学位于北京", "whitespace") == (1, "whitespace")
    m = perplexity_metrics(total_nll=30.0, scored=10, words=6, word_basis="whitespace")
    assert m["ppl"] == pytest.approx(math.exp(3.0)) and m["token_ratio"] == pytest.approx(2.0)
    assert m["adjusted_ppl"] == pytest.approx(m["ppl"] ** 2.0)        # exp(loss * (T - 1) / (W - 1))
    assert perplexity_metrics(1e6, 1, 2, "whitespace")["ppl"] is None   # past a float: null, not a clip


@pytest.mark.quick
def test_strict_lambada_targets_the_last_word_with_its_space_and_non_strict_the_last_token():
    gpt2 = build_tokenizer("GPT2BPETokenizer", vocab_file=GPT2_VOCAB[0], merge_file=GPT2_VOCAB[1])
    text = "she opened the door for Mortimer"
    strict = lambada_sample(text, gpt2.tokenize, True, "x")
    assert strict.context == gpt2.tokenize("she opened the door for")
    assert strict.target == gpt2.tokenize(" Mortimer") == [10788, 22723]      # the space is the word's
    loose = lambada_sample(text, gpt2.tokenize, False, "x")
    ids = gpt2.tokenize(text)
    assert (loose.context, loose.target) == (ids[:-1], ids[-1:])
    with pytest.raises(DataError, match="lambada.jsonl line 3 has no space before its last word"):
        lambada_sample("清华大学", gpt2.tokenize, True, "lambada.jsonl line 3")


# --- checkpoints, their HF exports and the files ----------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on shared cores: one intra-op thread (as the harness gives child processes)
    runs them several times faster than two that wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _hf_greedy(hf, ids, n):
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(hf(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[-n:]


def _write_lambada(path, hf, tokenizer, count=24):
    """LAMBADA-style lines "context last-word" from the human word segmentation; a third end with
    the HF model's own two greedy characters (right in both modes), a third with the true first
    character and a greedy second (right for the last token only), a third with the true word."""
    lines = []
    with open(SEGMENTED, encoding="utf-8") as f:
        paragraphs = [line.rstrip("\n").split("\t") for line in f][20:]
    for words in paragraphs:
        context, cut = "", 0
        while cut < len(words) - 1 and len(context + words[cut]) <= 22:
            context, cut = context + words[cut], cut + 1
        word = words[cut]
        if len(context) < 6 or not CJK_WORD.match(word) or len(word) < 2:
            continue
        ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        kind = len(lines) % 3
        if kind < 2:
            first = _hf_greedy(hf, ids, 1) if kind == 0 else tokenizer(word[0], add_special_tokens=False)["input_ids"]
            chars = tokenizer.convert_ids_to_tokens(first + _hf_greedy(hf, ids + first, 1))
            if not all(CJK_WORD.match(c) and len(c) == 1 for c in chars):
                continue
            word = "".join(chars)
        lines.append(json.dumps({"text": f"{context} {word}"}, ensure_ascii=False))
        if len(lines) == count:
            break
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("zeroshot")
    for family in ("gpt", "llama", "transformer_xl", "bert"):
        write_tiny_checkpoint(str(work / family), family)
    for family in ("gpt", "llama", "bert"):
        extra = ["--architecture", "BertForMaskedLM"] if family == "bert" else []
        run_tool_main("convert_checkpoint.py", "--to-hf", "--load", work / family, "--output", work / f"{family}_hf",
                      *extra)
    with open(NEWS, encoding="utf-8") as f:
        (work / "news.jsonl").write_text("".join(f.readlines()[:7]), encoding="utf-8")
    _write_lambada(work / "lambada.jsonl", _hf(work, "gpt"), _hf_tokenizer(work))
    return work


def _hf(work, family):
    cls = {"gpt": transformers.GPT2LMHeadModel, "llama": transformers.LlamaForCausalLM,
           "bert": transformers.BertForMaskedLM}[family]
    return cls.from_pretrained(str(work / f"{family}_hf")).eval()


def _hf_tokenizer(work):
    return transformers.AutoTokenizer.from_pretrained(str(work / "gpt_hf"))


def _news_tokens(work):
    with open(work / "news.jsonl", encoding="utf-8") as f:
        text = "\n".join(json.loads(line)["text"] for line in f)
    return _hf_tokenizer(work)(text, add_special_tokens=False)["input_ids"]


def ppl_flags(work, family):
    return ["--task", "ppl", "--load", work / family, "--valid-data", work / "news.jsonl", "--seq-length", SEQ,
            "--overlapping-eval", OVERLAP]


def lambada_flags(work):
    # 24 samples in micro batches of 5: the last one is short, rows are right-padded
    return ["--task", "lambada", "--load", work / "gpt", "--valid-data", work / "lambada.jsonl", "--seq-length", SEQ,
            "--micro-batch-size", 5]


def evaluate(*flags):
    """tools/evaluate.py's main in this process (a world of one); the JSON line it prints (a
    run with the same flags is done once: the TP=2 test compares with the others' runs)."""
    return dict(_evaluate(tuple(str(f) for f in flags)))


@functools.lru_cache(maxsize=None)
def _evaluate(flags):
    out = io.StringIO()
    with single_process_world(), contextlib.redirect_stdout(out):
        mpu.destroy_model_parallel()     # the loader initializes model parallelism itself
        run_tool_main("evaluate.py", *flags, "--log-interval", "0")
    return json.loads([line for line in out.getvalue().splitlines() if line.startswith("{")][-1])


# --- the references, written here --------------------------------------------------------------------

def hf_stream_nll(hf, tokens, seq, overlap):
    """Windows of seq tokens starting every `overlap` tokens; each target scored by the first
    window that reaches it (so the first window scores all, the others their last `overlap`)."""
    total, scored_up_to, start = 0.0, 0, 0
    with torch.no_grad():
        while scored_up_to < len(tokens) - 1:
            chunk = tokens[start:start + seq + 1]
            log_probs = torch.log_softmax(hf(input_ids=torch.tensor([chunk[:-1]])).logits[0].double(), dim=-1)
            for i in range(len(chunk) - 1):
                if start + i >= scored_up_to:
                    total -= float(log_probs[i, chunk[i + 1]])
            scored_up_to, start = start + len(chunk) - 1, start + overlap
    return total


def hf_lambada_accuracy(hf, tokenizer, path, strict):
    right = total = 0
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    for text in texts:
        encode = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        if strict:
            last = text.split()[-1]
            context, target = encode(text[:text.rfind(last)].strip()), encode(" " + last)
        else:
            ids = encode(text)
            context, target = ids[:-1], ids[-1:]
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([context + target[:-1]])).logits[0]
        predicted = logits[len(context) - 1:].argmax(dim=-1).tolist()
        right += predicted == target
        total += 1
    return right / total


def hf_pseudo_nll(hf, tokens, cls_id, sep_id, mask_id, window):
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(tokens), window):
            sequence = [cls_id] + tokens[start:start + window] + [sep_id]
            copies = torch.tensor(sequence).repeat(len(sequence) - 2, 1)
            positions = torch.arange(1, len(sequence) - 1)
            copies[torch.arange(len(positions)), positions] = mask_id
            hidden = hf.bert(input_ids=copies, token_type_ids=torch.zeros_like(copies),
                             attention_mask=torch.ones_like(copies)).last_hidden_state
            rows = torch.arange(len(positions))
            logits = hf.cls(hidden[rows, positions])       # HF's MLM head on the masked positions only
            log_probs = torch.log_softmax(logits.double(), dim=-1)
            total -= float(log_probs[rows, torch.tensor(sequence[1:-1])].sum())
    return total


def _write_chid(path, count=12):
    """FewCLUE CHID lines from the news: a 4-character span of a sentence is the blank; the
    candidates are it and 6 spans of other sentences (one line's a 3-character one: two lengths)."""
    import random
    with open(NEWS, encoding="utf-8") as f:
        sentences = [s for line in f for s in re.split(r"(?<=[。！？])", json.loads(line)["text"]) if 20 <= len(s) <= 50]
    rng = random.Random(5)
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(sentences[:count]):
            k = rng.randrange(4, len(text) - 8)
            wrong = [o[j:j + 4] for o in rng.sample(sentences, 6) for j in [rng.randrange(len(o) - 4)]]
            if i == 0:
                wrong[0] = wrong[0][:3]
            answer = rng.randrange(7)
            f.write(json.dumps({"id": i, "candidates": wrong[:answer] + [text[k:k + 4]] + wrong[answer:],
                                "content": text[:k] + "#idiom#" + text[k + 4:], "answer": answer},
                               ensure_ascii=False) + "\n")


def hf_chid_choices(hf, tokenizer, path, seq):
    """Each candidate in the blank as [MASK]s ([CLS] left masks right [SEP], cut around the blank),
    scored by the sum of its tokens' log-probabilities; the argmax."""
    chosen = []
    with torch.no_grad():
        for line in open(path, encoding="utf-8"):
            row = json.loads(line)
            left_text, right_text = row["content"].split("#idiom#")
            left = tokenizer(left_text, add_special_tokens=False)["input_ids"]
            right = tokenizer(right_text, add_special_tokens=False)["input_ids"]
            scores = []
            for candidate in row["candidates"]:
                target = tokenizer(candidate, add_special_tokens=False)["input_ids"]
                budget = seq - 2 - len(target)
                a = min(len(left), max(budget // 2, budget - len(right)))
                b = min(len(right), budget - a)
                ids = [tokenizer.cls_token_id] + left[len(left) - a:] + [tokenizer.mask_token_id] * len(target) \
                    + right[:b] + [tokenizer.sep_token_id]
                logits = hf(input_ids=torch.tensor([ids]), token_type_ids=torch.zeros(1, len(ids), dtype=torch.long),
                            attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]
                log_probs = torch.log_softmax(logits.double(), dim=-1)
                scores.append(sum(float(log_probs[1 + a + i, t]) for i, t in enumerate(target)))
            chosen.append(max(range(len(scores)), key=lambda i: (scores[i], -i)))
    return chosen


# --- the tool ------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_overlapping_ppl_equals_a_transformers_loop_on_the_export(work, family):
    got = evaluate(*ppl_flags(work, family))
    tokens = _news_tokens(work)
    nll = hf_stream_nll(_hf(work, family), tokens, SEQ, OVERLAP)
    assert got["tokens"] == len(tokens) and got["scored_tokens"] == len(tokens) - 1
    assert got["ppl"] == pytest.approx(math.exp(nll / (len(tokens) - 1)), rel=REL)
    assert got["word_basis"] == "cjk-characters"
    assert got["adjusted_ppl"] == pytest.approx(math.exp(nll / (got["words"] - 1)), rel=REL)


def test_lambada_strict_and_last_token_accuracy_equal_a_transformers_loop(work):
    got = evaluate(*lambada_flags(work))
    hf, tokenizer = _hf(work, "gpt"), _hf_tokenizer(work)
    strict = hf_lambada_accuracy(hf, tokenizer, work / "lambada.jsonl", strict=True)
    last_token = hf_lambada_accuracy(hf, tokenizer, work / "lambada.jsonl", strict=False)
    assert 0 < strict < last_token < 1          # the file tells the modes apart
    assert got["strict"]["accuracy"] == strict and got["accuracy"] == strict
    assert got["last_token"]["accuracy"] == last_token
    assert got["strict"]["total"] == 24 and got["strict"]["truncated_contexts"] == 0


def test_zero_shot_chid_picks_the_candidates_a_masked_lm_loop_picks_on_the_export(work):
    _write_chid(work / "chid.json")
    got = evaluate("--task", "chid", "--load", work / "bert", "--valid-data", work / "chid.json",
                   "--seq-length", SEQ, "--micro-batch-size", 3)
    theirs = hf_chid_choices(_hf(work, "bert"), _hf_tokenizer(work), work / "chid.json", SEQ)
    assert got["predictions"] == theirs and len(set(theirs)) > 2      # (a model that always says 0 would not do)
    answers = [json.loads(line)["answer"] for line in open(work / "chid.json", encoding="utf-8")]
    assert got["total"] == 12 and got["correct"] == sum(int(a == p) for a, p in zip(answers, theirs))


def test_bert_pseudo_perplexity_equals_a_masked_lm_loop_on_the_export(work):
    got = evaluate("--task", "mlm-ppl", "--load", work / "bert", "--valid-data", work / "news.jsonl",
                   "--seq-length", SEQ, "--micro-batch-size", 16)
    tokenizer, tokens = _hf_tokenizer(work), _news_tokens(work)
    nll = hf_pseudo_nll(_hf(work, "bert"), tokens, tokenizer.cls_token_id, tokenizer.sep_token_id,
                        tokenizer.mask_token_id, SEQ - 2)
    assert got["scored_tokens"] == got["tokens"] == len(tokens)
    assert got["ppl"] == pytest.approx(math.exp(nll / len(tokens)), rel=REL)
    assert got["adjusted_ppl"] == pytest.approx(math.exp(nll / got["words"]), rel=REL)


def _serial_txl_nll(tokens, mem_length):
    """Our serial Transformer-XL (built from the checkpoint's seed), window after window, each
    given the mems the previous one returned."""
    with single_process_world():
        model = tiny_serial_model("transformer_xl")
        model.mem_length = mem_length
        vocab, total, mems = BERT_VOCAB_SIZE, 0.0, None
        with torch.no_grad():
            for start in range(0, len(tokens) - 1, TXL_SEQ):
                chunk = torch.tensor(tokens[start:start + TXL_SEQ + 1])
                logits, mems = model(chunk[None, :-1], mems)
                log_probs = torch.log_softmax(logits[0, :, :vocab].double(), dim=-1)
                total -= float(log_probs[torch.arange(len(chunk) - 1), chunk[1:]].sum())
    return total


def test_transformer_xl_ppl_carries_memory_across_windows_as_the_serial_model(work):
    tokens = _news_tokens(work)
    flags = ["--task", "ppl", "--load", work / "transformer_xl", "--valid-data", work / "news.jsonl", "--seq-length",
             TXL_SEQ]
    with_memory, without = evaluate(*flags), evaluate(*flags, "--mem-length", 0)
    assert with_memory["mem_length"] == MEM_LENGTH and without["mem_length"] == 0
    for got, mem_length in ((with_memory, MEM_LENGTH), (without, 0)):
        assert got["ppl"] == pytest.approx(math.exp(_serial_txl_nll(tokens, mem_length) / (len(tokens) - 1)),
                                           rel=REL)
    assert abs(with_memory["loss"] - without["loss"]) > 1e-6


def test_tensor_and_pipeline_parallel_runs_print_the_serial_numbers(work):
    txl = ["--task", "ppl", "--load", work / "transformer_xl", "--valid-data", work / "news.jsonl", "--seq-length",
           TXL_SEQ]
    for name, flags, layout in (("ppl", ppl_flags(work, "llama"), ["--tensor-model-parallel-size", "2"]),
                                ("lambada", lambada_flags(work), ["--tensor-model-parallel-size", "2"]),
                                ("txl", txl, ["--pipeline-model-parallel-size", "2"])):   # each stage's own memory
        serial = evaluate(*flags)
        output = work / f"parallel_{name}.json"
        done = run_ranks("tools/evaluate.py", [str(f) for f in flags] + layout + ["--output", str(output)], 2,
                         timeout=300)
        assert done.returncode == 0, failure_report(done)
        printed = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        assert len(printed) == 1, done.stdout        # rank 0 prints
        assert "> evaluated " in done.stderr         # and the closing summary
        with open(output, encoding="utf-8") as f:
            assert json.load(f) == printed[0]
        assert printed[0].keys() == serial.keys()
        for key, value in serial.items():
            if isinstance(value, float):
                assert printed[0][key] == pytest.approx(value, rel=REL), key
            else:
                assert printed[0][key] == value, key


# --- mistakes ------------------------------------------------------------------------------------

def test_a_missing_file_is_one_sentence_naming_the_flag(work):
    done = run_entry_point("tools/evaluate.py", ["--task", "ppl", "--load", str(work / "gpt"), "--valid-data",
                                                 str(work / "nowhere.txt")], timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: --valid-data {work / 'nowhere.txt'} does not exist; give the path of a text or JSON-lines file."]


@pytest.mark.quick
def test_a_json_line_without_the_key_names_the_line_and_the_flag(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "一"}\n\n{"content": "二"}\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        run_tool_main("evaluate.py", "--task", "ppl", "--load", tmp_path, "--valid-data", path)
    assert str(caught.value) == (f"{path} line 3 has no 'text' key (its keys: content); give the key that holds "
                                 f"the text with --text-key.")


def test_a_text_shorter_than_one_window_says_so(work, tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("清华大学位于北京。", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        evaluate("--task", "ppl", "--load", work / "gpt", "--valid-data", path, "--seq-length", SEQ)
    assert str(caught.value) == (f"{path} holds 9 tokens, fewer than one window of --seq-length {SEQ} + 1; "
                                 f"give a longer text or a smaller --seq-length.")
    with pytest.raises(ConfigError, match="--task mlm-ppl needs a BERT, MegatronBERT or RoFormer checkpoint"):
        evaluate("--task", "mlm-ppl", "--load", work / "gpt", "--valid-data", work / "news.jsonl")
