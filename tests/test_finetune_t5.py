"""finetune_t5.py and tools/predict_t5.py run as users run them, and the pieces under them.

The task: the news slice's paragraphs as sources, their first 8 characters as targets.
finetune_t5.py learns it (the loss falls), TP=2 logs the single-process losses (fp32, no
dropout, relative 1e-5), a run from the saved checkpoint with --finetune starts where the
first ended, and predict_t5.py writes predictions and metrics, the same at TP=2 as on
one process. The dataset puts the loss on the target and the end token only; the scores
are checked on small cases worked by hand; a bad line is one sentence naming file and
line. Batched T5 greedy decoding equals decoding each source alone (learned positions
count from each source's first token, as in training).
"""
import json

import pytest
import torch

from megatron_core.data.seq2seq_dataset import Seq2SeqDataset, read_source_target_lines
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.errors import DataError
from megatron_core.inference.decoders import T5Decoder
from megatron_core.inference.generation import generate
from megatron_core.inference.sampling import SamplingParams
from megatron_core.models.t5 import T5Model
from megatron_core.tasks.generation_metrics import corpus_scores, exact_match, lcs_length, rouge_l_f1
from megatron_core.transformer.config import TransformerConfig
from tests.harness.entry_points import corpus_flags, failure_report, logged_values, run_forked, run_ranks
from tests.harness.inference_models import random_prompts
from tests.harness.model_checks import single_process_world
from tests.harness.tiny_corpus import BERT_VOCAB, ZH_NEWS

STEPS = 30
TP_STEPS = 8
TARGET_CHARS = 8


def write_prefix_task(path, limit=None):
    """{"source": paragraph, "target": its first 8 characters} for the slice's paragraphs of 8+ characters."""
    with open(ZH_NEWS, encoding="utf-8") as f:
        paragraphs = [json.loads(line)["text"] for line in f]
    rows = [{"source": p, "target": p[:TARGET_CHARS]} for p in paragraphs if len(p) >= TARGET_CHARS][:limit]
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return str(path)


def finetune_flags(data, save):
    return ["--encoder-num-layers", "2", "--decoder-num-layers", "2", "--hidden-size", "32",
            "--num-attention-heads", "4", "--encoder-seq-length", "32", "--decoder-seq-length", "12",
            "--micro-batch-size", "8", "--global-batch-size", "16", "--train-iters", str(STEPS), "--lr", "1e-2",
            "--lr-decay-style", "constant", "--clip-grad", "1.0", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--log-interval", "1", "--eval-interval", str(STEPS), "--eval-iters", "1", "--split", "90,10,0",
            "--num-workers", "0", "--data-path", data, "--tokenizer-type", "BertWordPieceLowerCase",
            "--vocab-file", BERT_VOCAB, "--save", save, "--save-interval", str(STEPS)]


def _losses(done, steps=STEPS):
    assert done.returncode == 0, failure_report(done)
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == list(range(1, steps + 1)), failure_report(done)
    return losses


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return write_prefix_task(tmp_path_factory.mktemp("task") / "prefix.jsonl")


@pytest.fixture(scope="module")
def serial(task, tmp_path_factory):
    """(losses, stdout, checkpoint directory) of the single-process run."""
    save = str(tmp_path_factory.mktemp("serial_ckpt"))
    done = run_forked("finetune_t5.py", finetune_flags(task, save))
    return _losses(done), done.stdout, save


# --- training ------------------------------------------------------------------------------------------

def test_finetune_t5_learns_and_reports_truncated_sources(serial):
    losses, stdout, _ = serial
    assert losses[STEPS] < 0.6 * losses[1], losses
    assert "sources truncated to the encoder length, 0 targets truncated" in stdout
    assert "validation loss at iteration 30 | lm loss value:" in stdout


def test_finetune_t5_at_tp2_logs_the_single_process_losses(task, serial, tmp_path):
    # The first TP_STEPS iterations (the sample order does not depend on the run's length): at
    # lr 1e-2 rounding differences grow past 1e-5 over the whole learning run.
    flags = finetune_flags(task, str(tmp_path)) + ["--tensor-model-parallel-size", "2"]
    flags[flags.index("--train-iters") + 1] = str(TP_STEPS)
    losses = _losses(run_ranks("finetune_t5.py", flags, 2), steps=TP_STEPS)
    for step in range(1, TP_STEPS + 1):
        assert losses[step] == pytest.approx(serial[0][step], rel=1e-5), (step, losses, serial[0])


def test_finetune_t5_from_its_checkpoint_starts_at_iteration_0_with_the_finetuned_loss(task, serial, tmp_path):
    flags = finetune_flags(task, str(tmp_path)) + ["--load", serial[2], "--finetune"]
    flags[flags.index("--train-iters") + 1] = "2"
    losses = _losses(run_forked("finetune_t5.py", flags), steps=2)
    assert losses[1] < 0.8 * serial[0][1], (losses, serial[0])   # the trained weights, not a fresh model


def test_finetune_t5_starts_from_a_pretrain_t5_checkpoint(task, serial, tmp_path):
    pretrained = str(tmp_path / "pretrained")
    flags = finetune_flags(task, pretrained)
    data = flags.index("--data-path")
    del flags[data:data + 2], flags[flags.index("--split"):flags.index("--split") + 2]
    flags += corpus_flags(str(tmp_path / "corpus"), sentences=True)
    for name, value in (("--train-iters", "2"), ("--save-interval", "2"), ("--eval-interval", "2")):
        flags[flags.index(name) + 1] = value
    done = run_forked("pretrain_t5.py", flags)
    assert done.returncode == 0, failure_report(done)

    flags = finetune_flags(task, str(tmp_path / "finetuned")) + ["--load", pretrained, "--finetune"]
    flags[flags.index("--train-iters") + 1] = "2"
    done = run_forked("finetune_t5.py", flags)
    losses = _losses(done, steps=2)
    assert f"successfully loaded checkpoint from {pretrained} [megatron layout] at iteration 0" in done.stdout, \
        failure_report(done)
    assert losses[1] != pytest.approx(serial[0][1], rel=1e-3)     # not the fresh model of the same seed


# --- predictions ------------------------------------------------------------------------------------------

def _predict(checkpoint, data, output, nproc=None, extra=()):
    flags = ["--load", checkpoint, "--predict-data", data, "--predict-output", output, "--batch-size", "8", *extra]
    done = run_forked("tools/predict_t5.py", flags) if nproc is None else run_ranks("tools/predict_t5.py", flags, nproc)
    assert done.returncode == 0, failure_report(done)
    with open(output, encoding="utf-8") as f:
        return [json.loads(line) for line in f], done.stdout


def test_predict_t5_writes_predictions_and_metrics_the_same_at_tp2(task, serial, tmp_path):
    data = write_prefix_task(tmp_path / "few.jsonl", limit=12)
    with open(data, "a", encoding="utf-8") as f:
        f.write(json.dumps({"source": "没有答案的一行"}, ensure_ascii=False) + "\n")
    rows, stdout = _predict(serial[2], data, str(tmp_path / "out.jsonl"))
    assert len(rows) == 13 and rows[0]["source"] and rows[0]["target"] and "target" not in rows[-1]
    assert all(isinstance(row["prediction"], str) for row in rows)
    assert any(row["prediction"] for row in rows), rows
    with open(tmp_path / "out.metrics.json") as f:
        metrics = json.loads(f.read())
    assert json.loads(stdout.strip().splitlines()[-1]) == metrics
    expected = corpus_scores((row["prediction"], row["target"]) for row in rows[:12])
    assert metrics == pytest.approx(expected) and metrics["examples"] == 12

    tp2, _ = _predict(serial[2], data, str(tmp_path / "tp2.jsonl"), nproc=2,
                      extra=["--tensor-model-parallel-size", "2"])
    assert [row["prediction"] for row in tp2] == [row["prediction"] for row in rows]


@pytest.mark.quick
def test_batched_t5_greedy_decoding_equals_each_source_alone():
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                               position_embedding_type="learned_absolute", hidden_dropout=0.0, attention_dropout=0.0,
                               init_method_std=0.3)
    with single_process_world():
        torch.manual_seed(0)
        model = T5Model(config, 64, decoder_num_layers=2, max_sequence_length=32, lm_head_bias=True).eval()
        sources = random_prompts([7, 3, 5], seed=5)
        params = SamplingParams(greedy=True)
        together = generate(T5Decoder(model, 1), sources, 6, params, 60).tokens
        alone = [generate(T5Decoder(model, 1), [source], 6, params, 60).tokens[0] for source in sources]
    assert together == alone


# --- the dataset ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


@pytest.mark.quick
def test_the_loss_is_on_the_target_and_the_end_token_only(tokenizer, tmp_path):
    data = _write(tmp_path / "one.jsonl", ['{"source": "清华大学位于北京", "target": "北京"}'])
    item = Seq2SeqDataset(data, tokenizer, encoder_seq_length=10, decoder_seq_length=6)[0]
    source, target = tokenizer.tokenize("清华大学位于北京"), tokenizer.tokenize("北京")
    bos, eos, pad = tokenizer.bos, tokenizer.eos, tokenizer.pad
    assert item["text_enc"].tolist() == source + [pad] * (10 - len(source))
    assert item["text_dec"].tolist() == [bos] + target + [pad] * 3
    assert item["labels"].tolist() == target + [eos, -1, -1, -1]
    assert item["loss_mask"].tolist() == [1, 1, 1, 0, 0, 0]
    real_enc, real_dec = torch.arange(10) < len(source), torch.arange(6) < 3
    assert torch.equal(torch.as_tensor(item["enc_mask"]).bool(), real_enc[:, None] & real_enc[None, :])
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    assert torch.equal(torch.as_tensor(item["dec_mask"]).bool(), real_dec[:, None] & real_dec[None, :] & causal)
    assert torch.equal(torch.as_tensor(item["enc_dec_mask"]).bool(), real_dec[:, None] & real_enc[None, :])


@pytest.mark.quick
def test_long_sources_and_targets_are_cut_and_counted(tokenizer, tmp_path):
    data = _write(tmp_path / "long.jsonl", ['{"source": "一二三四五六", "target": "甲乙丙丁"}',
                                            '{"source": "一二", "target": "甲"}', ""])
    dataset = Seq2SeqDataset(data, tokenizer, encoder_seq_length=4, decoder_seq_length=4)
    long = dataset[0]
    assert long["text_enc"].tolist() == tokenizer.tokenize("一二三四")
    assert long["text_dec"].tolist() == [tokenizer.bos] + tokenizer.tokenize("甲乙丙")
    assert long["labels"].tolist() == tokenizer.tokenize("甲乙丙丁") and long["loss_mask"].tolist() == [1, 1, 1, 1]
    assert (dataset.report.samples, dataset.report.truncated_sources, dataset.report.truncated_targets) == (2, 1, 1)


@pytest.mark.quick
@pytest.mark.parametrize("line,reason", [
    ('{"source": "清华", "target": "北京"', "is not valid JSON"),
    ('{"text": "清华", "target": "北京"}', 'has no "source" field'),
    ('{"source": "清华", "target": "  "}', 'its "target" is empty'),
    ('{"source": "清华"}', 'has no "target" field'),
], ids=["invalid_json", "missing_source", "empty_target", "missing_target"])
def test_a_bad_line_is_one_sentence_naming_the_file_and_line(tokenizer, tmp_path, line, reason):
    data = _write(tmp_path / "bad.jsonl", ['{"source": "清华", "target": "北京"}', "", line])
    with pytest.raises(DataError) as raised:
        Seq2SeqDataset(data, tokenizer, encoder_seq_length=8, decoder_seq_length=4)
    message = str(raised.value)
    assert message.startswith(f"{data} line 3: ") and reason in message and "\n" not in message, message


@pytest.mark.quick
def test_lines_to_predict_may_leave_out_the_target(tmp_path):
    data = _write(tmp_path / "predict.jsonl", ['{"q": "问题", "a": "答案"}', '{"q": "只有问题"}'])
    pairs = read_source_target_lines(data, "q", "a", require_target=False)
    assert [(p.line, p.source, p.target) for p in pairs] == [(1, "问题", "答案"), (2, "只有问题", None)]


def test_finetune_t5_on_a_bad_line_prints_one_sentence_and_exits_2(tmp_path):
    data = _write(tmp_path / "bad.jsonl", ['{"source": "清华", "target": "北京"}', '{"source": "清华", "target": ""}'])
    done = run_forked("finetune_t5.py", finetune_flags(data, str(tmp_path / "ckpt")))
    assert done.returncode == 2, failure_report(done)
    lines = done.stderr.strip().splitlines()
    assert lines == [f'error: {data} line 2: its "target" is empty; fix or remove that line '
                     f'(each line is {{"source": "...", "target": "..."}}).'], done.stderr


# --- the scores -------------------------------------------------------------------------------------------

@pytest.mark.quick
def test_longest_common_subsequence_of_characters():
    assert lcs_length("abcde", "ace") == 3
    assert lcs_length("ace", "abcde") == 3
    assert lcs_length("北京的大学", "北京大学") == 4
    assert lcs_length("abc", "xyz") == 0
    assert lcs_length("", "abc") == 0
    assert lcs_length("abcbdab", "bdcaba") == 4      # CLRS's example: "bcba"


@pytest.mark.quick
def test_rouge_l_f1_and_exact_match_on_cases_worked_by_hand():
    # l = 4, P = 4/4, R = 4/5: F1 = 2 * 1 * 0.8 / 1.8 = 8/9
    assert rouge_l_f1("北京大学", "北京的大学") == pytest.approx(8 / 9)
    # l = 2, P = 1, R = 1/2: F1 = 2/3, and the same with the roles swapped
    assert rouge_l_f1("ab", "abcd") == pytest.approx(2 / 3)
    assert rouge_l_f1("abcd", "ab") == pytest.approx(2 / 3)
    # "abcbdab" against "bdcaba": l = 4, P = 4/7, R = 4/6: F1 = 2 * (4/7) * (4/6) / (4/7 + 4/6) = 8/13
    assert rouge_l_f1("abcbdab", "bdcaba") == pytest.approx(8 / 13)
    assert rouge_l_f1("清华", "北京") == 0.0
    assert rouge_l_f1("清 华 大 学", "清华大学") == 1.0        # spaces a detokenizer puts between tokens
    assert rouge_l_f1("", "") == 1.0 and rouge_l_f1("", "北京") == 0.0
    assert exact_match("清华 大学", "清华大学") == 1.0 and exact_match("清华", "清华大学") == 0.0
    scores = corpus_scores([("ab", "abcd"), ("北京", "北京"), ("x", "y")])
    assert scores["examples"] == 3
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["rouge_l_f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)
