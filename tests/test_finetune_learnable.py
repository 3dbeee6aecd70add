"""Finetuning learns: a BERT pretrained briefly on the bundled news slice (pretrain_bert.py),
finetuned with finetune_classification.py on a task made from the same slice (is a sentence
as written, or its characters shuffled? balanced, so the majority class scores 0.5), beats
the majority class by a wide margin on held-out sentences. Order is all that tells the
classes apart (the characters are the same), which a bag of characters cannot learn."""
import os
import subprocess
import sys

from megatron_core.tasks.learnable_task import DEMO_CORPUS, write_shuffled_sentence_task
from tests.harness.entry_points import ROOT, failure_report, run_entry_point

TWO_THREADS = {"OMP_NUM_THREADS": "2"}      # one process at a time: both cores

VOCAB = os.path.join(ROOT, "tests", "data", "vocab", "bert-base-chinese-vocab.txt")
MODEL = ["--num-layers", "1", "--hidden-size", "64", "--num-attention-heads", "4", "--max-position-embeddings", "64",
         "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB, "--hidden-dropout", "0",
         "--attention-dropout", "0"]


def _accuracies(stdout: str) -> list:
    return [float(line.split("validation accuracy: ")[1].split(" ")[0])
            for line in stdout.splitlines() if "validation accuracy: " in line]


def test_a_pretrained_encoder_learns_the_shuffled_sentence_task(tmp_path):
    prefix = str(tmp_path / "zh")
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "preprocess_data.py"), "--input", DEMO_CORPUS,
                    "--output-prefix", prefix, "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", VOCAB,
                    "--split-sentences", "--log-interval", "0"], check=True, capture_output=True, timeout=120)
    pretrained = run_entry_point("pretrain_bert.py", MODEL + [
        "--seq-length", "48", "--micro-batch-size", "16", "--global-batch-size", "16", "--train-iters", "120",
        "--lr", "3e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--lr-warmup-fraction", "0.05",
        "--log-interval", "40", "--eval-iters", "0", "--split", "100,0,0", "--num-workers", "0",
        "--data-path", prefix + "_text_sentence", "--data-cache-path", str(tmp_path / "cache"),
        "--save", str(tmp_path / "bert"), "--save-interval", "120"], timeout=600, env=TWO_THREADS)
    assert pretrained.returncode == 0, failure_report(pretrained)
    train, dev = write_shuffled_sentence_task(str(tmp_path / "task"), 2000, 400, seed=1, corpus=DEMO_CORPUS)
    done = run_entry_point("finetune_classification.py", MODEL + [
        "--task", "jsonl", "--text-key", "text", "--label-key", "label", "--train-data", train, "--valid-data", dev,
        "--pretrained-checkpoint", str(tmp_path / "bert"), "--epochs", "3", "--seq-length", "64",
        "--micro-batch-size", "32", "--global-batch-size", "32", "--lr", "1e-3", "--lr-warmup-fraction", "0.1",
        "--log-interval", "50", "--eval-interval", "1000"], timeout=600, env=TWO_THREADS)
    assert done.returncode == 0, failure_report(done)
    assert "loaded the pretrained bert encoder" in done.stdout
    accuracies = _accuracies(done.stdout)
    assert len(accuracies) == 3, done.stdout[-3000:]            # one per epoch
    assert accuracies[-1] >= 0.65, accuracies                  # the majority class: 0.5
