"""Every capability the loop and the checkpointer use is declared by the Backend protocol and
implemented by both backends: nothing is probed with getattr."""
import ast
import inspect
import os
import re

import pytest

from megatron_core.training.backends import base
from megatron_core.training.backends.deepspeed import DeepSpeedBackend
from megatron_core.training.backends.native import NativeBackend

pytestmark = pytest.mark.quick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declared_members() -> set:
    members = set(base.Backend.__annotations__)
    members |= {name for name, value in vars(base.Backend).items()
                if not name.startswith("_") and (callable(value) or isinstance(value, property))}
    return members


def implemented_members(cls) -> set:
    """Class attributes and methods, and the attributes its methods assign on self."""
    names = {name for name in dir(cls) if not name.startswith("_")}
    tree = ast.parse(inspect.getsource(cls))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and \
                isinstance(node.value, ast.Name) and node.value.id == "self":
            names.add(node.attr)
    return names


@pytest.mark.parametrize("backend", [NativeBackend, DeepSpeedBackend], ids=["native", "deepspeed"])
def test_each_backend_implements_every_member_of_the_protocol(backend):
    assert {"loads_per_parameter", "checkpoint_files", "state_dict", "step"} <= declared_members()
    missing = declared_members() - implemented_members(backend)
    assert not missing, f"{backend.__name__} lacks {sorted(missing)}"


def test_the_loop_and_the_checkpointer_probe_no_backend_attribute():
    probes = []
    for path in ("megatron_core/training/loop.py", "megatron_core/training/train_step.py",
                 "megatron_core/training/checkpointing/checkpointer.py"):
        text = open(os.path.join(ROOT, path), encoding="utf-8").read()
        probes += [f"{path}: {m.group(0)}" for m in re.finditer(r"(getattr|hasattr)\([^)]*backend[^)]*\)", text)]
    assert not probes, probes
