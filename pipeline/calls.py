"""Call threads: run a model call on a thread of its own, with a timeout, without ever blocking the caller on it.

Used by both sides of the pair: the incumbent's server (:mod:`pipeline.serving`) and the shadow's scheduler
(:mod:`pipeline.shadow`).

* :class:`CallThread` - a daemon thread running submitted calls one at a time; optionally at the lowest CPU
  priority (:func:`lower_thread_priority`). Daemon: a native call stuck inside ONNX Runtime cannot keep the
  process alive.
* :class:`Caller` - one current :class:`CallThread` plus the calls abandoned on older ones. :meth:`Caller.call`
  waits at most ``timeout`` seconds; a call that overruns is told to stop (``RunOptions.terminate``, honoured by
  ONNX Runtime between graph nodes) and *abandoned with its thread*: Python cannot kill a thread stuck in a
  native call, so the next call gets a fresh thread and :meth:`Caller.stuck` counts the abandoned calls still
  running, for the caller to decide when to stop piling up more.
* :func:`call_classifier` - a classifier's ``predict`` through a :class:`Caller`, output checked against the
  model's contract (:func:`pipeline.runtime.validate_probs`).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from pipeline.runtime import OnnxClassifier, validate_probs
from pipeline.types import FrameBatch

LATENCY_WINDOW = 100_000  # batch latencies kept for percentiles


class CallTimeout(Exception):
    """A call on a :class:`Caller` did not finish within its timeout (it was abandoned)."""


class CallBox:
    """The outcome of one submitted call: ``done`` is set once ``value`` or ``error`` is."""

    __slots__ = ("done", "value", "error", "on_done")

    def __init__(self, on_done: Callable[[], None] | None = None) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.on_done = on_done  # called on the call's thread right after ``done`` is set


def lower_thread_priority() -> str:
    """Make the calling thread run only on otherwise idle CPU: ``SCHED_IDLE`` (Linux), else nice 19.

    Returns what was applied ("idle", "nice" or "none" where the OS offers neither). Irreversible for the
    thread without privileges, so it is only used on threads that stay in the background.
    """
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))  # type: ignore[attr-defined]
        return "idle"
    except (AttributeError, OSError):
        pass
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)  # type: ignore[attr-defined]
        return "nice"
    except (AttributeError, OSError):
        return "none"


class CallThread:
    """A daemon thread running submitted calls one at a time.

    ``background``: the thread lowers its own scheduling priority first (:func:`lower_thread_priority`).
    """

    def __init__(self, name: str, background: bool = False):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._background = background
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[], Any], on_done: Callable[[], None] | None = None) -> CallBox:
        box = CallBox(on_done)
        self._q.put((fn, box))
        return box

    def retire(self) -> None:
        self._q.put(None)  # exits after the call in progress returns

    def _loop(self) -> None:
        if self._background:
            lower_thread_priority()
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, box = item
            try:
                box.value = fn()
            except BaseException as e:  # handed to the caller, which decides
                box.error = e
            finally:
                box.done.set()
                if box.on_done is not None:
                    box.on_done()


class Caller:
    """Run calls on a dedicated thread with a timeout. A call that overruns is abandoned with its thread.

    The thread is started by the first call (building a caller starts nothing).
    """

    def __init__(self, name: str, background: bool = False):
        self._name = name
        self._background = background
        self._n = itertools.count()
        self._thread: CallThread | None = None
        self._abandoned: list[CallBox] = []
        self._lock = threading.Lock()

    def _current(self) -> CallThread:
        with self._lock:
            if self._thread is None:
                self._thread = CallThread(f"{self._name}-{next(self._n)}", self._background)
            return self._thread

    def stuck(self) -> int:
        """Abandoned calls still running."""
        with self._lock:
            self._abandoned = [b for b in self._abandoned if not b.done.is_set()]
            return len(self._abandoned)

    def submit(self, fn: Callable[[], Any], on_done: Callable[[], None] | None = None) -> CallBox:
        """Start ``fn`` on the thread and return at once (see :meth:`abandon` for one that overruns)."""
        return self._current().submit(fn, on_done)

    def abandon(self, box: CallBox) -> None:
        """Leave an overrunning call behind with its thread; later calls get a fresh thread."""
        with self._lock:
            self._abandoned.append(box)
            if self._thread is not None:
                self._thread.retire()
                self._thread = None

    def call(self, fn: Callable[[], Any], timeout: float, on_timeout: Callable[[], None] | None = None) -> Any:
        """``fn()`` on the thread; its value, or its exception re-raised here, or :class:`CallTimeout`."""
        box = self.submit(fn)
        if not box.done.wait(timeout):
            if on_timeout is not None:
                on_timeout()
            self.abandon(box)
            raise CallTimeout(f"no answer in {timeout:g} s")
        if box.error is not None:
            raise box.error
        return box.value

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._thread.retire()
                self._thread = None


def new_run_options() -> Any:
    """Fresh ONNX Runtime ``RunOptions`` for one call (so that call alone can be told to stop)."""
    import onnxruntime as ort  # heavy; imported where it is used, as in pipeline.runtime

    return ort.RunOptions()


def terminator(run_options: Any) -> Callable[[], None]:
    """A callable that asks the call running with ``run_options`` to stop (ONNX Runtime checks between nodes)."""

    def stop() -> None:
        if run_options is not None:
            run_options.terminate = True

    return stop


def call_classifier(caller: Caller, clf: OnnxClassifier, batch: FrameBatch, timeout_s: float | None = None) -> np.ndarray:
    """``clf.predict(batch)`` on ``caller``'s thread within ``timeout_s`` (default: the classifier's own timeout).

    Returns the checked probabilities; raises :class:`CallTimeout`, the classifier's exception, or
    :class:`pipeline.runtime.InferenceError` for output that breaks the contract.
    """
    ro = new_run_options()
    timeout_s = clf.timeout_s if timeout_s is None else timeout_s
    probs = caller.call(lambda: clf.predict(batch, run_options=ro), timeout_s, on_timeout=terminator(ro))
    return validate_probs(probs, len(batch), clf.card.n_classes, clf.model_id)


def latency_percentiles(values: Iterable[float], qs: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    """``{"p50": ..., "p99": ...}`` of ``values`` (None each when there are none)."""
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{int(q)}": None for q in qs}
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}
