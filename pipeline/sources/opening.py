"""From source configs to (not yet started) readers: the one place that picks a frame source per kind."""

from __future__ import annotations

import time

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.sources.base import FrameSource
from pipeline.sources.ffmpeg import apply_ffmpeg_capture_options
from pipeline.sources.folder import FolderFrames
from pipeline.sources.live import LiveFrames
from pipeline.sources.reader import CameraReader
from pipeline.sources.uri import SourceSpec, resolve_source
from pipeline.sources.video import VideoFrames
from pipeline.types import ConfigError


def make_frame_source(spec: SourceSpec, cfg: SourceConfig, health: CameraHealthConfig, t0: float,
                      seed: int | None = None) -> FrameSource:
    """The frame source for ``spec.kind``. Files and folders are opened/listed now (CameraUnavailableError when
    they cannot be read); live sources are opened by the reader thread. ``t0``: where video clocks start;
    ``seed``: the backoff jitter of live sources."""
    if spec.kind == "folder":
        return FolderFrames(spec, cfg)
    if spec.kind == "file":
        return VideoFrames(spec, cfg, t0)
    return LiveFrames(spec, cfg, health, seed=seed)


def open_source(cfg: SourceConfig, health: CameraHealthConfig, run_id: str, t0: float | None = None) -> CameraReader:
    """Resolve ``cfg`` and build its (not yet started) reader.

    Files and folders are checked now (missing, not a video, no images -> CameraUnavailableError);
    live sources are opened by the reader thread, which retries for ever, so a camera that is down
    at start-up does not stop the run. ``t0`` (default: now) is the wall time that video files'
    own clocks start from.
    """
    spec = resolve_source(cfg)
    if spec.kind in ("rtsp", "http"):
        apply_ffmpeg_capture_options(health)
    source = make_frame_source(spec, cfg, health, time.time() if t0 is None else t0)
    return CameraReader(source, cfg, health, run_id)


def open_sources(cfgs: list[SourceConfig], health: CameraHealthConfig, run_id: str,
                 t0: float | None = None) -> list[CameraReader]:
    """Open every source (none started). Camera ids must be unique: duplicates are a ConfigError."""
    specs = [resolve_source(c) for c in cfgs]
    seen: dict[str, str] = {}
    for s in specs:
        if s.camera_id in seen:
            raise ConfigError(
                f"duplicate camera id {s.camera_id!r} for sources {seen[s.camera_id]!r} and {s.display_uri!r}; "
                f"give each source a unique id (sources: [{{uri: ..., id: ...}}])"
            )
        seen[s.camera_id] = s.display_uri
    t0 = time.time() if t0 is None else t0
    readers: list[CameraReader] = []
    try:
        for c in cfgs:
            readers.append(open_source(c, health, run_id, t0=t0))
    except Exception:
        for r in readers:
            r.stop(timeout=0)
        raise
    return readers


def stop_all(readers: list[CameraReader], timeout: float = 5.0) -> None:
    """Stop every reader: signal all first, then wait, so a slow one does not delay the others' stop."""
    for r in readers:
        r.request_stop()
    deadline = time.monotonic() + timeout
    for r in readers:
        r.stop(timeout=max(0.0, deadline - time.monotonic()))


__all__ = ["make_frame_source", "open_source", "open_sources", "stop_all"]
