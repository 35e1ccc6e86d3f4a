"""``shadowcam bench labels`` without training: pools made here from arrays (known accuracy, a proxy that knows
something or nothing), the labels-needed logic against the analytic Wilson count, the summary's ratios and verdict
on made-up stops, the document, config errors; one command run with tiny ONNX models on tiny rendered pools."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from apps import bench_labels as bl
from models.synthetic import CLASS_NAMES
from pipeline.cli import main as cli_main
from pipeline.config import SamplingConfig
from pipeline.evaluation.ppi import wilson_labels_for_half_width
from pipeline.evaluation.stats import accuracy_estimate
from pipeline.types import ConfigError, DataError
from tests.helpers.onnx_models import make_tiny_classifier

pytestmark = pytest.mark.timeout(300)
C = 6


def make_pool(n: int = 2000, seed: int = 0, name: str = "clean", accuracy: float | None = None,
              confident_wrong: float = 0.0) -> bl.Pool:
    """A scored pool made from arrays. Default: calibrated (each frame's confidence is its chance of being right,
    so the proxy knows a lot); ``accuracy``: every frame right with that chance and the same confidence (the proxy
    knows nothing: the shadow then guesses at random, so agreeing with it says nothing either);
    ``confident_wrong``: that share of frames wrong at confidence 0.99 (miscalibrated under shift)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    probs = {}
    for role in ("incumbent", "shadow"):
        conf = rng.beta(5, 1.5, n).clip(1 / C + 0.01, 0.999) if accuracy is None else np.full(n, 0.7)
        right = rng.random(n) < (conf if accuracy is None else accuracy)
        if role == "incumbent" and confident_wrong:
            bad = rng.random(n) < confident_wrong
            conf, right = np.where(bad, 0.99, conf), right & ~bad
        pred = np.where(right, labels, (labels + rng.integers(1, C, n)) % C)
        if role == "shadow" and accuracy is not None:
            pred = rng.integers(0, C, n)
        p = np.repeat(((1 - conf) / (C - 1))[:, None], C, axis=1)
        p[np.arange(n), pred] = conf
        probs[role] = p
    stats = {"brightness": rng.normal(100, 10, n), "sharpness": rng.normal(50, 5, n)}
    return bl.Pool(name, labels, probs, stats, tuple(f"c{i}" for i in range(C)), "cam")


def cfg(tmp: Path, **kw) -> bl.LabelBenchConfig:
    return bl.LabelBenchConfig(**{"workdir": tmp / "w", "out": tmp / "docs" / "le.md", "stream_frames": 6000,
                                  "rate": 0.2, "check_every": 50, "half_width": 0.05, "reps": 4, "workers": 1, **kw})


# --- the labels-needed logic -----------------------------------------------------------------------------------------
def test_uniform_wilson_stops_at_the_analytic_wilson_count_and_covers(tmp_path):
    pool = make_pool(accuracy=0.8)
    c = cfg(tmp_path, reps=40, strategies=("uniform",))
    sims = bl.run_simulations({"clean": pool}, c, progress=False)
    assert len(sims) == 40
    s = bl.summarize(sims, {"clean": pool.truth}, c)
    row = next(r for r in s["rows"] if (r["strategy"], r["estimator"]) == bl.BASELINE)
    analytic = wilson_labels_for_half_width(pool.truth, 0.05, 0.05)
    assert s["wilson_analytic"]["clean"] == analytic
    assert row["reached"] == 40 and row["ratio"] == 1.0
    # one look every 50 frames = about 10 labels; the estimate's noise moves the stopping count by a few percent
    assert abs(row["median"] - analytic) <= 0.08 * analytic, (row["median"], analytic)
    assert row["q25"] <= row["median"] <= row["q75"]
    assert row["coverage"] >= 0.85 and not row["undercovers"]
    # every stop is at a look, and the FIRST that met the target: a look adds about 10 labels and narrows the
    # interval by about 2%, so the stopping interval is only just narrow enough
    for stops in sims.values():
        st = stops["classical"]
        assert st.reached and st.frames % 50 == 0 and 0.045 < st.half_width <= 0.05, st


def test_a_useless_proxy_saves_nothing_and_a_calibrated_one_saves_labels(tmp_path):
    c = cfg(tmp_path, reps=6, strategies=("uniform",))
    pools = {"clean": make_pool(accuracy=0.75, seed=1), "shifted": make_pool(seed=2, name="shifted")}
    s = bl.summarize(bl.run_simulations(pools, c, progress=False), {n: p.truth for n, p in pools.items()}, c)
    ratio = {(r["stream"], r["estimator"]): r["ratio"] for r in s["rows"]}
    assert 0.85 <= ratio[("clean", "model_assisted")] <= 1.15  # nothing known: falls back to the classical
    assert ratio[("shifted", "model_assisted")] < 0.85  # confidence = chance of being right: fewer labels


def test_the_estimators_read_no_label_the_sampler_did_not_draw(tmp_path):
    pool = make_pool(confident_wrong=0.3, seed=3)
    prep = bl.PreparedPool(pool, SamplingConfig.default("neyman_edges"))
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 2000, 3000)
    pi = rng.uniform(0.05, 0.3, 3000)
    lab = rng.random(3000) < pi
    folds = np.arange(3000) % 5
    c = cfg(tmp_path)
    before = {e: bl.estimate_at(prep, idx, lab, pi, folds, e, c) for e in bl.ESTIMATORS}
    prep.correct = np.where(np.isin(np.arange(2000), idx[lab]), prep.correct, ~prep.correct)  # flip unseen frames
    for e in bl.ESTIMATORS:
        assert bl.estimate_at(prep, idx, lab, pi, folds, e, c) == pytest.approx(before[e])
    # below proxy_min_labels labelled frames the model-assisted estimate is the classical one
    few = lab & (np.cumsum(lab) <= c.proxy_min_labels - 1)
    est = accuracy_estimate(prep.correct[idx][few], pi[few])
    assert bl.estimate_at(prep, idx, few, pi, folds, "model_assisted", c) == pytest.approx((est.value, est.low, est.high))


def test_every_strategy_runs_and_workers_give_the_same_stops(tmp_path):
    pools = {"clean": make_pool(seed=4), "shifted": make_pool(seed=5, name="shifted", confident_wrong=0.3)}
    c1 = cfg(tmp_path, reps=2, stream_frames=3000, check_every=100)
    one = bl.run_simulations(pools, c1, progress=False)
    two = bl.run_simulations(pools, c1.model_copy(update={"workers": 2}), progress=False)
    assert list(one) == [(n, s, r) for n in pools for s in bl.STRATEGIES for r in range(2)]
    assert one == two
    for stops in one.values():
        assert set(stops) == set(bl.ESTIMATORS)
        for st in stops.values():
            assert 0 < st.labels <= st.frames <= 3000 and 0 <= st.low <= st.value <= st.high <= 1


# --- the summary and the document -----------------------------------------------------------------------------------
def _stop(labels: int | None, covered: bool = True) -> bl.Stop:
    return bl.Stop(labels or 999, 10 * (labels or 999), 0.8, 0.78, 0.82, labels is not None, covered)


def _sims(table: dict[tuple[str, str, str], list]) -> dict:
    """(stream, strategy, estimator) -> labels per rep (None: never reached; negative: reached but missed the truth)."""
    out: dict = {}
    for (n, s, e), labels in table.items():
        for r, v in enumerate(labels):
            out.setdefault((n, s, r), {})[e] = _stop(None if v is None else abs(v), v is None or v > 0)
    return out


def _table(clean_ma: int, shifted_ma: list, clean_ney: int = 90, shifted_ney: list = (40, 40, 42, 44)) -> dict:
    """Four labelings per stream of uniform and neyman x both estimators; uniform + Wilson needs 100 (median)."""
    t = {}
    for n in ("clean", "shifted"):
        t[(n, "uniform", "classical")] = [100, 100, 100, 120]
        t[(n, "neyman", "classical")] = [100] * 4
    t[("clean", "uniform", "model_assisted")] = [clean_ma] * 4
    t[("shifted", "uniform", "model_assisted")] = list(shifted_ma)
    t[("clean", "neyman", "model_assisted")] = [clean_ney] * 4
    t[("shifted", "neyman", "model_assisted")] = list(shifted_ney)
    return _sims(t)


TRUTHS = {"clean": 0.8, "shifted": 0.6}


def test_ratios_best_combination_and_verdict():
    c = bl.LabelBenchConfig(strategies=("uniform", "neyman"), reps=4)
    s = bl.summarize(_table(80, [70] * 4), TRUTHS, c)
    by = {(r["stream"], r["strategy"], r["estimator"]): r for r in s["rows"]}
    base = by[("clean", "uniform", "classical")]
    assert (base["median"], base["q25"], base["q75"], base["ratio"]) == (100, 100, 105, 1.0)
    assert by[("shifted", "neyman", "model_assisted")]["ratio"] == pytest.approx(41 / 100)
    assert s["best"] == {"strategy": "neyman", "estimator": "model_assisted", "ratios": {"clean": 0.9, "shifted": 0.41},
                         "medians": {"clean": 90, "shifted": 41}}
    assert s["met"] and s["verdict"] == "met (0.41x)"
    # neyman + model-assisted above 1.0x on the clean stream: not eligible; the next best misses 0.5x, by how much
    s = bl.summarize(_table(80, [62] * 4, clean_ney=150), TRUTHS, c)
    assert (s["best"]["strategy"], s["best"]["estimator"]) == ("uniform", "model_assisted")
    assert not s["met"] and s["verdict"] == "MISSED: 0.62x"
    assert [x["ratio"] for x in s["ranking"]] == [0.62, 1.0, 1.0]
    # uniform + model-assisted above 1.0x on the clean stream is out, neyman + model-assisted in
    s = bl.summarize(_table(130, [30] * 4), TRUTHS, c)
    assert (s["best"]["strategy"], s["best"]["estimator"]) == ("neyman", "model_assisted")


def test_labelings_that_never_reach_the_target_and_undercoverage():
    c = bl.LabelBenchConfig(strategies=("uniform", "neyman"), reps=40)
    t = {(n, s, e): [100] * 40 for n in TRUTHS for s in ("uniform", "neyman") for e in bl.ESTIMATORS}
    t[("clean", "neyman", "model_assisted")] = [-90] * 30 + [90] * 10  # reached, but 30 of 40 intervals miss the truth
    t[("shifted", "neyman", "model_assisted")] = [40] * 40
    t[("shifted", "uniform", "model_assisted")] = [None] * 40  # never reached
    t[("clean", "uniform", "model_assisted")] = [80] * 21 + [None] * 19
    s = bl.summarize(_sims(t), TRUTHS, c)
    by = {(r["stream"], r["strategy"], r["estimator"]): r for r in s["rows"]}
    never = by[("shifted", "uniform", "model_assisted")]
    assert never["reached"] == 0 and math.isinf(never["median"]) and never["ratio"] is None and never["coverage"] is None
    some = by[("clean", "uniform", "model_assisted")]  # 19 of 40 never reached: they count as needing more
    assert some["median"] == 80 and math.isinf(some["q75"]) and some["reached"] == 21
    bad = by[("clean", "neyman", "model_assisted")]
    assert bad["coverage"] == 0.25 and bad["undercovers"] and not by[("clean", *bl.BASELINE)]["undercovers"]
    # neyman + model-assisted undercovers, uniform + model-assisted never got there: a classical one is the best
    assert s["best"]["estimator"] == "classical" and s["verdict"] == "MISSED: 1.00x"


def _results(summary: dict, c: bl.LabelBenchConfig) -> dict:
    pools = {"clean": make_pool(n=50, seed=6), "shifted": make_pool(n=50, seed=7, name="shifted")}
    return {"config": c.model_dump(mode="json"), "machine": {"date": "today", "cpu": "cpu"}, "models": {},
            "streams": {n: {**p.describe(), "phases": [[1.0, ["night:2"]]], "frame_size": [240, 320], "dwell": [3, 6]}
                        for n, p in pools.items()},
            "summary": summary, "seconds": {"total": 1.0, "simulations": 1.0, "training": {}}}


def test_document_has_a_table_per_stream_the_best_combination_and_the_verdict(tmp_path):
    c = bl.LabelBenchConfig(strategies=("uniform", "neyman"), reps=4, command="shadowcam bench labels --reps 4")
    res = _results(bl.summarize(_table(80, [62] * 4, clean_ney=150), TRUTHS, c), c)
    bl.write_results(res, tmp_path / "le.md")
    text = (tmp_path / "le.md").read_text()
    assert "**MISSED: 0.62x**" in text
    assert ("**uniform + model-assisted (active PPI++)**: 0.80x on the clean stream and 0.62x on the shifted stream "
            "(median labels needed, relative to uniform + Wilson's)") in text
    for n in ("Clean", "Shifted"):
        block = text.split(f"## {n} stream")[1].split("##")[0]
        assert len(re.findall(r"^\| (uniform|neyman)", block, re.M)) == 4  # strategy x estimator
    assert "| uniform * | model-assisted (active PPI++) | 62 [62-62] | 0.62x | 100.0% (4/4) | 4/4 |" in text
    assert "| neyman | model-assisted (active PPI++) | 150 [150-150] | 1.50x |" in text
    analytic = wilson_labels_for_half_width(0.6, 0.02, 0.05)
    assert f"analytic Wilson count at the true accuracy: {analytic})" in text
    assert "shadowcam bench labels --reps 4" in text
    assert json.loads((tmp_path / "le.json").read_text())["summary"]["verdict"] == "MISSED: 0.62x"


# --- config and inputs -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    ({"strategies": ("uniform", "fancy")}, "strategies must be distinct names"),
    ({"strategies": ("neyman",)}, "including uniform"),
    ({"check_every": 500, "stream_frames": 100}, r"check_every \(500\) must not exceed stream_frames \(100\)"),
    ({"half_width": 0.7}, "half_width"),
    ({"reps": 0}, "reps"),
    ({"colour": 1}, "colour"),
    ({"pools": "p.npz", "model": "m.onnx"}, "either pools .* or model/shadow"),
])
def test_bad_config_is_a_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        bl.LabelBenchConfig(**kw)


def test_pools_are_checked_and_round_trip(tmp_path):
    p = make_pool(n=30)
    with pytest.raises(DataError, match="shadow probabilities must be"):
        bl.Pool("x", p.labels, {"incumbent": p.probs["incumbent"], "shadow": p.probs["shadow"][:5]}, {}, p.class_names)
    with pytest.raises(DataError, match="no probabilities of the shadow"):
        bl.Pool("x", p.labels, {"incumbent": p.probs["incumbent"]}, {}, p.class_names)
    bl.save_pools({"clean": p}, tmp_path / "pools.npz", {"incumbent": {"model": "m:1"}})
    pools, models = bl.load_pools(tmp_path / "pools.npz")
    q = pools["clean"]
    assert q.truth == p.truth and q.class_names == p.class_names and set(q.stats) == set(p.stats)
    assert np.array_equal(q.probs["shadow"], p.probs["shadow"]) and models == {"incumbent": {"model": "m:1"}}
    with pytest.raises(DataError, match="not a pools file"):
        bl.load_pools(tmp_path / "nothing.npz")


# --- the command -----------------------------------------------------------------------------------------------------
def test_cli_labels_quick_writes_the_document_and_the_json(tmp_path, capsys):
    models = {r: make_tiny_classifier(tmp_path / f"{r}.onnx", list(CLASS_NAMES), input_size=(24, 24), seed=s)
              for r, s in (("incumbent", 1), ("shadow", 2))}
    out = tmp_path / "docs" / "le.md"
    rc = cli_main(["bench", "labels", "--quick", "--model", str(models["incumbent"]), "--shadow", str(models["shadow"]),
                   "--reps", "2", "--strategies", "uniform,neyman", "--workers", "1", "--out", str(out),
                   "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert rc == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert set(res["streams"]) == {"clean", "shifted"} and res["streams"]["clean"]["frames"] == 40
    assert len(res["summary"]["rows"]) == 2 * 2 * 2
    text = out.read_text()
    assert res["summary"]["verdict"] in text
    assert re.search(r"^shadowcam bench labels --out \S+ --workdir \S+ --model \S+ --shadow \S+ --reps 2 "
                     r"--strategies uniform,neyman --workers 1 --quick$", text, re.M)
    assert (tmp_path / "w" / "pools.npz").is_file() and not (tmp_path / "w" / "pools" / "clean").exists()
    printed = capsys.readouterr().out
    assert "target <= 0.5x uniform + Wilson on the shifted stream" in printed and str(out) in printed
    # again on the scored pools of that run: no models, no rendering; the document still names the models
    again = tmp_path / "again.md"
    assert cli_main(["bench", "labels", "--quick", "--pools", str(tmp_path / "w" / "pools.npz"), "--reps", "1",
                     "--strategies", "uniform", "--workers", "1", "--out", str(again), "--no-progress"]) == 0
    res2 = json.loads(again.with_suffix(".json").read_text())
    assert res2["streams"] == res["streams"] and res2["models"] == res["models"]
    assert res2["models"]["incumbent"]["path"] == str(models["incumbent"])
    assert "scored by an earlier run" in again.read_text() and "pools" not in res2["seconds"]


@pytest.mark.parametrize("argv, match", [
    (["bench", "labels", "--n", "10"], "--n belongs to `shadowcam bench estimate`"),
    (["bench", "estimate", "--reps", "3"], "--reps belongs to `shadowcam bench labels`"),
    (["bench", "--strategies", "uniform"], "--strategies belongs to `shadowcam bench labels`"),
    (["bench", "labels", "--strategies", "neyman"], "including uniform"),
    (["bench", "labels", "--rate", "0"], "rate"),
])
def test_cli_refuses_options_of_the_other_benches_and_bad_values(argv, match, tmp_path, capsys):
    assert cli_main([*argv, "--workdir", str(tmp_path), "--out", str(tmp_path / "x.md"), "--no-progress"]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "x.md").exists()
