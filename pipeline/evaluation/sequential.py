"""Anytime-valid confidence sequences: decisions that stay valid however often a team looks.

Why
---
The fixed-sample intervals and McNemar test of :mod:`pipeline.evaluation.stats` are valid at *one*
pre-planned sample size. Re-testing champion vs challenger at every evaluation window and acting on
the first "significant" look promotes noise far more often than ``alpha`` (``scripts/sim_sequential.py``
measures how much). A *confidence sequence* (CS) ``(low_t, high_t)`` covers the true value at all
times at once: ``P(for all t: low_t <= mu <= high_t) >= 1 - alpha``. So a decision taken at any look,
chosen in any data-dependent way (a stopping time), keeps its error rate.

Method
------
The predictable plug-in empirical-Bernstein CS (PrPl-EB) of Waudby-Smith & Ramdas (2024), "Estimating
means of bounded random variables by betting", JRSS-B 86(1), Theorem 2 and eqs. (13)-(15), as
implemented in the authors' ``confseq`` package (``src/confseq/predmix.py``:
``predmix_empbern_lower_cs`` / ``predmix_empbern_cs``, and ``src/confseq/betting_strategies.py``:
``lambda_predmix_eb``; github.com/gostevehoward/confseq). For observations ``x_i`` in ``[0, 1]``::

    mu_t      = min((1/2 + sum_{i<=t} x_i) / (t + 1), 1)                       regularised mean
    sigma2_t  = (1/4 + sum_{i<=t} (x_i - mu_i)^2) / (t + 1)                    regularised variance
    lambda_t  = min(sqrt(2 log(1/a) / (t log(1 + t) sigma2_{t-1})), c)         predictable bet, c = 1/2
    v_t       = (x_t - xbar_{t-1})^2,   xbar_{t-1} = mean of x_1..x_{t-1} (0 at t = 1)
    psi(l)    = -log(1 - l) - l                                                 (= 4 psi_E(l) of the paper)
    low_t     = (sum lambda_i x_i - log(1/a) - sum v_i psi(lambda_i)) / sum lambda_i

``low_t`` is a lower CS at level ``a``; the upper CS is ``1 - low_t`` computed on ``1 - x``; the two-sided
CS uses ``a = alpha/2`` on each side (so ``log(1/a) = log(2/alpha)``, the paper's eq. (13)). We then take
the running intersection (``max`` of lows, ``min`` of highs: ``confseq.misc.get_running_intersection``)
and clip to the parameter's range. Two details differ from ``predmix.py``, neither affects validity:
``xbar_{t-1}`` is clipped to ``<= 1`` (a no-op for data in [0, 1], needed for the weighted observations
below), and the running intersection of the lower bound is a running *maximum* (``predmix.py`` passes
``np.minimum.accumulate`` there, which only loosens it).

Why it is valid (the part the weighted version relies on): for ``xi >= -1`` and ``l`` in ``[0, 1)``,
``exp(l xi - psi(l) xi^2) <= 1 + l xi`` (Fan, Grama & Liu 2015). With ``xi_t = x_t - xbar_{t-1}`` and
predictable ``lambda_t``, ``prod exp(lambda_i (x_i - m) - v_i psi(lambda_i))`` is then a nonnegative
supermartingale when the conditional mean of ``x_t`` is ``m``; Ville's inequality gives the lower CS.
This needs ``x_t >= 0`` and ``xbar_{t-1}`` in ``[0, 1]`` only, *not* ``x_t <= 1`` (``confseq`` documents
its lower CS for "observations in [0, inf]").

What it covers on a drifting stream
-----------------------------------
The supermartingale above is built from ``lambda_t (x_t - m_t)``; when the conditional mean ``m_t`` changes over
time (a camera drifting from day to night), ``low_t`` bounds the *bet-weighted* average ``sum lambda_i m_i /
sum lambda_i``, and the predictable bets shrink over time, so early frames weigh more than late ones. The
accuracy and gap sequences therefore describe the stream's accuracy when it is steady within the evaluated scope;
on a drifting stream they lag behind it (the demo's stream 1, which drifts from day to night, is such a stream:
``tests/apps/test_demo.py`` asserts the anytime-valid gap only on the steady stream 2). Evaluate steady windows (``evaluate_windows``) for them; the fixed-sample
intervals of :mod:`~pipeline.evaluation.stats` / :mod:`~pipeline.evaluation.ppi` cover the scope's average.

Inverse-probability-weighted (IPW) observations
-----------------------------------------------
Labels come from Poisson sampling: frame ``t`` of the stream is labelled (``I_t = 1``) with the
recorded probability ``pi_t`` (:mod:`pipeline.sampling`), and ``Z_t`` in ``{0, 1}`` says whether the
model was right. Over the stream of *all* frames, ``X_t = I_t Z_t / pi_t`` has mean ``mu`` (the stream's
accuracy) whatever ``pi_t`` is, as long as ``pi_t > 0``. We use two one-sided CSs on nonnegative
observations, each valid without an upper bound on the observation:

* lower bound on ``mu`` from ``s * I_t Z_t / pi_t`` (mean ``s mu``),
* upper bound from ``s * I_t (1 - Z_t) / pi_t`` (mean ``s (1 - mu)``),

each at ``alpha/2``, then divided by ``s``. ``s = pi_floor`` is a **fixed scale** chosen before the data
(the sampler's floor probability, ``uniform_floor * rate``): it puts the observations in ``[0, 1]``,
which is what the method's tuning (prior variance 1/4, ``lambda <= 1/2``) assumes. Because validity
needs nonnegativity only, a frame whose ``pi`` falls below ``pi_floor`` (e.g. a budget cut) leaves the
CS valid, just a little wider. We deliberately do **not** rescale per step by the frame's own ``pi_t``:
``pi_t`` is computed from the same frame whose correctness ``Z_t`` is measured (uncertainty sampling
favours frames the model gets wrong), so ``E[Z_t | pi_t] != mu`` and a bet sized with ``pi_t`` would not
be predictable for that mean. The scale must not be tuned on the data either, hence no default for
unequal probabilities. The paired difference ``D_t = Z_shadow - Z_incumbent`` in ``[-1, 1]`` is handled
the same way with ``I_t (1 + D_t) / (2 pi_t)`` (mean ``(1 + delta)/2``) and ``I_t (1 - D_t) / (2 pi_t)``.
With every frame labelled (``pi = 1``) all of this reduces exactly to the bounded PrPl-EB CS.

Stream encoding: arrays run over every frame offered to the sampler, in order; ``NaN`` in ``correct``
marks a frame that was not labelled (its ``pi`` may be ``NaN`` too: its IPW term is 0 whatever ``pi``).
:func:`place_labels` builds such arrays from labelled rows and their stream positions. With uniform
sampling, labelled frames are an i.i.d. sample of the stream: pass them alone with
``inclusion_prob=None`` -- the CS then runs in label time and is much tighter.

A difference that is not 0/1 (the champion's cost minus the challenger's, scaled to [-1, 1] by the cost range:
``EvalConfig.decide_on="cost"``) goes through :func:`difference_cs` and :func:`difference_cs_with_disagreement`,
the same constructions on a per-frame ``D`` in [-1, 1] (they reproduce :func:`paired_cs` and
:func:`paired_cs_with_disagreement` exactly when ``D = Z_chall - Z_champ``).

Everything here is pure numpy; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats as _st

ACTIONS = ("promote", "equivalent", "retire", "need_more_labels")
DEFAULT_TRUNCATION = 0.5  # c of the paper: 1/2 or 3/4
_PROJECTION_CAP = 1e12  # labels beyond which "need more labels" gives no estimate
_PROMOTE, _EQUIVALENT, _RETIRE, _MORE = range(4)


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class ConfidenceSequence:
    """A confidence sequence, summarised at its latest time.

    ``value``: the point estimate at the latest time (mean, IPW mean, or difference); ``low``/``high``:
    the CS at the latest time; ``n``: observations (frames of the stream, or labels in label time);
    ``n_labels``: labelled frames among them; ``lows``/``highs``: the running bounds at every time
    (monotone: running intersection). ``alpha``: the CS covers at all times with probability
    ``>= 1 - alpha``. ``method`` names the construction.
    """

    value: float
    low: float
    high: float
    n: int
    n_labels: int
    alpha: float
    method: str
    lows: np.ndarray = field(repr=False, compare=False)
    highs: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("lows", "highs")}
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class SequentialDecision:
    """Champion/challenger decision from a CS of ``challenger - champion`` accuracy.

    ``action``: one of :data:`ACTIONS`; ``value``/``low``/``high``: the paired difference and its CS at
    the time of the decision; ``n``: paired labels spent; ``delta``: the margin; ``more_labels``: the
    projected extra paired labels to reach a decision (``need_more_labels`` only; None when no
    projection is possible); ``reason``: one line for people.
    """

    action: str
    value: float
    low: float
    high: float
    n: int
    delta: float
    alpha: float
    method: str
    more_labels: int | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


# --------------------------------------------------------------------------------------------
# validation


def _check_alpha(alpha: float, name: str = "alpha") -> float:
    a = float(alpha)
    if not (0.0 < a < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {alpha!r}")
    return a


def _check_truncation(truncation: float) -> float:
    c = float(truncation)
    if not (0.0 < c < 1.0):
        raise ValueError(f"truncation must be in (0, 1) (the paper uses 1/2 or 3/4), got {truncation!r}")
    return c


def _series(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (time) or 2-D (runs x time), got shape {a.shape}")
    return a


def _stream(correct: Any, name: str) -> np.ndarray:
    """1-D float array of 0/1 with NaN for frames not labelled."""
    a = np.asarray(correct)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per frame), got shape {a.shape}")
    a = a.astype(np.float64)
    seen = a[~np.isnan(a)]
    if seen.size and not np.isin(seen, (0.0, 1.0)).all():
        bad = seen[~np.isin(seen, (0.0, 1.0))][0]
        raise ValueError(f"{name} must hold 0/1 (or NaN for frames not labelled), got {bad!r}")
    return a


def _stream_pi(inclusion_prob: Any, labelled: np.ndarray) -> np.ndarray:
    n = labelled.shape[0]
    if inclusion_prob is None:
        if not labelled.all():
            i = int(np.flatnonzero(~labelled)[0])
            raise ValueError(
                f"frame {i} is NaN (not labelled) but inclusion_prob is None (every frame labelled): "
                "pass the inclusion probabilities, or the labelled frames alone"
            )
        return np.ones(n)
    p = np.asarray(inclusion_prob, dtype=np.float64)
    if p.shape != (n,):
        raise ValueError(f"inclusion_prob must have shape ({n},) like correct, got {p.shape}")
    if np.isnan(p[labelled]).any():
        i = int(np.flatnonzero(labelled & np.isnan(p))[0])
        raise ValueError(f"inclusion_prob is NaN at labelled frame {i}; a labelled frame needs its probability")
    known = p[~np.isnan(p)]
    if known.size and ((known <= 0).any() or (known > 1).any() or not np.isfinite(known).all()):
        raise ValueError(f"inclusion_prob must lie in (0, 1]; got min {known.min():.3g}, max {known.max():.3g}")
    return p


def _scale(pi: np.ndarray, pi_floor: float | None) -> float:
    """The fixed scale ``s`` of the IPW observations (module docstring)."""
    if pi_floor is not None:
        s = float(pi_floor)
        if not (0.0 < s <= 1.0):
            raise ValueError(f"pi_floor must lie in (0, 1], got {pi_floor!r} (the sampler's floor probability)")
        return s
    known = pi[~np.isnan(pi)]
    if known.size == 0 or float(np.ptp(known)) <= 1e-12 * float(known.max()):
        return float(known[0]) if known.size else 1.0  # one design probability for every frame
    raise ValueError(
        "pi_floor is required when inclusion probabilities differ: pass the sampler's floor probability "
        f"(uniform_floor * rate), fixed before the data; got pi from {known.min():.3g} to {known.max():.3g}"
    )


def _paired_streams(champ_correct: Any, chall_correct: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Both models' correctness streams (0/1, NaN where not labelled) and the labelled mask, checked alike."""
    za = _stream(champ_correct, "champ_correct")
    zb = _stream(chall_correct, "chall_correct")
    if za.shape != zb.shape:
        raise ValueError(f"champ_correct and chall_correct differ in length: {za.shape[0]} vs {zb.shape[0]}")
    lab = ~np.isnan(za)
    if (lab != ~np.isnan(zb)).any():
        i = int(np.flatnonzero(lab != ~np.isnan(zb))[0])
        raise ValueError(f"champ_correct and chall_correct must be labelled at the same frames; they differ at frame {i}")
    return za, zb, lab


def place_labels(positions: Any, n_frames: int, values: Any) -> np.ndarray:
    """A stream-length array with ``values`` at the labelled frames' ``positions`` and NaN elsewhere.

    ``positions``: (k,) 0-based index of each labelled frame in the stream of ``n_frames`` frames offered
    to the sampler (e.g. its rank by time among all predictions); ``values``: (k,) per labelled frame
    (correctness or inclusion probability).
    """
    pos = np.asarray(positions)
    v = np.asarray(values, dtype=np.float64)
    if pos.ndim != 1 or v.shape != pos.shape:
        raise ValueError(f"positions and values must be 1-D of the same length, got {pos.shape} and {v.shape}")
    if int(n_frames) < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames!r}")
    if pos.size:
        if not np.issubdtype(pos.dtype, np.integer):
            raise ValueError(f"positions must be integers, got dtype {pos.dtype}")
        if pos.min() < 0 or pos.max() >= n_frames:
            raise ValueError(f"positions must lie in [0, n_frames={n_frames}), got {pos.min()}..{pos.max()}")
        if np.unique(pos).size != pos.size:
            raise ValueError("positions must be distinct (one entry per labelled frame)")
    out = np.full(int(n_frames), np.nan)
    out[pos] = v
    return out


# --------------------------------------------------------------------------------------------
# the confidence sequence itself


def _predmix_lambdas(x: np.ndarray, alpha: float, truncation: float) -> np.ndarray:
    """``confseq.betting_strategies.lambda_predmix_eb`` (prior mean 1/2, prior variance 1/4, one fake
    observation): ``lambda_t`` uses ``x_1..x_{t-1}`` only (predictable)."""
    t = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    mu = np.minimum((0.5 + np.cumsum(x, axis=-1)) / (t + 1.0), 1.0)
    sigma2 = (0.25 + np.cumsum((x - mu) ** 2, axis=-1)) / (t + 1.0)
    sigma2_prev = np.concatenate([np.full(x.shape[:-1] + (1,), 0.25), sigma2[..., :-1]], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        lam = np.sqrt(2.0 * math.log(1.0 / alpha) / (t * np.log1p(t) * sigma2_prev))
    lam = np.where(np.isnan(lam), 0.0, lam)
    return np.minimum(lam, truncation)


def eb_lower_cs(x: Any, alpha: float = 0.05, truncation: float = DEFAULT_TRUNCATION) -> np.ndarray:
    """One-sided PrPl-EB lower confidence sequence at level ``alpha`` for the (conditional) mean of
    nonnegative observations ``x`` (``confseq.predmix.predmix_empbern_lower_cs``; module docstring).

    ``x``: (T,) or (runs, T), ``>= 0``; values above 1 are allowed (the bound stays valid; the tuning
    expects [0, 1]). Returns the bound at every time, *without* running intersection or clipping.
    """
    a = _check_alpha(alpha)
    c = _check_truncation(truncation)
    x = _series(x, "x")
    if x.size and (not np.isfinite(x).all() or (x < 0).any()):
        raise ValueError(f"x must be finite and >= 0 for a lower confidence sequence, got min {np.nanmin(x):.3g}")
    if x.shape[-1] == 0:
        return np.zeros(x.shape)
    t = np.arange(1, x.shape[-1] + 1, dtype=np.float64)
    lam = _predmix_lambdas(x, a, c)
    xbar = np.cumsum(x, axis=-1) / t
    xbar_prev = np.minimum(np.concatenate([np.zeros(x.shape[:-1] + (1,)), xbar[..., :-1]], axis=-1), 1.0)
    v = (x - xbar_prev) ** 2
    psi = -np.log1p(-lam) - lam
    return (np.cumsum(lam * x, axis=-1) - math.log(1.0 / a) - np.cumsum(v * psi, axis=-1)) / np.cumsum(lam, axis=-1)


def _two_sided(pos: np.ndarray, neg: np.ndarray, alpha: float, truncation: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Lower CSs at ``alpha/2`` for the means of ``scale*pos`` and ``scale*neg``, unscaled.

    Callers map them to the parameter: ``pos`` has mean ``A`` and ``neg`` mean ``1 - A`` for a quantity
    ``A`` in [0, 1]; returns ``(low_A, high_A)`` at every time, intersected over time and clipped.
    """
    lo = eb_lower_cs(scale * pos, alpha / 2.0, truncation) / scale
    hi = 1.0 - eb_lower_cs(scale * neg, alpha / 2.0, truncation) / scale
    lo = np.clip(np.maximum.accumulate(lo, axis=-1), 0.0, 1.0)
    hi = np.clip(np.minimum.accumulate(hi, axis=-1), 0.0, 1.0)
    return lo, hi


def eb_confidence_sequence(
    x: Any,
    alpha: float = 0.05,
    lo: float = 0.0,
    hi: float = 1.0,
    truncation: float = DEFAULT_TRUNCATION,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided PrPl-EB confidence sequence for the mean of observations bounded in ``[lo, hi]``.

    ``x``: (T,) or (runs, T) along the last axis. Returns ``(lower, upper)`` of the same shape: the CS at
    every time, running-intersected (``lower`` non-decreasing, ``upper`` non-increasing) and clipped to
    ``[lo, hi]``; ``P(lower_t <= mean <= upper_t for all t) >= 1 - alpha``
    (``confseq.predmix.predmix_empbern_cs`` with ``running_intersection=True``).
    """
    _check_alpha(alpha)
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite lo < hi, got lo={lo!r}, hi={hi!r}")
    x = _series(x, "x")
    if x.size and (not np.isfinite(x).all() or x.min() < lo or x.max() > hi):
        raise ValueError(f"x must lie in [lo={lo}, hi={hi}], got {np.nanmin(x):.3g}..{np.nanmax(x):.3g}")
    y = (x - lo) / (hi - lo)
    low, high = _two_sided(y, 1.0 - y, alpha, truncation, 1.0)
    return lo + (hi - lo) * low, lo + (hi - lo) * high


def _summary(value: float, low_a: np.ndarray, high_a: np.ndarray, to_param, n_labels: int, alpha: float, method: str, empty: tuple[float, float]) -> ConfidenceSequence:
    lows, highs = to_param(low_a), to_param(high_a)
    if lows.shape[0] == 0:
        return ConfidenceSequence(float("nan"), empty[0], empty[1], 0, 0, alpha, method, lows, highs)
    return ConfidenceSequence(value, float(lows[-1]), float(highs[-1]), int(lows.shape[0]), n_labels, alpha, method, lows, highs)


def accuracy_cs(
    correct: Any,
    inclusion_prob: Any = None,
    alpha: float = 0.05,
    *,
    pi_floor: float | None = None,
    truncation: float = DEFAULT_TRUNCATION,
) -> ConfidenceSequence:
    """Anytime-valid CS for a model's production accuracy from Poisson-sampled labels.

    ``correct``: (T,) per frame of the stream, in order: 1/0 if labelled (model right/wrong), NaN if not;
    ``inclusion_prob``: (T,) the probability each frame had of being labelled (NaN allowed where not
    labelled); None = every frame with a 0/1 was labelled for sure (label time; also right for uniform
    sampling when only the labelled frames are passed). ``pi_floor``: the fixed scale of the IPW terms
    (the sampler's floor probability); required when the probabilities differ. ``value`` is the
    Horvitz-Thompson estimate ``sum(I Z / pi) / T``. See the module docstring.
    """
    a = _check_alpha(alpha)
    z = _stream(correct, "correct")
    lab = ~np.isnan(z)
    pi = _stream_pi(inclusion_prob, lab)
    s = _scale(pi, pi_floor)
    w = np.where(lab, 1.0 / np.where(lab, pi, 1.0), 0.0)  # I_t / pi_t
    zz = np.where(lab, z, 0.0)
    pos, neg = w * zz, w * (1.0 - zz)
    low, high = _two_sided(pos, neg, a, truncation, s)
    value = float(pos.mean()) if pos.size else float("nan")
    method = "prpl-eb" if inclusion_prob is None else "prpl-eb-ipw"
    return _summary(value, low, high, lambda u: u, int(lab.sum()), a, method, (0.0, 1.0))


def paired_cs(
    champ_correct: Any,
    chall_correct: Any,
    inclusion_prob: Any = None,
    alpha: float = 0.05,
    *,
    pi_floor: float | None = None,
    truncation: float = DEFAULT_TRUNCATION,
) -> ConfidenceSequence:
    """Anytime-valid CS for ``accuracy(challenger) - accuracy(champion)`` on frames labelled with both
    predictions.

    ``champ_correct``/``chall_correct``: (T,) per frame, 1/0 where labelled, NaN where not (at the same
    frames); ``inclusion_prob``/``pi_floor`` as in :func:`accuracy_cs`. Observations
    ``D = Z_chall - Z_champ`` in [-1, 1] are mapped to [0, 1] as ``(1 + D)/2``; with every frame
    labelled this equals ``eb_confidence_sequence(D, alpha, lo=-1, hi=1)``. ``n_labels``: paired labels.
    """
    za, zb, lab = _paired_streams(champ_correct, chall_correct)
    method = "prpl-eb-paired" if inclusion_prob is None else "prpl-eb-ipw-paired"
    return _difference_cs(np.where(lab, zb - za, np.nan), lab, inclusion_prob, alpha, pi_floor, truncation, method)


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval for ``k`` successes in ``n`` trials; ``(0, 1)`` when ``n == 0``.

    Equals ``statsmodels.stats.proportion.proportion_confint(k, n, alpha, method="beta")``.
    """
    _check_alpha(alpha)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"clopper_pearson needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 0.0, 1.0
    low = 0.0 if k == 0 else float(_st.beta.ppf(alpha / 2.0, k, n - k + 1))
    high = 1.0 if k == n else float(_st.beta.ppf(1.0 - alpha / 2.0, k + 1, n - k))
    return low, high


def gap_cs(
    offline_acc: float,
    offline_n: int,
    correct: Any,
    inclusion_prob: Any = None,
    alpha: float = 0.05,
    *,
    pi_floor: float | None = None,
    truncation: float = DEFAULT_TRUNCATION,
) -> ConfidenceSequence:
    """Anytime-valid CS for the train-to-production gap ``offline accuracy - production accuracy``.

    The offline accuracy (model card: ``test_accuracy`` on ``test_size`` images) is a fixed sample: its
    Clopper-Pearson interval at ``alpha/2`` (``k = round(offline_acc * offline_n)``) is combined with
    the production CS of :func:`accuracy_cs` at ``alpha/2`` (union bound):
    ``[l_off - high_prod_t, h_off - low_prod_t]`` covers the gap at all times with probability
    ``>= 1 - alpha``. ``correct``/``inclusion_prob``/``pi_floor`` as in :func:`accuracy_cs`.
    """
    a = _check_alpha(alpha)
    p1 = float(offline_acc)
    if not (math.isfinite(p1) and 0.0 <= p1 <= 1.0):
        raise ValueError(f"offline_acc must be in [0, 1], got {offline_acc!r} (model card test_accuracy)")
    if int(offline_n) != offline_n or int(offline_n) < 1:
        raise ValueError(f"offline_n must be an integer >= 1, got {offline_n!r} (model card test_size)")
    n1 = int(offline_n)
    l1, h1 = clopper_pearson(int(round(p1 * n1)), n1, a / 2.0)
    prod = accuracy_cs(correct, inclusion_prob, a / 2.0, pi_floor=pi_floor, truncation=truncation)
    lows = np.clip(l1 - prod.highs, -1.0, 1.0)
    highs = np.clip(h1 - prod.lows, -1.0, 1.0)
    method = f"clopper-pearson+{prod.method}"
    if prod.n == 0:
        return ConfidenceSequence(float("nan"), -1.0, 1.0, 0, 0, a, method, lows, highs)
    return ConfidenceSequence(p1 - prod.value, float(lows[-1]), float(highs[-1]), prod.n, prod.n_labels, a, method, lows, highs)


# --------------------------------------------------------------------------------------------
# decisions


def decision_codes(low: Any, high: Any, delta: float = 0.01) -> np.ndarray:
    """Vectorised decision rule of :func:`sequential_decision`: 0 promote, 1 equivalent, 2 retire,
    3 need more labels (index into :data:`ACTIONS`)."""
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return np.select(
        [lo > delta, (lo >= -delta) & (hi <= delta), hi < delta],
        [_PROMOTE, _EQUIVALENT, _RETIRE],
        default=_MORE,
    )


def _log_rate(n: float) -> float:
    """How a CS half-width shrinks with ``n`` observations, up to a constant: ``sqrt(log(1+n)/n)``."""
    return math.sqrt(math.log1p(n) / n)


def project_labels(low: float, high: float, n: int, delta: float) -> int | None:
    """Extra labels until the CS ``[low, high]`` after ``n`` labels would decide, if its centre stays
    and its half-width shrinks like ``sqrt(log(1+n)/n)``; None when no estimate is possible."""
    if n < 1 or not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        return None
    centre, half = (low + high) / 2.0, (high - low) / 2.0
    target = abs(centre - delta)  # promote (centre > delta) or retire (centre < delta)
    if abs(centre) < delta:
        target = max(target, delta - abs(centre))  # or equivalent, whichever comes first
    if target <= 0.0:
        return None
    if half <= target:
        return 1
    goal = _log_rate(n) * target / half
    lo_n, hi_n = float(n), float(n)
    while _log_rate(hi_n) > goal:
        hi_n *= 2.0
        if hi_n > _PROJECTION_CAP:
            return None
    for _ in range(100):  # bisection on the decreasing function _log_rate
        mid = (lo_n + hi_n) / 2.0
        if _log_rate(mid) > goal:
            lo_n = mid
        else:
            hi_n = mid
        if hi_n - lo_n < 0.5:
            break
    return max(1, int(math.ceil(hi_n - n)))


def sequential_decision(
    low: float,
    high: float,
    labels_spent: int,
    *,
    delta: float = 0.01,
    value: float = float("nan"),
    alpha: float = 0.05,
    method: str = "prpl-eb-paired",
) -> SequentialDecision:
    """Champion/challenger decision from the CS ``[low, high]`` of ``challenger - champion`` accuracy.

    Rules, in this order of precedence:

    1. ``promote``: ``low > delta`` -- the challenger is better by more than ``delta``.
    2. ``equivalent``: ``-delta <= low`` and ``high <= delta`` -- the two are within ``delta`` of each other
       (e.g. an fp16 copy of the champion). Checked before ``retire`` because such an interval also has
       ``high < delta``: both say "not worth promoting on accuracy", but ``equivalent`` adds that it is not
       worse either, so cost or latency may decide.
    3. ``retire``: ``high < delta`` -- the challenger cannot be ``delta`` better (it may be worse).
    4. ``need_more_labels`` otherwise, with ``more_labels`` from :func:`project_labels`.

    ``promote`` and ``equivalent``/``retire`` exclude each other whenever ``low <= high``. A CS stays valid
    at every look, so this can be called after every window: ``P(ever promote | challenger not better
    by delta) <= alpha/2``. ``labels_spent``: paired labels behind the CS; ``value``/``alpha``/``method``
    are carried into the result (pass the :class:`ConfidenceSequence`'s).
    """
    lo, hi, d = float(low), float(high), float(delta)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"low and high must be finite, got low={low!r}, high={high!r}")
    if not (0.0 <= d < 1.0):
        raise ValueError(f"delta must be in [0, 1), got {delta!r}")
    n = int(labels_spent)
    if n < 0:
        raise ValueError(f"labels_spent must be >= 0, got {labels_spent!r}")
    code = int(decision_codes(lo, hi, d))
    action = ACTIONS[code]
    ci = f"[{lo:+.3f}, {hi:+.3f}]"
    more = None
    if code == _PROMOTE:
        reason = f"challenger better by more than {d:.3f}: CS {ci} after {n} paired labels"
    elif code == _EQUIVALENT:
        reason = f"challenger within +-{d:.3f} of the champion: CS {ci} after {n} paired labels"
    elif code == _RETIRE:
        reason = f"challenger cannot be {d:.3f} better: CS {ci} after {n} paired labels"
    else:
        more = project_labels(lo, hi, n, d)
        est = f"; ~{more} more paired labels if the estimate holds" if more is not None else ""
        reason = f"CS {ci} after {n} paired labels straddles the margin {d:.3f}{est}"
    return SequentialDecision(action, float(value), lo, hi, n, d, float(alpha), method, more, reason)


def decide(cs: ConfidenceSequence, delta: float = 0.01) -> SequentialDecision:
    """:func:`sequential_decision` on the latest interval of a :func:`paired_cs` result."""
    return sequential_decision(cs.low, cs.high, cs.n_labels, delta=delta, value=cs.value, alpha=cs.alpha, method=cs.method)


# --------------------------------------------------------------------------------------------
# the paired difference with the disagreement of every frame


# The bet cap for the disagreement rate observed on every frame: the paper's other recommended value (3/4 instead
# of 1/2). The rate is a 0/1 quantity seen on every frame, usually close to 0 (an fp16 copy: ~0.1%), where the cap,
# not the variance, limits how fast the bound shrinks (about log(1/alpha) / (cap * frames)). Validity holds for any
# cap below 1.
DISAGREEMENT_TRUNCATION = 0.75


def _upper_cs_binary(a: np.ndarray, alpha: float, truncation: float = DISAGREEMENT_TRUNCATION) -> np.ndarray:
    """Upper PrPl-EB CS at level ``alpha`` for the mean of 0/1 observations seen on every frame (no sampling)."""
    hi = 1.0 - eb_lower_cs(1.0 - a, alpha, truncation)
    return np.clip(np.minimum.accumulate(hi), 0.0, 1.0)


def _ipw_lower(x: np.ndarray, w: np.ndarray, s: float, alpha: float, truncation: float) -> np.ndarray:
    """Lower CS at ``alpha`` for the stream mean of a 0/1 quantity seen on labelled frames (IPW, scale ``s``)."""
    lo = eb_lower_cs(s * w * x, alpha, truncation) / s
    return np.clip(np.maximum.accumulate(lo), 0.0, 1.0)


def paired_cs_with_disagreement(
    champ_correct: Any,
    chall_correct: Any,
    disagree: Any,
    inclusion_prob: Any = None,
    alpha: float = 0.05,
    *,
    pi_floor: float | None = None,
    truncation: float = DEFAULT_TRUNCATION,
) -> ConfidenceSequence:
    """Anytime-valid CS for ``accuracy(challenger) - accuracy(champion)`` that also uses what *every* frame says.

    Two models can differ in correctness only on frames where their predictions differ, and every frame shows
    whether they do (``disagree``: 0/1 on every frame of the stream, no label needed). Write the difference
    ``D = Z_chall - Z_champ`` as ``D+ - D-`` with ``D+`` = challenger right and champion wrong, ``D-`` the
    reverse, and ``B`` = they disagree and both are wrong. On every frame ``D+ + D- + B = A`` (the
    disagreement indicator), so for the means ``E[D] = 2 E[D+] + E[B] - E[A] = E[A] - 2 E[D-] - E[B]``.
    Four one-sided CSs at ``alpha/4`` each (union bound: all hold at all times with probability
    ``>= 1 - alpha``): lower CSs for ``E[D+]``, ``E[D-]`` and ``E[B]`` from the labelled frames
    (inverse-probability weighted, nonnegative observations that are zero on every frame where the models
    agree, hence far less variable than the ``(1 +- D)/2`` observations of :func:`paired_cs`), and an upper CS
    for ``E[A]`` from every frame. Then ``low = 2 LB(D+) + LB(B) - UB(A)`` and ``high = UB(A) - 2 LB(D-) - LB(B)``.
    For two copies of one model (``A`` ~ 0) the interval collapses to about ``+-UB(A)`` without labels.

    ``champ_correct``/``chall_correct``/``inclusion_prob``/``pi_floor`` as in :func:`paired_cs` (the same frames);
    ``disagree``: (T,) 0/1, the models' predictions differ on that frame.
    """
    za, zb, lab = _paired_streams(champ_correct, chall_correct)
    dis = _disagreement(disagree, za.shape)
    agree_but_differ = lab & (dis == 0) & (za != zb)
    if agree_but_differ.any():
        i = int(np.flatnonzero(agree_but_differ)[0])
        raise ValueError(f"frame {i}: the models agree (disagree=0) but only one is correct; correctness must come from the same labels")
    method = "prpl-eb-disagreement" if inclusion_prob is None else "prpl-eb-ipw-disagreement"
    return _difference_cs_with_disagreement(np.where(lab, zb - za, np.nan), lab, dis, inclusion_prob, alpha, pi_floor,
                                            truncation, method)


# --------------------------------------------------------------------------------------------
# a difference that is not 0/1: e.g. the champion's cost minus the challenger's, scaled to [-1, 1]


def _difference_stream(diff: Any, name: str = "diff") -> tuple[np.ndarray, np.ndarray]:
    """A per-frame difference in [-1, 1] (NaN where not labelled) and the labelled mask."""
    d = np.asarray(diff, dtype=np.float64)
    if d.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per frame), got shape {d.shape}")
    lab = ~np.isnan(d)
    seen = d[lab]
    if seen.size and (not np.isfinite(seen).all() or seen.min() < -1.0 - 1e-12 or seen.max() > 1.0 + 1e-12):
        raise ValueError(f"{name} must lie in [-1, 1] (or be NaN for frames not labelled), got {seen.min():.4g}..{seen.max():.4g}")
    return np.where(lab, np.clip(d, -1.0, 1.0), np.nan), lab


def difference_cs(
    diff: Any,
    inclusion_prob: Any = None,
    alpha: float = 0.05,
    *,
    pi_floor: float | None = None,
    truncation: float = DEFAULT_TRUNCATION,
) -> ConfidenceSequence:
    """:func:`paired_cs` for a per-frame difference in [-1, 1] that need not be -1/0/+1.

    ``diff``: (T,) per frame of the stream, NaN where not labelled, e.g. ``(cost_champion - cost_challenger) /
    (cost range)`` (positive: the challenger is better). ``inclusion_prob``/``pi_floor`` as in :func:`accuracy_cs`.
    The observations ``I (1 +- D) / (2 pi)`` stay nonnegative with means ``(1 +- E D) / 2``, so the construction and
    its validity are those of :func:`paired_cs` (with ``D = Z_chall - Z_champ`` it gives exactly the same bounds).
    """
    d, lab = _difference_stream(diff)
    method = "prpl-eb-difference" if inclusion_prob is None else "prpl-eb-ipw-difference"
    return _difference_cs(d, lab, inclusion_prob, alpha, pi_floor, truncation, method)


def _difference_cs(d: np.ndarray, lab: np.ndarray, inclusion_prob: Any, alpha: float, pi_floor: float | None,
                   truncation: float, method: str) -> ConfidenceSequence:
    """The CS of :func:`difference_cs` / :func:`paired_cs`: ``d`` in [-1, 1] where ``lab``."""
    a = _check_alpha(alpha)
    pi = _stream_pi(inclusion_prob, lab)
    s = _scale(pi, pi_floor)
    w = np.where(lab, 1.0 / np.where(lab, pi, 1.0), 0.0)
    dd = np.where(lab, d, 0.0)
    pos, neg = w * (1.0 + dd) / 2.0, w * (1.0 - dd) / 2.0
    low, high = _two_sided(pos, neg, a, truncation, s)
    value = float((w * dd).mean()) if dd.size else float("nan")
    return _summary(value, low, high, lambda u: 2.0 * u - 1.0, int(lab.sum()), a, method, (-1.0, 1.0))


def difference_cs_with_disagreement(
    diff: Any,
    disagree: Any,
    inclusion_prob: Any = None,
    alpha: float = 0.05,
    *,
    pi_floor: float | None = None,
    truncation: float = DEFAULT_TRUNCATION,
) -> ConfidenceSequence:
    """:func:`paired_cs_with_disagreement` for a per-frame difference ``D`` in [-1, 1] that need not be -1/0/+1.

    ``D`` is 0 wherever the two models' predictions agree (a frame's cost depends only on its truth and the
    prediction), and every frame shows whether they agree (``disagree``, 0/1, no label needed). With
    ``D+ = max(D, 0)``, ``D- = max(-D, 0)`` and ``B = A (1 - |D|)`` (``A`` the disagreement indicator):
    ``D+ + D- + B = A`` on every frame, all three nonnegative, so the four one-sided CSs and the bounds of
    :func:`paired_cs_with_disagreement` carry over unchanged (for 0/1 correctness, ``B`` is "both wrong", and the two
    functions agree exactly).
    """
    d, lab = _difference_stream(diff)
    dis = _disagreement(disagree, d.shape)
    bad = lab & (dis == 0) & (np.abs(np.where(lab, d, 0.0)) > 1e-12)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"frame {i}: the models agree (disagree=0) but the difference is {d[i]:.4g}; it must be 0 where they agree")
    method = "prpl-eb-difference-disagreement" if inclusion_prob is None else "prpl-eb-ipw-difference-disagreement"
    return _difference_cs_with_disagreement(d, lab, dis, inclusion_prob, alpha, pi_floor, truncation, method)


def _disagreement(disagree: Any, shape: tuple[int, ...]) -> np.ndarray:
    dis = np.asarray(disagree, dtype=np.float64)
    if dis.shape != shape or (dis.size and not np.isin(dis, (0.0, 1.0)).all()):
        raise ValueError(f"disagree must be 0/1 on every frame, shape {shape}; got shape {dis.shape}")
    return dis


def _difference_cs_with_disagreement(d: np.ndarray, lab: np.ndarray, dis: np.ndarray, inclusion_prob: Any, alpha: float,
                                     pi_floor: float | None, truncation: float, method: str) -> ConfidenceSequence:
    """The CS of :func:`difference_cs_with_disagreement` / :func:`paired_cs_with_disagreement` (checked inputs)."""
    a = _check_alpha(alpha)
    c = _check_truncation(truncation)
    pi = _stream_pi(inclusion_prob, lab)
    s = _scale(pi, pi_floor)
    w = np.where(lab, 1.0 / np.where(lab, pi, 1.0), 0.0)
    dd = np.where(lab, d, 0.0)
    d_plus, d_minus = np.maximum(dd, 0.0), np.maximum(-dd, 0.0)
    b = np.where(lab, dis * (1.0 - np.abs(dd)), 0.0)
    q = a / 4.0
    if d.size == 0:
        return ConfidenceSequence(float("nan"), -1.0, 1.0, 0, 0, a, method, np.zeros(0), np.zeros(0))
    lb_plus = _ipw_lower(d_plus, w, s, q, c)
    lb_minus = _ipw_lower(d_minus, w, s, q, c)
    lb_b = _ipw_lower(b, w, s, q, c)
    ub_a = _upper_cs_binary(dis, q)
    lows = np.clip(np.maximum.accumulate(2 * lb_plus + lb_b - ub_a), -1.0, 1.0)
    highs = np.clip(np.minimum.accumulate(ub_a - 2 * lb_minus - lb_b), -1.0, 1.0)
    value = float((w * dd).mean())
    return ConfidenceSequence(value, float(lows[-1]), float(highs[-1]), int(d.size), int(lab.sum()), a, method, lows, highs)


def disagreement_bound(disagree: Any, alpha: float = 0.05, truncation: float = DISAGREEMENT_TRUNCATION) -> ConfidenceSequence:
    """``+-UB(A)``: an anytime-valid interval for ``accuracy(challenger) - accuracy(champion)`` from the disagreement
    of every frame alone (no labels): the difference is at most the rate at which the predictions differ."""
    a = _check_alpha(alpha)
    dis = np.asarray(disagree, dtype=np.float64)
    if dis.ndim != 1 or (dis.size and not np.isin(dis, (0.0, 1.0)).all()):
        raise ValueError("disagree must be a 1-D array of 0/1, one per frame")
    if dis.size == 0:
        return ConfidenceSequence(float("nan"), -1.0, 1.0, 0, 0, a, "disagreement-bound", np.zeros(0), np.zeros(0))
    ub = _upper_cs_binary(dis, a, _check_truncation(truncation))
    return ConfidenceSequence(float("nan"), float(-ub[-1]), float(ub[-1]), int(dis.size), 0, a, "disagreement-bound", -ub, ub)
