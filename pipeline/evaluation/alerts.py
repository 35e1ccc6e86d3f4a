"""Alerts on an evaluation: the gap or drift crossing the configured thresholds, a model no better than a baseline.

Three outlets, all best effort (an outlet failing is logged, never raised, so an evaluation is not lost):

* a structured WARNING log line per alert (``shadowcam.alert kind=... role=... value=... threshold=...``);
* an optional webhook: one JSON POST (urllib, short timeout) with all alerts of the evaluation, retried with
  exponential backoff (tenacity) when the receiver is unreachable, times out or answers 5xx; a 4xx answer is
  final (the request itself is wrong);
* Prometheus gauges written to a textfile (``<workdir>/metrics/evaluation.prom``) with
  ``prometheus_client.write_to_textfile``, for node_exporter's textfile collector or the runner's
  ``/metrics`` endpoint. The gauges are written on every evaluation, alert or not.

Rules (:func:`check_alerts`, thresholds from :class:`pipeline.config.AlertConfig`):

* ``gap``: a model's train-to-production gap has its CI *lower bound* above ``max_gap`` (the gap is
  significantly larger than tolerated, not merely a noisy point estimate);
* ``drift``: a drift test's corrected p-value is below ``drift_p`` (softmax outputs per role, the
  predicted-class distribution, each camera's image statistics);
* ``baseline`` (``AlertConfig.baseline``): a model is not significantly better than the best baseline on the same
  labelled frames -- its ``vs_baseline.significantly_better`` is False (:mod:`pipeline.evaluation.baselines`: the
  one-sided lower bound of model - baseline, at the evaluation's ``alpha``, on accuracy or with ``decide_on="cost"``
  on cost, is not above 0 against every baseline). Fires iff the model is not significantly better; a model
  without labelled frames (no comparison) raises none.
"""

from __future__ import annotations

import json
import logging
import math
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from pipeline.config import AlertConfig
from pipeline.evaluation.result import ROLES, Alert, EvaluationResult

__all__ = ["Alert", "PROM_FILE", "check_alerts", "dispatch", "log_alerts", "post_webhook", "write_prometheus"]

log = logging.getLogger("shadowcam.alerts")

PROM_FILE = Path("metrics") / "evaluation.prom"
WEBHOOK_ATTEMPTS = 3  # POSTs at most, the first included
WEBHOOK_BACKOFF_S = (0.5, 4.0)  # first wait, longest wait (doubling in between)


def check_alerts(result: EvaluationResult, config: AlertConfig) -> list[Alert]:
    """Alerts for one :class:`EvaluationResult`: gaps per role, then drift tests in :meth:`DriftFigures.p_values` order,
    then the baseline guard per role."""
    out: list[Alert] = []
    for role in ROLES:
        m = result.models.get(role)
        gap = m.gap if m is not None else None
        if gap is not None and math.isfinite(gap.low) and gap.low > config.max_gap:
            model = result.meta.models.get(role)
            out.append(Alert(
                "gap", role, float(gap.low), config.max_gap,
                f"{role} {model}: train-to-production gap {100 * gap.value:.1f} points, CI lower bound "
                f"{100 * gap.low:.1f} > tolerated {100 * config.max_gap:.1f}",
            ))
    training = result.drift.training
    for t in result.drift.p_values():
        if not t.p < config.drift_p:
            continue
        if t.test == "training":
            if not t.large:  # significant but small: not a shift to act on
                continue
            what = next((x.description for x in training.tails if (x.scope, f"{x.feature}:{x.direction}") == (t.subject, t.stat)),
                        None) if training is not None else None
            if what is None and training is not None:
                what = next((c.description for c in training.class_mix if c.scope == t.subject and t.stat == "predicted_class"), None)
            out.append(Alert("drift", f"training/{t.subject}/{t.stat}", t.p, config.drift_p,
                             f"drift against training: {what or t.name} (corrected p={t.p:.2e} < {config.drift_p:g})"))
        elif t.test == "softmax":
            out.append(Alert("drift", f"{t.subject} softmax", t.p, config.drift_p,
                             f"{t.subject} softmax outputs drifted from the reference period (corrected p={t.p:.2e} < {config.drift_p:g})"))
        elif t.test == "class_distribution":
            out.append(Alert("drift", "class_distribution", t.p, config.drift_p,
                             f"predicted-class distribution shifted from the reference period (p={t.p:.2e} < {config.drift_p:g})"))
        else:
            out.append(Alert("drift", f"{t.subject}/{t.stat}", t.p, config.drift_p,
                             f"camera {t.subject}: image {t.stat} drifted from the reference period (p={t.p:.2e} < {config.drift_p:g})"))
    if config.baseline:
        for role in ROLES:
            m = result.models.get(role)
            vs = m.vs_baseline if m is not None else None
            if vs is None or vs.significantly_better:
                continue
            model = result.meta.models.get(role)
            b = result.baseline(vs.baseline)
            what = f"{vs.baseline} baseline ({b.description})" if b is not None else f"{vs.baseline} baseline"
            if vs.on == "cost":
                unit = (m.cost.currency + " ") if m.cost is not None else ""
                v = vs.diff.value
                margin = f"saves {v:,.2f} {unit}" if v >= 0 else f"costs {-v:,.2f} {unit}more"
                diff = (f"{margin} per 1,000 frames than it, one-sided {100 * (1 - vs.alpha):.0f}% lower bound of the saving "
                        f"{vs.low:+,.2f}")
            else:
                diff = (f"accuracy {100 * vs.diff.value:+.1f} points over it, one-sided {100 * (1 - vs.alpha):.0f}% lower bound "
                        f"{100 * vs.low:+.1f}")
            out.append(Alert("baseline", role, float(vs.low), 0.0,
                             f"{role} {model}: not significantly better than the {what}: {diff} on {vs.n} labelled frames"))
    return out


def log_alerts(alerts: Sequence[Alert], result: EvaluationResult | None = None) -> None:
    """One structured WARNING line per alert."""
    window = ""
    if result is not None:
        window = f" window={result.meta.window.start_iso}..{result.meta.window.end_iso}"
    for a in alerts:
        log.warning("shadowcam.alert kind=%s subject=%s value=%.6g threshold=%.6g%s message=%s", a.kind, json.dumps(a.subject), a.value, a.threshold, window, json.dumps(a.message))


def _retryable(e: BaseException) -> bool:
    """Worth another try: the receiver answered 5xx, or could not be reached / timed out (URLError, OSError)."""
    if isinstance(e, urllib.error.HTTPError):
        return e.code >= 500
    return isinstance(e, OSError)  # URLError (refused, DNS), TimeoutError, connection reset


def _log_retry(url: str):
    def before_sleep(state: RetryCallState) -> None:
        e = state.outcome.exception() if state.outcome is not None else None
        log.warning("alert webhook %s failed (attempt %d of %d: %s); retrying in %.1f s", url, state.attempt_number,
                    WEBHOOK_ATTEMPTS, e, state.next_action.sleep if state.next_action else 0.0)
    return before_sleep


def post_webhook(url: str, alerts: Sequence[Alert], result: EvaluationResult | None = None, timeout_s: float = 5.0,
                 attempts: int = WEBHOOK_ATTEMPTS) -> bool:
    """POST ``{"source": "shadowcam", "alerts": [...], ...}`` as JSON. Returns success; failures are logged.

    Up to ``attempts`` POSTs, waiting 0.5 s, 1 s, 2 s ... (at most 4 s) in between, while the receiver is
    unreachable, times out or answers 5xx; a 4xx answer or a malformed URL is not retried.
    """
    payload: dict[str, Any] = {"source": "shadowcam", "kind": "evaluation_alerts", "sent_at": time.time(), "alerts": [a.to_dict() for a in alerts]}
    if result is not None:
        w = result.meta.window
        payload.update(models=result.meta.models, window={"start_iso": w.start_iso, "end_iso": w.end_iso, "index": w.index},
                       runs=list(result.meta.runs))
    body = json.dumps(payload).encode("utf-8")

    def post() -> int:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "shadowcam"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status

    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=WEBHOOK_BACKOFF_S[0], min=WEBHOOK_BACKOFF_S[0], max=WEBHOOK_BACKOFF_S[1]),
        retry=retry_if_exception(_retryable),
        before_sleep=_log_retry(url),
        reraise=True,
    )
    try:
        status = retrying(post)
    except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError is a URLError; ValueError: bad URL
        log.error("alert webhook %s failed: %s", url, e)
        return False
    if not (200 <= status < 300):
        log.error("alert webhook %s answered HTTP %s", url, status)
        return False
    return True


def write_prometheus(result: EvaluationResult, alerts: Sequence[Alert], path: str | Path) -> Path | None:
    """Write the evaluation's gauges to a Prometheus textfile (atomic). Returns the path, None on failure."""
    meta = result.meta
    reg = CollectorRegistry()
    labels = ["role", "model"]
    g_acc = Gauge("shadowcam_eval_prod_accuracy", "Production accuracy from human labels", labels, registry=reg)
    g_lo = Gauge("shadowcam_eval_prod_accuracy_ci_low", "Lower bound of the production accuracy CI", labels, registry=reg)
    g_hi = Gauge("shadowcam_eval_prod_accuracy_ci_high", "Upper bound of the production accuracy CI", labels, registry=reg)
    g_gap = Gauge("shadowcam_eval_gap", "Train-to-production gap (offline - production accuracy)", labels, registry=reg)
    g_gap_lo = Gauge("shadowcam_eval_gap_ci_low", "Lower bound of the gap CI", labels, registry=reg)
    g_est = Gauge("shadowcam_eval_estimated_accuracy", "Label-free accuracy estimate", labels, registry=reg)
    g_cost = Gauge("shadowcam_eval_cost_per_1k", "Expected cost of errors per 1,000 frames (EvalConfig.costs)", labels, registry=reg)
    g_lab = Gauge("shadowcam_eval_labels", "Usable labelled frames in the evaluation", registry=reg)
    g_cov = Gauge("shadowcam_eval_shadow_coverage", "Share of incumbent-served frames the shadow also predicted", registry=reg)
    g_drift = Gauge("shadowcam_eval_drift_p", "Drift test p-value (corrected) vs the reference period", ["test"], registry=reg)
    g_alert = Gauge("shadowcam_eval_alert", "1 when an alert of this kind is active", ["kind"], registry=reg)
    g_n_alert = Gauge("shadowcam_eval_alerts", "Number of active alerts", registry=reg)
    g_ts = Gauge("shadowcam_eval_last_timestamp_seconds", "When the evaluation ran", registry=reg)
    for role in result.roles:
        m = result.models[role]
        lv = (role, str(meta.models.get(role)))
        acc, gap, est = m.accuracy, m.gap, m.estimated_accuracy
        for g, fig, attr in ((g_acc, acc, "value"), (g_lo, acc, "low"), (g_hi, acc, "high"),
                             (g_gap, gap, "value"), (g_gap_lo, gap, "low"), (g_est, est, "value")):
            val = None if fig is None else getattr(fig, attr)
            if val is not None and math.isfinite(val):  # NaN: no figure
                g.labels(*lv).set(float(val))
        if m.cost is not None and math.isfinite(m.cost.per_1k.value):
            g_cost.labels(*lv).set(float(m.cost.per_1k.value))
    g_lab.set(result.counts.frames_with_truth)
    if result.counts.shadow_coverage is not None:
        g_cov.set(result.counts.shadow_coverage)
    for t in result.drift.p_values():
        if t.test == "softmax":
            g_drift.labels(f"softmax_{t.subject}").set(t.p)
        elif t.test == "class_distribution":
            g_drift.labels("class_distribution").set(t.p)
        elif t.test == "training":
            g_drift.labels(f"training_{t.subject}_{t.stat}").set(t.p)
        else:
            g_drift.labels(f"image_{t.subject}_{t.stat}").set(t.p)
    kinds = {a.kind for a in alerts}
    for kind in ("gap", "drift", "baseline"):
        g_alert.labels(kind).set(1 if kind in kinds else 0)
    g_n_alert.set(len(alerts))
    g_ts.set(meta.evaluated_at or time.time())
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), reg)
        return path
    except OSError as e:
        log.error("cannot write Prometheus textfile %s: %s", path, e)
        return None


def dispatch(result: EvaluationResult, config: AlertConfig, workdir: str | Path | None = ".", prom_path: str | Path | None = None) -> list[Alert]:
    """Check, log, post (if ``config.webhook``) and write the Prometheus textfile. Returns the alerts.

    The result is not changed (it is frozen): keep the alerts with it by ``result.with_alerts(alerts)``.
    """
    alerts = check_alerts(result, config)
    log_alerts(alerts, result)
    if alerts and config.webhook:
        post_webhook(config.webhook, alerts, result)
    if prom_path is None and workdir is not None:
        prom_path = Path(workdir) / PROM_FILE
    if prom_path is not None:
        write_prometheus(result, alerts, prom_path)
    return alerts
