"""finetune_classification.py as users run it, against transformers.

A small random BertForSequenceClassification (the BERT Chinese vocabulary) is imported with
convert_checkpoint --from-hf and finetuned on a labelled JSON-lines task made from the bundled
corpus (fp32, dropout off, constant lr, no weight decay or clipping). The same model trained by
a plain transformers loop (Adam) on the same batches, tokenized by transformers' BertTokenizer,
gives our first 5 logged losses; TP=2 and PP=2 log TP=1's. The best checkpoint, exported with
--to-hf, is a BertForSequenceClassification with the task's id2label whose predictions on the
dev set are our --predict file's and give our logged accuracy.
"""
import json
import os

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from megatron_core.tasks.learnable_task import write_shuffled_sentence_task  # noqa: E402
from tests.harness.entry_points import failure_report, logged_values, run_forked, run_ranks  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402

VOCAB = os.path.join(os.path.dirname(__file__), "data", "vocab", "bert-base-chinese-vocab.txt")
SEQ, MICRO, GLOBAL, LR, SEED, STEPS = 48, 4, 8, 1e-3, 1234, 5
HF_SMALL = dict(vocab_size=21128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, max_position_embeddings=SEQ,
                type_vocab_size=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """(train, dev) files, a random HF classifier and its import as our checkpoint."""
    root = tmp_path_factory.mktemp("classification")
    train, dev = write_shuffled_sentence_task(str(root), 40, 16, seed=3)
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(transformers.BertConfig(**HF_SMALL))
    with torch.no_grad():           # biases and norms off their init, so the mapping of each is checked
        for name, p in sorted(hf.named_parameters()):
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.05)
    hf.save_pretrained(root / "hf")
    run_tool_main("convert_checkpoint.py", "--from-hf", root / "hf", "--output", root / "ours")
    return root, train, dev


def _flags(root, train, dev, *extra, layernorm="post", model="ours"):
    return ["--task", "jsonl", "--text-key", "text", "--label-key", "label", "--train-data", train,
            "--valid-data", dev, "--pretrained-checkpoint", str(root / model), "--epochs", "1",
            "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "64",
            "--seq-length", str(SEQ), "--max-position-embeddings", str(SEQ), "--layernorm-position", layernorm,
            "--micro-batch-size", str(MICRO), "--global-batch-size", str(GLOBAL), "--lr", str(LR),
            "--lr-decay-style", "constant", "--weight-decay", "0", "--clip-grad", "0", "--hidden-dropout", "0",
            "--attention-dropout", "0", "--norm-epsilon", "1e-12",          # transformers' layer_norm_eps
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB,
            "--log-interval", "1", "--eval-interval", "1000", "--seed", str(SEED), *extra]


def _transformers_losses(root, train, cls=transformers.BertForSequenceClassification, hf="hf") -> list:
    """A plain transformers loop: the run's sample order (each epoch a permutation drawn from
    numpy's RandomState(seed + epoch), global batch k = samples k*G ... (k+1)*G - 1), Adam."""
    rows = [json.loads(line) for line in open(train, encoding="utf-8")]
    tokenizer = transformers.BertTokenizer(VOCAB)
    model = cls.from_pretrained(root / hf, attn_implementation="eager")
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    order = np.random.RandomState(SEED).permutation(len(rows))
    losses = []
    for step in range(STEPS):
        batch = [rows[i] for i in order[step * GLOBAL:(step + 1) * GLOBAL]]
        encoded = tokenizer([r["text"] for r in batch], truncation=True, max_length=SEQ, padding="max_length",
                            return_tensors="pt")
        out = model(**encoded, labels=torch.tensor([int(r["label"]) for r in batch]))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses


@pytest.fixture(scope="module")
def serial(task):
    root, train, dev = task
    done = run_forked("finetune_classification.py", _flags(root, train, dev, "--save", str(root / "ft"), "--predict",
                                                           "--eval-interval", "3", "--tensorboard-dir", str(root / "tb")))
    assert done.returncode == 0, failure_report(done)
    return done


def test_the_first_losses_are_a_transformers_loops(task, serial):
    root, train, _ = task
    ours = logged_values(serial.stdout, "lm loss")
    theirs = _transformers_losses(root, train)
    assert sorted(ours) == list(range(1, len(ours) + 1)) and len(ours) >= STEPS
    for step in range(STEPS):
        assert ours[step + 1] == pytest.approx(theirs[step], rel=1e-5), (step, ours, theirs)


def test_a_megatron_bert_classifier_logs_a_transformers_loops_first_losses(task):
    """The pre-LN family (Erlangshen's MegatronBERT): MegatronBertForSequenceClassification."""
    root, train, dev = task
    torch.manual_seed(1)
    hf = transformers.MegatronBertForSequenceClassification(transformers.MegatronBertConfig(**HF_SMALL))
    hf.save_pretrained(root / "megatron_hf")
    run_tool_main("convert_checkpoint.py", "--from-hf", root / "megatron_hf", "--output", root / "megatron_ours")
    done = run_forked("finetune_classification.py", _flags(root, train, dev, layernorm="pre", model="megatron_ours"))
    assert done.returncode == 0, failure_report(done)
    ours = logged_values(done.stdout, "lm loss")
    theirs = _transformers_losses(root, train, transformers.MegatronBertForSequenceClassification, "megatron_hf")
    for step in range(STEPS):
        assert ours[step + 1] == pytest.approx(theirs[step], rel=1e-5), (step, ours, theirs)


@pytest.mark.parametrize("sizes", [("--tensor-model-parallel-size", "2"), ("--pipeline-model-parallel-size", "2")])
def test_two_ranks_log_the_single_process_losses(task, serial, sizes):
    root, train, dev = task
    done = run_ranks("finetune_classification.py", _flags(root, train, dev, *sizes), 2)
    assert done.returncode == 0, failure_report(done)
    one, two = logged_values(serial.stdout, "lm loss"), logged_values(done.stdout, "lm loss")
    assert sorted(two) == sorted(one)
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-5), (step, one, two)
    assert _accuracy(done.stdout) == _accuracy(serial.stdout)


def test_deepspeed_zero1_at_dp2_logs_the_single_process_losses(task, serial, tmp_path):
    """The engine's fp32 partitions are taken from the pretrained weights loaded after it was
    built (without that, its first step would go on from the random initialization)."""
    pytest.importorskip("deepspeed")
    from tests.harness.engine_runs import run_engine_ranks, write_deepspeed_config
    root, train, dev = task
    config = write_deepspeed_config(str(tmp_path), {"zero_optimization": {"stage": 1}})
    done = run_engine_ranks(_flags(root, train, dev), config, script="finetune_classification.py")
    assert done.returncode == 0, failure_report(done)
    one, two = logged_values(serial.stdout, "lm loss"), logged_values(done.stdout, "lm loss")
    assert sorted(two) == sorted(one)
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-5), (step, one, two)


def _accuracy(stdout: str) -> float:
    lines = [line for line in stdout.splitlines() if "validation accuracy: " in line]
    assert lines, stdout[-2000:]
    return float(lines[-1].split("validation accuracy: ")[1].split(" ")[0])


def test_the_best_checkpoint_exports_to_a_transformers_classifier_with_our_predictions(task, serial, tmp_path):
    root, _, dev = task
    assert "macro F1: " in serial.stdout
    predicted = [json.loads(line) for line in open(root / "ft" / "jsonl_predict.json", encoding="utf-8")]
    rows = [json.loads(line) for line in open(dev, encoding="utf-8")]
    assert [p["id"] for p in predicted] == list(range(len(rows)))
    run_tool_main("convert_checkpoint.py", "--to-hf", "--load", root / "ft" / "best", "--output", tmp_path / "hf",
                  "--vocab-file", VOCAB)
    config = json.load(open(tmp_path / "hf" / "config.json"))
    assert config["architectures"] == ["BertForSequenceClassification"]
    assert config["id2label"] == {"0": "0", "1": "1"}
    model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tokenizer = transformers.BertTokenizer(VOCAB)
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=SEQ, padding="max_length",
                        return_tensors="pt")
    with torch.no_grad():
        theirs = model(**encoded).logits.argmax(-1).tolist()
    assert [model.config.id2label[i] for i in theirs] == [p["label"] for p in predicted]
    # The best checkpoint is the one whose accuracy was logged as the best.
    best = max(_accuracies(serial.stdout))
    assert best == pytest.approx(sum(int(model.config.id2label[t] == r["label"]) for t, r in zip(theirs, rows))
                                 / len(rows), abs=1e-4)


def test_tensorboard_gets_the_validation_metrics_the_log_prints(task, serial):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    root, _, _ = task
    events = accumulator.EventAccumulator(str(root / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    logged = [line for line in serial.stdout.splitlines() if "validation accuracy: " in line]
    assert len(logged) == 2         # iteration 3 (--eval-interval) and the epoch's end, 5
    for tag in ("validation accuracy", "macro F1"):
        values = {e.step: e.value for e in events.Scalars(tag)}
        assert sorted(values) == [3, 5]
        printed = [float(line.split(f"{tag}: ")[1].split(" ")[0]) for line in logged]
        assert [round(values[3], 4), round(values[5], 4)] == printed


def _accuracies(stdout: str) -> list:
    return [float(line.split("validation accuracy: ")[1].split(" ")[0])
            for line in stdout.splitlines() if "validation accuracy: " in line]


def _write_chid(directory, sentences, start, pool, with_answer=True):
    """FewCLUE CHID lines: a 4-character span of each sentence is the blank, 6 spans of other
    sentences the wrong candidates."""
    import random
    rng = random.Random(start)
    path = os.path.join(directory, f"chid_{start}.json")
    with open(path, "w", encoding="utf-8") as f:
        for i, text in enumerate(sentences):
            k = rng.randrange(len(text) - 4)
            wrong = [o[j:j + 4] for o in rng.sample(pool, 6) for j in [rng.randrange(len(o) - 4)]]
            answer = rng.randrange(7)
            row = {"id": start + i, "candidates": wrong[:answer] + [text[k:k + 4]] + wrong[answer:],
                   "content": text[:k] + "#idiom#" + text[k + 4:]}
            if with_answer:
                row["answer"] = answer
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def test_multiple_choice_chid_on_two_pipeline_stages_logs_the_single_process_losses(tmp_path):
    from megatron_core.tasks.learnable_task import corpus_sentences
    sentences = corpus_sentences()
    train = _write_chid(str(tmp_path), sentences[:32], 0, sentences)
    dev = _write_chid(str(tmp_path), sentences[32:40], 100, sentences)
    test = _write_chid(str(tmp_path), sentences[40:45], 200, sentences, with_answer=False)
    flags = ["--task", "chid", "--train-data", train, "--valid-data", dev, "--test-data", test, "--epochs", "1",
             "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "40",
             "--max-position-embeddings", "40", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
             "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB, "--log-interval", "1",
             "--eval-interval", "1000", "--hidden-dropout", "0", "--attention-dropout", "0"]
    serial = run_forked("finetune_classification.py", flags + ["--predict", "--predict-output", str(tmp_path / "out")])
    assert serial.returncode == 0, failure_report(serial)
    piped = run_ranks("finetune_classification.py", flags + ["--pipeline-model-parallel-size", "2"], 2)
    assert piped.returncode == 0, failure_report(piped)
    one, two = logged_values(serial.stdout, "lm loss"), logged_values(piped.stdout, "lm loss")
    assert sorted(one) == list(range(1, 9)) and sorted(two) == sorted(one)
    for step, loss in one.items():
        assert two[step] == pytest.approx(loss, rel=1e-5), (step, one, two)
    assert _accuracy(piped.stdout) == _accuracy(serial.stdout)
    rows = [json.loads(line) for line in open(tmp_path / "out" / "chidf_predict.json", encoding="utf-8")]
    assert [r["id"] for r in rows] == list(range(200, 205)) and all(0 <= r["answer"] < 7 for r in rows)


def test_a_pretrained_checkpoint_of_other_model_flags_is_one_sentence(task):
    root, train, dev = task
    flags = _flags(root, train, dev)
    flags[flags.index("--norm-epsilon") + 1] = "1e-5"
    done = run_forked("finetune_classification.py", flags)
    assert done.returncode != 0
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--norm-epsilon 1e-12 in the checkpoint vs 1e-05 here" in errors[0], errors


def _write_c3(path, sentences, start, with_answer=True):
    """C3's format: one JSON array of [paragraphs, [{question, choice, answer}], id]; some questions
    have 3 choices, so rows are padded to 4 and the padding masked."""
    import random
    rng = random.Random(start)
    documents = []
    for d in range(0, len(sentences) - 1, 2):
        questions = []
        for q in range(2):
            choices = [s[:6] for s in rng.sample(sentences, 4 - (q % 2))]
            entry = {"question": "哪一句？", "choice": choices}
            if with_answer:
                entry["answer"] = rng.choice(choices)
            else:
                entry["id"] = start + 2 * d + q
            questions.append(entry)
        documents.append([[sentences[d], sentences[d + 1]], questions, f"doc-{start + d}"])
    with open(path, "w", encoding="utf-8") as f:
        json.dump(documents, f, ensure_ascii=False)
    return str(path)


def test_multiple_choice_c3_with_fewer_choices_on_some_questions_trains_and_predicts(tmp_path):
    from megatron_core.tasks.learnable_task import corpus_sentences
    sentences = corpus_sentences()
    train = _write_c3(tmp_path / "train.json", sentences[:16], 0)
    dev = _write_c3(tmp_path / "dev.json", sentences[16:24], 100)
    test = _write_c3(tmp_path / "test.json", sentences[24:28], 200, with_answer=False)
    flags = ["--task", "c3", "--train-data", train, "--valid-data", dev, "--test-data", test, "--epochs", "2",
             "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "48",
             "--max-position-embeddings", "48", "--micro-batch-size", "2", "--global-batch-size", "4", "--lr", "1e-3",
             "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB, "--log-interval", "1",
             "--eval-interval", "1000", "--predict", "--predict-output", str(tmp_path / "out")]
    done = run_forked("finetune_classification.py", flags)
    assert done.returncode == 0, failure_report(done)
    assert "padded 8 examples to 4 choices" in done.stdout         # the 3-choice questions of the 16
    assert len(_accuracies(done.stdout)) == 2                        # one per epoch
    rows = [json.loads(line) for line in open(tmp_path / "out" / "c311_predict.json", encoding="utf-8")]
    documents = json.load(open(test, encoding="utf-8"))
    choices = {q["id"]: len(q["choice"]) for document in documents for q in document[1]}
    assert [r["id"] for r in rows] == list(choices)
    assert all(0 <= r["label"] < choices[r["id"]] for r in rows)    # a padded choice is never picked


def test_a_megatron_lm_bert_checkpoint_is_a_pretrained_encoder(tmp_path):
    """megatron-core's BertModel saved as Megatron-LM saves it (TP=2) starts a TP=1 classifier:
    its encoder and pooler load (resharded), its LM and binary heads stay in the file."""
    pytest.importorskip("megatron.core")
    from tests.harness import megatron_lm
    from tests.harness.tiny_corpus import write_small_vocab
    from megatron_core.tasks.learnable_task import write_shuffled_sentence_task
    megatron_lm.save_checkpoint("bert", str(tmp_path / "megatron_bert"), tp=2, fmt="torch")
    vocab = write_small_vocab(str(tmp_path), 128)       # 128 ids: the harness model's vocabulary
    train, dev = write_shuffled_sentence_task(str(tmp_path / "task"), 16, 8, seed=2)
    done = run_forked("finetune_classification.py", [
        "--task", "jsonl", "--text-key", "text", "--label-key", "label", "--train-data", train, "--valid-data", dev,
        "--pretrained-checkpoint", str(tmp_path / "megatron_bert"), "--epochs", "1",
        "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--ffn-hidden-size", "256",
        "--seq-length", "16", "--max-position-embeddings", "16", "--micro-batch-size", "4", "--global-batch-size", "8",
        "--lr", "1e-4", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", vocab,
        "--make-vocab-size-divisible-by", "128", "--log-interval", "1", "--eval-interval", "1000"])
    assert done.returncode == 0, failure_report(done)
    loaded = [line for line in done.stdout.splitlines() if line.startswith("loaded the pretrained bert encoder")]
    assert loaded and "initialized here: classification_head.bias, classification_head.weight;" in loaded[0]
    assert "binary_head.bias" in loaded[0] and "pooler" not in loaded[0].split("left in the checkpoint")[0]
    assert len(_accuracies(done.stdout)) == 1
