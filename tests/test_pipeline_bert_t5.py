"""BERT and T5 at PP=2 (and T5 at PP=4) on gloo equal the serial model (loss and every gradient).

BERT splits its encoder layers over the two stages (tied MLM output on the last stage).
T5 splits encoder and decoder (pipeline_model_parallel_split_rank=1): stage 0 holds the
encoder, stage 1 the decoder and head; stage 1 sends back gradients for the encoder
output it used in cross-attention, and both stages' copies of the word table (and, for
Megatron's T5, of the position table) are summed, tied head or not. The pipeline's
gradient norm and the weights after one SGD step equal the serial model's as well.
"""
import functools

import torch

from megatron_core.models.bert import BertModel, bert_pretraining_loss
from megatron_core.models.gpt import masked_mean
from megatron_core.models.t5 import T5Model
from megatron_core.mpu import parallel_state as ps
from megatron_core.pipeline.p2p import P2PConfig
from tests.harness.distributed import run_distributed
from megatron_core.transformer.config import TransformerConfig
from tests.harness.pipeline_checks import check_grads, check_norm_and_step, run_pipeline, serial_step

VOCAB, MICRO, HIDDEN, S_ENC, S_DEC = 64, 2, 16, 8, 6


def _bert_batches(n):
    g = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(n):
        padding = torch.ones(MICRO, S_ENC)
        padding[0, -2:] = 0
        batches.append({"tokens": torch.randint(0, VOCAB, (MICRO, S_ENC), generator=g),
                        "types": torch.randint(0, 2, (MICRO, S_ENC), generator=g),
                        "labels": torch.randint(0, VOCAB, (MICRO, S_ENC), generator=g),
                        "loss_mask": (torch.rand(MICRO, S_ENC, generator=g) < 0.3).float(),
                        "padding": padding, "is_random": torch.randint(0, 2, (MICRO,), generator=g)})
    return batches


def _bert_builder(layout):
    config = TransformerConfig(num_layers=4, hidden_size=HIDDEN, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0, layernorm_position=layout)

    def build(stage):
        return BertModel(config, VOCAB, S_ENC, stage=stage)
    return build


def _bert_step(model, b):
    out = model(b["tokens"], b["padding"], tokentype_ids=b["types"], lm_labels=b["labels"])
    if not model.post_process:
        return out
    lm_loss, binary = out
    return bert_pretraining_loss(lm_loss, binary, b["loss_mask"], b["is_random"])


def _check_bert(layout):
    batches = _bert_batches(4)
    reference = serial_step(_bert_builder(layout), batches, _bert_step, _sgd)
    serial_losses, grads = reference.losses, reference.grads
    chunks, stats, _ = run_pipeline(_bert_builder(layout), batches, _bert_step, 1, 2, None,
                                    P2PConfig(tensor_shape=(S_ENC, MICRO, HIDDEN)))
    if ps.is_pipeline_last_stage():
        got = [s["loss"].item() for s in stats]
        assert torch.allclose(torch.tensor(got), torch.tensor(serial_losses), atol=1e-5), (got, serial_losses)
    assert check_grads(chunks, grads) > 0
    check_norm_and_step(chunks, reference, _sgd)
    ps.destroy_model_parallel()


T5_VARIANTS = {
    "v1.0": dict(),                                                   # tied head, relative positions
    "v1.1": dict(share_embeddings_and_output_weights=False, activation="geglu_tanh"),   # untied head
    "megatron": dict(position_embedding_type="learned_absolute"),     # a position table on each embedding stage
}


def _t5_config(variant="v1.0"):
    values = dict(num_layers=2, hidden_size=HIDDEN, num_attention_heads=4, hidden_dropout=0.0,
                  attention_dropout=0.0, normalization="RMSNorm", add_bias_linear=False,
                  position_embedding_type="t5_relative", activation="relu", ffn_hidden_size=32)
    values.update(T5_VARIANTS[variant])
    return TransformerConfig(**values)


def _t5_batches(n):
    g = torch.Generator().manual_seed(5)
    batches = []
    for _ in range(n):
        enc_mask = torch.ones(MICRO, S_ENC, dtype=torch.long)
        enc_mask[1, -3:] = 0
        labels = torch.randint(0, VOCAB, (MICRO, S_DEC), generator=g)
        labels[0, -1] = -100
        batches.append({"enc": torch.randint(0, VOCAB, (MICRO, S_ENC), generator=g),
                        "dec": torch.randint(0, VOCAB, (MICRO, S_DEC), generator=g),
                        "enc_mask": enc_mask, "labels": labels})
    return batches


def _t5_build(stage, variant="v1.0"):
    """A stage of the split encoder-decoder pipeline (the whole model for the serial run):
    each stack's layers spread evenly over its stages, each stack's first stage embeds its
    input."""
    return T5Model(_t5_config(variant), VOCAB, max_sequence_length=S_ENC, stage=stage)


def _t5_step(model, b):
    out = model(b["enc"], b["dec"], encoder_attention_mask=b["enc_mask"], labels=b["labels"])
    if not model.post_process:
        return out
    return masked_mean(out, b["labels"] >= 0)


def _sgd(params):
    # SGD: its step is proportional to the gradient, so float rounding in a near-zero
    # gradient cannot flip the step as it can with Adam's g / sqrt(v).
    return torch.optim.SGD(params, lr=0.5)


def _check_t5(stages=2, split=1, variant="v1.0"):
    """Loss, every gradient (each copy of a table that several stages hold gets the serial
    gradient), the pipeline's gradient norm, and the weights after one SGD step."""
    batches = _t5_batches(4)
    build = functools.partial(_t5_build, variant=variant)
    reference = serial_step(build, batches, _t5_step, _sgd)
    shapes = lambda stage: [(S_ENC, MICRO, HIDDEN)] if stage < split else [(S_DEC, MICRO, HIDDEN), (S_ENC, MICRO, HIDDEN)]
    chunks, stats, _ = run_pipeline(build, batches, _t5_step, 1, stages, None,
                                    P2PConfig(stage_output_shapes=shapes), split_rank=split)
    if ps.is_pipeline_last_stage():
        got = [s["loss"].item() for s in stats]
        assert torch.allclose(torch.tensor(got), torch.tensor(reference.losses), atol=1e-5), (got, reference.losses)
    assert check_grads(chunks, reference.grads) > 0
    check_norm_and_step(chunks, reference, _sgd)
    ps.destroy_model_parallel()


def _check_t5_variants(stages, split):
    for variant in T5_VARIANTS:
        _check_t5(stages, split, variant)


def _all():
    _check_bert("post")
    _check_bert("pre")


def test_t5_two_stages_tied_untied_and_learned_positions_equal_serial():
    # v1.1 (untied head): the decoder stage's copy of the input table is summed with the
    # encoder stage's; Megatron T5: so are the two copies of the position table.
    run_distributed(_check_t5_variants, 2, 2, 1, timeout=300)


def test_bert_pipeline_two_stages_equal_serial():
    run_distributed(_all, 2, timeout=300)


def test_t5_pipeline_four_stages_two_per_stack_equal_serial():
    # Each stack spans two stages: the relative-bias tables' gradients are summed over the
    # stack's stages and the word table over the stages that hold a copy (first, split and,
    # tied, last), whatever the tying; norms and one SGD step equal the serial model's.
    run_distributed(_check_t5_variants, 4, 4, 2, timeout=400)
