"""The incumbent/shadow pair: serve the incumbent, run the shadow as best effort, never let it hurt serving.

:class:`ShadowPair` is the composition of two parts with one job each:

* :class:`pipeline.serving.IncumbentServer` answers every frame: the incumbent on a call thread with a timeout,
  else its fallback chain (CPU twin -> the camera's last good prediction -> "unknown"; see that module);
* :class:`ShadowScheduler` (here) offers the same batch to the shadow and runs it off the serving path.

:meth:`ShadowPair.infer` answers a batch with the incumbent's predictions: the served predictions are computed
before the shadow sees the batch, and offering it to the shadow never waits - except under *backpressure*
(a replay, see below), where it waits for room in the shadow's queue.

Threads::

    caller (serving) --infer--> IncumbentServer.serve -- incumbent call thread (then CPU-twin call thread)
           |
           +--offer (put_nowait; shed when full)--> shadow queue --> "shadow-dispatch" thread
              (backpressure: wait for room)                           |-- background lane: call thread at the
                                                                      |   lowest CPU priority (started, not waited)
                                                                      '-- catch-up lane: call thread at normal
                                                                          priority (waited, with the timeout)
    ShadowResults: ``on_shadow`` is called on "shadow-dispatch"; without it they wait for :meth:`ShadowPair.poll_shadow`.

The shadow side:

* **isolation** - the shadow never runs on the serving thread. Its exceptions, NaN output ("garbage"), stalls
  and slowness become a :class:`ShadowResult` with an outcome; the served predictions are never touched by it.
* **shedding** - the shadow has a bounded queue (``ShadowConfig.max_pending_batches``). When it is full the
  batch is *shed* (skipped and counted): under load the shadow loses work first; serving never waits for it
  (unless **backpressure** is on: a replay waits instead, see below).
* **sampling** - only a share ``ShadowConfig.rate`` of the batches is offered (seeded, so runs repeat).
* **timeouts** - a shadow call longer than ``ShadowConfig.timeout_s`` (under backpressure
  ``backpressure_max_wait_s``, :func:`shadow_call_limit_s`) is abandoned: it is told to stop
  (``RunOptions.terminate``, which ONNX Runtime honours between graph nodes) and its thread is left behind;
  the next batch gets a fresh thread (:class:`pipeline.calls.Caller`). *Tradeoff*: Python cannot kill a thread
  stuck inside a native call, so an abandoned thread may keep a core (or GPU stream) busy until ONNX Runtime
  returns. To bound that, at most :data:`MAX_ABANDONED` abandoned calls may be alive; beyond that shadow
  batches are shed as "stalled" until one returns. Serving is never blocked by any of this.
* **coverage** - frames that got a shadow prediction / frames served, measured and reported.
* **CPU priority** - on the CPU the shadow competes with the incumbent for the same cores. A shadow batch
  therefore runs on a *background lane*: a thread at the lowest scheduling priority (Linux ``SCHED_IDLE``, else
  nice 19; :func:`lower_thread_priority`), so it only gets cycles that the incumbent, the cameras and the store
  do not want and cannot delay a served prediction. What happens to a batch that comes while the background
  lane is still busy depends on ``catch_up`` (the runner decides from the sources):

  - real-time sources (a camera stream, or any source paced with ``max_fps``; ``catch_up=False``): it waits in
    the queue for the background lane and is shed when the queue is full - when the cores are saturated the
    shadow loses frames, the incumbent never loses CPU to it;
  - replay (files and folders read as fast as possible; ``catch_up=True``): it runs on the *catch-up lane* at
    normal priority, so the shadow shares the cores and covers every frame it can keep up with - nobody waits on a
    replay's latency, but its point is to have both models' answer for every frame. Without backpressure (below)
    a shadow that is slower than the incumbent even so sheds what the queue cannot hold.

  With backpressure (below) every batch runs on the catch-up lane (normal priority), one at a time.

  ``shadowcam bench`` (docs/benchmarks.md) measures both: throughput on a replay, the incumbent's latency on a
  paced source. The priority applies to the calling thread, i.e. to all of the shadow's compute when its session
  has one intra-op thread (the CPU default on 2-3 cores, see :func:`pipeline.runtime.default_cpu_threads`);
  threads of a larger ONNX Runtime pool keep normal priority. Off the CPU (CUDA, TensorRT) there is one lane at
  normal priority. Counted in ``stats()["shadow"]["batches_background"]`` / ``["batches_catch_up"]``.

* **backpressure** (``ShadowConfig.backpressure``; the runner turns it on for ``"auto"`` when every source is
  a replay: files and folders read at full speed) - a replay has no deadline, and the paired comparison needs
  the shadow's answer for every frame, so instead of shedding, :meth:`ShadowScheduler.offer` *waits* for room in
  the queue. The wait holds up the serve loop, the batcher and the file readers (which block rather than
  drop): the replay runs at the pace of the slower model. On a busy machine nothing is lost, the replay just
  takes longer: the shadow runs at normal priority on one lane (a lowest-priority thread could be starved by
  any other process), and a call is abandoned only after ``backpressure_max_wait_s`` (not ``timeout_s``).
  Bounded, never forever: an offer waits at most ``backpressure_max_wait_s`` (then the batch is shed and
  counted as ``gave_up``), and once :data:`MAX_ABANDONED` calls were abandoned (a hung shadow) offers stop
  waiting and shed as "stalled" at once, so a dead shadow costs a replay about ``2 * backpressure_max_wait_s``
  and ends with a clear count (``frames_shed``, ``timeouts``). Live sources (any camera stream, or a file paced
  with ``max_fps``) keep shedding: the incumbent is never delayed. Counted in
  ``stats()["shadow"]["backpressure"]``: batches and frames that waited, the total and longest wait.

Exactly one :class:`ShadowResult` follows for every batch whose :attr:`ServedResult.shadow` is ``QUEUED``; for
the other batches the :class:`ShadowStatus` in the served result is the whole story.

The incumbent and the shadow must answer in the same class list (:func:`pipeline.modelcard.check_compatible`);
the pair refuses to be built otherwise, which the runner checks before any camera is opened.
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
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.calls import (
    LATENCY_WINDOW,
    CallBox,
    Caller,
    CallTimeout,
    call_classifier,
    latency_percentiles,
    lower_thread_priority,
    new_run_options,
    terminator,
)
from pipeline.config import ShadowConfig
from pipeline.modelcard import check_compatible
from pipeline.runtime import InferenceError, OnnxClassifier, validate_probs
from pipeline.serving import IncumbentServer
from pipeline.types import FrameBatch, Prediction, Role

log = logging.getLogger(__name__)

MAX_ABANDONED = 2  # abandoned (timed-out) calls allowed to be still running before shadow work is shed as "stalled"

__all__ = [
    "LATENCY_WINDOW",
    "MAX_ABANDONED",
    "CallTimeout",
    "ServedResult",
    "ShadowOutcome",
    "ShadowPair",
    "ShadowResult",
    "ShadowScheduler",
    "ShadowStatus",
    "lower_thread_priority",
    "shadow_call_limit_s",
    "shadow_result_within_s",
]


def shadow_call_limit_s(cfg: ShadowConfig, backpressure: bool) -> float:
    """How long one shadow call may run before it is abandoned: ``timeout_s``, or under backpressure (a replay,
    where a busy machine must slow the shadow down rather than cost it frames) ``backpressure_max_wait_s`` if
    that is longer."""
    return max(cfg.timeout_s, cfg.backpressure_max_wait_s) if backpressure else cfg.timeout_s


def shadow_result_within_s(cfg: ShadowConfig, backpressure: bool) -> float:
    """The longest a batch queued for the shadow waits for its :class:`ShadowResult`: the call in progress, the
    ``max_pending_batches`` before it and its own, each bounded by :func:`shadow_call_limit_s`, plus a margin.
    The store writer's join timeout (:mod:`pipeline.writer`) and :meth:`ShadowScheduler.close` use it."""
    return (cfg.max_pending_batches + 2) * shadow_call_limit_s(cfg, backpressure) + 1.0


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


@dataclass
class _BackgroundCall:
    """A shadow batch running on the background lane."""

    bid: int
    batch: FrameBatch
    t0: float
    ro: Any  # its RunOptions (terminate when overdue)
    box: CallBox


_NO_JOB = object()


class ShadowScheduler:
    """Run ``shadow`` (optional) as best effort on the batches :meth:`offer` ed to it; see the module docstring.

    Args:
        shadow: the shadow classifier; None: every batch is ``DISABLED``.
        cfg: rate, timeout and queue bound of the shadow.
        on_shadow: called with each :class:`ShadowResult` on the dispatch thread (keep it quick); without it,
            results are buffered for :meth:`poll`.
        metrics: optional :class:`pipeline.metrics.Metrics` (the shadow's latency histogram).
        catch_up: on the CPU, run a batch that comes while the background lane is busy on the catch-up lane
            (True) or leave it queued for the background lane, shed when the queue is full (False).
        seed: of the shadow sampling (``cfg.rate`` < 1).
        backpressure: :meth:`offer` waits for room in the queue instead of shedding, and the shadow runs on one
            lane at normal priority with :func:`shadow_call_limit_s` per call (replays; see the module docstring).
    """

    def __init__(
        self,
        shadow: OnnxClassifier | None,
        cfg: ShadowConfig | None = None,
        on_shadow: Callable[[ShadowResult], None] | None = None,
        metrics: Any = None,
        catch_up: bool = True,
        seed: int = 0,
        backpressure: bool = False,
    ):
        self.shadow = shadow
        self.cfg = cfg or ShadowConfig()
        self.on_shadow = on_shadow
        self.metrics = metrics
        self.catch_up = catch_up
        self.backpressure = backpressure
        self.call_limit_s = shadow_call_limit_s(self.cfg, backpressure)
        self._waits = {"batches_waited": 0, "frames_waited": 0, "wait_s": 0.0, "longest_wait_s": 0.0,
                       "batches_gave_up": 0, "frames_gave_up": 0}
        self._stuck_logged = False
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._frames_predicted = 0
        self._busy_s = 0.0  # wall time of the shadow's model calls, both lanes (pipeline.serving_cost)
        self._batches: collections.Counter[str] = collections.Counter()  # status/outcome/lane -> batches
        self._frames: collections.Counter[str] = collections.Counter()  # status/outcome -> frames
        self._latency: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._results: queue.SimpleQueue[ShadowResult] = queue.SimpleQueue()
        self._queue: queue.Queue = queue.Queue(maxsize=self.cfg.max_pending_batches)
        self._wake = threading.Event()  # a batch was queued, the background call finished, or closing
        self._caller = Caller("shadow")  # catch-up lane: normal priority, when the shadow is behind
        self._bg_caller = Caller("shadow-bg", background=True)  # background lane: lowest priority
        self._worker: threading.Thread | None = None
        self._started = False
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "ShadowScheduler":
        if self._started:
            return self
        self._started = True
        if self.shadow is not None:
            self._worker = threading.Thread(target=self._dispatch, name="shadow-dispatch", daemon=True)
            self._worker.start()
        return self

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the dispatch thread. ``drain``: let queued batches run first (bounded by their timeouts)."""
        if not self._started or self._closing:
            self._closing = True
            return
        self._closing = True
        if self._worker is not None:
            if not drain:
                self._flush_queue(ShadowOutcome.CLOSED)
            self._queue.put(None)
            self._wake.set()
            limit = timeout if timeout is not None else shadow_result_within_s(self.cfg, self.backpressure)
            self._worker.join(limit)
            if self._worker.is_alive():
                log.warning("shadow_worker_not_stopped after=%.1fs", limit)
            self._flush_queue(ShadowOutcome.CLOSED)
        self._caller.close()
        self._bg_caller.close()

    # --- the verb ------------------------------------------------------------------------------------
    def offer(self, batch_id: int, batch: FrameBatch) -> ShadowStatus:
        """Queue ``batch`` for the shadow if it is sampled and there is room (under backpressure: once there is
        room, waiting at most ``backpressure_max_wait_s``); else never waits. Counted by status."""
        status = self._decide(batch_id, batch)
        with self._lock:
            self._batches[status.value] += 1
            self._frames[status.value] += len(batch)
        return status

    def _decide(self, bid: int, batch: FrameBatch) -> ShadowStatus:
        if self.shadow is None:
            return ShadowStatus.DISABLED
        if self._closing:
            return ShadowStatus.CLOSED
        if not self._started:
            self.start()
        if self.cfg.rate < 1.0 and self._rng.random() >= self.cfg.rate:
            return ShadowStatus.SKIPPED
        if self._stuck() >= MAX_ABANDONED:
            self._log_stuck()
            return ShadowStatus.STALLED
        try:
            self._queue.put_nowait((bid, batch))
        except queue.Full:
            if not self.backpressure:
                return ShadowStatus.SHED
            return self._wait_for_room(bid, batch)
        self._wake.set()
        return ShadowStatus.QUEUED

    def _wait_for_room(self, bid: int, batch: FrameBatch) -> ShadowStatus:
        """Backpressure: wait until the queue has room (QUEUED), the shadow is stuck (STALLED), the scheduler
        closes (CLOSED) or ``backpressure_max_wait_s`` passed (SHED, counted as given up). Wait times counted."""
        t0 = time.perf_counter()
        deadline = t0 + self.cfg.backpressure_max_wait_s
        status = ShadowStatus.SHED
        while True:
            if self._closing:
                status = ShadowStatus.CLOSED
                break
            if self._stuck() >= MAX_ABANDONED:
                self._log_stuck()
                status = ShadowStatus.STALLED
                break
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:  # in slices, to notice a stuck shadow or a close while waiting
                self._queue.put((bid, batch), timeout=min(remaining, 0.25))
            except queue.Full:
                continue
            status = ShadowStatus.QUEUED
            self._wake.set()
            break
        waited = time.perf_counter() - t0
        with self._lock:
            w = self._waits
            w["batches_waited"] += 1
            w["frames_waited"] += len(batch)
            w["wait_s"] += waited
            w["longest_wait_s"] = max(w["longest_wait_s"], waited)
            if status is ShadowStatus.SHED:
                w["batches_gave_up"] += 1
                w["frames_gave_up"] += len(batch)
        if status is ShadowStatus.SHED:
            log.warning("shadow_backpressure_gave_up batch=%d frames=%d after=%.1fs (backpressure_max_wait_s): shed",
                        bid, len(batch), waited)
        return status

    def _log_stuck(self) -> None:
        if self.backpressure and not self._stuck_logged:
            self._stuck_logged = True
            log.warning("shadow_stuck abandoned_calls=%d: backpressure suspended, shadow batches are shed as stalled "
                        "until one returns", self._stuck())

    # --- the dispatch thread -------------------------------------------------------------------------
    def _dispatch(self) -> None:
        """Run queued batches on the shadow's lanes (see the module docstring, "CPU priority").

        On the CPU a batch goes to the background lane (lowest priority, started without waiting) when that lane
        is free, else - the shadow is behind - to the catch-up lane (normal priority, waited for) when
        ``catch_up``, else it waits for the background lane. Off the CPU there is one lane at normal priority.
        Exactly one :class:`ShadowResult` is emitted per queued batch.
        """
        sh = self.shadow
        assert sh is not None
        # two lanes on the CPU; off the CPU and under backpressure one, at normal priority (on the CPU: the
        # catch-up lane, counted as such)
        cpu = getattr(sh, "device", "cpu") == "cpu"
        lanes = cpu and not self.backpressure
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
            if self._stuck() >= MAX_ABANDONED:
                self._emit(ShadowResult(bid, len(batch), ShadowOutcome.STALLED,
                                        detail=f"{MAX_ABANDONED} abandoned shadow calls still running"))
                continue
            if lanes and bg is None:
                self._count_lane("lane_background")
                ro = new_run_options()
                box = self._bg_caller.submit(self._timed(lambda b=batch, r=ro: sh.predict(b, run_options=r)),
                                             on_done=self._wake.set)
                bg = _BackgroundCall(bid, batch, time.perf_counter(), ro, box)
                continue
            if cpu:
                self._count_lane("lane_catch_up")
            t0 = time.perf_counter()

            def run(b: FrameBatch = batch) -> np.ndarray:
                t_call = time.perf_counter()
                try:
                    return call_classifier(self._caller, sh, b, self.call_limit_s)
                finally:
                    self._add_busy(time.perf_counter() - t_call)

            self._finish(bid, batch, t0, run)

    def _add_busy(self, seconds: float) -> None:
        with self._lock:
            self._busy_s += seconds

    def _timed(self, fn: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
        """``fn`` that adds its own wall time to the busy time (measured on the call thread: exact for the background
        lane, whose result the dispatch thread may only look at later)."""

        def call() -> np.ndarray:
            t_call = time.perf_counter()
            try:
                return fn()
            finally:
                self._add_busy(time.perf_counter() - t_call)

        return call

    def _count_lane(self, lane: str) -> None:
        with self._lock:
            self._batches[lane] += 1

    def _background_done(self, bg: _BackgroundCall, wait: bool) -> bool:
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

            self._finish(bg.bid, bg.batch, bg.t0, result)
            return True
        if wait or time.perf_counter() >= deadline:  # overdue (or closing and still running at its deadline)
            terminator(bg.ro)()
            self._bg_caller.abandon(bg.box)

            def overdue() -> np.ndarray:
                raise CallTimeout(f"no answer in {self.cfg.timeout_s:g} s")

            self._finish(bg.bid, bg.batch, bg.t0, overdue)
            return True
        return False

    def _finish(self, bid: int, batch: FrameBatch, t0: float, get_probs: Callable[[], np.ndarray]) -> None:
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

    def _stuck(self) -> int:
        """Abandoned (timed-out) shadow calls still running, on either lane."""
        return self._caller.stuck() + self._bg_caller.stuck()

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
            self._batches[key] += 1
            self._frames[key] += res.n_frames
            if res.outcome is ShadowOutcome.OK:
                self._frames_predicted += res.n_frames
                self._latency.append(res.latency_ms)
        if self.on_shadow is not None:
            try:
                self.on_shadow(res)
            except Exception:
                log.exception("on_shadow callback failed for batch %d", res.batch_id)
        else:
            self._results.put(res)

    # --- results and reporting -----------------------------------------------------------------------
    def poll(self, timeout: float = 0.0) -> list[ShadowResult]:
        """Results ready now (waits up to ``timeout`` for the first one). Empty when ``on_shadow`` is set."""
        out: list[ShadowResult] = []
        try:
            out.append(self._results.get(timeout=timeout) if timeout > 0 else self._results.get_nowait())
            while True:
                out.append(self._results.get_nowait())
        except queue.Empty:
            pass
        return out

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def frames_predicted(self) -> int:
        with self._lock:
            return self._frames_predicted

    def stats(self, frames_served: int) -> dict[str, Any]:
        """The ``shadow`` part of :meth:`ShadowPair.stats`; coverage relative to ``frames_served``."""
        with self._lock:
            sf, sb = dict(self._frames), dict(self._batches)
            predicted = self._frames_predicted
            busy = self._busy_s
            latency = latency_percentiles(list(self._latency))
            waits = dict(self._waits)
        sh = self.shadow
        return {
            "model": sh.model_id if sh is not None else None,
            "providers": list(sh.providers) if sh is not None else [],
            "intra_op_threads": getattr(sh, "threads", None),
            "rate": self.cfg.rate,
            "coverage": (predicted / frames_served) if frames_served else 0.0,
            "frames_predicted": predicted,
            "busy_s": round(busy, 6),  # seconds the shadow's calls ran (including ones that failed or timed out)
            "frames_skipped": sf.get("skipped", 0),
            "frames_shed": sf.get("shed", 0) + sf.get("stalled", 0) + sf.get("done_stalled", 0),
            "batches_shed": sb.get("shed", 0) + sb.get("stalled", 0) + sb.get("done_stalled", 0),
            "timeouts": sb.get("done_timeout", 0),
            "errors": sb.get("done_error", 0),
            "garbage": sb.get("done_garbage", 0),
            "closed": sb.get("closed", 0) + sb.get("done_closed", 0),
            "pending": self._queue.qsize(),
            "stuck_calls": self._stuck(),
            "catch_up": self.catch_up,
            "batches_background": sb.get("lane_background", 0),
            "batches_catch_up": sb.get("lane_catch_up", 0),
            "latency_ms": latency,
            "backpressure": {
                "mode": self.cfg.backpressure,  # as configured (auto|always|never)
                "enabled": self.backpressure,  # as resolved for this run's sources
                "max_wait_s": self.cfg.backpressure_max_wait_s,
                "call_limit_s": self.call_limit_s,
                "batches_waited": waits["batches_waited"],  # offers that found the queue full and waited
                "frames_waited": waits["frames_waited"],
                "wait_s": round(waits["wait_s"], 6),  # total time the serve loop waited for the shadow
                "longest_wait_s": round(waits["longest_wait_s"], 6),
                "batches_gave_up": waits["batches_gave_up"],  # waited backpressure_max_wait_s, then shed
                "frames_gave_up": waits["frames_gave_up"],
            },
        }


class ShadowPair:
    """Serve ``incumbent``; run ``shadow`` (optional) as best effort on the same batches.

    The composition of an :class:`~pipeline.serving.IncumbentServer` (:attr:`server`) and a
    :class:`ShadowScheduler` (:attr:`scheduler`).

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
        backpressure: :meth:`infer` waits for room in the shadow's queue instead of shedding (replays: the runner
            sets it from ``cfg.backpressure`` and the sources); see the module docstring.
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
        backpressure: bool = False,
    ):
        if shadow is not None:
            check_compatible(incumbent.card, shadow.card, f"incumbent {incumbent.model_id}", f"shadow {shadow.model_id}")
        self.metrics = metrics
        self.server = IncumbentServer(incumbent, cpu_twin=cpu_twin, stale_max_age_s=stale_max_age_s, metrics=metrics)
        self.scheduler = ShadowScheduler(shadow, cfg, on_shadow=on_shadow, metrics=metrics, catch_up=catch_up, seed=seed,
                                         backpressure=backpressure)
        self._ids = itertools.count()
        self._started = False
        self.started_at = time.time()

    # the parts' settings, where callers read them
    @property
    def incumbent(self) -> OnnxClassifier:
        return self.server.incumbent

    @property
    def shadow(self) -> OnnxClassifier | None:
        return self.scheduler.shadow

    @property
    def cfg(self) -> ShadowConfig:
        return self.scheduler.cfg

    @property
    def cpu_twin(self) -> OnnxClassifier | None:
        return self.server.cpu_twin

    @property
    def catch_up(self) -> bool:
        return self.scheduler.catch_up

    @property
    def backpressure(self) -> bool:
        return self.scheduler.backpressure

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "ShadowPair":
        if not self._started:
            self._started = True
            self.server.start()
            self.scheduler.start()
        return self

    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the shadow worker. ``drain``: let queued shadow batches run first (bounded by their timeouts)."""
        self.scheduler.close(drain=drain, timeout=timeout)
        self.server.close()

    def __enter__(self) -> "ShadowPair":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- the verb ------------------------------------------------------------------------------------
    def infer(self, batch: FrameBatch) -> ServedResult:
        """Serve ``batch`` with the incumbent (or the fallback chain) and offer it to the shadow (under backpressure
        this waits for room in the shadow's queue; the served predictions are computed before)."""
        if not self._started:
            self.start()
        bid = next(self._ids)
        answer = self.server.serve(batch)
        status = self.scheduler.offer(bid, batch)
        return ServedResult(bid, batch, answer.predictions, answer.latency_ms, status, answer.failure)

    def poll_shadow(self, timeout: float = 0.0) -> list[ShadowResult]:
        """Shadow results ready now (waits up to ``timeout`` for the first one). Empty when ``on_shadow`` is set."""
        return self.scheduler.poll(timeout)

    @property
    def shadow_queue_depth(self) -> int:
        return self.scheduler.queue_depth

    # --- reporting -------------------------------------------------------------------------------------
    def coverage(self) -> float:
        """Frames with a shadow prediction / frames served (0 when nothing was served)."""
        served = self.server.frames_served
        return self.scheduler.frames_predicted / served if served else 0.0

    def stats(self) -> dict[str, Any]:
        """A snapshot of the counters (JSON-friendly): the server's, plus ``shadow`` from the scheduler."""
        out = self.server.stats()
        out["shadow"] = self.scheduler.stats(out["frames_served"])
        return out


def _as_shadow(p: Prediction) -> Prediction:
    return Prediction(p.frame_id, p.camera_id, Role.SHADOW, p.model, p.probs, p.label, p.latency_ms, p.degraded)
