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
    frames,
    health_events,
    labels,
    predictions,
    probs_from_json,
    runs,
    samples,
    schema_meta,
)
from pipeline.types import Degraded, Frame, HealthEvent, HealthKind, Label, Prediction, Role, StoreError, make_frame_id
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
        np.testing.assert_allclose(probs_from_json(r["probs"]), p.probs, atol=1e-6)
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


def test_migrates_from_previous_version(store_url):
    """A store at version SCHEMA_VERSION - 1 (newest table missing) is moved forward on open."""
    st = PredictionStore(store_url)
    st.write_batch([FrameRecord.from_frame(_frames("r1", 1)[0], "r1")])
    newest = sorted(set(store_mod.metadata.tables) - {"schema_meta"})
    with st.engine.begin() as conn:
        conn.execute(schema_meta.update().where(schema_meta.c.key == "version").values(value=str(SCHEMA_VERSION - 1)))
        if SCHEMA_VERSION >= 2:
            store_mod.label_skips.drop(conn)
    st.close()
    st = PredictionStore(store_url)
    assert st.schema_version() == SCHEMA_VERSION
    assert set(sa.inspect(st.engine).get_table_names()) >= set(newest)
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
