"""Columns out of the store, fast: Arrow tables from SQLAlchemy statements, and the evaluator's frame-aligned arrays.

Why this module exists: reading a store row by row through SQLAlchemy costs about a microsecond per value in Python
(plus a ``json.loads`` per prediction on old stores), which made ``shadowcam evaluate`` take minutes and gigabytes on a
month of predictions. Here the database's rows are stepped in C by an ADBC driver (``adbc-driver-postgresql``,
``adbc-driver-sqlite``: Apache Arrow's database connectivity) and arrive as Arrow arrays; the evaluator's inputs
are then built with vectorised Arrow/numpy operations (a hash join of predictions onto frames, one ``frombuffer`` for
all float16 probabilities). SQLite is read through ADBC only in a child process, and small reads through Python's
``sqlite3`` (see the note above :data:`SQLITE_CHILD_MIN_ROWS`: two SQLite libraries in one process crash it).
Without the ADBC drivers, reads fall back to DB-API rows (same results, slower).

:class:`pipeline.store.PredictionStore` builds the statements (it stays the only place with SQL) and calls
:func:`read_tables` and :func:`assemble`; :class:`EvaluationColumns` is what
:meth:`~pipeline.store.PredictionStore.evaluation_columns` returns.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy.engine import Engine

from pipeline.types import StoreError

log = logging.getLogger(__name__)

TEXT, F64, I64, BINARY = pa.string(), pa.float64(), pa.int64(), pa.binary()
READ_THREADS = 2  # statements read at once (threads, each with its own connection)
READ_PARTS = 4  # a big SQLite scan is split into this many id ranges at most ...
READ_PART_ROWS = 250_000  # ... of at least this many rows
ROLE_CODES = ("incumbent", "shadow")  # role code r in the packed prediction code (see pack_code)


# --------------------------------------------------------------------------------------------------------------------
# Arrow tables from statements
# --------------------------------------------------------------------------------------------------------------------
# Why SQLite is never read through ADBC in this process: the ADBC driver carries its own copy of SQLite (statically
# linked, 3.53 here) next to the one Python's ``sqlite3`` uses (the store's engine, MLflow). Two SQLite libraries in
# one process do not see each other's POSIX locks (they are per process), so the second one to open a WAL database
# believes it is alone, truncates the ``-shm`` wal-index that the first has memory-mapped, and the first one's next
# read of it is a SIGBUS that kills the process (SQLite's "multiple copies of SQLite in the same program" warning;
# it killed CI in the labeling page's background target refresh, and took under a second with a writer thread in
# tests/pipeline/test_columnar.py). So: PostgreSQL reads go through ADBC in process (libpq shares nothing of the
# kind); SQLite reads go through Python's own ``sqlite3``, and big ones through ADBC in a child process, where
# SQLite's locking between processes holds.
SQLITE_CHILD_MIN_ROWS = 200_000  # a SQLite read of at least this many rows goes to a child process (ADBC, two threads)


def _adbc_connect(engine: Engine) -> Any | None:
    """An in-process ADBC DB-API connection to the engine's database, or None: PostgreSQL only (see above), and
    only when ``adbc-driver-postgresql`` is installed."""
    url = engine.url
    if url.get_backend_name() != "postgresql":
        return None
    try:
        import adbc_driver_postgresql.dbapi as adbc_pg

        return adbc_pg.connect(url.set(drivername="postgresql").render_as_string(hide_password=False))
    except ImportError:
        return None
    except Exception as e:  # a driver that cannot open what SQLAlchemy can: fall back, say why once
        log.warning("columnar reads fall back to SQLAlchemy rows (%s: %s)", e.__class__.__name__, e)
        return None


def _sqlite_file(engine: Engine) -> Path | None:
    if engine.url.get_backend_name() != "sqlite":
        return None
    db = engine.url.database
    return Path(db).resolve() if db and db != ":memory:" and not db.startswith("file:") else None


class ArrowReader:
    """Runs SQLAlchemy statements and returns :class:`pyarrow.Table` s: through ADBC for PostgreSQL when its driver
    is installed (``adbc``: True), through the DB-API cursor's plain tuples for SQLite (Python's own ``sqlite3``:
    see the note above), else through the engine's rows. Use as a context manager."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._adbc = _adbc_connect(engine)

    @property
    def adbc(self) -> bool:
        return self._adbc is not None

    def __enter__(self) -> "ArrowReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._adbc is not None:
            try:
                self._adbc.close()
            finally:
                self._adbc = None

    def sql(self, stmt: Any) -> str:
        """The statement as SQL text with its parameters inlined (run ids and class names: SQLAlchemy quotes them)."""
        return sql_text(self.engine, stmt)

    def table(self, stmt: Any, types: dict[str, pa.DataType]) -> pa.Table:
        """The rows of ``stmt`` as a table with the columns and Arrow ``types`` given (in that order)."""
        names = list(types)
        if self._adbc is not None:
            try:
                cur = self._adbc.cursor()
                try:
                    cur.execute(self.sql(stmt))
                    t = cur.fetch_arrow_table()
                finally:
                    cur.close()
                return conform(t, types)
            except Exception as e:  # noqa: BLE001 (ADBC's error types): the same rows through SQLAlchemy, slower
                log.warning("columnar read through ADBC failed (%s: %s); reading rows through SQLAlchemy", e.__class__.__name__,
                            str(e).splitlines()[0] if str(e) else "")
        if self.engine.dialect.name == "sqlite":
            return self._sqlite_table(stmt, types)
        with self.engine.connect() as conn:
            rows = conn.execute(stmt).fetchall()
        cols = list(zip(*rows)) if rows else [()] * len(names)
        return pa.table({k: _to_arrow(list(c), types[k]) for k, c in zip(names, cols)})

    def _sqlite_table(self, stmt: Any, types: dict[str, pa.DataType]) -> pa.Table:
        """SQLite through the pool's own ``sqlite3`` connection: plain tuples a batch at a time, each batch's columns
        straight into Arrow (no SQLAlchemy row objects: about three times faster)."""
        names = list(types)
        batches: list[pa.RecordBatch] = []
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            try:
                cur.execute(self.sql(stmt))
                while rows := cur.fetchmany(_SQLITE_BATCH):
                    cols = list(zip(*rows))
                    batches.append(pa.record_batch([_to_arrow(list(c), types[k]) for k, c in zip(names, cols)], names=names))
            finally:
                cur.close()
        finally:
            raw.close()
        if not batches:
            return pa.table({k: pa.array([], t) for k, t in types.items()})
        return pa.Table.from_batches(batches)


_SQLITE_BATCH = 65_536


def sql_text(engine: Engine, stmt: Any) -> str:
    """``stmt`` as SQL text for ``engine``'s dialect with its parameters inlined."""
    return str(stmt.compile(dialect=engine.dialect, compile_kwargs={"literal_binds": True}))


def conform(t: pa.Table, types: dict[str, pa.DataType]) -> pa.Table:
    """A driver's table with the columns renamed to ``types``' names (in order) and cast to its types."""
    names = list(types)
    t = t.rename_columns(names)
    return pa.table({k: _cast(t.column(k), types[k]) for k in names})


def read_tables(engine: Engine, jobs: Sequence[tuple[Any, dict[str, pa.DataType]]], workers: int = 2,
                rows: int | None = None) -> list[pa.Table]:
    """The tables of several statements (``(statement, types)`` as :meth:`ArrowReader.table` takes).

    PostgreSQL with ADBC: on ``workers`` threads, each with its own connection (ADBC steps the rows without holding
    the GIL, so two statements use two cores). SQLite: when ``rows`` (what the caller expects to read, all jobs
    together) is at least :data:`SQLITE_CHILD_MIN_ROWS` and ``adbc-driver-sqlite`` is installed, in a child process
    through ADBC (:func:`read_sqlite_in_child`; about half a second to start, then several times faster than
    Python's ``sqlite3``), else here, one statement after the other."""
    path = _sqlite_file(engine)
    if path is not None and rows is not None and rows >= SQLITE_CHILD_MIN_ROWS and _has_module("adbc_driver_sqlite"):
        try:
            return read_sqlite_in_child(path, [(sql_text(engine, stmt), types) for stmt, types in jobs], workers)
        except ChildReadError as e:
            log.warning("columnar read in a child process failed (%s); reading through sqlite3 here", e)
    with ArrowReader(engine) as probe:
        parallel = probe.adbc and workers > 1 and len(jobs) > 1
    if not parallel:
        with ArrowReader(engine) as rd:
            return [rd.table(stmt, types) for stmt, types in jobs]
    from concurrent.futures import ThreadPoolExecutor

    def one(job: tuple[Any, dict[str, pa.DataType]]) -> pa.Table:
        with ArrowReader(engine) as rd:
            return rd.table(*job)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="store-read") as pool:
        return list(pool.map(one, jobs))


def _has_module(name: str) -> bool:
    """Whether module ``name`` can be imported (found without importing it)."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


class ChildReadError(RuntimeError):
    """The child process that reads a SQLite file through ADBC failed (its exit status and last words)."""


_TYPE_NAMES = {"string": TEXT, "double": F64, "int64": I64, "binary": BINARY}


def _type_name(t: pa.DataType) -> str:
    for k, v in _TYPE_NAMES.items():
        if v == t:
            return k
    raise ValueError(f"no column type {t} in a child read (one of {sorted(_TYPE_NAMES)})")


def read_sqlite_in_child(path: Path, jobs: Sequence[tuple[str, dict[str, pa.DataType]]], workers: int = 2) -> list[pa.Table]:
    """Run SQL ``jobs`` (text, column types) on the SQLite file ``path`` in a child process (``python -m
    pipeline.columnar``) through ADBC, ``workers`` statements at a time; the tables come back in order as Arrow IPC
    streams on the child's stdout (nothing on disk). Raises :class:`ChildReadError` when the child fails."""
    import subprocess
    import sys
    import tempfile

    spec = {"db": str(path), "workers": workers,
            "jobs": [{"sql": sql, "types": {k: _type_name(t) for k, t in types.items()}} for sql, types in jobs]}
    with tempfile.TemporaryFile() as err:  # a file, not a pipe: a chatty child cannot block on it while we read
        try:
            proc = subprocess.Popen([sys.executable, "-m", "pipeline.columnar"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, cwd=str(Path(__file__).resolve().parent.parent))
        except OSError as e:
            raise ChildReadError(str(e)) from e
        out: list[pa.Table] = []
        broken: Exception | None = None
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
            for _ in jobs:
                out.append(pa.ipc.open_stream(proc.stdout).read_all())
        except (OSError, pa.ArrowException) as e:  # the child died mid-way (its exit status and stderr say why)
            broken = e
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # alive, and wrote what we cannot read: it must not block on a full pipe
                proc.kill()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if proc.stdout is not None:
                proc.stdout.close()
        rc = proc.wait()  # all tables read: the child is exiting
        if rc != 0 or broken is not None:
            err.seek(0)
            words = err.read().decode(errors="replace").strip().splitlines()
            why = words[-1] if words else f"{type(broken).__name__}: {broken}" if broken else "no message"
            raise ChildReadError(f"exit status {rc}: {why}")
        return out


def _child_main() -> int:
    """The child of :func:`read_sqlite_in_child`: a JSON spec on stdin, one Arrow IPC stream per job on stdout, in
    the jobs' order (``workers`` statements read at a time)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    import adbc_driver_sqlite.dbapi as adbc_sqlite

    spec = json.load(sys.stdin)
    uri = f"{Path(spec['db']).as_uri()}?mode=ro"

    def one(job: dict[str, Any]) -> pa.Table:
        conn = adbc_sqlite.connect(uri)
        try:
            cur = conn.cursor()
            try:
                cur.execute("PRAGMA busy_timeout = 30000")  # wait for a writer's lock (a WAL checkpoint) as the store does
                cur.execute(job["sql"])
                return conform(cur.fetch_arrow_table(), {k: _TYPE_NAMES[v] for k, v in job["types"].items()})
            finally:
                cur.close()
        finally:
            conn.close()

    sink = pa.output_stream(sys.stdout.buffer)
    with ThreadPoolExecutor(max_workers=max(1, int(spec["workers"]))) as pool:
        for t in pool.map(one, spec["jobs"]):  # in order; the next statements are read while this one is written
            w = pa.ipc.new_stream(sink, t.schema)
            w.write_table(t)
            w.close()
    sink.flush()
    return 0


def concat(tables: Sequence[pa.Table], types: dict[str, pa.DataType]) -> pa.Table:
    """The tables one after the other (an empty table of ``types`` when there are none)."""
    if not tables:
        return pa.table({k: pa.array([], t) for k, t in types.items()})
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _cast(col: pa.ChunkedArray, typ: pa.DataType) -> pa.ChunkedArray:
    if col.type == typ:
        return col
    if len(col) == 0:  # an empty result: ADBC cannot know the type
        return pa.chunked_array([], typ)
    if pa.types.is_null(col.type):
        return pa.chunked_array([pa.nulls(len(col), typ)]) if len(col) else pa.chunked_array([], typ)
    if pa.types.is_binary(typ) and pa.types.is_string(col.type):
        return col.cast(pa.binary())
    return col.cast(typ)


def _to_arrow(values: list, typ: pa.DataType) -> pa.Array:
    if pa.types.is_binary(typ):
        values = [v.encode() if isinstance(v, str) else (bytes(v) if v is not None else None) for v in values]
    elif pa.types.is_string(typ):
        values = [None if v is None else str(v) for v in values]
    return pa.array(values, type=typ)


# --------------------------------------------------------------------------------------------------------------------
# The evaluator's arrays
# --------------------------------------------------------------------------------------------------------------------
@dataclass
class RoleColumns:
    """One role's predictions aligned on the frames: whether there is one, the class index (-1: none, or a label
    outside the class list), the probabilities ((n, C) float32, NaN rows where missing or not C values), whether it
    is degraded, and how many predictions each model (``name:version``) made, in the order first seen."""

    has: np.ndarray
    pred: np.ndarray
    probs: np.ndarray
    degraded: np.ndarray
    models: dict[str, int] = field(default_factory=dict)


@dataclass
class EvaluationColumns:
    """What the evaluator reads of a scope of runs, as column arrays (see
    :meth:`pipeline.store.PredictionStore.evaluation_columns`).

    Frames in ``(ts, frame_id)`` order: ``frame_ids`` (a :class:`pyarrow.StringArray`: no Python object per frame),
    ``camera_codes`` (int32 index into ``camera_names``, which is sorted), ``ts``, ``image_stats`` (name -> float64,
    NaN where missing). ``roles``: role -> :class:`RoleColumns`. Samples: ``incl`` (float64, NaN where the frame
    has no sample row) and ``strategy`` (object, None there). Labels, oldest first: ``label_frame`` (frame index),
    ``label_values``, ``label_annotators``, ``label_ts``.
    """

    frame_ids: pa.Array
    camera_codes: np.ndarray
    camera_names: list[str]
    ts: np.ndarray
    image_stats: dict[str, np.ndarray]
    roles: dict[str, RoleColumns]
    incl: np.ndarray
    strategy: np.ndarray
    label_frame: np.ndarray
    label_values: list[str]
    label_annotators: list[str]
    label_ts: np.ndarray

    @property
    def n(self) -> int:
        return int(self.ts.shape[0])

    @property
    def cameras(self) -> np.ndarray:
        """The camera id of every frame, as an object array (shares one string per camera)."""
        names = np.array(self.camera_names + [None], dtype=object)
        return names[self.camera_codes] if self.n else np.zeros(0, dtype=object)


def pack_code(role: Any, degraded: Any, cls: Any, model: Any, n_classes: int) -> Any:
    """The one integer a prediction row is fetched as: role (0/1, 2 other), degraded (0/1), class index (-1 none)
    and model index (-1 unknown) — built from SQL expressions (or numbers: the formula is the same)."""
    return role + 3 * degraded + 6 * (cls + 1) + 6 * (n_classes + 1) * (model + 1)


def unpack_code(code: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    code = np.asarray(code, dtype=np.int64)
    role = code % 3
    degraded = (code // 3) % 2 == 1
    cls = (code // 6) % (n_classes + 1) - 1
    model = code // (6 * (n_classes + 1)) - 1
    return role, degraded, cls, model


def _order(ts: np.ndarray, frame_ids: pa.Array) -> np.ndarray:
    """Permutation sorting frames by ``(ts, frame_id)`` (frame ids compared as UTF-8 bytes, as SQLite does)."""
    order = np.argsort(ts, kind="stable")
    st = ts[order]
    eq = st[1:] == st[:-1]
    if eq.any():  # runs of equal timestamps: order each by frame id (Python over the tied frames only)
        edge = np.diff(np.concatenate([[False], eq, [False]]).astype(np.int8))
        for a, b in zip(np.flatnonzero(edge == 1).tolist(), (np.flatnonzero(edge == -1) + 1).tolist()):
            seg = order[a:b]
            ids = [s.encode() for s in frame_ids.take(pa.array(seg)).to_pylist()]
            order[a:b] = seg[np.array(sorted(range(len(ids)), key=ids.__getitem__), dtype=np.int64)]
    return order


def _positions(keys: pa.ChunkedArray | pa.Array, frame_ids: pa.Array, inverse: np.ndarray) -> np.ndarray:
    """Index of each key's frame in the sorted frames (-1 where the key is not a frame of the scope)."""
    if len(keys) == 0:
        return np.zeros(0, np.int64)
    raw = pc.index_in(keys, value_set=frame_ids)
    pos = np.asarray(raw.to_numpy(zero_copy_only=False) if isinstance(raw, pa.Array) else raw.to_numpy(), dtype=np.float64)
    out = np.full(pos.shape[0], -1, np.int64)
    ok = ~np.isnan(pos)
    out[ok] = inverse[pos[ok].astype(np.int64)]
    return out


def probs_matrix(col: pa.ChunkedArray | pa.Array, n_classes: int, decode_many: Callable[[Sequence[Any], int], np.ndarray] | None = None,
                 decode_one: Callable[[Any], np.ndarray] | None = None) -> np.ndarray:
    """(n, C) float32 probabilities from a binary column of the store's values: float16 little-endian bytes (2*C
    bytes each) are read in one ``frombuffer``; any other value (legacy JSON text, another length) goes through the
    store's codec one by one and gets a NaN row unless it decodes to C values."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    out = np.full((n, n_classes), np.nan, np.float32)
    if n == 0:
        return out
    if arr.null_count:
        arr = pc.fill_null(arr, b"")
    lengths = pc.binary_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
    fast = lengths == 2 * n_classes
    if fast.all():
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
        data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
        out[:] = data.view("<f2").reshape(n, n_classes)
        return out
    if fast.any():
        idx = np.flatnonzero(fast)
        sub = arr.take(pa.array(idx))
        out[idx] = probs_matrix(sub, n_classes)
    rest = np.flatnonzero(~fast)
    # legacy JSON text arrives as bytes (the query casts the column to binary): give the codec text
    values = [v.decode() if v[:1] == b"[" else v for v in arr.take(pa.array(rest)).to_pylist()]
    if decode_many is not None:
        try:
            m = np.asarray(decode_many(values, n_classes), dtype=np.float32)
            if m.shape == (len(rest), n_classes):
                out[rest] = m
                return out
        except (ValueError, TypeError, StoreError):  # some row is not C values: row by row below
            pass
    for i, v in zip(rest.tolist(), values):
        try:
            p = decode_one(v) if decode_one is not None else np.asarray(json.loads(v), dtype=np.float32)
        except (ValueError, TypeError, StoreError):
            continue
        p = np.asarray(p, dtype=np.float32).ravel()
        if p.shape[0] == n_classes:
            out[i] = p
    return out


def assemble(frames: pa.Table, preds: pa.Table, samples: pa.Table, labels: pa.Table, image_stats: Sequence[str], classes: Sequence[str],
             models: Sequence[str], model_counts: Callable[[], list[tuple[str, str, int]]] | None = None,
             decode_many: Callable | None = None, decode_one: Callable | None = None) -> EvaluationColumns:
    """The frame-aligned arrays from the four fetched tables (see :meth:`PredictionStore.evaluation_columns`).

    ``frames``: frame_id, camera_id, ts and the image statistics (``-inf`` or null where missing); ``preds``: frame_id,
    code (:func:`pack_code` with the model index into ``models``), probs (binary), in the order written; ``samples``:
    frame_id, inclusion_prob, strategy; ``labels``: frame_id, label, annotator, ts, oldest first. ``model_counts``:
    called when some prediction's model is not in ``models``: returns (role, model key, count) in first-seen order.
    """
    C = len(classes)
    fids = frames.column("frame_id").combine_chunks()
    ts_raw = frames.column("ts").to_numpy().astype(np.float64, copy=False)
    order = _order(ts_raw, fids)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    n = order.size
    frame_ids = fids.take(pa.array(order)) if n else fids
    cam = pc.dictionary_encode(frames.column("camera_id").combine_chunks())
    cam_dict = cam.dictionary.to_pylist()
    rank = np.argsort(np.array(cam_dict, dtype=object), kind="stable") if cam_dict else np.zeros(0, np.int64)
    remap = np.empty(len(cam_dict), np.int32)
    remap[rank] = np.arange(len(cam_dict), dtype=np.int32)
    camera_codes = remap[cam.indices.to_numpy(zero_copy_only=False)[order]] if n else np.zeros(0, np.int32)
    camera_names = sorted(cam_dict)
    stats = {}
    for k in image_stats:
        v = frames.column(k).to_numpy(zero_copy_only=False).astype(np.float64)[order] if n else np.zeros(0)
        v[~np.isfinite(v) & (v < 0)] = np.nan  # SQLite nulls arrive as -inf (see PredictionStore.evaluation_columns)
        stats[k] = v

    # predictions: frame position, role, class, degraded, model, probabilities
    pos = _positions(preds.column("frame_id"), fids, inverse)
    role, degraded, cls, model = unpack_code(preds.column("code").to_numpy(zero_copy_only=False), C) if len(preds) else (np.zeros(0, np.int64),) * 4
    keep = (pos >= 0) & (role < 2)
    probs_col = preds.column("probs")
    roles: dict[str, RoleColumns] = {}
    counts_needed = bool(((model < 0) & keep).any())
    extra = model_counts() if counts_needed and model_counts is not None else None
    for r, name in enumerate(ROLE_CODES):
        sel = np.flatnonzero(keep & (role == r))
        rc = RoleColumns(np.zeros(n, bool), np.full(n, -1, np.int64), np.full((n, C), np.nan, np.float32), np.zeros(n, bool))
        if sel.size:
            at = pos[sel]
            rc.has[at] = True
            rc.pred[at] = cls[sel]
            rc.degraded[at] = degraded[sel]
            rc.probs[at] = probs_matrix(probs_col.take(pa.array(sel)), C, decode_many, decode_one)
            if extra is None:
                m = model[sel]
                first = {int(k): int(np.argmax(m == k)) for k in np.unique(m)}
                for k in sorted(first, key=first.get):
                    rc.models[models[k]] = int((m == k).sum())
            else:
                rc.models = {key: cnt for rl, key, cnt in extra if rl == name}
        roles[name] = rc

    incl = np.full(n, np.nan)
    strategy = np.full(n, None, dtype=object)
    if len(samples):
        sp = _positions(samples.column("frame_id"), fids, inverse)
        ok = sp >= 0
        incl[sp[ok]] = samples.column("inclusion_prob").to_numpy(zero_copy_only=False)[ok]
        strat = np.array(samples.column("strategy").to_pylist(), dtype=object)
        strategy[sp[ok]] = strat[ok]
    lp = _positions(labels.column("frame_id"), fids, inverse) if len(labels) else np.zeros(0, np.int64)
    ok = lp >= 0
    return EvaluationColumns(
        frame_ids=frame_ids, camera_codes=camera_codes, camera_names=camera_names, ts=ts_raw[order], image_stats=stats, roles=roles,
        incl=incl, strategy=strategy, label_frame=lp[ok],
        label_values=[v for v, k in zip(labels.column("label").to_pylist(), ok) if k] if len(labels) else [],
        label_annotators=[v for v, k in zip(labels.column("annotator").to_pylist(), ok) if k] if len(labels) else [],
        label_ts=labels.column("ts").to_numpy(zero_copy_only=False).astype(np.float64)[ok] if len(labels) else np.zeros(0),
    )


if __name__ == "__main__":  # the child of read_sqlite_in_child
    raise SystemExit(_child_main())
