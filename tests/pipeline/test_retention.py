"""Retention (pipeline.retention, `shadowcam store retain`) and the store's capacity figures, on real SQLite and
PostgreSQL stores: what is kept, what becomes aggregates, counts that add up, idempotence; sketches and the
reservoir as pure functions."""

from __future__ import annotations

import json
import math
import time
from collections import Counter

import numpy as np
import pytest

from pipeline.cli import main as cli
from pipeline.config import RetentionConfig, load_config
from pipeline.retention import (
    DAY_S,
    IMAGE_STAT_EDGES,
    Retainer,
    agreement_sketch,
    measure_store_writes,
    merge_sketch,
    model_sketch,
    reservoir_seqs,
    sketch_arrays,
    stat_sketch,
    store_size,
)
from pipeline.store import FrameRecord, PredictionStore, SampleRecord, frames, predictions, window_aggregates
from pipeline.types import ConfigError, Degraded, Label, Prediction, Role
from tests.helpers.postgres import postgres_server  # noqa: F401  (session fixture)

CLASSES = ["box", "bag", "empty"]
T0 = 1_700_006_400.0  # a UTC midnight
STEP = 600.0  # a frame every 10 minutes: 144 a day per camera


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres_server").new_database()


# --- pure parts ----------------------------------------------------------------------------------------------------

def test_stat_sketch_counts_moments_and_lag1():
    x = np.array([10.0, 20.0, np.nan, 30.0, 300.0])
    s = stat_sketch(x, IMAGE_STAT_EDGES["brightness"])
    assert (s["n"], s["sum"], s["sumsq"], s["min"], s["max"]) == (4, 360.0, 100 + 400 + 900 + 90000, 10.0, 300.0)
    assert sum(s["hist"]) == 4 and len(s["hist"]) == len(s["edges"]) + 1 and s["hist"][-1] == 1  # 300 > 256: overflow bin
    assert (s["lag1_n"], s["lag1_sum_xy"]) == (2, 10 * 20 + 30 * 300)  # pairs with a missing value are skipped


def test_model_and_agreement_sketches():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.85, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    s = model_sketch(probs, ["box", "bag", "unknown"], [None, None, "unknown"], CLASSES, bins=10)
    assert s["class_counts"] == [1, 1, 0] and s["other_labels"] == {"unknown": 1} and s["degraded"] == {"unknown": 1}
    assert sum(s["confidence_hist"]) == 3 and s["confidence_hist"][7] == 1 and s["confidence_hist"][8] == 1
    assert [sum(h) for h in s["prob_hist"]] == [3, 3, 3] and [i for i, k in enumerate(s["prob_hist"][0]) if k] == [1, 3, 7]  # box: 0.1, 1/3, 0.7
    assert s["confidence_sum"] == pytest.approx(0.7 + 0.85 + 1 / 3)
    a = agreement_sketch(["box", "bag", "box", "unknown"], ["box", "box", "empty", "unknown"], CLASSES)
    assert a["agreement"] == [[1, 0, 1], [1, 0, 0], [0, 0, 0]] and (a["n_paired"], a["n_agree"]) == (4, 2)


def test_merge_sketch_adds_and_refuses_mismatched_histograms():
    a = stat_sketch(np.array([1.0, 2.0]), IMAGE_STAT_EDGES["noise"])
    b = stat_sketch(np.array([5.0]), IMAGE_STAT_EDGES["noise"])
    m = merge_sketch(a, b)
    assert (m["n"], m["sum"], m["min"], m["max"], sum(m["hist"])) == (3, 8.0, 1.0, 5.0, 3)
    assert m == stat_sketch(np.array([1.0, 2.0, 5.0]), IMAGE_STAT_EDGES["noise"]) | {"lag1_n": 1, "lag1_sum_xy": 2.0}
    with pytest.raises(ValueError, match="different edges"):
        merge_sketch(a, stat_sketch(np.array([1.0]), IMAGE_STAT_EDGES["brightness"]))


def test_reservoir_is_seeded_uniform_and_stable_when_others_go():
    seqs = np.arange(10_000)
    r = reservoir_seqs(seqs, 50, seed=0, run_id="r", camera_id="c")
    assert len(r) == 50 and r == reservoir_seqs(seqs[::-1], 50, seed=0, run_id="r", camera_id="c")
    assert r != reservoir_seqs(seqs, 50, seed=1, run_id="r", camera_id="c")
    assert r != reservoir_seqs(seqs, 50, seed=0, run_id="r", camera_id="c2")
    rest = np.array(sorted(r | set(range(0, 10_000, 7))))  # compacting deletes frames outside the reservoir ...
    assert reservoir_seqs(rest, 50, seed=0, run_id="r", camera_id="c") == r  # ... and the next pass finds the same
    assert reservoir_seqs(np.arange(3), 50, 0, "r", "c") == {0, 1, 2} and reservoir_seqs(seqs, 0, 0, "r", "c") == set()
    # uniform: over many seeds each decile of the day is drawn about equally often
    hits = Counter(s // 1000 for seed in range(40) for s in reservoir_seqs(seqs, 50, seed, "r", "c"))
    assert min(hits.values()) > 140 and max(hits.values()) < 260  # 200 expected per decile


@pytest.mark.parametrize(
    ("doc", "match"),
    [({"window": "7m"}, "divide a day"), ({"window": "30s"}, "at least 60 s"), ({"full_days": 0}, "full_days"),
     ({"reservoir_per_camera_day": -1}, "reservoir_per_camera_day"), ({"keep": 3}, "keep")],
)
def test_retention_config_is_checked(doc, match):
    with pytest.raises(ConfigError, match=match):
        RetentionConfig(**doc)


def test_retention_block_of_the_example_config():
    cfg = load_config("configs/run.example.yaml")
    assert cfg.store.retention.window == 3600.0 and cfg.store.retention.full_days == 30


# --- a small store over three days -------------------------------------------------------------------------------------

def _fill(st: PredictionStore, days: int = 3, cameras: tuple[str, ...] = ("dock1", "dock2"), run_id: str = "r1",
          t0: float = T0) -> dict:
    """Frames every 10 minutes for ``days`` days per camera, incumbent + shadow (the shadow on 3 frames of 4),
    a few sampled and labelled old frames. Returns what was written, for the checks."""
    rng = np.random.default_rng(7)
    st.begin_run(run_id, "inc:1", "sh:2", CLASSES, {})
    n = int(days * DAY_S / STEP)
    wrote = {"frames": 0, "incumbent": Counter(), "shadow": Counter(), "sampled": set(), "labelled": set(), "paired": 0}
    for cam in cameras:
        recs, preds, smp = [], [], []
        for seq in range(n):
            fid = f"{run_id}:{cam}:{seq}"
            recs.append(FrameRecord(fid, run_id, cam, seq, t0 + seq * STEP + 1.0, "", 64, 64, float(rng.uniform(50, 200)),
                                    30.0, float(rng.uniform(10, 900)), None if seq % 5 == 0 else 2.0))
            for role, model, keep in ((Role.INCUMBENT, "inc:1", True), (Role.SHADOW, "sh:2", seq % 4 != 3)):
                if not keep:
                    continue
                p = rng.dirichlet(np.ones(3)).astype(np.float32)
                deg = Degraded.STALE if role is Role.INCUMBENT and seq % 50 == 0 else None
                preds.append(Prediction(fid, cam, role, model, p, CLASSES[int(p.argmax())], degraded=deg))
                wrote[role.value][CLASSES[int(p.argmax())]] += 1
            wrote["paired"] += seq % 4 != 3
            if seq % 97 == 0:
                smp.append(SampleRecord(fid, cam, "uniform", 0.01, f"/tmp/{fid}.jpg", t0))
                wrote["sampled"].add(fid)
        st.write_batch(recs, preds, (), smp)
        wrote["frames"] += n
    labelled = sorted(wrote["sampled"], key=lambda f: (int(f.rsplit(":", 1)[1]), f))[:3]  # the oldest three
    st.add_labels([Label(fid, "box", "ann", t0) for fid in labelled])
    wrote["labelled"] = set(labelled)
    return wrote


def _aggregated_counts(st: PredictionStore, run_ids=None) -> dict:
    out = {"frames": 0, "incumbent": Counter(), "shadow": Counter(), "paired": 0, "predictions": 0}
    for a in st.window_aggregates(run_ids):
        if a.role == "frames":
            out["frames"] += a.n_frames
            assert sum(a.sketch["image_stats"]["brightness"]["hist"]) == a.n_frames
            assert a.sketch["image_stats"]["noise"]["n"] < a.n_frames or a.n_frames < 5  # every 5th frame has no noise value
        else:
            out["predictions"] += a.n_predictions
            out[a.role].update(dict(zip(a.sketch["classes"], a.sketch["class_counts"])))
            assert sum(a.sketch["confidence_hist"]) == a.n_predictions == sum(a.sketch["class_counts"])
            if a.role == "shadow":
                out["paired"] += a.sketch["n_paired"]
                assert np.asarray(a.sketch["agreement"]).sum() == a.sketch["n_paired"]
    return out


def _remaining_counts(st: PredictionStore) -> dict:
    out = {"incumbent": Counter(), "shadow": Counter()}
    for r in st.table_rows(predictions):
        out[r["role"]][r["label"]] += 1
    return out


def test_retention_keeps_recent_sampled_labelled_and_reservoir_frames_and_aggregates_the_rest(store_url):
    st = PredictionStore(store_url)
    try:
        wrote = _fill(st)
        n_pred = st.count(predictions)
        now = T0 + 3 * DAY_S  # the end of day 3: with full_days=1 days 1 and 2 are old
        cfg = RetentionConfig(full_days=1, reservoir_per_camera_day=5, window="1h")
        cutoff = math.floor((now - DAY_S) / 3600) * 3600

        dry = Retainer(st, cfg, clock=lambda: now, progress=False).apply(dry_run=True)
        assert st.count(frames) == wrote["frames"] and st.count(window_aggregates) == 0  # a dry run writes nothing
        rep = Retainer(st, cfg, clock=lambda: now, progress=False).apply()
        assert (dry.frames_aggregated, dry.frames_kept, dry.windows) == (rep.frames_aggregated, rep.frames_kept, rep.windows)

        rows = st.table_rows(frames)
        young = [r for r in rows if r["ts"] >= cutoff]
        old = {r["frame_id"] for r in rows if r["ts"] < cutoff}
        assert len(young) == 2 * 144  # the newest day, untouched
        # old frames left: the sampled / labelled ones and 5 per camera and day, exactly those the reservoir draws
        expected = set(wrote["sampled"]) & {f"r1:{c}:{s}" for c in ("dock1", "dock2") for s in range(288)}
        for cam in ("dock1", "dock2"):
            for day in range(2):
                seqs = np.arange(day * 144, (day + 1) * 144)
                expected |= {f"r1:{cam}:{s}" for s in reservoir_seqs(seqs, 5, 0, "r1", cam)}
        assert old == expected and wrote["labelled"] <= old
        assert rep.frames_kept == len(old) and rep.frames_aggregated == 2 * 288 - len(old)
        assert rep.windows == 2 * 48 and rep.runs == 1  # every old hour of both cameras had something to fold
        # every kept frame keeps its predictions; counts before = kept + aggregated, per role and class
        assert st.count(predictions) + rep.predictions_deleted == n_pred
        agg, left = _aggregated_counts(st), _remaining_counts(st)
        assert agg["frames"] + st.count(frames) == wrote["frames"]
        for role in ("incumbent", "shadow"):
            assert agg[role] + left[role] == wrote[role]
        assert agg["predictions"] == rep.predictions_deleted and agg["paired"] > 0
        degraded = sum(a.sketch.get("degraded", {}).get("stale", 0) for a in st.window_aggregates())
        assert degraded == sum(1 for s in range(288) if s % 50 == 0 and f"r1:dock1:{s}" not in old) + sum(
            1 for s in range(288) if s % 50 == 0 and f"r1:dock2:{s}" not in old)

        # idempotent: a second pass finds nothing new and changes nothing
        before = [(a.role, a.window_start, a.n_frames, a.n_predictions) for a in st.window_aggregates()]
        again = Retainer(st, cfg, clock=lambda: now, progress=False).apply()
        assert (again.frames_aggregated, again.predictions_deleted, again.windows) == (0, 0, 0)
        assert again.frames_kept == len(old)
        assert [(a.role, a.window_start, a.n_frames, a.n_predictions) for a in st.window_aggregates()] == before
    finally:
        st.close()


def test_late_frames_merge_into_their_window_and_aggregates_read_back(tmp_path):
    st = PredictionStore(str(tmp_path / "s.db"))
    try:
        _fill(st, days=2, cameras=("dock1",))
        cfg = RetentionConfig(full_days=0.5, reservoir_per_camera_day=0, window="6h")
        now = T0 + 2 * DAY_S
        Retainer(st, cfg, clock=lambda: now, progress=False).apply()
        first = {a.role: a for a in st.window_aggregates(["r1"]) if a.window_start == T0}
        assert first["frames"].n_frames == 36 - sum(1 for s in range(36) if s % 97 == 0)  # 6 h of 10-minute frames
        # two frames written late into that first window, then retention again: merged, not duplicated
        late = [FrameRecord(f"r1:dock1:late{i}", "r1", "dock1", 10_000 + i, T0 + 60.0 * i, "", 64, 64, 90.0, 30.0, 5.0, 2.0)
                for i in range(2)]
        st.write_batch(late, [Prediction(r.frame_id, "dock1", Role.INCUMBENT, "inc:1", np.array([0.1, 0.1, 0.8], np.float32), "empty")
                              for r in late])
        rep = Retainer(st, cfg, clock=lambda: now, progress=False).apply()
        assert rep.frames_aggregated == 2 and rep.windows == 1
        merged = {a.role: a for a in st.window_aggregates(["r1"]) if a.window_start == T0}
        assert merged["frames"].n_frames == first["frames"].n_frames + 2
        assert merged["incumbent"].n_predictions == first["incumbent"].n_predictions + 2
        assert merged["incumbent"].sketch["class_counts"][2] == first["incumbent"].sketch["class_counts"][2] + 2
        assert merged["shadow"].n_predictions == first["shadow"].n_predictions  # no late shadow: unchanged
        assert len([a for a in st.window_aggregates(["r1"]) if a.window_start == T0]) == 3  # frames, incumbent, shadow
        arr = sketch_arrays(merged["incumbent"])
        assert arr["prob_hist"].shape == (3, 20) and arr["prob_hist"].dtype == np.int64
        assert merged["incumbent"].model_name == "inc" and merged["incumbent"].model_version == "1"
        assert st.window_aggregates(["nope"]) == [] and len(st.window_aggregates()) == len(st.window_aggregates(["r1"]))
    finally:
        st.close()


# --- the command and the capacity figures ------------------------------------------------------------------------------

def test_store_retain_and_size_commands(tmp_path, capsys):
    db = tmp_path / "s.db"
    st = PredictionStore(str(db))
    try:  # the command uses the real clock: two days of frames ending a day before today
        wrote = _fill(st, days=2, cameras=("dock1",), t0=math.floor(time.time() / DAY_S) * DAY_S - 3 * DAY_S)
    finally:
        st.close()
    assert cli(["store", "retain", "--db", str(db), "--full-days", "1", "--reservoir", "3", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing written" in out and "would aggregate" in out
    assert PredictionStore(str(db)).count(frames) == wrote["frames"]
    assert cli(["store", "retain", "--db", str(db), "--full-days", "1", "--reservoir", "3", "--json", "--vacuum"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["frames_aggregated"] == wrote["frames"] - doc["frames_kept"] > 0 and doc["policy"]["reservoir_per_camera_day"] == 3
    assert cli(["store", "retain", "--db", str(db), "--full-days", "1", "--reservoir", "3"]) == 0
    assert "aggregated 0 frames" in capsys.readouterr().out  # idempotent
    assert cli(["store", "size", "--db", str(db)]) == 0
    assert "bytes each" in capsys.readouterr().out
    assert cli(["store", "retain", "--db", str(tmp_path / "missing.db")]) == 2
    assert "not found" in capsys.readouterr().err
    assert cli(["store", "retain", "--db", str(db), "--window", "7m"]) == 2


def test_measure_store_writes_and_size(store_url):
    res = measure_store_writes(store_url, n_predictions=2000, writers=2, batch=100)
    assert res["n_predictions"] == 2000 and res["writers"] == 2 and len(res["per_writer_predictions_per_s"]) == 2
    assert res["predictions_per_s"] > 0 and res["frames_per_s"] == pytest.approx(res["predictions_per_s"] / 2)
    size = store_size(store_url)
    assert size["n_predictions"] == 2000 and size["backend"] in ("sqlite", "postgresql")
    assert 30 < size["bytes_per_prediction"] < 1000 and size["tables"]["predictions"] > 0
    st = PredictionStore(store_url)
    try:
        assert st.count(frames) == 1000 and len(st.list_runs()) == 2
    finally:
        st.close()
    with pytest.raises(ValueError, match="writers >= 1"):
        measure_store_writes(store_url, 10, writers=0)
