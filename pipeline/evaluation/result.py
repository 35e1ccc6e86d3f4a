"""Typed evaluation results: every figure the evaluator computes, as frozen dataclasses.

The evaluator (:mod:`pipeline.evaluation.evaluator`) returns an :class:`EvaluationResult`; the report, the
alerts and the MLflow logging read its typed fields (``result.models["incumbent"].accuracy.value``).
:meth:`EvaluationResult.to_dict` / :meth:`~EvaluationResult.to_json` give the JSON document that
``shadowcam evaluate --json`` and ``evaluation.json`` hold (``{"data": ..., "meta": ...}``: its keys are a
contract with users' scripts, pinned by ``tests/pipeline/evaluation/result_key_paths.json``), and
:meth:`EvaluationResult.from_dict` reads it back (a report can be re-rendered from a saved file).

JSON conventions (the same for every type here):

* a ``float`` field may hold NaN (e.g. the accuracy of a class without labelled frames); it is written as
  ``null`` and read back as NaN. A ``float | None`` field is ``None`` when the figure does not exist;
* sequences are tuples here and lists in JSON;
* a drift test skipped for too few frames has fewer keys (``skipped`` names why): fields listed in a
  class's ``_OMIT_NONE`` are left out of the JSON when they are None.

This module depends on nothing in the project but :mod:`pipeline.types`; every other evaluation module
builds on it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Literal, Mapping, NamedTuple, Sequence, TypeVar

import numpy as np

from pipeline.types import Role

ROLES = (Role.INCUMBENT.value, Role.SHADOW.value)
# every decision action (pipeline.evaluation.sequential decides; "keep" is the fixed-sample rule of stats.recommend)
ACTIONS = ("promote", "equivalent", "retire", "need_more_labels", "keep")

F = TypeVar("F", bound="Figures")


# --------------------------------------------------------------------------------------------------
# JSON encoding / decoding shared by every type
# --------------------------------------------------------------------------------------------------
def _encode(x: Any) -> Any:
    """JSON-ready: figures -> dicts, tuples -> lists, numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(x, Figures):
        return x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    if isinstance(x, np.ndarray):
        return _encode(x.tolist())
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    raise TypeError(f"cannot write {type(x).__name__} value {x!r} to an evaluation result's JSON")


def _decode(tp: Any, v: Any, where: str) -> Any:
    """``v`` (decoded JSON) as type ``tp`` (a field's annotation)."""
    if tp is Any:
        return v
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        if v is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        return _decode(rest[0], v, where) if len(rest) == 1 else v
    if origin is Literal:
        return v
    if v is None:
        if tp is float:
            return math.nan  # NaN was written as null
        raise ValueError(f"{where}: expected {getattr(tp, '__name__', tp)}, got null")
    if origin is tuple:
        item = args[0]
        return tuple(_decode(item, x, f"{where}[{i}]") for i, x in enumerate(v))
    if origin is dict:
        return {k: _decode(args[1], x, f"{where}.{k}") for k, x in v.items()}
    if isinstance(tp, type) and issubclass(tp, Figures):
        return tp.from_dict(v, where)
    if tp is float:
        return float(v)
    if tp is int:
        return int(v)
    return v


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


class Figures:
    """Base of the result types: ``to_dict()`` (JSON-ready) and ``from_dict()`` (its inverse)."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset()  # fields left out of the JSON when None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is None and f.name in self._OMIT_NONE:
                continue
            out[f.name] = _encode(v)
        return out

    @classmethod
    def from_dict(cls: type[F], d: Mapping[str, Any], where: str | None = None) -> F:
        where = where or cls.__name__
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(d).__name__}")
        hints = _field_types(cls)
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in d:
                kw[f.name] = _decode(hints[f.name], d[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{where}: missing key {f.name!r}")
        return cls(**kw)


# --------------------------------------------------------------------------------------------------
# estimates and tests (pipeline.evaluation.stats returns these)
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Estimate(Figures):
    """A proportion (or difference of proportions) with its confidence interval.

    ``n``: labelled frames used; ``n_eff``: the sample size an equal-probability sample would need for
    the same precision (equals ``n`` for uniform samples); ``method`` names the estimator/interval.
    """

    value: float
    low: float
    high: float
    se: float
    n: int
    n_eff: float
    method: str

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass(frozen=True)
class PairedResult(Figures):
    """Frames labelled and predicted by both models.

    Counts use (incumbent correct, shadow correct): ``n11`` both right, ``n00`` both wrong,
    ``n01`` incumbent wrong and shadow right (shadow wins), ``n10`` incumbent right and shadow wrong.
    ``diff`` is shadow accuracy minus incumbent accuracy. ``p_mcnemar`` is McNemar's exact p on the
    raw counts; ``p_value`` is the one decisions use: ``p_mcnemar`` for equal weights, otherwise a
    Wald test of the weighted difference (raw counts are biased when the sampling probability depends
    on which model was right, e.g. uncertainty sampling on the incumbent's margin).
    """

    n: int
    n00: int
    n01: int
    n10: int
    n11: int
    p_mcnemar: float
    p_value: float
    diff: Estimate
    acc_incumbent: float
    acc_shadow: float
    discordant_rate: float  # (weighted) share of pairs where exactly one model is right
    weighted: bool
    method: str


@dataclass(frozen=True)
class Decision(Figures):
    """The champion/challenger decision, valid however often it is looked at.

    ``action``: ``promote`` (the challenger - champion difference's lower bound is above ``+delta``),
    ``equivalent`` (the interval lies within ``+-delta``: no difference worth the labels, retire the copy),
    ``retire`` (the upper bound is below ``+delta``: it cannot be worth its cost), ``need_more_labels`` (with
    ``more_labels``, a projection). ``low``/``high``: the anytime-valid interval on the difference (a confidence
    sequence, intersected with the disagreement bound) at this look; ``labels_spent``: labelled frames with
    both predictions. ``keep`` only appears in results written before the confidence sequences.
    """

    action: Literal["promote", "equivalent", "retire", "need_more_labels", "keep"]
    more_labels: int | None
    reason: str
    value: float | None = None
    low: float | None = None
    high: float | None = None
    delta: float | None = None
    labels_spent: int | None = None
    method: str | None = None
    # what the decision weighs (EvalConfig.decide_on): "accuracy" (value/low/high/delta: challenger - champion
    # accuracy) or "cost" (value/low/high/delta: champion - challenger cost per 1,000 frames, in `unit`; positive =
    # the challenger is cheaper)
    on: Literal["accuracy", "cost"] = "accuracy"
    unit: str | None = None


@dataclass(frozen=True)
class Agreement(Figures):
    """Two annotators on the same frames: share of identical labels (Wilson interval) and Cohen's kappa
    (None with fewer than 2 pairs or a single category in use)."""

    n: int
    agreement: float | None = None
    agreement_low: float = 0.0
    agreement_high: float = 1.0
    kappa: float | None = None
    kappa_low: float | None = None
    kappa_high: float | None = None


# --------------------------------------------------------------------------------------------------
# drift (pipeline.evaluation.drift returns these)
# --------------------------------------------------------------------------------------------------
class DriftP(NamedTuple):
    """One drift test's corrected p-value: ``test`` is ``softmax`` (``subject`` = role),
    ``class_distribution`` (incumbent's predictions, no subject), ``image`` (``subject`` = camera,
    ``stat`` = image statistic, Bonferroni-corrected over the camera's statistics) -- these three against the
    start of the run -- or ``training`` (against the model's training reference: ``subject`` = camera or role,
    ``stat`` = ``feature:direction`` or ``predicted_class``). ``p`` is None for a test skipped for too few frames.
    ``large``: the shift is large enough to act on (always True for the run-start tests; for ``training``, the
    share beyond the training range is at least ``min_effect`` above the expected one)."""

    test: Literal["softmax", "class_distribution", "image", "training"]
    subject: str | None
    stat: str | None
    p: float | None
    large: bool = True

    @property
    def name(self) -> str:
        """``softmax/incumbent``, ``class_distribution``, ``image/<camera>/<stat>`` or ``training/<scope>/<feature:direction>``."""
        return "/".join(x for x in (self.test, self.subject, self.stat) if x is not None)


@dataclass(frozen=True, kw_only=True)
class SoftmaxDrift(Figures):
    """Per-class KS tests of one model's softmax outputs, Bonferroni over classes (``drift.ks_softmax_drift``)."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"skipped", "p_values", "statistics", "classes", "n_ref_eff", "n_cur_eff", "alpha"})

    drift: bool
    p_min_corrected: float
    skipped: str | None = None  # why no test was run (then only drift, p_min_corrected, n_ref, n_cur, method)
    p_values: tuple[float, ...] | None = None  # per class, before the Bonferroni factor
    statistics: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    n_ref: int
    n_cur: int
    n_ref_eff: float | None = None  # smallest effective size over classes
    n_cur_eff: float | None = None
    alpha: float | None = None
    method: str

    @property
    def p(self) -> float | None:
        """The corrected p-value; None when the test was skipped."""
        return None if self.skipped else self.p_min_corrected


@dataclass(frozen=True, kw_only=True)
class ClassDistributionDrift(Figures):
    """Chi-square test of the predicted-class counts with a Rao-Scott design effect (``drift.class_distribution_drift``)."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset(
        {"tv_distance", "p_value", "chi2", "chi2_adjusted", "dof", "design_effect", "n_ref_eff", "n_cur_eff", "skipped"}
    )

    categories: tuple[str, ...]
    ref_counts: tuple[int, ...]
    cur_counts: tuple[int, ...]
    n_ref: int
    n_cur: int
    alpha: float
    method: str
    tv_distance: float | None = None
    drift: bool
    p_value: float | None = None
    p_min_corrected: float
    chi2: float | None = None
    chi2_adjusted: float | None = None
    dof: int | None = None
    design_effect: float | None = None
    n_ref_eff: float | None = None
    n_cur_eff: float | None = None
    skipped: str | None = None  # why no test was run

    @property
    def p(self) -> float | None:
        return None if self.skipped else self.p_min_corrected


@dataclass(frozen=True)
class ImageStat(Figures):
    """One image statistic of one camera: KS statistic and p-value at the effective sizes, standardized mean shift."""

    ks: float
    p_value: float
    smd: float
    mean_p_value: float
    ref_mean: float
    cur_mean: float
    n_ref_eff: float
    n_cur_eff: float


@dataclass(frozen=True, kw_only=True)
class ImageStatDrift(Figures):
    """Drift of one camera's image statistics, Bonferroni over statistics (``drift.image_stat_drift``)."""

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"skipped", "worst", "stats", "alpha"})

    drift: bool
    p_min_corrected: float
    skipped: str | None = None  # why no test was run
    worst: str | None = None  # the statistic with the smallest p-value
    stats: dict[str, ImageStat] | None = None
    n_ref: int
    n_cur: int
    alpha: float | None = None
    method: str

    @property
    def p(self) -> float | None:
        return None if self.skipped else self.p_min_corrected

    def corrected_p_values(self) -> dict[str, float]:
        """Per-statistic KS p-values, Bonferroni-corrected over the statistics; empty when skipped."""
        if self.skipped or not self.stats:
            return {}
        k = len(self.stats)
        return {name: min(1.0, s.p_value * k) for name, s in self.stats.items()}


@dataclass(frozen=True)
class TailShift(Figures):
    """Production frames beyond one end of the training range of one feature (see
    :mod:`pipeline.evaluation.reference`). ``share``: of the window's frames; ``expected``: under no drift."""

    feature: str  # brightness | contrast | sharpness | noise | confidence
    scope: str  # camera id (image statistics) or model role (confidence)
    direction: Literal["low", "high"]
    threshold: float  # the training reference's tail quantile
    share: float
    expected: float
    n: int
    n_eff: float
    p_value: float  # one-sided, uncorrected
    description: str

    @property
    def effect(self) -> float:
        return self.share - self.expected


@dataclass(frozen=True)
class ClassMixShift(Figures):
    """A model's predicted-class mix against its validation mix: total-variation distance and chi-square p."""

    scope: str  # model role
    tv_distance: float
    n: int
    n_eff: float
    p_value: float
    description: str


@dataclass(frozen=True)
class TrainingDrift(Figures):
    """One window against the models' training reference profiles ("train-to-production drift").

    ``drifted``: some test is significant (corrected p < ``alpha``) *and* large (>= ``min_effect``);
    ``findings``: those tests' plain-words descriptions, largest first. ``n_tests`` is the Bonferroni count;
    each corrected p is ``min(1, 2 * n_tests * p)`` (half of alpha goes to the reference quantiles' own
    uncertainty).
    """

    tails: tuple[TailShift, ...]
    class_mix: tuple[ClassMixShift, ...]
    alpha: float
    min_effect: float
    n_tests: int
    reference: str
    drifted: bool
    findings: tuple[str, ...]
    p_min_corrected: float | None
    largest_share_outside: float | None
    method: str = ("share of frames beyond the training reference's 1%/99% quantiles (one-sided binomial on effective "
                   "counts) and predicted-class mix (chi-square), Bonferroni; drifted = significant and large")

    def corrected(self, p: float) -> float:
        return min(1.0, p * 2 * max(1, self.n_tests))

    def p_values(self) -> Iterator[DriftP]:
        for t in self.tails:
            yield DriftP("training", t.scope, f"{t.feature}:{t.direction}", self.corrected(t.p_value), t.effect >= self.min_effect)
        for c in self.class_mix:
            yield DriftP("training", c.scope, "predicted_class", self.corrected(c.p_value), c.tv_distance >= self.min_effect)


@dataclass(frozen=True)
class DriftFigures(Figures):
    """Every drift test of a window against the reference period.

    ``softmax``: per role; ``class_distribution``: the incumbent's predicted classes; ``image``: per camera.
    :meth:`p_values` is the one place that lists the tests with their corrected p-values.
    """

    _OMIT_NONE: ClassVar[frozenset[str]] = frozenset({"skipped"})

    softmax: dict[str, SoftmaxDrift]
    class_distribution: ClassDistributionDrift | None
    image: dict[str, ImageStatDrift]
    reference_frames: int
    current_frames: int
    skipped: str | None = None  # no frame of the window lies after the reference period
    baseline: str = "run_start"  # what the window is compared with: "training" (the model cards' reference) or "run_start"
    training: TrainingDrift | None = None  # drift against training (baseline "training")

    def p_values(self, include_skipped: bool = False) -> Iterator[DriftP]:
        """Every test's corrected p-value: softmax per role, the class distribution, then each camera's image
        statistics. ``include_skipped``: also yield softmax and class-distribution tests skipped for too few
        frames (with ``p=None``); a skipped camera has no per-statistic entries either way."""
        for role, s in self.softmax.items():
            if s.p is not None or include_skipped:
                yield DriftP("softmax", role, None, s.p)
        cd = self.class_distribution
        if cd is not None and (cd.p is not None or include_skipped):
            yield DriftP("class_distribution", None, None, cd.p)
        for cam, im in self.image.items():
            for stat, p in im.corrected_p_values().items():
                yield DriftP("image", cam, stat, p)
        if self.training is not None:
            yield from self.training.p_values()

    def skipped_tests(self) -> list[str]:
        """``softmax/<role>``, ``class_distribution``, ``image/<camera>`` of the tests skipped for too few frames."""
        tests: list[tuple[str, Any]] = [(f"softmax/{r}", v) for r, v in self.softmax.items()]
        tests.append(("class_distribution", self.class_distribution))
        tests += [(f"image/{c}", v) for c, v in self.image.items()]
        return [name for name, t in tests if t is not None and t.skipped]


# --------------------------------------------------------------------------------------------------
# per-model figures
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Confusion(Figures):
    """Confusion matrix in class order (rows: human label, columns: prediction); ``weighted_matrix`` holds
    inverse-probability-weighted frame counts when the sample's inclusion probabilities differ."""

    classes: tuple[str, ...]
    matrix: tuple[tuple[int, ...], ...]
    weighted_matrix: tuple[tuple[float, ...], ...] | None = None
    rows: str = "human label"
    columns: str = "prediction"
    predictions_outside_classes: int = 0  # non-degraded predictions naming no class (counted wrong, shown apart)


@dataclass(frozen=True)
class Offline(Figures):
    """The model card's offline test figures."""

    test_accuracy: float | None
    test_size: int | None
    per_class_accuracy: dict[str, float] | None


@dataclass(frozen=True)
class LabelFreeEstimate(Figures):
    """Accuracy estimated without labels on every usable prediction (ATC, or the mean confidence).

    It never stands alone as a valid figure when it should not: ``contradicted_by_labels`` is True when the
    window's labelled interval (``labelled_low``..``labelled_high``) does not contain it (None without labels);
    ``unreliable`` names why it cannot be trusted even without labels (inputs outside the training range).
    ``valid`` is False in either case: reports and plots draw such an estimate as contradicted/unreliable.
    """

    value: float
    method: str
    n: int
    contradicted_by_labels: bool | None = None
    labelled_low: float | None = None
    labelled_high: float | None = None
    unreliable: str | None = None

    @property
    def valid(self) -> bool:
        return not self.contradicted_by_labels and self.unreliable is None


@dataclass(frozen=True)
class CalibrationBin(Figures):
    low: float
    high: float
    n: int
    confidence: float | None  # weighted mean confidence; None for an empty bin
    accuracy: float | None


@dataclass(frozen=True)
class Calibration(Figures):
    """Reliability diagram data and the expected calibration error (inverse-probability weighted)."""

    bins: tuple[CalibrationBin, ...]
    ece: float | None
    n: int


@dataclass(frozen=True)
class ProxyInfo(Figures):
    """The cross-fitted proxy of "this prediction is correct" behind a model-assisted estimate
    (:func:`pipeline.evaluation.ppi.crossfit_proxy`): how it was made and how well it ranks the labelled frames."""

    method: str
    features: tuple[str, ...]
    folds: int
    labels: int
    auc: float  # NaN when the labelled frames hold one outcome only
    brier: float
    lam: tuple[float, ...] = ()  # the power-tuned coefficients of the controls (constant, proxy) for the accuracy


@dataclass(frozen=True)
class CostDriver(Figures):
    """One confusion's part in a model's cost: ``true`` labelled frames predicted ``predicted``, their (weighted)
    ``frames`` among the labelled ones, what they add per 1,000 frames and their ``share`` of the error cost."""

    true: str
    predicted: str
    frames: int
    per_1k: float
    share: float


@dataclass(frozen=True)
class CostFigures(Figures):
    """Expected cost per 1,000 frames (:mod:`pipeline.evaluation.costs`) in ``currency``, with its interval.

    ``per_1k`` follows the accuracy's estimator (``method``: model-assisted with the model's own expected cost as the
    proxy, or the classical Hajek/plain mean; Agresti-Coull-style interval either way); ``per_1k_classical`` is the
    classical one when ``per_1k`` is model-assisted. ``drivers``: the confusions that make up most of the error
    cost, largest first (classical, inverse-probability weighted shares).
    """

    per_1k: Estimate
    currency: str
    method: str
    n_eff: float
    drivers: tuple[CostDriver, ...] = ()
    per_1k_classical: Estimate | None = None


@dataclass(frozen=True)
class BaselineComparison(Figures):
    """A model against the baselines on the same labelled frames (:mod:`pipeline.evaluation.baselines`).

    ``diff``: model minus ``baseline`` in accuracy (``on="accuracy"``), or baseline minus model in cost per 1,000
    frames (``on="cost"``): positive = the model is better either way. ``low``: its one-sided lower confidence bound
    at ``alpha``. ``significantly_better``: ``low > 0`` against *every* baseline (an intersection-union test, each at
    ``alpha``); ``baseline`` is the one the model beats by least (smallest ``low``), whose figures these are.
    The baseline alert fires exactly when ``significantly_better`` is False.
    """

    baseline: str
    on: Literal["accuracy", "cost"]
    diff: Estimate
    low: float
    alpha: float
    significantly_better: bool
    n: int
    method: str


@dataclass(frozen=True)
class BaselineFigures(Figures):
    """A baseline scored like the models: ``name`` (``majority`` or ``rule``), what it predicts (``description``),
    its accuracy and cost (when costs are configured) on ``n_labeled`` labelled frames."""

    name: str
    description: str
    accuracy: Estimate | None
    cost: CostFigures | None
    n_labeled: int


@dataclass(frozen=True)
class ModelFigures(Figures):
    """One role's figures. ``accuracy`` is None without labelled, non-degraded predictions; ``gap`` without a
    model card (or card figures); ``estimated_accuracy`` without usable predictions."""

    model: str | None
    n_labeled: int
    n_correct: int
    accuracy: Estimate | None
    per_class_recall: dict[str, Estimate]
    per_camera: dict[str, Estimate]
    confusion: Confusion
    offline: Offline | None
    gap: Estimate | None
    estimated_accuracy: LabelFreeEstimate | None
    calibration: Calibration | None
    # anytime-valid intervals (confidence sequences): valid however often the figure is looked at
    accuracy_cs: Estimate | None = None
    gap_cs: Estimate | None = None
    # ``accuracy`` is model-assisted when the evaluator could (EvalConfig.estimator): then this is the classical
    # (Wilson / inverse-probability weighted) estimate of the same labels, for comparison; None when ``accuracy`` is it
    accuracy_classical: Estimate | None = None
    proxy: ProxyInfo | None = None
    cost: CostFigures | None = None  # with EvalConfig.costs
    vs_baseline: BaselineComparison | None = None  # the baseline guard (None: no baseline could be scored)


# --------------------------------------------------------------------------------------------------
# counts, alerts, meta
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Excluded(Figures):
    """Labelled frames without a truth (see :mod:`pipeline.evaluation.truth`)."""

    unsure: int
    tie: int
    unknown_class: int
    total: int


@dataclass(frozen=True)
class Counts(Figures):
    frames: int
    cameras: int
    predictions: dict[str, int]  # per role
    degraded: dict[str, int]  # per role: degraded predictions (excluded from accuracy)
    shadow_coverage: float | None  # share of incumbent-served frames the shadow also predicted
    samples: int
    labels: int
    labeled_frames: int
    frames_with_truth: int
    double_labeled_frames: int
    excluded: Excluded
    labels_without_sample: int  # labelled frames without a sample row: inclusion probability 1 assumed
    reference_frames: int


@dataclass(frozen=True)
class Alert(Figures):
    """An alert raised on a result (:func:`pipeline.evaluation.alerts.check_alerts`)."""

    kind: str  # "gap" | "drift" | "baseline"
    subject: str  # role ("incumbent"), "incumbent softmax", "class_distribution", "<camera>/<stat>"
    value: float  # the gap's CI lower bound, or the p-value
    threshold: float
    message: str


@dataclass(frozen=True)
class CardInfo(Figures):
    """The model card a role's offline figures came from."""

    path: str | None
    name: str
    version: str
    test_accuracy: float | None
    test_size: int
    temperature: float
    atc_threshold: float | None
    atc_score: str


@dataclass(frozen=True)
class Window(Figures):
    """The frames a result covers: ``start <= ts < end``; ``index`` is the window number (the MLflow step)."""

    index: int
    start: float | None
    end: float | None
    length_s: float | None  # None: the whole scope
    start_iso: str | None
    end_iso: str | None
    cumulative: bool
    first_frame: float | None
    last_frame: float | None


@dataclass(frozen=True)
class ReferencePeriod(Figures):
    """The drift reference period; ``spec`` is the configured ``EvalConfig.reference`` as JSON."""

    start: float | None
    end: float | None
    start_iso: str | None
    end_iso: str | None
    spec: Any


@dataclass(frozen=True)
class Meta(Figures):
    """What produced a result: models, cards, window, reference, classes, runs, methods, notes, config."""

    models: dict[str, str | None]  # role -> "name:version" (the most frequent in scope)
    cards: dict[str, CardInfo | None]
    window: Window
    reference: ReferencePeriod
    classes: tuple[str, ...]
    runs: tuple[str, ...]
    alpha: float
    confidence_level: float
    sampling_strategies: dict[str, int]
    methods: dict[str, Any]  # figure -> method text (or role -> text)
    notes: tuple[str, ...]
    evaluated_at: float
    config: dict[str, Any]  # the EvalConfig, as JSON


# --------------------------------------------------------------------------------------------------
# the result
# --------------------------------------------------------------------------------------------------
_DATA_FIELDS = ("counts", "models", "paired", "decision", "drift", "agreement", "alerts", "baselines", "serving_cost")


@dataclass(frozen=True)
class EvaluationResult(Figures):
    """Every figure of one evaluation (a whole scope or one window) and the ``meta`` saying what produced them.

    ``models[role]`` is None for a role without predictions in scope; ``paired``/``decision`` are None
    without shadow predictions (``decision`` alone when no labelled frame has both predictions yet).
    ``alerts`` are set by the caller after :func:`~pipeline.evaluation.alerts.dispatch` (:meth:`with_alerts`).
    ``baselines``: the majority-class and rule baselines on the same labels (:mod:`pipeline.evaluation.baselines`);
    ``serving_cost``: :meth:`pipeline.serving_cost.ServingCost.to_dict` over the evaluated runs (None when no price
    is configured or recorded).
    """

    counts: Counts
    models: dict[str, ModelFigures | None]
    paired: PairedResult | None
    decision: Decision | None
    drift: DriftFigures
    agreement: Agreement | None
    meta: Meta
    alerts: tuple[Alert, ...] = ()
    baselines: tuple[BaselineFigures, ...] = ()
    serving_cost: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"data": {counts, models, paired, decision, drift, agreement, alerts, baselines, serving_cost}, "meta": {...}}``, JSON-ready."""
        return {"data": {k: _encode(getattr(self, k)) for k in _DATA_FIELDS}, "meta": self.meta.to_dict()}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str | None = None) -> "EvaluationResult":
        """Read back :meth:`to_dict` (e.g. ``evaluation.json``'s ``overall`` or one of its ``windows``)."""
        where = where or "evaluation result"
        if not isinstance(d, Mapping) or not isinstance(d.get("data"), Mapping) or not isinstance(d.get("meta"), Mapping):
            raise ValueError(f"{where}: expected an object with 'data' and 'meta' objects (EvaluationResult.to_dict())")
        return super().from_dict({**d["data"], "meta": d["meta"]}, where)

    @classmethod
    def from_json(cls, text: str) -> "EvaluationResult":
        return cls.from_dict(json.loads(text))

    def with_alerts(self, alerts: Sequence[Alert]) -> "EvaluationResult":
        """A copy holding ``alerts``."""
        return dataclasses.replace(self, alerts=tuple(alerts))

    def model(self, role: str) -> ModelFigures | None:
        """``models[role]``, None for a role without figures."""
        return self.models.get(role)

    @property
    def roles(self) -> list[str]:
        """The roles that have figures, incumbent first."""
        return [r for r in ROLES if self.models.get(r) is not None]

    def baseline(self, name: str) -> BaselineFigures | None:
        """The baseline called ``name`` (``majority``, ``rule``), None when it was not scored."""
        return next((b for b in self.baselines if b.name == name), None)
