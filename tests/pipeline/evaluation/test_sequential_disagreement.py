"""The paired confidence sequence that uses every frame's disagreement: time-uniform coverage by simulation,
with uncertainty-like inclusion probabilities, and the collapse to +-(disagreement) for two copies of a model."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.evaluation.sequential import disagreement_bound, paired_cs, paired_cs_with_disagreement


def simulate(rng: np.random.Generator, n: int, p_dis: float, p_plus: float, p_minus: float, pi_floor: float = 0.06):
    """Frames i.i.d.: the models disagree w.p. p_dis; on a disagreement the challenger alone is right w.p. p_plus,
    the champion alone w.p. p_minus (else both wrong); on agreement both right w.p. 0.8. Labels are drawn with
    probabilities that are higher on disagreements (like uncertainty sampling). True difference: p_dis * (p_plus - p_minus)."""
    dis = rng.random(n) < p_dis
    u = rng.random(n)
    chall = np.where(dis, u < p_plus, rng.random(n) < 0.8)
    champ = np.where(dis, (u >= p_plus) & (u < p_plus + p_minus), chall)
    pi = np.where(dis, 0.5, 0.1) * rng.uniform(0.6, 1.4, n)
    pi = np.clip(pi, pi_floor, 1.0)
    lab = rng.random(n) < pi
    zc = np.where(lab, champ.astype(float), np.nan)
    zs = np.where(lab, chall.astype(float), np.nan)
    return zc, zs, dis.astype(float), np.where(lab, pi, np.nan), p_dis * (p_plus - p_minus)


@pytest.mark.parametrize("p_dis, p_plus, p_minus", [(0.3, 0.6, 0.2), (0.05, 0.3, 0.3), (0.5, 0.2, 0.5)])
def test_time_uniform_coverage(p_dis, p_plus, p_minus):
    rng = np.random.default_rng(11)
    runs, misses = 300, 0
    for _ in range(runs):
        zc, zs, dis, pi, truth = simulate(rng, 1500, p_dis, p_plus, p_minus)
        cs = paired_cs_with_disagreement(zc, zs, dis, pi, alpha=0.1, pi_floor=0.06)
        misses += bool(((cs.lows > truth) | (cs.highs < truth)).any())
    assert misses / runs <= 0.1 + 0.035, f"time-uniform miss rate {misses / runs:.3f} > alpha 0.1"


def test_intersection_with_the_paired_cs_keeps_coverage():
    """The evaluator intersects this CS and paired_cs, each at alpha/2: still covers at all times w.p. >= 1 - alpha."""
    rng = np.random.default_rng(12)
    runs, misses = 300, 0
    for _ in range(runs):
        zc, zs, dis, pi, truth = simulate(rng, 1500, 0.3, 0.5, 0.3)
        a = paired_cs(zc, zs, pi, 0.05, pi_floor=0.06)
        b = paired_cs_with_disagreement(zc, zs, dis, pi, 0.05, pi_floor=0.06)
        lo, hi = np.maximum(a.lows, b.lows), np.minimum(a.highs, b.highs)
        misses += bool(((lo > truth) | (hi < truth)).any())
    assert misses / runs <= 0.1 + 0.035


def test_two_copies_of_a_model_collapse_to_the_disagreement_bound():
    rng = np.random.default_rng(13)
    zc, zs, dis, pi, _ = simulate(rng, 3000, 0.002, 0.5, 0.5)
    cs = paired_cs_with_disagreement(zc, zs, dis, pi, 0.05, pi_floor=0.06)
    plain = paired_cs(zc, zs, pi, 0.05, pi_floor=0.06)
    assert cs.high - cs.low < 0.02 < plain.high - plain.low
    bound = disagreement_bound(dis, 0.05)
    assert bound.low == -bound.high and 0 < bound.high < 0.01


def test_inputs_that_contradict_each_other_are_refused():
    with pytest.raises(ValueError, match="agree .* but only one is correct"):
        paired_cs_with_disagreement([1.0, 0.0], [0.0, 0.0], [0.0, 0.0], None)
    with pytest.raises(ValueError, match="disagree must be 0/1"):
        paired_cs_with_disagreement([1.0], [1.0], [2.0], None)
