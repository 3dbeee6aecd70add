"""finetune_gpt.py run as a user runs it: the loss is on the text only, and TP=2 logs the serial losses.

The first logged loss is the untrained model's loss on the first global batch (the update
comes after it). With the global batch = one micro-batch = every usable line of the file,
that is the mean per-token loss over all text tokens and EODs of the file, whatever the
shuffle order. The test computes it independently: the serial GPT built from the same flags
and seed, run on each line's own unpadded tokens, its per-token losses split by hand into
the prompt's and the text's. A larger init std spreads the per-token losses so that a
prompt carrying loss would move the mean by far more than the tolerance.
"""
import json

import pytest
import torch

from megatron_core import mpu
from megatron_core.data.tokenizers import build_tokenizer_from_args
from megatron_core.models.gpt import GPTModel
from megatron_core.mpu.layout import pad_vocab_size
from tests.harness import run_distributed
from tests.harness.entry_points import failure_report, logged_values, run_entry_point
from tests.harness.tiny_corpus import BERT_VOCAB, FINETUNE_JSONL
from megatron_core.training.arguments import parse_args, transformer_config_from_args, validate

STEPS = 4


def usable_pairs(path):
    """(prompt, text) of every line that is a JSON object with string "prompt" and "text"."""
    pairs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("prompt"), str) \
                    and isinstance(record.get("text"), str):
                pairs.append((record["prompt"], record["text"]))
    return pairs


def finetune_flags(cache_dir):
    batch = str(len(usable_pairs(FINETUNE_JSONL)))
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "48",
            "--micro-batch-size", batch, "--global-batch-size", batch, "--train-iters", str(STEPS),
            "--lr", "1e-3", "--lr-decay-style", "constant", "--clip-grad", "1.0", "--init-method-std", "0.3",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--log-interval", "1", "--split", "100,0,0",
            "--num-workers", "0", "--data-path", FINETUNE_JSONL, "--data-cache-path", str(cache_dir),
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB]


def check_first_loss_is_the_text_only_loss(flags, logged_first_loss):
    """On one process: the serial GPT of `flags`, each usable line on its own, loss split by role."""
    args = validate(parse_args(flags), world_size=1)
    mpu.initialize_model_parallel(1, 1)
    mpu.model_parallel_manual_seed(args.seed)
    tokenizer = build_tokenizer_from_args(args)
    model = GPTModel(transformer_config_from_args(args),
                     pad_vocab_size(tokenizer.vocab_size, args.make_vocab_size_divisible_by, 1),
                     args.max_position_embeddings)
    text_losses, prompt_losses = [], []
    with torch.no_grad():
        for prompt, text in usable_pairs(FINETUNE_JSONL):
            prompt_ids = tokenizer.tokenize(prompt)
            tokens = torch.tensor([prompt_ids + tokenizer.tokenize(text) + [tokenizer.eod]])
            assert tokens.shape[1] <= args.seq_length + 1, "the test assumes no line is truncated"
            per_token = model(tokens[:, :-1], labels=tokens[:, 1:])[0].float()
            # Position j predicts token j + 1: the text's first token is predicted at len(prompt) - 1.
            first_text = max(len(prompt_ids) - 1, 0)
            text_losses.append(per_token[first_text:])
            prompt_losses.append(per_token[:first_text])
    text_only = torch.cat(text_losses).mean().item()
    with_prompt = torch.cat(text_losses + prompt_losses).mean().item()
    # The prompt's tokens would move the mean by 100x the tolerance: the comparison can fail.
    assert abs(with_prompt - text_only) > 1e-3 * text_only, (with_prompt, text_only)
    assert logged_first_loss == pytest.approx(text_only, rel=1e-5), (logged_first_loss, text_only, with_prompt)


@pytest.fixture(scope="module")
def single_process_losses(tmp_path_factory):
    done = run_entry_point("finetune_gpt.py", finetune_flags(tmp_path_factory.mktemp("cache")))
    assert done.returncode == 0, failure_report(done)
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == list(range(1, STEPS + 1)), failure_report(done)
    return losses


def test_finetune_first_loss_is_the_mean_over_text_tokens_only(single_process_losses, tmp_path):
    run_distributed(check_first_loss_is_the_text_only_loss, 1, finetune_flags(tmp_path), single_process_losses[1])


def test_finetune_learns(single_process_losses):
    assert single_process_losses[STEPS] < single_process_losses[1]


def test_finetune_at_tp2_through_torchrun_logs_the_single_process_losses(single_process_losses, tmp_path):
    done = run_entry_point("finetune_gpt.py", finetune_flags(tmp_path) + ["--tensor-model-parallel-size", "2"],
                           nproc=2)
    assert done.returncode == 0, failure_report(done)
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == sorted(single_process_losses)
    for step, expected in single_process_losses.items():
        assert losses[step] == pytest.approx(expected, rel=1e-5), (step, losses, single_process_losses)
