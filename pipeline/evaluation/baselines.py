"""The baseline guard: is the model better than something that needs no model at all?

Every evaluation also scores two baselines on the same labelled frames as the models (the evaluator,
:mod:`pipeline.evaluation.evaluator`, calls these functions; :class:`~pipeline.config.BaselineConfig` sets them):

* ``majority``: always the most common class of the **training set** -- from the incumbent's model card when it
  records the training class counts (``card.extra["class_counts"]``, class -> images), else the most common class of
  the evaluated labels (inverse-probability weighted), with a note saying so (chosen on the very labels it is scored
  on, that baseline is a little optimistic: the guard errs towards alerting).
* ``rule``: by default a frame-difference "empty belt vs something on it" rule (:class:`FrameDifferenceRule`): per
  camera, a background = the per-pixel median of that camera's sampled JPEGs at ``image_size`` x ``image_size``; a
  frame whose mean absolute difference from it is above a threshold chosen without labels (Otsu on the camera's
  differences) shows something and is called the most common non-empty training class, otherwise the empty class.
  Two groups, one threshold: an object much smaller than a parcel (a glove) may fall on the empty side; the rule
  knows only "empty" and "the usual parcel", so such a frame is wrong either way.
  Or a user rule, a Python entry point ``"package.module:function"`` called as ``function(image_bgr, camera_id)``
  and returning a class name (:func:`load_rule`). The rule sees the sampled JPEG, so it scores labelled frames that
  have one; its figures are classical (it has no prediction on frames that were not sampled, which the
  model-assisted estimates would need).

The guard (:func:`compare`): a model is *significantly better than the baselines* when, against every baseline, the
one-sided ``1 - alpha`` lower bound of (model - baseline) on the frames both scored -- accuracy, or cost per 1,000
frames with ``decide_on="cost"`` -- is above 0 (an intersection-union test: each comparison at level ``alpha``).
The baseline alert (:func:`pipeline.evaluation.alerts.check_alerts`) fires exactly when it is not.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import cv2
import numpy as np

from pipeline.evaluation import stats
from pipeline.evaluation.costs import PER, CostMatrix, frame_costs
from pipeline.evaluation.result import BaselineComparison, Estimate
from pipeline.types import ConfigError

__all__ = [
    "MAJORITY", "RULE", "FrameDifferenceRule", "MajorityChoice", "Rule", "apply_rule", "compare", "compare_accuracy",
    "compare_cost", "load_rule", "majority_class", "mean_abs_difference", "otsu_threshold", "read_image", "read_small",
]

MAJORITY, RULE = "majority", "rule"
Rule = Callable[[np.ndarray, str], str]


# --------------------------------------------------------------------------------------------------
# majority class
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MajorityChoice:
    """The majority class (``index`` into the classes), the most common class other than ``exclude`` (``busy``, for the
    frame-difference rule; None when there is none), where they came from and a note when not from training."""

    index: int
    busy: int | None
    source: str
    note: str | None


def majority_class(classes: Sequence[str], card_counts: Mapping[str, float] | None, truth: np.ndarray,
                   inclusion_prob: np.ndarray | None = None, exclude: str | None = None) -> MajorityChoice:
    """The training set's majority class from ``card_counts`` (class -> training images), else the
    inverse-probability-weighted majority of ``truth`` (class indices of the labelled frames, -1 = none).

    Ties go to the class listed first. ``exclude``: a class left out when choosing ``busy`` (the empty class).
    """
    names = list(classes)
    counts = None
    if card_counts:
        counts = np.array([float(card_counts.get(c, 0) or 0) for c in names])
        if not counts.sum() > 0:
            counts = None
    if counts is not None:
        source, note = "the training set (model card class counts)", None
    else:
        t = np.asarray(truth, dtype=np.int64)
        ok = t >= 0
        w = np.ones(int(ok.sum())) if inclusion_prob is None else 1.0 / np.asarray(inclusion_prob, dtype=np.float64)[ok]
        counts = np.bincount(t[ok], weights=w, minlength=len(names)).astype(np.float64)
        source = "the evaluated labels"
        note = ("majority-class baseline: the model card records no training class counts, so the majority (and the "
                "rule's non-empty) class comes from the evaluated labels themselves (an optimistic baseline)")
    index = int(np.argmax(counts))
    busy_counts = counts.copy()
    if exclude in names:
        busy_counts[names.index(exclude)] = -1.0
    busy = int(np.argmax(busy_counts)) if (busy_counts >= 0).any() and len(names) > (1 if exclude in names else 0) else None
    return MajorityChoice(index, busy, source, note)


# --------------------------------------------------------------------------------------------------
# the frame-difference rule
# --------------------------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray | None:
    """A JPEG as a uint8 BGR array (what a user rule gets); None when it cannot be read."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def read_small(path: str | Path, size: int) -> np.ndarray | None:
    """A JPEG as float32 ``size`` x ``size`` x 3 (BGR, area-resized); None when it cannot be read."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        return None
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def mean_abs_difference(image: np.ndarray, background: np.ndarray) -> float:
    """Mean absolute difference of two images of the same shape, in grey levels (0..255)."""
    return float(np.mean(np.abs(np.asarray(image, np.float32) - np.asarray(background, np.float32))))


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold on 1-D values: the split of the sorted values that maximises the between-group variance,
    placed halfway between the two values it falls between (values above it are the upper group). Exact on the
    values themselves; OpenCV's ``THRESH_OTSU`` works on 256 grey levels and returns the *lowest* level of the gap,
    which puts the threshold on the edge of the lower group (an empty frame slightly noisier than those seen would
    be called busy)."""
    v = np.sort(np.asarray(values, dtype=np.float64).ravel())
    if v.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    if not v[-1] > v[0]:
        return float(v[-1])
    n = v.size
    k = np.arange(1, n)  # the lower group is v[:k]
    c = np.cumsum(v)[:-1]
    w0, w1 = k / n, (n - k) / n
    m0, m1 = c / k, (v.sum() - c) / (n - k)
    between = w0 * w1 * (m0 - m1) ** 2
    between[v[1:] == v[:-1]] = -1.0  # no split between equal values
    j = int(np.argmax(between))
    return float((v[j] + v[j + 1]) / 2.0)


class FrameDifferenceRule:
    """"Empty belt vs something on it" from how much a frame differs from its camera's background.

    ``fit({camera: [small images]})`` builds each camera's background (per-pixel median) and threshold (Otsu on the
    camera's differences; no labels); ``predict(image, camera)`` gives ``busy`` when the difference is above the
    threshold, else ``empty`` (class indices), or -1 for a camera it has no background for (fewer than
    ``min_frames`` images).
    """

    def __init__(self, empty: int, busy: int, min_frames: int = 3):
        self.empty, self.busy, self.min_frames = int(empty), int(busy), int(min_frames)
        self.background: dict[str, np.ndarray] = {}
        self.threshold: dict[str, float] = {}

    def fit(self, images: Mapping[str, Sequence[np.ndarray]]) -> "FrameDifferenceRule":
        for cam, imgs in images.items():
            if len(imgs) < self.min_frames:
                continue
            bg = np.median(np.stack(imgs), axis=0)
            self.background[cam] = bg
            self.threshold[cam] = otsu_threshold(np.array([mean_abs_difference(im, bg) for im in imgs]))
        return self

    def predict(self, image: np.ndarray, camera: str) -> int:
        bg = self.background.get(camera)
        if bg is None:
            return -1
        return self.busy if mean_abs_difference(image, bg) > self.threshold[camera] else self.empty


# --------------------------------------------------------------------------------------------------
# a user rule
# --------------------------------------------------------------------------------------------------
def load_rule(spec: str) -> Rule:
    """The function an entry point ``"package.module:function"`` names (one-line :class:`ConfigError` otherwise)."""
    module, _, name = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except Exception as e:  # a user module may fail on import with anything
        raise ConfigError(f"baseline rule {spec!r}: cannot import {module!r} ({e.__class__.__name__}: {e})") from None
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ConfigError(f"baseline rule {spec!r}: module {module!r} has no {name!r}")
    if not callable(obj):
        raise ConfigError(f"baseline rule {spec!r}: {name!r} is not callable")
    return obj


def apply_rule(rule: Rule, spec: str, image: np.ndarray, camera: str, classes: Sequence[str], frame_id: str = "") -> int:
    """The class index ``rule(image_bgr, camera_id)`` names; a rule that raises or returns something that is not one
    of ``classes`` is a one-line :class:`ConfigError` naming the rule, the frame and the value."""
    try:
        out = rule(image, camera)
    except Exception as e:  # the user's code may raise anything
        raise ConfigError(f"baseline rule {spec!r} raised {e.__class__.__name__}: {e} (frame {frame_id}, camera {camera})") from None
    if not isinstance(out, str) or out not in classes:
        raise ConfigError(f"baseline rule {spec!r} returned {out!r} for frame {frame_id}: expected one of {', '.join(classes)}")
    return list(classes).index(out)


# --------------------------------------------------------------------------------------------------
# the guard
# --------------------------------------------------------------------------------------------------
def _one_sided(alpha: float) -> float:
    """The two-sided level whose lower bound is a one-sided ``1 - alpha`` bound."""
    return min(2.0 * alpha, 0.999)


def compare_accuracy(truth: np.ndarray, model_pred: np.ndarray, base_pred: np.ndarray, inclusion_prob: np.ndarray | None,
                     alpha: float, baseline: str) -> BaselineComparison:
    """Model minus baseline accuracy on the same labelled frames: the paired test of
    :func:`pipeline.evaluation.stats.paired_test` (Agresti-Min, or the weighted Wald difference for unequal
    probabilities) at ``2 alpha``, whose lower bound is one-sided at ``alpha``."""
    t = np.asarray(truth)
    cm, cb = np.asarray(model_pred) == t, np.asarray(base_pred) == t
    w = None
    if inclusion_prob is not None and t.size and float(np.ptp(inclusion_prob)) > 1e-12:
        w = 1.0 / np.asarray(inclusion_prob, dtype=np.float64)
    r = stats.paired_test(cb, cm, weights=w, alpha=_one_sided(alpha))
    d = r.diff
    low = d.low if math.isfinite(d.low) else -1.0
    diff = Estimate(d.value, d.low, d.high, d.se, d.n, d.n_eff, d.method)
    return BaselineComparison(baseline, "accuracy", diff, float(low), alpha, bool(low > 0), int(t.size),
                              f"paired {d.method} difference (model - baseline accuracy), one-sided lower bound at alpha={alpha:g}")


def compare_cost(cm: CostMatrix, truth: np.ndarray, model_pred: np.ndarray, base_pred: np.ndarray,
                 inclusion_prob: np.ndarray | None, alpha: float, baseline: str) -> BaselineComparison:
    """Baseline minus model cost per 1,000 frames on the same labelled frames (positive: the model is cheaper): the
    per-frame difference scaled to [-1, 1] by the cost range, mapped to [0, 1] and estimated by
    :func:`pipeline.evaluation.stats.bounded_mean` at ``2 alpha`` (one-sided lower bound at ``alpha``)."""
    d = (frame_costs(cm, truth, base_pred) - frame_costs(cm, truth, model_pred)) / cm.span
    e = stats.bounded_mean((d + 1.0) / 2.0, inclusion_prob, _one_sided(alpha), (0.0, 1.0))
    scale = 2.0 * cm.span * PER
    to = lambda x: scale * x - cm.span * PER  # noqa: E731  [0, 1] -> cost difference per 1,000 frames
    diff = Estimate(to(e.value), to(e.low), to(e.high), scale * e.se, e.n, e.n_eff, e.method)
    low = diff.low if math.isfinite(diff.low) else -cm.span * PER
    return BaselineComparison(baseline, "cost", diff, float(low), alpha, bool(low > 0), int(np.asarray(truth).size),
                              f"paired difference of per-frame costs (baseline - model) per 1,000 frames, {e.method}, "
                              f"one-sided lower bound at alpha={alpha:g}")


def compare(comparisons: Sequence[BaselineComparison]) -> BaselineComparison | None:
    """The comparison with the smallest lower bound (the baseline the model beats by least), its
    ``significantly_better`` set to whether the model beats *every* baseline; None without comparisons."""
    if not comparisons:
        return None
    worst = min(comparisons, key=lambda c: c.low)
    every = all(c.significantly_better for c in comparisons)
    return BaselineComparison(worst.baseline, worst.on, worst.diff, worst.low, worst.alpha, every, worst.n, worst.method)
