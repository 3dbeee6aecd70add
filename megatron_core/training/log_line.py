"""Megatron-LM's training and validation log lines, field for field, for the parsers users have.

A training line (Megatron's `training_log`), fields separated by " |":

    [2026-01-02 03:04:05.000006] iteration      100/    1000 | consumed samples:        25600 |
    elapsed time per iteration (ms): 812.3 | throughput per GPU (TFLOP/s/GPU): 151.2 |
    learning rate: 2.999963E-04 | global batch size:   256 | lm loss: 6.421393E+00 |
    loss scale: 65536.0 | grad norm: 1.234 | number of skipped iterations:   0 |
    number of nan iterations:   0 | tokens per second: 322716.4 | MFU: 15.3% |

(one line). Our additions, tokens per second and MFU, come last so that every field a
Megatron parser knows keeps its place. Unlike Megatron, a nan or inf loss is printed
("lm loss: nan"), never dropped from the line.

A validation line (Megatron's `evaluate_and_print_results`), framed by dashes:

    validation loss at iteration 100 | lm loss value: 6.102938E+00 | lm loss PPL: 4.471696E+02 |

with the perplexity exp(min(20, loss)) as Megatron caps it (nan stays nan).
"""
from __future__ import annotations

import math
from datetime import datetime
from typing import List, Mapping, Optional, Union


def _sci(value: float) -> str:
    """Megatron's {:.6E}, with nan/inf spelled as Python prints them."""
    value = float(value)
    return f"{value:.6E}" if math.isfinite(value) else str(value)


def training_log_line(*, iteration: int, train_iters: int, consumed_samples: int,
                      elapsed_ms_per_iteration: float, global_batch_size: int,
                      losses: Mapping[str, float], loss_scale: float,
                      learning_rate: Optional[float] = None, throughput_tflops: Optional[float] = None,
                      grad_norm: Optional[float] = None, params_norm: Optional[float] = None,
                      skipped_iterations: int = 0, nan_iterations: int = 0, skipped_samples: int = 0,
                      tokens_per_second: Optional[float] = None, mfu: Union[float, str, None] = None,
                      timestamp: Optional[datetime] = None) -> str:
    """One training log line. `losses` are the averages over the interval ({"lm loss": 2.3});
    `mfu` is a fraction, or a reason it is unknown ("CPU" prints "MFU: n/a (CPU)")."""
    line = f" [{timestamp.strftime('%Y-%m-%d %H:%M:%S.%f')}]" if timestamp is not None else ""
    line += " iteration {:8d}/{:8d} |".format(iteration, train_iters)
    line += " consumed samples: {:12d} |".format(consumed_samples)
    if skipped_samples > 0:
        line += " skipped samples: {:12d} |".format(skipped_samples)
    line += " elapsed time per iteration (ms): {:.1f} |".format(elapsed_ms_per_iteration)
    if throughput_tflops is not None:
        line += f" throughput per GPU (TFLOP/s/GPU): {throughput_tflops:.1f} |"
    if learning_rate is not None:
        line += f" learning rate: {_sci(learning_rate)} |"
    line += f" global batch size: {global_batch_size:5d} |"
    for name, value in losses.items():
        line += f" {name}: {_sci(value)} |"
    line += f" loss scale: {loss_scale:.1f} |"
    if grad_norm is not None:
        line += f" grad norm: {grad_norm:.3f} |"
    if params_norm is not None:
        line += f" params norm: {params_norm:.3f} |"
    line += " number of skipped iterations: {:3d} |".format(skipped_iterations)
    line += " number of nan iterations: {:3d} |".format(nan_iterations)
    if tokens_per_second is not None:
        line += f" tokens per second: {tokens_per_second:.1f} |"
    if isinstance(mfu, str):
        line += f" MFU: n/a ({mfu}) |"
    elif mfu is not None:
        line += f" MFU: {100.0 * mfu:.1f}% |"
    return line


def perplexity(loss: float) -> float:
    loss = float(loss)
    return loss if math.isnan(loss) else math.exp(min(20.0, loss))


def validation_log_lines(at: str, losses: Mapping[str, float], set_name: str = "") -> List[str]:
    """[dashes, line, dashes] for `at` = "iteration 100" (or "the end of training for val data");
    `set_name` labels one of several validation sets ("validation-wiki loss at ...")."""
    suffix = f"-{set_name}" if set_name else ""
    line = f" validation{suffix} loss at {at} | "
    for name, value in losses.items():
        line += f"{name} value: {_sci(value)} | {name} PPL: {_sci(perplexity(value))} | "
    dashes = "-" * (len(line) + 1)
    return [dashes, line, dashes]
