"""The evaluator: join predictions with human labels and compute every figure a team looks at.

Store in, :class:`EvaluationResult` out (JSON-serialisable ``data`` + ``meta``); MLflow logging is the
edge at the bottom of this module (:func:`log_to_mlflow`), plots and the HTML report live in
:mod:`pipeline.evaluation.report`, alerts in :mod:`pipeline.evaluation.alerts`. The statistics are
the pure functions of :mod:`pipeline.evaluation.stats`, :mod:`~pipeline.evaluation.drift` and
:mod:`~pipeline.evaluation.estimate`; nothing here re-implements them.

Rules the figures follow (they are repeated in every result's ``meta.methods``):

* **Scope.** By default the runs in the store that used the newest run's (incumbent, shadow) pair;
  ``EvalConfig.run_ids`` picks runs explicitly. Frames are ordered by their timestamp ``frames.ts``.
* **Truth.** A frame's truth is the majority of its non-``unsure`` labels. Frames whose labels are all
  ``unsure``, tie, or name no known class are *excluded* and counted (``counts.excluded``).
* **Degraded predictions** (stale, unknown, CPU fallback) are excluded from accuracy and counted.
* **Weights.** A labelled frame's inclusion probability comes from ``samples``; a labelled frame without a
  sample row (e.g. imported labels) gets probability 1, and a note says how many. Equal probabilities give
  Wilson intervals; unequal ones an inverse-probability-weighted (Hajek) estimate (``stats.accuracy_estimate``).
* **Gap** = offline test accuracy from the model card − production accuracy (``stats.gap_estimate``, both
  sample sizes). No card, no gap: a note says why.
* **Drift** compares the evaluated frames *after* the reference period with the reference period (the first
  ``EvalConfig.reference`` share of the frames, a duration from the first frame, or explicit timestamps).
  Windows that lie inside the reference period get no drift figures.
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
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sqlalchemy as sa

from pipeline import store as st
from pipeline.evaluation import drift as drift_mod
from pipeline.evaluation import estimate as estimate_mod
from pipeline.evaluation import stats
from pipeline.imagestats import STAT_NAMES
from pipeline.modelcard import ModelCard, read_card
from pipeline.types import UNSURE, ConfigError, ModelCardError, Result, Role, ShadowcamError, StoreError

log = logging.getLogger(__name__)

ROLES = (Role.INCUMBENT.value, Role.SHADOW.value)
DEFAULT_EXPERIMENT = "shadowcam-deployment"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {None: 1.0, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """``"300s"``, ``"10m"``, ``"1.5h"``, ``"2d"`` or a bare number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(f"{what}: expected a duration like 300s, 10m, 1h or 2d, got {text!r}")
        value = float(m.group(1)) * _UNIT_S[m.group(2).lower() if m.group(2) else None]
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{what}: must be a positive duration, got {text!r}")
    return value


def parse_reference(text: str | float) -> float | tuple[str, float]:
    """``--reference``: a fraction in (0, 1) (``"0.2"``) or a duration (``"10m"``) -> 0.2 or ("duration", 600.0)."""
    s = str(text).strip()
    try:
        f = float(s)
    except ValueError:
        return ("duration", parse_duration(s, "--reference"))
    if 0 < f < 1:
        return f
    raise ConfigError(f"--reference: a bare number must be a fraction in (0, 1) (or give a duration like 10m), got {text!r}")


@dataclass
class EvalConfig:
    """What an evaluation computes and how. Every field has a default; the CLI fills them from options."""

    alpha: float = 0.05  # 1 - confidence level of every interval and the level of every test
    # Drift reference: a fraction in (0, 1) of the scope's frames (by time), ("duration", seconds) from the
    # first frame, or ("range", start_ts, end_ts) explicit timestamps.
    reference: float | tuple = 0.2
    min_effect: float = 0.0  # smallest accuracy difference worth promoting for (stats.recommend)
    power: float = 0.8  # power used to size "need more labels"
    cumulative: bool = False  # evaluate_windows: cumulative results instead of per-window slices
    incumbent_card: str | None = None  # ONNX file whose card holds the incumbent's offline figures
    shadow_card: str | None = None
    cache_dir: str | None = None  # where models:/ URIs are downloaded to (default <workdir>/.cache/models, as the runner)
    workdir: str | None = None  # MLflow store for models:/ URIs (pipeline.tracking.configure), default cache location
    run_ids: list[str] | None = None  # None: runs with the newest run's model pair
    calibration_bins: int = 10

    def __post_init__(self) -> None:
        if not (0 < self.alpha < 1):
            raise ConfigError(f"alpha must be in (0, 1), got {self.alpha}")
        if not (0 < self.power < 1):
            raise ConfigError(f"power must be in (0, 1), got {self.power}")
        if self.calibration_bins < 2:
            raise ConfigError(f"calibration_bins must be >= 2, got {self.calibration_bins}")
        ref = self.reference
        if isinstance(ref, (int, float)):
            if not (0 < ref < 1):
                raise ConfigError(f"reference fraction must be in (0, 1), got {ref}")
        elif isinstance(ref, (tuple, list)) and ref and ref[0] == "duration" and len(ref) == 2:
            parse_duration(ref[1], "reference duration")
        elif isinstance(ref, (tuple, list)) and ref and ref[0] == "range" and len(ref) == 3:
            if not float(ref[1]) < float(ref[2]):
                raise ConfigError(f"reference range must have start < end, got {ref[1]} .. {ref[2]}")
        else:
            raise ConfigError(f"reference must be a fraction, ('duration', s) or ('range', start, end), got {ref!r}")


class EvaluationResult(Result):
    """``data``: every figure (see :meth:`Evaluator.evaluate`); ``meta``: what produced them. JSON-ready."""

    def to_dict(self) -> dict:
        return {"data": self.data, "meta": self.meta}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def figure(self, *path: str, default: Any = None) -> Any:
        """``result.figure("models", "incumbent", "accuracy", "value")``; ``default`` where any step is missing/None."""
        cur: Any = self.data
        for p in path:
            if not isinstance(cur, dict) or cur.get(p) is None:
                return default
            cur = cur[p]
        return cur


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
    frame_ids: np.ndarray
    cameras: np.ndarray
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

    @property
    def n(self) -> int:
        return int(self.ts.shape[0])


def _scope_runs(store: st.PredictionStore, run_ids: Sequence[str] | None) -> list[dict]:
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


def _load(store: st.PredictionStore, run_ids: Sequence[str] | None) -> _Data:
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
    rids = [r["run_id"] for r in runs]
    f, p, s, lb = st.frames, st.predictions, st.samples, st.labels
    in_scope = f.c.run_id.in_(rids)
    with store.engine.connect() as conn:
        frows = conn.execute(
            sa.select(f.c.frame_id, f.c.camera_id, f.c.ts, *[f.c[k] for k in STAT_NAMES]).where(in_scope).order_by(f.c.ts, f.c.frame_id)
        ).all()
        n = len(frows)
        index = {r[0]: i for i, r in enumerate(frows)}
        frame_ids = np.array([r[0] for r in frows], dtype=object)
        cameras = np.array([r[1] for r in frows], dtype=object)
        ts = np.array([r[2] for r in frows], dtype=np.float64)
        image_stats = {k: np.array([np.nan if r[3 + j] is None else r[3 + j] for r in frows], dtype=np.float64) for j, k in enumerate(STAT_NAMES)}

        C = len(classes)
        roles = {
            role: _RolePreds(np.zeros(n, bool), np.full(n, -1, np.int64), np.full((n, C), np.nan, np.float32), np.zeros(n, bool))
            for role in ROLES
        }
        q = sa.select(p.c.frame_id, p.c.role, p.c.model_name, p.c.model_version, p.c.probs, p.c.label, p.c.degraded).join(
            f, f.c.frame_id == p.c.frame_id
        ).where(in_scope)
        for fid, role, mname, mver, probs, label, degraded in conn.execute(q):
            i = index.get(fid)
            rp = roles.get(role)
            if i is None or rp is None:
                continue
            rp.has[i] = True
            rp.pred[i] = cidx.get(label, -1)
            pr = st.probs_from_json(probs)
            if pr.shape[0] == C:
                rp.probs[i] = pr
            rp.degraded[i] = degraded is not None
            rp.models[f"{mname}:{mver}" if mver else mname] += 1

        incl = np.full(n, np.nan)
        strategy = np.full(n, None, dtype=object)
        q = sa.select(s.c.frame_id, s.c.inclusion_prob, s.c.strategy).join(f, f.c.frame_id == s.c.frame_id).where(in_scope)
        for fid, pi, strat in conn.execute(q):
            i = index.get(fid)
            if i is not None:
                incl[i], strategy[i] = pi, strat

        per_frame: dict[int, list[tuple[float, str, str]]] = defaultdict(list)
        q = sa.select(lb.c.frame_id, lb.c.label, lb.c.annotator, lb.c.ts).join(f, f.c.frame_id == lb.c.frame_id).where(in_scope)
        for fid, label, annotator, lts in conn.execute(q):
            i = index.get(fid)
            if i is not None:
                per_frame[i].append((lts, annotator, label))

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
        votes = Counter()
        for _, _, label in rows:
            if label == UNSURE:
                continue
            if label in cidx:
                votes[label] += 1
            else:
                invalid += 1
        if not votes:
            status[i] = "unsure" if any(r[2] == UNSURE for r in rows) else "unknown_class"
            continue
        top = votes.most_common()
        if len(top) > 1 and top[0][1] == top[1][1]:
            status[i] = "tie"
            continue
        truth[i], status[i] = cidx[top[0][0]], "ok"
    return _Data(classes, runs, frame_ids, cameras, ts, image_stats, roles, incl, strategy, truth, status, n_labels, pair_a, pair_b, invalid)


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


def _resolve_card(role: str, explicit: str | None, runs: list[dict], model: str | None, cfg: "EvalConfig", notes: list[str]) -> tuple[ModelCard | None, str | None]:
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
            from pipeline.tracking import parse_models_uri, resolve_model_uri  # lazy: needs mlflow

            name, _, _ = parse_models_uri(uri)
            if model and model.rpartition(":")[0] == name and model.rpartition(":")[2].isdigit():
                uri = f"models:/{name}/{model.rpartition(':')[2]}"
            workdir = Path(cfg.workdir or ".")
            cache = Path(cfg.cache_dir) if cfg.cache_dir else workdir / ".cache" / "models"
            path, _, _ = resolve_model_uri(uri, cache, workdir)
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
def _clean(x: Any) -> Any:
    """Make numpy scalars/arrays, dataclasses, tuples and NaN JSON-friendly (NaN/inf -> None)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _clean(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.floating, float)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, (Role,)):
        return x.value
    return x


def _iso(t: float | None) -> str | None:
    if t is None or not math.isfinite(t):
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _weights_or_none(pi: np.ndarray) -> np.ndarray | None:
    """1/pi when inclusion probabilities differ, None when uniform (unweighted methods apply)."""
    if pi.size == 0 or np.allclose(pi, pi[0]):
        return None
    return 1.0 / pi


def _calibration(conf: np.ndarray, correct: np.ndarray, w: np.ndarray, bins: int) -> dict:
    """Reliability diagram data: weighted accuracy and mean confidence per confidence bin, and the ECE."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    ece, wtot = 0.0, float(w.sum())
    for b in range(bins):
        m = idx == b
        if not m.any():
            out.append({"low": edges[b], "high": edges[b + 1], "n": 0, "confidence": None, "accuracy": None})
            continue
        wb = w[m]
        acc = float(np.sum(wb * correct[m]) / wb.sum())
        mc = float(np.sum(wb * conf[m]) / wb.sum())
        ece += float(wb.sum()) / wtot * abs(acc - mc)
        out.append({"low": edges[b], "high": edges[b + 1], "n": int(m.sum()), "confidence": mc, "accuracy": acc})
    return {"bins": out, "ece": ece if wtot > 0 else None, "n": int(conf.size)}


def _reference_range(d: _Data, reference: float | tuple) -> tuple[float, float]:
    if d.n == 0:
        return (math.nan, math.nan)
    t0 = float(d.ts[0])
    if isinstance(reference, (int, float)):
        k = max(1, int(math.ceil(reference * d.n)))
        return (t0, float(np.nextafter(d.ts[k - 1], np.inf)))  # the first k frames, inclusive
    if reference[0] == "duration":
        return (t0, t0 + parse_duration(reference[1]))
    return (float(reference[1]), float(reference[2]))


# --------------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------------
class Evaluator:
    """``Evaluator(EvalConfig()).evaluate(store)`` -> one :class:`EvaluationResult` over the whole scope.

    ``evaluate_windows(store, window_s)`` -> one result per time window (see the module docstring).
    Cards are resolved once per call; the store is read once per call.
    """

    def __init__(self, config: EvalConfig | None = None):
        self.config = config or EvalConfig()

    # --- public verbs ------------------------------------------------------------------------------
    def evaluate(self, store: st.PredictionStore, window: float | tuple[float, float] | None = None, now: float | None = None) -> EvaluationResult:
        """Evaluate the scope, or a part of it.

        ``window``: None (everything), ``(start_ts, end_ts)`` (frames with start <= ts < end) or a number of
        seconds (the last ``window`` seconds up to ``now``; ``now`` defaults to the newest frame's time).
        """
        d = _load(store, self.config.run_ids)
        ctx = self._context(d)
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
        return self._compute(d, ctx, mask, {"index": 0, "start": lo, "end": hi, "length_s": None if window is None else hi - lo})

    def evaluate_windows(self, store: st.PredictionStore, window_s: float) -> list[EvaluationResult]:
        """One result per consecutive ``window_s``-second slice of frame time (empty slices skipped)."""
        window_s = parse_duration(window_s, "window")
        d = _load(store, self.config.run_ids)
        ctx = self._context(d)
        if d.n == 0:
            return [self._compute(d, ctx, np.zeros(0, bool), {"index": 0, "start": None, "end": None, "length_s": window_s})]
        t0 = float(d.ts[0])
        slot = np.floor((d.ts - t0) / window_s).astype(np.int64)
        results = []
        from tqdm import tqdm

        slots = np.unique(slot)
        for k in tqdm(slots, desc="evaluating windows", unit="window", disable=len(slots) < 20):
            lo, hi = t0 + k * window_s, t0 + (k + 1) * window_s
            mask = slot <= k if self.config.cumulative else slot == k
            results.append(self._compute(d, ctx, mask, {"index": int(k), "start": t0 if self.config.cumulative else lo, "end": hi, "length_s": window_s}))
        return results

    # --- internals ---------------------------------------------------------------------------------
    def _context(self, d: _Data) -> dict:
        cfg = self.config
        notes: list[str] = []
        models = {}
        for role in ROLES:
            c = d.roles[role].models
            models[role] = c.most_common(1)[0][0] if c else None
            if len(c) > 1:
                notes.append(f"{role}: predictions come from {len(c)} model versions ({', '.join(f'{m} x{k}' for m, k in c.most_common())}); figures pool them")
        if d.n == 0:
            notes.append(f"no frames recorded for run(s) {', '.join(r['run_id'] for r in d.runs)}: nothing to evaluate")
        elif models[Role.SHADOW.value] is None:
            notes.append("no shadow predictions in scope: only the incumbent is evaluated")
        cards, card_paths = {}, {}
        for role in ROLES:
            explicit = cfg.incumbent_card if role == Role.INCUMBENT.value else cfg.shadow_card
            if models[role] is None and not explicit:
                cards[role], card_paths[role] = None, None
                continue
            cards[role], card_paths[role] = _resolve_card(role, explicit, d.runs, models[role], cfg, notes)
            if cards[role] is not None and list(cards[role].class_names) != d.classes:
                raise ModelCardError(f"{role} model card ({card_paths[role]}) has classes {cards[role].class_names}, the store's runs have {d.classes}")
        if d.invalid_labels:
            notes.append(f"{d.invalid_labels} label(s) name no known class and were ignored")
        return {"models": models, "cards": cards, "card_paths": card_paths, "notes": notes, "reference": _reference_range(d, cfg.reference)}

    def _compute(self, d: _Data, ctx: dict, mask: np.ndarray, window: dict) -> EvaluationResult:
        cfg = self.config
        alpha = cfg.alpha
        notes = list(ctx["notes"])
        ref_lo, ref_hi = ctx["reference"]
        ref = (d.ts >= ref_lo) & (d.ts < ref_hi)
        cur = mask & ~ref

        inc, sh = d.roles[Role.INCUMBENT.value], d.roles[Role.SHADOW.value]
        has_truth = d.truth >= 0
        labeled = mask & has_truth
        pi_all = np.where(np.isnan(d.incl), 1.0, d.incl)
        no_sample = int((labeled & np.isnan(d.incl)).sum())
        if no_sample:
            notes.append(f"{no_sample} labelled frame(s) have no sample row (e.g. imported labels): inclusion probability 1 assumed")
        st_m = d.truth_status[mask]
        counts = {
            "frames": int(mask.sum()),
            "cameras": int(len(set(d.cameras[mask]))),
            "predictions": {r: int((d.roles[r].has & mask).sum()) for r in ROLES},
            "degraded": {r: int((d.roles[r].has & d.roles[r].degraded & mask).sum()) for r in ROLES},
            "shadow_coverage": (float((sh.has & inc.has & mask).sum() / (inc.has & mask).sum()) if (inc.has & mask).any() else None),
            "samples": int((mask & ~np.isnan(d.incl)).sum()),
            "labels": int(d.n_labels[mask].sum()),
            "labeled_frames": int((mask & (d.n_labels > 0)).sum()),
            "frames_with_truth": int(labeled.sum()),
            "double_labeled_frames": int((mask & (d.n_labels >= 2)).sum()),
            "excluded": {
                "unsure": int((st_m == "unsure").sum()),
                "tie": int((st_m == "tie").sum()),
                "unknown_class": int((st_m == "unknown_class").sum()),
            },
            "labels_without_sample": no_sample,
            "reference_frames": int(ref.sum()),
        }
        counts["excluded"]["total"] = sum(counts["excluded"].values())
        strategies = Counter(s for s in d.strategy[labeled] if s is not None)

        models_out: dict[str, Any] = {}
        methods: dict[str, Any] = {}
        for role in ROLES:
            rp = d.roles[role]
            if ctx["models"][role] is None and not rp.has.any():
                models_out[role] = None
                continue
            models_out[role], m = self._role_figures(d, ctx, role, rp, mask, ref, cur, pi_all, notes)
            for k, v in m.items():
                methods.setdefault(k, {})[role] = v

        paired, decision = self._paired(d, mask, pi_all)
        drift = self._drift(d, ref, cur, notes)
        agreement = None
        dbl = mask & (d.pair_a != None)  # noqa: E711 (object array)
        if dbl.any():
            agreement = _clean(stats.annotator_agreement(list(d.pair_a[dbl]), list(d.pair_b[dbl])))
        data = {
            "counts": counts,
            "models": models_out,
            "paired": paired,
            "decision": decision,
            "drift": drift,
            "agreement": agreement,
            "alerts": [],
        }
        meta = {
            "models": dict(ctx["models"]),
            "cards": {r: (None if ctx["cards"][r] is None else {
                "path": ctx["card_paths"][r], "name": ctx["cards"][r].name, "version": ctx["cards"][r].version,
                "test_accuracy": ctx["cards"][r].test_accuracy, "test_size": ctx["cards"][r].test_size,
                "temperature": ctx["cards"][r].temperature, "atc_threshold": ctx["cards"][r].atc_threshold,
                "atc_score": ctx["cards"][r].atc_score}) for r in ROLES},
            "window": {**window, "start_iso": _iso(window.get("start")), "end_iso": _iso(window.get("end")),
                       "cumulative": cfg.cumulative, "first_frame": float(d.ts[mask][0]) if mask.any() else None,
                       "last_frame": float(d.ts[mask][-1]) if mask.any() else None},
            "reference": {"start": ref_lo, "end": ref_hi, "start_iso": _iso(ref_lo), "end_iso": _iso(ref_hi), "spec": cfg.reference},
            "classes": list(d.classes),
            "runs": [r["run_id"] for r in d.runs],
            "alpha": alpha,
            "confidence_level": 1 - alpha,
            "sampling_strategies": dict(strategies),
            "methods": {
                "truth": "majority of non-unsure labels; all-unsure, tied and unknown-class frames excluded",
                "degraded": "degraded predictions excluded from accuracy",
                "accuracy": methods.get("accuracy", {}),
                "gap": "offline test accuracy (model card) - production accuracy; CI combines both sample sizes (stats.gap_estimate)",
                "paired": "McNemar exact test on frames labelled with both predictions; difference in accuracy with CI (stats.paired_test)",
                "drift_softmax": "per-class Kolmogorov-Smirnov on softmax outputs vs the reference period, Bonferroni-corrected",
                "drift_image": "per-camera image statistics (brightness, contrast, sharpness, noise) vs the reference period",
                "drift_class_distribution": "incumbent's predicted-class distribution vs the reference period",
                "estimated_accuracy": methods.get("estimated_accuracy", {}),
                "calibration": f"{cfg.calibration_bins} equal-width confidence bins, inverse-probability weighted",
            },
            "notes": sorted(set(notes), key=notes.index),
            "evaluated_at": time.time(),
            "config": _clean(dataclasses.asdict(cfg)),
        }
        return EvaluationResult(data=_clean(data), meta=_clean(meta))

    def _role_figures(self, d, ctx, role, rp, mask, ref, cur, pi_all, notes) -> tuple[dict, dict]:
        cfg = self.config
        alpha = cfg.alpha
        C = len(d.classes)
        sel = mask & (d.truth >= 0) & rp.has & ~rp.degraded
        y_true, y_pred = d.truth[sel], rp.pred[sel]
        correct = y_pred == y_true
        pi = pi_all[sel]
        w = _weights_or_none(pi)
        methods = {}
        acc = stats.accuracy_estimate(correct, pi, alpha=alpha) if sel.any() else None
        if acc is not None:
            methods["accuracy"] = acc.method
        names = np.array(d.classes + ["<none>"], dtype=object)
        true_names = list(names[y_true])
        pred_names = list(names[np.where(y_pred >= 0, y_pred, C)])
        recall = stats.per_class_recall(true_names, pred_names, d.classes, weights=w, alpha=alpha) if sel.any() else {}
        per_camera = {}
        for cam in sorted(set(d.cameras[sel])):
            cm = d.cameras[sel] == cam
            per_camera[cam] = stats.accuracy_estimate(correct[cm], pi[cm], alpha=alpha)
        in_cls = y_pred >= 0  # a non-degraded prediction outside the class list counts as wrong, shown apart
        conf_counts = stats.confusion(list(names[y_true[in_cls]]), list(names[y_pred[in_cls]]), d.classes)
        conf_weighted = stats.confusion(list(names[y_true[in_cls]]), list(names[y_pred[in_cls]]), d.classes, weights=1.0 / pi[in_cls]) if w is not None else None

        card = ctx["cards"][role]
        gap, offline = None, None
        if card is not None:
            offline = {"test_accuracy": card.test_accuracy, "test_size": card.test_size, "per_class_accuracy": card.per_class_accuracy}
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
                est = {"value": estimate_mod.atc_estimate(probs, card.atc_threshold, card.atc_score), "method": f"ATC ({card.atc_score}, threshold {card.atc_threshold:.4g} from the model card)", "n": int(usable.sum())}
            else:
                est = {"value": estimate_mod.average_confidence(probs), "method": "mean confidence (no ATC threshold in the model card)", "n": int(usable.sum())}
                notes.append(f"{role}: no ATC threshold in the model card; estimated accuracy is the mean confidence")
            methods["estimated_accuracy"] = est["method"]

        calib = None
        if sel.any() and not np.isnan(rp.probs[sel]).any():
            conf = rp.probs[sel].max(axis=1).astype(np.float64)
            calib = _calibration(conf, correct.astype(np.float64), 1.0 / pi, cfg.calibration_bins)

        out = {
            "model": ctx["models"][role],
            "n_labeled": int(sel.sum()),
            "n_correct": int(correct.sum()),
            "accuracy": acc,
            "per_class_recall": recall,
            "per_camera": per_camera,
            "confusion": {"classes": d.classes, "matrix": conf_counts, "weighted_matrix": conf_weighted, "rows": "human label", "columns": "prediction",
                          "predictions_outside_classes": int((~in_cls).sum())},
            "offline": offline,
            "gap": gap,
            "estimated_accuracy": est,
            "calibration": calib,
        }
        return out, methods

    def _paired(self, d: _Data, mask: np.ndarray, pi_all: np.ndarray) -> tuple[dict | None, dict | None]:
        cfg = self.config
        inc, sh = d.roles[Role.INCUMBENT.value], d.roles[Role.SHADOW.value]
        sel = mask & (d.truth >= 0) & inc.has & sh.has & ~inc.degraded & ~sh.degraded
        if not sh.has.any():
            return None, None
        if not sel.any():
            return None, _clean({"action": "need_more_labels", "more_labels": None, "reason": "no labelled frame has both predictions yet"})
        ci = inc.pred[sel] == d.truth[sel]
        cs = sh.pred[sel] == d.truth[sel]
        w = _weights_or_none(pi_all[sel])
        paired = stats.paired_test(ci, cs, weights=w, alpha=cfg.alpha)
        decision = stats.recommend(paired, alpha=cfg.alpha, min_effect=cfg.min_effect, power=cfg.power)
        return _clean(paired), _clean(decision)

    def _drift(self, d: _Data, ref: np.ndarray, cur: np.ndarray, notes: list[str]) -> dict:
        """Drift of the window's post-reference frames against the reference period.

        Every test gets the frames' timestamps and cameras, so the drift module can discount correlated
        consecutive frames (effective sample sizes); results it skips (too few frames) are kept with their
        ``skipped`` reason and carry no p-value.
        """
        alpha = self.config.alpha
        out: dict[str, Any] = {"softmax": {}, "class_distribution": None, "image": {}, "reference_frames": int(ref.sum()), "current_frames": int(cur.sum())}
        if not cur.any():
            out["skipped"] = "no frames after the reference period in this window"
            return out

        def kw(r: np.ndarray, c: np.ndarray) -> dict:
            return {"ref_ts": d.ts[r], "cur_ts": d.ts[c], "ref_groups": d.cameras[r], "cur_groups": d.cameras[c]}

        for role in ROLES:
            rp = d.roles[role]
            ok = rp.has & ~rp.degraded & ~np.isnan(rp.probs).any(axis=1)
            r, c = ref & ok, cur & ok
            if r.any() and c.any():
                out["softmax"][role] = _clean(drift_mod.ks_softmax_drift(rp.probs[r], rp.probs[c], alpha=alpha, classes=d.classes, **kw(r, c)))
        inc = d.roles[Role.INCUMBENT.value]
        ok = inc.has & ~inc.degraded & (inc.pred >= 0)
        r, c = ref & ok, cur & ok
        if r.any() and c.any():
            names = np.array(d.classes, dtype=object)
            out["class_distribution"] = _clean(
                drift_mod.class_distribution_drift(list(names[inc.pred[r]]), list(names[inc.pred[c]]), d.classes, alpha=alpha, **kw(r, c))
            )
        for cam in sorted(set(d.cameras[cur])):
            rc, cc = ref & (d.cameras == cam), cur & (d.cameras == cam)
            if not rc.any():
                notes.append(f"camera {cam}: no frames in the reference period; image-statistics drift not computed")
                continue
            keep = [k for k in STAT_NAMES if not np.isnan(d.image_stats[k][rc]).any() and not np.isnan(d.image_stats[k][cc]).any()]
            if keep:
                out["image"][cam] = _clean(drift_mod.image_stat_drift(
                    {k: d.image_stats[k][rc] for k in keep}, {k: d.image_stats[k][cc] for k in keep}, alpha=alpha,
                    ref_ts=d.ts[rc], cur_ts=d.ts[cc],
                ))
        skipped = [name for name, res in [*((f"softmax/{r}", v) for r, v in out["softmax"].items()), ("class_distribution", out["class_distribution"]),
                                          *((f"image/{c}", v) for c, v in out["image"].items())] if isinstance(res, dict) and res.get("skipped")]
        if skipped:
            notes.append(f"drift tests skipped for too few frames: {', '.join(skipped)}")
        return out


# --------------------------------------------------------------------------------------------------
# Flat metrics (MLflow keys) and MLflow logging
# --------------------------------------------------------------------------------------------------
_KEY_BAD = re.compile(r"[^\w.\- ]")


def metric_key_part(name: str) -> str:
    """A camera id or stat name made safe for an MLflow metric key (letters, digits, _ - . space)."""
    s = _KEY_BAD.sub("_", str(name)).strip(" .") or "_"
    return s


def flat_metrics(result: EvaluationResult) -> dict[str, float]:
    """The result's headline figures under their MLflow keys (missing figures are left out)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if value is not None and isinstance(value, (int, float)) and math.isfinite(float(value)):
            out[key] = float(value)

    for role in ROLES:
        m = result.figure("models", role)
        if not m:
            continue
        acc = m.get("accuracy") or {}
        put(f"prod_accuracy/{role}", acc.get("value"))
        put(f"prod_accuracy/{role}_ci_low", acc.get("low"))
        put(f"prod_accuracy/{role}_ci_high", acc.get("high"))
        put(f"prod_labels/{role}", m.get("n_labeled"))
        gap = m.get("gap") or {}
        put(f"train_to_prod_gap/{role}", gap.get("value"))
        put(f"train_to_prod_gap/{role}_ci_low", gap.get("low"))
        put(f"train_to_prod_gap/{role}_ci_high", gap.get("high"))
        put(f"estimated_accuracy/{role}", (m.get("estimated_accuracy") or {}).get("value"))
        put(f"calibration_ece/{role}", (m.get("calibration") or {}).get("ece"))
        for cam, e in (m.get("per_camera") or {}).items():
            put(f"prod_accuracy_camera/{metric_key_part(cam)}/{role}", (e or {}).get("value"))
    for role, res in (result.figure("drift", "softmax") or {}).items():
        put(f"drift/softmax_p/{role}", drift_p_value(res))
    put("drift/class_dist_p", drift_p_value(result.figure("drift", "class_distribution")))
    for cam, res in (result.figure("drift", "image") or {}).items():
        for stat, p in image_stat_p_values(res).items():
            put(f"drift/image/{metric_key_part(cam)}/{metric_key_part(stat)}", p)
    c = result.data["counts"]
    put("labels", c["labels"])
    put("labels_used", c["frames_with_truth"])
    put("frames", c["frames"])
    put("shadow_coverage", c["shadow_coverage"])
    put("excluded_labels", c["excluded"]["total"])
    for role in ROLES:
        put(f"degraded/{role}", c["degraded"].get(role))
    paired = result.data.get("paired") or {}
    put("paired/mcnemar_p", paired.get("p_mcnemar", paired.get("p_value")))
    put("paired/p_value", paired.get("p_value"))
    put("paired/diff", _diff_value(paired))
    put("paired/n", paired.get("n"))
    agreement = result.data.get("agreement") or {}
    put("annotator_agreement", agreement.get("agreement", agreement.get("percent_agreement")))
    put("annotator_kappa", agreement.get("kappa", agreement.get("cohen_kappa")))
    return out


def _diff_value(paired: dict) -> Any:
    d = paired.get("diff")
    return d.get("value") if isinstance(d, dict) else d


def drift_p_value(res: dict | None) -> float | None:
    """The corrected p-value of a drift result (``p_min_corrected``); None when the test was skipped."""
    if not res or res.get("skipped"):
        return None
    for key in ("p_min_corrected", "p_value"):
        if isinstance(res.get(key), (int, float)):
            return float(res[key])
    return None


def image_stat_p_values(res: dict | None) -> dict[str, float]:
    """Per-statistic p-values of an image-statistics drift result, Bonferroni-corrected over the statistics."""
    if not res or res.get("skipped"):
        return {}
    per = res.get("stats") or {}
    k = max(1, len(per))
    return {name: min(1.0, float(v["p_value"]) * k) for name, v in per.items() if isinstance(v, dict) and isinstance(v.get("p_value"), (int, float))}


def log_to_mlflow(
    results: Sequence[EvaluationResult],
    overall: EvaluationResult,
    experiment: str = DEFAULT_EXPERIMENT,
    workdir: str | Path | None = None,
    run_name: str | None = None,
    artifacts_dir: str | Path | None = None,
    alerts: Sequence[Any] = (),
    max_gap: float | None = None,
) -> str:
    """Log one evaluation as one MLflow run; returns its run id.

    Per-window figures are metric time series (step = window index, timestamp = window end); the overall
    figures are logged as ``overall/<key>``. Artifacts: everything :func:`report.write_report` makes
    (plots, evaluation.json, report.html) plus the evaluation config.
    """
    import tempfile

    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from pipeline import tracking
    from pipeline.evaluation import report

    tracking.configure(workdir)
    exp_id = tracking.get_or_create_experiment(experiment, workdir)
    inc, sh = overall.meta["models"].get("incumbent"), overall.meta["models"].get("shadow")
    win = overall.meta["window"]
    tags = {
        "incumbent_model": inc or "",
        "shadow_model": sh or "",
        "window": f"{win.get('start_iso')}..{win.get('end_iso')}",
        "window_s": str(results[0].meta["window"].get("length_s") if results else ""),
        "decision": ((overall.data.get("decision") or {}).get("action")) or "",
        "alerts": str(len(alerts)),
        "shadowcam.kind": "evaluation",
        "runs": ",".join(overall.meta["runs"]),
    }
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or f"evaluate {inc} vs {sh}", tags=tags) as run:
        client = MlflowClient()
        mlflow.log_params({"alpha": overall.meta["alpha"], "reference": json.dumps(overall.meta["reference"]["spec"]),
                           "windows": len(results), "cumulative": overall.meta["window"]["cumulative"]})
        batch: list[Metric] = []
        for res in results:
            step = int(res.meta["window"]["index"])
            stamp = int(1000 * (res.meta["window"].get("end") or res.meta["evaluated_at"]))
            batch += [Metric(k, v, stamp, step) for k, v in flat_metrics(res).items()]
        stamp = int(1000 * overall.meta["evaluated_at"])
        batch += [Metric(f"overall/{k}", v, stamp, 0) for k, v in flat_metrics(overall).items()]
        for i in range(0, len(batch), 900):  # MLflow accepts at most 1000 metrics per batch
            client.log_batch(run.info.run_id, metrics=batch[i : i + 900])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(artifacts_dir) if artifacts_dir else Path(tmp)
            report.write_report(results, overall, out, alerts=alerts, max_gap=max_gap)
            (out / "eval_config.json").write_text(json.dumps(overall.meta["config"], indent=2))
            mlflow.log_artifacts(str(out))
        return run.info.run_id
