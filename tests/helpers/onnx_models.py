"""Tiny ONNX classifiers that follow the shadowcam graph contract, and misbehaving wrappers for tests.

``make_tiny_classifier`` writes a real ONNX file (built with ``onnx.helper``; no torch) that ONNX Runtime
loads like any exported model::

    image uint8 (N, H, W, 3) -> Cast float -> ReduceMean over H, W -> (N, 3) / 255
        -> MatMul W (3, C) + b -> "logits";  "probs" = Softmax(logits / T)

with a valid model card (:func:`pipeline.modelcard.write_card`). The weights are seeded, or given.

The wrappers (:class:`RaisingClassifier`, :class:`SleepyClassifier`, :class:`GarbageClassifier`,
:class:`FlakyClassifier`) subclass :class:`pipeline.runtime.OnnxClassifier`, so the shadow pair sees exactly
the interface it sees in production; they load a real session and then misbehave in ``predict``.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.modelcard import INPUT_NAME, LOGITS_NAME, PROBS_NAME, ModelCard, write_card
from pipeline.runtime import OnnxClassifier

OPSET = 17
IR_VERSION = 9  # ONNX Runtime 1.18+ reads it; onnx >= 1.17 would default to a newer IR than some ORT builds accept


def make_tiny_classifier(
    path: str | Path,
    class_names: list[str],
    input_size: tuple[int, int] = (32, 32),
    seed: int = 0,
    temperature: float = 1.0,
    input_color: str = "RGB",
    mode: Literal["normal", "raise", "garbage"] = "normal",
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    name: str = "",
    version: str = "",
    test_accuracy: float | None = 0.9,
) -> Path:
    """Write a tiny contract-following classifier to ``path`` and return the path.

    ``weights`` (3, C) / ``bias`` (C,) override the seeded ones; input channels are in ``input_color``
    order and scaled to [0, 1]. ``mode="raise"`` makes every run fail inside ONNX Runtime (a Gather with
    an out-of-range index); ``mode="garbage"`` makes "probs" NaN.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    c = len(class_names)
    h, w = input_size
    rng = np.random.default_rng(seed)
    W = (rng.normal(0, 4.0, size=(3, c)) if weights is None else np.asarray(weights)).astype(np.float32)
    b = (rng.normal(0, 0.5, size=(c,)) if bias is None else np.asarray(bias)).astype(np.float32)
    if W.shape != (3, c) or b.shape != (c,):
        raise ValueError(f"weights must be (3, {c}) and bias ({c},), got {W.shape} and {b.shape}")

    inits = [
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array(temperature, dtype=np.float32), "temp"),
    ]
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x_f"], ["x_mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["x_mean", "scale"], ["x_unit"]),
        helper.make_node("MatMul", ["x_unit", "W"], ["x_mm"]),
    ]
    if mode == "normal":
        nodes.append(helper.make_node("Add", ["x_mm", "b"], [LOGITS_NAME]))
    elif mode == "raise":
        # Gather index 10**6 along the class axis: ONNX Runtime fails at run time, every time.
        inits.append(numpy_helper.from_array(np.array([10**6], dtype=np.int64), "bad_idx"))
        nodes.append(helper.make_node("Add", ["x_mm", "b"], ["x_logits"]))
        nodes.append(helper.make_node("Gather", ["x_logits", "bad_idx"], ["x_bad"], axis=1))
        nodes.append(helper.make_node("Add", ["x_logits", "x_bad"], [LOGITS_NAME]))
    elif mode == "garbage":
        inits.append(numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan"))
        nodes.append(helper.make_node("Add", ["x_mm", "b"], ["x_logits"]))
        nodes.append(helper.make_node("Mul", ["x_logits", "nan"], [LOGITS_NAME]))
    else:
        raise ValueError(f"mode must be normal, raise or garbage, got {mode!r}")
    nodes += [
        helper.make_node("Div", [LOGITS_NAME, "temp"], ["x_scaled"]),
        helper.make_node("Softmax", ["x_scaled"], [PROBS_NAME], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_classifier",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", h, w, 3])],
        [
            helper.make_tensor_value_info(LOGITS_NAME, TensorProto.FLOAT, ["batch", c]),
            helper.make_tensor_value_info(PROBS_NAME, TensorProto.FLOAT, ["batch", c]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)
    card = ModelCard(
        class_names=list(class_names),
        input_size=[h, w],
        arch="tiny-mean-linear",
        input_color=input_color,
        temperature=float(temperature),
        test_accuracy=test_accuracy,
        data_fingerprint=f"tiny-seed{seed}-{mode}",
        created_at="2024-01-01T00:00:00+00:00",
        opset=OPSET,
        name=name,
        version=version,
    )
    write_card(model, card)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def red_only_weights(class_names: list[str], input_color: str = "RGB", strength: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """Weights for a 2-class model that answers class 0 when the *red* channel is bright, else class 1.

    ``input_color`` says where red sits in the model's input (index 0 for RGB, 2 for BGR).
    """
    if len(class_names) != 2:
        raise ValueError("red_only_weights is for 2 classes")
    red = 0 if input_color == "RGB" else 2
    W = np.zeros((3, 2), dtype=np.float32)
    W[red] = [strength, -strength]
    b = np.array([-strength / 2, strength / 2], dtype=np.float32)
    return W, b


# --- misbehaving classifiers (subclasses, so ShadowPair sees the real interface) --------------------------------

class RaisingClassifier(OnnxClassifier):
    """``predict`` raises after ``fail_after`` good calls (0: always); warm-up is not counted."""

    def __init__(self, *a, fail_after: int = 0, exc: type[Exception] = RuntimeError, **kw):
        self.fail_after = fail_after
        self.exc = exc
        self.calls = 0
        self._armed = False
        super().__init__(*a, **kw)
        self._armed = True

    def predict(self, batch, run_options=None):
        if self._armed:
            self.calls += 1
            if self.calls > self.fail_after:
                raise self.exc(f"{self.model_id}: simulated device failure")
        return super().predict(batch, run_options=run_options)


class SleepyClassifier(OnnxClassifier):
    """``predict`` sleeps ``sleep_s`` per batch (after warm-up), then answers normally."""

    def __init__(self, *a, sleep_s: float = 1.0, **kw):
        self.sleep_s = 0.0
        self.calls = 0
        super().__init__(*a, **kw)
        self.sleep_s = sleep_s

    def predict(self, batch, run_options=None):
        self.calls += 1
        if self.sleep_s:
            time.sleep(self.sleep_s)
        return super().predict(batch, run_options=run_options)


class GarbageClassifier(OnnxClassifier):
    """``predict`` returns NaN probabilities of the right shape (after warm-up)."""

    def __init__(self, *a, **kw):
        self.garbage = False
        super().__init__(*a, **kw)
        self.garbage = True

    def predict(self, batch, run_options=None):
        p = super().predict(batch, run_options=run_options)
        return np.full_like(p, np.nan) if self.garbage else p


class StuckClassifier(OnnxClassifier):
    """``predict`` blocks until ``release`` is set (a hung device), after warm-up."""

    def __init__(self, *a, **kw):
        self.release = threading.Event()
        self.release.set()
        super().__init__(*a, **kw)
        self.release.clear()
        self.entered = 0

    def predict(self, batch, run_options=None):
        self.entered = getattr(self, "entered", 0) + 1
        self.release.wait()
        return super().predict(batch, run_options=run_options)
