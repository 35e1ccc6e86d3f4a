"""Drift against training on a real model: a clean stream of the demo's camera raises no drift alarm in any of
20+ windows, while the shifted stream 2 of the demo is flagged in its first window (checked in test_demo.py).

Uses the --fast demo's champion (its ONNX file carries the training reference profile) on a fresh clean stream of
the same camera, through `shadowcam run` and the evaluator, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from models.synthetic import write_stream
from pipeline.config import AlertConfig, RunConfig
from pipeline.evaluation import alerts as alerts_mod
from pipeline.evaluation.evaluator import EvalConfig, Evaluator
from pipeline.modelcard import read_card
from pipeline.runner import Runner
from pipeline.store import PredictionStore
from tests.conftest import DEMO_TEST_TIMEOUT_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEMO_TEST_TIMEOUT_S)]

WINDOWS = 20
FRAMES_PER_WINDOW = 100  # 10 s of a 10 fps camera


def test_clean_stream_raises_no_drift_alarm_against_training(demo_workdir: Path, tmp_path: Path):
    model = demo_workdir / "training" / "incumbent" / "model.onnx"
    assert read_card(model).training_reference, "the demo's champion has no training reference profile"
    # the demo's camera (scene seed 101 = the demo's seed 0 + 101), day conditions, new parcels
    manifest = write_stream(tmp_path / "clean.mp4", WINDOWS * FRAMES_PER_WINDOW, seed=777, phases=None, size=(240, 320),
                            fps=10.0, dwell=(3, 6), camera="dock-cam-1", progress=False, scene_seed=101)
    cfg = RunConfig.model_validate({
        "sources": [{"uri": str(manifest.with_suffix(".mp4")), "id": "dock-cam-1"}],
        "incumbent": {"uri": str(model)}, "sampling": {"enabled": False}, "store": {"url": str(tmp_path / "clean.db")},
        "workdir": str(tmp_path),
    })
    summary = Runner(cfg, install_signal_handlers=False).run()
    assert summary.frames_served == WINDOWS * FRAMES_PER_WINDOW

    store = PredictionStore(str(tmp_path / "clean.db"))
    try:
        windows = Evaluator(EvalConfig(workdir=str(tmp_path))).evaluate_windows(store, FRAMES_PER_WINDOW / 10.0)
    finally:
        store.close()
    assert len(windows) >= WINDOWS
    for w in windows:
        td = w.drift.training
        assert w.drift.baseline == "training" and td is not None, w.meta.notes
        assert not td.drifted, (w.meta.window.index, td.findings)
        fired = alerts_mod.check_alerts(w, AlertConfig())
        assert not [a for a in fired if a.kind == "drift"], [a.message for a in fired]
    # the figures a person reads exist (every image statistic and the confidence were tested)
    features = {t.feature for t in windows[0].drift.training.tails}
    assert {"brightness", "contrast", "sharpness", "noise", "confidence"} <= features
