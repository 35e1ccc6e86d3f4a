"""Image folders: the FolderFrames iterator on its own, and read through a reader."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import SourceConfig
from pipeline.sources import (
    Corrupt,
    EndOfStream,
    FolderFrames,
    NonImage,
    Picture,
    Restart,
    Status,
    list_folder,
    list_images,
    open_source,
    resolve_source,
)
from pipeline.types import HealthKind
from tests.helpers.media import make_image_folder
from tests.pipeline.sources.util import HEALTH, kinds, read_all


def test_list_folder_splits_images_from_other_files(tmp_path: Path) -> None:
    good = make_image_folder(tmp_path, 3, extra=["notes.txt", "Thumbs.db"])
    (tmp_path / "UPPER.JPG").write_bytes(b"x")  # an image by its extension, whatever its bytes
    (tmp_path / "sub.png").mkdir()  # a folder is neither
    listing = list_folder(tmp_path)
    assert listing.images == [tmp_path / "UPPER.JPG", *good]  # sorted by name: upper case first
    assert listing.others == [tmp_path / "Thumbs.db", tmp_path / "notes.txt"]
    assert list_images(tmp_path) == listing.images


def test_folder_iterator_yields_items_then_ends(tmp_path: Path) -> None:
    folder = tmp_path / "cam"
    good = make_image_folder(folder, 2, corrupt=["img_000x.png"], extra=["notes.txt"])
    src = FolderFrames(resolve_source(SourceConfig(uri=str(folder))), SourceConfig(uri=str(folder)))
    items = []
    with pytest.raises(EndOfStream, match=f"^folder {folder.resolve()} done$"):
        for item in src.frames(threading.Event()):
            items.append(item)
    assert [type(i) for i in items] == [Status, NonImage, Picture, Corrupt, Picture]
    assert items[0] == Status("reading", HealthKind.CONNECTED,
                              f"folder {folder.resolve()} (3 images, 1 non-image file(s) skipped: notes.txt)")
    assert items[1].path == str((folder / "notes.txt").resolve())
    assert [i.source_ref for i in items if isinstance(i, Picture)] == [str(p.resolve()) for p in good]
    assert "img_000x.png" in items[3].detail
    np.testing.assert_array_equal(items[2].image, cv2.imread(str(good[0])))


def test_looped_folder_restarts_and_relists(tmp_path: Path) -> None:
    folder = tmp_path / "cam"
    make_image_folder(folder, 1, extra=["a.txt"])
    cfg = SourceConfig(uri=str(folder), loop=True)
    src = FolderFrames(resolve_source(cfg), cfg)
    stop = threading.Event()
    gen = src.frames(stop)
    first = [next(gen) for _ in range(4)]  # connected, a.txt, img_000, restart
    assert [type(i) for i in first] == [Status, NonImage, Picture, Restart]
    make_image_folder(folder, 2)  # img_001 appears during the first pass
    second = [next(gen) for _ in range(4)]
    assert [type(i) for i in second] == [NonImage, Picture, Picture, Restart]
    stop.set()
    assert list(gen) == []  # stopped: the iterator returns, no EndOfStream


def test_image_folder_sorted_with_corrupt_file(tmp_path: Path) -> None:
    folder = tmp_path / "cam_a"
    good = make_image_folder(folder, 10, corrupt=["img_004x.jpg"], extra=["notes.txt", "Thumbs.db"])
    r = open_source(SourceConfig(uri=str(folder)), HEALTH, "r")
    r.start()
    frames = read_all(r)
    assert r.camera_id == "cam_a"
    assert [f.source_ref for f in frames] == [str(p.resolve()) for p in good]
    assert r.stats.frames_read == 10 and r.stats.frames_corrupt == 1
    assert r.stats.skipped_non_image == 2  # notes.txt, Thumbs.db: counted, not dropped silently
    np.testing.assert_array_equal(frames[3].image, cv2.imread(str(good[3])))
    ts = [f.timestamp for f in frames]
    assert all(b > a for a, b in zip(ts, ts[1:]))
    ev = r.drain_events()
    assert kinds(ev) == ["connected", "corrupt", "eof"]
    assert "img_004x.jpg" in ev[1].detail


def test_non_image_files_are_counted_once_per_pass(tmp_path: Path) -> None:
    folder = tmp_path / "cam"
    good = make_image_folder(folder, 2, extra=["readme.txt"])
    r = open_source(SourceConfig(uri=str(folder), loop=True, queue_size=1), HEALTH, "r")  # at most 1 ahead
    r.start()
    frames = [r.get(timeout=5) for _ in range(6)]  # three passes
    r.stop()
    assert [f.source_ref for f in frames] == [str(good[i % 2].resolve()) for i in range(6)]
    assert r.stats.skipped_non_image in (3, 4)  # the reader may have begun a fourth pass before stop
    assert r.stats.frames_read in (6, 7)
    assert r.stats.as_dict()["skipped_non_image"] == r.stats.skipped_non_image
