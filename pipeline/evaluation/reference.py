"""Drift against training: production windows compared with the model's training reference profile.

At export (``models/train.py``) the model's behaviour on its **validation split** is summarised in a
:class:`TrainingReference` that travels inside the ONNX file (``ModelCard.training_reference``): each image's
softmax and confidence, the predicted-class counts, and the image statistics of
:mod:`pipeline.imagestats` computed on the model-sized images (the same size the runtime computes them at).

:func:`training_drift` asks, for one window of production frames, the question a person asks: *how many of
these frames look like nothing the model was trained on?* For every image statistic (per camera) and for the
model's confidence it counts the frames beyond the training range, the reference's ``tail`` (1%) and ``1 - tail``
(99%) quantiles, in each direction that hurts a model (:data:`DIRECTIONS`: darker or brighter, lower or higher
contrast, blurrier, noisier, less confident: "38% of frames are darker than 99% of training frames"); for the
predicted classes it compares the mix with the validation mix.

Statistics (all pure functions of arrays):

* Under no drift a production frame lands below the reference's ``tail`` quantile with probability ``~tail``.
  The quantile is itself estimated from ``n_ref`` i.i.d. validation images, so the test uses the upper
  ``1 - alpha/2`` bound of that probability (the coverage of an order statistic is Beta distributed) and
  spends the other ``alpha/2`` on the production count.
* Production frames are correlated (an item stays in view for several frames); the count's effective sample
  size comes from the production indicator's own autocorrelation, within each camera in time order
  (:func:`pipeline.evaluation.drift.effective_sample_size`). The reference side is i.i.d.: its size is ``n_ref``.
* One-sided binomial test per tail, Bonferroni over every tail tested in the window.
* A window is **drifted** when a tail is both significant (corrected p < ``alpha``) and large: its share is at
  least ``min_effect`` (default 10 points) above the ``tail`` expected. Significance alone would flag
  harmless, tiny differences once windows hold thousands of frames; the effect size keeps the alarm to shifts
  a person would call a shift. The predicted-class mix uses a chi-square test on effective counts against the
  validation counts and its total-variation distance as the effect.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from pipeline.evaluation.drift import effective_sample_size
from pipeline.evaluation.result import ClassMixShift, TailShift, TrainingDrift
from pipeline.imagestats import STAT_NAMES

REFERENCE_SCHEMA = 1
DEFAULT_TAIL = 0.01
DEFAULT_MIN_EFFECT = 0.10
MAX_POINTS = 2000  # validation images kept in the profile (a random subset beyond this)

# The directions in which a feature leaving the training range hurts a model: darker or brighter, flatter or
# harsher contrast, blurrier (not sharper), noisier (not cleaner), less confident. A camera that is *cleaner* than
# the training images (e.g. frames downscaled from a larger sensor are less noisy than rendered training images) is a
# difference, not a shift to act on: those directions are not tested.
DIRECTIONS: dict[str, tuple[str, ...]] = {
    "brightness": ("low", "high"), "contrast": ("low", "high"), "sharpness": ("low",), "noise": ("high",), "confidence": ("low",),
}

# how a person says "below the training range" / "above it", per feature
WORDS: dict[str, tuple[str, str]] = {
    "brightness": ("darker", "brighter"),
    "contrast": ("lower in contrast", "higher in contrast"),
    "sharpness": ("blurrier", "sharper"),
    "noise": ("less noisy", "noisier"),
    "confidence": ("less confident", "more confident"),
}


@dataclass(frozen=True)
class TrainingReference:
    """The validation split as the model saw it: the baseline production is compared with.

    ``probs``: (n, C) calibrated softmax of each validation image; ``image_stats``: name -> (n,) values;
    ``n_total``: validation images before subsampling to ``MAX_POINTS``.
    """

    classes: tuple[str, ...]
    probs: np.ndarray
    image_stats: Mapping[str, np.ndarray]
    n_total: int
    source: str = "validation split"
    schema: int = REFERENCE_SCHEMA

    def __post_init__(self) -> None:
        p = np.asarray(self.probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] != len(self.classes) or p.shape[0] < 1:
            raise ValueError(f"training reference: probs must be (n >= 1, {len(self.classes)}), got {p.shape}")
        for k, v in self.image_stats.items():
            if np.asarray(v).shape != (p.shape[0],):
                raise ValueError(f"training reference: image_stats[{k!r}] must have {p.shape[0]} values, got {np.asarray(v).shape}")
        object.__setattr__(self, "probs", p)
        object.__setattr__(self, "image_stats", {k: np.asarray(v, dtype=np.float64) for k, v in self.image_stats.items()})

    @property
    def n(self) -> int:
        return int(self.probs.shape[0])

    @property
    def confidence(self) -> np.ndarray:
        return self.probs.max(axis=1)

    @property
    def predicted_counts(self) -> np.ndarray:
        return np.bincount(self.probs.argmax(axis=1), minlength=len(self.classes))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema, "source": self.source, "n_total": int(self.n_total), "classes": list(self.classes),
            "probs": np.round(self.probs, 5).tolist(),
            "image_stats": {k: np.round(v, 4).tolist() for k, v in self.image_stats.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "training reference") -> "TrainingReference":
        try:
            return cls(classes=tuple(d["classes"]), probs=np.asarray(d["probs"], dtype=np.float64),
                       image_stats={k: np.asarray(v, dtype=np.float64) for k, v in (d.get("image_stats") or {}).items()},
                       n_total=int(d.get("n_total", len(d["probs"]))), source=str(d.get("source", "validation split")),
                       schema=int(d.get("schema", REFERENCE_SCHEMA)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where}: not a training reference profile ({e})") from None


def build_reference(probs: np.ndarray, image_stats: Mapping[str, np.ndarray], classes: Sequence[str],
                    source: str = "validation split", max_points: int = MAX_POINTS, seed: int = 0) -> TrainingReference:
    """A reference profile from the validation split's softmax and image statistics (a random subset of at most
    ``max_points`` images keeps the model file small; the subset is a uniform sample, so still i.i.d.)."""
    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[0]
    keep = np.arange(n)
    if n > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    return TrainingReference(tuple(classes), p[keep], {k: np.asarray(v, dtype=np.float64)[keep] for k, v in image_stats.items()},
                             n_total=int(n), source=f"{source} ({n} images)")


# --- the test -----------------------------------------------------------------------------------------------------
def tail_bound(n_ref: int, tail: float, alpha: float) -> tuple[int, float]:
    """Rank ``r`` of the order statistic used as the ``tail`` quantile of ``n_ref`` i.i.d. values, and an upper
    ``1 - alpha`` bound on the probability that a new value falls beyond it (Beta(r, n_ref - r + 1))."""
    r = max(1, int(math.floor(tail * n_ref)))
    return r, float(_st.beta.ppf(1.0 - alpha, r, n_ref - r + 1))


def _tolerance(threshold: float) -> float:
    return 1e-4 + 1e-6 * abs(threshold)


def _n_eff(indicator: np.ndarray, ts: np.ndarray | None, groups: np.ndarray | None) -> float:
    n = len(indicator)
    if n == 0:
        return 0.0
    if np.all(indicator == indicator[0]):  # no variation: autocorrelation undefined, use the frame count
        return float(n)
    n_eff, _ = effective_sample_size(indicator.astype(np.float64), ts=ts, groups=groups)
    return float(min(n, max(1.0, n_eff[0])))


def _tail_tests(ref: np.ndarray, cur: np.ndarray, feature: str, scope: str, ts, groups, tail: float, alpha_ref: float,
                directions: Sequence[str] = ("low", "high")) -> list[TailShift]:
    ref = np.sort(np.asarray(ref, dtype=np.float64))
    ref = ref[np.isfinite(ref)]
    cur = np.asarray(cur, dtype=np.float64)
    ok = np.isfinite(cur)
    cur = cur[ok]
    ts = None if ts is None else np.asarray(ts)[ok]
    groups = None if groups is None else np.asarray(groups)[ok]
    if len(ref) < 2 or len(cur) == 0:
        return []
    r, p0 = tail_bound(len(ref), tail, alpha_ref)
    out = []
    for direction in directions:
        # the profile stores 4-5 decimals and production statistics are float32 (noise comes in steps of 1.4826):
        # a value equal to the threshold up to that rounding is not beyond it
        if direction == "low":
            thr = float(ref[r - 1])
            beyond = cur < thr - _tolerance(thr)
        else:
            thr = float(ref[len(ref) - r])
            beyond = cur > thr + _tolerance(thr)
        n = len(cur)
        share = float(beyond.mean())
        n_eff = _n_eff(beyond, ts, groups)
        k_eff = share * n_eff
        # P(K >= k) for K ~ Binomial(n_eff, p0), continuous in k via the regularised incomplete beta
        p = 1.0 if k_eff <= p0 * n_eff else float(_st.beta.cdf(p0, k_eff, max(n_eff - k_eff + 1.0, 1e-9)))
        word = WORDS.get(feature, (f"lower in {feature}", f"higher in {feature}"))[0 if direction == "low" else 1]
        pct = 100 * (1 - tail)
        what = "validation frames" if feature == "confidence" else "training frames"
        where = f"{scope}'s frames" if feature != "confidence" else f"frames ({scope} model)"
        out.append(TailShift(feature, scope, direction, thr, share, tail, n, n_eff, p,
                             f"{share:.0%} of {where} are {word} than {pct:.0f}% of {what}"))
    return out


def _class_mix(ref: TrainingReference, pred: np.ndarray, scope: str, ts, groups) -> ClassMixShift | None:
    pred = np.asarray(pred)
    pred = pred[(pred >= 0) & (pred < len(ref.classes))]
    if len(pred) == 0:
        return None
    C = len(ref.classes)
    cur = np.bincount(pred, minlength=C).astype(np.float64)
    n = int(cur.sum())
    # effective size of the class sequence: the largest class's indicator carries most of the dependence
    top = int(np.argmax(cur))
    n_eff = _n_eff((np.asarray(pred) == top).astype(np.float64), None if ts is None else np.asarray(ts)[:len(pred)],
                   None if groups is None else np.asarray(groups)[:len(pred)])
    ref_counts = ref.predicted_counts.astype(np.float64)
    p_cur, p_ref = cur / n, ref_counts / ref_counts.sum()
    tv = 0.5 * float(np.abs(p_cur - p_ref).sum())
    table = np.vstack([p_cur * n_eff, ref_counts]) + 0.5  # effective counts; +0.5 keeps empty classes testable
    chi2, p, _, _ = _st.chi2_contingency(table, correction=False)
    i = int(np.argmax(np.abs(p_cur - p_ref)))
    desc = (f"predicted-class mix ({scope} model) differs from validation by {tv:.0%} "
            f"(most: {ref.classes[i]} {p_cur[i]:.0%} vs {p_ref[i]:.0%})")
    return ClassMixShift(scope, tv, n, n_eff, float(p), desc)


def training_drift(
    references: Mapping[str, TrainingReference],
    probs: Mapping[str, np.ndarray] | None = None,
    image_stats: Mapping[str, np.ndarray] | None = None,
    cameras: np.ndarray | None = None,
    ts: np.ndarray | None = None,
    alpha: float = 0.01,
    min_effect: float = DEFAULT_MIN_EFFECT,
    tail: float = DEFAULT_TAIL,
    prob_ts: Mapping[str, np.ndarray] | None = None,
    prob_cameras: Mapping[str, np.ndarray] | None = None,
    image_role: str | None = None,
    camera_names: Sequence[str] | None = None,
) -> TrainingDrift:
    """One window's drift against the training reference of each model.

    ``references``: role -> that model's :class:`TrainingReference`; ``probs``: role -> (n_r, C) softmax of that
    model on the window's frames (non-degraded), with ``prob_ts``/``prob_cameras`` giving each row's time and
    camera; ``image_stats``: name -> (n,) values of the window's frames with ``ts`` and ``cameras``, compared with
    the reference of ``image_role`` (default: the first role given). Image statistics are tested per camera.
    ``camera_names``: when given, ``cameras`` (and ``prob_cameras``) hold integer codes into it, numbered in the
    names' sorted order (what the evaluator passes: grouping millions of frames by an integer is cheap).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < tail < 0.5:
        raise ValueError(f"tail must be in (0, 0.5), got {tail}")
    if not references:
        raise ValueError("training_drift needs at least one training reference")
    img_ref = references[image_role] if image_role is not None else next(iter(references.values()))
    roles = [r for r, p in (probs or {}).items() if r in references and np.asarray(p).ndim == 2 and len(p)]
    cams = None
    if image_stats:
        n_img = len(next(iter(image_stats.values())))
        cams = np.asarray(cameras) if cameras is not None else np.full(n_img, "all", object)
    stat_names = [k for k in STAT_NAMES if image_stats and k in image_stats and k in img_ref.image_stats]
    n_img_tests = sum(len(DIRECTIONS.get(k, ("low", "high"))) for k in stat_names)
    cam_values = np.unique(cams).tolist() if cams is not None and cams.dtype != object else (sorted(set(cams.tolist())) if cams is not None else [])
    n_planned = 2 * len(roles) + (n_img_tests * len(cam_values) if cams is not None else 0)
    # Bonferroni over the window's tests; within each, half of alpha for the reference quantile's own
    # uncertainty (estimated from n_ref validation images), half for the production count
    a_ref = alpha / (2 * max(1, n_planned))
    tails: list[TailShift] = []
    mixes: list[ClassMixShift] = []
    for role in roles:
        ref = references[role]
        p = np.asarray(probs[role], dtype=np.float64)
        rts = None if prob_ts is None else prob_ts.get(role)
        rgr = None if prob_cameras is None else prob_cameras.get(role)
        tails += _tail_tests(ref.confidence, p.max(axis=1), "confidence", role, rts, rgr, tail, a_ref, ("low",))
        mix = _class_mix(ref, p.argmax(axis=1), role, rts, rgr)
        if mix is not None:
            mixes.append(mix)
    if cams is not None:
        for cam in cam_values:
            sel = cams == cam
            scope = str(camera_names[cam]) if camera_names is not None else str(cam)
            for name in stat_names:
                tails += _tail_tests(img_ref.image_stats[name], np.asarray(image_stats[name])[sel], name, scope,
                                     None if ts is None else np.asarray(ts)[sel], None, tail, a_ref,
                                     DIRECTIONS.get(name, ("low", "high")))
    n_tests = len(tails) + len(mixes)
    k = 2 * max(1, n_tests)  # as TrainingDrift.corrected
    hits: list[tuple[float, str]] = []
    ps: list[float] = []
    for t in tails:
        ps.append(min(1.0, t.p_value * k))
        if ps[-1] < alpha and t.effect >= min_effect:
            hits.append((t.effect, t.description))
    for c in mixes:
        ps.append(min(1.0, c.p_value * k))
        if ps[-1] < alpha and c.tv_distance >= min_effect:
            hits.append((c.tv_distance, c.description))
    hits.sort(key=lambda h: -h[0])
    sources = sorted({references[r].source for r in roles} | ({img_ref.source} if stat_names else set()))
    return TrainingDrift(
        tails=tuple(tails), class_mix=tuple(mixes), alpha=alpha, min_effect=min_effect, n_tests=n_tests,
        reference="; ".join(sources), drifted=bool(hits), findings=tuple(h[1] for h in hits),
        p_min_corrected=min(ps) if ps else None, largest_share_outside=max((t.share for t in tails), default=None),
    )
