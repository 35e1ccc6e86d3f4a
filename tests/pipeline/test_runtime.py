"""OnnxClassifier with real ONNX Runtime sessions on tiny contract-following models."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pipeline.modelcard import CARD_KEY
from pipeline.runtime import (
    CPU,
    CUDA,
    TENSORRT,
    InferenceError,
    OnnxClassifier,
    resolve_providers,
    validate_probs,
)
from pipeline.types import ConfigError, Degraded, Frame, FrameBatch, ModelCardError, Prediction, Role
from tests.helpers.onnx_models import make_tiny_classifier, red_only_weights

CLASSES = ["box", "bag", "empty"]


def batch_of(images: np.ndarray, cameras=("cam0", "cam1")) -> FrameBatch:
    frames = tuple(Frame(cameras[i % len(cameras)], i, 100.0 + i, images[i]) for i in range(len(images)))
    return FrameBatch(frames=frames, images=images)


def reference_probs(images_bgr: np.ndarray, W: np.ndarray, b: np.ndarray, T: float = 1.0, rgb: bool = True) -> np.ndarray:
    x = images_bgr[..., ::-1] if rgb else images_bgr
    z = (x.astype(np.float64).mean(axis=(1, 2)) / 255.0) @ W + b
    z = z / T
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    rng = np.random.default_rng(0)
    W = rng.normal(0, 4, (3, 3)).astype(np.float32)
    b = rng.normal(0, 0.5, 3).astype(np.float32)
    path = make_tiny_classifier(d / "tiny.onnx", CLASSES, input_size=(16, 20), weights=W, bias=b, temperature=2.0)
    return path, W, b


@pytest.fixture(scope="module")
def clf(tiny):
    return OnnxClassifier(tiny[0], providers=["cpu"])


def test_loads_card_identity_and_reports_providers(clf, tiny):
    assert clf.providers == [CPU] and clf.providers_requested == [CPU]
    assert clf.class_names == CLASSES and clf.input_size == (16, 20)
    name, version = clf.model_id.split(":")
    assert name == "tiny" and len(version) == 8  # file stem + short hash of the card
    assert clf.device == "cpu" and clf.use_io_binding is False
    d = clf.describe()
    assert d["providers"] == [CPU] and d["classes"] == CLASSES and d["role"] == "incumbent"
    # the same card gives the same identity; a name/version from the registry wins
    assert OnnxClassifier(tiny[0], providers=["cpu"], warmup_runs=0).model_id == clf.model_id
    assert OnnxClassifier(tiny[0], providers=["cpu"], name="m", version="7", warmup_runs=0).model_id == "m:7"


def test_default_providers_follow_the_order_and_report_what_runs(tiny, caplog):
    import onnxruntime as ort

    available = ort.get_available_providers()
    with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
        c = OnnxClassifier(tiny[0], warmup_runs=1)
    from pipeline.runtime import cuda_driver_present

    expected = [p for p in (TENSORRT, CUDA, CPU) if p in available] if cuda_driver_present() else [CPU]
    assert c.providers_requested == expected
    assert c.providers == c.session.get_providers()  # what ONNX Runtime really uses
    if CUDA in available and not cuda_driver_present():
        # asked for explicitly on a machine without the driver: ONNX Runtime falls back silently; we report it
        with caplog.at_level(logging.WARNING, logger="pipeline.runtime"):
            c = OnnxClassifier(tiny[0], providers=["cuda"], warmup_runs=0)
        assert c.providers == [CPU] and c.providers_requested == [CUDA, CPU]
    lost = [p for p in c.providers_requested if p in (TENSORRT, CUDA) and p not in c.providers]
    if lost:  # e.g. a GPU build without a GPU (CI: CPU), or without TensorRT libraries (CUDA): reported
        assert c.providers[0] not in lost and c.providers[-1] == CPU
        assert any("provider_fallback" in r.getMessage() for r in caplog.records)
    x = np.random.default_rng(0).integers(0, 256, (3, 16, 20, 3), dtype=np.uint8)
    np.testing.assert_allclose(c.predict(x), reference_probs(x, tiny[1], tiny[2], T=2.0), atol=1e-3)  # GPU: TF32 & co


@pytest.mark.parametrize(
    "requested, available, expected",
    [
        (None, [TENSORRT, CUDA, CPU], [TENSORRT, CUDA, CPU]),
        (None, [CUDA, CPU], [CUDA, CPU]),
        (None, [CPU], [CPU]),
        ("no-driver", [TENSORRT, CUDA, CPU], [CPU]),  # onnxruntime-gpu on a machine without the NVIDIA driver
        (["cuda"], [TENSORRT, CUDA, CPU], [CUDA, CPU]),
        (["trt", "cpu"], [TENSORRT, CUDA, CPU], [TENSORRT, CPU]),
        (["CPUExecutionProvider"], [CPU], [CPU]),
        (["cuda"], [CPU], ConfigError),
        (["tpu"], [CPU], ConfigError),
    ],
)
def test_resolve_providers(requested, available, expected):
    if expected is ConfigError:
        with pytest.raises(ConfigError, match="not available"):
            resolve_providers(requested, available, driver=True)
    elif requested == "no-driver":
        assert resolve_providers(None, available, driver=False) == expected
    else:
        assert resolve_providers(requested, available, driver=True) == expected


def test_predict_matches_reference_and_predictions(clf, tiny):
    _, W, b = tiny
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (5, 16, 20, 3), dtype=np.uint8)
    batch = batch_of(imgs)
    probs = clf.predict(batch)
    assert probs.shape == (5, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, reference_probs(imgs, W, b, T=2.0), atol=1e-5)
    preds = clf.predictions(batch, probs, latency_ms=3.0)
    assert [p.frame_id for p in preds] == batch.frame_ids
    assert [p.label for p in preds] == [CLASSES[k] for k in probs.argmax(1)]
    assert all(p.role is Role.INCUMBENT and p.model == clf.model_id and p.latency_ms == 3.0 and p.degraded is None for p in preds)
    assert clf.predictions(batch, probs, degraded=Degraded.CPU_FALLBACK)[0].degraded is Degraded.CPU_FALLBACK
    # built without per-object checks (the batch was validated once): still exactly what the checked constructor makes
    for p in preds:
        q = Prediction(**{k: getattr(p, k) for k in ("frame_id", "camera_id", "role", "model", "probs", "label", "latency_ms", "degraded")})
        assert vars(q).keys() == vars(p).keys() and q.probs.dtype == p.probs.dtype == np.float32 and q.confidence == p.confidence
    bad = probs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InferenceError):
        clf.predictions(batch, bad)


def test_frames_not_at_card_size_are_resized(clf):
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)
    small = np.stack([cv2.resize(im, (20, 16), interpolation=cv2.INTER_AREA) for im in big])
    np.testing.assert_allclose(clf.predict(big), clf.predict(small), atol=1e-6)


@pytest.mark.parametrize("input_color", ["RGB", "BGR"])
def test_colour_order_of_the_card_is_honoured(tmp_path, input_color):
    """A model that only looks at the red channel: red BGR frames must come out as class 'red'."""
    W, b = red_only_weights(["red", "other"], input_color=input_color)
    path = make_tiny_classifier(tmp_path / "red.onnx", ["red", "other"], input_size=(8, 8), weights=W, bias=b, input_color=input_color)
    c = OnnxClassifier(path, providers=["cpu"])
    red_bgr = np.zeros((1, 8, 8, 3), np.uint8)
    red_bgr[..., 2] = 255  # OpenCV order: B, G, R
    blue_bgr = np.zeros((1, 8, 8, 3), np.uint8)
    blue_bgr[..., 0] = 255
    imgs = np.concatenate([red_bgr, blue_bgr])
    probs = c.predict(imgs)
    assert [c.class_names[k] for k in probs.argmax(1)] == ["red", "other"]
    assert probs[0, 0] > 0.99 and probs[1, 1] > 0.99


def test_io_binding_path_gives_the_same_answer(tiny, clf):
    c = OnnxClassifier(tiny[0], providers=["cpu"], io_binding=True)
    assert c.use_io_binding
    imgs = np.random.default_rng(3).integers(0, 256, (4, 16, 20, 3), dtype=np.uint8)
    np.testing.assert_allclose(c.predict(imgs), clf.predict(imgs), atol=1e-6)
    import onnxruntime as ort

    ro = ort.RunOptions()
    np.testing.assert_allclose(c.predict(imgs, run_options=ro), clf.predict(imgs), atol=1e-6)


def test_cpu_fallback_twin(tiny):
    c = OnnxClassifier(tiny[0], providers=["cpu"], name="m", version="3")
    twin = c.cpu_fallback()
    assert twin is c.cpu_fallback()  # built once
    assert twin.providers == [CPU] and twin.model_id == "m:3" and twin.session is not c.session
    imgs = np.random.default_rng(4).integers(0, 256, (2, 16, 20, 3), dtype=np.uint8)
    np.testing.assert_allclose(twin.predict(imgs), c.predict(imgs), atol=1e-6)


def test_bad_models_are_clear_errors(tmp_path, tiny):
    with pytest.raises(ModelCardError, match="no such ONNX file"):
        OnnxClassifier(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelCardError, match="cannot load"):
        OnnxClassifier(junk, providers=["cpu"])
    # a valid graph without a card
    m = onnx.load(str(tiny[0]))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "nocard.onnx"))
    with pytest.raises(ModelCardError, match="no shadowcam model card"):
        OnnxClassifier(tmp_path / "nocard.onnx", providers=["cpu"])
    # a float input breaks the contract
    g = helper.make_graph(
        [helper.make_node("Softmax", ["image"], ["probs"], axis=-1), helper.make_node("Identity", ["image"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 3]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3])],
    )
    fm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    fm.metadata_props.add(key=CARD_KEY, value=onnx.load(str(tiny[0])).metadata_props[0].value)
    onnx.save(fm, str(tmp_path / "float.onnx"))
    with pytest.raises(ModelCardError, match="tensor\\(uint8\\)"):
        OnnxClassifier(tmp_path / "float.onnx", providers=["cpu"])


def test_a_model_failing_at_warmup_refuses_to_load(tmp_path):
    path = make_tiny_classifier(tmp_path / "bad.onnx", CLASSES, mode="raise")
    with pytest.raises(InferenceError, match="warm-up run failed"):
        OnnxClassifier(path, providers=["cpu"])
    c = OnnxClassifier(path, providers=["cpu"], warmup_runs=0)  # loads; fails when run
    with pytest.raises(Exception, match="Gather"):
        c.predict(np.zeros((1, 32, 32, 3), np.uint8))


def test_garbage_output_is_an_inference_error(tmp_path):
    c = OnnxClassifier(make_tiny_classifier(tmp_path / "nan.onnx", CLASSES, mode="garbage"), providers=["cpu"], warmup_runs=0)
    with pytest.raises(InferenceError) as e:
        c.predict(np.zeros((2, 32, 32, 3), np.uint8))
    assert e.value.kind == "garbage"


@pytest.mark.parametrize(
    "probs, ok",
    [
        (np.array([[0.2, 0.8]]), True),
        (np.array([[0.2, 0.7]]), False),
        (np.array([[np.nan, 1.0]]), False),
        (np.array([[1.5, -0.5]]), False),
        (np.array([0.5, 0.5]), False),
        (np.ones((2, 2)) / 2, False),  # wrong batch size
    ],
)
def test_validate_probs(probs, ok):
    if ok:
        validate_probs(probs, 1, 2, "m")
    else:
        with pytest.raises(InferenceError):
            validate_probs(probs, 1, 2, "m")


def test_registry_uri_goes_through_tracking(tiny, monkeypatch, tmp_path):
    """``models:/NAME@ALIAS`` is resolved by pipeline.tracking (imported lazily); its name/version are the identity."""
    import sys
    import types

    seen = {}

    def resolve_model_uri(uri, cache_dir):
        seen["args"] = (uri, cache_dir)
        return tiny[0], "shadowcam", "12"

    fake = types.ModuleType("pipeline.tracking")
    fake.resolve_model_uri = resolve_model_uri
    monkeypatch.setitem(sys.modules, "pipeline.tracking", fake)
    c = OnnxClassifier("models:/shadowcam@champion", providers=["cpu"], cache_dir=tmp_path)
    assert c.model_id == "shadowcam:12" and seen["args"][0] == "models:/shadowcam@champion"
    assert seen["args"][1] == tmp_path / "models"


def test_tensorrt_profile_covers_partial_batches(tiny):
    c = OnnxClassifier(tiny[0], providers=["cpu"], warmup_batch_size=32, warmup_runs=0)
    assert c._trt_profile() == {
        "trt_profile_min_shapes": "image:1x16x20x3",
        "trt_profile_opt_shapes": "image:32x16x20x3",
        "trt_profile_max_shapes": "image:32x16x20x3",
    }


def test_cpu_sessions_default_to_half_the_cores(tmp_path):
    import os

    from pipeline.runtime import default_cpu_threads

    path = make_tiny_classifier(tmp_path / "t.onnx", ["a", "b"], input_size=(8, 8))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    assert default_cpu_threads() == max(1, cores // 2)
    auto = OnnxClassifier(path, providers=["cpu"], warmup_runs=0)
    assert auto.threads == default_cpu_threads() and auto.describe()["intra_op_threads"] == auto.threads
    assert OnnxClassifier(path, providers=["cpu"], intra_op_threads=3, warmup_runs=0).threads == 3
