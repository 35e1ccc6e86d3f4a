"""open_source / open_sources: fail fast on files and folders, unique ids, one frame source per kind."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import SourceConfig
from pipeline.sources import (
    FolderFrames,
    LiveFrames,
    VideoFrames,
    open_source,
    open_sources,
    stop_all,
)
from pipeline.types import CameraUnavailableError, ConfigError
from tests.helpers.media import make_image_folder, write_video
from tests.pipeline.sources.util import HEALTH


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


def test_each_kind_gets_its_frame_source(tmp_path: Path) -> None:
    video = write_video(tmp_path / "v.avi", 3)
    folder = tmp_path / "f"
    make_image_folder(folder, 2)
    cases = [(str(video), VideoFrames), (str(folder), FolderFrames), ("rtsp://127.0.0.1:9/x", LiveFrames),
             ("http://127.0.0.1:9/v.mjpg", LiveFrames), ("7", LiveFrames)]
    for uri, cls in cases:
        r = open_source(SourceConfig(uri=uri), HEALTH, "r")
        assert type(r.source) is cls and r.source.spec is r.spec
        if cls is VideoFrames:
            assert r.source.capture.isOpened()  # opened now, to fail fast
        r.stop(timeout=0)  # never started: stop releases what open_source opened
        assert r.finished and r.stats.state == "stopped"
        if cls is not FolderFrames:
            assert r.source.capture is None


def test_live_sources_default_to_drop_oldest() -> None:
    for uri in ("rtsp://127.0.0.1:9/x", "http://127.0.0.1:9/v.mjpg", "3"):
        assert open_source(SourceConfig(uri=uri), HEALTH, "r").on_full == "drop_oldest"
        assert open_source(SourceConfig(uri=uri, on_full="block"), HEALTH, "r").on_full == "block"
