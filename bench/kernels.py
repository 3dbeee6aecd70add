#!/usr/bin/env python
"""Each fused CUDA kernel against torch eager and torch.compile of the same math; prints JSON.

    python -m bench.kernels [--dtype bf16] [--iters 50] [--ops softmax,layer_norm,...]

For every op, three implementations run forward + backward on the same inputs:
  kernel   megatron_core.fused with the extension (enabled=True)
  eager    the op's torch fallback (enabled=False), as the model runs without kernels
  compile  torch.compile of that fallback (the default inductor backend)
Time per call is the median over --iters CUDA-event-timed calls after warm-up (compile's
warm-up includes compilation, which is not timed). Shapes are a GPT layer at hidden
4096, 32 heads, sequence 2048, micro-batch 4 (softmax: micro-batch 1). Needs a GPU and
the built extension; elsewhere it prints one JSON line saying why and exits 1.
"""
import argparse
import json
import statistics
import sys

import torch

from megatron_core import fused

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
SEQ, MICRO, HIDDEN, HEADS = 2048, 4, 4096, 32


def _inputs(op, dtype):
    """(function(*tensors, enabled), tensors) for one op."""
    g = torch.Generator("cuda").manual_seed(0)
    rand = lambda *shape: torch.randn(shape, generator=g, device="cuda").to(dtype).requires_grad_()
    tokens = SEQ * MICRO
    if op == "masked_softmax":
        mask = torch.rand(1, 1, SEQ, SEQ, generator=g, device="cuda") < 0.1
        return (lambda s, on: fused.scaled_masked_softmax(s, mask, 0.125, enabled=on)), [rand(1, HEADS, SEQ, SEQ)]
    if op == "causal_softmax":
        fn = lambda s, on: fused.scaled_upper_triang_masked_softmax(s, 0.125, enabled=on)
        return fn, [rand(1, HEADS, SEQ, SEQ)]
    if op == "layer_norm":
        return (lambda x, w, b, on: fused.layer_norm(x, w, b, 1e-5, enabled=on)), [
            rand(tokens, HIDDEN), rand(HIDDEN), rand(HIDDEN)]
    if op == "rms_norm":
        return (lambda x, w, on: fused.rms_norm(x, w, 1e-5, enabled=on)), [rand(tokens, HIDDEN), rand(HIDDEN)]
    if op == "bias_gelu":
        fn = lambda x, b, on: fused.bias_gelu(x, b, "none", enabled=on)
        return fn, [rand(tokens, 4 * HIDDEN), rand(4 * HIDDEN)]
    if op == "bias_dropout_add":
        keep = (torch.rand(tokens, HIDDEN, generator=g, device="cuda") > 0.1).to(dtype)
        return (lambda x, b, r, on: fused.bias_dropout_add(x, b, r, keep, 0.1, enabled=on)), [
            rand(tokens, HIDDEN), rand(HIDDEN), rand(tokens, HIDDEN)]
    if op == "rotary":
        angles = torch.rand(SEQ, MICRO, 1, 128, generator=g, device="cuda") * SEQ
        return (lambda t, on: fused.apply_rotary(t, angles, False, enabled=on)), [rand(SEQ, MICRO, HEADS, 128)]
    raise SystemExit(f"unknown op {op!r}")


OPS = ["masked_softmax", "causal_softmax", "layer_norm", "rms_norm", "bias_gelu", "bias_dropout_add", "rotary"]


def _time(call, iters):
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        call()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench_op(op, dtype, iters):
    fn, tensors = _inputs(op, dtype)
    grad = None

    def step(impl):
        nonlocal grad
        for t in tensors:
            t.grad = None
        out = impl(*tensors)
        if grad is None:
            grad = torch.randn_like(out)
        out.backward(grad)

    eager = lambda *t: fn(*t, False)
    compiled = torch.compile(eager)
    result = {"op": op, "dtype": str(dtype).replace("torch.", "")}
    for name, impl in (("kernel", lambda *t: fn(*t, True)), ("eager", eager), ("compile", compiled)):
        result[f"{name}_ms"] = round(_time(lambda: step(impl), iters), 4)
    result["speedup_vs_eager"] = round(result["eager_ms"] / result["kernel_ms"], 2)
    result["speedup_vs_compile"] = round(result["compile_ms"] / result["kernel_ms"], 2)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() or not fused.kernels_available():
        why = "no CUDA GPU" if not torch.cuda.is_available() else "megatron_core._fused_kernels is not built"
        print(json.dumps({"skipped": why}))
        return 1
    device = torch.cuda.get_device_name()
    for op in args.ops.split(","):
        row = bench_op(op, DTYPES[args.dtype], args.iters)
        row["device"] = device
        print(json.dumps(row), flush=True)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
