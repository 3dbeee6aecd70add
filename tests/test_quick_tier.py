"""The quick tier (`python -m pytest -m quick`) reaches every package, an entry point and a tool.

Read from the test files with `ast`, at module granularity: a test module is in the tier when
it or one of its tests carries `pytest.mark.quick`, and it counts with every `megatron_core`
module it imports (directly or through the tests/harness modules it imports) and every script
name it spells. Every package of megatron_core (each folder with an __init__.py) must be
imported so, and the tier must name an entry point at the repository root (pretrain_*.py,
finetune_*.py) and a tools/ script. A new package or a test moved out of the tier that leaves
a package uncovered fails here; what the tier's tests then do with it is theirs to say.
"""
import ast
import glob
import os

import pytest

from tests.harness.tiny_corpus import ROOT

pytestmark = pytest.mark.quick

TESTS = os.path.join(ROOT, "tests")


def _is_quick_mark(node) -> bool:
    """`pytest.mark.quick` (also inside a list of marks)."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return any(_is_quick_mark(element) for element in node.elts)
    return (isinstance(node, ast.Attribute) and node.attr == "quick" and isinstance(node.value, ast.Attribute)
            and node.value.attr == "mark")


def in_quick_tier(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            if _is_quick_mark(node.value):
                return True
        if isinstance(node, ast.FunctionDef) and any(_is_quick_mark(d) for d in node.decorator_list):
            return True
    return False


def imported_modules(tree: ast.Module) -> set:
    """Dotted names this module imports (`from a import b` gives a and a.b), at any depth."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), path)


def with_harness(names: set) -> set:
    """`names` and, transitively, what the tests.harness modules among them import."""
    seen, todo = set(names), [n for n in names if n.startswith("tests.harness.")]
    while todo:
        path = os.path.join(ROOT, *todo.pop().split(".")) + ".py"
        if os.path.isfile(path):
            tree = _parse(path)
            relative = {f"tests.harness.{node.module}" for node in ast.walk(tree)
                        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
            for name in (imported_modules(tree) | relative) - seen:
                seen.add(name)
                if name.startswith("tests.harness."):
                    todo.append(name)
    return seen


def quick_modules() -> dict:
    """{test file name: its ast} of the tier's modules."""
    trees = {os.path.basename(p): _parse(p) for p in sorted(glob.glob(os.path.join(TESTS, "test_*.py")))}
    return {name: tree for name, tree in trees.items() if in_quick_tier(tree)}


def test_the_quick_tier_imports_every_package_of_megatron_core():
    packages = sorted(os.path.basename(os.path.dirname(p))
                      for p in glob.glob(os.path.join(ROOT, "megatron_core", "*", "__init__.py")))
    assert len(packages) >= 10, packages
    imported = set()
    for tree in quick_modules().values():
        imported |= with_harness(imported_modules(tree))
    missing = [p for p in packages if not any(n == f"megatron_core.{p}" or n.startswith(f"megatron_core.{p}.")
                                              for n in imported)]
    assert not missing, f"no quick test module imports megatron_core.{missing}: mark one (pytest.mark.quick)"


def test_the_quick_tier_runs_an_entry_point_and_a_tool():
    entry_points = {os.path.basename(p) for pattern in ("pretrain_*.py", "finetune_*.py")
                    for p in glob.glob(os.path.join(ROOT, pattern))}
    tools = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "tools", "*.py"))}
    named = set()
    for tree in quick_modules().values():
        named |= {os.path.basename(node.value) for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str)}
    assert named & entry_points, "no quick test module runs an entry point (pretrain_*.py, finetune_*.py)"
    assert named & tools, "no quick test module runs a tools/ script"
