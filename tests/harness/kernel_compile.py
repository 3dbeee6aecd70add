"""The compile-only check of csrc/fused: each .cu file with nvcc for sm_80 and sm_90, and the
binding with the host compiler against torch's headers (no GPU, no CUDA torch needed).

    compiles = KernelCompiles.start(out_dir, nice=True)   # every job at once, in the background
    failures = compiles.wait()                            # {file name: the tail of its output}

The jobs take about a minute of CPU on two cores, so the test session starts them at low
priority when collection finds tests/test_fused_kernels_build.py's compile test
(tests/conftest.py): they run on the CPU the other tests leave idle, and the test waits for
them. Run alone, the test starts them itself, at normal priority.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
import time
from typing import Dict, List, Optional

from .tiny_corpus import ROOT

CSRC = os.path.join(ROOT, "csrc", "fused")
ARCH_FLAGS = ["-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90"]


def nvcc() -> Optional[str]:
    import torch.utils.cpp_extension as cpp_extension
    home = os.environ.get("CUDA_HOME") or cpp_extension.CUDA_HOME or ""
    candidate = os.path.join(home, "bin", "nvcc")
    return candidate if home and os.path.exists(candidate) else shutil.which("nvcc")


def can_compile() -> bool:
    return nvcc() is not None and shutil.which("g++") is not None


def cu_files() -> List[str]:
    return sorted(name for name in os.listdir(CSRC) if name.endswith(".cu"))


def cxx_standard() -> str:
    """The C++ standard torch's own extension builder passes (c++20 since torch 2.10, c++17 before)."""
    import torch.utils.cpp_extension as cpp_extension
    with open(cpp_extension.__file__) as f:
        return "-std=c++20" if "c++20" in f.read() else "-std=c++17"


def commands(out_dir: str) -> Dict[str, List[str]]:
    """{source file name: its compile command}, objects written to out_dir/<name>.o."""
    import torch.utils.cpp_extension as cpp_extension
    std = cxx_standard()
    jobs = {name: [nvcc(), "-c", os.path.join(CSRC, name), "-o", os.path.join(out_dir, name + ".o"), std, "-O3",
                   "--compiler-options", "-fPIC", *ARCH_FLAGS] for name in cu_files()}
    includes = [f"-I{path}" for path in cpp_extension.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    # -O0: whether it compiles against torch's headers does not depend on the optimizer, which
    # is a quarter of this longest job's ~20 s of CPU.
    jobs["binding.cpp"] = ["g++", "-c", os.path.join(CSRC, "binding.cpp"), "-o", os.path.join(out_dir, "binding.o"),
                           std, "-O0", "-fPIC", "-DTORCH_EXTENSION_NAME=_fused_kernels",
                           "-DTORCH_API_INCLUDE_EXTENSION_H", *includes]
    return jobs


class KernelCompiles:
    def __init__(self, out_dir: str, jobs: Dict[str, subprocess.Popen], started: float):
        self.out_dir, self.jobs, self.started = out_dir, jobs, started

    @classmethod
    def start(cls, out_dir: str, nice: bool = False) -> "KernelCompiles":
        os.makedirs(out_dir, exist_ok=True)
        jobs = {name: subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       preexec_fn=(lambda: os.nice(19)) if nice else None)
                for name, command in commands(out_dir).items()}
        return cls(out_dir, jobs, time.monotonic())

    def wait(self, timeout: float = 900) -> Dict[str, str]:
        """{file name: the tail of its output} of the jobs that failed."""
        failures = {}
        for name, job in self.jobs.items():
            output, _ = job.communicate(timeout=timeout)
            if job.returncode != 0:
                failures[name] = output[-3000:]
        return failures

    def stop(self) -> None:
        for job in self.jobs.values():
            if job.poll() is None:
                job.kill()
                job.wait()
