"""``shadowcam demo`` end to end (one run per session, fixture ``demo_workdir`` in tests/conftest.py).

The demo's summary is the product's claim: every number in it is measured on the way (nothing built in), and its
``checks`` compare the measured intervals with the generator's truth. A false check fails here, with the demo's
summary table in the message. Issue 4's Done-when is ``stream1: gap CI contains the true gap``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.conftest import DEMO_TEST_TIMEOUT_S

pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEMO_TEST_TIMEOUT_S)]

MODEL = "conveyor-classifier"
from apps.demo import (CHECK_BASELINE, CHECK_CONTRADICTED, CHECK_DRIFT_FIRST, CHECK_ENDS_BELOW, CHECK_FP16, CHECK_GAP_CI,
                       CHECK_PROMOTE, CHECK_RETRAINED)

EXPECTED_CHECKS = (CHECK_GAP_CI, CHECK_ENDS_BELOW, CHECK_FP16, CHECK_CONTRADICTED, CHECK_BASELINE, CHECK_DRIFT_FIRST,
                   CHECK_RETRAINED, CHECK_PROMOTE)


@pytest.fixture(scope="module")
def summary(demo_workdir: Path) -> dict:
    path = demo_workdir / "demo_summary.json"
    log = demo_workdir / "demo.log"
    assert path.is_file(), f"{path} missing; demo log tail:\n{log.read_text()[-3000:] if log.is_file() else '(no log)'}"
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def client(demo_workdir: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{demo_workdir / 'mlflow.db'}"  # explicit URIs: nothing global (env, mlflow state) is set
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def table(summary: dict) -> str:
    """The demo's own summary table (as it printed it), for failure messages."""
    from apps.demo import DemoResult, format_summary

    try:
        return format_summary(DemoResult(**summary))
    except TypeError:  # the summary's fields changed: show the raw JSON
        return json.dumps(summary, indent=2)


def version_of(tag: str) -> str:
    m = re.match(r"v(\d+) ", tag)
    assert m, f"model row {tag!r} does not start with its version (vN ...)"
    return m.group(1)


def row(summary: dict, contains: str) -> tuple[str, dict]:
    hits = [(k, v) for k, v in summary["models"].items() if contains in k]
    assert len(hits) == 1, f"expected one model row containing {contains!r}, got {list(summary['models'])}"
    return hits[0]


def test_summary_numbers_are_measured(summary):
    for key in ("models", "windows", "decision", "checks", "reports", "labels_used", "timings_s"):
        assert summary.get(key), f"demo_summary.json: {key!r} missing or empty\n{table(summary)}"
    assert {"stream1", "retraining", "stream2"} <= summary["labels_used"].keys()
    assert all(n > 0 for n in summary["labels_used"].values()), summary["labels_used"]

    for story_row in ("champion (stream 1)", "champion (stream 2)", "challenger (stream 2)"):
        row(summary, story_row)
    for tag, m in summary["models"].items():
        msg = f"{tag}: {m}\n{table(summary)}"
        assert 0.0 < m["offline_accuracy"] <= 1.0, msg
        assert 0.0 <= m["prod_ci"][0] <= m["prod_accuracy"] <= m["prod_ci"][1] <= 1.0, msg
        assert m["gap_ci"][0] <= m["gap"] <= m["gap_ci"][1], msg
        assert m["gap"] == pytest.approx(m["offline_accuracy"] - m["prod_accuracy"], abs=1e-6), msg
        assert m["n_labeled"] > 0 and m["true_prod_accuracy"] is not None, msg

    windows = summary["windows"]
    assert len(windows) >= 2, f"stream 1 should span several evaluation windows\n{table(summary)}"
    assert [w["window"] for w in windows] == sorted(w["window"] for w in windows)
    for w in windows:
        assert w["labels"] > 0 and w["prod_accuracy"] is not None and None not in w["gap_ci"], w
    assert summary["decision"].get("action"), summary["decision"]


def test_stream1_gap_interval_contains_the_true_gap(summary):
    """Issue 4's Done-when, measured: the incumbent's train-to-production gap on stream 1 against the true gap
    (offline accuracy minus the accuracy on EVERY frame of the stream, from the generator), with the demo's 95% CI
    (model-assisted since issue 11).

    The anytime-valid gap interval (``gap_cs``) is *not* asserted on stream 1: stream 1 drifts on purpose (day ->
    night -> blur), and the confidence sequence's predictable bets weigh early frames more, so on a drifting stream it
    covers a bet-weighted average of the changing accuracy, not the stream's overall accuracy (with uniform sampling
    it missed the true gap in a run of this test). It is asserted on stream 2, whose conditions are steady."""
    key = CHECK_GAP_CI
    assert key in summary["checks"], f"check {key!r} was not computed\n{table(summary)}"
    _, inc = row(summary, "champion (stream 1)")
    assert inc["true_gap"] == pytest.approx(inc["offline_accuracy"] - inc["true_prod_accuracy"])
    assert summary["checks"][key] == (inc["gap_ci"][0] <= inc["true_gap"] <= inc["gap_ci"][1]), table(summary)
    assert summary["checks"][key], table(summary)


def test_stream2_anytime_valid_gap_intervals_contain_the_true_gaps(summary):
    """On stream 2 (steady conditions) the anytime-valid gap interval of both models holds the true gap."""
    for tag in ("champion (stream 2)", "retrained challenger (stream 2)"):
        _, m = row(summary, tag)
        lo, hi = m["gap_cs"]
        assert lo is not None and m["true_gap"] is not None and lo <= m["true_gap"] <= hi, (tag, m["gap_cs"], table(summary))


def test_all_checks_hold(summary):
    """Every check is computed and holds."""
    missing = [k for k in EXPECTED_CHECKS if k not in summary["checks"]]
    failed = [k for k, ok in summary["checks"].items() if not ok]
    assert not missing and not failed, f"missing checks {missing}, failed checks {failed}\n{table(summary)}"


def test_retraining_check_is_measured_and_fails_for_a_model_not_retrained(summary):
    """Issue 10: the challenger's own gap on stream 2 is at most half the champion's gap on the same frames. The
    champion itself (a model that was not retrained) fails the same check on the same frames."""
    from apps.demo import gap_halved

    _, ch = row(summary, "challenger (stream 2)")
    _, inc = row(summary, "champion (stream 2)")
    assert summary["checks"][CHECK_RETRAINED] == gap_halved(inc["gap"], ch["gap"]), table(summary)
    assert ch["gap"] == pytest.approx(ch["offline_accuracy"] - ch["prod_accuracy"], abs=1e-9)
    assert gap_halved(inc["gap"], inc["gap"]) is False, table(summary)
    for m in (ch, inc):  # both gaps printed with the truth from every frame
        assert m["true_gap"] == pytest.approx(m["offline_accuracy"] - m["true_prod_accuracy"])


def test_decisions_drift_and_label_free_flags(summary):
    assert summary["decisions"]["stream1"]["action"] == "equivalent", table(summary)
    d2 = summary["decisions"]["stream2"]
    assert d2["action"] == "promote" and d2["low"] > d2["delta"], table(summary)
    first = summary["drift"]["stream2"][0]
    assert first["baseline"] == "training" and first["drifted"] and first["finding"], first
    # the first (day) window of stream 1 lies inside the training range
    assert summary["drift"]["stream1"][0]["drifted"] is False, summary["drift"]["stream1"]


def test_mlflow_store(summary, client):
    # registry: champion always; after a promotion the retrained version is champion, the first one previous_champion
    aliases = {a: str(v) for a, v in client.get_registered_model(MODEL).aliases.items()}
    first = version_of(row(summary, "champion (stream 1)")[0])
    retrained = version_of(row(summary, "challenger (stream 2)")[0])
    if summary.get("promoted"):
        assert aliases["champion"] == retrained and aliases["previous_champion"] == first, aliases
        assert "challenger" not in aliases, aliases
    else:
        assert aliases["champion"] == first and aliases["challenger"] == retrained, aliases

    # training: the incumbent and the retrained model, each with a curve and an offline test accuracy
    train_exp = client.get_experiment_by_name("shadowcam-training")
    train_runs = client.search_runs([train_exp.experiment_id])
    assert len(train_runs) >= 2
    for run in train_runs:
        assert run.info.status == "FINISHED" and 0 < run.data.metrics["test_accuracy"] <= 1, run.info
        curve = client.get_metric_history(run.info.run_id, "val_accuracy")
        assert len(curve) == int(run.data.params["epochs"]), (run.info.run_name, len(curve))
    registered = {run.data.tags.get("shadowcam.registered_version") for run in train_runs}
    assert {first, retrained} <= registered, registered

    # deployment: one evaluation run per stream, tagged; stream 1's gap history is the summary's windows
    dep_exp = client.get_experiment_by_name("shadowcam-deployment")
    evals = {r.info.run_name: r for r in client.search_runs([dep_exp.experiment_id], "tags.`shadowcam.kind` = 'evaluation'")}
    assert {"demo: stream1", "demo: stream2"} <= evals.keys(), list(evals)
    s1, s2 = evals["demo: stream1"], evals["demo: stream2"]
    assert s1.data.tags["incumbent_model"] == f"{MODEL}:{first}"
    assert s2.data.tags["shadow_model"] == f"{MODEL}:{retrained}"
    assert s2.data.tags["decision"] == summary["decision"]["action"]
    gaps = sorted(client.get_metric_history(s1.info.run_id, "train_to_prod_gap/incumbent"), key=lambda m: m.step)
    assert [m.step for m in gaps] == [w["window"] for w in summary["windows"]]
    for m, w in zip(gaps, summary["windows"]):
        assert m.value == pytest.approx(w["gap"], abs=1e-9)
    for key in ("overall/prod_accuracy/incumbent", "overall/prod_accuracy/incumbent_ci_low",
                "overall/train_to_prod_gap/incumbent_ci_high", "overall/prod_accuracy/shadow", "overall/paired/p_value"):
        assert math.isfinite(s2.data.metrics[key]), key


def test_html_reports(summary, demo_workdir):
    assert {"stream1", "stream2"} <= summary["reports"].keys()
    for name, path in summary["reports"].items():
        # the summary holds absolute paths; check the copy inside this work dir (also right for a reused work dir)
        assert Path(path).parts[-3:] == ("reports", name, "report.html"), path
        html = demo_workdir / "reports" / name / "report.html"
        assert html.is_file(), f"{name}: {html} missing"
        text = html.read_text()
        assert "<html" in text.lower() and len(text) > 1000, f"{name}: {path} is not a report"


def test_summary_says_what_the_labels_bought(summary):
    """Issue 11: every model row names its estimator and the labels uniform sampling + Wilson would have needed for
    the width it reached (at least as many as a Wilson interval of that width needs at that accuracy)."""
    from pipeline.evaluation.ppi import wilson_labels_for_half_width

    for tag, m in summary["models"].items():
        assert m["estimator"] and m["estimator"].startswith("model-assisted"), (tag, m["estimator"])
        half = (m["prod_ci"][1] - m["prod_ci"][0]) / 2
        assert m["uniform_wilson_labels"] == wilson_labels_for_half_width(m["prod_accuracy"], half), tag
        assert m["n_eff"] > 0


# --------------------------------------------------------------------------------------------------
# issue 12: trust and business value in the demo's stream-1 report, and /status on the demo's store
# --------------------------------------------------------------------------------------------------
def test_stream1_report_has_the_error_gallery_costs_serving_cost_and_baselines(summary):
    """The stream-1 report: the error gallery with overlays (PNG files next to the report), cost per 1,000 frames
    with CIs for both models under configs/costs.example.yaml, the serving cost per million predictions, and the
    baselines scored on the same labels."""
    html_path = Path(summary["reports"]["stream1"])
    html = html_path.read_text()
    for heading in ("Error gallery", "Cost of errors", "Baselines", "Serving cost"):
        assert f"<h2>{heading}</h2>" in html, heading
    pngs = re.findall(r'src="(gallery/[^"]+\.png)"', html)
    assert pngs, "the error gallery shows no overlay"
    for src in pngs:
        img = (html_path.parent / src)
        assert img.is_file() and img.stat().st_size > 1000, src
    evaluation = json.loads((html_path.parent / "evaluation.json").read_text())
    models = evaluation["overall"]["data"]["models"]
    for tag, role in (("champion (stream 1)", "incumbent"), ("fp16 shadow (stream 1)", "shadow")):
        _, m = row(summary, tag)
        lo, hi = m["cost_ci"]
        assert m["cost_currency"] == "EUR" and lo < hi and lo <= m["cost_per_1k"] <= hi, (tag, m, table(summary))
        assert models[role]["cost"]["per_1k"]["value"] == pytest.approx(m["cost_per_1k"]), tag
        assert m["cost_drivers"], tag
    sc = summary["serving_cost"]["stream1"]
    assert sc["price_per_device_hour"] == pytest.approx(0.096)
    for role in ("incumbent", "shadow"):
        assert sc[role]["usd_per_million"] > 0 and sc[role]["predictions"] > 0, sc
    assert sc["shadow_extra_usd_per_million"] > 0, sc
    names = {b["name"]: b for b in summary["baselines"]["stream1"]}
    assert {"majority", "rule"} <= names.keys(), names
    for b in names.values():
        assert b["accuracy"] is not None and b["cost_per_1k"] is not None, b


def test_baseline_alert_in_the_night_and_blur_windows_iff_not_significantly_better(summary):
    """Issue 12's Done-when: in the windows of the last phase (night + blur + new packaging) the baseline alert
    fires if, and only if, the incumbent is not significantly better than the best baseline there."""
    assert CHECK_BASELINE in summary["checks"], table(summary)
    guarded = [w for w in summary["windows"] if w.get("vs_baseline")]
    assert guarded, table(summary)
    for w in guarded:
        assert w["baseline_alert"] == (not w["vs_baseline"]["significantly_better"]), w
        assert w["vs_baseline"]["significantly_better"] == (w["vs_baseline"]["low"] > 0), w
    assert summary["checks"][CHECK_BASELINE], table(summary)


@pytest.mark.browser
def test_status_page_renders_the_demos_figures_in_chromium(demo_workdir: Path, summary, tmp_path: Path):
    """/status on the demo's store, in headless Chromium: the deployment the demo ended with (champion v1,
    retrained challenger in shadow on stream 2), with the production accuracy the demo's summary printed for it."""
    from apps.config import DemoConfig
    from apps.demo import costs_path
    from pipeline.config import EvalConfig
    from pipeline.labeling.app import create_app
    from pipeline.labeling.status import build_status, deployments
    from pipeline.store import PredictionStore
    from tests.helpers.browser import chromium, log_in, serving

    import cv2
    import numpy as np

    store = PredictionStore(str(demo_workdir / "shadowcam.db"))
    try:
        cfg = EvalConfig(workdir=str(demo_workdir), costs=str(costs_path(DemoConfig())), price_per_device_hour=0.096)
        dep = deployments(store)[-1]
        doc = build_status(store, dep, cfg)
        _, champ = row(summary, "champion (stream 2)")
        inc_all = next(r for r in doc["rows"] if r["role"] == "incumbent" and r["kind"] == "model")
        assert inc_all["accuracy"]["value"] == pytest.approx(champ["prod_accuracy"], abs=1e-9), (inc_all, champ)
        shot = tmp_path / "status.png"
        from pipeline.labeling.auth import issue_token

        token = issue_token(store, "manager", "reviewer", rotate=True).token  # /status is for reviewers and admins
        with serving(create_app(store, eval_config=cfg)) as base, chromium() as browser:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            log_in(page, base, token)
            page.goto(base + "/status")
            text = page.inner_text("#status-table")
            assert inc_all["accuracy_text"] in text and inc_all["error_cost_text"] in text, text
            assert "EUR" in text and "$" in text  # cost of errors and serving cost
            assert page.locator("#decision .headline").inner_text().strip()
            page.screenshot(path=str(shot), full_page=True)
        img = cv2.imread(str(shot))
        assert img is not None and img.shape[1] == 1400 and len(np.unique(img.reshape(-1, 3), axis=0)) > 50
    finally:
        store.close()
