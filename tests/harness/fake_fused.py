"""Stand-ins for compiled fused kernels, to test megatron_core.fused's dispatch and glue on CPU.

    with fake_fused_extension() as ext:   # megatron_core._fused_kernels, on every tensor
        ...                               # ext.calls lists the raw ops that ran
    with fake_apex() as apex_calls:       # Apex's norm and softmax modules, ours absent
        ...

Both make megatron_core.fused treat CPU tensors as GPU tensors (dispatch.is_cuda), so the
kernel (or Apex) branch of every op runs here. The fake extension implements the binding's
contract (csrc/fused/binding.cpp) in fp32 torch with the CUDA kernels' own formulas (the
softmax, norm, GeLU derivatives and the rotary pair/sign indexing), so autograd-computed
gradients of the fallbacks check those formulas too.
"""
from __future__ import annotations

import contextlib
import math
import sys
import types
from typing import List

import torch
import torch.nn.functional as F

from megatron_core.fused import dispatch

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_MISSING = object()


class FakeFusedExtension(types.ModuleType):
    def __init__(self):
        super().__init__(dispatch.EXTENSION_NAME)
        self.calls: List[str] = []

    def _record(self, name, *tensors):
        for t in tensors:
            if t is not None and not t.is_contiguous():
                raise AssertionError(f"{name} got a non-contiguous tensor; the binding requires contiguous ones")
        self.calls.append(name)

    # -- softmax -----------------------------------------------------------------------------
    def softmax_forward(self, scores, mask, causal, scale):
        self._record("softmax_forward", scores)
        b, h, sq, sk = scores.shape
        hidden = torch.zeros(b, h, sq, sk, dtype=torch.bool)
        if mask is not None:
            hidden = hidden | mask.expand(b, h, sq, sk)
        if causal:
            hidden = hidden | torch.ones(sq, sk, dtype=torch.bool).triu(sk - sq + 1)
        x = torch.where(hidden, -math.inf, scores.float() * scale)
        row_max = x.amax(dim=-1, keepdim=True)
        nothing_visible = row_max == -math.inf
        e = torch.where(hidden, 0.0, torch.exp(x - torch.where(nothing_visible, 0.0, row_max)))
        probs = torch.where(nothing_visible, 0.0, e / e.sum(dim=-1, keepdim=True).clamp_min(1e-30))
        return probs.to(scores.dtype)

    def softmax_backward(self, grad_probs, probs, scale):
        self._record("softmax_backward", grad_probs, probs)
        y, dy = probs.float(), grad_probs.float()
        return (scale * y * (dy - (dy * y).sum(dim=-1, keepdim=True))).to(probs.dtype)

    # -- norms -------------------------------------------------------------------------------
    def norm_forward(self, x, weight, bias, rms, eps):
        self._record("norm_forward", x, weight, bias)
        xf = x.float().reshape(-1, x.shape[-1])
        mean = torch.zeros(xf.shape[0]) if rms else xf.mean(dim=-1)
        centered = xf - mean[:, None]
        rstd = torch.rsqrt(centered.pow(2).mean(dim=-1) + eps)
        y = centered * rstd[:, None]
        if weight is not None:
            y = y * weight.float()
        if bias is not None and not rms:
            y = y + bias.float()
        return [y.to(x.dtype).reshape(x.shape), mean[:0] if rms else mean, rstd]

    def norm_backward(self, grad_y, x, weight, mean, rstd, rms, with_bias):
        self._record("norm_backward", grad_y, x, weight)
        cols = x.shape[-1]
        dy, xf = grad_y.float().reshape(-1, cols), x.float().reshape(-1, cols)
        mu = torch.zeros(xf.shape[0]) if rms else mean
        xhat = (xf - mu[:, None]) * rstd[:, None]
        g = dy * (weight.float() if weight is not None else 1.0)
        mean_g = 0.0 if rms else g.mean(dim=-1, keepdim=True)
        grad_x = rstd[:, None] * (g - mean_g - xhat * (g * xhat).mean(dim=-1, keepdim=True))
        empty = torch.empty(0, dtype=x.dtype)
        grad_w = (dy * xhat).sum(dim=0).to(x.dtype) if weight is not None else empty
        grad_b = dy.sum(dim=0).to(x.dtype) if weight is not None and with_bias and not rms else empty
        return [grad_x.to(x.dtype).reshape(x.shape), grad_w, grad_b]

    # -- bias + GeLU ---------------------------------------------------------------------------
    @staticmethod
    def _biased(x, bias):
        return (x if bias is None else x + bias).float()

    def bias_gelu_forward(self, x, bias, tanh_approx):
        self._record("bias_gelu_forward", x, bias)
        v = self._biased(x, bias)
        if tanh_approx:
            y = 0.5 * v * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v ** 3)))
        else:
            y = 0.5 * v * (1.0 + torch.erf(v / math.sqrt(2.0)))
        return y.to(x.dtype)

    def bias_gelu_backward(self, grad_y, x, bias, tanh_approx):
        self._record("bias_gelu_backward", grad_y, x, bias)
        v = self._biased(x, bias)
        if tanh_approx:
            t = torch.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v ** 3))
            d = 0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
        else:
            d = 0.5 * (1.0 + torch.erf(v / math.sqrt(2.0))) + v * torch.exp(-0.5 * v * v) / math.sqrt(2.0 * math.pi)
        return (grad_y.float() * d).to(x.dtype)

    # -- bias + dropout + add ----------------------------------------------------------------
    def bias_dropout_add(self, x, bias, residual, keep, scale):
        self._record("bias_dropout_add", x, bias, residual, keep)
        v = x.float() + (bias.float() if bias is not None else 0.0)
        if keep is not None:
            v = v * keep.float() * scale
        if residual is not None:
            v = v + residual.float()
        return v.to(x.dtype)

    # -- rotary ----------------------------------------------------------------------------------
    def rotary_apply(self, t, angles, interleaved, backward):
        self._record("rotary_apply", t)
        s, b, heads, d = t.shape
        rot = angles.shape[-1]
        a = angles.float().expand(s, b, 1, rot)
        c = torch.arange(rot)
        first = (c % 2 == 0) if interleaved else (c < rot // 2)
        partner = torch.where(first, c + 1, c - 1) if interleaved else torch.where(first, c + rot // 2, c - rot // 2)
        sign = torch.where(first, -1.0, 1.0)
        x = t[..., :rot].float()
        xp = x[..., partner]
        if backward:
            out = x * a.cos() - sign * xp * a[..., partner].sin()
        else:
            out = x * a.cos() + sign * xp * a.sin()
        return torch.cat([out.to(t.dtype), t[..., rot:]], dim=-1)


@contextlib.contextmanager
def _cpu_counts_as_cuda(modules: dict):
    saved = {name: sys.modules.get(name, _MISSING) for name in modules}
    original_is_cuda = dispatch.is_cuda
    sys.modules.update(modules)
    dispatch.forget_imports()
    dispatch.is_cuda = lambda x: True
    try:
        yield
    finally:
        dispatch.is_cuda = original_is_cuda
        for name, module in saved.items():
            if module is _MISSING:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
        dispatch.forget_imports()



@contextlib.contextmanager
def fake_fused_extension():
    ext = FakeFusedExtension()
    with _cpu_counts_as_cuda({dispatch.EXTENSION_NAME: ext}):
        yield ext


@contextlib.contextmanager
def no_fused_extension():
    """Our extension unimportable (None in sys.modules makes `import` raise ImportError)."""
    with _cpu_counts_as_cuda({dispatch.EXTENSION_NAME: None}):
        yield


class _FakeApexSoftmax(types.ModuleType):
    def __init__(self, name, calls, causal):
        super().__init__(name)
        self.calls, self.causal = calls, causal

    def get_batch_per_block(self, sq, sk, b, heads):
        return 4

    def forward(self, scores, *rest):
        self.calls.append(f"{self.__name__}.forward")
        mask = None if self.causal else rest[0]
        scale = float(rest[-1])
        sq, sk = scores.shape[-2:]
        hidden = torch.ones(sq, sk, dtype=torch.bool).triu(1) if self.causal else mask
        x = (scores.float() * scale).masked_fill(hidden, -10000.0)
        return torch.softmax(x, dim=-1).to(scores.dtype)  # older Apex: fully masked rows uniform

    def backward(self, grad_probs, probs, scale):
        self.calls.append(f"{self.__name__}.backward")
        y, dy = probs.float(), grad_probs.float()
        return (float(scale) * y * (dy - (dy * y).sum(dim=-1, keepdim=True))).to(probs.dtype)


@contextlib.contextmanager
def fake_apex():
    """Apex's fused LayerNorm/RMSNorm and softmax modules; our extension absent. Yields the call log."""
    calls: List[str] = []
    norm_module = types.ModuleType("apex.normalization.fused_layer_norm")

    def fused_layer_norm_affine(x, weight, bias, normalized_shape, eps):
        calls.append("fused_layer_norm_affine")
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    def fused_rms_norm_affine(x, weight, normalized_shape, eps):
        calls.append("fused_rms_norm_affine")
        return F.rms_norm(x, normalized_shape, weight, eps)

    norm_module.fused_layer_norm_affine = fused_layer_norm_affine
    norm_module.fused_rms_norm_affine = fused_rms_norm_affine
    modules = {
        dispatch.EXTENSION_NAME: None,
        "apex": types.ModuleType("apex"),
        "apex.normalization": types.ModuleType("apex.normalization"),
        "apex.normalization.fused_layer_norm": norm_module,
        "fused_layer_norm_cuda": types.ModuleType("fused_layer_norm_cuda"),
        "scaled_masked_softmax_cuda": _FakeApexSoftmax("scaled_masked_softmax_cuda", calls, causal=False),
        "scaled_upper_triang_masked_softmax_cuda": _FakeApexSoftmax(
            "scaled_upper_triang_masked_softmax_cuda", calls, causal=True),
    }
    with _cpu_counts_as_cuda(modules):
        yield calls
