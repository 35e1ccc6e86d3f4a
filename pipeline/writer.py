"""The store writer: one thread that owns every write of a run (frames, predictions, health events, samples).

:class:`StoreWriter` is the thread; it composes four stages, each a small class with one job:

* :class:`ShadowJoiner` - a served batch that was queued for the shadow waits ("is parked") for its
  :class:`~pipeline.shadow.ShadowResult`; a result that comes first waits for its batch. The wait is bounded
  (``join_timeout_s``): an overdue batch is written without the shadow's predictions and counted
  (``join_timeouts``); its result, should it still come, is dropped.
* :class:`ImageStatsStage` - per-frame image statistics for drift (:func:`pipeline.imagestats.image_stats_batch`);
  skipped for a batch while the writer's queue is more than half full, and counted (``stats_skipped``), so the
  statistics never become the bottleneck.
* :class:`SamplingStage` - offers each joined batch to the label sampler (which saves the drawn frames as JPEGs);
  a sampler failure is logged and counted (``sampler_errors``), never fatal.
* :class:`BatchCommitter` - one :meth:`pipeline.store.PredictionStore.write_batch` transaction for the rows
  gathered so far, retried with exponential backoff (``tenacity``) while the store answers with a transient
  error (``sqlalchemy.exc.OperationalError``: a locked SQLite file, a dropped PostgreSQL connection); rows are
  counted as lost (``write_errors``, ``rows_lost``) only after the last attempt or on a permanent error.

Threads::

    main thread --submit_served (blocks when the queue is full: back-pressure)--+
    readers' events --submit_events---------------------------------------------+--> queue --> "store-writer"
    shadow dispatch thread --submit_shadow (never blocks)--> shadow results ------------------^
        "store-writer": join -> image stats -> sampler -> rows; a transaction every ``flush_every`` rows or
        ``flush_interval_s`` after the first pending row, whichever comes first.

A row acknowledged is a row kept: after each committed transaction the writer logs ``store_commit`` (DEBUG) with
running totals. An unexpected error in the thread is kept and raised (as :class:`StoreError`) by the next
:meth:`StoreWriter.submit_served`; the thread keeps emptying its queue so that the main thread never blocks.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import sqlalchemy as sa
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from pipeline.imagestats import STAT_NAMES, image_stats_batch
from pipeline.shadow import ServedResult, ShadowOutcome, ShadowResult, ShadowStatus
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import ConfigError, FrameBatch, HealthEvent, Prediction, StoreError

log = logging.getLogger(__name__)

WRITER_QUEUE_BATCHES = 64  # served batches waiting for the store before the main thread waits
WRITE_ATTEMPTS = 6  # a transaction is tried at most this often while the store's error is transient
FIRST_RETRY_S = 0.1  # backoff before the 2nd attempt; doubled each time ...
MAX_RETRY_S = 5.0  # ... up to this
EXPIRED_REMEMBERED = 10_000  # ids of expired batches kept (to drop their late shadow results)


@dataclass(frozen=True)
class JoinedBatch:
    """A served batch with its shadow result (None: not queued for the shadow, or the result came too late)."""

    served: ServedResult
    shadow: ShadowResult | None = None

    @property
    def shadow_predictions(self) -> list[Prediction] | None:
        """The shadow's predictions, one per frame, when its outcome was OK; else None."""
        s = self.shadow
        if s is not None and s.outcome is ShadowOutcome.OK and s.predictions is not None:
            return s.predictions
        return None


class ShadowJoiner:
    """Pairs served batches with their shadow results, whichever comes first; the wait is bounded.

    Not thread-safe: used by the writer thread only (:attr:`parked` and :attr:`timeouts` may be read anywhere).
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        if timeout_s < 0:
            raise ConfigError(f"join timeout must be >= 0 s, got {timeout_s!r}")
        self.timeout_s = timeout_s
        self.clock = clock
        self.timeouts = 0
        self._parked: dict[int, tuple[ServedResult, float]] = {}  # batch id -> (served, deadline)
        self._early: dict[int, ShadowResult] = {}  # results whose batch has not come yet
        self._expired: set[int] = set()

    @property
    def parked(self) -> int:
        return len(self._parked)

    def add_served(self, served: ServedResult) -> JoinedBatch | None:
        """The joined batch when it is complete now; None while it waits for its shadow result."""
        if served.shadow is not ShadowStatus.QUEUED:
            return JoinedBatch(served)
        res = self._early.pop(served.batch_id, None)
        if res is not None:
            return JoinedBatch(served, res)
        self._parked[served.batch_id] = (served, self.clock() + self.timeout_s)
        return None

    def add_shadow(self, res: ShadowResult) -> JoinedBatch | None:
        """The joined batch when ``res`` completes a parked one; None when it waits for its batch or came too late."""
        parked = self._parked.pop(res.batch_id, None)
        if parked is not None:
            return JoinedBatch(parked[0], res)
        if res.batch_id in self._expired:
            self._expired.discard(res.batch_id)
        else:
            self._early[res.batch_id] = res
        return None

    def expire(self) -> list[JoinedBatch]:
        """Parked batches past their deadline, released without a shadow result (counted in :attr:`timeouts`)."""
        now = self.clock()
        out = []
        for bid, (served, deadline) in list(self._parked.items()):
            if now >= deadline:
                del self._parked[bid]
                self._expired.add(bid)
                self.timeouts += 1
                log.warning("shadow_join_timeout batch=%d after=%.1fs", bid, self.timeout_s)
                out.append(JoinedBatch(served))
        if len(self._expired) > EXPIRED_REMEMBERED:
            self._expired.clear()
        return out


class ImageStatsStage:
    """Per-frame image statistics of a batch; skipped (and counted) when the writer is busy or disabled."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.skipped = 0  # frames without statistics because the writer was busy

    def compute(self, batch: FrameBatch, busy: bool = False) -> list[dict[str, float] | None]:
        """One ``{name: value}`` per frame (:data:`pipeline.imagestats.STAT_NAMES`), or None per frame."""
        n = len(batch)
        if not self.enabled:
            return [None] * n
        if busy:
            self.skipped += n
            return [None] * n
        stats: dict[str, np.ndarray] = image_stats_batch(batch.images)
        return [{k: float(stats[k][i]) for k in STAT_NAMES} for i in range(n)]


class Sampler(Protocol):
    """What :class:`SamplingStage` needs of a sampler (:class:`pipeline.sampling.LabelSampler`)."""

    def offer(
        self, batch: FrameBatch, incumbent: list[Prediction], shadow: list[Prediction | None]
    ) -> list[SampleRecord]: ...


class SamplingStage:
    """Offers joined batches to the label sampler; its failures are logged and counted, never raised."""

    def __init__(self, sampler: Sampler | None):
        self.sampler = sampler
        self.errors = 0

    def offer(self, joined: JoinedBatch) -> list[SampleRecord]:
        """The sample records the sampler drew from ``joined`` (none without a sampler or when it fails)."""
        if self.sampler is None:
            return []
        served = joined.served
        shadow: list[Prediction | None] = list(joined.shadow_predictions or [None] * len(served.batch))
        try:
            return list(self.sampler.offer(served.batch, served.predictions, shadow))
        except Exception:
            self.errors += 1
            log.exception("sampler_failed batch=%d", served.batch_id)
            return []


@dataclass
class Rows:
    """Rows of one store transaction."""

    frames: list[FrameRecord] = field(default_factory=list)
    predictions: list[Prediction] = field(default_factory=list)
    events: list[tuple[str, HealthEvent]] = field(default_factory=list)  # (run_id, event)
    samples: list[SampleRecord] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.frames or self.predictions or self.events or self.samples)


class BatchCommitter:
    """Writes :class:`Rows` in one transaction, retrying transient store errors with exponential backoff.

    Counts what was committed and what was lost (see :meth:`counts`). ``sleep`` is the backoff's sleep
    (tests pass a recorder).
    """

    def __init__(
        self,
        store: PredictionStore,
        attempts: int = WRITE_ATTEMPTS,
        first_retry_s: float = FIRST_RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if attempts < 1:
            raise ConfigError(f"write attempts must be >= 1, got {attempts!r}")
        self.store = store
        self._retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=first_retry_s, max=max_retry_s),
            retry=retry_if_exception_type(sa.exc.OperationalError),
            before_sleep=self._log_retry,
            sleep=sleep,
            reraise=True,
        )
        self._lock = threading.Lock()
        self._counts = {"frames_committed": 0, "predictions_committed": 0, "events_committed": 0,
                        "samples_committed": 0, "transactions": 0, "write_errors": 0, "rows_lost": 0}
        self._by_model: collections.Counter[str] = collections.Counter()
        self._n_frames = 0  # frames of the transaction being tried (for the retry log line)

    def write(self, rows: Rows) -> bool:
        """Commit ``rows``; False when they were lost (logged and counted). Never raises for a store error."""
        self._n_frames = len(rows.frames)
        attempt = 0
        try:
            for attempt_ctx in self._retrying:
                with attempt_ctx:
                    attempt = attempt_ctx.retry_state.attempt_number
                    self.store.write_batch(rows.frames, rows.predictions, rows.events, rows.samples)
        except Exception as e:
            log.error("store_write_failed attempt=%d frames=%d transient=%s error=%s", attempt, len(rows.frames), False, e)
            with self._lock:
                self._counts["write_errors"] += 1
                self._counts["rows_lost"] += len(rows.frames)
            return False
        with self._lock:
            c = self._counts
            c["transactions"] += 1
            c["frames_committed"] += len(rows.frames)
            c["predictions_committed"] += len(rows.predictions)
            c["events_committed"] += len(rows.events)
            c["samples_committed"] += len(rows.samples)
            self._by_model.update(f"{p.role.value} {p.model}" for p in rows.predictions)
            totals = (c["frames_committed"], c["predictions_committed"], c["transactions"])
        log.debug("store_commit frames=%d predictions=%d samples=%d events=%d committed_frames_total=%d "
                  "committed_predictions_total=%d transactions=%d", len(rows.frames), len(rows.predictions),
                  len(rows.samples), len(rows.events), *totals)
        return True

    def _log_retry(self, state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome is not None else None
        log.error("store_write_failed attempt=%d frames=%d transient=%s error=%s", state.attempt_number, self._n_frames,
                  True, err)

    def counts(self) -> dict[str, int]:
        """frames/predictions/events/samples_committed, transactions, write_errors, rows_lost."""
        with self._lock:
            return dict(self._counts)

    def predictions_by_model(self) -> dict[str, int]:
        """Predictions committed per ``"role model"``."""
        with self._lock:
            return dict(self._by_model)


_STOP = object()


class StoreWriter:
    """One thread that owns all writes of a run: frames, predictions, health events, samples.

    ``submit_served`` (main thread) may block when ``maxsize`` batches are waiting (back-pressure);
    ``submit_shadow`` (shadow thread) and ``submit_events`` never block for long.
    """

    def __init__(
        self,
        store: PredictionStore,
        run_id: str,
        sampler: Sampler | None = None,
        flush_every: int = 256,
        flush_interval_s: float = 0.5,
        join_timeout_s: float = 10.0,
        maxsize: int = WRITER_QUEUE_BATCHES,
        compute_stats: bool = True,
        committer: BatchCommitter | None = None,
    ):
        self.store = store
        self.run_id = run_id
        self.sampler = sampler
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.join_timeout_s = join_timeout_s
        self.compute_stats = compute_stats
        self.joiner = ShadowJoiner(join_timeout_s)
        self.image_stats = ImageStatsStage(compute_stats)
        self.sampling = SamplingStage(sampler)
        self.committer = committer or BatchCommitter(store)
        self._in: queue.Queue = queue.Queue(maxsize=maxsize)
        self._shadow_in: queue.SimpleQueue[ShadowResult] = queue.SimpleQueue()
        self._rows = Rows()
        self._first_pending: float | None = None
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> "StoreWriter":
        self._thread.start()
        return self

    # producers
    def submit_served(self, served: ServedResult) -> None:
        self._check()
        self._in.put(("served", served))

    def submit_shadow(self, res: ShadowResult) -> None:
        self._shadow_in.put(res)

    def submit_events(self, events: list[HealthEvent]) -> None:
        if events:
            self._in.put(("events", events))

    def close(self, timeout: float | None = None) -> None:
        """Finish everything submitted (waiting for parked shadow joins), flush, stop the thread.

        A writer never started has nothing to finish.
        """
        if not self._thread.is_alive():
            return
        self._in.put(_STOP)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("store_writer_not_stopped after=%ss", timeout)

    def _check(self) -> None:
        if self._error is not None:
            raise StoreError(f"store writer failed: {type(self._error).__name__}: {self._error}")

    @property
    def queue_depth(self) -> int:
        return self._in.qsize()

    def stats(self) -> dict[str, Any]:
        d: dict[str, Any] = self.committer.counts()
        d["join_timeouts"] = self.joiner.timeouts
        d["stats_skipped"] = self.image_stats.skipped
        d["sampler_errors"] = self.sampling.errors
        d["predictions_by_model"] = self.committer.predictions_by_model()
        d["queue_depth"] = self._in.qsize()
        d["parked"] = self.joiner.parked
        return d

    # the thread
    def _loop(self) -> None:
        stopping = False
        try:
            while True:
                self._take_shadow_results()
                item = self._next_item(stopping)
                if item is _STOP:
                    stopping = True
                elif item is not None:
                    kind, payload = item
                    if kind == "served":
                        joined = self.joiner.add_served(payload)
                        if joined is not None:
                            self._add(joined)
                    else:
                        self._rows.events.extend((self.run_id, e) for e in payload)
                        self._mark_pending()
                self._take_shadow_results()
                for joined in self.joiner.expire():
                    self._add(joined)
                if len(self._rows.frames) + len(self._rows.events) >= self.flush_every or (
                    self._first_pending is not None and time.monotonic() - self._first_pending >= self.flush_interval_s
                ):
                    self._flush()
                if stopping and self._in.empty() and not self.joiner.parked:
                    self._flush()
                    return
        except BaseException as e:  # keep the error for the main thread; never die silently
            self._error = e
            log.exception("store_writer_failed")
            # keep draining so the main thread never blocks forever on a full queue
            while True:
                item = self._in.get()
                if item is _STOP:
                    return

    def _next_item(self, stopping: bool) -> Any:
        """The next queued item; None when none came (waiting at most until the next flush is due)."""
        if stopping:
            try:
                return self._in.get_nowait()
            except queue.Empty:
                time.sleep(0.01)  # parked batches still wait for their shadow results
                return None
        timeout = 0.05
        if self._first_pending is not None:
            timeout = max(0.0, min(timeout, self._first_pending + self.flush_interval_s - time.monotonic()))
        try:
            return self._in.get(timeout=timeout)
        except queue.Empty:
            return None

    def _mark_pending(self) -> None:
        if self._first_pending is None:
            self._first_pending = time.monotonic()

    def _take_shadow_results(self) -> None:
        while True:
            try:
                res = self._shadow_in.get_nowait()
            except queue.Empty:
                return
            joined = self.joiner.add_shadow(res)
            if joined is not None:
                self._add(joined)

    def _add(self, joined: JoinedBatch) -> None:
        """A joined batch's rows: frames (with image statistics), both models' predictions, samples."""
        served = joined.served
        busy = self._in.qsize() * 2 > self._in.maxsize
        stats = self.image_stats.compute(served.batch, busy=busy)
        self._rows.frames.extend(FrameRecord.from_frame(f, self.run_id, s) for f, s in zip(served.batch.frames, stats))
        self._rows.predictions.extend(served.predictions)
        self._rows.predictions.extend(joined.shadow_predictions or ())
        self._rows.samples.extend(self.sampling.offer(joined))
        self._mark_pending()

    def _flush(self) -> None:
        rows, self._rows = self._rows, Rows()
        self._first_pending = None
        if rows:
            self.committer.write(rows)
