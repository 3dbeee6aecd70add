"""A model family is its model, one registry entry and its entry point's TrainSpec.

A family registered at runtime here (a model class defined in this file, a ModelFamily and
a TrainSpec) goes through every path that looks families up by name, with no other file
touched: the loop's dry run prints its parameter count and memory estimate, a weights
checkpoint records it and the generation loader rebuilds it from the record, and greedy
generation runs through its adapter. docs/design.md ("Adding a model family") lists the
files; this test fails if one of these paths starts dispatching on family names again.
"""
import re

import pytest
import torch

from megatron_core import mpu
from megatron_core.checkpoint.saved_model import open_saved_model
from megatron_core.checkpoint.weights_checkpoint import serial_world, write_weights_checkpoint
from megatron_core.data.tokenizers import build_tokenizer
from megatron_core.inference.checkpoint_model import load_checkpoint_model
from megatron_core.inference.sampling import SamplingParams
from megatron_core.inference.text_generation import TextGenerator
from megatron_core.models.gpt import GPTModel
from megatron_core.models.rank_parameters import ModelShape
from megatron_core.models.registry import ModelFamily, get_family, register_family, unregister_family
from megatron_core.mpu.layout import PipelineStage
from megatron_core.training.loop import pretrain
from megatron_core.training.train_spec import TrainSpec
from megatron_core.transformer.config import TransformerConfig
from tests.harness.inference_models import greedy_by_recomputation
from tests.harness.model_checks import single_process_world
from tests.harness.tiny_corpus import BERT_VOCAB

NAME = "tiny_scaled_lm"
VOCAB = 21130               # the BERT vocabulary file's size + [BOS], [EOS]
PADDED = 21248


class ScaledLM(GPTModel):
    """A throwaway family: a GPT whose output logits are scaled by a constant it is built with."""

    def __init__(self, config, vocab_size, max_sequence_length, logit_scale, stage=None):
        super().__init__(config, vocab_size, max_sequence_length, stage=stage)
        self.logit_scale = logit_scale

    def forward(self, input_ids, position_ids=None, attention_mask=None, labels=None, inference_context=None):
        output = super().forward(input_ids, position_ids, attention_mask, labels, inference_context)
        return output if labels is not None else output * self.logit_scale


FAMILY = ModelFamily(
    name=NAME,
    build=lambda config, vocab, o, stage: ScaledLM(config, vocab, stage=stage, **o),
    options=lambda flags: {"max_sequence_length": flags.get("max_position_embeddings") or 64,
                           "logit_scale": float(flags.get("logit_scale", 2.0))},
    shape=lambda config, vocab, o, flags: ModelShape(NAME, config, vocab, o["max_sequence_length"],
                                                     structure="decoder"),
    generation="causal_lm")


def never(*_):
    raise AssertionError("a dry run builds no model, no data and runs no step")


TRAIN_SPEC = TrainSpec(NAME, never, never)
CONFIG = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=48,
                           hidden_dropout=0.0, attention_dropout=0.0, init_method_std=0.3)


@pytest.fixture(autouse=True)
def registered():
    register_family(FAMILY)
    yield
    unregister_family(NAME)


def test_the_entry_point_path_runs_the_dry_run_estimate_of_a_family_registered_at_runtime(capsys):
    flags = ("--num-layers 2 --hidden-size 32 --ffn-hidden-size 48 --num-attention-heads 4 --seq-length 16 "
             "--max-position-embeddings 64 --micro-batch-size 2 --global-batch-size 4 --train-iters 1 --lr 1e-3 "
             "--vocab-size 21130 --dry-run")
    assert pretrain(TRAIN_SPEC, flags.split()) is None
    out = capsys.readouterr().out
    with single_process_world():
        built = sum(p.numel() for p in get_family(NAME).build_model(CONFIG, PADDED, FAMILY.options({})).parameters())
    count = int(re.search(r"model parameters: ([\d,]+)", out).group(1).replace(",", ""))
    assert count == built and "estimated memory per rank" in out and "no weights built" in out


def _write(directory, tp=1):
    options = FAMILY.options({"logit_scale": 3.0})
    with serial_world():
        mpu.model_parallel_manual_seed(1234)
        full = {k: v.detach().clone() for k, v in FAMILY.build_model(CONFIG, PADDED, options).state_dict().items()}
        write_weights_checkpoint(directory, full, lambda stage: FAMILY.build_model(CONFIG, PADDED, options, stage),
                                 {"tokenizer_type": "BertWordPieceLowerCase", "vocab_file": BERT_VOCAB}, CONFIG,
                                 VOCAB, PADDED, tp, family=NAME, model_options=options)
    return full, options


def test_a_weights_checkpoint_records_the_family_and_generation_rebuilds_it_from_the_record(tmp_path):
    full, options = _write(str(tmp_path / "ckpt"), tp=2)
    saved = open_saved_model(str(tmp_path / "ckpt"))
    assert (saved.family, saved.model_options) == (NAME, options)
    tokenizer = build_tokenizer("BertWordPieceLowerCase", vocab_file=BERT_VOCAB)
    with single_process_world():
        mpu.destroy_model_parallel()        # the loader initializes model parallelism itself
        loaded = load_checkpoint_model(str(tmp_path / "ckpt"))
        assert isinstance(loaded.model, ScaledLM) and loaded.model.logit_scale == 3.0 and loaded.family == NAME
        for key, tensor in loaded.model.state_dict().items():
            torch.testing.assert_close(tensor, full[key].to(tensor.dtype), msg=key)
        prompt = tokenizer.tokenize("清华大学位于")
        generated = TextGenerator(loaded, tokenizer).generate(["清华大学位于"], 4, SamplingParams(greedy=True))
        with torch.no_grad():
            expected = greedy_by_recomputation(lambda ids: loaded.model(ids)[0, -1], prompt, 4, loaded.vocab_size)
    assert generated[0].tokens == expected


def test_a_checkpoint_of_an_unknown_family_is_one_sentence_naming_the_families(tmp_path):
    _write(str(tmp_path / "ckpt"))
    unregister_family(NAME)
    with single_process_world():
        mpu.destroy_model_parallel()
        with pytest.raises(Exception, match=rf"no model family named '{NAME}'; the families are gpt, bert"):
            load_checkpoint_model(str(tmp_path / "ckpt"))
