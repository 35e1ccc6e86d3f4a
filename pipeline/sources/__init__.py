"""Camera ingestion: one frame iterator per source kind, run by one reader per camera (its own thread, a bounded
queue, health events).

Sources (chosen from the ``uri`` of a :class:`~pipeline.config.SourceConfig`):

================  ========================================  =====================================
uri               kind (frame iterator)                     ``Frame.source_ref``
================  ========================================  =====================================
existing folder   image folder, by name (``FolderFrames``)  absolute image path
existing file     video file (``VideoFrames``)              ``"<absolute path>#<frame index>"``
``rtsp(s)://``    live RTSP stream (``LiveFrames``)         ``"<uri>#<seq>"`` (password redacted)
``http(s)://``    live MJPEG over HTTP (``LiveFrames``)     ``"<uri>#<seq>"``
``"0"``, ``"1"``  USB camera index (``LiveFrames``)         ``"usb:<index>#<seq>"``
================  ========================================  =====================================

Files and folders can loop (``SourceConfig.loop``).

Modules: ``uri`` (kind, camera id, :class:`SourceSpec`), ``base`` (what an iterator yields and how it ends),
``folder`` / ``video`` / ``live`` (one iterator per kind), ``health`` (blank/frozen checks), ``reader``
(:class:`CameraReader`: health, pacing, queue, end of stream), ``opening`` (:func:`open_source`, :func:`open_sources`,
:func:`stop_all`), ``ffmpeg`` (capture options).

Non-image files in a folder are skipped and counted (``CameraStats.skipped_non_image``). What the reader does with
each decoded picture (corrupt, blank and frozen checks, ``max_fps``, the queue's ``on_full``) is described in
:mod:`pipeline.sources.reader`.

Timestamps: files use ``t0 + CAP_PROP_POS_MSEC/1000`` (the video's own clock, ``t0`` = the run start), continuing
across loops; live streams use the stream's clock when it is sane (advancing and within
:data:`LIVE_CLOCK_TOLERANCE_S` of the wall clock), else the wall clock; MJPEG over HTTP, USB cameras and folders have
no clock of their own and use the wall clock. Timestamps of one camera never go backwards.

Faults: a live source that cannot be opened or stops delivering is reopened in its own thread with exponential
backoff and jitter (:func:`backoff_delay`) until :meth:`CameraReader.stop` -- it never ends the run and never holds
up other cameras. Network streams are opened through FFMPEG with ``CAP_PROP_OPEN_TIMEOUT_MSEC`` /
``CAP_PROP_READ_TIMEOUT_MSEC`` so a dead camera cannot hang a read. OpenCV serialises FFMPEG *opens* behind one
process-wide lock (reads run in parallel): a reader therefore checks that a stream's host accepts TCP before opening
it, and loops files by seeking, so an unreachable camera does not delay the others' (re)connects. FFMPEG's stream
analysis on open is shortened (``CameraHealthConfig.ffmpeg_analyze_s``, see :func:`apply_ffmpeg_capture_options`):
with FFMPEG's default a reconnect to an RTSP camera takes ~2 s, with 0.5 s about 0.7 s. Files and folders that cannot
be opened fail fast in :func:`open_source` with :class:`~pipeline.types.CameraUnavailableError`.
"""

from pipeline.sources.base import Corrupt, EndOfStream, FrameSource, NonImage, Picture, Restart, SourceItem, Status
from pipeline.sources.ffmpeg import apply_ffmpeg_capture_options
from pipeline.sources.folder import IMAGE_EXTENSIONS, FolderFrames, list_folder, list_images
from pipeline.sources.live import LIVE_CLOCK_TOLERANCE_S, LiveFrames, backoff_delay
from pipeline.sources.opening import make_frame_source, open_source, open_sources, stop_all
from pipeline.sources.reader import MAX_EVENTS, CameraReader, CameraStats
from pipeline.sources.uri import (
    LIVE_KINDS,
    SourceKind,
    SourceSpec,
    classify_uri,
    derive_camera_id,
    redact_uri,
    resolve_source,
)
from pipeline.sources.video import VideoFrames

__all__ = [
    "CameraReader",
    "CameraStats",
    "Corrupt",
    "EndOfStream",
    "FolderFrames",
    "FrameSource",
    "IMAGE_EXTENSIONS",
    "LIVE_CLOCK_TOLERANCE_S",
    "LIVE_KINDS",
    "LiveFrames",
    "MAX_EVENTS",
    "NonImage",
    "Picture",
    "Restart",
    "SourceItem",
    "SourceKind",
    "SourceSpec",
    "Status",
    "VideoFrames",
    "apply_ffmpeg_capture_options",
    "backoff_delay",
    "classify_uri",
    "derive_camera_id",
    "list_folder",
    "list_images",
    "make_frame_source",
    "open_source",
    "open_sources",
    "redact_uri",
    "resolve_source",
    "stop_all",
]
