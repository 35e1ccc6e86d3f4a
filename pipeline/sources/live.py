"""Live cameras: RTSP and MJPEG over HTTP (FFMPEG, with timeouts) and USB indices; ``source_ref`` is
``"<uri>#<seq>"`` (password redacted) or ``"usb:<index>#<seq>"``.

A live source never ends by itself: a camera that cannot be opened or stops delivering is reopened with
exponential backoff and jitter (:func:`backoff_delay`) until ``stop`` is set, and every step is reported as a
:class:`~pipeline.sources.base.Status` (``reconnecting``, ``connected``, ``disconnected``). Network streams are
opened through FFMPEG with ``CAP_PROP_OPEN_TIMEOUT_MSEC`` / ``CAP_PROP_READ_TIMEOUT_MSEC`` so a dead camera
cannot hang a read, and only once their host accepts TCP (:func:`tcp_reachable`): OpenCV serialises FFMPEG opens
behind one process-wide lock, so an unreachable camera must not hold it for its whole open timeout.

Timestamps: RTSP uses the stream's clock when it is sane (advancing and within :data:`LIVE_CLOCK_TOLERANCE_S` of
the wall clock), else the wall clock; MJPEG over HTTP and USB cameras have no clock of their own (FFMPEG invents
25 fps for MJPEG) and use the wall clock.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Generator
from urllib.parse import urlsplit

import cv2
import numpy as np

from pipeline.config import CameraHealthConfig, SourceConfig
from pipeline.sources.base import Corrupt, Picture, Restart, SourceItem, Status, release_capture
from pipeline.sources.ffmpeg import decode_thread_params
from pipeline.sources.uri import SourceSpec
from pipeline.types import HealthKind

log = logging.getLogger(__name__)

LIVE_CLOCK_TOLERANCE_S = 5.0  # a live stream's clock further than this from the wall clock is not trusted


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


def tcp_reachable(uri: str, timeout_s: float, stop: threading.Event) -> bool:
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


class LiveFrames:
    """One live camera (rtsp, http or usb), (re)opened with backoff until ``stop``; never ends by itself.

    ``seed`` seeds the backoff jitter (None: not reproducible).
    """

    def __init__(self, spec: SourceSpec, cfg: SourceConfig, health: CameraHealthConfig,
                 seed: int | None = None) -> None:
        if not spec.live:
            raise ValueError(
                f"source {spec.display_uri!r}: LiveFrames needs an rtsp, http or usb source, got {spec.kind!r}"
            )
        self.spec = spec
        self.cfg = cfg
        self.health = health
        self.capture: cv2.VideoCapture | None = None  # the open stream, while connected
        self._rng = random.Random(seed)
        self._last_ts = -np.inf  # the last timestamp given out (a stream clock that goes back is re-anchored)
        self._ref = "usb:" + spec.uri if spec.kind == "usb" else spec.display_uri

    def frames(self, stop: threading.Event) -> Generator[SourceItem, None, None]:
        display = self.spec.display_uri
        attempt = 0
        down_since: float | None = None  # monotonic time the camera was lost (None: never connected)
        ever_connected = False
        while not stop.is_set():
            if attempt > 0:
                delay = backoff_delay(attempt, self.health, self._rng)
                detail = f"attempt {attempt} to open {display} in {delay:.2f}s"
                yield Status("reconnecting", HealthKind.RECONNECTING, detail)
                if stop.wait(delay):
                    return
            yield Status("reconnecting" if ever_connected else "connecting")
            cap = self._open(stop)
            if stop.is_set():
                if cap is not None:
                    cap.release()
                return
            if cap is None:
                attempt += 1
                if down_since is None and not ever_connected:
                    down_since = time.monotonic()
                continue
            self.capture = cap
            try:
                if ever_connected:
                    outage = time.monotonic() - down_since if down_since is not None else 0.0
                    detail = f"reconnected to {display} after {outage:.2f}s"
                else:
                    detail = f"connected to {display}"
                ever_connected = True
                attempt = 0
                yield Status("streaming", HealthKind.CONNECTED, detail)
                yield Restart()
                why = yield from self._stream(cap, stop)
            finally:
                self.close()
            if stop.is_set():
                return
            down_since = time.monotonic()
            yield Status("reconnecting", HealthKind.DISCONNECTED, f"{display}: {why}")
            attempt = 1

    def _open(self, stop: threading.Event) -> cv2.VideoCapture | None:
        spec = self.spec
        if spec.kind in ("rtsp", "http") and not tcp_reachable(spec.uri, self.health.open_timeout_s, stop):
            return None
        try:
            if spec.kind == "usb":
                cap = cv2.VideoCapture(int(spec.uri))
            else:
                params = [
                    cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.health.open_timeout_s * 1000),
                    cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.health.read_timeout_s * 1000),
                    *decode_thread_params(self.cfg),
                ]
                cap = cv2.VideoCapture(spec.uri, cv2.CAP_FFMPEG, params)
        except cv2.error as e:
            log.debug("camera %s: open raised %s", spec.camera_id, e)
            return None
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _stream(self, cap: cv2.VideoCapture, stop: threading.Event) -> Generator[SourceItem, None, str]:
        """Yield pictures until the stream fails or ``stop``; returns why it ended."""
        base: float | None = None  # wall time of the stream's zero
        while not stop.is_set():
            ok, img = cap.read()
            if not ok or img is None:
                ok, img = cap.read()  # one failed read may be a decode error; two is a lost stream
                if not ok or img is None:
                    return "read failed (stream ended or timed out)"
                yield Corrupt(f"undecodable frame from {self.spec.display_uri}")
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
            self._last_ts = max(self._last_ts, ts)
            yield Picture(img, ts, self._ref, numbered=True)
        return "stopped"

    def close(self) -> None:
        release_capture(self.capture)
        self.capture = None


__all__ = ["LIVE_CLOCK_TOLERANCE_S", "LiveFrames", "backoff_delay", "tcp_reachable"]
