"""Anytime-valid confidence sequences, checked by simulation: a (1 - alpha) CS must cover the true value at
*every* time at once in at least 1 - alpha of the runs. Margins: 3 Monte Carlo standard deviations of a
rate of alpha over the number of runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from pipeline.evaluation.sequential import (
    ACTIONS,
    ConfidenceSequence,
    accuracy_cs,
    clopper_pearson,
    decide,
    decision_codes,
    eb_confidence_sequence,
    eb_lower_cs,
    gap_cs,
    paired_cs,
    place_labels,
    project_labels,
    sequential_decision,
)
from pipeline.evaluation.simulate_sequential import PairModel, mcnemar_exact_pvalues, simulate, simulate_pairs
from pipeline.evaluation.stats import wilson_interval

ALPHA = 0.05


def _margin(runs: int, alpha: float = ALPHA) -> float:
    return 3.0 * math.sqrt(alpha * (1 - alpha) / runs)


def _missed(lows: np.ndarray, highs: np.ndarray, truth: float) -> bool:
    return bool(((lows > truth) | (highs < truth)).any())


# ---------------------------------------------------------------------------------------------
# the construction itself


def _reference_lower(x: list[float], alpha: float, c: float = 0.5) -> list[float]:
    """Waudby-Smith & Ramdas (2024) PrPl-EB lower CS written step by step, as in confseq's predmix.py."""
    out, s_lx, s_l, s_vpsi = [], 0.0, 0.0, 0.0
    mu_reg, sig2 = 0.5, 0.25  # regularised mean/variance after t-1 observations (one fake observation)
    total = 0.0
    for t, xt in enumerate(x, start=1):
        lam = min(math.sqrt(2 * math.log(1 / alpha) / (t * math.log(1 + t) * sig2)), c)
        xbar_prev = min(total / (t - 1), 1.0) if t > 1 else 0.0
        psi = -math.log(1 - lam) - lam
        s_lx += lam * xt
        s_l += lam
        s_vpsi += (xt - xbar_prev) ** 2 * psi
        out.append((s_lx - math.log(1 / alpha) - s_vpsi) / s_l)
        total += xt
        mu_reg = min((0.5 + total) / (t + 1), 1.0)
        sig2 = (sig2 * t + (xt - mu_reg) ** 2) / (t + 1)
    return out


def test_lower_cs_matches_step_by_step_reference():
    rng = np.random.default_rng(0)
    x = rng.beta(2, 5, size=60)
    np.testing.assert_allclose(eb_lower_cs(x, 0.025), _reference_lower(list(x), 0.025), rtol=1e-12, atol=1e-12)


def test_bets_are_predictable():
    """The bound at time t depends on x_1..x_t only, and the bet at t on x_1..x_{t-1} only."""
    rng = np.random.default_rng(1)
    x = rng.random(50)
    y = x.copy()
    y[30] = 1.0 - x[30]
    lx, ly = eb_lower_cs(x, 0.05), eb_lower_cs(y, 0.05)
    np.testing.assert_array_equal(lx[:30], ly[:30])
    assert lx[30] != ly[30]


def test_bounded_cs_covers_at_all_times_and_shrinks():
    rng = np.random.default_rng(2)
    runs, n, p = 500, 2000, 0.8
    x = (rng.random((runs, n)) < p).astype(float)
    low, high = eb_confidence_sequence(x, ALPHA)
    miss = ((low > p) | (high < p)).any(axis=1).mean()
    assert miss <= ALPHA + _margin(runs)
    assert (np.diff(low, axis=1) >= 0).all() and (np.diff(high, axis=1) <= 0).all()
    width = np.median(high[:, -1] - low[:, -1])
    assert width < 0.09  # not a trivial [0, 1]: a fixed-sample 95% Wilson interval is 0.035 wide here
    # the check has teeth: fixed-sample Wilson intervals looked at every 25 observations miss far more often
    k = np.cumsum(x, axis=1)
    wilson_miss = 0
    for r in range(200):
        for t in range(25, n + 1, 25):
            lo, hi = wilson_interval(int(k[r, t - 1]), t, ALPHA)
            if not lo <= p <= hi:
                wilson_miss += 1
                break
    assert wilson_miss / 200 > 2 * ALPHA


def test_bounded_cs_on_other_ranges_matches_rescaling():
    rng = np.random.default_rng(3)
    x = rng.uniform(-2.0, 3.0, size=300)
    lo, hi = eb_confidence_sequence(x, 0.1, lo=-2.0, hi=3.0)
    lo01, hi01 = eb_confidence_sequence((x + 2.0) / 5.0, 0.1)
    np.testing.assert_allclose(lo, -2.0 + 5.0 * lo01)
    np.testing.assert_allclose(hi, -2.0 + 5.0 * hi01)
    assert lo[-1] <= 0.5 <= hi[-1]


# ---------------------------------------------------------------------------------------------
# inverse-probability weighted streams


def _uncertainty_stream(rng: np.random.Generator, n: int):
    """Frames with an uncertainty score u; the model is right w.p. 0.97 - 0.5 u (accuracy 0.72); frames are
    labelled w.p. pi = 0.05 + 0.95 u^2, in [0.05, 1] (uncertain frames, i.e. errors, oversampled)."""
    u = rng.random(n)
    z = rng.random(n) < 0.97 - 0.5 * u
    pi = 0.05 + 0.95 * u**2
    labelled = rng.random(n) < pi
    return u, z, pi, labelled


def test_ipw_accuracy_cs_covers_under_uncertainty_sampling():
    rng = np.random.default_rng(4)
    runs, n, truth = 500, 2000, 0.97 - 0.25
    miss = naive_miss = 0
    widths = []
    for _ in range(runs):
        _, z, pi, lab = _uncertainty_stream(rng, n)
        correct = np.where(lab, z.astype(float), np.nan)
        cs = accuracy_cs(correct, np.where(lab, pi, np.nan), ALPHA, pi_floor=0.05)
        miss += _missed(cs.lows, cs.highs, truth)
        widths.append(cs.high - cs.low)
        # ignoring the weights (labelled frames as if a simple random sample) is biased low
        naive = accuracy_cs(z[lab].astype(float), None, ALPHA)
        naive_miss += _missed(naive.lows, naive.highs, truth)
    assert miss / runs <= ALPHA + _margin(runs)
    assert naive_miss / runs > 0.5
    assert np.median(widths) < 0.35
    assert cs.n == n and cs.n_labels == int(lab.sum()) and cs.method == "prpl-eb-ipw"


def test_ipw_accuracy_cs_value_and_scale():
    correct = np.array([1.0, np.nan, 0.0, np.nan, 1.0])
    pi = np.array([0.5, np.nan, 0.25, 0.5, 1.0])
    cs = accuracy_cs(correct, pi, pi_floor=0.25)
    assert cs.value == pytest.approx((1 / 0.5 + 1 / 1.0) / 5)
    assert cs.n == 5 and cs.n_labels == 3
    # uniform sampling: the common probability is the scale, no pi_floor needed
    same = accuracy_cs(correct, np.where(np.isnan(correct), np.nan, 0.3))
    assert same.n_labels == 3 and 0.0 <= same.low <= same.high <= 1.0
    # a probability below pi_floor is allowed (e.g. a budget cut): still a valid, nonnegative observation
    below = accuracy_cs(correct, pi, pi_floor=0.5)
    assert 0.0 <= below.low <= below.high <= 1.0


def test_everything_labelled_reduces_to_bounded_cs():
    rng = np.random.default_rng(5)
    a = (rng.random(400) < 0.8).astype(float)
    b = (rng.random(400) < 0.85).astype(float)
    lo, hi = eb_confidence_sequence(a, ALPHA)
    cs = accuracy_cs(a, np.ones(400), ALPHA)
    np.testing.assert_allclose(cs.lows, lo)
    np.testing.assert_allclose(cs.highs, hi)
    lo_d, hi_d = eb_confidence_sequence(b - a, ALPHA, lo=-1.0, hi=1.0)
    pc = paired_cs(a, b, None, ALPHA)
    np.testing.assert_allclose(pc.lows, lo_d)
    np.testing.assert_allclose(pc.highs, hi_d)
    assert pc.value == pytest.approx(float((b - a).mean()))


def test_ipw_paired_cs_covers():
    rng = np.random.default_rng(6)
    runs, n = 500, 2000
    truth = 0.025  # E[P(champion wrong | u) * P(fixed | u)] = E[0.05 u]
    miss = 0
    for _ in range(runs):
        u, champ, pi, lab = _uncertainty_stream(rng, n)
        # the challenger keeps the champion's hits and fixes some of its errors, more where uncertain
        fix = rng.random(n) < 0.05 * u / (0.03 + 0.5 * u)
        chall = champ | (~champ & fix)
        ca = np.where(lab, champ.astype(float), np.nan)
        cb = np.where(lab, chall.astype(float), np.nan)
        cs = paired_cs(ca, cb, np.where(lab, pi, np.nan), ALPHA, pi_floor=0.05)
        miss += _missed(cs.lows, cs.highs, truth)
    assert miss / runs <= ALPHA + _margin(runs)
    assert -1.0 <= cs.low <= cs.high <= 1.0


def test_gap_cs_combines_clopper_pearson_and_production_cs():
    rng = np.random.default_rng(7)
    z = (rng.random(800) < 0.7).astype(float)
    gap = gap_cs(0.9, 1000, z, None, ALPHA)
    prod = accuracy_cs(z, None, ALPHA / 2)
    l1, h1 = proportion_confint(900, 1000, ALPHA / 2, method="beta")
    assert gap.low == pytest.approx(l1 - prod.high)
    assert gap.high == pytest.approx(h1 - prod.low)
    assert gap.value == pytest.approx(0.9 - z.mean())
    assert gap.method == "clopper-pearson+prpl-eb" and gap.n == 800


def test_gap_cs_covers():
    rng = np.random.default_rng(8)
    runs, n_off, p_off, p_prod = 400, 500, 0.92, 0.8
    miss = 0
    for _ in range(runs):
        k = rng.binomial(n_off, p_off)
        z = (rng.random(1500) < p_prod).astype(float)
        g = gap_cs(k / n_off, n_off, z, None, ALPHA)
        miss += _missed(g.lows, g.highs, p_off - p_prod)
    assert miss / runs <= ALPHA + _margin(runs)


def test_clopper_pearson_matches_statsmodels():
    for k, n in [(0, 10), (3, 10), (10, 10), (512, 1000)]:
        assert clopper_pearson(k, n, 0.1) == pytest.approx(proportion_confint(k, n, 0.1, method="beta"))


def test_place_labels():
    out = place_labels([4, 1], 6, [1, 0])
    np.testing.assert_array_equal(np.isnan(out), [True, False, True, True, False, True])
    assert out[4] == 1.0 and out[1] == 0.0
    with pytest.raises(ValueError, match="positions"):
        place_labels([6], 6, [1])
    with pytest.raises(ValueError, match="distinct"):
        place_labels([1, 1], 6, [1, 0])


# ---------------------------------------------------------------------------------------------
# decisions


@pytest.mark.parametrize(
    "low, high, action",
    [
        (0.02, 0.08, "promote"),
        (0.0101, 0.5, "promote"),
        (-0.005, 0.008, "equivalent"),  # also has high < delta: equivalent takes precedence
        (-0.01, 0.01, "equivalent"),
        (-0.2, -0.05, "retire"),  # clearly worse
        (-0.05, 0.005, "retire"),  # may be worse, cannot be delta better
        (-0.02, 0.05, "need_more_labels"),
        (0.005, 0.05, "need_more_labels"),
        (-0.011, 0.01, "need_more_labels"),  # high == delta is not < delta; low below -delta
    ],
)
def test_decision_rules(low, high, action):
    d = sequential_decision(low, high, 1000, delta=0.01)
    assert d.action == action
    assert ACTIONS[int(decision_codes(low, high, 0.01))] == action
    assert (d.more_labels is not None) == (action == "need_more_labels")


def test_need_more_labels_projection():
    d = sequential_decision(-0.02, 0.05, 500, delta=0.01)
    assert d.more_labels is not None and d.more_labels > 0
    # the same width reached only after more labels means noisier data: more needed; a narrower one needs fewer
    assert project_labels(-0.02, 0.05, 2000, 0.01) > d.more_labels
    assert project_labels(0.0, 0.05, 500, 0.01) < d.more_labels
    # shrinking the half-width as projected reaches a decision at n + more, not before
    n, more = 500, d.more_labels
    centre, half = 0.015, 0.035
    rate = lambda m: math.sqrt(math.log1p(m) / m)  # noqa: E731
    h_at = half * rate(n + more) / rate(n)
    assert decision_codes(centre - h_at, centre + h_at, 0.01) == ACTIONS.index("promote")
    h_before = half * rate(n + more - 2) / rate(n)
    assert decision_codes(centre - h_before, centre + h_before, 0.01) == ACTIONS.index("need_more_labels")
    assert project_labels(-0.02, 0.04, 500, 0.01) is None  # centred on delta: no decision in sight


def test_fp16_copy_is_judged_equivalent():
    """A same-model fp16 copy disagrees with the champion on ~0.3% of frames."""
    rng = np.random.default_rng(9)
    champ = (rng.random(3000) < 0.8).astype(float)
    chall = champ.copy()
    flip = rng.random(3000) < 0.003
    chall[flip] = 1.0 - chall[flip]
    cs = paired_cs(champ, chall, None, ALPHA)
    d = decide(cs, delta=0.01)
    assert d.action == "equivalent"
    assert d.n == 3000 and d.method == "prpl-eb-paired" and d.value == pytest.approx(cs.value)
    early = decide(paired_cs(champ[:300], chall[:300], None, ALPHA), delta=0.01)
    assert early.action == "need_more_labels" and early.more_labels > 0


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        accuracy_cs([1, 0, 1], None, alpha)
    with pytest.raises(ValueError, match="alpha"):
        eb_confidence_sequence([0.5, 0.2], alpha)


@pytest.mark.parametrize("bad", [0.0, 1.2, -0.1])
def test_bad_inclusion_prob(bad):
    with pytest.raises(ValueError, match="inclusion_prob"):
        accuracy_cs([1, 0, 1], [0.5, bad, 0.5], pi_floor=0.1)
    with pytest.raises(ValueError, match="inclusion_prob"):
        paired_cs([1, 0, 1], [1, 1, 1], [bad, 0.5, 0.5], pi_floor=0.1)


def test_bad_shapes_and_values():
    with pytest.raises(ValueError, match="differ in length"):
        paired_cs([1, 0, 1], [1, 0], None)
    with pytest.raises(ValueError, match="inclusion_prob must have shape"):
        accuracy_cs([1, 0, 1], [0.5, 0.5])
    with pytest.raises(ValueError, match="same frames"):
        paired_cs([1, np.nan, 1], [1, 0, 1], None)
    with pytest.raises(ValueError, match="correct must hold 0/1"):
        accuracy_cs([1, 2, 0], None)
    with pytest.raises(ValueError, match="NaN at labelled frame 1"):
        accuracy_cs([1, 0, np.nan], [0.5, np.nan, 0.5])
    with pytest.raises(ValueError, match="inclusion_prob is None"):
        accuracy_cs([1, np.nan, 0], None)
    with pytest.raises(ValueError, match="pi_floor is required"):
        accuracy_cs([1, 0, 1], [0.5, 0.2, 0.5])
    with pytest.raises(ValueError, match="pi_floor"):
        accuracy_cs([1, 0, 1], [0.5, 0.2, 0.5], pi_floor=0.0)
    with pytest.raises(ValueError, match=r"x must lie in \[lo=0.0, hi=1.0\]"):
        eb_confidence_sequence([0.5, 1.5])
    with pytest.raises(ValueError, match="x must be finite and >= 0"):
        eb_lower_cs([0.5, -0.1])
    with pytest.raises(ValueError, match="truncation"):
        eb_lower_cs([0.5], truncation=1.0)
    with pytest.raises(ValueError, match="offline_acc"):
        gap_cs(1.2, 100, [1, 0], None)
    with pytest.raises(ValueError, match="offline_n"):
        gap_cs(0.9, 0, [1, 0], None)
    with pytest.raises(ValueError, match="labels_spent"):
        sequential_decision(0.0, 0.1, -1)
    with pytest.raises(ValueError, match="delta"):
        sequential_decision(0.0, 0.1, 10, delta=-0.01)


def test_empty_stream():
    cs = accuracy_cs(np.array([]), None)
    assert isinstance(cs, ConfidenceSequence)
    assert (cs.n, cs.low, cs.high) == (0, 0.0, 1.0) and math.isnan(cs.value)
    assert cs.to_dict()["value"] is None
    assert sequential_decision(-1.0, 1.0, 0).action == "need_more_labels"


# ---------------------------------------------------------------------------------------------
# the simulation behind scripts/sim_sequential.py


def test_mcnemar_pvalues_match_statsmodels():
    n01 = np.array([0, 3, 10, 7, 40, 0])
    n10 = np.array([0, 9, 10, 1, 25, 5])
    expected = [1.0 if a + b == 0 else mcnemar([[0, a], [b, 0]], exact=True).pvalue for a, b in zip(n01, n10)]
    np.testing.assert_allclose(mcnemar_exact_pvalues(n01, n10), expected, rtol=1e-12)


def test_pair_model_cells():
    champ, chall = simulate_pairs(np.random.default_rng(10), 4, 50000, PairModel(0.8, 0.85, 0.6))
    assert champ.mean() == pytest.approx(0.8, abs=0.01) and chall.mean() == pytest.approx(0.85, abs=0.01)
    assert np.corrcoef(champ.ravel(), chall.ravel())[0, 1] == pytest.approx(0.6, abs=0.02)
    with pytest.raises(ValueError, match="rho"):
        PairModel(0.8, 0.2, 0.9).cells()


def test_simulation_cs_controls_false_promotion_and_mcnemar_does_not():
    runs = 200
    r = simulate(runs=runs, seed=11, power_max_labels=3000)
    assert r.cs_false_promotion <= ALPHA + _margin(runs)
    assert r.cs_zero_false_promotion <= ALPHA / 2 + _margin(runs, ALPHA / 2)  # one side of the CS, even without a margin
    assert r.mcnemar_false_promotion > ALPHA  # repeated looks inflate it (about 13% here)
    assert r.mcnemar_false_promotion > r.cs_false_promotion
    # the CS still finds a real +5 point gain within the horizon in most runs
    assert np.isfinite(r.cs_labels_to_promote).mean() > 0.8
    assert r.labels_quantile("cs", 0.5) <= 3000


# --------------------------------------------------------------------------------------------------
# a difference that is not 0/1 (the champion's cost minus the challenger's, scaled to [-1, 1])
# --------------------------------------------------------------------------------------------------
def test_difference_cs_equals_the_paired_cs_on_correctness_differences():
    from pipeline.evaluation.sequential import difference_cs, difference_cs_with_disagreement, paired_cs_with_disagreement

    rng = np.random.default_rng(11)
    T = 3000
    za = (rng.random(T) < 0.8).astype(float)
    zb = (rng.random(T) < 0.85).astype(float)
    # predictions that differ: where exactly one model is right, and on some frames where both are wrong (never where
    # both are right: a frame has one truth)
    dis = ((za != zb) | ((za + zb == 0) & (rng.random(T) < 0.3))).astype(float)
    pi = np.where(rng.random(T) < 0.5, 0.1, 0.4)
    lab = rng.random(T) < pi
    a, b = np.where(lab, za, np.nan), np.where(lab, zb, np.nan)
    p = np.where(lab, pi, np.nan)
    for old, new in ((paired_cs(a, b, p, pi_floor=0.1), difference_cs(b - a, p, pi_floor=0.1)),
                     (paired_cs(za, zb), difference_cs(zb - za)),
                     (paired_cs_with_disagreement(a, b, dis, p, pi_floor=0.1), difference_cs_with_disagreement(b - a, dis, p, pi_floor=0.1))):
        assert (new.low, new.high, new.value, new.n_labels) == pytest.approx((old.low, old.high, old.value, old.n_labels))


def test_difference_cs_covers_a_continuous_difference_at_all_times():
    """Costs: the per-frame difference takes many values in [-1, 1] and is 0 where the models agree; 300 streams of
    2,000 frames, every look: the running interval misses the true mean in at most ~alpha of the streams."""
    from pipeline.evaluation.sequential import difference_cs_with_disagreement

    rng = np.random.default_rng(12)
    misses, runs, T = 0, 300, 2000
    for _ in range(runs):
        dis = (rng.random(T) < 0.15).astype(float)
        d = dis * np.clip(rng.normal(0.1, 0.4, T), -1, 1)  # the challenger saves a little on average where they differ
        mu = 0.15 * float(np.mean(np.clip(rng.normal(0.1, 0.4, 200_000), -1, 1)))
        pi = np.where(rng.random(T) < 0.5, 0.2, 0.6)
        lab = rng.random(T) < pi
        cs = difference_cs_with_disagreement(np.where(lab, d, np.nan), dis, np.where(lab, pi, np.nan), 0.05, pi_floor=0.2)
        misses += bool(((cs.lows > mu) | (cs.highs < mu)).any())
    assert misses / runs <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)


def test_difference_cs_rejects_a_difference_where_the_models_agree():
    from pipeline.evaluation.sequential import difference_cs, difference_cs_with_disagreement

    with pytest.raises(ValueError, match="must be 0 where they agree"):
        difference_cs_with_disagreement(np.array([0.5, 0.0]), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match=r"must lie in \[-1, 1\]"):
        difference_cs(np.array([1.5]))
