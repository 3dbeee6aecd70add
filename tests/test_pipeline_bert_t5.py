"""BERT and T5 at PP=2 (and T5 at PP=4) on gloo equal the serial model (loss and every gradient).

BERT splits its encoder layers over the two stages (tied MLM output on the last stage).
T5 splits encoder and decoder (pipeline_model_parallel_split_rank=1): stage 0 holds the
encoder, stage 1 the decoder and head; stage 1 sends back gradients for the encoder
output it used in cross-attention, and both stages' word tables are summed over the
embedding group.
"""
import torch

from megatron_core.models.bert import BertModel, bert_pretraining_loss
from megatron_core.models.gpt import masked_mean
from megatron_core.models.t5 import T5Model
from megatron_core.mpu import parallel_state as ps
from megatron_core.pipeline.p2p import P2PConfig
from megatron_core.testing.distributed import run_distributed
from megatron_core.transformer.config import TransformerConfig
from tests.pipeline_checks import check_grads, run_pipeline, serial_grads

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
    serial_losses, grads = serial_grads(_bert_builder(layout), batches, _bert_step)
    chunks, stats, _ = run_pipeline(_bert_builder(layout), batches, _bert_step, 1, 2, None,
                                    P2PConfig(tensor_shape=(S_ENC, MICRO, HIDDEN)))
    if ps.is_pipeline_last_stage():
        got = [s["loss"].item() for s in stats]
        assert torch.allclose(torch.tensor(got), torch.tensor(serial_losses), atol=1e-5), (got, serial_losses)
    assert check_grads(chunks, grads) > 0
    ps.destroy_model_parallel()


def _t5_config():
    return TransformerConfig(num_layers=2, hidden_size=HIDDEN, num_attention_heads=4, hidden_dropout=0.0,
                             attention_dropout=0.0, normalization="RMSNorm", add_bias_linear=False,
                             position_embedding_type="t5_relative", activation="relu", ffn_hidden_size=32)


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


def _t5_build(stage):
    """A stage of the split encoder-decoder pipeline: each stack's layers spread evenly over
    its stages, each stack's first stage embeds its input."""
    return T5Model(_t5_config(), VOCAB, max_sequence_length=S_ENC, stage=stage)


def _t5_step(model, b):
    out = model(b["enc"], b["dec"], encoder_attention_mask=b["enc_mask"], labels=b["labels"])
    if not model.post_process:
        return out
    return masked_mean(out, b["labels"] >= 0)


def _check_t5(stages=2, split=1):
    batches = _t5_batches(4)
    serial_losses, grads = serial_grads(_t5_build, batches, _t5_step)
    shapes = lambda stage: [(S_ENC, MICRO, HIDDEN)] if stage < split else [(S_DEC, MICRO, HIDDEN), (S_ENC, MICRO, HIDDEN)]
    chunks, stats, _ = run_pipeline(_t5_build, batches, _t5_step, 1, stages, None,
                                    P2PConfig(stage_output_shapes=shapes), split_rank=split)
    if ps.is_pipeline_last_stage():
        got = [s["loss"].item() for s in stats]
        assert torch.allclose(torch.tensor(got), torch.tensor(serial_losses), atol=1e-5), (got, serial_losses)
    assert check_grads(chunks, grads) > 0
    ps.destroy_model_parallel()


def _all():
    _check_bert("post")
    _check_bert("pre")
    _check_t5()


def test_bert_and_t5_pipeline_two_stages_equal_serial():
    run_distributed(_all, 2, timeout=300)


def test_t5_pipeline_four_stages_two_per_stack_equal_serial():
    # Each stack spans two stages: the relative-bias tables' gradients are summed over the
    # stack's stages and the word table over first, split and last stage.
    run_distributed(_check_t5, 4, 4, 2, timeout=300)
