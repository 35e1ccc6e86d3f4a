"""PredictionStore on SQLite (WAL) and on a real PostgreSQL server: round trips, schema versions, migrations."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import sqlalchemy as sa

import pipeline.store as store_mod
from pipeline.store import (
    SCHEMA_VERSION,
    FrameRecord,
    PredictionStore,
    SampleRecord,
    decode_probs,
    frames,
    health_events,
    labels,
    predictions,
    runs,
    samples,
    schema_meta,
)
from pipeline.types import Degraded, Frame, HealthEvent, HealthKind, Label, Prediction, Role, StoreError, make_frame_id
from pipeline.scale import LEGACY_V2_FRAMES, LEGACY_V2_LABELS, LEGACY_V2_METADATA, LEGACY_V2_PREDICTIONS
from tests.helpers.postgres import postgres_server  # noqa: F401  (session fixture)

CLASSES = ["box", "bag", "empty"]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    server = request.getfixturevalue("postgres_server")
    return server.new_database()


def _frames(run_id: str, n: int, camera: str = "cam1") -> list[Frame]:
    rng = np.random.default_rng(0)
    return [
        Frame(camera, i, 1000.0 + i, rng.integers(0, 255, (24, 32, 3), dtype=np.uint8), source_ref=f"/v.avi#{i}",
              frame_id=make_frame_id(run_id, camera, i))
        for i in range(n)
    ]


def _pred(f: Frame, role: Role, model: str, k: int, degraded: Degraded | None = None) -> Prediction:
    p = np.full(3, 0.1, np.float32)
    p[k] = 0.8
    return Prediction(f.frame_id, f.camera_id, role, model, p, CLASSES[k], latency_ms=1.5, degraded=degraded)


def test_round_trip(store_url):
    st = PredictionStore(store_url)
    assert st.schema_version() == SCHEMA_VERSION
    st.begin_run("r1", "inc:1", "sh:2", CLASSES, {"batching": {"batch_size": 8}})
    fr = _frames("r1", 5)
    recs = [FrameRecord.from_frame(f, "r1", {"brightness": 10.0 + i, "contrast": 2.0, "sharpness": 3.0, "noise": 0.5})
            for i, f in enumerate(fr)]
    preds = [_pred(f, Role.INCUMBENT, "inc:1", i % 3) for i, f in enumerate(fr)]
    preds[4] = _pred(fr[4], Role.INCUMBENT, "inc:1", 0, Degraded.STALE)
    preds += [_pred(f, Role.SHADOW, "sh:2", (i + 1) % 3) for i, f in enumerate(fr[:3])]
    ev = [("r1", HealthEvent("cam1", HealthKind.FROZEN, 1001.0, "identical for 5 s"))]
    smp = [SampleRecord(fr[1].frame_id, "cam1", "uniform", 0.25, "/tmp/x.jpg", 1002.0, double_label=True)]
    st.write_batch(recs, preds, ev, smp)
    st.end_run("r1", {"frames_served": 5})

    assert st.count(frames) == 5
    assert st.count(predictions, predictions.c.role == "incumbent") == 5
    assert st.count(predictions, predictions.c.role == "shadow") == 3
    row = st.table_rows(frames, frames.c.frame_id == fr[2].frame_id)[0]
    assert (row["camera_id"], row["seq"], row["source_ref"], row["width"], row["height"]) == ("cam1", 2, "/v.avi#2", 32, 24)
    assert row["brightness"] == pytest.approx(12.0)
    got = {r["frame_id"] + r["role"]: r for r in st.table_rows(predictions)}
    for p in preds:
        r = got[p.frame_id + p.role.value]
        np.testing.assert_allclose(decode_probs(r["probs"]), p.probs, atol=store_mod.PROBS_MAX_ABS_ERROR)
        assert (r["label"], r["model_name"], r["model_version"]) == (p.label, p.model_name, p.model_version)
        assert r["degraded"] == (p.degraded.value if p.degraded else None)
        assert r["confidence"] == pytest.approx(0.8)
    ev_rows = st.table_rows(health_events)
    assert [(e["kind"], e["detail"]) for e in ev_rows] == [("frozen", "identical for 5 s")]
    pend = st.pending_samples()
    assert [s["frame_id"] for s in pend] == [fr[1].frame_id] and pend[0]["double_label"] is True
    assert pend[0]["inclusion_prob"] == pytest.approx(0.25)
    st.add_labels([Label(fr[1].frame_id, "bag", "ann1"), Label(fr[1].frame_id, "bag", "ann2")])
    assert st.count(labels) == 2 and st.pending_samples() == []
    run = st.list_runs()[0]
    assert run["incumbent_model"] == "inc:1" and json.loads(run["summary"]) == {"frames_served": 5}
    assert json.loads(run["config"])["batching"]["batch_size"] == 8
    assert st.run_class_names() == CLASSES
    assert st.existing_frame_ids([fr[0].frame_id, "nope"]) == {fr[0].frame_id}
    st.close()

    # reopening keeps everything and does not migrate again
    st2 = PredictionStore(store_url)
    assert st2.schema_version() == SCHEMA_VERSION and st2.count(predictions) == 8
    st2.close()


def test_one_prediction_per_frame_and_role_is_enforced(store_url):
    st = PredictionStore(store_url)
    fr = _frames("r1", 2)
    st.write_batch([FrameRecord.from_frame(f, "r1") for f in fr], [_pred(fr[0], Role.INCUMBENT, "inc:1", 0)])
    with pytest.raises(sa.exc.IntegrityError):
        st.write_batch([], [_pred(fr[0], Role.INCUMBENT, "inc:1", 1)])
    # a failed transaction leaves nothing behind: the frame of the batch is not written either
    with pytest.raises(sa.exc.IntegrityError):
        st.write_batch([FrameRecord.from_frame(_frames("r2", 1)[0], "r2")], [_pred(fr[0], Role.INCUMBENT, "inc:1", 1)])
    assert st.count(frames) == 2 and st.count(predictions) == 1
    st.close()


def test_migrates_from_previous_version(store_url, monkeypatch):
    """A store at version SCHEMA_VERSION - 1 is moved forward on open: the newest migration runs once, on a store
    that may already have its tables (migrations are idempotent), and the data stays."""
    st = PredictionStore(store_url)
    st.write_batch([FrameRecord.from_frame(_frames("r1", 1)[0], "r1")])
    with st.engine.begin() as conn:
        conn.execute(schema_meta.update().where(schema_meta.c.key == "version").values(value=str(SCHEMA_VERSION - 1)))
    st.close()
    calls = []
    newest = store_mod.MIGRATIONS[-1]
    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS[:-1], lambda conn: (calls.append(1), newest(conn))])
    st = PredictionStore(store_url)
    assert calls == [1] and st.schema_version() == SCHEMA_VERSION
    assert set(sa.inspect(st.engine).get_table_names()) >= set(store_mod.metadata.tables)
    assert st.count(frames) == 1  # data kept
    st.close()


def test_migrates_a_version_0_stub(store_url):
    """A store whose schema_meta says 0 (created but never migrated) gets every table."""
    eng = store_mod.make_engine(store_url)
    with eng.begin() as conn:
        schema_meta.create(conn)
        conn.execute(schema_meta.insert().values(key="version", value="0"))
    eng.dispose()
    st = PredictionStore(store_url)
    assert st.schema_version() == SCHEMA_VERSION
    assert set(sa.inspect(st.engine).get_table_names()) >= {"frames", "predictions", "runs", "samples", "labels"}
    st.close()


def test_future_migration_is_applied_once(tmp_path, monkeypatch):
    """The migration mechanism: a new MIGRATIONS entry runs once when the code's version moves forward."""
    url = str(tmp_path / "m.db")
    PredictionStore(url).close()
    calls = []

    def add_column(conn):
        calls.append(1)
        conn.execute(sa.text("ALTER TABLE frames ADD COLUMN exposure FLOAT"))

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, add_column])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    st = PredictionStore(url)
    assert st.schema_version() == SCHEMA_VERSION + 1
    st.close()
    PredictionStore(url).close()
    assert calls == [1]
    cols = {c["name"] for c in sa.inspect(sa.create_engine(f"sqlite:///{url}")).get_columns("frames")}
    assert "exposure" in cols


def test_newer_store_is_refused(tmp_path):
    url = str(tmp_path / "new.db")
    st = PredictionStore(url)
    with st.engine.begin() as conn:
        conn.execute(schema_meta.update().values(value=str(SCHEMA_VERSION + 5)))
    st.close()
    with pytest.raises(StoreError, match="newer than this shadowcam"):
        PredictionStore(url)


def test_sqlite_is_wal_and_synchronous_full(tmp_path):
    st = PredictionStore(str(tmp_path / "w.db"))
    with st.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    st.close()
    con = sqlite3.connect(tmp_path / "w.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


def test_unreachable_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="cannot open prediction store"):
        PredictionStore("postgresql://nobody@127.0.0.1:1/none")


def test_runs_table_holds_config_and_summary(tmp_path):
    st = PredictionStore(str(tmp_path / "r.db"))
    st.begin_run("a", "inc:1", None, CLASSES, {"x": 1})
    st.end_run("a", {"coverage": 0.5})
    rows = st.table_rows(runs)
    assert rows[0]["shadow_model"] is None and rows[0]["ended_at"] >= rows[0]["started_at"]
    st.close()


def _labeling_store(url: str) -> tuple[PredictionStore, list[str]]:
    """Run r1: 5 frames (camera cam1, ts 1000..1004), an incumbent prediction each and a shadow one on frames 0-1;
    frames 0-3 sampled (oldest sample = frame 3, then 2, 1, 0), frame 1 double_label. Run r2: one frame, unsampled."""
    st = PredictionStore(url)
    st.begin_run("r1", "inc:1", "sh:2", CLASSES, {})
    fr = _frames("r1", 5)
    preds = [_pred(f, Role.INCUMBENT, "inc:1", i % 3) for i, f in enumerate(fr)]
    preds += [_pred(fr[0], Role.SHADOW, "sh:2", 2), _pred(fr[1], Role.SHADOW, "sh:2", 0, Degraded.STALE)]
    smp = [SampleRecord(fr[i].frame_id, "cam1", "uniform", 0.5, f"/tmp/s{i}.jpg", 2000.0 - i, double_label=i == 1) for i in range(4)]
    st.write_batch([FrameRecord.from_frame(f, "r1") for f in fr], preds, (), smp)
    other = _frames("r2", 1, camera="cam2")[0]
    st.write_batch([FrameRecord.from_frame(other, "r2")], [_pred(other, Role.INCUMBENT, "inc:1", 1)])
    return st, [f.frame_id for f in fr] + [other.frame_id]


def test_label_queue_queries(store_url):
    st, f = _labeling_store(store_url)
    # oldest sample first; frame 1 needs two labels
    q = st.samples_awaiting_labels()
    assert [s.frame_id for s in q] == [f[3], f[2], f[1], f[0]]
    s1 = q[2]
    assert (s1.double_label, s1.labels_needed, s1.n_labels, s1.labels_missing, s1.status) == (True, 2, 0, 2, "pending")
    assert (s1.source_ref, s1.ts, s1.image_path, s1.inclusion_prob) == ("/v.avi#1", 1001.0, "/tmp/s1.jpg", 0.5)
    assert [s.frame_id for s in st.samples_awaiting_labels(limit=2)] == [f[3], f[2]]
    assert st.count_samples_awaiting_labels() == 4

    st.add_labels([Label(f[3], "box", "alice", 5.0), Label(f[1], "bag", "alice", 6.0)])
    assert st.add_label_skip(f[2], "alice") is True
    assert st.add_label_skip(f[2], "alice") is False  # already skipped: nothing new
    # alice has labeled f3 and f1 and skipped f2; bob sees f1 (one label missing) and f2
    assert [s.frame_id for s in st.next_frames_to_label("alice")] == [f[0]]
    assert [s.frame_id for s in st.next_frames_to_label("bob")] == [f[2], f[1], f[0]]
    assert [s.frame_id for s in st.next_frames_to_label("bob", limit=None, exclude=[f[2]])] == [f[1], f[0]]
    assert [s.frame_id for s in st.next_frames_to_label("bob", limit=1)] == [f[2]]
    assert (st.count_frames_to_label("alice"), st.count_frames_to_label("bob")) == (1, 3)
    assert (st.count_labels_by("alice"), st.count_labels_by("bob")) == (2, 0)
    assert st.count_samples_awaiting_labels() == 3
    after = st.queued_sample(f[1])
    assert (after.n_labels, after.labels_missing, after.status) == (1, 1, "pending")
    done = st.queued_sample(f[3])
    assert (done.n_labels, done.labels_missing, done.status) == (1, 0, "labeled")  # still found once labeled
    assert st.queued_sample(f[4]) is None and st.queued_sample("nope") is None  # never sampled

    # an operator-skipped sample is out of every queue
    with st.engine.begin() as conn:
        conn.execute(samples.update().where(samples.c.frame_id == f[0]).values(status="skipped"))
    assert [s.frame_id for s in st.samples_awaiting_labels()] == [f[2], f[1]]
    assert st.next_frames_to_label("alice") == []

    # double-label pairs: the two earliest labels by time, whatever order they were written in
    st.add_labels([Label(f[1], "empty", "carol", 9.0), Label(f[1], "box", "bob", 7.0)])
    assert st.double_label_pairs() == [(f[1], "bag", "box")]
    assert st.queued_sample(f[1]).status == "labeled"
    assert st.labels_by([f[1], f[3], "nope"], ["alice", "carol", "dave"]) == {
        (f[1], "alice"): "bag", (f[3], "alice"): "box", (f[1], "carol"): "empty"
    }
    assert st.labels_by([f[1]], []) == {}
    st.close()


def test_retraining_and_demo_queries(store_url):
    st, f = _labeling_store(store_url)
    assert st.labels_by_frame() == {}
    st.add_labels([Label(f[1], "bag", "b", 3.0), Label(f[1], "unsure", "a", 2.0), Label(f[4], "box", "a", 1.0)])
    assert st.labels_by_frame() == {f[1]: ["unsure", "bag"], f[4]: ["box"]}  # oldest first; unsampled frames too
    assert st.sampled_frames() == [
        store_mod.SampledFrame(f[i], "cam1", f"/tmp/s{i}.jpg", 1000.0 + i, "uniform") for i in range(4)
    ]
    r1 = st.run_predictions("r1")
    assert [(p.frame_id, p.role) for p in r1] == [
        (f[0], "incumbent"), (f[0], "shadow"), (f[1], "incumbent"), (f[1], "shadow"), (f[2], "incumbent"), (f[3], "incumbent"), (f[4], "incumbent")
    ]
    sh1 = r1[3]
    assert (sh1.source_ref, sh1.label, sh1.degraded, sh1.model_name, sh1.model_version) == ("/v.avi#1", "box", "stale", "sh", "2")
    assert sh1.confidence == pytest.approx(0.8) and r1[2].degraded is None
    assert [(p.frame_id, p.label) for p in st.run_predictions("r2")] == [(f[5], "bag")]
    assert st.run_predictions("nope") == []
    assert [(p.role, p.label) for p in st.predictions_for_frame(f[0])] == [("incumbent", "box"), ("shadow", "empty")]
    assert st.predictions_for_frame("nope") == []
    st.close()


def test_evaluation_queries_leave_the_training_sample_out(store_url):
    """Frames drawn only for retraining (strategy training:...) keep their frames and predictions in the
    evaluator's rows, but not their sample rows or labels; retraining still sees every label."""
    st = PredictionStore(store_url)
    try:
        st.begin_run("r1", "inc:1", None, CLASSES, {})
        fr = _frames("r1", 4)
        smp = [SampleRecord(fr[0].frame_id, "cam1", "uniform", 0.2, "/tmp/a.jpg", 1.0),
               SampleRecord(fr[1].frame_id, "cam1", "training:uncertainty", 0.4, "/tmp/b.jpg", 1.0)]
        st.write_batch([FrameRecord.from_frame(f, "r1") for f in fr], [_pred(f, Role.INCUMBENT, "inc:1", 0) for f in fr], (), smp)
        st.add_labels([Label(fr[0].frame_id, "box", "ann", 5.0), Label(fr[1].frame_id, "bag", "ann", 6.0)])
        frame_rows, pred_rows, sample_rows, label_rows = st.evaluation_rows(["r1"])
        assert len(frame_rows) == 4 and len(pred_rows) == 4
        assert [r[0] for r in sample_rows] == [fr[0].frame_id]
        assert [r[0] for r in label_rows] == [fr[0].frame_id]
        preds, labs = st.labelled_frame_rows(["r1"])
        assert {r[0] for r in preds} == {fr[0].frame_id} and [r[0] for r in labs] == [fr[0].frame_id]
        assert len(st.table_rows(labels)) == 2
    finally:
        st.close()


# --- the probabilities codec, the compact schema and the migration of JSON stores (issue 14) ----------------------------

def test_probs_codec_round_trip_and_float16_error_bound():
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(7, 0.2), size=2000).astype(np.float32)
    p[0] = [1.0, 0, 0, 0, 0, 0, 0]
    p[1, :2], p[1, 2:] = [1e-7, 1 - 1e-7], 0.0  # a subnormal in float16
    blobs = [store_mod.encode_probs(row) for row in p]
    assert {len(b) for b in blobs} == {14}  # 2 bytes a class
    one = np.stack([decode_probs(b) for b in blobs])
    many = store_mod.decode_probs_many(blobs, 7)
    assert one.dtype == many.dtype == np.float32 and many.shape == (2000, 7)
    np.testing.assert_array_equal(one, many)
    err = np.abs(many - p)
    assert err.max() <= store_mod.PROBS_MAX_ABS_ERROR and err.max() > 1e-5  # the bound holds and is nearly reached
    assert (err / np.maximum(p, 6.2e-5)).max() <= 2.0**-11 + 1e-9  # relative: half a float16 step
    np.testing.assert_array_equal(many[0], [1, 0, 0, 0, 0, 0, 0])
    # legacy JSON text decodes too, alone or mixed with bytes; memoryviews are bytes
    assert decode_probs("[0.25, 0.75]").tolist() == [0.25, 0.75]
    mixed = store_mod.decode_probs_many(["[0.5, 0.5]", memoryview(store_mod.encode_probs(np.array([0.25, 0.75])))], 2)
    np.testing.assert_array_equal(mixed, [[0.5, 0.5], [0.25, 0.75]])
    assert store_mod.decode_probs_many([], 3).shape == (0, 3)
    assert store_mod.probs_from_json is decode_probs


@pytest.mark.parametrize(
    ("values", "n", "match"),
    [
        ([b"\x00\x3c\x00"], 1, "not a whole number of float16"),
        ([b"\x00\x3c" * 3, b"\x00\x3c" * 2], 3, "row 1 has 2 classes, expected 3"),
        (["[0.5, 0.5]"], 3, "row 0 has 2 classes, expected 3"),
        (["{not json"], 2, "not a JSON list"),
    ],
)
def test_probs_codec_refuses_bad_values(values, n, match):
    with pytest.raises(StoreError, match=match):
        store_mod.decode_probs_many(values, n)


# the schema as it was at version 2 (before _migrate_compact_predictions), frozen in pipeline.scale (which measures the
# bytes before/after with it), so that the test keeps making a genuine old store whatever the current tables look like
_V2, _V2_FRAMES, _V2_PREDICTIONS, _V2_LABELS = LEGACY_V2_METADATA, LEGACY_V2_FRAMES, LEGACY_V2_PREDICTIONS, LEGACY_V2_LABELS


def _make_v2_store(url: str, n_frames: int, chunk: int | None = None) -> list[list[float]]:
    """A version-2 store with ``n_frames`` frames of run r1 and two predictions each, probabilities as JSON text
    (as the old code wrote them), and a label on frame 0. Returns the probabilities in id order."""
    eng = store_mod.make_engine(url)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(3), size=2 * n_frames).round(6)
    with eng.begin() as conn:
        _V2.create_all(conn)
        conn.execute(_V2.tables["schema_meta"].insert().values(key="version", value="2"))
        conn.execute(_V2.tables["runs"].insert().values(run_id="r1", started_at=1.0, incumbent_model="inc:1",
                                                        shadow_model="sh:2", class_names=json.dumps(CLASSES)))
        conn.execute(_V2_FRAMES.insert(), [dict(frame_id=f"r1:cam1:{i}", run_id="r1", camera_id="cam1", seq=i, ts=1000.0 + i,
                                                source_ref="", brightness=100.0) for i in range(n_frames)])
        conn.execute(_V2_PREDICTIONS.insert(), [
            dict(frame_id=f"r1:cam1:{i // 2}", camera_id="cam1", role=("incumbent", "shadow")[i % 2], model_name=("inc", "sh")[i % 2],
                 model_version=("1", "2")[i % 2], probs=json.dumps(probs[i].tolist()), label=CLASSES[int(probs[i].argmax())],
                 confidence=float(probs[i].max()), latency_ms=1.0, degraded=None, ts=2000.0 + i)
            for i in range(2 * n_frames)
        ])
        conn.execute(_V2_LABELS.insert().values(frame_id="r1:cam1:0", label="box", annotator="ann", source="web", ts=5.0))
    eng.dispose()
    return probs.tolist()


def test_a_version_2_store_with_json_probabilities_is_migrated(store_url, monkeypatch):
    """Opening an old store converts its JSON probabilities to float16 (in chunks, ids kept), swaps the single-column
    indexes for the ones the queries use, and leaves every row readable and every constraint in force."""
    monkeypatch.setattr(store_mod, "PROBS_MIGRATION_CHUNK", 7)  # several chunks on a small store
    want = np.asarray(_make_v2_store(store_url, 20), dtype=np.float32)
    st = PredictionStore(store_url)
    try:
        assert st.schema_version() == SCHEMA_VERSION
        insp = sa.inspect(st.engine)
        assert isinstance({c["name"]: c for c in insp.get_columns("predictions")}["probs"]["type"], sa.LargeBinary)
        assert {ix["name"] for ix in insp.get_indexes("frames")} == {"ix_frames_run_camera_ts"}
        assert not [ix for ix in insp.get_indexes("predictions") if ix["column_names"] == ["frame_id"]]
        assert "window_aggregates" in insp.get_table_names()
        rows = st.table_rows(predictions, order_by=predictions.c.id)
        assert [r["id"] for r in rows] == list(range(1, 41))  # ids (the write order) kept
        got = store_mod.decode_probs_many([r["probs"] for r in rows], 3)
        np.testing.assert_allclose(got, want, atol=store_mod.PROBS_MAX_ABS_ERROR)
        assert [r["model_name"] for r in rows[:2]] == ["inc", "sh"] and rows[1]["role"] == "shadow"
        assert st.labels_by_frame() == {"r1:cam1:0": ["box"]}
        # the uniqueness of (frame, role) and the foreign key still hold; new writes continue the ids
        with pytest.raises(sa.exc.IntegrityError):
            st.write_batch([], [_pred(Frame("cam1", 0, 0.0, np.zeros((2, 2, 3), np.uint8), frame_id="r1:cam1:0"), Role.SHADOW, "sh:2", 0)])
        fr = _frames("r2", 1)
        st.write_batch([FrameRecord.from_frame(fr[0], "r2")], [_pred(fr[0], Role.INCUMBENT, "inc:1", 1)])
        assert st.table_rows(predictions, predictions.c.frame_id == fr[0].frame_id)[0]["id"] > 40  # (PostgreSQL skips the failed one)
    finally:
        st.close()
    PredictionStore(store_url).close()  # reopening migrates nothing again


def test_the_store_keeps_only_the_indexes_the_queries_use(store_url):
    st = PredictionStore(store_url)
    try:
        insp = sa.inspect(st.engine)
        assert [(ix["name"], ix["column_names"]) for ix in insp.get_indexes("frames")] == [
            ("ix_frames_run_camera_ts", ["run_id", "camera_id", "ts"])]
        assert insp.get_indexes("predictions") == [] or all(ix.get("unique") for ix in insp.get_indexes("predictions"))
        if st.engine.dialect.name == "postgresql":  # 64-bit ids: a month of a 48-stream box is ~7.5e9 predictions
            ids = {c["name"]: c for c in insp.get_columns("predictions")}["id"]
            assert isinstance(ids["type"], sa.BigInteger)
    finally:
        st.close()


def test_odd_text_and_missing_values_survive_the_write_path(store_url):
    """PostgreSQL batches go through COPY: tabs, newlines, backslashes, quotes, non-ASCII and NULLs must come back as
    written (SQLite goes through executemany: same check)."""
    st = PredictionStore(store_url)
    try:
        fr = _frames("r1", 2)
        odd = 'C:\\videos\\dock 1\t"night"\nshift#\\N é'
        recs = [FrameRecord(fr[0].frame_id, "r1", "cam\t1", 0, 1000.0, odd, None, None, None, 2.5, None, None),
                FrameRecord.from_frame(fr[1], "r1")]
        st.write_batch(recs, [_pred(fr[0], Role.INCUMBENT, "name\\with\ttab:v\n1", 1, Degraded.UNKNOWN), _pred(fr[1], Role.SHADOW, "sh:2", 2)])
        row = st.table_rows(frames, frames.c.frame_id == fr[0].frame_id)[0]
        assert (row["source_ref"], row["camera_id"], row["width"], row["brightness"], row["contrast"]) == (odd, "cam\t1", None, None, 2.5)
        p = st.table_rows(predictions, predictions.c.frame_id == fr[0].frame_id)[0]
        assert (p["model_name"], p["model_version"], p["degraded"], p["label"]) == ("name\\with\ttab", "v\n1", "unknown", "bag")
        assert decode_probs(p["probs"]).tolist() == pytest.approx([0.1, 0.8, 0.1], abs=store_mod.PROBS_MAX_ABS_ERROR)
    finally:
        st.close()
