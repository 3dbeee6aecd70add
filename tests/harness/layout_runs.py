"""pretrain_gpt.py on the tiny GPT at a given (TP, PP, DP), for the resharding tests.

    done = run_gpt_layout(corpus_dir, 2, 2, 1, "--save", ckpt, iters=8)    # TP*PP*DP ranks

The flags are tiny_gpt_flags(corpus_dir) (what plain_gpt_loop models) trained for `iters`
iterations and validated once at the end; the run must succeed. The ranks are forked
(entry_points.run_ranks: resharding, not the launcher, is the subject); (1, 1, 1) is one
process forked the same way (entry_points.run_forked).
"""
from __future__ import annotations

import subprocess
from typing import List

from .entry_points import failure_report, run_forked, run_ranks, tiny_gpt_flags


def gpt_layout_flags(corpus_dir: str, tp: int, pp: int, *extra: str, iters: int) -> List[str]:
    flags = tiny_gpt_flags(corpus_dir)
    flags[flags.index("--train-iters") + 1] = str(iters)
    flags[flags.index("--eval-interval") + 1] = str(iters)
    return flags + ["--tensor-model-parallel-size", str(tp), "--pipeline-model-parallel-size", str(pp), *extra]


def run_gpt_layout(corpus_dir: str, tp: int, pp: int, dp: int, *extra: str, iters: int,
                   timeout: float = 400) -> subprocess.CompletedProcess:
    flags, nproc = gpt_layout_flags(corpus_dir, tp, pp, *extra, iters=iters), tp * pp * dp
    done = (run_ranks("pretrain_gpt.py", flags, nproc, timeout=timeout) if nproc > 1
            else run_forked("pretrain_gpt.py", flags, timeout=timeout))
    assert done.returncode == 0, failure_report(done)
    return done
