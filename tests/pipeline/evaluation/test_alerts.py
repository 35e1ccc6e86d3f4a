"""Alerts: thresholds, the structured log line, the webhook (a real local HTTP server) and the Prometheus textfile."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipeline.config import AlertConfig
from pipeline.evaluation import alerts
from pipeline.evaluation.evaluator import EvalConfig, Evaluator
from tests.helpers.evaluation_data import StoreSpec, build_store, write_model


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """(steady result, shifted result); both models' offline accuracy far above production (a large gap)."""
    tmp = tmp_path_factory.mktemp("alerts")
    inc = write_model(tmp / "inc.onnx", "inc", "1", 0.999, 5000)
    sh = write_model(tmp / "sh.onnx", "sh", "2", 0.93, 500)
    out = []
    for name, shift in (("steady", None), ("shifted", 50)):
        store = build_store(str(tmp / f"{name}.db"), StoreSpec(incumbent_uri=str(inc), shadow_uri=str(sh), shift_after=shift))
        out.append(Evaluator(EvalConfig(reference=0.25)).evaluate(store))
        store.close()
    return out


class _Hook:
    """A local HTTP server that records POSTed JSON bodies; answers ``status``, or the statuses of ``answers`` in turn
    (then 200)."""

    def __init__(self, status: int = 200, answers: tuple[int, ...] = (), delays_s: tuple[float, ...] = ()):
        received, queue, delays = [], list(answers), list(delays_s)

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.headers["Content-Type"], json.loads(body)))
                if delays:
                    time.sleep(delays.pop(0))  # answer late: the client times out
                self.send_response(queue.pop(0) if queue else (200 if answers else status))
                self.end_headers()

            def log_message(self, *a):
                pass

        self.received = received
        self.server = HTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_gap_alert_fires_above_threshold_only(results):
    steady, _ = results
    gap = steady.models["incumbent"].gap
    assert gap.low > 0.05  # offline 99.9% vs ~80% in production
    fired = alerts.check_alerts(steady, AlertConfig(max_gap=gap.low - 0.01, drift_p=1e-12))
    assert [(a.kind, a.subject) for a in fired] == [("gap", "incumbent")]
    assert fired[0].value == pytest.approx(gap.low)
    assert alerts.check_alerts(steady, AlertConfig(max_gap=gap.low + 0.01, drift_p=1e-12)) == []


def test_drift_alerts_fire_on_shift_not_on_steady(results):
    steady, shifted = results
    cfg = AlertConfig(max_gap=1.0, drift_p=0.01)
    assert alerts.check_alerts(steady, cfg) == []
    subjects = {a.subject for a in alerts.check_alerts(shifted, cfg)}
    assert "incumbent softmax" in subjects and "camA/brightness" in subjects
    assert not any(s.startswith("camB/") for s in subjects)


def test_dispatch_logs_posts_and_writes_prometheus(results, tmp_path, caplog):
    _, shifted = results
    with _Hook() as hook:
        cfg = AlertConfig(max_gap=0.05, drift_p=0.01, webhook=hook.url)
        with caplog.at_level(logging.WARNING, logger="shadowcam.alerts"):
            fired = alerts.dispatch(shifted, cfg, workdir=tmp_path)
    kinds = {a.kind for a in fired}
    assert kinds == {"gap", "drift"}
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == len(fired) and all(line.startswith("shadowcam.alert kind=") for line in lines)
    assert len(hook.received) == 1
    ctype, body = hook.received[0]
    assert ctype == "application/json" and body["source"] == "shadowcam"
    assert len(body["alerts"]) == len(fired) and body["models"]["incumbent"] == "inc:1"
    prom = (tmp_path / "metrics" / "evaluation.prom").read_text()
    acc = shifted.models["incumbent"].accuracy.value
    assert f'shadowcam_eval_prod_accuracy{{model="inc:1",role="incumbent"}} {acc!r}' in prom
    assert 'shadowcam_eval_alert{kind="gap"} 1.0' in prom and 'shadowcam_eval_alert{kind="drift"} 1.0' in prom
    assert f"shadowcam_eval_alerts {float(len(fired))!r}" in prom
    # the result is not changed; with_alerts keeps the alerts with it, and its JSON lists them
    assert shifted.alerts == () and shifted.with_alerts(fired).alerts == tuple(fired)
    assert shifted.with_alerts(fired).to_dict()["data"]["alerts"] == [a.to_dict() for a in fired]


def test_no_alert_means_no_post_and_zero_gauges(results, tmp_path):
    steady, _ = results
    with _Hook() as hook:
        fired = alerts.dispatch(steady, AlertConfig(max_gap=0.9, drift_p=1e-12, webhook=hook.url), workdir=tmp_path)
    assert fired == [] and hook.received == []
    prom = (tmp_path / "metrics" / "evaluation.prom").read_text()
    assert 'shadowcam_eval_alert{kind="gap"} 0.0' in prom and "shadowcam_eval_alerts 0.0" in prom


def test_webhook_failures_are_logged_not_raised(results, caplog):
    steady, _ = results
    fired = alerts.check_alerts(steady, AlertConfig(max_gap=0.0, drift_p=1e-12))
    with _Hook(status=500) as hook, caplog.at_level(logging.ERROR, logger="shadowcam.alerts"):
        assert alerts.post_webhook(hook.url, fired, steady) is False
    # nobody listening on this port: connection refused, logged
    with _Hook() as dead:
        url = dead.url
    with caplog.at_level(logging.ERROR, logger="shadowcam.alerts"):
        assert alerts.post_webhook(url, fired, steady, timeout_s=1.0) is False
        assert alerts.post_webhook("not a url", fired, steady) is False
    assert sum("alert webhook" in r.getMessage() for r in caplog.records) >= 3


def test_webhook_retries_5xx_with_backoff_then_succeeds(results, caplog):
    steady, _ = results
    fired = alerts.check_alerts(steady, AlertConfig(max_gap=0.0, drift_p=1e-12))
    with _Hook(answers=(503, 503)) as hook, caplog.at_level(logging.WARNING, logger="shadowcam.alerts"):
        t0 = time.monotonic()
        assert alerts.post_webhook(hook.url, fired, steady) is True
        waited = time.monotonic() - t0
    assert len(hook.received) == 3  # two 503 answers, then accepted
    assert all(body == hook.received[0][1] for _, body in hook.received)  # the same alerts each time
    assert waited >= 0.5 + 1.0 - 0.05  # exponential backoff: 0.5 s, then 1 s
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 2


def test_webhook_retries_after_a_timeout(results):
    steady, _ = results
    fired = alerts.check_alerts(steady, AlertConfig(max_gap=0.0, drift_p=1e-12))
    with _Hook(delays_s=(0.6,)) as hook:
        assert alerts.post_webhook(hook.url, fired, steady, timeout_s=0.2) is True
    assert len(hook.received) == 2


def test_webhook_gives_up_after_the_attempts(results):
    steady, _ = results
    fired = alerts.check_alerts(steady, AlertConfig(max_gap=0.0, drift_p=1e-12))
    with _Hook(status=502) as hook:
        assert alerts.post_webhook(hook.url, fired, steady, attempts=2) is False
    assert len(hook.received) == 2


@pytest.mark.parametrize("status", [400, 404, 422])
def test_webhook_4xx_is_not_retried(results, status, caplog):
    steady, _ = results
    fired = alerts.check_alerts(steady, AlertConfig(max_gap=0.0, drift_p=1e-12))
    with _Hook(status=status) as hook, caplog.at_level(logging.ERROR, logger="shadowcam.alerts"):
        assert alerts.post_webhook(hook.url, fired, steady) is False
    assert len(hook.received) == 1
    assert any(f"HTTP Error {status}" in r.getMessage() for r in caplog.records)
