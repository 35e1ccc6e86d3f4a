"""A store that holds a month: the retention policy, and what a prediction costs the store (bytes, write rate).

Retention (:class:`Retainer`, ``shadowcam store retain``) applies ``StoreConfig.retention``
(:class:`pipeline.config.RetentionConfig`) to a :class:`~pipeline.store.PredictionStore`:

* frames younger than ``full_days`` keep everything;
* older frames that were sampled for labelling, and a seeded reservoir of ``reservoir_per_camera_day`` frames per
  camera and day, keep their rows (frame, predictions with probabilities) indefinitely;
* every other old frame is folded into per-window aggregates (``window_aggregates`` table, one row per run, camera,
  model role and window: counts, the incumbent-vs-shadow confusion by predicted class, histograms of confidence and
  of the image statistics the drift check uses), and its frame and prediction rows are deleted.

A window is compacted in one transaction (aggregate rows written, full rows deleted), so an interrupted retention
leaves every window either untouched or fully compacted, and running it again does nothing new (idempotent).
Aggregated counts add up: for any run, ``frames kept + sum of aggregated frames`` is the number of frames written.

Capacity (:func:`store_size`, :func:`measure_store_writes`): what ``shadowcam bench store`` reports for the store
side: bytes per prediction (tables and their indexes) and the sustained write rate of several writer processes
writing batches as the runner's writer does (frames, incumbent + shadow predictions, ~1% samples per transaction).
"""

from __future__ import annotations

import hashlib
import logging
import math
import multiprocessing as mp
import queue
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.config import RetentionConfig
from pipeline.store import (
    IMAGE_STAT_COLUMNS,
    FrameRecord,
    PredictionStore,
    SampleRecord,
    WindowAggregate,
    WindowRows,
    decode_probs_many,
    normalize_url,
    predictions,
    redact_url,
)
from pipeline.types import Prediction, Role, make_frame_id

log = logging.getLogger(__name__)
DAY_S = 86400.0


# --- sketches: pure functions over one window's rows ------------------------------------------------------------------
#
# A "frames" sketch::
#
#     {"ts_min", "ts_max",
#      "image_stats": {stat: {"n", "sum", "sumsq", "min", "max",          # moments of the non-missing values
#                             "edges": [...], "hist": [...],              # len(edges) + 1 counts: below, between, above
#                             "lag1_n", "lag1_sum_xy"}}}                  # consecutive pairs (time order): lag-1 correlation
#
# A model sketch ("incumbent" / "shadow")::
#
#     {"classes": [...],                  # the run's class names (card order)
#      "class_counts": [...],             # predicted class counts, aligned with classes
#      "other_labels": {label: n},        # predicted labels outside classes ("unknown" served when degraded)
#      "degraded": {kind: n},
#      "bins": B, "confidence_hist": [B], "confidence_sum",
#      "prob_hist": [[B] per class], "prob_sum": [per class]},   # each class's probability: KS drift on the softmax
#      "agreement": [[C] x C], "n_paired", "n_agree"}   # shadow rows only: rows = incumbent's class, columns = shadow's
#
# Sketches of the same key merge by adding (:func:`merge_sketch`), so a window compacted twice (frames written into it
# late) still adds up.

# Fixed histogram edges per image statistic (pipeline.imagestats): linear where the range is bounded, geometric for
# the Laplacian variance. Values outside land in the first / last (open) bin.
IMAGE_STAT_EDGES: dict[str, list[float]] = {
    "brightness": np.linspace(0.0, 256.0, 65).tolist(),
    "contrast": np.linspace(0.0, 128.0, 65).tolist(),
    "sharpness": [0.0, *np.geomspace(1.0, 1e6, 64).round(4).tolist()],
    "noise": np.linspace(0.0, 32.0, 65).tolist(),
}


def stat_sketch(x: np.ndarray, edges: Sequence[float]) -> dict[str, Any]:
    """Moments, histogram and lag-1 sums of one image statistic over a window (``x`` in time order, NaN = missing)."""
    x = np.asarray(x, dtype=np.float64)
    ok = np.isfinite(x)
    v = x[ok]
    pair = ok[:-1] & ok[1:]
    hist = np.bincount(np.searchsorted(np.asarray(edges), v, side="right"), minlength=len(edges) + 1)
    return {
        "n": int(v.size), "sum": float(v.sum()), "sumsq": float((v * v).sum()),
        "min": float(v.min()) if v.size else None, "max": float(v.max()) if v.size else None,
        "edges": [float(e) for e in edges], "hist": hist.tolist(),
        "lag1_n": int(pair.sum()), "lag1_sum_xy": float((x[:-1][pair] * x[1:][pair]).sum()),
    }


def frames_sketch(ts: np.ndarray, stats: dict[str, np.ndarray]) -> dict[str, Any]:
    """The frame-level sketch of a window: time range and one :func:`stat_sketch` per image statistic."""
    ts = np.asarray(ts, dtype=np.float64)
    return {
        "ts_min": float(ts.min()) if ts.size else None, "ts_max": float(ts.max()) if ts.size else None,
        "image_stats": {k: stat_sketch(stats[k], IMAGE_STAT_EDGES[k]) for k in IMAGE_STAT_COLUMNS if k in stats},
    }


def _hist01(values: np.ndarray, bins: int) -> np.ndarray:
    idx = np.clip((np.asarray(values, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins)


def model_sketch(probs: np.ndarray, labels: Sequence[str], degraded: Sequence[str | None], classes: Sequence[str],
                 bins: int) -> dict[str, Any]:
    """One model's sketch of a window: predicted-class counts, degraded answers, histograms (``bins`` over [0, 1])
    of its confidence and of each class's probability, and their sums."""
    probs = np.asarray(probs, dtype=np.float64).reshape(len(labels), -1)
    index = {c: i for i, c in enumerate(classes)}
    counts = np.zeros(len(classes), dtype=np.int64)
    other: dict[str, int] = {}
    for lab in labels:
        i = index.get(lab)
        if i is None:
            other[lab] = other.get(lab, 0) + 1
        else:
            counts[i] += 1
    deg: dict[str, int] = {}
    for d in degraded:
        if d:
            deg[d] = deg.get(d, 0) + 1
    conf = probs.max(axis=1) if probs.size else np.empty(0)
    return {
        "classes": list(classes), "class_counts": counts.tolist(), "other_labels": other, "degraded": deg,
        "bins": int(bins), "confidence_hist": _hist01(conf, bins).tolist(), "confidence_sum": float(conf.sum()),
        "prob_hist": [_hist01(probs[:, c], bins).tolist() for c in range(probs.shape[1])],
        "prob_sum": probs.sum(axis=0).tolist(),
    }


def agreement_sketch(incumbent: Sequence[str], shadow: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Incumbent-vs-shadow confusion by predicted class over paired frames (rows: incumbent's class, columns:
    shadow's; labels outside ``classes`` count in ``n_paired`` / ``n_agree`` only)."""
    index = {c: i for i, c in enumerate(classes)}
    m = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for a, b in zip(incumbent, shadow):
        if a in index and b in index:
            m[index[a], index[b]] += 1
    return {"agreement": m.tolist(), "n_paired": len(incumbent), "n_agree": int(sum(a == b for a, b in zip(incumbent, shadow)))}


def merge_sketch(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Two sketches of the same key as one: counts, histograms and sums add; min / max / time range combine.
    Histograms must share their edges / bins (they do: fixed per statistic, ``bins`` from the config), else
    :class:`ValueError`."""
    out: dict[str, Any] = {}
    for k in a.keys() | b.keys():
        x, y = a.get(k), b.get(k)
        if x is None or y is None:
            out[k] = y if x is None else x
        elif k in ("min", "ts_min"):
            out[k] = min(x, y)
        elif k in ("max", "ts_max"):
            out[k] = max(x, y)
        elif k in ("edges", "classes", "bins"):
            if x != y:
                raise ValueError(f"cannot merge sketches with different {k}: {x!r} vs {y!r}")
            out[k] = x
        elif isinstance(x, dict):
            out[k] = merge_sketch(x, y)
        elif isinstance(x, list):
            xa, ya = np.asarray(x), np.asarray(y)
            if xa.shape != ya.shape:
                raise ValueError(f"cannot merge sketches: {k} has shape {xa.shape} vs {ya.shape}")
            out[k] = (xa + ya).tolist()
        else:
            out[k] = x + y
    return out


def summarize_window(window: WindowRows, existing: dict[tuple, dict], classes: Sequence[str], bins: int) -> list[dict]:
    """The aggregate rows of one compacted window: one ``frames`` row and one per (role, model), each merged with
    the row already stored under its key (``existing``: ``(role, model_name, model_version) -> sketch`` with
    ``n_frames`` / ``n_predictions``)."""
    fr = window.frames
    n = len(fr)
    cols = list(zip(*fr)) if fr else [()] * (3 + len(IMAGE_STAT_COLUMNS))
    ts = np.asarray(cols[2], dtype=np.float64)
    stats = {k: np.array([np.nan if v is None else v for v in cols[3 + i]], dtype=np.float64)
             for i, k in enumerate(IMAGE_STAT_COLUMNS)}
    rows = [{"role": "frames", "model_name": "", "model_version": "", "n_frames": n, "n_predictions": 0,
             "sketch": frames_sketch(ts, stats)}]
    groups: dict[tuple[str, str, str], list[tuple]] = {}
    for r in window.predictions:
        groups.setdefault((r[1], r[2], r[3] or ""), []).append(r)
    by_frame: dict[str, dict[str, str]] = {}
    for (role, _, _), preds in groups.items():
        for r in preds:
            by_frame.setdefault(r[0], {})[role] = r[5]
    for (role, name, version), preds in sorted(groups.items()):
        n_cls = len(preds[0][4]) // 2 if isinstance(preds[0][4], (bytes, bytearray, memoryview)) else len(classes)
        probs = decode_probs_many([r[4] for r in preds], n_cls)
        sk = model_sketch(probs, [r[5] for r in preds], [r[6] for r in preds], classes, bins)
        if role == "shadow":
            pairs = [(d["incumbent"], d["shadow"]) for d in by_frame.values() if "incumbent" in d and "shadow" in d]
            sk |= agreement_sketch([a for a, _ in pairs], [b for _, b in pairs], classes)
        rows.append({"role": role, "model_name": name, "model_version": version, "n_frames": n, "n_predictions": len(preds),
                     "sketch": sk})
    for row in rows:
        old = existing.get((row["role"], row["model_name"], row["model_version"]))
        if old is not None:
            old = dict(old)
            row["n_frames"] += int(old.pop("n_frames"))
            row["n_predictions"] += int(old.pop("n_predictions"))
            row["sketch"] = merge_sketch(old, row["sketch"])
    return rows


def sketch_arrays(agg: WindowAggregate) -> dict[str, Any]:
    """An aggregate's sketch with its lists as numpy arrays (int64 counts, float64 sums), for the evaluator."""
    def conv(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list) and v and not isinstance(v[0], str):
            a = np.asarray(v)
            return a.astype(np.int64) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float64)
        return v
    return conv(agg.sketch)


# --- the reservoir -----------------------------------------------------------------------------------------------------

def _salt(seed: int, run_id: str, camera_id: str) -> np.uint64:
    d = hashlib.blake2b(f"{seed}|{run_id}|{camera_id}".encode(), digest_size=8).digest()
    return np.uint64(int.from_bytes(d, "little"))


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters consecutive integers (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def reservoir_seqs(seqs: np.ndarray, k: int, seed: int, run_id: str, camera_id: str) -> set[int]:
    """The ``k`` frames (by ``seq``) of a camera-day kept in full: those with the smallest seeded hash. A uniform
    sample without replacement that depends on nothing but the seed and the frames: compacting part of the day
    deletes none of them, so a later retention of the same day finds the same ``k`` (bottom-k is stable)."""
    seqs = np.unique(np.asarray(seqs, dtype=np.int64))
    if k <= 0 or seqs.size == 0:
        return set()
    if seqs.size <= k:
        return set(seqs.tolist())
    keys = _splitmix64(seqs.astype(np.uint64) ^ _salt(seed, run_id, camera_id))
    return set(seqs[np.argpartition(keys, k - 1)[:k]].tolist())


# --- the policy ----------------------------------------------------------------------------------------------------------

@dataclass
class RetentionReport:
    """What one retention pass did (or, with ``dry_run``, would do)."""

    cutoff: float  # frames older than this (Unix seconds, aligned down to a window) were considered
    dry_run: bool
    runs: int = 0
    windows: int = 0  # windows compacted (some frames aggregated)
    frames_kept: int = 0  # old frames kept in full in the windows looked at (sampled, labelled, reservoir)
    frames_aggregated: int = 0  # old frames folded into aggregates and deleted
    predictions_deleted: int = 0
    aggregate_rows: int = 0  # aggregate rows written (inserted or merged)
    per_run: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, run_id: str, kept: int, aggregated: int, preds: int, agg_rows: int) -> None:
        self.frames_kept += kept
        self.frames_aggregated += aggregated
        self.predictions_deleted += preds
        self.aggregate_rows += agg_rows
        self.windows += aggregated > 0
        r = self.per_run.setdefault(run_id, {"frames_kept": 0, "frames_aggregated": 0, "predictions_deleted": 0, "windows": 0})
        r["frames_kept"] += kept
        r["frames_aggregated"] += aggregated
        r["predictions_deleted"] += preds
        r["windows"] += aggregated > 0

    def summary(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.cutoff))
        verb = "would aggregate" if self.dry_run else "aggregated"
        return (f"retention (frames before {when}){' [dry run: nothing written]' if self.dry_run else ''}: {self.runs} runs, "
                f"{self.windows} windows; kept {self.frames_kept} old frames in full (sampled, labelled, reservoir); "
                f"{verb} {self.frames_aggregated} frames and {self.predictions_deleted} predictions into "
                f"{self.aggregate_rows} window aggregate rows{'' if self.dry_run else ' and deleted their rows'}")


class Retainer:
    """Applies a :class:`~pipeline.config.RetentionConfig` to a store (see the module docstring).

    ``clock`` gives "now" (Unix seconds; tests pass a fixed one). Each window is one transaction
    (:meth:`PredictionStore.compact_window`); running :meth:`apply` again finds nothing new to do.
    """

    def __init__(self, store: PredictionStore, config: RetentionConfig, clock: Callable[[], float] = time.time,
                 progress: bool = True):
        self.store = store
        self.config = config
        self.clock = clock
        self.progress = progress

    def apply(self, dry_run: bool = False) -> RetentionReport:
        from tqdm import tqdm

        cfg = self.config
        w = float(cfg.window)
        cutoff = math.floor((self.clock() - cfg.full_days * DAY_S) / w) * w
        report = RetentionReport(cutoff=cutoff, dry_run=dry_run)
        runs = self.store.retention_runs()
        bar = tqdm(total=len(runs), desc="retention", unit="run", disable=None if self.progress else True)
        for run_id, classes in runs:
            report.runs += 1
            for camera in self.store.camera_ids([run_id]):
                self._camera(run_id, camera, classes, cutoff, report, dry_run)
            bar.update(1)
            bar.set_postfix(aggregated=report.frames_aggregated)
        bar.close()
        log.info("store_retention dry_run=%s cutoff=%.0f runs=%d windows=%d kept=%d aggregated=%d predictions_deleted=%d",
                 dry_run, cutoff, report.runs, report.windows, report.frames_kept, report.frames_aggregated,
                 report.predictions_deleted)
        return report

    def _camera(self, run_id: str, camera: str, classes: list[str], cutoff: float, report: RetentionReport, dry_run: bool) -> None:
        """Compact the camera's old windows, one UTC day at a time (the reservoir is drawn per day)."""
        cfg, w = self.config, float(self.config.window)
        summarize = lambda rows, existing: summarize_window(rows, existing, classes, cfg.confidence_bins)
        t = self.store.first_frame_ts(run_id, camera, -math.inf, cutoff)
        while t is not None:
            day0 = math.floor(t / DAY_S) * DAY_S
            day1 = day0 + DAY_S
            seqs, ts = self.store.frame_seqs(run_id, camera, day0, day1)
            keep = reservoir_seqs(seqs, cfg.reservoir_per_camera_day, cfg.seed, run_id, camera)
            kept = keep | self.store.referenced_seqs(run_id, camera, day0, min(day1, cutoff))
            old = ts < cutoff
            dirty = old & ~np.isin(seqs, np.fromiter(kept, dtype=np.int64, count=len(kept)))
            aggregated = 0
            for w0 in np.unique(np.floor(ts[dirty] / w) * w).tolist():  # only windows with something to compact
                _, n_agg, n_pred, n_rows = self.store.compact_window(run_id, camera, w0, w0 + w, keep, summarize, dry_run=dry_run)
                report.add(run_id, 0, n_agg, n_pred, n_rows)
                aggregated += n_agg
            report.add(run_id, int(old.sum()) - aggregated, 0, 0, 0)
            t = self.store.first_frame_ts(run_id, camera, day1, cutoff)


def retain(url: str, config: RetentionConfig, dry_run: bool = False, clock: Callable[[], float] = time.time,
           progress: bool = True) -> RetentionReport:
    """Open the store at ``url`` and apply ``config`` (what ``shadowcam store retain`` calls)."""
    store = PredictionStore(url, must_exist=True)
    try:
        return Retainer(store, config, clock=clock, progress=progress).apply(dry_run=dry_run)
    finally:
        store.close()


# --- capacity: bytes per prediction and write rate ---------------------------------------------------------------

BENCH_CLASSES = ("box", "bag", "pallet", "person", "empty")
BENCH_INCUMBENT = "conveyor-resnet18:3"
BENCH_SHADOW = "conveyor-mobilenetv3:4"
# the tables that grow with the stream of predictions (bytes_per_prediction counts them, with their indexes)
DATA_TABLES = ("frames", "predictions", "samples", "labels")


def store_size(url: str) -> dict[str, Any]:
    """Bytes the store uses, per table (rows, indexes and, on PostgreSQL, TOAST), and per stored prediction.

    Returns ``{"backend", "tables": {name: bytes}, "total_bytes", "n_predictions", "bytes_per_prediction",
    "prediction_table_bytes_per_prediction"}``: ``bytes_per_prediction`` is the size of :data:`DATA_TABLES` (the
    tables that grow with the stream) over the number of stored predictions; ``total_bytes`` counts every table
    (on SQLite: the database file's pages after a WAL checkpoint, free pages included).
    """
    st = PredictionStore(url, must_exist=True)
    try:
        tables = st.table_sizes()
        n_pred = st.count(predictions)
        backend = st.engine.dialect.name
    finally:
        st.close()
    total = tables.pop("*file", None) or sum(tables.values())
    data = sum(tables.get(t, 0) for t in DATA_TABLES)
    return {
        "backend": backend, "tables": dict(sorted(tables.items())), "total_bytes": total, "n_predictions": n_pred,
        "bytes_per_prediction": data / n_pred if n_pred else float("nan"),
        "prediction_table_bytes_per_prediction": tables.get("predictions", 0) / n_pred if n_pred else float("nan"),
    }


def vacuum(url: str) -> None:
    """:meth:`PredictionStore.vacuum` on the store at ``url``."""
    st = PredictionStore(url, must_exist=True)
    try:
        st.vacuum()
    finally:
        st.close()


def synthetic_batches(
    n_frames: int, batch: int, run_id: str, cameras: int = 4, sample_rate: float = 0.01, seed: int = 0,
    t0: float = 1.7e9, fps: float = 30.0,
) -> Iterator[tuple[list[FrameRecord], list[Prediction], list[SampleRecord]]]:
    """Realistic write batches of one runner: ``batch`` frames per transaction spread over ``cameras`` cameras,
    each frame with image statistics, an incumbent and a shadow prediction over 5 classes, and ~``sample_rate``
    of the frames sampled for labelling."""
    rng = np.random.default_rng(seed)
    n_cls = len(BENCH_CLASSES)
    cams = [f"dock-{i:02d}" for i in range(cameras)]
    for start in range(0, n_frames, batch):
        idx = np.arange(start, min(start + batch, n_frames))
        n = len(idx)
        probs = rng.dirichlet(np.full(n_cls, 0.3), size=(2, n)).astype(np.float32)
        stats = rng.normal([120.0, 40.0, 300.0, 2.0], [10.0, 5.0, 50.0, 0.3], size=(n, 4))
        recs, preds, smp = [], [], []
        for j, i in enumerate(idx):
            cam, seq = cams[i % cameras], int(i // cameras)
            fid = make_frame_id(run_id, cam, seq)
            ts = t0 + seq / fps
            recs.append(FrameRecord(fid, run_id, cam, seq, ts, f"rtsp://10.0.0.{i % cameras}/stream#{seq}", 224, 224,
                                    *map(float, stats[j])))
            for r, (role, model) in enumerate(((Role.INCUMBENT, BENCH_INCUMBENT), (Role.SHADOW, BENCH_SHADOW))):
                p = probs[r, j]
                preds.append(Prediction(fid, cam, role, model, p, BENCH_CLASSES[int(p.argmax())], latency_ms=4.2))
            if rng.random() < sample_rate:
                smp.append(SampleRecord(fid, cam, "uniform", sample_rate, f"samples/{cam}/{seq}.jpg", ts))
        yield recs, preds, smp


def _writer_proc(url: str, n_frames: int, batch: int, seed: int, barrier: Any, out: Any) -> None:
    try:
        run_id = uuid.uuid4().hex[:12]
        batches = list(synthetic_batches(n_frames, batch, run_id, seed=seed))
        st = PredictionStore(url)
        st.begin_run(run_id, BENCH_INCUMBENT, BENCH_SHADOW, BENCH_CLASSES, {"bench": "store writes"})
        with st.engine.connect():  # open the pooled connection before the clock starts
            pass
        barrier.wait()
        t0 = time.perf_counter()
        n_pred = 0
        for recs, preds, smp in batches:
            st.write_batch(recs, preds, (), smp)
            n_pred += len(preds)
        t1 = time.perf_counter()
        st.close()
        out.put((seed, t0, t1, n_pred, None))
    except Exception as e:  # noqa: BLE001  (any failure is reported by the parent, which raises it)
        out.put((seed, 0.0, 0.0, 0, f"{e.__class__.__name__}: {e}"))
        barrier.abort()


def measure_store_writes(url: str, n_predictions: int, writers: int = 1, batch: int = 256) -> dict[str, Any]:
    """Sustained write rate of ``writers`` processes into the store at ``url``, each writing
    ``n_predictions / writers`` predictions through :meth:`PredictionStore.write_batch` in transactions of
    ``batch`` frames (incumbent + shadow prediction per frame, image statistics, ~1% samples), as the runner's
    writer does. The batches are built before the clock starts (about 0.6 KB of memory a prediction, in the writer
    processes); the rate is total predictions over the time from the common start to the last writer's last commit.
    Each call adds new runs (random run ids) to the store: a PostgreSQL database can be reused across calls.

    Returns ``{"url", "writers", "batch_frames", "n_predictions", "seconds", "predictions_per_s",
    "frames_per_s", "per_writer_predictions_per_s"}``.
    """
    if writers < 1 or batch < 1 or n_predictions < 2 * writers:
        raise ValueError(f"need writers >= 1, batch >= 1 and n_predictions >= 2 * writers; got {writers}, {batch}, {n_predictions}")
    PredictionStore(url).close()  # create / migrate once, before the writers race
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(writers), ctx.Queue()
    n_frames = n_predictions // (2 * writers)
    procs = [ctx.Process(target=_writer_proc, args=(url, n_frames, batch, 1000 + w, barrier, out), daemon=True)
             for w in range(writers)]
    for p in procs:
        p.start()
    results = []
    while len(results) < writers:
        try:
            results.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead and len(results) < writers and out.empty():
                barrier.abort()
                raise RuntimeError(f"store write benchmark: a writer process died (exit code {dead[0].exitcode})") from None
    for p in procs:
        p.join(timeout=60)
    errors = [r[4] for r in results if r[4]]
    if errors:
        raise RuntimeError(f"store write benchmark failed on {normalize_url(url).split('://')[0]}: {errors[0]}")
    start, end = min(r[1] for r in results), max(r[2] for r in results)
    total = sum(r[3] for r in results)
    secs = end - start
    return {
        "url": redact_url(normalize_url(url)), "writers": writers, "batch_frames": batch, "n_predictions": total, "seconds": secs,
        "predictions_per_s": total / secs, "frames_per_s": total / 2 / secs,
        "per_writer_predictions_per_s": [r[3] / (r[2] - r[1]) for r in sorted(results)],
    }
