"""Video files (OpenCV / FFMPEG), optionally looped; ``source_ref`` is ``"<absolute path>#<frame index>"``.

Timestamps are ``t0 + CAP_PROP_POS_MSEC/1000``: the video's own clock from ``t0`` (the run start), continuing
across loop passes. A read error in the middle of a file is a corrupt frame, at the end it is the end of the
file. Loops seek back rather than reopen: OpenCV serialises every FFMPEG open behind one process-wide lock, so a
reopen would wait for any network camera that is busy (re)connecting.
"""

from __future__ import annotations

import threading
from collections.abc import Generator

import cv2
import numpy as np

from pipeline.config import SourceConfig
from pipeline.sources.base import Corrupt, EndOfStream, Picture, Restart, SourceItem, Status, release_capture
from pipeline.sources.ffmpeg import decode_thread_params
from pipeline.sources.uri import SourceSpec
from pipeline.types import CameraUnavailableError, HealthKind

MAX_CONSECUTIVE_FILE_FAILURES = 25  # a video that fails this many reads in a row is treated as ended


def open_file_capture(spec: SourceSpec, cfg: SourceConfig) -> cv2.VideoCapture:
    """Open ``spec.path`` with FFMPEG (``decode_threads``), else any backend. Raises CameraUnavailableError."""
    cap = cv2.VideoCapture(str(spec.path), cv2.CAP_FFMPEG, decode_thread_params(cfg))
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(str(spec.path))  # another backend may know the format
    if not cap.isOpened():
        cap.release()
        raise CameraUnavailableError(
            f"source {spec.uri!r}: cannot open {spec.path} as a video (expected a video file OpenCV/FFMPEG can decode)"
        )
    return cap


class VideoFrames:
    """The frames of one video file. Opens it on construction, so a file that is not a video fails fast."""

    def __init__(self, spec: SourceSpec, cfg: SourceConfig, t0: float) -> None:
        if spec.path is None:
            raise ValueError(f"source {spec.uri!r}: a video file source needs spec.path, got None")
        self.spec = spec
        self.cfg = cfg
        self.t0 = t0
        self.capture: cv2.VideoCapture | None = open_file_capture(spec, cfg)

    def frames(self, stop: threading.Event) -> Generator[SourceItem, None, None]:
        path = str(self.spec.path)
        if self.capture is None:  # closed, then read again
            self.capture = open_file_capture(self.spec, self.cfg)
        yield Status("reading", HealthKind.CONNECTED, f"video file {path}")
        offset = 0.0  # seconds added to POS_MSEC: the length of earlier loop passes
        while not stop.is_set():
            n_good, last_pos, period = yield from self._one_pass(self.capture, path, offset, stop)
            if stop.is_set():
                return
            if not self.cfg.loop or n_good == 0:
                why = "" if n_good else " (no decodable frames in the last pass)"
                raise EndOfStream(f"video file {path} done{why}")
            offset += last_pos + period
            if not self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
                self.close()
                self.capture = open_file_capture(self.spec, self.cfg)
            yield Restart()

    def _one_pass(self, cap: cv2.VideoCapture, path: str, offset: float,
                  stop: threading.Event) -> Generator[SourceItem, None, tuple[int, float, float]]:
        """Yield one pass of the video. Returns (decoded frames, last POS in s, frame period in s)."""
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        period = 1.0 / fps if 0 < fps < 1000 else 0.0
        decoded = corrupt = pending = 0
        last_pos = 0.0
        while not stop.is_set():
            ok, img = cap.read()
            if not ok or img is None:
                # a read error in the middle of a file is a corrupt frame, at the end it is EOF:
                # keep reading; failures count as corrupt once a later frame decodes.
                pending += 1
                at_end = expected > 0 and decoded + corrupt + pending >= expected
                if pending >= MAX_CONSECUTIVE_FILE_FAILURES or at_end:
                    break
                continue
            index = decoded + corrupt + pending  # 0-based position of this frame in the file
            for k in range(pending):
                yield Corrupt(f"undecodable frame {path}#{index - pending + k}")
            corrupt += pending
            pending = 0
            pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not np.isfinite(pos) or pos < 0:
                pos = index * period
            last_pos = pos
            decoded += 1
            yield Picture(img, self.t0 + offset + pos, f"{path}#{index}")
        return decoded, last_pos, period

    def close(self) -> None:
        release_capture(self.capture)
        self.capture = None


__all__ = ["MAX_CONSECUTIVE_FILE_FAILURES", "VideoFrames", "open_file_capture"]
