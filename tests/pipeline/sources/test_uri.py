"""From a configured uri to a SourceSpec: kind, camera id, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import SourceConfig
from pipeline.sources import classify_uri, derive_camera_id, redact_uri, resolve_source
from pipeline.types import CameraUnavailableError, ConfigError
from tests.helpers.media import make_image_folder, write_video


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


def test_resolve_source_spec(tmp_path: Path) -> None:
    video = write_video(tmp_path / "belt.avi", 2)
    spec = resolve_source(SourceConfig(uri=str(video)))
    assert (spec.kind, spec.camera_id, spec.path, spec.live) == ("file", "belt", video.resolve(), False)
    spec = resolve_source(SourceConfig(uri="rtsp://admin:secret@10.0.0.7/s", id="gate"))
    assert (spec.kind, spec.camera_id, spec.path, spec.live) == ("rtsp", "gate", None, True)
    assert spec.display_uri == "rtsp://admin:***@10.0.0.7/s" and spec.uri == "rtsp://admin:secret@10.0.0.7/s"
    with pytest.raises(ConfigError, match="camera id 'a b'"):
        resolve_source(SourceConfig(uri=str(video), id="a b"))
    with pytest.raises(CameraUnavailableError, match="no such file or folder"):
        resolve_source(SourceConfig(uri=str(tmp_path / "gone.avi")))
