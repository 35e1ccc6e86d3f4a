"""``shadowcam data check``: the summary, --json and --html, the store's incumbent found for --db, and bad input
(a one-line error and exit status 2)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.store import FrameRecord, PredictionStore
from pipeline.types import Prediction
from tests.helpers.onnx_models import make_tiny_classifier


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from pipeline.cli import main

    rc = main(["data", "check", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(20):
            img = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (24, 24), interpolation=cv2.INTER_CUBIC)
            cv2.imwrite(str(tmp_path / "data" / cls / f"{i}.png"), img)
    (tmp_path / "data" / "dog" / "0_copy.png").write_bytes((tmp_path / "data" / "dog" / "0.png").read_bytes())
    return tmp_path / "data"


def test_summary_json_and_html(capsys, tmp_path, folder):
    rc, out, _ = _cli(capsys, str(folder), "--img-size", "24", "--html", str(tmp_path / "r" / "check.html"))
    assert rc == 0
    assert "Classes (2): cat 20 (49%), dog 21 (51%)" in out
    assert "1 set(s) of exact copies (2 images)" in out
    assert f"HTML report: {tmp_path / 'r' / 'check.html'}" in out
    page = (tmp_path / "r" / "check.html").read_text()
    assert page.startswith("<!doctype html>") and "data:image/jpeg;base64," in page  # thumbnails embedded

    rc, out, _ = _cli(capsys, str(folder), "--img-size", "24", "--json", "--seed", "3", "--no-shift-tolerant")
    d = json.loads(out)
    assert rc == 0 and d["class_counts"] == {"cat": 20, "dog": 21} and d["img_size"] == [24, 24]
    assert d["config"]["seed"] == 3 and d["config"]["shift_tolerant"] is False and d["duplicates"]["n_exact_groups"] == 1


@pytest.mark.parametrize("argv, message", [
    (["missing_dir"], "missing_dir: data folder not found"),
    (["missing.csv"], "missing.csv: manifest not found"),
    (["{folder}", "--window-s", "0"], "DataCheckConfig: field 'window_s': Input should be greater than 0"),
    (["{folder}", "--db", "{tmp}/none.db"], "none.db: prediction store not found"),
    (["{folder}", "--db", "{tmp}/empty.db"], "no runs yet"),
])
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, folder, argv, message):
    PredictionStore(str(tmp_path / "empty.db")).close()
    argv = [a.format(folder=folder, tmp=tmp_path) for a in argv]
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("shadowcam data: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "none.db").exists()  # no store was created by looking


def test_db_uses_the_stores_newest_incumbent_for_size_and_confidence(capsys, tmp_path, folder):
    model = make_tiny_classifier(tmp_path / "m.onnx", ["cat", "dog"], input_size=(24, 24), name="pets", version="")
    db = tmp_path / "shadowcam.db"
    store = PredictionStore(str(db))
    store.begin_run("r1", "pets:4", None, ["cat", "dog"], {"_resolved": {"incumbent": {"path": str(model)}}})
    p = np.array([0.7, 0.3], np.float32)
    store.write_batch([FrameRecord(f"r1:c:{i}", "r1", "c", i, 10.0 + i, "", 24, 24, 120.0, 60.0, 900.0, 3.0) for i in range(30)],
                      [Prediction(f"r1:c:{i}", "c", "incumbent", "pets:4", p, "cat") for i in range(30)])
    store.close()

    rc, out, _ = _cli(capsys, str(folder), "--db", str(db), "--json", "--window-s", "10")
    d = json.loads(out)
    assert rc == 0 and d["img_size"] == [24, 24]  # the incumbent's input size
    cov = d["coverage"]
    assert cov["runs"] == ["r1"] and [w["n_frames"] for w in cov["cameras"][0]["windows"]] == [10, 10, 10]
    # the tiny model's card has no training reference: said, not guessed
    assert any("has no training reference" in n for n in cov["notes"]), cov["notes"]
    assert d["config"]["model_origin"] == "store" and d["config"]["model_id"] == "pets:4"


def test_the_help_states_the_configs_defaults_and_the_parser_imports_light():
    import subprocess
    import sys

    from models.datacheck import DataCheckConfig
    from pipeline.commands.data import SHOWN_DEFAULTS

    for name, value in SHOWN_DEFAULTS.items():
        assert DataCheckConfig.default(name) == value, name
    code = "import sys; from pipeline.cli import get_args_parser; get_args_parser(); print([m for m in sys.modules if m.startswith('models')])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2], check=False)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
