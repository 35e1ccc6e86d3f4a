"""Live cameras: backoff, a camera that never connects, a real MJPEG-over-HTTP server and a real RTSP server
(GStreamer, killed and restarted mid-run)."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.sources import LiveFrames, Status, backoff_delay, open_source, resolve_source, stop_all
from pipeline.types import HealthKind
from tests.helpers.media import MjpegHttpServer, write_video
from tests.helpers.rtsp_server import free_port, rtsp_server  # noqa: F401 - pytest fixture
from tests.pipeline.sources.util import HEALTH, kinds, wait_until


def test_backoff_delay_grows_caps_and_jitters() -> None:
    h = CameraHealthConfig(reconnect_initial_s=0.5, reconnect_max_s=4.0, reconnect_jitter=0.0)
    assert [backoff_delay(a, h) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    hj = CameraHealthConfig(reconnect_initial_s=1.0, reconnect_max_s=8.0, reconnect_jitter=0.25)
    rng = random.Random(0)
    samples = np.array([backoff_delay(3, hj, rng) for _ in range(2000)])
    assert samples.min() >= 3.0 and samples.max() <= 5.0  # 4 s +- 25 %
    assert abs(samples.mean() - 4.0) < 0.05 and samples.std() > 0.4  # uniform jitter: sd = 0.5/sqrt(3)*... ~0.577
    with pytest.raises(ValueError):
        backoff_delay(0, h)




def test_live_iterator_reconnects_with_backoff_until_stopped() -> None:
    port = free_port()  # nothing listens there: connection refused at once
    health = CameraHealthConfig(reconnect_initial_s=0.01, reconnect_max_s=0.02, reconnect_jitter=0.0)
    cfg = SourceConfig(uri=f"rtsp://127.0.0.1:{port}/x")
    src = LiveFrames(resolve_source(cfg), cfg, health, seed=0)
    stop = threading.Event()
    gen = src.frames(stop)
    items = [next(gen) for _ in range(6)]
    display = f"rtsp://127.0.0.1:{port}/x"
    assert items == [
        Status("connecting"),
        Status("reconnecting", HealthKind.RECONNECTING, f"attempt 1 to open {display} in 0.01s"),
        Status("connecting"),  # never connected yet: still "connecting" between the attempts
        Status("reconnecting", HealthKind.RECONNECTING, f"attempt 2 to open {display} in 0.02s"),
        Status("connecting"),
        Status("reconnecting", HealthKind.RECONNECTING, f"attempt 3 to open {display} in 0.02s"),
    ]
    stop.set()
    assert list(gen) == []  # a live source never ends by itself: it returns once stopped
    assert src.capture is None


def test_live_frames_needs_a_live_source(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 2)
    cfg = SourceConfig(uri=str(video))
    with pytest.raises(ValueError, match="needs an rtsp, http or usb source, got 'file'"):
        LiveFrames(resolve_source(cfg), cfg, HEALTH)


def test_live_source_that_never_connects_keeps_retrying_until_stopped() -> None:
    port = free_port()  # nothing listens there: connection refused at once
    health = CameraHealthConfig(reconnect_initial_s=0.05, reconnect_max_s=0.2, reconnect_jitter=0.0)
    readers = [open_source(SourceConfig(uri=f"rtsp://127.0.0.1:{port}/x"), health, "r"),
               open_source(SourceConfig(uri="63"), health, "r")]  # no such USB camera
    events: dict[str, list] = {r.camera_id: [] for r in readers}
    for r in readers:
        r.start()

    def enough() -> bool:
        for r in readers:
            events[r.camera_id] += r.drain_events()
        return all(len(v) >= 5 for v in events.values())

    wait_until(enough, 30, "5 reconnect attempts per camera")
    for r in readers:
        assert not r.finished and r.get(timeout=0) is None
        ev = events[r.camera_id]
        assert set(kinds(ev)) == {"reconnecting"}
        delays = [float(e.detail.rsplit(" in ", 1)[1].rstrip("s")) for e in ev[:5]]
        assert delays == [0.05, 0.1, 0.2, 0.2, 0.2]  # exponential, capped (jitter off)
    t = time.monotonic()
    stop_all(readers)
    assert time.monotonic() - t < 5
    assert all(r.finished and r.stats.state == "stopped" for r in readers)


# ----------------------------------------------------------------------------- live streams (real servers)
def test_http_mjpeg_stream() -> None:
    with MjpegHttpServer(fps=30) as srv:
        r = open_source(SourceConfig(uri=srv.url, id="ipcam"), HEALTH, "r")
        r.start()
        try:
            frames = [r.get(timeout=10) for _ in range(10)]
        finally:
            r.stop()
    assert all(f is not None for f in frames)
    assert [f.source_ref for f in frames] == [f"{srv.url}#{f.seq}" for f in frames]
    assert frames[0].image.shape == (48, 64, 3)
    seqs = [f.seq for f in frames]
    ts = [f.timestamp for f in frames]
    assert seqs == sorted(seqs) and all(b > a for a, b in zip(ts, ts[1:]))
    assert kinds(r.drain_events())[0] == "connected"


@pytest.mark.rtsp
def test_rtsp_frames_drop_oldest_and_max_fps(rtsp_server) -> None:  # noqa: F811 - fixture
    url = rtsp_server.url
    fast = open_source(SourceConfig(uri=url, id="fast", queue_size=4), HEALTH, "r")
    capped = open_source(SourceConfig(uri=url, id="capped", max_fps=4), HEALTH, "r")
    for r in (fast, capped):
        r.start()
    try:
        # nobody consumes `fast`: its queue stays at 4 and the oldest frames are dropped
        wait_until(lambda: fast.stats.frames_read >= 30 and capped.stats.frames_skipped >= 15, 30,
                   "30 RTSP frames")
        assert fast.queue_depth == 4
        assert fast.stats.frames_dropped >= fast.stats.frames_read - 4 - 1
        frames = [fast.get(timeout=5) for _ in range(8)]
    finally:
        stop_all([fast, capped])
    assert all(f is not None for f in frames)
    assert [f.source_ref for f in frames] == [f"{url}#{f.seq}" for f in frames]
    assert frames[0].image.shape == (120, 160, 3)
    seqs = [f.seq for f in frames]
    ts = [f.timestamp for f in frames]
    assert seqs == sorted(seqs) and seqs[0] >= 20  # the old ones were dropped
    assert all(b > a for a, b in zip(ts, ts[1:]))
    assert fast.stats.frames_blank == fast.stats.frames_frozen == 0  # the moving ball is neither
    # 15 fps source capped at 4 fps: most frames skipped (loose: the first burst after connecting is buffered)
    s = capped.stats
    assert s.frames_skipped > s.frames_read
    print(f"\nRTSP: fast read={fast.stats.frames_read} dropped={fast.stats.frames_dropped}; "
          f"capped read={s.frames_read} skipped={s.frames_skipped}")


@pytest.mark.rtsp
def test_rtsp_server_killed_and_restarted_camera_reconnects_others_keep_flowing(rtsp_server, tmp_path: Path) -> None:  # noqa: F811
    health = CameraHealthConfig(reconnect_initial_s=0.25, reconnect_max_s=1.0, read_timeout_s=3, open_timeout_s=5)
    video = write_video(tmp_path / "dock.avi", 40, fps=20)
    rtsp = open_source(SourceConfig(uri=rtsp_server.url, id="rtsp"), health, "r")
    file = open_source(SourceConfig(uri=str(video), id="dock", loop=True, max_fps=40), health, "r")
    arrivals: dict[str, list[tuple[float, int]]] = {"rtsp": [], "dock": []}
    events: list = []
    stop = threading.Event()

    def consume() -> None:  # one consumer for both cameras, as the batcher would be
        while not stop.is_set():
            for r in (rtsp, file):
                f = r.get(timeout=0.01)
                if f is not None:
                    arrivals[r.camera_id].append((time.monotonic(), f.seq))
                events.extend(r.drain_events())

    consumer = threading.Thread(target=consume, daemon=True)
    for r in (rtsp, file):
        r.start()
    consumer.start()
    try:
        wait_until(lambda: len(arrivals["rtsp"]) >= 30, 30, "RTSP frames before the outage")
        t_kill = time.monotonic()
        rtsp_server.kill()
        wait_until(lambda: HealthKind.DISCONNECTED in [e.kind for e in events], 15, "the disconnect")
        t_disc = time.monotonic()
        time.sleep(max(0.0, t_kill + 3.0 - time.monotonic()))  # a 3 s outage
        n_rtsp_before = len(arrivals["rtsp"])
        t_restart = time.monotonic()
        rtsp_server.start()  # same port, same path
        wait_until(lambda: len(arrivals["rtsp"]) >= n_rtsp_before + 15, 60, "RTSP frames after the restart")
        t_back = next(t for t, _ in arrivals["rtsp"][n_rtsp_before:])
    finally:
        stop.set()
        consumer.join(5)
        stop_all([rtsp, file])
    seq = [e.kind.value for e in events if e.camera_id == "rtsp"]
    first_disc = seq.index("disconnected")
    assert seq[0] == "connected"
    assert seq[first_disc:first_disc + 2] == ["disconnected", "reconnecting"]
    assert seq[-1] == "connected" and rtsp.stats.reconnects == 1
    assert rtsp.stats.state == "stopped"
    # the file camera never stopped: frames arrived throughout the outage
    during = [t for t, _ in arrivals["dock"] if t_kill <= t <= t_back]
    gaps = np.diff([t for t, _ in arrivals["dock"] if t_kill - 1 <= t <= t_back + 1])
    assert len(during) >= 0.5 * 40 * (t_back - t_kill) * 0.5  # loose: 40 fps cap, shared CPU
    assert gaps.max() < 1.0
    assert [e for e in events if e.camera_id == "dock" and e.kind != HealthKind.CONNECTED] == []
    rtsp_seqs = [s for _, s in arrivals["rtsp"]]
    assert rtsp_seqs == sorted(rtsp_seqs) and len(set(rtsp_seqs)) == len(rtsp_seqs)
    print(f"\nRTSP outage: kill->disconnected {t_disc - t_kill:.2f}s, restart->first frame {t_back - t_restart:.2f}s, "
          f"camera gap {t_back - t_kill:.2f}s; file frames during the outage {len(during)} "
          f"(max gap {gaps.max() * 1000:.0f} ms)")


def test_ffmpeg_capture_options_respect_the_users_choice(monkeypatch) -> None:

    import pipeline.sources.ffmpeg as ffmpeg

    monkeypatch.setattr(ffmpeg, "_ffmpeg_env_ours", None)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    assert ffmpeg.apply_ffmpeg_capture_options(CameraHealthConfig(ffmpeg_analyze_s=0.25)) == "rtsp_transport;tcp"
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    assert ffmpeg.apply_ffmpeg_capture_options(CameraHealthConfig(ffmpeg_analyze_s=0.25)) == "analyzeduration;250000"
