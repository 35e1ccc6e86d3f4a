"""pipeline.scale's before/after bytes measurement (the frozen schema-v2 tables and encoder against today's store, on
the same rows), pipeline.pgserver's throw-away PostgreSQL server, and ``shadowcam bench store``'s PostgreSQL part."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import sqlalchemy as sa

from pipeline import cli, scale
from pipeline import store as store_mod
from pipeline.pgserver import ThrowawayPostgres, find_pg_bin
from pipeline.store import PredictionStore, predictions
from pipeline.types import ConfigError


def _legacy_probs(url: str) -> np.ndarray:
    eng = store_mod.make_engine(url, create=False)
    try:
        with eng.connect() as conn:
            rows = conn.execute(sa.select(scale.LEGACY_V2_PREDICTIONS.c.probs).order_by(scale.LEGACY_V2_PREDICTIONS.c.id)).all()
    finally:
        eng.dispose()
    return np.asarray([json.loads(r[0]) for r in rows], dtype=np.float32)


def test_v2_and_current_fills_hold_the_same_rows_and_v2_costs_more_bytes(tmp_path):
    before, after = str(tmp_path / "v2.db"), str(tmp_path / "now.db")
    res = scale.measure_bytes_before_after(before, after, 6000, seed=3, progress=False)
    assert res["backend"] == "sqlite" and 5900 < res["n_predictions"] <= 6000  # the shadow misses ~0.5% of frames
    # the legacy store is the v2 format: JSON text probabilities, the single-column index on predictions.frame_id
    insp = sa.inspect(store_mod.make_engine(before, create=False))
    assert isinstance({c["name"]: c for c in insp.get_columns("predictions")}["probs"]["type"], sa.Text)
    assert [ix["column_names"] for ix in insp.get_indexes("predictions")] == [["frame_id"]]
    # ... and holds the very rows of today's store, probabilities equal to the float16 codec's precision
    old = _legacy_probs(before)
    st = PredictionStore(after, must_exist=True)
    try:
        rows = st.table_rows(predictions, order_by=predictions.c.id)
        now = store_mod.decode_probs_many([r["probs"] for r in rows], len(scale.CLASSES))
        assert st.count(predictions) == old.shape[0] == res["n_predictions"]
        sizes = st.table_sizes()
    finally:
        st.close()
    np.testing.assert_allclose(now, old, atol=store_mod.PROBS_MAX_ABS_ERROR + 1e-6)
    np.testing.assert_allclose(old.sum(axis=1), 1.0, atol=1e-5)
    # the byte counts: the measurement agrees with the store's own, and the JSON format is the bigger one
    assert res["after"]["tables"] == {t: sizes[t] for t in scale.DATA_TABLES}
    b, a = res["before"], res["after"]
    assert a["bytes_per_prediction"] == pytest.approx(sum(a["tables"].values()) / res["n_predictions"])
    assert a["predictions_table_bytes_per_prediction"] < b["predictions_table_bytes_per_prediction"]
    # v2 indexed predictions.frame_id on its own beside the (frame_id, role) unique index; today only the latter
    assert 0 < a["index_bytes"]["predictions"] < b["index_bytes"]["predictions"] < b["tables"]["predictions"]
    assert res["ratio"] == pytest.approx(a["bytes_per_prediction"] / b["bytes_per_prediction"]) and 0.5 < res["ratio"] < 0.95


def test_legacy_encoder_writes_the_v2_json_text():
    m = np.array([[0.1234567, 0.8765433], [1.0, 0.0]], dtype=np.float32)
    assert scale.legacy_v2_encode_probs(m) == ["[0.123457, 0.876543]", "[1.0, 0.0]"]


def test_legacy_fill_refuses_a_database_that_is_not_empty(tmp_path):
    url = str(tmp_path / "s.db")
    PredictionStore(url).close()
    with pytest.raises(ConfigError, match="not empty"):
        scale.fill_legacy_v2_store(url, scale.FillSpec(100), progress=False)


@pytest.mark.parametrize("kw, match", [
    ({"postgres": "sometimes"}, "--postgres must be one of auto, always, never"),
    ({"bytes_predictions": 1}, "--bytes-predictions"),
    ({"writers": (4,), "write_predictions": 6}, "--write-predictions >= 2 x"),
])
def test_bench_config_refuses_bad_options(kw, match):
    with pytest.raises(ConfigError, match=match):
        scale.StoreBenchConfig(**kw)


def test_without_postgres_binaries_the_bench_says_so(tmp_path, monkeypatch):
    """No initdb/pg_ctl anywhere: ``auto`` measures SQLite only and the document says why; ``always`` refuses."""
    import pipeline.pgserver as pgs

    monkeypatch.setattr(pgs, "PG_ROOT", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert find_pg_bin() is None
    with pytest.raises(ConfigError, match="--postgres always: PostgreSQL binaries"):
        scale._start_postgres(scale.StoreBenchConfig(postgres="always"))
    pg, info = scale._start_postgres(scale.StoreBenchConfig())
    assert pg is None and not info["ran"] and "not installed" in info["note"]
    res = {"config": {"seed": 0, "write_target": 3000.0}, "postgres": info, "bytes": [], "writes": []}
    text = "\n".join(scale._writes_section(res))
    assert "not installed on this machine" in text


@pytest.mark.postgres
def test_throwaway_postgres_starts_on_loopback_and_leaves_nothing(tmp_path):
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    with ThrowawayPostgres.start_new() as pg:
        root, port = pg.root, pg.port
        url = pg.new_database("t")
        assert url.startswith(f"postgresql://postgres@127.0.0.1:{port}/t_")
        eng = store_mod.make_engine(url)
        try:
            with eng.connect() as conn:
                assert conn.exec_driver_sql("SHOW fsync").scalar_one() == "on"  # durable: a production server's settings
                assert conn.exec_driver_sql("SHOW listen_addresses").scalar_one() == "127.0.0.1"
        finally:
            eng.dispose()
    assert not root.exists()
    with socket.socket() as s, pytest.raises(ConnectionRefusedError):  # nothing listens on the port: the server is gone
        s.connect(("127.0.0.1", port))


@pytest.mark.postgres
def test_bench_store_measures_postgres_bytes_and_write_rate(tmp_path, capsys):
    """``--postgres always``: a throw-away server, the v2/now bytes on both backends, 1 and 2 writers into PostgreSQL
    with PASS/FAIL against 3,000/s, and the server stopped at the end."""
    if find_pg_bin() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql")
    out = tmp_path / "scale.md"
    assert cli.main(["bench", "store", "--sizes", "2000", "--workdir", str(tmp_path / "w"), "--out", str(out), "--writers", "1,2",
                     "--write-predictions", "2000", "--bytes-predictions", "3000", "--postgres", "always", "--no-progress"]) == 0
    text = out.read_text()
    res = json.loads((tmp_path / "w" / "bench_store.json").read_text())
    assert res["postgres"]["ran"] and "fsync, full-page writes and synchronous commit on" in text
    assert [b["backend"] for b in res["bytes"]] == ["sqlite", "postgresql"]
    for b in res["bytes"]:
        assert b["before"]["bytes_per_prediction"] > b["after"]["bytes_per_prediction"] > 50
        assert b["n_predictions"] > 2900
    rows = [line for line in text.splitlines() if line.startswith("| PostgreSQL |")]
    assert len(rows) == 4  # bytes before/after, write rate with 1 and 2 writers
    assert rows[0].split("|")[2].strip() == "v2: JSON text" and rows[1].split("|")[-2].strip().endswith("%")
    pg_writes = [w for w in res["writes"] if w["backend"] == "postgresql"]
    assert [w["writers"] for w in pg_writes] == [1, 2] and all(w["n_predictions"] == 2000 for w in pg_writes)
    for w, row in zip(pg_writes, rows[2:]):
        assert row.split("|")[-2].strip() == ("PASS" if w["predictions_per_s"] >= 3000 else "**FAIL**")
    assert not list((tmp_path / "w").glob("*.db"))  # stores removed (no --keep)
    printed = capsys.readouterr().out
    assert "bytes/prediction (postgresql)" in printed and ("(postgresql) PASS" in printed or "(postgresql) FAIL" in printed)
