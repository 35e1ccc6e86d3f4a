"""Alerts on an evaluation: the gap or drift crossing the configured thresholds.

Three outlets, all best effort (an outlet failing is logged, never raised, so an evaluation is not lost):

* a structured WARNING log line per alert (``shadowcam.alert kind=... role=... value=... threshold=...``);
* an optional webhook: one JSON POST (urllib, short timeout) with all alerts of the evaluation;
* Prometheus gauges written to a textfile (``<workdir>/metrics/evaluation.prom``) with
  ``prometheus_client.write_to_textfile``, for node_exporter's textfile collector or the runner's
  ``/metrics`` endpoint. The gauges are written on every evaluation, alert or not.

Rules (:func:`check_alerts`, thresholds from :class:`pipeline.config.AlertConfig`):

* ``gap``: a model's train-to-production gap has its CI *lower bound* above ``max_gap`` (the gap is
  significantly larger than tolerated, not merely a noisy point estimate);
* ``drift``: a drift test's corrected p-value is below ``drift_p`` (softmax outputs per role, the
  predicted-class distribution, each camera's image statistics).
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.config import AlertConfig

log = logging.getLogger("shadowcam.alerts")

ROLES = ("incumbent", "shadow")
PROM_FILE = Path("metrics") / "evaluation.prom"


@dataclass(frozen=True)
class Alert:
    kind: str  # "gap" | "drift"
    subject: str  # role ("incumbent"), "incumbent softmax", "class_distribution", "<camera>/<stat>"
    value: float  # the gap's CI lower bound, or the p-value
    threshold: float
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def _get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def check_alerts(result: Any, config: AlertConfig) -> list[Alert]:
    """Alerts for one :class:`EvaluationResult` (or its ``to_dict()``)."""
    from pipeline.evaluation.evaluator import drift_p_value, image_stat_p_values

    data = result.data if hasattr(result, "data") else result["data"]
    meta = result.meta if hasattr(result, "meta") else result["meta"]
    out: list[Alert] = []
    for role in ROLES:
        gap = _get(data, "models", role, "gap")
        if gap and gap.get("low") is not None and gap["low"] > config.max_gap:
            model = meta["models"].get(role)
            out.append(Alert(
                "gap", role, float(gap["low"]), config.max_gap,
                f"{role} {model}: train-to-production gap {100 * gap['value']:.1f} points, CI lower bound "
                f"{100 * gap['low']:.1f} > tolerated {100 * config.max_gap:.1f}",
            ))
    for role, res in (_get(data, "drift", "softmax") or {}).items():
        p = drift_p_value(res)
        if p is not None and p < config.drift_p:
            out.append(Alert("drift", f"{role} softmax", p, config.drift_p, f"{role} softmax outputs drifted from the reference period (corrected p={p:.2e} < {config.drift_p:g})"))
    p = drift_p_value(_get(data, "drift", "class_distribution"))
    if p is not None and p < config.drift_p:
        out.append(Alert("drift", "class_distribution", p, config.drift_p, f"predicted-class distribution shifted from the reference period (p={p:.2e} < {config.drift_p:g})"))
    for cam, res in (_get(data, "drift", "image") or {}).items():
        for stat, p in image_stat_p_values(res).items():
            if p < config.drift_p:
                out.append(Alert("drift", f"{cam}/{stat}", p, config.drift_p, f"camera {cam}: image {stat} drifted from the reference period (p={p:.2e} < {config.drift_p:g})"))
    return out


def log_alerts(alerts: Sequence[Alert], result: Any = None) -> None:
    """One structured WARNING line per alert."""
    window = ""
    if result is not None:
        meta = result.meta if hasattr(result, "meta") else result["meta"]
        window = f" window={meta['window'].get('start_iso')}..{meta['window'].get('end_iso')}"
    for a in alerts:
        log.warning("shadowcam.alert kind=%s subject=%s value=%.6g threshold=%.6g%s message=%s", a.kind, json.dumps(a.subject), a.value, a.threshold, window, json.dumps(a.message))


def post_webhook(url: str, alerts: Sequence[Alert], result: Any = None, timeout_s: float = 5.0) -> bool:
    """POST ``{"source": "shadowcam", "alerts": [...], ...}`` as JSON. Returns success; failures are logged."""
    payload: dict[str, Any] = {"source": "shadowcam", "kind": "evaluation_alerts", "sent_at": time.time(), "alerts": [a.to_dict() for a in alerts]}
    if result is not None:
        meta = result.meta if hasattr(result, "meta") else result["meta"]
        payload.update(models=meta.get("models"), window={k: meta["window"].get(k) for k in ("start_iso", "end_iso", "index")}, runs=meta.get("runs"))
    body = json.dumps(payload).encode("utf-8")
    try:
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "shadowcam"})
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            if not (200 <= resp.status < 300):
                log.error("alert webhook %s answered HTTP %s", url, resp.status)
                return False
        return True
    except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError is a URLError; ValueError: bad URL
        log.error("alert webhook %s failed: %s", url, e)
        return False


def write_prometheus(result: Any, alerts: Sequence[Alert], path: str | Path) -> Path | None:
    """Write the evaluation's gauges to a Prometheus textfile (atomic). Returns the path, None on failure."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    from pipeline.evaluation.evaluator import drift_p_value, image_stat_p_values

    data = result.data if hasattr(result, "data") else result["data"]
    meta = result.meta if hasattr(result, "meta") else result["meta"]
    reg = CollectorRegistry()
    labels = ["role", "model"]
    g_acc = Gauge("shadowcam_eval_prod_accuracy", "Production accuracy from human labels", labels, registry=reg)
    g_lo = Gauge("shadowcam_eval_prod_accuracy_ci_low", "Lower bound of the production accuracy CI", labels, registry=reg)
    g_hi = Gauge("shadowcam_eval_prod_accuracy_ci_high", "Upper bound of the production accuracy CI", labels, registry=reg)
    g_gap = Gauge("shadowcam_eval_gap", "Train-to-production gap (offline - production accuracy)", labels, registry=reg)
    g_gap_lo = Gauge("shadowcam_eval_gap_ci_low", "Lower bound of the gap CI", labels, registry=reg)
    g_est = Gauge("shadowcam_eval_estimated_accuracy", "Label-free accuracy estimate", labels, registry=reg)
    g_lab = Gauge("shadowcam_eval_labels", "Usable labelled frames in the evaluation", registry=reg)
    g_cov = Gauge("shadowcam_eval_shadow_coverage", "Share of incumbent-served frames the shadow also predicted", registry=reg)
    g_drift = Gauge("shadowcam_eval_drift_p", "Drift test p-value (corrected) vs the reference period", ["test"], registry=reg)
    g_alert = Gauge("shadowcam_eval_alert", "1 when an alert of this kind is active", ["kind"], registry=reg)
    g_n_alert = Gauge("shadowcam_eval_alerts", "Number of active alerts", registry=reg)
    g_ts = Gauge("shadowcam_eval_last_timestamp_seconds", "When the evaluation ran", registry=reg)
    for role in ROLES:
        m = _get(data, "models", role)
        if not m:
            continue
        lv = (role, str(meta["models"].get(role)))
        for g, val in ((g_acc, _get(m, "accuracy", "value")), (g_lo, _get(m, "accuracy", "low")), (g_hi, _get(m, "accuracy", "high")),
                       (g_gap, _get(m, "gap", "value")), (g_gap_lo, _get(m, "gap", "low")), (g_est, _get(m, "estimated_accuracy", "value"))):
            if val is not None:
                g.labels(*lv).set(float(val))
    g_lab.set(data["counts"]["frames_with_truth"])
    if data["counts"].get("shadow_coverage") is not None:
        g_cov.set(data["counts"]["shadow_coverage"])
    for role, res in (_get(data, "drift", "softmax") or {}).items():
        p = drift_p_value(res)
        if p is not None:
            g_drift.labels(f"softmax_{role}").set(p)
    p = drift_p_value(_get(data, "drift", "class_distribution"))
    if p is not None:
        g_drift.labels("class_distribution").set(p)
    for cam, res in (_get(data, "drift", "image") or {}).items():
        for stat, p in image_stat_p_values(res).items():
            g_drift.labels(f"image_{cam}_{stat}").set(p)
    kinds = {a.kind for a in alerts}
    for kind in ("gap", "drift"):
        g_alert.labels(kind).set(1 if kind in kinds else 0)
    g_n_alert.set(len(alerts))
    g_ts.set(meta.get("evaluated_at") or time.time())
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(str(path), reg)
        return path
    except OSError as e:
        log.error("cannot write Prometheus textfile %s: %s", path, e)
        return None


def dispatch(result: Any, config: AlertConfig, workdir: str | Path | None = ".", prom_path: str | Path | None = None) -> list[Alert]:
    """Check, log, post (if ``config.webhook``) and write the Prometheus textfile. Returns the alerts.

    The alerts are also put into ``result.data["alerts"]`` (as dicts) when ``result`` has a ``data`` dict.
    """
    alerts = check_alerts(result, config)
    log_alerts(alerts, result)
    if alerts and config.webhook:
        post_webhook(config.webhook, alerts, result)
    if prom_path is None and workdir is not None:
        prom_path = Path(workdir) / PROM_FILE
    if prom_path is not None:
        write_prometheus(result, alerts, prom_path)
    data = result.data if hasattr(result, "data") else result.get("data")
    if isinstance(data, dict):
        data["alerts"] = [a.to_dict() for a in alerts]
    return alerts
