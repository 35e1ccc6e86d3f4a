"""``pip install shadowcam`` is the runtime an edge box needs, and nothing of the training stack.

Builds a fresh virtualenv, installs the project *without extras* (what an edge box gets), checks that torch,
torchvision and albumentations are not importable there, then uses that install's own ``shadowcam`` command on
a tiny ONNX model made by the test: ``run`` over a short video, ``label import`` of a few labels and
``evaluate --json`` (MLflow logging on, through mlflow-skinny into a SQLite store). Takes a minute or two
(the packages come from the local index/cache).
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.conftest import REPO_ROOT
from tests.helpers.onnx_models import make_tiny_classifier

pytestmark = [pytest.mark.slow, pytest.mark.runtime_install, pytest.mark.timeout(900)]

CLASSES = ["dark", "bright"]


def sh(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("runtime") / "venv"
    sh([sys.executable, "-m", "venv", str(venv)])
    # a copy of the source tree without .venv/work dirs, so the build does not see them
    src = venv.parent / "src"
    sh(["git", "-C", str(REPO_ROOT), "worktree", "list"])  # git is there
    files = sh(["git", "-C", str(REPO_ROOT), "ls-files", "--cached", "--others", "--exclude-standard"]).stdout.split()
    for f in files:
        if f.startswith(("pipeline/", "models/", "apps/")) or f in ("pyproject.toml", "README.md"):
            dst = src / f
            dst.parent.mkdir(parents=True, exist_ok=True)
            if (REPO_ROOT / f).is_file():
                dst.write_bytes((REPO_ROOT / f).read_bytes())
    sh([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(src)])
    return venv


def test_runtime_install_has_no_training_stack(runtime_venv):
    py = str(runtime_venv / "bin" / "python")
    for mod in ("torch", "torchvision", "albumentations"):
        proc = subprocess.run([py, "-c", f"import {mod}"], capture_output=True, text=True)
        assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr, f"{mod} is importable in the runtime install"
    for mod in ("onnxruntime", "mlflow", "sqlalchemy", "fastapi", "pipeline.runner", "pipeline.evaluation.evaluator"):
        sh([py, "-c", f"import {mod}"])
    # a training command says what to install, in one line, instead of a traceback
    proc = subprocess.run([str(runtime_venv / "bin" / "shadowcam"), "train", "--data", "x"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'shadowcam[train]'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_runtime_install_runs_and_evaluates(runtime_venv, tmp_path):
    model = make_tiny_classifier(tmp_path / "tiny.onnx", CLASSES, input_size=(16, 16), seed=0)
    video = tmp_path / "clip.mp4"
    w = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (64, 48))
    rng = np.random.default_rng(0)
    for i in range(40):
        base = 30 if i % 2 else 180  # dark / bright, textured (a flat frame counts as a blank camera)
        w.write((base + rng.integers(0, 60, (48, 64, 3))).astype(np.uint8))
    w.release()
    exe = str(runtime_venv / "bin" / "shadowcam")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    db = tmp_path / "store.db"
    sh([exe, "run", "--source", str(video), "--incumbent", str(model), "--shadow", str(model), "--db", str(db),
        "--workdir", str(tmp_path), "--sample-rate", "1", "--no-progress", "--summary-json", str(tmp_path / "run.json")], env=env)
    summary = json.loads((tmp_path / "run.json").read_text())
    assert summary["frames_served"] == 40

    with sqlite3.connect(db) as conn:
        frames = [r[0] for r in conn.execute("SELECT frame_id FROM frames ORDER BY ts LIMIT 20")]
    assert len(frames) == 20
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["frame_id", "label", "annotator"])
        wr.writerows([fid, CLASSES[i % 2], "ann"] for i, fid in enumerate(frames))
    sh([exe, "label", "import", str(labels), "--db", str(db)], env=env)

    out = tmp_path / "eval.json"
    sh([exe, "evaluate", "--db", str(db), "--workdir", str(tmp_path), "--json", str(out)], env=env)
    doc = json.loads(out.read_text())
    overall = doc["overall"]["data"]
    assert overall["counts"]["frames"] == 40
    assert overall["models"]["incumbent"]["n_labeled"] == 20
    assert 0.0 <= overall["models"]["incumbent"]["accuracy"]["value"] <= 1.0
    assert (tmp_path / "mlflow.db").is_file()  # logged through mlflow-skinny
