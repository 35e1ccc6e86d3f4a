"""models.export: the graph contract (uint8 NHWC in, logits/probs out, dynamic batch), parity with torch, the fp16
variant, the model card round trip, and failing exports."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.calibration import softmax
from models.export import ExportError, ImageClassifier, build_backbone, export_onnx, load_checkpoint, verify_onnx
from pipeline.modelcard import ModelCard, read_card
from pipeline.types import ModelCardError
from tests.helpers.training import SHAPE_CLASSES


def _session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_graph_takes_uint8_nhwc_with_dynamic_batch(tiny_run):
    sess = _session(tiny_run.result.onnx_path)
    (inp,) = sess.get_inputs()
    assert (inp.name, inp.type) == ("image", "tensor(uint8)")
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [32, 32, 3]
    assert [(o.name, o.type) for o in sess.get_outputs()] == [("logits", "tensor(float)"), ("probs", "tensor(float)")]
    card = read_card(tiny_run.result.onnx_path)
    rng = np.random.default_rng(0)
    for n in (1, 5):
        x = rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)
        logits, probs = sess.run(None, {"image": x})
        assert logits.shape == probs.shape == (n, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, softmax(logits, card.temperature), atol=1e-5)


def test_onnx_matches_torch_within_1e3(tiny_run):
    card = read_card(tiny_run.result.onnx_path)
    assert card.export_max_abs_diff <= 1e-3 and card.export_tolerance == 1e-3
    model, _ = load_checkpoint(tiny_run.result.checkpoint_path)
    x = np.random.default_rng(7).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        t_logits, t_probs = model(torch.from_numpy(x))
    logits, probs = _session(tiny_run.result.onnx_path).run(None, {"image": x})
    assert np.abs(probs - t_probs.numpy()).max() <= 1e-3
    assert np.abs(logits - t_logits.numpy()).max() <= 1e-3 * max(1.0, float(t_logits.abs().max()))


def test_the_graph_classifies_real_images_like_training(tiny_run):
    """The uint8 RGB images of the data set, fed straight into ONNX Runtime, reproduce the test accuracy."""
    from models.data import load_dataset

    ds = load_dataset(tiny_run.data, 32, seed=0, progress=False)
    _, probs = _session(tiny_run.result.onnx_path).run(None, {"image": ds.images["test"]})
    assert float((probs.argmax(1) == ds.labels["test"]).mean()) == pytest.approx(tiny_run.result.test_accuracy)


def test_fp16_variant_runs_close_to_torch(tiny_run):
    path = tiny_run.result.onnx_fp16_path
    card = read_card(path)
    assert card.precision == "fp16" and card.export_max_abs_diff <= card.export_tolerance == 5e-2
    assert path.stat().st_size < 0.7 * tiny_run.result.onnx_path.stat().st_size
    sess = _session(path)
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    _, probs32 = _session(tiny_run.result.onnx_path).run(None, {"image": np.full((2, 32, 32, 3), 100, np.uint8)})
    logits, probs = sess.run(None, {"image": np.full((2, 32, 32, 3), 100, np.uint8)})
    assert probs.dtype == np.float32 and np.abs(probs - probs32).max() < 5e-2


def test_model_card_round_trip(tiny_run):
    r = tiny_run.result
    card = read_card(r.onnx_path)
    assert card.class_names == list(SHAPE_CLASSES)
    assert card.input_size == [32, 32] and card.input_color == "RGB" and card.input_layout == "NHWC"
    assert card.resize_interpolation == "area" and card.input_dtype == "uint8"
    assert card.mean == pytest.approx([0.485, 0.456, 0.406]) and card.std == pytest.approx([0.229, 0.224, 0.225])
    assert card.arch == "mobilenet_v3_small" and card.precision == "fp32" and card.opset == 17
    assert card.test_accuracy == pytest.approx(r.test_accuracy) and card.val_accuracy == pytest.approx(r.val_accuracy)
    assert card.per_class_accuracy == pytest.approx(r.per_class_accuracy)
    assert card.test_size == 36 and len(card.data_fingerprint) == 64
    assert card.training_run_id == r.run_id and len(r.run_id) == 32
    assert datetime.fromisoformat(card.created_at).utcoffset().total_seconds() == 0
    assert card.temperature == pytest.approx(r.card.temperature) and card.atc_threshold == pytest.approx(r.card.atc_threshold)
    assert {"export_max_abs_diff_probs", "export_max_abs_diff_logits", "val_size", "train_size"} <= set(card.extra)
    assert ModelCard.from_json(card.to_json()) == card


def test_preprocessing_in_the_module_is_normalise_then_nchw():
    m = ImageClassifier(torch.nn.Identity(), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
    x = np.random.default_rng(0).integers(0, 256, size=(2, 4, 5, 3), dtype=np.uint8)
    got = m.preprocess(torch.from_numpy(x)).numpy()
    want = ((x / 255.0 - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]).transpose(0, 3, 1, 2)
    assert got.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_verify_detects_a_different_model(tiny_run):
    torch.manual_seed(1)
    other = ImageClassifier(build_backbone("mobilenet_v3_small", 3)).eval()
    d_probs, d_logits, _ = verify_onnx(tiny_run.result.onnx_path, other)
    assert d_probs > 1e-2


def test_export_above_tolerance_fails_and_removes_the_file(tiny_run, tmp_path, monkeypatch):
    import models.export as export

    model, card = load_checkpoint(tiny_run.result.checkpoint_path)
    monkeypatch.setattr(export, "verify_onnx", lambda *a, **k: (0.2, 0.3, 5.0))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match=r"bad.onnx: ONNX Runtime disagrees with torch \(fp32\).*> tolerance 0.001"):
        export_onnx(model, card, out)
    assert not out.exists()
    with pytest.raises(ExportError, match="precision must be"):
        export_onnx(model, card, out, precision="int8")


def test_export_cli_from_checkpoint_with_dynamo(tiny_run, tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "re.onnx"
    assert main(["export", "--checkpoint", str(tiny_run.result.checkpoint_path), "--out", str(out), "--dynamo"]) == 0
    assert "max |diff|" in capsys.readouterr().out
    card = read_card(out)
    assert card.class_names == list(SHAPE_CLASSES) and card.opset >= 18 and card.export_max_abs_diff <= 1e-3
    assert card.temperature == pytest.approx(tiny_run.result.card.temperature)
    sess = _session(out)
    assert sess.run(None, {"image": np.zeros((3, 32, 32, 3), np.uint8)})[1].shape == (3, 3)


def test_checkpoint_errors(tmp_path):
    with pytest.raises(ModelCardError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({"weights": 1}, tmp_path / "y.pt")
    with pytest.raises(ModelCardError, match="not a shadowcam checkpoint"):
        load_checkpoint(tmp_path / "y.pt")
