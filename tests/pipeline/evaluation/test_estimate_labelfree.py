"""Label-free accuracy estimates beyond ATC: DoC, disagreement bounds, ensemble confidence, shift-aware ATC and
ATC recalibrated on labelled production frames. Pure functions, tested on arrays made here."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.estimate import (
    atc_estimate,
    atc_threshold,
    average_confidence,
    beyond_training_range,
    confidence_score,
    disagreement_bounded,
    disagreement_rate,
    doc_estimate,
    ensemble_confidence,
    fit_atc_threshold,
    recalibrated_atc,
    shift_aware_atc,
    training_range,
    weighted_atc_threshold,
)

K = 5


def _softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    a = z / temperature
    p = np.exp(a - a.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def _frames(rng: np.random.Generator, n: int, hard_share: float, hard_evidence: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a K-class model: clear frames carry evidence 4 for the true class, hard ones ``hard_evidence``."""
    y = rng.integers(0, K, n)
    mu = np.where(rng.random(n) < hard_share, hard_evidence, 4.0)
    z = rng.normal(size=(n, K))
    z[np.arange(n), y] += mu
    return z, y


def _calibrated(rng: np.random.Generator, n: int = 20000) -> tuple[float, np.ndarray, np.ndarray]:
    """Temperature fitted on validation frames (10% hard) by a grid search on the NLL, as training does."""
    zv, yv = _frames(rng, n, 0.1)
    temps = np.linspace(0.3, 3.0, 271)
    nll = [-np.log(_softmax(zv, t)[np.arange(n), yv]).mean() for t in temps]
    t = float(temps[int(np.argmin(nll))])
    return t, _softmax(zv, t), yv


# --- DoC --------------------------------------------------------------------------------------------------------------
def test_doc_subtracts_the_confidence_drop_from_validation_accuracy():
    prod = np.array([[0.9, 0.1], [0.7, 0.3]])  # mean confidence 0.8
    assert doc_estimate(prod, 0.9, 0.92) == pytest.approx(0.9 - (0.92 - 0.8))
    assert doc_estimate(prod, 0.9, np.array([0.9, 0.94])) == pytest.approx(0.9 - (0.92 - 0.8))  # per-image values
    assert doc_estimate(prod, 0.1, 0.99) == 0.0  # clipped
    assert doc_estimate(np.array([[1.0, 0.0]]), 0.95, 0.5) == 1.0


def test_doc_removes_the_validation_miscalibration_from_average_confidence():
    """An overconfident model (no temperature): average confidence overestimates even without shift; DoC is
    average confidence corrected by validation's accuracy-confidence difference, so it does not."""
    rng = np.random.default_rng(1)
    zv, yv = _frames(rng, 20000, 0.3)
    pv = _softmax(zv, 0.5)  # sharpened: overconfident
    val_acc = float((pv.argmax(1) == yv).mean())
    z, y = _frames(rng, 20000, 0.3)  # production like validation
    p = _softmax(z, 0.5)
    truth = float((p.argmax(1) == y).mean())
    assert average_confidence(p) - truth > 0.05
    doc = doc_estimate(p, val_acc, pv.max(1))
    assert doc == pytest.approx(average_confidence(p) + val_acc - pv.max(1).mean())
    assert abs(doc - truth) < 0.01


@pytest.mark.parametrize("val_accuracy, val_confidence, match", [
    (1.2, 0.9, "val_accuracy"),
    (0.9, np.array([]), "val_confidence"),
    (0.9, np.array([0.9, np.nan]), "val_confidence"),
])
def test_doc_rejects_bad_inputs(val_accuracy, val_confidence, match):
    with pytest.raises(ValueError, match=match):
        doc_estimate(np.array([[0.6, 0.4]]), val_accuracy, val_confidence)


# --- disagreement -----------------------------------------------------------------------------------------------------
def test_disagreement_rate_counts_different_argmax():
    a = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]])
    b = np.array([[0.8, 0.2], [0.4, 0.6], [0.1, 0.9], [0.6, 0.4]])
    assert disagreement_rate(a, b) == 0.5
    assert disagreement_rate(a, a) == 0.0
    with pytest.raises(ValueError, match="same frames"):
        disagreement_rate(a, b[:3])


@pytest.mark.parametrize("a, b, d, expected", [
    (0.7, 0.6, 0.3, (0.7, 0.6)),  # consistent: unchanged
    (0.9, 0.9, 0.4, (0.8, 0.8)),  # a + b > 2 - d: both lowered by half the excess
    (0.9, 0.5, 0.1, (0.75, 0.65)),  # |a - b| > d: moved towards each other
    (1.0, 0.6, 0.2, (0.9, 0.7)),
    (1.0, 0.9, 0.5, (0.8, 0.7)),
    (0.95, 0.95, 1.0, (0.5, 0.5)),  # they always disagree: together at most one right per frame
])
def test_disagreement_bounded_projects_onto_what_the_disagreement_allows(a, b, d, expected):
    got = disagreement_bounded(a, b, d)
    assert got == pytest.approx(expected)
    assert got[0] + got[1] <= 2 - d + 1e-12 and abs(got[0] - got[1]) <= d + 1e-12


def test_disagreement_bounded_never_moves_estimates_away_from_the_truth():
    """The true pair always satisfies the constraints (so a projection onto them cannot increase the error)."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        n = 200
        c1 = rng.random(n) < rng.uniform(0.2, 1.0)
        c2 = np.where(rng.random(n) < rng.uniform(0, 1), c1, rng.random(n) < rng.uniform(0.2, 1.0))
        # disagreement: where exactly one is right the labels differ; where both are wrong they may still differ
        both_wrong_differ = (~c1 & ~c2) & (rng.random(n) < 0.5)
        d = float(np.mean((c1 != c2) | both_wrong_differ))
        truth = np.array([c1.mean(), c2.mean()])
        assert disagreement_bounded(truth[0], truth[1], d) == pytest.approx(tuple(truth))
        est = np.clip(truth + rng.normal(0, 0.2, 2), 0, 1)
        adj = np.array(disagreement_bounded(est[0], est[1], d))
        assert np.linalg.norm(adj - truth) <= np.linalg.norm(est - truth) + 1e-12


@pytest.mark.parametrize("a, b, d", [(1.1, 0.5, 0.1), (0.5, -0.1, 0.1), (0.5, 0.5, 1.5)])
def test_disagreement_bounded_rejects_values_outside_the_unit_interval(a, b, d):
    with pytest.raises(ValueError, match="must be in"):
        disagreement_bounded(a, b, d)


# --- ensemble confidence ------------------------------------------------------------------------------------------------
def test_ensemble_confidence_halves_frames_where_confident_models_disagree():
    a = np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]])
    b = np.array([[0.98, 0.01, 0.01], [0.01, 0.01, 0.98]])  # agrees on frame 0, not on frame 1
    assert ensemble_confidence(a, b) == pytest.approx((0.98 + (0.98 + 0.01) / 2) / 2)
    assert ensemble_confidence(a, a) == pytest.approx(average_confidence(a))
    with pytest.raises(ValueError, match="same frames"):
        ensemble_confidence(a, b[:, :2])


def test_ensemble_confidence_is_lower_than_a_confidently_wrong_models_own():
    rng = np.random.default_rng(5)
    n = 5000
    y = rng.integers(0, K, n)
    # both models are overconfident on hard frames (half of them) and make independent mistakes there
    hard = rng.random(n) < 0.5

    def model() -> np.ndarray:
        z = rng.normal(size=(n, K)) * np.where(hard, 5.0, 1.0)[:, None]
        z[np.arange(n), y] += 6.0
        return _softmax(z)

    p1, p2 = model(), model()
    truth = float((p1.argmax(1) == y).mean())
    assert average_confidence(p1) - truth > 0.05  # the single model is overconfident
    assert abs(ensemble_confidence(p1, p2) - truth) < average_confidence(p1) - truth


# --- beyond the training range, shift-aware ATC ------------------------------------------------------------------------
def test_training_range_uses_the_drift_tests_order_statistics():
    ref = np.arange(100.0)
    assert training_range(ref, 0.01) == (0.0, 99.0)
    assert training_range(ref, 0.05) == (4.0, 95.0)
    assert training_range(np.append(ref, np.nan), 0.05) == (4.0, 95.0)  # NaN ignored
    with pytest.raises(ValueError, match="at least 2"):
        training_range(np.array([1.0]))


def test_beyond_training_range_is_the_union_over_statistics():
    ref = {"brightness": np.arange(100.0), "sharpness": np.arange(100.0) * 10, "unused": np.zeros(100)}
    frames = {"brightness": np.array([-1.0, 50, 50, 100, np.nan]), "sharpness": np.array([500.0, 500, 2000, 500, 500]),
              "noise": np.ones(5)}
    assert beyond_training_range(frames, ref, 0.01).tolist() == [True, False, True, True, False]
    # validation frames lie beyond their own tail quantiles at about 2 * tail per statistic
    own = {"brightness": np.arange(100.0), "sharpness": np.roll(np.arange(100.0), 50) * 10}  # other frames beyond
    assert beyond_training_range(own, own, 0.05).mean() == pytest.approx(0.16)


def test_beyond_training_range_counts_only_the_directions_asked_for():
    ref = {"brightness": np.arange(100.0), "sharpness": np.arange(100.0) * 10}
    frames = {"brightness": np.array([-1.0, 100, 50, 50]), "sharpness": np.array([500.0, 500, -1, 2000])}
    assert beyond_training_range(frames, ref).tolist() == [True, True, True, True]
    only = {"brightness": ("low",), "sharpness": ("low",)}  # darker, blurrier
    assert beyond_training_range(frames, ref, directions=only).tolist() == [True, False, True, False]
    assert beyond_training_range(frames, ref, directions={"sharpness": ()}).tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="'low' and 'high'"):
        beyond_training_range(frames, ref, directions={"sharpness": ("down",)})


def test_beyond_training_range_ignores_float32_rounding_of_a_quantised_statistic():
    """The noise statistic is a multiple of 1.4826; the reference stores 4 decimals, production float32 values."""
    ref = {"noise": np.round(np.repeat([1.4826, 2.9652, 4.4478], [30, 50, 20]), 4)}
    frames = {"noise": np.array([1.4826, 2.9652, 4.4478, 0.0, 5.9304], dtype=np.float32)}
    assert beyond_training_range(frames, ref, 0.01).tolist() == [False, False, False, True, True]


@pytest.mark.parametrize("frames, match", [
    ({"noise": np.ones(3)}, "no image statistic in common"),
    ({"brightness": np.ones(3), "sharpness": np.ones(2)}, "one value per frame"),
])
def test_beyond_training_range_rejects_bad_inputs(frames, match):
    ref = {"brightness": np.arange(10.0), "sharpness": np.arange(10.0)}
    with pytest.raises(ValueError, match=match):
        beyond_training_range(frames, ref)


def test_shift_aware_atc_is_atc_without_excess_out_of_range_frames():
    rng = np.random.default_rng(2)
    p = _softmax(rng.normal(size=(400, K)) * 2)
    t = 0.5
    out = np.zeros(400, bool)
    assert shift_aware_atc(p, t, out) == atc_estimate(p, t)
    out[:20] = True  # 5%: no more than the validation split's own rate
    assert shift_aware_atc(p, t, out, base_rate=0.05) == atc_estimate(p, t)
    assert shift_aware_atc(p, t, out, base_rate=0.0) < atc_estimate(p, t)


def test_shift_aware_atc_takes_the_midpoint_to_chance_for_the_excess_share():
    p = np.tile([[0.97, 0.01, 0.01, 0.01]], (10, 1))  # every frame above the threshold: ATC = 1
    out = np.arange(10) < 5  # half the frames out of range
    assert shift_aware_atc(p, 0.9, out) == pytest.approx(1 - 0.5 * 0.5 * (1 - 0.25))
    assert shift_aware_atc(p, 0.9, out, base_rate=0.1) == pytest.approx(1 - 0.5 * 0.4 * (1 - 0.25))


def test_shift_aware_atc_is_closer_when_out_of_range_frames_are_confidently_wrong():
    """A shift the model has not seen (dark frames): same confidence, accuracy near chance on those frames."""
    rng = np.random.default_rng(4)
    t, pv, yv = _calibrated(rng)
    thr = fit_atc_threshold(pv, pv.argmax(1) == yv)
    z, y = _frames(rng, 20000, 0.1)
    dark = rng.random(20000) < 0.6
    y = np.where(dark, rng.integers(0, K, 20000), y)  # the prediction no longer relates to the truth there
    p = _softmax(z, t)
    truth = float((p.argmax(1) == y).mean())
    atc = atc_estimate(p, thr)
    aware = shift_aware_atc(p, thr, dark, base_rate=0.02)
    assert atc - truth > 0.3
    # the dark frames' accuracy (chance) is the far end of the interval: the midpoint halves their error
    assert abs(aware - truth) < 0.6 * abs(atc - truth)


@pytest.mark.parametrize("threshold, out, base, match", [
    (float("nan"), np.zeros(4, bool), 0.0, "finite"),
    (0.5, np.zeros(3, bool), 0.0, "4 rows"),
    (0.5, np.zeros(4, bool), 1.5, "base_rate"),
])
def test_shift_aware_atc_rejects_bad_inputs(threshold, out, base, match):
    with pytest.raises(ValueError, match=match):
        shift_aware_atc(np.full((4, 2), 0.5), threshold, out, base)


# --- recalibrated ATC --------------------------------------------------------------------------------------------------
def test_weighted_threshold_equals_atc_threshold_for_equal_weights():
    rng = np.random.default_rng(6)
    s = rng.random(101)
    c = rng.random(101) < 0.7
    t = atc_threshold(s, float(c.mean()))
    assert weighted_atc_threshold(s, c) == t
    assert weighted_atc_threshold(s, c, np.full(101, 3.0)) == t


def test_weighted_threshold_follows_the_weights():
    s = np.array([0.9, 0.8, 0.7, 0.6])
    c = np.array([1, 0, 1, 0])
    assert weighted_atc_threshold(s, c) == pytest.approx(0.75)  # half right: the two largest above
    # the third frame stands for six: weighted accuracy 7/9, three frames (8/9 of the weight) above
    assert weighted_atc_threshold(s, c, np.array([1, 1, 6, 1])) == pytest.approx(0.65)


@pytest.mark.parametrize("scores, correct, weights, match", [
    (np.array([]), np.array([]), None, "at least one"),
    (np.array([0.5, 0.6]), np.array([1]), None, "one entry per frame"),
    (np.array([0.5, 0.6]), np.array([1, 0]), np.array([1.0, 0.0]), "positive"),
    (np.array([0.5, np.nan]), np.array([1, 0]), np.array([1.0, 1.0]), "finite"),
])
def test_weighted_threshold_rejects_bad_inputs(scores, correct, weights, match):
    with pytest.raises(ValueError, match=match):
        weighted_atc_threshold(scores, correct, weights)


def test_recalibrated_atc_recovers_accuracy_when_confidence_no_longer_means_what_it_did():
    """Production is overconfident (its logits are sharper than validation's) and labels are drawn with higher
    probability for uncertain frames: the validation threshold overestimates, the threshold refitted on inverse-
    probability-weighted labelled frames does not, and unweighted refitting would be biased by the sampling."""
    rng = np.random.default_rng(8)
    t, pv, yv = _calibrated(rng)
    thr = fit_atc_threshold(pv, pv.argmax(1) == yv)
    n = 40000
    z, y = _frames(rng, n, 0.5)
    p = _softmax(z * 2.0, t)  # overconfident
    correct = p.argmax(1) == y
    truth = float(correct.mean())
    s = confidence_score(p)
    incl = np.clip(0.01 + 0.2 * (1 - s), 0, 1)  # uncertainty sampling with a floor
    picked = rng.random(n) < incl
    assert picked.sum() > 500
    weighted = recalibrated_atc(s[picked], correct[picked], 1.0 / incl[picked], s)
    unweighted = recalibrated_atc(s[picked], correct[picked], None, s)
    assert atc_estimate(p, thr) - truth > 0.05
    assert abs(weighted - truth) < 0.04
    assert unweighted - truth > 0.08


def test_recalibrated_atc_rejects_an_empty_window():
    with pytest.raises(ValueError, match="prod_scores_all"):
        recalibrated_atc(np.array([0.5]), np.array([1]), None, np.array([]))
