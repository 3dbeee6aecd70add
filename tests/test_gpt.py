"""GPT and the Llama preset: TP=2 gives the serial loss and every gradient; pipeline stages
built separately hold the serial weights and compose to the serial loss and gradients;
parameter count and FLOPs.

One spawn of 2 gloo ranks: phase 1 at TP=1 (both ranks compute the serial reference),
phase 2 at TP=2 compared against it.
"""
import re

import pytest
import torch

from megatron_core import mpu
from megatron_core.models import flops
from megatron_core.models.gpt import GPTModel
from megatron_core.models.language_model import masked_mean
from megatron_core.models.llama import build_llama, llama_config
from megatron_core.mpu.layout import PipelineStage
from tests.harness import run_distributed
from megatron_core.transformer import ConfigError, TransformerConfig
from tests.harness.model_checks import local_shard
from tests.harness.weights import perturb_by_name, seeded_generator

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-4, atol=2e-5)
B, S, V = 2, 8, 64
GPT = dict(num_layers=2, hidden_size=16, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
           init_seed=5)
LLAMA = dict(num_layers=2, hidden_size=16, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=24,
             init_seed=6)
DROP = dict(hidden_dropout=0.2, attention_dropout=0.2, tp_invariant_dropout=True)

# name -> (family, config overrides, mask kind)
CASES = {
    "gpt_tied": ("gpt", {}, None),
    "gpt_tied_sequence_parallel": ("gpt", dict(sequence_parallel=True), "arbitrary"),
    "gpt_full_recompute_dropout": ("gpt", dict(DROP, recompute_granularity="full"), None),
    "gpt_untied_rope_selective_sp": ("gpt", dict(DROP, share_embeddings_and_output_weights=False,
                                                 position_embedding_type="rope", recompute_granularity="selective",
                                                 sequence_parallel=True), "padding"),
    "llama_gqa": ("llama", {}, None),
    "llama_gqa_sequence_parallel": ("llama", dict(sequence_parallel=True), "padding"),
}


def _config(family, overrides, tp):
    if family == "llama":
        return llama_config(**{**LLAMA, **overrides, "tensor_model_parallel_size": tp})
    return TransformerConfig(**{**GPT, **overrides, "tensor_model_parallel_size": tp})


def _batch(kind):
    ids = torch.randint(0, V - 4, (B, S), generator=seeded_generator(1))
    labels = torch.randint(0, V - 4, (B, S), generator=seeded_generator(2))
    positions = torch.arange(S).expand(B, S)
    loss_mask = torch.ones(B, S)
    loss_mask[1, -3:] = 0
    mask = None
    if kind == "padding":
        mask = torch.zeros(B, 1, 1, S, dtype=torch.bool)
        mask[1, ..., -3:] = True
    elif kind == "arbitrary":
        mask = torch.rand(B, 1, S, S, generator=seeded_generator(3)) < 0.3
    return ids, labels, positions, loss_mask, mask


def _run(family, overrides, kind, tp, model):
    ids, labels, positions, loss_mask, mask = _batch(kind)
    torch.manual_seed(99)
    per_token = model(ids, positions, attention_mask=mask, labels=labels)
    assert per_token.shape == (B, S) and per_token.dtype == torch.float32
    loss = masked_mean(per_token, loss_mask)
    loss.backward()
    mpu.allreduce_sequence_parallel_gradients(model.parameters())
    model.eval()
    with torch.no_grad():
        logits = model(ids, positions, attention_mask=mask)
    model.train()
    return dict(model=model, loss=loss.detach(), per_token=per_token.detach(), logits=logits,
                grads={n: p.grad.detach().clone() for n, p in model.named_parameters()})


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def _stage_name(name, offset):
    """A stage's parameter name -> the full model's."""
    if name == "word_embeddings.weight":
        return "embedding.word_embeddings.weight"
    return re.sub(r"decoder\.layers\.(\d+)\.", lambda m: f"decoder.layers.{int(m.group(1)) + offset}.", name)


def _check_pipeline_stages(family, overrides, kind):
    """Two stages built separately (as on two pipeline ranks) equal the one-stage model."""
    config = _config(family, overrides, 1)
    full = GPTModel(config, V, S)
    init = {n: p.detach().clone() for n, p in full.named_parameters()}
    stages = [GPTModel(config, V, S, stage=PipelineStage(0, 2)), GPTModel(config, V, S, stage=PipelineStage(1, 2))]
    assert [layer.layer_number for layer in stages[1].decoder.layers] == [2]
    for stage, offset in zip(stages, (0, 1)):
        for n, p in stage.named_parameters():  # each stage starts with the serial weights
            torch.testing.assert_close(p.detach(), init[_stage_name(n, offset)], rtol=0, atol=0)
    tied = config.share_embeddings_and_output_weights
    if tied:
        copy = stages[1].word_embeddings_weight()
        assert copy.shared and copy.stage_copy == "embedding.word_embeddings.weight" and not mpu.counts_toward_norm(copy)
    else:
        assert stages[1].word_embeddings is None
    perturb_by_name(full)
    values = dict(full.named_parameters())
    with torch.no_grad():
        for stage, offset in zip(stages, (0, 1)):
            for n, p in stage.named_parameters():
                p.copy_(values[_stage_name(n, offset)])
    ref = _run(family, overrides, kind, 1, model=full)

    ids, labels, positions, loss_mask, mask = _batch(kind)
    torch.manual_seed(99)
    hidden = stages[0](ids, positions, attention_mask=mask)
    received = hidden.detach().requires_grad_()
    stages[1].set_input_tensor([received])
    loss = masked_mean(stages[1](None, positions, attention_mask=mask, labels=labels), loss_mask)
    loss.backward()
    hidden.backward(received.grad)
    _close(loss, ref["loss"], f"{family}: two-stage loss")
    grads = {}
    for stage, offset in zip(stages, (0, 1)):
        for n, p in stage.named_parameters():
            key = _stage_name(n, offset)
            grads[key] = grads.get(key, 0) + p.grad  # the tied table: first + last stage (the stage copies summed)
    assert set(grads) == set(ref["grads"])
    for n, g in grads.items():
        _close(g, ref["grads"][n], f"{family}: two-stage grad of {n}")


def _check_gpt_and_llama():
    mpu.initialize_model_parallel(1)
    serial = {}
    for name, (family, overrides, kind) in CASES.items():
        if family == "llama":
            config, model = build_llama(V, S, **{**LLAMA, **overrides})
            assert config == _config(family, overrides, 1) and model.output_layer.weight is not None
        else:
            model = GPTModel(_config(family, overrides, 1), V, S)
        init = {n: p.detach().clone() for n, p in model.named_parameters()}
        assert model.parameter_count() == sum(p.numel() for p in model.parameters()), name
        perturb_by_name(model)
        serial[name] = dict(_run(family, overrides, kind, 1, model=model), init=init)
    # recomputation changes nothing
    recomputed, plain = (_run("gpt", dict(DROP, recompute_granularity=g), None, 1,
                              model=_perturbed(GPTModel(_config("gpt", dict(DROP, recompute_granularity=g), 1), V, S)))
                         for g in ("full", None))
    _close(recomputed["loss"], plain["loss"], "full recompute loss")
    for n in plain["grads"]:
        _close(recomputed["grads"][n], plain["grads"][n], f"full recompute grad {n}")
    _check_pipeline_stages("gpt", {}, "arbitrary")
    _check_pipeline_stages("llama", dict(position_embedding_type="rope"), None)
    mpu.destroy_model_parallel()

    mpu.initialize_model_parallel(2)
    for name, (family, overrides, kind) in CASES.items():
        ref = serial[name]
        model = GPTModel(_config(family, overrides, 2), V, S)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), local_shard(p, ref["init"][n]), rtol=0, atol=0,
                                       msg=lambda m: f"{name}: initial {n} is not a shard of the serial one")
        perturb_by_name(model)
        result = _run(family, overrides, kind, 2, model=model)
        _close(result["per_token"], ref["per_token"], f"{name}: TP=2 per-token loss")
        _close(result["loss"], ref["loss"], f"{name}: TP=2 loss")
        rank = mpu.get_tensor_model_parallel_rank()
        assert result["logits"].shape == (B, S, V // 2)
        _close(result["logits"], ref["logits"].chunk(2, dim=-1)[rank], f"{name}: TP=2 vocab-parallel logits")
        params = dict(model.named_parameters())
        assert set(params) == set(ref["grads"]), name
        for n, p in params.items():
            _close(result["grads"][n], local_shard(p, ref["grads"][n]), f"{name}: TP=2 grad of {n}")
    # parallel_output=False gathers the whole vocabulary (for sampling)
    model = _perturbed(GPTModel(_config("gpt", {}, 2), V, S, parallel_output=False)).eval()
    ids, _, positions, _, _ = _batch(None)
    with torch.no_grad():
        _close(model(ids, positions), serial["gpt_tied"]["logits"], "gathered logits")
    with pytest.raises(ConfigError, match=r"vocab_size \(63\) is not divisible by tensor_model_parallel_size"):
        GPTModel(_config("gpt", {}, 2), 63, S)


def _perturbed(model):
    perturb_by_name(model)
    return model


def test_gpt_and_llama_tp2_equal_serial():
    run_distributed(_check_gpt_and_llama, 2, timeout=240)


def test_masked_mean():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    assert masked_mean(loss, mask).item() == pytest.approx(8.0 / 3)
    assert masked_mean(loss, torch.zeros(2, 3)).item() == 0.0


def test_training_flops_by_hand():
    config = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=4, num_query_groups=2,
                               ffn_hidden_size=32, activation="swiglu")
    s, v = 8, 64
    # per layer, forward, per token: qkv 2*16*(4+2*2)*4, scores+context 2*2*8*4*4,
    # out proj 2*16*16, mlp 2*16*(2*32) + 2*32*16; logits 2*16*64
    per_layer = 2 * 16 * 8 * 4 + 2 * 2 * 8 * 16 + 2 * 16 * 16 + 2 * 16 * 64 + 2 * 32 * 16
    assert per_layer == 5120
    expected = 3 * (2 * per_layer + 2 * 16 * 64)
    assert flops.training_flops_per_token(config, v, s) == expected == 36864
    # Megatron's closed form: 12 L h^2 ((1 + g/n + s/h) (n d / h) + (f/h) * 3/2 + V / (2 L h))
    megatron = 12 * 2 * 16 ** 2 * ((1 + 2 / 4 + s / 16) * 1 + (32 / 16) * 1.5 + v / (2 * 2 * 16))
    assert expected == pytest.approx(megatron)
