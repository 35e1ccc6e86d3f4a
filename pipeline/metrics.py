"""Observability of a run: Prometheus metrics, ``/healthz``, and one structured log format.

:class:`Metrics` owns a private :class:`prometheus_client.CollectorRegistry` (one per runner, so two runners
in one process, e.g. in tests, never collide). Latencies and batch sizes are observed as they happen
(histograms); counts that already live elsewhere - the camera readers' stats, the shadow pair's counters - are
read at scrape time by a custom collector, so there is a single source of truth for each number.

Exported (all prefixed ``shadowcam_``)::

    frames_read_total / frames_dropped_total / frames_corrupt_total / frames_blank_total /
    frames_frozen_total / reconnects_total                          {camera}
    camera_queue_depth {camera}        camera_up {camera, state}    (1 for the current state)
    batch_size (histogram)             inference_latency_seconds (histogram) {model, role}
    frames_served_total                shadow_coverage (0..1)       shadow_queue_depth
    shadow_frames_total {outcome}      (predicted / skipped / shed)  shadow_batches_failed_total {reason}
    fallbacks_total {kind}             store_rows_committed_total   store_queue_depth

:class:`HealthServer` serves ``/metrics`` (Prometheus text format) and ``/healthz`` (JSON: ``status`` ok or
degraded, per-camera state, the last fallback, uptime) from a daemon thread.

Logs: :func:`setup_logging` installs :class:`KeyValueFormatter` (``ts=... level=... logger=... msg="..."``
plus any ``extra={"kv": {...}}``) or JSON lines; the runtime modules log as ``event key=value ...``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CAMERA_STATES = ("created", "connecting", "streaming", "reading", "reconnecting", "eof", "stopped", "failed")
UNHEALTHY_STATES = frozenset({"connecting", "reconnecting", "failed"})
RECENT_FALLBACK_S = 60.0  # /healthz says "degraded" for this long after a fallback


class _LiveCollector:
    """Reads readers' stats and the pair's counters at scrape time."""

    def __init__(self, metrics: "Metrics"):
        self.m = metrics

    def collect(self) -> Iterable[Any]:
        readers = list(self.m.readers)
        per_cam = [
            ("frames_read", "frames decoded and queued"),
            ("frames_dropped", "queued frames dropped because the consumer was slower (live sources)"),
            ("frames_corrupt", "undecodable frames skipped"),
            ("frames_blank", "black or uniform frames not passed on"),
            ("frames_frozen", "frames of a frozen feed not passed on"),
            ("reconnects", "successful reconnections of a live source"),
        ]
        for attr, doc in per_cam:
            fam = CounterMetricFamily(f"shadowcam_{attr}", doc, labels=["camera"])
            for r in readers:
                fam.add_metric([r.camera_id], float(getattr(r.stats, attr, 0)))
            yield fam
        depth = GaugeMetricFamily("shadowcam_camera_queue_depth", "frames waiting in a camera's queue", labels=["camera"])
        up = GaugeMetricFamily("shadowcam_camera_state", "1 for the camera's current state", labels=["camera", "state"])
        for r in readers:
            depth.add_metric([r.camera_id], float(r.queue_depth))
            state = r.stats.state
            for s in set(CAMERA_STATES) | {state}:
                up.add_metric([r.camera_id, s], 1.0 if s == state else 0.0)
        yield depth
        yield up

        pair = self.m.pair
        if pair is not None:
            st = pair.stats()
            sh = st["shadow"]
            yield CounterMetricFamily("shadowcam_frames_served", "frames answered by the incumbent (or its fallback)", value=st["frames_served"])
            yield GaugeMetricFamily("shadowcam_shadow_coverage", "frames with a shadow prediction / frames served", value=sh["coverage"])
            yield GaugeMetricFamily("shadowcam_shadow_queue_depth", "shadow batches waiting", value=sh["pending"])
            fam = CounterMetricFamily("shadowcam_shadow_frames", "frames by what the shadow did with them", labels=["outcome"])
            fam.add_metric(["predicted"], sh["frames_predicted"])
            fam.add_metric(["skipped"], sh["frames_skipped"])
            fam.add_metric(["shed"], sh["frames_shed"])
            yield fam
            fam = CounterMetricFamily("shadowcam_shadow_batches_failed", "shadow batches without a result", labels=["reason"])
            for k in ("timeouts", "errors", "garbage", "batches_shed"):
                fam.add_metric([k.removeprefix("batches_")], sh[k])
            yield fam
            fam = CounterMetricFamily("shadowcam_fallbacks", "degraded served predictions (frames) by kind", labels=["kind"])
            for kind, n in st["fallbacks"].items():
                fam.add_metric([kind], n)
            yield fam
        writer = self.m.writer_stats
        if writer is not None:
            ws = writer()
            yield CounterMetricFamily("shadowcam_store_rows_committed", "frame rows committed to the store", value=ws.get("frames_committed", 0))
            yield GaugeMetricFamily("shadowcam_store_queue_depth", "batches waiting for the store writer", value=ws.get("queue_depth", 0))


class Metrics:
    """Prometheus metrics of one run (a private registry). Attach readers / pair / writer when they exist."""

    def __init__(self, run_id: str = ""):
        self.run_id = run_id
        self.registry = CollectorRegistry(auto_describe=True)
        self.started = time.time()
        self.readers: list[Any] = []
        self.pair: Any = None
        self.writer_stats: Callable[[], dict] | None = None
        self.latency = Histogram(
            "shadowcam_inference_latency_seconds", "wall time of one batch through a model", ["model", "role"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram("shadowcam_batch_size", "frames per served batch", buckets=BATCH_BUCKETS, registry=self.registry)
        self.events = Counter("shadowcam_health_events", "camera health events", ["camera", "kind"], registry=self.registry)
        self.registry.register(_LiveCollector(self))

    # hooks called by the incumbent server and the shadow scheduler (pipeline.serving, pipeline.shadow) and the runner
    def observe_batch(self, model: str, role: str, n: int, seconds: float) -> None:
        self.latency.labels(model=model, role=role).observe(seconds)
        if role == "incumbent":
            self.batch_size.observe(n)

    def inc_fallback(self, kind: str, n: int) -> None:
        """No-op: fallbacks are counted by the incumbent server and read at scrape time (``pair.stats()``)."""

    def observe_events(self, events: Iterable[Any]) -> None:
        for e in events:
            self.events.labels(camera=e.camera_id, kind=e.kind.value).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def health(self) -> dict[str, Any]:
        """The ``/healthz`` document: ok unless a camera is down/reconnecting or a fallback happened recently."""
        cams = {r.camera_id: {"state": r.stats.state, "queue_depth": r.queue_depth, "frames_read": r.stats.frames_read} for r in self.readers}
        last_fb = None
        frames_served = 0
        coverage = None
        if self.pair is not None:
            st = self.pair.stats()
            last_fb = st["last_fallback"]
            frames_served = st["frames_served"]
            coverage = st["shadow"]["coverage"]
        reasons = [f"camera {cid} {c['state']}" for cid, c in cams.items() if c["state"] in UNHEALTHY_STATES]
        if last_fb and time.time() - last_fb["at"] <= RECENT_FALLBACK_S:
            reasons.append(f"fallback {last_fb['kind']} {time.time() - last_fb['at']:.0f}s ago")
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "run_id": self.run_id,
            "uptime_s": round(time.time() - self.started, 3),
            "cameras": cams,
            "frames_served": frames_served,
            "shadow_coverage": coverage,
            "last_fallback": last_fb,
        }


class HealthServer:
    """``/metrics`` and ``/healthz`` over HTTP from a daemon thread. ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0):
        m = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, ctype, code = m.exposition(), CONTENT_TYPE_LATEST, 200
                elif path in ("/healthz", "/health"):
                    doc = m.health()
                    body, ctype, code = json.dumps(doc, default=str).encode(), "application/json", 200
                else:
                    body, ctype, code = b"not found: try /metrics or /healthz\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args: Any) -> None:  # quiet: scrapes every few seconds
                logging.getLogger(__name__).debug("http " + fmt, *args)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> "HealthServer":
        self._thread.start()
        logging.getLogger(__name__).info("metrics_server url=http://%s:%d/metrics healthz=http://%s:%d/healthz",
                                         self.host, self.port, self.host, self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- structured logs -------------------------------------------------------------------------------------------

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _fmt_value(v: Any) -> str:
    s = str(v)
    if s == "" or any(ch in s for ch in ' ="\n'):
        return json.dumps(s)
    return s


class KeyValueFormatter(logging.Formatter):
    """``ts=2024-01-01T00:00:00.123Z level=INFO logger=pipeline.runner msg="..." key=value ...``.

    Key/values come from ``extra={"kv": {...}}`` or any other ``extra`` field. With ``json_lines=True`` the same
    fields are written as one JSON object per line.
    """

    def __init__(self, json_lines: bool = False):
        super().__init__()
        self.json_lines = json_lines

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        fields: dict[str, Any] = {"ts": ts, "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        kv = getattr(record, "kv", None)
        if isinstance(kv, dict):
            fields.update(kv)
        for k, v in record.__dict__.items():
            if k not in _RESERVED and k != "kv" and not k.startswith("_"):
                fields[k] = v
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.json_lines:
            return json.dumps(fields, default=str)
        return " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items())


def setup_logging(level: int = logging.INFO, json_lines: bool = False) -> None:
    """Route the root logger through one :class:`KeyValueFormatter` handler on stderr (replacing others)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter(json_lines=json_lines))
    root.addHandler(handler)
    root.setLevel(level)
