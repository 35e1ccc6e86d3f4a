"""``shadowcam explain``: an image path, a frame id from a real SQLite store, a models:/ URI from a real MLflow
store, and the bad inputs (each a one-line error and exit status 2)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import Prediction
from tests.helpers.onnx_models import make_tiny_classifier

CLASSES = ["red", "other"]


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from pipeline.cli import main

    rc = main(["explain", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def model(tmp_path) -> Path:
    w = np.zeros((3, 2), np.float32)
    w[0] = [20.0, -20.0]
    return make_tiny_classifier(tmp_path / "m.onnx", CLASSES, input_size=(32, 32), weights=w,
                                bias=np.array([-3.0, 3.0], np.float32), name="lin", version="7")


def red_square() -> np.ndarray:
    img = np.full((120, 160, 3), 20, np.uint8)
    img[30:90, 40:100] = (0, 0, 255)
    return img


@pytest.fixture
def image(tmp_path) -> Path:
    p = tmp_path / "frame 1.png"
    cv2.imwrite(str(p), red_square())
    return p


@pytest.fixture
def store(tmp_path) -> Path:
    """Run r1: frame r1:cam:0 sampled (relative JPEG path samples/0.jpg under tmp_path), r1:cam:1 not sampled."""
    db = tmp_path / "work" / "shadowcam.db"
    s = PredictionStore(str(db))
    s.begin_run("r1", "lin:7", None, CLASSES, {})
    (tmp_path / "samples").mkdir()
    cv2.imwrite(str(tmp_path / "samples" / "0.jpg"), red_square())
    p = np.array([0.9, 0.1], np.float32)
    s.write_batch(
        [FrameRecord("r1:cam:0", "r1", "cam", 0, 1.0), FrameRecord("r1:cam:1", "r1", "cam", 1, 2.0)],
        [Prediction("r1:cam:0", "cam", "incumbent", "lin:7", p, "red"), Prediction("r1:cam:1", "cam", "incumbent", "lin:7", p, "red")],
        (), [SampleRecord("r1:cam:0", "cam", "uniform", 0.5, "samples/0.jpg", 1.0)],
    )
    s.close()
    return db


def test_an_image_path_writes_the_overlay(capsys, tmp_path, model, image, monkeypatch):
    out = tmp_path / "o" / "why.png"
    rc, stdout, _ = _cli(capsys, str(image), "--model", str(model), "--out", str(out))
    assert rc == 0
    assert "target: red  probability: 0.9" in stdout
    assert "method: occlusion  model: lin:7  model runs: 901" in stdout
    assert f"overlay: {out}" in stdout
    png = cv2.imread(str(out))
    assert png.shape == (120, 160, 3)
    # the default output name: here, from the image's name and the method
    monkeypatch.chdir(tmp_path)
    rc, stdout, _ = _cli(capsys, str(image), "--model", str(model), "--method", "rise", "--masks", "100", "--target", "other")
    assert rc == 0 and (tmp_path / "explain_frame_1_rise.png").is_file()
    assert "target: other  probability: 0.0" in stdout and "(predicted: red, probability 0.9" in stdout


def test_a_frame_id_reads_the_sampled_jpeg_from_the_store(capsys, tmp_path, model, store):
    out = tmp_path / "f.png"
    rc, stdout, err = _cli(capsys, "r1:cam:0", "--model", str(model), "--db", str(store), "--image-root", str(tmp_path),
                           "--out", str(out))
    assert rc == 0, err
    assert "target: red" in stdout and cv2.imread(str(out)).shape == (120, 160, 3)
    # the store found through --workdir (WORKDIR/shadowcam.db), image relative to the current directory
    rc, _, err = _cli(capsys, "r1:cam:0", "--model", str(model), "--workdir", str(store.parent), "--out", str(out))
    assert rc == 2 and "its sampled image samples/0.jpg is missing" in err  # cwd is not tmp_path


@pytest.mark.parametrize("argv, message", [
    (["r1:cam:9"], "frame 'r1:cam:9' is not in the prediction store (and is not an image file)"),
    (["r1:cam:1"], "frame 'r1:cam:1' has no sampled image: only frames the sampler picked keep their JPEG"),
    (["missing.jpg"], "missing.jpg: no such image file"),
])
def test_bad_frames_and_files(capsys, tmp_path, model, store, argv, message):
    rc, _, err = _cli(capsys, *argv, "--model", str(model), "--db", str(store), "--image-root", str(tmp_path))
    assert rc == 2
    assert err.strip() == f"shadowcam explain: error: {message}"


def test_bad_options(capsys, tmp_path, model, image):
    cases = [
        ([str(image)], "--model is required (an .onnx path or models:/NAME@ALIAS) unless --method gradcam"),
        ([str(image), "--model", str(tmp_path / "no.onnx")], f"{tmp_path / 'no.onnx'}: no such ONNX file"),
        ([str(image), "--model", str(model), "--target", "blue"], "target class 'blue' is not one of the model's classes: red, other"),
        ([str(image), "--model", str(model), "--out", "x.jpg"], "--out x.jpg: overlays are written as PNG"),
        ([str(image), "--method", "gradcam"], "--method gradcam needs --checkpoint best.pt"),
        (["some-frame", "--model", str(model), "--workdir", str(tmp_path / "empty")],
         f"'some-frame' is not an image file, and the prediction store {tmp_path / 'empty' / 'shadowcam.db'}"),
    ]
    for argv, message in cases:
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2 and message in err, (argv, err)
    assert not (tmp_path / "empty").exists()  # no store was created by looking


def test_the_command_offers_the_librarys_methods_and_imports_light():
    import subprocess
    import sys

    from pipeline.commands import explain as cmd
    from pipeline.explain import GRADCAM, METHODS

    assert cmd.METHODS == (*METHODS, GRADCAM)
    code = "import sys; from pipeline.cli import get_args_parser; get_args_parser(); " \
           "heavy = [m for m in ('cv2', 'onnxruntime', 'torch', 'pipeline.explain') if m in sys.modules]; print(heavy)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2],
                       check=False)
    assert r.returncode == 0, r.stderr
    assert "pipeline.explain" not in r.stdout, r.stdout


def test_a_registry_uri_is_resolved_from_the_workdir(capsys, tmp_path, model, image, monkeypatch):
    from pipeline import tracking

    workdir = tmp_path / "wd"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    tracking.configure(workdir)
    version = tracking.register_onnx(model, "explained", alias="champion")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # resolved through --workdir, as the runner does
    out = tmp_path / "reg.png"
    rc, stdout, err = _cli(capsys, str(image), "--model", "models:/explained@champion", "--workdir", str(workdir), "--out", str(out))
    assert rc == 0, err
    assert f"model: explained:{version}" in stdout and out.is_file()
    assert any((workdir / ".cache" / "models" / "explained").rglob("*.onnx"))
