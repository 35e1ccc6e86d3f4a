"""Model-assisted estimation: every frame's predictions work for the labels (active PPI++, cross-fitted proxy).

Pure functions: numpy arrays in, numbers and small dataclasses out.

What it estimates
-----------------
The mean ``theta`` of a per-frame quantity ``y`` over a stream of ``N`` frames -- "the incumbent is right" (its
production accuracy), or "challenger right - champion right" (the paired difference) -- when ``y`` is known only
on the frames a Poisson sampler drew for labels, each with its recorded inclusion probability ``pi_i``
(:mod:`pipeline.sampling`). Every frame, labelled or not, also carries what the models said about it.

The estimator (active inference, Zrnic & Candes, ICML 2024; power tuning as in PPI++, Angelopoulos, Duchi & Zrnic
2023): with ``r_i = 1{labelled} / pi_i`` and control variates ``h_i`` (a constant and a *proxy* ``f_i`` of y)::

    phi_i   = y_i r_i + lambda' h_i (1 - r_i)
    theta^  = mean(phi)                      se = sd(phi) / sqrt(N)        interval: theta^ +- z se

``E[r_i | frame] = 1`` whatever the frame, so ``h_i (1 - r_i)`` has mean zero for *any* proxy that does not
depend on the frame's own draw, and ``theta^`` is unbiased for every ``lambda``. ``lambda`` is tuned to minimise
the variance (the regression of ``y r`` on ``h (1 - r)``): a good proxy buys a narrow interval, a useless or
miscalibrated one (under shift: confident and wrong) gets a ``lambda`` near the constant-only solution, which is the
classical inverse-probability (Hajek-like) estimate -- the fall-back happens on its own, from the data.

The proxy (:func:`crossfit_proxy`) is a small logistic regression of "correct" on what is known on every frame
(:func:`correctness_features`: the model's calibrated confidence and margin, its predicted class, agreement with the
other model, the frame's image statistics). **Cross-fitting** keeps it honest: every frame (labelled or not) belongs to one of ``K``
folds, and its proxy value comes from the regression fitted on the labelled frames of the *other* folds, so no
frame's label or draw enters its own proxy (Zrnic & Candes 2024, "Cross-prediction-powered inference").

A bounded quantity that is not 0/1 (a frame's cost, :mod:`pipeline.evaluation.costs`) goes through
:func:`model_assisted_mean`: the same estimator on the value scaled to [0, 1], with a proxy that needs no labels
(the model's own expected cost) and an Agresti-Coull-style interval.

The paired challenger - champion difference is *not* estimated here: a model-assisted interval for it (the
difference is 0 without a label where the two models agree; PPI++ on the disagreements) was tried and did not
keep its coverage in simulation under every sampling strategy (few labelled disagreements carrying heavy weights),
so the evaluator keeps the classical paired test and the anytime-valid decision for it.

``n_eff``: the number of labels a uniform sample with a Wilson interval would need for the same width,
``p (1 - p) / se^2`` -- the labels the design and the proxy saved
(or cost) show as ``n_eff / n``. Coverage is checked by simulation in ``tests/pipeline/evaluation/test_ppi.py``
(every sampling strategy, with a proxy that is confident and wrong on 30% of frames), and the estimate agrees
with ``ppi_py.ppi_mean_ci`` where both apply (uniform sampling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import stats as _st

from pipeline.evaluation.stats import agresti_coull_at, wilson_at

FEATURES_BASE = ("logit_confidence", "margin", "has_other", "agrees_with_other")
MIN_LABELS_PER_FOLD = 5  # a fold's regression needs this many labelled frames of each outcome, else the constant


@dataclass(frozen=True)
class Proxy:
    """A cross-fitted proxy of "this prediction is correct" on every frame of a window.

    ``values``: (N,) in (0, 1); ``method``: how it was made; ``features``: the regression's inputs; ``folds``;
    ``labels``: labelled frames it was fitted on; ``auc``: how well the cross-fitted values rank the labelled
    frames' correctness (0.5 = no better than chance; NaN with one outcome only); ``brier``: their mean squared error.
    """

    values: np.ndarray
    method: str
    features: tuple[str, ...]
    folds: int
    labels: int
    auc: float
    brier: float


@dataclass(frozen=True)
class ActiveMean:
    """Result of :func:`active_mean`: ``value`` with a ``1 - alpha`` interval ``[low, high]``, its ``se``, the
    labelled frames ``n`` and the stream's frames ``N``, and the tuned ``lam`` (one per control variate)."""

    value: float
    low: float
    high: float
    se: float
    n: int
    N: int
    lam: tuple[float, ...]


# ------------------------------------------------------------------------------------------------------------------
# the proxy
# ------------------------------------------------------------------------------------------------------------------
CONFIDENCE_EDGES = (0.6, 0.8, 0.9, 0.97, 0.995)  # confidence bins of the proxy (as the neyman strata)


def correctness_features(probs: np.ndarray, other_pred: np.ndarray | None = None,
                         image_stats: Mapping[str, np.ndarray] | None = None,
                         other_probs: np.ndarray | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """What is known on every frame about whether a model is right, as a design matrix (no intercept).

    ``probs``: (N, C) the model's calibrated softmax; ``other_pred``: (N,) the other model's predicted class index
    (-1 where it has none); ``other_probs``: (N, C) the other model's softmax (NaN rows where it has none);
    ``image_stats``: name -> (N,) per-frame statistics (NaN where missing), standardised over the window (no labels
    used). Returns (X, feature names).

    The columns: the logit of the confidence and the margin; the confidence's bin (:data:`CONFIDENCE_EDGES`); the
    log-probability of every class; the predicted class, alone and times the confidence logit (a model is not equally
    right, nor equally calibrated, on every class, and a shift often hits one class harder); agreement with the other
    model, alone and times the confidence logit, and the other model's log-probability of this model's class; each
    image statistic, its square and its product with the confidence logit (a dark frame makes a sure model less
    right). A ridge-penalised logistic regression on them is the proxy (:func:`crossfit_proxy`);
    docs/label_efficiency.md (``shadowcam bench labels``) measures what it buys.
    """
    f = CorrectnessFeatures(probs, other_pred, image_stats, other_probs)
    return f.rows(slice(None)), f.names


class CorrectnessFeatures:
    """The design matrix of :func:`correctness_features`, built for any subset of rows on demand.

    What depends on the whole window (each image statistic's mean and sd, for standardising) is computed once here;
    every column is otherwise a function of its own row, so ``rows(idx)`` equals ``correctness_features(...)[0][idx]``
    bit for bit. :func:`crossfit_proxy` takes it instead of a matrix to keep memory flat on millions of frames
    (the full matrix is ~35 float64 columns: 1.4 GB at 5M frames).
    """

    def __init__(self, probs: np.ndarray, other_pred: np.ndarray | None = None, image_stats: Mapping[str, np.ndarray] | None = None,
                 other_probs: np.ndarray | None = None):
        p = np.asarray(probs)
        if p.ndim != 2 or p.shape[1] < 1:
            raise ValueError(f"probs must be (N, C), got shape {p.shape}")
        N, C = p.shape
        self.probs = p
        self.other_pred = None
        if other_pred is not None:
            o = np.asarray(other_pred)
            if o.shape != (N,):
                raise ValueError(f"other_pred must have shape ({N},), got {o.shape}")
            self.other_pred = o
        self.other_probs = None
        if other_probs is not None:
            q = np.asarray(other_probs)
            if q.shape != (N, C):
                raise ValueError(f"other_probs must have shape ({N}, {C}), got {q.shape}")
            self.other_probs = q
        self.stats: list[tuple[str, np.ndarray, float, float]] = []  # name, values, mean, sd over the window
        for k, v in (image_stats or {}).items():
            a = np.asarray(v, dtype=np.float64)
            if a.shape != (N,):
                raise ValueError(f"image_stats[{k!r}] must have shape ({N},), got {a.shape}")
            ok = np.isfinite(a)
            if ok.sum() < 2:
                continue
            self.stats.append((k, a, float(a[ok].mean()), float(a[ok].std())))
        names = list(FEATURES_BASE[:2]) + [f"confidence_bin_{k}" for k in range(1, len(CONFIDENCE_EDGES) + 1)]
        names += [f"log_prob_{c}" for c in range(C)]
        for c in range(1, C):
            names += [f"predicted_class_{c}", f"predicted_class_{c}_x_confidence"]
        if self.other_pred is not None:
            names += list(FEATURES_BASE[2:]) + ["agrees_x_confidence"]
        if self.other_probs is not None:
            names.append("other_log_prob_of_this_class")
        for k, _, _, _ in self.stats:
            names += [k, f"{k}_squared", f"{k}_x_confidence"]
        self.names = tuple(names)
        self.shape = (N, len(names))

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        """The feature rows ``idx`` (an index array, a boolean mask or a slice) as an (m, k) float64 matrix."""
        p = np.asarray(self.probs[idx], dtype=np.float64)
        n, C = p.shape
        top = np.sort(p, axis=1)
        conf = np.clip(top[:, -1], 1e-4, 1 - 1e-4)
        lc = np.log(conf / (1 - conf))
        margin = top[:, -1] - (top[:, -2] if C > 1 else 0.0)
        cols = [lc, margin]
        b = np.searchsorted(np.asarray(CONFIDENCE_EDGES), conf, side="right")
        for k in range(1, len(CONFIDENCE_EDGES) + 1):
            cols.append((b == k).astype(np.float64))
        for c in range(C):
            cols.append(np.log(np.clip(p[:, c], 1e-6, 1.0)))
        pred = p.argmax(axis=1)
        for c in range(1, C):
            cols += [(pred == c).astype(np.float64), (pred == c) * lc]
        if self.other_pred is not None:
            o = self.other_pred[idx]
            has = o >= 0
            agree = (has & (o == pred)).astype(np.float64)
            cols += [has.astype(np.float64), agree, agree * lc]
        if self.other_probs is not None:
            q = np.asarray(self.other_probs[idx], dtype=np.float64)
            mine = q[np.arange(n), pred]
            cols.append(np.where(np.isfinite(mine), np.log(np.clip(mine, 1e-6, 1.0)), 0.0))
        for _, a, mu, sd in self.stats:
            v = a[idx]
            zs = np.where(np.isfinite(v), (v - mu) / sd, 0.0) if sd > 0 else np.zeros(n)
            cols += [zs, zs * zs, zs * lc]
        return np.column_stack(cols) if cols else np.zeros((n, 0))


def fit_logistic(X: np.ndarray, y: np.ndarray, ridge: float = 1.0, iters: int = 50) -> np.ndarray:
    """Ridge-penalised logistic regression by Newton's method (IRLS); returns (k + 1,) coefficients, intercept
    first (not penalised). Small and dependency-free: the proxy is refitted once per fold and window."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, k = X.shape
    A = np.column_stack([np.ones(n), X])
    beta = np.zeros(k + 1)
    pbar = np.clip(y.mean(), 1e-3, 1 - 1e-3) if n else 0.5
    beta[0] = math.log(pbar / (1 - pbar))
    pen = np.full(k + 1, ridge)
    pen[0] = 0.0
    def objective(b: np.ndarray) -> float:  # penalised negative log-likelihood
        eta = A @ b
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * np.sum(pen * b * b))

    current = objective(beta)
    for _ in range(iters):
        eta = np.clip(A @ beta, -30, 30)
        mu = 1.0 / (1.0 + np.exp(-eta))
        wgt = np.maximum(mu * (1 - mu), 1e-9)
        grad = A.T @ (y - mu) - pen * beta
        H = (A * wgt[:, None]).T @ A + np.diag(pen) + 1e-9 * np.eye(k + 1)
        step = np.linalg.solve(H, grad)
        # damped Newton: halve the step until the objective does not rise (nearly separable labels, e.g. a
        # model right on 97% of frames, make plain Newton steps swing wider and wider)
        t = 1.0
        while t > 1e-6:
            cand = beta + t * step
            value = objective(cand)
            if value <= current + 1e-12:
                break
            t *= 0.5
        else:
            break
        beta, current = cand, value
        if float(np.max(np.abs(t * step))) < 1e-8:
            break
    return beta


def predict_logistic(beta: np.ndarray, X: np.ndarray) -> np.ndarray:
    eta = np.clip(beta[0] + np.asarray(X, dtype=np.float64) @ beta[1:], -30, 30)
    return 1.0 / (1.0 + np.exp(-eta))


def fold_ids(keys: np.ndarray | list, folds: int) -> np.ndarray:
    """A fold in ``0 .. folds-1`` for every frame, from a stable hash of its key (frame id): the same frame
    is in the same fold in every window and every evaluation."""
    return (frame_hashes(keys) % folds).astype(np.int64)


def _crc_table() -> np.ndarray:
    poly = np.uint32(0xEDB88320)
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ poly, t >> 1).astype(np.uint32)
    return t


_CRC_TABLE = _crc_table()


def frame_hashes(keys: Any) -> np.ndarray:
    """CRC-32 (``zlib.crc32``) of every key's UTF-8 text, as uint32; :func:`fold_ids` is it modulo the folds.

    ``keys``: a sequence or numpy array (``zlib.crc32`` per key), or a pyarrow string array (millions of frame ids):
    then the standard table-driven CRC runs over all keys of one length at once, a byte position per step, in numpy
    (the same numbers as ``zlib.crc32``, without a Python call per frame)."""
    if hasattr(keys, "buffers") or hasattr(keys, "combine_chunks"):
        return _crc32_arrow(keys)
    import zlib

    return np.array([zlib.crc32(str(k).encode()) for k in keys], dtype=np.uint32).reshape(-1)


def _crc32_arrow(keys: Any) -> np.ndarray:
    import pyarrow as pa

    arr = keys.combine_chunks() if hasattr(keys, "combine_chunks") else keys
    if not pa.types.is_string(arr.type) or arr.null_count:
        import zlib

        return np.array([zlib.crc32(str(k).encode()) for k in arr.to_pylist()], dtype=np.uint32).reshape(-1)
    n = len(arr)
    out = np.empty(n, np.uint32)
    if n == 0:
        return out
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4).astype(np.int64)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8) if arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    table = _CRC_TABLE
    for length in np.unique(lengths).tolist():
        idx = np.flatnonzero(lengths == length)
        crc = np.full(idx.size, 0xFFFFFFFF, np.uint32)
        start = offsets[idx]
        for j in range(length):
            crc = table[(crc ^ data[start + j]) & 0xFF] ^ (crc >> 8)
        out[idx] = crc ^ np.uint32(0xFFFFFFFF)
    return out


def _auc(score: np.ndarray, y: np.ndarray) -> float:
    pos, neg = score[y == 1], score[y == 0]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = _st.rankdata(np.concatenate([pos, neg]))
    return float((ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


PREDICT_CHUNK = 65536  # rows of features built at a time when the proxy predicts a fold


def crossfit_proxy(X: "np.ndarray | CorrectnessFeatures", correct: np.ndarray, labelled: np.ndarray, folds: np.ndarray,
                   names: tuple[str, ...] = (), ridge: float = 1.0) -> Proxy:
    """Cross-fitted proxy of ``correct`` on every frame (see the module docstring).

    ``X``: (N, k) features, or a :class:`CorrectnessFeatures` (rows built as needed: the frames of a fold are
    predicted :data:`PREDICT_CHUNK` at a time); ``correct``: (N,) 0/1 where ``labelled`` (ignored elsewhere);
    ``folds``: (N,) fold of every frame. A fold whose training frames (labelled, other folds) hold fewer than
    :data:`MIN_LABELS_PER_FOLD` of either outcome gets their smoothed mean instead of a regression.
    """
    if isinstance(X, CorrectnessFeatures):
        N, n_feat = X.shape
        rows = X.rows
    else:
        Xd = np.asarray(X, dtype=np.float64)
        N, n_feat = Xd.shape
        rows = Xd.__getitem__
    lab = np.asarray(labelled, dtype=bool)
    y = np.where(lab, np.asarray(correct, dtype=np.float64), np.nan)
    fo = np.asarray(folds, dtype=np.int64)
    if lab.shape != (N,) or fo.shape != (N,):
        raise ValueError(f"labelled and folds must have shape ({N},), got {lab.shape} and {fo.shape}")
    out = np.empty(N)
    K = int(fo.max()) + 1 if N else 0
    fitted = 0
    for k in range(K):
        tr = lab & (fo != k)
        te = np.flatnonzero(fo == k)
        if not te.size:
            continue
        yt = y[tr]
        n1 = int(yt.sum())
        n0 = int(tr.sum()) - n1
        if min(n0, n1) >= MIN_LABELS_PER_FOLD and n_feat:
            beta = fit_logistic(rows(np.flatnonzero(tr)), yt, ridge)
            for a in range(0, te.size, PREDICT_CHUNK):
                part = te[a:a + PREDICT_CHUNK]
                out[part] = predict_logistic(beta, rows(part))
            fitted += 1
        else:
            out[te] = (n1 + 0.5) / (n0 + n1 + 1.0)
    yl = y[lab]
    auc = _auc(out[lab], yl) if lab.any() else float("nan")
    brier = float(np.mean((out[lab] - yl) ** 2)) if lab.any() else float("nan")
    method = (f"logistic regression on {', '.join(names) or 'the features'}, cross-fitted over {K} folds "
              f"({fitted} fitted, {K - fitted} constant for too few labels)")
    return Proxy(out, method, tuple(names), K, int(lab.sum()), auc, brier)


# ------------------------------------------------------------------------------------------------------------------
# the estimator
# ------------------------------------------------------------------------------------------------------------------
def _z(alpha: float) -> float:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(_st.norm.ppf(1.0 - alpha / 2.0))


def active_mean(y: np.ndarray, labelled: np.ndarray, pi: np.ndarray, controls: np.ndarray | None = None,
                alpha: float = 0.05, bounds: tuple[float, float] = (0.0, 1.0), binary_floor: bool = False) -> ActiveMean:
    """The stream mean of ``y`` from a Poisson sample, with power-tuned control variates (module docstring).

    ``y``: (N,) values (read only where ``labelled``); ``labelled``: (N,) bool; ``pi``: (N,) inclusion probabilities
    in (0, 1] (read only where ``labelled``); ``controls``: (N, k) control variates ``h`` known on every frame
    (a constant column is typical; None = only the constant, the classical estimate). The interval is clipped to
    ``bounds``.

    ``binary_floor`` (for a 0/1 ``y``): with few labels the empirical variance of ``phi`` is too often small (no
    error seen yet among the heavily weighted frames the sampler rarely picks), so the standard error becomes the
    larger of the empirical one and the one implied by the tuned fit ``g = lambda' h`` (clipped to [0, 1]) taken as
    ``P(y = 1 | frame)`` (``E[phi^2 | frame] = g^2 + g (1 - g) / pi`` for ``g`` in [0, 1]), its ``1/pi`` part estimated from the labelled
    frames (Horvitz-Thompson), so no ``pi`` is needed on unlabelled ones. Being the proxy recalibrated by the
    regression, a miscalibrated or useless proxy does not inflate it (a useless one gives the classical variance).
    """
    lab = np.asarray(labelled, dtype=bool)
    N = lab.shape[0]
    yv = np.asarray(y, dtype=np.float64)
    pv = np.asarray(pi, dtype=np.float64)
    if yv.shape != (N,) or pv.shape != (N,):
        raise ValueError(f"y and pi must have shape ({N},), got {yv.shape} and {pv.shape}")
    if lab.any():
        pl = pv[lab]
        if not np.all(np.isfinite(pl)) or (pl <= 0).any() or (pl > 1).any():
            raise ValueError("pi must lie in (0, 1] on every labelled frame")
        if not np.all(np.isfinite(yv[lab])):
            raise ValueError("y must be finite on every labelled frame")
    z = _z(alpha)
    h = np.ones((N, 1)) if controls is None else np.asarray(controls, dtype=np.float64).reshape(N, -1)
    n = int(lab.sum())
    if N == 0 or n == 0:
        return ActiveMean(float("nan"), bounds[0], bounds[1], float("nan"), n, N, ())
    r = np.zeros(N)
    r[lab] = 1.0 / pv[lab]
    base = np.zeros(N)
    base[lab] = yv[lab] * r[lab]
    Z = h * (1.0 - r)[:, None]
    # power tuning: lambda minimising var(base + Z lambda) = -cov(Z)^-1 cov(Z, base)
    Zc = Z - Z.mean(axis=0)
    bc = base - base.mean()
    czz = Zc.T @ Zc / N
    czb = Zc.T @ bc / N
    ridge = 1e-10 * max(float(np.trace(czz)), 1e-30)
    lam = -np.linalg.solve(czz + ridge * np.eye(czz.shape[0]), czb)
    phi = base + Z @ lam
    value = float(phi.mean())
    var = float(((phi - value) ** 2).sum() / max(N - h.shape[1], 1)) / N
    if binary_floor:
        g = h @ lam
        m = np.clip(g, 0.0, 1.0)
        # E[phi^2 | frame] = g^2 + 2 g (m - g) + E[(y - g)^2 | frame] / pi, with E[(y - g)^2] = m - 2 g m + g^2
        resid2 = np.maximum(m - 2 * g * m + g * g, 0.0)
        second = float(np.sum(g * g + 2 * g * (m - g))) + float(np.sum(resid2[lab] / pv[lab] ** 2))
        var = max(var, (second / N - float(m.mean()) ** 2) / N)
    se = math.sqrt(max(var, 0.0))
    low, high = max(bounds[0], value - z * se), min(bounds[1], value + z * se)
    return ActiveMean(value, low, high, se, n, N, tuple(float(v) for v in lam))


def proportion_n_eff(p: float, se: float) -> float:
    """Labels a uniform sample needs for the same standard error: ``p (1 - p) / se^2`` (NaN when undefined)."""
    if not (se > 0 and math.isfinite(se) and math.isfinite(p)):
        return float("nan")
    return float(min(max(p, 0.0), 1.0) * (1 - min(max(p, 0.0), 1.0)) / se**2)


def model_assisted_accuracy(correct: np.ndarray, labelled: np.ndarray, pi: np.ndarray, proxy: np.ndarray,
                            alpha: float = 0.05) -> ActiveMean:
    """A model's accuracy over the stream: :func:`active_mean` with controls ``[1, proxy]``."""
    f = np.asarray(proxy, dtype=np.float64)
    res = active_mean(correct, labelled, pi, np.column_stack([np.ones(f.shape[0]), f]), alpha, (0.0, 1.0), binary_floor=True)
    lab = np.asarray(labelled, dtype=bool)
    y = np.asarray(correct, dtype=np.float64)[lab]
    if y.size and (np.all(y == y[0])):
        # every label the same (all right, say): the estimate is that value with se ~ 0, so p (1 - p) / se^2 is
        # 0 / 0 and a Wilson interval at it would be [0, 1] -- the labels carry the certainty of a Wilson interval
        # at their Kish effective size (what the classical estimate gives), and the proxy adds nothing
        w = 1.0 / np.asarray(pi, dtype=np.float64)[lab]
        kish = float(w.sum() ** 2 / (w * w).sum())
        low, high = wilson_at(float(y[0]), kish, _z(alpha))
        return ActiveMean(float(y[0]), low, high, 0.0, res.n, res.N, res.lam)
    n_eff = proportion_n_eff(res.value, res.se)
    if not math.isfinite(n_eff) or n_eff <= 0:
        return res
    # a Wilson interval at the effective size (as stats.weighted_accuracy): inside [0, 1], and better than
    # value +- z se when the accuracy is near 1
    low, high = wilson_at(res.value, n_eff, _z(alpha))
    return ActiveMean(res.value, low, high, res.se, res.n, res.N, res.lam)


def model_assisted_mean(values: np.ndarray, labelled: np.ndarray, pi: np.ndarray, proxy: np.ndarray,
                        alpha: float = 0.05, bounds: tuple[float, float] = (0.0, 1.0)) -> ActiveMean:
    """The stream mean of a quantity bounded in ``bounds`` (a frame's cost): :func:`active_mean` with controls
    ``[1, proxy]`` on the values scaled to [0, 1], and the Agresti-Coull-style interval of
    :func:`pipeline.evaluation.stats.agresti_coull_at` at the number of labelled frames (the pseudo-frames keep an
    unseen expensive error possible; coverage in ``tests/pipeline/evaluation/test_costs.py``).

    ``values``: (N,) read where ``labelled``; ``proxy``: (N,) known on every frame, in the units of ``values`` (e.g.
    the model's own expected cost ``sum_k p_k C(k, predicted)``: it uses no label, so no cross-fitting is needed).
    The result is in the units of ``values`` (``value``, ``low``, ``high``, ``se``).
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}")
    span = hi - lo
    lab = np.asarray(labelled, dtype=bool)
    y = np.where(lab, (np.asarray(values, dtype=np.float64) - lo) / span, 0.0)
    f = (np.asarray(proxy, dtype=np.float64) - lo) / span
    r = active_mean(y, lab, pi, np.column_stack([np.ones(f.shape[0]), f]), alpha, (0.0, 1.0))
    if r.n == 0 or not math.isfinite(r.value):
        return ActiveMean(float("nan"), lo, hi, float("nan"), r.n, r.N, r.lam)
    low, high = agresti_coull_at(r.value, r.se, r.n, alpha)
    return ActiveMean(lo + span * r.value, lo + span * low, lo + span * high, span * r.se, r.n, r.N, r.lam)


def wilson_labels_for_half_width(p: float, half_width: float, alpha: float = 0.05) -> int:
    """The smallest number of uniformly sampled labels whose Wilson interval at proportion ``p`` has half-width at
    most ``half_width``: what 'uniform sampling + Wilson' would have needed for the same certainty."""
    if not (0 < half_width < 0.5):
        raise ValueError(f"half_width must be in (0, 0.5), got {half_width!r}")
    z = _z(alpha)
    p = min(max(float(p), 0.0), 1.0)

    def hw(n: int) -> float:
        z2 = z * z
        return z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)

    lo, hi = 1, 1
    while hw(hi) > half_width:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        if hw(mid) <= half_width:
            hi = mid
        else:
            lo = mid + 1
    return lo
