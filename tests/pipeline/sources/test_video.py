"""Video files written with cv2.VideoWriter: the VideoFrames iterator on its own, and read through a reader."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.sources import EndOfStream, Picture, Restart, Status, VideoFrames, open_source, resolve_source
from pipeline.types import ConfigError, HealthKind
from tests.helpers.media import corrupt_avi_frames, write_video
from tests.pipeline.sources.util import HEALTH, T0, kinds, read_all


def test_video_iterator_loops_with_a_continuous_clock(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 3, fps=10)
    cfg = SourceConfig(uri=str(video), loop=True)
    src = VideoFrames(resolve_source(cfg), cfg, t0=T0)
    gen = src.frames(threading.Event())
    items = [next(gen) for _ in range(9)]  # connected, 3 pictures, restart, 3 pictures, restart
    gen.close()
    assert items[0] == Status("reading", HealthKind.CONNECTED, f"video file {video.resolve()}")
    assert [type(i) for i in items[1:]] == [Picture] * 3 + [Restart] + [Picture] * 3 + [Restart]
    pictures = [i for i in items if isinstance(i, Picture)]
    assert [p.source_ref for p in pictures] == [f"{video.resolve()}#{i % 3}" for i in range(6)]
    np.testing.assert_allclose([p.timestamp - T0 for p in pictures], np.arange(6) * 0.1, atol=1e-6)
    assert not any(p.numbered for p in pictures)
    src.close()
    assert src.capture is None
    src.close()  # twice is fine


def test_video_iterator_ends_with_end_of_stream(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 2)
    cfg = SourceConfig(uri=str(video))
    src = VideoFrames(resolve_source(cfg), cfg, t0=T0)
    items = []
    with pytest.raises(EndOfStream, match=f"^video file {video.resolve()} done$"):
        for item in src.frames(threading.Event()):
            items.append(item)
    assert [type(i) for i in items] == [Status, Picture, Picture]
    src.close()


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
    assert r.source.capture is None  # released when the reader ended


def test_decode_threads_reach_ffmpeg_and_frames_do_not_change(tmp_path: Path) -> None:
    video = write_video(tmp_path / "belt.mp4", 12, fps=10, codec="mp4v", size=(160, 120))  # frame-threaded codec
    got = {}
    for n in (1, 2, 0):
        r = open_source(SourceConfig(uri=str(video), decode_threads=n), HEALTH, "r", t0=T0)
        threads = r.source.capture.get(cv2.CAP_PROP_N_THREADS)
        r.start()
        got[n] = read_all(r)
        r.stop()
        if n:
            assert threads == n, f"decode_threads={n} but FFMPEG uses {threads}"
    assert SourceConfig(uri="x.mp4").decode_threads == 1  # default: one core per camera
    for n in (2, 0):
        assert len(got[n]) == len(got[1]) == 12
        assert all(np.array_equal(a.image, b.image) for a, b in zip(got[1], got[n]))
    # config.py may wrap pydantic's ValueError in its ConfigError
    with pytest.raises((ValueError, ConfigError), match="decode_threads"):
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
