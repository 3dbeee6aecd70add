"""Helpers for testing parallel code in real multi-process groups on CPU, and the tools
under real OS failures (output_faults)."""
from .distributed import DistributedTestFailure, find_free_port, run_distributed

__all__ = ["DistributedTestFailure", "find_free_port", "run_distributed"]
