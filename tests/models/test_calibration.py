"""models.calibration: temperature fit checked against scipy, ATC threshold by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

from models.calibration import atc_threshold, fit_temperature, nll, softmax


def _overconfident(n=2000, c=5, true_t=2.5, seed=0):
    """Labels drawn from softmax(z / true_t), logits z: a model that is overconfident by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, c))
    p = softmax(z, true_t)
    y = np.minimum((np.cumsum(p, axis=1) < rng.random((n, 1))).sum(axis=1), c - 1)
    return z, y


def test_fit_temperature_matches_scipy_and_recovers_truth():
    z, y = _overconfident()
    t = fit_temperature(z, y)
    ref = minimize_scalar(lambda lt: -log_softmax(z / np.exp(lt), axis=1)[np.arange(len(y)), y].mean(),
                          bounds=(-3, 3), method="bounded").x
    assert t == pytest.approx(np.exp(ref), rel=1e-3)
    assert t == pytest.approx(2.5, rel=0.15)
    assert nll(z, y, t) < nll(z, y, 1.0)


def test_fit_temperature_edge_cases():
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    # perfectly separable, huge margins: T shrinks to the clip bound instead of diverging
    z = np.eye(3)[[0, 1, 2] * 10] * 50
    assert 0.05 <= fit_temperature(z, np.array([0, 1, 2] * 10)) <= 1.0
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((4, 3)), np.zeros(5, dtype=int))


@pytest.mark.parametrize("acc", [0.0, 0.37, 0.5, 0.9, 0.999, 1.0])
def test_atc_threshold_share_above_equals_accuracy(acc):
    s = np.random.default_rng(1).uniform(0.2, 1.0, size=1000)
    t = atc_threshold(s, acc)
    assert np.mean(s > t) == pytest.approx(acc, abs=1e-3)


def test_atc_threshold_transfers_to_a_fresh_sample_of_the_same_distribution():
    """Fitted on one validation sample, mean(s > t) on a fresh sample estimates its accuracy within sampling error."""
    rng = np.random.default_rng(2)

    def sample(n):
        conf = rng.beta(6, 1.5, size=n)  # calibrated confidence
        return conf, rng.random(n) < conf

    s_val, c_val = sample(4000)
    t = atc_threshold(s_val, c_val.mean())
    errors = []
    for _ in range(20):
        s, c = sample(4000)
        errors.append(np.mean(s > t) - c.mean())
    assert abs(np.mean(errors)) < 0.01 and np.max(np.abs(errors)) < 0.04


def test_atc_threshold_bad_input():
    with pytest.raises(ValueError):
        atc_threshold(np.array([]), 0.5)
    with pytest.raises(ValueError):
        atc_threshold(np.array([0.5]), 1.5)
