"""The pipeline package's modules import each other without a circle (imports inside
functions count too: a lazy import only hides a circle), and the per-micro-batch steps
live in one module both schedules import."""
import pytest
import ast
import os

import megatron_core.pipeline as pipeline

pytestmark = pytest.mark.quick

PACKAGE = os.path.dirname(pipeline.__file__)


def _internal_imports(module: str):
    tree = ast.parse(open(os.path.join(PACKAGE, module + ".py")).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


def test_pipeline_modules_import_without_a_circle():
    modules = [f[:-3] for f in os.listdir(PACKAGE) if f.endswith(".py") and f != "__init__.py"]
    graph = {m: _internal_imports(m) & set(modules) for m in modules}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import circle: {' -> '.join(path + [module])}"
        state[module] = "open"
        for dependency in sorted(graph[module]):
            visit(dependency, path + [module])
        state[module] = "done"

    for module in sorted(modules):
        visit(module, [])


def test_both_schedules_take_their_steps_from_microbatch_step():
    from megatron_core.pipeline import interleaved, microbatch_step, schedules
    for schedule in (schedules, interleaved):
        assert schedule.forward_step is microbatch_step.forward_step
        assert schedule.backward_step is microbatch_step.backward_step
