"""Cross-camera batching over real readers of videos and folders written by the tests."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.batching import Batcher, PrefetchingBatcher, resize_into
from pipeline.config import BatchingConfig, CameraHealthConfig, SourceConfig
from pipeline.sources import CameraReader, open_source, open_sources, stop_all
from pipeline.types import ConfigError, FrameBatch
from tests.helpers.media import make_image_folder, write_video

HEALTH = CameraHealthConfig()


def wait_until(pred, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


def three_videos(tmp_path: Path, counts=(20, 30, 40)) -> list[SourceConfig]:
    return [
        SourceConfig(uri=str(write_video(tmp_path / f"cam{i}.avi", n, seed=i)), queue_size=64)
        for i, n in enumerate(counts)
    ]


def prefilled(tmp_path: Path, counts) -> list[CameraReader]:
    """Readers that have read their whole file already (queues hold every frame)."""
    readers = open_sources(three_videos(tmp_path, counts), HEALTH, "r")
    for r in readers:
        r.start()
    wait_until(lambda: all(r.stats.state == "eof" for r in readers), 30, "the readers to reach EOF")
    return readers


def test_three_cameras_every_frame_exactly_once(tmp_path: Path) -> None:
    readers = open_sources(three_videos(tmp_path), HEALTH, "r")
    for r in readers:
        r.start()
    batcher = Batcher(readers, BatchingConfig(batch_size=8, max_wait_ms=50), input_size=(24, 32))
    batches = list(batcher)
    assert batcher.next_batch() is None  # stays done
    seen = [(f.camera_id, f.seq) for b in batches for f in b.frames]
    assert len(seen) == 90 and len(set(seen)) == 90
    assert Counter(c for c, _ in seen) == {"cam0": 20, "cam1": 30, "cam2": 40}
    for cam in ("cam0", "cam1", "cam2"):  # per-camera order is preserved
        seqs = [s for c, s in seen if c == cam]
        assert seqs == sorted(seqs)
    for b in batches:
        assert isinstance(b, FrameBatch) and 1 <= len(b) <= 8
        assert b.images.shape == (len(b), 24, 32, 3) and b.images.dtype == np.uint8
    assert batcher.batches == len(batches) and batcher.frames == 90


def test_round_robin_fairness_and_full_batches(tmp_path: Path) -> None:
    readers = prefilled(tmp_path, (12, 12, 30))
    batcher = Batcher(readers, BatchingConfig(batch_size=9, max_wait_ms=1000), input_size=(16, 16))
    per_batch = [Counter(f.camera_id for f in b.frames) for b in batcher]
    # while all three have frames: 3 each; then cam2 alone fills whole batches
    assert per_batch == [Counter(cam0=3, cam1=3, cam2=3)] * 4 + [Counter(cam2=9)] * 2


def test_the_first_camera_rotates_between_batches(tmp_path: Path) -> None:
    readers = prefilled(tmp_path, (20, 20, 20))
    batcher = Batcher(readers, BatchingConfig(batch_size=4, max_wait_ms=1000), input_size=(16, 16))
    batches = [batcher.next_batch() for _ in range(3)]
    assert [b.frames[0].camera_id for b in batches] == ["cam0", "cam1", "cam2"]
    assert Counter(f.camera_id for b in batches for f in b.frames) == {"cam0": 4, "cam1": 4, "cam2": 4}
    assert [f.camera_id for f in batches[1].frames] == ["cam1", "cam2", "cam0", "cam1"]
    stop_all(readers)


def test_max_wait_flushes_a_partial_batch(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "slow", 4)
    # a camera at 5 fps that never ends: a batch of 32 would take 6 s; max_wait flushes after 100 ms
    r = open_source(SourceConfig(uri=str(tmp_path / "slow"), loop=True, max_fps=5), HEALTH, "r")
    r.start()
    batcher = Batcher([r], BatchingConfig(batch_size=32, max_wait_ms=100), input_size=(16, 16))
    try:
        b = batcher.next_batch()
        assert b is not None and 1 <= len(b) < 32
    finally:
        r.stop()
    while batcher.next_batch() is not None:  # what was queued before the stop is drained, then None
        pass
    assert r.finished


def test_stop_ends_batching_of_live_readers(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "f", 3)
    r = open_source(SourceConfig(uri=str(tmp_path / "f"), loop=True, max_fps=50), HEALTH, "r")
    r.start()
    batcher = Batcher([r], BatchingConfig(batch_size=4, max_wait_ms=20), input_size=(8, 8))
    assert batcher.next_batch() is not None
    batcher.stop()
    assert batcher.next_batch() is None
    r.stop()


@pytest.mark.parametrize("interp, flag", [("area", cv2.INTER_AREA), ("linear", cv2.INTER_LINEAR),
                                          ("nearest", cv2.INTER_NEAREST)])
def test_resize_matches_opencv_and_keeps_bgr(tmp_path: Path, interp: str, flag: int) -> None:
    r = open_source(SourceConfig(uri=str(write_video(tmp_path / "c.avi", 5))), HEALTH, "r")
    r.start()
    batcher = Batcher([r], BatchingConfig(batch_size=5, max_wait_ms=2000), input_size=(24, 40), interpolation=interp)
    b = batcher.next_batch()
    assert b is not None and len(b) == 5
    for f, img in zip(b.frames, b.images):
        np.testing.assert_array_equal(img, cv2.resize(f.image, (40, 24), interpolation=flag))
    # same size in and out: copied untouched
    r2 = open_source(SourceConfig(uri=str(tmp_path / "c.avi"), id="c2"), HEALTH, "r")
    r2.start()
    b2 = Batcher([r2], BatchingConfig(batch_size=5, max_wait_ms=2000), input_size=(48, 64)).next_batch()
    np.testing.assert_array_equal(b2.images[0], b2.frames[0].image)


@pytest.mark.parametrize("src, dst", [((480, 640), (64, 64)), ((480, 640), (32, 32)), ((480, 640), (96, 96)),
                                      ((48, 64), (24, 40))])
def test_area_resize_matches_one_pass_opencv_within_one_grey_level(src, dst) -> None:
    """640x480 -> 64x64 takes the two-pass path (width factor 10, height 7.5); the others one pass."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (*src, 3), dtype=np.uint8)
    out = np.empty((*dst, 3), np.uint8)
    resize_into(img, out, cv2.INTER_AREA)
    diff = np.abs(out.astype(int) - cv2.resize(img, (dst[1], dst[0]), interpolation=cv2.INTER_AREA).astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.5


def test_batcher_rejects_bad_arguments(tmp_path: Path) -> None:
    r = open_source(SourceConfig(uri=str(write_video(tmp_path / "c.avi", 2))), HEALTH, "r")
    with pytest.raises(ConfigError, match="interpolation 'bogus'"):
        Batcher([r], BatchingConfig(), (8, 8), interpolation="bogus")
    with pytest.raises(ConfigError, match="at least one camera"):
        Batcher([], BatchingConfig(), (8, 8))
    with pytest.raises(ConfigError, match="input_size"):
        Batcher([r], BatchingConfig(), (0, 8))


# ---------------------------------------------------------------- prefetching (the batcher's own thread)
def test_prefetching_batcher_delivers_every_frame_once_in_order(tmp_path: Path) -> None:
    readers = open_sources(three_videos(tmp_path), HEALTH, "r")
    for r in readers:
        r.start()
    feed = PrefetchingBatcher(Batcher(readers, BatchingConfig(batch_size=8, max_wait_ms=50), input_size=(24, 32)))
    feed.start()
    batches = []
    while (b := feed.next_batch()) is not None:
        batches.append(b)
        time.sleep(0.005)  # a slow consumer: the next batch is formed meanwhile
    assert feed.next_batch() is None  # stays done
    feed.stop()
    seen = [(f.camera_id, f.seq) for b in batches for f in b.frames]
    assert len(seen) == 90 and len(set(seen)) == 90
    for cam in ("cam0", "cam1", "cam2"):
        seqs = [s for c, s in seen if c == cam]
        assert seqs == sorted(seqs)
    assert feed.batches == len(batches) and feed.frames == 90
    stop_all(readers)


def test_prefetching_batcher_stop_unblocks_a_waiting_consumer(tmp_path: Path) -> None:
    make_image_folder(tmp_path / "imgs", 3)
    readers = open_sources([SourceConfig(uri=str(tmp_path / "imgs"), loop=True, max_fps=5)], HEALTH, "r")
    for r in readers:
        r.start()
    feed = PrefetchingBatcher(Batcher(readers, BatchingConfig(batch_size=64, max_wait_ms=10_000), input_size=(8, 8))).start()
    got: list = []
    import threading

    t = threading.Thread(target=lambda: got.append(feed.next_batch()))
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    feed.stop()
    t.join(5)
    assert not t.is_alive(), "next_batch() still blocked after stop()"
    assert time.monotonic() - t0 < 3
    assert got and (got[0] is None or 1 <= len(got[0]) < 64)
    stop_all(readers)


def test_prefetching_batcher_reraises_the_batchers_error() -> None:
    class Broken:
        batches = frames = 0

        def next_batch(self):
            raise RuntimeError("camera queue corrupted")

        def stop(self):
            pass

    feed = PrefetchingBatcher(Broken()).start()  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="camera queue corrupted"):
        feed.next_batch()
    assert feed.next_batch() is None
    feed.stop()
    with pytest.raises(ConfigError, match="depth"):
        PrefetchingBatcher(Broken(), depth=0)  # type: ignore[arg-type]
