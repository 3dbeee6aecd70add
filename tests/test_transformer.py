"""The tensor-parallel transformer block equals the serial one, forward and every gradient.

One spawn of 2 gloo ranks runs every case twice: first with TP=1 (the two ranks are then
data-parallel replicas, each computing the serial reference), then with TP=2, comparing
outputs, the input gradient and every parameter gradient (serial gradients sliced into
the rank's shard). Both phases build the model from the same seeds: the TP=2 weights must
start as shards of the serial ones, and are then overwritten with larger random values so
biases and norm weights are exercised too.
"""

import pytest
import torch

from megatron_core import mpu
from tests.harness import run_distributed
from megatron_core.transformer import ConfigError, RotaryEmbedding, TransformerBlock, TransformerConfig
from tests.harness.model_checks import local_shard
from tests.harness.weights import perturb_by_name, seeded_generator

pytestmark = pytest.mark.quick

TOL = dict(rtol=1e-4, atol=2e-5)
S, B, H = 8, 2, 16

BASE = dict(num_layers=2, hidden_size=H, num_attention_heads=4, ffn_hidden_size=32,
            hidden_dropout=0.0, attention_dropout=0.0, init_seed=77)
DROP = dict(hidden_dropout=0.2, attention_dropout=0.2, tp_invariant_dropout=True)

# name -> (config overrides, mask kind, serial reference overrides or None)
CASES = {
    "mha_gelu_preln_layernorm_sdpa": (dict(attention_backend="sdpa"), "causal", None),
    "mha_gelu_preln_layernorm_explicit": (dict(attention_backend="explicit"), "causal", None),
    "gqa_swiglu_rmsnorm_rope_half": (dict(num_query_groups=2, activation="swiglu", normalization="RMSNorm",
                                          position_embedding_type="rope", add_bias_linear=False),
                                     "causal_padding", None),
    "postln_gelu_tanh_rope_interleaved": (dict(layernorm_position="post", activation="gelu_tanh",
                                               position_embedding_type="rope", rotary_interleaved=True,
                                               rotary_percent=0.5), "padding", None),
    "gqa_arbitrary_mask_explicit": (dict(num_query_groups=2, attention_backend="explicit"), "arbitrary", None),
    "gqa_arbitrary_mask_sdpa": (dict(num_query_groups=2, attention_backend="sdpa"), "arbitrary", None),
    "preln_residual_after_norm_qk_scaling": (dict(apply_residual_connection_post_layernorm=True,
                                                  apply_query_key_layer_scaling=True,
                                                  attention_backend="explicit"), "causal", None),
    "sequence_parallel_gqa_swiglu": (dict(sequence_parallel=True, num_query_groups=2, activation="swiglu"),
                                     "causal", None),
    "dropout_tp_invariant": (dict(DROP, num_query_groups=2), "causal_padding", None),
    "sequence_parallel_dropout": (dict(DROP, sequence_parallel=True, position_embedding_type="rope"),
                                  "causal", None),
    "full_recompute_uniform_dropout": (dict(DROP, recompute_granularity="full"), "causal",
                                       dict(recompute_granularity=None)),
    "full_recompute_block_sp_dropout": (dict(DROP, recompute_granularity="full", recompute_method="block",
                                             sequence_parallel=True, activation="swiglu"), "causal",
                                        dict(recompute_granularity=None)),
    "selective_recompute_dropout": (dict(DROP, recompute_granularity="selective", num_query_groups=2),
                                    "causal_padding", dict(recompute_granularity=None)),
}


def _config(overrides, tp):
    return TransformerConfig(**{**BASE, **overrides, "tensor_model_parallel_size": tp})


def _mask(kind):
    """(attn_mask_type, bool mask with True = masked, or None)."""
    padding = torch.zeros(B, 1, 1, S, dtype=torch.bool)
    padding[0, ..., -3:] = True
    if kind == "causal":
        return "causal", None
    if kind == "causal_padding":
        return "causal", padding
    if kind == "padding":
        return "padding", padding
    arbitrary = torch.rand(B, 1, S, S, generator=seeded_generator(5)) < 0.4
    arbitrary[1, 0, 2, :] = True  # a fully masked row: must not give NaN, and both paths agree
    return "padding", arbitrary


def _run(overrides, kind, tp, serial_init=None):
    """Forward + backward of one case. Returns outputs and full-size (TP=1) or local results."""
    config = _config(overrides, tp)
    mask_type, mask = _mask(kind)
    torch.manual_seed(1)
    block = TransformerBlock(config, self_attn_mask_type=mask_type)
    init = {n: p.detach().clone() for n, p in block.named_parameters()}
    if serial_init is not None:
        for n, p in block.named_parameters():
            torch.testing.assert_close(p.detach(), local_shard(p, serial_init[n]), rtol=0, atol=0,
                                       msg=lambda m: f"initial {n} is not a shard of the serial weight: {m}")
    perturb_by_name(block)
    x = torch.randn(S, B, H, generator=seeded_generator(11))
    grad_out = torch.randn(S, B, H, generator=seeded_generator(12))
    rotary = None
    if config.position_embedding_type == "rope":
        positions = torch.arange(S).expand(B, S) + torch.tensor([[0], [3]])
        rotary = RotaryEmbedding(config)(positions)
    if config.sequence_parallel_active:
        x = mpu.scatter_to_sequence_parallel_region(x)
        grad_out = mpu.scatter_to_sequence_parallel_region(grad_out)
    x = x.detach().requires_grad_()
    torch.manual_seed(2024)  # the dropout stream, alike on every rank and in both phases
    out = block(x, attention_mask=mask, rotary_angles=rotary)
    assert torch.isfinite(out).all()
    (out * grad_out).sum().backward()
    mpu.allreduce_sequence_parallel_gradients(block.parameters())
    grads = {n: p.grad.detach().clone() for n, p in block.named_parameters()}
    return dict(out=out.detach(), x_grad=x.grad.detach(), grads=grads, init=init, block=block)


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


def _check_low_precision():
    """bf16 / fp16 parameters run through both attention paths and stay near fp32."""
    for dtype, extra in ((torch.bfloat16, {}), (torch.float16, dict(apply_query_key_layer_scaling=True))):
        for backend in ("sdpa", "explicit"):
            overrides = dict(extra, attention_backend=backend, num_query_groups=2, position_embedding_type="rope",
                             normalization="RMSNorm", activation="swiglu")
            reference = TransformerBlock(_config(overrides, 1), self_attn_mask_type="padding")
            perturb_by_name(reference)
            low = TransformerBlock(_config(dict(overrides, params_dtype=dtype), 1), self_attn_mask_type="padding")
            low.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
            assert all(p.dtype == dtype for p in low.parameters())
            _, mask = _mask("arbitrary")
            x = torch.randn(S, B, H, generator=seeded_generator(11))
            rotary = RotaryEmbedding(reference.config)(torch.arange(S).expand(B, S))
            with torch.no_grad():
                expected = reference(x, attention_mask=mask, rotary_angles=rotary)
                out = low(x.to(dtype), attention_mask=mask, rotary_angles=rotary)
            assert out.dtype == dtype
            torch.testing.assert_close(out.float(), expected, rtol=0.05, atol=0.1,
                                       msg=lambda m: f"{dtype} {backend}: {m}")


def _check_all_cases():
    # Phase 1: TP=1 (both ranks compute the serial model).
    mpu.initialize_model_parallel(1)
    _check_low_precision()
    serial = {}
    for name, (overrides, kind, ref_overrides) in CASES.items():
        result = _run(overrides, kind, 1)
        if ref_overrides is not None:
            # Recomputation must not change anything: compare with the same model run plainly.
            plain = _run({**overrides, **ref_overrides}, kind, 1)
            _close(result["out"], plain["out"], f"{name}: output with recomputation")
            for n in plain["grads"]:
                _close(result["grads"][n], plain["grads"][n], f"{name}: grad {n} with recomputation")
            result = plain
        backend = overrides.get("attention_backend")
        if backend is not None:
            other = _run({**overrides, "attention_backend": "explicit" if backend == "sdpa" else "sdpa"}, kind, 1)
            _close(other["out"], result["out"], f"{name}: SDPA and explicit attention outputs")
            for n in result["grads"]:
                _close(other["grads"][n], result["grads"][n], f"{name}: SDPA vs explicit grad {n}")
        if overrides.get("hidden_dropout"):
            # Dropout is really on: evaluation mode gives a different output.
            result["block"].eval()
            mask_type, mask = _mask(kind)
            with torch.no_grad():
                x = torch.randn(S, B, H, generator=seeded_generator(11))
                if overrides.get("position_embedding_type") != "rope":
                    assert not torch.allclose(result["block"](x, attention_mask=mask), result["out"])
        serial[name] = result
    mpu.destroy_model_parallel()

    # Phase 2: TP=2 against the serial results.
    mpu.initialize_model_parallel(2)
    rank = mpu.get_tensor_model_parallel_rank()
    for name, (overrides, kind, _) in CASES.items():
        ref = serial[name]
        result = _run(overrides, kind, 2, serial_init=ref["init"])
        params = dict(result["block"].named_parameters())
        assert set(params) == set(ref["grads"]), name
        expected_out, expected_x_grad = ref["out"], ref["x_grad"]
        if _config(overrides, 2).sequence_parallel_active:
            expected_out = expected_out.chunk(2, dim=0)[rank]
            expected_x_grad = expected_x_grad.chunk(2, dim=0)[rank]
        _close(result["out"], expected_out, f"{name}: TP=2 output")
        _close(result["x_grad"], expected_x_grad, f"{name}: TP=2 input grad")
        for n, param in params.items():
            _close(result["grads"][n], local_shard(param, ref["grads"][n]), f"{name}: TP=2 grad of {n}")

    # A config whose TP size disagrees with the group is refused in one sentence.
    with pytest.raises(ConfigError, match=r"tensor-parallel group has 2 ranks; build the config with "
                                          r"tensor_model_parallel_size=2\."):
        TransformerBlock(_config({}, 1))


def test_block_tp2_equals_serial_for_every_variant():
    run_distributed(_check_all_cases, 2, timeout=240)


# --- configuration errors: one clear sentence ------------------------------------------------

@pytest.mark.parametrize("changes, pattern", [
    (dict(num_attention_heads=6, tensor_model_parallel_size=4, hidden_size=24),
     r"num_attention_heads \(6\) is not divisible by tensor_model_parallel_size \(4\)"),
    (dict(num_query_groups=3), r"num_query_groups \(3\) must divide num_attention_heads \(4\)"),
    (dict(num_query_groups=2, tensor_model_parallel_size=4),
     r"num_query_groups \(2\) is not divisible by tensor_model_parallel_size \(4\)"),
    (dict(ffn_hidden_size=30, tensor_model_parallel_size=4), r"ffn_hidden_size \(30\) is not divisible"),
    (dict(hidden_size=18), r"hidden_size \(18\) is not divisible by num_attention_heads \(4\); set kv_channels"),
    (dict(normalization="BatchNorm"), r"normalization='BatchNorm' is not one of 'LayerNorm', 'RMSNorm'"),
    (dict(activation="tanh"), r"activation='tanh' is not one of"),
    (dict(hidden_dropout=1.0), r"hidden_dropout must be in \[0, 1\)"),
    (dict(position_embedding_type="rope", kv_channels=6, rotary_percent=0.5), r"rotary dimension \(3 .*must be even"),
    (dict(recompute_granularity="some"), r"recompute_granularity='some' is not one of"),
    (dict(layernorm_position="post", apply_residual_connection_post_layernorm=True),
     r"apply_residual_connection_post_layernorm only applies to pre-LN"),
    (dict(num_layers=0), r"num_layers must be a positive integer"),
])
def test_invalid_config_is_one_sentence(changes, pattern):
    with pytest.raises(ConfigError, match=pattern) as info:
        TransformerConfig(**{**dict(num_layers=2, hidden_size=16, num_attention_heads=4), **changes})
    message = str(info.value)
    assert "\n" not in message and message.endswith(".")


def test_config_round_trips_through_dict():
    config = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=4, num_query_groups=2,
                               params_dtype=torch.bfloat16, activation="swiglu")
    assert TransformerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown TransformerConfig field"):
        TransformerConfig.from_dict({**config.to_dict(), "hiden_size": 3})


