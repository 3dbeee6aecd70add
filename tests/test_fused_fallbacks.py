"""Every torch fallback in megatron_core.fused equals a plain fp64 formula written here
(odd sizes, fully masked rows, fp16/bf16/fp32 inputs), and its gradients pass gradcheck."""
import math

import pytest
import torch

from megatron_core import fused
from megatron_core.fused.bias_dropout_add import bias_dropout_add_reference
from megatron_core.fused.rotary import apply_rotary_reference
from megatron_core.fused.softmax import masked_softmax_reference
from megatron_core.transformer.config import TransformerConfig
from megatron_core.transformer.rotary import RotaryEmbedding

pytestmark = pytest.mark.quick

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
DTYPES = list(TOLERANCE)


def _close(actual, expected, dtype):
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tol, atol=tol)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- fp64 references, each a formula with no torch softmax / norm / gelu op --------------------

def softmax_formula(scores, hidden, scale):
    """softmax over visible keys; rows with none visible are zeros."""
    x = scores.double() * scale
    visible = ~hidden.expand(x.shape)
    row_max = torch.where(visible, x, -math.inf).amax(dim=-1, keepdim=True)
    e = torch.where(visible, torch.exp(x - torch.where(torch.isfinite(row_max), row_max, 0.0)), 0.0)
    total = e.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, e / torch.where(total > 0, total, 1.0), 0.0)


def layer_norm_formula(x, weight, bias, eps, rms=False):
    x = x.double()
    mean = 0.0 if rms else x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight.double()
    return y if bias is None else y + bias.double()


def gelu_formula(v, tanh_approx):
    v = v.double()
    if tanh_approx:
        return 0.5 * v * (1 + torch.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))
    return v * 0.5 * (1 + torch.erf(v / math.sqrt(2)))


def rotary_formula(t, positions, rot_dim, base, interleaved):
    """Each rotated pair as a complex number times e^{i p theta_j}, theta_j = base^(-2j/rot_dim)."""
    t = t.double()
    half = rot_dim // 2
    theta = base ** (-2.0 * torch.arange(half, dtype=torch.float64) / rot_dim)
    phase = torch.exp(1j * positions.double()[:, :, None] * theta)  # [b, s, half]
    phase = phase.transpose(0, 1)[:, :, None, :]   # [s, b, 1, half]
    if interleaved:
        re, im = t[..., 0:rot_dim:2], t[..., 1:rot_dim:2]
    else:
        re, im = t[..., :half], t[..., half:rot_dim]
    z = torch.complex(re, im) * phase
    out = t.clone()
    if interleaved:
        out[..., 0:rot_dim:2], out[..., 1:rot_dim:2] = z.real, z.imag
    else:
        out[..., :half], out[..., half:rot_dim] = z.real, z.imag
    return out


# --- softmax -------------------------------------------------------------------------------------

def _padding_mask(b, sq, sk, gen):
    """[b, 1, sq, sk] with random holes, one query row fully masked, one batch's last keys masked."""
    mask = torch.rand(b, 1, sq, sk, generator=gen) < 0.3
    mask[0, 0, 1, :] = True
    mask[-1, :, :, sk - 2:] = True
    return mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 2, 6, 33), (3, 1, 2, 1)])
def test_masked_softmax_fallback_equals_the_formula_and_zeroes_fully_masked_rows(dtype, shape):
    gen = _gen(1)
    b, h, sq, sk = shape
    scores = (torch.randn(shape, generator=gen) * 4).to(dtype)
    mask = _padding_mask(b, sq, sk, gen)
    probs = fused.scaled_masked_softmax(scores, mask, 0.7)
    assert probs.dtype == dtype
    _close(probs, softmax_formula(scores, mask, 0.7), dtype)
    assert (probs[0, :, 1] == 0).all()
    assert (probs.masked_select(mask.expand(shape)) == 0).all()


@pytest.mark.parametrize("mask_shape", [(7,), (5, 7), (2, 1, 1, 7), (1, 3, 5, 7)])
def test_masked_softmax_takes_every_broadcastable_mask(mask_shape):
    gen = _gen(2)
    scores = torch.randn(2, 3, 5, 7, generator=gen)
    mask = torch.rand(mask_shape, generator=gen) < 0.4
    _close(fused.scaled_masked_softmax(scores, mask, 1.3), softmax_formula(scores, mask, 1.3), torch.float32)


def test_masked_softmax_without_mask_is_the_scaled_softmax():
    scores = torch.randn(2, 2, 3, 9, generator=_gen(3))
    _close(fused.scaled_masked_softmax(scores, None, 0.5),
           softmax_formula(scores, torch.zeros(9, dtype=torch.bool), 0.5), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sq,sk", [(5, 5), (3, 7), (7, 3), (1, 1), (13, 13)])
def test_causal_softmax_fallback_sees_keys_up_to_the_end_aligned_diagonal(dtype, sq, sk):
    scores = torch.randn(2, 3, sq, sk, generator=_gen(4)).to(dtype)
    hidden = torch.tensor([[k > q + sk - sq for k in range(sk)] for q in range(sq)])
    probs = fused.scaled_upper_triang_masked_softmax(scores, 2.0)
    _close(probs, softmax_formula(scores, hidden, 2.0), dtype)
    if sk < sq:  # the first queries see nothing
        assert (probs[:, :, : sq - sk] == 0).all()


def test_softmax_fallback_gradients_pass_gradcheck_and_vanish_on_fully_masked_rows():
    gen = _gen(5)
    scores = torch.randn(2, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = _padding_mask(2, 4, 5, gen)
    assert torch.autograd.gradcheck(lambda s: masked_softmax_reference(s, mask, 0.9), (scores,))
    assert torch.autograd.gradcheck(lambda s: fused.scaled_upper_triang_masked_softmax(s, 0.9), (scores,))
    probs = fused.scaled_masked_softmax(scores, mask, 0.9)
    grad_out = torch.randn(probs.shape, generator=gen, dtype=torch.float64)
    (grad,) = torch.autograd.grad(probs, scores, grad_out)
    # The kernels' backward: scale * y * (dy - sum(dy * y)); zero where y is zero.
    y = softmax_formula(scores.detach(), mask, 0.9)
    expected = 0.9 * y * (grad_out - (grad_out * y).sum(dim=-1, keepdim=True))
    torch.testing.assert_close(grad, expected)
    assert (grad[0, :, 1] == 0).all()


# --- norms ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 1), (7, 33), (2, 3, 257)])
def test_layer_norm_and_rms_norm_fallbacks_equal_the_formula(dtype, shape):
    gen = _gen(6)
    x = (torch.randn(shape, generator=gen) * 3 + 1).to(dtype)
    w = (torch.rand(shape[-1], generator=gen) + 0.5).to(dtype)
    b = torch.randn(shape[-1], generator=gen).to(dtype)
    _close(fused.layer_norm(x, w, b, 1e-5), layer_norm_formula(x, w, b, 1e-5), dtype)
    _close(fused.rms_norm(x, w, 1e-6), layer_norm_formula(x, w, None, 1e-6, rms=True), dtype)


def test_norm_fallback_gradients_pass_gradcheck():
    gen = _gen(7)
    x = torch.randn(4, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(7, generator=gen, dtype=torch.float64).add(0.5).requires_grad_()
    b = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: fused.layer_norm(x, w, b, 1e-5), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: fused.rms_norm(x, w, 1e-5), (x, w))
    assert torch.autograd.gradcheck(lambda x, w, b: layer_norm_formula(x, w, b, 1e-5), (x, w, b))


# --- bias + GeLU -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_fallback_equals_the_formula(dtype, approximate):
    gen = _gen(8)
    x = (torch.randn(3, 5, 37, generator=gen) * 3).to(dtype)
    bias = torch.randn(37, generator=gen).to(dtype)
    expected = gelu_formula((x + bias).double() if dtype == torch.float32 else (x + bias), approximate == "tanh")
    _close(fused.bias_gelu(x, bias, approximate), expected, dtype)
    _close(fused.bias_gelu(x, None, approximate), gelu_formula(x, approximate == "tanh"), dtype)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_bias_gelu_fallback_gradients_pass_gradcheck_and_match_the_kernel_derivative(approximate):
    gen = _gen(9)
    x = torch.randn(4, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(11, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, b: fused.bias_gelu(x, b, approximate), (x, bias))
    # The closed-form derivative the kernel uses, against autograd of the formula.
    v = (x + bias).detach().requires_grad_()
    (auto,) = torch.autograd.grad(gelu_formula(v, approximate == "tanh").sum(), v)
    if approximate == "tanh":
        k = math.sqrt(2 / math.pi)
        t = torch.tanh(k * (v + 0.044715 * v ** 3))
        closed = 0.5 * (1 + t) + 0.5 * v * (1 - t * t) * k * (1 + 3 * 0.044715 * v * v)
    else:
        closed = 0.5 * (1 + torch.erf(v / math.sqrt(2))) + v * torch.exp(-v * v / 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(closed.detach(), auto)


# --- bias + dropout + add -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_dropout_add_fallback_equals_the_formula_with_and_without_dropout(dtype):
    gen = _gen(10)
    x, residual = (torch.randn(5, 3, 13, generator=gen).to(dtype) for _ in range(2))
    bias = torch.randn(13, generator=gen).to(dtype)
    keep = (torch.rand(5, 3, 13, generator=gen) > 0.25).to(dtype)
    expected = residual.double() + (x.double() + bias.double()) * keep.double() / 0.75
    _close(fused.bias_dropout_add(x, bias, residual, keep, 0.25), expected, dtype)
    _close(fused.bias_dropout_add(x, None, residual, None, 0.25), residual.double() + x.double(), dtype)


def test_bias_dropout_add_fallback_gradients_pass_gradcheck():
    gen = _gen(11)
    x, residual = (torch.randn(3, 7, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(2))
    bias = torch.randn(7, generator=gen, dtype=torch.float64, requires_grad=True)
    keep = (torch.rand(3, 7, generator=gen) > 0.5).double()
    assert torch.autograd.gradcheck(lambda x, b, r: bias_dropout_add_reference(x, b, r, keep, 0.5), (x, bias, residual))


# --- rotary ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("kv_channels,percent", [(8, 1.0), (12, 0.5), (6, 1.0)])
def test_rotary_fallback_equals_complex_rotation(dtype, interleaved, kv_channels, percent):
    config = TransformerConfig(num_layers=1, hidden_size=kv_channels * 3, num_attention_heads=3,
                               position_embedding_type="rope", rotary_percent=percent, rotary_interleaved=interleaved)
    rope = RotaryEmbedding(config)
    s, b = 5, 2
    positions = torch.tensor([[3, 0, 7, 1, 2], [4, 5, 6, 7, 8]])
    t = torch.randn(s, b, 3, kv_channels, generator=_gen(12)).to(dtype)
    out = fused.apply_rotary(t, rope(positions), interleaved)
    _close(out, rotary_formula(t, positions, config.rotary_dim, config.rotary_base, interleaved), dtype)
    assert torch.equal(out[..., config.rotary_dim:], t[..., config.rotary_dim:])


@pytest.mark.parametrize("interleaved", [True, False])
def test_rotary_fallback_gradient_passes_gradcheck(interleaved):
    gen = _gen(13)
    t = torch.randn(3, 2, 2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    angles = torch.rand(3, 1, 1, 4, generator=gen) * 10
    angles = angles.repeat_interleave(2, -1)[..., :4] if interleaved else torch.cat([angles[..., :2]] * 2, -1)
    assert torch.autograd.gradcheck(lambda t: apply_rotary_reference(t, angles, interleaved), (t,))
