"""The evaluator on a store with known contents (tests/helpers/evaluation_data.py): exact figures, windows,
drift, cards, MLflow logging and the ``shadowcam evaluate`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

from pipeline import tracking
from pipeline.config import ReferenceDuration, ReferenceRange
from pipeline.evaluation import report
from pipeline.evaluation.evaluator import EvalConfig, Evaluator, parse_duration, parse_reference
from pipeline.store import PROBS_MAX_ABS_ERROR
from pipeline.tracking import flat_metrics, metric_key_part
from pipeline.types import ConfigError, ModelCardError, StoreError
from tests.helpers.evaluation_data import CLASSES, T0, StoreSpec, build_store, expected, labels_for, write_model

INC_ACC, INC_N = 0.95, 1000
SH_ACC, SH_N = 0.93, 500


@pytest.fixture
def models(tmp_path):
    inc = write_model(tmp_path / "inc.onnx", "inc", "1", INC_ACC, INC_N, atc_threshold=0.75)
    sh = write_model(tmp_path / "sh.onnx", "sh", "2", SH_ACC, SH_N, atc_threshold=None)
    return inc, sh


def _store(tmp_path, models, **kw):
    spec = StoreSpec(incumbent_uri=str(models[0]), shadow_uri=str(models[1]), **kw)
    return build_store(str(tmp_path / "shadowcam.db"), spec), spec


def _ok(rows, role):
    return [getattr(r, role) for r in rows if getattr(r, role) is not None]


def test_uniform_sample_exact_figures(tmp_path, models):
    store, spec = _store(tmp_path, models)
    # the classical figures, exactly (the model-assisted ones are tested in test_evaluator_model_assisted.py)
    res = Evaluator(EvalConfig(estimator="classical")).evaluate(store)
    exp = expected(spec)
    rows = exp["rows"]

    # counts: frames, predictions, degraded, coverage, labels, exclusions
    c = res.counts
    assert c.frames == 200 and c.cameras == 2
    assert c.predictions == {"incumbent": 200, "shadow": 180}
    assert c.degraded == {"incumbent": 2, "shadow": 0}
    assert c.shadow_coverage == pytest.approx(0.9)
    assert c.excluded.to_dict() == {"unsure": 1, "tie": 1, "unknown_class": 0, "total": 2} == {**exp["excluded"], "unknown_class": 0, "total": 2}
    assert c.frames_with_truth == len(rows)
    assert c.labels_without_sample == 0

    # accuracy = k/n with the Wilson interval of statsmodels; degraded predictions left out
    for role, acc_off, n_off in (("inc_ok", INC_ACC, INC_N), ("sh_ok", SH_ACC, SH_N)):
        name = "incumbent" if role == "inc_ok" else "shadow"
        ok = _ok(rows, role)
        k, n = sum(ok), len(ok)
        acc = res.models[name].accuracy
        assert acc.method == "wilson"
        assert (acc.n, res.models[name].n_correct) == (n, k)
        assert acc.value == pytest.approx(k / n)
        lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
        assert (acc.low, acc.high) == (pytest.approx(lo), pytest.approx(hi))
        gap = res.models[name].gap
        assert gap.value == pytest.approx(acc_off - k / n)
        assert gap.low < gap.value < gap.high
        # the gap's interval is wider than production's alone: both sample sizes count
        assert gap.high - gap.low > hi - lo
    assert res.models["incumbent"].accuracy.n == len(rows) - 2  # frames 8 and 16 are degraded

    # per camera
    for cam in ("camA", "camB"):
        ok = [r.inc_ok for r in rows if r.camera == cam and r.inc_ok is not None]
        e = res.models["incumbent"].per_camera[cam]
        assert (e.n, e.value) == (len(ok), pytest.approx(sum(ok) / len(ok)))

    # per-class recall and the confusion matrix agree with the rows
    inc = res.models["incumbent"]
    m = np.array(inc.confusion.matrix)
    assert m.sum() == inc.accuracy.n and np.trace(m) == inc.n_correct
    for j, cls in enumerate(CLASSES):
        ok = [r.inc_ok for r in rows if r.truth == cls and r.inc_ok is not None]
        assert inc.per_class_recall[cls].value == pytest.approx(sum(ok) / len(ok))
        assert m[j].sum() == len(ok)

    # paired: frames labelled with both usable predictions
    pairs = [(r.inc_ok, r.sh_ok) for r in rows if r.inc_ok is not None and r.sh_ok is not None]
    n01 = sum((not a) and b for a, b in pairs)
    n10 = sum(a and not b for a, b in pairs)
    p = res.paired
    assert (p.n, p.n01, p.n10) == (len(pairs), n01, n10)
    assert p.p_mcnemar == pytest.approx(mcnemar([[0, n01], [n10, 0]], exact=True).pvalue)
    assert p.diff.value == pytest.approx((n01 - n10) / len(pairs))
    assert res.decision.action in ("promote", "keep", "need_more_labels")

    # label-free estimates: ATC from the incumbent's card (conf 0.9 iff right), mean confidence for the shadow
    usable = [i for i in range(200) if i not in spec.degraded]
    assert inc.estimated_accuracy.value == pytest.approx(np.mean([i % 5 != 0 for i in usable]))
    assert inc.estimated_accuracy.method.startswith("ATC")
    sh_conf = [0.9 if i % 7 else 0.6 for i in range(200) if i % 10 != 9]
    # the store keeps probabilities as float16 (pipeline.store.encode_probs): within PROBS_MAX_ABS_ERROR of the written ones
    assert res.models["shadow"].estimated_accuracy.value == pytest.approx(np.mean(sh_conf), abs=PROBS_MAX_ABS_ERROR)
    assert any("mean confidence" in n for n in res.meta.notes)

    # annotator agreement: frames 0,20,...,180 and 24 carry two labels; 40 (tie) and 24 (unsure) disagree
    ag = res.agreement
    assert ag.n == 11 and ag.agreement == pytest.approx(9 / 11)

    # calibration bins hold every labelled usable frame
    assert sum(b.n for b in inc.calibration.bins) == inc.accuracy.n

    # meta and JSON
    assert res.meta.models == {"incumbent": "inc:1", "shadow": "sh:2"}
    assert res.meta.alpha == 0.05 and res.meta.runs == ("run1",)
    back = json.loads(res.to_json())
    assert back["data"]["counts"]["frames"] == 200
    store.close()


def test_weighted_sample_uses_ipw_and_imported_labels_weight_one(tmp_path, models):
    pi = lambda i: 0.5 if i % 2 == 0 else 0.1  # noqa: E731
    store, spec = _store(tmp_path, models, pi=pi, extra_label=True)
    res = Evaluator().evaluate(store)
    rows = expected(spec)["rows"]
    use = [r for r in rows if r.inc_ok is not None]
    w = np.array([1 / r.pi for r in use])
    y = np.array([r.inc_ok for r in use], float)
    acc = res.models["incumbent"].accuracy
    assert acc.method.startswith("hajek")
    assert acc.value == pytest.approx(float((w * y).sum() / w.sum()))
    assert acc.n == len(use) and acc.n_eff < len(use)
    assert res.counts.labels_without_sample == 1
    assert any("no sample row" in n for n in res.meta.notes)
    store.close()


def test_windows_split_frames_and_match_plain_counts(tmp_path, models):
    store, spec = _store(tmp_path, models)
    ev = Evaluator(EvalConfig())
    wins = ev.evaluate_windows(store, 50)
    assert [w.meta.window.index for w in wins] == [0, 1, 2, 3]
    assert [w.counts.frames for w in wins] == [50, 50, 50, 50]
    for k, w in enumerate(wins):
        assert w.meta.window.start == pytest.approx(T0 + 50 * k)
        ok = _ok(expected(spec, 50 * k, 50 * k + 50)["rows"], "inc_ok")
        assert w.models["incumbent"].accuracy.value == pytest.approx(sum(ok) / len(ok))
    assert sum(w.counts.labels for w in wins) == ev.evaluate(store).counts.labels
    # cumulative: the last window is the whole store
    cum = Evaluator(EvalConfig(cumulative=True)).evaluate_windows(store, "50s")
    assert [w.counts.frames for w in cum] == [50, 100, 150, 200]
    # evaluate(window=...) picks a time range, or the last N seconds
    part = ev.evaluate(store, window=(T0 + 50, T0 + 100))
    assert part.counts.frames == 50
    last = ev.evaluate(store, window=30.0)
    assert last.counts.frames == 30
    store.close()


def test_drift_detected_after_a_shift_and_not_without(tmp_path, models):
    # the shift starts right after the reference period (frames 0-49): the whole current period is shifted
    store, _ = _store(tmp_path, models, shift_after=50)
    res = Evaluator(EvalConfig(reference=0.25)).evaluate(store)
    m = flat_metrics(res)
    assert m["drift/softmax_p/incumbent"] < 0.01
    assert m["drift/image/camA/brightness"] < 0.01
    assert m["drift/image/camB/brightness"] > 0.05
    assert m["drift/softmax_p/shadow"] > 0.05
    assert res.drift.reference_frames == 50
    assert res.drift.image["camA"].worst == "brightness"
    store.close()

    # a shift at frame 100 shows in the windows after it, not in the one before
    late, _ = _store(tmp_path / "late", models, shift_after=100)
    wins = Evaluator(EvalConfig(reference=0.25)).evaluate_windows(late, 50)
    late.close()
    camA = [flat_metrics(w).get("drift/image/camA/brightness") for w in wins]
    assert camA[0] is None and camA[1] > 0.05 and camA[2] < 0.01 and camA[3] < 0.01

    steady, _ = _store(tmp_path / "steady", models)
    res = Evaluator(EvalConfig(reference=ReferenceDuration(duration_s=50.0))).evaluate(steady)
    m = flat_metrics(res)
    drift_ps = [v for k, v in m.items() if k.startswith("drift/")]
    assert drift_ps and min(drift_ps) > 0.01
    # windows inside the reference period get no drift figures
    wins = Evaluator(EvalConfig(reference=ReferenceDuration(duration_s=50.0))).evaluate_windows(steady, 50)
    assert wins[0].drift.skipped and not any(k.startswith("drift/") for k in flat_metrics(wins[0]))
    steady.close()


def test_missing_card_means_no_gap_with_a_note(tmp_path, models):
    spec = StoreSpec(incumbent_uri=str(tmp_path / "gone.onnx"), shadow_uri=None)
    store = build_store(str(tmp_path / "s.db"), spec)
    res = Evaluator().evaluate(store)
    assert res.models["incumbent"].gap is None
    assert res.models["incumbent"].accuracy.value is not None
    notes = " ".join(res.meta.notes)
    assert "gone.onnx" in notes and "gap not computed" in notes
    assert "shadow: no model URI" in notes
    # an explicit card fills the gap in
    res = Evaluator(EvalConfig(incumbent_card=str(models[0]), shadow_card=str(models[1]))).evaluate(store)
    assert res.models["incumbent"].gap.value is not None
    assert res.meta.cards["shadow"].test_accuracy == SH_ACC
    # a named card that does not exist is an error
    with pytest.raises(ModelCardError, match="nope.onnx"):
        Evaluator(EvalConfig(incumbent_card=str(tmp_path / "nope.onnx"))).evaluate(store)
    store.close()


def test_card_found_through_the_file_the_runner_loaded(tmp_path, models):
    """The runner records the local file it loaded (``_resolved``); that wins over an unresolvable URI."""
    spec = StoreSpec(incumbent_uri="models:/nowhere@champion", resolved={"incumbent": {"model": "inc:1", "path": str(models[0])}})
    store = build_store(str(tmp_path / "s.db"), spec)
    res = Evaluator(EvalConfig(workdir=str(tmp_path))).evaluate(store)
    store.close()
    assert res.meta.cards["incumbent"].path == str(models[0])
    assert res.models["incumbent"].gap.value is not None


def test_card_of_another_version_is_not_used(tmp_path):
    inc = write_model(tmp_path / "inc7.onnx", "inc", "7", 0.99, 100)
    store = build_store(str(tmp_path / "s.db"), StoreSpec(incumbent_uri=str(inc)))
    res = Evaluator().evaluate(store)
    assert res.models["incumbent"].gap is None
    assert any("inc:7" in n and "inc:1" in n for n in res.meta.notes)
    store.close()


@pytest.mark.parametrize(
    "text,value",
    [("300s", 300.0), ("10m", 600.0), ("1.5h", 5400.0), ("2d", 172800.0), ("45", 45.0), (12, 12.0), ("0s", None), ("ten minutes", None), ("-5m", None)],
)
def test_parse_duration(text, value):
    if value is None:
        with pytest.raises(ConfigError):
            parse_duration(text)
    else:
        assert parse_duration(text) == value


def test_parse_reference_and_config_errors():
    assert parse_reference("0.2") == 0.2
    assert parse_reference("30m") == ReferenceDuration(duration_s=1800.0)
    with pytest.raises(ConfigError, match="fraction"):
        parse_reference("2")
    with pytest.raises(ConfigError, match="alpha"):
        EvalConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="reference"):
        EvalConfig(reference=("range", 10, 5))
    with pytest.raises(ConfigError, match="reference"):
        EvalConfig(reference={"start": 10, "end": 5})


@pytest.mark.parametrize("given,typed,recorded", [
    (0.3, 0.3, 0.3),
    ("0.3", 0.3, 0.3),
    ("10m", ReferenceDuration(duration_s=600.0), {"duration_s": 600.0}),
    ({"duration_s": 60}, ReferenceDuration(duration_s=60.0), {"duration_s": 60.0}),
    ({"start": 1.0, "end": 2.0}, ReferenceRange(start=1.0, end=2.0), {"start": 1.0, "end": 2.0}),
    (("duration", 50.0), ReferenceDuration(duration_s=50.0), {"duration_s": 50.0}),  # the older tagged tuples
    (("range", 1, 2), ReferenceRange(start=1.0, end=2.0), {"start": 1.0, "end": 2.0}),
    (1.0, None, None), (0.0, None, None), ({"duration_s": 0}, None, None), ({"start": 1}, None, None), (("week", 1), None, None),
])
def test_eval_config_reference_forms(given, typed, recorded):
    if typed is None:
        with pytest.raises(ConfigError, match="reference|duration_s|start|end"):
            EvalConfig(reference=given)
        return
    cfg = EvalConfig(reference=given)
    assert cfg.reference == typed
    assert cfg.model_dump(mode="json")["reference"] == recorded


def test_eval_config_defaults_are_declared_once_and_recorded_with_the_same_keys():
    """The CLI's option defaults come from the model; meta.config keeps the keys of the former dataclass."""
    import argparse

    from pipeline.commands import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args([])
    assert (args.alpha, args.min_effect, args.reference) == (EvalConfig.default("alpha"), EvalConfig.default("min_effect"), "0.2")
    former = ["alpha", "reference", "min_effect", "power", "cumulative", "incumbent_card", "shadow_card", "cache_dir", "workdir",
              "run_ids", "calibration_bins"]
    keys = list(EvalConfig().model_dump(mode="json"))
    assert keys[:len(former)] == former  # users' scripts read these; new settings only add keys after them
    assert keys[len(former):] == ["drift_baseline", "drift_min_effect", "delta", "pi_floor", "estimator", "proxy_folds", "proxy_min_labels",
                                  "costs", "decide_on", "baselines", "price_per_device_hour"]


@pytest.mark.parametrize("cam,part", [("camA", "camA"), ("rtsp://10.0.0.5:554/dock 1", "rtsp___10.0.0.5_554_dock 1"), ("../x", "_x"), ("", "_")])
def test_metric_key_part_is_valid_for_mlflow(cam, part):
    from mlflow.utils.validation import _validate_metric_name

    assert metric_key_part(cam) == part
    _validate_metric_name(f"drift/image/{metric_key_part(cam)}/brightness")


def test_store_evaluation_rows(tmp_path):
    """The store query the evaluator reads: frames in time order with their image statistics, and the
    predictions, samples and labels of those frames only."""
    spec = StoreSpec(n=40)
    store = build_store(str(tmp_path / "s.db"), spec)
    frames, preds, samples, labels = store.evaluation_rows(["run1"], ("brightness", "noise"))
    assert [f[0] for f in frames] == [f"run1:{'camA' if i % 2 == 0 else 'camB'}:{i}" for i in range(40)]
    assert [f[2] for f in frames] == [T0 + i for i in range(40)]
    assert frames[1][1:] == ("camB", T0 + 1, 101.0, pytest.approx(2.1))
    assert len(preds) == 40 + sum(i % 10 != 9 for i in range(40))
    fid, role, name, version, probs, label, degraded = preds[0]
    assert (fid, role, name, version, label) == ("run1:camA:0", "incumbent", "inc", "1", "pallet")  # frame 0: incumbent wrong
    assert probs.dtype == np.float32 and probs.shape == (3,) and degraded is None
    assert [p[6] for p in preds if p[1] == "incumbent" and p[0].endswith((":8", ":16"))] == ["stale", "stale"]
    assert sorted(s[0] for s in samples) == sorted(f"run1:{'camA' if i % 2 == 0 else 'camB'}:{i}" for i in range(40) if i % 4 == 0 or i % 8 == 3)
    assert {s[1:] for s in samples} == {(0.25, "uniform")}
    assert len(labels) == sum(len(labels_for(i, spec)) for i in range(40))
    assert [lb[3] for lb in labels] == sorted(lb[3] for lb in labels)  # oldest first
    assert store.evaluation_rows(["other-run"]) == ([], [], [], [])
    with pytest.raises(StoreError, match="no column"):
        store.evaluation_rows(["run1"], ("colour",))
    store.close()


def test_unknown_run_id_is_a_clear_error(tmp_path):
    store = build_store(str(tmp_path / "s.db"))
    with pytest.raises(ConfigError, match="nope"):
        Evaluator(EvalConfig(run_ids=["nope"])).evaluate(store)
    store.close()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_mlflow_run_has_time_series_tags_and_artifacts(tmp_path, models, mlflow_uri, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    store, _ = _store(tmp_path, models, shift_after=100)
    ev = Evaluator(EvalConfig(reference=0.25))
    wins, overall = ev.evaluate_windows(store, 50), ev.evaluate(store)
    store.close()
    run_id = tracking.log_evaluation(wins, overall, experiment="eval-test", workdir=tmp_path, write_report=report.write_report)
    client = MlflowClient(mlflow_uri)
    run = client.get_run(run_id)
    assert run.info.experiment_id == client.get_experiment_by_name("eval-test").experiment_id
    assert run.data.tags["incumbent_model"] == "inc:1" and run.data.tags["shadow_model"] == "sh:2"
    assert "window" in run.data.tags
    hist = client.get_metric_history(run_id, "prod_accuracy/incumbent")
    assert sorted(m.step for m in hist) == [0, 1, 2, 3]
    by_step = {m.step: m.value for m in hist}
    assert by_step[2] == pytest.approx(wins[2].models["incumbent"].accuracy.value)
    keys = set(run.data.metrics)
    for k in ("prod_accuracy/shadow_ci_low", "prod_accuracy/shadow_ci_high", "train_to_prod_gap/incumbent", "train_to_prod_gap/incumbent_ci_low",
              "estimated_accuracy/incumbent", "drift/softmax_p/incumbent", "drift/image/camA/brightness", "drift/class_dist_p", "labels",
              "shadow_coverage", "paired/mcnemar_p", "paired/diff", "overall/prod_accuracy/incumbent"):
        assert k in keys, k
    # drift appears only for windows after the reference period (frames 0-49): steps 1..3
    assert sorted(m.step for m in client.get_metric_history(run_id, "drift/softmax_p/incumbent")) == [1, 2, 3]
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "evaluation.json", "gap_over_time.png", "confusion_matrices.png", "reliability_diagram.png", "per_camera_accuracy.png", "eval_config.json"} <= arts
    path = client.download_artifacts(run_id, "evaluation.json", str(tmp_path / "dl"))
    doc = json.loads(open(path).read())
    assert doc["overall"]["data"]["counts"]["frames"] == 200 and len(doc["windows"]) == 4


def test_evaluate_cli_end_to_end(tmp_path, models, mlflow_uri, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    store, _ = _store(tmp_path, models, shift_after=100)
    store.close()
    out_json, out_html = tmp_path / "out" / "eval.json", tmp_path / "out" / "eval.html"
    rc = main([
        "evaluate", "--db", str(tmp_path / "shadowcam.db"), "--window", "50s", "--experiment", "cli-test", "--json", str(out_json),
        "--html", str(out_html), "--workdir", str(tmp_path), "--reference", "0.25", "--drift-p", "0.01",
    ])
    text = capsys.readouterr().out
    assert rc == 0
    assert "incumbent" in text and "shadow" in text and "DECISION" in text and "ALERT drift" in text
    doc = json.loads(out_json.read_text())
    assert doc["overall"]["data"]["counts"]["predictions"] == {"incumbent": 200, "shadow": 180}
    assert len(doc["windows"]) == 4 and any(a["kind"] == "drift" for a in doc["alerts"])
    html = out_html.read_text()
    assert "data:image/png;base64," in html and 'src="http' not in html and "<script src" not in html and "<link" not in html
    prom = (tmp_path / "metrics" / "evaluation.prom").read_text()
    assert 'shadowcam_eval_alert{kind="drift"} 1.0' in prom
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])
    assert len(runs) == 1 and runs[0].data.tags["alerts"] != "0"

    # --no-mlflow, --fail-on-alert and explicit cards
    rc = main(["evaluate", "--db", str(tmp_path / "shadowcam.db"), "--no-mlflow", "--reference", "0.25", "--fail-on-alert",
               "--incumbent-card", str(models[0]), "--workdir", str(tmp_path)])
    assert rc == 3
    assert len(client.search_runs([client.get_experiment_by_name("cli-test").experiment_id])) == 1
    # a store that is not there
    rc = main(["evaluate", "--db", str(tmp_path / "empty.db"), "--no-mlflow", "--workdir", str(tmp_path)])
    assert rc == 2 and "empty.db: prediction store not found" in capsys.readouterr().err
    assert not (tmp_path / "empty.db").exists()  # refused, not created (issue 15)


def test_registry_uri_resolves_to_the_version_that_made_the_predictions(tmp_path, mlflow_uri, monkeypatch):
    """The run config says models:/inc@champion; the alias has since moved to version 2, but the predictions
    were made by inc:1, so the gap uses version 1's card."""
    from pipeline import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    tracking.configure(tmp_path)
    v1 = write_model(tmp_path / "v1" / "model.onnx", "inc", "1", 0.95, 1000)
    v2 = write_model(tmp_path / "v2" / "model.onnx", "inc", "2", 0.50, 1000)
    assert tracking.register_onnx(v1, "inc", alias="champion", workdir=tmp_path) == "1"
    assert tracking.register_onnx(v2, "inc", alias="champion", workdir=tmp_path) == "2"
    store = build_store(str(tmp_path / "s.db"), StoreSpec(incumbent_uri="models:/inc@champion"))
    res = Evaluator(EvalConfig(workdir=str(tmp_path))).evaluate(store)
    store.close()
    assert res.meta.cards["incumbent"].test_accuracy == 0.95
    assert res.meta.cards["incumbent"].version == "1"
    assert (tmp_path / ".cache" / "models").is_dir()
    acc = res.models["incumbent"].accuracy.value
    assert res.models["incumbent"].gap.value == pytest.approx(0.95 - acc)


def test_model_assisted_accuracy_by_default_with_the_classical_kept_beside_it(tmp_path, models):
    store, spec = _store(tmp_path, models)
    res = Evaluator(EvalConfig(proxy_min_labels=40)).evaluate(store)  # this store has ~70 labelled frames per model
    classical = Evaluator(EvalConfig(estimator="classical")).evaluate(store)
    for role in ("incumbent", "shadow"):
        m, c = res.models[role], classical.models[role]
        assert m.accuracy.method.startswith("model-assisted (active PPI++")
        assert m.accuracy_classical == c.accuracy  # the same labels' classical figure, kept for comparison
        assert c.accuracy_classical is None and c.proxy is None
        assert m.proxy is not None and m.proxy.labels == m.accuracy.n == c.accuracy.n
        assert m.proxy.folds == EvalConfig().proxy_folds and len(m.proxy.lam) == 2
        assert m.accuracy.low <= m.accuracy.value <= m.accuracy.high and m.accuracy.n_eff > 0
        assert m.gap.value == pytest.approx(m.offline.test_accuracy - m.accuracy.value)
    assert res.meta.methods["accuracy"]["incumbent"] == res.models["incumbent"].accuracy.method
    # too few labels for a proxy (the default minimum is 100): the classical figure stands and a note says why
    few = Evaluator(EvalConfig()).evaluate(store)
    assert few.models["incumbent"].accuracy == classical.models["incumbent"].accuracy
    assert any("proxy_min_labels" in n for n in few.meta.notes)
