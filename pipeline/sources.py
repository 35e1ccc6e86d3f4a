"""Camera ingestion: one reader thread per camera, a bounded queue each, health events.

Sources (chosen from the ``uri`` of a :class:`~pipeline.config.SourceConfig`):

=================  ==========================================  =========================================
uri                kind                                        ``Frame.source_ref``
=================  ==========================================  =========================================
existing folder    image folder (sorted by name, optional loop) absolute image path
existing file      video file (OpenCV / FFMPEG)                ``"<absolute path>#<frame index>"``
``rtsp(s)://``     live RTSP stream (FFMPEG, timeouts)          ``"<uri>#<seq>"`` (password redacted)
``http(s)://``     live MJPEG over HTTP (FFMPEG)                ``"<uri>#<seq>"``
``"0"``, ``"1"``   USB camera index                            ``"usb:<index>#<seq>"``
=================  ==========================================  =========================================

What a reader does with each decoded frame, in order:

1. *Undecodable* frames (``imread`` fails, a read error in the middle of a video, an empty image)
   are counted in ``frames_corrupt``, reported as a ``corrupt`` :class:`HealthEvent` and skipped.
2. *Blank* frames (grey-level std below ``blank_std_threshold``) and *frozen* frames (identical to the
   previous picture for at least ``frozen_after_s`` of the stream's clock) are counted
   (``frames_blank`` / ``frames_frozen``), reported once per episode (``blank`` / ``frozen``, then
   ``recovered``) and **not** passed on. The first ``frozen_after_s`` of a frozen run is passed on:
   until then nobody can tell a frozen feed from a still scene.
3. ``max_fps``: live sources skip frames that come too early (``frames_skipped``); files and folders
   sleep, so every frame is still delivered.
4. The frame gets the camera's next sequence number (0, 1, 2, ...), ``frame_id`` =
   :func:`~pipeline.types.make_frame_id` ``(run_id, camera_id, seq)`` and a timestamp, and goes
   into the queue (``frames_read`` counts these). When the queue is full, ``on_full`` decides:
   ``drop_oldest`` (live default: a slow consumer sees the newest frames, ``frames_dropped`` counts
   the rest) or ``block`` (file default: nothing is lost, the reader waits).

Timestamps: files use ``t0 + CAP_PROP_POS_MSEC/1000`` (the video's own clock, ``t0`` = the run
start), continuing across loops; live streams use the stream's clock when it is sane (advancing and
within :data:`LIVE_CLOCK_TOLERANCE_S` of the wall clock), else the wall clock; MJPEG over HTTP, USB
cameras and folders have no clock of their own and use the wall clock. Timestamps of one camera never go backwards.

Faults: a live source that cannot be opened or stops delivering is reopened in its own thread with
exponential backoff and jitter (:func:`backoff_delay`) until :meth:`CameraReader.stop` -- it never
ends the run and never holds up other cameras. Network streams are opened through FFMPEG with
``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC`` so a dead camera cannot hang a read.
OpenCV serialises FFMPEG *opens* behind one process-wide lock (reads run in parallel): a reader
therefore checks that a stream's host accepts TCP before opening it, and loops files by seeking,
so an unreachable camera does not delay the others' (re)connects. FFMPEG's stream analysis on open
is shortened (``CameraHealthConfig.ffmpeg_analyze_s``, see :func:`apply_ffmpeg_capture_options`):
with FFMPEG's default a reconnect to an RTSP camera takes ~2 s, with 0.5 s about 0.7 s.
Files and folders that cannot be opened fail fast in :func:`open_source` with
:class:`~pipeline.types.CameraUnavailableError`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import socket
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.types import (
    CameraUnavailableError,
    ConfigError,
    Frame,
    HealthEvent,
    HealthKind,
    make_frame_id,
)

log = logging.getLogger(__name__)

SourceKind = Literal["folder", "file", "rtsp", "http", "usb"]
LIVE_KINDS: frozenset[str] = frozenset({"rtsp", "http", "usb"})
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm", ".jp2"}
)
LIVE_CLOCK_TOLERANCE_S = 5.0  # a live stream's clock further than this from the wall clock is not trusted
MAX_EVENTS = 10_000  # health events kept between two drain_events() calls (oldest dropped beyond)
_MAX_CONSECUTIVE_FILE_FAILURES = 25  # a video that fails this many reads in a row is treated as ended
_CAMERA_ID_RE = re.compile(r"^[A-Za-z0-9._\-/@+=]+$")


# ----------------------------------------------------------------------------- pure helpers
def redact_uri(uri: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://user:***@host/x`` (for logs, events, source_ref)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def classify_uri(uri: str) -> SourceKind:
    """The source kind of ``uri`` (see the module docstring). Raises CameraUnavailableError."""
    u = uri.strip()
    low = u.lower()
    if low.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if low.startswith(("http://", "https://")):
        return "http"
    if u.isdigit():
        return "usb"
    p = Path(u).expanduser()
    if p.is_dir():
        return "folder"
    if p.is_file():
        return "file"
    raise CameraUnavailableError(
        f"source {uri!r}: no such file or folder (expected a video file, an image folder, "
        f"rtsp://, http(s):// or a USB index such as 0)"
    )


def derive_camera_id(uri: str, kind: SourceKind) -> str:
    """A readable default camera id: file stem, folder name, ``host_port_path`` or ``usb<N>``."""
    if kind == "usb":
        return f"usb{int(uri)}"
    if kind in ("rtsp", "http"):
        parts = urlsplit(uri)
        host = parts.hostname or "stream"
        if parts.port is not None:
            host = f"{host}_{parts.port}"
        raw = f"{host}{parts.path}"
    else:
        p = Path(uri).expanduser().resolve()
        raw = p.name if kind == "folder" else p.stem
    cid = re.sub(r"[^A-Za-z0-9._\-]+", "_", raw).strip("_")
    return cid or kind


def backoff_delay(attempt: int, health: CameraHealthConfig, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (1-based).

    ``min(reconnect_max_s, reconnect_initial_s * 2**(attempt-1))``, times a uniform jitter factor in
    ``[1 - reconnect_jitter, 1 + reconnect_jitter]`` so that many cameras behind one failed switch do
    not reconnect in lock-step.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1, got {attempt}")
    base = min(health.reconnect_max_s, health.reconnect_initial_s * 2.0 ** min(attempt - 1, 60))
    j = health.reconnect_jitter
    factor = 1.0 + (rng or random).uniform(-j, j) if j > 0 else 1.0
    return max(0.0, base * factor)


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder`` (not recursive), sorted by name; other files are ignored."""
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.name,
    )


def _as_bgr(img: np.ndarray | None) -> np.ndarray | None:
    """OpenCV output normalised to uint8 (H, W, 3) BGR; None when it is not a usable picture."""
    if img is None or not isinstance(img, np.ndarray) or img.size == 0:
        return None
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        else:
            return None
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim == 3 and img.shape[2] == 3:
        return img
    if img.ndim == 3 and img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return None


# ----------------------------------------------------------------------------- stats, queue, health gate
@dataclass
class CameraStats:
    """Counters of one camera, updated by its reader thread (read them any time)."""

    frames_read: int = 0  # frames passed on (given a seq and queued), including those later dropped
    frames_dropped: int = 0  # queued frames discarded because the queue was full (drop_oldest)
    frames_corrupt: int = 0  # undecodable frames, skipped
    frames_blank: int = 0  # black/uniform frames, not passed on
    frames_frozen: int = 0  # frames of a frozen feed (after frozen_after_s), not passed on
    reconnects: int = 0  # successful re-connections of a live source (the first connect is not one)
    state: str = "created"  # created|connecting|streaming|reading|reconnecting|eof|stopped|failed
    frames_skipped: int = 0  # live frames skipped to honour max_fps

    def as_dict(self) -> dict:
        return asdict(self)


class _FrameQueue:
    """A bounded FIFO with drop-oldest or blocking puts (``queue.Queue`` cannot drop the oldest)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._d: deque[Frame] = deque()
        self._cv = threading.Condition()
        self._closed = False

    def put(self, item: Frame, drop_oldest: bool, stop: threading.Event) -> tuple[bool, int]:
        """Returns (accepted, number of old items dropped). Not accepted only when ``stop`` is set."""
        with self._cv:
            dropped = 0
            if drop_oldest:
                while len(self._d) >= self.maxsize:
                    self._d.popleft()
                    dropped += 1
            else:
                while len(self._d) >= self.maxsize:
                    if stop.is_set():
                        return False, 0
                    self._cv.wait(0.1)
            self._d.append(item)
            self._cv.notify_all()
            return True, dropped

    def get(self, timeout: float | None) -> Frame | None:
        with self._cv:
            if not self._d and not self._closed:
                self._cv.wait_for(lambda: self._d or self._closed, timeout)
            if not self._d:
                return None
            item = self._d.popleft()
            self._cv.notify_all()  # a blocked producer may go on
            return item

    def close(self) -> None:
        """No more puts will come: wake every waiting get()."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()

    def __len__(self) -> int:
        return len(self._d)


class _HealthGate:
    """Blank and frozen detection on a cheap signature (grey image of every 4th pixel).

    ``check`` returns ``"ok"``, ``"blank"`` or ``"frozen"`` and calls ``emit(kind, detail)`` once
    at the start of each blank/frozen episode and once (``recovered``) when a normal frame returns.
    Durations use the frames' timestamps, i.e. the stream's own clock.
    """

    def __init__(self, health: CameraHealthConfig, emit) -> None:
        self.blank_std = health.blank_std_threshold
        self.frozen_after = health.frozen_after_s
        self.max_diff = health.frozen_max_diff
        self.emit = emit
        self._ref: np.ndarray | None = None  # first picture of the current run of identical frames
        self._ref_ts = 0.0
        self._run_len = 0
        self._frozen = False
        self._blank = False
        self._episode_start = 0.0
        self._episode_count = 0

    @staticmethod
    def signature(img: np.ndarray) -> np.ndarray:
        sub = np.ascontiguousarray(img[::4, ::4])
        return cv2.cvtColor(sub, cv2.COLOR_BGR2GRAY)

    def reset(self) -> None:
        """Forget the reference picture (after a reconnect or a new loop pass)."""
        self._ref = None
        self._run_len = 0

    def check(self, img: np.ndarray, ts: float) -> str:
        sig = self.signature(img)
        std = float(cv2.meanStdDev(sig)[1][0, 0])
        if std < self.blank_std:
            if not self._blank:
                self._blank = True
                self._episode_start, self._episode_count = ts, 0
                self.emit(HealthKind.BLANK, f"blank frame (grey std {std:.2f} < {self.blank_std:g})")
            self._episode_count += 1
            self._ref = None  # a frozen run does not continue through black frames
            self._run_len = 0
            return "blank"
        same = (
            self._ref is not None
            and self._ref.shape == sig.shape
            and cv2.norm(sig, self._ref, cv2.NORM_L1) / sig.size <= self.max_diff
        )
        if same:
            self._run_len += 1
            if ts - self._ref_ts >= self.frozen_after - 1e-9:
                if not self._frozen:
                    self._frozen = True
                    self._episode_start, self._episode_count = self._ref_ts, self._run_len
                    self.emit(
                        HealthKind.FROZEN,
                        f"identical frames for {ts - self._ref_ts:.2f}s (>= {self.frozen_after:g}s)",
                    )
                self._episode_count += 1
                return "frozen"
            return "ok"
        if self._blank or self._frozen:
            what = " and ".join(w for w, on in (("blank", self._blank), ("frozen", self._frozen)) if on)
            self.emit(
                HealthKind.RECOVERED,
                f"{what} ended after {max(0.0, ts - self._episode_start):.2f}s",
            )
            self._blank = self._frozen = False
        self._ref, self._ref_ts, self._run_len = sig, ts, 0
        return "ok"


# ----------------------------------------------------------------------------- the reader
@dataclass(frozen=True)
class SourceSpec:
    """A resolved source: its kind, camera id and what to open."""

    uri: str
    kind: SourceKind
    camera_id: str
    display_uri: str  # the uri with any password redacted
    path: Path | None = None  # files and folders: the absolute path

    @property
    def live(self) -> bool:
        return self.kind in LIVE_KINDS


def resolve_source(cfg: SourceConfig) -> SourceSpec:
    """Classify ``cfg.uri`` and settle the camera id. Raises CameraUnavailableError / ConfigError."""
    kind = classify_uri(cfg.uri)
    cid = cfg.id if cfg.id is not None else derive_camera_id(cfg.uri, kind)
    if not cid or not _CAMERA_ID_RE.match(cid):
        raise ConfigError(
            f"source {redact_uri(cfg.uri)!r}: camera id {cid!r} must be non-empty and use only letters, digits "
            f"and . _ - / @ + = (no ':' or spaces: ids become part of frame ids)"
        )
    path = Path(cfg.uri).expanduser().resolve() if kind in ("file", "folder") else None
    return SourceSpec(uri=cfg.uri, kind=kind, camera_id=cid, display_uri=redact_uri(cfg.uri), path=path)


class CameraReader:
    """One camera: a daemon thread reads, checks and queues frames; the consumer calls :meth:`get`.

    Create with :func:`open_source`; then ``start()``, ``get(timeout)`` until :attr:`finished`,
    ``drain_events()`` now and then, ``stop()`` at the end. ``stop()`` leaves already queued frames
    in the queue, so a consumer can drain them (``finished`` turns true once the queue is empty).
    """

    def __init__(self, spec: SourceSpec, cfg: SourceConfig, health: CameraHealthConfig, run_id: str,
                 t0: float | None = None, seed: int | None = None) -> None:
        self.spec = spec
        self.cfg = cfg
        self.health = health
        self.run_id = run_id
        self.camera_id = spec.camera_id
        self.stats = CameraStats()
        self.t0 = time.time() if t0 is None else t0
        on_full = cfg.on_full
        if on_full == "auto":
            on_full = "drop_oldest" if spec.live else "block"
        self.on_full: str = on_full
        self._queue = _FrameQueue(cfg.queue_size)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: deque[HealthEvent] = deque(maxlen=MAX_EVENTS)
        self._events_lock = threading.Lock()
        self._wakers: list[threading.Event] = []
        self._gate = _HealthGate(health, self._event)
        self._rng = random.Random(seed)
        self._seq = 0
        self._last_ts = -np.inf
        self._interval = 1.0 / cfg.max_fps if cfg.max_fps else 0.0
        self._next_emit = 0.0  # time.monotonic() of the next frame allowed by max_fps
        self._cap: cv2.VideoCapture | None = None  # video files: opened by open_source (fail fast)
        self._files: list[Path] = []  # folders: listed by open_source
        self.error: str | None = None  # set when the thread died of an unexpected error

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=f"camera-{self.camera_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` s. Queued frames stay gettable.

        A thread stuck inside an OpenCV open/read (bounded by the configured timeouts for network
        streams) is left to finish on its own; it is a daemon and cannot keep the process alive.
        """
        self._stop.set()
        self._queue.wake()
        if self._thread is None:
            self._finish("stopped")
            self._release()
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("camera %s: reader thread still busy after %.1fs (blocked in OpenCV)", self.camera_id, timeout)

    def get(self, timeout: float) -> Frame | None:
        """The next frame, or None after ``timeout`` s (or at once when the reader has finished)."""
        return self._queue.get(timeout)

    def poll(self) -> Frame | None:
        """The next frame if one is queued, else None (never waits)."""
        return self._queue.get(0)

    def drain_events(self) -> list[HealthEvent]:
        """Health events since the previous call, oldest first."""
        with self._events_lock:
            out = list(self._events)
            self._events.clear()
        return out

    def add_waker(self, event: threading.Event) -> None:
        """``event.set()`` is called after every queued frame and when the reader ends (for the batcher)."""
        self._wakers.append(event)

    @property
    def finished(self) -> bool:
        """The reader has ended (EOF without loop, stopped, or failed) and its queue is empty."""
        return self._done.is_set() and len(self._queue) == 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def live(self) -> bool:
        return self.spec.live

    def __repr__(self) -> str:
        return f"CameraReader({self.camera_id!r}, {self.spec.kind}, {self.spec.display_uri!r}, state={self.stats.state})"

    # -- thread -------------------------------------------------------------------------------
    def _main(self) -> None:
        try:
            if self.spec.kind == "folder":
                self._run_folder()
            elif self.spec.kind == "file":
                self._run_video_file()
            else:
                self._run_live()
            self._finish("stopped" if self._stop.is_set() else "eof")
        except Exception as e:  # a bug or an OpenCV surprise: report it, never take the run down
            self.error = f"{type(e).__name__}: {e}"
            log.exception("camera %s: reader failed", self.camera_id)
            self._event(HealthKind.DISCONNECTED, f"reader failed: {self.error}")
            self._finish("failed")
        finally:
            self._release()

    def _finish(self, state: str) -> None:
        if self.stats.state not in ("eof", "failed") or state == "failed":
            self.stats.state = state
        self._done.set()
        self._queue.close()
        self._wake()

    def _release(self) -> None:
        if self._cap is not None:
            try:
                self._cap.release()
            except cv2.error:  # pragma: no cover - release does not normally raise
                pass
            self._cap = None

    def _wake(self) -> None:
        for w in self._wakers:
            w.set()

    def _event(self, kind: HealthKind, detail: str = "") -> None:
        ev = HealthEvent(camera_id=self.camera_id, kind=kind, timestamp=time.time(), detail=detail)
        with self._events_lock:
            self._events.append(ev)
        level = logging.INFO if kind in (HealthKind.CONNECTED, HealthKind.RECOVERED, HealthKind.EOF) else logging.WARNING
        log.log(level, "camera=%s event=%s detail=%s", self.camera_id, kind.value, detail)

    def _corrupt(self, detail: str) -> None:
        self.stats.frames_corrupt += 1
        self._event(HealthKind.CORRUPT, detail)

    def _monotone(self, ts: float) -> float:
        if ts <= self._last_ts:
            ts = self._last_ts + 1e-6
        self._last_ts = ts
        return ts

    def _offer(self, img: np.ndarray | None, ts: float, source_ref: str, append_seq: bool = False) -> bool:
        """Check one decoded picture and queue it. Returns False only when the reader must stop.

        ``append_seq``: the frame's source_ref is ``f"{source_ref}#{seq}"`` (live streams).
        """
        bgr = _as_bgr(img)
        if bgr is None:
            self._corrupt(f"undecodable frame at {source_ref}")
            return not self._stop.is_set()
        ts = self._monotone(ts)
        verdict = self._gate.check(bgr, ts)
        if verdict == "blank":
            self.stats.frames_blank += 1
            return not self._stop.is_set()
        if verdict == "frozen":
            self.stats.frames_frozen += 1
            return not self._stop.is_set()
        if self._interval:
            now = time.monotonic()
            if self.spec.live:
                if now < self._next_emit - 0.5 * self._interval:
                    self.stats.frames_skipped += 1
                    return True
                self._next_emit = max(self._next_emit + self._interval, now - self._interval)
            else:
                if self._next_emit and now < self._next_emit:
                    if self._stop.wait(self._next_emit - now):
                        return False
                    now = time.monotonic()
                self._next_emit = max((self._next_emit or now) + self._interval, now - self._interval)
        seq = self._seq
        frame = Frame(
            camera_id=self.camera_id,
            seq=seq,
            timestamp=ts,
            image=bgr,
            source_ref=f"{source_ref}#{seq}" if append_seq else source_ref,
            frame_id=make_frame_id(self.run_id, self.camera_id, seq),
        )
        accepted, dropped = self._queue.put(frame, self.on_full == "drop_oldest", self._stop)
        if not accepted:
            return False
        self._seq += 1
        self.stats.frames_read += 1
        self.stats.frames_dropped += dropped
        self._wake()
        return not self._stop.is_set()

    # -- folders ----------------------------------------------------------------------------------
    def _run_folder(self) -> None:
        assert self.spec.path is not None
        files = self._files or list_images(self.spec.path)
        self.stats.state = "reading"
        self._event(HealthKind.CONNECTED, f"folder {self.spec.path} ({len(files)} images)")
        while not self._stop.is_set():
            good = 0
            for p in files:
                if self._stop.is_set():
                    return
                img = cv2.imread(str(p), cv2.IMREAD_COLOR)
                if img is None:
                    self._corrupt(f"cannot decode image {p}")
                    continue
                good += 1
                if not self._offer(img, time.time(), str(p)):
                    return
            if not self.cfg.loop or good == 0:
                why = "" if good else " (no readable images in the last pass)"
                self._event(HealthKind.EOF, f"folder {self.spec.path} done{why}")
                self.stats.state = "eof"
                return
            self._gate.reset()
            files = list_images(self.spec.path)  # pick up images added since the last pass

    # -- video files ------------------------------------------------------------------------------
    def _run_video_file(self) -> None:
        assert self.spec.path is not None
        path = str(self.spec.path)
        cap = self._cap if self._cap is not None else _open_file_capture(self.spec, self.cfg)
        self._cap = cap
        self.stats.state = "reading"
        self._event(HealthKind.CONNECTED, f"video file {path}")
        offset = 0.0  # seconds added to POS_MSEC: the length of earlier loop passes
        while not self._stop.is_set():
            n_good, last_pos, period = self._read_video_pass(cap, path, offset)
            if self._stop.is_set():
                return
            if not self.cfg.loop or n_good == 0:
                why = "" if n_good else " (no decodable frames in the last pass)"
                self._event(HealthKind.EOF, f"video file {path} done{why}")
                self.stats.state = "eof"
                return
            offset += last_pos + period
            # Seek back rather than reopen: OpenCV serialises every FFMPEG open behind one global
            # lock, so a reopen would wait for any network camera that is busy (re)connecting.
            if not cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
                cap.release()
                cap = _open_file_capture(self.spec, self.cfg)
                self._cap = cap
            self._gate.reset()

    def _read_video_pass(self, cap: cv2.VideoCapture, path: str, offset: float) -> tuple[int, float, float]:
        """Read one pass of a video. Returns (decoded frames, last POS in s, frame period in s)."""
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        period = 1.0 / fps if 0 < fps < 1000 else 0.0
        decoded = corrupt = pending = 0
        last_pos = 0.0
        while not self._stop.is_set():
            ok, img = cap.read()
            if not ok or img is None:
                # a read error in the middle of a file is a corrupt frame, at the end it is EOF:
                # keep reading; failures count as corrupt once a later frame decodes.
                pending += 1
                if pending >= _MAX_CONSECUTIVE_FILE_FAILURES or (expected > 0 and decoded + corrupt + pending >= expected):
                    break
                continue
            index = decoded + corrupt + pending  # 0-based position of this frame in the file
            for k in range(pending):
                self._corrupt(f"undecodable frame {path}#{index - pending + k}")
            corrupt += pending
            pending = 0
            pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not np.isfinite(pos) or pos < 0:
                pos = index * period
            last_pos = pos
            decoded += 1
            if not self._offer(img, self.t0 + offset + pos, f"{path}#{index}"):
                break
        return decoded, last_pos, period

    # -- live streams -----------------------------------------------------------------------------
    def _open_live(self) -> cv2.VideoCapture | None:
        spec = self.spec
        if spec.kind in ("rtsp", "http") and not _tcp_reachable(spec.uri, self.health.open_timeout_s, self._stop):
            return None
        try:
            if spec.kind == "usb":
                cap = cv2.VideoCapture(int(spec.uri))
            else:
                params = [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.health.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.health.read_timeout_s * 1000),
                    *_decode_thread_params(self.cfg),
                ]
                cap = cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG, params)
        except cv2.error as e:
            log.debug("camera %s: open raised %s", self.camera_id, e)
            return None
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _run_live(self) -> None:
        attempt = 0
        down_since: float | None = None  # monotonic time the camera was lost (None: never connected)
        ever_connected = False
        while not self._stop.is_set():
            if attempt > 0:
                delay = backoff_delay(attempt, self.health, self._rng)
                self.stats.state = "reconnecting"
                self._event(HealthKind.RECONNECTING, f"attempt {attempt} to open {self.spec.display_uri} in {delay:.2f}s")
                if self._stop.wait(delay):
                    return
            self.stats.state = "connecting" if not ever_connected else "reconnecting"
            cap = self._open_live()
            if self._stop.is_set():
                if cap is not None:
                    cap.release()
                return
            if cap is None:
                attempt += 1
                if down_since is None and not ever_connected:
                    down_since = time.monotonic()
                continue
            self._cap = cap
            if ever_connected:
                self.stats.reconnects += 1
                outage = time.monotonic() - down_since if down_since is not None else 0.0
                self._event(HealthKind.CONNECTED, f"reconnected to {self.spec.display_uri} after {outage:.2f}s")
            else:
                self._event(HealthKind.CONNECTED, f"connected to {self.spec.display_uri}")
            ever_connected = True
            attempt = 0
            self.stats.state = "streaming"
            self._gate.reset()
            why = self._stream(cap)
            self._release()
            if self._stop.is_set():
                return
            down_since = time.monotonic()
            self._event(HealthKind.DISCONNECTED, f"{self.spec.display_uri}: {why}")
            attempt = 1

    def _stream(self, cap: cv2.VideoCapture) -> str:
        """Read until the stream fails or stop(); returns why it ended."""
        base: float | None = None  # wall time of the stream's zero
        ref = "usb:" + self.spec.uri if self.spec.kind == "usb" else self.spec.display_uri
        while not self._stop.is_set():
            ok, img = cap.read()
            if not ok or img is None:
                ok, img = cap.read()  # one failed read may be a decode error; two is a lost stream
                if not ok or img is None:
                    return "read failed (stream ended or timed out)"
                self._corrupt(f"undecodable frame from {self.spec.display_uri}")
            wall = time.time()
            # RTSP carries RTP timestamps; MJPEG over HTTP and USB have no clock of their own
            # (FFMPEG invents 25 fps for MJPEG), so they use the wall clock.
            pos = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if self.spec.kind == "rtsp" else 0.0
            ts = wall
            if np.isfinite(pos) and pos > 0:
                if base is None:
                    base = wall - pos
                ts = base + pos
                if ts <= self._last_ts or abs(ts - wall) > LIVE_CLOCK_TOLERANCE_S:
                    base, ts = wall - pos, wall  # the stream clock jumped: re-anchor it
            if not self._offer(img, ts, ref, append_seq=True):
                break
        return "stopped"


def _tcp_reachable(uri: str, timeout_s: float, stop: threading.Event) -> bool:
    """Whether the stream's host accepts a TCP connection (checked before handing the uri to OpenCV).

    OpenCV opens every FFMPEG capture under one process-wide lock; an unreachable camera would hold
    it for the whole open timeout and delay every other camera's (re)connect. A plain socket
    connect costs nothing of the sort. Unknown hosts/ports are left to OpenCV to judge.
    """
    parts = urlsplit(uri)
    host = parts.hostname
    if not host:
        return True
    try:
        port = parts.port or {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:
        return True
    if port is None:
        return True
    deadline = time.monotonic() + timeout_s
    while not stop.is_set():  # short slices, so stop() is honoured during a long timeout
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            with socket.create_connection((host, port), timeout=min(left, 1.0)):
                return True
        except TimeoutError:
            continue
        except OSError:  # refused, unreachable, unknown host
            return False
    return False


_FFMPEG_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_ffmpeg_env_ours: str | None = None  # the value this module put there (None: untouched)
_ffmpeg_env_lock = threading.Lock()


def apply_ffmpeg_capture_options(health: CameraHealthConfig) -> str | None:
    """Set ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` for network cameras (``analyzeduration``), process-wide.

    OpenCV reads that variable on every FFMPEG open; there is no per-capture parameter for it.
    A value the user set is left alone. Called by :func:`open_source` for rtsp/http sources, from
    the thread that opens the sources (before their readers start). Returns the value in force.
    """
    global _ffmpeg_env_ours
    with _ffmpeg_env_lock:
        current = os.environ.get(_FFMPEG_ENV)
        if current is not None and current != _ffmpeg_env_ours:
            return current  # the user's choice
        if health.ffmpeg_analyze_s is None:
            return current
        want = f"analyzeduration;{int(health.ffmpeg_analyze_s * 1_000_000)}"
        if current != want:
            os.environ[_FFMPEG_ENV] = want
            _ffmpeg_env_ours = want
        return want


def _decode_thread_params(cfg: SourceConfig) -> list[int]:
    """``CAP_PROP_N_THREADS`` for FFMPEG captures (``decode_threads``; 0 leaves FFMPEG's default)."""
    return [cv2.CAP_PROP_N_THREADS, cfg.decode_threads] if cfg.decode_threads > 0 else []


def _open_file_capture(spec: SourceSpec, cfg: SourceConfig) -> cv2.VideoCapture:
    cap = cv2.VideoCapture(str(spec.path), cv2.CAP_FFMPEG, _decode_thread_params(cfg))
    if not cap.isOpened():
        cap.release()
        cap = cv2.VideoCapture(str(spec.path))  # another backend may know the format
    if not cap.isOpened():
        cap.release()
        raise CameraUnavailableError(
            f"source {spec.uri!r}: cannot open {spec.path} as a video (expected a video file OpenCV/FFMPEG can decode)"
        )
    return cap


def open_source(cfg: SourceConfig, health: CameraHealthConfig, run_id: str, t0: float | None = None) -> CameraReader:
    """Resolve ``cfg`` and build its (not yet started) reader.

    Files and folders are checked now (missing, not a video, no images -> CameraUnavailableError);
    live sources are opened by the reader thread, which retries for ever, so a camera that is down
    at start-up does not stop the run. ``t0`` (default: now) is the wall time that video files'
    own clocks start from.
    """
    spec = resolve_source(cfg)
    reader = CameraReader(spec, cfg, health, run_id, t0=t0)
    if spec.kind == "file":
        reader._cap = _open_file_capture(spec, cfg)
    elif spec.kind in ("rtsp", "http"):
        apply_ffmpeg_capture_options(health)
    elif spec.kind == "folder":
        assert spec.path is not None
        files = list_images(spec.path)
        if not files:
            raise CameraUnavailableError(
                f"source {cfg.uri!r}: folder has no images (expected files ending in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        reader._files = files
    return reader


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
        r._stop.set()
        r._queue.wake()
    deadline = time.monotonic() + timeout
    for r in readers:
        r.stop(timeout=max(0.0, deadline - time.monotonic()))


__all__ = [
    "CameraReader",
    "CameraStats",
    "IMAGE_EXTENSIONS",
    "LIVE_KINDS",
    "apply_ffmpeg_capture_options",
    "SourceSpec",
    "backoff_delay",
    "classify_uri",
    "derive_camera_id",
    "list_images",
    "open_source",
    "open_sources",
    "redact_uri",
    "resolve_source",
    "stop_all",
]
