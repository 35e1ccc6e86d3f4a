"""notebooks/compare_experiments.ipynb runs headless top to bottom (nbclient, a kernel on this venv's Python):
against the demo's MLflow store it shows every table and plot; against a store with only a training run,
or no store at all, every cell prints a note instead of raising."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from tests.conftest import DEMO_TEST_TIMEOUT_S

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO_ROOT / "notebooks" / "compare_experiments.ipynb"
KERNEL = "shadowcam-test-venv"
CELL_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernelspec that starts ipykernel with THIS interpreter (the venv), whatever other kernelspecs exist."""
    root = tmp_path_factory.mktemp("kernels")
    spec = root / KERNEL
    spec.mkdir()
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "shadowcam test venv", "language": "python",
    }))
    return root


def run_notebook(kernel_dir: Path, workdir: Path) -> nbformat.NotebookNode:
    """Execute the notebook with SHADOWCAM_WORKDIR=workdir (MLFLOW_TRACKING_URI removed); raises on any cell error."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)]))
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["SHADOWCAM_WORKDIR"] = str(workdir)
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute(env=env)  # CellExecutionError (with the traceback) on the first failing cell
    return nb


def outputs(nb: nbformat.NotebookNode) -> tuple[str, int]:
    """All text the code cells printed or displayed, and the number of PNG figures."""
    text, pngs = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.output_type != "error", f"{out.ename}: {out.evalue}"
            if out.output_type == "stream":
                text.append(out.text)
            data = out.get("data", {})
            text.append(data.get("text/plain", ""))
            pngs += "image/png" in data
    return "\n".join(text), pngs


def test_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


@pytest.mark.slow
@pytest.mark.timeout(DEMO_TEST_TIMEOUT_S)
def test_notebook_on_demo_store(kernel_dir, demo_workdir):
    nb = run_notebook(kernel_dir, demo_workdir)
    text, pngs = outputs(nb)
    summary = json.loads((demo_workdir / "demo_summary.json").read_text())

    assert f"sqlite:///{demo_workdir}/mlflow.db" in text
    assert "NOTE" not in text, text  # nothing is missing in a full demo store
    assert "champion" in text and "v1" in text and "incumbent" in text and "shadow" in text
    assert "% [" in text  # production accuracy / gap printed with their CIs
    assert "dock-cam-1" in text  # the per-camera table
    assert pngs == 2  # gap over time, training curves
    # the decision of the paired test on stream 2 is in the closing table, next to the aliases as they are now
    assert (summary["decision"] or {}).get("action", "") in text
    assert "registry aliases of 'conveyor-classifier' now:" in text


def test_notebook_with_only_a_training_run(kernel_dir, tmp_path):
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment("shadowcam-training", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run = client.create_run(exp, run_name="tiny")
    client.log_batch(run.info.run_id, metrics=[Metric("val_accuracy", 0.5 + 0.1 * e, 0, e) for e in range(1, 4)]
                     + [Metric("train_loss", 1.0 / e, 0, e) for e in range(1, 4)] + [Metric("test_accuracy", 0.8, 0, 0)])
    client.set_terminated(run.info.run_id)

    text, pngs = outputs(run_notebook(kernel_dir, tmp_path))
    assert "1 training run(s) in 'shadowcam-training', 0 evaluation run(s)" in text
    assert "NOTE: no runs in 'shadowcam-deployment'" in text
    assert "NOTE: no registered model 'conveyor-classifier'" in text
    assert "NOTE: no evaluation runs, so no gap over time." in text
    assert "NOTE: no evaluation runs, so no decisions." in text
    assert "80.0%" in text  # the training run's test accuracy in the training summary
    assert pngs == 1  # the training curves only


def test_notebook_without_a_store(kernel_dir, tmp_path):
    text, pngs = outputs(run_notebook(kernel_dir, tmp_path))
    assert "does not exist yet" in text
    assert "0 training run(s)" in text and pngs == 0
    assert not (tmp_path / "mlflow.db").exists()  # reading never creates a store
