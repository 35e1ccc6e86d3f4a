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


def fit_atc_threshold(probs: np.ndarray, correct: np.ndarray, score: str = "max_confidence") -> float:
    """Fit the ATC threshold ``t`` with ``mean(score > t) == mean(correct)`` on validation data.

    ``probs``: (n, n_classes) calibrated probabilities; ``correct``: (n,) booleans (prediction == truth).
    ``t`` lies midway between the k-th and (k+1)-th largest scores with ``k = round(n * accuracy)``, so
    the identity holds exactly (up to ties) on the fitting data. Returns a float.
    """
    s = confidence_score(probs, score)
    c = np.asarray(correct).astype(bool).ravel()
    if c.shape[0] != s.shape[0]:
        raise ValueError(f"correct has {c.shape[0]} entries but probs has {s.shape[0]} rows")
    n = s.shape[0]
    k = int(round(float(c.mean()) * n))
    desc = np.sort(s)[::-1]
    if k <= 0:
        return float(desc[0])  # nothing scores strictly above the maximum
    if k >= n:
        return float(np.nextafter(desc[-1], -np.inf))  # everything scores above
    hi, lo = desc[k - 1], desc[k]
    return float((hi + lo) / 2.0) if hi > lo else float(lo)


def atc_estimate(probs: np.ndarray, threshold: float, score: str = "max_confidence") -> float:
    """Predicted accuracy on unlabeled outputs: the share whose score exceeds the fitted threshold."""
    if threshold is None or not np.isfinite(threshold):
        raise ValueError(f"ATC threshold must be a finite number, got {threshold!r} (fit it with fit_atc_threshold)")
    s = confidence_score(probs, score)
    return float(np.mean(s > threshold))


def average_confidence(probs: np.ndarray) -> float:
    """The simpler baseline (mean max probability): an accuracy estimate if the model is calibrated."""
    return float(_as_probs(probs).max(axis=1).mean())
