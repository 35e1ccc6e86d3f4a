"""The store at scale: fill a store with a realistic synthetic stream in bulk, and measure what a big store costs.

``shadowcam bench store`` (:mod:`pipeline.commands.bench`) calls :func:`run_store_bench`: for each size it fills a
fresh store (:func:`fill_store`), runs ``shadowcam evaluate`` on it as a subprocess (wall time and the child's peak
resident memory), measures the bytes per prediction and, where :mod:`pipeline.retention` offers it, the sustained
write rate; then :func:`render_markdown` writes ``docs/scale.md`` (generated: machine, date and command included).

Besides the sizes, the bench measures (:func:`measure_bytes_before_after`) the bytes per prediction of the schema-v2
format (probabilities as JSON text, the old indexes: a frozen, clearly legacy copy of those tables lives here, used for
that measurement only) against today's, on the same rows, on SQLite and PostgreSQL; and the write rate of 1 and 4
writer processes into SQLite and PostgreSQL. When PostgreSQL is installed and no ``--write-db`` is given, it starts a
throw-away server itself (:class:`pipeline.pgserver.ThrowawayPostgres`: durable default settings, 127.0.0.1 only) and
stops it at the end.

What a filled store holds (:class:`FillSpec`), so the figures mean something:

* ``n_predictions / 2`` frames, round-robin over ``cameras`` cameras (frame ids ``<run>:<camera>:<seq>`` as the
  runner makes them), ``fps`` frames per second per camera, with the four image statistics (per-camera levels plus
  noise);
* every frame has an incumbent prediction (``inc:1``) and, on ``shadow_coverage`` of them, a shadow prediction
  (``sh:2``), over five classes; the models are right with probability ``incumbent_accuracy`` /
  ``shadow_accuracy``, confidences drawn higher when right; ``degraded_share`` of the incumbent's answers are stale;
* ``label_share`` of the *predictions* get a label (1% of 10M predictions = 100k labels): that many frames of each
  chunk are drawn at random without replacement (``samples`` rows with inclusion probability = the sampled share of
  frames) and labelled with the truth by one annotator.

The fill writes the store's own tables with its probability codec (:func:`pipeline.store.encode_probs`, vectorised),
by plain DB-API ``executemany`` in one transaction per chunk, with SQLite's synchronous writes off for the fill only:
minutes for 10M predictions, not hours.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import sqlalchemy as sa
from tqdm import tqdm

from pipeline import columnar
from pipeline import store as store_mod
from pipeline.config import RunConfig
from pipeline.store import PredictionStore
from pipeline.types import ConfigError

CLASSES: tuple[str, ...] = ("parcel", "parcel_damaged", "label_missing", "foreign_object", "empty_belt")
CLASS_MIX: tuple[float, ...] = (0.55, 0.1, 0.1, 0.05, 0.2)
RUN_ID = "scale"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MODELS = {"incumbent": ("inc", "1"), "shadow": ("sh", "2")}


@dataclass(frozen=True)
class FillSpec:
    """What :func:`fill_store` writes (see the module docstring)."""

    n_predictions: int
    cameras: int = 50
    fps: float = 1.0
    label_share: float = 0.01
    shadow_coverage: float = 0.995
    degraded_share: float = 0.001
    incumbent_accuracy: float = 0.92
    shadow_accuracy: float = 0.94
    seed: int = 0
    chunk: int = 50_000  # frames per transaction

    def __post_init__(self) -> None:
        if self.n_predictions < 2:
            raise ConfigError(f"n_predictions must be >= 2, got {self.n_predictions}")
        if self.cameras < 1:
            raise ConfigError(f"cameras must be >= 1, got {self.cameras}")
        if not 0 < self.label_share <= 0.5:
            raise ConfigError(f"label_share must be in (0, 0.5], got {self.label_share}")

    @property
    def n_frames(self) -> int:
        return self.n_predictions // 2

    @property
    def sample_rate(self) -> float:
        """Share of frames sampled (and labelled): labels = ``label_share`` x predictions."""
        return min(1.0, self.label_share * self.n_predictions / self.n_frames)


@dataclass
class FillStats:
    frames: int = 0
    predictions: int = 0
    samples: int = 0
    labels: int = 0
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.predictions / self.seconds if self.seconds > 0 else float("nan")


def _probs_encoder() -> Callable[[np.ndarray], list]:
    """The store's probability codec (:func:`pipeline.store.encode_probs`) over an (n, C) float32 matrix -> n stored
    values, vectorised: one ``astype`` to the codec's dtype and a slice of bytes per row (checked against the codec)."""
    def encode(m: np.ndarray) -> list:
        if m.shape[0] == 0:
            return []
        blob = np.ascontiguousarray(m.astype(store_mod.PROBS_DTYPE)).tobytes()
        step = len(blob) // m.shape[0]
        out = [blob[i:i + step] for i in range(0, len(blob), step)]
        if out[0] != store_mod.encode_probs(m[0]):
            raise RuntimeError("pipeline.scale: the vectorised probability encoding differs from pipeline.store.encode_probs")
        return out

    return encode


FRAME_COLS = ("frame_id", "run_id", "camera_id", "seq", "ts", "source_ref", "width", "height", "brightness", "contrast", "sharpness", "noise")
PRED_COLS = ("frame_id", "camera_id", "role", "model_name", "model_version", "probs", "label", "confidence", "latency_ms", "degraded", "ts")
SAMPLE_COLS = ("frame_id", "camera_id", "strategy", "inclusion_prob", "image_path", "sampled_at", "double_label", "status")
LABEL_COLS = ("frame_id", "label", "annotator", "source", "ts")


def _chunk_rows(spec: FillSpec, start: int, stop: int, rng: np.random.Generator, encode: Callable[[np.ndarray], list]) -> dict[str, list]:
    """The rows of frames ``start .. stop-1`` as tuples in the column orders above: frames, predictions, samples, labels."""
    C = len(CLASSES)
    idx = np.arange(start, stop)
    n = idx.size
    cam = idx % spec.cameras
    seq = (idx // spec.cameras).tolist()
    ts = T0 + idx // spec.cameras / spec.fps + cam * (1.0 / spec.fps / spec.cameras)
    truth = rng.choice(C, size=n, p=CLASS_MIX)
    bright = 100 + (cam % 7) * 6.0 + rng.normal(0, 5, n)
    contrast = 40 + (cam % 5) + rng.normal(0, 2, n)
    sharp = 200 + rng.normal(0, 20, n)
    noise = 2 + rng.gamma(2.0, 0.3, n)
    cams = [f"cam{c:03d}" for c in cam.tolist()]
    fids = [f"{RUN_ID}:{c}:{s}" for c, s in zip(cams, seq)]
    tsl = ts.tolist()
    frames = list(zip(fids, [RUN_ID] * n, cams, seq, tsl, [f"rtsp://{c}#{s}" for c, s in zip(cams, seq)], [1920] * n, [1080] * n,
                      bright.tolist(), contrast.tolist(), sharp.tolist(), noise.tolist()))
    preds: list[tuple] = []
    rows = np.arange(n)
    for role, acc in (("incumbent", spec.incumbent_accuracy), ("shadow", spec.shadow_accuracy)):
        right = rng.random(n) < acc
        pred = np.where(right, truth, (truth + rng.integers(1, C, n)) % C)
        conf = np.where(right, rng.beta(8, 1.5, n), rng.beta(3, 2, n)) * (1 - 1 / C) + 1 / C
        rest = rng.dirichlet(np.ones(C - 1), n) * (1 - conf)[:, None]
        probs = np.empty((n, C), np.float32)
        probs[rows, pred] = conf
        for j in range(C - 1):  # the other classes share the rest of the mass
            probs[rows, (pred + 1 + j) % C] = rest[:, j]
        keep = np.ones(n, bool) if role == "incumbent" else rng.random(n) < spec.shadow_coverage
        degraded = (rng.random(n) < spec.degraded_share) if role == "incumbent" else np.zeros(n, bool)
        name, version = MODELS[role]
        k = np.flatnonzero(keep)
        enc = encode(probs[k])
        conf_k = probs[k, pred[k]].astype(np.float64).tolist()
        preds += [(fids[i], cams[i], role, name, version, e, CLASSES[p], c, 4.0, "stale" if d else None, tsl[i] + 0.05)
                  for i, e, p, c, d in zip(k.tolist(), enc, pred[k].tolist(), conf_k, degraded[k].tolist())]
    # a simple random sample of the chunk's frames (inclusion probability = the rate; labels = label_share x predictions)
    sampled = np.sort(rng.choice(n, size=min(n, int(round(n * spec.sample_rate))), replace=False)).tolist()
    samples = [(fids[i], cams[i], "uniform", spec.sample_rate, f"samples/{fids[i].replace(':', '_')}.jpg", tsl[i], False, "labeled")
               for i in sampled]
    labels = [(fids[i], CLASSES[truth[i]], "ann1", "simulated", tsl[i] + 3600.0) for i in sampled]
    return {"frames": frames, "predictions": preds, "samples": samples, "labels": labels}


def _insert_sql(conn: sa.Connection, table: str, cols: Sequence[str]) -> str:
    style = conn.dialect.paramstyle
    marks = ", ".join("?" if style == "qmark" else "%s" for _ in cols)
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"


def _write_chunks(conn: Any, spec: FillSpec, rng: np.random.Generator, encode: Callable[[np.ndarray], Any],
                  sqls: dict[str, str], stats: FillStats, bar: Any) -> None:
    """Write ``spec``'s rows chunk by chunk (one transaction each) through ``sqls`` (table -> INSERT), with
    ``encode`` for the probabilities; counts into ``stats`` and ``bar``. Plain DB-API executemany: SQLAlchemy's
    per-row work would double the time."""
    for start in range(0, spec.n_frames, spec.chunk):
        stop = min(spec.n_frames, start + spec.chunk)
        rows = _chunk_rows(spec, start, stop, rng, encode)
        with conn.begin():
            for t, sql in sqls.items():
                if rows[t]:
                    conn.exec_driver_sql(sql, rows[t])
        stats.frames += len(rows["frames"])
        stats.predictions += len(rows["predictions"])
        stats.samples += len(rows["samples"])
        stats.labels += len(rows["labels"])
        bar.update(2 * (stop - start))


def fill_store(url: str, spec: FillSpec, progress: bool = True) -> FillStats:
    """Write ``spec`` into the (new, empty) store at ``url``; returns what was written and how long it took."""
    store = PredictionStore(url)
    try:
        if store.count(store_mod.frames) or store.count(store_mod.predictions):
            raise ConfigError(f"store {store.url} is not empty: `bench store` fills a fresh store (remove it or pass another --db)")
        cfg = RunConfig().model_dump(mode="json")
        cfg["sampling"].update(strategy="uniform", rate=spec.sample_rate)
        inc, sh = (f"{n}:{v}" for n, v in MODELS.values())
        store.begin_run(RUN_ID, inc, sh, list(CLASSES), cfg)
        rng = np.random.default_rng(spec.seed)
        encode = _probs_encoder()
        stats = FillStats()
        t0 = time.perf_counter()
        sqlite = store.url.startswith("sqlite")
        tables = {"frames": FRAME_COLS, "predictions": PRED_COLS, "samples": SAMPLE_COLS, "labels": LABEL_COLS}
        with store.engine.connect() as conn:
            sqls = {t: _insert_sql(conn, t, cols) for t, cols in tables.items()}
        with tqdm(total=spec.n_frames * 2, unit="pred", unit_scale=True, desc="filling store", disable=not progress) as bar:
            with store.engine.connect() as conn:
                if sqlite:
                    conn.exec_driver_sql("PRAGMA synchronous=OFF")
                    conn.commit()
                _write_chunks(conn, spec, rng, encode, sqls, stats, bar)
                if sqlite:
                    conn.exec_driver_sql("PRAGMA synchronous=FULL")
                    conn.commit()
        store.end_run(RUN_ID, {})
        stats.seconds = time.perf_counter() - t0
        return stats
    finally:
        store.close()


# --------------------------------------------------------------------------------------------------------------------
# Bytes per prediction before / after: the schema-v2 store (legacy, frozen here for this measurement only)
# --------------------------------------------------------------------------------------------------------------------
# The data tables as the store created them at schema version 2 (git ec79e33:pipeline/store.py; the same tables
# tests/pipeline/test_store.py freezes to test the migration): probabilities as JSON text, single-column indexes on
# frames.run_id/camera_id/ts and predictions.frame_id. Used ONLY by :func:`measure_bytes_before_after`; nothing
# writes this format any more (opening such a store migrates it).
LEGACY_V2_METADATA = sa.MetaData()
LEGACY_V2_FRAMES = sa.Table(
    "frames", LEGACY_V2_METADATA, sa.Column("frame_id", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True), sa.Column("camera_id", sa.String(128), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False), sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("source_ref", sa.Text, nullable=False, default=""), sa.Column("width", sa.Integer), sa.Column("height", sa.Integer),
    *[sa.Column(k, sa.Float) for k in ("brightness", "contrast", "sharpness", "noise")],
)
LEGACY_V2_PREDICTIONS = sa.Table(
    "predictions", LEGACY_V2_METADATA, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), nullable=False, index=True),
    sa.Column("camera_id", sa.String(128), nullable=False), sa.Column("role", sa.String(16), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False), sa.Column("model_version", sa.String(64), nullable=False, default=""),
    sa.Column("probs", sa.Text, nullable=False), sa.Column("label", sa.String(128), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False), sa.Column("latency_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("degraded", sa.String(32)), sa.Column("ts", sa.Float, nullable=False),
    sa.UniqueConstraint("frame_id", "role", name="uq_prediction_frame_role"),
)
LEGACY_V2_SAMPLES = sa.Table(
    "samples", LEGACY_V2_METADATA, sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), primary_key=True),
    sa.Column("camera_id", sa.String(128), nullable=False, index=True), sa.Column("strategy", sa.String(64), nullable=False),
    sa.Column("inclusion_prob", sa.Float, nullable=False), sa.Column("image_path", sa.Text, nullable=False),
    sa.Column("sampled_at", sa.Float, nullable=False), sa.Column("double_label", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(16), nullable=False, default="pending", index=True),
)
LEGACY_V2_LABELS = sa.Table(
    "labels", LEGACY_V2_METADATA, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), nullable=False, index=True),
    sa.Column("label", sa.String(128), nullable=False), sa.Column("annotator", sa.String(128), nullable=False),
    sa.Column("source", sa.String(32), nullable=False), sa.Column("ts", sa.Float, nullable=False),
    sa.UniqueConstraint("frame_id", "annotator", name="uq_label_frame_annotator"),
)
# the rest of the v2 schema (so that tests/pipeline/test_store.py makes a genuine v2 store to migrate from it)
sa.Table("schema_meta", LEGACY_V2_METADATA, sa.Column("key", sa.String(64), primary_key=True), sa.Column("value", sa.Text, nullable=False))
sa.Table("runs", LEGACY_V2_METADATA, sa.Column("run_id", sa.String(64), primary_key=True),
         sa.Column("started_at", sa.Float, nullable=False), sa.Column("ended_at", sa.Float), sa.Column("incumbent_model", sa.String(256)),
         sa.Column("shadow_model", sa.String(256)), sa.Column("class_names", sa.Text), sa.Column("config", sa.Text),
         sa.Column("summary", sa.Text))
sa.Table("health_events", LEGACY_V2_METADATA, sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
         sa.Column("run_id", sa.String(64), nullable=False, index=True), sa.Column("camera_id", sa.String(128), nullable=False),
         sa.Column("kind", sa.String(32), nullable=False), sa.Column("ts", sa.Float, nullable=False), sa.Column("detail", sa.Text, default=""))
sa.Table("label_skips", LEGACY_V2_METADATA, sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), primary_key=True),
         sa.Column("annotator", sa.String(128), primary_key=True), sa.Column("ts", sa.Float, nullable=False))
DATA_TABLES = ("frames", "predictions", "samples", "labels")  # the tables that grow with the stream


def legacy_v2_encode_probs(m: np.ndarray) -> list[str]:
    """The schema-v2 probability encoding (legacy, for the before/after measurement only): JSON text of the
    probabilities rounded to 6 decimals, as ``_pred_row`` wrote them (git ec79e33:pipeline/store.py)."""
    return [json.dumps([round(float(x), 6) for x in row]) for row in np.asarray(m, dtype=np.float32)]


def table_bytes(url: str, tables: Sequence[str] = DATA_TABLES, indexes_only: bool = False) -> dict[str, int]:
    """Bytes each of ``tables`` takes with its indexes (PostgreSQL: and TOAST, after ``VACUUM ANALYZE`` so that both
    formats are measured in the same state), as :meth:`PredictionStore.table_sizes` measures them, for any store
    (the legacy one too); ``indexes_only``: the bytes of their indexes alone (primary keys and unique constraints
    included). SQLite's WAL is checkpointed first; needs SQLite's ``dbstat`` table."""
    eng = store_mod.make_engine(url, create=False)
    try:
        if eng.dialect.name == "sqlite":
            with eng.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                owner = {name: (tbl, kind) for name, tbl, kind in conn.exec_driver_sql("SELECT name, tbl_name, type FROM sqlite_master")}
                out: dict[str, int] = {}
                for name, size in conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                    t, kind = owner.get(name, (name, "table"))
                    if kind == "index" or not indexes_only:
                        out[t] = out.get(t, 0) + int(size)
        else:
            fn = "pg_indexes_size" if indexes_only else "pg_total_relation_size"
            with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.exec_driver_sql("VACUUM ANALYZE")
                out = {t: int(conn.execute(sa.text(f"SELECT {fn}(CAST(:t AS regclass))"), {"t": t}).scalar_one()) for t in tables}
        return {t: out.get(t, 0) for t in tables}
    finally:
        eng.dispose()


def fill_legacy_v2_store(url: str, spec: FillSpec, progress: bool = True) -> FillStats:
    """Write ``spec``'s rows into a fresh schema-v2 store (:data:`LEGACY_V2_METADATA`, probabilities as JSON text)
    at ``url``: the very rows :func:`fill_store` writes for the same spec (same seed), only in the old format.
    Legacy, for :func:`measure_bytes_before_after` only."""
    eng = store_mod.make_engine(url)
    try:
        if sa.inspect(eng).get_table_names():
            raise ConfigError(f"store {store_mod.redact_url(url)} is not empty: the legacy fill needs an empty database")
        rng = np.random.default_rng(spec.seed)
        stats = FillStats()
        t0 = time.perf_counter()
        tables = {"frames": FRAME_COLS, "predictions": PRED_COLS, "samples": SAMPLE_COLS, "labels": LABEL_COLS}
        sqlite = eng.dialect.name == "sqlite"
        with eng.connect() as conn:
            LEGACY_V2_METADATA.create_all(conn)
            conn.commit()
            if sqlite:  # as fill_store does: the fill's time, not the bytes, depends on it
                conn.exec_driver_sql("PRAGMA synchronous=OFF")
                conn.commit()
            sqls = {t: _insert_sql(conn, t, cols) for t, cols in tables.items()}
            with tqdm(total=spec.n_frames * 2, unit="pred", unit_scale=True, desc="filling v2 store", disable=not progress) as bar:
                _write_chunks(conn, spec, rng, legacy_v2_encode_probs, sqls, stats, bar)
        stats.seconds = time.perf_counter() - t0
        return stats
    finally:
        eng.dispose()


def measure_bytes_before_after(url_before: str, url_after: str, n_predictions: int, seed: int = 0,
                               progress: bool = True) -> dict[str, Any]:
    """Bytes per prediction of the schema-v2 format (before: JSON text probabilities, the old indexes) and of
    today's (after: float16 probabilities, the indexes the queries use), on the same synthetic rows: ``url_before``
    and ``url_after`` must be empty databases of the same backend. Returns ``{"backend", "n_predictions",
    "before": {...}, "after": {...}, "ratio"}``, each side ``{"tables": {name: bytes}, "index_bytes": {name: bytes},
    "total_bytes", "bytes_per_prediction", "index_bytes_per_prediction", "predictions_table_bytes_per_prediction",
    "fill_seconds"}`` over :data:`DATA_TABLES` (a table's bytes include its indexes')."""
    spec = FillSpec(n_predictions, seed=seed)
    fills = {"before": fill_legacy_v2_store(url_before, spec, progress), "after": fill_store(url_after, spec, progress)}
    if fills["before"].predictions != fills["after"].predictions:
        raise RuntimeError("pipeline.scale: the legacy and the current fill wrote different numbers of predictions")
    backend = "sqlite" if store_mod.normalize_url(url_after).startswith("sqlite") else "postgresql"
    out: dict[str, Any] = {"backend": backend, "n_predictions": fills["after"].predictions}
    for side, url in (("before", url_before), ("after", url_after)):
        tb, ib = table_bytes(url), table_bytes(url, indexes_only=True)
        n = fills[side].predictions
        out[side] = {"tables": tb, "index_bytes": ib, "total_bytes": sum(tb.values()), "bytes_per_prediction": sum(tb.values()) / n,
                     "index_bytes_per_prediction": sum(ib.values()) / n,
                     "predictions_table_bytes_per_prediction": tb["predictions"] / n, "fill_seconds": fills[side].seconds}
    out["ratio"] = out["after"]["bytes_per_prediction"] / out["before"]["bytes_per_prediction"]
    return out


# --------------------------------------------------------------------------------------------------------------------
# The bench: fill, evaluate in a subprocess, measure, write docs/scale.md
# --------------------------------------------------------------------------------------------------------------------
POSTGRES_MODES = ("auto", "always", "never")


@dataclass(frozen=True)
class StoreBenchConfig:
    """``shadowcam bench store`` options (see :mod:`pipeline.commands.bench`)."""

    sizes: tuple[int, ...] = (1_000_000, 10_000_000)
    db: str | None = None  # one store to fill (must be empty; one size only); default: a fresh SQLite file per size
    workdir: str = "runs/bench_store"
    out: str = "docs/scale.md"
    repeats: int = 1  # `shadowcam evaluate` runs per size; the fastest is reported
    write_db: str | None = None  # where the write rate is measured (default: a fresh SQLite file + a throw-away PostgreSQL)
    writers: tuple[int, ...] = (1, 4)
    write_predictions: int = 200_000  # per writer setting
    postgres: str = "auto"  # throw-away PostgreSQL server for bytes and write rate: auto (when installed) | always | never
    bytes_predictions: int = 500_000  # predictions of the before/after bytes fills (0: not measured)
    write_target: float = 3000.0  # predictions/s into PostgreSQL (issue 14: one 48-stream box with a shadow)
    keep: bool = False  # keep the filled stores
    seed: int = 0
    command: str = "shadowcam bench store"
    targets: tuple[float, float] = (10.0, 2.0)  # seconds, GiB at the largest size (issue 14)

    def __post_init__(self) -> None:
        if not self.sizes or any(n < 2 for n in self.sizes):
            raise ConfigError(f"--sizes must be predictions counts >= 2, got {list(self.sizes)}")
        if self.db and len(self.sizes) > 1:
            raise ConfigError("--db fills one store: give one size with it (--sizes N)")
        if self.repeats < 1:
            raise ConfigError(f"--repeats must be >= 1, got {self.repeats}")
        if self.postgres not in POSTGRES_MODES:
            raise ConfigError(f"--postgres must be one of {', '.join(POSTGRES_MODES)}, got {self.postgres!r}")
        if self.bytes_predictions != 0 and self.bytes_predictions < 2:
            raise ConfigError(f"--bytes-predictions must be 0 (not measured) or >= 2, got {self.bytes_predictions}")
        if not self.writers or any(w < 1 for w in self.writers) or self.write_predictions < 2 * max(self.writers):
            raise ConfigError(f"--writers must be counts >= 1 and --write-predictions >= 2 x the largest, got "
                              f"{list(self.writers)} and {self.write_predictions}")


def _sqlite_file(url: str) -> Path | None:
    return store_mod.sqlite_path(url)


def run_evaluate(url: str, json_out: Path, timeout: float = 3600.0) -> dict[str, Any]:
    """``shadowcam evaluate --db URL --no-mlflow --json FILE`` as a child process: wall seconds, the child's peak
    resident memory (``wait4``'s ``ru_maxrss``), its CPU seconds and exit code."""
    cmd = [sys.executable, "-m", "pipeline.cli", "evaluate", "--db", url, "--no-mlflow", "--json", str(json_out)]
    log_path = json_out.with_suffix(".log")
    t0 = time.perf_counter()
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        except BaseException:
            proc.kill()
            raise
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"`{shlex.join(cmd)}` exited {proc.returncode}:\n{tail}")
    return {"seconds": wall, "max_rss_bytes": ru.ru_maxrss * 1024, "cpu_seconds": ru.ru_utime + ru.ru_stime, "command": shlex.join(cmd[2:])}


_PHASES = """
import json, os, sys, time
t0 = time.perf_counter()
import pipeline.cli, pipeline.evaluation.evaluator, pipeline.evaluation.report
from pipeline.imagestats import STAT_NAMES
from pipeline.store import PredictionStore
t1 = time.perf_counter()
st = PredictionStore(sys.argv[1], must_exist=True)
runs = st.list_runs()
c0, k0 = time.process_time(), os.times()
cols = st.evaluation_columns([r["run_id"] for r in runs], json.loads(runs[-1]["class_names"]), STAT_NAMES)
t2 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "read_s": t2 - t1, "read_cpu_s": time.process_time() - c0 + (os.times().children_user - k0.children_user)
                  + (os.times().children_system - k0.children_system), "frames": cols.n}))  # the reader child's CPU too
"""


def measure_phases(url: str) -> dict[str, float]:
    """Where ``shadowcam evaluate``'s time goes, from a separate child: importing the command (Python, numpy, scipy,
    statsmodels ...) and reading the store into columns (:meth:`PredictionStore.evaluation_columns`); the rest of
    an evaluation's wall time is the statistics."""
    out = subprocess.run([sys.executable, "-c", _PHASES, url], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _store_size(url: str, n_predictions: int) -> dict[str, Any]:
    try:
        from pipeline.retention import store_size
    except ImportError:  # the store helper's measurement is not there: the file size
        path = _sqlite_file(url)
        total = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p and p.exists()) if path else float("nan")
        return {"total_bytes": total, "bytes_per_prediction": total / n_predictions, "tables": {}}
    return store_size(url)


def _fresh_sqlite(path: Path) -> str:
    for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        p.unlink(missing_ok=True)
    return str(path)


def _remove_sqlite(url: str) -> None:
    path = _sqlite_file(url)
    if path is not None:
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            p.unlink(missing_ok=True)


def _write_rate(cfg: StoreBenchConfig, pg: Any, progress: bool) -> list[dict[str, Any]]:
    """The write rate of every writer setting: into ``--write-db`` when given, else into a fresh SQLite file per
    setting and into the throw-away PostgreSQL server ``pg`` (one database per setting) when there is one."""
    from pipeline.retention import measure_store_writes

    targets: list[tuple[str, Callable[[int], str]]] = []
    if cfg.write_db is not None:
        targets.append(("given", lambda w: cfg.write_db))  # type: ignore[arg-type, return-value]
    else:
        targets.append(("sqlite", lambda w: _fresh_sqlite(Path(cfg.workdir) / f"writes_{w}.db")))
        if pg is not None:
            targets.append(("postgresql", lambda w: pg.new_database(f"writes_{w}")))
    out = []
    for _, make in targets:
        for w in cfg.writers:
            url = make(w)
            if progress:
                print(f"write rate: {w} writer(s), {cfg.write_predictions:,} predictions into {store_mod.redact_url(url)}", flush=True)
            r = measure_store_writes(url, cfg.write_predictions, writers=w)
            r["backend"] = "sqlite" if store_mod.normalize_url(url).startswith("sqlite") else "postgresql"
            out.append(r)
            if cfg.write_db is None and r["backend"] == "sqlite":
                _remove_sqlite(url)
    return out


def _bytes_before_after(cfg: StoreBenchConfig, pg: Any, progress: bool) -> list[dict[str, Any]]:
    """:func:`measure_bytes_before_after` on fresh SQLite files and, when ``pg`` runs, on two fresh PostgreSQL databases."""
    if cfg.bytes_predictions == 0:
        return []
    work = Path(cfg.workdir)
    pairs = [(_fresh_sqlite(work / "bytes_v2.db"), _fresh_sqlite(work / "bytes_now.db"))]
    if pg is not None:
        pairs.append((pg.new_database("bytes_v2"), pg.new_database("bytes_now")))
    out = []
    for before, after in pairs:
        if progress:
            print(f"bytes per prediction before/after: {cfg.bytes_predictions:,} predictions, "
                  f"{'sqlite' if store_mod.normalize_url(after).startswith('sqlite') else 'postgresql'}", flush=True)
        out.append(measure_bytes_before_after(before, after, cfg.bytes_predictions, seed=cfg.seed, progress=progress))
        for u in (before, after):
            if not cfg.keep:
                _remove_sqlite(u)
    return out


def _start_postgres(cfg: StoreBenchConfig) -> tuple[Any, dict[str, Any]]:
    """The throw-away PostgreSQL server of the bench (``cfg.postgres``), or None, and what the document says of it."""
    from pipeline.pgserver import ThrowawayPostgres, find_pg_bin

    if cfg.postgres == "never":
        return None, {"ran": False, "note": "PostgreSQL was not measured (`--postgres never`)."}
    bin_dir = find_pg_bin()
    if bin_dir is None:
        if cfg.postgres == "always":
            raise ConfigError("--postgres always: PostgreSQL binaries (initdb, pg_ctl) not found under "
                              "/usr/lib/postgresql/*/bin or on PATH (apt-get install postgresql)")
        return None, {"ran": False, "note": "PostgreSQL was not measured: its binaries (initdb, pg_ctl) are not installed on this "
                                            "machine (apt-get install postgresql, or give `--write-db postgresql://...`)."}
    pg = ThrowawayPostgres(bin_dir, durable=True).start()
    return pg, {"ran": True, "version": pg.version, "durable": True,
                "note": f"PostgreSQL {pg.version}, a throw-away server started by the bench (initdb in a temporary directory "
                        "on this machine's disk, 127.0.0.1 only), PostgreSQL's default settings: fsync, full-page writes and "
                        "synchronous commit on, as a production server has them."}


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(), "system": platform.platform(),
            "load_at_start": load}


def run_store_bench(cfg: StoreBenchConfig, progress: bool = True) -> dict[str, Any]:
    """Fill, evaluate and measure every size of ``cfg``; write ``cfg.out``; return the figures."""
    work = Path(cfg.workdir)
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"config": asdict(cfg), "machine": _machine(), "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                           "sizes": []}
    if columnar._has_module("adbc_driver_sqlite"):
        res["reader"] = (f"ADBC (SQLite: adbc-driver-sqlite in a child process for reads of "
                         f"{columnar.SQLITE_CHILD_MIN_ROWS:,} rows or more, Python's sqlite3 below; PostgreSQL: "
                         "adbc-driver-postgresql)")
    else:
        res["reader"] = "Python's sqlite3 rows (adbc-driver-sqlite not installed: slower)"
    for n in cfg.sizes:
        url = cfg.db
        path = None
        if url is None:
            path = work / f"store_{n}.db"
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
            url = str(path)
        spec = FillSpec(n, seed=cfg.seed)
        fill = fill_store(url, spec, progress=progress)
        size = _store_size(url, fill.predictions)
        runs = []
        for k in range(cfg.repeats):
            if progress:
                print(f"evaluating {fill.predictions:,} predictions ({k + 1}/{cfg.repeats}) ...", flush=True)
            runs.append(run_evaluate(url, work / f"evaluate_{n}.json"))
        best = min(runs, key=lambda r: r["seconds"])
        phases = measure_phases(url)
        phases["statistics_s"] = max(0.0, best["seconds"] - phases["imports_s"] - phases["read_s"])
        res["sizes"].append({"n_predictions": fill.predictions, "frames": fill.frames, "labels": fill.labels, "cameras": spec.cameras,
                             "fill_seconds": fill.seconds, "fill_rate": fill.rows_per_s, "store": store_mod.redact_url(url),
                             "bytes_per_prediction": size.get("bytes_per_prediction"), "total_bytes": size.get("total_bytes"),
                             "evaluate": best, "evaluate_runs": runs, "phases": phases})
        if path is not None and not cfg.keep:
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                p.unlink(missing_ok=True)
    pg, res["postgres"] = _start_postgres(cfg)  # after the evaluations: an idle server would still take memory from them
    try:
        res["bytes"] = _bytes_before_after(cfg, pg, progress)
        res["writes"] = _write_rate(cfg, pg, progress)
    finally:
        if pg is not None:
            pg.stop()
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.out).write_text(render_markdown(res))
    (work / "bench_store.json").write_text(json.dumps(res, indent=2, default=str))
    return res


def _gib(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**30:.2f} GiB"


def render_markdown(res: dict[str, Any]) -> str:
    """``docs/scale.md`` from :func:`run_store_bench`'s figures (generated: never edit it by hand)."""
    cfg, m = res["config"], res["machine"]
    t_s, t_gib = cfg["targets"]
    load = m.get("load_at_start")
    lines = [
        "# The store and the evaluator at scale",
        "",
        f"Generated by `{cfg['command']}` on {res['date']}; do not edit by hand, run the command again.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {_gib(m.get('memory_bytes'))} memory, Python {m['python']}"
        + (f"; load average at start {load[0]:.1f}" if load else "") + ". Store reader: " + res["reader"] + ".",
        "",
        "Each size is a fresh store filled by `pipeline.scale.fill_store` (50 cameras, 5 classes, an incumbent and a shadow "
        "prediction per frame, image statistics on every frame, 1% of the predictions' frames sampled uniformly and labelled), "
        "then `shadowcam evaluate --no-mlflow --json` runs on it as a child process: wall time from start to exit "
        "(Python start-up and imports included) and the child's peak resident memory.",
        "",
        "| predictions | frames | labels | store | bytes / prediction | evaluate (s) | evaluate CPU (s) | peak memory | fill (s) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in res["sizes"]:
        e = s["evaluate"]
        bpp = s.get("bytes_per_prediction")
        lines.append(f"| {s['n_predictions']:,} | {s['frames']:,} | {s['labels']:,} | {s['store'].split('://')[0] if '://' in s['store'] else 'SQLite'} | "
                     f"{'-' if bpp is None else f'{bpp:.0f}'} | {e['seconds']:.1f} | {e['cpu_seconds']:.1f} | {_gib(e['max_rss_bytes'])} | "
                     f"{s['fill_seconds']:.0f} |")
    big = max(res["sizes"], key=lambda s: s["n_predictions"]) if res["sizes"] else None
    if big is not None:
        e = big["evaluate"]
        ok_t, ok_m = e["seconds"] <= t_s, e["max_rss_bytes"] <= t_gib * 2**30
        verdict = "met" if ok_t and ok_m else "**missed**"
        lines += ["", f"Target (issue 14) at {big['n_predictions']:,} predictions: evaluation <= {t_s:g} s and <= {t_gib:g} GiB: {verdict} "
                      f"({e['seconds']:.1f} s, {_gib(e['max_rss_bytes'])})."]
    lines += _bytes_section(res)
    lines += _writes_section(res)
    lines += ["", "## Where the evaluation's time goes", "",
              "From a separate child process per size: importing the command, and reading the store into column arrays "
              "(`PredictionStore.evaluation_columns`: ADBC steps the rows in C on two threads, in a child process for SQLite "
              "(`pipeline.columnar`), an Arrow hash join puts the "
              "predictions on their frames, one `frombuffer` reads the float16 probabilities); the rest of the wall time "
              "is the statistics (vectorised numpy: the model-assisted proxy cross-fitted over every frame, drift per camera, "
              "the anytime-valid sequences over the stream).", "",
              "| predictions | imports (s) | store read (s) | store read CPU (s) | statistics (s) |", "| ---: | ---: | ---: | ---: | ---: |"]
    for s in res["sizes"]:
        ph = s.get("phases") or {}
        if ph:
            lines.append(f"| {s['n_predictions']:,} | {ph['imports_s']:.1f} | {ph['read_s']:.1f} | {ph['read_cpu_s']:.1f} | "
                         f"{ph['statistics_s']:.1f} |")
    if load and load[0] > (m.get("cores") or 1):
        lines += ["", f"The machine was shared while this ran (load average {load[0]:.1f} on {m['cores']} cores): wall times are "
                      "inflated; the CPU column is the steadier figure."]
    return "\n".join(lines) + "\n"


_BACKEND_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _bytes_section(res: dict[str, Any]) -> list[str]:
    rows = res.get("bytes") or []
    pg = res.get("postgres") or {}
    if not rows:
        return []
    n = rows[0]["n_predictions"]
    lines = ["", "## Bytes per prediction, before and after", "",
             f"The same {n:,} synthetic predictions (made as for the fills above, seed {res['config']['seed']}) written twice into empty "
             "databases: *before* in the schema-v2 format (probabilities as JSON text rounded to 6 decimals, single-column "
             "indexes on frames.run_id, frames.camera_id, frames.ts and predictions.frame_id; frozen in "
             "`pipeline.scale.LEGACY_V2_METADATA`), *after* in today's (float16 probabilities, 2 bytes a class; the indexes "
             "the evaluator's and the retention's queries use). Bytes are those of the tables that grow with the stream "
             "(frames, predictions, samples, labels) with their indexes (PostgreSQL: and TOAST, after `VACUUM ANALYZE`), "
             "over the stored predictions.", "",
             "| store | format | frames table | predictions table | samples + labels | bytes / prediction | predictions table / prediction | indexes / prediction | after / before |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        name = _BACKEND_NAMES.get(r["backend"], r["backend"])
        for side, fmt in (("before", "v2: JSON text"), ("after", "now: float16")):
            d = r[side]
            t = d["tables"]
            ratio = f"{r['ratio'] * 100:.0f}%" if side == "after" else ""
            lines.append(f"| {name} | {fmt} | {_mib(t['frames'])} | {_mib(t['predictions'])} | {_mib(t['samples'] + t['labels'])} | "
                         f"{d['bytes_per_prediction']:.0f} | {d['predictions_table_bytes_per_prediction']:.0f} | "
                         f"{d['index_bytes_per_prediction']:.0f} | {ratio} |")
    for r in rows:
        b, a = r["before"], r["after"]
        if a["tables"]["frames"] > b["tables"]["frames"]:
            ib, ia = b["index_bytes"]["frames"], a["index_bytes"]["frames"]
            lines += ["", f"On {_BACKEND_NAMES.get(r['backend'], r['backend'])} the frames table grows ({_mib(b['tables']['frames'])} -> "
                          f"{_mib(a['tables']['frames'])}; its indexes {_mib(ib)} -> {_mib(ia)}): the composite index the queries use "
                          "(run, camera, time) takes more than the v2 single-column indexes, whose repeated run and camera values "
                          "the B-trees store compactly; the saving is in the predictions table."]
    if not any(r["backend"] == "postgresql" for r in rows) and pg.get("note"):
        lines += ["", pg["note"]]
    return lines


def _writes_section(res: dict[str, Any]) -> list[str]:
    writes = res.get("writes") or []
    pg = res.get("postgres") or {}
    target = res["config"].get("write_target", 3000.0)
    lines = ["", "## Write rate", "",
             "`pipeline.retention.measure_store_writes`: writer processes writing batches as the runner's writer does "
             "(frames + 2 predictions per frame + ~1% samples, one transaction per batch; on PostgreSQL through COPY)"
             + ("" if res["config"].get("write_db") else ", each setting into a fresh database")
             + "; the rate is all predictions over the time from the common start to the "
             f"last commit. Target (issue 14): >= {target:,.0f} predictions/s into PostgreSQL, the load of one 48-stream box "
             "with a shadow."]
    if res["config"].get("write_db"):
        lines += ["", f"Measured on the store given with `--write-db` ({store_mod.redact_url(res['config']['write_db'])}), "
                      "several runs into the same database."]
    elif pg.get("ran"):
        lines += ["", pg["note"]]
    lines += ["", "| store | writers | batch (frames) | predictions | seconds | predictions / s | target |",
              "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for w in writes:
        backend = w.get("backend") or str(w["url"]).split("://")[0].split("+")[0]
        verdict = ("PASS" if w["predictions_per_s"] >= target else "**FAIL**") if backend == "postgresql" else "-"
        lines.append(f"| {_BACKEND_NAMES.get(backend, backend)} | {w['writers']} | {w['batch_frames']} | {w['n_predictions']:,} | "
                     f"{w['seconds']:.1f} | {w['predictions_per_s']:,.0f} | {verdict} |")
    if not any((w.get("backend") == "postgresql") for w in writes) and pg.get("note") and not pg.get("ran"):
        lines += ["", pg["note"]]
    return lines


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"
