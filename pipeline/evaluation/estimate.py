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
"""

from __future__ import annotations

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
    k = int(round(accuracy * n))
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
