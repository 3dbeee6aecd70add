"""Model FLOPs utilization: achieved TFLOP/s per device over the device's dense bf16/fp16 peak.

The peak comes from --peak-tflops when given, else from the table below, matched against
`torch.cuda.get_device_name()` as a whole word (case-insensitive; longer names first, so
"H100 PCIe" wins over "H100" and "A100" never matches an "A1000"). On CPU, or on a GPU
not in the table, there is no peak: the log says "MFU: n/a (CPU)" or names the device and
the flag to set. Values are NVIDIA's / AMD's dense (no sparsity) tensor-core figures.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union

import torch

PEAK_TFLOPS = {
    "B200": 2250.0, "B100": 1750.0,
    "H200 NVL": 835.0, "H200": 989.0, "GH200": 989.0,
    "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
    "H800 PCIe": 756.0, "H800": 989.0, "H20": 148.0,
    "A100": 312.0, "A800": 312.0, "A30": 165.0, "A40": 149.7, "A10G": 70.0, "A10": 125.0,
    "L40S": 362.0, "L40": 181.0, "L4": 121.0,
    "V100": 125.0, "T4": 65.0,
    "RTX 4090": 165.0, "RTX A6000": 154.8,
    "MI300X": 1307.0, "MI250X": 383.0,
}


def lookup_peak_tflops(device_name: str) -> Optional[float]:
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name, re.IGNORECASE):
            return PEAK_TFLOPS[key]
    return None


@dataclass(frozen=True)
class PeakThroughput:
    tflops: Optional[float]   # dense peak of one device, None when unknown
    source: str               # "--peak-tflops", the device name, or "CPU"

    def mfu(self, achieved_tflops: float) -> Union[float, str]:
        """The utilization as a fraction, or the reason there is none (for the log line)."""
        if self.tflops:
            return achieved_tflops / self.tflops
        if self.source == "CPU":
            return "CPU"
        return f"unknown peak of {self.source}; set --peak-tflops"


def detect_peak(override: Optional[float] = None, device: Optional[torch.device] = None) -> PeakThroughput:
    if override is not None:
        return PeakThroughput(float(override), "--peak-tflops")
    if device is None:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
            else torch.device("cpu")
    device = torch.device(device)
    if device.type != "cuda":
        return PeakThroughput(None, "CPU")
    name = torch.cuda.get_device_name(device)
    return PeakThroughput(lookup_peak_tflops(name), name)
