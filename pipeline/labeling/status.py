"""The ``/status`` page's figures: one deployment in plain words, for the people who decide.

A *deployment* is one (incumbent, shadow) model pair: the runs of the store that served the same incumbent with the
same shadow (:func:`deployments`, oldest first; the evaluator's default scope is the newest). For one deployment
:func:`build_status` evaluates the store with the :class:`~pipeline.evaluation.evaluator.Evaluator` - nothing is
computed here that the evaluator computes - and turns the result into a plain dict the page renders (and
``/api/status`` returns):

* per camera and model: accuracy with its interval, the gap to the offline test accuracy, the cost of errors per
  1,000 frames (``ModelFigures.cost``, when a cost matrix is configured), the serving cost per 1,000 predictions
  (``EvaluationResult.serving_cost``, else :func:`pipeline.serving_cost.combine_runs` over the runs' summaries),
  the trend (accuracy over the last windows, drawn as an inline SVG sparkline, and an arrow only when the newest
  window's interval lies clear of the oldest one's), and the labels given this week;
* the current champion/challenger decision in words; the open alerts
  (:func:`pipeline.evaluation.alerts.check_alerts` with the thresholds of the deployment's newest run config, on the
  newest window when a window length is given, else on the whole deployment, as ``shadowcam evaluate`` does); the
  baselines and each model's baseline guard, when the evaluator scored them.

Figures that are absent (no cost matrix, no price, no baselines, no model card) say "not configured" or why, never 0.
:class:`StatusBoard` caches one snapshot per deployment and refreshes it in the background every ``refresh_s``
seconds (a page load never waits for a re-evaluation, only for the very first).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any

from pipeline.config import AlertConfig, EvalConfig
from pipeline.store import PredictionStore

log = logging.getLogger(__name__)

__all__ = ["Deployment", "StatusBoard", "build_status", "deployments", "sparkline_svg"]

WEEK_S = 7 * 24 * 3600.0
TREND_WINDOWS = 8
ROLE_WORDS = {"incumbent": "champion (serving)", "shadow": "challenger (shadow)"}
DECISION_WORDS = {
    "promote": "Switch to the challenger: it is better than the champion.",
    "retire": "Keep the champion and retire the challenger: the challenger is worse.",
    "equivalent": "The two models are as good as each other: either may serve.",
    "keep": "Keep the champion.",
    "need_more_labels": "Not decided yet: more labels are needed before the models can be told apart.",
}


@dataclass(frozen=True)
class Deployment:
    """One (incumbent, shadow) model pair and the runs that served it; ``key`` is its number, oldest first."""

    key: str
    incumbent: str | None
    shadow: str | None
    run_ids: tuple[str, ...]
    started_at: float
    last_started_at: float

    @property
    def title(self) -> str:
        return f"{self.incumbent or 'no model'}" + (f" with challenger {self.shadow}" if self.shadow else " (no challenger)")


def deployments(store: PredictionStore) -> list[Deployment]:
    """Every (incumbent, shadow) pair of the store's runs, in the order it first ran."""
    groups: dict[tuple[Any, Any], list[dict]] = {}
    for r in store.list_runs():
        groups.setdefault((r["incumbent_model"], r["shadow_model"]), []).append(r)
    out = []
    for k, ((inc, sh), rs) in enumerate(groups.items(), 1):
        out.append(Deployment(str(k), inc, sh, tuple(r["run_id"] for r in rs), float(rs[0]["started_at"]),
                              float(rs[-1]["started_at"])))
    return out


# --------------------------------------------------------------------------------------------------
# words and numbers
# --------------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{100 * x:.1f}%"


def _est(e: Any) -> dict[str, Any] | None:
    """An Estimate-like figure as {value, low, high, n}; None when absent or not finite."""
    if e is None:
        return None
    v = getattr(e, "value", None)
    if v is None or not math.isfinite(float(v)):
        return None
    lo, hi = getattr(e, "low", None), getattr(e, "high", None)
    return {"value": float(v), "low": None if lo is None else float(lo), "high": None if hi is None else float(hi),
            "n": getattr(e, "n", None)}


def _interval_pct(e: dict[str, Any] | None) -> str:
    if e is None:
        return "no labels yet"
    if e["low"] is None or e["high"] is None:
        return _pct(e["value"])
    return f"{_pct(e['value'])} ({_pct(e['low'])} to {_pct(e['high'])})"


def _gap_words(g: dict[str, Any] | None) -> str:
    if g is None:
        return "unknown (no offline figure)"
    v, lo, hi = g["value"], g["low"], g["high"]
    side = "below" if v >= 0 else "above"
    rng = f" ({100 * lo:+.1f} to {100 * hi:+.1f})" if lo is not None and hi is not None else ""
    return f"{abs(100 * v):.1f} points {side} offline{rng}"


def money(v: float | None, currency: str) -> str:
    """An amount with its currency: two decimals, or three significant digits below 0.01 (serving costs per 1,000
    predictions are often fractions of a cent)."""
    if v is None or not math.isfinite(v):
        return "-"
    sym = "$" if currency.upper() == "USD" else f"{currency} "
    if v != 0 and abs(v) < 0.01:
        return f"{'-' if v < 0 else ''}{sym}{abs(v):.3g}"
    return f"{'-' if v < 0 else ''}{sym}{abs(v):,.2f}"


def _when(ts: float | None) -> str:
    if ts is None or not math.isfinite(ts):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _duration(s: float) -> str:
    for unit, n in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if s >= n:
            v = s / n
            return f"{v:.0f} {unit}{'s' if round(v) != 1 else ''}" if v >= 10 or v == int(v) else f"{v:.1f} {unit}s"
    return f"{s:.0f} seconds"


def sparkline_svg(values: Sequence[float | None], width: int = 120, height: int = 28, label: str = "") -> str:
    """A small inline SVG line of ``values`` in [0, 1] (None: a gap), scaled to their own range (at least 4 points
    tall, so noise does not look like a cliff); the last point is marked. Empty string when fewer than 2 values."""
    pts = [(i, v) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if len(pts) < 2:
        return ""
    vs = [v for _, v in pts]
    lo, hi = min(vs), max(vs)
    if hi - lo < 0.04:
        mid = (hi + lo) / 2
        lo, hi = mid - 0.02, mid + 0.02
    n = max(len(values) - 1, 1)
    pad = 3

    def xy(i: int, v: float) -> tuple[float, float]:
        return pad + (width - 2 * pad) * i / n, pad + (height - 2 * pad) * (1 - (v - lo) / (hi - lo))

    segments, cur = [], []
    for i, v in enumerate(values):
        if v is None or not math.isfinite(v):
            if cur:
                segments.append(cur)
            cur = []
        else:
            cur.append(xy(i, v))
    if cur:
        segments.append(cur)
    lines = "".join(
        f'<polyline fill="none" stroke="currentColor" stroke-width="1.8" points="{" ".join(f"{x:.1f},{y:.1f}" for x, y in seg)}"/>'
        for seg in segments if len(seg) > 1
    )
    dots = "".join(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.6" fill="currentColor"/>' for seg in segments if len(seg) == 1 for x, y in seg)
    lx, ly = xy(*pts[-1])
    title = escape(label or "accuracy per window: " + ", ".join(_pct(v) if v is not None else "-" for v in values))
    return (f'<svg class="spark" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
            f"<title>{title}</title>{lines}{dots}"
            f'<circle cx="{lx:.1f}" cy="{ly:.1f}" r="2.6" fill="currentColor"/></svg>')


def _trend(ests: Sequence[dict[str, Any] | None]) -> tuple[str, str]:
    """(arrow, words) from the oldest and newest windows with a figure: an arrow only when the newest window's
    interval lies clear of the oldest one's."""
    have = [e for e in ests if e is not None]
    if len(have) < 2:
        return "", "not enough windows yet"
    first, last = have[0], have[-1]
    if None not in (first["high"], last["low"]) and last["low"] > first["high"]:
        return "↗", "rising"
    if None not in (first["low"], last["high"]) and last["high"] < first["low"]:
        return "↘", "falling"
    return "→", "steady"


# --------------------------------------------------------------------------------------------------
# the figures of one deployment
# --------------------------------------------------------------------------------------------------
def _alert_config(store: PredictionStore, dep: Deployment) -> AlertConfig:
    """The thresholds of the deployment's newest run config (``alerts:``), else the defaults."""
    runs = {r["run_id"]: r for r in store.list_runs()}
    for rid in reversed(dep.run_ids):
        try:
            doc = json.loads(runs.get(rid, {}).get("config") or "{}")
        except json.JSONDecodeError:
            continue
        if isinstance(doc.get("alerts"), Mapping):
            try:
                return AlertConfig(**doc["alerts"])
            except Exception:  # an older or foreign config: the defaults
                break
    return AlertConfig()


def _serving(result: Any, store: PredictionStore, dep: Deployment, cfg: EvalConfig) -> dict[str, Any] | None:
    """The serving cost as ServingCost.to_dict(): the evaluator's when it has one, else combined from the run summaries."""
    from pipeline.serving_cost import combine_runs

    sc = getattr(result, "serving_cost", None)
    if sc is not None:
        return sc.to_dict() if hasattr(sc, "to_dict") else dict(sc)
    runs = {r["run_id"]: r for r in store.list_runs()}
    cost = combine_runs([runs[r]["summary"] for r in dep.run_ids if r in runs],
                        getattr(cfg, "price_per_device_hour", None))
    return cost.to_dict() if cost is not None else None


def _serving_money(serving: dict[str, Any] | None) -> dict[str, str]:
    """The serving cost's amounts per million, formatted with the currency (for the page)."""
    if not serving:
        return {}
    cur = serving.get("currency") or "USD"
    inc = serving.get("incumbent") or {}
    return {"price": money(serving.get("price_per_device_hour"), cur), "incumbent": money(inc.get("usd_per_million"), cur),
            "incumbent_capacity": money(inc.get("usd_per_million_at_capacity"), cur),
            "extra": money(serving.get("shadow_extra_usd_per_million"), cur),
            "extra_capacity": money(serving.get("shadow_extra_usd_per_million_at_capacity"), cur)}


def _cost_est(mf: Any, camera: str | None = None) -> dict[str, Any] | None:
    cost = getattr(mf, "cost", None) if mf is not None else None
    if cost is None:
        return None
    if camera is not None:
        per_cam = getattr(cost, "per_camera", None)
        if not isinstance(per_cam, Mapping) or camera not in per_cam:
            return None
        c = per_cam[camera]
        return _est(getattr(c, "per_1k", c))
    return _est(getattr(cost, "per_1k", None))


def build_status(store: PredictionStore, dep: Deployment, eval_config: EvalConfig | None = None,
                 window_s: float | None = None, n_windows: int = TREND_WINDOWS, now: float | None = None,
                 alert_config: AlertConfig | None = None) -> dict[str, Any]:
    """The status of deployment ``dep`` as a plain dict (see the module docstring).

    ``window_s``: the trend's window length; None: the deployment's time span / ``n_windows``. ``now``: the time
    "this week" ends (default: now). ``alert_config``: default the deployment's newest run config's ``alerts``.
    """
    from pipeline.evaluation.alerts import check_alerts
    from pipeline.evaluation.evaluator import Evaluator

    now = time.time() if now is None else float(now)
    cfg = (eval_config or EvalConfig()).model_copy(update={"run_ids": list(dep.run_ids)})
    ev = Evaluator(cfg)
    overall = ev.evaluate(store)
    first, last = overall.meta.window.first_frame, overall.meta.window.last_frame
    span = (last - first) if first is not None and last is not None else 0.0
    chosen = window_s is not None
    if window_s is None:  # n windows covering the span, the last frame inside the last one
        window_s = max(span / max(n_windows, 1) * (1 + 1e-6), 1.0)
    windows = ev.evaluate_windows(store, window_s)[-n_windows:] if span > 0 else []
    # alerts look at the newest state as `shadowcam evaluate` does: the newest window when a window length was given,
    # else the whole deployment (the trend's automatic windows are too short to carry an alert on their own)
    newest = windows[-1] if windows and chosen else overall
    alerts = check_alerts(newest, alert_config or _alert_config(store, dep))
    level = overall.meta.confidence_level
    cost_cfg = getattr(cfg, "costs", None)
    currency = getattr(cost_cfg, "currency", None) or "EUR"
    serving = _serving(overall, store, dep, cfg)
    week = store.label_counts_since(now - WEEK_S, dep.run_ids)
    cameras = store.camera_ids(dep.run_ids)

    def role_rows(role: str) -> list[dict[str, Any]]:
        mf = overall.models.get(role)
        if mf is None:
            return []
        offline = getattr(mf.offline, "test_accuracy", None) if mf.offline is not None else None
        sc = (serving or {}).get(role) if serving else None
        per_1k = None if sc is None or sc.get("usd_per_million") is None else sc["usd_per_million"] / 1000.0
        cap_1k = None if sc is None or sc.get("usd_per_million_at_capacity") is None else sc["usd_per_million_at_capacity"] / 1000.0
        serving_text = ("not configured" if serving is None else
                        f"{money(per_1k, serving['currency'])} ({money(cap_1k, serving['currency'])} on a fully busy device)")
        rows = []
        for cam in [None, *cameras]:
            acc = _est(mf.accuracy if cam is None else mf.per_camera.get(cam))
            if cam is None:
                gap = _est(mf.gap)
            elif acc is not None and offline is not None:
                gap = {"value": offline - acc["value"], "n": acc["n"],
                       "low": None if acc["high"] is None else offline - acc["high"],
                       "high": None if acc["low"] is None else offline - acc["low"]}
            else:
                gap = None
            trend = []
            for w in windows:
                wm = w.models.get(role)
                trend.append(None if wm is None else _est(wm.accuracy if cam is None else wm.per_camera.get(cam)))
            arrow, words = _trend(trend)
            cost = _cost_est(mf, cam)
            if cost is not None:
                cost_text = f"{money(cost['value'], currency)}" + (
                    f" ({money(cost['low'], currency)} to {money(cost['high'], currency)})" if cost["low"] is not None else "")
            elif cost_cfg is None:
                cost_text = "not configured"
            else:
                cost_text = "-" if cam is not None else "no labels yet"
            rows.append({
                "camera": cam or "all cameras", "kind": "model" if cam is None else "camera", "role": role,
                "role_words": ROLE_WORDS.get(role, role), "model": overall.meta.models.get(role),
                "accuracy": acc, "accuracy_text": _interval_pct(acc), "labels": acc["n"] if acc else 0,
                "gap": gap, "gap_text": _gap_words(gap) if acc is not None or cam is None else "-",
                "error_cost": cost, "error_cost_text": cost_text,
                "serving_text": serving_text if cam is None else "shared device: see all cameras",
                "trend": [t["value"] if t else None for t in trend], "trend_arrow": arrow, "trend_words": words,
                "trend_svg": sparkline_svg([t["value"] if t else None for t in trend]),
                "labels_week": sum(week.values()) if cam is None else week.get(cam, 0),
            })
        return rows

    d = overall.decision
    decision = None
    if d is not None:
        decision = {"action": d.action, "headline": DECISION_WORDS.get(d.action, d.action), "reason": d.reason,
                    "more_labels": d.more_labels}
    baselines = []
    raw = getattr(overall, "baselines", None) or ()
    for b in (raw.values() if isinstance(raw, Mapping) else raw):
        acc = _est(getattr(b, "accuracy", None))
        cost = _est(getattr(getattr(b, "cost", None), "per_1k", None))
        baselines.append({"name": getattr(b, "name", "?"), "description": getattr(b, "description", "") or "",
                          "accuracy_text": _interval_pct(acc), "cost_text": money(cost["value"], currency) if cost else "-"})
    guard = []  # each model against the baselines (ModelFigures.vs_baseline)
    for role in ("incumbent", "shadow"):
        vs = getattr(overall.models.get(role), "vs_baseline", None)
        if vs is None:
            continue
        if vs.on == "cost":
            by = f"{money(vs.diff.value, currency)} per 1,000 frames cheaper (at least {money(vs.low, currency)})"
        else:
            by = f"{100 * vs.diff.value:+.1f} points (at least {100 * vs.low:+.1f})"
        verdict = "significantly better than" if vs.significantly_better else "NOT significantly better than"
        guard.append({"role": role, "role_words": ROLE_WORDS.get(role, role), "model": overall.meta.models.get(role),
                      "better": bool(vs.significantly_better),
                      "text": f"{verdict} the best simple rule ({vs.baseline}): {by}"})
    return {
        "deployment": {"key": dep.key, "title": dep.title, "incumbent": dep.incumbent, "shadow": dep.shadow,
                       "runs": list(dep.run_ids)},
        "computed_at": time.time(), "computed_at_text": _when(time.time()),
        "level_text": f"{100 * level:g}%",
        "frames": overall.counts.frames, "cameras": cameras,
        "period_text": f"{_when(first)} to {_when(last)}" if first is not None else "no frames yet",
        "window_s": window_s, "window_text": _duration(window_s) if windows else "-", "n_windows": len(windows),
        "rows": role_rows("incumbent") + role_rows("shadow"),
        "decision": decision,
        "alerts": [{"kind": a.kind, "subject": a.subject, "message": a.message} for a in alerts],
        "alerts_window_text": (f"the latest window, {_when(newest.meta.window.start)} to {_when(newest.meta.window.end)}"
                               if newest is not overall else "all frames of this deployment"),
        "labels_week": sum(week.values()), "labels_week_by_camera": week,
        "labels_total": overall.counts.labels,
        "serving": serving,
        "serving_money": _serving_money(serving),
        "serving_configured": serving is not None,
        "error_cost_configured": cost_cfg is not None, "currency": currency,
        "baselines": baselines, "baselines_configured": bool(baselines), "baseline_guard": guard,
        "notes": list(overall.meta.notes),
    }


class StatusBoard:
    """Cached :func:`build_status` per deployment: computed on first use, then refreshed in the background once
    older than ``refresh_s`` seconds. A failed evaluation is shown as ``error`` (the page stays up)."""

    def __init__(self, store: PredictionStore, eval_config: EvalConfig | None = None, refresh_s: float = 60.0,
                 window_s: float | None = None, clock: Callable[[], float] = time.time):
        self.store, self.eval_config, self.refresh_s, self.window_s, self.clock = store, eval_config, refresh_s, window_s, clock
        self._lock = threading.Lock()
        self._first = threading.Lock()
        self._snap: dict[str, tuple[float, dict[str, Any]]] = {}
        self._refreshing: set[str] = set()

    def deployments(self) -> list[Deployment]:
        return deployments(self.store)

    def _compute(self, dep: Deployment) -> None:
        try:
            snap = build_status(self.store, dep, self.eval_config, self.window_s, now=self.clock())
        except Exception as e:  # the page stays up; the reason is shown instead
            log.warning("status of deployment %s not evaluated: %s: %s", dep.key, e.__class__.__name__, e)
            snap = {"deployment": {"key": dep.key, "title": dep.title, "incumbent": dep.incumbent, "shadow": dep.shadow,
                                   "runs": list(dep.run_ids)},
                    "error": f"not evaluated ({e.__class__.__name__}: {e})", "computed_at_text": _when(time.time())}
        with self._lock:
            self._snap[dep.key] = (time.monotonic(), snap)
            self._refreshing.discard(dep.key)

    def get(self, dep: Deployment) -> dict[str, Any]:
        """The snapshot of ``dep`` (computed now only the first time)."""
        with self._lock:
            got = self._snap.get(dep.key)
            stale = got is not None and time.monotonic() - got[0] >= self.refresh_s and dep.key not in self._refreshing
            if stale:
                self._refreshing.add(dep.key)
        if got is None:
            with self._first:
                if dep.key not in self._snap:
                    self._compute(dep)
            with self._lock:
                return self._snap[dep.key][1]
        if stale:
            threading.Thread(target=self._compute, args=(dep,), name="status-refresh", daemon=True).start()
        return got[1]
