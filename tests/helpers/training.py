"""Tiny seeded data and models for the training, export and tracking tests.

* :func:`make_shapes` writes an ImageFolder of coloured shapes (one colour + shape per class) on noisy grey
  backgrounds: learnable in a couple of epochs at 32 px.
* :func:`make_tiny_onnx` builds a contract-conforming ONNX classifier (uint8 NHWC in; logits, probs out; model
  card in the metadata) with the onnx helper API only -- no torch, so registry tests stay fast.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np

SHAPE_CLASSES = ("circle", "square", "triangle")
_COLOURS = {"circle": (220, 40, 40), "square": (40, 200, 60), "triangle": (50, 70, 230)}  # RGB


def draw_shape(cls: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One RGB uint8 image of ``cls`` at a random position/size on a noisy grey background."""
    img = rng.normal(128, 18, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
    r = int(rng.integers(size // 6, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    col = tuple(int(np.clip(c + rng.integers(-25, 26), 0, 255)) for c in _COLOURS[cls])
    if cls == "circle":
        cv2.circle(img, (cx, cy), r, col, -1)
    elif cls == "square":
        cv2.rectangle(img, (cx - r, cy - r), (cx + r, cy + r), col, -1)
    else:
        pts = np.array([[cx, cy - r], [cx - r, cy + r], [cx + r, cy + r]], dtype=np.int32)
        cv2.fillPoly(img, [pts], col)
    return img


def make_shapes(root: str | Path, n_per_class: int = 60, size: int = 32, seed: int = 0,
                classes: tuple[str, ...] = SHAPE_CLASSES, ext: str = ".png") -> Path:
    """Write ``root/<class>/<i>.png`` (RGB content, saved BGR as OpenCV expects). Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = draw_shape(cls, rng, size)
            cv2.imwrite(str(root / cls / f"{i:04d}{ext}"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    return root


def write_manifest(path: str | Path, rows: list[tuple], header: tuple[str, ...] = ("path", "label")) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def make_tiny_onnx(path: str | Path, class_names: tuple[str, ...] = SHAPE_CLASSES, size: int = 8, seed: int = 0,
                   name: str = "") -> Path:
    """A linear classifier on the mean colour: uint8 (N, size, size, 3) -> logits, probs; card in the metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.modelcard import ModelCard, write_card

    rng = np.random.default_rng(seed)
    n = len(class_names)
    w = numpy_helper.from_array(rng.normal(size=(3, n)).astype(np.float32), "W")
    scale = numpy_helper.from_array(np.array(1 / 255.0, dtype=np.float32), "scale")
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["xf", "scale"], ["xs"]),
        helper.make_node("ReduceMean", ["xs"], ["m"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["m", "W"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n]),
         helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n])],
        initializer=[w, scale],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    card = ModelCard(class_names=list(class_names), input_size=[size, size], arch="tiny_linear", test_accuracy=0.9,
                     val_accuracy=0.9, test_size=10, opset=17, name=name, extra={"seed": seed})
    write_card(model, card)
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
