"""The training and validation log lines, character for character as Megatron-LM's training.py
formats them ({:8d}/{:8d}, {:12d}, {:.1f}, {:.6E}, {:5d}, {:.3f}, {:3d}), and the MFU peak table."""
import math
import re
from datetime import datetime

import pytest
import torch

from megatron_core.training.log_line import perplexity, training_log_line, validation_log_lines
from megatron_core.training.mfu import PEAK_TFLOPS, PeakThroughput, detect_peak, lookup_peak_tflops

pytestmark = pytest.mark.quick

FIELDS = dict(iteration=100, train_iters=1000, consumed_samples=25600, elapsed_ms_per_iteration=812.34,
              global_batch_size=256, losses={"lm loss": 6.4213934}, loss_scale=65536.0,
              learning_rate=2.9999634e-4, throughput_tflops=151.23, grad_norm=1.23456)

# Written from Megatron's training_log format strings, not from our output.
MEGATRON_LINE = (" iteration      100/    1000 | consumed samples:        25600 |"
                 " elapsed time per iteration (ms): 812.3 | throughput per GPU (TFLOP/s/GPU): 151.2 |"
                 " learning rate: 2.999963E-04 | global batch size:   256 | lm loss: 6.421393E+00 |"
                 " loss scale: 65536.0 | grad norm: 1.235 | number of skipped iterations:   0 |"
                 " number of nan iterations:   0 |")


def test_training_line_is_megatrons_format_exactly():
    assert training_log_line(**FIELDS) == MEGATRON_LINE


def test_timestamp_prefix_and_our_fields_come_after_megatrons():
    line = training_log_line(**FIELDS, timestamp=datetime(2026, 1, 2, 3, 4, 5, 6), skipped_iterations=3,
                             nan_iterations=1, tokens_per_second=322716.44, mfu=0.15291)
    expected = (" [2026-01-02 03:04:05.000006]" + MEGATRON_LINE
                .replace("skipped iterations:   0", "skipped iterations:   3")
                .replace("nan iterations:   0", "nan iterations:   1")
                + " tokens per second: 322716.4 | MFU: 15.3% |")
    assert line == expected


def test_a_megatron_log_parser_reads_our_line():
    line = training_log_line(**FIELDS, tokens_per_second=1000.0, mfu="CPU")
    # the pattern log parsers for Megatron runs use
    match = re.search(r"iteration\s+(\d+)/\s*(\d+) \| consumed samples:\s+(\d+) \| elapsed time per iteration "
                      r"\(ms\): ([\d.]+) \|.*learning rate: ([\dE.+-]+) \| global batch size:\s+(\d+) \| "
                      r"lm loss: ([\dE.+-]+) \| loss scale: ([\d.]+) \| grad norm: ([\d.]+) \|", line)
    assert match and [float(x) for x in match.groups()] == pytest.approx(
        [100, 1000, 25600, 812.3, 2.999963e-4, 256, 6.421393, 65536.0, 1.235])
    fields = dict(part.strip().rsplit(": ", 1) for part in line.split("|") if ": " in part)
    assert fields["MFU"] == "n/a (CPU)" and float(fields["tokens per second"]) == 1000.0


@pytest.mark.parametrize("value,text", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_a_nan_or_inf_loss_is_printed_not_hidden(value, text):
    line = training_log_line(**{**FIELDS, "losses": {"lm loss": value}}, nan_iterations=1)
    assert f" lm loss: {text} |" in line and "number of nan iterations:   1 |" in line
    assert float(text) != float(text) or math.isinf(float(text))   # parsers' float() reads it back


def test_optional_fields_are_left_out_like_megatron():
    line = training_log_line(**{**FIELDS, "learning_rate": None, "throughput_tflops": None, "grad_norm": None})
    assert "learning rate" not in line and "throughput" not in line and "grad norm" not in line
    assert line.endswith(" number of nan iterations:   0 |") and line.startswith(" iteration ")


def test_validation_lines_are_megatrons_framed_line_with_capped_perplexity():
    lines = validation_log_lines("iteration 100", {"lm loss": 6.102938})
    ppl = "{:.6E}".format(math.exp(6.102938))
    line = f" validation loss at iteration 100 | lm loss value: 6.102938E+00 | lm loss PPL: {ppl} | "
    assert lines == ["-" * (len(line) + 1), line, "-" * (len(line) + 1)]
    assert perplexity(25.0) == math.exp(20)
    named = validation_log_lines("the end of training for val data", {"lm loss": float("nan")}, set_name="wiki")
    assert named[1] == " validation-wiki loss at the end of training for val data | lm loss value: nan | lm loss PPL: nan | "


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H200", 989.0),
    ("NVIDIA GH200 480GB", 989.0), ("NVIDIA H800", 989.0), ("NVIDIA H20", 148.0),
    ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A100 80GB PCIe", 312.0), ("NVIDIA A800-SXM4-80GB", 312.0),
    ("Tesla V100-SXM2-32GB", 125.0), ("NVIDIA A10", 125.0), ("NVIDIA A10G", 70.0),
    ("NVIDIA L40S", 362.0), ("NVIDIA L40", 181.0), ("NVIDIA L4", 121.0), ("NVIDIA GeForce RTX 4090", 165.0),
    ("nvidia a100-sxm4-40gb", 312.0), ("NVIDIA RTX A1000", None), ("Some Other GPU", None),
])
def test_peak_is_looked_up_by_the_device_name_as_a_whole_word(name, peak):
    assert lookup_peak_tflops(name) == peak


def test_cpu_has_no_peak_and_the_override_always_wins():
    cpu = detect_peak(device=torch.device("cpu"))
    assert cpu == PeakThroughput(None, "CPU") and cpu.mfu(12.0) == "CPU"
    forced = detect_peak(override=400.0, device=torch.device("cpu"))
    assert forced.tflops == 400.0 and forced.mfu(100.0) == pytest.approx(0.25)
    unknown = PeakThroughput(None, "Some Other GPU")
    assert "--peak-tflops" in unknown.mfu(1.0)
    line = training_log_line(**FIELDS, mfu=cpu.mfu(1.0))
    assert line.endswith(" MFU: n/a (CPU) |")
    if not torch.cuda.is_available():
        assert detect_peak() == cpu
    else:
        assert detect_peak().source == torch.cuda.get_device_name()
    assert all(v > 0 for v in PEAK_TFLOPS.values())
