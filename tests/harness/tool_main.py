"""A tools/*.py script's main() in this process, as its CLI would call it with `flags`.

    run_tool_main("convert_checkpoint.py", "--to-hf", "--load", ckpt, "--output", out)

For tests that call a tool many times (each CLI start would pay torch's import again);
every tool's own CLI is also run at least once as a user runs it.
"""
from __future__ import annotations

import importlib.util
import os

from .tiny_corpus import ROOT


def load_tool(script: str):
    """The tools/ script as a module (its main() not called)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(script)[0], os.path.join(ROOT, "tools", script))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def run_tool_main(script: str, *flags) -> None:
    load_tool(script).main([str(f) for f in flags])
