"""The runner end to end on real parts: test videos + an image folder, real ONNX Runtime, real SQLite;
``shadowcam run`` as a subprocess killed with SIGKILL (nothing committed is lost) and stopped with SIGINT (drains)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import pipeline.runner as runner_mod
import pipeline.sources as sources_mod
from pipeline.config import load_config
from pipeline.runner import Runner
from pipeline.store import PredictionStore, frames, health_events, predictions, runs, samples
from pipeline.types import ModelCardError
from tests.helpers.media import make_image_folder, write_video
from tests.helpers.onnx_models import make_tiny_classifier

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["box", "bag", "empty"]
HAS_SAMPLER = importlib.util.find_spec("pipeline.sampling") is not None
VIDEO_FRAMES = {"dock1": 40, "dock2": 30}
FOLDER_FRAMES = 25


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("runner_media")
    write_video(d / "dock1.avi", VIDEO_FRAMES["dock1"], seed=1)
    write_video(d / "dock2.avi", VIDEO_FRAMES["dock2"], seed=2)
    make_image_folder(d / "shelf", FOLDER_FRAMES, seed=3)
    return {
        "dir": d,
        "videos": [d / "dock1.avi", d / "dock2.avi"],
        "folder": d / "shelf",
        "inc": make_tiny_classifier(d / "inc.onnx", CLASSES, input_size=(24, 32), seed=1),
        "sh": make_tiny_classifier(d / "sh.onnx", CLASSES, input_size=(24, 32), seed=2),
        "other": make_tiny_classifier(d / "other.onnx", ["box", "bag", "pallet"], input_size=(24, 32), seed=3),
    }


def config(media, tmp_path, **over):
    base = {
        "sources": [str(p) for p in media["videos"]] + [str(media["folder"])],
        "incumbent": {"uri": str(media["inc"]), "providers": ["cpu"]},
        "shadow": {"uri": str(media["sh"]), "providers": ["cpu"]},
        "batching.batch_size": 8,
        "batching.max_wait_ms": 10,
        # not overloaded: a queue deep enough that a healthy shadow is never shed on a busy 2-core CI box
        "shadow_mode.max_pending_batches": 64,
        "store.url": "store.db",
        "sampling.enabled": HAS_SAMPLER,
        "sampling.rate": 0.2,
        "workdir": str(tmp_path / "work"),
    }
    base.update(over)
    return load_config(None, base)


def test_end_to_end_one_incumbent_prediction_per_frame(media, tmp_path):
    served = []
    cfg = config(media, tmp_path)
    runner = Runner(cfg, on_prediction=served.append)
    summary = runner.run()

    total = sum(VIDEO_FRAMES.values()) + FOLDER_FRAMES
    assert summary.stop_reason == "sources finished"
    assert {cid: c["frames_read"] for cid, c in summary.cameras.items()} == {**VIDEO_FRAMES, "shelf": FOLDER_FRAMES}
    assert all(c["frames_served"] == c["frames_read"] and c["frames_dropped"] == 0 for c in summary.cameras.values())
    assert summary.frames_served == total and len(served) == total
    assert len({p.frame_id for p in served}) == total

    st = PredictionStore(str(tmp_path / "work" / "store.db"))
    assert st.count(frames, frames.c.run_id == runner.run_id) == total
    inc_rows = st.table_rows(predictions, predictions.c.role == "incumbent")
    assert len(inc_rows) == total and len({r["frame_id"] for r in inc_rows}) == total  # never duplicated, never lost
    assert {r["frame_id"]: r["label"] for r in inc_rows} == {p.frame_id: p.label for p in served}  # store == what was served
    n_shadow = st.count(predictions, predictions.c.role == "shadow")
    assert n_shadow / total >= 0.99 and summary.shadow["coverage"] >= 0.99
    assert summary.predictions_per_model[f"incumbent {served[0].model}"] == total
    # frame rows carry the source reference and image statistics
    rows = st.table_rows(frames)
    refs = {r["camera_id"]: r["source_ref"] for r in rows if r["seq"] == 3}
    assert refs["dock1"].endswith("dock1.avi#3") and refs["shelf"].endswith("img_003.png")
    assert all(r["brightness"] is not None and r["sharpness"] is not None for r in rows)
    kinds = {(e["camera_id"], e["kind"]) for e in st.table_rows(health_events)}
    assert ("shelf", "eof") in kinds and ("dock1", "connected") in kinds
    run = st.table_rows(runs, runs.c.run_id == runner.run_id)[0]
    assert json.loads(run["summary"])["frames_served"] == total
    assert json.loads(run["config"])["batching"]["batch_size"] == 8
    if HAS_SAMPLER:
        smp = st.table_rows(samples)
        assert smp and all(Path(s["image_path"]).is_file() for s in smp)
        assert {s["frame_id"] for s in smp} <= {r["frame_id"] for r in rows}
    st.close()

    text = summary.format_table()
    assert "dock1" in text and "shelf" in text and "coverage" in text
    out = summary.write_json(tmp_path / "summary.json")
    doc = json.loads(out.read_text())
    assert doc["frames_served"] == total and doc["fallbacks"] == {"cpu_fallback": 0, "stale": 0, "unknown": 0}
    assert doc["incumbent"]["latency_ms"]["p50"] is not None and doc["incumbent"]["providers"] == ["CPUExecutionProvider"]


def test_mismatched_class_lists_fail_before_any_frame_is_read(media, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner_mod, "open_sources", lambda *a, **k: calls.append("open") or [])
    monkeypatch.setattr(sources_mod.CameraReader, "start", lambda self: calls.append("start"))
    cfg = config(media, tmp_path, shadow={"uri": str(media["other"]), "providers": ["cpu"]})
    with pytest.raises(ModelCardError, match="different class lists"):
        Runner(cfg).run()
    assert calls == []
    assert not (tmp_path / "work" / "store.db").exists()  # not even the store was touched


def test_a_failure_half_way_through_building_closes_what_was_opened(media, tmp_path, monkeypatch):
    import socket

    from pipeline.types import StoreError

    servers = []

    class RecordingServer(runner_mod.HealthServer):
        def start(self):
            servers.append(self)
            return super().start()

    def broken_store(url):
        raise StoreError(f"cannot open prediction store {url!r}: simulated")

    monkeypatch.setattr(runner_mod, "HealthServer", RecordingServer)
    monkeypatch.setattr(runner_mod, "PredictionStore", broken_store)
    runner = Runner(config(media, tmp_path, **{"metrics.port": 0}))
    with pytest.raises(StoreError, match="simulated"):
        runner.run()
    # cameras and the metrics server were opened before the store failed: both are closed again
    assert len(runner.readers) == 3 and all(r.stats.state == "stopped" and not r.running for r in runner.readers)
    assert len(servers) == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", servers[0].port), timeout=1).close()


def test_max_frames_is_exact(media, tmp_path):
    cfg = config(media, tmp_path, sources=[{"uri": str(media["folder"]), "loop": True}], max_frames=53)
    summary = Runner(cfg).run()
    assert summary.stop_reason == "max_frames" and summary.frames_served == 53
    st = PredictionStore(str(tmp_path / "work" / "store.db"))
    assert st.count(frames) == 53 and st.count(predictions, predictions.c.role == "incumbent") == 53
    st.close()


def test_stop_drains_and_metrics_and_healthz_are_served(media, tmp_path):
    cfg = config(media, tmp_path, sources=[{"uri": str(media["folder"]), "loop": True}], **{"metrics.port": 0})
    scraped = {}
    runner: Runner

    def on_batch(served):
        if served.batch_id == 5:
            port = runner.metrics_port
            scraped["metrics"] = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            scraped["healthz"] = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).read())
            threading.Timer(0.2, runner.stop, args=("test stop",)).start()

    runner = Runner(cfg, on_batch=on_batch)
    summary = runner.run()
    assert summary.stop_reason == "test stop" and summary.frames_served > 40
    m = scraped["metrics"]
    assert re.search(r'shadowcam_frames_read_total\{camera="shelf"\} \d+', m)
    assert 'shadowcam_inference_latency_seconds_bucket{le="0.001",model=' in m
    assert "shadowcam_shadow_coverage" in m and 'shadowcam_fallbacks_total{kind="stale"} 0.0' in m
    assert "shadowcam_batch_size_count" in m and 'shadowcam_camera_state{camera="shelf",state=' in m
    h = scraped["healthz"]
    assert h["status"] == "ok" and h["run_id"] == runner.run_id and h["cameras"]["shelf"]["state"] in ("reading", "eof")
    assert h["frames_served"] >= 40 and h["last_fallback"] is None
    # drained: every frame served was stored, with exactly one incumbent prediction
    st = PredictionStore(str(tmp_path / "work" / "store.db"))
    assert st.count(frames) == summary.frames_served == st.count(predictions, predictions.c.role == "incumbent")
    st.close()


def test_cli_options_override_the_yaml(tmp_path, media):
    import argparse

    from pipeline.commands import run as run_cmd

    y = tmp_path / "c.yaml"
    y.write_text(
        "sources: [a.mp4]\nincumbent: {uri: x.onnx, timeout_s: 3}\nbatching: {batch_size: 4}\nshadow_mode: {rate: 0.5}\n"
    )
    p = argparse.ArgumentParser()
    run_cmd.add_arguments(p)
    args = p.parse_args(["--config", str(y), "--source", "v1.avi", "--source", "imgs/", "--loop", "--batch-size", "16",
                         "--shadow", "s.onnx", "--providers", "cuda,cpu", "--db", "postgresql://u@h/db", "--no-sampling",
                         "--metrics-port", "0", "--max-frames", "9"])
    cfg = run_cmd.build_config(args)
    assert [s.uri for s in cfg.sources] == ["v1.avi", "imgs/"] and all(s.loop for s in cfg.sources)
    assert cfg.batching.batch_size == 16 and cfg.shadow_mode.rate == 0.5
    assert cfg.incumbent.uri == "x.onnx" and cfg.incumbent.timeout_s == 3 and cfg.shadow.uri == "s.onnx"
    assert cfg.incumbent.providers == cfg.shadow.providers == ["cuda", "cpu"]
    assert cfg.store.url == "postgresql://u@h/db" and cfg.sampling.enabled is False
    assert cfg.metrics.port == 0 and cfg.max_frames == 9


def test_example_config_is_valid():
    cfg = load_config(ROOT / "configs" / "run.example.yaml")
    assert cfg.incumbent is not None and cfg.shadow is not None and len(cfg.sources) == 3


# --- the real command in a subprocess ------------------------------------------------------------------------

COMMIT_RE = re.compile(r"committed_frames_total=(\d+)")


class _Proc:
    """``shadowcam run`` with its stderr read on a thread (so the pipe never fills)."""

    def __init__(self, args: list[str], cwd: Path):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.p = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "-v", "run", *args], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        for line in self.p.stderr:
            self.err.append(line)

    def committed(self) -> int:
        nums = [int(m.group(1)) for line in list(self.err) for m in [COMMIT_RE.search(line)] if m]
        return max(nums, default=0)

    def wait_committed(self, n: int, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.committed() >= n:
                return self.committed()
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {n} committed frames (rc={self.p.poll()}):\n{''.join(self.err[-30:])}")

    def finish(self, timeout: float = 60.0) -> tuple[int, str]:
        out, _ = self.p.communicate(timeout=timeout)
        self._t.join(5)
        return self.p.returncode, out


def _cli_args(media, db: Path, extra=()) -> list[str]:
    return ["--source", str(media["folder"]), "--loop", "--incumbent", str(media["inc"]), "--shadow", str(media["sh"]),
            "--providers", "cpu", "--db", str(db), "--batch-size", "8", "--no-sampling", "--no-progress", *extra]


def test_kill_9_loses_nothing_committed(media, tmp_path):
    db = tmp_path / "kill.db"
    proc = _Proc(_cli_args(media, db), tmp_path)
    try:
        proc.wait_committed(300)
        time.sleep(0.3)  # mid-stream: more transactions in flight
        os.kill(proc.p.pid, signal.SIGKILL)
    finally:
        rc, _ = proc.finish()
    assert rc == -signal.SIGKILL
    committed = proc.committed()  # the largest total the run logged before it died
    assert committed >= 300

    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n_frames = con.execute("SELECT count(*) FROM frames").fetchone()[0]
    n_inc = con.execute("SELECT count(*) FROM predictions WHERE role='incumbent'").fetchone()[0]
    orphans = con.execute("SELECT count(*) FROM frames f WHERE NOT EXISTS "
                          "(SELECT 1 FROM predictions p WHERE p.frame_id=f.frame_id AND p.role='incumbent')").fetchone()[0]
    con.close()
    assert n_frames >= committed
    assert n_inc == n_frames and orphans == 0  # a frame and its prediction commit together
    st = PredictionStore(str(db))  # opens cleanly (WAL recovered), ready for the next run
    assert st.count(frames) == n_frames and st.list_runs()[0]["ended_at"] is None
    st.close()


def test_sigint_drains_flushes_and_prints_the_summary(media, tmp_path):
    db = tmp_path / "int.db"
    summary_path = tmp_path / "summary.json"
    proc = _Proc(_cli_args(media, db, ["--summary-json", str(summary_path)]), tmp_path)
    try:
        proc.wait_committed(100)
        proc.p.send_signal(signal.SIGINT)
        rc, out = proc.finish(timeout=60)
    finally:
        if proc.p.poll() is None:
            proc.p.kill()
    assert rc == 0, "".join(proc.err[-30:])
    assert "frames served" in out and "shelf" in out and "coverage" in out
    doc = json.loads(summary_path.read_text())
    assert doc["stop_reason"] == "SIGINT"
    st = PredictionStore(str(db))
    n = st.count(frames)
    assert n == doc["frames_served"] == st.count(predictions, predictions.c.role == "incumbent")
    assert st.list_runs()[0]["ended_at"] is not None
    st.close()


def test_busy_metrics_port_is_a_clear_error(media, tmp_path):
    import socket

    from pipeline.types import ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        cfg = config(media, tmp_path, **{"metrics.port": port})
        runner = Runner(cfg)
        with pytest.raises(ConfigError, match=f"metrics.port {port}"):
            runner.run()
    assert all(not r.running for r in runner.readers)


def test_structured_log_formats():
    import logging

    from pipeline.metrics import KeyValueFormatter

    rec = logging.LogRecord("pipeline.runner", logging.INFO, __file__, 1, "store_commit frames=%d", (5,), None)
    rec.kv = {"camera": "dock 1", "n": 3}
    line = KeyValueFormatter().format(rec)
    assert 'level=INFO logger=pipeline.runner msg="store_commit frames=5" camera="dock 1" n=3' in line
    doc = json.loads(KeyValueFormatter(json_lines=True).format(rec))
    assert doc["msg"] == "store_commit frames=5" and doc["camera"] == "dock 1" and doc["level"] == "INFO"
