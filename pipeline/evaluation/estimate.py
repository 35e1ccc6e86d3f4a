"""Label-free accuracy estimates between labels: Average Thresholded Confidence (ATC).

Garg et al., "Leveraging Unlabeled Data to Predict Out-of-Distribution Performance", ICLR 2022.
On labeled validation data, fit a threshold ``t`` on a confidence score so that the share of
examples scoring above ``t`` equals the validation accuracy. In production, the predicted accuracy
is the share of (unlabeled) outputs scoring above ``t``. It needs calibrated probabilities: the
model's ``probs`` output already applies the model card's temperature, so pass those.

Scores:

* ``max_confidence``: the largest class probability.
* ``neg_entropy``: minus the Shannon entropy of the probabilities (nats); the paper's best variant.

Usage (training side, once per model)::

    t = fit_atc_threshold(val_probs, val_pred == val_true, score="neg_entropy")
    card.atc_threshold, card.atc_score = t, "neg_entropy"

or, from scores already computed, ``atc_threshold(val_scores, val_accuracy)`` (the one fitting rule);

and in the evaluator: ``atc_estimate(prod_probs, card.atc_threshold, card.atc_score)``.

ATC is confidently wrong under shift: a model that is sure of itself on dark or blurred frames keeps its
scores above the threshold while its accuracy falls. The other estimators below (all pure functions of arrays;
``shadowcam bench estimate`` measures every one of them against the truth on the synthetic shift suite,
``docs/label_free.md``):

* :func:`doc_estimate`: Difference of Confidences (Guillory et al., ICCV 2021).
* :func:`disagreement_bounded`: the incumbent's and the shadow's estimates made consistent with how often the
  two models disagree on the same frames (at most one of two disagreeing models is right);
  :func:`disagreement_rate` measures that share.
* :func:`ensemble_confidence`: the two-model ensemble's probability for each model's prediction (averaged
  models stay better calibrated under shift: Lakshminarayanan et al., NeurIPS 2017; Ovadia et al., NeurIPS 2019).
* :func:`shift_aware_atc`: ATC that does not trust the confidence of frames beyond the validation split's
  range of image statistics (:func:`beyond_training_range`).
* :func:`recalibrated_atc`: ATC with its threshold refitted on the production frames labelled so far
  (inverse-probability weighted), applied to every frame of the window. Not label-free: it needs labels.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

SCORES = ("max_confidence", "neg_entropy")


def _as_probs(probs: np.ndarray, what: str = "probs") -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array (n_samples, n_classes), got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return p


def confidence_score(probs: np.ndarray, score: str = "max_confidence") -> np.ndarray:
    """Per-row confidence score: ``max_confidence`` (max prob) or ``neg_entropy`` (−H(p), nats)."""
    p = _as_probs(probs)
    if score == "max_confidence":
        return p.max(axis=1)
    if score == "neg_entropy":
        q = np.clip(p, 1e-12, 1.0)
        return (p * np.log(q)).sum(axis=1)
    raise ValueError(f"unknown ATC score {score!r}; expected one of {', '.join(SCORES)}")


def atc_threshold(scores: np.ndarray, accuracy: float) -> float:
    """The ATC threshold ``t`` with ``mean(scores > t) == accuracy``, as closely as the ``n`` scores allow.

    The one place this rule lives (training fits the model card's threshold with it). With
    ``k = round(accuracy * n)`` and the scores sorted descending ``s_1 >= s_2 >= ...``, ``t`` is the midpoint
    of ``s_k`` and ``s_{k+1}`` (robust to float rounding between torch and ONNX Runtime); for ``k = n`` it is
    just below the smallest score (by ``max(1e-6, 1e-6 |s_n|)``, for the same reason), for ``k = 0`` the
    largest score (nothing scores strictly above it). Ties at the boundary make the share inexact.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())[::-1]
    n = s.size
    if n == 0:
        raise ValueError("atc_threshold needs at least one score")
    if not np.all(np.isfinite(s)):
        raise ValueError("ATC scores contain NaN or infinite values")
    if not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
    return _threshold_at(s, int(round(accuracy * n)))


def _threshold_at(s: np.ndarray, k: int) -> float:
    """The threshold with exactly the ``k`` largest of the descending-sorted scores ``s`` strictly above it."""
    n = s.size
    if k >= n:
        return float(s[-1] - max(1e-6, 1e-6 * abs(s[-1])))
    if k <= 0:
        return float(s[0])
    return float((s[k - 1] + s[k]) / 2.0)


def fit_atc_threshold(probs: np.ndarray, correct: np.ndarray, score: str = "max_confidence") -> float:
    """Fit the ATC threshold ``t`` with ``mean(score > t) == mean(correct)`` on validation data.

    ``probs``: (n, n_classes) calibrated probabilities; ``correct``: (n,) booleans (prediction == truth).
    :func:`atc_threshold` on :func:`confidence_score`, so the identity holds exactly (up to ties) on the
    fitting data. Returns a float.
    """
    s = confidence_score(probs, score)
    c = np.asarray(correct).astype(bool).ravel()
    if c.shape[0] != s.shape[0]:
        raise ValueError(f"correct has {c.shape[0]} entries but probs has {s.shape[0]} rows")
    return atc_threshold(s, float(c.mean()))


def atc_estimate(probs: np.ndarray, threshold: float, score: str = "max_confidence") -> float:
    """Predicted accuracy on unlabeled outputs: the share whose score exceeds the fitted threshold."""
    if threshold is None or not np.isfinite(threshold):
        raise ValueError(f"ATC threshold must be a finite number, got {threshold!r} (fit it with fit_atc_threshold)")
    s = confidence_score(probs, score)
    return float(np.mean(s > threshold))


def average_confidence(probs: np.ndarray) -> float:
    """The simpler baseline (mean max probability): an accuracy estimate if the model is calibrated."""
    return float(_as_probs(probs).max(axis=1).mean())


# --- beyond ATC -----------------------------------------------------------------------------------------------------
def _unit(x: float, what: str) -> float:
    v = float(x)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {x!r}")
    return v


def doc_estimate(probs: np.ndarray, val_accuracy: float, val_confidence: float | np.ndarray) -> float:
    """Difference of Confidences (DoC): ``val_accuracy - (mean val confidence - mean production confidence)``.

    Guillory, Shankar, Ebrahimi, Darrell, Schmidt, "Predicting with Confidence on Unseen Distributions",
    ICCV 2021. The drop in average max-probability from validation to production is taken as the drop in
    accuracy. ``probs``: (n, C) calibrated production softmax; ``val_accuracy``: the model card's
    ``val_accuracy``; ``val_confidence``: the validation split's max-probabilities (n_val,) or their mean
    (``TrainingReference.from_dict(card.training_reference).confidence``). Clipped to [0, 1].
    """
    acc = _unit(val_accuracy, "val_accuracy")
    vc = np.asarray(val_confidence, dtype=np.float64).ravel()
    if vc.size == 0 or not np.all(np.isfinite(vc)):
        raise ValueError(f"val_confidence must be finite and non-empty, got {vc.size} values")
    return float(np.clip(acc - (vc.mean() - average_confidence(probs)), 0.0, 1.0))


def disagreement_rate(probs: np.ndarray, probs_other: np.ndarray) -> float:
    """Share of frames on which two models' predicted classes (argmax) differ; both (n, C) on the same frames."""
    a, b = _as_probs(probs), _as_probs(probs_other, "probs_other")
    if a.shape != b.shape:
        raise ValueError(f"probs and probs_other must be the same frames and classes, got shapes {a.shape} and {b.shape}")
    return float(np.mean(a.argmax(axis=1) != b.argmax(axis=1)))


def disagreement_bounded(estimate: float, estimate_other: float, disagreement: float) -> tuple[float, float]:
    """Two models' accuracy estimates made consistent with their disagreement on the same frames.

    Where two models disagree, at most one of them is right; where they agree, both are right or both are
    wrong. So with ``d`` the share of frames on which they disagree, their true accuracies satisfy
    ``a + b <= 2 - d`` and ``|a - b| <= d``. Label-free estimates that break these (two confident models that
    disagree on a third of the frames cannot both be 90% accurate) are moved to the nearest consistent pair:
    the Euclidean projection onto that set (the two constraints have orthogonal normals, so projecting on one
    and then the other is exact). Estimates that already satisfy them are returned unchanged. The bound is the
    one behind disagreement-based error estimates (Jiang et al., "Assessing Generalization of SGD via
    Disagreement", ICLR 2022; Baek et al., "Agreement-on-the-Line", NeurIPS 2022); only shadow mode has two
    models on every production frame. Use with e.g. ATC of the incumbent and of the shadow.
    Returns ``(estimate, estimate_other)`` adjusted, each in [0, 1].
    """
    a, b = _unit(estimate, "estimate"), _unit(estimate_other, "estimate_other")
    d = _unit(disagreement, "disagreement")
    excess = a + b - (2.0 - d)
    if excess > 0:
        a, b = a - excess / 2.0, b - excess / 2.0
    if abs(a - b) > d:
        mid, half = (a + b) / 2.0, d / 2.0
        a, b = (mid + half, mid - half) if a > b else (mid - half, mid + half)
    return float(np.clip(a, 0.0, 1.0)), float(np.clip(b, 0.0, 1.0))


def ensemble_confidence(probs: np.ndarray, probs_other: np.ndarray) -> float:
    """Estimated accuracy of the first model: the mean, over frames, of the two-model ensemble's probability
    for the class the first model predicts.

    ``q = (probs + probs_other) / 2``; the estimate is ``mean_i q_i[argmax probs_i]``. Where the two models agree
    this is about their shared confidence; where they disagree confidently, ``q`` splits its mass between the two
    predictions, so a frame counts about one half instead of one: disagreement lowers the estimate on exactly the
    frames where one of the two must be wrong. Averaging models keeps probabilities better calibrated under
    shift than any single model (Lakshminarayanan et al., "Simple and Scalable Predictive Uncertainty Estimation
    using Deep Ensembles", NeurIPS 2017; Ovadia et al., "Can You Trust Your Model's Uncertainty?", NeurIPS 2019).
    Both (n, C) calibrated softmax on the same frames, same class order.
    """
    a, b = _as_probs(probs), _as_probs(probs_other, "probs_other")
    if a.shape != b.shape:
        raise ValueError(f"probs and probs_other must be the same frames and classes, got shapes {a.shape} and {b.shape}")
    q = (a + b) / 2.0
    return float(q[np.arange(len(a)), a.argmax(axis=1)].mean())


def training_range(reference_values: np.ndarray, tail: float = 0.01) -> tuple[float, float]:
    """The validation split's ``tail`` and ``1 - tail`` quantiles of one feature, as order statistics.

    The same ranks as the drift test against training (:mod:`pipeline.evaluation.reference`): with the ``n``
    finite values sorted, rank ``r = max(1, floor(tail * n))`` from each end.
    """
    v = np.sort(np.asarray(reference_values, dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    if v.size < 2:
        raise ValueError(f"training_range needs at least 2 finite reference values, got {v.size}")
    if not 0.0 <= tail < 0.5:
        raise ValueError(f"tail must be in [0, 0.5), got {tail}")
    r = max(1, int(np.floor(tail * v.size)))
    return float(v[r - 1]), float(v[v.size - r])


_ROUNDING = 1e-4  # absolute part of the tolerance of beyond_training_range (the reference keeps 4 decimals)


def beyond_training_range(image_stats: Mapping[str, np.ndarray], reference_stats: Mapping[str, np.ndarray],
                          tail: float = 0.01, directions: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
    """Per frame: does any image statistic lie beyond the validation split's ``tail``/``1 - tail`` range?

    ``image_stats``: name -> (n,) values of the production frames (:func:`pipeline.imagestats.image_stats_batch`
    on the model-sized frames, as the store holds them); ``reference_stats``: name -> (n_ref,) values of the
    validation split (``TrainingReference.image_stats``). The statistics both name are used; a missing (NaN)
    value never counts as beyond. ``directions``: name -> the ends that count (``"low"``, ``"high"``); default
    both ends of every statistic (what ``shadowcam bench estimate`` measured). With
    :data:`pipeline.evaluation.reference.DIRECTIONS` it is the per-frame view of the tail shares that
    :func:`pipeline.evaluation.reference.training_drift` tests (``TailShift.share``). Returns a boolean array (n,).

    A value within rounding of a threshold (``1e-4 + 1e-6 |t|``) counts as inside: the reference profile is stored
    rounded (4 decimals) and production statistics are float32, and some statistics are quantised (``noise`` is a
    multiple of 1.4826 grey levels, so its 1% quantile is often the most common value itself); without the
    tolerance a float32 ``1.4826`` (``1.48259997``) would lie "below" a stored ``1.4826``.
    """
    names = [k for k in image_stats if k in reference_stats]
    if not names:
        raise ValueError(f"no image statistic in common: frames have {sorted(image_stats)}, "
                         f"the reference has {sorted(reference_stats)}")
    n = {len(np.asarray(image_stats[k]).ravel()) for k in names}
    if len(n) != 1:
        raise ValueError(f"image statistics must all have one value per frame, got lengths {sorted(n)}")
    out = np.zeros(n.pop(), dtype=bool)
    for k in names:
        ends = ("low", "high") if directions is None else tuple(directions.get(k, ("low", "high")))
        bad = sorted(set(ends) - {"low", "high"})
        if bad:
            raise ValueError(f"directions[{k!r}] may hold 'low' and 'high', got {bad}")
        lo, hi = training_range(reference_stats[k], tail)
        x = np.asarray(image_stats[k], dtype=np.float64).ravel()
        with np.errstate(invalid="ignore"):
            if "low" in ends:
                out |= x < lo - _ROUNDING - 1e-6 * abs(lo)
            if "high" in ends:
                out |= x > hi + _ROUNDING + 1e-6 * abs(hi)
    return out


def shift_aware_atc(probs: np.ndarray, threshold: float, out_of_range: np.ndarray, base_rate: float = 0.0,
                    score: str = "max_confidence") -> float:
    """ATC that does not trust the model's confidence on frames unlike anything in its validation split.

    ATC maps confidence to accuracy with a threshold fitted on validation frames; on frames beyond the range of
    the validation split's image statistics (``out_of_range``, from :func:`beyond_training_range`) nothing
    supports that mapping, and a model that is confidently wrong on dark or blurred frames keeps ATC high. For
    such frames the accuracy can be anything between guessing (``1/C``) and what ATC says; the estimate takes
    the midpoint of that interval, the value with the smallest worst-case error (minimax). Validation frames
    themselves lie beyond their own ``tail`` quantiles at a rate ``base_rate`` (about ``2 * tail`` per statistic;
    ``beyond_training_range(ref.image_stats, ref.image_stats).mean()``), so only the *excess* share is treated
    that way::

        estimate = ATC - 1/2 * max(0, s - base_rate) * max(0, ATC_out - 1/C)

    with ``s`` the share of frames out of range and ``ATC_out`` the ATC estimate on those frames. Without shift
    (``s ~ base_rate``) it is ATC. ATC: Garg et al., ICLR 2022; the share beyond the training range is the
    drift test's :class:`~pipeline.evaluation.result.TailShift` share, per frame.
    """
    if threshold is None or not np.isfinite(threshold):
        raise ValueError(f"ATC threshold must be a finite number, got {threshold!r} (fit it with fit_atc_threshold)")
    p = _as_probs(probs)
    out = np.asarray(out_of_range).astype(bool).ravel()
    if out.shape[0] != p.shape[0]:
        raise ValueError(f"out_of_range has {out.shape[0]} entries but probs has {p.shape[0]} rows")
    base = _unit(base_rate, "base_rate")
    above = confidence_score(p, score) > threshold
    atc = float(above.mean())
    share = float(out.mean())
    if share <= base or not out.any():
        return atc
    atc_out = float(above[out].mean())
    chance = 1.0 / p.shape[1]
    return float(np.clip(atc - 0.5 * (share - base) * max(0.0, atc_out - chance), 0.0, 1.0))


def weighted_atc_threshold(scores: np.ndarray, correct: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The ATC threshold fitted on weighted labelled examples: the weighted share of ``scores`` strictly above ``t``
    matches the weighted accuracy ``sum(w * correct) / sum(w)`` as closely as the scores allow.

    ``weights``: inverse inclusion probabilities (Horvitz-Thompson) of frames sampled for labelling, so that the
    labelled frames stand for the whole window; ``None`` means equal weights, and then the threshold is exactly
    :func:`atc_threshold` of the scores at their accuracy. Same midpoint rule between neighbouring scores.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    c = np.asarray(correct).astype(bool).ravel()
    w = np.ones_like(s) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if s.size == 0:
        raise ValueError("weighted_atc_threshold needs at least one labelled score")
    if c.shape != s.shape or w.shape != s.shape:
        raise ValueError(f"scores, correct and weights must have one entry per frame, got {s.size}, {c.size}, {w.size}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(w))):
        raise ValueError("scores and weights must be finite")
    if np.any(w <= 0):
        raise ValueError(f"weights must be positive (inverse inclusion probabilities), got min {w.min()}")
    if weights is None:
        return atc_threshold(s, float(c.mean()))
    acc = float((w * c).sum() / w.sum())
    order = np.argsort(-s, kind="stable")
    cum = np.concatenate([[0.0], np.cumsum(w[order]) / w.sum()])  # weighted share of the k largest, k = 0..n
    k = int(np.argmin(np.abs(cum - acc)))
    return _threshold_at(s[order], k)


def recalibrated_atc(prod_scores_labelled: np.ndarray, correct_labelled: np.ndarray, weights: np.ndarray | None,
                     prod_scores_all: np.ndarray) -> float:
    """ATC with its threshold refitted on the production frames labelled so far, applied to all frames of the window.

    Garg et al.'s ATC (ICLR 2022) assumes the confidence-to-accuracy relation of the validation split; under shift
    it moves. The labelled production frames show where it is now: :func:`weighted_atc_threshold` on their scores
    (the model card's ``atc_score``), correctness and inverse-inclusion-probability ``weights``, then the share of
    every frame's score above that threshold. This uses the unlabelled frames to reduce the variance of what the
    few labels say (a regression estimate on the score), not a label-free estimate. Returns a float in [0, 1].
    """
    t = weighted_atc_threshold(prod_scores_labelled, correct_labelled, weights)
    s = np.asarray(prod_scores_all, dtype=np.float64).ravel()
    if s.size == 0 or not np.all(np.isfinite(s)):
        raise ValueError(f"prod_scores_all must be finite and non-empty, got {s.size} values")
    return float(np.mean(s > t))
