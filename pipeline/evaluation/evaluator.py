"""The evaluator: join predictions with human labels and compute every figure a team looks at.

Store in, :class:`~pipeline.evaluation.result.EvaluationResult` out (typed figures; ``to_dict()``/``to_json()``
give the JSON document). The store is read through :meth:`PredictionStore.evaluation_rows` (no SQL here), a
frame's truth comes from :func:`pipeline.evaluation.truth.majority_truth`, and the statistics are the pure
functions of :mod:`~pipeline.evaluation.stats`, :mod:`~pipeline.evaluation.drift` and
:mod:`~pipeline.evaluation.estimate`; nothing here re-implements them. Plots and the HTML report live in
:mod:`pipeline.evaluation.report`, alerts in :mod:`pipeline.evaluation.alerts`, MLflow logging in
:func:`pipeline.tracking.log_evaluation`.

Rules the figures follow (they are repeated in every result's ``meta.methods``):

* **Scope.** By default the runs in the store that used the newest run's (incumbent, shadow) pair;
  ``EvalConfig.run_ids`` picks runs explicitly. Frames are ordered by their timestamp ``frames.ts``.
* **Truth.** A frame's truth is the majority of its non-``unsure`` labels. Frames whose labels are all
  ``unsure``, tie, or name no known class are *excluded* and counted (``counts.excluded``).
* **Degraded predictions** (stale, unknown, CPU fallback) are excluded from accuracy and counted.
* **Weights.** A labelled frame's inclusion probability comes from ``samples``; a labelled frame without a
  sample row (e.g. imported labels) gets probability 1, and a note says how many. Equal probabilities give
  Wilson intervals; unequal ones an inverse-probability-weighted (Hajek) estimate (``stats.accuracy_estimate``).
* **Model-assisted estimates** (``EvalConfig.estimator="model_assisted"``, the default): accuracy, per-camera
  accuracy and with them the gap use every frame of the window, not only the labelled ones
  (:mod:`pipeline.evaluation.ppi`: active PPI++ with a proxy of "this prediction is correct" fitted on the labels,
  cross-fitted over folds of frame ids, combined with the inclusion probabilities). Used when the window has
  ``proxy_min_labels`` labelled frames and every labelled frame came from the sampler; otherwise, and with ``estimator="classical"``, the
  classical estimate stands, and a note says why. Sampled frames still waiting for a label (or labelled ``unsure``)
  scale the inclusion probabilities by the share of samples resolved (missing at random, as the classical ratio
  estimate assumes). Every figure names its estimator (``method``) and its effective number of labels (``n_eff``:
  what uniform sampling + Wilson would need for the same width); ``accuracy_classical`` keeps the classical one.
  The paired difference stays classical (McNemar, and the anytime-valid decision): see :mod:`~pipeline.evaluation.ppi`.
* **Gap** = offline test accuracy from the model card − production accuracy (``stats.gap_estimate``, both
  sample sizes). No card, no gap: a note says why.
* **Drift** (``EvalConfig.drift_baseline``), by default **against training**: each window's frames against the
  training reference profile in the models' cards (:mod:`pipeline.evaluation.reference`: how many frames lie
  beyond the validation split's 1%/99% quantiles of each image statistic and of the model's confidence, and the
  predicted-class mix). Without a reference in the cards (or with ``drift_baseline="run_start"``) the window's
  frames *after* the reference period are compared with the reference period (the first ``EvalConfig.reference``
  share of the frames, a duration from the first frame, or explicit timestamps); windows that lie inside the
  reference period then get no drift figures.
* **Decision** (``decision``): anytime-valid (:mod:`pipeline.evaluation.sequential`): a confidence sequence on
  challenger - champion accuracy over the labelled frames with both predictions (inverse-probability weighted
  over the stream when the inclusion probabilities differ), intersected with the bound every frame gives for
  free: two models can differ in accuracy at most where their predictions differ, so the difference lies in
  ``[-d, +d]`` with ``d`` the observed disagreement rate. ``promote`` / ``equivalent`` / ``retire`` /
  ``need_more_labels`` against the margin ``EvalConfig.delta``; valid however often a team looks. The McNemar
  test (``paired``) stays as the fixed-sample report. Accuracy and gap also get confidence sequences
  (``accuracy_cs``, ``gap_cs``).
* **Label-free estimate**: where the window has labels, an estimate outside the labelled interval is flagged
  ``contradicted_by_labels``; where the inputs lie outside the training range (drift against training), it is
  flagged ``unreliable``. Either way it is not a valid figure and reports draw it as such.
* **Cost of errors** (``EvalConfig.costs``, :mod:`pipeline.evaluation.costs`): every model's expected cost per
  1,000 frames, with the accuracy's estimator (model-assisted with the model's own expected cost as the proxy, or
  classical) and the confusions that drive it. ``EvalConfig.decide_on="cost"`` makes the decision on the paired
  per-frame cost difference (champion - challenger, scaled to [-1, 1] by the cost range) through the same
  anytime-valid confidence sequences, with ``delta`` in cost units per 1,000 frames.
* **Baselines** (``EvalConfig.baselines``, :mod:`pipeline.evaluation.baselines`): a majority-class and a rule
  baseline scored on the same labels (``baselines``); each model's ``vs_baseline`` says whether it is significantly
  better than every baseline (one-sided paired lower bounds at ``alpha``, on accuracy or, with
  ``decide_on="cost"``, on cost): the baseline alert fires when it is not.
* **Serving cost** (:meth:`Evaluator.evaluate` only): :func:`pipeline.serving_cost.combine_runs` over the evaluated
  runs' summaries at ``EvalConfig.price_per_device_hour`` (or the price the runs recorded), as ``serving_cost``.
* **Windows** (:meth:`Evaluator.evaluate_windows`) are consecutive, non-overlapping ``window_s`` slices of
  frame time starting at the first frame; each result holds that slice only (``cumulative=False``, the
  default, so a gap opening over time shows as it happens) or everything from the first frame to the
  slice's end (``cumulative=True``). Slices without frames are skipped; ``meta.window.index`` keeps the
  slice number, which is the MLflow step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pipeline import tracking
from pipeline.config import EvalConfig, ReferenceDuration, ReferenceRange, parse_duration, parse_reference
from pipeline.evaluation import baselines as baselines_mod
from pipeline.evaluation import costs as costs_mod
from pipeline.evaluation import drift as drift_mod
from pipeline.evaluation import estimate as estimate_mod
from pipeline.evaluation import ppi, sequential, stats
from pipeline.evaluation.blas import one_blas_thread
from pipeline.evaluation.reference import TrainingReference, training_drift
from pipeline.evaluation.result import (
    ROLES,
    BaselineComparison,
    BaselineFigures,
    Calibration,
    CalibrationBin,
    CardInfo,
    Confusion,
    Counts,
    Decision,
    DriftFigures,
    Estimate,
    EvaluationResult,
    Excluded,
    LabelFreeEstimate,
    Meta,
    ModelFigures,
    Offline,
    ProxyInfo,
    ReferencePeriod,
    Window,
)
from pipeline.evaluation.truth import RULE as TRUTH_RULE
from pipeline.evaluation.truth import majority_truth
from pipeline.imagestats import STAT_NAMES
from pipeline.modelcard import ModelCard, read_card
from pipeline.serving_cost import combine_runs
from pipeline.store import PredictionStore
from pipeline.types import ConfigError, ModelCardError, Role, ShadowcamError, StoreError

# re-exported: callers import the config and the result type from here
__all__ = [
    "EvalConfig", "EvaluationResult", "Evaluator", "ROLES", "ReferenceDuration", "ReferenceRange", "parse_duration", "parse_reference",
]

log = logging.getLogger(__name__)


def frame_truth(per_frame: dict[int, list[tuple[float, str, str]]], n: int, cidx: dict[str, int]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The truth of ``n`` frames from their labels (``per_frame``: frame index -> ``(ts, annotator, label)``; sorted
    here, oldest first): ``(truth class index or -1, truth status, number of labels, first and second answer of
    double-labelled frames, invalid labels)``, by the one truth rule (:func:`majority_truth`)."""
    truth = np.full(n, -1, np.int64)
    status = np.full(n, None, dtype=object)
    n_labels = np.zeros(n, np.int64)
    pair_a = np.full(n, None, dtype=object)
    pair_b = np.full(n, None, dtype=object)
    invalid = 0
    for i, rows in per_frame.items():
        rows.sort()
        n_labels[i] = len(rows)
        if len(rows) >= 2:
            pair_a[i], pair_b[i] = rows[0][2], rows[1][2]
        t = majority_truth((label for _, _, label in rows), cidx)
        invalid += t.invalid
        status[i] = t.status
        if t.ok:
            truth[i] = cidx[t.label]
    return truth, status, n_labels, pair_a, pair_b, invalid


# --------------------------------------------------------------------------------------------------
# Loading: the store's rows as column arrays aligned on frames
# --------------------------------------------------------------------------------------------------
@dataclass
class _RolePreds:
    has: np.ndarray  # bool (n,)
    pred: np.ndarray  # int (n,) class index, -1 = none / not a class
    probs: np.ndarray  # float32 (n, C), NaN rows where missing
    degraded: np.ndarray  # bool (n,)
    models: Counter = field(default_factory=Counter)  # "name:version" -> predictions


@dataclass
class _Data:
    classes: list[str]
    runs: list[dict]
    frame_ids: pa.Array  # strings, no Python object per frame (``d.frame_ids[i].as_py()`` for one)
    camera_codes: np.ndarray  # int32 index into camera_names (sorted): group by it, not by the names
    camera_names: list[str]
    ts: np.ndarray
    image_stats: dict[str, np.ndarray]
    roles: dict[str, _RolePreds]
    incl: np.ndarray  # float64, NaN where no sample row
    strategy: np.ndarray  # object, None where no sample row
    truth: np.ndarray  # int, -1 where no truth
    truth_status: np.ndarray  # object: None (no labels) | "ok" | "unsure" | "tie" | "unknown_class"
    n_labels: np.ndarray  # int labels per frame
    pair_a: np.ndarray  # object: first annotator's raw label on double-labelled frames, None otherwise
    pair_b: np.ndarray
    invalid_labels: int = 0
    _fold_hash: np.ndarray | None = None
    _camera_rows: list[np.ndarray] | None = None

    @property
    def n(self) -> int:
        return int(self.ts.shape[0])

    @property
    def cameras(self) -> np.ndarray:
        """Every frame's camera id (object array sharing one string per camera)."""
        return np.array(self.camera_names + [None], dtype=object)[self.camera_codes]

    def camera_name(self, i: int) -> str:
        return self.camera_names[int(self.camera_codes[i])]

    def frame_id(self, i: int) -> str:
        return self.frame_ids[int(i)].as_py()

    def camera_rows(self) -> list[np.ndarray]:
        """Per camera code, the indices of its frames in ascending order (what ``camera_codes == code`` selects)."""
        if self._camera_rows is None:
            order = np.argsort(self.camera_codes, kind="stable")
            bounds = np.searchsorted(self.camera_codes[order], np.arange(len(self.camera_names) + 1))
            self._camera_rows = [order[bounds[k]:bounds[k + 1]] for k in range(len(self.camera_names))]
        return self._camera_rows

    def fold_hash(self) -> np.ndarray:
        """:func:`ppi.frame_hashes` of every frame id, computed once per load (the proxy's folds come from it)."""
        if self._fold_hash is None:
            self._fold_hash = ppi.frame_hashes(self.frame_ids)
        return self._fold_hash


def _scope_runs(store: PredictionStore, run_ids: Sequence[str] | None) -> list[dict]:
    all_runs = store.list_runs()
    if not all_runs:
        raise StoreError(f"store {store.url} has no runs: run `shadowcam run` first")
    if run_ids:
        known = {r["run_id"]: r for r in all_runs}
        missing = [r for r in run_ids if r not in known]
        if missing:
            raise ConfigError(f"run id(s) not in store {store.url}: {', '.join(missing)} (known: {', '.join(known)})")
        return [known[r] for r in run_ids]
    newest = all_runs[-1]
    pair = (newest["incumbent_model"], newest["shadow_model"])
    return [r for r in all_runs if (r["incumbent_model"], r["shadow_model"]) == pair]


def _load(store: PredictionStore, run_ids: Sequence[str] | None) -> _Data:
    """The scope's frames, predictions, samples and labels as column arrays (:meth:`PredictionStore.evaluation_columns`),
    with each labelled frame's truth (:func:`majority_truth`)."""
    runs = _scope_runs(store, run_ids)
    class_lists = {r["class_names"] for r in runs if r["class_names"]}
    if not class_lists:
        raise StoreError(f"store {store.url}: runs {[r['run_id'] for r in runs]} record no class names")
    if len(class_lists) > 1:
        raise ConfigError(
            f"store {store.url}: the selected runs use different class lists ({sorted(class_lists)}); evaluate them separately with --run"
        )
    classes = json.loads(class_lists.pop())
    cidx = {c: i for i, c in enumerate(classes)}
    cols = store.evaluation_columns([r["run_id"] for r in runs], classes, STAT_NAMES)
    n = cols.n
    roles = {role: _RolePreds(rc.has, rc.pred, rc.probs, rc.degraded, Counter(rc.models)) for role, rc in cols.roles.items()}

    # labels: per labelled frame, (ts, annotator, label) sorted, as the row-wise reader did
    per_frame: dict[int, list[tuple[float, str, str]]] = defaultdict(list)
    for i, lts, annotator, label in zip(cols.label_frame.tolist(), cols.label_ts.tolist(), cols.label_annotators, cols.label_values):
        per_frame[i].append((lts, annotator, label))
    truth, status, n_labels, pair_a, pair_b, invalid = frame_truth(per_frame, n, cidx)
    return _Data(classes, runs, cols.frame_ids, cols.camera_codes, cols.camera_names, cols.ts, cols.image_stats, roles, cols.incl,
                 cols.strategy, truth, status, n_labels, pair_a, pair_b, invalid)


# --------------------------------------------------------------------------------------------------
# Model cards
# --------------------------------------------------------------------------------------------------
def _run_config_uri(runs: list[dict], role: str) -> tuple[str | None, str, str | None]:
    """(model URI, run workdir, local ONNX path the runner used) from the newest run config that names one."""
    for r in reversed(runs):
        try:
            cfg = json.loads(r["config"] or "{}")
        except json.JSONDecodeError:
            continue
        section = cfg.get(role) or {}
        resolved = (cfg.get("_resolved") or {}).get(role) or {}
        uri = section.get("uri") if isinstance(section, dict) else None
        path = resolved.get("path") if isinstance(resolved, dict) else None
        uri = uri or (resolved.get("uri") if isinstance(resolved, dict) else None)
        if uri or path:
            return (str(uri) if uri else None), str(cfg.get("workdir") or "."), (str(path) if path else None)
    return None, ".", None


def _resolve_card(role: str, explicit: str | None, runs: list[dict], model: str | None, cfg: EvalConfig, notes: list[str]) -> tuple[ModelCard | None, str | None]:
    """The role's model card and where it came from; ``None`` plus a note when there is none.

    Order: the explicit ``--<role>-card`` file; the ONNX file the runner loaded (``_resolved.<role>.path`` in
    the stored run config) when it is still there; else the run config's model URI. A registry URI
    (``models:/NAME@ALIAS``) is resolved to the *version the predictions were made with*
    (``models:/NAME/VERSION`` from the store's ``NAME:VERSION``), since the alias may have moved since the run.
    """
    if explicit:
        card = read_card(explicit)  # a card the user named must exist: errors propagate
        _check_card_matches(role, card, model, notes, reject=False)
        return card, str(explicit)
    uri, run_workdir, used_path = _run_config_uri(runs, role)
    if used_path and Path(used_path).is_file():
        # the very file the runner loaded (a registry download in its cache, or the configured path)
        try:
            card = read_card(used_path)
            if _check_card_matches(role, card, model, notes, reject=True):
                return card, used_path
        except ShadowcamError as e:
            notes.append(f"{role}: {e}")
    if not uri:
        notes.append(f"{role}: no model URI in the run config and no --{role}-card; offline accuracy unknown, gap not computed")
        return None, None
    try:
        if uri.startswith("models:/"):
            name, _, _ = tracking.parse_models_uri(uri)
            if model and model.rpartition(":")[0] == name and model.rpartition(":")[2].isdigit():
                uri = f"models:/{name}/{model.rpartition(':')[2]}"
            workdir = Path(cfg.workdir or ".")
            cache = Path(cfg.cache_dir) if cfg.cache_dir else workdir / ".cache" / "models"
            path, _, _ = tracking.resolve_model_uri(uri, cache, workdir)
        else:
            path = Path(uri)
            if not path.is_file() and (Path(run_workdir) / uri).is_file():
                path = Path(run_workdir) / uri
        card = read_card(path)
    except (ShadowcamError, ImportError, OSError) as e:
        notes.append(f"{role}: model card not found for {uri!r} ({e}); gap not computed (pass --{role}-card FILE.onnx)")
        return None, None
    except Exception as e:  # mlflow raises its own exception types for unknown models/aliases
        notes.append(f"{role}: could not resolve {uri!r} ({e.__class__.__name__}: {e}); gap not computed (pass --{role}-card FILE.onnx)")
        return None, None
    if not _check_card_matches(role, card, model, notes, reject=True):
        return None, None
    return card, str(path)


def _check_card_matches(role: str, card: ModelCard, model: str | None, notes: list[str], reject: bool) -> bool:
    """Refuse (or warn about) a card of another version of the same model, e.g. an alias that moved since the run."""
    if not model or not card.name or not card.version:
        return True
    name, _, version = model.rpartition(":")
    if name == card.name and version and version != card.version:
        action = "not used; gap not computed" if reject else "used anyway because it was given explicitly"
        notes.append(f"{role}: model card is for {card.name}:{card.version} but predictions come from {model} ({action})")
        return not reject
    return True


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _finite(x: float | None) -> float | None:
    """``x`` as a float, None when missing or not finite (a time bound of an empty scope)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def _iso(t: float | None) -> str | None:
    if t is None or not math.isfinite(t):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _weights_or_none(pi: np.ndarray) -> np.ndarray | None:
    """1/pi when inclusion probabilities differ, None when uniform (unweighted methods apply)."""
    if pi.size == 0 or np.allclose(pi, pi[0]):
        return None
    return 1.0 / pi


def _matrix(m: np.ndarray, kind: type) -> tuple[tuple, ...]:
    return tuple(tuple(kind(v) for v in row) for row in m)


def _calibration(conf: np.ndarray, correct: np.ndarray, w: np.ndarray, bins: int) -> Calibration:
    """Reliability diagram data: weighted accuracy and mean confidence per confidence bin, and the ECE."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    ece, wtot = 0.0, float(w.sum())
    for b in range(bins):
        m = idx == b
        low, high = float(edges[b]), float(edges[b + 1])
        if not m.any():
            out.append(CalibrationBin(low, high, 0, None, None))
            continue
        wb = w[m]
        acc = float(np.sum(wb * correct[m]) / wb.sum())
        mc = float(np.sum(wb * conf[m]) / wb.sum())
        ece += float(wb.sum()) / wtot * abs(acc - mc)
        out.append(CalibrationBin(low, high, int(m.sum()), mc, acc))
    return Calibration(tuple(out), ece if wtot > 0 else None, int(conf.size))


def _reference_range(d: _Data, reference: float | ReferenceDuration | ReferenceRange) -> tuple[float, float]:
    if d.n == 0:
        return (math.nan, math.nan)
    t0 = float(d.ts[0])
    if isinstance(reference, ReferenceDuration):
        return (t0, t0 + reference.duration_s)
    if isinstance(reference, ReferenceRange):
        return (reference.start, reference.end)
    k = max(1, int(math.ceil(reference * d.n)))
    return (t0, float(np.nextafter(d.ts[k - 1], np.inf)))  # the first k frames, inclusive


def _image_roots(d: _Data, cfg: EvalConfig) -> list[Path]:
    """Folders a relative ``samples.image_path`` may be relative to: the current folder, the runs' work
    directories (as recorded in their configs) and ``EvalConfig.workdir``."""
    roots = [Path.cwd()]
    for r in d.runs:
        try:
            wd = (json.loads(r["config"] or "{}") or {}).get("workdir")
        except (TypeError, ValueError):
            wd = None
        if wd:
            roots.append(Path(wd))
    if cfg.workdir:
        roots.append(Path(cfg.workdir))
    out: list[Path] = []
    for r in roots:
        if r not in out:
            out.append(r)
    return out


class _ImageResolver:
    """Finds a sampled frame's JPEG as :func:`_resolve_image` always did (an absolute path as is; a relative one
    under the first root that has it), answering from each folder's listing, read once: a store with 100k samples
    costs 100k set lookups (string paths, no ``Path`` per candidate), not 100k ``stat`` calls per root."""

    def __init__(self, roots: list[Path]):
        self.roots = [str(r) for r in roots]
        self._listing: dict[str, frozenset[str]] = {}

    def _files(self, folder: str) -> frozenset[str]:
        got = self._listing.get(folder)
        if got is None:
            try:
                with os.scandir(folder or ".") as it:
                    got = frozenset(e.name for e in it if e.is_file())
            except OSError:
                got = frozenset()
            self._listing[folder] = got
        return got

    def __call__(self, image_path: str) -> Path | None:
        if not image_path:
            return None
        cands = [image_path] if os.path.isabs(image_path) else [os.path.join(r, image_path) for r in self.roots]
        for cand in cands:
            folder, name = os.path.split(cand)
            if name and name in self._files(folder):
                return Path(cand)
        return None


def _resolve_image(image_path: str, roots: list[Path]) -> Path | None:
    return _ImageResolver(roots)(image_path)


def _card_info(card: ModelCard | None, path: str | None) -> CardInfo | None:
    if card is None:
        return None
    return CardInfo(path, card.name, card.version, card.test_accuracy, card.test_size, card.temperature, card.atc_threshold, card.atc_score)


# --------------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------------
def _pi_floor(d: _Data, cfg: EvalConfig, notes: list[str]) -> float | None:
    """The fixed scale of the IPW confidence sequences: ``EvalConfig.pi_floor``, else the smallest inclusion
    probability the evaluated runs' samplers could give (``rate`` for uniform sampling, ``uniform_floor * rate``
    otherwise). None when every labelled frame was labelled for sure or the probabilities are all equal."""
    pis = d.incl[~np.isnan(d.incl)]
    if pis.size == 0 or np.allclose(pis, pis[0]):
        return None
    if cfg.pi_floor is not None:
        return cfg.pi_floor
    floors = []
    for r in d.runs:
        try:
            sampling = (json.loads(r["config"]) if isinstance(r.get("config"), str) else (r.get("config") or {})).get("sampling") or {}
        except (TypeError, ValueError):
            sampling = {}
        rate, floor = sampling.get("rate"), sampling.get("uniform_floor")
        if rate is None:
            continue
        floors.append(float(rate) if sampling.get("strategy") == "uniform" or not floor else float(rate) * float(floor))
    if floors and min(floors) > 0:
        return min(floors)
    value = float(pis.min())
    notes.append(f"no sampling config recorded: the confidence sequences use the smallest recorded inclusion probability "
                 f"{value:.3g} as their scale (set EvalConfig.pi_floor to fix it in advance)")
    return value


def _check_estimate(est: LabelFreeEstimate, acc: Estimate | None, drift: DriftFigures, role: str) -> LabelFreeEstimate:
    """The label-free estimate, flagged where it cannot be trusted: outside the window's labelled interval
    (``contradicted_by_labels``), or computed on inputs outside the training range (``unreliable``)."""
    contradicted, lo, hi = None, None, None
    if acc is not None and math.isfinite(acc.low) and math.isfinite(acc.high):
        lo, hi = acc.low, acc.high
        contradicted = not (lo <= est.value <= hi)
    unreliable = None
    td = drift.training
    if td is not None and td.drifted:
        unreliable = f"inputs outside the training range ({td.findings[0]}): a label-free estimate cannot see this shift"
    return dataclasses.replace(est, contradicted_by_labels=contradicted, labelled_low=lo, labelled_high=hi, unreliable=unreliable)


def _stream_order(d: _Data, sel: np.ndarray) -> np.ndarray:
    """Indices of the selected frames in time order (the order the sampler saw them)."""
    idx = np.flatnonzero(sel)
    return idx[np.argsort(d.ts[idx], kind="stable")]


def _cs_estimate(cs: sequential.ConfidenceSequence) -> Estimate:
    return Estimate(value=cs.value, low=cs.low, high=cs.high, se=math.nan, n=cs.n_labels, n_eff=math.nan,
                    method=f"anytime-valid confidence sequence ({cs.method}, {cs.n} frames)")


@dataclass(frozen=True)
class _Assist:
    """One role's inputs to the model-assisted estimates: its usable frames of the window (indices into the
    loaded data), which are labelled, whether it was right there (read where labelled), the inclusion
    probabilities (scaled by the resolved share; NaN where unlabelled) and the cross-fitted proxy."""

    frames: np.ndarray
    labelled: np.ndarray
    correct: np.ndarray
    pi: np.ndarray
    proxy: ppi.Proxy


def _stream_costs(cm: costs_mod.CostMatrix, a: _Assist, truth: np.ndarray, pred: np.ndarray, probs: np.ndarray) -> costs_mod.StreamCosts:
    """The model-assisted cost inputs over an :class:`_Assist`'s frames (``truth``/``pred``/``probs`` on those frames):
    the cost where labelled, and the predictor's expected cost under ``probs`` as the proxy."""
    lab = a.labelled
    values = np.zeros(lab.shape[0])
    values[lab] = costs_mod.frame_costs(cm, truth[lab], pred[lab])
    return costs_mod.StreamCosts(values, lab, a.pi, costs_mod.expected_cost(cm, probs, pred))


@dataclass(frozen=True)
class _Context:
    """What one ``evaluate``/``evaluate_windows`` call resolves once: models, cards, notes, reference period."""

    models: dict[str, str | None]
    cards: dict[str, ModelCard | None]
    card_paths: dict[str, str | None]
    notes: list[str]
    reference: tuple[float, float]
    training_refs: dict[str, TrainingReference]  # role -> its card's training reference profile (drift against training)
    pi_floor: float | None  # fixed scale of the IPW confidence sequences (None: every labelled frame had pi = 1)
    costs: costs_mod.CostMatrix | None = None  # EvalConfig.costs over the classes
    baselines: tuple["_Baseline", ...] = ()
    serving_cost: dict | None = None  # pipeline.serving_cost over the scope's runs


@dataclass(frozen=True)
class _Baseline:
    """A baseline's prediction on every loaded frame (class index, -1 where it has none) and what it is."""

    name: str
    description: str
    pred: np.ndarray
    assisted: bool  # its prediction exists on every frame (the majority class): model-assisted figures possible
    predicts: tuple[int, ...] | None = None  # the classes it can predict (None: any): bounds its cost's range


class Evaluator:
    """``Evaluator(EvalConfig()).evaluate(store)`` -> one :class:`EvaluationResult` over the whole scope.

    ``evaluate_windows(store, window_s)`` -> one result per time window (see the module docstring).
    Cards are resolved once per call; the store is read once per call.
    """

    def __init__(self, config: EvalConfig | None = None):
        self.config = config or EvalConfig()

    # --- public verbs ------------------------------------------------------------------------------
    def evaluate(self, store: PredictionStore, window: float | tuple[float, float] | None = None, now: float | None = None) -> EvaluationResult:
        """Evaluate the scope, or a part of it.

        ``window``: None (everything), ``(start_ts, end_ts)`` (frames with start <= ts < end) or a number of
        seconds (the last ``window`` seconds up to ``now``; ``now`` defaults to the newest frame's time).
        """
        d = _load(store, self.config.run_ids)
        ctx = self._context(d, store, serving=True)
        if window is None:
            mask = np.ones(d.n, bool)
            lo, hi = (float(d.ts[0]), float(d.ts[-1])) if d.n else (math.nan, math.nan)
        else:
            if isinstance(window, (int, float)):
                end = float(now) if now is not None else (float(np.nextafter(d.ts[-1], np.inf)) if d.n else time.time())
                lo, hi = end - float(window), end
            else:
                lo, hi = float(window[0]), float(window[1])
            mask = (d.ts >= lo) & (d.ts < hi)
        result = self._compute(d, ctx, mask, 0, lo, hi, None if window is None else hi - lo)
        return dataclasses.replace(result, serving_cost=ctx.serving_cost)

    def evaluate_windows(self, store: PredictionStore, window_s: float | str) -> list[EvaluationResult]:
        """One result per consecutive ``window_s``-second slice of frame time (empty slices skipped)."""
        window_s = parse_duration(window_s, "window")
        d = _load(store, self.config.run_ids)
        ctx = self._context(d, store)
        if d.n == 0:
            return [self._compute(d, ctx, np.zeros(0, bool), 0, None, None, window_s)]
        t0 = float(d.ts[0])
        slot = np.floor((d.ts - t0) / window_s).astype(np.int64)
        results = []
        slots = np.unique(slot)
        for k in tqdm(slots, desc="evaluating windows", unit="window", disable=len(slots) < 20):
            lo, hi = t0 + k * window_s, t0 + (k + 1) * window_s
            mask = slot <= k if self.config.cumulative else slot == k
            results.append(self._compute(d, ctx, mask, int(k), t0 if self.config.cumulative else lo, hi, window_s))
        return results

    # --- internals ---------------------------------------------------------------------------------
    def _context(self, d: _Data, store: PredictionStore, serving: bool = False) -> _Context:
        cfg = self.config
        notes: list[str] = []
        models: dict[str, str | None] = {}
        for role in ROLES:
            c = d.roles[role].models
            models[role] = c.most_common(1)[0][0] if c else None
            if len(c) > 1:
                notes.append(f"{role}: predictions come from {len(c)} model versions ({', '.join(f'{m} x{k}' for m, k in c.most_common())}); figures pool them")
        if d.n == 0:
            notes.append(f"no frames recorded for run(s) {', '.join(r['run_id'] for r in d.runs)}: nothing to evaluate")
        elif models[Role.SHADOW.value] is None:
            notes.append("no shadow predictions in scope: only the incumbent is evaluated")
        cards: dict[str, ModelCard | None] = {}
        card_paths: dict[str, str | None] = {}
        for role in ROLES:
            explicit = cfg.incumbent_card if role == Role.INCUMBENT.value else cfg.shadow_card
            if models[role] is None and not explicit:
                cards[role], card_paths[role] = None, None
                continue
            cards[role], card_paths[role] = _resolve_card(role, explicit, d.runs, models[role], cfg, notes)
            card = cards[role]
            if card is not None and list(card.class_names) != d.classes:
                raise ModelCardError(f"{role} model card ({card_paths[role]}) has classes {card.class_names}, the store's runs have {d.classes}")
        if d.invalid_labels:
            notes.append(f"{d.invalid_labels} label(s) name no known class and were ignored")
        refs: dict[str, TrainingReference] = {}
        for role in ROLES:
            card = cards[role]
            if card is None or not card.training_reference:
                continue
            try:
                refs[role] = TrainingReference.from_dict(card.training_reference, f"{role} model card ({card_paths[role]})")
            except ValueError as e:
                notes.append(f"{e}; drift against training skipped for the {role}")
        if cfg.drift_baseline == "training" and d.n and not refs:
            notes.append("no training reference profile in the model cards (exported before drift against training existed?): "
                         "drift is measured against the start of the run")
        cost = costs_mod.cost_matrix(cfg.costs, d.classes) if cfg.costs is not None else None
        base = tuple(self._baselines(d, store, cards, notes)) if cfg.baselines.enabled and d.n else ()
        serving_cost = self._serving_cost(d, notes) if serving else None
        return _Context(models, cards, card_paths, notes, _reference_range(d, cfg.reference), refs, _pi_floor(d, cfg, notes),
                        cost, base, serving_cost)

    def _serving_cost(self, d: _Data, notes: list[str]) -> dict | None:
        """:func:`pipeline.serving_cost.combine_runs` over the scope's run summaries (None: no price, or no busy time)."""
        price = self.config.price_per_device_hour
        try:
            sc = combine_runs([r.get("summary") for r in d.runs], price)
        except ValueError as e:
            notes.append(f"serving cost not computed: {e}")
            return None
        if sc is None and price is not None:
            notes.append("serving cost not computed: no evaluated run recorded its inference busy time (runs not ended, or "
                         "recorded before serving cost was measured)")
        return sc.to_dict() if sc is not None else None

    # --- baselines (pipeline.evaluation.baselines) ------------------------------------------------------------------
    def _baselines(self, d: _Data, store: PredictionStore, cards: dict[str, ModelCard | None], notes: list[str]) -> list[_Baseline]:
        """The majority-class and the rule baseline's predictions on every loaded frame (see the module docstring)."""
        bc = self.config.baselines
        card = cards.get(Role.INCUMBENT.value)
        counts = card.extra.get("class_counts") if card is not None else None
        lab = d.truth >= 0
        pi = np.where(np.isnan(d.incl), 1.0, d.incl)
        choice = baselines_mod.majority_class(d.classes, counts if isinstance(counts, dict) else None, d.truth[lab], pi[lab],
                                              exclude=bc.empty_class)
        out = []
        if choice.note is None or lab.any():
            if choice.note:
                notes.append(choice.note)
            out.append(_Baseline(baselines_mod.MAJORITY, f"always {d.classes[choice.index]} (the most common class of {choice.source})",
                                 np.full(d.n, choice.index, np.int64), True, (choice.index,)))
        rule = self._rule_predictions(d, store, choice, notes)
        if rule is not None:
            out.append(rule)
        return out

    def _rule_predictions(self, d: _Data, store: PredictionStore, choice: baselines_mod.MajorityChoice, notes: list[str]) -> _Baseline | None:
        bc = self.config.baselines
        lab = d.truth >= 0
        if not lab.any():
            return None
        roots = _image_roots(d, self.config)
        resolve = _ImageResolver(roots)
        paths: dict[int, Path] = {}
        sampled = store.sampled_frames()
        at = pc.index_in(pa.array([sf.frame_id for sf in sampled], type=pa.string()), value_set=d.frame_ids).to_pylist() if sampled else []
        for sf, i in zip(sampled, at):
            if i is not None and sf.image_path:
                found = resolve(sf.image_path)
                if found is not None:
                    paths[i] = found
        pred = np.full(d.n, -1, np.int64)
        missing = int(sum(1 for i in np.flatnonzero(lab) if i not in paths))
        if bc.rule:
            rule = baselines_mod.load_rule(bc.rule)
            for i in np.flatnonzero(lab):
                p = paths.get(int(i))
                img = baselines_mod.read_image(p) if p is not None else None
                if img is None:
                    continue
                pred[i] = baselines_mod.apply_rule(rule, bc.rule, img, d.camera_name(i), d.classes, d.frame_id(i))
            description = f"user rule {bc.rule}"
            predicts = None
        else:
            if bc.empty_class not in d.classes:
                notes.append(f"rule baseline skipped: the classes have no {bc.empty_class!r} (set baselines.empty_class, or a "
                             "baselines.rule entry point)")
                return None
            if choice.busy is None:
                return None
            empty = d.classes.index(bc.empty_class)
            by_cam: dict[str, list[int]] = defaultdict(list)
            for i in sorted(paths, key=lambda k: d.ts[k]):
                by_cam[d.camera_name(i)].append(i)
            small: dict[int, np.ndarray] = {}
            fit_images: dict[str, list[np.ndarray]] = {}
            for cam, idx in by_cam.items():
                keep = idx if len(idx) <= bc.max_background_frames else \
                    [idx[int(k)] for k in np.linspace(0, len(idx) - 1, bc.max_background_frames).round()]
                for i in keep:
                    img = baselines_mod.read_small(paths[i], bc.image_size)
                    if img is not None:
                        small[i] = img
                fit_images[cam] = [small[i] for i in keep if i in small]
            fd = baselines_mod.FrameDifferenceRule(empty, choice.busy).fit(fit_images)
            no_bg = sorted(cam for cam, imgs in fit_images.items() if cam not in fd.background)
            if no_bg:
                notes.append(f"rule baseline: camera(s) {', '.join(no_bg)} have fewer than {fd.min_frames} sampled JPEGs; "
                             "their frames are not scored")
            for i in np.flatnonzero(lab):
                i = int(i)
                img = small.get(i)
                if img is None and i in paths:
                    img = baselines_mod.read_small(paths[i], bc.image_size)
                if img is not None:
                    pred[i] = fd.predict(img, d.camera_name(i))
            description = (f"frame difference from each camera's median background (Otsu threshold): "
                           f"{d.classes[choice.busy]} when something is on the belt, else {bc.empty_class}")
            predicts = (empty, choice.busy)
        if not (pred[lab] >= 0).any():
            notes.append(f"rule baseline not scored: none of the {int(lab.sum())} labelled frames has a readable sampled JPEG "
                         f"(looked in {', '.join(str(r) for r in roots)})")
            return None
        if missing:
            notes.append(f"rule baseline: {missing} labelled frame(s) have no readable sampled JPEG and are not scored")
        return _Baseline(baselines_mod.RULE, description, pred, False, predicts)

    def _compute(self, d: _Data, ctx: _Context, mask: np.ndarray, index: int, start: float | None, end: float | None,
                 length_s: float | None) -> EvaluationResult:
        with one_blas_thread():  # small matrices: BLAS threads only spin-wait for each other (pipeline.evaluation.blas)
            return self._figures(d, ctx, mask, index, start, end, length_s)

    def _figures(self, d: _Data, ctx: _Context, mask: np.ndarray, index: int, start: float | None, end: float | None,
                 length_s: float | None) -> EvaluationResult:
        cfg = self.config
        alpha = cfg.alpha
        notes = list(ctx.notes)
        ref_lo, ref_hi = ctx.reference
        ref = (d.ts >= ref_lo) & (d.ts < ref_hi)
        cur = mask & ~ref

        inc, sh = d.roles[Role.INCUMBENT.value], d.roles[Role.SHADOW.value]
        has_truth = d.truth >= 0
        labeled = mask & has_truth
        pi_all = np.where(np.isnan(d.incl), 1.0, d.incl)
        no_sample = int((labeled & np.isnan(d.incl)).sum())
        if no_sample:
            notes.append(f"{no_sample} labelled frame(s) have no sample row (e.g. imported labels): inclusion probability 1 assumed")
        st_m = d.truth_status[mask & (d.n_labels > 0)]  # a status only where labels are
        excluded = {k: int((st_m == k).sum()) for k in ("unsure", "tie", "unknown_class")}
        counts = Counts(
            frames=int(mask.sum()),
            cameras=int(np.unique(d.camera_codes[mask]).size),
            predictions={r: int((d.roles[r].has & mask).sum()) for r in ROLES},
            degraded={r: int((d.roles[r].has & d.roles[r].degraded & mask).sum()) for r in ROLES},
            shadow_coverage=(float((sh.has & inc.has & mask).sum() / (inc.has & mask).sum()) if (inc.has & mask).any() else None),
            samples=int((mask & ~np.isnan(d.incl)).sum()),
            labels=int(d.n_labels[mask].sum()),
            labeled_frames=int((mask & (d.n_labels > 0)).sum()),
            frames_with_truth=int(labeled.sum()),
            double_labeled_frames=int((mask & (d.n_labels >= 2)).sum()),
            excluded=Excluded(**excluded, total=sum(excluded.values())),
            labels_without_sample=no_sample,
            reference_frames=int(ref.sum()),
        )
        strategies = Counter(s for s in d.strategy[labeled] if s is not None)

        drift = self._drift(d, ctx, mask, ref, cur, notes)
        assist = self._assist(d, mask, notes)
        models_out: dict[str, ModelFigures | None] = {}
        methods: dict[str, dict[str, str]] = {}
        for role in ROLES:
            rp = d.roles[role]
            if ctx.models[role] is None and not rp.has.any():
                models_out[role] = None
                continue
            models_out[role], m = self._role_figures(d, ctx, role, rp, mask, pi_all, notes, drift, assist)
            for k, v in m.items():
                methods.setdefault(k, {})[role] = v

        base_figures, guards = self._baseline_figures(d, ctx, mask, pi_all, assist, models_out)
        for role, vs in guards.items():
            models_out[role] = dataclasses.replace(models_out[role], vs_baseline=vs)

        paired, decision = self._paired(d, ctx, mask, pi_all)
        agreement = None
        dbl = mask & (d.n_labels >= 2)  # = pair_a set
        if dbl.any():
            agreement = stats.annotator_agreement(list(d.pair_a[dbl]), list(d.pair_b[dbl]))
        config = cfg.model_dump(mode="json")
        window = Window(
            index=index, start=_finite(start), end=_finite(end), length_s=length_s, start_iso=_iso(start), end_iso=_iso(end),
            cumulative=cfg.cumulative, first_frame=float(d.ts[mask][0]) if mask.any() else None,
            last_frame=float(d.ts[mask][-1]) if mask.any() else None,
        )
        meta = Meta(
            models=dict(ctx.models),
            cards={r: _card_info(ctx.cards[r], ctx.card_paths[r]) for r in ROLES},
            window=window,
            reference=ReferencePeriod(_finite(ref_lo), _finite(ref_hi), _iso(ref_lo), _iso(ref_hi), config["reference"]),
            classes=tuple(d.classes),
            runs=tuple(r["run_id"] for r in d.runs),
            alpha=alpha,
            confidence_level=1 - alpha,
            sampling_strategies=dict(strategies),
            methods={
                "truth": TRUTH_RULE,
                "degraded": "degraded predictions excluded from accuracy",
                "accuracy": methods.get("accuracy", {}),
                "gap": "offline test accuracy (model card) - production accuracy; CI combines both sample sizes (stats.gap_estimate)",
                "paired": "McNemar exact test on frames labelled with both predictions; difference in accuracy with CI (stats.paired_test)",
                "drift_training": ("share of frames beyond the training reference's 1%/99% quantiles (image statistics per "
                                   "camera, model confidence) and predicted-class mix vs validation; effective counts, "
                                   f"Bonferroni; acted on when >= {cfg.drift_min_effect:.0%} above expected"),
                "decision": (f"anytime-valid confidence sequence on challenger - champion accuracy (PrPl-EB, "
                             f"Waudby-Smith & Ramdas 2024; IPW over the stream when inclusion probabilities differ) "
                             f"intersected with +-(observed disagreement rate); margin delta={cfg.delta:g}"
                             if cfg.decide_on == "accuracy" else
                             f"anytime-valid confidence sequence on champion - challenger cost per frame, scaled to [-1, 1] by the "
                             f"cost range (PrPl-EB, IPW over the stream when inclusion probabilities differ), intersected with "
                             f"the disagreement bound; margin delta={cfg.delta:g} {ctx.costs.currency if ctx.costs else ''} "
                             "per 1,000 frames"),
                "cost": methods.get("cost", {}),
                "baselines": ("majority class and a rule on the same labelled frames; the guard: one-sided paired lower bounds "
                              f"of model - baseline {'cost saving' if cfg.decide_on == 'cost' else 'accuracy'} at alpha, "
                              "against every baseline (pipeline.evaluation.baselines)"),
                "drift_softmax": "per-class Kolmogorov-Smirnov on softmax outputs vs the reference period, Bonferroni-corrected",
                "drift_image": "per-camera image statistics (brightness, contrast, sharpness, noise) vs the reference period",
                "drift_class_distribution": "incumbent's predicted-class distribution vs the reference period",
                "estimated_accuracy": methods.get("estimated_accuracy", {}),
                "calibration": f"{cfg.calibration_bins} equal-width confidence bins, inverse-probability weighted",
            },
            notes=tuple(sorted(set(notes), key=notes.index)),
            evaluated_at=time.time(),
            config=config,
        )
        return EvaluationResult(counts, models_out, paired, decision, drift, agreement, meta, baselines=tuple(base_figures))

    def _baseline_figures(self, d: _Data, ctx: _Context, mask: np.ndarray, pi_all: np.ndarray, assist: dict[str, "_Assist"],
                          models_out: dict[str, ModelFigures | None]) -> tuple[list[BaselineFigures], dict[str, BaselineComparison]]:
        """The baselines' figures in the window, and each model's comparison with them (the guard)."""
        cfg = self.config
        alpha = cfg.alpha
        figures: list[BaselineFigures] = []
        for b in ctx.baselines:
            sel = mask & (d.truth >= 0) & (b.pred >= 0)
            if not sel.any():
                figures.append(BaselineFigures(b.name, b.description, None, None, 0))
                continue
            correct = b.pred[sel] == d.truth[sel]
            acc = stats.accuracy_estimate(correct, pi_all[sel], alpha=alpha)
            a = assist.get(Role.INCUMBENT.value) if b.assisted else None
            probs = d.roles[Role.INCUMBENT.value].probs
            if a is not None:  # the majority class: the incumbent's probability of it is a proxy of "it is right"
                k = b.pred[a.frames]
                proxy = probs[a.frames][np.arange(k.size), k].astype(np.float64)
                ok = (d.truth[a.frames] == k).astype(np.float64)
                r = ppi.model_assisted_accuracy(ok, a.labelled, a.pi, proxy, alpha=alpha)
                n_eff = ppi.proportion_n_eff(r.value, r.se)
                acc = Estimate(r.value, r.low, r.high, r.se, r.n, n_eff if math.isfinite(n_eff) else float(r.n),
                               f"model-assisted (active PPI++: {r.n} labels + {r.N} frames; proxy: the incumbent's probability "
                               "of the class); Wilson at the effective size")
            cost = None
            if ctx.costs is not None:
                stream = _stream_costs(ctx.costs, a, d.truth[a.frames], b.pred[a.frames], probs[a.frames]) if a is not None else None
                cost = costs_mod.cost_figures(ctx.costs, d.truth[sel], b.pred[sel], pi_all[sel], alpha, stream,
                                              bounds=costs_mod.predictor_bounds(ctx.costs, b.predicts))
            figures.append(BaselineFigures(b.name, b.description, acc, cost, int(sel.sum())))
        guards = {}
        for role, m in models_out.items():
            if m is None or not ctx.baselines:
                continue
            rp = d.roles[role]
            sel = mask & (d.truth >= 0) & rp.has & ~rp.degraded
            comps = []
            for b in ctx.baselines:
                s2 = sel & (b.pred >= 0)
                if not s2.any():
                    continue
                if cfg.decide_on == "cost" and ctx.costs is not None:
                    comps.append(baselines_mod.compare_cost(ctx.costs, d.truth[s2], rp.pred[s2], b.pred[s2], pi_all[s2], alpha, b.name))
                else:
                    comps.append(baselines_mod.compare_accuracy(d.truth[s2], rp.pred[s2], b.pred[s2], pi_all[s2], alpha, b.name))
            vs = baselines_mod.compare(comps)
            if vs is not None:
                guards[role] = vs
        return figures, guards

    # --- model-assisted estimation (pipeline.evaluation.ppi) ------------------------------------------------------
    def _assist(self, d: _Data, mask: np.ndarray, notes: list[str]) -> dict[str, "_Assist"]:
        """Per role: the cross-fitted proxy on the role's usable frames of the window and the inclusion
        probabilities the model-assisted estimates use; roles for which it does not apply are left out (and a
        note says why)."""
        cfg = self.config
        out: dict[str, _Assist] = {}
        if cfg.estimator != "model_assisted":
            return out
        other = {Role.INCUMBENT.value: Role.SHADOW.value, Role.SHADOW.value: Role.INCUMBENT.value}
        for role in ROLES:
            rp = d.roles[role]
            usable = mask & rp.has & ~rp.degraded & ~np.isnan(rp.probs).any(axis=1)
            lab = usable & (d.truth >= 0)
            n_lab = int(lab.sum())
            if n_lab == 0:
                continue
            if n_lab < cfg.proxy_min_labels:
                notes.append(f"{role}: {n_lab} labelled frames (< proxy_min_labels {cfg.proxy_min_labels}): classical estimates")
                continue
            if np.isnan(d.incl[lab]).any():
                notes.append(f"{role}: some labelled frames have no sample row (imported labels): no sampling design to "
                             "combine with every frame's predictions; classical estimates")
                continue
            sampled = usable & ~np.isnan(d.incl)
            share = n_lab / int(sampled.sum())
            if share < 1.0:
                notes.append(f"{role}: {int(sampled.sum()) - n_lab} sampled frame(s) without a truth yet (pending or "
                             f"unsure): model-assisted estimates scale the inclusion probabilities by {share:.3f}")
            op = d.roles[other[role]]
            other_pred = np.where(op.has & ~op.degraded, op.pred, -1)[usable] if op.has.any() else None
            other_probs = np.where((op.has & ~op.degraded)[:, None], op.probs, np.nan)[usable] if op.has.any() else None
            # built a chunk of rows at a time inside crossfit_proxy: the full matrix would be ~1.4 GB at 5M frames
            X = ppi.CorrectnessFeatures(rp.probs[usable], other_pred, {k: d.image_stats[k][usable] for k in STAT_NAMES},
                                        other_probs=other_probs)
            names = X.names
            correct = (rp.pred[usable] == d.truth[usable]).astype(np.float64)
            folds = (d.fold_hash()[usable] % cfg.proxy_folds).astype(np.int64)  # = ppi.fold_ids(frame ids), hashed once
            proxy = ppi.crossfit_proxy(X, correct, lab[usable], folds, names)
            pi = np.where(lab, d.incl * share, np.nan)[usable]
            out[role] = _Assist(np.flatnonzero(usable), lab[usable], correct, pi, proxy)
        return out

    def _assisted_accuracy(self, a: "_Assist", sub: np.ndarray | None = None) -> tuple[Estimate, tuple[float, ...]]:
        s = slice(None) if sub is None else sub
        r = ppi.model_assisted_accuracy(a.correct[s], a.labelled[s], a.pi[s], a.proxy.values[s], alpha=self.config.alpha)
        n_eff = ppi.proportion_n_eff(r.value, r.se)
        method = (f"model-assisted (active PPI++: {r.n} labels + {r.N} frames' predictions; proxy AUC "
                  f"{a.proxy.auc:.2f}); Wilson at the effective size")
        return Estimate(r.value, r.low, r.high, r.se, r.n, n_eff if math.isfinite(n_eff) else float(r.n), method), r.lam

    def _role_figures(self, d: _Data, ctx: _Context, role: str, rp: _RolePreds, mask: np.ndarray, pi_all: np.ndarray,
                      notes: list[str], drift: DriftFigures, assist: dict[str, "_Assist"]) -> tuple[ModelFigures, dict[str, str]]:
        cfg = self.config
        alpha = cfg.alpha
        C = len(d.classes)
        sel = mask & (d.truth >= 0) & rp.has & ~rp.degraded
        y_true, y_pred = d.truth[sel], rp.pred[sel]
        correct = y_pred == y_true
        pi = pi_all[sel]
        w = _weights_or_none(pi)
        methods: dict[str, str] = {}
        acc = stats.accuracy_estimate(correct, pi, alpha=alpha) if sel.any() else None
        acc_classical, proxy_info = None, None
        a = assist.get(role)
        if a is not None and acc is not None:
            acc_classical = acc
            acc, lam = self._assisted_accuracy(a)
            proxy_info = ProxyInfo(a.proxy.method, a.proxy.features, a.proxy.folds, a.proxy.labels, a.proxy.auc,
                                   a.proxy.brier, lam)
        if acc is not None:
            methods["accuracy"] = acc.method
        names = np.array(d.classes + ["<none>"], dtype=object)
        true_names = list(names[y_true])
        pred_names = list(names[np.where(y_pred >= 0, y_pred, C)])
        recall = stats.per_class_recall(true_names, pred_names, d.classes, weights=w, alpha=alpha) if sel.any() else {}
        per_camera = {}
        cam_sel = d.camera_codes[sel]
        assist_rows = None
        if a is not None:  # per camera, the positions of its frames among the assisted frames (ascending)
            ca = d.camera_codes[a.frames]
            order = np.argsort(ca, kind="stable")
            bounds = np.searchsorted(ca[order], np.arange(len(d.camera_names) + 1))
            assist_rows = [order[bounds[k]:bounds[k + 1]] for k in range(len(d.camera_names))]
        for code in np.unique(cam_sel).tolist():  # codes follow the sorted camera names
            cam = d.camera_names[code]
            cm = cam_sel == code
            per_camera[str(cam)] = stats.accuracy_estimate(correct[cm], pi[cm], alpha=alpha)
            if a is not None:
                sub = assist_rows[code]
                if int(a.labelled[sub].sum()) >= cfg.proxy_min_labels:
                    per_camera[str(cam)] = self._assisted_accuracy(a, sub)[0]
        in_cls = y_pred >= 0  # a non-degraded prediction outside the class list counts as wrong, shown apart
        t_in, p_in = list(names[y_true[in_cls]]), list(names[y_pred[in_cls]])
        confusion = Confusion(
            classes=tuple(d.classes),
            matrix=_matrix(stats.confusion(t_in, p_in, d.classes), int),
            weighted_matrix=_matrix(stats.confusion(t_in, p_in, d.classes, weights=1.0 / pi[in_cls]), float) if w is not None else None,
            predictions_outside_classes=int((~in_cls).sum()),
        )

        card = ctx.cards[role]
        gap, offline = None, None
        if card is not None:
            offline = Offline(card.test_accuracy, card.test_size, dict(card.per_class_accuracy) if card.per_class_accuracy is not None else None)
            if card.test_accuracy is None or not card.test_size:
                notes.append(f"{role}: model card has no test_accuracy/test_size; gap not computed")
            elif acc is not None:
                gap = stats.gap_estimate(card.test_accuracy, card.test_size, acc, alpha=alpha)
        if acc is None:
            notes.append(f"{role}: no labelled, non-degraded predictions in this window; accuracy not computed")

        # label-free estimate on every non-degraded prediction of the window
        usable = mask & rp.has & ~rp.degraded & ~np.isnan(rp.probs).any(axis=1)
        est = None
        if usable.any():
            probs = rp.probs[usable]
            if card is not None and card.atc_threshold is not None:
                est = LabelFreeEstimate(estimate_mod.atc_estimate(probs, card.atc_threshold, card.atc_score),
                                        f"ATC ({card.atc_score}, threshold {card.atc_threshold:.4g} from the model card)", int(usable.sum()))
            else:
                est = LabelFreeEstimate(estimate_mod.average_confidence(probs), "mean confidence (no ATC threshold in the model card)", int(usable.sum()))
                notes.append(f"{role}: no ATC threshold in the model card; estimated accuracy is the mean confidence")
            methods["estimated_accuracy"] = est.method
            est = _check_estimate(est, acc, drift, role)

        acc_cs, gap_cs = self._sequences(d, ctx, role, rp, mask, pi_all, card)

        cost = None
        if ctx.costs is not None and sel.any():
            stream = None
            if a is not None:  # model-assisted like the accuracy, over the same frames
                stream = _stream_costs(ctx.costs, a, d.truth[a.frames], rp.pred[a.frames], rp.probs[a.frames])
            cost = costs_mod.cost_figures(ctx.costs, y_true, y_pred, pi, alpha, stream)
            methods["cost"] = cost.method

        calib = None
        if sel.any() and not np.isnan(rp.probs[sel]).any():
            conf = rp.probs[sel].max(axis=1).astype(np.float64)
            calib = _calibration(conf, correct.astype(np.float64), 1.0 / pi, cfg.calibration_bins)

        figures = ModelFigures(
            model=ctx.models[role],
            n_labeled=int(sel.sum()),
            n_correct=int(correct.sum()),
            accuracy=acc,
            per_class_recall=recall,
            per_camera=per_camera,
            confusion=confusion,
            offline=offline,
            gap=gap,
            estimated_accuracy=est,
            calibration=calib,
            accuracy_cs=acc_cs,
            gap_cs=gap_cs,
            accuracy_classical=acc_classical,
            proxy=proxy_info,
            cost=cost,
        )
        return figures, methods

    def _sequences(self, d: _Data, ctx: _Context, role: str, rp: _RolePreds, mask: np.ndarray, pi_all: np.ndarray,
                   card: ModelCard | None) -> tuple[Estimate | None, Estimate | None]:
        """Anytime-valid accuracy and gap of one role over the window's stream of usable frames (time order)."""
        cfg = self.config
        order = _stream_order(d, mask & rp.has & ~rp.degraded)
        lab = d.truth[order] >= 0
        if not lab.any():
            return None, None
        correct = np.where(lab, (rp.pred[order] == d.truth[order]).astype(np.float64), np.nan)
        if ctx.pi_floor is None:  # equal probabilities: the labelled frames are an i.i.d. sample, in label time
            kw: dict = {"correct": correct[lab], "inclusion_prob": None}
        else:
            kw = {"correct": correct, "inclusion_prob": np.where(lab, pi_all[order], np.nan), "pi_floor": ctx.pi_floor}
        acc = _cs_estimate(sequential.accuracy_cs(alpha=cfg.alpha, **kw))
        gap = None
        if card is not None and card.test_accuracy is not None and card.test_size:
            gap = _cs_estimate(sequential.gap_cs(card.test_accuracy, card.test_size, alpha=cfg.alpha, **kw))
        return acc, gap

    def _paired(self, d: _Data, ctx: _Context, mask: np.ndarray, pi_all: np.ndarray) -> tuple[stats.PairedResult | None, Decision | None]:
        """McNemar (fixed-sample report) and the anytime-valid decision on challenger - champion accuracy."""
        cfg = self.config
        inc, sh = d.roles[Role.INCUMBENT.value], d.roles[Role.SHADOW.value]
        if not sh.has.any():
            return None, None
        both = mask & inc.has & sh.has & ~inc.degraded & ~sh.degraded
        sel = both & (d.truth >= 0)
        if cfg.decide_on == "cost" and ctx.costs is not None:
            paired = None
            if sel.any():
                w = _weights_or_none(pi_all[sel])
                paired = stats.paired_test(inc.pred[sel] == d.truth[sel], sh.pred[sel] == d.truth[sel], weights=w, alpha=cfg.alpha)
            return paired, self._cost_decision(d, ctx, both, pi_all)
        if not sel.any():
            # no paired label yet; every frame with both predictions still bounds the difference: the models can
            # differ in accuracy only where their predictions differ
            if both.any():
                order = _stream_order(d, both)
                bound = sequential.disagreement_bound((inc.pred[order] != sh.pred[order]).astype(np.float64), cfg.alpha)
                if bound.high <= cfg.delta:
                    return None, Decision("equivalent", None, f"the models disagree on at most {bound.high:.2%} of frames "
                                          f"(anytime-valid bound over {bound.n} frames, <= delta {cfg.delta:g}): no difference "
                                          "worth labels", None, bound.low, bound.high, cfg.delta, 0, bound.method)
            return None, Decision("need_more_labels", None, "no labelled frame has both predictions yet")
        ci = inc.pred[sel] == d.truth[sel]
        cs_ = sh.pred[sel] == d.truth[sel]
        w = _weights_or_none(pi_all[sel])
        paired = stats.paired_test(ci, cs_, weights=w, alpha=cfg.alpha)

        order = _stream_order(d, both)
        lab = d.truth[order] >= 0
        z_inc = np.where(lab, (inc.pred[order] == d.truth[order]).astype(np.float64), np.nan)
        z_sh = np.where(lab, (sh.pred[order] == d.truth[order]).astype(np.float64), np.nan)
        dis = (inc.pred[order] != sh.pred[order]).astype(np.float64)
        # two anytime-valid intervals at alpha/2 each, intersected (valid at alpha): the paired CS from the labels,
        # and the one that adds what every frame says (the models can differ only where they disagree)
        a2 = cfg.alpha / 2
        if ctx.pi_floor is None:  # equal probabilities: the labelled frames are an i.i.d. sample, in label time
            cs = sequential.paired_cs(z_inc[lab], z_sh[lab], None, a2)
        else:
            cs = sequential.paired_cs(z_inc, z_sh, np.where(lab, pi_all[order], np.nan), a2, pi_floor=ctx.pi_floor)
        design = not np.isnan(d.incl[order][lab]).any()  # every labelled frame came from the sampler
        if design:
            pis = np.where(lab, d.incl[order], np.nan)
            cs2 = sequential.paired_cs_with_disagreement(z_inc, z_sh, dis, pis, a2, pi_floor=ctx.pi_floor)
        else:  # imported labels: no sampling design to weight by; the disagreement bound alone
            cs2 = sequential.disagreement_bound(dis, a2)
        low, high = max(cs.low, cs2.low), min(cs.high, cs2.high)
        method = (f"{cs.method} and {cs2.method} confidence sequences at alpha/2 each, intersected "
                  f"(the models disagree on {dis.mean():.2%} of {dis.size} frames)")
        sd = sequential.sequential_decision(low, high, cs.n_labels, delta=cfg.delta, value=cs.value, alpha=cfg.alpha, method=method)
        decision = Decision(sd.action, sd.more_labels, sd.reason, _finite(sd.value), sd.low, sd.high, cfg.delta, cs.n_labels, method)
        return paired, decision

    def _cost_decision(self, d: _Data, ctx: _Context, both: np.ndarray, pi_all: np.ndarray) -> Decision:
        """The anytime-valid decision on champion - challenger cost (``decide_on="cost"``), as :meth:`_paired` does it on
        accuracy: the per-frame difference ``(cost_champion - cost_challenger) / range`` in [-1, 1] (0 wherever the
        predictions agree), a confidence sequence from the labels intersected with the one that adds every frame's
        disagreement, and the margin ``delta / (1000 * range)``. Figures are reported per 1,000 frames."""
        cfg, cm = self.config, ctx.costs
        if cm is None:
            raise ConfigError("decide_on='cost' needs EvalConfig.costs")
        inc, sh = d.roles[Role.INCUMBENT.value], d.roles[Role.SHADOW.value]
        scale = costs_mod.PER * cm.span  # a scaled difference of 1 = this many cost units per 1,000 frames
        delta = min(cfg.delta / scale, 1.0 - 1e-9)
        unit = cm.currency
        if not both.any():
            return Decision("need_more_labels", None, "no frame has both predictions yet", on="cost", unit=unit)
        order = _stream_order(d, both)
        lab = d.truth[order] >= 0
        dis = (inc.pred[order] != sh.pred[order]).astype(np.float64)
        a2 = cfg.alpha / 2
        if not lab.any():
            bound = sequential.disagreement_bound(dis, cfg.alpha)
            if bound.high <= delta:
                return Decision("equivalent", None, f"the models disagree on at most {bound.high:.2%} of frames (anytime-valid bound "
                                f"over {bound.n} frames): their costs differ by at most {bound.high * scale:.4g} {unit} per 1,000 "
                                f"frames, within delta {cfg.delta:g}", None, -bound.high * scale, bound.high * scale, cfg.delta, 0,
                                bound.method, on="cost", unit=unit)
            return Decision("need_more_labels", None, "no labelled frame has both predictions yet", on="cost", unit=unit)
        diff = np.full(order.size, np.nan)
        t, p_champ, p_chall = d.truth[order][lab], inc.pred[order][lab], sh.pred[order][lab]
        diff[lab] = (costs_mod.frame_costs(cm, t, p_champ) - costs_mod.frame_costs(cm, t, p_chall)) / cm.span
        if ctx.pi_floor is None:
            cs = sequential.difference_cs(diff[lab], None, a2)
        else:
            cs = sequential.difference_cs(diff, np.where(lab, pi_all[order], np.nan), a2, pi_floor=ctx.pi_floor)
        if not np.isnan(d.incl[order][lab]).any():
            cs2 = sequential.difference_cs_with_disagreement(diff, dis, np.where(lab, d.incl[order], np.nan), a2, pi_floor=ctx.pi_floor)
        else:
            cs2 = sequential.disagreement_bound(dis, a2)
        low, high = max(cs.low, cs2.low), min(cs.high, cs2.high)
        method = (f"{cs.method} and {cs2.method} confidence sequences at alpha/2 each on (champion - challenger cost) / "
                  f"{cm.span:g} {unit}, intersected (the models disagree on {dis.mean():.2%} of {dis.size} frames)")
        sd = sequential.sequential_decision(low, high, cs.n_labels, delta=delta, value=cs.value, alpha=cfg.alpha, method=method)
        lo_k, hi_k = low * scale, high * scale
        ci = f"[{lo_k:+,.2f}, {hi_k:+,.2f}] {unit} saved per 1,000 frames"
        n = cs.n_labels
        if sd.action == "promote":
            reason = f"challenger cheaper by more than {cfg.delta:g} {unit} per 1,000 frames: CS {ci} after {n} paired labels"
        elif sd.action == "equivalent":
            reason = f"the models' costs are within +-{cfg.delta:g} {unit} per 1,000 frames: CS {ci} after {n} paired labels"
        elif sd.action == "retire":
            reason = f"challenger cannot save {cfg.delta:g} {unit} per 1,000 frames: CS {ci} after {n} paired labels"
        else:
            est = f"; ~{sd.more_labels} more paired labels if the estimate holds" if sd.more_labels is not None else ""
            reason = f"CS {ci} after {n} paired labels straddles the margin {cfg.delta:g}{est}"
        value = _finite(sd.value)
        return Decision(sd.action, sd.more_labels, reason, None if value is None else value * scale, lo_k, hi_k, cfg.delta, n, method,
                        on="cost", unit=unit)

    def _drift(self, d: _Data, ctx: _Context, mask: np.ndarray, ref: np.ndarray, cur: np.ndarray, notes: list[str]) -> DriftFigures:
        """Drift of the window against training (the cards' reference profiles), or against the run's start."""
        if self.config.drift_baseline == "training" and ctx.training_refs:
            return self._training_drift(d, ctx, mask)
        return self._run_start_drift(d, ref, cur, notes)

    def _training_drift(self, d: _Data, ctx: _Context, mask: np.ndarray) -> DriftFigures:
        cfg = self.config
        probs, prob_ts, prob_cams = {}, {}, {}
        for role, _ref in ctx.training_refs.items():
            rp = d.roles[role]
            ok = mask & rp.has & ~rp.degraded & ~np.isnan(rp.probs).any(axis=1)
            if ok.any():
                probs[role], prob_ts[role], prob_cams[role] = rp.probs[ok], d.ts[ok], d.camera_codes[ok]
        img_ok = mask & np.all([~np.isnan(d.image_stats[k]) for k in STAT_NAMES], axis=0) if d.n else mask
        image_role = Role.INCUMBENT.value if Role.INCUMBENT.value in ctx.training_refs else None
        td = None
        if probs or img_ok.any():
            td = training_drift(ctx.training_refs, probs, {k: d.image_stats[k][img_ok] for k in STAT_NAMES},
                                cameras=d.camera_codes[img_ok], camera_names=d.camera_names, ts=d.ts[img_ok], alpha=cfg.alpha, min_effect=cfg.drift_min_effect,
                                prob_ts=prob_ts, prob_cameras=prob_cams, image_role=image_role)
        return DriftFigures({}, None, {}, 0, int(mask.sum()), skipped=None if td is not None else "no usable frames in this window",
                            baseline="training", training=td)

    def _run_start_drift(self, d: _Data, ref: np.ndarray, cur: np.ndarray, notes: list[str]) -> DriftFigures:
        """Drift of the window's post-reference frames against the reference period.

        Every test gets the frames' timestamps and cameras, so the drift module can discount correlated
        consecutive frames (effective sample sizes); tests it skips (too few frames) are kept with their
        ``skipped`` reason and carry no p-value.
        """
        alpha = self.config.alpha
        if not cur.any():
            return DriftFigures({}, None, {}, int(ref.sum()), int(cur.sum()), skipped="no frames after the reference period in this window")

        def kw(r: np.ndarray, c: np.ndarray) -> dict:
            return {"ref_ts": d.ts[r], "cur_ts": d.ts[c], "ref_groups": d.camera_codes[r], "cur_groups": d.camera_codes[c]}

        softmax = {}
        for role in ROLES:
            rp = d.roles[role]
            ok = rp.has & ~rp.degraded & ~np.isnan(rp.probs).any(axis=1)
            r, c = ref & ok, cur & ok
            if r.any() and c.any():
                softmax[role] = drift_mod.ks_softmax_drift(rp.probs[r], rp.probs[c], alpha=alpha, classes=d.classes, **kw(r, c))
        class_distribution = None
        inc = d.roles[Role.INCUMBENT.value]
        ok = inc.has & ~inc.degraded & (inc.pred >= 0)
        r, c = ref & ok, cur & ok
        if r.any() and c.any():
            class_distribution = drift_mod.class_distribution_drift(inc.pred[r], inc.pred[c], d.classes, alpha=alpha, **kw(r, c))
        image = {}
        rows = d.camera_rows()
        for code in np.unique(d.camera_codes[cur]).tolist():  # codes follow the sorted camera names
            cam = d.camera_names[code]
            idx = rows[code]
            rc, cc = idx[ref[idx]], idx[cur[idx]]  # the camera's reference and current frames, in order
            if not rc.size:
                notes.append(f"camera {cam}: no frames in the reference period; image-statistics drift not computed")
                continue
            rs = {k: d.image_stats[k][rc] for k in STAT_NAMES}
            cs = {k: d.image_stats[k][cc] for k in STAT_NAMES}
            keep = [k for k in STAT_NAMES if not np.isnan(rs[k]).any() and not np.isnan(cs[k]).any()]
            if keep:
                image[str(cam)] = drift_mod.image_stat_drift(
                    {k: rs[k] for k in keep}, {k: cs[k] for k in keep}, alpha=alpha,
                    ref_ts=d.ts[rc], cur_ts=d.ts[cc],
                )
        out = DriftFigures(softmax, class_distribution, image, int(ref.sum()), int(cur.sum()))
        skipped = out.skipped_tests()
        if skipped:
            notes.append(f"drift tests skipped for too few frames: {', '.join(skipped)}")
        return out
