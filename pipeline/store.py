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
import re
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
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("source_ref", sa.Text, nullable=False, default=""),
    sa.Column("width", sa.Integer),
    sa.Column("height", sa.Integer),
    # per-frame image statistics for drift (pipeline.evaluation.drift.image_stats)
    sa.Column("brightness", sa.Float),
    sa.Column("contrast", sa.Float),
    sa.Column("sharpness", sa.Float),
    sa.Column("noise", sa.Float),
    # the one secondary index (since _migrate_compact_predictions): a run's frames, a run's cameras, a camera's frames in time order
    # (evaluator, label targets, fleet resume, retention windows)
    sa.Index("ix_frames_run_camera_ts", "run_id", "camera_id", "ts"),
)

predictions = sa.Table(
    "predictions",
    metadata,
    # 64-bit on PostgreSQL (a 48-stream box writes ~250M predictions a day); SQLite's INTEGER PRIMARY KEY is the rowid
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    # looked up through uq_prediction_frame_role (frame_id is its first column): no separate index
    sa.Column("frame_id", sa.String(200), sa.ForeignKey("frames.frame_id"), nullable=False),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # incumbent | shadow
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False, default=""),
    # float16 little-endian, card class order (encode_probs / decode_probs; JSON text before _migrate_compact_predictions)
    sa.Column("probs", sa.LargeBinary, nullable=False),
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

# --- the labeling service's security state (pipeline.labeling.auth; migration _migrate_labeling_security) -------------
# Annotator tokens, hashed with argon2id. A token belongs to one annotator; an annotator has at most one *active* token
# (partial unique index): a new token for them rotates (revokes) the old one. Revoked rows stay (history, and a clear
# "revoked" answer at login).
label_tokens = sa.Table(
    "label_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),  # public id (``shadowcam label tokens list``)
    sa.Column("annotator", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # annotator | reviewer | admin
    sa.Column("lookup", sa.String(16), nullable=False, index=True),  # non-secret key that finds the row at login
    sa.Column("token_hash", sa.Text, nullable=False),  # argon2id PHC string, never the token
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
    sa.Index("uq_label_token_active_annotator", "annotator", unique=True,
             sqlite_where=sa.text("revoked_at IS NULL"), postgresql_where=sa.text("revoked_at IS NULL")),
)

# Server-side login sessions: the cookie carries a random secret, the store its SHA-256 (a stolen store opens no session).
label_sessions = sa.Table(
    "label_sessions",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),  # sha256 hex of the cookie's secret
    sa.Column("token_id", sa.String(32), sa.ForeignKey("label_tokens.token_id"), nullable=False, index=True),
    sa.Column("client", sa.String(64), nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("last_seen_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("ended_why", sa.String(32)),  # logout | revoked | idle | expired
)

# Every login attempt (ok or not): the rate limits count the failures here, so all server processes share them.
login_attempts = sa.Table(
    "login_attempts",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False, index=True),
    sa.Column("client", sa.String(64), nullable=False, index=True),
    sa.Column("annotator", sa.String(128), index=True),  # whose token the attempt aimed at, when known
    sa.Column("token_id", sa.String(32)),
    sa.Column("ok", sa.Boolean, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),  # ok | bad_token | revoked | locked_client | locked_annotator
)

# Append-only history of every label event (database triggers refuse UPDATE and DELETE). No foreign keys: the history
# outlives the frames and samples it names.
label_audit = sa.Table(
    "label_audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("ts", sa.Float, nullable=False),
    sa.Column("frame_id", sa.String(200), nullable=False, index=True),
    sa.Column("action", sa.String(16), nullable=False),  # create | change | resolve
    sa.Column("annotator", sa.String(128), nullable=False),
    sa.Column("old_label", sa.String(128)),
    sa.Column("new_label", sa.String(128), nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # web | review | import | simulated
    sa.Column("session_id", sa.String(64)),  # label_sessions.session_id of a web event
)

# Frames shown to an annotator and held back from the others until they answer or the lease expires. Taken under the
# sample row's lock (see PredictionStore.lease_next_frame), so several server processes never over-hand a frame.
label_leases = sa.Table(
    "label_leases",
    metadata,
    sa.Column("frame_id", sa.String(200), primary_key=True),
    sa.Column("annotator", sa.String(128), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)


# What retention (pipeline.retention) keeps of frames it compacted: one row per run, camera, role and window.
# role "frames" holds the frame-level sketch (image statistics); "incumbent" / "shadow" the model's (predicted-class
# counts, confidence and per-class probability histograms; the shadow row also the incumbent-vs-shadow agreement).
# ``sketch`` is JSON (pipeline.retention documents its keys); the counts add: n_frames of the "frames" rows plus the
# frames still stored is what the runs wrote.
window_aggregates = sa.Table(
    "window_aggregates",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("camera_id", sa.String(128), nullable=False),
    sa.Column("role", sa.String(16), nullable=False),  # frames | incumbent | shadow
    sa.Column("model_name", sa.String(200), nullable=False, default=""),
    sa.Column("model_version", sa.String(64), nullable=False, default=""),
    sa.Column("window_start", sa.Float, nullable=False),
    sa.Column("window_end", sa.Float, nullable=False),
    sa.Column("n_frames", sa.Integer, nullable=False),  # compacted frames of the camera in the window
    sa.Column("n_predictions", sa.Integer, nullable=False),  # of this role (0 on the "frames" row)
    sa.Column("sketch", sa.Text, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.UniqueConstraint("run_id", "camera_id", "role", "model_name", "model_version", "window_start", name="uq_window_aggregate"),
)

def _migrate_0_to_1(conn: Connection) -> None:
    metadata.create_all(conn)


def _migrate_1_to_2(conn: Connection) -> None:
    label_skips.create(conn, checkfirst=True)


def _migrate_labeling_security(conn: Connection) -> None:
    """Tokens, server-side sessions, login attempts, the append-only label audit and the label leases (issue 15)."""
    for t in (label_tokens, label_sessions, login_attempts, label_audit, label_leases):
        t.create(conn, checkfirst=True)
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(f"CREATE TRIGGER IF NOT EXISTS label_audit_no_{op.lower()} BEFORE {op} ON label_audit "
                                 "BEGIN SELECT RAISE(ABORT, 'label_audit is append-only'); END")
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql("CREATE OR REPLACE FUNCTION shadowcam_append_only() RETURNS trigger LANGUAGE plpgsql AS "
                             "$$ BEGIN RAISE EXCEPTION USING MESSAGE = TG_TABLE_NAME || ' is append-only'; END $$")
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS label_audit_append_only ON label_audit")
        conn.exec_driver_sql("CREATE TRIGGER label_audit_append_only BEFORE UPDATE OR DELETE ON label_audit "
                             "FOR EACH ROW EXECUTE FUNCTION shadowcam_append_only()")


PROBS_MIGRATION_CHUNK = 20_000  # predictions converted per step when a store's JSON probabilities become float16
_OLD_SINGLE_COLUMN_INDEXES = ("ix_frames_run_id", "ix_frames_camera_id", "ix_frames_ts", "ix_predictions_frame_id")


def _migrate_compact_predictions(conn: Connection) -> None:
    """A store that holds a month (issue 14): probabilities as binary float16 instead of JSON text (~45 bytes less a
    prediction), a 64-bit predictions id on PostgreSQL, indexes that serve the queries (``ix_frames_run_camera_ts``
    replaces the three single-column frames indexes; the ``predictions(frame_id)`` index, a prefix of
    ``uq_prediction_frame_role``, goes), and the ``window_aggregates`` table of :mod:`pipeline.retention`.

    A store with JSON probabilities gets its predictions table rebuilt (:func:`_rebuild_predictions`). Like every
    migration it runs inside the opening transaction: a failure leaves the store as it was.
    """
    cols = {c["name"]: c for c in sa.inspect(conn).get_columns(predictions.name)}
    if not isinstance(cols["probs"]["type"], sa.LargeBinary):
        _rebuild_predictions(conn)
    for name in _OLD_SINGLE_COLUMN_INDEXES:
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
    for ix in frames.indexes:
        ix.create(conn, checkfirst=True)
    window_aggregates.create(conn, checkfirst=True)


def _rebuild_predictions(conn: Connection) -> None:
    """Copy ``predictions`` into a table of the current definition, in id order and :data:`PROBS_MIGRATION_CHUNK`
    rows at a time, re-encoding each JSON probability list as float16; then drop the old table and give the new one
    its name. Ids are kept (the evaluator reads predictions in id order). The JSON's space is freed: PostgreSQL
    returns it to the system, SQLite keeps it as free pages that later writes reuse (``VACUUM`` shrinks the file)."""
    from tqdm import tqdm

    pg = conn.dialect.name == "postgresql"
    if pg:  # constraint (and index) names are per schema on PostgreSQL: the new table takes this one
        conn.exec_driver_sql("ALTER TABLE predictions DROP CONSTRAINT IF EXISTS uq_prediction_frame_role")
    md = sa.MetaData()
    frames.to_metadata(md)  # the foreign key's target
    new = predictions.to_metadata(md, name="predictions_new")
    new.create(conn)
    old = sa.table(predictions.name, *[sa.column(c.name) for c in predictions.columns])  # untyped: probs comes as text
    total = int(conn.execute(sa.select(sa.func.count()).select_from(old)).scalar_one())
    last = None
    with tqdm(total=total, desc="store: probabilities JSON -> float16", unit="row", disable=None) as bar:
        while True:
            q = sa.select(old).order_by(old.c.id).limit(PROBS_MIGRATION_CHUNK)
            rows = conn.execute(q if last is None else q.where(old.c.id > last)).all()
            if not rows:
                break
            conn.execute(new.insert(), [dict(r._mapping, probs=encode_probs(decode_probs(r.probs))) for r in rows])
            last = rows[-1].id
            bar.update(len(rows))
    conn.exec_driver_sql("DROP TABLE predictions")
    conn.exec_driver_sql("ALTER TABLE predictions_new RENAME TO predictions")
    if pg:
        conn.exec_driver_sql("ALTER INDEX predictions_new_pkey RENAME TO predictions_pkey")
        conn.exec_driver_sql("ALTER TABLE predictions RENAME CONSTRAINT predictions_new_frame_id_fkey TO predictions_frame_id_fkey")
        conn.exec_driver_sql("ALTER SEQUENCE predictions_new_id_seq RENAME TO predictions_id_seq")
        conn.exec_driver_sql("SELECT setval('predictions_id_seq', COALESCE((SELECT max(id) FROM predictions), 0) + 1, false)")


# MIGRATIONS[v] takes a store at version v to v + 1. Append, never edit.
MIGRATIONS: list[Callable[[Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2, _migrate_labeling_security,
                                                  _migrate_compact_predictions]
SCHEMA_VERSION = len(MIGRATIONS)


def default_sqlite_url(workdir: str | Path) -> str:
    return f"sqlite:///{Path(workdir).resolve() / 'shadowcam.db'}"


STORE_BACKENDS = ("sqlite", "postgresql")  # what PredictionStore is built and tested on
STORE_URL_HELP = "a SQLite path (runs/x/shadowcam.db, sqlite:///PATH) or a PostgreSQL URL (postgresql://USER@HOST/DB)"


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (for messages and summaries)."""
    return re.sub(r"(://[^:/@\s]*:)[^@/\s]*@", r"\1***@", str(url))


def one_line(text: object) -> str:
    """``text`` on one line: whitespace runs (newlines included) collapsed, SQLAlchemy's "Background on this
    error" link and echoed SQL dropped (database errors quoted in a :class:`StoreError`)."""
    s = re.sub(r"\(Background on this error at: [^)]*\)", "", str(text))
    s = re.sub(r"\[SQL: .*?\]", "", s, flags=re.S)
    return " ".join(s.split())


def normalize_url(url: str) -> str:
    """Accept a bare path as SQLite, and ``postgresql://`` as psycopg 3. Anything but SQLite and PostgreSQL
    (``mysql://``, a typo in the scheme, an unparsable URL) is a one-line :class:`StoreError`."""
    if not isinstance(url, str) or not url.strip():
        raise StoreError(f"empty prediction store URL {url!r}; expected {STORE_URL_HELP}")
    if "://" not in url:
        try:
            return f"sqlite:///{Path(url).resolve()}"
        except (OSError, ValueError) as e:
            raise StoreError(f"{url!r}: not a usable prediction store path ({one_line(e)}); expected {STORE_URL_HELP}") from None
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    try:
        backend = sa.engine.make_url(url).get_backend_name()
    except (sa.exc.ArgumentError, ValueError) as e:
        raise StoreError(f"{redact_url(url)}: not a valid prediction store URL ({one_line(e)}); expected {STORE_URL_HELP}") from None
    if backend not in STORE_BACKENDS:
        raise StoreError(f"{redact_url(url)}: unsupported store database {backend!r}; expected {STORE_URL_HELP}")
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store URL (or bare path); None for in-memory SQLite and for other databases."""
    url = normalize_url(url)
    if not url.startswith("sqlite"):
        return None
    db = sa.engine.make_url(url).database
    return Path(db) if db and db != ":memory:" and not db.startswith("file:") else None


def make_engine(url: str, create: bool = True) -> Engine:
    """A SQLAlchemy engine for ``url``. ``create``: make a SQLite file's missing parent folders (what commands
    that create a store want; reading commands pass False). A driver that is not installed is a :class:`StoreError`."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None and create:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreError(f"{path}: cannot create the prediction store's folder {path.parent} ({e.strerror})") from None
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
    try:
        # PostgreSQL serves several threads per process (the labeling page runs its handlers in a thread pool of 40):
        # room for that many connections, so a burst waits for the database, not for a pool slot (a pool timeout is a 500)
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=40, pool_timeout=120)
    except ImportError as e:  # e.g. postgresql+psycopg2:// without psycopg2
        raise StoreError(f"{redact_url(url)}: database driver {getattr(e, 'name', None) or one_line(e)!r} is not installed; "
                         f"use postgresql:// (psycopg 3, installed with shadowcam)") from None


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


@dataclass(frozen=True)
class TokenRecord:
    """One annotator token as the store keeps it (``token_hash``: argon2id; the token itself is never stored)."""

    token_id: str
    annotator: str
    role: str  # annotator | reviewer | admin
    lookup: str
    token_hash: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class SessionRecord:
    """A login session with its token's annotator, role and revocation time."""

    session_id: str  # sha256 hex of the cookie's secret
    token_id: str
    annotator: str
    role: str
    client: str
    created_at: float
    last_seen_at: float
    ended_at: float | None
    ended_why: str | None
    token_revoked_at: float | None


@dataclass(frozen=True)
class LabelOutcome:
    """What happened to one answer from the labeling page.

    ``status``: ``created`` (a new label), ``changed`` (the annotator's earlier answer replaced; ``old_label`` says
    what it was), ``unchanged`` (the same answer again), or a refusal that wrote nothing: ``complete`` (the frame
    already has all its labels), ``unknown_frame`` (never sampled), ``withdrawn`` (an operator took the sample out),
    ``not_tied`` (resolve: the frame's labels do not tie), ``not_an_answer`` (resolve: pick one of the answers given),
    ``resolved`` (a changed answer on a frame a reviewer has resolved: the answers the reviewer decided between stay).
    """

    status: str
    frame_id: str
    old_label: str | None = None
    new_label: str | None = None

    @property
    def written(self) -> bool:
        return self.status in ("created", "changed")


def _check_sqlite_store(path: Path) -> None:
    """Refuse, without writing to it, a SQLite file that is not a shadowcam store (:class:`StoreError`)."""
    import sqlite3

    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            found = con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (schema_meta.name,)).fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot open prediction store {str(path)!r}: {e.__class__.__name__}: {one_line(e)}") from None
    if not found:
        raise StoreError(f"{path}: not a shadowcam prediction store (no {schema_meta.name} table); give the store that "
                         f"`shadowcam run` or `shadowcam demo` wrote")


IMAGE_STAT_COLUMNS = ("brightness", "contrast", "sharpness", "noise")  # frames columns (pipeline.imagestats.STAT_NAMES)


@dataclass(frozen=True)
class WindowRows:
    """What retention aggregates of one camera's window: the frames going away, ``(frame_id, seq, ts, brightness,
    contrast, sharpness, noise)`` in time order, and their predictions, ``(frame_id, role, model_name,
    model_version, probs, label, degraded)`` in write order (``probs`` as stored: see :func:`decode_probs_many`)."""

    run_id: str
    camera_id: str
    start: float
    end: float
    frames: list[tuple]
    predictions: list[tuple]


@dataclass(frozen=True)
class WindowAggregate:
    """One row of ``window_aggregates``: what was kept of a camera's compacted frames in a window, for one role
    (``frames``: the frame-level sketch; ``incumbent`` / ``shadow``: one model's)."""

    run_id: str
    camera_id: str
    role: str  # frames | incumbent | shadow
    model_name: str
    model_version: str
    window_start: float
    window_end: float
    n_frames: int
    n_predictions: int
    sketch: dict


class PredictionStore:
    """Open (and create or migrate) a store by SQLAlchemy URL or SQLite path.

    ``must_exist``: the store must already be there (every command that reads a store: evaluate, label,
    promote, retrain, data check, explain). A SQLite path that does not exist is then a one-line
    :class:`StoreError` and nothing is created (no file, no folders), and a database without shadowcam's
    ``schema_meta`` table is refused too. Only commands that create stores (``run``, ``demo``) leave it False.
    Every failure to open is a one-line :class:`StoreError` with the password redacted.
    """

    def __init__(self, url: str, must_exist: bool = False):
        self.url = normalize_url(url)
        shown = redact_url(url)
        path = sqlite_path(self.url)
        if must_exist and path is not None and not path.is_file():
            what = "is a folder, not a store file" if path.is_dir() else "does not exist"
            raise StoreError(f"{path}: prediction store not found ({what}); give the shadowcam.db that `shadowcam run` "
                             f"or `shadowcam demo` wrote (only they create stores), or a postgresql:// URL")
        if must_exist and path is not None:
            _check_sqlite_store(path)  # read-only: a file that is no store is refused untouched
        engine = None
        try:
            self.engine = engine = make_engine(self.url, create=not must_exist)
            if must_exist and not sa.inspect(engine).has_table(schema_meta.name):
                raise StoreError(f"{shown}: not a shadowcam prediction store (no {schema_meta.name} table); give the "
                                 f"store that `shadowcam run` or `shadowcam demo` wrote")
            self._migrate()
        except sa.exc.SQLAlchemyError as e:
            if engine is not None:
                engine.dispose()
            raise StoreError(f"cannot open prediction store {shown!r}: {e.__class__.__name__}: "
                             f"{one_line(getattr(e, 'orig', None) or e)}") from None
        except StoreError:
            if engine is not None:
                engine.dispose()
            raise

    # --- schema ---------------------------------------------------------------------------------
    def _migrate(self) -> None:
        with self.engine.begin() as conn:
            schema_meta.create(conn, checkfirst=True)
            row = conn.execute(sa.select(schema_meta.c.value).where(schema_meta.c.key == "version")).first()
            version = int(row[0]) if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {redact_url(self.url)} has schema version {version}, newer than this shadowcam ({SCHEMA_VERSION}); upgrade shadowcam"
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
        """Write one batch in one transaction (when this returns, it has committed). On PostgreSQL the frames and
        predictions go through ``COPY`` (several times the rate of row-by-row inserts: see
        :func:`pipeline.retention.measure_store_writes`); errors are SQLAlchemy's as for any statement
        (``IntegrityError`` for a duplicate, ``OperationalError`` for a lost connection)."""
        now = time.time()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                if frame_records:
                    _copy_rows(conn, frames, _FRAME_COLUMNS, [tuple(r.__dict__[c] for c in _FRAME_COLUMNS) for r in frame_records])
                if preds:
                    _copy_rows(conn, predictions, _PRED_COLUMNS, _pred_rows(preds, now))
            else:
                if frame_records:
                    conn.execute(frames.insert(), [r.__dict__ for r in frame_records])
                if preds:
                    conn.execute(predictions.insert(), [dict(zip(_PRED_COLUMNS, t)) for t in _pred_rows(preds, now)])
            if events:
                conn.execute(
                    health_events.insert(),
                    [dict(run_id=rid, camera_id=e.camera_id, kind=e.kind.value, ts=e.timestamp, detail=e.detail) for rid, e in events],
                )
            if sample_records:
                conn.execute(samples.insert(), [dict(s.__dict__, status="pending") for s in sample_records])

    # --- retention (pipeline.retention): runs, cameras, days and windows of old frames; compaction ---------------
    def retention_runs(self) -> list[tuple[str, list[str]]]:
        """``(run_id, class_names)`` of every run with frames (runs without a ``runs`` row too, with no class names),
        in run_id order. Walks the frames index one run at a time (cheap on a store of any size)."""
        out: list[tuple[str, list[str]]] = []
        last: str | None = None
        with self.engine.connect() as conn:
            names = {r: json.loads(c) if c else [] for r, c in conn.execute(sa.select(runs.c.run_id, runs.c.class_names))}
            while True:
                q = sa.select(sa.func.min(frames.c.run_id))
                run_id = conn.execute(q if last is None else q.where(frames.c.run_id > last)).scalar()
                if run_id is None:
                    return out
                out.append((run_id, names.get(run_id, [])))
                last = run_id

    def first_frame_ts(self, run_id: str, camera_id: str, at_or_after: float, before: float) -> float | None:
        """The time of the camera's first frame in ``[at_or_after, before)`` in run ``run_id`` (None: no frame there)."""
        f = frames
        q = sa.select(sa.func.min(f.c.ts)).where((f.c.run_id == run_id) & (f.c.camera_id == camera_id)
                                                 & (f.c.ts >= at_or_after) & (f.c.ts < before))
        with self.engine.connect() as conn:
            ts = conn.execute(q).scalar()
        return None if ts is None else float(ts)

    def frame_seqs(self, run_id: str, camera_id: str, start: float, end: float) -> tuple[np.ndarray, np.ndarray]:
        """``(seq, ts)`` of the camera's frames in ``[start, end)`` of run ``run_id`` (int64 and float64 arrays,
        unordered), fetched in chunks."""
        f = frames
        q = sa.select(f.c.seq, f.c.ts).where((f.c.run_id == run_id) & (f.c.camera_id == camera_id) & (f.c.ts >= start) & (f.c.ts < end))
        seqs, ts = [np.empty(0, np.int64)], [np.empty(0, np.float64)]
        with self.engine.connect() as conn:
            res = conn.execution_options(stream_results=True, yield_per=100_000).execute(q)
            for chunk in res.partitions(100_000):
                seqs.append(np.fromiter((r[0] for r in chunk), dtype=np.int64, count=len(chunk)))
                ts.append(np.fromiter((r[1] for r in chunk), dtype=np.float64, count=len(chunk)))
        return np.concatenate(seqs), np.concatenate(ts)

    def referenced_seqs(self, run_id: str, camera_id: str, start: float, end: float) -> set[int]:
        """``seq`` of the camera's frames in ``[start, end)`` of run ``run_id`` that another table names through a
        foreign key (sampled, labelled, skipped, ...): retention keeps them."""
        f = frames
        in_range = (f.c.run_id == run_id) & (f.c.camera_id == camera_id) & (f.c.ts >= start) & (f.c.ts < end)
        out: set[int] = set()
        with self.engine.connect() as conn:
            for _, col in _frame_references():
                out.update(int(r[0]) for r in conn.execute(sa.select(f.c.seq).join(col.table, col == f.c.frame_id).where(in_range)))
        return out

    def compact_window(
        self, run_id: str, camera_id: str, start: float, end: float, keep_seqs: Iterable[int],
        summarize: Callable[[WindowRows, dict[tuple, dict]], list[dict]], dry_run: bool = False,
    ) -> tuple[int, int, int, int]:
        """Compact one window of one camera in one transaction: the frames in ``[start, end)`` of run ``run_id`` and
        camera ``camera_id`` that are neither in ``keep_seqs`` nor referenced by another table (samples, labels,
        skips, ...: anything with a foreign key to frames) are handed to ``summarize`` with their predictions and
        the window's existing aggregate rows; its rows replace the aggregates, and those frames and their
        predictions are deleted. ``dry_run``: nothing is written.

        Returns ``(frames_kept, frames_aggregated, predictions_deleted, aggregate_rows_written)``. Deleting exactly
        the frames read (not "the window"), a frame written into the window meanwhile is left for the next run; a
        frame that another retention deleted first makes the transaction fail (:class:`StoreError`) before it
        writes, so the counts are never doubled.
        """
        f, p, wa = frames, predictions, window_aggregates
        in_window = (f.c.run_id == run_id) & (f.c.camera_id == camera_id) & (f.c.ts >= start) & (f.c.ts < end)
        keep = {int(x) for x in keep_seqs}
        with self.engine.begin() as conn:
            rows = conn.execute(sa.select(f.c.frame_id, f.c.seq, f.c.ts, *[f.c[k] for k in IMAGE_STAT_COLUMNS])
                                .where(in_window).order_by(f.c.ts, f.c.frame_id)).all()
            # every lookup below goes by frame id through a primary key or unique index (never a join that the
            # planner could turn into a scan of a month of predictions)
            referenced: set[str] = set()
            for _, col in _frame_references():
                for chunk in _chunks([r[0] for r in rows], _IN_CHUNK):
                    referenced.update(r[0] for r in conn.execute(sa.select(col).where(_is_in(conn, col, chunk))))
            go = [r for r in rows if int(r[1]) not in keep and r[0] not in referenced]
            if not go:
                return len(rows), 0, 0, 0
            gone = {r[0] for r in go}
            ids = sorted(gone)
            pred_q = sa.select(p.c.id, p.c.frame_id, p.c.role, p.c.model_name, p.c.model_version, p.c.probs, p.c.label, p.c.degraded)
            preds = sorted((r for chunk in _chunks(ids, _IN_CHUNK) for r in conn.execute(pred_q.where(_is_in(conn, p.c.frame_id, chunk)))),
                           key=lambda r: r[0])
            preds = [tuple(r)[1:] for r in preds]
            key_cols = (wa.c.role, wa.c.model_name, wa.c.model_version)
            existing = {tuple(r[:3]): json.loads(r[3]) | {"n_frames": r[4], "n_predictions": r[5]} for r in conn.execute(
                sa.select(*key_cols, wa.c.sketch, wa.c.n_frames, wa.c.n_predictions)
                .where((wa.c.run_id == run_id) & (wa.c.camera_id == camera_id) & (wa.c.window_start == start))
            )}
            window = WindowRows(run_id, camera_id, start, end, [tuple(r) for r in go], preds)
            out = summarize(window, existing)
            if dry_run:
                return len(rows) - len(go), len(go), len(preds), len(out)
            n_pred = n_frames = 0
            for chunk in _chunks(ids, _IN_CHUNK):
                n_pred += conn.execute(p.delete().where(_is_in(conn, p.c.frame_id, chunk))).rowcount
                n_frames += conn.execute(f.delete().where(_is_in(conn, f.c.frame_id, chunk))).rowcount
            if n_frames != len(ids) or n_pred != len(preds):
                raise StoreError(f"retention of run {run_id} camera {camera_id} window {start:.0f}: {len(ids) - n_frames} frames "
                                 f"were deleted meanwhile (another retention running?); nothing written for this window")
            now = time.time()
            for row in out:
                key = (row["role"], row["model_name"], row["model_version"])
                vals = {"n_frames": row["n_frames"], "n_predictions": row["n_predictions"], "sketch": json.dumps(row["sketch"]),
                        "updated_at": now, "window_end": end}
                if key in existing:
                    conn.execute(wa.update().where((wa.c.run_id == run_id) & (wa.c.camera_id == camera_id) & (wa.c.window_start == start)
                                                   & (wa.c.role == key[0]) & (wa.c.model_name == key[1]) & (wa.c.model_version == key[2]))
                                 .values(**vals))
                else:
                    conn.execute(wa.insert().values(run_id=run_id, camera_id=camera_id, role=key[0], model_name=key[1],
                                                    model_version=key[2], window_start=start, **vals))
        return len(rows) - len(go), len(go), len(preds), len(out)

    def table_sizes(self) -> dict[str, int]:
        """Bytes each table of the store takes on disk, its indexes (and PostgreSQL's TOAST) included; SQLite's
        WAL is checkpointed first. Key ``"*file"`` on SQLite: the whole file (free pages included)."""
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                page = int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
                out: dict[str, int] = {"*file": page * int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())}
                owner = dict(conn.exec_driver_sql("SELECT name, tbl_name FROM sqlite_master").all())
                for name, size in conn.exec_driver_sql("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name"):
                    t = owner.get(name, name)
                    out[t] = out.get(t, 0) + int(size)
                return out
            rows = conn.execute(sa.text(
                "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind = 'r' AND n.nspname = current_schema()"
            )).all()
            return {name: int(size) for name, size in rows}

    def vacuum(self) -> None:
        """Give space freed by deletes back: SQLite ``VACUUM`` (rewrites the file; needs that much free disk and
        holds the store meanwhile), PostgreSQL ``VACUUM ANALYZE`` (marks it reusable, refreshes planner statistics)."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM" if self.engine.dialect.name == "sqlite" else "VACUUM ANALYZE")

    def window_aggregates(self, run_ids: Sequence[str] | None = None) -> list[WindowAggregate]:
        """The per-window aggregates of compacted frames (of runs ``run_ids``; None: every run), ordered by run,
        camera, window and role (``frames`` before the models). ``sketch`` is the decoded JSON
        (:mod:`pipeline.retention` documents its keys; :func:`pipeline.retention.sketch_arrays` gives numpy arrays)."""
        wa = window_aggregates
        q = sa.select(wa.c.run_id, wa.c.camera_id, wa.c.role, wa.c.model_name, wa.c.model_version, wa.c.window_start,
                      wa.c.window_end, wa.c.n_frames, wa.c.n_predictions, wa.c.sketch)
        if run_ids is not None:
            q = q.where(wa.c.run_id.in_(list(run_ids)))
        q = q.order_by(wa.c.run_id, wa.c.camera_id, wa.c.window_start, wa.c.role != "frames", wa.c.role, wa.c.model_name)
        with self.engine.connect() as conn:
            return [WindowAggregate(r, cam, role, name, ver, float(w0), float(w1), int(nf), int(npred), json.loads(sk))
                    for r, cam, role, name, ver, w0, w1, nf, npred, sk in conn.execute(q)]

    # --- labels -----------------------------------------------------------------------------------
    def add_labels(self, new: Iterable[Label], replace: bool = False) -> int:
        """Insert labels in one transaction (all or nothing); marks their samples as labeled
        once they have all the labels they need (two for ``double_label`` samples, else one).

        A second label by the same annotator for the same frame replaces the first when
        ``replace`` is true, otherwise raises :class:`LabelImportError`. Every label written also goes to the
        append-only ``label_audit`` table (``create``, or ``change`` with the old label when one is replaced).
        Imports are not held to the labels a frame needs (the labeling page is: :meth:`submit_label`).
        """
        rows = [dict(frame_id=l.frame_id, label=l.label, annotator=l.annotator, source=l.source, ts=l.timestamp or time.time()) for l in new]
        if not rows:
            return 0
        try:
            with self.engine.begin() as conn:
                old: dict[tuple[str, str], str] = {}
                if replace:
                    for chunk in _chunks(sorted({r["frame_id"] for r in rows}), 500):
                        q = sa.select(labels.c.frame_id, labels.c.annotator, labels.c.label).where(labels.c.frame_id.in_(chunk))
                        old.update({(f, a): lab for f, a, lab in conn.execute(q)})
                    for r in rows:
                        conn.execute(labels.delete().where((labels.c.frame_id == r["frame_id"]) & (labels.c.annotator == r["annotator"])))
                conn.execute(labels.insert(), rows)
                conn.execute(label_audit.insert(), [
                    dict(ts=r["ts"], frame_id=r["frame_id"], annotator=r["annotator"], new_label=r["label"], source=r["source"],
                         session_id=None, old_label=old.get((r["frame_id"], r["annotator"])),
                         action="change" if (r["frame_id"], r["annotator"]) in old else "create")
                    for r in rows
                ])
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

    def frame_class_names(self, ids: Iterable[str]) -> dict[str, tuple[str, list[str]]]:
        """``frame_id -> (run_id, class names its run recorded)`` for the frames of ``ids`` that exist (the class
        list is empty where the run recorded none). Label import checks each label against its frame's model."""
        ids = list(ids)
        out: dict[str, tuple[str, list[str]]] = {}
        q = sa.select(frames.c.frame_id, frames.c.run_id, runs.c.class_names).join(runs, runs.c.run_id == frames.c.run_id, isouter=True)
        with self.engine.connect() as conn:
            for chunk in _chunks(ids, 500):
                for fid, rid, names in conn.execute(q.where(frames.c.frame_id.in_(chunk))):
                    out[fid] = (rid or "", list(json.loads(names)) if names else [])
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
            conn.execute(label_leases.delete().where((label_leases.c.frame_id == frame_id) & (label_leases.c.annotator == annotator)))
        return True

    # --- the labeling page: leases, answers, resolutions (pipeline.labeling.app) ------------------------------------
    def lease_next_frame(self, annotator: str, lease_s: float, now: float | None = None, scan: int = 50) -> QueuedSample | None:
        """The frame ``annotator`` labels next, leased to them for ``lease_s`` seconds; None when nothing is left for them.

        A frame they already hold comes first (a reload shows the same frame; its lease is renewed). Otherwise the
        oldest frame of their queue whose labels plus the other annotators' live leases are fewer than it needs.
        Each lease is taken in a transaction that first locks the frame's sample row (an UPDATE: SQLite's write lock, a
        PostgreSQL row lock) and then counts labels and live leases again, so several server processes never lease
        a frame beyond its plan. An annotator holds one lease at a time (taking one drops their others).
        """
        now = time.time() if now is None else now
        others = (
            sa.select(sa.func.count()).select_from(label_leases)
            .where((label_leases.c.frame_id == samples.c.frame_id) & (label_leases.c.annotator != annotator)
                   & (label_leases.c.expires_at > now))
            .scalar_subquery()
        )
        held = sa.select(label_leases.c.frame_id).where((label_leases.c.annotator == annotator) & (label_leases.c.expires_at > now))
        q = (
            _queue_select().where(_annotator_where(annotator) & ((_n_labels() + others) < _labels_needed()))
            .order_by(None).order_by(sa.case((samples.c.frame_id.in_(held), 0), else_=1), samples.c.sampled_at, samples.c.frame_id)
            .limit(scan)
        )
        with self.engine.connect() as conn:
            cands = [_queued(r) for r in conn.execute(q)]
        for c in cands:
            if self._take_lease(c.frame_id, annotator, now, now + lease_s):
                return c
        return None

    def _take_lease(self, frame_id: str, annotator: str, now: float, expires_at: float) -> bool:
        with self.engine.begin() as conn:
            found = _lock_sample(conn, frame_id)
            if found is None or found[0] == "skipped":
                return False
            needed = 2 if found[1] else 1
            n = conn.execute(sa.select(sa.func.count()).select_from(labels).where(labels.c.frame_id == frame_id)).scalar_one()
            mine = conn.execute(sa.select(labels.c.id).where((labels.c.frame_id == frame_id) & (labels.c.annotator == annotator))).first()
            m = conn.execute(sa.select(sa.func.count()).select_from(label_leases).where(
                (label_leases.c.frame_id == frame_id) & (label_leases.c.annotator != annotator) & (label_leases.c.expires_at > now))).scalar_one()
            if mine is not None or n + m >= needed:
                return False
            conn.execute(label_leases.delete().where(
                (label_leases.c.annotator == annotator) | ((label_leases.c.frame_id == frame_id) & (label_leases.c.expires_at <= now))))
            conn.execute(label_leases.insert().values(frame_id=frame_id, annotator=annotator, expires_at=expires_at))
        return True

    def release_label_leases(self, annotator: str, frame_id: str | None = None) -> int:
        """Drop ``annotator``'s lease on ``frame_id`` (None: all their leases); how many were dropped."""
        where = label_leases.c.annotator == annotator
        if frame_id is not None:
            where = where & (label_leases.c.frame_id == frame_id)
        with self.engine.begin() as conn:
            return conn.execute(label_leases.delete().where(where)).rowcount

    def submit_label(self, frame_id: str, annotator: str, label: str, source: str = "web", session_id: str | None = None,
                     now: float | None = None) -> LabelOutcome:
        """Store one answer from the labeling page, under the frame's sample-row lock (see :meth:`lease_next_frame`).

        A first answer is written only while the frame needs labels (else ``complete``, nothing written: a third vote
        on a double-labelled frame cannot flip its majority). The same annotator answering again *changes* their label
        (``changed``, old and new in the audit) or, with the same answer, changes nothing (``unchanged``); once a
        reviewer resolved the frame, its answers no longer change (``resolved``, nothing written). Every write
        goes to ``label_audit`` with ``session_id``; the annotator's lease on the frame is dropped.
        """
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            found = _lock_sample(conn, frame_id)
            if found is None:
                return LabelOutcome("unknown_frame", frame_id, None, label)
            status, double = found
            mine = conn.execute(sa.select(labels.c.id, labels.c.label).where(
                (labels.c.frame_id == frame_id) & (labels.c.annotator == annotator))).first()
            audit = dict(ts=now, frame_id=frame_id, annotator=annotator, new_label=label, source=source, session_id=session_id)
            if mine is not None:
                conn.execute(label_leases.delete().where((label_leases.c.frame_id == frame_id) & (label_leases.c.annotator == annotator)))
                if mine.label == label:
                    return LabelOutcome("unchanged", frame_id, label, label)
                reviewed = conn.execute(sa.select(labels.c.id).where((labels.c.frame_id == frame_id) & (labels.c.source == "review"))).first()
                if reviewed is not None:  # a reviewer decided between the answers as they were: they stay so
                    return LabelOutcome("resolved", frame_id, mine.label, label)
                conn.execute(labels.update().where(labels.c.id == mine.id).values(label=label, ts=now, source=source))
                conn.execute(label_audit.insert().values(action="change", old_label=mine.label, **audit))
                return LabelOutcome("changed", frame_id, mine.label, label)
            if status == "skipped":
                return LabelOutcome("withdrawn", frame_id, None, label)
            needed = 2 if double else 1
            n = conn.execute(sa.select(sa.func.count()).select_from(labels).where(labels.c.frame_id == frame_id)).scalar_one()
            if n >= needed:
                return LabelOutcome("complete", frame_id, None, label)
            conn.execute(labels.insert().values(frame_id=frame_id, label=label, annotator=annotator, source=source, ts=now))
            conn.execute(label_audit.insert().values(action="create", old_label=None, **audit))
            if n + 1 >= needed:
                conn.execute(samples.update().where(samples.c.frame_id == frame_id).values(status="labeled"))
            conn.execute(label_leases.delete().where((label_leases.c.frame_id == frame_id) & (label_leases.c.annotator == annotator)))
        return LabelOutcome("created", frame_id, None, label)

    def resolve_label(self, frame_id: str, reviewer: str, label: str, refuse: Callable[[list[tuple[str, str, str]]], str | None],
                      session_id: str | None = None, now: float | None = None) -> LabelOutcome:
        """A reviewer's deciding label (source ``review``, audit action ``resolve``), written under the frame's lock
        unless ``refuse(labels)`` - given the frame's ``(annotator, label, source)`` rows, oldest first - returns a
        refusal status (the labeling side's rule: :func:`pipeline.labeling.review.resolution_refusal`)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            if _lock_sample(conn, frame_id) is None:
                return LabelOutcome("unknown_frame", frame_id, None, label)
            rows = [tuple(r) for r in conn.execute(sa.select(labels.c.annotator, labels.c.label, labels.c.source)
                                                     .where(labels.c.frame_id == frame_id).order_by(labels.c.ts, labels.c.id))]
            why = refuse(rows)
            if why is None and any(a == reviewer for a, _, _ in rows):
                why = "complete"
            if why is not None:
                return LabelOutcome(why, frame_id, None, label)
            conn.execute(labels.insert().values(frame_id=frame_id, label=label, annotator=reviewer, source="review", ts=now))
            conn.execute(label_audit.insert().values(ts=now, frame_id=frame_id, action="resolve", annotator=reviewer, old_label=None,
                                                     new_label=label, source="review", session_id=session_id))
        return LabelOutcome("created", frame_id, None, label)

    def double_label_frame_labels(self) -> dict[str, list[tuple[str, str, str]]]:
        """Every double-label sample with at least two labels -> its ``(annotator, label, source)`` rows, oldest first
        (what review mode needs to find ties to resolve)."""
        q = (
            sa.select(labels.c.frame_id, labels.c.annotator, labels.c.label, labels.c.source)
            .join(samples, samples.c.frame_id == labels.c.frame_id)
            .where(samples.c.double_label)
            .order_by(samples.c.sampled_at, labels.c.frame_id, labels.c.ts, labels.c.id)
        )
        out: dict[str, list[tuple[str, str, str]]] = {}
        with self.engine.connect() as conn:
            for fid, who, lab, src in conn.execute(q):
                out.setdefault(fid, []).append((who, lab, src))
        return {fid: rows for fid, rows in out.items() if len(rows) >= 2}

    # --- the labeling page: tokens, sessions, login attempts (pipeline.labeling.auth) -------------------------------
    def add_label_token(self, rec: TokenRecord, rotate: bool = False) -> list[str]:
        """Store a (hashed) token. ``rotate``: first revoke the annotator's active token and end its sessions, in the
        same transaction; returns the revoked token ids. Without ``rotate`` an annotator who has an active token is a
        :class:`StoreError` (a token belongs to one annotator, an annotator has one active token)."""
        try:
            with self.engine.begin() as conn:
                revoked = self._revoke(conn, label_tokens.c.annotator == rec.annotator, rec.created_at) if rotate else []
                conn.execute(label_tokens.insert().values(**rec.__dict__))
        except sa.exc.IntegrityError:
            raise StoreError(f"annotator {rec.annotator!r} already has an active token; revoke it first "
                             f"(shadowcam label tokens revoke {rec.annotator}) or rotate it (tokens add ... --rotate)") from None
        return revoked

    def revoke_label_tokens(self, who: str, now: float | None = None) -> list[str]:
        """Revoke the active token with id ``who``, or the active token of annotator ``who``; their sessions end at once
        (same transaction). Returns the revoked token ids (empty: nothing active matched)."""
        now = time.time() if now is None else now
        with self.engine.begin() as conn:
            return self._revoke(conn, (label_tokens.c.token_id == who) | (label_tokens.c.annotator == who), now)

    @staticmethod
    def _revoke(conn: Connection, where: Any, now: float) -> list[str]:
        ids = [r[0] for r in conn.execute(sa.select(label_tokens.c.token_id).where(where & label_tokens.c.revoked_at.is_(None)))]
        if ids:
            conn.execute(label_tokens.update().where(label_tokens.c.token_id.in_(ids)).values(revoked_at=now))
            conn.execute(label_sessions.update().where(label_sessions.c.token_id.in_(ids) & label_sessions.c.ended_at.is_(None))
                         .values(ended_at=now, ended_why="revoked"))
        return ids

    def label_tokens(self, lookup: str | None = None, active_only: bool = False) -> list[TokenRecord]:
        """The stored tokens (oldest first), those with login ``lookup`` key when given, only unrevoked ones when asked."""
        q = sa.select(label_tokens).order_by(label_tokens.c.created_at, label_tokens.c.token_id)
        if lookup is not None:
            q = q.where(label_tokens.c.lookup == lookup)
        if active_only:
            q = q.where(label_tokens.c.revoked_at.is_(None))
        with self.engine.connect() as conn:
            return [TokenRecord(**r._mapping) for r in conn.execute(q)]

    def open_label_sessions(self, now: float, idle_s: float, max_s: float) -> dict[str, int]:
        """token_id -> sessions that are neither ended nor expired at ``now`` (for ``label tokens list``)."""
        q = (sa.select(label_sessions.c.token_id, sa.func.count()).where(
            label_sessions.c.ended_at.is_(None) & (label_sessions.c.last_seen_at > now - idle_s) & (label_sessions.c.created_at > now - max_s))
            .group_by(label_sessions.c.token_id))
        with self.engine.connect() as conn:
            return {t: int(n) for t, n in conn.execute(q)}

    def create_label_session(self, session_id: str, token_id: str, client: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(label_sessions.insert().values(session_id=session_id, token_id=token_id, client=client[:64], created_at=now,
                                                        last_seen_at=now))

    def label_session(self, session_id: str) -> SessionRecord | None:
        """The session (with its token's annotator, role and revocation time), or None for an unknown id."""
        s, t = label_sessions, label_tokens
        q = (sa.select(s.c.session_id, s.c.token_id, t.c.annotator, t.c.role, s.c.client, s.c.created_at, s.c.last_seen_at,
                       s.c.ended_at, s.c.ended_why, t.c.revoked_at.label("token_revoked_at"))
             .join(t, t.c.token_id == s.c.token_id).where(s.c.session_id == session_id))
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return SessionRecord(**row._mapping) if row else None

    def touch_label_session(self, session_id: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(label_sessions.update().where(label_sessions.c.session_id == session_id).values(last_seen_at=now))

    def end_label_session(self, session_id: str, why: str, now: float) -> bool:
        """End a session (logout, or found expired); False when it had already ended."""
        with self.engine.begin() as conn:
            return conn.execute(label_sessions.update().where((label_sessions.c.session_id == session_id) & label_sessions.c.ended_at.is_(None))
                                .values(ended_at=now, ended_why=why)).rowcount > 0

    def record_login_attempt(self, ts: float, client: str, ok: bool, reason: str, annotator: str | None = None,
                             token_id: str | None = None) -> None:
        with self.engine.begin() as conn:
            conn.execute(login_attempts.insert().values(ts=ts, client=client[:64], ok=ok, reason=reason, annotator=annotator, token_id=token_id))

    def count_login_failures(self, since: float, client: str | None = None, annotator: str | None = None) -> int:
        """Failed logins with a wrong or revoked token at or after ``since``, from ``client`` and/or against ``annotator``
        (lockout refusals are recorded but not counted: waiting out the window ends a lockout)."""
        where = (login_attempts.c.ts >= since) & ~login_attempts.c.ok & login_attempts.c.reason.in_(["bad_token", "revoked"])
        if client is not None:
            where = where & (login_attempts.c.client == client[:64])
        if annotator is not None:
            where = where & (login_attempts.c.annotator == annotator)
        return self.count(login_attempts, where)

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
                (fid, role, name, version, decode_probs(probs), label, degraded)
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

    def evaluation_columns(self, run_ids: Sequence[str], classes: Sequence[str], image_stats: Sequence[str] = ()) -> Any:
        """What :meth:`evaluation_rows` returns, as frame-aligned column arrays: a
        :class:`pipeline.columnar.EvaluationColumns` (frames in ``(ts, frame_id)`` order; per role: has, class index
        into ``classes``, (n, C) float32 probabilities, degraded, model counts; inclusion probabilities and strategies;
        labels oldest first). The same rows and rules as :meth:`evaluation_rows` (retraining-only samples and their
        labels left out), read in C through ADBC when its driver is installed (:mod:`pipeline.columnar`; SQLite's big
        reads in a child process): seconds, not minutes, for millions of predictions.

        Four scans: frames of the scope; predictions, each fetched as its frame id, one packed integer (role, degraded,
        class index, model index: SQL ``CASE`` s) and its probability bytes (all predictions when the scope holds most
        frames of the store, a scan being cheaper than a lookup per row; else only those of scope frames); samples and
        labels of scope frames. Predictions are joined to frames by a hash join on the frame id (Arrow).
        """
        from pipeline import columnar

        unknown = [k for k in image_stats if k not in frames.c]
        if unknown:
            raise StoreError(f"frames table has no column(s) {unknown} (its columns: {', '.join(frames.c.keys())})")
        f, p, s, lb = frames, predictions, samples, labels
        in_scope = f.c.run_id.in_(list(run_ids))
        sqlite = self.engine.dialect.name == "sqlite"
        # ADBC's SQLite driver types a column from its first rows: nulls there would make later values a type error,
        # so missing statistics travel as -inf (columnar.assemble turns them into NaN), probabilities as bytes
        stat_cols = [sa.func.coalesce(f.c[k], sa.literal_column("-9e999")).label(k) if sqlite else f.c[k].label(k) for k in image_stats]
        frame_q = sa.select(f.c.frame_id, f.c.camera_id, f.c.ts, *stat_cols).where(in_scope)
        run_rows = [r for r in self.list_runs() if r["run_id"] in set(run_ids)]
        models: list[str] = []
        for r in run_rows:
            for m in (r["incumbent_model"], r["shadow_model"]):
                if m and m not in models:
                    models.append(m)
        model_pairs = [(m.rsplit(":", 1)[0], m.rsplit(":", 1)[1] if ":" in m else "") for m in models]
        keys = [f"{n}:{v}" if v else n for n, v in model_pairs]
        role_code = sa.case({"incumbent": 0, "shadow": 1}, value=p.c.role, else_=2)
        class_code = sa.case({c: i for i, c in enumerate(classes)}, value=p.c.label, else_=-1) if classes else sa.literal(-1)
        model_code = (sa.case(*[((p.c.model_name == n) & (p.c.model_version == v), i) for i, (n, v) in enumerate(model_pairs)], else_=-1)
                      if model_pairs else sa.literal(-1))
        code = columnar.pack_code(role_code, sa.case((p.c.degraded.is_not(None), 1), else_=0), class_code, model_code, len(classes))
        probs_col = sa.cast(p.c.probs, sa.LargeBinary) if sqlite else p.c.probs
        pred_q = sa.select(p.c.frame_id, code.label("code"), probs_col.label("probs")).order_by(p.c.id)
        n_scope, n_all = self.count(f, in_scope), self.count(f)
        if n_scope * 2 < n_all:  # the scope is a small part of the store: only its frames' predictions
            pred_q = pred_q.where(p.c.frame_id.in_(sa.select(f.c.frame_id).where(in_scope)))
        else:  # most of the store: scan the frames table (the run index would cost a lookup per row)
            frame_q = sa.select(f.c.frame_id, f.c.camera_id, f.c.ts, *stat_cols).where(f.c.run_id.concat("").in_(list(run_ids)))
        sample_q = (sa.select(s.c.frame_id, s.c.inclusion_prob, s.c.strategy).join(f, f.c.frame_id == s.c.frame_id)
                    .where(in_scope & ~_training_only(s)))
        label_q = (sa.select(lb.c.frame_id, lb.c.label, lb.c.annotator, lb.c.ts).join(f, f.c.frame_id == lb.c.frame_id)
                   .where(in_scope & lb.c.frame_id.not_in(_training_frames())).order_by(lb.c.ts, lb.c.id))

        def model_counts() -> list[tuple[str, str, int]]:  # some prediction came from a model no run names: count them all
            q = (sa.select(p.c.role, p.c.model_name, p.c.model_version, sa.func.count(), sa.func.min(p.c.id).label("first"))
                 .join(f, f.c.frame_id == p.c.frame_id).where(in_scope).group_by(p.c.role, p.c.model_name, p.c.model_version)
                 .order_by("first"))
            with self.engine.connect() as conn:
                return [(role, f"{n}:{v}" if v else n, int(k)) for role, n, v, k, _ in conn.execute(q)]

        text, f64, i64, binary = columnar.TEXT, columnar.F64, columnar.I64, columnar.BINARY
        frame_t = {"frame_id": text, "camera_id": text, "ts": f64, **{k: f64 for k in image_stats}}
        pred_t = {"frame_id": text, "code": i64, "probs": binary}
        jobs = [(sample_q, {"frame_id": text, "inclusion_prob": f64, "strategy": text}),
                (label_q, {"frame_id": text, "label": text, "annotator": text, "ts": f64})]
        # big scans in id / rowid ranges, two threads at a time (SQLite steps rows on one core per connection)
        parts = max(1, min(columnar.READ_PARTS, n_all // columnar.READ_PART_ROWS)) if sqlite else 1
        with self.engine.connect() as conn:
            lo_p, hi_p = conn.execute(sa.select(sa.func.min(p.c.id), sa.func.max(p.c.id))).one()
            rowid = sa.literal_column("frames.rowid")
            lo_f, hi_f = conn.execute(sa.select(sa.func.min(rowid), sa.func.max(rowid)).select_from(f)).one() if parts > 1 else (None, None)
        for lo, hi, q, t, col in ((lo_f, hi_f, frame_q, frame_t, sa.literal_column("frames.rowid")), (lo_p, hi_p, pred_q, pred_t, p.c.id)):
            if parts == 1 or lo is None:
                jobs.append((q, t))
                continue
            edges = np.linspace(int(lo), int(hi) + 1, parts + 1).astype(np.int64)
            jobs += [(q.where((col >= int(a)) & (col < int(b))), t) for a, b in zip(edges[:-1], edges[1:])]
        scanned = n_scope if n_scope * 2 < n_all else n_all  # frames read; about two predictions each
        tables = columnar.read_tables(self.engine, jobs, workers=columnar.READ_THREADS, rows=3 * scanned)
        st, lt = tables[0], tables[1]
        n_frame_jobs = 1 if parts == 1 or lo_f is None else parts
        ft = columnar.concat(tables[2:2 + n_frame_jobs], frame_t)
        pt = columnar.concat(tables[2 + n_frame_jobs:], pred_t)
        return columnar.assemble(ft, pt, st, lt, image_stats, classes, keys, model_counts, decode_probs_many, decode_probs)

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
                (fid, cam, role, decode_probs(probs), label, degraded)
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

    # --- fleet ---
    # (pipeline.fleet) A fleet run's actors record runs "<fleet id>-w<actor>-<attempt>"; these read what they stored.
    def runs_with_prefix(self, run_prefix: str) -> list[str]:
        """The ids of the runs whose id starts with ``run_prefix``, oldest first."""
        q = sa.select(runs.c.run_id).where(runs.c.run_id.startswith(run_prefix, autoescape=True)).order_by(runs.c.started_at, runs.c.run_id)
        with self.engine.connect() as conn:
            return [rid for (rid,) in conn.execute(q)]

    def stored_seqs(self, run_prefix: str, camera_id: str) -> list[int]:
        """The seqs of camera ``camera_id``'s frames committed by runs whose id starts with ``run_prefix``, ascending
        (where a restarted fleet actor resumes a replay)."""
        q = (sa.select(frames.c.seq).where(frames.c.run_id.startswith(run_prefix, autoescape=True) & (frames.c.camera_id == camera_id))
             .order_by(frames.c.seq))
        with self.engine.connect() as conn:
            return [int(seq) for (seq,) in conn.execute(q)]

    def camera_counts(self, run_prefix: str) -> dict[str, dict[str, int]]:
        """Per camera, what runs whose id starts with ``run_prefix`` stored: ``{"frames", "distinct_seqs", "first_seq",
        "last_seq", "incumbent", "shadow"}`` (the last two: predictions per role), cameras sorted."""
        in_scope = frames.c.run_id.startswith(run_prefix, autoescape=True)
        fq = (sa.select(frames.c.camera_id, sa.func.count(), sa.func.count(sa.distinct(frames.c.seq)), sa.func.min(frames.c.seq),
                        sa.func.max(frames.c.seq)).where(in_scope).group_by(frames.c.camera_id))
        pq = (sa.select(frames.c.camera_id, predictions.c.role, sa.func.count()).select_from(predictions)
              .join(frames, frames.c.frame_id == predictions.c.frame_id).where(in_scope).group_by(frames.c.camera_id, predictions.c.role))
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for cam, n, distinct, first, last in conn.execute(fq):
                out[cam] = {"frames": int(n), "distinct_seqs": int(distinct), "first_seq": int(first), "last_seq": int(last),
                            "incumbent": 0, "shadow": 0}
            for cam, role, n in conn.execute(pq):
                if cam in out and role in ("incumbent", "shadow"):
                    out[cam][role] = int(n)
        return dict(sorted(out.items()))


TRAINING_PREFIX = "training:"  # samples.strategy of frames drawn only for retraining (pipeline.sampling)


def _training_only(s: sa.Table = samples):
    return s.c.strategy.like(f"{TRAINING_PREFIX}%")


def _frame_references() -> list[tuple[sa.Table, sa.Column]]:
    """Every ``(table, column)`` other than predictions with a foreign key to ``frames.frame_id``: retention keeps
    the frames they name (samples, labels, skips, and whatever a later migration adds)."""
    out = []
    for t in metadata.sorted_tables:
        if t is predictions:
            continue
        for fk in t.foreign_keys:
            if fk.column is frames.c.frame_id:
                out.append((t, fk.parent))
    return out


def _training_frames():
    """The frame ids sampled only for retraining (left out of every estimate)."""
    return sa.select(samples.c.frame_id).where(_training_only(samples))


# --- the probabilities codec: how predictions.probs is stored ----------------------------------------------------
PROBS_DTYPE = np.dtype("<f2")  # float16, little-endian: 2 bytes a class
# float16 keeps 11 significant bits: a probability in [0, 1] comes back within half a step, at most 2**-12 (2.44e-4)
# absolutely (values near 1) and 2**-11 (4.9e-4) relatively; below 6.1e-5 (subnormals) within 3e-8.
PROBS_MAX_ABS_ERROR = 2.0**-12


def encode_probs(probs: np.ndarray) -> bytes:
    """A probability vector (class order of the model card) as the store keeps it: float16 little-endian bytes."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 1:
        raise ValueError(f"probs must be 1-D, got shape {p.shape}")
    return p.astype(PROBS_DTYPE).tobytes()


def decode_probs(value: bytes | bytearray | memoryview | str) -> np.ndarray:
    """A stored ``predictions.probs`` value as a float32 array: float16 bytes, or (stores written before
    ``_migrate_compact_predictions``, or read by hand) a JSON list of floats."""
    if isinstance(value, str):
        try:
            return np.asarray(json.loads(value), dtype=np.float32)
        except (ValueError, TypeError) as e:
            raise StoreError(f"predictions.probs: not a JSON list of floats ({e}): {value[:60]!r}") from None
    if len(value) % PROBS_DTYPE.itemsize:
        raise StoreError(f"predictions.probs: {len(value)} bytes is not a whole number of float16 values")
    return np.frombuffer(value, dtype=PROBS_DTYPE).astype(np.float32)


def decode_probs_many(values: Sequence[bytes | bytearray | memoryview | str], n_classes: int) -> np.ndarray:
    """Stored ``predictions.probs`` values as one ``(len(values), n_classes)`` float32 matrix (a single
    ``frombuffer`` when all are float16 bytes; legacy JSON text is decoded row by row). A value with another
    number of classes is a :class:`StoreError` naming its row."""
    n = len(values)
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1, got {n_classes}")
    try:
        buf = b"".join(values)  # type: ignore[arg-type]  (TypeError when a value is text)
    except TypeError:
        buf = None
    if buf is not None and len(buf) == n * n_classes * PROBS_DTYPE.itemsize:
        return np.frombuffer(buf, dtype=PROBS_DTYPE).reshape(n, n_classes).astype(np.float32)
    out = np.empty((n, n_classes), dtype=np.float32)
    for i, v in enumerate(values):
        row = decode_probs(v)
        if row.shape != (n_classes,):
            raise StoreError(f"predictions.probs: row {i} has {row.size} classes, expected {n_classes}")
        out[i] = row
    return out


probs_from_json = decode_probs  # the earlier name (it reads JSON text and float16 bytes alike)


def _pred_row(p: Prediction, now: float) -> dict:
    """One prediction as a row of ``predictions`` (a dict by column name)."""
    return dict(zip(_PRED_COLUMNS, _pred_rows([p], now)[0]))


_FRAME_COLUMNS = tuple(c.name for c in frames.columns)  # FrameRecord's fields, in the table's order
_PRED_COLUMNS = ("frame_id", "camera_id", "role", "model_name", "model_version", "probs", "label", "confidence", "latency_ms",
                 "degraded", "ts")


def _pred_rows(preds: Sequence[Prediction], now: float) -> list[tuple]:
    """Predictions as ``predictions`` rows (tuples in :data:`_PRED_COLUMNS` order); the probabilities of a batch
    are encoded in one array operation."""
    if not preds:
        return []
    n_cls = {p.probs.shape[0] for p in preds}
    if len(n_cls) == 1:
        f16 = np.stack([p.probs for p in preds]).astype(PROBS_DTYPE)
        blobs = [row.tobytes() for row in f16]
    else:
        blobs = [encode_probs(p.probs) for p in preds]
    models: dict[str, tuple[str, str]] = {}
    out = []
    for p, blob in zip(preds, blobs):
        nv = models.get(p.model)
        if nv is None:
            nv = models[p.model] = (p.model_name, p.model_version)
        out.append((p.frame_id, p.camera_id, p.role.value, nv[0], nv[1], blob, p.label, p.confidence, float(p.latency_ms),
                    p.degraded.value if p.degraded else None, now))
    return out


def _copy_rows(conn: Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[tuple]) -> None:
    """``COPY table (columns) FROM STDIN`` on PostgreSQL, inside ``conn``'s transaction. A driver error is raised
    as SQLAlchemy's wrapped exception (``IntegrityError``, ``OperationalError``, ...), as a statement would raise it."""
    import psycopg

    raw = conn.connection.driver_connection
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    try:
        with raw.cursor() as cur, cur.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.Error as e:
        lost = conn.dialect.is_disconnect(e, raw, None)
        if lost:
            conn.invalidate(e)
        raise sa.exc.DBAPIError.instance(sql, None, e, psycopg.Error, connection_invalidated=lost, dialect=conn.dialect) from e


_IN_CHUNK = 5000  # frame ids per lookup / delete statement in retention


def _is_in(conn: Connection, col: sa.Column, values: Sequence[str]) -> Any:
    """``col IN (values)``; on PostgreSQL ``col = ANY(:array)`` (one parameter: no per-value SQL to compile)."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return col == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(sa.String)))
    return col.in_(list(values))


def _chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _lock_sample(conn: Connection, frame_id: str) -> tuple[str, bool] | None:
    """Lock the sample row of ``frame_id`` for the rest of the transaction and return its ``(status, double_label)``;
    None when the frame was never sampled. A no-op UPDATE is the portable row lock: SQLite takes its write lock (other
    writers wait, busy_timeout), PostgreSQL locks the row until commit; the following reads see every earlier commit."""
    if conn.execute(samples.update().where(samples.c.frame_id == frame_id).values(status=samples.c.status)).rowcount == 0:
        return None
    row = conn.execute(sa.select(samples.c.status, samples.c.double_label).where(samples.c.frame_id == frame_id)).first()
    return (row[0], bool(row[1])) if row else None


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
