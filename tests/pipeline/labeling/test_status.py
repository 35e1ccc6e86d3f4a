"""The /status page's figures on a store with known contents: they are the evaluator's (same numbers), the labels of
this week are counted by their own time, the serving cost comes from the run summaries, the alert thresholds from the
run config; deployments, caching, the sparkline, and the page through TestClient."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from pipeline.config import AlertConfig, EvalConfig
from pipeline.evaluation.evaluator import Evaluator
from pipeline.labeling.app import create_app
from pipeline.labeling.status import StatusBoard, build_status, deployments, money, sparkline_svg
from pipeline.store import PredictionStore
from pipeline.types import Label
from tests.helpers.evaluation_data import RUN_ID, StoreSpec, build_store, write_model

NOW = time.time()
RECENT = {4: "box", 28: "box", 36: "box", 3: "box", 11: "pallet"}  # frame i -> its truth: an agreeing third label


def summary(price: float | None = 2.0) -> dict:
    s = {"run_id": RUN_ID, "duration_s": 3600.0, "frames_served": 1_000_000,
         "incumbent": {"model": "inc:1", "busy_s": 900.0},
         "shadow": {"model": "sh:2", "frames_predicted": 500_000, "busy_s": 300.0}, "extra": {}}
    if price:
        s["extra"]["serving_cost"] = {"price_per_device_hour": price, "currency": "USD", "device": "2-vCPU VM"}
    return s


def fill(tmp_path: Path, price: float | None = 2.0) -> PredictionStore:
    inc = write_model(tmp_path / "inc.onnx", "inc", "1", 0.95, 1000)
    sh = write_model(tmp_path / "sh.onnx", "sh", "2", 0.90, 1000)
    spec = StoreSpec(incumbent_uri=str(inc), shadow_uri=str(sh), alerts=AlertConfig(max_gap=0.05))
    store = build_store(str(tmp_path / "s.db"), spec)
    frame = lambda i: f"{RUN_ID}:{'camA' if i % 2 == 0 else 'camB'}:{i}"  # noqa: E731
    store.add_labels([Label(frame(i), lab, "ann3", NOW - 3600, "web") for i, lab in RECENT.items()]
                     + [Label(frame(8), "pallet", "ann3", NOW - 8 * 86400, "web")])  # last week's: not this week
    store.end_run(RUN_ID, summary(price))
    return store


@pytest.fixture
def store(tmp_path: Path):
    s = fill(tmp_path)
    yield s
    s.close()


def row(doc: dict, camera: str, role: str) -> dict:
    return next(r for r in doc["rows"] if r["camera"] == camera and r["role"] == role)


def test_figures_are_the_evaluators(store: PredictionStore) -> None:
    [dep] = deployments(store)
    assert (dep.key, dep.incumbent, dep.shadow, dep.run_ids) == ("1", "inc:1", "sh:2", (RUN_ID,))
    doc = build_status(store, dep, EvalConfig(), now=NOW)
    want = Evaluator(EvalConfig(run_ids=[RUN_ID])).evaluate(store)
    for role in ("incumbent", "shadow"):
        mf = want.models[role]
        r = row(doc, "all cameras", role)
        assert r["accuracy"]["value"] == pytest.approx(mf.accuracy.value)
        assert (r["accuracy"]["low"], r["accuracy"]["high"]) == pytest.approx((mf.accuracy.low, mf.accuracy.high))
        assert r["gap"]["value"] == pytest.approx(mf.gap.value)
        for cam in ("camA", "camB"):
            rc = row(doc, cam, role)
            assert rc["accuracy"]["value"] == pytest.approx(mf.per_camera[cam].value)
            # a camera's gap: the card's offline accuracy minus that camera's accuracy
            assert rc["gap"]["value"] == pytest.approx(mf.offline.test_accuracy - mf.per_camera[cam].value)
    inc = row(doc, "all cameras", "incumbent")
    assert inc["accuracy_text"] == f"{100 * want.models['incumbent'].accuracy.value:.1f}% " \
        f"({100 * want.models['incumbent'].accuracy.low:.1f}% to {100 * want.models['incumbent'].accuracy.high:.1f}%)"
    assert inc["gap_text"].endswith(")") and "points below offline" in inc["gap_text"]
    # labels of the last 7 days, by camera (last week's label left out); all labels in all
    assert doc["labels_week"] == 5 and doc["labels_week_by_camera"] == {"camA": 3, "camB": 2}
    assert (inc["labels_week"], row(doc, "camA", "incumbent")["labels_week"]) == (5, 3)
    assert doc["labels_total"] == want.counts.labels
    # the decision is the evaluator's, in words
    assert doc["decision"]["action"] == want.decision.action and doc["decision"]["reason"] == want.decision.reason
    # alerts: the run config's threshold (max_gap 0.05) makes the incumbent's gap an alert
    assert any(a["kind"] == "gap" and a["subject"] == "incumbent" for a in doc["alerts"])
    # trend: 8 windows over the deployment's span, each window's accuracy the evaluator's
    assert doc["n_windows"] == 8 and len(inc["trend"]) == 8 and "<polyline" in inc["trend_svg"]
    span = want.meta.window.last_frame - want.meta.window.first_frame
    assert span / 8 < doc["window_s"] < span / 8 + 1e-3  # 8 windows cover the span
    wins = Evaluator(EvalConfig(run_ids=[RUN_ID])).evaluate_windows(store, doc["window_s"])
    assert len(wins) == 8
    assert inc["trend"] == pytest.approx([w.models["incumbent"].accuracy.value for w in wins])
    assert inc["trend_words"] in ("steady", "rising", "falling")
    # serving cost from the run summary (the worked example of tests/pipeline/test_serving_cost.py): $1.50 and $1.00
    # per million, the shadow adds $0.50 per million served; per 1,000: $0.0015
    assert doc["serving"]["incumbent"]["usd_per_million"] == pytest.approx(1.5)
    assert doc["serving_money"]["extra"] == "$0.50"
    assert inc["serving_text"] == "$0.0015 ($0.0005 on a fully busy device)"
    # no cost matrix, no baselines given: said so, not zero
    assert inc["error_cost_text"] == "not configured" and not doc["error_cost_configured"]
    json.dumps(doc)  # the /api/status document is plain JSON


def test_explicit_price_and_thresholds(tmp_path: Path) -> None:
    store = fill(tmp_path, price=None)
    [dep] = deployments(store)
    assert build_status(store, dep, EvalConfig(), now=NOW)["serving"] is None
    doc = build_status(store, dep, EvalConfig(price_per_device_hour=4.0), now=NOW, alert_config=AlertConfig(max_gap=0.5))
    assert doc["serving"]["incumbent"]["usd_per_million"] == pytest.approx(3.0)
    assert not [a for a in doc["alerts"] if a["kind"] == "gap"]
    store.close()


def test_deployments_and_the_page(store: PredictionStore, tmp_path: Path) -> None:
    store.begin_run("run2", "inc:3", None, ["box", "pallet", "empty"], {})
    deps = deployments(store)
    assert [(d.key, d.incumbent, d.shadow) for d in deps] == [("1", "inc:1", "sh:2"), ("2", "inc:3", None)]
    from .conftest import issue_tokens, logged_in

    token = issue_tokens(store, {"manager": "reviewer"})["manager"]
    c = logged_in(create_app(store, eval_config=EvalConfig()), token)
    newest = c.get("/status")  # the newest deployment: a run without frames yet
    assert newest.status_code == 200 and "Deployment 2: champion inc:3, no challenger" in newest.text
    r = c.get("/status", params={"deployment": "1"})
    text = re.sub(r"\s+", " ", r.text)
    assert "Deployment 1: champion inc:1, challenger sh:2 in shadow" in text
    doc = build_status(store, deps[0], EvalConfig(), now=NOW)
    inc = row(doc, "all cameras", "incumbent")
    assert inc["accuracy_text"] in text and inc["gap_text"] in text
    assert "5 label(s) this week (camA: 3, camB: 2)" in text
    assert "running the challenger beside it adds $0.50 per million served predictions" in text
    assert "open alert(s) over all frames of this deployment" in text and "Cost of errors: not configured" in text
    assert text.count('<svg class="spark"') >= 6  # a trend per camera and model
    api = c.get("/api/status", params={"deployment": "1"}).json()
    assert row(api, "camB", "shadow")["accuracy"]["value"] == pytest.approx(row(doc, "camB", "shadow")["accuracy"]["value"])
    assert [d["key"] for d in api["deployments"]] == ["1", "2"]
    assert "no deployment" in c.get("/api/status", params={"deployment": "9"}).json()["error"]


def test_board_caches_and_refreshes(store: PredictionStore) -> None:
    [dep] = deployments(store)
    board = StatusBoard(store, EvalConfig(), refresh_s=3600)
    first = board.get(dep)
    assert board.get(dep) is first  # cached
    board.refresh_s = 0
    assert board.get(dep) is first  # stale: returned while a refresh runs in the background
    deadline = time.monotonic() + 30
    while board.get(dep) is first and time.monotonic() < deadline:
        time.sleep(0.05)
    assert board.get(dep) is not first and board.get(dep)["rows"] == first["rows"]


def test_board_shows_errors_instead_of_failing(tmp_path: Path) -> None:
    store = PredictionStore(str(tmp_path / "e.db"))
    store.begin_run("a", "m:1", None, ["x", "y"], {})
    store.begin_run("b", "m:1", None, ["x", "z"], {})  # one model pair, two class lists: the evaluator refuses
    [dep] = deployments(store)
    doc = StatusBoard(store).get(dep)
    assert doc["error"].startswith("not evaluated (ConfigError") and "different class lists" in doc["error"]
    store.close()


def test_sparkline_and_money() -> None:
    svg = sparkline_svg([0.8, 0.82, None, 0.9, 0.91])
    assert svg.count("<polyline") == 2 and "80.0%, 82.0%, -, 90.0%, 91.0%" in svg
    assert sparkline_svg([0.8]) == "" and sparkline_svg([None, None]) == ""
    assert "<circle" in sparkline_svg([0.5, None, 0.6])  # lone points are still drawn
    assert money(0.0015, "USD") == "$0.0015" and money(1234.5, "EUR") == "EUR 1,234.50" and money(None, "USD") == "-"
    assert money(-2.0, "USD") == "-$2.00"


def test_label_serve_options_make_the_eval_config(tmp_path: Path) -> None:
    import argparse

    from pipeline.commands import label
    from pipeline.types import ConfigError

    p = argparse.ArgumentParser()
    label.add_arguments(p)
    costs = Path(__file__).resolve().parents[3] / "configs" / "costs.example.yaml"
    ev = tmp_path / "eval.yaml"
    ev.write_text("alpha: 0.1\nestimator: classical\n")
    args = p.parse_args(["serve", "--db", "x.db", "--eval-config", str(ev), "--costs", str(costs),
                         "--price-per-device-hour", "2.5", "--workdir", str(tmp_path)])
    cfg = label._eval_config(args)
    assert (cfg.alpha, cfg.estimator, cfg.price_per_device_hour, cfg.workdir) == (0.1, "classical", 2.5, str(tmp_path))
    assert cfg.costs is not None and cfg.costs.matrix
    ev.write_text("alpah: 0.1\n")
    with pytest.raises(ConfigError, match=r"--eval-config .*eval\.yaml.*'alpah'"):
        label._eval_config(args)
    with pytest.raises(ConfigError, match="file not found"):
        label._eval_config(p.parse_args(["serve", "--db", "x.db", "--eval-config", str(tmp_path / "nope.yaml")]))


def test_cost_of_errors_when_a_matrix_is_given(store: PredictionStore) -> None:
    from pipeline.config import CostConfig

    cfg = EvalConfig(costs=CostConfig(currency="EUR", matrix={"box": {"pallet": 10.0}}, default_error_cost=1.0))
    [dep] = deployments(store)
    doc = build_status(store, dep, cfg, now=NOW)
    want = Evaluator(cfg.model_copy(update={"run_ids": [RUN_ID]})).evaluate(store)
    for role in ("incumbent", "shadow"):
        est = want.models[role].cost.per_1k
        r = row(doc, "all cameras", role)
        assert r["error_cost"]["value"] == pytest.approx(est.value)
        assert r["error_cost_text"] == f"{money(est.value, 'EUR')} ({money(est.low, 'EUR')} to {money(est.high, 'EUR')})"
    assert doc["error_cost_configured"] and doc["currency"] == "EUR"
