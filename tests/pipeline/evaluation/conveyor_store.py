"""A prediction store of a conveyor camera with given truths and predictions, and rendered belt images.

For the cost and baseline tests: frame ``i`` has truth ``truth[i]`` and each role's prediction ``preds[role][i]``
(probabilities: ``conf`` on the predicted class, the rest spread evenly); frame ``i`` is sampled with probability
``pi[i]`` (drawn with ``seed``), recorded as its inclusion probability, and labelled with its truth; with ``image_dir`` its JPEG (a belt, with a parcel or an
object on it unless the truth is ``empty_belt``) is written there and recorded as the sample's ``image_path``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline.config import RunConfig
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import Label, Prediction

T0 = 1_700_000_000.0
RUN_ID = "conveyor"


def belt_image(kind: str, rng: np.random.Generator, size: int = 96, camera_seed: int = 7) -> np.ndarray:
    """A BGR belt frame: the camera's fixed belt texture and per-frame sensor noise, with a brown parcel and its white
    label (``parcel*``/``label_missing``: no label), a small dark object (``foreign_object``) or nothing (``empty_belt``)."""
    texture = np.random.default_rng(camera_seed).normal(0, 6, (size, size, 1))
    img = np.clip(90 + texture + rng.normal(0, 3, (size, size, 1)), 0, 255).repeat(3, axis=2).astype(np.uint8)
    if kind == "empty_belt":
        return img
    if kind == "foreign_object":
        x, y = rng.integers(10, size - 30, 2)
        cv2.rectangle(img, (int(x), int(y)), (int(x) + 18, int(y) + 8), (30, 30, 35), -1)
        return img
    w, h = (int(v) for v in rng.integers(size // 3, size // 2, 2))
    x, y = (int(v) for v in rng.integers(5, size - max(w, h) - 5, 2))
    cv2.rectangle(img, (x, y), (x + w, y + h), (60, 110, 170), -1)
    if kind != "label_missing":
        cv2.rectangle(img, (x + w // 4, y + h // 4), (x + w // 2, y + h // 2), (245, 245, 245), -1)
    return img


def build(url: str, classes: Sequence[str], truth: Sequence[str], preds: dict[str, Sequence[str]], pi: float | Sequence[float] = 1.0,
          image_dir: Path | None = None, conf: float = 0.8, seed: int = 0, cameras: Sequence[str] = ("cam1",)) -> PredictionStore:
    store = PredictionStore(url)
    n = len(truth)
    pis = [float(pi)] * n if isinstance(pi, (int, float)) else [float(p) for p in pi]
    models = {"incumbent": "inc:1", "shadow": "sh:2"}
    store.begin_run(RUN_ID, models["incumbent"], models["shadow"] if "shadow" in preds else None, list(classes),
                    RunConfig().model_dump(mode="json"))
    rng = np.random.default_rng(seed)
    frames, out, samples, labels = [], [], [], []
    C = len(classes)
    for i in range(n):
        cam = cameras[i % len(cameras)]
        fid = f"{RUN_ID}:{cam}:{i}"
        frames.append(FrameRecord(fid, RUN_ID, cam, i, T0 + i, f"src#{i}", 96, 96, 100.0, 20.0, 50.0, 2.0))
        for role, pr in preds.items():
            p = np.full(C, (1 - conf) / (C - 1), dtype=np.float32)
            p[classes.index(pr[i])] = conf
            out.append(Prediction(fid, cam, role, models[role], p, pr[i], 1.0))
        if pis[i] > 0 and (pis[i] >= 1 or rng.random() < pis[i]):  # Poisson sampling with the recorded probability
            path = f"samples/{i}.jpg"
            if image_dir is not None:
                path = str(image_dir / f"{cam}_{i}.jpg")
                cv2.imwrite(path, belt_image(truth[i], rng, camera_seed=cameras.index(cam)))
            samples.append(SampleRecord(fid, cam, "uniform", pis[i], path, T0 + i))
            labels.append(Label(fid, truth[i], "ann1", T0 + 10_000 + i, "simulated"))
    store.write_batch(frames, out, (), samples)
    store.add_labels(labels)
    return store
