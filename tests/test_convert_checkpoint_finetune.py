"""A checkpoint converted from HF trains through pretrain_gpt.py, and a trained one exports back.

A small random GPT2LMHeadModel (GPT-2's tanh GELU, BERT's Chinese vocabulary, the tokenizer
files beside it) goes through `convert_checkpoint.py --from-hf ... --tensor-model-parallel-size 2`;
`pretrain_gpt.py --load CKPT --finetune --use-checkpoint-args` (model shape, tokenizer and TP
size all from the checkpoint's args; dropout off on the command line, as the HF model has it) runs on 2 processes, and its first logged
loss is the loss transformers computes for the same model on the same first global batch
(read from the same dataset, computed by GPT2LMHeadModel alone; the padded vocabulary's zero
rows enter the softmax as Megatron's do). The TP=2 checkpoint that run
saves then exports with --to-hf, and transformers' logits equal our serial model's on it.
The conversion is the subject, not the starts: the tool's main runs in this process
(tool_main.py; its CLI starts as a user's in test_convert_checkpoint_hf) and the ranks fork
(entry_points.run_ranks; pretrain_gpt.py under torchrun is test_training_loop's).
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from megatron_core.data.builder import build_train_valid_test_datasets  # noqa: E402
from megatron_core.models.gpt import GPTModel  # noqa: E402
from tests.harness.entry_points import failure_report, logged_values, run_ranks  # noqa: E402
from tests.harness.tiny_corpus import BERT_VOCAB, preprocess_zh_news  # noqa: E402
from tests.harness.tool_main import run_tool_main  # noqa: E402
from tests.harness.weights import randomize_trainable  # noqa: E402
from megatron_core.checkpoint.saved_model import open_saved_model  # noqa: E402
from megatron_core.transformer import TransformerConfig  # noqa: E402
from tests.harness.model_checks import single_process_world  # noqa: E402

SEQ, MICRO, GLOBAL, ITERS = 32, 2, 8, 2
VOCAB = 21130   # BERT's Chinese vocab.txt (21128) + our [BOS], [EOS] (the eod the corpus ends documents with)
PADDED = 21248  # a multiple of 128 x TP=2


def _hf_gpt2(directory):
    config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=None,
                                     eos_token_id=None)
    torch.manual_seed(0)
    model = randomize_trainable(transformers.GPT2LMHeadModel(config), seed=5)
    model.save_pretrained(directory)
    shutil.copyfile(BERT_VOCAB, os.path.join(directory, "vocab.txt"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True}, f)
    return model


def _first_global_batch(prefix, cache):
    """Samples 0 .. G-1 of the train split, as pretrain_gpt.py's first iteration reads them."""
    counts = [ITERS * GLOBAL, (ITERS // ITERS + 1) * GLOBAL, (ITERS // ITERS + 1) * GLOBAL]
    train, _, _ = build_train_valid_test_datasets(prefix, "90,10,0", counts, SEQ, 1234, cache)
    return torch.from_numpy(np.stack([train[i]["text"] for i in range(GLOBAL)])).long()


def test_from_hf_checkpoint_finetunes_at_tp2_from_the_transformers_loss_and_exports_back(tmp_path):
    hf = _hf_gpt2(str(tmp_path / "hf"))
    prefix = preprocess_zh_news(str(tmp_path / "data"))
    cache = str(tmp_path / "cache")
    run_tool_main("convert_checkpoint.py", "--from-hf", str(tmp_path / "hf"), "--output", str(tmp_path / "ckpt"),
                  "--tensor-model-parallel-size", "2")

    flags = ["--use-checkpoint-args", "--load", str(tmp_path / "ckpt"), "--finetune", "--seq-length", str(SEQ),
             "--micro-batch-size", str(MICRO), "--global-batch-size", str(GLOBAL), "--train-iters", str(ITERS),
             "--lr", "1e-3", "--lr-decay-style", "constant", "--log-interval", "1", "--eval-interval", str(ITERS),
             "--eval-iters", "1", "--split", "90,10,0", "--data-path", prefix, "--data-cache-path", cache,
             "--num-workers", "0", "--hidden-dropout", "0", "--attention-dropout", "0", "--save", str(tmp_path / "trained"), "--save-interval", str(ITERS)]
    done = run_ranks("pretrain_gpt.py", flags, 2, timeout=300)
    assert done.returncode == 0, failure_report(done)
    losses = logged_values(done.stdout, "lm loss")
    assert sorted(losses) == [1, 2]

    text = _first_global_batch(prefix, cache)
    with torch.no_grad():
        logits = hf(input_ids=text[:, :-1]).logits
        # Megatron's padded vocabulary: the embedding's zero padding rows give logits of exactly 0, which the
        # softmax counts (as Megatron-LM's loss does): transformers' logits with those columns appended.
        padding = torch.zeros(*logits.shape[:-1], PADDED - VOCAB)
        padded_logits = torch.cat([logits, padding], dim=-1)
        expected = torch.nn.functional.cross_entropy(padded_logits.reshape(-1, PADDED), text[:, 1:].reshape(-1))
    assert losses[1] == pytest.approx(expected.item(), rel=1e-5), (losses, expected.item())

    # the checkpoint the TP=2 run wrote (real training files, optimizer and all) -> HF
    run_tool_main("convert_checkpoint.py", "--to-hf", "--load", str(tmp_path / "trained"),
                  "--output", str(tmp_path / "exported"))
    exported = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "exported")).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "exported"))
    assert tokenizer("清华大学", add_special_tokens=False)["input_ids"] == [3926, 1290, 1920, 2110]
    assert tokenizer.convert_tokens_to_ids(["[BOS]", "[EOS]"]) == [21128, 21129] and len(tokenizer) == VOCAB
    saved = open_saved_model(str(tmp_path / "trained"))
    assert saved.tensor_model_parallel_size == 2 and saved.record["iteration"] == ITERS
    config = TransformerConfig.from_dict(saved.model_config).replace(tensor_model_parallel_size=1)
    with single_process_world():
        ours = GPTModel(config, saved.padded_vocab_size, 64).eval()
        ours.load_state_dict(dict(saved.state), strict=True)
        with torch.no_grad():
            mine = ours(text[:, :-1])[..., :VOCAB]
    with torch.no_grad():
        theirs = exported(input_ids=text[:, :-1]).logits
    torch.testing.assert_close(theirs, mine, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(theirs, logits, atol=1e-3)   # two steps of training moved the weights
