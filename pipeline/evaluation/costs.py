"""What a model's errors cost: expected cost per 1,000 frames with an interval, and the confusions behind it.

Pure functions: a :class:`~pipeline.config.CostConfig` and numpy arrays in, :class:`CostMatrix` and
:class:`~pipeline.evaluation.result.CostFigures` out. The evaluator (:mod:`pipeline.evaluation.evaluator`) calls them
for every model and baseline of every window.

The cost of a frame is ``C[true class, predicted class]``: the configured error cost off the diagonal (pairs not
listed: ``default_error_cost``; a prediction naming no class costs ``default_error_cost`` too), minus the value of a
correct decision on the diagonal (``value_correct``). Its stream mean is estimated like the accuracy
(``EvalConfig.estimator``):

* classical: the Hajek mean over the labelled frames (plain mean for equal inclusion probabilities),
  :func:`pipeline.evaluation.stats.bounded_mean`;
* model-assisted (same conditions as the accuracy: ``proxy_min_labels`` labelled frames, all from the sampler):
  :func:`pipeline.evaluation.ppi.model_assisted_mean` over every usable frame, with the model's own expected cost
  ``sum_k p_k C(k, predicted)`` (its calibrated probabilities, no label) as the control variate. A proxy that uses
  no label needs no cross-fitting; a miscalibrated one only costs width (the power tuning falls back to the
  classical estimate).

A frame's cost lies in ``[min C, max C]``, not in [0, 1]: both estimators work on the cost scaled to [0, 1] by that
range and map the interval back; the interval is Agresti-Coull-style (``z^2/2`` pseudo-frames at each end of the
range), so a sample that has not yet seen the expensive error still leaves room for it. Coverage is checked by
simulation in ``tests/pipeline/evaluation/test_costs.py`` (both estimators, equal and unequal inclusion
probabilities). Figures are per 1,000 frames: ``1000 x`` the per-frame mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.config import CostConfig
from pipeline.evaluation import ppi, stats
from pipeline.evaluation.result import CostDriver, CostFigures, Estimate
from pipeline.types import ConfigError

__all__ = ["CostMatrix", "PER", "StreamCosts", "cost_drivers", "cost_figures", "cost_matrix", "expected_cost", "frame_costs", "per_1k",
           "predictor_bounds"]

PER = 1000.0  # figures are per this many frames
NO_CLASS = "<none>"  # the column of a prediction that names no class


@dataclass(frozen=True)
class CostMatrix:
    """``matrix[t, p]``: the cost of predicting class ``p`` on a frame of class ``t`` (diagonal: minus the value of a
    correct decision); one more column (index ``-1`` / ``len(classes)``) for a prediction naming no class."""

    classes: tuple[str, ...]
    matrix: np.ndarray  # (C, C + 1)
    currency: str

    @property
    def low(self) -> float:
        return float(self.matrix.min())

    @property
    def high(self) -> float:
        return float(self.matrix.max())

    @property
    def span(self) -> float:
        return self.high - self.low

    @property
    def bounds(self) -> tuple[float, float]:
        return self.low, self.high


def cost_matrix(config: CostConfig, classes: Sequence[str]) -> CostMatrix:
    """The configured costs as a matrix over the model's ``classes``.

    Raises :class:`ConfigError` naming the first class in ``config`` that is not one of ``classes`` (and the valid
    ones), or when every cost is the same (nothing to weigh: the range is zero).
    """
    names = list(classes)
    index = {c: i for i, c in enumerate(names)}

    def check(name: str, where: str) -> int:
        if name not in index:
            raise ConfigError(f"costs.{where}: unknown class {name!r} (the model's classes: {', '.join(names)})")
        return index[name]

    C = len(names)
    m = np.full((C, C + 1), float(config.default_error_cost))
    np.fill_diagonal(m[:, :C], 0.0)
    for t, row in config.matrix.items():
        i = check(t, "matrix")
        for p, cost in row.items():
            m[i, check(p, f"matrix[{t!r}]")] = float(cost)
    for c, value in config.value_correct.items():
        i = check(c, "value_correct")
        m[i, i] = -float(value)
    if not float(m.max()) > float(m.min()):
        raise ConfigError(f"costs: every decision costs {float(m.max()):g}; give error costs (matrix, default_error_cost) "
                          "or values of correct decisions (value_correct)")
    return CostMatrix(tuple(names), m, config.currency)


def frame_costs(cm: CostMatrix, truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(n,) cost of each frame from its true and predicted class indices (``pred`` -1: a prediction naming no class)."""
    t = np.asarray(truth, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if t.shape != p.shape:
        raise ValueError(f"truth and pred differ in shape: {t.shape} vs {p.shape}")
    if t.size and (t.min() < 0 or t.max() >= len(cm.classes)):
        raise ValueError(f"truth must be class indices in [0, {len(cm.classes)}), got {t.min()}..{t.max()}")
    return cm.matrix[t, np.where(p >= 0, p, len(cm.classes))]


def expected_cost(cm: CostMatrix, probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """(N,) a model's own expected cost of each frame: ``sum_k probs[k] * C(k, pred)`` (no label needed)."""
    p = np.asarray(probs, dtype=np.float64)
    col = np.where(np.asarray(pred) >= 0, np.asarray(pred), len(cm.classes))
    if p.ndim != 2 or p.shape[1] != len(cm.classes) or p.shape[0] != col.shape[0]:
        raise ValueError(f"probs must be ({col.shape[0]}, {len(cm.classes)}), got {p.shape}")
    return np.einsum("nk,kn->n", p, cm.matrix[:, col])


def per_1k(e: Estimate) -> Estimate:
    """A per-frame estimate as per-1,000-frame figures (value, bounds and standard error scaled)."""
    return Estimate(PER * e.value, PER * e.low, PER * e.high, PER * e.se, e.n, e.n_eff, e.method)


def cost_drivers(cm: CostMatrix, truth: np.ndarray, pred: np.ndarray, inclusion_prob: np.ndarray | None = None,
                 top: int = 5) -> tuple[CostDriver, ...]:
    """The confusions that make up most of the error cost, largest first (at most ``top``).

    Each pair's contribution per 1,000 frames is its inverse-probability-weighted share of the labelled frames times
    its cost; ``share`` is that contribution over the sum of every error's contribution (correct decisions, whose
    cost is minus their value, are not drivers).
    """
    t = np.asarray(truth, dtype=np.int64)
    p = np.asarray(pred, dtype=np.int64)
    if t.size == 0:
        return ()
    w = np.ones(t.shape[0]) if inclusion_prob is None else 1.0 / np.asarray(inclusion_prob, dtype=np.float64)
    C = len(cm.classes)
    col = np.where(p >= 0, p, C)
    err = t != col
    if not err.any():
        return ()
    cell = t * (C + 1) + col
    wsum = np.bincount(cell[err], weights=w[err], minlength=C * (C + 1))
    count = np.bincount(cell[err], minlength=C * (C + 1))
    contrib = PER * wsum * cm.matrix.ravel() / float(w.sum())
    total = float(contrib[contrib > 0].sum())
    if not total > 0:
        return ()
    names = list(cm.classes) + [NO_CLASS]
    order = [int(k) for k in np.argsort(-contrib, kind="stable") if contrib[k] > 0][:top]
    return tuple(CostDriver(names[k // (C + 1)], names[k % (C + 1)], int(count[k]), float(contrib[k]), float(contrib[k] / total))
                 for k in order)


@dataclass(frozen=True)
class StreamCosts:
    """What the model-assisted cost estimate needs on every usable frame of the window: the frame's cost (read where
    ``labelled``), whether it is labelled, its inclusion probability (read where labelled) and the proxy (the
    model's expected cost, :func:`expected_cost`)."""

    values: np.ndarray
    labelled: np.ndarray
    pi: np.ndarray
    proxy: np.ndarray


def predictor_bounds(cm: CostMatrix, predictions: Sequence[int] | None = None) -> tuple[float, float]:
    """The range of a frame's cost for a predictor that only ever predicts ``predictions`` (class indices; None: any
    class, or none): the smallest and largest entry of those columns of the matrix. A baseline that always says one
    class can never make another class's expensive error, and its interval need not leave room for it."""
    if predictions is None:
        return cm.bounds
    cols = cm.matrix[:, sorted({int(k) for k in predictions})]
    return float(cols.min()), float(cols.max())


def cost_figures(cm: CostMatrix, truth: np.ndarray, pred: np.ndarray, inclusion_prob: np.ndarray | None = None,
                 alpha: float = 0.05, stream: StreamCosts | None = None, top: int = 5,
                 bounds: tuple[float, float] | None = None) -> CostFigures:
    """Expected cost per 1,000 frames of one model (or baseline) on its labelled frames.

    ``truth``/``pred``: (n,) class indices of the labelled frames (``pred`` -1: no class); ``inclusion_prob``: their
    inclusion probabilities (None: equal). ``stream``: the model-assisted inputs over every usable frame (None: the
    classical estimate). ``bounds``: the range a frame's cost can take for this predictor (:func:`predictor_bounds`;
    None: the whole matrix's). See the module docstring.
    """
    values = frame_costs(cm, truth, pred)
    pi = None if inclusion_prob is None else np.asarray(inclusion_prob, dtype=np.float64)
    lo, hi = bounds if bounds is not None else cm.bounds
    drivers = cost_drivers(cm, truth, pred, pi, top)
    if not hi > lo:  # every decision this predictor can make costs the same: no uncertainty
        method = f"every decision this predictor can make costs {lo:g} {cm.currency}"
        est = per_1k(Estimate(lo, lo, lo, 0.0, int(values.size), float(values.size), method))
        return CostFigures(est, cm.currency, method, float(values.size), drivers)
    classical = stats.bounded_mean(values, pi, alpha, (lo, hi))
    if stream is None or not np.asarray(stream.labelled).any():
        method = ("Hajek (inverse-probability weighted) mean" if classical.method.startswith("hajek") else "mean") + \
            " of the labelled frames' costs; Agresti-Coull-style interval on the cost range"
        est = per_1k(Estimate(classical.value, classical.low, classical.high, classical.se, classical.n, classical.n_eff, method))
        return CostFigures(est, cm.currency, method, classical.n_eff, drivers)
    r = ppi.model_assisted_mean(stream.values, stream.labelled, stream.pi, stream.proxy, alpha, (lo, hi))
    lab = np.asarray(stream.labelled, dtype=bool)
    y, w = np.asarray(stream.values, dtype=np.float64)[lab], 1.0 / np.asarray(stream.pi, dtype=np.float64)[lab]
    mean = float((w * y).sum() / w.sum())
    s2 = float((w * (y - mean) ** 2).sum() / w.sum())
    n_eff = s2 / r.se**2 if r.se > 0 and math.isfinite(r.se) else float(r.n)
    method = (f"model-assisted (active PPI++: {r.n} labels + {r.N} frames' predictions; proxy: the model's own expected "
              "cost under its calibrated probabilities); Agresti-Coull-style interval on the cost range")
    est = per_1k(Estimate(r.value, r.low, r.high, r.se, r.n, n_eff, method))
    classical_1k = per_1k(classical)
    return CostFigures(est, cm.currency, method, n_eff, drivers, classical_1k)
