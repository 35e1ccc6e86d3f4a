"""Plots, the self-contained HTML report and the terminal summary, from real evaluation results."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re

import pytest

from pipeline.evaluation import report
from pipeline.evaluation.evaluator import EvalConfig, Evaluator, EvaluationResult
from pipeline.evaluation.result import Estimate
from tests.helpers.evaluation_data import StoreSpec, build_store, write_model


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    inc = write_model(tmp / "inc.onnx", "inc", "1", 0.95, 1000, atc_threshold=0.75)
    sh = write_model(tmp / "sh.onnx", "sh", "2", 0.93, 500)
    store = build_store(str(tmp / "s.db"), StoreSpec(incumbent_uri=str(inc), shadow_uri=str(sh), shift_after=50))
    ev = Evaluator(EvalConfig(reference=0.25))
    wins, overall = ev.evaluate_windows(store, 50), ev.evaluate(store)
    store.close()
    return wins, overall


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_write_report_makes_every_plot_json_and_html(evaluated, tmp_path):
    wins, overall = evaluated
    paths = report.write_report(wins, overall, tmp_path / "r", max_gap=0.1)
    for name in ("gap_over_time", "confusion", "reliability", "per_camera", "drift"):
        assert paths[name].read_bytes()[:8] == PNG_MAGIC, name
    doc = json.loads(paths["json"].read_text())
    assert doc["overall"]["meta"]["models"] == {"incumbent": "inc:1", "shadow": "sh:2"}
    assert [w["meta"]["window"]["index"] for w in doc["windows"]] == [0, 1, 2, 3]
    # a report rebuilt from the saved JSON alone renders the same tables and summary
    again = EvaluationResult.from_dict(doc["overall"])
    windows = [EvaluationResult.from_dict(w) for w in doc["windows"]]
    assert again == overall and windows == list(wins)
    assert report.render_html(windows, again) == report.render_html(wins, overall)
    assert report.format_summary(again, windows) == report.format_summary(overall, wins)


def test_html_is_self_contained_and_shows_every_figure(evaluated, tmp_path):
    wins, overall = evaluated
    paths = report.make_plots(wins, overall, tmp_path)
    html = report.render_html(wins, overall, paths)
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == len(paths) == 5
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in imgs)
    assert 'src="http' not in html and "<script" not in html and "<link" not in html
    assert f"Decision: {overall.decision.action.replace('_', ' ')}" in html
    assert report.fmt_est(overall.models["incumbent"].accuracy) in html
    assert report.fmt_est(overall.models["shadow"].gap, signed=True) in html
    for cls in overall.meta.classes:
        assert f">{cls}<" in html
    for cam in ("camA", "camB"):
        assert cam in html
    assert "McNemar exact p-value" in html and str(overall.paired.n01) in html
    assert "camA: brightness" in html  # drift table
    assert "Windows" in html and html.count("<tr>") > 30


def test_html_escapes_untrusted_text(evaluated):
    _, overall = evaluated
    meta = dataclasses.replace(overall.meta, models={**overall.meta.models, "incumbent": "<script>alert(1)</script>"}, notes=("<b>note</b>",))
    evil = dataclasses.replace(overall, meta=meta)
    html = report.render_html([], evil)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html
    assert "&lt;b&gt;note&lt;/b&gt;" in html


def test_summary_table_lists_models_gap_decision_and_drift(evaluated):
    wins, overall = evaluated
    text = report.format_summary(overall, wins)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("role "))
    assert lines[header + 1].startswith("-----")
    assert lines[header + 2].startswith("incumbent") and "inc:1" in lines[header + 2]
    assert lines[header + 3].startswith("shadow") and "sh:2" in lines[header + 3]
    assert report.fmt_est(overall.models["incumbent"].accuracy) in lines[header + 2]
    assert "DECISION:" in text and "McNemar p=" in text
    assert "drift (" in text and "camA: brightness" in text
    assert "4 windows:" in text


def test_plots_cope_with_a_single_window_without_shadow(tmp_path):
    store = build_store(str(tmp_path / "s.db"), StoreSpec(shadow=False))  # only the incumbent has predictions
    res = Evaluator().evaluate(store)
    store.close()
    assert res.models["shadow"] is None and res.paired is None and res.roles == ["incumbent"]
    paths = report.write_report([res], res, tmp_path / "r")
    assert "gap_over_time" in paths and "html" in paths
    assert "vs no shadow" in paths["html"].read_text()
    assert not any(line.startswith("shadow ") for line in report.format_summary(res).splitlines())


def _est(value: float, low: float = math.nan, high: float = math.nan) -> Estimate:
    return Estimate(value, low, high, math.nan, 10, 10.0, "wilson")


@pytest.mark.parametrize(
    "est,signed,text",
    [
        (_est(0.834, 0.79, 0.871), False, "83.4% [79.0, 87.1]"),
        (_est(0.05, -0.01, 0.11), True, "+5.0% [-1.0, +11.0]"),
        (_est(0.5), False, "50.0%"),  # no interval
        (_est(math.nan, 0.0, 1.0), False, "–"),  # no value (a class without labelled frames)
        (None, False, "–"),
    ],
)
def test_fmt_est(est, signed, text):
    assert report.fmt_est(est, signed=signed) == text


def test_error_gallery_html_is_placed_under_its_heading(evaluated, tmp_path):
    wins, overall = evaluated
    fragment = '<figure class="gallery"><img src="gallery/a.png"><figcaption>box &rarr; pallet</figcaption></figure>'
    paths = report.write_report(wins, overall, tmp_path / "g", gallery_html=fragment)
    html = paths["html"].read_text()
    assert html.count("<h2>Error gallery</h2>") == 1
    assert html.index("<h2>Error gallery</h2>") < html.index(fragment) < html.index("<h2>Annotators</h2>")
    assert "Error gallery" not in report.render_html(wins, overall)  # no gallery given, no heading


def test_log_evaluation_passes_report_kwargs_to_write_report(evaluated, tmp_path):
    from mlflow import MlflowClient

    from pipeline import tracking

    wins, overall = evaluated
    run_id = tracking.log_evaluation(wins, overall, experiment="eval-gallery", workdir=tmp_path, write_report=report.write_report,
                                     report_kwargs={"gallery_html": "<p id='g'>the gallery</p>"})
    path = MlflowClient().download_artifacts(run_id, "report.html", str(tmp_path / "dl"))
    assert "<p id='g'>the gallery</p>" in open(path, encoding="utf-8").read()
