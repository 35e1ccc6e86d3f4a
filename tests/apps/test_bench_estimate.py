"""``shadowcam bench estimate`` without training: tiny ONNX models (calibrated here on a clean rendered set, as
training would) through the core loop, 2 shifts x 2 severities x a few images; the summary and the document on
results made up here; the command's dispatch, including that the throughput bench still gets what it got."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from apps import bench_estimate as be
from apps.config import BenchConfig
from apps.demo import offline_accuracy
from models.data import list_source
from models.synthetic import CLASS_NAMES, generate_dataset
from pipeline.cli import get_args_parser
from pipeline.cli import main as cli_main
from pipeline.evaluation.estimate import atc_estimate, fit_atc_threshold
from pipeline.evaluation.reference import build_reference
from pipeline.modelcard import write_card
from pipeline.runtime import OnnxClassifier
from pipeline.types import ConfigError
from tests.helpers.onnx_models import make_tiny_classifier

pytestmark = pytest.mark.timeout(300)

SHIFTS = ("night", "glare")
SEVERITIES = (1, 5)
N = 12


def _calibrate(path: Path, val_manifest: Path) -> Path:
    """Give a tiny model what training puts in the card: ATC threshold, validation accuracy, training reference."""
    clf = OnnxClassifier(path, warmup_runs=0)
    labels, probs, stats = be.score_set(val_manifest, {"incumbent": clf})
    p = probs["incumbent"]
    correct = p.argmax(1) == labels
    card = clf.card
    card.atc_threshold = fit_atc_threshold(p, correct)
    card.val_accuracy = float(correct.mean())
    card.training_reference = build_reference(p, stats["incumbent"], card.class_names).to_dict()
    model = onnx.load(str(path))
    write_card(model, card)
    onnx.save(model, str(path))
    return path


def _fit_mean_colour(manifest: Path, keep: slice, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights of the tiny model's graph (softmax of mean RGB in [0, 1] @ W + b), fitted by multinomial logistic
    regression on a rendered set: a weak but real classifier, so that truth and estimates are not degenerate."""
    listing = list_source(manifest)
    x = np.array([cv2.imread(str(s.path))[..., ::-1].reshape(-1, 3).mean(0) / 255 for s in listing.samples])[keep]
    y = np.array([CLASS_NAMES.index(s.label) for s in listing.samples])[keep]
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    w, b = np.zeros((3, len(CLASS_NAMES))), np.zeros(len(CLASS_NAMES))
    onehot = np.eye(len(CLASS_NAMES))[y]
    for _ in range(500):
        z = xs @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.5 * (xs.T @ (p - onehot) / len(y) + l2 * w)
        b -= 0.5 * (p - onehot).mean(0)
    return w / sd[:, None], b - (mu / sd) @ w


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("tiny")
    fit = generate_dataset(tmp / "fit", 120, seed=5, img_size=48, progress=False)
    val = generate_dataset(tmp / "val", 60, seed=7, img_size=48, progress=False)
    out = {}
    for role, keep, l2, size in (("incumbent", slice(None), 0.0, (32, 32)), ("shadow", slice(0, 60), 0.05, (24, 24))):
        w, b = _fit_mean_colour(fit, keep, l2)
        path = make_tiny_classifier(tmp / f"{role}.onnx", list(CLASS_NAMES), input_size=size, weights=w, bias=b)
        out[role] = _calibrate(path, val)
    return out


def _cfg(tmp: Path, **kw) -> be.EstimateBenchConfig:
    return be.EstimateBenchConfig(**{"workdir": tmp / "work", "out": tmp / "docs" / "label_free.md", "n": N, "shifts": SHIFTS,
                                     "severities": SEVERITIES, "labels": 4, "render_size": 48, "batch_size": 5, **kw})


@pytest.fixture(scope="module")
def loop(models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    cfg = _cfg(tmp)
    clfs = {r: OnnxClassifier(p, role=r, warmup_runs=0) for r, p in models.items()}
    infos, rows = be.run_conditions(cfg, clfs)
    return cfg, infos, rows


def test_core_loop_measures_every_condition_against_the_runtimes_truth(models, loop, tmp_path):
    cfg, infos, rows = loop
    assert [(r["shift"], r["severity"]) for r in rows] == [("clean", 0), ("night", 1), ("night", 5), ("glare", 1), ("glare", 5)]
    assert set(infos) == {"incumbent", "shadow"}
    for row in rows:
        assert row["n"] == N
        assert 0 <= row["disagreement"] <= 1
        # the truth is each model's accuracy on the set, as the demo's offline check measures it through the runtime
        manifest = generate_dataset(tmp_path / f"{row['shift']}{row['severity']}", N, seed=cfg.seed + 1, img_size=48,
                                    shifts=[] if row["shift"] == "clean" else [f"{row['shift']}:{row['severity']}"],
                                    progress=False)
        for role, m in row["models"].items():
            assert m["truth"] == pytest.approx(offline_accuracy(models[role], manifest)["accuracy"])
            assert set(m["estimates"]) == {e.name for e in be.ESTIMATORS}
            for name, v in m["estimates"].items():
                assert v is not None and 0 <= v <= 1, (row["shift"], role, name, v)
            assert 0 <= m["beyond_range"] <= 1
    assert not (cfg.workdir / "sets" / "night_1").exists()  # the rendered sets are removed once scored


def test_night_frames_lie_beyond_the_validation_range(loop):
    _, _, rows = loop
    by = {(r["shift"], r["severity"]): r for r in rows}
    assert by[("night", 5)]["models"]["incumbent"]["beyond_range"] > 0.9  # far darker than any validation image
    assert by[("night", 5)]["models"]["incumbent"]["beyond_range"] > by[("clean", 0)]["models"]["incumbent"]["beyond_range"]


def test_label_free_estimates_do_not_look_at_labels(models, loop):
    cfg, infos, _ = loop
    clfs = {r: OnnxClassifier(p, role=r, warmup_runs=0) for r, p in models.items()}
    manifest = be.render_condition(cfg.workdir, "night", 3, N, cfg.seed + 1, cfg.render_size)
    labels, probs, stats = be.score_set(manifest, clfs, cfg.batch_size)
    a = be.estimate_condition(labels, probs, stats, infos, 4, np.random.default_rng(0))
    own = probs["incumbent"].argmax(1)  # labels that make the incumbent always right
    b = be.estimate_condition(own, probs, stats, infos, 4, np.random.default_rng(0))
    assert b["models"]["incumbent"]["truth"] == 1.0 > a["models"]["incumbent"]["truth"]
    for role in ("incumbent", "shadow"):
        ea, eb = a["models"][role]["estimates"], b["models"][role]["estimates"]
        for name in be.LABEL_FREE:
            assert ea[name] == eb[name], name
        assert a["models"][role]["truth"] == pytest.approx(np.mean(probs[role].argmax(1) == labels))
        assert ea["atc"] == atc_estimate(probs[role], infos[role].threshold)
    # one model alone: the estimators that need the shadow are left out, the others are the same
    solo = be.estimate_condition(labels, {"incumbent": probs["incumbent"]}, stats, infos, 4, np.random.default_rng(0))
    m = solo["models"]["incumbent"]["estimates"]
    assert solo["disagreement"] is None and set(solo["models"]) == {"incumbent"}
    for e in be.ESTIMATORS:
        assert (m[e.name] is None) == e.needs_shadow
        if not e.needs_shadow:
            assert m[e.name] == a["models"]["incumbent"]["estimates"][e.name]


def test_a_model_without_calibration_is_a_clear_error(tmp_path):
    path = make_tiny_classifier(tmp_path / "raw.onnx", list(CLASS_NAMES), seed=0)
    with pytest.raises(ConfigError, match="atc_threshold, val_accuracy, training_reference"):
        be.model_info(OnnxClassifier(path, warmup_runs=0), "incumbent")


# --- summary and document on made-up results -------------------------------------------------------------------------
def _row(shift: str, severity: int, truth: float, errors: dict[str, float]) -> dict:
    est = {e.name: truth + errors.get(e.name, 0.2) for e in be.ESTIMATORS}
    return {"shift": shift, "severity": severity, "n": 100, "disagreement": 0.1,
            "models": {"incumbent": {"truth": truth, "beyond_range": 0.0, "estimates": est}}}


def _fake_results(rows: list[dict]) -> dict:
    return {
        "config": {"n": 100, "severities": [2, 4], "command": "shadowcam bench estimate --n 100"},
        "machine": {"date": "2024-01-01T00:00:00+00:00", "cpu": "Test CPU", "cores_usable": 2},
        "models": {"incumbent": {"model": "m:1", "arch": "tiny", "input_size": [32, 32], "val_accuracy": 0.9,
                                 "test_accuracy": 0.88, "atc_threshold": 0.5, "validation_share_beyond_range": 0.05,
                                 "trained_here_s": None}},
        "estimators": [{"name": e.name, "title": e.title, "how": e.how, "uses_labels": e.uses_labels} for e in be.ESTIMATORS],
        "shifts": {"night": "low light"},
        "rows": rows,
        "summary": be.summarize(rows),
        "seconds": {"training": {}, "conditions": 3.0, "total": 4.0},
    }


def test_summary_mean_absolute_errors_and_verdict():
    rows = [_row("clean", 0, 0.9, {"doc": 0.01}),
            _row("night", 2, 0.8, {"doc": -0.04, "atc": 0.1, "recalibrated": 0.0}),
            _row("night", 3, 0.7, {"doc": 0.06, "atc": 0.1, "recalibrated": 0.0}),
            _row("night", 4, 0.5, {"doc": -0.3, "atc": 0.3})]
    s = be.summarize(rows)
    doc = s["mae"]["doc"]["incumbent"]
    assert doc["clean"] == pytest.approx(0.01)
    assert doc["mild"] == pytest.approx(0.05)
    assert doc["severe"] == pytest.approx(0.3)
    assert doc["shifted"] == pytest.approx((0.04 + 0.06 + 0.3) / 3)
    assert doc["bias_shifted"] == pytest.approx((-0.04 + 0.06 - 0.3) / 3)
    assert s["mae"]["doc"]["pooled"]["mild"] == pytest.approx(0.05)
    # recalibrated is exact but uses labels: not a candidate
    assert s["best"] == "doc" and s["ranking"][:2] == ["doc", "atc"]
    assert s["met"] and s["verdict"] == "met"
    worse = be.summarize([_row("night", 1, 0.8, {"doc": 0.075, "atc": 0.1})])
    assert not worse["met"] and worse["verdict"] == "MISSED: 7.5 points"
    assert be.summarize([_row("night", 5, 0.5, {})])["verdict"].startswith("not measured")


def test_document_shows_every_estimator_the_errors_and_the_verdict():
    rows = [_row("clean", 0, 0.9, {"doc": 0.01}), _row("night", 2, 0.8, {"doc": -0.075, "atc": 0.1}),
            _row("night", 4, 0.5, {"doc": -0.3, "atc": 0.3})]
    text = be.render_markdown(_fake_results(rows))
    assert "generated by `shadowcam bench estimate`" in text
    assert "**MISSED: 7.5 points**" in text
    assert "best label-free estimator: **DoC**, MAE 7.5 points at severities <= 3, 30.0 at > 3" in text
    assert "```\nshadowcam bench estimate --n 100\n```" in text
    assert "Test CPU" in text
    for e in be.ESTIMATORS:
        assert e.title in text
    # the per-condition table: truth and each estimator's estimate in percent
    line = next(ln for ln in text.splitlines() if ln.startswith("| night:4 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    titles = [e.title for e in be.ESTIMATORS]
    assert cells[1] == "**50.0**"
    assert cells[2 + titles.index("DoC")] == "20.0" and cells[2 + titles.index("ATC")] == "80.0"
    # the estimators table: DoC's row, marked best, with its MAE on clean, <= 3, > 3
    line = next(ln for ln in text.splitlines() if ln.startswith("| DoC *"))
    assert [c.strip() for c in line.strip("|").split("|")][2:5] == ["1.0", "7.5", "30.0"]
    # every table row has as many cells as its header ("|a - b|" in a description is escaped)
    for block in text.split("\n\n"):
        rows = [ln for ln in block.splitlines() if ln.startswith("|")]
        if rows:
            widths = {len(re.split(r"(?<!\\)\|", ln.strip()[1:-1])) for ln in rows}
            assert len(widths) == 1, block


# --- the command -----------------------------------------------------------------------------------------------------
def test_cli_estimate_writes_the_document_and_the_json(models, tmp_path, capsys):
    out = tmp_path / "docs" / "lf.md"
    rc = cli_main(["bench", "estimate", "--model", str(models["incumbent"]), "--shadow", str(models["shadow"]),
                   "--n", "8", "--shifts", "night", "--severities", "2,4", "--labels", "3", "--render-size", "48",
                   "--out", str(out), "--workdir", str(tmp_path / "w"), "--no-progress"])
    assert rc == 0
    text = out.read_text()
    res = json.loads(out.with_suffix(".json").read_text())
    assert [(r["shift"], r["severity"]) for r in res["rows"]] == [("clean", 0), ("night", 2), ("night", 4)]
    assert res["summary"]["verdict"] in text
    assert re.search(r"^shadowcam bench estimate --out \S+ --workdir \S+ --model \S+ --shadow \S+ --n 8 --shifts night "
                     r"--severities 2,4 --labels 3 --render-size 48$", text, re.M)
    printed = capsys.readouterr().out
    assert "target MAE <= 5 points at severities <= 3" in printed and str(out) in printed


@pytest.mark.parametrize("argv, match", [
    (["bench", "estimate", "--frames", "10"], "--frames belongs to `shadowcam bench throughput`"),
    (["bench", "estimate", "--arch", "efficientnet_b0"], "--arch belongs to `shadowcam bench throughput`"),
    (["bench", "--n", "10"], "--n belongs to `shadowcam bench estimate`"),
    (["bench", "throughput", "--model", "m.onnx"], "--model belongs to `shadowcam bench estimate`"),
    (["bench", "estimate", "--shifts", "fog"], "shifts must be distinct names"),
    (["bench", "estimate", "--labels", "50", "--n", "20"], "labels .50. must not exceed n"),
])
def test_cli_refuses_options_of_the_other_bench_and_bad_values(argv, match, tmp_path, capsys):
    assert cli_main([*argv, "--workdir", str(tmp_path), "--out", str(tmp_path / "x.md"), "--no-progress"]) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not (tmp_path / "x.md").exists()


def test_bench_without_what_is_the_throughput_bench_as_before(monkeypatch):
    """``shadowcam bench [--quick]`` reaches apps.bench.run_bench with the config it always got."""
    import apps.bench

    seen = {}

    def fake(cfg, progress=True):
        seen["cfg"], seen["progress"] = cfg, progress
        return {"e2e": {"fps_both": 1.0}, "naive": {"fps": 1.0}, "raw": {"fps_both": 1.0},
                "ratios": {"naive_speedup": 1.0, "bound_share": 1.0, "p99_ratio": 1.0},
                "pass": {"naive_speedup": False, "bound_share": True, "p99_ratio": True}}

    monkeypatch.setattr(apps.bench, "run_bench", fake)
    assert get_args_parser().parse_args(["bench"]).what == "throughput"
    assert cli_main(["bench"]) == 0
    assert seen["cfg"] == BenchConfig(command="shadowcam bench") and seen["progress"] is True
    assert cli_main(["bench", "--quick", "--frames", "60", "--no-progress"]) == 0
    assert seen["cfg"] == BenchConfig.quick_config(frames=60, command="shadowcam bench --frames 60 --quick")
    assert seen["progress"] is False
    assert cli_main(["bench", "throughput", "--out", "o.md", "--workdir", "w"]) == 0
    assert seen["cfg"].out == Path("o.md") and seen["cfg"].workdir == Path("w")
    assert seen["cfg"].command == "shadowcam bench --out o.md --workdir w"
