"""The import graph: layers hold and nothing imports in a circle (function-level imports count too).

The layer contracts live in pyproject.toml (``[tool.importlinter]``) and run here through import-linter;
the cycle check walks grimp's graph of the three packages (grimp records imports inside functions as well,
so a function-level import cannot hide a circle).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("pipeline", "models", "apps")
RUNTIME_FORBIDDEN_FOR_MODELS = ("pipeline.runner", "pipeline.shadow", "pipeline.batching", "pipeline.runtime")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=True, cache_dir=None)


def find_cycles(graph: grimp.ImportGraph, packages=PACKAGES) -> list[list[str]]:
    """Every direct import a -> b (inside ``packages``) for which b also reaches a: one circle per such edge."""
    cycles = []
    modules = sorted(m for m in graph.modules if m.split(".")[0] in packages)
    for a in modules:
        for b in sorted(graph.find_modules_directly_imported_by(a)):
            if b.split(".")[0] not in packages or b == a:
                continue
            # a package's __init__ importing its own submodules is how packages work, not a circle
            if b.startswith(a + ".") or a.startswith(b + "."):
                continue
            chain = graph.find_shortest_chain(importer=b, imported=a)
            if chain:
                cycles.append([a, *chain])
    return cycles


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The check can fail: a two-module circle hidden in a function-level import is found."""
    pkg = tmp_path / "circ"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from circ import b\n")
    (pkg / "b.py").write_text("def f():\n    from circ import a  # hidden in a function\n    return a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    g = grimp.build_graph("circ", cache_dir=None)
    assert find_cycles(g, ("circ",)) == [["circ.a", "circ.b", "circ.a"], ["circ.b", "circ.a", "circ.b"]]


@pytest.mark.parametrize("forbidden", RUNTIME_FORBIDDEN_FOR_MODELS)
def test_models_do_not_import_the_serving_runtime(graph, forbidden):
    importers = sorted(m for m in graph.find_modules_that_directly_import(forbidden) if m.split(".")[0] == "models")
    assert not importers, f"{forbidden} is imported by {importers}"
    chains = graph.find_shortest_chains(importer="models", imported=forbidden, as_packages=True)
    assert not chains, f"models reach {forbidden} via: {sorted(chains)}"


def test_import_linter_contracts_hold():
    proc = subprocess.run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in proc.stdout, proc.stdout[-2000:]
