"""A prediction store with known contents for evaluator tests, and tiny ONNX files carrying model cards.

Frame ``i`` (``0 <= i < n``), one second apart from ``T0``, on camera ``camA`` (even i) or ``camB`` (odd i):

* truth: ``CLASSES[i % 3]``;
* incumbent ``inc:1`` is wrong when ``i % 5 == 0``, its predictions on frames in ``degraded`` are degraded (stale);
* shadow ``sh:2`` is wrong when ``i % 7 == 0`` and absent when ``i % 10 == 9`` (absent everywhere with ``shadow=False``);
* a right prediction has confidence 0.9, a wrong one 0.6 (so an ATC threshold of 0.75 counts the right ones);
  with ``shift_after`` set, the incumbent's probabilities after that frame are flatter (0.5) and ``camA``'s
  brightness jumps — a drift the tests must see;
* sampled frames (``i % 4 == 0`` on camA, ``i % 8 == 3`` on camB) carry inclusion probability ``pi(i)`` (0.25 by default) and one label (the
  truth) by ``ann1``; frame 12 is labelled ``unsure`` only; frames with ``i % 20 == 0`` get a second label by
  ``ann2`` that agrees, except on frame 40 (another class: a tie, excluded); frame 24 gets ``ann2``'s ``unsure``
  (the majority of non-unsure labels still decides); ``extra_label`` adds an imported label on frame 5, which
  has no sample row.

:func:`expected` recomputes the joined rows in plain Python, so tests compare against an independent count.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.config import AlertConfig, ModelConfig, RunConfig
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import Label, Prediction

CLASSES = ["box", "pallet", "empty"]
T0 = 1_700_000_000.0
RUN_ID = "run1"


def write_model(path: Path, name: str, version: str, test_accuracy: float | None, test_size: int, atc_threshold: float | None = None) -> Path:
    """A tiny contract-following ONNX classifier whose card says ``name:version``, offline accuracy and ATC threshold."""
    import onnx

    from pipeline.modelcard import read_card, write_card
    from tests.helpers.onnx_models import make_tiny_classifier

    make_tiny_classifier(path, CLASSES, name=name, version=version, test_accuracy=test_accuracy)
    card = read_card(path)
    card.test_size = test_size
    card.atc_threshold = atc_threshold
    model = onnx.load(str(path))
    write_card(model, card)
    onnx.save(model, str(path))
    return path


def truth(i: int) -> str:
    return CLASSES[i % 3]


def inc_correct(i: int) -> bool:
    return i % 5 != 0


def sh_correct(i: int) -> bool:
    return i % 7 != 0


def sampled(i: int) -> bool:
    return i % 4 == 0 or i % 8 == 3


def has_shadow(i: int) -> bool:
    return i % 10 != 9


def _probs(correct_cls: int, right: bool, flat: bool = False) -> tuple[np.ndarray, str]:
    pred = correct_cls if right else (correct_cls + 1) % 3
    top = 0.5 if flat else (0.9 if right else 0.6)
    p = np.full(3, (1 - top) / 2, dtype=np.float32)
    p[pred] = top
    return p, CLASSES[pred]


@dataclass
class StoreSpec:
    n: int = 200
    degraded: tuple[int, ...] = (8, 16)
    extra_label: bool = False
    shift_after: int | None = None
    pi: Callable[[int], float] = lambda i: 0.25
    incumbent_uri: str | None = None
    shadow_uri: str | None = None
    alerts: AlertConfig | None = None
    resolved: dict | None = None  # the runner's ``_resolved`` section of the stored config: {role: {"path": ...}}
    shadow: bool = True  # False: the run records a shadow model but no shadow predictions


def labels_for(i: int, spec: StoreSpec) -> list[tuple[str, str]]:
    """(annotator, label) pairs of frame i."""
    out: list[tuple[str, str]] = []
    if sampled(i):
        out.append(("ann1", UNSURE_ if i == 12 else truth(i)))
        if i % 20 == 0:
            out.append(("ann2", CLASSES[(i + 1) % 3] if i == 40 else truth(i)))
        if i == 24:
            out.append(("ann2", UNSURE_))
    if spec.extra_label and i == 5:
        out.append(("importer", truth(i)))
    return out


UNSURE_ = "unsure"


def build_store(url: str, spec: StoreSpec | None = None) -> PredictionStore:
    spec = spec or StoreSpec()
    store = PredictionStore(url)
    cfg = RunConfig(
        incumbent=ModelConfig(uri=spec.incumbent_uri) if spec.incumbent_uri else None,
        shadow=ModelConfig(uri=spec.shadow_uri) if spec.shadow_uri else None,
        alerts=spec.alerts or AlertConfig(),
    )
    doc = cfg.model_dump(mode="json")
    if spec.resolved:
        doc["_resolved"] = spec.resolved
    store.begin_run(RUN_ID, "inc:1", "sh:2", CLASSES, doc)
    frames, preds, samples, labels = [], [], [], []
    for i in range(spec.n):
        cam = "camA" if i % 2 == 0 else "camB"
        fid = f"{RUN_ID}:{cam}:{i}"
        shifted = spec.shift_after is not None and i >= spec.shift_after
        bright = 100.0 + (i % 3) + (60.0 if shifted and cam == "camA" else 0.0)
        frames.append(FrameRecord(fid, RUN_ID, cam, i, T0 + i, f"src#{i}", 32, 32, bright, 20.0 + (i % 2), 50.0 + (i % 4), 2.0 + 0.1 * (i % 3)))
        t = CLASSES.index(truth(i))
        p, lab = _probs(t, inc_correct(i), flat=shifted)
        preds.append(Prediction(fid, cam, "incumbent", "inc:1", p, lab, 1.0, "stale" if i in spec.degraded else None))
        if spec.shadow and has_shadow(i):
            p, lab = _probs(t, sh_correct(i))
            preds.append(Prediction(fid, cam, "shadow", "sh:2", p, lab, 2.0))
        if sampled(i):
            samples.append(SampleRecord(fid, cam, "uniform", spec.pi(i), f"samples/{i}.jpg", T0 + i, double_label=i % 20 == 0))
        for k, (ann, lab) in enumerate(labels_for(i, spec)):
            labels.append(Label(fid, lab, ann, T0 + 1000 + i + 0.1 * k, "simulated"))
    store.write_batch(frames, preds, (), samples)
    store.add_labels(labels)
    return store


@dataclass
class Row:
    i: int
    camera: str
    truth: str
    inc_ok: bool | None  # None: no usable (non-degraded) incumbent prediction
    sh_ok: bool | None
    pi: float


def expected(spec: StoreSpec | None = None, lo: int = 0, hi: int | None = None) -> dict:
    """Plain-Python join of frames ``lo <= i < hi``: usable rows and exclusion counts."""
    spec = spec or StoreSpec()
    hi = spec.n if hi is None else hi
    rows, excluded = [], {"unsure": 0, "tie": 0}
    for i in range(lo, hi):
        labs = [lab for _, lab in labels_for(i, spec)]
        if not labs:
            continue
        votes = [lab for lab in labs if lab != UNSURE_]
        if not votes:
            excluded["unsure"] += 1
            continue
        if len(set(votes)) > 1 and votes.count(votes[0]) * 2 == len(votes):
            excluded["tie"] += 1
            continue
        t = max(set(votes), key=votes.count)
        rows.append(Row(
            i, "camA" if i % 2 == 0 else "camB", t,
            None if i in spec.degraded else inc_correct(i),
            sh_correct(i) if spec.shadow and has_shadow(i) else None,
            spec.pi(i) if sampled(i) else 1.0,
        ))
    return {"rows": rows, "excluded": excluded}
