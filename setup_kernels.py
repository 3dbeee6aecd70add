"""The fused CUDA extension (csrc/fused -> megatron_core._fused_kernels), for setup.py.

Built when the torch that setup.py imports is a CUDA build and nvcc is found; otherwise
skipped with one printed line (megatron_core.fused then runs its torch fallbacks).
MEGATRON_CORE_BUILD_KERNELS=0 skips it, =1 requires it (an error names what is missing).
pip builds in an isolated environment without the user's torch, so building the kernels
takes `pip install --no-build-isolation .`.
"""
import glob
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
KERNEL_DIR = os.path.join("csrc", "fused")
KERNEL_SOURCES = [os.path.join(KERNEL_DIR, "binding.cpp")] + sorted(
    os.path.relpath(path, HERE) for path in glob.glob(os.path.join(HERE, KERNEL_DIR, "*.cu")))
ENV = "MEGATRON_CORE_BUILD_KERNELS"


def _why_not_buildable():
    """None when a CUDA torch and nvcc are here, else what is missing (a phrase)."""
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        return ("torch is not importable while building (pip's build isolation hides it: "
                "use pip install --no-build-isolation .)")
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    if CUDA_HOME is None:
        return "nvcc was not found (set CUDA_HOME to the CUDA toolkit)"
    return None


def kernel_extensions():
    """([extension], {"build_ext": BuildExtension}) or ([], {}) with one line on stderr."""
    choice = os.environ.get(ENV)
    if choice not in (None, "", "0", "1"):
        sys.exit(f"{ENV} must be 0 or 1, got {choice!r}.")
    if choice == "0":
        print(f"{ENV}=0: skipping the fused CUDA kernels (megatron_core.fused uses its torch fallbacks).",
              file=sys.stderr)
        return [], {}
    reason = _why_not_buildable()
    if reason is not None:
        if choice == "1":
            sys.exit(f"{ENV}=1 but {reason}; install a CUDA build of torch and the CUDA toolkit, "
                     f"or unset {ENV} to skip the kernels.")
        print(f"skipping the fused CUDA kernels: {reason} (megatron_core.fused uses its torch fallbacks).",
              file=sys.stderr)
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension
    extension = CUDAExtension(
        "megatron_core._fused_kernels", KERNEL_SOURCES,
        # No --use_fast_math: rotary angles reach thousands of radians, where the fast
        # sin/cos are far off; the softmax and GeLU keep torch's accuracy too.
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]})
    return [extension], {"build_ext": BuildExtension}
