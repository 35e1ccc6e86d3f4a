"""``shadowcam run``: cameras -> batcher -> incumbent/shadow pair -> sink + store, with metrics and a summary.

Two parts with one job each:

* :class:`PipelineBuilder` opens every stage from the :class:`RunConfig`, in dependency order - models (and
  their compatibility) before any camera, cameras, metrics server, store, sampler, writer, pair, batcher - each
  registered for cleanup in a :class:`contextlib.ExitStack` as it is made, so a failure half-way closes what was
  opened, in reverse order. It returns a :class:`Pipeline` (a context manager that closes them).
* :class:`Runner` starts the stages, runs the serve loop (:meth:`Runner._serve`), stops the stages in order and
  writes the :class:`RunSummary`.

Threads of a run::

    camera readers (one each) --queue--> batcher thread (resizes the next batch ahead)
        --> main thread: ShadowPair.infer -> on_prediction / on_batch -> StoreWriter.submit_served
                           |                                   \\--> shadow dispatch thread --+
                           v                                                                  |
               StoreWriter thread ("store-writer") <----------- shadow results ---------------+
               joins each batch with its shadow result, image statistics, sampler,
               batched transactions (PredictionStore.write_batch, retried) - see pipeline.writer

* With a label target (``sampling.target``) or the ``neyman`` strategy, a "label-feedback" daemon thread
  (:class:`LabelFeedbackLoop`) re-reads the store on its own connection every ``target.check_every_s`` and sets the
  sampler's rate factors / neyman strata; its failures are logged and counted, never fatal.
* The served output (``on_prediction``) is produced on the main thread right after the incumbent answers; it
  never waits for the shadow, the sampler or the store.
* The writer joins a batch with its shadow result only when the batch was queued for the shadow; the wait is
  bounded (:func:`pipeline.shadow.shadow_result_within_s`: ``(max_pending_batches + 2)`` shadow call limits; the
  pair guarantees an answer within that), and only batches waiting for a shadow result are parked, so memory
  stays bounded by the shadow queue.
* Backpressure (``shadow_mode.backpressure``, :func:`uses_backpressure`): on a replay (every source a file or
  folder read at full speed) the main thread waits for room in the shadow's queue instead of shedding, so the
  batcher and the file readers wait too and the shadow gets every frame, however busy the machine; with any
  live source (or a file paced with ``max_fps``) the shadow is shed as before and the incumbent never waits.
  The summary records it (``shadow["backpressure"]``: frames that waited, total wait).
* The writer's input queue is bounded: if the store cannot keep up, the main thread waits (back-pressure)
  rather than dropping rows - file sources then read slower and live cameras drop their oldest frames, which
  the readers count. Per-frame image statistics (for drift) are skipped for a batch when the writer is more
  than half full, and counted (``stats_skipped``), so statistics never become the bottleneck.
* A row acknowledged is a row kept: the writer logs ``store_commit`` (DEBUG) with running totals after each
  committed transaction; SQLite runs in WAL mode with ``synchronous=FULL``.

Stops at ``max_frames``, when every source has finished, or on SIGINT/SIGTERM (the first one drains: readers
stop, queued frames are still served, the shadow and the writer finish their queues, the store is flushed and
the summary printed; a second one interrupts at once). Stages stop in this order: batcher, cameras, shadow
(drained into the writer), writer (flushed); then the summary is written to the store, and the store and the
metrics server close.

Exactly one incumbent prediction is stored per frame served; with file/folder sources (which block instead
of dropping) every frame read is served, unless ``max_frames`` cut the run short.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.batching import Batcher, PrefetchingBatcher
from pipeline.config import EvalConfig, RunConfig, SamplingConfig
from pipeline.metrics import HealthServer, Metrics
from pipeline.modelcard import check_compatible
from pipeline.runtime import OnnxClassifier, usable_cores
from pipeline.sampling import LabelSampler
from pipeline.serving_cost import ServingCost, serving_cost
from pipeline.shadow import ServedResult, ShadowPair, shadow_result_within_s
from pipeline.sources import LIVE_KINDS, CameraReader, classify_uri, open_sources, stop_all
from pipeline.store import PredictionStore
from pipeline.types import ConfigError, FrameBatch, HealthEvent, Prediction, Role
from pipeline.writer import WRITER_QUEUE_BATCHES, StoreWriter

log = logging.getLogger(__name__)

__all__ = ["DRAIN_TIMEOUT_S", "WRITER_QUEUE_BATCHES", "LabelFeedbackLoop", "Pipeline", "PipelineBuilder", "RunSummary", "Runner",
           "StoreWriter", "is_realtime", "new_run_id", "uses_backpressure"]

DRAIN_TIMEOUT_S = 30.0  # after a stop signal: at most this long serving frames already queued
NEYMAN_FEEDBACK_EVERY_S = 60.0  # strategy "neyman" without a label target: how often the strata's labels are re-read
EVENTS_EVERY_S = 0.25  # how often the serve loop collects the cameras' health events


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


# --- the summary ----------------------------------------------------------------------------------------------------

@dataclass
class RunSummary:
    """What a run did, written to the store (``runs.summary``) and printed (:meth:`format_table`).

    ``incumbent`` / ``shadow`` hold each model's counters, including ``busy_s``: the seconds its inference calls
    ran (the device time it used); ``extra["wall_s"]`` is the serve loop plus the drain after it (``duration_s`` is
    the serve loop alone, the base of ``throughput_fps``). With ``serving_cost:`` in the run config, ``extra["serving_cost"]`` holds
    :meth:`pipeline.serving_cost.ServingCost.to_dict`: money per million predictions per model and what the shadow adds.
    """

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
            bp = sh.get("backpressure") or {}
            if bp.get("enabled"):
                lines.append(
                    f"shadow backpressure ({bp.get('mode')}): {bp.get('frames_waited', 0)} frames waited for the shadow, "
                    f"{bp.get('wait_s', 0.0):.1f} s in all (longest {bp.get('longest_wait_s', 0.0):.1f} s); "
                    f"gave up on {bp.get('frames_gave_up', 0)} frames after {bp.get('max_wait_s')} s"
                )
        else:
            lines.append("shadow: none")
        cost = self.extra.get("serving_cost")
        if cost:
            lines.extend(ServingCost.from_dict(cost).describe().splitlines())
        else:
            busy = [f"{role} busy {d['busy_s']:.1f} s" for role, d in (("incumbent", inc), ("shadow", sh))
                    if d.get("model") and d.get("busy_s") is not None]
            lines.append("serving cost: not configured (serving_cost: {price_per_device_hour: ...} in the run config)"
                         + (f"; {', '.join(busy)} of {self.duration_s:.1f} s" if busy else ""))
        st = self.store
        lines.append(f"store {st.get('url')}: {st.get('frames_committed', 0)} frames, {st.get('predictions_committed', 0)} predictions, "
                     f"{st.get('samples_committed', 0)} samples, {st.get('events_committed', 0)} health events committed; "
                     f"write errors {st.get('write_errors', 0)}")
        return "\n".join(lines)


# --- building the pipeline ------------------------------------------------------------------------------------------

def is_realtime(sources: list[Any]) -> bool:
    """True when any source is a camera stream (RTSP, HTTP, USB) or is paced with ``max_fps``; False for a replay
    (files and folders read as fast as possible). Unresolvable sources are left to :func:`open_sources` to report."""
    for s in sources:
        if s.max_fps:
            return True
        try:
            if classify_uri(s.uri) in LIVE_KINDS:
                return True
        except Exception:  # a missing file: open_sources raises the proper error later
            continue
    return False


def uses_backpressure(mode: str, sources: list[Any]) -> bool:
    """Whether the shadow applies backpressure (``ShadowConfig.backpressure``): ``"always"``, ``"never"``, or
    ``"auto"``: when the run is a replay (no live source and no ``max_fps``: :func:`is_realtime` is False)."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    return not is_realtime(sources)


def _redact_url(url: str) -> str:
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


@dataclass
class Pipeline:
    """Every stage of one run, opened but not started (:class:`PipelineBuilder`).

    A context manager: leaving it closes what the builder opened, in reverse order (batcher, pair, writer,
    store, metrics server, cameras); closing a stage twice is harmless.
    """

    workdir: Path
    incumbent: OnnxClassifier
    shadow: OnnxClassifier | None
    metrics: Metrics
    readers: list[CameraReader]
    server: HealthServer | None
    store: PredictionStore
    store_url: str
    sampler: LabelSampler | None
    writer: StoreWriter
    pair: ShadowPair
    batcher: PrefetchingBatcher
    join_timeout_s: float
    _resources: ExitStack = field(default_factory=ExitStack, repr=False)

    @property
    def metrics_port(self) -> int | None:
        return self.server.port if self.server is not None else None

    def close(self) -> None:
        self._resources.close()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class PipelineBuilder:
    """Opens the stages of a run from ``cfg`` (see :meth:`build`).

    Args:
        cfg: the resolved run config.
        run_id: the run's id (stored with every row).
        incumbent, shadow: pre-built classifiers (tests, notebooks); default: built from ``cfg``.
        cpu_twin: passed to :class:`ShadowPair` (None: ``incumbent.cpu_fallback()``).
        image_stats: compute per-frame image statistics in the writer.
        on_readers: called with the camera readers once they are opened, before anything else may fail.
    """

    def __init__(
        self,
        cfg: RunConfig,
        run_id: str,
        incumbent: OnnxClassifier | None = None,
        shadow: OnnxClassifier | None = None,
        cpu_twin: Any = None,
        image_stats: bool = True,
        on_readers: Callable[[list[CameraReader]], None] | None = None,
    ):
        self.cfg = cfg
        self.run_id = run_id
        self.incumbent = incumbent
        self.shadow = shadow
        self.cpu_twin = cpu_twin
        self.image_stats = image_stats
        self.on_readers = on_readers

    def build(self) -> Pipeline:
        """Open every stage, each registered for cleanup as it is made; a failure closes what was opened.

        Models come first and must answer in the same class list (:class:`ModelCardError` before any camera is
        opened or the store touched); then cameras (checked, not started), the metrics server, the store (the
        run is recorded with its resolved config), the sampler, the writer, the pair and the batcher.
        """
        cfg = self.cfg
        if not cfg.sources:
            raise ConfigError("no sources: give --source SRC (repeatable) or 'sources:' in the config")
        wd = Path(cfg.workdir)
        wd.mkdir(parents=True, exist_ok=True)
        realtime = is_realtime(cfg.sources)
        inc, sh = self._load_models(wd, realtime)
        if sh is not None:
            check_compatible(inc.card, sh.card, f"incumbent {inc.model_id}", f"shadow {sh.model_id}")
        with ExitStack() as stack:
            metrics = Metrics(self.run_id)
            readers = open_sources(cfg.sources, cfg.camera_health, self.run_id)
            stack.callback(stop_all, readers, timeout=1.0)
            metrics.readers = readers
            if self.on_readers is not None:
                self.on_readers(readers)
            server = self._metrics_server(metrics)
            if server is not None:
                stack.callback(server.stop)
            store_url = self._store_url(wd)
            store = PredictionStore(store_url)
            stack.callback(store.close)
            sampler = self._sampler(wd, inc)
            store.begin_run(self.run_id, inc.model_id, sh.model_id if sh is not None else None, inc.class_names,
                            self._config_doc(store_url, inc, sh))
            # a replay waits for the shadow instead of shedding it (backpressure); live sources shed
            backpressure = uses_backpressure(cfg.shadow_mode.backpressure, cfg.sources)
            join_timeout = shadow_result_within_s(cfg.shadow_mode, backpressure)
            writer = StoreWriter(store, self.run_id, sampler, cfg.store.flush_every, cfg.store.flush_interval_s,
                                 join_timeout, compute_stats=self.image_stats)
            stack.callback(writer.close, timeout=join_timeout + 30.0)
            # real-time sources (streams, or files paced with max_fps): the shadow never takes CPU from the
            # incumbent and is shed when it falls behind; a replay of files at full speed: it catches up at normal
            # priority
            pair = ShadowPair(inc, sh, cfg.shadow_mode, on_shadow=writer.submit_shadow, cpu_twin=self.cpu_twin,
                              metrics=metrics, catch_up=not realtime, backpressure=backpressure)
            stack.callback(pair.close, drain=True)
            metrics.pair = pair
            metrics.writer_stats = writer.stats
            # the next batch is resized in its own thread while the incumbent serves this one
            batcher = PrefetchingBatcher(Batcher(readers, cfg.batching, input_size=inc.input_size,
                                                 interpolation=inc.card.resize_interpolation))
            stack.callback(batcher.stop)
            pipeline = Pipeline(wd, inc, sh, metrics, readers, server, store, store_url, sampler, writer, pair,
                                batcher, join_timeout, stack.pop_all())  # opened: the pipeline closes them now
        return pipeline

    def _load_models(self, wd: Path, realtime: bool) -> tuple[OnnxClassifier, OnnxClassifier | None]:
        cfg = self.cfg
        cache = wd / ".cache"
        bs = cfg.batching.batch_size
        inc = self.incumbent
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
        sh = self.shadow
        if sh is None and cfg.shadow is not None:
            sh = OnnxClassifier.from_config(cfg.shadow, Role.SHADOW, cache_dir=cache, warmup_batch_size=bs, workdir=wd)
        return inc, sh

    def _metrics_server(self, metrics: Metrics) -> HealthServer | None:
        m = self.cfg.metrics
        if m.port is None:
            return None
        try:
            return HealthServer(metrics, m.host, m.port).start()
        except OSError as e:
            raise ConfigError(f"metrics.port {m.port} on {m.host}: cannot listen ({e.strerror or e})") from None

    def _store_url(self, wd: Path) -> str:
        url = self.cfg.store.url
        if "://" not in url and not Path(url).is_absolute():
            return str((wd / url).resolve())
        return url

    def _sampler(self, wd: Path, inc: OnnxClassifier) -> LabelSampler | None:
        if not self.cfg.sampling.enabled:
            return None
        image_dir = Path(self.cfg.sampling.image_dir)
        if not image_dir.is_absolute():
            image_dir = wd / image_dir
        return LabelSampler(self.cfg.sampling, inc.class_names, image_dir)

    def _config_doc(self, store_url: str, inc: OnnxClassifier, sh: OnnxClassifier | None) -> dict[str, Any]:
        """The config recorded with the run: as given, plus what it resolved to (passwords redacted)."""
        doc = self.cfg.model_dump(mode="json")
        doc["_resolved"] = {"store_url": _redact_url(store_url), "incumbent": inc.describe(),
                            "shadow": sh.describe() if sh is not None else None}
        if self.cfg.store.url != store_url:
            doc["store"]["url"] = _redact_url(store_url)
        return doc


# --- label targets and neyman feedback ------------------------------------------------------------------------------

class LabelFeedbackLoop:
    """A daemon thread that re-reads the store every ``check_every_s`` (``SamplingConfig.target``; 60 s for the
    ``neyman`` strategy without a target) and feeds the sampler: the label target's rate factors
    (:class:`pipeline.labeling.targets.TargetController`) and the ``neyman`` strata's labels
    (``LabelSampler.update_feedback``). The first check runs at start (labels of earlier runs count at once).

    It opens its own :class:`PredictionStore` connection (the run's writer has its own). The labels that count are
    those of this run and the earlier runs of the same incumbent model (same incumbent *and* shadow for a
    ``decision`` target). A failing check is logged and counted (``errors``), never fatal; ``stop()`` ends the
    thread (a check in progress finishes in the background: the thread is a daemon).
    """

    def __init__(self, sampling: SamplingConfig, sampler: Any, store_url: str, run_id: str, incumbent: str,
                 shadow: str | None, eval_config: EvalConfig | None = None):
        from pipeline.labeling.targets import TargetController

        self.sampling = sampling
        self.sampler = sampler
        self.store_url = store_url
        self.run_id = run_id
        self.incumbent, self.shadow = incumbent, shadow
        target = sampling.target
        self.controller = TargetController(target, eval_config) if target is not None else None
        self.neyman = sampling.strategy == "neyman"
        self.every_s = target.check_every_s if target is not None else NEYMAN_FEEDBACK_EVERY_S
        self.checks = 0
        self.errors = 0
        self.last_error: str | None = None
        self.neyman_strata = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="label-feedback", daemon=True)

    def start(self) -> "LabelFeedbackLoop":
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def check(self, store: PredictionStore) -> None:
        """One round: the target's statuses and rate factors, then the neyman feedback."""
        from pipeline.labeling.targets import neyman_feedback, target_runs

        runs = store.list_runs()
        target = self.controller.config if self.controller is not None else None
        run_ids = target_runs(runs, target, self.incumbent, self.shadow)
        if self.run_id not in run_ids:
            run_ids.append(self.run_id)
        if self.controller is not None:
            statuses = self.controller.check(store, self.sampler, run_ids)
            log.info("label_target %s", "; ".join(s.message for s in statuses) or "no cameras yet")
        if self.neyman:
            fb = neyman_feedback(store, target_runs(runs, None, self.incumbent) or [self.run_id], self.sampling.neyman_edges)
            self.sampler.update_feedback(fb)
            self.neyman_strata = len(fb)
        self.checks += 1

    def summary(self) -> dict[str, Any]:
        """What the run summary records (``RunSummary.extra["label_target"]``): the last statuses and factors
        (camera -> factor, ``"*"`` for every camera), checks and errors."""
        out: dict[str, Any] = {"checks": self.checks, "errors": self.errors, "every_s": self.every_s}
        if self.last_error:
            out["last_error"] = self.last_error
        if self.controller is not None:
            out["target"] = self.controller.config.model_dump(mode="json")
            out["target_status"] = [s.to_dict() for s in self.controller.last_statuses]
            out["factors"] = {("*" if k is None else k): v for k, v in self.controller.last_factors.items()}
        if self.neyman:
            out["neyman_strata"] = self.neyman_strata
        return out

    def _loop(self) -> None:
        store: PredictionStore | None = None
        try:
            while True:
                try:
                    if store is None:
                        store = PredictionStore(self.store_url)
                    self.check(store)
                except Exception as e:  # never fatal: the run goes on at the last factors
                    self.errors += 1
                    self.last_error = f"{e.__class__.__name__}: {e}"
                    if self.errors <= 3:
                        log.exception("label_feedback_failed run_id=%s", self.run_id)
                    else:
                        log.warning("label_feedback_failed run_id=%s %s", self.run_id, self.last_error)
                if self._stop.wait(self.every_s):
                    break
        finally:
            if store is not None:
                store.close()


# --- the runner -------------------------------------------------------------------------------------------------------

@dataclass
class _Tally:
    """What the serve loop counted."""

    frames: int = 0
    per_camera: collections.Counter[str] = field(default_factory=collections.Counter)
    sink_errors: int = 0


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

    While :meth:`run` runs, ``readers``, ``pair``, ``writer`` and ``metrics_port`` show its stages.
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
        self._bar: Any = None
        self.metrics_port: int | None = None
        self.readers: list[Any] = []
        self.pair: ShadowPair | None = None
        self.writer: StoreWriter | None = None
        self.label_feedback: LabelFeedbackLoop | None = None

    def stop(self, reason: str = "stopped") -> None:
        """Ask a running :meth:`run` to drain and finish (thread-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop.set()

    def run(self) -> RunSummary:
        """Build, start, serve until stopped, stop in order, record and return the summary."""
        builder = PipelineBuilder(self.cfg, self.run_id, incumbent=self._incumbent, shadow=self._shadow,
                                  cpu_twin=self._cpu_twin, image_stats=self.image_stats, on_readers=self._readers_opened)
        with builder.build() as p:
            self.pair, self.writer, self.metrics_port = p.pair, p.writer, p.metrics_port
            with ExitStack() as running:  # stops the stages in reverse order of starting
                self._start(p, running)
                t_start, t0 = time.time(), time.perf_counter()
                tally = self._serve(p)
                t_loop = time.perf_counter() - t0
            t_held = time.perf_counter() - t0  # the stages stopped: the shadow's queue drained, the store flushed
            summary = self._summary(p, tally, t_start, t_loop, t_held)
            p.store.end_run(self.run_id, summary.to_dict())
        log.info("run_finished run_id=%s reason=%r frames=%d fps=%.1f coverage=%.3f", self.run_id, summary.stop_reason,
                 summary.frames_served, summary.throughput_fps, summary.shadow.get("coverage", 0.0))
        return summary

    def _readers_opened(self, readers: list[Any]) -> None:
        self.readers = readers
        if self.on_readers is not None:
            self.on_readers(readers)

    def _start(self, p: Pipeline, running: ExitStack) -> None:
        """Start the stages, each registered in ``running`` to stop: writer, pair, signals, cameras, batcher."""
        if self.progress:
            self._bar = tqdm(total=self.cfg.max_frames, unit="frame", desc=f"run {self.run_id}", dynamic_ncols=True)
            running.callback(self._bar.close)
        log.info("run_started run_id=%s incumbent=%s shadow=%s sources=%d shadow_backpressure=%s store=%s workdir=%s",
                 self.run_id, p.incumbent.model_id, p.shadow.model_id if p.shadow is not None else None, len(p.readers),
                 p.pair.backpressure, _redact_url(p.store_url), p.workdir)
        p.writer.start()
        running.callback(p.writer.close, timeout=p.join_timeout_s + 30.0)
        p.pair.start()
        running.callback(p.pair.close, drain=True)
        running.enter_context(self._signal_handlers())
        running.callback(stop_all, p.readers, timeout=1.0)
        for r in p.readers:
            r.start()
        p.batcher.start()
        running.callback(p.batcher.stop)
        sampling = self.cfg.sampling
        if p.sampler is not None and (sampling.target is not None or sampling.strategy == "neyman"):
            self.label_feedback = LabelFeedbackLoop(
                sampling, p.sampler, p.store_url, self.run_id, p.incumbent.model_id,
                p.shadow.model_id if p.shadow is not None else None, EvalConfig(workdir=str(p.workdir)),
            ).start()
            running.callback(self.label_feedback.stop)

    def _serve(self, p: Pipeline) -> _Tally:
        """The serve loop: batches until stopped, sources finished or ``max_frames``; then drain what was read."""
        max_frames = self.cfg.max_frames
        tally = _Tally()
        last_events = 0.0
        while not self._stop.is_set():
            batch = p.batcher.next_batch()
            if batch is None:
                self.stop("sources finished")
                break
            if max_frames is not None and tally.frames + len(batch) > max_frames:
                k = max_frames - tally.frames
                batch = FrameBatch(frames=batch.frames[:k], images=batch.images[:k])
            self._serve_batch(p, batch, tally)
            if time.monotonic() - last_events >= EVENTS_EVERY_S:
                self._drain_events(p)
                last_events = time.monotonic()
            if max_frames is not None and tally.frames >= max_frames:
                self.stop("max_frames")
        # cameras first; then the frames they already queued are still served (unless max_frames was reached)
        stop_all(p.readers, timeout=5.0)
        if self._stop_reason != "max_frames":
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while time.monotonic() < deadline and (batch := p.batcher.next_batch()) is not None:
                self._serve_batch(p, batch, tally)
        p.batcher.stop()
        self._drain_events(p)
        return tally

    def _serve_batch(self, p: Pipeline, batch: FrameBatch, tally: _Tally) -> None:
        """Serve one batch: the pair answers, the sink and ``on_batch`` see it, the writer gets it."""
        served = p.pair.infer(batch)
        if self.on_prediction is not None:
            for pred in served.predictions:
                try:
                    self.on_prediction(pred)
                except Exception:
                    tally.sink_errors += 1
                    if tally.sink_errors <= 5:
                        log.exception("on_prediction_failed frame=%s", pred.frame_id)
        if self.on_batch is not None:
            try:
                self.on_batch(served)
            except Exception:
                log.exception("on_batch_failed batch=%d", served.batch_id)
        p.writer.submit_served(served)
        tally.frames += len(batch)
        tally.per_camera.update(f.camera_id for f in batch.frames)
        if self._bar is not None:
            self._bar.update(len(batch))

    def _drain_events(self, p: Pipeline) -> None:
        events: list[HealthEvent] = []
        for r in p.readers:
            events.extend(r.drain_events())
        if events:
            p.metrics.observe_events(events)
            p.writer.submit_events(events)

    @contextmanager
    def _signal_handlers(self) -> Iterator[None]:
        """SIGINT/SIGTERM: the first drains and stops the run, a second interrupts at once (main thread only)."""
        if not self.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop.is_set():  # second signal: stop now
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            log.warning("signal_received signal=%s: draining queues and flushing the store (again to abort)", name)
            self.stop(f"{name}")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    def _summary(self, p: Pipeline, tally: _Tally, t_start: float, t_loop: float, t_held: float | None = None) -> RunSummary:
        ps = p.pair.stats()
        ws = p.writer.stats()
        cams = {}
        for r in p.readers:
            d = r.stats.as_dict() if hasattr(r.stats, "as_dict") else dict(vars(r.stats))
            d["frames_served"] = tally.per_camera.get(r.camera_id, 0)
            cams[r.camera_id] = d
        store_doc = {k: v for k, v in ws.items() if k not in ("predictions_by_model", "queue_depth", "parked")}
        store_doc["url"] = _redact_url(p.store_url)
        extra: dict[str, Any] = {"sink_errors": tally.sink_errors, "last_fallback": ps["last_fallback"],
                                 "batches_served": ps["batches_served"]}
        if t_held is not None:  # the serve loop plus the drain (the shadow finishing its queue): what the device is billed
            extra["wall_s"] = round(t_held, 3)
        counts = getattr(p.sampler, "counts", None)
        if isinstance(counts, dict):
            extra["sampling"] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in counts.items()}
        if self.label_feedback is not None:
            extra["label_target"] = self.label_feedback.summary()
        summary = RunSummary(
            run_id=self.run_id,
            stop_reason=self._stop_reason or "stopped",
            started_at=t_start,
            ended_at=time.time(),
            duration_s=round(t_loop, 3),
            frames_served=tally.frames,
            throughput_fps=round(tally.frames / t_loop, 2) if t_loop > 0 else 0.0,
            cameras=cams,
            predictions_per_model=ws["predictions_by_model"],
            incumbent=ps["incumbent"],
            shadow=ps["shadow"],
            fallbacks=ps["fallbacks"],
            store=store_doc,
            metrics_port=self.metrics_port,
            extra=extra,
        )
        sc = self.cfg.serving_cost
        if sc is not None:
            cost = serving_cost(summary.to_dict(), sc.price_per_device_hour, sc.currency, sc.device)
            extra["serving_cost"] = cost.to_dict()
        return summary
