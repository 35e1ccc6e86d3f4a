"""One reader per camera: runs the camera's frame iterator in a daemon thread and owns what every kind shares --
health checks and events, pacing (``max_fps``, monotone timestamps), the bounded queue and the end of the stream.

What the reader does with each :class:`~pipeline.sources.base.Picture`, in order:

1. *Undecodable* pictures (no image, an empty one, an unusable dtype/shape) are counted in ``frames_corrupt``,
   reported as a ``corrupt`` health event and skipped (so are the source's own
   :class:`~pipeline.sources.base.Corrupt` items).
2. The timestamp is made monotone (never at or before the previous one of this camera).
3. *Blank* and *frozen* pictures (:class:`~pipeline.sources.health.HealthGate`) are counted
   (``frames_blank`` / ``frames_frozen``), reported once per episode and **not** passed on.
4. ``max_fps``: live sources skip pictures that come too early (``frames_skipped``); files and folders
   sleep, so every frame is still delivered.
5. The frame gets the camera's next sequence number, ``frame_id`` = :func:`~pipeline.types.make_frame_id`
   ``(run_id, camera_id, seq)``, and goes into the queue (``frames_read`` counts these). When the queue is full,
   ``on_full`` decides: ``drop_oldest`` (live default; ``frames_dropped`` counts the rest) or ``block`` (file
   default: nothing is lost, the reader waits).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Container
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.sources.base import Corrupt, EndOfStream, FrameSource, NonImage, Picture, Restart, SourceItem, Status
from pipeline.sources.health import HealthGate, as_bgr
from pipeline.types import Frame, HealthEvent, HealthKind, make_frame_id

log = logging.getLogger(__name__)

MAX_EVENTS = 10_000  # health events kept between two drain_events() calls (oldest dropped beyond)


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
    skipped_non_image: int = 0  # folder sources: files that are not images, skipped (once per pass, like corrupt ones)
    frames_already_stored: int = 0  # resumed replays (CameraReader.resume): frames an earlier attempt committed, passed over

    def as_dict(self) -> dict:
        return asdict(self)


class FrameQueue:
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


class CameraReader:
    """One camera: a daemon thread runs its frame source, checks and queues frames; the consumer calls :meth:`get`.

    Create with :func:`~pipeline.sources.open_source`; then ``start()``, ``get(timeout)`` until :attr:`finished`,
    ``drain_events()`` now and then, ``stop()`` at the end. ``stop()`` leaves already queued frames
    in the queue, so a consumer can drain them (``finished`` turns true once the queue is empty).
    """

    def __init__(self, source: FrameSource, cfg: SourceConfig, health: CameraHealthConfig, run_id: str) -> None:
        self.source = source
        self.spec = source.spec
        self.cfg = cfg
        self.health = health
        self.run_id = run_id
        self.camera_id = self.spec.camera_id
        self.stats = CameraStats()
        on_full = cfg.on_full
        if on_full == "auto":
            on_full = "drop_oldest" if self.spec.live else "block"
        self.on_full: str = on_full
        self._queue = FrameQueue(cfg.queue_size)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._events: deque[HealthEvent] = deque(maxlen=MAX_EVENTS)
        self._events_lock = threading.Lock()
        self._wakers: list[threading.Event] = []
        self._gate = HealthGate(health, self._event)
        self._connected_before = False  # a `connected` status after the first is a reconnect
        self._seq = 0
        self._stored: Container[int] = ()  # seqs committed by an earlier attempt (resume): passed over, not queued
        self._last_ts = -np.inf
        self._interval = 1.0 / cfg.max_fps if cfg.max_fps else 0.0
        self._next_emit = 0.0  # time.monotonic() of the next frame allowed by max_fps
        self.error: str | None = None  # set when the thread died of an unexpected error

    # -- public API ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the reader thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._main, name=f"camera-{self.camera_id}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop and return at once (:meth:`stop` also waits for it)."""
        self._stop.set()
        self._queue.wake()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` s. Queued frames stay gettable.

        A thread stuck inside an OpenCV open/read (bounded by the configured timeouts for network
        streams) is left to finish on its own; it is a daemon and cannot keep the process alive.
        """
        self.request_stop()
        if self._thread is None:
            self._finish("stopped")
            self._close_source()
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("camera %s: reader thread still busy after %.1fs (blocked in OpenCV)", self.camera_id, timeout)

    def resume(self, frame_run_id: str, stored: Container[int]) -> None:
        """Continue a replay that an earlier process began (a restarted fleet actor, :mod:`pipeline.fleet`); call
        before :meth:`start`. Frame ids are made with ``frame_run_id`` instead of this reader's ``run_id`` (so they
        are the same in every attempt), and a picture whose seq is in ``stored`` (committed by an earlier attempt)
        is passed over without pacing or queueing (``frames_already_stored``). Seqs count the pictures that pass
        the blank/frozen checks, so a file or folder replayed again gets the same seqs."""
        self.run_id = frame_run_id
        self._stored = stored

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
        spec = self.spec
        return f"CameraReader({self.camera_id!r}, {spec.kind}, {spec.display_uri!r}, state={self.stats.state})"

    # -- thread -------------------------------------------------------------------------------
    def _main(self) -> None:
        items = None
        try:
            items = self.source.frames(self._stop)
            try:
                for item in items:
                    self._handle(item)
                    if self._stop.is_set():
                        break
                else:
                    if not self._stop.is_set():  # a source that ends without saying why
                        raise EndOfStream(f"{self.spec.kind} {self.spec.display_uri} ended")
            except EndOfStream as end:
                self._event(HealthKind.EOF, str(end))
                self.stats.state = "eof"
            self._finish("stopped" if self._stop.is_set() else "eof")
        except Exception as e:  # a bug or an OpenCV surprise: report it, never take the run down
            self.error = f"{type(e).__name__}: {e}"
            log.exception("camera %s: reader failed", self.camera_id)
            self._event(HealthKind.DISCONNECTED, f"reader failed: {self.error}")
            self._finish("failed")
        finally:
            try:
                if items is not None:
                    items.close()  # a generator left at a yield releases what it holds (its finally blocks)
            finally:
                self._close_source()

    def _handle(self, item: SourceItem) -> None:
        if isinstance(item, Picture):
            self._offer(item)
        elif isinstance(item, Corrupt):
            self._corrupt(item.detail)
        elif isinstance(item, NonImage):
            self.stats.skipped_non_image += 1
            log.debug("camera=%s skipped non-image file %s", self.camera_id, item.path)
        elif isinstance(item, Status):
            if item.event == HealthKind.CONNECTED:
                if self._connected_before:
                    self.stats.reconnects += 1
                self._connected_before = True
            if item.event is not None:
                self._event(item.event, item.detail)
            self.stats.state = item.state
        elif isinstance(item, Restart):
            self._gate.reset()
        else:
            raise TypeError(f"camera {self.camera_id}: source yielded {item!r}, expected a Picture, Corrupt, "
                            f"NonImage, Status or Restart")

    def _finish(self, state: str) -> None:
        if self.stats.state not in ("eof", "failed") or state == "failed":
            self.stats.state = state
        self._done.set()
        self._queue.close()
        self._wake()

    def _close_source(self) -> None:
        try:
            self.source.close()
        except cv2.error as e:  # pragma: no cover - releasing a capture does not normally raise
            log.debug("camera %s: close raised %s", self.camera_id, e)

    def _wake(self) -> None:
        for w in self._wakers:
            w.set()

    def _event(self, kind: HealthKind, detail: str = "") -> None:
        ev = HealthEvent(camera_id=self.camera_id, kind=kind, timestamp=time.time(), detail=detail)
        with self._events_lock:
            self._events.append(ev)
        quiet = kind in (HealthKind.CONNECTED, HealthKind.RECOVERED, HealthKind.EOF)
        level = logging.INFO if quiet else logging.WARNING
        log.log(level, "camera=%s event=%s detail=%s", self.camera_id, kind.value, detail)

    def _corrupt(self, detail: str) -> None:
        self.stats.frames_corrupt += 1
        self._event(HealthKind.CORRUPT, detail)

    def _monotone(self, ts: float) -> float:
        if ts <= self._last_ts:
            ts = self._last_ts + 1e-6
        self._last_ts = ts
        return ts

    def _paced(self) -> bool:
        """Honour ``max_fps``: live sources skip (False), files and folders wait. False also when stopped."""
        if not self._interval:
            return True
        now = time.monotonic()
        if self.spec.live:
            if now < self._next_emit - 0.5 * self._interval:
                self.stats.frames_skipped += 1
                return False
            self._next_emit = max(self._next_emit + self._interval, now - self._interval)
            return True
        if self._next_emit and now < self._next_emit:
            if self._stop.wait(self._next_emit - now):
                return False
            now = time.monotonic()
        self._next_emit = max((self._next_emit or now) + self._interval, now - self._interval)
        return True

    def _offer(self, picture: Picture) -> None:
        """Check one decoded picture and queue it (or count why not)."""
        bgr = as_bgr(picture.image)
        if bgr is None:
            self._corrupt(f"undecodable frame at {picture.source_ref}")
            return
        ts = self._monotone(picture.timestamp)
        verdict = self._gate.check(bgr, ts)
        if verdict == "blank":
            self.stats.frames_blank += 1
            return
        if verdict == "frozen":
            self.stats.frames_frozen += 1
            return
        if self._seq in self._stored:  # committed by an earlier attempt (resume): never stored twice
            self._seq += 1
            self.stats.frames_already_stored += 1
            return
        if not self._paced():
            return
        seq = self._seq
        frame = Frame(
            camera_id=self.camera_id,
            seq=seq,
            timestamp=ts,
            image=bgr,
            source_ref=f"{picture.source_ref}#{seq}" if picture.numbered else picture.source_ref,
            frame_id=make_frame_id(self.run_id, self.camera_id, seq),
        )
        accepted, dropped = self._queue.put(frame, self.on_full == "drop_oldest", self._stop)
        if not accepted:
            return
        self._seq += 1
        self.stats.frames_read += 1
        self.stats.frames_dropped += dropped
        self._wake()


__all__ = ["CameraReader", "CameraStats", "FrameQueue", "MAX_EVENTS"]
