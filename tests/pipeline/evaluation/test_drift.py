"""Drift tests: false-alarm rate near alpha on unshifted (also strongly autocorrelated) frames, power on
a strong shift. A steady camera is simulated three ways: independent frames, AR(1) logits with rho=0.9,
and parcels that dwell for 15 frames (near-identical frames in blocks)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as st
from scipy.signal import lfilter

from pipeline.evaluation.drift import class_distribution_drift, effective_sample_size, image_stat_drift, ks_softmax_drift

ALPHA = 0.05
K = 4
N = 1000  # frames per window
SIMS = 300
OFFSETS = np.array([1.0, 0.5, 0.0, -0.5])
CLASSES = ["box", "bag", "envelope", "empty"]


def _ar1(rng: np.random.Generator, n: int, k: int, rho: float) -> np.ndarray:
    """Stationary AR(1) columns with unit variance."""
    x = lfilter([1.0], [1.0, -rho], rng.normal(size=(n + 300, k)) * np.sqrt(1 - rho**2), axis=0)
    return x[300:]


def _dwell(rng: np.random.Generator, n: int, k: int, dwell: int) -> np.ndarray:
    """Each parcel stays ``dwell`` frames; frame-to-frame jitter is small."""
    blocks = rng.normal(size=(n // dwell + 2, k))
    start = int(rng.integers(dwell))  # windows do not start on a parcel boundary
    return np.repeat(blocks, dwell, axis=0)[start : start + n] + 0.1 * rng.normal(size=(n, k))


def _softmax(z: np.ndarray) -> np.ndarray:
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _window(rng: np.random.Generator, kind: str, shift: float = 0.0) -> np.ndarray:
    if kind == "iid":
        z = rng.normal(size=(N, K))
    elif kind == "ar1":
        z = _ar1(rng, N, K, 0.9)
    elif kind == "dwell":
        z = _dwell(rng, N, K, 15)
    else:  # pragma: no cover
        raise ValueError(kind)
    z = 1.5 * z + OFFSETS
    z[:, 0] += shift
    return _softmax(z)


@pytest.mark.parametrize("kind", ["iid", "ar1", "dwell"])
def test_softmax_ks_false_alarm_rate(kind):
    rng = np.random.default_rng({"iid": 1, "ar1": 2, "dwell": 3}[kind])
    alarms, naive = 0, 0
    for _ in range(SIMS):
        ref, cur = _window(rng, kind), _window(rng, kind)
        r = ks_softmax_drift(ref, cur, ALPHA, classes=CLASSES)
        alarms += r.drift
        naive += min(1.0, K * min(st.ks_2samp(ref[:, j], cur[:, j]).pvalue for j in range(K))) < ALPHA
    assert alarms / SIMS <= 2 * ALPHA, (kind, alarms / SIMS)
    if kind != "iid":
        # the textbook test, fed correlated frames as if independent, alarms on a steady camera
        assert naive / SIMS > 0.5, (kind, naive / SIMS)
    else:
        assert r.n_ref_eff > 0.7 * N  # independent frames keep (almost) all their information


@pytest.mark.parametrize("kind", ["iid", "ar1", "dwell"])
def test_softmax_ks_detects_strong_shift(kind):
    rng = np.random.default_rng(4)
    hits = [ks_softmax_drift(_window(rng, kind), _window(rng, kind, shift=3.0), ALPHA).drift for _ in range(100)]
    assert np.mean(hits) >= 0.9, (kind, np.mean(hits))


def _labels(rng: np.random.Generator, kind: str, prior_shift: float = 0.0) -> np.ndarray:
    p = _window(rng, kind, prior_shift)
    return np.array(CLASSES)[p.argmax(1)]


@pytest.mark.parametrize("kind", ["iid", "dwell"])
def test_class_distribution_false_alarms_and_power(kind):
    rng = np.random.default_rng(5)
    fa, naive = [], []
    for _ in range(SIMS):
        a, b = _labels(rng, kind), _labels(rng, kind)
        r = class_distribution_drift(a, b, CLASSES, ALPHA)
        fa.append(r.drift)
        naive.append(st.chi2.sf(r.chi2, r.dof) < ALPHA)
    assert np.mean(fa) <= 2 * ALPHA, np.mean(fa)
    if kind == "dwell":
        assert np.mean(naive) > 0.3, np.mean(naive)
        assert r.design_effect > 5
    power = np.mean([class_distribution_drift(_labels(rng, kind), _labels(rng, kind, 2.0), CLASSES, ALPHA).drift for _ in range(100)])
    assert power >= 0.9, power


def _image_stats(rng: np.random.Generator, kind: str, night: float = 0.0) -> dict[str, np.ndarray]:
    z = _ar1(rng, N, 4, 0.9) if kind == "ar1" else _dwell(rng, N, 4, 15)
    mix = np.array([[1, 0.5, 0.3, 0], [0, 1, 0.2, 0], [0, 0, 1, 0.3], [0, 0, 0, 1]])  # correlated statistics
    z = z @ mix
    return {
        "brightness": 120 + 15 * z[:, 0] - 15 * night * 2,
        "contrast": 40 + 5 * z[:, 1],
        "sharpness": 300 + 50 * z[:, 2],
        "noise": 2.0 + 0.3 * z[:, 3] + 0.3 * night * 2,
    }


@pytest.mark.parametrize("kind", ["ar1", "dwell"])
def test_image_stats_false_alarms_and_night_shift(kind):
    rng = np.random.default_rng(6)
    fa = np.mean([image_stat_drift(_image_stats(rng, kind), _image_stats(rng, kind), ALPHA).drift for _ in range(SIMS)])
    assert fa <= 2 * ALPHA, fa
    res = [image_stat_drift(_image_stats(rng, kind), _image_stats(rng, kind, night=1.0), ALPHA) for _ in range(100)]
    assert np.mean([r.drift for r in res]) >= 0.9
    r = res[0]
    assert r.stats["brightness"].smd < -1.5 and r.stats["noise"].smd > 1.5
    assert r.worst in ("brightness", "noise")
    # Bonferroni over the four statistics, per statistic
    assert r.corrected_p_values() == {k: min(1.0, 4 * v.p_value) for k, v in r.stats.items()}


def test_effective_sample_size_ar1_and_groups():
    rng = np.random.default_rng(7)
    x = _ar1(rng, 20000, 1, 0.9)[:, 0]
    n_eff, tau = effective_sample_size(x)
    assert tau[0] == pytest.approx(19.0, rel=0.15)  # (1 + rho) / (1 - rho)
    # two cameras interleaved: estimated per camera, in time order
    y = _ar1(rng, 20000, 1, 0.9)[:, 0]
    ts = np.concatenate([np.arange(20000), np.arange(20000)]).astype(float)
    order = np.argsort(ts, kind="stable")  # interleave
    vals = np.concatenate([x, y])[order]
    cams = np.array(["a"] * 20000 + ["b"] * 20000)[order]
    n_eff2, tau2 = effective_sample_size(vals, ts=ts[order], groups=cams)
    assert tau2[0] == pytest.approx(19.0, rel=0.15)
    # ignoring the cameras, the interleaved series looks less correlated (lag 1 is the other camera)
    _, tau_mixed = effective_sample_size(vals)
    assert tau_mixed[0] > 5
    # shuffled frames are independent
    _, tau_iid = effective_sample_size(rng.permutation(x))
    assert tau_iid[0] < 1.3
    # a constant series has nothing to correlate
    assert effective_sample_size(np.ones(50))[1][0] == 1.0


def test_small_windows_are_skipped_and_bad_input_rejected():
    r = ks_softmax_drift(np.full((5, 2), 0.5), np.full((50, 2), 0.5))
    assert r.drift is False and r.skipped and r.p is None
    # a skipped test's JSON has only the keys saying so
    assert r.to_dict() == {"drift": False, "p_min_corrected": 1.0, "skipped": r.skipped, "n_ref": 5, "n_cur": 50, "method": r.method}
    im = image_stat_drift({"brightness": np.ones(5)}, {"brightness": np.ones(50)})
    assert im.skipped and im.corrected_p_values() == {} and "stats" not in im.to_dict()
    with pytest.raises(ValueError, match="same number of classes"):
        ks_softmax_drift(np.full((50, 2), 0.5), np.full((50, 3), 1 / 3))
    with pytest.raises(ValueError, match="alpha"):
        ks_softmax_drift(np.full((50, 2), 0.5), np.full((50, 2), 0.5), alpha=0)
    with pytest.raises(ValueError, match="no image statistic"):
        image_stat_drift({"brightness": np.ones(30)}, {"noise": np.ones(30)})
    with pytest.raises(ValueError, match="timestamps"):
        ks_softmax_drift(np.full((50, 2), 0.5), np.full((50, 2), 0.5), ref_ts=np.arange(3))
    r = class_distribution_drift(["box"] * 30 + ["unknown"] * 5, ["box"] * 35, CLASSES)
    assert r.ref_counts[-1] == 5 and r.categories[-1] == "(other)"


def test_step_change_inside_the_current_window_is_detected():
    """A lasting shift that starts halfway through the current window must not hide itself as
    'long autocorrelation' (tau is taken from the reference window)."""
    rng = np.random.default_rng(11)
    ref = {"brightness": 120 + 5 * _ar1(rng, 200, 1, 0.5)[:, 0]}
    cur_b = 120 + 5 * _ar1(rng, 400, 1, 0.5)[:, 0]
    cur_b[200:] += 60  # the night shift starts in the middle of the window
    res = image_stat_drift(ref, {"brightness": cur_b}, ALPHA)
    assert res.drift, res
    # and the same window without the step is not flagged
    steady = image_stat_drift(ref, {"brightness": 120 + 5 * _ar1(rng, 400, 1, 0.5)[:, 0]}, ALPHA)
    assert not steady.drift, steady
