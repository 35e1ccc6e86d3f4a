"""Simulation: what looking at the champion/challenger comparison after every window costs.

Two models label-by-label on the same frames (every frame labelled: label time), with correlated
correctness. After every ``look_every`` paired labels a team looks and promotes the challenger when

* the anytime-valid CS of :mod:`pipeline.evaluation.sequential` says ``promote`` (``low > delta``; also
  reported with margin 0, McNemar's), or
* a fixed-sample exact McNemar test at ``alpha`` is significant with the challenger ahead (the
  evaluator's current rule, applied at every look).

:func:`simulate` reports how often each *ever* promotes a challenger that is exactly as good as the
champion, and how many labels each needs to promote a challenger that really is better. Everything is
vectorised over runs (processed in chunks to bound memory). ``scripts/sim_sequential.py`` prints it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as _st

from pipeline.evaluation.sequential import ACTIONS, decision_codes, eb_confidence_sequence

_PROMOTE = ACTIONS.index("promote")


@dataclass(frozen=True)
class PairModel:
    """Joint correctness of champion and challenger on a frame: marginal accuracies ``p_champ`` and
    ``p_chall``, and ``rho`` the correlation of the two 0/1 correctness indicators (two models of one
    family, trained on similar data, err on largely the same frames)."""

    p_champ: float
    p_chall: float
    rho: float

    def cells(self) -> tuple[float, float, float, float]:
        """``(p11, p10, p01, p00)`` with (champion right, challenger right) as the two digits."""
        a, b = self.p_champ, self.p_chall
        p11 = a * b + self.rho * math.sqrt(a * (1 - a) * b * (1 - b))
        cells = (p11, a - p11, b - p11, 1.0 - a - b + p11)
        if min(cells) < -1e-12:
            raise ValueError(f"rho={self.rho} is impossible with accuracies {a} and {b}: cell probabilities {cells}")
        return tuple(max(c, 0.0) for c in cells)  # type: ignore[return-value]


def simulate_pairs(rng: np.random.Generator, runs: int, n: int, model: PairModel) -> tuple[np.ndarray, np.ndarray]:
    """``(champ_correct, chall_correct)``, boolean arrays of shape (runs, n), i.i.d. pairs from ``model``."""
    p11, p10, p01, _ = model.cells()
    u = rng.random((runs, n))
    champ = u < p11 + p10
    chall = (u < p11) | ((u >= p11 + p10) & (u < p11 + p10 + p01))
    return champ, chall


def mcnemar_exact_pvalues(n01: np.ndarray, n10: np.ndarray) -> np.ndarray:
    """Two-sided exact McNemar p-values, elementwise: ``min(1, 2 * Binom(n01 + n10, 1/2).cdf(min(n01, n10)))``,
    which is what ``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)`` computes (vectorised
    here for speed); 1 when there is no discordant pair."""
    n01, n10 = np.asarray(n01), np.asarray(n10)
    total = n01 + n10
    p = np.minimum(2.0 * _st.binom.cdf(np.minimum(n01, n10), total, 0.5), 1.0)
    return np.where(total == 0, 1.0, p)


def first_promotions(
    champ: np.ndarray,
    chall: np.ndarray,
    look_every: int,
    alpha: float = 0.05,
    delta: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels at the first look where each rule promotes, per run (``inf`` if it never does).

    Returns ``(cs, cs_zero, mcnemar)``: the CS rule (:func:`pipeline.evaluation.sequential.decision_codes`
    on ``eb_confidence_sequence(chall - champ, alpha, -1, 1)``, which equals ``paired_cs`` with every frame
    labelled) with margin ``delta`` and with margin 0, and repeated McNemar (``p < alpha`` with more
    challenger-only wins than champion-only ones).
    """
    n = champ.shape[1]
    looks = np.arange(look_every, n + 1, look_every)
    d = chall.astype(np.float64) - champ.astype(np.float64)
    low, high = eb_confidence_sequence(d, alpha, lo=-1.0, hi=1.0)
    low, high = low[:, looks - 1], high[:, looks - 1]
    n01 = np.cumsum(~champ & chall, axis=1)[:, looks - 1]
    n10 = np.cumsum(champ & ~chall, axis=1)[:, looks - 1]

    def first(promote: np.ndarray) -> np.ndarray:
        hit = promote.any(axis=1)
        return np.where(hit, looks[np.argmax(promote, axis=1)].astype(np.float64), np.inf)

    return (
        first(decision_codes(low, high, delta) == _PROMOTE),
        first(decision_codes(low, high, 0.0) == _PROMOTE),
        first((mcnemar_exact_pvalues(n01, n10) < alpha) & (n01 > n10)),
    )


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` measured. Rates are shares of runs; label counts are per run (``inf``: the
    rule had not promoted by the horizon)."""

    runs: int
    seed: int
    look_every: int
    max_labels: int
    power_max_labels: int
    alpha: float
    delta: float
    null: PairModel
    better: PairModel
    cs_false_promotion: float
    cs_zero_false_promotion: float  # the CS rule with margin 0, like McNemar's
    mcnemar_false_promotion: float
    cs_labels_to_promote: np.ndarray = field(repr=False, compare=False)
    cs_zero_labels_to_promote: np.ndarray = field(repr=False, compare=False)
    mcnemar_labels_to_promote: np.ndarray = field(repr=False, compare=False)

    @staticmethod
    def _quantile(x: np.ndarray, q: float) -> float:
        return float(np.quantile(x, q, method="inverted_cdf"))  # no interpolation: inf stays "not yet"

    def labels_quantile(self, rule: str, q: float) -> float:
        """Quantile ``q`` of the labels to promote under ``rule``: ``cs``, ``cs_zero`` or ``mcnemar``."""
        x = {"cs": self.cs_labels_to_promote, "cs_zero": self.cs_zero_labels_to_promote, "mcnemar": self.mcnemar_labels_to_promote}[rule]
        return self._quantile(x, q)


def _chunks(runs: int, chunk: int) -> list[int]:
    return [min(chunk, runs - i) for i in range(0, runs, chunk)]


def simulate(
    runs: int = 1000,
    seed: int = 0,
    max_labels: int = 2000,
    look_every: int = 25,
    accuracy: float = 0.8,
    rho: float = 0.6,
    effect: float = 0.05,
    power_max_labels: int = 10000,
    alpha: float = 0.05,
    delta: float = 0.01,
    chunk: int = 200,
) -> SimulationResult:
    """Run both scenarios.

    * Equal models (both right w.p. ``accuracy``, correlation ``rho``), looks every ``look_every`` paired
      labels up to ``max_labels``: the share of runs where each rule ever promotes.
    * A challenger better by ``effect`` (same ``rho``), up to ``power_max_labels``: labels at the first
      promotion, per run.
    """
    for name, v in (("runs", runs), ("max_labels", max_labels), ("look_every", look_every), ("power_max_labels", power_max_labels), ("chunk", chunk)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v!r}")
    if look_every > min(max_labels, power_max_labels):
        raise ValueError(f"look_every={look_every} exceeds the horizon (max_labels={max_labels}, power_max_labels={power_max_labels})")
    rng = np.random.default_rng(seed)
    null = PairModel(accuracy, accuracy, rho)
    better = PairModel(accuracy, accuracy + effect, rho)
    null_first: list[tuple[np.ndarray, ...]] = []
    for m in _chunks(runs, chunk):
        null_first.append(first_promotions(*simulate_pairs(rng, m, max_labels, null), look_every, alpha, delta))
    power_first: list[tuple[np.ndarray, ...]] = []
    for m in _chunks(runs, chunk):
        power_first.append(first_promotions(*simulate_pairs(rng, m, power_max_labels, better), look_every, alpha, delta))
    ever = [float(np.isfinite(np.concatenate(col)).mean()) for col in zip(*null_first)]
    labels = [np.concatenate(col) for col in zip(*power_first)]
    return SimulationResult(
        runs=runs,
        seed=seed,
        look_every=look_every,
        max_labels=max_labels,
        power_max_labels=power_max_labels,
        alpha=alpha,
        delta=delta,
        null=null,
        better=better,
        cs_false_promotion=ever[0],
        cs_zero_false_promotion=ever[1],
        mcnemar_false_promotion=ever[2],
        cs_labels_to_promote=labels[0],
        cs_zero_labels_to_promote=labels[1],
        mcnemar_labels_to_promote=labels[2],
    )


def _labels(x: float, horizon: int) -> str:
    return f"> {horizon:,}" if not math.isfinite(x) else f"{int(x):,}"


def format_table(r: SimulationResult) -> str:
    """The result as a small markdown table (plus one line saying what was simulated)."""
    p11, p10, p01, _ = r.null.cells()
    looks = r.max_labels // r.look_every
    gain = f"+{100 * (r.better.p_chall - r.better.p_champ):.0f} pts"
    rules = ("cs", "cs_zero", "mcnemar")
    pcts = {"cs": r.cs_false_promotion, "cs_zero": r.cs_zero_false_promotion, "mcnemar": r.mcnemar_false_promotion}
    power = {"cs": r.cs_labels_to_promote, "cs_zero": r.cs_zero_labels_to_promote, "mcnemar": r.mcnemar_labels_to_promote}
    rows = [
        [f"equal models: ever promoted ({looks} looks, every {r.look_every} up to {r.max_labels:,} labels)"]
        + [f"{pcts[k]:.1%}" for k in rules],
        [f"{gain} challenger: median labels to promote"] + [_labels(r.labels_quantile(k, 0.5), r.power_max_labels) for k in rules],
        [f"{gain} challenger: 90th percentile"] + [_labels(r.labels_quantile(k, 0.9), r.power_max_labels) for k in rules],
        [f"{gain} challenger: promoted within {r.power_max_labels:,} labels"] + [f"{np.isfinite(power[k]).mean():.1%}" for k in rules],
    ]
    head = (
        f"{r.runs:,} runs, seed {r.seed}; accuracy {r.null.p_champ:.2f} vs {r.null.p_chall:.2f}, correctness "
        f"correlation {r.null.rho:.2f} (discordant pairs {p10 + p01:.1%}); two-sided CS at alpha {r.alpha}"
    )
    lines = [
        head,
        "",
        f"| | CS (PrPl-EB), low > {r.delta} | CS (PrPl-EB), low > 0 | repeated McNemar exact, p < {r.alpha} |",
        "|---|---:|---:|---:|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
