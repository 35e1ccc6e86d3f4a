"""PredictionStore: where every frame, prediction, health event, sample and label lands.

SQLAlchemy Core over SQLite (WAL mode, the embedded default) or PostgreSQL (by URL). One schema,
versioned in ``schema_meta``; :data:`MIGRATIONS` moves an older store forward when it is opened.

Writes are transactions: a call that returned has committed. The runner funnels all writes of a run
through one writer thread (:class:`pipeline.runner` does that), so SQLite sees a single writer.

This module is the only place with SQL on these tables: the label queue, label import/export, the simulated
annotator, retraining and the evaluator call :class:`PredictionStore` methods that return plain dataclasses,
dicts and tuples.
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
SCHEMA_VERSION = len(MIGRATIONS)


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


@dataclass(frozen=True)
class QueuedSample:
    """A sampled frame as the label queue sees it: the sample, its frame's ``source_ref`` and ``ts``, how many
    labels it has and how many it needs (2 for ``double_label`` samples, else 1)."""

    frame_id: str
    camera_id: str
    strategy: str
    inclusion_prob: float
    image_path: str
    sampled_at: float
    double_label: bool
    status: str  # pending | labeled | skipped
    source_ref: str
    ts: float
    n_labels: int
    labels_needed: int

    @property
    def labels_missing(self) -> int:
        return max(0, self.labels_needed - self.n_labels)


@dataclass(frozen=True)
class StoredPrediction:
    """One stored prediction with its frame's ``source_ref`` (``degraded`` is None for a normal answer)."""

    frame_id: str
    source_ref: str
    role: str  # incumbent | shadow
    model_name: str
    model_version: str
    label: str
    confidence: float
    degraded: str | None


@dataclass(frozen=True)
class SampledFrame:
    """A sampled frame's JPEG, camera and capture time (what retraining needs of it)."""

    frame_id: str
    camera_id: str
    image_path: str
    ts: float
    strategy: str = ""  # the sampling strategy that drew it (``training:...``: drawn only for retraining)


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
                for chunk in _chunks(ids, 500):
                    conn.execute(
                        samples.update().where(samples.c.frame_id.in_(chunk) & (_n_labels() >= _labels_needed())).values(status="labeled")
                    )
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

    # --- labeling queries -----------------------------------------------------------------------------
    # The queue rules (pipeline.labeling.queue documents them): a sample needs two labels when double_label,
    # else one ("unsure" counts); operator-skipped samples are out; an annotator never gets a frame they
    # labeled or skipped; oldest sample first.
    def samples_awaiting_labels(self, limit: int | None = None) -> list[QueuedSample]:
        """Samples that still need labels, oldest first."""
        q = _queue_select().where(_awaiting_where())
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_queued(r) for r in conn.execute(q)]

    def count_samples_awaiting_labels(self) -> int:
        """How many samples still need at least one more label."""
        return self.count(samples, _awaiting_where())

    def next_frames_to_label(self, annotator: str, limit: int | None = 50, exclude: Sequence[str] = ()) -> list[QueuedSample]:
        """The samples ``annotator`` may label next, oldest first: still awaiting labels, not labeled or skipped
        by this annotator, and not in ``exclude``."""
        q = _queue_select().where(_annotator_where(annotator))
        if exclude:
            q = q.where(samples.c.frame_id.not_in(list(exclude)))
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_queued(r) for r in conn.execute(q)]

    def count_frames_to_label(self, annotator: str) -> int:
        """How many samples are in ``annotator``'s queue (see :meth:`next_frames_to_label`)."""
        return self.count(samples, _annotator_where(annotator))

    def count_labels_by(self, annotator: str) -> int:
        """How many labels ``annotator`` has given."""
        return self.count(labels, labels.c.annotator == annotator)

    def queued_sample(self, frame_id: str) -> QueuedSample | None:
        """The sample of ``frame_id`` (whatever its status), or None if the frame was never sampled."""
        with self.engine.connect() as conn:
            row = conn.execute(_queue_select().where(samples.c.frame_id == frame_id)).first()
        return _queued(row) if row else None

    def add_label_skip(self, frame_id: str, annotator: str) -> bool:
        """Hide ``frame_id`` from ``annotator``'s queue; False if they had already skipped it."""
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(label_skips.c.frame_id).where((label_skips.c.frame_id == frame_id) & (label_skips.c.annotator == annotator))
            ).first()
            if exists:
                return False
            conn.execute(label_skips.insert().values(frame_id=frame_id, annotator=annotator, ts=time.time()))
        return True

    def labels_by(self, frame_ids: Iterable[str], annotators: Iterable[str]) -> dict[tuple[str, str], str]:
        """``{(frame_id, annotator): label}`` for the labels that these annotators gave these frames."""
        ids, who = sorted(set(frame_ids)), sorted(set(annotators))
        out: dict[tuple[str, str], str] = {}
        if not who:
            return out
        with self.engine.connect() as conn:
            for chunk in _chunks(ids, 500):
                q = sa.select(labels.c.frame_id, labels.c.annotator, labels.c.label).where(
                    labels.c.frame_id.in_(chunk) & labels.c.annotator.in_(who)
                )
                out.update({(f, a): lab for f, a, lab in conn.execute(q)})
        return out

    def double_label_pairs(self) -> list[tuple[str, str, str]]:
        """``(frame_id, first_label, second_label)`` for every double-label sample with two labels (the two
        earliest by time), in frame_id order."""
        q = (
            sa.select(labels.c.frame_id, labels.c.label)
            .join(samples, samples.c.frame_id == labels.c.frame_id)
            .where(samples.c.double_label)
            .order_by(labels.c.frame_id, labels.c.ts, labels.c.id)
        )
        by_frame: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for fid, lab in conn.execute(q):
                by_frame.setdefault(fid, []).append(lab)
        return [(fid, labs[0], labs[1]) for fid, labs in by_frame.items() if len(labs) >= 2]

    def predictions_for_frame(self, frame_id: str) -> list[StoredPrediction]:
        """The models' predictions for one frame, ordered by role (incumbent before shadow)."""
        return self._predictions(frames.c.frame_id == frame_id)

    # --- retraining & demo queries --------------------------------------------------------------------
    def labels_by_frame(self) -> dict[str, list[str]]:
        """Every labelled frame -> its labels (``unsure`` included), oldest first."""
        q = sa.select(labels.c.frame_id, labels.c.label).order_by(labels.c.frame_id, labels.c.ts, labels.c.id)
        out: dict[str, list[str]] = {}
        with self.engine.connect() as conn:
            for fid, lab in conn.execute(q):
                out.setdefault(fid, []).append(lab)
        return out

    def sampled_frames(self) -> list[SampledFrame]:
        """Every sampled frame (any status) with its JPEG path, camera and capture time, in frame_id order."""
        q = (
            sa.select(samples.c.frame_id, samples.c.camera_id, samples.c.image_path, frames.c.ts, samples.c.strategy)
            .join(frames, frames.c.frame_id == samples.c.frame_id)
            .order_by(samples.c.frame_id)
        )
        with self.engine.connect() as conn:
            return [SampledFrame(fid, cam, path or "", float(ts), strategy or "") for fid, cam, path, ts, strategy in conn.execute(q)]

    def run_predictions(self, run_id: str) -> list[StoredPrediction]:
        """Every prediction on the frames of ``run_id`` (both roles), with each frame's ``source_ref``;
        ordered by frame time, frame id and role."""
        return self._predictions(frames.c.run_id == run_id)

    def _predictions(self, where: Any) -> list[StoredPrediction]:
        p = predictions
        q = (
            sa.select(p.c.frame_id, frames.c.source_ref, p.c.role, p.c.model_name, p.c.model_version, p.c.label, p.c.confidence, p.c.degraded)
            .join(frames, frames.c.frame_id == p.c.frame_id)
            .where(where)
            .order_by(frames.c.ts, p.c.frame_id, p.c.role)
        )
        with self.engine.connect() as conn:
            return [
                StoredPrediction(fid, ref or "", role, name, ver or "", label, float(conf), deg)
                for fid, ref, role, name, ver, label, conf, deg in conn.execute(q)
            ]

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

    # --- evaluator queries ----------------------------------------------------------------------------
    def evaluation_rows(
        self, run_ids: Sequence[str], image_stats: Sequence[str] = ()
    ) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple]]:
        """What the evaluator reads of runs ``run_ids``: ``(frames, predictions, samples, labels)``, plain tuples.

        * frames: ``(frame_id, camera_id, ts, *image_stats)`` ordered by ``(ts, frame_id)``; ``image_stats`` names
          columns of the frames table (``pipeline.imagestats.STAT_NAMES``), None where a frame has no value;
        * predictions on those frames: ``(frame_id, role, model_name, model_version, probs, label, degraded)`` in
          the order they were written, ``probs`` a float32 array, ``degraded`` None for a normal answer;
        * samples of those frames: ``(frame_id, inclusion_prob, strategy)``;
        * labels of those frames: ``(frame_id, label, annotator, ts)``, oldest first.

        Frames sampled only for retraining (strategy ``training:...``, ``SamplingConfig.training``) are not part
        of the evaluation sample: their sample rows and labels are left out (their frames and predictions stay).
        """
        unknown = [k for k in image_stats if k not in frames.c]
        if unknown:
            raise StoreError(f"frames table has no column(s) {unknown} (its columns: {', '.join(frames.c.keys())})")
        f, p, s, lb = frames, predictions, samples, labels
        in_scope = f.c.run_id.in_(list(run_ids))
        with self.engine.connect() as conn:
            frame_rows = [tuple(r) for r in conn.execute(
                sa.select(f.c.frame_id, f.c.camera_id, f.c.ts, *[f.c[k] for k in image_stats]).where(in_scope).order_by(f.c.ts, f.c.frame_id)
            )]
            pred_rows = [
                (fid, role, name, version, probs_from_json(probs), label, degraded)
                for fid, role, name, version, probs, label, degraded in conn.execute(
                    sa.select(p.c.frame_id, p.c.role, p.c.model_name, p.c.model_version, p.c.probs, p.c.label, p.c.degraded)
                    .join(f, f.c.frame_id == p.c.frame_id).where(in_scope).order_by(p.c.id)
                )
            ]
            sample_rows = [tuple(r) for r in conn.execute(
                sa.select(s.c.frame_id, s.c.inclusion_prob, s.c.strategy).join(f, f.c.frame_id == s.c.frame_id)
                .where(in_scope & ~_training_only(s))
            )]
            label_rows = [tuple(r) for r in conn.execute(
                sa.select(lb.c.frame_id, lb.c.label, lb.c.annotator, lb.c.ts).join(f, f.c.frame_id == lb.c.frame_id)
                .where(in_scope & lb.c.frame_id.not_in(_training_frames())).order_by(lb.c.ts, lb.c.id)
            )]
        return frame_rows, pred_rows, sample_rows, label_rows

    # --- label-target queries (pipeline.labeling.targets) -----------------------------------------------
    def camera_ids(self, run_ids: Sequence[str]) -> list[str]:
        """The cameras with at least one frame in runs ``run_ids``, sorted."""
        q = sa.select(frames.c.camera_id).where(frames.c.run_id.in_(list(run_ids))).distinct().order_by(frames.c.camera_id)
        with self.engine.connect() as conn:
            return [cam for (cam,) in conn.execute(q)]

    def labelled_frame_rows(self, run_ids: Sequence[str]) -> tuple[list[tuple], list[tuple]]:
        """The predictions and labels of the *labelled* frames of runs ``run_ids``: ``(predictions, labels)``.

        * predictions: ``(frame_id, camera_id, role, probs, label, degraded)``, ``probs`` a float32 array,
          ``degraded`` None for a normal answer, in the order they were written;
        * labels: ``(frame_id, label)``, oldest first (``unsure`` included).

        Frames sampled only for retraining are left out, as in :meth:`evaluation_rows`.
        """
        f, p, lb = frames, predictions, labels
        in_scope = f.c.run_id.in_(list(run_ids)) & f.c.frame_id.not_in(_training_frames())
        labelled = sa.select(lb.c.frame_id).distinct()
        with self.engine.connect() as conn:
            pred_rows = [
                (fid, cam, role, probs_from_json(probs), label, degraded)
                for fid, cam, role, probs, label, degraded in conn.execute(
                    sa.select(p.c.frame_id, f.c.camera_id, p.c.role, p.c.probs, p.c.label, p.c.degraded)
                    .join(f, f.c.frame_id == p.c.frame_id).where(in_scope & p.c.frame_id.in_(labelled)).order_by(p.c.id)
                )
            ]
            label_rows = [tuple(r) for r in conn.execute(
                sa.select(lb.c.frame_id, lb.c.label).join(f, f.c.frame_id == lb.c.frame_id).where(in_scope).order_by(lb.c.ts, lb.c.id)
            )]
        return pred_rows, label_rows

    # --- labeling page: overlays, review, status (pipeline.labeling) -----------------------------------------
    def frame_run(self, frame_id: str) -> dict | None:
        """The ``runs`` row (as :meth:`list_runs` gives it) of the run ``frame_id`` belongs to; None for an unknown frame."""
        q = sa.select(runs).join(frames, frames.c.run_id == runs.c.run_id).where(frames.c.frame_id == frame_id)
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return dict(row._mapping) if row else None

    def review_rows(self, run_ids: Sequence[str] | None = None) -> tuple[list[tuple], list[tuple]]:
        """The labelled, sampled frames (of runs ``run_ids``; None: every run) with their predictions and labels.

        * predictions: ``(frame_id, run_id, camera_id, ts, image_path, double_label, role, model_name,
          model_version, label, confidence, degraded)``, one per prediction, ordered by frame time and role;
        * labels: ``(frame_id, label, annotator, ts)`` of those frames, oldest first (``unsure`` included).
        """
        f, p, s, lb = frames, predictions, samples, labels
        labelled = sa.select(lb.c.frame_id).distinct()
        where = p.c.frame_id.in_(labelled)
        lwhere = lb.c.frame_id.in_(sa.select(s.c.frame_id))
        if run_ids is not None:
            where = where & f.c.run_id.in_(list(run_ids))
            lwhere = lwhere & lb.c.frame_id.in_(sa.select(f.c.frame_id).where(f.c.run_id.in_(list(run_ids))))
        q = (
            sa.select(p.c.frame_id, f.c.run_id, f.c.camera_id, f.c.ts, s.c.image_path, s.c.double_label, p.c.role, p.c.model_name,
                      p.c.model_version, p.c.label, p.c.confidence, p.c.degraded)
            .join(f, f.c.frame_id == p.c.frame_id).join(s, s.c.frame_id == p.c.frame_id)
            .where(where).order_by(f.c.ts, p.c.frame_id, p.c.role)
        )
        with self.engine.connect() as conn:
            pred_rows = [tuple(r) for r in conn.execute(q)]
            label_rows = [tuple(r) for r in conn.execute(
                sa.select(lb.c.frame_id, lb.c.label, lb.c.annotator, lb.c.ts).where(lwhere).order_by(lb.c.ts, lb.c.id)
            )]
        return pred_rows, label_rows

    def label_counts_since(self, since: float, run_ids: Sequence[str] | None = None) -> dict[str, int]:
        """camera -> labels given at or after ``since`` (Unix seconds, the label's own time) on frames of runs
        ``run_ids`` (None: every run); ``unsure`` answers count (they cost an annotator's time too)."""
        where = labels.c.ts >= float(since)
        if run_ids is not None:
            where = where & frames.c.run_id.in_(list(run_ids))
        q = (sa.select(frames.c.camera_id, sa.func.count()).select_from(labels)
             .join(frames, frames.c.frame_id == labels.c.frame_id).where(where).group_by(frames.c.camera_id))
        with self.engine.connect() as conn:
            return {cam: int(n) for cam, n in conn.execute(q)}


TRAINING_PREFIX = "training:"  # samples.strategy of frames drawn only for retraining (pipeline.sampling)


def _training_only(s: sa.Table = samples):
    return s.c.strategy.like(f"{TRAINING_PREFIX}%")


def _training_frames():
    """The frame ids sampled only for retraining (left out of every estimate)."""
    return sa.select(samples.c.frame_id).where(_training_only(samples))


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


# --- the label queue's rules as SQL (used by the labeling queries above) -------------------------------
def _labels_needed() -> Any:
    """How many labels a sample needs: 2 when ``double_label``, else 1."""
    return sa.case((samples.c.double_label, 2), else_=1)


def _n_labels() -> Any:
    """How many labels the sample's frame has (correlated subquery on ``samples``)."""
    return sa.select(sa.func.count()).select_from(labels).where(labels.c.frame_id == samples.c.frame_id).scalar_subquery()


def _awaiting_where() -> Any:
    return (samples.c.status != "skipped") & (_n_labels() < _labels_needed())


def _annotator_where(annotator: str) -> Any:
    mine = sa.select(labels.c.frame_id).where(labels.c.annotator == annotator)
    skipped = sa.select(label_skips.c.frame_id).where(label_skips.c.annotator == annotator)
    return _awaiting_where() & samples.c.frame_id.not_in(mine) & samples.c.frame_id.not_in(skipped)


def _queue_select() -> sa.Select:
    return (
        sa.select(
            samples.c.frame_id, samples.c.camera_id, samples.c.strategy, samples.c.inclusion_prob, samples.c.image_path,
            samples.c.sampled_at, samples.c.double_label, samples.c.status, frames.c.source_ref, frames.c.ts,
            _n_labels().label("n_labels"), _labels_needed().label("labels_needed"),
        )
        .join(frames, frames.c.frame_id == samples.c.frame_id)
        .order_by(samples.c.sampled_at, samples.c.frame_id)
    )


def _queued(row: Any) -> QueuedSample:
    m = row._mapping
    return QueuedSample(
        frame_id=m["frame_id"], camera_id=m["camera_id"], strategy=m["strategy"], inclusion_prob=float(m["inclusion_prob"]),
        image_path=m["image_path"], sampled_at=float(m["sampled_at"]), double_label=bool(m["double_label"]), status=m["status"],
        source_ref=m["source_ref"] or "", ts=float(m["ts"]), n_labels=int(m["n_labels"]), labels_needed=int(m["labels_needed"]),
    )
