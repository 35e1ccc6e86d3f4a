"""The evaluation package's layering, read from the source: types at the bottom, pure statistics above them, the
evaluator above those, report and alerts on top; no import cycle, no import hidden inside a function (but the heavy
optional ones), no SQL or MLflow in the evaluator."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pipeline.evaluation

PACKAGE = Path(pipeline.evaluation.__file__).parent
# a module may import only modules of a lower layer
LAYER = {"result": 0, "truth": 1, "stats": 1, "drift": 1, "estimate": 1, "costs": 2, "baselines": 3, "gallery": 3, "evaluator": 4, "report": 5,
         "alerts": 5}
LAZY_OK = {"matplotlib", "mlflow"}  # heavy optional dependencies may be imported where they are used


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported at module level, modules imported inside functions)."""
    tree = ast.parse(path.read_text())
    top, inner = set(), set()

    def names(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Import):
            return [a.name for a in node.names]
        if isinstance(node, ast.ImportFrom) and node.module:
            return [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        return []

    for node in tree.body:
        top.update(names(node))
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                inner.update(names(node))
    return top, inner


def _local(mods: set[str]) -> set[str]:
    return {m.split(".")[2] for m in mods if m.startswith("pipeline.evaluation.") and m.split(".")[2] in LAYER}


@pytest.mark.parametrize("name", sorted(LAYER))
def test_module_imports_only_lower_layers_at_module_level(name):
    top, inner = _imports(PACKAGE / f"{name}.py")
    for dep in _local(top):
        assert LAYER[dep] < LAYER[name], f"{name} imports {dep} (layer {LAYER[dep]} >= {LAYER[name]})"
    hidden = {m for m in inner if m.split(".")[0] not in LAZY_OK}
    assert not hidden, f"{name}.py imports {sorted(hidden)} inside functions"


def test_evaluator_has_no_sql_and_no_mlflow():
    top, inner = _imports(PACKAGE / "evaluator.py")
    assert not {m for m in top | inner if m.split(".")[0] in ("sqlalchemy", "mlflow")}


def test_importing_any_module_first_works():
    """No cycle that only shows depending on which module is imported first."""
    import subprocess
    import sys

    for name in LAYER:
        r = subprocess.run([sys.executable, "-c", f"import pipeline.evaluation.{name}"], capture_output=True, text=True,
                           cwd=Path(pipeline.evaluation.__file__).parents[2])
        assert r.returncode == 0, (name, r.stderr[-2000:])
