"""What a frame iterator yields, and how it ends: the contract between the per-kind sources and the reader.

A source (``folder.py``, ``video.py``, ``live.py``) is a small class whose :meth:`FrameSource.frames` generator
yields, in stream order:

* :class:`Picture`: one decoded image with its timestamp and ``source_ref``;
* :class:`Corrupt`: a frame or file that could not be decoded (the reader counts and reports it);
* :class:`NonImage`: a file in a folder that is not an image (the reader counts it);
* :class:`Status`: the source's state changed (``connected``, ``reconnecting``, ``disconnected``, ...);
* :class:`Restart`: the next picture starts a new pass or connection (not to be compared with the last one).

The generator ends in one of two ways: it raises :class:`EndOfStream` (the source has nothing more: end of
file/folder without loop, or a pass with nothing decodable), or it returns because ``stop`` was set. Faults a
source recovers from itself (a live camera dropping out) are :class:`Status` items; anything else it raises is a
bug or an OpenCV surprise, which the reader reports as a failed camera.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from pipeline.sources.uri import SourceSpec
from pipeline.types import HealthKind


@dataclass(frozen=True, slots=True)
class Picture:
    """One decoded image. ``numbered``: the frame's ``source_ref`` becomes ``f"{source_ref}#{seq}"`` (live)."""

    image: np.ndarray | None  # as OpenCV returned it; the reader normalises it to uint8 BGR or counts it corrupt
    timestamp: float  # seconds since the epoch
    source_ref: str
    numbered: bool = False


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A frame or image file that could not be decoded."""

    detail: str


@dataclass(frozen=True, slots=True)
class NonImage:
    """A file in a folder source that is not an image (skipped)."""

    path: str


@dataclass(frozen=True, slots=True)
class Status:
    """The source entered ``state`` (a :class:`~pipeline.sources.reader.CameraStats` state); ``event``, if
    given, is reported as a health event with ``detail``. A ``connected`` event after the first is a reconnect."""

    state: str
    event: HealthKind | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Restart:
    """The next picture starts a new loop pass or connection: forget the frozen-feed reference picture."""


SourceItem = Picture | Corrupt | NonImage | Status | Restart


class EndOfStream(Exception):
    """Raised by a source's :meth:`~FrameSource.frames` when it has no more frames; the message is the detail
    of the ``eof`` health event (e.g. ``"video file /x/cam.avi done"``)."""


class FrameSource(Protocol):
    """One source kind. ``frames(stop)`` is a generator run in the reader's thread (closed by the reader when it
    ends, so its ``finally`` blocks release what it opened); ``close()`` releases what the source opened before
    ``frames`` ran (e.g. a video capture opened to fail fast) and may be called more than once."""

    spec: SourceSpec

    def frames(self, stop: threading.Event) -> Generator[SourceItem, None, None]: ...

    def close(self) -> None: ...


__all__ = ["Corrupt", "EndOfStream", "FrameSource", "NonImage", "Picture", "Restart", "SourceItem", "Status"]


def release_capture(capture: "cv2.VideoCapture | None") -> None:
    """Release an OpenCV capture (video files and live streams close alike); None is a no-op."""
    if capture is not None:
        try:
            capture.release()
        except cv2.error:  # pragma: no cover - release does not normally raise
            pass
