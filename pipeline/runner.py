"""``shadowcam run``: cameras -> batcher -> incumbent/shadow pair -> sink + store, with metrics and a summary.

Threads of a run::

    camera readers (one each) --queue--> main thread: Batcher.next_batch -> ShadowPair.infer -> on_prediction
                                                              |                   \\--> shadow worker --+
                                                              v                                         |
                                                  StoreWriter (one thread) <---- shadow results --------+
                                                  joins each batch with its shadow result, samples frames,
                                                  writes batched transactions (PredictionStore.write_batch)

* The served output (``on_prediction``) is produced on the main thread right after the incumbent answers; it
  never waits for the shadow, the sampler or the store.
* The writer joins a batch with its shadow result only when the batch was queued for the shadow; the wait is
  bounded (``(max_pending_batches + 2) * shadow timeout``; the pair guarantees an answer within that), and only
  batches waiting for a shadow result are parked, so memory stays bounded by the shadow queue.
* The writer's input queue is bounded: if the store cannot keep up, the main thread waits (back-pressure)
  rather than dropping rows - file sources then read slower and live cameras drop their oldest frames, which
  the readers count. Per-frame image statistics (for drift) are skipped for a batch when the writer is more
  than half full, and counted (``stats_skipped``), so statistics never become the bottleneck.
* A row acknowledged is a row kept: the writer logs ``store_commit`` (DEBUG) with running totals after each
  committed transaction; SQLite runs in WAL mode with ``synchronous=FULL``.

Stops at ``max_frames``, when every source has finished, or on SIGINT/SIGTERM (the first one drains: readers
stop, queued frames are still served, the shadow and the writer finish their queues, the store is flushed and
the summary printed; a second one interrupts at once).

Exactly one incumbent prediction is stored per frame served; with file/folder sources (which block instead
of dropping) every frame read is served, unless ``max_frames`` cut the run short.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import RunConfig
from pipeline.imagestats import STAT_NAMES, image_stats_batch
from pipeline.runtime import OnnxClassifier, usable_cores
from pipeline.shadow import ServedResult, ShadowOutcome, ShadowPair, ShadowResult, ShadowStatus
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import ConfigError, FrameBatch, HealthEvent, Prediction, Role, StoreError

log = logging.getLogger(__name__)

WRITER_QUEUE_BATCHES = 64  # served batches waiting for the store before the main thread waits
DRAIN_TIMEOUT_S = 30.0  # after a stop signal: at most this long serving frames already queued


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


# --- the store writer ---------------------------------------------------------------------------------------------

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
        sampler: Any = None,
        flush_every: int = 256,
        flush_interval_s: float = 0.5,
        join_timeout_s: float = 10.0,
        maxsize: int = WRITER_QUEUE_BATCHES,
        compute_stats: bool = True,
    ):
        self.store = store
        self.run_id = run_id
        self.sampler = sampler
        self.flush_every = flush_every
        self.flush_interval_s = flush_interval_s
        self.join_timeout_s = join_timeout_s
        self.compute_stats = compute_stats
        self._in: queue.Queue = queue.Queue(maxsize=maxsize)
        self._shadow_in: queue.SimpleQueue[ShadowResult] = queue.SimpleQueue()
        self._parked: dict[int, tuple[ServedResult, float]] = {}
        self._early: dict[int, ShadowResult] = {}
        self._expired: set[int] = set()
        self._frames: list[FrameRecord] = []
        self._preds: list[Prediction] = []
        self._events: list[tuple[str, HealthEvent]] = []
        self._samples: list[SampleRecord] = []
        self._first_pending: float | None = None
        self._lock = threading.Lock()
        self.counts: dict[str, Any] = {
            "frames_committed": 0, "predictions_committed": 0, "events_committed": 0, "samples_committed": 0,
            "transactions": 0, "write_errors": 0, "rows_lost": 0, "join_timeouts": 0, "stats_skipped": 0,
            "sampler_errors": 0,
        }
        self.predictions_by_model: collections.Counter[str] = collections.Counter()
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
        """Finish everything submitted (waiting for parked shadow joins), flush, stop the thread."""
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
        with self._lock:
            d = dict(self.counts)
            d["predictions_by_model"] = dict(self.predictions_by_model)
        d["queue_depth"] = self._in.qsize()
        d["parked"] = len(self._parked)
        return d

    # the thread
    def _loop(self) -> None:
        stopping = False
        try:
            while True:
                self._take_shadow_results()
                now = time.monotonic()
                timeout = 0.05
                if self._first_pending is not None:
                    timeout = max(0.0, min(timeout, self._first_pending + self.flush_interval_s - now))
                try:
                    item = self._in.get(timeout=timeout) if not stopping else self._in.get_nowait()
                except queue.Empty:
                    item = None
                    if stopping:
                        time.sleep(0.01)
                if item is _STOP:
                    stopping = True
                elif item is not None:
                    kind, payload = item
                    if kind == "served":
                        self._on_served(payload)
                    else:
                        self._events.extend((self.run_id, e) for e in payload)
                        self._mark_pending()
                self._take_shadow_results()
                self._expire_parked(force=False)
                n_rows = len(self._frames) + len(self._events)
                if n_rows >= self.flush_every or (
                    self._first_pending is not None and time.monotonic() - self._first_pending >= self.flush_interval_s
                ):
                    self._flush()
                if stopping and self._in.empty() and not self._parked:
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

    def _mark_pending(self) -> None:
        if self._first_pending is None:
            self._first_pending = time.monotonic()

    def _take_shadow_results(self) -> None:
        while True:
            try:
                res = self._shadow_in.get_nowait()
            except queue.Empty:
                return
            if res.batch_id in self._parked:
                served, _ = self._parked.pop(res.batch_id)
                self._finalize(served, res)
            elif res.batch_id in self._expired:
                self._expired.discard(res.batch_id)
            else:
                self._early[res.batch_id] = res

    def _on_served(self, served: ServedResult) -> None:
        if served.shadow is ShadowStatus.QUEUED:
            res = self._early.pop(served.batch_id, None)
            if res is not None:
                self._finalize(served, res)
            else:
                self._parked[served.batch_id] = (served, time.monotonic() + self.join_timeout_s)
        else:
            self._finalize(served, None)

    def _expire_parked(self, force: bool) -> None:
        now = time.monotonic()
        for bid, (served, deadline) in list(self._parked.items()):
            if force or now >= deadline:
                del self._parked[bid]
                self._expired.add(bid)
                with self._lock:
                    self.counts["join_timeouts"] += 1
                log.warning("shadow_join_timeout batch=%d after=%.1fs", bid, self.join_timeout_s)
                self._finalize(served, None)
        if len(self._expired) > 10_000:
            self._expired.clear()

    def _finalize(self, served: ServedResult, shadow: ShadowResult | None) -> None:
        batch = served.batch
        n = len(batch)
        stats: dict[str, np.ndarray] | None = None
        if self.compute_stats:
            if self._in.qsize() * 2 <= self._in.maxsize:
                stats = image_stats_batch(batch.images)
            else:
                with self._lock:
                    self.counts["stats_skipped"] += n
        for i, f in enumerate(batch.frames):
            s = {k: float(stats[k][i]) for k in STAT_NAMES} if stats is not None else None
            self._frames.append(FrameRecord.from_frame(f, self.run_id, s))
        self._preds.extend(served.predictions)
        shadow_preds: list[Prediction | None] = [None] * n
        if shadow is not None and shadow.outcome is ShadowOutcome.OK and shadow.predictions is not None:
            self._preds.extend(shadow.predictions)
            shadow_preds = list(shadow.predictions)
        if self.sampler is not None:
            try:
                self._samples.extend(self.sampler.offer(batch, served.predictions, shadow_preds))
            except Exception:
                with self._lock:
                    self.counts["sampler_errors"] += 1
                log.exception("sampler_failed batch=%d", served.batch_id)
        self._mark_pending()

    def _flush(self) -> None:
        if not (self._frames or self._preds or self._events or self._samples):
            self._first_pending = None
            return
        frames, preds, events, samples = self._frames, self._preds, self._events, self._samples
        self._frames, self._preds, self._events, self._samples = [], [], [], []
        self._first_pending = None
        delay = 0.1
        for attempt in range(6):
            try:
                self.store.write_batch(frames, preds, events, samples)
                break
            except Exception as e:
                import sqlalchemy as sa

                transient = isinstance(e, sa.exc.OperationalError) and attempt < 5
                log.error("store_write_failed attempt=%d frames=%d transient=%s error=%s", attempt + 1, len(frames), transient, e)
                if not transient:
                    with self._lock:
                        self.counts["write_errors"] += 1
                        self.counts["rows_lost"] += len(frames)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        with self._lock:
            c = self.counts
            c["transactions"] += 1
            c["frames_committed"] += len(frames)
            c["predictions_committed"] += len(preds)
            c["events_committed"] += len(events)
            c["samples_committed"] += len(samples)
            for p in preds:
                self.predictions_by_model[f"{p.role.value} {p.model}"] += 1
            totals = (c["frames_committed"], c["predictions_committed"], c["transactions"])
        log.debug("store_commit frames=%d predictions=%d samples=%d events=%d committed_frames_total=%d "
                  "committed_predictions_total=%d transactions=%d", len(frames), len(preds), len(samples), len(events), *totals)


# --- the summary ----------------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    run_id: str
    stop_reason: str
    started_at: float
    ended_at: float
    duration_s: float
    frames_served: int
    throughput_fps: float
    cameras: dict[str, dict[str, Any]]
    predictions_per_model: dict[str, int]
    incumbent: dict[str, Any]
    shadow: dict[str, Any]
    fallbacks: dict[str, int]
    store: dict[str, Any]
    metrics_port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    def format_table(self) -> str:
        """A readable end-of-run report."""
        lines = [f"run {self.run_id}: {self.stop_reason} after {self.duration_s:.1f} s, "
                 f"{self.frames_served} frames served, {self.throughput_fps:.1f} frames/s"]
        cols = ["camera", "read", "served", "dropped", "corrupt", "blank", "frozen", "reconnects", "state"]
        rows = [[cid] + [str(c.get(k, "")) for k in ("frames_read", "frames_served", "frames_dropped", "frames_corrupt",
                                                      "frames_blank", "frames_frozen", "reconnects", "state")]
                for cid, c in self.cameras.items()]
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(cols)]
        lines.append("  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(cols, widths))))
        for r in rows:
            lines.append("  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
        lines.append("predictions stored per model:")
        for m, n in sorted(self.predictions_per_model.items()):
            lines.append(f"  {m:<48} {n:>9}")
        inc, sh = self.incumbent, self.shadow
        lat = inc.get("latency_ms", {})
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        lines.append(f"incumbent {inc.get('model')} on {','.join(inc.get('providers', []))}: latency p50 {fmt(lat.get('p50'))} ms, "
                     f"p99 {fmt(lat.get('p99'))} ms per batch; failures {inc.get('failures', 0)} (timeouts {inc.get('timeouts', 0)})")
        fb = ", ".join(f"{k} {v}" for k, v in self.fallbacks.items())
        lines.append(f"fallbacks (frames): {fb}")
        if sh.get("model"):
            lines.append(
                f"shadow {sh['model']} on {','.join(sh.get('providers', []))}: coverage {sh.get('coverage', 0):.3f} "
                f"(rate {sh.get('rate')}); frames shed {sh.get('frames_shed', 0)}, skipped {sh.get('frames_skipped', 0)}; "
                f"batches timed out {sh.get('timeouts', 0)}, errors {sh.get('errors', 0)}, garbage {sh.get('garbage', 0)}"
            )
        else:
            lines.append("shadow: none")
        st = self.store
        lines.append(f"store {st.get('url')}: {st.get('frames_committed', 0)} frames, {st.get('predictions_committed', 0)} predictions, "
                     f"{st.get('samples_committed', 0)} samples, {st.get('events_committed', 0)} health events committed; "
                     f"write errors {st.get('write_errors', 0)}")
        return "\n".join(lines)


# --- the runner -------------------------------------------------------------------------------------------------------

def is_realtime(sources: list[Any]) -> bool:
    """True when any source is a camera stream (RTSP, HTTP, USB) or is paced with ``max_fps``; False for a replay
    (files and folders read as fast as possible). Unresolvable sources are left to :func:`open_sources` to report."""
    from pipeline.sources import LIVE_KINDS, classify_uri

    for s in sources:
        if s.max_fps:
            return True
        try:
            if classify_uri(s.uri) in LIVE_KINDS:
                return True
        except Exception:  # a missing file: open_sources raises the proper error later
            continue
    return False


def _redact_url(url: str) -> str:
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


class Runner:
    """Wire and run the pipeline for one :class:`RunConfig`.

    Args:
        cfg: the resolved config (sources, models, batching, shadow, sampling, store, metrics).
        on_prediction: the sink: called on the main thread with every served (incumbent) prediction.
        on_batch: called with each :class:`ServedResult` (after ``on_prediction``).
        incumbent, shadow: pre-built classifiers (tests, notebooks); default: built from ``cfg``.
        cpu_twin: passed to :class:`ShadowPair` (None: ``incumbent.cpu_fallback()``).
        install_signal_handlers: SIGINT/SIGTERM drain and stop (main thread only).
        progress: a tqdm bar on stderr.
        on_readers: called with the camera readers once they are opened, before they start (instrumentation:
            ``shadowcam bench`` attaches a waker to time each frame from read to served).
        image_stats: compute per-frame image statistics for drift (brightness, contrast, sharpness, noise).
    """

    def __init__(
        self,
        cfg: RunConfig,
        on_prediction: Callable[[Prediction], None] | None = None,
        on_batch: Callable[[ServedResult], None] | None = None,
        incumbent: OnnxClassifier | None = None,
        shadow: OnnxClassifier | None = None,
        cpu_twin: Any = None,
        install_signal_handlers: bool = True,
        progress: bool = False,
        run_id: str | None = None,
        on_readers: Callable[[list[Any]], None] | None = None,
        image_stats: bool = True,
    ):
        self.cfg = cfg
        self.image_stats = image_stats
        self.on_readers = on_readers
        self.on_prediction = on_prediction
        self.on_batch = on_batch
        self._incumbent = incumbent
        self._shadow = shadow
        self._cpu_twin = cpu_twin
        self.install_signal_handlers = install_signal_handlers
        self.progress = progress
        self.run_id = run_id or new_run_id()
        self._stop = threading.Event()
        self._stop_reason: str | None = None
        self.metrics_port: int | None = None
        self.readers: list[Any] = []
        self.pair: ShadowPair | None = None
        self.writer: StoreWriter | None = None

    def stop(self, reason: str = "stopped") -> None:
        """Ask a running :meth:`run` to drain and finish (thread-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    # --- setup helpers ---------------------------------------------------------------------------------
    def _workdir(self) -> Path:
        wd = Path(self.cfg.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        return wd

    def _store_url(self, wd: Path) -> str:
        url = self.cfg.store.url
        if "://" not in url and not Path(url).is_absolute():
            return str((wd / url).resolve())
        return url

    def _load_models(self, wd: Path, realtime: bool) -> tuple[OnnxClassifier, OnnxClassifier | None]:
        cfg = self.cfg
        cache = wd / ".cache"
        bs = cfg.batching.batch_size
        inc = self._incumbent
        if inc is None:
            if cfg.incumbent is None:
                raise ConfigError("no incumbent model: give --incumbent MODEL or 'incumbent: {uri: ...}' in the config")
            inc_cfg = cfg.incumbent
            if inc_cfg.intra_op_threads == 0 and realtime:
                # Real time: the incumbent gets every core for each batch (lowest latency: the latency runs of
                # `shadowcam bench`); the shadow, at the lowest priority, only uses what it leaves
                # (pipeline/shadow.py). A replay keeps the CPU default of half the cores per model, both models at
                # once (highest throughput; pipeline.runtime.default_cpu_threads).
                inc_cfg = inc_cfg.model_copy(update={"intra_op_threads": usable_cores()})
            inc = OnnxClassifier.from_config(inc_cfg, Role.INCUMBENT, cache_dir=cache, warmup_batch_size=bs, workdir=wd)
        sh = self._shadow
        if sh is None and cfg.shadow is not None:
            sh = OnnxClassifier.from_config(cfg.shadow, Role.SHADOW, cache_dir=cache, warmup_batch_size=bs, workdir=wd)
        return inc, sh

    def _install_signals(self) -> dict[int, Any]:
        if not self.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            return {}
        old: dict[int, Any] = {}

        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop.is_set():  # second signal: stop now
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            log.warning("signal_received signal=%s: draining queues and flushing the store (again to abort)", name)
            self.stop(f"{name}")

        for s in (signal.SIGINT, signal.SIGTERM):
            old[s] = signal.signal(s, handler)
        return old

    # --- the run -----------------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        from pipeline.batching import Batcher, PrefetchingBatcher
        from pipeline.metrics import HealthServer, Metrics
        from pipeline.sources import open_sources, stop_all

        cfg = self.cfg
        if not cfg.sources:
            raise ConfigError("no sources: give --source SRC (repeatable) or 'sources:' in the config")
        wd = self._workdir()

        # 1. models and their compatibility: before any camera is opened
        realtime = is_realtime(cfg.sources)
        inc, sh = self._load_models(wd, realtime)
        metrics = Metrics(self.run_id)
        writer_box: list[StoreWriter] = []
        # real-time sources (streams, or files paced with max_fps): the shadow never takes CPU from the incumbent
        # and is shed when it falls behind; a replay of files at full speed: it catches up at normal priority
        pair = ShadowPair(inc, sh, cfg.shadow_mode, on_shadow=lambda r: writer_box[0].submit_shadow(r),
                          cpu_twin=self._cpu_twin, metrics=metrics, catch_up=not realtime)
        self.pair = pair

        # 2. sources (checked, not started), store, sampler
        readers = open_sources(cfg.sources, cfg.camera_health, self.run_id)
        self.readers = readers
        metrics.readers = readers
        if self.on_readers is not None:
            self.on_readers(readers)
        server = None
        if cfg.metrics.port is not None:
            try:
                server = HealthServer(metrics, cfg.metrics.host, cfg.metrics.port).start()
            except OSError as e:
                raise ConfigError(f"metrics.port {cfg.metrics.port} on {cfg.metrics.host}: cannot listen ({e.strerror or e})") from None
            self.metrics_port = server.port
        store_url = self._store_url(wd)
        try:
            store = PredictionStore(store_url)
        except BaseException:
            if server is not None:
                server.stop()
            raise
        sampler = None
        if cfg.sampling.enabled:
            from pipeline.sampling import LabelSampler

            image_dir = Path(cfg.sampling.image_dir)
            if not image_dir.is_absolute():
                image_dir = wd / image_dir
            sampler = LabelSampler(cfg.sampling, inc.class_names, image_dir)
        config_doc = cfg.model_dump(mode="json")
        config_doc["_resolved"] = {"store_url": _redact_url(store_url), "incumbent": inc.describe(),
                                   "shadow": sh.describe() if sh is not None else None}
        if cfg.store.url != store_url:
            config_doc["store"]["url"] = _redact_url(store_url)
        store.begin_run(self.run_id, inc.model_id, sh.model_id if sh is not None else None, inc.class_names, config_doc)

        join_timeout = (cfg.shadow_mode.max_pending_batches + 2) * cfg.shadow_mode.timeout_s + 1.0
        writer = StoreWriter(store, self.run_id, sampler, cfg.store.flush_every, cfg.store.flush_interval_s, join_timeout,
                             compute_stats=self.image_stats)
        writer_box.append(writer)
        self.writer = writer
        metrics.pair = pair
        metrics.writer_stats = writer.stats

        # the next batch is resized in its own thread while the incumbent serves this one
        batcher = PrefetchingBatcher(Batcher(readers, cfg.batching, input_size=inc.input_size,
                                             interpolation=inc.card.resize_interpolation))
        served_per_cam: collections.Counter[str] = collections.Counter()
        sink_errors = 0
        old_signals = self._install_signals()
        log.info("run_started run_id=%s incumbent=%s shadow=%s sources=%d store=%s workdir=%s", self.run_id, inc.model_id,
                 sh.model_id if sh is not None else None, len(readers), _redact_url(store_url), wd)
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_frames, unit="frame", desc=f"run {self.run_id}", dynamic_ncols=True)

        writer.start()
        pair.start()
        t_start = time.time()
        t0 = time.perf_counter()
        frames_served = 0
        last_events = 0.0

        def drain_events() -> None:
            evs: list[HealthEvent] = []
            for r in readers:
                evs.extend(r.drain_events())
            if evs:
                metrics.observe_events(evs)
                writer.submit_events(evs)

        def serve(batch: FrameBatch) -> None:
            nonlocal frames_served, sink_errors
            served = pair.infer(batch)
            if self.on_prediction is not None:
                for p in served.predictions:
                    try:
                        self.on_prediction(p)
                    except Exception:
                        sink_errors += 1
                        if sink_errors <= 5:
                            log.exception("on_prediction_failed frame=%s", p.frame_id)
            if self.on_batch is not None:
                try:
                    self.on_batch(served)
                except Exception:
                    log.exception("on_batch_failed batch=%d", served.batch_id)
            writer.submit_served(served)
            frames_served += len(batch)
            served_per_cam.update(f.camera_id for f in batch.frames)
            if bar is not None:
                bar.update(len(batch))

        try:
            for r in readers:
                r.start()
            batcher.start()
            while not self._stop.is_set():
                batch = batcher.next_batch()
                if batch is None:
                    if not self._stop.is_set():
                        self.stop("sources finished")
                    break
                if cfg.max_frames is not None and frames_served + len(batch) > cfg.max_frames:
                    k = cfg.max_frames - frames_served
                    batch = FrameBatch(frames=batch.frames[:k], images=batch.images[:k])
                serve(batch)
                now = time.monotonic()
                if now - last_events >= 0.25:
                    drain_events()
                    last_events = now
                if cfg.max_frames is not None and frames_served >= cfg.max_frames:
                    self.stop("max_frames")
            # 3. shut down in order: cameras, queued frames, shadow, writer
            stop_all(readers, timeout=5.0)
            if self._stop_reason not in ("max_frames",):
                deadline = time.monotonic() + DRAIN_TIMEOUT_S
                while time.monotonic() < deadline:
                    batch = batcher.next_batch()
                    if batch is None:
                        break
                    serve(batch)
            batcher.stop()
            drain_events()
        finally:
            t_loop = time.perf_counter() - t0
            batcher.stop()
            for s, h in old_signals.items():
                signal.signal(s, h)
            stop_all(readers, timeout=1.0)
            pair.close(drain=True)
            writer.close(timeout=join_timeout + 30.0)
            if bar is not None:
                bar.close()

        summary = self._summary(t_start, t_loop, frames_served, served_per_cam, store_url, pair, writer, sink_errors)
        if sampler is not None and isinstance(getattr(sampler, "counts", None), dict):
            summary.extra["sampling"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in sampler.counts.items()}
        try:
            store.end_run(self.run_id, summary.to_dict())
        finally:
            store.close()
            if server is not None:
                server.stop()
        log.info("run_finished run_id=%s reason=%r frames=%d fps=%.1f coverage=%.3f", self.run_id, summary.stop_reason,
                 frames_served, summary.throughput_fps, summary.shadow.get("coverage", 0.0))
        return summary

    def _summary(self, t_start: float, t_loop: float, frames_served: int, served_per_cam: collections.Counter,
                 store_url: str, pair: ShadowPair, writer: StoreWriter, sink_errors: int) -> RunSummary:
        ps = pair.stats()
        ws = writer.stats()
        cams = {}
        for r in self.readers:
            d = r.stats.as_dict() if hasattr(r.stats, "as_dict") else dict(vars(r.stats))
            d["frames_served"] = served_per_cam.get(r.camera_id, 0)
            cams[r.camera_id] = d
        store_doc = {k: v for k, v in ws.items() if k not in ("predictions_by_model", "queue_depth", "parked")}
        store_doc["url"] = _redact_url(store_url)
        return RunSummary(
            run_id=self.run_id,
            stop_reason=self._stop_reason or "stopped",
            started_at=t_start,
            ended_at=time.time(),
            duration_s=round(t_loop, 3),
            frames_served=frames_served,
            throughput_fps=round(frames_served / t_loop, 2) if t_loop > 0 else 0.0,
            cameras=cams,
            predictions_per_model=ws["predictions_by_model"],
            incumbent=ps["incumbent"],
            shadow=ps["shadow"],
            fallbacks=ps["fallbacks"],
            store=store_doc,
            metrics_port=self.metrics_port,
            extra={"sink_errors": sink_errors, "last_fallback": ps["last_fallback"], "batches_served": ps["batches_served"]},
        )
