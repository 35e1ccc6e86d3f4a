"""The incumbent's side of the pair: answer every frame, whatever the model or its device does.

:meth:`IncumbentServer.serve` answers a batch on the caller's thread. The model itself runs on a call thread
(:class:`pipeline.calls.Caller`) so that a hung device cannot hang serving: the caller waits at most the
incumbent's ``timeout_s``, then abandons the call (told to stop through ``RunOptions.terminate``) and falls back.

**Fallback** when the incumbent fails (an exception, an ONNX Runtime/device error, output breaking the
contract, or a timeout):

1. retry the batch on the CPU twin (:meth:`OnnxClassifier.cpu_fallback`, on a call thread of its own, with the
   twin's timeout) -> ``Degraded.CPU_FALLBACK``;
2. else, per frame, the camera's last good prediction (younger than ``stale_max_age_s``) -> ``Degraded.STALE``;
3. else ``Degraded.UNKNOWN``: label "unknown", uniform probabilities.

Every frame still gets exactly one served prediction, with the incumbent's role; degraded ones are flagged and
counted by kind (frames). While an abandoned incumbent call is still stuck, new batches go straight to step 1
(no pile-up of stuck calls); likewise the twin is skipped while one of its calls is stuck.

Threads: the caller's (serving), one call thread for the incumbent and one for the CPU twin (each replaced by a
fresh one when a call is abandoned). The counters are read by other threads (metrics, summary) under a lock.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.calls import LATENCY_WINDOW, Caller, CallTimeout, call_classifier, latency_percentiles
from pipeline.runtime import OnnxClassifier
from pipeline.types import UNKNOWN_LABEL, Degraded, FrameBatch, Prediction, Role

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncumbentAnswer:
    """What :meth:`IncumbentServer.serve` returns for one batch."""

    predictions: list[Prediction]  # one per frame, same order; degraded ones flagged
    latency_ms: float  # wall time of the serving path (model call and fallback chain)
    failure: str | None = None  # why the incumbent's normal answer was not available (None: it was)


@dataclass
class _Counters:
    batches_served: int = 0
    frames_served: int = 0
    failures: int = 0  # batches whose normal incumbent answer failed
    timeouts: int = 0
    busy_s: float = 0.0  # wall time of the model calls (incumbent and CPU twin): the device time serving used
    fallbacks: dict[str, int] = field(default_factory=lambda: {d.value: 0 for d in Degraded})  # frames per kind
    last_fallback: dict[str, Any] | None = None


class IncumbentServer:
    """Serve ``incumbent`` with its fallback chain (see the module docstring).

    Args:
        incumbent: the served classifier.
        cpu_twin: the CPU retry model; default (None) ``incumbent.cpu_fallback()`` built at :meth:`start`.
            Pass ``False`` for no CPU retry.
        stale_max_age_s: a camera's last good prediction is re-served as STALE only if younger than this.
        metrics: optional :class:`pipeline.metrics.Metrics` (latency histogram, batch sizes, fallbacks).
    """

    def __init__(
        self,
        incumbent: OnnxClassifier,
        cpu_twin: OnnxClassifier | None | bool = None,
        stale_max_age_s: float = 60.0,
        metrics: Any = None,
    ):
        self.incumbent = incumbent
        self.stale_max_age_s = stale_max_age_s
        self.metrics = metrics
        self._cpu_twin_arg = cpu_twin
        self.cpu_twin: OnnxClassifier | None = None
        self._started = False
        self._lock = threading.Lock()
        self._c = _Counters()
        self._latency: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._last_good: dict[str, tuple[Prediction, float]] = {}
        self._caller = Caller("incumbent")
        self._twin_caller = Caller("incumbent-cpu")

    def start(self) -> "IncumbentServer":
        """Build the CPU twin (a failure to do so is logged: serving goes on without the CPU retry)."""
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
        return self

    def close(self) -> None:
        """Let the call threads end (a call still running finishes first; they are daemons)."""
        self._caller.close()
        self._twin_caller.close()

    @property
    def stuck_calls(self) -> int:
        """Abandoned (timed-out) incumbent calls still running."""
        return self._caller.stuck()

    def serve(self, batch: FrameBatch) -> IncumbentAnswer:
        """One prediction per frame of ``batch``: the incumbent's, else the fallback chain's."""
        if not self._started:
            self.start()
        t0 = time.perf_counter()
        preds, failure = self._answer(batch, t0)
        latency_ms = (time.perf_counter() - t0) * 1000.0
        n = len(batch)
        with self._lock:
            self._c.batches_served += 1
            self._c.frames_served += n
            self._latency.append(latency_ms)
        if self.metrics is not None:
            self.metrics.observe_batch(self.incumbent.model_id, Role.INCUMBENT.value, n, latency_ms / 1000.0)
        return IncumbentAnswer(preds, latency_ms, failure)

    # --- the chain -------------------------------------------------------------------------------------
    def _answer(self, batch: FrameBatch, t0: float) -> tuple[list[Prediction], str | None]:
        inc = self.incumbent
        if self._caller.stuck():
            failure = "incumbent has a timed-out call still running"
        else:
            t_call = time.perf_counter()
            try:
                try:
                    probs = call_classifier(self._caller, inc, batch)
                finally:
                    self._add_busy(time.perf_counter() - t_call)
                preds = inc.predictions(batch, probs, (time.perf_counter() - t0) * 1000.0)
                self._remember(preds)
                return preds, None
            except CallTimeout:
                failure = f"incumbent timeout ({inc.timeout_s:g} s)"
                with self._lock:
                    self._c.timeouts += 1
            except Exception as e:
                failure = f"incumbent {type(e).__name__}: {e}"
        log.warning("incumbent_failed model=%s frames=%d reason=%r", inc.model_id, len(batch), failure)
        with self._lock:
            self._c.failures += 1
        preds, retry_failure = self._cpu_retry(batch, t0)
        if preds is not None:
            self._count_fallback(Degraded.CPU_FALLBACK, len(batch), failure)
            return preds, failure
        if retry_failure is not None:
            failure += f"; {retry_failure}"
        return self._stale_or_unknown(batch, t0, failure), failure

    def _cpu_retry(self, batch: FrameBatch, t0: float) -> tuple[list[Prediction] | None, str | None]:
        """The CPU twin's predictions, or (None, why the retry failed); (None, None): no twin, or it is stuck."""
        twin = self.cpu_twin
        if twin is None or self._twin_caller.stuck():
            return None, None
        t_call = time.perf_counter()
        try:
            probs = call_classifier(self._twin_caller, twin, batch)
        except CallTimeout:
            return None, f"cpu retry timeout ({twin.timeout_s:g} s)"
        except Exception as e:
            return None, f"cpu retry {type(e).__name__}: {e}"
        finally:
            self._add_busy(time.perf_counter() - t_call)
        preds = twin.predictions(batch, probs, (time.perf_counter() - t0) * 1000.0, degraded=Degraded.CPU_FALLBACK)
        preds = [p if p.role is Role.INCUMBENT else _as_incumbent(p) for p in preds]
        self._remember(preds)
        return preds, None

    def _stale_or_unknown(self, batch: FrameBatch, t0: float, failure: str) -> list[Prediction]:
        inc = self.incumbent
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
        return out

    def _add_busy(self, seconds: float) -> None:
        with self._lock:
            self._c.busy_s += seconds

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

    # --- reporting -------------------------------------------------------------------------------------
    @property
    def frames_served(self) -> int:
        with self._lock:
            return self._c.frames_served

    def stats(self) -> dict[str, Any]:
        """``batches_served``, ``frames_served``, ``incumbent`` (model, providers, failures, latency, ``busy_s``: seconds
        the incumbent's and the CPU twin's calls ran, pipeline.serving_cost), ``fallbacks``
        (frames per kind) and ``last_fallback``: the serving half of :meth:`pipeline.shadow.ShadowPair.stats`."""
        with self._lock:
            c = self._c
            return {
                "batches_served": c.batches_served,
                "frames_served": c.frames_served,
                "incumbent": {
                    "model": self.incumbent.model_id,
                    "providers": list(self.incumbent.providers),
                    "intra_op_threads": getattr(self.incumbent, "threads", None),
                    "failures": c.failures,
                    "timeouts": c.timeouts,
                    "busy_s": round(c.busy_s, 6),
                    "latency_ms": latency_percentiles(list(self._latency)),
                },
                "fallbacks": dict(c.fallbacks),
                "last_fallback": dict(c.last_fallback) if c.last_fallback else None,
            }


def _as_incumbent(p: Prediction) -> Prediction:
    return Prediction(p.frame_id, p.camera_id, Role.INCUMBENT, p.model, p.probs, p.label, p.latency_ms, p.degraded)
