"""The run's vocabulary is a value handed on, not written into args: a dry run and a real run's
vocabulary resolution leave the flag namespace exactly as the user gave it."""
import copy

import pytest

from megatron_core.mpu.layout import pad_vocab_size
from megatron_core.training.arguments import build_run_config, parse_args, validate
from megatron_core.training.dry_run import dry_run
from megatron_core.training.vocabulary import Vocabulary, resolve_vocabulary
from tests.harness.tiny_corpus import BERT_VOCAB

pytestmark = pytest.mark.quick

MODEL = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "16",
         "--max-position-embeddings", "16", "--micro-batch-size", "2", "--global-batch-size", "4",
         "--train-iters", "2", "--lr", "1e-3"]


def _args(*flags, world_size=2):
    args = validate(parse_args([*MODEL, *flags]), world_size)
    return args, build_run_config(args)


def test_resolving_the_vocabulary_pads_the_tokenizers_size_and_leaves_args_untouched():
    args, run = _args("--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB,
                      "--tensor-model-parallel-size", "2")
    before = copy.deepcopy(vars(args))
    vocabulary = resolve_vocabulary(args, run)
    assert vars(args) == before
    assert vocabulary.size == vocabulary.tokenizer.vocab_size == 21130     # 21128 + Megatron's two added
    assert vocabulary.padded_size == pad_vocab_size(21130, 128, 2) == 21248


def test_a_dry_run_prints_its_estimate_and_leaves_args_untouched(capsys):
    args, run = _args("--dry-run", "--vocab-size", "1000")
    before = copy.deepcopy(vars(args))
    seen = []

    def shape(vocabulary):
        seen.append(vocabulary)
        raise AssertionError("stop after the vocabulary")   # the estimate itself is test_dry_run's
    with pytest.raises(AssertionError, match="stop after the vocabulary"):
        dry_run(shape, args, run)
    assert vars(args) == before
    assert seen == [Vocabulary(None, 1000, pad_vocab_size(1000, 128, 1))]
