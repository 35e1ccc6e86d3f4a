"""The reader: health, pacing, queueing and the end of the stream, on real files and on a scripted frame source."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.sources import (
    CameraReader,
    Corrupt,
    EndOfStream,
    NonImage,
    Picture,
    Restart,
    SourceSpec,
    Status,
    open_source,
    stop_all,
)
from pipeline.types import HealthKind
from tests.helpers.media import distinct_frame, make_image_folder, write_video
from tests.pipeline.sources.util import HEALTH, T0, kinds, read_all, wait_until


class ScriptedSource:
    """A frame source that yields ``items`` in order (an exception in the list is raised there), then ends with
    EndOfStream unless ``end`` is False. Records whether its generator was closed and close() was called."""

    def __init__(self, items, kind: str = "file", end: bool = True, forever: Picture | None = None) -> None:
        self.spec = SourceSpec(uri="scripted", kind=kind, camera_id="cam", display_uri="scripted")
        self.items = list(items)
        self.end = end
        self.forever = forever  # then keep yielding this picture until closed
        self.generator_closed = False
        self.closed = 0

    def frames(self, stop: threading.Event):
        try:
            for item in self.items:
                if isinstance(item, BaseException):
                    raise item
                yield item
            while self.forever is not None:
                yield self.forever
            if self.end:
                raise EndOfStream("scripted done")
        except GeneratorExit:
            self.generator_closed = True
            raise

    def close(self) -> None:
        self.closed += 1


def scripted_reader(source: ScriptedSource, health: CameraHealthConfig = HEALTH, **cfg) -> CameraReader:
    return CameraReader(source, SourceConfig(uri="scripted", **cfg), health, "r")


def pic(i: int, ts: float, ref: str = "ref", numbered: bool = False) -> Picture:
    return Picture(distinct_frame(i), ts, ref, numbered)


def test_reader_applies_statuses_and_counts_reconnects() -> None:
    src = ScriptedSource([
        Status("connecting"),
        Status("streaming", HealthKind.CONNECTED, "connected to scripted"),
        pic(0, 10.0, "cam", numbered=True),
        Status("reconnecting", HealthKind.DISCONNECTED, "scripted: read failed"),
        Status("streaming", HealthKind.CONNECTED, "reconnected to scripted after 1.00s"),
        pic(1, 11.0, "cam", numbered=True),
    ], kind="rtsp")
    r = scripted_reader(src)
    r.start()
    frames = read_all(r)
    assert [f.source_ref for f in frames] == ["cam#0", "cam#1"]  # numbered pictures get the seq appended
    assert r.stats.reconnects == 1  # the first connect is not a reconnect
    assert kinds(r.drain_events()) == ["connected", "disconnected", "connected", "eof"]
    assert r.stats.state == "eof" and src.closed == 1


def test_end_of_stream_is_one_eof_event_and_a_finished_reader() -> None:
    src = ScriptedSource([Status("reading", HealthKind.CONNECTED, "x"), pic(0, 1.0), pic(1, 2.0)])
    r = scripted_reader(src)
    wakeup = threading.Event()
    r.add_waker(wakeup)
    r.start()
    frames = read_all(r)
    assert [f.seq for f in frames] == [0, 1] and [f.timestamp for f in frames] == [1.0, 2.0]
    ev = r.drain_events()
    assert kinds(ev) == ["connected", "eof"] and ev[-1].detail == "scripted done"
    assert r.finished and r.stats.state == "eof" and r.error is None and wakeup.is_set()
    assert not src.generator_closed  # it ended by itself
    assert src.closed == 1


def test_a_source_that_returns_without_saying_why_still_ends_with_eof() -> None:
    r = scripted_reader(ScriptedSource([pic(0, 1.0)], end=False))
    r.start()
    assert len(read_all(r)) == 1
    ev = r.drain_events()
    assert kinds(ev) == ["eof"] and ev[0].detail == "file scripted ended"
    assert r.stats.state == "eof"


@pytest.mark.parametrize("bad, why", [(RuntimeError("boom"), "RuntimeError: boom"),
                                      ("not an item", "TypeError: camera cam: source yielded 'not an item'")])
def test_a_source_that_raises_fails_the_camera_only(bad, why: str) -> None:
    src = ScriptedSource([pic(0, 1.0), bad, pic(1, 2.0)])
    r = scripted_reader(src)
    r.start()
    frames = read_all(r)
    assert [f.seq for f in frames] == [0]  # what was queued before stays gettable
    assert r.stats.state == "failed" and r.error.startswith(why)
    ev = r.drain_events()
    assert kinds(ev) == ["disconnected"] and ev[0].detail.startswith(f"reader failed: {why}")
    assert src.closed == 1


def test_corrupt_unusable_and_non_image_items_are_counted() -> None:
    src = ScriptedSource([
        Corrupt("cannot decode image a.png"),
        Picture(None, 1.0, "b.png"),
        Picture(np.zeros((4, 4, 3), np.float32), 2.0, "c.png"),  # not a picture OpenCV would give
        NonImage("notes.txt"),
        Picture(distinct_frame(0)[:, :, 0], 3.0, "d.png"),  # grey: made BGR
    ])
    r = scripted_reader(src)
    r.start()
    frames = read_all(r)
    assert [f.source_ref for f in frames] == ["d.png"] and frames[0].image.shape == (48, 64, 3)
    assert r.stats.frames_corrupt == 3 and r.stats.skipped_non_image == 1
    ev = [e for e in r.drain_events() if e.kind == HealthKind.CORRUPT]
    assert [e.detail for e in ev] == ["cannot decode image a.png", "undecodable frame at b.png",
                                      "undecodable frame at c.png"]


def test_timestamps_never_go_backwards() -> None:
    r = scripted_reader(ScriptedSource([pic(0, 5.0), pic(1, 4.0), pic(2, 5.0), pic(3, 6.0)]))
    r.start()
    ts = [f.timestamp for f in read_all(r)]
    assert ts[0] == 5.0 and ts[3] == 6.0
    assert all(b > a for a, b in zip(ts, ts[1:])) and ts[1] - ts[0] < 1e-3


def test_restart_forgets_the_frozen_reference() -> None:
    still = pic(7, 0.0)
    health = CameraHealthConfig(frozen_after_s=1.0)

    def run(restart: bool) -> CameraReader:
        items = []
        for k in range(3):  # three passes of the same still picture, 1 s apart
            items.append(Picture(still.image, float(k), "still"))
            if restart:
                items.append(Restart())
        r = scripted_reader(ScriptedSource(items), health)
        r.start()
        read_all(r)
        return r

    assert run(restart=False).stats.frames_frozen == 2  # 1 s and 2 s after the first: frozen
    r = run(restart=True)
    assert r.stats.frames_frozen == 0 and r.stats.frames_read == 3


def test_stop_closes_a_blocked_source() -> None:
    src = ScriptedSource([Status("reading", HealthKind.CONNECTED, "x")], forever=pic(0, 1.0))
    r = scripted_reader(src, queue_size=2)  # a file kind: blocks when full
    r.start()
    wait_until(lambda: r.queue_depth == 2, 10, "the queue to fill")
    time.sleep(0.1)
    assert r.stats.frames_read == 2 and r.running  # blocked on the full queue
    r.stop(timeout=5)
    assert not r.running and src.generator_closed and src.closed == 1
    assert r.stats.state == "stopped" and "eof" not in kinds(r.drain_events())
    assert [f.seq for f in (r.get(0), r.get(0))] == [0, 1] and r.finished


def test_live_max_fps_skips_and_files_wait() -> None:
    frames = [pic(i, float(i)) for i in range(20)]
    live = scripted_reader(ScriptedSource(frames, kind="rtsp"), max_fps=1)
    live.start()
    got = read_all(live)
    # 20 pictures arrive at once: a short burst passes (the pacer lets a stream catch up by one interval), the
    # rest come too early for 1 fps
    assert live.stats.frames_skipped == 20 - len(got) and 1 <= len(got) <= 4
    file = scripted_reader(ScriptedSource(frames[:4]), max_fps=50)
    t = time.monotonic()
    file.start()
    assert len(read_all(file)) == 4 and file.stats.frames_skipped == 0
    assert time.monotonic() - t >= 3 / 50 * 0.9


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

