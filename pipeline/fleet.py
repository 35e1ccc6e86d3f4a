"""A fleet on Ray: the cameras of one run spread over restartable Ray actors that write to one PostgreSQL store.

``shadowcam run --cluster ray`` (or ``cluster:`` in the run config, :class:`pipeline.config.ClusterConfig`) hands
the run to :class:`FleetRunner` instead of one :class:`pipeline.runner.Runner`::

    driver (FleetRunner)                    Ray cluster (head + worker nodes)
      plan: cameras -> groups of            +-------------------------------------------------+
      cameras_per_actor, in config order    | CameraWorker w0 (actor): Runner over cam0, cam1 |--+
      one actor per group ----------------> |   incumbent + shadow ONNX sessions, sampler     |  |  one PostgreSQL
      polls progress() every report_every_s | CameraWorker w1 (actor): Runner over cam2, cam3 |--+--> store (frames,
      aggregates frames/fps/coverage/       |   ...                                           |  |  predictions, ...)
      restarts; final figures from the store+-------------------------------------------------+  |
                                                  models:/NAME@ALIAS through the mlflow server  <-+

* **Actors.** :class:`CameraWorker` is a plain class that :class:`FleetRunner` wraps with ``ray.remote`` and starts
  once per camera group, with ``num_cpus`` / ``num_gpus`` (``num_gpus`` None: a share of the cluster's GPUs when it
  has some, else 0), ``max_restarts``, ``max_task_retries`` and, with ``placement: spread``, a soft node affinity
  that deals the actors round-robin over the alive nodes (a restart after a node failure goes wherever Ray finds
  room). The actors get ``MLFLOW_TRACKING_URI`` (the driver's; a ``mlflow server`` for a real fleet) through their
  ``runtime_env``, so ``models:/NAME@ALIAS`` resolves the same everywhere. Each actor's work dir is
  ``<workdir>/fleet/<fleet id>/w<k>`` (model cache, sampled JPEGs).
* **Ids.** A fleet run has one id (``fleet_id``); actor ``k``'s attempt ``a`` records the run
  ``<fleet_id>-w<k>-<a>`` in the store (its config, summary). Replayed files and folders get frame ids
  ``<fleet_id>:<camera>:<seq>`` in every attempt (:meth:`pipeline.sources.CameraReader.resume`), so a frame has
  one id whichever attempt reads it; live cameras keep per-attempt ids (``<run>:<camera>:<seq>``): a stream
  cannot be replayed.
* **Restarts.** When an actor's process dies (SIGKILL, OOM, a node lost), Ray restarts the actor (its
  ``__init__`` again) and re-runs its :meth:`CameraWorker.run` (``max_task_retries``). The new attempt reads which
  seqs of its file/folder cameras are already committed (:meth:`pipeline.store.PredictionStore.stored_seqs`) and
  its readers pass over exactly those (no pacing, no queueing): every frame is stored once, a frame committed
  before the death is never written again (the frames table's primary key would refuse it anyway), and one
  lost in flight (read, not committed) is read again. Live cameras simply reconnect. A transaction the dead
  process had not committed is rolled back by PostgreSQL when its connection drops.
* **Metrics.** :meth:`CameraWorker.progress` answers while :meth:`CameraWorker.run` runs (threaded actors):
  node, pid, attempt, frames served in this attempt, fps, shadow coverage. The driver logs the aggregate every
  ``report_every_s`` (``fleet_progress``), and at the end builds a :class:`FleetSummary` from the actors' run
  summaries and the store's per-camera counts (:meth:`pipeline.store.PredictionStore.camera_counts`), which
  count every attempt.
* **Stopping.** The run ends when every actor's sources end (``max_frames``: each actor gets its cameras' share,
  less what earlier attempts stored). SIGINT/SIGTERM on the driver asks every actor to drain and stop (a second
  one kills them). Actors are not detached: they end with the driver.

Everything here imports Ray lazily: ``pip install "shadowcam[fleet]"`` adds it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import ClusterConfig, RunConfig
from pipeline.types import ConfigError, ShadowcamError

log = logging.getLogger(__name__)

__all__ = [
    "ActorPlan",
    "CameraWorker",
    "FleetRunner",
    "FleetSummary",
    "actor_gpus",
    "actor_name",
    "actor_run_prefix",
    "fleet_run_prefix",
    "parse_cluster_option",
    "plan_fleet",
]

NAMESPACE = "shadowcam"  # Ray namespace of the fleet's named actors ("shadowcam-<fleet id>-w<k>")
ACTOR_CONCURRENCY = 4  # run() + progress() + stop() at once
PROGRESS_WAIT_S = 2.0  # how long the driver waits for the actors' progress answers (a restarting actor answers later)
FLEET_ID = re.compile(r"[A-Za-z0-9_.]{1,40}")  # no '-' or ':': run ids are "<fleet>-w<k>-<attempt>", frame ids "<fleet>:<cam>:<seq>"
STOP_WAIT_S = 120.0  # after a stop request: how long the driver waits for the actors to drain


# --- ids -------------------------------------------------------------------------------------------------------------

def fleet_run_prefix(fleet_id: str) -> str:
    """What every run id of fleet run ``fleet_id`` starts with (``store.camera_counts(prefix)`` covers the fleet)."""
    return f"{fleet_id}-"


def actor_run_prefix(fleet_id: str, index: int) -> str:
    """What the run ids of actor ``index``'s attempts start with (``<fleet_id>-w<k>-<attempt>``)."""
    return f"{fleet_id}-w{index}-"


def actor_name(fleet_id: str, index: int) -> str:
    """The Ray actor name of actor ``index`` (namespace :data:`NAMESPACE`): ``ray.get_actor(name, namespace=...)``."""
    return f"shadowcam-{fleet_id}-w{index}"


def parse_cluster_option(value: str) -> str | None:
    """``--cluster`` -> ``ClusterConfig.address``: ``"ray"`` -> None (RAY_ADDRESS, else the local cluster),
    ``"ray://HOST:PORT"`` -> itself (Ray Client)."""
    v = value.strip()
    if v == "ray":
        return None
    if v.startswith("ray://") and len(v) > len("ray://"):
        return v
    raise ConfigError(f"--cluster: expected 'ray' (RAY_ADDRESS or the cluster started on this machine) or "
                      f"'ray://HOST:PORT' (Ray Client), got {value!r}")


# --- the plan ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActorPlan:
    """One actor: its index, its cameras and the run config it runs (a plain JSON document)."""

    index: int
    cameras: tuple[str, ...]
    live: tuple[str, ...]  # the cameras among them that are live streams
    config: dict[str, Any]


def plan_fleet(cfg: RunConfig, fleet_id: str) -> list[ActorPlan]:
    """Split ``cfg``'s cameras into groups of ``cluster.cameras_per_actor`` (config order) and make each group's run
    config: explicit camera ids, absolute paths (actors do not share the driver's working directory), its own work
    dir ``<workdir>/fleet/<fleet_id>/w<k>``, no cluster, ``max_frames`` split by cameras, metrics on a free port
    when a port was asked for, and models' intra-op threads = ``ceil(num_cpus)`` where left at 0 (auto).

    Raises ConfigError (no sources, duplicate camera ids, a store that is not PostgreSQL) and
    CameraUnavailableError (a file or folder missing on this machine: nodes are expected to see the same paths).
    """
    from pipeline.sources import resolve_source
    from pipeline.store import sqlite_path

    cluster = cfg.cluster or ClusterConfig()
    if not cfg.sources:
        raise ConfigError("no sources: give --source SRC (repeatable) or 'sources:' in the config")
    if cfg.incumbent is None:
        raise ConfigError("no incumbent model: give --incumbent MODEL or 'incumbent: {uri: ...}' in the config")
    if sqlite_path(cfg.store.url) is not None or cfg.store.url.startswith("sqlite"):
        raise ConfigError(f"store.url: a fleet writes from several processes and machines into one store; expected "
                          f"postgresql://USER@HOST/DB, got {cfg.store.url!r}")
    specs = [resolve_source(s) for s in cfg.sources]
    seen: dict[str, str] = {}
    for s in specs:
        if s.camera_id in seen:
            raise ConfigError(f"duplicate camera id {s.camera_id!r} for sources {seen[s.camera_id]!r} and {s.display_uri!r}; "
                              f"give each source a unique id (sources: [{{uri: ..., id: ...}}])")
        seen[s.camera_id] = s.display_uri
    base = cfg.model_dump(mode="json")
    base["cluster"] = None
    workdir = Path(cfg.workdir).resolve()
    for role in ("incumbent", "shadow"):
        m = base.get(role)
        if m is None:
            continue
        if not m["uri"].startswith("models:/"):
            m["uri"] = str(Path(m["uri"]).expanduser().resolve())
        if m["intra_op_threads"] == 0:
            m["intra_op_threads"] = max(1, math.ceil(cluster.num_cpus))
    if base["metrics"]["port"] is not None:
        base["metrics"]["port"] = 0  # several actors per node: each on a free port (reported by progress())
    n_total = len(specs)
    plans = []
    k = cluster.cameras_per_actor
    for index, start in enumerate(range(0, n_total, k)):
        group = list(zip(cfg.sources[start:start + k], specs[start:start + k]))
        doc = json.loads(json.dumps(base))
        doc["sources"] = [dict(src.model_dump(mode="json"), id=spec.camera_id, uri=str(spec.path) if spec.path else src.uri)
                          for src, spec in group]
        doc["workdir"] = str(workdir / "fleet" / fleet_id / f"w{index}")
        if cfg.max_frames is not None:
            doc["max_frames"] = max(1, math.ceil(cfg.max_frames * len(group) / n_total))
        plans.append(ActorPlan(index, tuple(spec.camera_id for _, spec in group),
                               tuple(spec.camera_id for _, spec in group if spec.live), doc))
    return plans


def actor_gpus(cluster: ClusterConfig, node_resources: list[dict[str, float]], n_actors: int) -> float:
    """The GPUs each actor asks Ray for, from the alive nodes' resources (``ray.nodes()[i]["Resources"]``).

    ``cluster.num_gpus`` None: an equal share of the cluster's GPUs (at most 1 per actor, 3 decimals), 0 on a
    cluster without GPUs. Raises ConfigError when one actor asks for more CPUs or GPUs than the largest node has
    (Ray would wait for ever).
    """
    max_cpus = max((r.get("CPU", 0.0) for r in node_resources), default=0.0)
    if cluster.num_cpus > max_cpus:
        raise ConfigError(f"cluster.num_cpus: each actor asks for {cluster.num_cpus:g} CPUs but the largest node has {max_cpus:g}")
    gpus = sum(r.get("GPU", 0.0) for r in node_resources)
    if cluster.num_gpus is None:
        return min(1.0, math.floor(gpus / max(n_actors, 1) * 1000) / 1000) if gpus else 0.0
    max_gpus = max((r.get("GPU", 0.0) for r in node_resources), default=0.0)
    if cluster.num_gpus > max_gpus:
        raise ConfigError(f"cluster.num_gpus: each actor asks for {cluster.num_gpus:g} GPUs but the largest node has {max_gpus:g}")
    return cluster.num_gpus


# --- the actor ----------------------------------------------------------------------------------------------------------

class CameraWorker:
    """One fleet actor: a :class:`pipeline.runner.Runner` over its cameras (wrapped with ``ray.remote`` by
    :class:`FleetRunner`; a plain class, so it can be tried without Ray).

    Public verbs: :meth:`run` (the work; Ray re-runs it after a restart), :meth:`progress` (answers while run runs),
    :meth:`stop` (drain and end). See the module docstring for ids and resuming.
    """

    def __init__(self, config: dict[str, Any], fleet_id: str, index: int, log_level: int = logging.INFO):
        from pipeline.metrics import setup_logging

        setup_logging(level=log_level)
        self.cfg = RunConfig.model_validate(config)
        self.fleet_id = fleet_id
        self.index = index
        self.cameras = [s.id for s in self.cfg.sources]
        self.pid = os.getpid()
        self.node_ip, self.node_id, self.reconstructed = _ray_context()
        self._lock = threading.Lock()
        self._runner: Any = None
        self._stop_reason: str | None = None
        self._served: Counter[str] = Counter()
        self._stored: dict[str, frozenset[int]] = {}
        self._t_serving: float | None = None
        self.attempt: int | None = None
        self.run_id: str | None = None
        self.state = "started"
        log.info("fleet_actor_started fleet=%s actor=w%d pid=%d node=%s cameras=%s restarted=%s", fleet_id, index, self.pid,
                 self.node_ip, ",".join(self.cameras), self.reconstructed)

    def run(self) -> dict[str, Any]:
        """Run (or resume) this actor's cameras to the end; returns what the driver aggregates: ids, node, pid,
        attempt, frames already stored per camera at the start, and the run summary (``RunSummary.to_dict``) or
        ``error``. An error is returned, not raised: the driver reports it (Ray would not retry it anyway)."""
        from pipeline.runner import Runner
        from pipeline.store import PredictionStore

        try:
            store = PredictionStore(self.cfg.store.url)
            try:
                self.attempt = len(store.runs_with_prefix(actor_run_prefix(self.fleet_id, self.index)))
                if self.reconstructed:
                    self.attempt = max(self.attempt, 1)
                self._stored = {cam: frozenset(store.stored_seqs(fleet_run_prefix(self.fleet_id), cam)) for cam in self.cameras}
            finally:
                store.close()
            self.run_id = f"{actor_run_prefix(self.fleet_id, self.index)}{self.attempt}"
            cfg = self.cfg
            already = sum(len(v) for v in self._stored.values())
            if cfg.max_frames is not None and already:
                if already >= cfg.max_frames:
                    self.state = "done"
                    return self._result(None, already_done=True)
                cfg = cfg.model_copy(update={"max_frames": cfg.max_frames - already})
            runner = Runner(cfg, on_batch=self._count, install_signal_handlers=False, run_id=self.run_id,
                            on_readers=self._resume_readers)
            with self._lock:
                self._runner = runner
                if self._stop_reason is not None:
                    runner.stop(self._stop_reason)
            self.state = "running"
            log.info("fleet_attempt fleet=%s actor=w%d attempt=%d run_id=%s already_stored=%s", self.fleet_id, self.index,
                     self.attempt, self.run_id, {c: len(v) for c, v in self._stored.items()})
            summary = runner.run()
            self.state = "done"
            return self._result(summary.to_dict())
        except Exception as e:  # reported by the driver; the traceback is in this actor's log
            self.state = "failed"
            log.exception("fleet_actor_failed fleet=%s actor=w%d", self.fleet_id, self.index)
            return self._result(None, error=f"{type(e).__name__}: {e}")

    def progress(self) -> dict[str, Any]:
        """Where this attempt stands: node, pid, attempt, state, frames served (this attempt), fps, shadow coverage,
        frames passed over as already stored, metrics port."""
        runner = self._runner
        served = sum(self._served.values())
        elapsed = time.monotonic() - self._t_serving if self._t_serving is not None else 0.0
        coverage = None
        pair = getattr(runner, "pair", None)
        if pair is not None:
            try:
                coverage = pair.stats()["shadow"].get("coverage")
            except Exception:  # a stats call racing the pair's shutdown: no figure this time
                coverage = None
        return {**self._identity(), "state": self.state, "frames_served": served, "per_camera": dict(self._served),
                "fps": round(served / elapsed, 2) if elapsed > 0 else 0.0, "shadow_coverage": coverage,
                "already_stored": {c: len(v) for c, v in self._stored.items()},
                "metrics_port": getattr(runner, "metrics_port", None)}

    def stop(self, reason: str = "stopped") -> None:
        """Ask :meth:`run` to drain and end (also before it started)."""
        with self._lock:
            self._stop_reason = reason
            if self._runner is not None:
                self._runner.stop(reason)

    # -- internals ---------------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"actor": f"w{self.index}", "index": self.index, "cameras": list(self.cameras), "pid": self.pid,
                "node_ip": self.node_ip, "node_id": self.node_id, "attempt": self.attempt, "run_id": self.run_id}

    def _result(self, summary: dict[str, Any] | None, error: str | None = None, already_done: bool = False) -> dict[str, Any]:
        return {**self._identity(), "state": self.state, "summary": summary, "error": error, "already_done": already_done,
                "already_stored": {c: len(v) for c, v in self._stored.items()}}

    def _resume_readers(self, readers: list[Any]) -> None:
        """Replays continue where the store says (frame ids of the fleet run, committed seqs passed over)."""
        for r in readers:
            if not r.live:
                r.resume(self.fleet_id, self._stored.get(r.camera_id, frozenset()))

    def _count(self, served: Any) -> None:
        if self._t_serving is None:
            self._t_serving = time.monotonic()
        self._served.update(f.camera_id for f in served.batch.frames)


def _ray_context() -> tuple[str | None, str | None, bool]:
    """(node ip, node id, was this actor restarted) inside a Ray actor; (None, None, False) outside Ray."""
    try:
        import ray

        if not ray.is_initialized():
            return None, None, False
        import warnings

        ctx = ray.get_runtime_context()
        with warnings.catch_warnings():  # Ray's own property reads a deprecated one inside
            warnings.simplefilter("ignore")
            restarted = bool(ctx.was_current_actor_reconstructed)
        return ray.util.get_node_ip_address(), ctx.get_node_id(), restarted
    except Exception:  # not in a Ray worker
        return None, None, False


# --- the summary -------------------------------------------------------------------------------------------------------

@dataclass
class FleetSummary:
    """What a fleet run did (printed by ``shadowcam run --cluster``, written by ``--summary-json``).

    ``actors``: one entry per actor (node, pid, cameras, attempts, restarts, the last attempt's frames/fps/coverage,
    error); ``cameras``: per camera what the store holds for the whole fleet run, every attempt together (frames,
    distinct seqs, incumbent and shadow predictions, coverage); ``totals``: the fleet's sums.
    """

    fleet_id: str
    stop_reason: str
    started_at: float
    duration_s: float
    store_url: str
    actors: list[dict[str, Any]]
    cameras: dict[str, dict[str, Any]]
    totals: dict[str, Any]
    run_ids: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """The actors that ended with an error (after their restarts)."""
        return [a["actor"] for a in self.actors if a.get("error")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return path

    def format_table(self) -> str:
        t = self.totals
        cov = t.get("shadow_coverage")
        lines = [f"fleet {self.fleet_id}: {self.stop_reason} after {self.duration_s:.1f} s on {t.get('nodes', 0)} node(s); "
                 f"{len(self.actors)} actors, {t.get('restarts', 0)} restart(s); {t.get('frames_stored', 0)} frames stored, "
                 f"{t.get('throughput_fps', 0.0):.1f} frames/s, shadow coverage {'-' if cov is None else f'{cov:.3f}'}"]
        head = ["actor", "node", "pid", "cameras", "attempts", "served", "fps", "coverage", "state"]
        rows = []
        for a in self.actors:
            c = a.get("shadow_coverage")
            rows.append([a["actor"], str(a.get("node_ip") or "-"), str(a.get("pid") or "-"), ",".join(a.get("cameras", [])),
                         str(a.get("attempts", 1)), str(a.get("frames_served", 0)), f"{a.get('fps', 0.0):.1f}",
                         "-" if c is None else f"{c:.3f}", "failed: " + a["error"] if a.get("error") else str(a.get("state"))])
        lines.extend(_table(head, rows))
        head = ["camera", "frames", "seqs", "first", "last", "incumbent", "shadow", "coverage"]
        rows = [[cam, str(c["frames"]), str(c["distinct_seqs"]), str(c["first_seq"]), str(c["last_seq"]), str(c["incumbent"]),
                 str(c["shadow"]), f"{c['coverage']:.3f}"] for cam, c in self.cameras.items()]
        lines.extend(_table(head, rows))
        lines.append(f"store {self.store_url}: runs {', '.join(self.run_ids) or '-'}; evaluate them all with "
                     f"`shadowcam evaluate --db URL` (the runs of the newest model pair)")
        return "\n".join(lines)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = lambda cells: "  " + "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(cells, widths)))
    return [fmt(head)] + [fmt(r) for r in rows]


def summarize(fleet_id: str, stop_reason: str, started_at: float, duration_s: float, store_url: str,
              results: dict[int, dict[str, Any]], last_progress: dict[int, dict[str, Any]], plans: list[ActorPlan],
              counts: dict[str, dict[str, int]], run_ids: list[str], has_shadow: bool) -> FleetSummary:
    """The :class:`FleetSummary` from the actors' results (or, for an actor that never answered, its last progress)
    and the store's per-camera counts (pure)."""
    from pipeline.store import redact_url

    actors = []
    for p in plans:
        res = results.get(p.index) or {}
        prog = last_progress.get(p.index) or {}
        s = res.get("summary") or {}
        attempt = res.get("attempt", prog.get("attempt")) or 0
        attempts = len([r for r in run_ids if r.startswith(actor_run_prefix(fleet_id, p.index))]) or attempt + 1
        cov = (s.get("shadow") or {}).get("coverage") if has_shadow and s else prog.get("shadow_coverage")
        actors.append({
            "actor": f"w{p.index}", "cameras": list(p.cameras), "node_ip": res.get("node_ip", prog.get("node_ip")),
            "node_id": res.get("node_id", prog.get("node_id")),
            "pid": res.get("pid", prog.get("pid")), "attempts": attempts, "restarts": max(attempts - 1, attempt),
            "run_id": res.get("run_id", prog.get("run_id")), "frames_served": s.get("frames_served", prog.get("frames_served", 0)),
            "fps": s.get("throughput_fps", prog.get("fps", 0.0)), "shadow_coverage": cov,
            "already_stored": res.get("already_stored", prog.get("already_stored", {})),
            "stop_reason": s.get("stop_reason"), "state": res.get("state", prog.get("state", "unknown")),
            "error": res.get("error") or (None if res else "no result (actor lost)"),
        })
    cameras = {}
    for cam, c in counts.items():
        cameras[cam] = dict(c, coverage=round(c["shadow"] / c["incumbent"], 4) if c["incumbent"] else 0.0)
    inc = sum(c["incumbent"] for c in counts.values())
    sh = sum(c["shadow"] for c in counts.values())
    frames = sum(c["frames"] for c in counts.values())
    totals = {
        "actors": len(plans), "cameras": sum(len(p.cameras) for p in plans),
        "nodes": len({a["node_id"] for a in actors if a["node_id"]}),
        "restarts": sum(a["restarts"] for a in actors), "frames_stored": frames, "predictions_incumbent": inc,
        "predictions_shadow": sh, "shadow_coverage": round(sh / inc, 4) if inc and has_shadow else None,
        "throughput_fps": round(frames / duration_s, 2) if duration_s > 0 else 0.0, "failed_actors": [a["actor"] for a in actors if a["error"]],
    }
    return FleetSummary(fleet_id=fleet_id, stop_reason=stop_reason, started_at=started_at, duration_s=round(duration_s, 3),
                        store_url=redact_url(store_url), actors=actors, cameras=cameras, totals=totals, run_ids=run_ids)


# --- the driver -------------------------------------------------------------------------------------------------------

class FleetRunner:
    """Run one :class:`RunConfig` (with ``cluster:``) as a fleet of Ray actors; :meth:`run` returns the summary.

    Args:
        cfg: the resolved run config; ``cfg.cluster`` (default: a :class:`ClusterConfig`) says where and how.
        fleet_id: the fleet run's id (default: a new one).
        install_signal_handlers: SIGINT/SIGTERM ask every actor to drain (main thread only); a second one kills them.
        on_progress: called with the actors' progress answers (a list of dicts, one per actor that answered) every
            ``report_every_s``.
    """

    def __init__(self, cfg: RunConfig, fleet_id: str | None = None, install_signal_handlers: bool = True,
                 on_progress: Callable[[list[dict[str, Any]]], None] | None = None):
        from pipeline.runner import new_run_id

        if fleet_id is not None and not FLEET_ID.fullmatch(fleet_id):
            raise ConfigError(f"fleet id {fleet_id!r}: expected 1-40 letters, digits, '_' or '.' (it starts every run id of the fleet)")
        self.cfg = cfg
        self.cluster = cfg.cluster or ClusterConfig()
        self.fleet_id = fleet_id or new_run_id()
        self.install_signal_handlers = install_signal_handlers
        self.on_progress = on_progress
        self._stop_reason: str | None = None
        self._stop_requested = threading.Event()
        self._actors: list[Any] = []

    def stop(self, reason: str = "stopped") -> None:
        """Ask every actor to drain and end (thread-safe)."""
        if self._stop_reason is None:
            self._stop_reason = reason
        self._stop_requested.set()

    def run(self) -> FleetSummary:
        """Plan, start the actors, report their progress until all are done, and summarise from the store."""
        from pipeline.store import PredictionStore

        plans = plan_fleet(self.cfg, self.fleet_id)
        store = PredictionStore(self.cfg.store.url)  # creates/migrates the schema once, before any actor writes
        try:
            ray = _import_ray()
            started_here = self._connect(ray)
            try:
                t_start, t0 = time.time(), time.perf_counter()
                results, last = self._run_actors(ray, plans)
                duration = time.perf_counter() - t0
            finally:
                if started_here:
                    ray.shutdown()
            run_ids = store.runs_with_prefix(fleet_run_prefix(self.fleet_id))
            counts = store.camera_counts(fleet_run_prefix(self.fleet_id))
        finally:
            store.close()
        failed = [f"w{i}" for i, r in results.items() if r.get("error")] + [f"w{p.index}" for p in plans if p.index not in results]
        reason = self._stop_reason or (f"actor(s) {', '.join(failed)} failed" if failed else "sources finished")
        summary = summarize(self.fleet_id, reason, t_start, duration, self.cfg.store.url, results, last, plans, counts, run_ids,
                            has_shadow=self.cfg.shadow is not None)
        log.info("fleet_finished fleet=%s reason=%r frames=%d restarts=%d coverage=%s", self.fleet_id, reason,
                 summary.totals["frames_stored"], summary.totals["restarts"], summary.totals["shadow_coverage"])
        return summary

    # -- internals ---------------------------------------------------------------------------------------------------
    def _connect(self, ray: Any) -> bool:
        """Connect to the cluster unless this process already is; True when this call connected."""
        if ray.is_initialized():
            return False
        address = self.cluster.address
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=True, configure_logging=False)
        except ConnectionError as e:
            raise ConfigError(f"cluster.address {address or os.environ.get('RAY_ADDRESS') or '(local)'}: cannot connect to "
                              f"the Ray cluster ({e})") from None
        return True

    def _actor_options(self, ray: Any, plans: list[ActorPlan]) -> list[dict[str, Any]]:
        """Ray options per actor: resources (checked against the nodes), restarts, placement, runtime_env."""
        from pipeline.tracking import tracking_uri

        c = self.cluster
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        num_gpus = actor_gpus(c, [n.get("Resources", {}) for n in nodes], len(plans))
        env = {"MLFLOW_TRACKING_URI": tracking_uri(self.cfg.workdir), "MLFLOW_DISABLE_TELEMETRY": "true", **c.env}
        if not env["MLFLOW_TRACKING_URI"].startswith(("http://", "https://")) and any(
                m is not None and m.uri.startswith("models:/") for m in (self.cfg.incumbent, self.cfg.shadow)):
            log.warning("fleet_tracking_uri %s is not a tracking server: actors on other machines cannot resolve models:/ "
                        "URIs (run `mlflow server` and set MLFLOW_TRACKING_URI)", env["MLFLOW_TRACKING_URI"])
        spread = c.placement == "spread" and len(nodes) > 1
        out = []
        for p in plans:
            opts: dict[str, Any] = {
                "name": actor_name(self.fleet_id, p.index), "namespace": NAMESPACE, "num_cpus": c.num_cpus, "num_gpus": num_gpus,
                "max_restarts": c.max_restarts, "max_task_retries": c.max_task_retries, "max_concurrency": ACTOR_CONCURRENCY,
                "runtime_env": {"env_vars": env},
            }
            if spread:
                from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

                node = nodes[p.index % len(nodes)]["NodeID"]
                opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=True)
            out.append(opts)
        log.info("fleet_plan fleet=%s actors=%d nodes=%d num_cpus=%g num_gpus=%g placement=%s cameras=%s", self.fleet_id,
                 len(plans), len(nodes), c.num_cpus, num_gpus, "spread" if spread else "ray", [list(p.cameras) for p in plans])
        return out

    def _run_actors(self, ray: Any, plans: list[ActorPlan]) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
        """Start the actors, wait for their run() while reporting progress; returns (results, last progress)."""
        worker_cls = ray.remote(CameraWorker)
        level = logging.getLogger().level or logging.INFO
        self._actors = [worker_cls.options(**opts).remote(p.config, self.fleet_id, p.index, level)
                        for p, opts in zip(plans, self._actor_options(ray, plans))]
        pending = {a.run.remote(): p.index for a, p in zip(self._actors, plans)}
        results: dict[int, dict[str, Any]] = {}
        last: dict[int, dict[str, Any]] = {}
        stop_deadline: float | None = None
        next_report = time.monotonic() + self.cluster.report_every_s
        with self._signals(ray):
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    index = pending.pop(ref)
                    results[index] = self._result(ray, ref, index)
                if self._stop_requested.is_set() and stop_deadline is None:
                    for a in self._actors:
                        a.stop.remote(self._stop_reason or "stopped")
                    stop_deadline = time.monotonic() + STOP_WAIT_S
                if stop_deadline is not None and time.monotonic() > stop_deadline and pending:
                    log.error("fleet_stop_timeout fleet=%s: %d actor(s) still busy %.0f s after the stop request; killing them",
                              self.fleet_id, len(pending), STOP_WAIT_S)
                    for index in pending.values():
                        ray.kill(self._actors[index], no_restart=True)
                    stop_deadline = math.inf
                if time.monotonic() >= next_report and pending:
                    self._report(ray, plans, results, last)
                    next_report = time.monotonic() + self.cluster.report_every_s
        return results, last

    def _result(self, ray: Any, ref: Any, index: int) -> dict[str, Any]:
        try:
            res = ray.get(ref)
        except Exception as e:  # restarts exhausted (RayActorError) or the task itself failed
            log.error("fleet_actor_lost fleet=%s actor=w%d %s: %s", self.fleet_id, index, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return {"actor": f"w{index}", "index": index, "state": "failed", "summary": None,
                    "error": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"}
        if res.get("error"):
            log.error("fleet_actor_failed fleet=%s actor=w%d %s", self.fleet_id, index, res["error"])
        return res

    def _report(self, ray: Any, plans: list[ActorPlan], results: dict[int, dict[str, Any]], last: dict[int, dict[str, Any]]) -> None:
        """Ask the running actors for their progress and log the aggregate (``fleet_progress``)."""
        asked = {self._actors[p.index].progress.remote(): p.index for p in plans if p.index not in results}
        ready, _ = ray.wait(list(asked), num_returns=len(asked), timeout=PROGRESS_WAIT_S)
        answers = []
        for ref in ready:
            try:
                answers.append(ray.get(ref))
            except Exception:  # the actor died between the ask and the answer: it shows as not answering
                continue
        for a in answers:
            last[a["index"]] = a
        silent = len(asked) - len(answers)
        served = sum(a["frames_served"] for a in answers)
        fps = sum(a["fps"] for a in answers)
        covs = [a["shadow_coverage"] for a in answers if a["shadow_coverage"] is not None]
        restarts = sum((a.get("attempt") or 0) for a in answers)
        log.info("fleet_progress fleet=%s actors_running=%d not_answering=%d done=%d frames_served=%d fps=%.1f "
                 "shadow_coverage=%s restarts=%d", self.fleet_id, len(answers), silent, len(results), served, fps,
                 f"{min(covs):.3f}" if covs else "-", restarts)
        if self.on_progress is not None:
            try:
                self.on_progress(answers)
            except Exception:
                log.exception("fleet_on_progress_failed")

    @contextmanager
    def _signals(self, ray: Any) -> Iterator[None]:
        """SIGINT/SIGTERM: the first asks every actor to drain, a second kills them (main thread only)."""
        if not self.install_signal_handlers or threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, _frame: Any) -> None:
            name = signal.Signals(signum).name
            if self._stop_requested.is_set():
                for a in self._actors:
                    ray.kill(a, no_restart=True)
                signal.signal(signum, signal.SIG_DFL)
                raise KeyboardInterrupt
            log.warning("signal_received signal=%s: asking every actor to drain and stop (again to kill them)", name)
            self.stop(name)

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ShadowcamError("a fleet run (--cluster ray, cluster: in the config) needs Ray: pip install 'shadowcam[fleet]'") from None
    return ray
