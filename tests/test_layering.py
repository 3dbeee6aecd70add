"""The package's imports point one way: docs/design.md's layer order, and no circles.

Every `import` / `from ... import` in megatron_core (at module level and inside functions)
is read with `ast`, resolved to the module it names, and checked against the order of the
```layers block of docs/design.md: a module may import its own layer and the layers above
it in that list. Any strongly connected group of modules (an import circle) fails too.
"""
import ast
import os
import re

import pytest

pytestmark = pytest.mark.quick

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "megatron_core"


def layer_order(design_text: str) -> dict:
    """{layer name: position} from the ```layers block (one layer per line, peers on one line)."""
    block = re.search(r"```layers\n(.*?)```", design_text, re.S)
    assert block, "docs/design.md has no ```layers block"
    order = {}
    for position, line in enumerate(block.group(1).strip().splitlines()):
        for name in line.split():
            order[name] = position
    return order


def package_modules(root: str) -> dict:
    """{dotted module name: file path} of every module of the package."""
    modules = {}
    for directory, _, files in os.walk(os.path.join(root, PACKAGE)):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                dotted = os.path.relpath(path, root)[:-3].replace(os.sep, ".")
                modules[dotted.removesuffix(".__init__")] = path
    return modules


def imports_of(module: str, path: str, modules: dict) -> set:
    """The package modules `module` imports, each resolved to the deepest module that exists."""
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import name`: the submodule pkg.name where it is one, else pkg itself
            candidates = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                          for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for name in candidates:
            if name.split(".")[0] != PACKAGE:
                continue
            while name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name != module:
                found.add(name)
    return found


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else PACKAGE


def against_the_order(graph: dict, order: dict) -> list:
    problems = []
    for module, targets in sorted(graph.items()):
        mine = layer_of(module)
        if module == PACKAGE:        # the package's own __init__ re-exports nothing of the layers
            continue
        if mine not in order:
            problems.append(f"{module}: layer {mine!r} is not in docs/design.md's layer list")
            continue
        for target in sorted(targets):
            theirs = layer_of(target)
            if theirs != PACKAGE and order.get(theirs, -1) > order[mine]:
                problems.append(f"{module} ({mine}) imports {target} ({theirs}), a layer below it in the order")
    return problems


def circles(graph: dict) -> list:
    """Tarjan's strongly connected components with more than one module (or a self-import)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph(root: str) -> dict:
    modules = package_modules(root)
    return {module: imports_of(module, path, modules) for module, path in modules.items()}


def test_every_import_follows_the_layer_order_of_docs_design():
    order = layer_order(open(os.path.join(ROOT, "docs", "design.md"), encoding="utf-8").read())
    problems = against_the_order(import_graph(ROOT), order)
    assert not problems, "\n".join(problems)


# Narrower than the order: the format layer reads and writes files without any model, data or
# loop code, so every tool can open a checkpoint; generation reads checkpoints through it.
ONLY_FROM = {"checkpoint": ("errors", "atomic_files", "mpu", "transformer.config", "checkpoint")}
NEVER_FROM = {"inference": ("training.checkpointing", "training.backends")}


def _within(module: str, prefixes) -> bool:
    name = module.split(".", 1)[1] if "." in module else ""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_checkpoint_layer_imports_only_errors_files_mpu_and_the_config():
    graph = import_graph(ROOT)
    problems = [f"{module} imports {target}" for module, targets in sorted(graph.items())
                for layer, allowed in ONLY_FROM.items() if layer_of(module) == layer
                for target in sorted(targets) if not _within(target, allowed)]
    problems += [f"{module} imports {target}" for module, targets in sorted(graph.items())
                 for layer, refused in NEVER_FROM.items() if layer_of(module) == layer
                 for target in sorted(targets) if _within(target, refused)]
    assert not problems, "\n".join(problems)


def test_no_import_circles_between_modules():
    found = circles(import_graph(ROOT))
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path):
    """The checker itself, on a made-up package: a circle and an import against the order."""
    package = tmp_path / PACKAGE
    for sub in ("mpu", "training"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "mpu" / "a.py").write_text("from ..training import loop\n")          # upward
    (package / "training" / "loop.py").write_text("def f():\n    from . import b\n")
    (package / "training" / "b.py").write_text("from .loop import f\n")               # circle
    graph = import_graph(str(tmp_path))
    order = layer_order("```layers\nerrors\nmpu\ntraining\n```")
    assert against_the_order(graph, order) == [
        f"{PACKAGE}.mpu.a (mpu) imports {PACKAGE}.training.loop (training), a layer below it in the order"]
    assert circles(graph) == [[f"{PACKAGE}.training.b", f"{PACKAGE}.training.loop"]]


def test_test_modules_import_shared_helpers_only_from_the_harness():
    """A test module never imports another test module; shared pieces live in tests/harness/."""
    problems = []
    tests_dir = os.path.join(ROOT, "tests")
    for name in sorted(os.listdir(tests_dir)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(tests_dir, name), encoding="utf-8").read())):
            if isinstance(node, ast.ImportFrom):
                module = ("." * node.level) + (node.module or "")
                names = [module + "." + alias.name for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            problems += [f"{name}: {n}" for n in names if re.match(r"(tests)?\.+test_|tests\.test_|test_", n)]
    assert not problems, problems


def test_the_package_reads_no_test_switch_and_imports_no_test_code():
    problems = []
    for module, path in package_modules(ROOT).items():
        text = open(path, encoding="utf-8").read()
        problems += [f"{path}: reads {m}" for m in re.findall(r"MCORE_TEST\w*", text)]
        problems += [f"{path}: imports tests" for node in ast.walk(ast.parse(text))
                     if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("tests")]
    assert not problems, problems
