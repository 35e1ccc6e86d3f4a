"""The evaluator's columnar read path (``PredictionStore.evaluation_columns``, :mod:`pipeline.columnar`) against the
row-wise path it replaced (kept here, in the test, as the reference), the vectorised pieces against what they stand
for (scipy's KS statistic, ``zlib.crc32``), and ``shadowcam bench store`` end to end on a small store."""

from __future__ import annotations

import json
import zlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as st

from pipeline import cli, columnar
from pipeline.evaluation import evaluator as ev
from pipeline.evaluation import ppi
from pipeline.evaluation.drift import ks_statistic
from pipeline.imagestats import STAT_NAMES
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import Label, Prediction
from tests.helpers.evaluation_data import StoreSpec, build_store, write_model
from tests.pipeline.evaluation import conveyor_store


def _load_rowwise(store: PredictionStore, run_ids):
    """The evaluator's loader before the columnar path: ``evaluation_rows`` read into Python, row by row."""
    runs = ev._scope_runs(store, run_ids)
    classes = json.loads({r["class_names"] for r in runs if r["class_names"]}.pop())
    cidx = {c: i for i, c in enumerate(classes)}
    frows, prows, srows, lrows = store.evaluation_rows([r["run_id"] for r in runs], STAT_NAMES)
    n = len(frows)
    index = {r[0]: i for i, r in enumerate(frows)}
    cams = sorted({r[1] for r in frows})
    codes = np.array([cams.index(r[1]) for r in frows], dtype=np.int32)
    ts = np.array([r[2] for r in frows], dtype=np.float64)
    image_stats = {k: np.array([np.nan if r[3 + j] is None else r[3 + j] for r in frows], dtype=np.float64) for j, k in enumerate(STAT_NAMES)}
    C = len(classes)
    roles = {role: ev._RolePreds(np.zeros(n, bool), np.full(n, -1, np.int64), np.full((n, C), np.nan, np.float32), np.zeros(n, bool))
             for role in ev.ROLES}
    for fid, role, mname, mver, probs, label, degraded in prows:
        i, rp = index.get(fid), roles.get(role)
        if i is None or rp is None:
            continue
        rp.has[i] = True
        rp.pred[i] = cidx.get(label, -1)
        if probs.shape[0] == C:
            rp.probs[i] = probs
        rp.degraded[i] = degraded is not None
        rp.models[f"{mname}:{mver}" if mver else mname] += 1
    incl = np.full(n, np.nan)
    strategy = np.full(n, None, dtype=object)
    for fid, pi, strat in srows:
        if fid in index:
            incl[index[fid]], strategy[index[fid]] = pi, strat
    per_frame = defaultdict(list)
    for fid, label, annotator, lts in lrows:
        if fid in index:
            per_frame[index[fid]].append((lts, annotator, label))
    truth, status, n_labels, pair_a, pair_b, invalid = ev.frame_truth(per_frame, n, cidx)  # the truth rule is not under test here
    return ev._Data(classes, runs, pa.array([r[0] for r in frows], pa.string()), codes, cams, ts, image_stats, roles, incl, strategy,
                    truth, status, n_labels, pair_a, pair_b, invalid)


def _docs(results) -> list[dict]:
    out = []
    for r in results:
        d = r.to_dict()
        d["meta"].pop("evaluated_at")
        out.append(d)
    return out


def _both(store, monkeypatch, cfg, window=None, split=True):
    """(fast, row-wise) result documents; the fast path with tiny read parts and proxy chunks, read through ADBC in a
    child process (as a big SQLite store is), so that splitting a scan into id ranges and predicting the proxy a
    chunk at a time are exercised on a small store; without ``split``, read through sqlite3 in this process."""
    assert columnar._has_module("adbc_driver_sqlite")  # the driver is installed here: the ADBC path is the one tested
    evaluator = ev.Evaluator(cfg)

    def run():
        return _docs(evaluator.evaluate_windows(store, window) if window else [evaluator.evaluate(store)])

    with monkeypatch.context() as m:
        if split:
            m.setattr(columnar, "READ_PART_ROWS", 40)
            m.setattr(columnar, "SQLITE_CHILD_MIN_ROWS", 0)
            m.setattr(ppi, "PREDICT_CHUNK", 64)
        fast = run()
    with monkeypatch.context() as m:
        m.setattr(ev, "_load", _load_rowwise)
        slow = run()
    return fast, slow


@pytest.fixture(scope="module")
def cards(tmp_path_factory):
    d = tmp_path_factory.mktemp("cards")
    return write_model(d / "inc.onnx", "inc", "1", 0.95, 1000, atc_threshold=0.75), write_model(d / "sh.onnx", "sh", "2", 0.93, 500)


@pytest.mark.parametrize("kw,window", [
    ({}, None),  # model-assisted, drift against training (the cards' reference), per-camera figures
    ({"drift_baseline": "run_start", "reference": 0.25}, None),
    ({"estimator": "classical", "reference": 0.25}, 50),
    ({"cumulative": True, "drift_baseline": "run_start"}, 50),
])
def test_fast_path_gives_the_row_wise_result(tmp_path, monkeypatch, cards, kw, window):
    store = build_store(str(tmp_path / "s.db"), StoreSpec(incumbent_uri=str(cards[0]), shadow_uri=str(cards[1]), shift_after=100,
                                                          extra_label=True))
    fast, slow = _both(store, monkeypatch, ev.EvalConfig(proxy_min_labels=10, **kw), window)
    assert len(fast) == len(slow) >= 1
    assert fast == slow
    last = fast[-1]["data"]
    assert last["counts"]["frames"] > 0 and last["models"]["incumbent"]["accuracy"]["n"] > 0
    store.close()


def test_fast_path_with_baselines_costs_and_two_cameras(tmp_path, monkeypatch):
    classes = ["parcel", "label_missing", "foreign_object", "empty_belt"]
    rng = np.random.default_rng(3)
    truth = [classes[i] for i in rng.integers(0, 4, 240)]
    preds = {"incumbent": [t if rng.random() < 0.85 else classes[rng.integers(0, 4)] for t in truth],
             "shadow": [t if rng.random() < 0.9 else classes[rng.integers(0, 4)] for t in truth]}
    (tmp_path / "img").mkdir()
    store = conveyor_store.build(str(tmp_path / "c.db"), classes, truth, preds, pi=[0.3 if i % 3 else 0.8 for i in range(240)],
                                 image_dir=tmp_path / "img", cameras=("cam1", "cam2"))
    costs = {"matrix": {"foreign_object": {"parcel": 20.0, "empty_belt": 15.0}}, "value_correct": {"parcel": 0.1}}
    fast, slow = _both(store, monkeypatch, ev.EvalConfig(proxy_min_labels=20, decide_on="cost", costs=costs))
    assert fast == slow
    assert {b["name"] for b in fast[0]["data"]["baselines"]} >= {"majority"}
    store.close()


def _mixed_store(path) -> PredictionStore:
    """Two runs with different model pairs (the newest, small one is the default scope: predictions are then read
    only for its frames), missing image statistics, a degraded prediction, a model version switched mid-run, a
    label outside the classes, an imported label without a sample, a retraining-only sample and equal timestamps."""
    store = PredictionStore(str(path))
    classes = ["a", "b", "c"]
    store.begin_run("old", "m:1", "s:1", classes, {})
    store.begin_run("new", "m:2", "s:2", classes, {})
    frames, preds, samples, labels = [], [], [], []
    rng = np.random.default_rng(0)
    for run, n in (("old", 120), ("new", 30)):
        for i in range(n):
            fid = f"{run}:cam{i % 3}:{i}"
            stats = (None, None, None, None) if i % 11 == 0 else (100.0 + i, 20.0, 50.0 + i % 5, 2.0)
            ts = 1000.0 + (i // 2 if run == "new" else i)  # the new run has pairs of equal timestamps
            frames.append(FrameRecord(fid, run, f"cam{i % 3}", i, ts, f"src#{i}", 8, 8, *stats))
            for role, model in (("incumbent", "m:2" if run == "new" and i < 20 else "m:9" if run == "new" else "m:1"), ("shadow", "s:2")):
                if role == "shadow" and i % 7 == 3:
                    continue
                p = rng.dirichlet(np.ones(3)).astype(np.float32)
                label = classes[int(p.argmax())] if i % 13 else "unknown"
                preds.append(Prediction(fid, f"cam{i % 3}", role, model, p, label, 1.0, "stale" if role == "incumbent" and i % 17 == 5 else None))
            if i % 4 == 0:
                samples.append(SampleRecord(fid, f"cam{i % 3}", "training:extra" if i % 16 == 8 else "uniform", 0.25, f"x/{i}.jpg", ts))
                labels.append(Label(fid, classes[i % 3] if i % 12 else "dog", "ann1", 5000.0 + i, "simulated"))
                if i % 8 == 0:
                    labels.append(Label(fid, classes[(i // 8) % 3], "ann2", 6000.0 + i, "simulated"))
            if i == 5:
                labels.append(Label(fid, "b", "imp", 7000.0, "import"))
    store.write_batch(frames, preds, (), samples)
    store.add_labels(labels)
    return store


def test_columns_equal_rows_on_a_mixed_store(tmp_path, monkeypatch, caplog):
    store = _mixed_store(tmp_path / "m.db")
    for split in (False, True):
        with monkeypatch.context() as m:
            if split:  # id ranges, read through ADBC in a child process
                m.setattr(columnar, "READ_PART_ROWS", 10)
                m.setattr(columnar, "SQLITE_CHILD_MIN_ROWS", 0)
            for runs in (None, ["old", "new"]):
                fast, slow = ev._load(store, runs), _load_rowwise(store, runs)
                assert fast.frame_ids.to_pylist() == slow.frame_ids.to_pylist()
                for k in ("camera_codes", "ts", "incl", "truth", "n_labels"):
                    np.testing.assert_array_equal(getattr(fast, k), getattr(slow, k), err_msg=k)
                assert fast.camera_names == slow.camera_names
                for k in STAT_NAMES:
                    np.testing.assert_array_equal(fast.image_stats[k], slow.image_stats[k])
                assert np.isnan(fast.image_stats["brightness"]).sum() > 0
                assert list(fast.strategy) == list(slow.strategy) and list(fast.truth_status) == list(slow.truth_status)
                assert list(fast.pair_a) == list(slow.pair_a) and fast.invalid_labels == slow.invalid_labels > 0
                for role in ev.ROLES:
                    a, b = fast.roles[role], slow.roles[role]
                    for k in ("has", "pred", "probs", "degraded"):
                        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=f"{role}.{k}")
                    assert list(a.models.items()) == list(b.models.items())
    assert list(ev._load(store, None).roles["incumbent"].models.items()) == [("m:2", 20), ("m:9", 10)]
    assert not [r for r in caplog.records if r.name == "pipeline.columnar"]  # ADBC read everything, no fallback
    # without the ADBC drivers the same columns come through sqlite3 in this process
    with monkeypatch.context() as m:
        m.setattr(columnar, "_has_module", lambda name: False)
        m.setattr(columnar, "SQLITE_CHILD_MIN_ROWS", 0)
        plain = ev._load(store, ["old", "new"])
    fast = ev._load(store, ["old", "new"])
    assert plain.frame_ids.to_pylist() == fast.frame_ids.to_pylist()
    np.testing.assert_array_equal(plain.roles["shadow"].probs, fast.roles["shadow"].probs)
    store.close()


def test_ks_statistic_is_scipys():
    rng = np.random.default_rng(1)
    for t in range(60):
        n1, n2 = (rng.integers(5, 300, 2) if t < 45 else rng.integers(9_990, 10_020, 2))
        kind = t % 3
        if kind == 0:
            a, b = rng.normal(size=n1), rng.normal(0.3, size=n2)
        elif kind == 1:  # float16 probabilities, as the store keeps them: the counting path
            a = rng.dirichlet(np.ones(4), n1)[:, 0].astype(np.float16).astype(np.float64)
            b = rng.dirichlet(np.ones(4) * 1.5, n2)[:, 0].astype(np.float16).astype(np.float64)
        else:
            a, b = rng.integers(0, 5, n1).astype(float), rng.integers(0, 6, n2).astype(float)
        assert ks_statistic(a, b) == st.ks_2samp(a, b).statistic, (t, n1, n2)


def test_frame_hashes_are_crc32():
    keys = [f"run-{i % 3}:cam{i % 7:02d}:{i}" for i in range(3000)] + ["", "é-€", "x" * 40]
    want = np.array([zlib.crc32(k.encode()) for k in keys], dtype=np.uint32)
    np.testing.assert_array_equal(ppi.frame_hashes(pa.array(keys)), want)
    np.testing.assert_array_equal(ppi.frame_hashes(pa.chunked_array([pa.array(keys[:10]), pa.array(keys[10:])])), want)
    np.testing.assert_array_equal(ppi.frame_hashes(pa.array(keys).slice(100, 50)), want[100:150])
    np.testing.assert_array_equal(ppi.fold_ids(keys, 5), want.astype(np.int64) % 5)


def test_bench_store_writes_the_scale_document(tmp_path, capsys):
    out = tmp_path / "scale.md"
    assert cli.main(["bench", "store", "--sizes", "4000", "--workdir", str(tmp_path / "w"), "--out", str(out), "--writers", "1",
                     "--write-predictions", "400", "--bytes-predictions", "2000", "--postgres", "never", "--no-progress"]) == 0
    text = out.read_text()
    assert "Generated by `shadowcam bench store --out" in text and "--sizes 4000" in text
    row = next(line for line in text.splitlines() if line.startswith("| 3,9") or line.startswith("| 4,0"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert int(cells[1].replace(",", "")) == 2000 and int(cells[2].replace(",", "")) == 40  # frames, labels (1% of predictions)
    assert float(cells[5]) > 0 and cells[7].endswith("GiB") and 50 < float(cells[4]) < 2000  # seconds, memory, bytes/prediction
    assert "Target (issue 14)" in text and "## Write rate" in text and "| SQLite | 1 | 256 | 400 |" in text
    assert "PostgreSQL was not measured (`--postgres never`)" in text and "| PostgreSQL |" not in text
    v2, now = (line.split("|") for line in text.splitlines() if line.startswith("| SQLite | v2") or line.startswith("| SQLite | now"))
    assert float(v2[6]) > float(now[6]) > 50 and now[-2].strip().endswith("%")  # bytes/prediction before > after
    res = json.loads((tmp_path / "w" / "bench_store.json").read_text())
    assert res["sizes"][0]["evaluate"]["max_rss_bytes"] > 10 * 2**20
    assert not list((tmp_path / "w").glob("store_*.db"))  # filled stores are removed unless --keep
    doc = json.loads((tmp_path / "w" / "evaluate_4000.json").read_text())
    assert doc["overall"]["data"]["counts"]["frames"] == 2000 and doc["overall"]["data"]["counts"]["cameras"] == 50
    assert "report written to" in capsys.readouterr().out
