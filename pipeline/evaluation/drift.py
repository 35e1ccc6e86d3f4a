"""Drift tests between a reference window and a current window, honest about correlated frames.

Three black-box signals (no labels needed):

* :func:`ks_softmax_drift` -- per-class two-sample Kolmogorov-Smirnov tests on the softmax outputs
  ("black-box shift detection", Lipton et al. 2018; Rabanser et al. 2019), Bonferroni-corrected.
* :func:`class_distribution_drift` -- chi-square test on the predicted-class counts.
* :func:`image_stat_drift` -- KS per image statistic (brightness, contrast, sharpness, noise from
  :mod:`pipeline.imagestats`) plus the standardized mean shift as an effect size, Bonferroni-corrected.

Correlated frames
-----------------
Consecutive video frames are not independent: a parcel dwells in view for several frames and light
changes slowly, so a window of ``n`` frames carries far less information than ``n`` independent
draws. Fed to a textbook KS or chi-square test, a perfectly steady camera raises alarms most of the
time (``tests/pipeline/evaluation/test_drift.py`` measures it). We keep every frame for the test
statistic and replace ``n`` by an **effective sample size** ``n_eff = n / tau`` when computing
p-values, where ``tau`` is the integrated autocorrelation time of the series (per camera, in time
order): ``tau = 1 + 2 sum_k rho_k``, the factor by which correlation inflates the variance of a mean.
``tau`` is the larger of two estimates:

* the AR(1) value ``(1 + rho_1) / (1 - rho_1)`` from the lag-1 autocorrelation (exact for AR(1),
  conservative -- about twice too large -- for "dwell" blocks of identical frames), and
* Sokal's self-consistent window estimate ``sum_{|k| <= M} rho_k`` with ``M >= 5 tau`` (as in emcee),
  which also catches correlation that is not AR(1)-shaped.

Thinning to every ``tau``-th frame would be the other honest option; it throws away data and leaves
the test at the mercy of which frames are kept, so we scale the sample size instead. Both KS
p-values use scipy's distribution of the KS statistic (``scipy.stats.kstwo`` at the effective
``n1 n2 / (n1 + n2)``, as ``ks_2samp(method="asymp")`` does at the raw sizes); the chi-square
statistic is divided by the Rao-Scott first-order design effect built from the same ``tau``'s.
``tau`` is estimated per series, per camera (``groups``), after sorting by ``ts``, on the
*reference* window and applied to both windows (see :func:`_current_n_eff`).

Every function returns a frozen dataclass of :mod:`pipeline.evaluation.result` (:class:`SoftmaxDrift`,
:class:`ClassDistributionDrift`, :class:`ImageStatDrift`) with ``drift`` (bool), the corrected p-value, the
statistics and the raw and effective sample sizes; a test skipped for too few frames says why in ``skipped``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats as _st

from pipeline.evaluation.result import ClassDistributionDrift, ImageStat, ImageStatDrift, SoftmaxDrift

SOKAL_C = 5.0
KS_EXACT_MAX_N = 10_000  # scipy.stats.ks_2samp's MAX_AUTO_N: up to it, its statistic is rounded to the exact lattice


# --------------------------------------------------------------------------------------------
# effective sample size


def _tau_columns(x: np.ndarray) -> np.ndarray:
    """Integrated autocorrelation time of each column of ``x`` (n, k) (a single time-ordered series)."""
    n, k = x.shape
    if n < 4:
        return np.ones(k)
    xc = x - x.mean(axis=0)
    var = (xc * xc).sum(axis=0)
    ok = var > 1e-12 * max(1.0, float(np.abs(x).max()) ** 2) * n
    tau = np.ones(k)
    if not ok.any():
        return tau
    xc = xc[:, ok]
    # AR(1) estimate from the lag-1 autocorrelation
    rho1 = (xc[1:] * xc[:-1]).sum(axis=0) / var[ok]
    rho1 = np.clip(rho1, 0.0, 1.0 - 1.0 / n)
    tau_ar1 = (1.0 + rho1) / (1.0 - rho1)
    # Sokal's windowed estimate (FFT autocorrelation)
    m = 1 << int(2 * n - 1).bit_length()
    f = np.fft.rfft(xc, n=m, axis=0)
    acf = np.fft.irfft(f * np.conj(f), n=m, axis=0)[:n]
    acf = acf / acf[0]
    taus = 2.0 * np.cumsum(acf, axis=0) - 1.0
    lags = np.arange(n)[:, None]
    inside = lags < SOKAL_C * taus
    window = np.where(inside.all(axis=0), n - 1, np.argmin(inside, axis=0))
    tau_sokal = taus[window, np.arange(xc.shape[1])]
    tau[ok] = np.clip(np.maximum(tau_ar1, tau_sokal), 1.0, float(n))
    return tau


def _order_groups(n: int, ts: Any, groups: Any, what: str) -> list[np.ndarray]:
    """Index arrays, one per group, each in time order."""
    if ts is not None:
        ts = np.asarray(ts, dtype=np.float64)
        if ts.shape != (n,):
            raise ValueError(f"{what} timestamps must have shape ({n},), got {ts.shape}")
    if groups is None:
        idx = np.arange(n)
        return [idx[np.argsort(ts, kind="stable")]] if ts is not None else [idx]
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"{what} groups must have shape ({n},), got {g.shape}")
    _, inv = np.unique(g, return_inverse=True)
    inv = inv.ravel()
    out = []
    for j in range(inv.max() + 1 if n else 0):
        idx = np.flatnonzero(inv == j)
        if ts is not None:
            idx = idx[np.argsort(ts[idx], kind="stable")]
        out.append(idx)
    return out


def effective_sample_size(x: np.ndarray, ts: Any = None, groups: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Effective sample size of each column of ``x`` ((n,) or (n, k)) for correlated frames.

    ``groups``: camera of each row (autocorrelation is estimated within each camera, in ``ts`` order,
    and the effective sizes are summed). Returns ``(n_eff, tau)``, arrays with one entry per column;
    ``tau`` is the frame-weighted mean integrated autocorrelation time, ``n_eff = sum_g n_g / tau_g``.
    """
    a = np.asarray(x, dtype=np.float64)
    one = a.ndim == 1
    if one:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"x must be 1-D or 2-D, got shape {a.shape}")
    n = a.shape[0]
    n_eff = np.zeros(a.shape[1])
    for idx in _order_groups(n, ts, groups, "x"):
        n_eff += len(idx) / _tau_columns(a[idx])
    tau = np.where(n_eff > 0, n / np.maximum(n_eff, 1e-300), 1.0)
    return n_eff, tau


# --------------------------------------------------------------------------------------------
# KS with effective sizes


def _current_n_eff(n_cur: int, tau_ref: np.ndarray) -> np.ndarray:
    """Effective size of the current window, using the reference window's autocorrelation time.

    Under the null hypothesis (no drift) both windows come from the same process, so the reference's
    ``tau`` is the right one. Estimating ``tau`` on the current window instead lets a lasting shift
    *inside* that window masquerade as long autocorrelation and hide itself (a step change looks like
    a slowly varying series), which is exactly the drift the test must find.
    """
    return float(n_cur) / np.maximum(np.asarray(tau_ref, dtype=np.float64), 1.0)


def _ks_p(d: float, n1_eff: float, n2_eff: float) -> float:
    en = n1_eff * n2_eff / (n1_eff + n2_eff)
    return float(_st.kstwo.sf(d, max(1, int(round(en)))))


def _float16_counts(x: np.ndarray) -> np.ndarray | None:
    """How many values of ``x`` sit on each float16 bit pattern, when every value is a non-negative float16 (stored
    probabilities are, :func:`pipeline.store.encode_probs`), else None. For such values the bit patterns are in
    numeric order, so the counts' running sum is the empirical CDF at every distinct value: no sort needed."""
    if x.size == 0 or np.signbit(x).any():
        return None
    h = x.astype(np.float16)
    if not np.array_equal(h.astype(x.dtype), x):
        return None
    return np.bincount(h.view(np.uint16), minlength=1 << 16)


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic, as ``scipy.stats.ks_2samp(a, b).statistic`` computes it (the same
    floating-point operations, hence the same number), without scipy's p-value (the drift tests compute theirs at
    the effective sizes) and, for float16-valued samples (stored probabilities), without sorting millions of values:
    the empirical CDFs are taken from counts per value, evaluated at the same points."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    n1, n2 = a.size, b.size
    if min(n1, n2) == 0:
        raise ValueError("ks_statistic needs two non-empty samples")
    ca = _float16_counts(a)
    cb = _float16_counts(b) if ca is not None else None
    if ca is not None and cb is not None:
        present = (ca + cb) > 0  # the CDFs evaluated at every distinct value = at every data point (max/min alike)
        cdf1 = np.cumsum(ca)[present] / n1
        cdf2 = np.cumsum(cb)[present] / n2
    else:
        a, b = np.sort(a), np.sort(b)
        both = np.concatenate([a, b])
        cdf1 = np.searchsorted(a, both, side="right") / n1
        cdf2 = np.searchsorted(b, both, side="right") / n2
    diff = cdf1 - cdf2
    min_s = float(np.clip(-diff[np.argmin(diff)], 0, 1))
    max_s = float(diff[np.argmax(diff)])
    d = min_s if min_s > max_s else max_s
    if max(n1, n2) <= KS_EXACT_MAX_N:  # scipy's "exact" mode snaps the statistic to the lattice k / lcm(n1, n2)
        lcm = (n1 // math.gcd(n1, n2)) * n2
        d = int(np.round(d * lcm)) * 1.0 / lcm
    return d


def _ks_columns(ref: np.ndarray, cur: np.ndarray, ref_ts, cur_ts, ref_groups, cur_groups) -> dict[str, np.ndarray]:
    k = ref.shape[1]
    d = np.array([ks_statistic(ref[:, j], cur[:, j]) for j in range(k)], dtype=np.float64)
    n1e, tau_ref = effective_sample_size(ref, ref_ts, ref_groups)
    n2e = _current_n_eff(len(cur), tau_ref)
    p = np.array([_ks_p(d[j], n1e[j], n2e[j]) for j in range(k)])
    return {"d": d, "p": p, "n1e": n1e, "n2e": n2e}


def _check_alpha(alpha: float) -> None:
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def ks_softmax_drift(
    ref_probs: np.ndarray,
    cur_probs: np.ndarray,
    alpha: float = 0.05,
    ref_ts: Any = None,
    cur_ts: Any = None,
    ref_groups: Any = None,
    cur_groups: Any = None,
    classes: Sequence[str] | None = None,
    min_frames: int = 20,
) -> SoftmaxDrift:
    """Per-class KS tests of softmax outputs, reference vs current window, Bonferroni over classes.

    ``ref_probs``/``cur_probs``: (n, n_classes) probabilities of one model; ``*_ts``: frame timestamps
    and ``*_groups``: camera ids (for the autocorrelation estimate, see the module docstring).
    ``p_values`` are per class before the Bonferroni factor, ``n_*_eff`` the smallest effective size over
    classes. Fewer than ``min_frames`` frames in either window: no test (``skipped`` says why).
    """
    _check_alpha(alpha)
    ref = np.asarray(ref_probs, dtype=np.float64)
    cur = np.asarray(cur_probs, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1] or ref.shape[1] == 0:
        raise ValueError(f"ref_probs and cur_probs must be 2-D with the same number of classes, got {ref.shape} and {cur.shape}")
    k = ref.shape[1]
    names = list(classes) if classes is not None else [str(j) for j in range(k)]
    if len(names) != k:
        raise ValueError(f"classes has {len(names)} names for {k} probability columns")
    method = "ks-per-class-neff-bonferroni"
    if min(ref.shape[0], cur.shape[0]) < min_frames:
        return SoftmaxDrift(drift=False, p_min_corrected=1.0, n_ref=int(ref.shape[0]), n_cur=int(cur.shape[0]), method=method,
                            skipped=f"need >= {min_frames} frames per window, got {ref.shape[0]} and {cur.shape[0]}")
    r = _ks_columns(ref, cur, ref_ts, cur_ts, ref_groups, cur_groups)
    p_corr = min(1.0, float(r["p"].min()) * k)
    return SoftmaxDrift(
        drift=bool(p_corr < alpha),
        p_min_corrected=p_corr,
        n_ref=int(ref.shape[0]),
        n_cur=int(cur.shape[0]),
        method=method,
        p_values=tuple(r["p"].tolist()),
        statistics=tuple(r["d"].tolist()),
        classes=tuple(names),
        n_ref_eff=float(r["n1e"].min()),
        n_cur_eff=float(r["n2e"].min()),
        alpha=alpha,
    )


def class_distribution_drift(
    ref_labels: Sequence[str] | np.ndarray,
    cur_labels: Sequence[str] | np.ndarray,
    classes: Sequence[str],
    alpha: float = 0.05,
    ref_ts: Any = None,
    cur_ts: Any = None,
    ref_groups: Any = None,
    cur_groups: Any = None,
    min_frames: int = 20,
) -> ClassDistributionDrift:
    """Chi-square test of the predicted-class distribution, reference vs current window.

    ``ref_labels``/``cur_labels``: class names, or integer numpy arrays of class indices into ``classes`` (what the
    evaluator passes for millions of frames; an index outside ``classes`` counts as ``(other)``).

    Labels outside ``classes`` (e.g. ``unknown`` for degraded predictions) count in an ``(other)`` bucket.
    The Pearson statistic is divided by the Rao-Scott first-order design effect
    ``mean_c (1 - share_c) deff_c / (k - 1)`` with ``deff_c`` the variance inflation of class ``c``'s
    share from correlated frames (floored at 1), then referred to chi-square with ``k - 1`` degrees of
    freedom (``k``: categories seen in either window).
    """
    _check_alpha(alpha)
    cats = list(classes) + ["(other)"]
    pos = {c: i for i, c in enumerate(classes)}

    def onehot(labels: Any) -> np.ndarray:
        if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":  # class indices (anything else: "(other)")
            idx = np.where((labels >= 0) & (labels < len(classes)), labels, len(classes)).astype(np.int64)
        else:
            idx = np.array([pos.get(v, len(classes)) for v in list(labels)], dtype=np.int64)
        oh = np.zeros((idx.size, len(cats)))
        oh[np.arange(idx.size), idx] = 1.0
        return oh

    a, b = onehot(ref_labels), onehot(cur_labels)
    n1, n2 = a.shape[0], b.shape[0]
    method = "chi2-rao-scott-neff"
    c1, c2 = a.sum(axis=0), b.sum(axis=0)
    base: dict[str, Any] = dict(
        categories=tuple(cats), ref_counts=tuple(c1.astype(int).tolist()), cur_counts=tuple(c2.astype(int).tolist()),
        n_ref=int(n1), n_cur=int(n2), alpha=alpha, method=method,
    )
    if min(n1, n2) < min_frames:
        return ClassDistributionDrift(**base, drift=False, p_min_corrected=1.0, skipped=f"need >= {min_frames} frames per window, got {n1} and {n2}")
    used = (c1 + c2) > 0
    base["tv_distance"] = float(0.5 * np.abs(c1 / n1 - c2 / n2).sum())
    if used.sum() < 2:
        return ClassDistributionDrift(**base, drift=False, p_min_corrected=1.0, p_value=1.0, chi2=0.0, chi2_adjusted=0.0, dof=0, design_effect=1.0)
    table = np.vstack([c1[used], c2[used]])
    chi2 = float(_st.chi2_contingency(table, correction=False).statistic)
    n1e, tau_ref = effective_sample_size(a[:, used], ref_ts, ref_groups)
    n2e = _current_n_eff(len(b), tau_ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        deff_c = (1.0 / n1e + 1.0 / n2e) / (1.0 / n1 + 1.0 / n2)
    deff_c = np.where(np.isfinite(deff_c), np.maximum(deff_c, 1.0), 1.0)
    share = (c1[used] + c2[used]) / (n1 + n2)
    dof = int(used.sum()) - 1
    deff = max(1.0, float(((1.0 - share) * deff_c).sum() / dof))
    p = float(_st.chi2.sf(chi2 / deff, dof))
    return ClassDistributionDrift(
        **base,
        drift=bool(p < alpha),
        p_value=p,
        p_min_corrected=p,
        chi2=chi2,
        chi2_adjusted=chi2 / deff,
        dof=dof,
        design_effect=deff,
        n_ref_eff=float(n1 / deff),
        n_cur_eff=float(n2 / deff),
    )


def image_stat_drift(
    ref: Mapping[str, np.ndarray],
    cur: Mapping[str, np.ndarray],
    alpha: float = 0.05,
    ref_ts: Any = None,
    cur_ts: Any = None,
    ref_groups: Any = None,
    cur_groups: Any = None,
    min_frames: int = 20,
) -> ImageStatDrift:
    """Per-statistic drift of image statistics (call it per camera), Bonferroni over statistics.

    ``ref``/``cur``: ``{stat_name: (n,) values}`` (as :func:`pipeline.imagestats.image_stats_batch` returns,
    or the frames table's columns). For each statistic present in both: the KS statistic and its
    p-value at the effective sample sizes, and the standardized mean shift
    ``smd = (mean_cur - mean_ref) / sd_ref`` (pooled sd when the reference is constant) with a z-test
    of the means at the effective sizes. ``drift`` when the Bonferroni-corrected smallest KS p-value is
    below ``alpha``; ``worst`` names that statistic.
    """
    _check_alpha(alpha)
    names = [k for k in ref if k in cur]
    if not names:
        raise ValueError(f"no image statistic in both windows (reference has {sorted(ref)}, current has {sorted(cur)})")
    r = np.column_stack([np.asarray(ref[k], dtype=np.float64).ravel() for k in names]) if len(ref[names[0]]) else np.zeros((0, len(names)))
    c = np.column_stack([np.asarray(cur[k], dtype=np.float64).ravel() for k in names]) if len(cur[names[0]]) else np.zeros((0, len(names)))
    method = "ks-neff-bonferroni+smd"
    if min(r.shape[0], c.shape[0]) < min_frames:
        return ImageStatDrift(drift=False, p_min_corrected=1.0, n_ref=int(r.shape[0]), n_cur=int(c.shape[0]), method=method,
                              skipped=f"need >= {min_frames} frames per window, got {r.shape[0]} and {c.shape[0]}")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))):
        raise ValueError("image statistics contain NaN or infinite values")
    res = _ks_columns(r, c, ref_ts, cur_ts, ref_groups, cur_groups)
    out_stats: dict[str, ImageStat] = {}
    for j, name in enumerate(names):
        mr, mc = float(r[:, j].mean()), float(c[:, j].mean())
        sr, sc = float(r[:, j].std(ddof=1)), float(c[:, j].std(ddof=1))
        scale = sr if sr > 0 else math.sqrt((sr * sr + sc * sc) / 2.0)
        smd = (mc - mr) / scale if scale > 0 else 0.0
        se = math.sqrt(sr * sr / res["n1e"][j] + sc * sc / res["n2e"][j])
        p_mean = float(2 * _st.norm.sf(abs(mc - mr) / se)) if se > 0 else (1.0 if mc == mr else 0.0)
        out_stats[name] = ImageStat(
            ks=float(res["d"][j]),
            p_value=float(res["p"][j]),
            smd=smd,
            mean_p_value=p_mean,
            ref_mean=mr,
            cur_mean=mc,
            n_ref_eff=float(res["n1e"][j]),
            n_cur_eff=float(res["n2e"][j]),
        )
    jmin = int(np.argmin(res["p"]))
    p_corr = min(1.0, float(res["p"][jmin]) * len(names))
    return ImageStatDrift(
        drift=bool(p_corr < alpha),
        p_min_corrected=p_corr,
        n_ref=int(r.shape[0]),
        n_cur=int(c.shape[0]),
        method=method,
        worst=names[jmin],
        stats=out_stats,
        alpha=alpha,
    )
