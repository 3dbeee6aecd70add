"""On a GPU with the extension built: each fused CUDA kernel equals its torch fallback in
fp32, fp16 and bf16 (odd sizes, sequence lengths not divisible by 4, fully masked rows),
gradients included; a 2-layer GPT trained 20 steps with and without the kernels logs the
same losses within bf16 tolerance. Skipped, with the reason, anywhere else."""
import math

import pytest
import torch

from megatron_core import fused
from megatron_core.fused import dispatch


def _skip_reason():
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if not fused.kernels_available():
        return "megatron_core._fused_kernels is not built (pip install --no-build-isolation . with nvcc)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Output / gradient tolerances against the fallback (which rounds after each op).
TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _close(actual, expected, dtype, scale=1.0):
    tol = TOL[dtype] * scale
    torch.testing.assert_close(actual.float(), expected.float(), rtol=tol, atol=tol)


def _both(fn, inputs, dtype, grad_scale=1.0):
    """fn(*inputs, enabled) with the kernel and with the fallback: outputs and gradients agree."""
    results = []
    for enabled in (True, False):
        leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
                  for t in inputs]
        out = fn(*leaves, enabled)
        grad_out = torch.randn(out.shape, generator=torch.Generator("cuda").manual_seed(0), device="cuda").to(out.dtype)
        out.backward(grad_out)
        results.append((out, [t.grad for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad]))
    (out_k, grads_k), (out_t, grads_t) = results
    _close(out_k, out_t, dtype)
    for gk, gt in zip(grads_k, grads_t):
        _close(gk, gt, dtype, grad_scale)
    return out_k


def _cuda(shape, dtype, seed, scale=1.0):
    g = torch.Generator("cuda").manual_seed(seed)
    return (torch.randn(shape, generator=g, device="cuda") * scale).to(dtype)


def test_the_kernels_are_what_runs_on_cuda():
    assert dispatch.choose(torch.zeros(1, device="cuda"), enabled=True) == dispatch.KERNEL
    assert dispatch.choose(torch.zeros(1, device="cuda"), enabled=False) == dispatch.TORCH


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 4, 37, 129), (2, 2, 1, 1), (1, 1, 3, 2051)])
def test_masked_softmax_kernel_equals_the_fallback(dtype, shape):
    b, h, sq, sk = shape
    g = torch.Generator("cuda").manual_seed(1)
    mask = torch.rand(b, 1, sq, sk, generator=g, device="cuda") < 0.3
    mask[0, 0, 0] = True  # a fully masked row
    probs = _both(lambda s, on: fused.scaled_masked_softmax(s, mask, 0.37, enabled=on), [_cuda(shape, dtype, 2, 3)],
                  dtype)
    assert (probs[0, :, 0] == 0).all()
    head_mask = torch.rand(1, h, 1, sk, generator=g, device="cuda") < 0.5  # broadcast over batch and queries
    _both(lambda s, on: fused.scaled_masked_softmax(s, head_mask, 1.0, enabled=on), [_cuda(shape, dtype, 3)], dtype)
    _both(lambda s, on: fused.scaled_masked_softmax(s, None, 2.0, enabled=on), [_cuda(shape, dtype, 4)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sq,sk", [(7, 7), (37, 37), (5, 11), (11, 5), (1, 1), (257, 257)])
def test_causal_softmax_kernel_equals_the_fallback(dtype, sq, sk):
    probs = _both(lambda s, on: fused.scaled_upper_triang_masked_softmax(s, 0.5, enabled=on),
                  [_cuda((2, 3, sq, sk), dtype, 5, 2)], dtype)
    if sk < sq:
        assert (probs[:, :, : sq - sk] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 1), (7, 33), (2, 3, 1023), (5, 4096), (1, 12289)])
def test_layer_norm_and_rms_norm_kernels_equal_the_fallback(dtype, shape):
    w = (torch.rand(shape[-1], device="cuda") + 0.5).to(dtype)
    b = _cuda(shape[-1:], dtype, 6)
    # Weight and bias gradients sum over all rows: their rounding grows with the row count.
    _both(lambda x, w, b, on: fused.layer_norm(x, w, b, 1e-5, enabled=on), [_cuda(shape, dtype, 7, 3), w, b], dtype,
          grad_scale=4.0)
    _both(lambda x, w, on: fused.rms_norm(x, w, 1e-6, enabled=on), [_cuda(shape, dtype, 8, 3), w], dtype,
          grad_scale=4.0)


def test_norm_gradients_sum_over_many_rows_in_fp32():
    x, dy = _cuda((8191, 64), torch.float32, 9), _cuda((8191, 64), torch.float32, 10)
    w, b = torch.rand(64, device="cuda", requires_grad=True), torch.zeros(64, device="cuda", requires_grad=True)
    fused.layer_norm(x, w, b, 1e-5).backward(dy)
    xd = x.double()
    xhat = (xd - xd.mean(-1, keepdim=True)) / torch.sqrt(xd.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(w.grad.double(), (dy.double() * xhat).sum(0), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(b.grad.double(), dy.double().sum(0), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(3, 5, 37), (2, 4096), (1, 1)])
def test_bias_gelu_kernel_equals_the_fallback(dtype, approximate, shape):
    _both(lambda x, b, on: fused.bias_gelu(x, b, approximate, enabled=on),
          [_cuda(shape, dtype, 11, 3), _cuda(shape[-1:], dtype, 12)], dtype, grad_scale=4.0)
    _both(lambda x, on: fused.bias_gelu(x, None, approximate, enabled=on), [_cuda(shape, dtype, 13, 3)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 3, 13), (37, 2, 1024)])
def test_bias_dropout_add_kernel_equals_the_fallback(dtype, shape):
    keep = (torch.rand(shape, device="cuda") > 0.1).to(dtype)
    _both(lambda x, b, r, on: fused.bias_dropout_add(x, b, r, keep, 0.1, enabled=on),
          [_cuda(shape, dtype, 14), _cuda(shape[-1:], dtype, 15), _cuda(shape, dtype, 16)], dtype, grad_scale=4.0)
    _both(lambda x, r, on: fused.bias_dropout_add(x, None, r, None, 0.1, enabled=on),
          [_cuda(shape, dtype, 17), _cuda(shape, dtype, 18)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("s,b,heads,d,rot", [(7, 3, 5, 64, 64), (37, 1, 2, 12, 6), (4097, 2, 1, 8, 8)])
def test_rotary_kernel_equals_the_fallback(dtype, interleaved, s, b, heads, d, rot):
    positions = torch.arange(s, device="cuda", dtype=torch.float32)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2, device="cuda", dtype=torch.float32) / rot))
    angles = positions[:, None] * inv_freq
    angles = angles.repeat_interleave(2, -1) if interleaved else torch.cat([angles, angles], -1)
    angles = angles[:, None, None, :]  # [s, 1, 1, rot]: broadcast over the batch
    _both(lambda t, on: fused.apply_rotary(t, angles, interleaved, enabled=on), [_cuda((s, b, heads, d), dtype, 19)],
          dtype)
    # A non-contiguous input (q out of the fused QKV projection) works too.
    wide = _cuda((s, b, heads, 2 * d), dtype, 20)
    _close(fused.apply_rotary(wide[..., :d], angles, interleaved),
           fused.apply_rotary(wide[..., :d], angles, interleaved, enabled=False), dtype)


# --- a 2-layer GPT, 20 steps, with and without the kernels --------------------------------------------

def _train_gpt_losses(fused_kernels: bool, out: dict):
    from megatron_core import mpu
    from megatron_core.models.gpt import GPTModel, masked_mean
    from megatron_core.transformer.config import TransformerConfig

    mpu.initialize_model_parallel(1)
    torch.manual_seed(0)
    config = TransformerConfig(num_layers=2, hidden_size=96, num_attention_heads=3, ffn_hidden_size=200,
                               hidden_dropout=0.1, attention_dropout=0.0, attention_backend="explicit",
                               params_dtype=torch.bfloat16, fused_kernels=fused_kernels)
    vocab, seq, batch = 128, 37, 4
    model = GPTModel(config, vocab, seq)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(20):
        # Runs of consecutive token ids from random starts: learnable, so the loss falls.
        starts = torch.randint(0, vocab, (batch, 1), generator=g)
        tokens = ((starts + torch.arange(seq + 1)) % vocab).cuda()
        loss_mask = torch.ones(batch, seq, device="cuda")
        loss = masked_mean(model(tokens[:, :-1], labels=tokens[:, 1:]), loss_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    out[fused_kernels] = losses


def test_a_two_layer_gpt_trains_to_the_same_losses_with_and_without_kernels():
    from tests.harness import run_distributed
    import multiprocessing
    manager = multiprocessing.get_context("spawn").Manager()
    out = manager.dict()
    for fused_kernels in (True, False):
        run_distributed(_train_gpt_losses, 1, fused_kernels, out, timeout=600)
    with_kernels, without = out[True], out[False]
    assert all(math.isfinite(v) for v in with_kernels) and with_kernels[-1] < with_kernels[0]
    for step, (a, b) in enumerate(zip(with_kernels, without)):
        assert abs(a - b) <= 2e-2 * abs(b) + 1e-2, f"step {step}: {a} with kernels, {b} without"
