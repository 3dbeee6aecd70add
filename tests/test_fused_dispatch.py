"""megatron_core.fused picks our kernel, then Apex, then the torch fallback: CPU tensors and
--no-fused-kernels always get the fallback; a missing extension falls back; Apex runs when
it is installed and ours is not. The kernel branches run here through a fake extension that
implements the binding's contract with the kernels' formulas (tests.harness.fake_fused),
so they also prove the autograd glue gives the fallbacks' outputs and gradients."""
import contextlib
import sys

import pytest
import torch

from megatron_core import fused, mpu
from megatron_core.fused import dispatch
from tests.harness import run_distributed
from tests.harness.fake_fused import fake_apex, fake_fused_extension, no_fused_extension
from megatron_core.training.arguments import build_run_config, parse_args, validate
from megatron_core.transformer.config import TransformerConfig
from megatron_core.transformer.layer import TransformerLayer
from megatron_core.transformer.rotary import RotaryEmbedding

pytestmark = pytest.mark.quick


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_cpu_tensors_get_the_fallback_even_with_the_extension_importable():
    with fake_fused_extension():
        dispatch.is_cuda = lambda x: x.is_cuda  # undo the fake's "everything is on a GPU"
        assert dispatch.choose(torch.zeros(2), enabled=True) == dispatch.TORCH
    assert dispatch.choose(torch.zeros(2), enabled=True) == dispatch.TORCH


def test_kernel_is_chosen_only_when_enabled_and_applicable():
    x = torch.zeros(2)
    with fake_fused_extension():
        assert dispatch.choose(x, enabled=True) == dispatch.KERNEL
        assert dispatch.choose(x, enabled=False) == dispatch.TORCH
        assert dispatch.choose(x, enabled=True, applicable=False) == dispatch.TORCH
        assert dispatch.choose(x, enabled=True, apex_op=lambda: True) == dispatch.KERNEL  # ours before Apex


def test_a_missing_extension_falls_back_to_torch_with_the_same_result():
    x = torch.randn(3, 8, generator=_gen(1))
    w, b = torch.rand(8, generator=_gen(2)), torch.randn(8, generator=_gen(3))
    with no_fused_extension():
        assert not fused.kernels_available()
        assert dispatch.choose(x, enabled=True) == dispatch.TORCH
        out = fused.layer_norm(x, w, b, 1e-5)
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (8,), w, b, 1e-5))


def test_apex_is_used_when_installed_and_ours_is_not():
    gen = _gen(4)
    x = torch.randn(4, 16, generator=gen, requires_grad=True)
    w, b = torch.rand(16, generator=gen), torch.randn(16, generator=gen)
    scores = torch.randn(2, 2, 4, 20, generator=gen).half().requires_grad_()
    mask = torch.rand(2, 1, 4, 20, generator=gen) < 0.3
    mask[0, 0, 2] = True  # a fully masked row: zeros in our semantics, even from an older Apex
    with fake_apex() as calls:
        y = fused.layer_norm(x, w, b, 1e-5)
        fused.rms_norm(x, w, 1e-5)
        probs = fused.scaled_masked_softmax(scores, mask, 0.5)
        probs.float().sum().backward()
        causal = fused.scaled_upper_triang_masked_softmax(torch.randn(2, 2, 20, 20).half(), 0.5)
        small = fused.scaled_masked_softmax(torch.randn(2, 2, 4, 8).half(), None, 0.5)  # Apex can't: fallback
    assert calls == ["fused_layer_norm_affine", "fused_rms_norm_affine", "scaled_masked_softmax_cuda.forward",
                     "scaled_masked_softmax_cuda.backward", "scaled_upper_triang_masked_softmax_cuda.forward"]
    torch.testing.assert_close(y, torch.nn.functional.layer_norm(x, (16,), w, b, 1e-5))
    expected = fused.scaled_masked_softmax(scores.detach(), mask, 0.5)
    torch.testing.assert_close(probs, expected, rtol=2e-3, atol=2e-3)
    assert (probs[0, :, 2] == 0).all() and causal.shape == (2, 2, 20, 20) and small.shape == (2, 2, 4, 8)


def test_a_python_only_apex_without_its_cuda_extension_is_not_used():
    x, w, b = torch.randn(2, 8), torch.rand(8), torch.randn(8)
    with fake_apex() as calls:
        sys.modules["fused_layer_norm_cuda"] = None  # fake_apex restores it
        dispatch.forget_imports()
        out = fused.layer_norm(x, w, b, 1e-5)
    assert calls == []
    torch.testing.assert_close(out, torch.nn.functional.layer_norm(x, (8,), w, b, 1e-5))


# --- the kernel branch of every op equals its fallback, outputs and gradients ---------------------

def _compare(fn, inputs, tol=1e-5):
    """fn(*inputs) through the (fake) kernels vs the fallback: same output and gradients."""
    def run(fake):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None
                  for t in inputs]
        if fake:
            with fake_fused_extension() as ext:
                out = fn(*leaves)
                out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
                calls = list(ext.calls)
        else:
            out = fn(*leaves)
            out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape).to(out.dtype))
            calls = []
        grads = [t.grad if t is not None and t.requires_grad else None for t in leaves]
        return out, grads, calls

    out_k, grads_k, calls = run(True)
    out_t, grads_t, _ = run(False)
    torch.testing.assert_close(out_k, out_t, rtol=tol, atol=tol)
    for gk, gt in zip(grads_k, grads_t):
        if gt is not None:
            torch.testing.assert_close(gk, gt, rtol=tol, atol=tol)
    return calls


def test_kernel_branch_of_masked_and_causal_softmax_matches_the_fallback():
    gen = _gen(5)
    scores = torch.randn(2, 3, 5, 7, generator=gen)
    mask = torch.rand(2, 1, 5, 7, generator=gen) < 0.4
    mask[1, 0, 0] = True
    calls = _compare(lambda s, m: fused.scaled_masked_softmax(s, m, 0.8), [scores, mask])
    assert calls == ["softmax_forward", "softmax_backward"]
    calls = _compare(lambda s: fused.scaled_upper_triang_masked_softmax(s, 0.8), [torch.randn(2, 3, 4, 6)])
    assert calls == ["softmax_forward", "softmax_backward"]


@pytest.mark.parametrize("rms", [False, True])
def test_kernel_branch_of_the_norms_matches_the_fallback(rms):
    gen = _gen(6)
    x = torch.randn(3, 4, 37, generator=gen) * 2 + 0.5
    w, b = torch.rand(37, generator=gen) + 0.5, torch.randn(37, generator=gen)
    fn = (lambda x, w: fused.rms_norm(x, w, 1e-5)) if rms else (lambda x, w, b: fused.layer_norm(x, w, b, 1e-5))
    calls = _compare(fn, [x, w] if rms else [x, w, b], tol=1e-4)
    assert calls == ["norm_forward", "norm_backward"]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_kernel_branch_of_bias_gelu_matches_the_fallback(approximate):
    gen = _gen(7)
    calls = _compare(lambda x, b: fused.bias_gelu(x, b, approximate),
                     [torch.randn(3, 5, 19, generator=gen) * 3, torch.randn(19, generator=gen)])
    assert calls == ["bias_gelu_forward", "bias_gelu_backward"]


def test_kernel_branch_of_bias_dropout_add_matches_the_fallback():
    gen = _gen(8)
    keep = (torch.rand(4, 2, 9, generator=gen) > 0.3).float()
    calls = _compare(lambda x, b, r: fused.bias_dropout_add(x, b, r, keep, 0.3),
                     [torch.randn(4, 2, 9, generator=gen), torch.randn(9, generator=gen), torch.randn(4, 2, 9)])
    assert calls == ["bias_dropout_add", "bias_dropout_add"]  # forward, then the mask on the gradient


@pytest.mark.parametrize("interleaved", [True, False])
def test_kernel_branch_of_rotary_matches_the_fallback(interleaved):
    config = TransformerConfig(num_layers=1, hidden_size=36, num_attention_heads=3, position_embedding_type="rope",
                               rotary_percent=0.5, rotary_interleaved=interleaved)
    angles = RotaryEmbedding(config)(torch.tensor([[5, 1, 9, 2]]))  # batch 1: broadcast over the batch
    t = torch.randn(4, 2, 3, 12, generator=_gen(9))
    calls = _compare(lambda t: fused.apply_rotary(t, angles, interleaved), [t])
    assert calls == ["rotary_apply", "rotary_apply"]


# --- the transformer goes through megatron_core.fused, and the flag turns it off -----------------------

def _layer_run(fused_kernels, fake):
    config = TransformerConfig(num_layers=2, hidden_size=24, num_attention_heads=3, position_embedding_type="rope",
                               hidden_dropout=0.2, attention_dropout=0.0, attention_backend="explicit",
                               fused_kernels=fused_kernels)
    torch.manual_seed(0)  # the layer's weights
    layer = TransformerLayer(config, layer_number=1, self_attn_mask_type="causal")
    x = torch.randn(6, 2, 24, generator=_gen(10), requires_grad=True)
    angles = RotaryEmbedding(config)(torch.arange(6).expand(2, 6))
    torch.manual_seed(11)  # the hidden dropout's mask
    context = fake_fused_extension() if fake else contextlib.nullcontext(None)
    with context as ext:
        out = layer(x, rotary_angles=angles)
        out.sum().backward()
    return out, x.grad, sorted(set(ext.calls)) if fake else []


def _check_the_layer_goes_through_megatron_core_fused():
    mpu.initialize_model_parallel(1)
    out, grad, calls = _layer_run(True, fake=True)
    assert calls == ["bias_dropout_add", "bias_gelu_backward", "bias_gelu_forward", "norm_backward", "norm_forward",
                     "rotary_apply", "softmax_backward", "softmax_forward"]
    ref_out, ref_grad, _ = _layer_run(True, fake=False)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-5)
    # fused_kernels=False: every op stays on the fallback, even with the extension importable.
    _, _, calls = _layer_run(False, fake=True)
    assert calls == []


def test_the_transformer_layer_runs_every_fused_op_equals_the_unfused_layer_and_obeys_the_switch():
    run_distributed(_check_the_layer_goes_through_megatron_core_fused, 1)


@pytest.mark.parametrize("flag", ["--no-fused-kernels", "--no-masked-softmax-fusion", "--no-bias-gelu-fusion",
                                  "--no-bias-dropout-fusion", "--no-rope-fusion", "--no-persist-layer-norm"])
def test_no_fused_kernels_and_megatrons_aliases_turn_the_switch_off(flag):
    base = ("--num-layers 2 --hidden-size 16 --num-attention-heads 2 --seq-length 8 --micro-batch-size 1 "
            "--train-iters 1 --lr 1e-3")
    assert build_run_config(validate(parse_args(base.split()), 1)).model.fused_kernels
    assert not build_run_config(validate(parse_args((base + " " + flag).split()), 1)).model.fused_kernels
