"""The evaluator's statistics, checked against statsmodels/scipy and by simulation.

Simulated streams have known true accuracies; each "evaluation" draws a Poisson sample of frames with
the recorded inclusion probabilities, as :class:`pipeline.sampling.LabelSampler` does. The truth is the
stream's accuracy (the mean of the per-frame probabilities of being right). 1,000 evaluations per
scenario: a 95% interval should cover in 93-97% of them (Monte Carlo sd ~0.7 points).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.proportion import proportion_confint

from pipeline.evaluation.stats import (
    Estimate,
    accuracy_estimate,
    annotator_agreement,
    confusion,
    gap_estimate,
    mcnemar_exact_p,
    mcnemar_sample_size,
    paired_test,
    per_class_recall,
    recommend,
    weighted_accuracy,
    wilson_interval,
)

SIMS = 1000
N_FRAMES = 8000
RATE = 0.05
FLOOR = 0.2


def _coverage(estimates: list[Estimate], truth: float) -> float:
    return float(np.mean([e.low <= truth <= e.high for e in estimates]))


def _evaluate(correct: np.ndarray, pi: np.ndarray, sampled: np.ndarray, strata=None) -> list[Estimate]:
    out = []
    for s in range(correct.shape[0]):
        m = sampled[s]
        out.append(weighted_accuracy(correct[s][m], pi[s][m], strata=None if strata is None else strata[s][m]))
    return out


# ---------------------------------------------------------------------------------------------
# streams


def _disagreement_stream(rng: np.random.Generator):
    """15% of frames are disagreements (incumbent != shadow) where the incumbent is right half the time;
    elsewhere it is right 95% of the time. Disagreements are sampled with 10x the probability."""
    dis = rng.random((SIMS, N_FRAMES)) < 0.15
    p_correct = np.where(dis, 0.5, 0.95)
    truth = 0.85 * 0.95 + 0.15 * 0.5
    correct = rng.random((SIMS, N_FRAMES)) < p_correct
    q_agree = (1 - FLOOR) * RATE / (0.15 * 10 + 0.85)
    pi = np.where(dis, FLOOR * RATE + 10 * q_agree, FLOOR * RATE + q_agree)
    sampled = rng.random((SIMS, N_FRAMES)) < pi
    return correct, pi, sampled, truth, dis


def _uncertainty_stream(rng: np.random.Generator):
    """Per-frame margin m ~ Beta(5, 1); P(correct) = 0.5 + 0.49 m; inclusion probability ~ (1 - m) plus the floor."""
    m = rng.beta(5, 1, (SIMS, N_FRAMES))
    truth = 0.5 + 0.49 * 5 / 6
    correct = rng.random((SIMS, N_FRAMES)) < 0.5 + 0.49 * m
    pi = np.minimum(1.0, FLOOR * RATE + (1 - FLOOR) * RATE * (1 - m) / (1 / 6))
    sampled = rng.random((SIMS, N_FRAMES)) < pi
    return correct, pi, sampled, truth


@pytest.fixture(scope="module")
def disagreement():
    return _disagreement_stream(np.random.default_rng(11))


@pytest.fixture(scope="module")
def uncertainty():
    return _uncertainty_stream(np.random.default_rng(12))


# ---------------------------------------------------------------------------------------------
# coverage


def test_wilson_coverage_uniform_sampling():
    rng = np.random.default_rng(10)
    truth = 0.87
    p_frame = np.clip(truth + rng.normal(0, 0.1, N_FRAMES), 0, 1)  # heterogeneous frames
    p_frame += truth - p_frame.mean()
    correct = rng.random((SIMS, N_FRAMES)) < p_frame
    sampled = rng.random((SIMS, N_FRAMES)) < RATE
    ests = [accuracy_estimate(correct[s][sampled[s]], np.full(sampled[s].sum(), RATE)) for s in range(SIMS)]
    assert all(e.method == "wilson" for e in ests)
    cov = _coverage(ests, truth)
    assert 0.93 <= cov <= 0.97, cov


def test_weighted_coverage_disagreement_sampling(disagreement):
    correct, pi, sampled, truth, _ = disagreement
    cov = _coverage(_evaluate(correct, pi, sampled), truth)
    assert 0.93 <= cov <= 0.97, cov


def test_weighted_coverage_uncertainty_sampling(uncertainty):
    correct, pi, sampled, truth = uncertainty
    cov = _coverage(_evaluate(correct, pi, sampled), truth)
    assert 0.93 <= cov <= 0.97, cov


def test_weighted_coverage_with_strata(disagreement):
    correct, pi, sampled, truth, dis = disagreement
    ests = _evaluate(correct, pi, sampled, strata=dis)
    assert ests[0].method.endswith("stratified")
    cov = _coverage(ests, truth)
    assert 0.93 <= cov <= 0.97, cov


def test_gap_coverage_with_both_sample_sizes_random():
    rng = np.random.default_rng(13)
    p_off, p_prod = 0.94, 0.86
    ests = []
    for _ in range(SIMS):
        n_off = int(rng.integers(100, 3000))
        n_prod = int(rng.integers(60, 1500))
        k_off = rng.binomial(n_off, p_off)
        y = rng.random(n_prod) < p_prod
        ests.append(gap_estimate(k_off / n_off, n_off, accuracy_estimate(y)))
    cov = _coverage(ests, p_off - p_prod)
    assert 0.93 <= cov <= 0.97, cov


def test_gap_coverage_weighted_production(disagreement):
    correct, pi, sampled, truth, _ = disagreement
    rng = np.random.default_rng(14)
    p_off = 0.93
    prods = _evaluate(correct, pi, sampled)
    ests = []
    for e in prods:
        n_off = int(rng.integers(200, 2000))
        ests.append(gap_estimate(rng.binomial(n_off, p_off) / n_off, n_off, e))
    cov = _coverage(ests, p_off - truth)
    assert 0.93 <= cov <= 0.97, cov
    # the gap interval is wider than the production one alone: the offline side has noise too
    assert np.mean([g.high - g.low for g in ests]) > np.mean([e.high - e.low for e in prods])


# ---------------------------------------------------------------------------------------------
# unbiasedness


@pytest.mark.parametrize("stream", ["disagreement", "uncertainty"])
def test_weighted_estimator_unbiased_naive_biased(stream, request):
    data = request.getfixturevalue(stream)
    correct, pi, sampled, truth = data[:4]
    ests = _evaluate(correct, pi, sampled)
    values = np.array([e.value for e in ests])
    mc_se = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - truth) < max(4 * mc_se, 0.002), (values.mean(), truth, mc_se)
    naive = np.array([correct[s][sampled[s]].mean() for s in range(SIMS)])
    assert truth - naive.mean() > 0.03  # over-sampling the hard frames makes the raw share far too low
    # the reported standard errors match the spread of the estimates
    se = np.sqrt(np.mean([e.se**2 for e in ests]))
    assert 0.85 < se / values.std(ddof=1) < 1.15


# ---------------------------------------------------------------------------------------------
# against statsmodels / scipy


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (45, 50), (500, 1000), (1, 1000), (999, 1000)])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_wilson_equals_statsmodels(k, n, alpha):
    lo, hi = wilson_interval(k, n, alpha)
    slo, shi = proportion_confint(k, n, alpha=alpha, method="wilson")
    assert lo == pytest.approx(slo, abs=1e-12) and hi == pytest.approx(shi, abs=1e-12)


# (k, n, alpha, low, high) from the hand-written Wilson formula wilson_interval used before it called statsmodels
_WILSON_BEFORE = [
    (0, 1, 0.05, 0.0, 0.7934506856227626),
    (1, 1, 0.05, 0.20654931437723745, 1.0),
    (0, 10, 0.05, 0.0, 0.2775327998628892),
    (3, 10, 0.05, 0.10779126740630099, 0.6032218525388546),
    (10, 10, 0.05, 0.7224672001371107, 0.9999999999999999),
    (7, 13, 0.1, 0.3248195589589245, 0.7388522269250104),
    (50, 100, 0.01, 0.37527962504483986, 0.6247203749551602),
    (999, 1000, 0.05, 0.9943574414020421, 0.9998234536293739),
    (1, 1000, 0.05, 0.00017654637062607809, 0.0056425585979579355),
    (123, 456, 0.2, 0.24396254115378893, 0.2971638672816792),
    (2, 3, 0.5, 0.47225817685939103, 0.8171827498413868),
    (0, 0, 0.05, 0.0, 1.0),
]


@pytest.mark.parametrize("k, n, alpha, low, high", _WILSON_BEFORE)
def test_wilson_gives_the_numbers_of_the_former_formula(k, n, alpha, low, high):
    lo, hi = wilson_interval(k, n, alpha)
    assert lo == pytest.approx(low, rel=1e-12, abs=1e-15) and hi == pytest.approx(high, rel=1e-12, abs=1e-15)
    assert 0.0 <= lo <= hi <= 1.0


@pytest.mark.parametrize("n01, n10", [(0, 0), (0, 1), (1, 0), (5, 5), (3, 12), (12, 3), (0, 25), (40, 61), (100, 130), (7, 0)])
def test_mcnemar_equals_statsmodels_and_scipy(n01, n10):
    p = mcnemar_exact_p(n01, n10)
    if n01 + n10:
        assert p == pytest.approx(mcnemar([[0, n01], [n10, 0]], exact=True).pvalue, rel=1e-12)
        assert p == pytest.approx(binomtest(min(n01, n10), n01 + n10, 0.5).pvalue, rel=1e-9)
    else:
        assert p == 1.0
    # and paired_test gets the same counts from per-frame booleans
    inc = np.array([0] * n01 + [1] * n10 + [1] * 20 + [0] * 4, dtype=bool)
    sh = np.array([1] * n01 + [0] * n10 + [1] * 20 + [0] * 4, dtype=bool)
    r = paired_test(inc, sh)
    assert (r.n01, r.n10, r.n11, r.n00, r.n) == (n01, n10, 20, 4, n01 + n10 + 24)
    assert r.p_mcnemar == p and r.p_value == p
    assert r.diff.value == pytest.approx((n01 - n10) / r.n)


def test_annotator_agreement_matches_statsmodels():
    rng = np.random.default_rng(3)
    classes = ["box", "bag", "empty"]
    a = rng.choice(classes, 300)
    b = np.where(rng.random(300) < 0.8, a, rng.choice(classes, 300))
    res = annotator_agreement(a, b)
    table = np.array([[np.sum((a == x) & (b == y)) for y in sorted(classes)] for x in sorted(classes)])
    ref = cohens_kappa(table)
    assert res.n == 300
    assert res.agreement == pytest.approx(np.mean(a == b))
    assert (res.agreement_low, res.agreement_high) == wilson_interval(int(np.sum(a == b)), 300)
    assert res.kappa == pytest.approx(float(ref.kappa))
    assert res.kappa_low < res.kappa < res.kappa_high
    none = annotator_agreement([], [])
    assert none.agreement is None and none.kappa is None and none.to_dict() == {
        "n": 0, "agreement": None, "agreement_low": 0.0, "agreement_high": 1.0, "kappa": None, "kappa_low": None, "kappa_high": None}


# ---------------------------------------------------------------------------------------------
# paired test: coverage and decisions


def test_paired_difference_coverage_unweighted_and_weighted():
    rng = np.random.default_rng(15)
    n_frames = 3000
    # per frame: both right 0.80, incumbent only 0.05, shadow only 0.09, both wrong 0.06 -> diff +0.04
    cells = rng.choice(4, size=(SIMS, n_frames), p=[0.80, 0.05, 0.09, 0.06])
    inc = (cells == 0) | (cells == 1)
    sh = (cells == 0) | (cells == 2)
    truth = 0.04
    # uniform 8% sample
    samp = rng.random((SIMS, n_frames)) < 0.08
    cov_u = np.mean([paired_test(inc[s][samp[s]], sh[s][samp[s]]).diff.contains(truth) for s in range(SIMS)])
    # disagreement sampling: discordant frames 10x more likely
    disc = inc != sh
    pi = np.where(disc, 0.3, 0.03)
    samp = rng.random((SIMS, n_frames)) < pi
    res = [paired_test(inc[s][samp[s]], sh[s][samp[s]], 1.0 / pi[s][samp[s]]) for s in range(SIMS)]
    assert all(r.weighted for r in res)
    cov_w = np.mean([r.diff.contains(truth) for r in res])
    assert 0.93 <= cov_u <= 0.97, cov_u
    assert 0.93 <= cov_w <= 0.97, cov_w
    assert np.mean([r.diff.value for r in res]) == pytest.approx(truth, abs=0.003)


def test_recommend_promote_keep_and_more_labels():
    rng = np.random.default_rng(16)
    n = 2000
    inc = rng.random(n) < 0.80
    better = inc | (rng.random(n) < 0.5)  # shadow fixes half the incumbent's errors
    worse = inc & (rng.random(n) < 0.8)
    d = recommend(paired_test(inc, better))
    assert d.action == "promote" and d.more_labels == 0
    d = recommend(paired_test(inc, worse))
    assert d.action == "keep"
    tiny_inc = np.array([1, 1, 0, 1, 0, 1, 1, 1], dtype=bool)
    tiny_sh = np.array([1, 1, 1, 1, 0, 1, 1, 1], dtype=bool)
    d = recommend(paired_test(tiny_inc, tiny_sh))
    assert d.action == "need_more_labels" and d.more_labels is not None and d.more_labels > 0
    # the estimate is Connor's formula at the observed rates
    assert d.more_labels == mcnemar_sample_size(1 / 8, 1 / 8) - 8
    # equal models: no sample size without a minimum effect; with one, a number
    same = paired_test(inc, inc.copy())
    assert recommend(same).action == "need_more_labels" and recommend(same).more_labels is None
    # ... and a tight interval around 0 rules out a 5-point gain
    assert recommend(same, min_effect=0.05).action == "keep"
    assert recommend(paired_test([], [])).more_labels is None


def test_sample_size_reaches_power_by_simulation():
    """Connor's n gives about the promised power for McNemar's exact test."""
    rng = np.random.default_rng(17)
    p01, p10 = 0.08, 0.03
    n = mcnemar_sample_size(p01 + p10, p01 - p10, alpha=0.05, power=0.8)
    cells = rng.multinomial(n, [p01, p10, 1 - p01 - p10], size=400)
    power = np.mean([mcnemar_exact_p(c[0], c[1]) < 0.05 for c in cells])
    assert 0.72 <= power <= 0.9, (n, power)


# ---------------------------------------------------------------------------------------------
# small behaviours


def test_accuracy_estimate_dispatch_and_edges():
    y = np.array([1, 0, 1, 1], dtype=bool)
    assert accuracy_estimate(y).method == "wilson"
    assert accuracy_estimate(y, np.full(4, 0.1)).method == "wilson"
    e = accuracy_estimate(y, np.array([0.1, 0.2, 0.1, 0.5]))
    assert e.method.startswith("hajek")
    w = 1 / np.array([0.1, 0.2, 0.1, 0.5])
    assert e.value == pytest.approx((w * y).sum() / w.sum())
    empty = accuracy_estimate(np.array([], dtype=bool))
    assert empty.n == 0 and math.isnan(empty.value) and (empty.low, empty.high) == (0.0, 1.0)
    allright = weighted_accuracy(np.ones(30, bool), np.linspace(0.05, 0.5, 30))
    assert allright.value == 1.0 and allright.high == 1.0 and allright.low < 0.95
    assert allright.to_dict()["value"] == 1.0


def test_confusion_and_per_class_recall():
    classes = ["a", "b", "c"]
    t = ["a", "a", "b", "c", "c", "c"]
    p = ["a", "b", "b", "c", "a", "c"]
    cm = confusion(t, p, classes)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    cmw = confusion(t, p, classes, weights=np.array([2, 1, 1, 1, 3, 1.0]))
    np.testing.assert_allclose(cmw, [[2, 1, 0], [0, 1, 0], [3, 0, 2]])
    rec = per_class_recall(t, p, classes)
    assert rec["a"].value == 0.5 and rec["b"].value == 1.0 and rec["c"].value == pytest.approx(2 / 3)
    recw = per_class_recall(t, p, classes, weights=np.array([2, 1, 1, 1, 3, 1.0]))
    assert recw["c"].value == pytest.approx(2 / 5)
    assert math.isnan(per_class_recall(["a"], ["a"], classes)["b"].value)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: wilson_interval(5, 3), "0 <= k <= n"),
        (lambda: wilson_interval(1, 3, alpha=1.5), "alpha"),
        (lambda: weighted_accuracy(np.ones(3), np.array([0.1, 0.0, 0.2])), r"\(0, 1\]"),
        (lambda: weighted_accuracy(np.ones(3), np.array([0.1, 0.2])), "shape"),
        (lambda: weighted_accuracy(np.array([0, 2, 1]), np.full(3, 0.1)), "0/1"),
        (lambda: gap_estimate(1.2, 100, accuracy_estimate(np.ones(5, bool))), "offline_accuracy"),
        (lambda: gap_estimate(0.9, 0, accuracy_estimate(np.ones(5, bool))), "offline_n"),
        (lambda: paired_test(np.ones(3, bool), np.ones(4, bool)), "differ in length"),
        (lambda: paired_test(np.ones(3, bool), np.ones(3, bool), np.array([1, -1, 1.0])), "weights"),
        (lambda: confusion(["a", "unsure"], ["a", "a"], ["a", "b"]), r"y_true\[1\] = 'unsure'"),
        (lambda: mcnemar_sample_size(0.1, 0.0), "effect"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
