"""PredictionStore: where every frame, prediction, health event, sample and label lands.

SQLAlchemy Core over SQLite (WAL mode, the embedded default) or PostgreSQL (by URL). One schema,
versioned in ``schema_meta``; :data:`MIGRATIONS` moves an older store forward when it is opened.

Writes are transactions: a call that returned has committed. The runner funnels all writes of a run
through one writer thread (:class:`pipeline.runner` does that), so SQLite sees a single writer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline.types import Frame, HealthEvent, Label, LabelImportError, Prediction, StoreError

SCHEMA_VERSION = 2

metadata = sa.MetaData()

schema_meta = sa.Table(
    "schema_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("incumbent_model", sa.String(256)),
    sa.Column("shadow_model", sa.String(256)),
    sa.Column("class_names", sa.Text),  # JSON list
    sa.Column("config", sa.Text),  # resolved config, JSON
    sa.Column("summary", sa.Text),  # end-of-run summary, JSON
)

frames = sa.Table(
    "frames",
    metadata,
    sa.Column("frame_id", sa.String(200), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("camera_id", sa.String(128), nullable=False, index=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("source_ref", sa.Text, nullable=False, default=""),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    # per-frame image statistics for drift (pipeline.evaluation.drift.image_stats)
    sa.Column("brightness", sa.Float),
    sa.Column("contrast", sa.Float),
    sa.Column("sharpness", sa.Float),
    sa.Column("noise", sa.Float),
)

predictions = sa.Table(
    "predictions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), nullable=False, index=True),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # incumbent | shadow
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False, default=""),
    sa.Column("probs", sa.Text, nullable=False),  # JSON list of floats, card class order
    sa.Column("label", sa.String(128), nullable=False),
    sa.Column("confidence", sa.Float, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=False, default=0.0),
    sa.Column("degraded", sa.String(32)),  # None | cpu_fallback | stale | unknown
    sa.Column("ts", sa.Float, nullable=False),
    sa.UniqueConstraint("frame_id", "role", name="uq_prediction_frame_role"),
)

health_events = sa.Table(
    "health_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("detail", sa.Text, default=""),
)

samples = sa.Table(
    "samples",
    metadata,
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), primary_key=True),
    sa.Column("camera_id", sa.String(128), nullable=False, index=True),
    sa.Column("strategy", sa.String(64), nullable=False),
    sa.Column("inclusion_prob", sa.Float, nullable=False),  # P(frame sampled), for inverse-probability weights
    sa.Column("image_path", sa.Text, nullable=False),
    sa.Column("sampled_at", sa.Float, nullable=False),
    sa.Column("double_label", sa.Boolean, nullable=False, default=False),  # wanted from two annotators
    sa.Column("status", sa.String(16), nullable=False, default="pending", index=True),  # pending | labeled | skipped
)

labels = sa.Table(
    "labels",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), nullable=False, index=True),
    sa.Column("label", sa.String(128), nullable=False),  # a class name or "unsure"
    sa.Column("annotator", sa.String(128), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # web | import | simulated
    sa.Column("ts", sa.Float, nullable=False),
    sa.UniqueConstraint("frame_id", "annotator", name="uq_label_frame_annotator"),
)

# A frame an annotator chose to skip on the labeling page: hidden from that annotator only (schema v2).
label_skips = sa.Table(
    "label_skips",
    metadata,
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), primary_key=True),
    sa.Column("annotator", sa.String(128), primary_key=True),
    sa.Column("ts", sa.Float, nullable=False),
)


def _migrate_0_to_1(conn: Connection) -> None:
    metadata.create_all(conn)


def _migrate_1_to_2(conn: Connection) -> None:
    label_skips.create(conn, checkfirst=True)


# MIGRATIONS[v] takes a store at version v to v + 1. Append, never edit.
MIGRATIONS: list[Callable[[Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2]
assert len(MIGRATIONS) == SCHEMA_VERSION


def default_sqlite_url(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'shadowcam.db'}"


def normalize_url(url: str) -> str:
    """Accept a bare path as SQLite, and ``postgresql://`` as psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).resolve()}"
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged commit survives kill -9 and power loss
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


@dataclass(frozen=True)
class FrameRecord:
    """What the store keeps of a frame (never the pixels; sampled frames are saved as JPEG files)."""

    frame_id: str
    run_id: str
    camera_id: str
    seq: int
    ts: float
    source_ref: str = ""
    width: int | None = None
    height: int | None = None
    brightness: float | None = None
    contrast: float | None = None
    sharpness: float | None = None
    noise: float | None = None

    @classmethod
    def from_frame(cls, frame: Frame, run_id: str, stats: dict[str, float] | None = None) -> "FrameRecord":
        h, w = frame.image.shape[:2]
        s = stats or {}
        return cls(
            frame_id=frame.frame_id, run_id=run_id, camera_id=frame.camera_id, seq=frame.seq, ts=frame.timestamp,
            source_ref=frame.source_ref, width=w, height=h, brightness=s.get("brightness"), contrast=s.get("contrast"),
            sharpness=s.get("sharpness"), noise=s.get("noise"),
        )


@dataclass(frozen=True)
class SampleRecord:
    frame_id: str
    camera_id: str
    strategy: str
    inclusion_prob: float
    image_path: str
    sampled_at: float
    double_label: bool = False

    def __post_init__(self) -> None:
        if not (0.0 < self.inclusion_prob <= 1.0):
            raise ValueError(f"inclusion_prob must be in (0, 1], got {self.inclusion_prob} for frame {self.frame_id}")


class PredictionStore:
    """Open (and create or migrate) a store by SQLAlchemy URL or SQLite path."""

    def __init__(self, url: str):
        self.url = normalize_url(url)
        try:
            self.engine = make_engine(self.url)
            self._migrate()
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot open prediction store {url!r}: {e.__class__.__name__}: {e}") from None

    # --- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            schema_meta.create(conn, checkfirst=True)
            row = conn.execute(sa.select(schema_meta.c.value).where(schema_meta.c.key == "version")).first()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {self.url} has schema version {version}, newer than this shadowcam ({SCHEMA_VERSION}); upgrade shadowcam"
                )
            for v in range(version, SCHEMA_VERSION):
                MIGRATIONS[v](conn)
            if row is None:  # (a stub whose row says "0" has a row: update it, never insert twice)
                conn.execute(schema_meta.insert().values(key="version", value=str(SCHEMA_VERSION)))
            elif version != SCHEMA_VERSION:
                conn.execute(schema_meta.update().where(schema_meta.c.key == "version").values(value=str(SCHEMA_VERSION)))

    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(schema_meta.c.value).where(schema_meta.c.key == "version")).scalar_one())

    def close(self) -> None:
        self.engine.dispose()

    # --- runs -----------------------------------------------------------------------------------
    def begin_run(self, run_id: str, incumbent: str, shadow: str | None, class_names: Sequence[str], config: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                runs.insert().values(
                    run_id=run_id, started_at=time.time(), incumbent_model=incumbent, shadow_model=shadow,
                    class_names=json.dumps(list(class_names)), config=json.dumps(config, default=str),
                )
            )

    def end_run(self, run_id: str, summary: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(runs.update().where(runs.c.run_id == run_id).values(ended_at=time.time(), summary=json.dumps(summary, default=str)))

    def list_runs(self) -> list[dict]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(runs).order_by(runs.c.started_at))]

    # --- the hot path: one transaction per batch --------------------------------------------------
    def write_batch(
        self,
        frame_records: Sequence[FrameRecord] = (),
        preds: Sequence[Prediction] = (),
        events: Sequence[tuple[str, HealthEvent]] = (),  # (run_id, event)
        sample_records: Sequence[SampleRecord] = (),
    ) -> None:
        now = time.time()
        with self.engine.begin() as conn:
            if frame_records:
                conn.execute(frames.insert(), [r.__dict__ for r in frame_records])
            if preds:
                conn.execute(predictions.insert(), [_pred_row(p, now) for p in preds])
            if events:
                conn.execute(
                    health_events.insert(),
                    [dict(run_id=rid, camera_id=e.camera_id, kind=e.kind.value, ts=e.timestamp, detail=e.detail) for rid, e in events],
                )
            if sample_records:
                conn.execute(samples.insert(), [dict(s.__dict__, status="pending") for s in sample_records])

    # --- labels -----------------------------------------------------------------------------------
    def add_labels(self, new: Iterable[Label], replace: bool = False) -> int:
        """Insert labels in one transaction (all or nothing); marks their samples as labeled
        once they have all the labels they need (two for ``double_label`` samples, else one).

        A second label by the same annotator for the same frame replaces the first when
        ``replace`` is true, otherwise raises :class:`LabelImportError`.
        """
        rows = [dict(frame_id=l.frame_id, label=l.label, annotator=l.annotator, source=l.source, ts=l.timestamp or time.time()) for l in new]
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                if replace:
                    for r in rows:
                        conn.execute(labels.delete().where((labels.c.frame_id == r["frame_id"]) & (labels.c.annotator == r["annotator"])))
                conn.execute(labels.insert(), rows)
                ids = sorted({r["frame_id"] for r in rows})
                n_labels = sa.select(sa.func.count()).select_from(labels).where(labels.c.frame_id == samples.c.frame_id).scalar_subquery()
                needed = sa.case((samples.c.double_label, 2), else_=1)
                for chunk in _chunks(ids, 500):
                    conn.execute(samples.update().where(samples.c.frame_id.in_(chunk) & (n_labels >= needed)).values(status="labeled"))
        except sa.exc.IntegrityError as e:
            raise LabelImportError(f"labels not imported (nothing was written): {e.orig}") from None
        return len(rows)

    def existing_frame_ids(self, ids: Iterable[str]) -> set[str]:
        ids = list(ids)
        out: set[str] = set()
        with self.engine.connect() as conn:
            for chunk in _chunks(ids, 500):
                out.update(r[0] for r in conn.execute(sa.select(frames.c.frame_id).where(frames.c.frame_id.in_(chunk))))
        return out

    def run_class_names(self) -> list[str]:
        """Class names of the newest run (the label space of this deployment)."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(runs.c.class_names).order_by(runs.c.started_at.desc()).limit(1)).first()
        return json.loads(row[0]) if row and row[0] else []

    # --- reads for labeling and evaluation ------------------------------------------------------------
    def pending_samples(self, limit: int = 100, camera_id: str | None = None) -> list[dict]:
        q = (
            sa.select(samples, frames.c.source_ref, frames.c.ts)
            .join(frames, frames.c.frame_id == samples.c.frame_id)
            .where(samples.c.status == "pending")
            .order_by(samples.c.sampled_at)
            .limit(limit)
        )
        if camera_id:
            q = q.where(samples.c.camera_id == camera_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def table_rows(self, table: sa.Table, where: Any = None, order_by: Any = None) -> list[dict]:
        q = sa.select(table)
        if where is not None:
            q = q.where(where)
        if order_by is not None:
            q = q.order_by(order_by)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def count(self, table: sa.Table, where: Any = None) -> int:
        q = sa.select(sa.func.count()).select_from(table)
        if where is not None:
            q = q.where(where)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


def probs_from_json(text: str) -> np.ndarray:
    return np.asarray(json.loads(text), dtype=np.float32)


def _pred_row(p: Prediction, now: float) -> dict:
    return dict(
        frame_id=p.frame_id, camera_id=p.camera_id, role=p.role.value, model_name=p.model_name, model_version=p.model_version,
        probs=json.dumps([round(float(x), 6) for x in p.probs]), label=p.label, confidence=p.confidence,
        latency_ms=float(p.latency_ms), degraded=p.degraded.value if p.degraded else None, ts=now,
    )


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
