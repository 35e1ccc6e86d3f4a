"""Cross-camera batching: frames from many cameras into one model-sized NHWC uint8 batch.

:class:`Batcher` takes at most one frame per camera per round, round-robin, with the starting
camera rotating from batch to batch, so a busy camera cannot starve a slow one. A batch is returned
when it holds ``batch_size`` frames, or ``max_wait_ms`` after its first frame arrived (so a GPU sees
full batches under load and latency stays bounded when traffic is light). Each frame is resized to
the model's input size straight into the batch's preallocated array as it is picked; colour order is
kept (BGR from OpenCV; the classifier converts to what its model card asks for).
"""

from __future__ import annotations

import queue
import threading
import time

import cv2
import numpy as np

from pipeline.config import BatchingConfig
from pipeline.sources import CameraReader
from pipeline.types import ConfigError, Frame, FrameBatch

INTERPOLATIONS: dict[str, int] = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "bilinear": cv2.INTER_LINEAR,
    "nearest": cv2.INTER_NEAREST,
    "cubic": cv2.INTER_CUBIC,
    "bicubic": cv2.INTER_CUBIC,
    "lanczos": cv2.INTER_LANCZOS4,
}


def resize_into(image: np.ndarray, out: np.ndarray, interpolation: int) -> None:
    """Resize ``image`` (H, W, 3) into ``out`` (h, w, 3) in place (a plain copy when sizes match).

    An INTER_AREA downscale whose width factor is a whole number but height factor is not (640x480 -> 64x64:
    10 and 7.5) is done in two passes, width first: OpenCV's area resize has a fast path for whole-number
    factors, and area averaging is separable, so the result is the one-pass result up to rounding of the
    intermediate (at most 1 grey level; tests/pipeline/test_batching.py), while the wide first pass takes the
    fast path. Other shapes (both factors whole, or the width factor not) have nothing to gain and take one pass.
    """
    h, w = out.shape[:2]
    H, W = image.shape[:2]
    if H == h and W == w:
        out[...] = image
    elif interpolation == cv2.INTER_AREA and W > w and H > h and W % w == 0 and H % h != 0:
        tmp = cv2.resize(image, (w, H), interpolation=cv2.INTER_AREA)  # whole-number width factor: fast path
        cv2.resize(tmp, (w, h), dst=out, interpolation=cv2.INTER_AREA)
    else:
        cv2.resize(image, (w, h), dst=out, interpolation=interpolation)


class Batcher:
    """Pulls frames from ``readers`` into :class:`~pipeline.types.FrameBatch` es.

    ``input_size`` is ``(height, width)``; ``interpolation`` one of :data:`INTERPOLATIONS`.
    ``next_batch()`` is meant to be called from one consumer thread. The batcher does not own the
    readers: stopping it makes ``next_batch`` return None; stop the readers yourself.
    """

    def __init__(self, readers: list[CameraReader], cfg: BatchingConfig, input_size: tuple[int, int],
                 interpolation: str = "area") -> None:
        if not readers:
            raise ConfigError("Batcher needs at least one camera reader (no sources configured)")
        if len(input_size) != 2 or min(input_size) < 1:
            raise ConfigError(f"Batcher input_size must be (height, width) >= 1, got {input_size!r}")
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation {interpolation!r} is not supported; expected one of {', '.join(INTERPOLATIONS)}"
            )
        self.readers = list(readers)
        self.cfg = cfg
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.interpolation = INTERPOLATIONS[interpolation]
        self._wakeup = threading.Event()
        for r in self.readers:
            r.add_waker(self._wakeup)
        self._stopped = threading.Event()
        self._rr = 0  # index of the reader that goes first in the next batch
        self.batches = 0
        self.frames = 0

    def stop(self) -> None:
        """Make ``next_batch`` return None (also wakes a waiting call)."""
        self._stopped.set()
        self._wakeup.set()

    def next_batch(self) -> FrameBatch | None:
        """Block until ``batch_size`` frames, or ``max_wait_ms`` after the first one; None when done.

        "Done" means every reader has finished (its source ended and its queue is empty) or
        :meth:`stop` was called. A batch is never empty.
        """
        bs = self.cfg.batch_size
        max_wait = self.cfg.max_wait_ms / 1000.0
        h, w = self.input_size
        images: np.ndarray | None = None
        frames: list[Frame] = []
        deadline: float | None = None
        n = len(self.readers)
        start = self._rr
        self._rr = (self._rr + 1) % n
        while not self._stopped.is_set():
            self._wakeup.clear()  # cleared before polling: a frame queued after the poll re-sets it
            got = False
            for k in range(n):
                if len(frames) >= bs:
                    break
                f = self.readers[(start + k) % n].poll()
                if f is None:
                    continue
                if images is None:
                    images = np.empty((bs, h, w, 3), dtype=np.uint8)
                    deadline = time.monotonic() + max_wait
                resize_into(f.image, images[len(frames)], self.interpolation)
                frames.append(f)
                got = True
            if len(frames) >= bs:
                break
            if got:
                continue  # another round: more may be queued already
            if not frames and all(r.finished for r in self.readers):
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wakeup.wait(left)
            else:
                self._wakeup.wait(0.25)  # readers set it on every frame and when they end
        if not frames:
            return None
        assert images is not None
        self.batches += 1
        self.frames += len(frames)
        return FrameBatch(frames=tuple(frames), images=images[: len(frames)])

    def __iter__(self):
        while (b := self.next_batch()) is not None:
            yield b


class PrefetchingBatcher:
    """Forms the next batch in a thread of its own while the caller serves the current one.

    Without it, resizing a batch and running the incumbent on it happen one after the other on the
    serving thread; with it the two stages overlap, so the incumbent starts the next batch as soon as
    it is done with this one and the resize work fills the gaps the models leave on the other cores
    (on the 2-core bench machine: `shadowcam bench`, docs/benchmarks.md). ``depth`` batches are held
    ready at most (1: the one being served plus one formed ahead), so frames do not pile up in
    formed batches: they wait in the cameras' queues, where the batcher's round-robin keeps every
    camera's share fair.

    Same interface as :class:`Batcher`: :meth:`next_batch` (None when done) and :meth:`stop`.
    An exception raised by the batcher is re-raised by :meth:`next_batch`.
    """

    def __init__(self, batcher: Batcher, depth: int = 1) -> None:
        if depth < 1:
            raise ConfigError(f"prefetch depth must be >= 1, got {depth!r}")
        self.batcher = batcher
        self._q: queue.Queue = queue.Queue(maxsize=depth)
        self._stopped = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)

    def start(self) -> "PrefetchingBatcher":
        self._thread.start()
        return self

    def _put(self, item) -> bool:
        while not self._stopped.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _loop(self) -> None:
        try:
            while True:
                batch = self.batcher.next_batch()
                if not self._put(batch) or batch is None:
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Failure(e))

    def next_batch(self) -> FrameBatch | None:
        """The next formed batch; None once the sources are finished or :meth:`stop` was called."""
        while not self._done:
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                if self._stopped.is_set() or (not self._thread.is_alive() and self._q.empty()):
                    self._done = True
                continue
            if item is None:
                self._done = True
            elif isinstance(item, _Failure):
                self._done = True
                raise item.error
            else:
                return item
        return None

    def stop(self, timeout: float = 2.0) -> None:
        """Stop forming batches (a batch formed ahead and not yet taken is dropped) and join the thread."""
        self._stopped.set()
        self.batcher.stop()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def batches(self) -> int:
        return self.batcher.batches

    @property
    def frames(self) -> int:
        return self.batcher.frames


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error
