"""The incumbent/shadow pair: serve the incumbent, run the shadow as best effort, never let it hurt serving.

:meth:`ShadowPair.infer` answers a batch with the incumbent's predictions and returns at once; the same batch is
offered to the shadow, which runs on its own worker thread:

* **isolation** - the shadow never runs on the serving thread. Its exceptions, NaN output ("garbage"), stalls
  and slowness become a :class:`ShadowResult` with an outcome; the served predictions are computed before the
  shadow sees the batch and are never touched by it.
* **shedding** - the shadow has a bounded queue (``ShadowConfig.max_pending_batches``). When it is full the
  batch is *shed* (skipped and counted): under load the shadow loses work first; serving never waits for it.
* **sampling** - only a share ``ShadowConfig.rate`` of the batches is offered (seeded, so runs repeat).
* **timeouts** - a shadow call longer than ``ShadowConfig.timeout_s`` is abandoned: it is told to stop
  (``RunOptions.terminate``, which ONNX Runtime honours between graph nodes) and its thread is left behind;
  the next batch gets a fresh thread. *Tradeoff*: Python cannot kill a thread stuck inside a native call,
  so an abandoned thread may keep a core (or GPU stream) busy until ONNX Runtime returns. To bound that,
  at most :data:`MAX_ABANDONED` abandoned calls may be alive; beyond that shadow batches are shed as
  "stalled" until one returns. Serving is never blocked by any of this.
* **coverage** - frames that got a shadow prediction / frames served, measured and reported.
* **CPU priority** - on the CPU the shadow competes with the incumbent for the same cores. A shadow batch
  therefore runs on a *background lane*: a thread at the lowest scheduling priority (Linux ``SCHED_IDLE``, else
  nice 19), so it only gets cycles that the incumbent, the cameras and the store do not want and cannot delay a
  served prediction. What happens to a batch that comes while the background lane is still busy depends on
  ``catch_up`` (the runner decides from the sources):

  - real-time sources (a camera stream, or any source paced with ``max_fps``; ``catch_up=False``): it waits in
    the queue for the background lane and is shed when the queue is full - when the cores are saturated the
    shadow loses frames, the incumbent never loses CPU to it;
  - replay (files and folders read as fast as possible; ``catch_up=True``): it runs on the *catch-up lane* at
    normal priority, so the shadow shares the cores and covers every frame it can keep up with - nobody waits on a
    replay's latency, but its point is to have both models' answer for every frame. A shadow that is slower than
    the incumbent even so still sheds what the queue cannot hold (the incumbent is never held back for it).

  ``shadowcam bench`` (docs/benchmarks.md) measures both: throughput on a replay, the incumbent's latency on a
  paced source. The priority applies to the calling thread, i.e. to all of the shadow's compute when its session
  has one intra-op thread (the CPU default on 2-3 cores, see :func:`pipeline.runtime.default_cpu_threads`);
  threads of a larger ONNX Runtime pool keep normal priority. Off the CPU (CUDA, TensorRT) there is one lane at
  normal priority. Counted in ``stats()["shadow"]["batches_background"]`` / ``["batches_catch_up"]``.

Shadow results reach the caller through ``on_shadow`` (called on the shadow's thread) or :meth:`poll_shadow`:
exactly one :class:`ShadowResult` for every batch whose :attr:`ServedResult.shadow` is ``QUEUED``; for the
other batches the :class:`ShadowStatus` in the served result is the whole story.

**Fallback** when the incumbent fails (an exception, an ONNX Runtime/device error, output breaking the
contract, or a timeout - the incumbent also runs on a worker thread so that a hung device cannot hang serving):

1. retry the batch on the CPU twin (:meth:`OnnxClassifier.cpu_fallback`) -> ``Degraded.CPU_FALLBACK``;
2. else, per frame, the camera's last good prediction (younger than ``stale_max_age_s``) -> ``Degraded.STALE``;
3. else ``Degraded.UNKNOWN``: label "unknown", uniform probabilities.

Every frame still gets exactly one served prediction; degraded ones are flagged and counted by kind.
While an abandoned incumbent call is still stuck, new batches go straight to step 1 (no pile-up of stuck calls).

The incumbent and the shadow must answer in the same class list (:func:`pipeline.modelcard.check_compatible`);
the pair refuses to be built otherwise, which the runner does before any camera is opened.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import ShadowConfig
from pipeline.modelcard import check_compatible
from pipeline.runtime import InferenceError, OnnxClassifier, validate_probs
from pipeline.types import UNKNOWN_LABEL, Degraded, FrameBatch, Prediction, Role

log = logging.getLogger(__name__)

MAX_ABANDONED = 2  # abandoned (timed-out) calls allowed to be still running before shadow work is shed as "stalled"
LATENCY_WINDOW = 100_000  # batch latencies kept for percentiles


class ShadowStatus(str, enum.Enum):
    """What happened to a batch on the shadow side, decided when the batch is served."""

    QUEUED = "queued"  # handed to the shadow worker; a ShadowResult will follow
    SKIPPED = "skipped"  # not in the sampled share (ShadowConfig.rate)
    SHED = "shed"  # the shadow's queue was full
    STALLED = "stalled"  # too many abandoned shadow calls still running; shed
    DISABLED = "disabled"  # no shadow model
    CLOSED = "closed"  # the pair was closing


class ShadowOutcome(str, enum.Enum):
    """How a queued shadow batch ended."""

    OK = "ok"
    ERROR = "error"  # the shadow raised
    GARBAGE = "garbage"  # output broke the contract (shape, NaN, not a distribution)
    TIMEOUT = "timeout"  # slower than ShadowConfig.timeout_s; abandoned
    STALLED = "stalled"  # dropped in the queue because abandoned calls were still running
    CLOSED = "closed"  # the pair closed before the batch ran


@dataclass
class ServedResult:
    """What :meth:`ShadowPair.infer` returns: the incumbent's answer for every frame of the batch."""

    batch_id: int
    batch: FrameBatch
    predictions: list[Prediction]  # one per frame, same order; degraded ones flagged
    latency_ms: float  # wall time of the serving path for this batch
    shadow: ShadowStatus
    failure: str | None = None  # why the incumbent's normal answer was not available (None: it was)


@dataclass
class ShadowResult:
    batch_id: int
    n_frames: int
    outcome: ShadowOutcome
    predictions: list[Prediction] | None = None  # set when outcome is OK
    latency_ms: float = 0.0
    detail: str = ""


class CallTimeout(Exception):
    """A call on a :class:`_Caller` did not finish within its timeout (it was abandoned)."""


class _Box:
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
    import os

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


class _CallThread:
    """A daemon thread running submitted calls one at a time (daemon: a stuck native call cannot block exit).

    ``background``: the thread lowers its own scheduling priority first (:func:`lower_thread_priority`).
    """

    def __init__(self, name: str, background: bool = False):
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._background = background
        self.thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[[], Any], on_done: Callable[[], None] | None = None) -> _Box:
        box = _Box(on_done)
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


class _Caller:
    """Run calls on a dedicated thread with a timeout. A call that overruns is abandoned with its thread."""

    def __init__(self, name: str, background: bool = False):
        self._name = name
        self._background = background
        self._n = itertools.count()
        self._thread = _CallThread(f"{name}-{next(self._n)}", background)
        self._abandoned: list[_Box] = []
        self._lock = threading.Lock()

    def stuck(self) -> int:
        """Abandoned calls still running."""
        with self._lock:
            self._abandoned = [b for b in self._abandoned if not b.done.is_set()]
            return len(self._abandoned)

    def submit(self, fn: Callable[[], Any], on_done: Callable[[], None] | None = None) -> _Box:
        """Start ``fn`` on the thread and return at once (see :meth:`abandon` for one that overruns)."""
        return self._thread.submit(fn, on_done)

    def abandon(self, box: _Box) -> None:
        """Leave an overrunning call behind with its thread; later calls get a fresh thread."""
        with self._lock:
            self._abandoned.append(box)
        self._thread.retire()
        self._thread = _CallThread(f"{self._name}-{next(self._n)}", self._background)

    def call(self, fn: Callable[[], Any], timeout: float, on_timeout: Callable[[], None] | None = None) -> Any:
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
        self._thread.retire()


@dataclass
class _BackgroundCall:
    """A shadow batch running on the background lane."""

    bid: int
    batch: FrameBatch
    t0: float
    ro: Any  # its RunOptions (terminate when overdue)
    box: _Box


_NO_JOB = object()


def _run_options() -> Any:
    try:
        import onnxruntime as ort

        return ort.RunOptions()
    except Exception:  # pragma: no cover - ORT always importable where a classifier exists
        return None


def _terminate(ro: Any) -> Callable[[], None]:
    def stop() -> None:
        if ro is not None:
            ro.terminate = True

    return stop


def _percentiles(values: Any, qs: tuple[float, ...] = (50, 99)) -> dict[str, float | None]:
    arr = np.fromiter(values, dtype=np.float64)
    if arr.size == 0:
        return {f"p{int(q)}": None for q in qs}
    return {f"p{int(q)}": float(np.percentile(arr, q)) for q in qs}


@dataclass
class _Counters:
    batches_served: int = 0
    frames_served: int = 0
    incumbent_failures: int = 0  # batches whose normal incumbent answer failed
    incumbent_timeouts: int = 0
    fallbacks: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Degraded})  # frames per kind
    last_fallback: dict[str, Any] | None = None
    shadow_frames_predicted: int = 0
    shadow_batches: dict[str, int] = field(default_factory=lambda: collections.Counter())  # status/outcome -> batches
    shadow_frames: dict[str, int] = field(default_factory=lambda: collections.Counter())  # status/outcome -> frames


class ShadowPair:
    """Serve ``incumbent``; run ``shadow`` (optional) as best effort on the same batches.

    Args:
        incumbent, shadow: classifiers (same class list, or :class:`ModelCardError` here).
        cfg: rate, timeout and queue bound of the shadow.
        on_shadow: called with each :class:`ShadowResult` on the shadow's thread (keep it quick); without it,
            results are buffered for :meth:`poll_shadow`.
        cpu_twin: the CPU retry model; default ``incumbent.cpu_fallback()`` built at :meth:`start`.
            Pass ``False`` for no CPU retry.
        stale_max_age_s: a camera's last good prediction is re-served as STALE only if younger than this.
        seed: of the shadow sampling (``cfg.rate`` < 1).
        metrics: optional :class:`pipeline.metrics.Metrics` (latency histograms, batch sizes).
        catch_up: on the CPU, run a batch that comes while the background lane is busy on the normal-priority
            catch-up lane (True: replaying files, where every frame should get both models) or leave it queued
            for the background lane, shed when the queue is full (False: real-time sources, where the
            incumbent must not share its cores). The runner sets it from the sources; see the module docstring.
    """

    def __init__(
        self,
        incumbent: OnnxClassifier,
        shadow: OnnxClassifier | None,
        cfg: ShadowConfig | None = None,
        on_shadow: Callable[[ShadowResult], None] | None = None,
        cpu_twin: OnnxClassifier | None | bool = None,
        stale_max_age_s: float = 60.0,
        seed: int = 0,
        metrics: Any = None,
        catch_up: bool = True,
    ):
        if shadow is not None:
            check_compatible(incumbent.card, shadow.card, f"incumbent {incumbent.model_id}", f"shadow {shadow.model_id}")
        self.incumbent = incumbent
        self.shadow = shadow
        self.cfg = cfg or ShadowConfig()
        self.on_shadow = on_shadow
        self.stale_max_age_s = stale_max_age_s
        self.metrics = metrics
        self.catch_up = catch_up
        self._cpu_twin_arg = cpu_twin
        self.cpu_twin: OnnxClassifier | None = None
        self._rng = np.random.default_rng(seed)
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._c = _Counters()
        self._inc_lat: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._sh_lat: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._last_good: dict[str, tuple[Prediction, float]] = {}
        self._results: queue.SimpleQueue[ShadowResult] = queue.SimpleQueue()
        self._queue: queue.Queue = queue.Queue(maxsize=self.cfg.max_pending_batches)
        self._wake = threading.Event()  # a batch was queued, the background call finished, or the pair is closing
        self._inc_caller = _Caller("incumbent")
        self._twin_caller = _Caller("incumbent-cpu")
        self._sh_caller = _Caller("shadow")  # catch-up lane: normal priority, when the shadow is behind
        self._sh_bg_caller = _Caller("shadow-bg", background=True)  # background lane: lowest priority
        self._worker: threading.Thread | None = None
        self._started = False
        self._closing = False
        self.started_at = time.time()

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "ShadowPair":
        if self._started:
            return self
        self._started = True
        if self._cpu_twin_arg is None:
            try:
                self.cpu_twin = self.incumbent.cpu_fallback()
            except Exception as e:  # no CPU retry is a degraded setup, not a reason to refuse serving
                log.warning("cpu_twin_unavailable model=%s error=%s", self.incumbent.model_id, e)
        elif self._cpu_twin_arg is not False:
            self.cpu_twin = self._cpu_twin_arg  # type: ignore[assignment]
        if self.shadow is not None:
            self._worker = threading.Thread(target=self._shadow_loop, name="shadow-dispatch", daemon=True)
            self._worker.start()
        return self

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the shadow worker. ``drain``: let queued shadow batches run first (bounded by their timeouts)."""
        if not self._started or self._closing:
            self._closing = True
            return
        self._closing = True
        if self._worker is not None:
            if not drain:
                self._flush_queue(ShadowOutcome.CLOSED)
            self._queue.put(None)
            self._wake.set()
            limit = timeout if timeout is not None else (self.cfg.max_pending_batches + 2) * self.cfg.timeout_s + 1.0
            self._worker.join(limit)
            if self._worker.is_alive():
                log.warning("shadow_worker_not_stopped after=%.1fs", limit)
            self._flush_queue(ShadowOutcome.CLOSED)
        for c in (self._inc_caller, self._twin_caller, self._sh_caller, self._sh_bg_caller):
            c.close()

    def __enter__(self) -> "ShadowPair":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- serving ---------------------------------------------------------------------------------------
    def infer(self, batch: FrameBatch) -> ServedResult:
        """Serve ``batch`` with the incumbent (or the fallback chain) and offer it to the shadow."""
        if not self._started:
            self.start()
        bid = next(self._ids)
        t0 = time.perf_counter()
        preds, failure = self._serve(batch, t0)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        status = self._offer_shadow(bid, batch)
        n = len(batch)
        with self._lock:
            c = self._c
            c.batches_served += 1
            c.frames_served += n
            c.shadow_batches[status.value] += 1
            c.shadow_frames[status.value] += n
            self._inc_lat.append(latency_ms)
        if self.metrics is not None:
            self.metrics.observe_batch(self.incumbent.model_id, Role.INCUMBENT.value, n, latency_ms / 1000.0)
        return ServedResult(bid, batch, preds, latency_ms, status, failure)

    def _serve(self, batch: FrameBatch, t0: float) -> tuple[list[Prediction], str | None]:
        inc = self.incumbent
        failure: str | None = None
        if self._inc_caller.stuck():
            failure = "incumbent has a timed-out call still running"
        else:
            try:
                probs = self._call(self._inc_caller, inc, batch)
                preds = inc.predictions(batch, probs, (time.perf_counter() - t0) * 1000.0)
                self._remember(preds)
                return preds, None
            except CallTimeout:
                failure = f"incumbent timeout ({inc.timeout_s:g} s)"
                with self._lock:
                    self._c.incumbent_timeouts += 1
            except Exception as e:
                failure = f"incumbent {type(e).__name__}: {e}"
        log.warning("incumbent_failed model=%s frames=%d reason=%r", inc.model_id, len(batch), failure)
        with self._lock:
            self._c.incumbent_failures += 1

        twin = self.cpu_twin
        if twin is not None and not self._twin_caller.stuck():
            try:
                probs = self._call(self._twin_caller, twin, batch)
                preds = twin.predictions(batch, probs, (time.perf_counter() - t0) * 1000.0, degraded=Degraded.CPU_FALLBACK)
                preds = [p if p.role is Role.INCUMBENT else _as_incumbent(p) for p in preds]
                self._remember(preds)
                self._count_fallback(Degraded.CPU_FALLBACK, len(batch), failure)
                return preds, failure
            except CallTimeout:
                failure += f"; cpu retry timeout ({twin.timeout_s:g} s)"
            except Exception as e:
                failure += f"; cpu retry {type(e).__name__}: {e}"

        latency_ms = (time.perf_counter() - t0) * 1000.0
        now = time.monotonic()
        n_cls = inc.card.n_classes
        uniform = np.full(n_cls, 1.0 / n_cls, dtype=np.float32)
        out: list[Prediction] = []
        n_stale = 0
        for f in batch.frames:
            last = self._last_good.get(f.camera_id)
            if last is not None and now - last[1] <= self.stale_max_age_s:
                p = last[0]
                out.append(Prediction(f.frame_id, f.camera_id, Role.INCUMBENT, p.model, p.probs, p.label, latency_ms, Degraded.STALE))
                n_stale += 1
            else:
                out.append(Prediction(f.frame_id, f.camera_id, Role.INCUMBENT, inc.model_id, uniform, UNKNOWN_LABEL, latency_ms, Degraded.UNKNOWN))
        if n_stale:
            self._count_fallback(Degraded.STALE, n_stale, failure)
        if len(out) - n_stale:
            self._count_fallback(Degraded.UNKNOWN, len(out) - n_stale, failure)
        return out, failure

    def _call(self, caller: _Caller, clf: OnnxClassifier, batch: FrameBatch, timeout_s: float | None = None) -> np.ndarray:
        ro = _run_options()
        timeout_s = clf.timeout_s if timeout_s is None else timeout_s
        probs = caller.call(lambda: clf.predict(batch, run_options=ro), timeout_s, on_timeout=_terminate(ro))
        return validate_probs(probs, len(batch), clf.card.n_classes, clf.model_id)

    def _remember(self, preds: list[Prediction]) -> None:
        now = time.monotonic()
        for p in preds:
            self._last_good[p.camera_id] = (p, now)

    def _count_fallback(self, kind: Degraded, n: int, reason: str | None) -> None:
        with self._lock:
            self._c.fallbacks[kind.value] += n
            self._c.last_fallback = {"kind": kind.value, "frames": n, "reason": reason, "at": time.time()}
        if self.metrics is not None:
            self.metrics.inc_fallback(kind.value, n)

    # --- shadow side -----------------------------------------------------------------------------------
    def _offer_shadow(self, bid: int, batch: FrameBatch) -> ShadowStatus:
        if self.shadow is None:
            return ShadowStatus.DISABLED
        if self._closing:
            return ShadowStatus.CLOSED
        if self.cfg.rate < 1.0 and self._rng.random() >= self.cfg.rate:
            return ShadowStatus.SKIPPED
        if self._shadow_stuck() >= MAX_ABANDONED:
            return ShadowStatus.STALLED
        try:
            self._queue.put_nowait((bid, batch))
        except queue.Full:
            return ShadowStatus.SHED
        self._wake.set()
        return ShadowStatus.QUEUED

    def _shadow_loop(self) -> None:
        """Run queued batches on the shadow's lanes (see the module docstring, "CPU priority").

        On the CPU a batch goes to the background lane (lowest priority, started without waiting) when that lane
        is free, else - the shadow is behind - to the catch-up lane (normal priority, waited for). Off the CPU
        there is one lane at normal priority. Exactly one :class:`ShadowResult` is emitted per queued batch.
        """
        sh = self.shadow
        assert sh is not None
        lanes = getattr(sh, "device", "cpu") == "cpu"
        bg: _BackgroundCall | None = None  # the batch in flight on the background lane
        while True:
            if bg is None:
                job = self._queue.get()
            else:  # sleep until a batch is queued, the background call ends, or it is overdue (no polling)
                self._wake.wait(max(0.0, bg.t0 + self.cfg.timeout_s - time.perf_counter()))
                self._wake.clear()  # before looking: a later set() is seen by the next wait
                job = _NO_JOB
                if self.catch_up:  # else queued batches wait for the background lane (and are shed when it is full)
                    try:
                        job = self._queue.get_nowait()
                    except queue.Empty:
                        pass
            if bg is not None and self._background_done(bg, wait=job is None):
                bg = None
            if job is _NO_JOB:
                continue
            if job is None:
                return
            bid, batch = job
            n = len(batch)
            if self._shadow_stuck() >= MAX_ABANDONED:
                self._emit(ShadowResult(bid, n, ShadowOutcome.STALLED, detail=f"{MAX_ABANDONED} abandoned shadow calls still running"))
                continue
            if lanes and bg is None:
                with self._lock:
                    self._c.shadow_batches["lane_background"] += 1
                ro = _run_options()
                t0 = time.perf_counter()
                box = self._sh_bg_caller.submit(lambda b=batch, r=ro: sh.predict(b, run_options=r), on_done=self._wake.set)
                bg = _BackgroundCall(bid, batch, t0, ro, box)
                continue
            if lanes:
                with self._lock:
                    self._c.shadow_batches["lane_catch_up"] += 1
            t0 = time.perf_counter()

            def run(b: FrameBatch = batch) -> np.ndarray:
                return self._call(self._sh_caller, sh, b, self.cfg.timeout_s)

            self._finish_shadow(bid, batch, t0, run)

    def _background_done(self, bg: "_BackgroundCall", wait: bool) -> bool:
        """Emit the background call's result if it has one (or is overdue: abandoned as a timeout)."""
        sh = self.shadow
        assert sh is not None
        deadline = bg.t0 + self.cfg.timeout_s
        if wait:  # closing: give it until its deadline
            bg.box.done.wait(max(0.0, deadline - time.perf_counter()))
        if bg.box.done.is_set():
            def result() -> np.ndarray:
                if bg.box.error is not None:
                    raise bg.box.error
                return validate_probs(bg.box.value, len(bg.batch), sh.card.n_classes, sh.model_id)

            self._finish_shadow(bg.bid, bg.batch, bg.t0, result)
            return True
        if wait or time.perf_counter() >= deadline:  # overdue (or closing and still running at its deadline)
            _terminate(bg.ro)()
            self._sh_bg_caller.abandon(bg.box)

            def overdue() -> np.ndarray:
                raise CallTimeout(f"no answer in {self.cfg.timeout_s:g} s")

            self._finish_shadow(bg.bid, bg.batch, bg.t0, overdue)
            return True
        return False

    def _finish_shadow(self, bid: int, batch: FrameBatch, t0: float, get_probs: Callable[[], np.ndarray]) -> None:
        """Turn a shadow call's outcome (``get_probs`` returns the checked probabilities or raises) into a result."""
        sh = self.shadow
        assert sh is not None
        n = len(batch)
        try:
            probs = get_probs()
            latency_ms = (time.perf_counter() - t0) * 1000.0
            preds = sh.predictions(batch, probs, latency_ms)
            preds = [p if p.role is Role.SHADOW else _as_shadow(p) for p in preds]
            res = ShadowResult(bid, n, ShadowOutcome.OK, preds, latency_ms)
        except CallTimeout as e:
            res = ShadowResult(bid, n, ShadowOutcome.TIMEOUT, latency_ms=(time.perf_counter() - t0) * 1000.0, detail=str(e))
        except InferenceError as e:
            kind = ShadowOutcome.GARBAGE if e.kind == "garbage" else ShadowOutcome.ERROR
            res = ShadowResult(bid, n, kind, latency_ms=(time.perf_counter() - t0) * 1000.0, detail=str(e))
        except Exception as e:  # anything the shadow does wrong stays here
            res = ShadowResult(bid, n, ShadowOutcome.ERROR, latency_ms=(time.perf_counter() - t0) * 1000.0,
                               detail=f"{type(e).__name__}: {e}")
        if res.outcome is not ShadowOutcome.OK:
            log.debug("shadow_%s model=%s batch=%d detail=%r", res.outcome.value, sh.model_id, bid, res.detail)
        elif self.metrics is not None:
            self.metrics.observe_batch(sh.model_id, Role.SHADOW.value, n, res.latency_ms / 1000.0)
        self._emit(res)

    def _shadow_stuck(self) -> int:
        """Abandoned (timed-out) shadow calls still running, on either lane."""
        return self._sh_caller.stuck() + self._sh_bg_caller.stuck()

    def _flush_queue(self, outcome: ShadowOutcome) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                self._emit(ShadowResult(job[0], len(job[1]), outcome, detail="pair closed"))

    def _emit(self, res: ShadowResult) -> None:
        with self._lock:
            key = f"done_{res.outcome.value}"
            self._c.shadow_batches[key] += 1
            self._c.shadow_frames[key] += res.n_frames
            if res.outcome is ShadowOutcome.OK:
                self._c.shadow_frames_predicted += res.n_frames
                self._sh_lat.append(res.latency_ms)
        if self.on_shadow is not None:
            try:
                self.on_shadow(res)
            except Exception:
                log.exception("on_shadow callback failed for batch %d", res.batch_id)
        else:
            self._results.put(res)

    def poll_shadow(self, timeout: float = 0.0) -> list[ShadowResult]:
        """Shadow results ready now (waits up to ``timeout`` for the first one). Empty when ``on_shadow`` is set."""
        out: list[ShadowResult] = []
        try:
            out.append(self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait())
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        return out

    @property
    def shadow_queue_depth(self) -> int:
        return self._queue.qsize()

    # --- reporting -------------------------------------------------------------------------------------
    def coverage(self) -> float:
        """Frames with a shadow prediction / frames served (0 when nothing was served)."""
        with self._lock:
            return self._c.shadow_frames_predicted / self._c.frames_served if self._c.frames_served else 0.0

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (JSON-friendly)."""
        with self._lock:
            c = self._c
            sf, sb = dict(c.shadow_frames), dict(c.shadow_batches)
            inc_lat = _percentiles(list(self._inc_lat))
            sh_lat = _percentiles(list(self._sh_lat))
            served = c.frames_served
            return {
                "batches_served": c.batches_served,
                "frames_served": served,
                "incumbent": {
                    "model": self.incumbent.model_id,
                    "providers": list(self.incumbent.providers),
                    "intra_op_threads": getattr(self.incumbent, "threads", None),
                    "failures": c.incumbent_failures,
                    "timeouts": c.incumbent_timeouts,
                    "latency_ms": inc_lat,
                },
                "fallbacks": dict(c.fallbacks),
                "last_fallback": dict(c.last_fallback) if c.last_fallback else None,
                "shadow": {
                    "model": self.shadow.model_id if self.shadow is not None else None,
                    "providers": list(self.shadow.providers) if self.shadow is not None else [],
                    "intra_op_threads": getattr(self.shadow, "threads", None),
                    "rate": self.cfg.rate,
                    "coverage": (c.shadow_frames_predicted / served) if served else 0.0,
                    "frames_predicted": c.shadow_frames_predicted,
                    "frames_skipped": sf.get("skipped", 0),
                    "frames_shed": sf.get("shed", 0) + sf.get("stalled", 0) + sf.get("done_stalled", 0),
                    "batches_shed": sb.get("shed", 0) + sb.get("stalled", 0) + sb.get("done_stalled", 0),
                    "timeouts": sb.get("done_timeout", 0),
                    "errors": sb.get("done_error", 0),
                    "garbage": sb.get("done_garbage", 0),
                    "closed": sb.get("closed", 0) + sb.get("done_closed", 0),
                    "pending": self._queue.qsize(),
                    "stuck_calls": self._shadow_stuck(),
                    "catch_up": self.catch_up,
                    "batches_background": sb.get("lane_background", 0),
                    "batches_catch_up": sb.get("lane_catch_up", 0),
                    "latency_ms": sh_lat,
                },
            }


def _as_incumbent(p: Prediction) -> Prediction:
    return Prediction(p.frame_id, p.camera_id, Role.INCUMBENT, p.model, p.probs, p.label, p.latency_ms, p.degraded)


def _as_shadow(p: Prediction) -> Prediction:
    return Prediction(p.frame_id, p.camera_id, Role.SHADOW, p.model, p.probs, p.label, p.latency_ms, p.degraded)
