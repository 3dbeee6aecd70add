"""Every CUDA file in csrc/fused compiles with this machine's nvcc for sm_80 and sm_90, and
the binding compiles with the host compiler against torch's headers (compile only: no GPU,
no CUDA torch needed), so a kernel that does not build never lands. setup.py builds the
extension only with a CUDA torch and nvcc, and says so in one line otherwise."""
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import pytest
import torch.utils.cpp_extension as cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc", "fused")
ARCH_FLAGS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]
# The C++ standard torch's own extension builder passes (c++20 since torch 2.10, c++17 before).
STD = "-std=c++20" if "c++20" in open(cpp_extension.__file__).read() else "-std=c++17"


def _nvcc():
    home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME or ""
    candidate = os.path.join(home, "bin", "nvcc")
    return candidate if home and os.path.exists(candidate) else shutil.which("nvcc")


def _cu_files():
    return sorted(name for name in os.listdir(CSRC) if name.endswith(".cu"))


def test_the_kernel_sources_are_the_ones_setup_py_builds():
    sys.path.insert(0, ROOT)
    try:
        import setup_kernels
    finally:
        sys.path.remove(ROOT)
    sources = [os.path.basename(path) for path in setup_kernels.KERNEL_SOURCES]
    assert sorted(sources) == sorted(_cu_files() + ["binding.cpp"])


@pytest.mark.skipif(_nvcc() is None or shutil.which("g++") is None, reason="needs nvcc and g++ (compile-only test)")
def test_every_cu_file_compiles_for_sm80_and_sm90_and_the_binding_against_torch_headers(tmp_path):
    started = time.monotonic()
    jobs = {}
    for name in _cu_files():
        out = str(tmp_path / (name + ".o"))
        jobs[name] = subprocess.Popen([_nvcc(), "-c", os.path.join(CSRC, name), "-o", out, STD, "-O3",
                                       "--compiler-options", "-fPIC", *ARCH_FLAGS],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    includes = [f"-I{path}" for path in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    # -O0: whether it compiles against torch's headers does not depend on the optimizer, which
    # is a quarter of this longest job's ~20 s of CPU.
    jobs["binding.cpp"] = subprocess.Popen(
        ["g++", "-c", os.path.join(CSRC, "binding.cpp"), "-o", str(tmp_path / "binding.o"), STD, "-O0", "-fPIC",
         "-DTORCH_EXTENSION_NAME=_fused_kernels", "-DTORCH_API_INCLUDE_EXTENSION_H", *includes],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    failures = {}
    for name, job in jobs.items():
        output, _ = job.communicate(timeout=900)
        if job.returncode != 0:
            failures[name] = output[-3000:]
    elapsed = time.monotonic() - started
    print(f"compiled {len(jobs)} files in {elapsed:.1f} s")
    assert not failures, "\n\n".join(f"{name}:\n{text}" for name, text in failures.items())
    assert all((tmp_path / (name + ".o")).stat().st_size > 0 for name in _cu_files())


def _setup_line(env_value):
    env = dict(os.environ)
    env.pop("MEGATRON_CORE_BUILD_KERNELS", None)
    if env_value is not None:
        env["MEGATRON_CORE_BUILD_KERNELS"] = env_value
    return subprocess.run([sys.executable, "-c", "import setup_kernels; print(setup_kernels.kernel_extensions())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_setup_skips_the_kernels_in_one_line_without_a_cuda_torch():
    import torch
    if torch.version.cuda is not None and _nvcc() is not None:
        pytest.skip("this machine can build the kernels")
    result = _setup_line(None)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "([], {})"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("skipping the fused CUDA kernels"), result.stderr


def test_setup_with_build_kernels_1_and_no_cuda_torch_is_one_clear_error():
    import torch
    if torch.version.cuda is not None and _nvcc() is not None:
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
