"""Helpers for testing parallel code in real multi-process groups on CPU."""
from .distributed import DistributedTestFailure, find_free_port, run_distributed

__all__ = ["DistributedTestFailure", "find_free_port", "run_distributed"]
