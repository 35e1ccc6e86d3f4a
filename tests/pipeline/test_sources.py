"""Camera readers on real media: videos written with cv2.VideoWriter, image folders, a real RTSP server
(GStreamer, killed and restarted mid-run) and a real MJPEG-over-HTTP server."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.sources import (
    CameraReader,
    backoff_delay,
    classify_uri,
    derive_camera_id,
    open_source,
    open_sources,
    redact_uri,
    stop_all,
)
from pipeline.types import CameraUnavailableError, ConfigError, Frame, HealthKind
from tests.helpers.media import (
    MjpegHttpServer,
    corrupt_avi_frames,
    distinct_frame,
    make_image_folder,
    write_video,
)
from tests.helpers.rtsp_server import free_port, rtsp_server  # noqa: F401 - pytest fixture

HEALTH = CameraHealthConfig()
T0 = 1_700_000_000.0


def read_all(reader: CameraReader, timeout_s: float = 30.0) -> list[Frame]:
    """Consume a reader until it finishes (files/folders)."""
    out: list[Frame] = []
    deadline = time.monotonic() + timeout_s
    while not reader.finished:
        assert time.monotonic() < deadline, f"reader {reader} did not finish"
        f = reader.get(timeout=0.5)
        if f is not None:
            out.append(f)
    return out


def wait_until(pred, timeout_s: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(step)


def kinds(events) -> list[str]:
    return [e.kind.value for e in events]


# ----------------------------------------------------------------------------- uri handling
def test_classify_and_derive_ids(tmp_path: Path) -> None:
    video = write_video(tmp_path / "dock_3.avi", 3)
    folder = tmp_path / "shelf cam"
    make_image_folder(folder, 2)
    cases = [
        (str(video), "file", "dock_3"),
        (str(folder), "folder", "shelf_cam"),
        ("rtsp://admin:secret@10.0.0.7:554/stream1", "rtsp", "10.0.0.7_554_stream1"),
        ("rtsps://cam.example/live/main", "rtsp", "cam.example_live_main"),
        ("http://10.0.0.8/video.mjpg", "http", "10.0.0.8_video.mjpg"),
        ("2", "usb", "usb2"),
    ]
    for uri, kind, cid in cases:
        assert classify_uri(uri) == kind
        assert derive_camera_id(uri, kind) == cid
    assert redact_uri("rtsp://admin:secret@10.0.0.7:554/s") == "rtsp://admin:***@10.0.0.7:554/s"
    assert redact_uri("rtsp://10.0.0.7/s") == "rtsp://10.0.0.7/s"


@pytest.mark.parametrize("uri", ["no/such/video.mp4", "/nonexistent/folder/"])
def test_missing_source_is_a_clear_error(uri: str) -> None:
    with pytest.raises(CameraUnavailableError, match="no such file or folder") as ei:
        open_source(SourceConfig(uri=uri), HEALTH, "r")
    assert uri in str(ei.value) and "\n" not in str(ei.value)


def test_unopenable_file_and_empty_folder(tmp_path: Path) -> None:
    bogus = tmp_path / "cam.avi"
    bogus.write_bytes(b"definitely not a video" * 100)
    with pytest.raises(CameraUnavailableError, match="cannot open .* as a video") as ei:
        open_source(SourceConfig(uri=str(bogus)), HEALTH, "r")
    assert str(bogus) in str(ei.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(CameraUnavailableError, match="folder has no images"):
        open_source(SourceConfig(uri=str(empty)), HEALTH, "r")


def test_duplicate_and_invalid_camera_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    a = write_video(tmp_path / "a" / "cam.avi", 3)
    b = write_video(tmp_path / "cam.avi", 3)
    with pytest.raises(ConfigError, match="duplicate camera id 'cam'"):
        open_sources([SourceConfig(uri=str(a)), SourceConfig(uri=str(b))], HEALTH, "r")
    readers = open_sources([SourceConfig(uri=str(a)), SourceConfig(uri=str(b), id="cam_b")], HEALTH, "r")
    assert [r.camera_id for r in readers] == ["cam", "cam_b"]
    stop_all(readers)
    with pytest.raises(ConfigError, match="camera id 'dock:1'"):
        open_source(SourceConfig(uri=str(a), id="dock:1"), HEALTH, "r")


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


# ----------------------------------------------------------------------------- files and folders
def test_video_file_frames_refs_and_timestamps(tmp_path: Path) -> None:
    video = write_video(tmp_path / "belt.avi", 25, fps=10)
    r = open_source(SourceConfig(uri=str(video)), HEALTH, "run7", t0=T0)
    assert r.on_full == "block"  # auto: files block
    r.start()
    frames = read_all(r)
    r.stop()
    assert len(frames) == 25 and r.stats.frames_read == 25
    assert [f.seq for f in frames] == list(range(25))
    assert [f.source_ref for f in frames] == [f"{video.resolve()}#{i}" for i in range(25)]
    assert [f.frame_id for f in frames] == [f"run7:belt:{i}" for i in range(25)]
    ts = np.array([f.timestamp for f in frames])
    np.testing.assert_allclose(ts - T0, np.arange(25) * 0.1, atol=1e-6)  # the video's own clock
    assert frames[0].image.shape == (48, 64, 3) and frames[0].image.dtype == np.uint8
    assert r.stats.frames_dropped == r.stats.frames_corrupt == r.stats.frames_blank == r.stats.frames_frozen == 0
    assert kinds(r.drain_events()) == ["connected", "eof"]
    assert r.drain_events() == []
    assert r.finished and r.stats.state == "eof"


def test_decode_threads_reach_ffmpeg_and_frames_do_not_change(tmp_path: Path) -> None:
    video = write_video(tmp_path / "belt.mp4", 12, fps=10, codec="mp4v", size=(160, 120))  # frame-threaded codec
    got = {}
    for n in (1, 2, 0):
        r = open_source(SourceConfig(uri=str(video), decode_threads=n), HEALTH, "r", t0=T0)
        threads = r._cap.get(cv2.CAP_PROP_N_THREADS)
        r.start()
        got[n] = read_all(r)
        r.stop()
        if n:
            assert threads == n, f"decode_threads={n} but FFMPEG uses {threads}"
    assert SourceConfig(uri="x.mp4").decode_threads == 1  # default: one core per camera
    for n in (2, 0):
        assert len(got[n]) == len(got[1]) == 12
        assert all(np.array_equal(a.image, b.image) for a, b in zip(got[1], got[n]))
    with pytest.raises(ValueError, match="decode_threads"):
        SourceConfig(uri="x.mp4", decode_threads=-1)


def test_corrupt_video_frame_is_counted_and_skipped(tmp_path: Path) -> None:
    video = corrupt_avi_frames(write_video(tmp_path / "cam.avi", 20), [5])
    r = open_source(SourceConfig(uri=str(video)), HEALTH, "r")
    r.start()
    frames = read_all(r)
    assert r.stats.frames_read == 19 and r.stats.frames_corrupt == 1
    # the source_ref index is the frame's position in the file, so frame 6 stays "#6"
    assert [int(f.source_ref.rsplit("#", 1)[1]) for f in frames] == [i for i in range(20) if i != 5]
    assert [f.seq for f in frames] == list(range(19))
    corrupt = [e for e in r.drain_events() if e.kind == HealthKind.CORRUPT]
    assert len(corrupt) == 1 and corrupt[0].detail.endswith("cam.avi#5")


def test_image_folder_sorted_with_corrupt_file(tmp_path: Path) -> None:
    folder = tmp_path / "cam_a"
    good = make_image_folder(folder, 10, corrupt=["img_004x.jpg"], extra=["notes.txt", "Thumbs.db"])
    r = open_source(SourceConfig(uri=str(folder)), HEALTH, "r")
    r.start()
    frames = read_all(r)
    assert r.camera_id == "cam_a"
    assert [f.source_ref for f in frames] == [str(p.resolve()) for p in good]
    assert r.stats.frames_read == 10 and r.stats.frames_corrupt == 1
    np.testing.assert_array_equal(frames[3].image, cv2.imread(str(good[3])))
    ts = [f.timestamp for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    ev = r.drain_events()
    assert kinds(ev) == ["connected", "corrupt", "eof"]
    assert "img_004x.jpg" in ev[1].detail


def test_folder_and_video_loop(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    good = make_image_folder(folder, 3)
    video = write_video(tmp_path / "v.avi", 4, fps=10)
    rf = open_source(SourceConfig(uri=str(folder), loop=True), HEALTH, "r")
    rv = open_source(SourceConfig(uri=str(video), loop=True, queue_size=2), HEALTH, "r", t0=T0)
    rf.start()
    rv.start()
    got_f = [rf.get(timeout=5) for _ in range(7)]
    got_v = [rv.get(timeout=5) for _ in range(10)]
    stop_all([rf, rv])
    assert [f.source_ref for f in got_f] == [str(good[i % 3].resolve()) for i in range(7)]
    assert [f.seq for f in got_f] == list(range(7))
    assert [f.source_ref for f in got_v] == [f"{video.resolve()}#{i % 4}" for i in range(10)]
    # the video clock continues across passes: 0.0 .. 0.3, then 0.4 .. 0.7, ...
    np.testing.assert_allclose([f.timestamp - T0 for f in got_v], np.arange(10) * 0.1, atol=1e-6)
    for r in (rf, rv):  # stopped: what is still queued can be drained, then the reader is finished
        while r.get(timeout=0.1) is not None:
            pass
        assert r.finished and r.stats.state == "stopped"


def test_block_versus_drop_oldest_with_a_slow_consumer(tmp_path: Path) -> None:
    video = write_video(tmp_path / "cam.avi", 30)
    blocking = open_source(SourceConfig(uri=str(video), queue_size=5), HEALTH, "r")
    dropping = open_source(SourceConfig(uri=str(video), id="cam2", queue_size=5, on_full="drop_oldest"), HEALTH, "r")
    assert (blocking.on_full, dropping.on_full) == ("block", "drop_oldest")
    blocking.start()
    dropping.start()
    # nobody consumes: the dropping reader runs to EOF keeping the newest 5, the blocking one waits
    wait_until(lambda: dropping.stats.state == "eof", 20, "the drop_oldest reader to reach EOF")
    wait_until(lambda: blocking.queue_depth == 5, 20, "the blocking reader to fill its queue")
    time.sleep(0.2)
    assert blocking.stats.frames_read == 5 and blocking.stats.state == "reading"
    kept = read_all(dropping)
    assert [f.seq for f in kept] == [25, 26, 27, 28, 29]
    assert dropping.stats.frames_read == 30 and dropping.stats.frames_dropped == 25
    slow = []
    while not blocking.finished:  # a slow consumer still gets every frame, in order
        f = blocking.get(timeout=1)
        if f is not None:
            slow.append(f.seq)
            time.sleep(0.002)
    assert slow == list(range(30)) and blocking.stats.frames_dropped == 0


def test_live_sources_default_to_drop_oldest() -> None:
    for uri in ("rtsp://127.0.0.1:9/x", "http://127.0.0.1:9/v.mjpg", "3"):
        assert open_source(SourceConfig(uri=uri), HEALTH, "r").on_full == "drop_oldest"
        assert open_source(SourceConfig(uri=uri, on_full="block"), HEALTH, "r").on_full == "block"


def test_max_fps_caps_a_file_without_losing_frames(tmp_path: Path) -> None:
    video = write_video(tmp_path / "cam.avi", 13)
    r = open_source(SourceConfig(uri=str(video), max_fps=40), HEALTH, "r")
    t = time.monotonic()
    r.start()
    frames = read_all(r)
    elapsed = time.monotonic() - t
    assert len(frames) == 13 and r.stats.frames_skipped == 0
    assert elapsed >= 12 / 40 * 0.9  # lower bound only: 12 intervals of 25 ms were slept


def test_blank_and_frozen_frames_are_reported_not_passed_on(tmp_path: Path) -> None:
    still = distinct_frame(500)
    black = np.zeros((48, 64, 3), np.uint8)
    content = (
        [distinct_frame(i) for i in range(10)]  # 0-9 normal
        + [black] * 8  # 10-17 blank
        + [distinct_frame(i) for i in range(20, 25)]  # 18-22 normal
        + [still] * 25  # 23-47 frozen picture (10 fps: 2.4 s)
        + [distinct_frame(i) for i in range(60, 65)]  # 48-52 normal
    )
    video = write_video(tmp_path / "cam.avi", content, fps=10)
    health = CameraHealthConfig(frozen_after_s=1.0)
    r = open_source(SourceConfig(uri=str(video)), health, "r")
    r.start()
    frames = read_all(r)
    idx = [int(f.source_ref.rsplit("#", 1)[1]) for f in frames]
    # the first frozen frame and the 9 repeats within 1.0 s pass (a still scene looks the same);
    # repeats 10..24 (>= 1.0 s after the first) are frozen
    expected = list(range(10)) + list(range(18, 23)) + list(range(23, 33)) + list(range(48, 53))
    assert idx == expected
    assert r.stats.frames_blank == 8 and r.stats.frames_frozen == 15
    assert r.stats.frames_read == len(expected) == 30
    ev = [e for e in r.drain_events() if e.kind not in (HealthKind.CONNECTED, HealthKind.EOF)]
    assert kinds(ev) == ["blank", "recovered", "frozen", "recovered"]
    assert "blank ended" in ev[1].detail and "frozen ended" in ev[3].detail


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
    import pipeline.sources as sources

    monkeypatch.setattr(sources, "_ffmpeg_env_ours", None)
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
    assert sources.apply_ffmpeg_capture_options(CameraHealthConfig(ffmpeg_analyze_s=0.25)) == "rtsp_transport;tcp"
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS")
    assert sources.apply_ffmpeg_capture_options(CameraHealthConfig(ffmpeg_analyze_s=0.25)) == "analyzeduration;250000"
    open_source(SourceConfig(uri="rtsp://127.0.0.1:9/x"), CameraHealthConfig(ffmpeg_analyze_s=0.5), "r")
    assert sources.os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] == "analyzeduration;500000"
