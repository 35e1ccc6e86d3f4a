"""Plots, the self-contained HTML report and the terminal summary, from real evaluation results."""

from __future__ import annotations

import base64
import json
import re

import pytest

from pipeline.evaluation import report
from pipeline.evaluation.evaluator import EvalConfig, Evaluator, EvaluationResult
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
    # a report rebuilt from the saved JSON alone renders the same tables
    again = EvaluationResult(**doc["overall"])
    assert "Per-class recall" in report.render_html([EvaluationResult(**w) for w in doc["windows"]], again)


def test_html_is_self_contained_and_shows_every_figure(evaluated, tmp_path):
    wins, overall = evaluated
    paths = report.make_plots(wins, overall, tmp_path)
    html = report.render_html(wins, overall, paths)
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == len(paths) == 5
    assert all(base64.b64decode(b)[:8] == PNG_MAGIC for b in imgs)
    assert 'src="http' not in html and "<script" not in html and "<link" not in html
    d = overall.data
    assert f"Decision: {d['decision']['action'].replace('_', ' ')}" in html
    assert report.fmt_est(d["models"]["incumbent"]["accuracy"]) in html
    assert report.fmt_est(d["models"]["shadow"]["gap"], signed=True) in html
    for cls in overall.meta["classes"]:
        assert f">{cls}<" in html
    for cam in ("camA", "camB"):
        assert cam in html
    assert "McNemar exact p-value" in html and str(d["paired"]["n01"]) in html
    assert "camA: brightness" in html  # drift table
    assert "Windows" in html and html.count("<tr>") > 30


def test_html_escapes_untrusted_text(evaluated):
    _, overall = evaluated
    evil = EvaluationResult(data=json.loads(json.dumps(overall.data)), meta=json.loads(json.dumps(overall.meta)))
    evil.meta["models"]["incumbent"] = "<script>alert(1)</script>"
    evil.meta["notes"] = ["<b>note</b>"]
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
    assert report.fmt_est(overall.data["models"]["incumbent"]["accuracy"]) in lines[header + 2]
    assert "DECISION:" in text and "McNemar p=" in text
    assert "drift (" in text and "camA: brightness" in text
    assert "4 windows:" in text


def test_plots_cope_with_a_single_window_without_shadow(tmp_path):
    store = build_store(str(tmp_path / "s.db"), StoreSpec())
    # drop the shadow: evaluate only the incumbent by removing its predictions
    import sqlalchemy as sa

    from pipeline.store import predictions

    with store.engine.begin() as conn:
        conn.execute(sa.delete(predictions).where(predictions.c.role == "shadow"))
    res = Evaluator().evaluate(store)
    store.close()
    assert res.data["models"]["shadow"] is None and res.data["paired"] is None
    paths = report.write_report([res], res, tmp_path / "r")
    assert "gap_over_time" in paths and "html" in paths
    assert "vs no shadow" in paths["html"].read_text()
    assert not any(line.startswith("shadow ") for line in report.format_summary(res).splitlines())


@pytest.mark.parametrize(
    "est,signed,text",
    [
        ({"value": 0.834, "low": 0.79, "high": 0.871}, False, "83.4% [79.0, 87.1]"),
        ({"value": 0.05, "low": -0.01, "high": 0.11}, True, "+5.0% [-1.0, +11.0]"),
        ({"value": None}, False, "–"),
        (None, False, "–"),
    ],
)
def test_fmt_est(est, signed, text):
    assert report.fmt_est(est, signed=signed) == text
