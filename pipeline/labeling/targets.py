"""Label targets: label until an interval is narrow enough, or until the champion/challenger decision is made.

A :class:`~pipeline.config.LabelTarget` says how much certainty the labels should buy, per camera or per model:
``"±2 points at 95%"`` on the incumbent's production accuracy (``kind="half_width"``), or "until the
challenger/champion decision is reached" (``kind="decision"``). This module turns one evaluation of the store
into one :class:`TargetStatus` per camera (or one for the model) and the sampler's rate factors:

* :func:`target_status` evaluates the store once (:class:`~pipeline.evaluation.evaluator.Evaluator` at
  ``alpha = 1 - level``) and reads the figures: no statistics are computed here.
  ``half_width``: the current half-width is half the incumbent's accuracy interval (``accuracy`` for the model,
  ``per_camera[cam]`` per camera); ``labels_to_go`` projects the labels still needed with the interval shrinking
  as ``1/sqrt(n)`` under the same sampling design (``ceil(n * (current / target)^2) - n``).
  ``decision``: met once the evaluator's anytime-valid ``decision.action`` is no longer ``need_more_labels``;
  ``labels_to_go`` is its ``more_labels`` projection. ``drifted``: drift against the training reference
  (``result.drift.training.drifted``); per camera, when the drift concerns that camera's images or the model's outputs.
* :func:`rate_factors`: met -> ``met_factor`` (fewer labels), drifted -> ``drift_factor`` (drift wins: under drift
  we want labels), else 1.
* :class:`TargetController` applies them to a :class:`~pipeline.sampling.LabelSampler` (``check``);
  :func:`neyman_feedback` counts the labels per ``neyman`` stratum for ``LabelSampler.update_feedback``.
* :func:`parse_target`: the CLI's short form (``"2pts@95"``, ``"±2@95%"``, ``"decision"``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.config import EvalConfig, LabelTarget
from pipeline.evaluation.result import ROLES, Estimate, EvaluationResult, TrainingDrift
from pipeline.evaluation.truth import majority_truth
from pipeline.sampling import neyman_stratum
from pipeline.store import PredictionStore
from pipeline.types import ConfigError, Role

log = logging.getLogger(__name__)

__all__ = ["TargetController", "TargetStatus", "neyman_feedback", "parse_target", "rate_factors", "statuses_from_result",
           "target_runs", "target_status"]

NEED_MORE = "need_more_labels"
Stratum = tuple[str, int, int]  # pipeline.sampling.neyman_stratum: (camera, confidence bin, agreement)


@dataclass(frozen=True)
class TargetStatus:
    """How far one camera (``scope="camera"``, ``key`` = camera id) or the model (``scope="model"``, ``key`` = the
    incumbent's ``name:version``) is from its label target.

    ``target_half_width``: None for ``kind="decision"``; ``current_half_width``: half the accuracy interval (for a
    decision: half the challenger - champion interval), None without labels; ``labels``: labelled frames the
    figure rests on; ``labels_to_go``: a projection (0 when met, None when it cannot be projected);
    ``decision_action``: the evaluator's decision (kind ``decision`` only); ``message``: one line for people.
    """

    scope: Literal["camera", "model"]
    key: str
    kind: Literal["half_width", "decision"]
    level: float
    target_half_width: float | None
    current_half_width: float | None
    labels: int
    met: bool
    labels_to_go: int | None
    drifted: bool
    decision_action: str | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------
# statuses
# --------------------------------------------------------------------------------------------------
def target_status(store: PredictionStore, target: LabelTarget, eval_config: EvalConfig | None = None,
                  run_ids: Sequence[str] | None = None) -> list[TargetStatus]:
    """Evaluate ``store`` once (``run_ids``, else ``eval_config.run_ids``, else the evaluator's default scope) at
    the target's level and return one status per camera with frames in scope (``scope="camera"``) or one for the
    incumbent model (``scope="model"``)."""
    # the evaluator pulls in MLflow helpers: imported only when used
    from pipeline.evaluation.evaluator import Evaluator

    update: dict[str, Any] = {"alpha": 1.0 - target.level}
    if run_ids:
        update["run_ids"] = list(run_ids)
    cfg = (eval_config or EvalConfig()).model_copy(update=update)
    result = Evaluator(cfg).evaluate(store)
    cameras = store.camera_ids(result.meta.runs) if target.scope == "camera" else ()
    return statuses_from_result(result, target, cameras)


def statuses_from_result(result: EvaluationResult, target: LabelTarget, cameras: Sequence[str] = ()) -> list[TargetStatus]:
    """The statuses :func:`target_status` returns, from an evaluation at the target's level (pure).

    ``cameras``: every camera in scope (scope ``camera``); cameras without labels get a status too (not met).
    """
    inc = result.models.get(Role.INCUMBENT.value)
    td = result.drift.training if result.drift is not None else None
    if target.scope == "model":
        key = result.meta.models.get(Role.INCUMBENT.value) or Role.INCUMBENT.value
        est = inc.accuracy if inc is not None else None
        return [_status(target, "model", key, est, result, _drifted(td, None))]
    per_camera = inc.per_camera if inc is not None else {}
    keys = sorted(set(cameras) | set(per_camera))
    return [_status(target, "camera", cam, per_camera.get(cam), result, _drifted(td, cam)) for cam in keys]


def _drifted(td: TrainingDrift | None, camera: str | None) -> bool:
    """Drift against training: for the model when anything drifted; for a camera when its images or the models'
    outputs (confidence, predicted-class mix) drifted."""
    if td is None or not td.drifted:
        return False
    if camera is None:
        return True
    flagged = {d.subject for d in td.p_values() if d.p is not None and d.p < td.alpha and d.large}
    return camera in flagged or bool(flagged & set(ROLES))


def _half(low: float | None, high: float | None) -> float | None:
    if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)):
        return None
    return (high - low) / 2.0


def _pts(x: float) -> str:
    return f"±{100 * x:.1f} pts"


def _level(level: float) -> str:
    return f"{100 * level:.4g}%"


def _status(target: LabelTarget, scope: str, key: str, est: Estimate | None, result: EvaluationResult,
            drifted: bool) -> TargetStatus:
    lvl = _level(target.level)
    labels = int(est.n) if est is not None else 0
    drift_note = "; drift against training: labelling faster" if drifted else ""
    if target.kind == "half_width":
        t = target.half_width
        cur = _half(est.low, est.high) if est is not None else None
        if cur is None:
            return TargetStatus(scope, key, "half_width", target.level, t, None, labels, False, None, drifted, None,
                                f"{key}: no labels yet; target {_pts(t)} at {lvl}{drift_note}")
        met = cur <= t
        to_go = 0 if met else max(1, math.ceil(labels * (cur / t) ** 2) - labels)
        head = f"{key}: {_pts(cur)} at {lvl} from {labels} labels; target {_pts(t)}"
        msg = f"{head} met" if met else f"{head}: about {to_go} more labels"
        return TargetStatus(scope, key, "half_width", target.level, t, cur, labels, met, to_go, drifted, None, msg + drift_note)

    dec = result.decision
    if dec is None:
        return TargetStatus(scope, key, "decision", target.level, None, None, labels, False, None, drifted, None,
                            f"{key}: no challenger (shadow) predictions: no decision to reach{drift_note}")
    if scope == "model":
        labels = int(dec.labels_spent or 0)
    cur = _half(dec.low, dec.high)
    met = dec.action != NEED_MORE
    to_go = 0 if met else (int(dec.more_labels) if dec.more_labels is not None else None)
    width = f" (challenger − champion {_pts(cur)})" if cur is not None else ""
    if met:
        msg = f"{key}: decision reached at {lvl}: {dec.action}{width}, {labels} labels"
    else:
        more = f": about {to_go} more labels" if to_go is not None else ""
        msg = f"{key}: no decision yet at {lvl}{width} from {labels} labels{more}"
    return TargetStatus(scope, key, "decision", target.level, None, cur, labels, met, to_go, drifted, dec.action, msg + drift_note)


def rate_factors(statuses: Sequence[TargetStatus], target: LabelTarget) -> dict[str | None, float]:
    """camera -> the factor on its sampling probabilities (scope ``model``: the key None, every camera):
    ``drift_factor`` while drifted (under drift we want labels, even when the target is met), ``met_factor``
    while the target is met, else 1."""
    out: dict[str | None, float] = {}
    for s in statuses:
        key = s.key if s.scope == "camera" else None
        out[key] = target.drift_factor if s.drifted else (target.met_factor if s.met else 1.0)
    return out


def target_runs(runs: Sequence[Mapping[str, Any]], target: LabelTarget | None, incumbent: str | None,
                shadow: str | None = None) -> list[str]:
    """The runs whose labels count towards a target of ``incumbent``: every run of the store (``list_runs()``
    rows) with the same incumbent model; for a ``decision`` target, the same incumbent *and* shadow model (a
    decision is about one challenger)."""
    same_pair = target is not None and target.kind == "decision"
    return [r["run_id"] for r in runs
            if r.get("incumbent_model") == incumbent and (not same_pair or r.get("shadow_model") == shadow)]


# --------------------------------------------------------------------------------------------------
# neyman feedback
# --------------------------------------------------------------------------------------------------
def neyman_feedback(store: PredictionStore, run_ids: Sequence[str], edges: Sequence[float]) -> dict[Stratum, tuple[int, int]]:
    """Labels per ``neyman`` stratum of runs ``run_ids``: ``{stratum: (labelled frames, incumbent correct)}``.

    A frame's stratum is :func:`pipeline.sampling.neyman_stratum` of its stored incumbent prediction and its
    shadow prediction (if any), its truth :func:`pipeline.evaluation.truth.majority_truth` of its labels. Frames
    without a truth (all ``unsure``, tie, unknown class) and degraded incumbent predictions are left out, as the
    evaluator leaves them out of accuracy.
    """
    run_ids = list(run_ids)
    wanted = set(run_ids)
    classes: set[str] = set()
    for r in store.list_runs():
        if r["run_id"] in wanted and r["class_names"]:
            classes.update(json.loads(r["class_names"]))
    pred_rows, label_rows = store.labelled_frame_rows(run_ids)
    inc: dict[str, tuple[str, Any, str, str | None]] = {}
    sh: dict[str, str] = {}
    for fid, cam, role, probs, label, degraded in pred_rows:
        if role == Role.INCUMBENT.value:
            inc[fid] = (cam, probs, label, degraded)
        elif role == Role.SHADOW.value:
            sh[fid] = label
    per_frame: dict[str, list[str]] = defaultdict(list)
    for fid, label in label_rows:
        per_frame[fid].append(label)
    counts: dict[Stratum, list[int]] = defaultdict(lambda: [0, 0])
    for fid, labs in per_frame.items():
        p = inc.get(fid)
        if p is None or p[3] is not None:
            continue
        t = majority_truth(labs, classes)
        if not t.ok:
            continue
        cam, probs, label, _ = p
        c = counts[neyman_stratum(cam, probs, sh.get(fid), label, edges)]
        c[0] += 1
        c[1] += int(label == t.label)
    return {k: (n, k_) for k, (n, k_) in counts.items()}


# --------------------------------------------------------------------------------------------------
# the controller
# --------------------------------------------------------------------------------------------------
class TargetController:
    """Checks a label target against the store and sets the sampler's rate factors (:meth:`check`).

    ``eval_config``: how to evaluate (cards, workdir, estimator); its ``alpha`` is replaced by ``1 - level``.
    ``last_statuses`` / ``last_factors`` keep the latest check's outcome.
    """

    def __init__(self, config: LabelTarget, eval_config: EvalConfig | None = None):
        self.config = config
        self.eval_config = eval_config
        self.last_statuses: list[TargetStatus] = []
        self.last_factors: dict[str | None, float] = {}

    def check(self, store: PredictionStore, sampler: Any, run_ids: Sequence[str] | None) -> list[TargetStatus]:
        """Evaluate the target on ``run_ids`` and apply the rate factors to ``sampler`` (``set_rate_factor``)."""
        statuses = target_status(store, self.config, self.eval_config, run_ids)
        factors = rate_factors(statuses, self.config)
        for camera, factor in factors.items():
            sampler.set_rate_factor(factor, camera)
        self.last_statuses, self.last_factors = statuses, factors
        return statuses


# --------------------------------------------------------------------------------------------------
# the CLI's short form
# --------------------------------------------------------------------------------------------------
_NUM = r"(\d+(?:\.\d+)?|\.\d+)"
_HALF_WIDTH = re.compile(rf"(?:±|\+-|\+/-)?{_NUM}(?:pts?|points?|%)?(?:@{_NUM}%?)?")
_DECISION = re.compile(rf"decision(?:@{_NUM}%?)?")
_FORMS = "'2pts@95' (±2 points at 95%), '±2@95%' or 'decision' (optionally 'decision@95')"


def parse_target(text: str, scope: str = "camera", source: str = "--target") -> LabelTarget:
    """``"2pts@95"`` / ``"±2@95%"`` / ``"+-1.5"`` (95% by default) / ``"decision"`` / ``"decision@99"`` -> a
    :class:`LabelTarget` of ``scope``. The width is in accuracy points (2 = ±0.02); the level in percent (a
    fraction below 1 is read as such). A bad text raises a one-line :class:`ConfigError` naming ``source``."""
    s = re.sub(r"\s+", "", str(text)).lower()
    m = _DECISION.fullmatch(s)
    try:
        if m:
            kw: dict[str, Any] = {"kind": "decision", "scope": scope}
            if m.group(1):
                kw["level"] = _as_level(m.group(1))
            return LabelTarget(**kw)
        m = _HALF_WIDTH.fullmatch(s)
        if m:
            kw = {"kind": "half_width", "half_width": float(m.group(1)) / 100.0, "scope": scope}
            if m.group(2):
                kw["level"] = _as_level(m.group(2))
            return LabelTarget(**kw)
    except ConfigError as e:
        raise ConfigError(f"{source} {text!r}: {e}") from None
    raise ConfigError(f"{source}: expected {_FORMS}, got {text!r}")


def _as_level(text: str) -> float:
    v = float(text)
    return v / 100.0 if v >= 1 else v
