"""Model-assisted estimation (pipeline.evaluation.ppi): coverage by simulation under every sampling strategy, with
a proxy that is right and one that is confident and wrong on 30% of frames; the fall-back to the classical estimate;
cross-fitting; agreement with ppi_py where both apply."""
# the world's shadow (its disagreements, its correctness there) feeds the samplers that use it and the proxy's
# agreement feature

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from pipeline.config import SamplingConfig
from pipeline.evaluation import ppi, stats
from pipeline.sampling import LabelSampler, neyman_stratum
from pipeline.types import Frame, FrameBatch, Prediction, Role

CLASSES = ["a", "b", "c"]
STRATEGIES = ("uniform", "stratified", "disagreement", "uncertainty", "neyman")
SMALL = np.zeros((1, 2, 2, 3), np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# a world whose truth is known
# ----------------------------------------------------------------------------------------------------------------
def world(seed: int, n: int, shifted: bool) -> dict:
    """Frames with the incumbent's calibrated probabilities, a shadow's prediction and one image statistic.

    ``p_right``: the true probability the incumbent is right on each frame (the truth the generator knows).
    Shifted: 30% of frames are night frames on which the model stays confident (top probability ~0.95) but is right
    only 20% of the time -- the proxy built from its confidence is miscalibrated there; their brightness is low
    (the image statistic can tell, if the proxy learns it from the labels).
    """
    rng = np.random.default_rng(seed)
    # as a trained classifier's confidence: most frames easy and sure, a minority hard
    conf = np.clip(np.where(rng.random(n) < 0.7, rng.beta(40, 1, n), rng.beta(3, 2, n)), 0.34, 0.999)
    p_right = conf.copy()
    brightness = rng.normal(0.5, 0.1, n)
    if shifted:
        night = rng.random(n) < 0.3
        conf[night] = np.clip(rng.beta(20, 1, night.sum()), 0.34, 0.999)
        p_right[night] = 0.2
        brightness[night] = rng.normal(0.2, 0.1, night.sum())
    top = rng.integers(0, 3, n)
    probs = np.empty((n, 3))
    rows = np.arange(n)
    probs[rows, top] = conf
    probs[rows, (top + 1) % 3] = (1 - conf) * 0.7
    probs[rows, (top + 2) % 3] = (1 - conf) * 0.3
    # the shadow disagrees on 15% of frames (more often where the incumbent is unsure)
    dis = rng.random(n) < np.clip(0.3 * (1 - conf) + 0.05, 0, 1)
    shadow = np.where(dis, (top + 1) % 3, top)
    # on disagreements the shadow is right with probability 0.6 * (incumbent wrong)
    p_shadow_right = np.where(dis, 0.6 * (1 - p_right), p_right)
    return {"probs": probs, "top": top, "shadow": shadow, "dis": dis, "p_right": p_right, "p_shadow_right": p_shadow_right,
            "brightness": brightness}


def _shadow_probs(w: dict, i: int) -> np.ndarray:
    """The shadow's probabilities: the incumbent's confidence on the shadow's own class."""
    p = np.full(3, (1 - w["probs"][i].max()) / 2)
    p[w["shadow"][i]] = w["probs"][i].max()
    return p.astype(np.float32)


def sampler_pi(w: dict, strategy: str, rate: float, feedback: dict | None = None) -> np.ndarray:
    """Inclusion probabilities from the real LabelSampler over the world's frames, in batches of 64."""
    cfg = SamplingConfig(strategy=strategy, rate=rate, uniform_floor=0.2, seed=0)
    s = LabelSampler(cfg, CLASSES, image_dir="/nonexistent")
    if feedback:
        s.update_feedback(feedback)
    n = w["probs"].shape[0]
    out = []
    for start in range(0, n, 64):
        idx = range(start, min(start + 64, n))
        frames = tuple(Frame(camera_id="cam", seq=i, timestamp=1e6 + i, image=SMALL[0], frame_id=f"f{i}") for i in idx)
        inc = [Prediction(f"f{i}", "cam", Role.INCUMBENT, "inc:1", w["probs"][i].astype(np.float32), CLASSES[w["top"][i]]) for i in idx]
        sh = [Prediction(f"f{i}", "cam", Role.SHADOW, "sh:1", _shadow_probs(w, i), CLASSES[w["shadow"][i]]) for i in idx]
        out.append(s.inclusion_probabilities(FrameBatch(frames, np.repeat(SMALL, len(frames), axis=0)), inc, sh))
    return np.concatenate(out)


def neyman_feedback(w: dict, pi: np.ndarray, rng: np.random.Generator) -> dict:
    """Labels a first round would have given each neyman stratum (so the allocation uses labelled accuracies)."""
    fb: dict = {}
    lab = rng.random(pi.shape[0]) < pi
    right = rng.random(pi.shape[0]) < w["p_right"]
    for i in np.flatnonzero(lab):
        k = neyman_stratum("cam", w["probs"][i], CLASSES[w["shadow"][i]], CLASSES[w["top"][i]], SamplingConfig().neyman_edges)
        n, c = fb.get(k, (0, 0))
        fb[k] = (n + 1, c + int(right[i]))
    return fb


def features(w: dict) -> tuple[np.ndarray, tuple[str, ...]]:
    return ppi.correctness_features(w["probs"], w["shadow"], {"brightness": w["brightness"]},
                                    other_probs=np.array([_shadow_probs(w, i) for i in range(w["probs"].shape[0])]))


# ----------------------------------------------------------------------------------------------------------------
# coverage: 1,000 simulated evaluations per strategy and scenario
# ----------------------------------------------------------------------------------------------------------------
N_FRAMES, RATE, SIMS = 3000, 0.12, 1000


@pytest.fixture(scope="module")
def scenarios() -> dict:
    """Per (shifted, strategy): a stream of the generator with the real sampler's probabilities."""
    out = {}
    for shifted in (False, True):
        w = world(7 + shifted, N_FRAMES, shifted)
        X, names = features(w)
        for strategy in STRATEGIES:
            fb = None
            if strategy == "neyman":  # a first round of labels tells neyman each stratum's accuracy
                fb = neyman_feedback(w, sampler_pi(w, "neyman", RATE), np.random.default_rng(1))
            out[(shifted, strategy)] = (w, sampler_pi(w, strategy, RATE, fb), X, names)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("shifted", [False, True], ids=["calibrated", "shifted"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_accuracy_and_gap_intervals_cover_the_truth(scenarios, strategy, shifted):
    """1,000 simulated labelings of a stream whose truth is known (the mean over its frames of the probability of
    being right): labels, draws and the proxy's cross-fit vary. ~360 labels each."""
    w, pi, X, names = scenarios[(shifted, strategy)]
    n = pi.shape[0]
    truth = float(w["p_right"].mean())
    rng = np.random.default_rng(100 + 10 * STRATEGIES.index(strategy) + shifted)
    folds = ppi.fold_ids([f"f{i}" for i in range(n)], 5)
    offline_p, offline_n = 0.95, 600  # the model card's test split: the gap's other half
    hits = gap_hits = 0
    labels = []
    for _ in range(SIMS):
        right = rng.random(n) < w["p_right"]
        lab = rng.random(n) < pi
        labels.append(lab.sum())
        proxy = ppi.crossfit_proxy(X, right, lab, folds, names)
        acc = ppi.model_assisted_accuracy(right, lab, pi, proxy.values)
        hits += acc.low <= truth <= acc.high
        prod = stats.Estimate(acc.value, acc.low, acc.high, acc.se, acc.n, ppi.proportion_n_eff(acc.value, acc.se), "ppi")
        gap = stats.gap_estimate(rng.binomial(offline_n, offline_p) / offline_n, offline_n, prod)
        gap_hits += gap.low <= offline_p - truth <= gap.high
    assert 0.93 <= hits / SIMS <= 0.97, (strategy, shifted, hits / SIMS, np.mean(labels))
    # the gap: stats.gap_estimate (MOVER) over the offline Wilson interval and this one
    assert 0.93 <= gap_hits / SIMS <= 0.97, (strategy, shifted, gap_hits / SIMS)


# ----------------------------------------------------------------------------------------------------------------
# behaviour
# ----------------------------------------------------------------------------------------------------------------
def _draw(w: dict, pi: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(pi.shape[0]) < w["p_right"], rng.random(pi.shape[0]) < pi


def test_a_useless_proxy_falls_back_to_the_classical_estimate():
    """A proxy of pure noise: lambda on it ~0 and the interval as wide as the classical (Hajek) one."""
    w = world(3, 6000, False)
    pi = np.full(6000, 0.1)
    right, lab = _draw(w, pi, 0)
    noise = np.random.default_rng(5).random(6000)
    res = ppi.model_assisted_accuracy(right, lab, pi, noise)
    classical = stats.accuracy_estimate(right[lab], pi[lab])
    assert abs(res.lam[1]) < 0.1
    assert (res.high - res.low) == pytest.approx(classical.high - classical.low, rel=0.08)
    assert abs(res.value - classical.value) < 0.01


def test_a_good_proxy_buys_a_narrower_interval_than_uniform_wilson():
    w = world(4, 6000, False)
    pi = np.full(6000, 0.1)
    right, lab = _draw(w, pi, 1)
    X, names = features(w)
    proxy = ppi.crossfit_proxy(X, right, lab, ppi.fold_ids(range(6000), 5), names)
    res = ppi.model_assisted_accuracy(right, lab, pi, proxy.values)
    lo, hi = proportion_confint(int(right[lab].sum()), int(lab.sum()), method="wilson")
    assert proxy.auc > 0.7
    assert (res.high - res.low) < 0.9 * (hi - lo)
    assert ppi.proportion_n_eff(res.value, res.se) > 1.2 * lab.sum()


def test_cross_fitting_keeps_a_frames_label_out_of_its_own_proxy():
    w = world(5, 1000, False)
    X, names = features(w)
    right, lab = _draw(w, np.full(1000, 0.5), 2)
    folds = ppi.fold_ids([f"f{i}" for i in range(1000)], 5)
    before = ppi.crossfit_proxy(X, right, lab, folds, names).values
    i = int(np.flatnonzero(lab)[0])
    flipped = right.copy()
    flipped[i] = ~flipped[i]
    after = ppi.crossfit_proxy(X, flipped, lab, folds, names).values
    assert after[i] == before[i]  # its own fold's regression never saw it
    others = folds != folds[i]
    assert not np.allclose(after[others], before[others])  # the other folds' regressions did


def test_agrees_with_ppi_py_under_uniform_sampling():
    """Uniform sampling: the labelled frames are an i.i.d. sample and the rest unlabelled, the setting of
    ppi_py.ppi_mean_ci (PPI++ with power tuning); estimates and widths agree."""
    ppi_py = pytest.importorskip("ppi_py")
    w = world(6, 8000, True)
    pi = np.full(8000, 0.1)
    right, lab = _draw(w, pi, 3)
    X, names = features(w)
    f = ppi.crossfit_proxy(X, right, lab, ppi.fold_ids(range(8000), 5), names).values
    ours = ppi.model_assisted_accuracy(right, lab, pi, f)
    lo, hi = ppi_py.ppi_mean_ci(right[lab].astype(float), f[lab], f[~lab], alpha=0.05)
    lo, hi = float(np.ravel(lo)[0]), float(np.ravel(hi)[0])
    assert abs(ours.value - (lo + hi) / 2) < 0.25 * (hi - lo) / 2
    assert (ours.high - ours.low) == pytest.approx(hi - lo, rel=0.15)


def test_wilson_labels_for_half_width_matches_statsmodels():
    for p, hw in ((0.9, 0.02), (0.7, 0.02), (0.5, 0.05)):
        n = ppi.wilson_labels_for_half_width(p, hw)
        # statsmodels' Wilson interval at the count nearest p: about the width asked for, at n and not at n / 2
        lo, hi = proportion_confint(round(p * n), n, method="wilson")
        assert (hi - lo) / 2 == pytest.approx(hw, rel=0.05)
        lo, hi = proportion_confint(round(p * n / 2), n // 2, method="wilson")
        assert (hi - lo) / 2 > 1.3 * hw
        # exactly: the smallest n whose Wilson half-width at proportion p is within hw
        z = 1.959963984540054
        half = lambda m: z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m)) / (1 + z * z / m)  # noqa: E731
        assert half(n) <= hw < half(n - 1)
    assert ppi.wilson_labels_for_half_width(0.7, 0.02) == pytest.approx(0.7 * 0.3 * (1.96 / 0.02) ** 2, rel=0.01)
    with pytest.raises(ValueError, match="half_width"):
        ppi.wilson_labels_for_half_width(0.7, 0.7)


def test_bad_input_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="pi must lie in"):
        ppi.active_mean(np.ones(3), np.array([True, False, True]), np.array([0.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="probs must be"):
        ppi.correctness_features(np.ones(3))
    with pytest.raises(ValueError, match="other_pred"):
        ppi.correctness_features(np.full((3, 2), 0.5), np.zeros(2))
    empty = ppi.active_mean(np.zeros(4), np.zeros(4, bool), np.full(4, 0.5))
    assert math.isnan(empty.value) and (empty.low, empty.high) == (0.0, 1.0)


def test_logistic_fit_stays_finite_on_nearly_separable_labels():
    """A model right on 97% of frames, its errors all at low confidence: plain Newton steps diverge there (the
    proxy then collapses to a constant); the damped fit stays finite and ranks the frames."""
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 1.0, (2000, 1))
    y = (x[:, 0] > 1.2).astype(float)
    beta = ppi.fit_logistic(x, y, ridge=1.0)
    assert np.all(np.isfinite(beta)) and np.abs(beta).max() < 50
    p = ppi.predict_logistic(beta, x)
    assert p[y == 1].min() > p[y == 0].max() - 0.2 and 0.9 < p.mean() < 1.0


def test_labels_all_right_give_the_wilson_interval_not_zero_over_zero():
    """300 labels, every one right, 420 frames: the model-assisted interval is the Wilson interval at the labels'
    effective size (~±0.6 pts), not [0.06, 1] from p (1 - p) / se^2 = 0 / 0 (seen in a label-target run)."""
    rng = np.random.default_rng(4)
    N = 420
    labelled = np.zeros(N, bool)
    labelled[:300] = True
    correct = np.where(labelled, 1.0, 0.0)
    pi = np.full(N, 300 / 360)
    proxy = np.clip(rng.normal(0.9, 0.05, N), 0, 1)
    r = ppi.model_assisted_accuracy(correct, labelled, pi, proxy, alpha=0.05)
    lo, hi = proportion_confint(300, 300, alpha=0.05, method="wilson")
    assert r.value == 1.0 and r.low == pytest.approx(lo, abs=1e-9) and r.high == pytest.approx(hi, abs=1e-9)
    r0 = ppi.model_assisted_accuracy(np.where(labelled, 0.0, 1.0), labelled, pi, proxy)
    assert r0.value == 0.0 and r0.high == pytest.approx(1 - lo, abs=1e-9)
