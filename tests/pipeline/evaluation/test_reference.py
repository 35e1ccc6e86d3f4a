"""Drift against the training reference: calibrated on correlated clean data, loud on a real shift."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.reference import TrainingReference, build_reference, tail_bound, training_drift
from pipeline.imagestats import STAT_NAMES

CLASSES = ["a", "b", "c"]


def make_reference(rng: np.random.Generator, n: int = 450) -> TrainingReference:
    logits = rng.normal(0, 1, (n, 3)) + 3 * np.eye(3)[rng.integers(0, 3, n)]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    stats = {k: rng.normal(100, 15, n) for k in STAT_NAMES}
    return build_reference(probs, stats, CLASSES)


def correlated_window(rng: np.random.Generator, n: int = 600, shift: float = 0.0, dwell=(3, 6)):
    """Frames of items that stay in view 3-6 frames (values repeat with small jitter), one camera."""
    lengths = []
    while sum(lengths) < n:
        lengths.append(int(rng.integers(dwell[0], dwell[1] + 1)))
    items = len(lengths)
    rep = np.repeat(np.arange(items), lengths)[:n]
    logits = rng.normal(0, 1, (items, 3)) + 3 * np.eye(3)[rng.integers(0, 3, items)]
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True))[rep]
    stats = {k: rng.normal(100 + shift, 15, items)[rep] + rng.normal(0, 0.5, n) for k in STAT_NAMES}
    return probs, stats, np.arange(n) / 10.0


def test_reference_round_trips_through_a_dict():
    ref = make_reference(np.random.default_rng(0))
    back = TrainingReference.from_dict(ref.to_dict())
    assert back.classes == ref.classes and back.n == ref.n == 450
    np.testing.assert_allclose(back.probs, ref.probs, atol=1e-5)
    with pytest.raises(ValueError, match="not a training reference"):
        TrainingReference.from_dict({"classes": ["a"]})


def test_tail_bound_is_an_upper_bound_on_the_tail_probability():
    rng = np.random.default_rng(1)
    r, p0 = tail_bound(450, 0.01, 0.05)
    assert r == 4 and 0.01 < p0 < 0.03
    # the true probability beyond the r-th smallest of 450 uniforms exceeds the bound in <= 5% of draws
    beyond = np.sort(rng.random((4000, 450)), axis=1)[:, r - 1]
    assert np.mean(beyond > p0) <= 0.05 + 0.01


def test_false_alarms_on_correlated_clean_windows_are_at_most_one_percent():
    """1,000 windows of correlated clean frames (a new reference every 50): the tests' own false-alarm rate
    (corrected p < alpha, no effect-size filter) is at most 1% + simulation margin; with the effect filter, 0."""
    rng = np.random.default_rng(7)
    sig = drifted = 0
    runs = 1000
    for i in range(runs):
        if i % 50 == 0:
            ref = make_reference(rng)
        probs, stats, ts = correlated_window(rng)
        res = training_drift({"incumbent": ref}, {"incumbent": probs}, stats, ts=ts, prob_ts={"incumbent": ts}, alpha=0.01)
        sig += res.p_min_corrected < 0.01
        drifted += res.drifted
    assert sig / runs <= 0.01 + 0.007, f"false-alarm rate of the tests {sig / runs:.3f}"
    assert drifted / runs <= 0.01, f"drift alarms on clean data {drifted / runs:.3f}"


def test_ignoring_the_correlation_would_raise_false_alarms():
    """The same clean windows judged as if every frame were independent reject far more often: the effective
    sample size is what keeps the rate down (so the test above can fail)."""
    from pipeline.evaluation import reference as mod

    rng = np.random.default_rng(8)
    orig = mod._n_eff
    try:
        mod._n_eff = lambda ind, ts, groups: float(len(ind))
        hits = 0
        for i in range(300):
            if i % 50 == 0:
                ref = make_reference(rng)
            probs, stats, ts = correlated_window(rng, dwell=(10, 20))
            hits += training_drift({"incumbent": ref}, {"incumbent": probs}, stats, ts=ts, alpha=0.01).p_min_corrected < 0.01
    finally:
        mod._n_eff = orig
    assert hits / 300 > 0.02


def test_a_darker_camera_is_flagged_with_a_plain_description():
    rng = np.random.default_rng(3)
    ref = make_reference(rng)
    probs, stats, ts = correlated_window(rng)
    stats["brightness"] = stats["brightness"] - 60  # night: far below the training range
    res = training_drift({"incumbent": ref}, {"incumbent": probs}, stats, cameras=np.full(600, "cam-7", object), ts=ts, alpha=0.01)
    assert res.drifted
    assert res.findings[0].startswith(("9", "10")) and "of cam-7's frames are darker than 99% of training frames" in res.findings[0]
    dark = [t for t in res.tails if t.feature == "brightness" and t.direction == "low"][0]
    assert dark.share > 0.9 and res.corrected(dark.p_value) < 1e-6
    assert ("training", "cam-7", "brightness:low") in {(t.test, t.subject, t.stat) for t in res.p_values() if t.large}


def test_a_collapsed_class_mix_is_flagged():
    rng = np.random.default_rng(4)
    ref = make_reference(rng)
    probs, stats, ts = correlated_window(rng)
    probs = np.tile([0.3, 0.4, 0.3], (600, 1))  # every frame says "b", barely
    res = training_drift({"shadow": ref}, {"shadow": probs}, None, alpha=0.01)
    assert res.drifted
    assert any("predicted-class mix (shadow model)" in f for f in res.findings)
    assert any("less confident than 99% of validation frames" in f for f in res.findings)


def test_bad_arguments_are_refused():
    ref = make_reference(np.random.default_rng(5))
    with pytest.raises(ValueError, match="alpha"):
        training_drift({"incumbent": ref}, alpha=0)
    with pytest.raises(ValueError, match="at least one training reference"):
        training_drift({})
    with pytest.raises(ValueError, match="probs must be"):
        TrainingReference(("a", "b"), np.zeros((3, 3)), {}, 3)


def test_a_cleaner_camera_is_not_a_shift_but_a_noisier_one_is():
    """Less noise or more sharpness than training does not hurt a model: not tested; more noise / blur is."""
    rng = np.random.default_rng(6)
    ref = make_reference(rng)
    probs, stats, ts = correlated_window(rng)
    clean = dict(stats, noise=stats["noise"] - 80, sharpness=stats["sharpness"] + 80)
    res = training_drift({"incumbent": ref}, {"incumbent": probs}, clean, ts=ts, alpha=0.01)
    assert not res.drifted, res.findings
    assert {(t.feature, t.direction) for t in res.tails if t.feature in ("noise", "sharpness")} == {("noise", "high"), ("sharpness", "low")}
    noisy = dict(stats, noise=stats["noise"] + 80)
    res = training_drift({"incumbent": ref}, {"incumbent": probs}, noisy, ts=ts, alpha=0.01)
    assert res.drifted and "noisier than 99% of training frames" in res.findings[0]


def test_values_equal_to_the_threshold_up_to_rounding_are_not_beyond_it():
    """Noise comes in steps of 1.4826 and production stores float32 while the profile keeps 4-5 decimals."""
    rng = np.random.default_rng(9)
    ref = make_reference(rng)
    step = 1.4826
    noise_ref = np.round(step * rng.integers(1, 6, ref.n), 4)
    ref = TrainingReference(ref.classes, ref.probs, {**ref.image_stats, "noise": noise_ref}, ref.n_total)
    top = float(np.sort(noise_ref)[ref.n - 4])  # the 99% threshold (rank 4 of 450 from the top)
    cur = np.full(600, np.float32(top), dtype=np.float32).astype(np.float64)
    res = training_drift({"incumbent": ref}, None, {"noise": cur}, alpha=0.01)
    noisy = [t for t in res.tails if t.feature == "noise"][0]
    assert noisy.share == 0.0, (top, cur[0])
