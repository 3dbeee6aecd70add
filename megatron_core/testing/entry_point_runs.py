"""Run an entry point (pretrain_*.py) as a user runs it and read the losses off its log lines.

    flags = corpus_flags(tmp_dir, sentences=True) + ["--num-layers", "2", ...]
    done = run_entry_point("pretrain_t5.py", flags)              # plain python: one process
    done = run_entry_point("pretrain_t5.py", flags, nproc=2)     # torchrun --nproc-per-node 2
    losses = logged_losses(done.stdout)                          # {iteration: lm loss}

The corpus is tests/data's Chinese news slice through tools/preprocess_data.py (tiny_corpus).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from .distributed import find_free_port
from .tiny_corpus import BERT_VOCAB, ROOT, preprocess_zh_news

LOG_LINE = re.compile(r"iteration\s+(\d+)/\s*\d+ \|.*? lm loss: (\S+) \|")
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def corpus_flags(directory: str, sentences: bool = False) -> List[str]:
    """The data flags of a small preprocessed corpus in `directory` (built on first use): one document
    per paragraph with EOD (GPT, Transformer-XL), or sentence-split (BERT, T5), BERT's Chinese vocabulary,
    a 90/10 train/validation split."""
    name = "zh_sentences" if sentences else "zh_documents"
    prefix = os.path.join(directory, f"{name}_text_{'sentence' if sentences else 'document'}")
    if not os.path.exists(prefix + ".idx"):
        preprocess_zh_news(directory, split_sentences=sentences, name=name)
    return ["--data-path", prefix, "--data-cache-path", os.path.join(directory, "cache"), "--split", "90,10,0",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", BERT_VOCAB, "--num-workers", "0"]


def entry_point_environment() -> Dict[str, str]:
    """This checkout on the path, one thread per process, no launcher variables left over."""
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    for name in LAUNCHER_VARIABLES:
        env.pop(name, None)
    return env


def run_entry_point(script: str, flags: Sequence[str], nproc: Optional[int] = None, timeout: float = 300,
                    env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """`python script flags` (nproc None) or `torchrun --nproc-per-node nproc script flags`, from the
    repository root, with `env` added to the environment; stdout and stderr captured as text."""
    path = os.path.join(ROOT, script)
    if nproc is None:
        command = [sys.executable, path, *flags]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
                   "--master-addr", "127.0.0.1", "--master-port", str(find_free_port()), path, *flags]
    return subprocess.run(command, capture_output=True, text=True, env={**entry_point_environment(), **(env or {})},
                          timeout=timeout, cwd=ROOT)


def logged_losses(stdout: str) -> Dict[int, float]:
    """{iteration: lm loss} of Megatron's training log lines."""
    return {int(iteration): float(loss) for iteration, loss in LOG_LINE.findall(stdout)}
