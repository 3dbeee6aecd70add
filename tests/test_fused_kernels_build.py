"""Every CUDA file in csrc/fused compiles with this machine's nvcc for sm_80 and sm_90, and
the binding compiles with the host compiler against torch's headers (compile only: no GPU,
no CUDA torch needed), so a kernel that does not build never lands. setup.py builds the
extension only with a CUDA torch and nvcc, and says so in one line otherwise."""
import os
import subprocess
import sys
import time

import pytest

from tests.harness.kernel_compile import can_compile, cu_files, nvcc
from tests.harness.tiny_corpus import ROOT


def test_the_kernel_sources_are_the_ones_setup_py_builds():
    sys.path.insert(0, ROOT)
    try:
        import setup_kernels
    finally:
        sys.path.remove(ROOT)
    sources = [os.path.basename(path) for path in setup_kernels.KERNEL_SOURCES]
    assert sorted(sources) == sorted(cu_files() + ["binding.cpp"])


@pytest.mark.skipif(not can_compile(), reason="needs nvcc and g++ (compile-only test)")
def test_every_cu_file_compiles_for_sm80_and_sm90_and_the_binding_against_torch_headers(kernel_compiles):
    # The jobs (tests/harness/kernel_compile.py) started in the background when the session began.
    failures = kernel_compiles.wait()
    print(f"compiled {len(kernel_compiles.jobs)} files in {time.monotonic() - kernel_compiles.started:.1f} s")
    assert not failures, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())
    assert all(os.path.getsize(os.path.join(kernel_compiles.out_dir, name + ".o")) > 0 for name in cu_files())


def _setup_line(env_value):
    env = dict(os.environ)
    env.pop("MEGATRON_CORE_BUILD_KERNELS", None)
    if env_value is not None:
        env["MEGATRON_CORE_BUILD_KERNELS"] = env_value
    return subprocess.run([sys.executable, "-c", "import setup_kernels; print(setup_kernels.kernel_extensions())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_setup_skips_the_kernels_in_one_line_without_a_cuda_torch():
    import torch
    if torch.version.cuda is not None and nvcc() is not None:
        pytest.skip("this machine can build the kernels")
    result = _setup_line(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "([], {})"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("skipping the fused CUDA kernels"), result.stderr


def test_setup_with_build_kernels_1_and_no_cuda_torch_is_one_clear_error():
    import torch
    if torch.version.cuda is not None and nvcc() is not None:
        pytest.skip("this machine can build the kernels")
    result = _setup_line("1")
    assert result.returncode != 0
    assert "MEGATRON_CORE_BUILD_KERNELS=1" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_setup_with_build_kernels_0_skips_them_and_a_bad_value_is_refused():
    result = _setup_line("0")
    assert result.returncode == 0 and result.stdout.strip() == "([], {})"
    assert "MEGATRON_CORE_BUILD_KERNELS=0" in result.stderr
    result = _setup_line("yes")
    assert result.returncode != 0 and "MEGATRON_CORE_BUILD_KERNELS must be 0 or 1" in result.stderr
