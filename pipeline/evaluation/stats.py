"""Pure statistics for the evaluator: numpy arrays in, numbers and small dataclasses out.

What is estimated
-----------------
The *production accuracy* of a model is the probability that its prediction on a frame from the
camera stream is right. Labels come from a Poisson sample: every frame was drawn independently
with a recorded inclusion probability ``pi_i`` (:mod:`pipeline.sampling`). The estimators here
target the stream's accuracy as a super-population parameter, so the variances carry no
finite-population correction; for the accuracy of the finite set of frames actually seen, the
intervals are slightly conservative (by a factor ``1 - rate`` on the variance).

* Equal probabilities: the plain proportion with a **Wilson** score interval.
* Unequal probabilities: the **Hajek** (ratio) estimator ``sum(w y) / sum(w)`` with ``w = 1/pi``.
  Its variance is the Taylor-linearization variance (as in R's ``survey`` package with
  ``svydesign(probs=...)``): ``n/(n-1) * sum(z_i^2)``, ``z_i = w_i (y_i - p) / sum(w)``; with strata, the
  ``z_i`` are centred within each stratum. The interval is a Wilson interval at the *effective sample
  size* ``n_eff = p(1-p) / var`` (the Korn-Graubard idea), which keeps it inside [0, 1] and behaves
  far better than ``p +- z*se`` near 0 and 1. ``n_eff`` is capped at ``n + 2 sqrt(n)``: small samples
  underestimate the variance (simulated coverage fell to 88% at 50 labels without a cap; with it,
  95-97% from 50 to 400 labels under disagreement and uncertainty sampling). Coverage and
  unbiasedness are tested by simulation in ``tests/pipeline/evaluation/test_stats.py``.
* Mean of a bounded quantity (a frame's cost, in ``[lo, hi]``; :func:`bounded_mean`): the same Hajek
  estimate on the values scaled to [0, 1], with an **Agresti-Coull**-style interval: ``z^2/2`` pseudo-frames
  at each bound (weighted like an average labelled frame) are added before the centre and the linearized
  variance are computed. For 0/1 values and equal weights this is exactly the Agresti-Coull interval; for a
  cost that is usually small and rarely large it keeps an unseen expensive error possible (the upper bound
  stays about ``3.8 / n`` of the range above an all-cheap sample) without the binary variance bound that the
  Wilson-at-``n_eff`` interval would impose on a spread of cheap errors. Coverage by simulation in
  ``tests/pipeline/evaluation/test_costs.py``.
* Gap offline - production: the MOVER / Newcombe hybrid-score interval built from the two
  single-sample intervals, so both sample sizes count.
* Paired champion/challenger: McNemar's exact test (statsmodels) on the discordant pairs, the
  Agresti-Min adjusted interval for the paired difference (or the linearized weighted difference when
  the pairs carry unequal weights), and a decision with a sample-size estimate (Connor 1987).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.proportion import proportion_confint

from pipeline.evaluation.result import ACTIONS, Agreement, Decision, Estimate, PairedResult

__all__ = [
    "ACTIONS", "Agreement", "Decision", "Estimate", "PairedResult", "accuracy_estimate", "annotator_agreement", "confusion",
    "agresti_coull_at", "bounded_mean", "gap_estimate", "mcnemar_exact_p", "mcnemar_sample_size", "paired_test", "per_class_recall", "recommend",
    "weighted_accuracy", "wilson_interval",
]


# --------------------------------------------------------------------------------------------
# helpers


def _z(alpha: float) -> float:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    return float(_st.norm.ppf(1.0 - alpha / 2.0))


def _bool_array(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != bool:
        if a.size and not np.isin(a, (0, 1)).all():
            raise ValueError(f"{name} must contain only 0/1 or booleans")
        a = a.astype(bool)
    return a


def _prob_array(x: Any, n: int, name: str) -> np.ndarray:
    p = np.asarray(x, dtype=np.float64)
    if p.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {p.shape}")
    if n and (not np.all(np.isfinite(p)) or (p <= 0).any() or (p > 1).any()):
        raise ValueError(f"{name} must lie in (0, 1]; got min {p.min():.3g}, max {p.max():.3g}")
    return p


def wilson_at(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson score interval for an observed proportion ``p`` at a (possibly fractional) size ``n``."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2.0 * n)) / denom
    half = z * math.sqrt(max(p * (1.0 - p) / n + z2 / (4.0 * n * n), 0.0)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _empty(method: str) -> Estimate:
    return Estimate(float("nan"), 0.0, 1.0, float("nan"), 0, 0.0, method)


# --------------------------------------------------------------------------------------------
# single proportions


def wilson_interval(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes in ``n`` trials; ``(0, 1)`` when ``n == 0``.

    ``statsmodels.stats.proportion.proportion_confint(k, n, alpha, method="wilson")``, clipped to [0, 1].
    (:func:`weighted_accuracy` needs the interval at a fractional effective size, which statsmodels does
    not take: that one is ``wilson_at``.)
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    _z(alpha)  # validates alpha
    if n == 0:
        return 0.0, 1.0
    lo, hi = proportion_confint(int(k), int(n), alpha=alpha, method="wilson")
    return max(0.0, float(lo)), min(1.0, float(hi))


def weighted_accuracy(
    correct: np.ndarray,
    inclusion_prob: np.ndarray,
    alpha: float = 0.05,
    strata: np.ndarray | None = None,
) -> Estimate:
    """Hajek estimate of accuracy from a Poisson sample with inclusion probabilities ``inclusion_prob``.

    ``correct``: (n,) 0/1 per labeled frame; ``inclusion_prob``: (n,) the probability each frame had of
    being sampled (in (0, 1]); ``strata``: optional (n,) stratum keys (e.g. "camera|class") — the
    variance is then computed within strata (stratified linearization). See the module docstring.
    """
    y = _bool_array(correct, "correct").astype(np.float64)
    n = y.shape[0]
    pi = _prob_array(inclusion_prob, n, "inclusion_prob")
    z = _z(alpha)
    method = "hajek-linearized-wilson" + ("-stratified" if strata is not None else "")
    if n == 0:
        return _empty(method)
    w = 1.0 / pi
    sw = w.sum()
    p = float((w * y).sum() / sw)
    kish = float(sw * sw / (w * w).sum())
    if n == 1:
        lo, hi = wilson_at(p, 1.0, z)
        return Estimate(p, lo, hi, float("nan"), 1, 1.0, method)
    u = w * (y - p) / sw  # linearized influence values; they sum to 0
    if strata is None:
        var = n / (n - 1) * float((u * u).sum())
    else:
        s = np.asarray(strata)
        if s.shape != (n,):
            raise ValueError(f"strata must have shape ({n},), got {s.shape}")
        _, inv = np.unique(s, return_inverse=True)
        inv = inv.ravel()
        nh = np.bincount(inv).astype(np.float64)
        mh = np.bincount(inv, weights=u) / nh
        dev = u - mh[inv]
        # a stratum with one labeled frame has no within variance: count it uncentred (conservative)
        single = nh[inv] == 1
        dev[single] = u[single]
        fac = np.where(nh > 1, nh / np.maximum(nh - 1, 1), 1.0)
        var = float((fac[inv] * dev * dev).sum())
    se = math.sqrt(max(var, 0.0))
    if 0.0 < p < 1.0 and var > 0:
        # a design may beat uniform sampling (n_eff > n), but with few labels the variance estimate is
        # itself noisy and too often small (e.g. no errors yet among the low-probability frames):
        # believe a gain of at most two "standard errors of a count", n + 2 sqrt(n)
        n_eff = min(n + 2.0 * math.sqrt(n), p * (1.0 - p) / var)
    else:
        n_eff = min(float(n), kish)  # p at 0 or 1: no variance information, use Kish's effective size
    lo, hi = wilson_at(p, n_eff, z)
    return Estimate(p, lo, hi, se, n, n_eff, method)


def accuracy_estimate(correct: np.ndarray, inclusion_prob: np.ndarray | None = None, alpha: float = 0.05) -> Estimate:
    """Wilson when ``inclusion_prob`` is None or all equal, else :func:`weighted_accuracy`."""
    y = _bool_array(correct, "correct")
    n = y.shape[0]
    if inclusion_prob is not None:
        pi = _prob_array(inclusion_prob, n, "inclusion_prob")
        if n and float(np.ptp(pi)) > 1e-12 * float(pi.max()):
            return weighted_accuracy(y, pi, alpha)
    if n == 0:
        return _empty("wilson")
    k = int(y.sum())
    p = k / n
    lo, hi = wilson_interval(k, n, alpha)
    return Estimate(p, lo, hi, math.sqrt(p * (1 - p) / n), n, float(n), "wilson")


def agresti_coull_at(p: float, se: float, n: float, alpha: float = 0.05) -> tuple[float, float]:
    """Agresti-Coull-style interval for the mean ``p`` in [0, 1] of ``n`` labelled frames whose estimator has
    standard error ``se``: ``k = z^2/2`` pseudo-frames at 0 and at 1 (each weighted like an average labelled frame)
    move the centre to ``p~ = (n p + k) / (n + 2k)`` and add their own variance,
    ``se~^2 = se^2 (n / (n + 2k))^2 + k (p~^2 + (1 - p~)^2) / (n + 2k)^2``; the interval ``p~ +- z se~`` is clipped
    to [0, 1]. For a 0/1 variable with ``se^2 = p (1 - p) / n`` this is the Agresti-Coull interval up to
    ``O(1/n^2)``. Used for costs (:func:`bounded_mean`, :func:`pipeline.evaluation.ppi.model_assisted_mean`)."""
    z = _z(alpha)
    if not n > 0:
        return 0.0, 1.0
    k = z * z / 2.0
    m = n + 2.0 * k
    p_a = (n * p + k) / m
    var_a = (se * n / m) ** 2 + k * (p_a**2 + (1.0 - p_a) ** 2) / (m * m)
    half = z * math.sqrt(max(var_a, 0.0))
    return max(0.0, p_a - half), min(1.0, p_a + half)


def bounded_mean(
    values: np.ndarray,
    inclusion_prob: np.ndarray | None = None,
    alpha: float = 0.05,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> Estimate:
    """The stream mean of a quantity bounded in ``bounds`` (e.g. a frame's cost) from a Poisson sample.

    ``values``: (n,) per labelled frame, inside ``bounds``; ``inclusion_prob``: (n,) in (0, 1] (None: all equal).
    The point estimate is the Hajek mean ``sum(w y) / sum(w)``, ``w = 1/pi`` (the plain mean for equal weights);
    the interval is the Agresti-Coull-style one of the module docstring, computed on ``(y - lo) / (hi - lo)`` and
    mapped back, clipped to ``bounds``. ``se`` is the linearized standard error of the Hajek mean (in the units
    of ``values``); ``n_eff`` the number of uniformly sampled frames with the same standard error
    (weighted variance of the values / se^2, capped at ``n`` for a constant sample).
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with lo < hi, got {bounds!r}")
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    n = v.shape[0]
    if n and (not np.all(np.isfinite(v)) or v.min() < lo - 1e-9 * (hi - lo) or v.max() > hi + 1e-9 * (hi - lo)):
        raise ValueError(f"values must lie in [{lo:g}, {hi:g}], got {v.min():.4g}..{v.max():.4g}")
    pi = np.ones(n) if inclusion_prob is None else _prob_array(inclusion_prob, n, "inclusion_prob")
    _z(alpha)  # validates alpha
    weighted = n > 0 and float(np.ptp(pi)) > 1e-12 * float(pi.max())
    method = "hajek-linearized-agresti-coull" if weighted else "mean-agresti-coull"
    if n == 0:
        return Estimate(float("nan"), lo, hi, float("nan"), 0, 0.0, method)
    span = hi - lo
    y = np.clip((v - lo) / span, 0.0, 1.0)
    w = 1.0 / pi
    sw = float(w.sum())
    p = float((w * y).sum() / sw)
    fac = n / (n - 1) if n > 1 else 1.0
    var = fac * float((w * w * (y - p) ** 2).sum()) / (sw * sw)  # linearized variance of the Hajek mean
    low, high = agresti_coull_at(p, math.sqrt(max(var, 0.0)), n, alpha)
    s2 = float((w * (y - p) ** 2).sum() / sw)  # the values' (weighted) variance: what one uniformly sampled frame tells
    n_eff = float(n) if not var > 0 else s2 * fac / var
    return Estimate(lo + span * p, lo + span * low, lo + span * high, span * math.sqrt(max(var, 0.0)), n, n_eff, method)


def gap_estimate(offline_accuracy: float, offline_n: int, prod: Estimate, alpha: float = 0.05) -> Estimate:
    """Train-to-production gap = offline test accuracy − production accuracy, with a 95% interval
    that accounts for both sample sizes.

    MOVER (Zou & Donner 2008; Newcombe's hybrid score interval for independent proportions): with
    ``(l1, u1)`` the Wilson interval of the offline accuracy on ``offline_n`` test images and ``(l2, u2)``
    the production interval, the gap ``d = p1 - p2`` has
    ``low = d - sqrt((p1-l1)^2 + (u2-p2)^2)``, ``high = d + sqrt((u1-p1)^2 + (p2-l2)^2)``.
    ``prod`` must come from this module at the same ``alpha``. ``n``/``n_eff`` of the result are production's.
    """
    if not (0.0 <= offline_accuracy <= 1.0) or not math.isfinite(offline_accuracy):
        raise ValueError(f"offline_accuracy must be in [0, 1], got {offline_accuracy!r} (model card test_accuracy)")
    if int(offline_n) < 1:
        raise ValueError(f"offline_n must be >= 1, got {offline_n!r} (model card test_size)")
    method = "mover-wilson"
    if prod.n == 0 or not math.isfinite(prod.value):
        return Estimate(float("nan"), -1.0, 1.0, float("nan"), 0, 0.0, method)
    z = _z(alpha)
    p1, n1 = float(offline_accuracy), int(offline_n)
    l1, u1 = wilson_at(p1, float(n1), z)
    p2, l2, u2 = prod.value, prod.low, prod.high
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    se2 = p1 * (1 - p1) / n1 + (prod.se**2 if math.isfinite(prod.se) else 0.0)
    return Estimate(d, max(-1.0, low), min(1.0, high), math.sqrt(se2), prod.n, prod.n_eff, method)


# --------------------------------------------------------------------------------------------
# paired champion / challenger


def mcnemar_exact_p(n01: int, n10: int) -> float:
    """Two-sided exact McNemar p-value (statsmodels ``mcnemar(table, exact=True)``); 1.0 with no discordant pairs."""
    if n01 + n10 == 0:
        return 1.0
    return float(mcnemar([[0, int(n01)], [int(n10), 0]], exact=True).pvalue)


def paired_test(
    correct_incumbent: np.ndarray,
    correct_shadow: np.ndarray,
    weights: np.ndarray | None = None,
    alpha: float = 0.05,
) -> PairedResult:
    """Compare two models on the same labeled frames.

    ``weights``: optional inverse inclusion probabilities (``1/pi``) of the frames. Without weights (or
    equal ones): McNemar exact p and the Agresti-Min interval (add 1/2 to each cell) for
    ``p_shadow - p_incumbent``. With unequal weights: the Hajek difference of the two accuracies, its
    linearized variance, a Wald interval and p-value (``p_mcnemar`` on raw counts is still reported).
    """
    a = _bool_array(correct_incumbent, "correct_incumbent")
    b = _bool_array(correct_shadow, "correct_shadow")
    if a.shape != b.shape:
        raise ValueError(f"correct_incumbent and correct_shadow differ in length: {a.shape[0]} vs {b.shape[0]}")
    n = int(a.shape[0])
    z = _z(alpha)
    n11 = int((a & b).sum())
    n00 = int((~a & ~b).sum())
    n01 = int((~a & b).sum())
    n10 = int((a & ~b).sum())
    p_mc = mcnemar_exact_p(n01, n10)
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise ValueError(f"weights must have shape ({n},), got {w.shape}")
        if n and (not np.all(np.isfinite(w)) or (w <= 0).any()):
            raise ValueError("weights must be finite and > 0 (inverse inclusion probabilities)")
        if n and float(np.ptp(w)) <= 1e-12 * float(w.max()):
            w = None
    if n == 0:
        e = Estimate(float("nan"), -1.0, 1.0, float("nan"), 0, 0.0, "none")
        return PairedResult(0, 0, 0, 0, 0, 1.0, 1.0, e, float("nan"), float("nan"), float("nan"), w is not None, "none")

    if w is None:
        # Agresti & Min (2005): add 0.5 to each of the four cells, Wald interval on the adjusted table
        nt = n + 2.0
        q01, q10 = (n01 + 0.5) / nt, (n10 + 0.5) / nt
        d_adj = q01 - q10
        se_adj = math.sqrt(max(q01 + q10 - d_adj * d_adj, 0.0) / nt)
        d = (n01 - n10) / n
        se = math.sqrt(max((n01 + n10) / n - d * d, 0.0) / n)
        lo, hi = max(-1.0, d_adj - z * se_adj), min(1.0, d_adj + z * se_adj)
        diff = Estimate(d, lo, hi, se, n, float(n), "agresti-min")
        return PairedResult(
            n, n00, n01, n10, n11, p_mc, p_mc, diff, (n11 + n10) / n, (n11 + n01) / n, (n01 + n10) / n, False, "mcnemar-exact"
        )

    sw = w.sum()
    dd = b.astype(np.float64) - a.astype(np.float64)
    d = float((w * dd).sum() / sw)
    u = w * (dd - d) / sw
    var = n / (n - 1) * float((u * u).sum()) if n > 1 else float("nan")
    se = math.sqrt(var) if math.isfinite(var) else float("nan")
    disc = float((w * (a != b)).sum() / sw)
    iid_var = max(disc - d * d, 0.0) / n
    n_eff = float(n) if not (var > 0) or iid_var == 0 else min(float(n), n * iid_var / var)
    if not (se > 0 and math.isfinite(se)):
        # all pairs tell the same story (or n == 1): no variance information in the weighted form;
        # fall back to the unweighted analysis of the same pairs
        r = paired_test(a, b, None, alpha)
        return PairedResult(n, n00, n01, n10, n11, p_mc, r.p_value, r.diff, r.acc_incumbent, r.acc_shadow, r.discordant_rate, True, "mcnemar-exact (weights uninformative)")
    lo, hi = max(-1.0, d - z * se), min(1.0, d + z * se)
    p_val = float(2 * _st.norm.sf(abs(d) / se))
    diff = Estimate(d, lo, hi, se, n, n_eff, "hajek-linearized-wald")
    acc_a = float((w * a).sum() / sw)
    acc_b = float((w * b).sum() / sw)
    return PairedResult(n, n00, n01, n10, n11, p_mc, p_val, diff, acc_a, acc_b, disc, True, "weighted-wald")


def mcnemar_sample_size(discordant_rate: float, effect: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Paired frames needed to detect ``effect = p_shadow - p_incumbent`` with McNemar's test (Connor 1987).

    ``n = (z_{1-a/2} sqrt(psi) + z_power sqrt(psi - effect^2))^2 / effect^2`` with ``psi`` the discordant rate.
    """
    eff = abs(effect)
    if eff <= 0:
        raise ValueError("effect must be non-zero")
    if not (0.0 < power < 1.0):
        raise ValueError(f"power must be in (0, 1), got {power!r}")
    psi = min(1.0, max(discordant_rate, eff))
    za, zb = _z(alpha), float(_st.norm.ppf(power))
    return int(math.ceil((za * math.sqrt(psi) + zb * math.sqrt(max(psi - eff * eff, 0.0))) ** 2 / (eff * eff)))


def recommend(paired: PairedResult, alpha: float = 0.05, min_effect: float = 0.0, power: float = 0.8) -> Decision:
    """Champion/challenger decision from a :func:`paired_test`.

    * ``promote``: the shadow is significantly better (``p_value < alpha``) and its estimated gain is at
      least ``min_effect``.
    * ``keep``: the shadow is significantly worse, or the interval rules out a gain of ``min_effect``
      (``diff.high < min_effect``, only when ``min_effect > 0``), or it is significantly better but by
      less than ``min_effect``.
    * ``need_more_labels`` otherwise, with ``more_labels`` = Connor's McNemar sample size for the
      observed discordant rate and effect ``max(|diff|, min_effect)``, inflated by the design effect
      ``n / n_eff`` of weighted samples, minus the pairs already labeled. None when there is nothing to
      base it on (no pairs, or zero observed effect with ``min_effect == 0``).
    """
    d = paired.diff
    if paired.n == 0:
        return Decision("need_more_labels", None, "no frames labeled with both models' predictions yet")
    sig = paired.p_value < alpha
    if sig and d.value > 0:
        if d.value >= min_effect:
            return Decision(
                "promote", 0, f"shadow better by {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}], p={paired.p_value:.3g} < {alpha} (n={paired.n})"
            )
        return Decision("keep", 0, f"shadow significantly better but by {d.value:+.3f} < min_effect {min_effect} (p={paired.p_value:.3g})")
    if sig and d.value < 0:
        return Decision("keep", 0, f"shadow worse by {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}], p={paired.p_value:.3g} < {alpha} (n={paired.n})")
    if min_effect > 0 and d.high < min_effect:
        return Decision("keep", 0, f"interval [{d.low:+.3f}, {d.high:+.3f}] rules out a gain of {min_effect} (n={paired.n})")
    effect = max(abs(d.value), min_effect) if math.isfinite(d.value) else min_effect
    if effect <= 0:
        return Decision(
            "need_more_labels",
            None,
            f"no difference observed (n={paired.n}, p={paired.p_value:.3g}); set min_effect to size the sample needed",
        )
    disc = paired.discordant_rate if math.isfinite(paired.discordant_rate) else 0.0
    psi = max(disc, effect, 1.0 / paired.n)
    need = mcnemar_sample_size(psi, effect, alpha, power)
    deff = paired.n / d.n_eff if d.n_eff > 0 else 1.0
    need = int(math.ceil(need * max(1.0, deff)))
    more = max(need - paired.n, 1)
    return Decision(
        "need_more_labels",
        more,
        f"not significant (p={paired.p_value:.3g}, diff {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}], n={paired.n}); "
        f"~{need} paired labels give {power:.0%} power for an effect of {effect:.3f} at discordant rate {psi:.3f}",
    )


# --------------------------------------------------------------------------------------------
# per class, confusion, agreement


def _labels(x: Any, name: str) -> np.ndarray:
    a = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=object)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _index(labels: np.ndarray, classes: Sequence[str], name: str) -> np.ndarray:
    pos = {c: i for i, c in enumerate(classes)}
    out = np.empty(labels.shape[0], dtype=np.int64)
    for i, v in enumerate(labels):
        j = pos.get(v)
        if j is None:
            raise ValueError(f"{name}[{i}] = {v!r} is not one of the classes {list(classes)}")
        out[i] = j
    return out


def confusion(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    classes: list[str],
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, in ``classes`` order.

    With ``weights`` (inverse inclusion probabilities) the cells are estimated frame counts of the stream
    (float); without, integer counts. Labels outside ``classes`` (e.g. ``unsure``) are errors: filter first.
    """
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    k = len(classes)
    ti, pj = _index(t, classes, "y_true"), _index(p, classes, "y_pred")
    flat = ti * k + pj
    if weights is None:
        return np.bincount(flat, minlength=k * k).reshape(k, k)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != t.shape:
        raise ValueError(f"weights must have shape {t.shape}, got {w.shape}")
    return np.bincount(flat, weights=w, minlength=k * k).reshape(k, k)


def per_class_recall(
    y_true: Sequence[str] | np.ndarray,
    y_pred: Sequence[str] | np.ndarray,
    classes: list[str],
    weights: np.ndarray | None = None,
    alpha: float = 0.05,
) -> dict[str, Estimate]:
    """Recall of each class (share of its frames predicted as it), with intervals.

    ``weights``: inverse inclusion probabilities; the estimate is then the Hajek one within the class.
    A class without labeled frames gets ``value = nan``, interval ``[0, 1]``, ``n = 0``.
    """
    t = _labels(y_true, "y_true")
    p = _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    _index(t, classes, "y_true")
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    if w is not None and w.shape != t.shape:
        raise ValueError(f"weights must have shape {t.shape}, got {w.shape}")
    out: dict[str, Estimate] = {}
    for c in classes:
        m = t == c
        correct = (p[m] == c).astype(bool)
        out[c] = accuracy_estimate(correct, None if w is None else 1.0 / w[m], alpha)
    return out


def annotator_agreement(labels_a: Sequence[str], labels_b: Sequence[str], alpha: float = 0.05) -> Agreement:
    """Agreement of two annotators on the same frames (pairs in order).

    Returns ``n``, ``agreement`` (share of identical labels) with a Wilson interval, and Cohen's kappa
    (statsmodels ``cohens_kappa``) with its asymptotic interval; kappa is None with fewer than 2 pairs
    or a single category in use.
    """
    a = _labels(labels_a, "labels_a")
    b = _labels(labels_b, "labels_b")
    if a.shape != b.shape:
        raise ValueError(f"labels_a and labels_b differ in length: {a.shape[0]} vs {b.shape[0]}")
    n = int(a.shape[0])
    if n == 0:
        return Agreement(0)
    k = int((a == b).sum())
    low, high = wilson_interval(k, n, alpha)
    kappa = kappa_low = kappa_high = None
    cats = sorted(set(a.tolist()) | set(b.tolist()), key=str)
    if n >= 2 and len(cats) >= 2:
        idx = {c: i for i, c in enumerate(cats)}
        table = np.zeros((len(cats), len(cats)))
        for x, y in zip(a, b):
            table[idx[x], idx[y]] += 1
        res = cohens_kappa(table)
        kappa = float(res.kappa)
        se = float(res.std_kappa)
        if math.isfinite(se):
            z = _z(alpha)
            kappa_low, kappa_high = max(-1.0, kappa - z * se), min(1.0, kappa + z * se)
    return Agreement(n, k / n, low, high, kappa, kappa_low, kappa_high)
