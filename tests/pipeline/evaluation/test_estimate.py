"""ATC (Average Thresholded Confidence): threshold fitting and accuracy recovery under a simulated shift."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from pipeline.evaluation.estimate import SCORES, atc_estimate, atc_threshold, average_confidence, confidence_score, fit_atc_threshold

K = 5


def _simulate(rng: np.random.Generator, n: int, hard_share: float) -> tuple[np.ndarray, np.ndarray]:
    """Frames are clear (class evidence 4.0) or degraded (evidence 0.5, e.g. dark or occluded).

    Logits = evidence on the true class + standard normal noise. A shift raises the share of degraded frames.
    """
    y = rng.integers(0, K, n)
    mu = np.where(rng.random(n) < hard_share, 0.5, 4.0)
    z = rng.normal(size=(n, K))
    z[np.arange(n), y] += mu
    return z, y


def _softmax(z: np.ndarray, temperature: float) -> np.ndarray:
    a = z / temperature
    p = np.exp(a - a.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def calibrated():
    """A model temperature-scaled on validation data (10% degraded frames), as training does."""
    rng = np.random.default_rng(7)
    zv, yv = _simulate(rng, 20000, 0.1)
    nll = lambda t: -np.log(_softmax(zv, t)[np.arange(len(yv)), yv]).mean()  # noqa: E731
    temp = minimize_scalar(nll, bounds=(0.05, 10), method="bounded").x
    pv = _softmax(zv, temp)
    cv = pv.argmax(1) == yv
    return rng, temp, pv, cv


def test_threshold_reproduces_validation_accuracy(calibrated):
    _, _, pv, cv = calibrated
    # calibrated on validation: average confidence matches accuracy
    assert abs(average_confidence(pv) - cv.mean()) < 0.01
    for score in SCORES:
        t = fit_atc_threshold(pv, cv, score)
        assert abs(atc_estimate(pv, t, score) - cv.mean()) <= 1.0 / len(cv)


@pytest.mark.parametrize("hard_share", [0.2, 0.3, 0.5])
def test_atc_recovers_accuracy_under_shift(calibrated, hard_share):
    rng, temp, pv, cv = calibrated
    z, y = _simulate(rng, 20000, hard_share)
    p = _softmax(z, temp)
    truth = float((p.argmax(1) == y).mean())
    assert truth < cv.mean() - 0.05  # the shift really costs accuracy
    t = fit_atc_threshold(pv, cv, "neg_entropy")
    est = atc_estimate(p, t, "neg_entropy")
    assert abs(est - truth) < 0.03, (hard_share, truth, est)
    # and it beats the naive average confidence, which the shift makes over-confident
    assert abs(est - truth) < abs(average_confidence(p) - truth)
    if hard_share <= 0.3:
        t_mc = fit_atc_threshold(pv, cv, "max_confidence")
        assert abs(atc_estimate(p, t_mc, "max_confidence") - truth) < 0.03


def test_threshold_edge_cases():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.8, 0.2]])
    assert atc_estimate(p, fit_atc_threshold(p, np.array([1, 1, 1])), "max_confidence") == 1.0
    assert atc_estimate(p, fit_atc_threshold(p, np.array([0, 0, 0])), "max_confidence") == 0.0
    t = fit_atc_threshold(p, np.array([1, 0, 1]))
    assert 0.6 < t < 0.8
    np.testing.assert_allclose(confidence_score(np.array([[0.5, 0.5]]), "neg_entropy"), [-np.log(2)])


@pytest.mark.parametrize(
    "scores, accuracy, expected",
    [
        ([0.9, 0.6, 0.8], 2 / 3, 0.7),  # midway between the 2nd and 3rd largest
        ([0.9, 0.6, 0.8], 1.0, 0.6 - 1e-6),  # all right: just below the smallest, with a margin for ONNX rounding
        ([-200.0, -100.0], 1.0, -200.0 - 2e-4),  # the margin is relative for large scores
        ([0.9, 0.6, 0.8], 0.0, 0.9),  # none right: the largest (nothing scores strictly above it)
        ([0.7, 0.7, 0.7, 0.2], 0.5, 0.7),  # ties at the boundary
    ],
)
def test_atc_threshold_is_the_one_rule(scores, accuracy, expected):
    t = atc_threshold(np.array(scores), accuracy)
    assert t == pytest.approx(expected, abs=1e-12)
    # fit_atc_threshold is the same rule on the probabilities' scores
    probs = np.column_stack([np.array(scores), 1 - np.array(scores)]) if max(scores) <= 1 and min(scores) >= 0.5 else None
    if probs is not None:
        k = int(round(accuracy * len(scores)))
        correct = np.arange(len(scores)) < k
        assert fit_atc_threshold(probs, correct, "max_confidence") == pytest.approx(t, abs=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: fit_atc_threshold(np.ones(3), np.ones(3)), "2-D"),
        (lambda: fit_atc_threshold(np.full((3, 2), 0.5), np.ones(2)), "2 entries"),
        (lambda: confidence_score(np.full((3, 2), 0.5), "margin"), "unknown ATC score"),
        (lambda: atc_estimate(np.full((3, 2), 0.5), float("nan")), "finite"),
        (lambda: atc_estimate(np.array([[np.nan, 1.0]]), 0.5), "NaN"),
        (lambda: atc_threshold(np.array([]), 0.5), "at least one score"),
        (lambda: atc_threshold(np.array([0.5, np.nan]), 0.5), "NaN"),
        (lambda: atc_threshold(np.array([0.5]), 1.5), r"accuracy must be in \[0, 1\]"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
