"""The typed evaluation result: its JSON keeps exactly the keys users' scripts read, it reads back from its own
JSON, and its drift accessor lists every test once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pipeline.config import ReferenceDuration
from pipeline.evaluation.evaluator import EvalConfig, Evaluator
from pipeline.evaluation.result import (
    ClassDistributionDrift,
    DriftFigures,
    DriftP,
    Estimate,
    EvaluationResult,
    ImageStat,
    ImageStatDrift,
    SoftmaxDrift,
)
from tests.helpers.evaluation_data import StoreSpec, build_store, write_model

KEY_PATHS = Path(__file__).with_name("result_key_paths.json")

# The one deliberate change since the paths were recorded: a drift reference given as a duration (or a range) is
# recorded as an object ({"duration_s": s} / {"start": ts, "end": ts}) instead of a tagged list (["duration", s]).
CHANGED = {
    "reference_duration_last_30s": {
        "meta.config.reference[]: float|str": "meta.config.reference.duration_s: float",
        "meta.reference.spec[]: float|str": "meta.reference.spec.duration_s: float",
    },
}


def key_paths(doc: object) -> list[str]:
    """``"a.b[].c: float|null"`` for every leaf of a JSON document (``[]`` = list element, ``{}``/``[]`` = empty)."""
    acc: dict[str, set[str]] = {}

    def walk(x: object, prefix: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{prefix}.{k}" if prefix else k)
            if not x:
                acc.setdefault(prefix, set()).add("{}")
        elif isinstance(x, list):
            for v in x:
                walk(v, prefix + "[]")
            if not x:
                acc.setdefault(prefix, set()).add("[]")
        else:
            t = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}[type(x)]
            acc.setdefault(prefix, set()).add(t)

    walk(doc, "")
    return sorted(f"{p}: {'|'.join(sorted(t))}" for p, t in acc.items())


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> dict[str, EvaluationResult]:
    """The results the committed key paths were recorded from (same stores, same configs)."""
    tmp = tmp_path_factory.mktemp("result")
    inc = write_model(tmp / "inc.onnx", "inc", "1", 0.95, 1000, atc_threshold=0.75)
    sh = write_model(tmp / "sh.onnx", "sh", "2", 0.93, 500)
    out: dict[str, EvaluationResult] = {}
    store = build_store(str(tmp / "a.db"), StoreSpec(incumbent_uri=str(inc), shadow_uri=str(sh), shift_after=50))
    ev = Evaluator(EvalConfig(reference=0.25))
    out["overall_shifted"] = ev.evaluate(store)
    wins = ev.evaluate_windows(store, 50)
    out["window_inside_reference"], out["window_after_reference"] = wins[0], wins[2]
    out["window_drift_skipped_few_frames"] = Evaluator(EvalConfig(reference=0.2, cumulative=True)).evaluate_windows(store, 50)[0]
    out["reference_duration_last_30s"] = Evaluator(EvalConfig(reference=ReferenceDuration(duration_s=50.0))).evaluate(store, window=30.0)
    store.close()
    spec = StoreSpec(incumbent_uri=str(inc), shadow_uri=str(sh), pi=lambda i: 0.5 if i % 2 == 0 else 0.1, extra_label=True)
    store = build_store(str(tmp / "b.db"), spec)
    out["weighted_imported_label"] = Evaluator().evaluate(store)
    store.close()
    store = build_store(str(tmp / "c.db"), StoreSpec(shadow=False))
    out["no_shadow_no_cards"] = Evaluator().evaluate(store)
    store.close()
    return out


# Keys added since the paths were recorded (anytime-valid decisions and intervals, drift against training, the
# label-free estimate's flags, the settings behind them). Users' scripts keep working: no recorded key is lost.
ADDED_PREFIXES = (
    "data.decision.", "data.drift.baseline", "data.drift.training", "meta.config.drift_baseline", "meta.config.drift_min_effect",
    "meta.config.delta", "meta.config.pi_floor", "meta.methods.drift_training", "meta.methods.decision",
    # issue 11: model-assisted estimates
    "meta.config.estimator", "meta.config.proxy_folds", "meta.config.proxy_min_labels",
    # issue 12: cost of errors, baselines, serving cost
    "data.baselines", "data.serving_cost", "meta.config.costs", "meta.config.decide_on", "meta.config.baselines",
    "meta.config.price_per_device_hour", "meta.methods.cost", "meta.methods.baselines",
)
ADDED_IN_MODELS = (".accuracy_cs", ".gap_cs", ".estimated_accuracy.contradicted_by_labels", ".estimated_accuracy.labelled_low",
                   ".estimated_accuracy.labelled_high", ".estimated_accuracy.unreliable", ".accuracy_classical", ".proxy",
                   ".cost", ".vs_baseline")


def _added(path: str) -> bool:
    key = path.split(":")[0]
    return key.startswith(ADDED_PREFIXES) or (key.startswith("data.models.") and any(a in key for a in ADDED_IN_MODELS))


def test_json_keys_are_the_ones_users_read(scenarios):
    recorded = json.loads(KEY_PATHS.read_text())["scenarios"]
    assert set(recorded) == set(scenarios)
    for name, result in scenarios.items():
        expected = {CHANGED.get(name, {}).get(p, p).split(":")[0] for p in recorded[name]}
        got = {p.split(":")[0]: p for p in key_paths(json.loads(result.to_json()))}
        lost = sorted(expected - set(got))
        assert not lost, (name, "keys users read are gone", lost)
        new = sorted(p for k, p in got.items() if k not in expected and not _added(p))
        assert not new, (name, "keys not declared in ADDED_PREFIXES", new)
        # the recorded keys keep their JSON types (a figure may now also be null where the old code had it null too)
        old_types = {CHANGED.get(name, {}).get(p, p).split(": ")[0]: set(CHANGED.get(name, {}).get(p, p).split(": ")[1].split("|"))
                     for p in recorded[name]}
        # (a key that was only ever null then may now hold its figure)
        changed = sorted(k for k, t in old_types.items()
                         if t != {"null"} and not set(got[k].split(": ")[1].split("|")) <= t | {"null"})
        assert not changed, (name, "keys whose JSON type changed", changed)


def test_the_scenarios_cover_the_optional_parts(scenarios):
    """Guards the test above: each optional part of the JSON is present in one scenario and absent in another."""
    paths = {name: "\n".join(key_paths(r.to_dict())) for name, r in scenarios.items()}
    for present, absent, path in [
        ("overall_shifted", "no_shadow_no_cards", "data.paired.diff.value"),
        ("weighted_imported_label", "overall_shifted", "data.models.incumbent.confusion.weighted_matrix[][]"),
        ("window_drift_skipped_few_frames", "overall_shifted", "data.drift.softmax.incumbent.skipped"),
        ("window_inside_reference", "overall_shifted", "data.drift.skipped"),
        ("overall_shifted", "window_drift_skipped_few_frames", "data.drift.image.camA.stats.brightness.smd"),
    ]:
        assert path in paths[present] and path not in paths[absent], path


def test_from_dict_reads_back_to_dict(scenarios):
    for name, result in scenarios.items():
        doc = json.loads(result.to_json())
        again = EvaluationResult.from_dict(doc)
        assert again.to_dict() == doc, name
        assert isinstance(again.models["incumbent"].accuracy, Estimate)
    # NaN figures are written as null and read back as NaN (a class without labelled frames)
    e = Estimate(math.nan, 0.0, 1.0, math.nan, 0, 0.0, "wilson")
    assert e.to_dict()["value"] is None and math.isnan(Estimate.from_dict(e.to_dict()).value)


@pytest.mark.parametrize("doc,match", [
    ({"data": {}}, "'data' and 'meta'"),
    ({"data": {"counts": {}}, "meta": {}}, "missing key"),
    ([], "'data' and 'meta'"),
])
def test_from_dict_names_what_is_wrong(doc, match):
    with pytest.raises(ValueError, match=match):
        EvaluationResult.from_dict(doc)


def test_typed_fields_read_like_the_json(scenarios):
    r = scenarios["overall_shifted"]
    d = r.to_dict()["data"]
    assert r.models["incumbent"].accuracy.value == d["models"]["incumbent"]["accuracy"]["value"]
    assert r.models["shadow"].gap.low == d["models"]["shadow"]["gap"]["low"]
    assert r.paired.diff.value == d["paired"]["diff"]["value"]
    assert r.roles == ["incumbent", "shadow"] and scenarios["no_shadow_no_cards"].roles == ["incumbent"]


def _softmax(p: float | None) -> SoftmaxDrift:
    if p is None:
        return SoftmaxDrift(drift=False, p_min_corrected=1.0, n_ref=5, n_cur=5, method="ks", skipped="too few frames")
    return SoftmaxDrift(drift=p < 0.05, p_min_corrected=p, n_ref=50, n_cur=50, method="ks", p_values=(p / 3,) * 3)


def _image(ps: dict[str, float] | None) -> ImageStatDrift:
    if ps is None:
        return ImageStatDrift(drift=False, p_min_corrected=1.0, n_ref=5, n_cur=5, method="ks", skipped="too few frames")
    stats = {k: ImageStat(0.1, p, 0.0, 0.5, 1.0, 1.0, 50.0, 50.0) for k, p in ps.items()}
    return ImageStatDrift(drift=False, p_min_corrected=min(1.0, min(ps.values()) * len(ps)), n_ref=50, n_cur=50, method="ks", stats=stats)


def test_drift_p_values_list_every_test_once_with_its_corrected_p():
    cd = ClassDistributionDrift(categories=("a", "(other)"), ref_counts=(30, 0), cur_counts=(30, 0), n_ref=30, n_cur=30, alpha=0.05,
                                method="chi2", drift=False, p_min_corrected=0.2, p_value=0.2)
    drift = DriftFigures(
        softmax={"incumbent": _softmax(0.001), "shadow": _softmax(None)},
        class_distribution=cd,
        image={"camA": _image({"brightness": 0.01, "noise": 0.4}), "camB": _image(None)},
        reference_frames=50, current_frames=50,
    )
    assert list(drift.p_values()) == [
        DriftP("softmax", "incumbent", None, 0.001),
        DriftP("class_distribution", None, None, 0.2),
        DriftP("image", "camA", "brightness", 0.02),  # Bonferroni over the camera's two statistics
        DriftP("image", "camA", "noise", 0.8),
    ]
    assert [t.name for t in drift.p_values(include_skipped=True)] == [
        "softmax/incumbent", "softmax/shadow", "class_distribution", "image/camA/brightness", "image/camA/noise",
    ]
    assert [t.p for t in drift.p_values(include_skipped=True)][1] is None
    assert drift.skipped_tests() == ["softmax/shadow", "image/camB"]
    # a skipped test has fewer keys in the JSON; a window inside the reference period has no tests at all
    assert set(drift.to_dict()["softmax"]["shadow"]) == {"drift", "p_min_corrected", "skipped", "n_ref", "n_cur", "method"}
    empty = DriftFigures({}, None, {}, 50, 0, skipped="no frames after the reference period in this window")
    assert list(empty.p_values(include_skipped=True)) == [] and empty.to_dict()["skipped"]


# MLflow metric keys of the shifted store's overall result, recorded before the typed result
# (notebooks/compare_experiments.ipynb reads them as overall/<key>)
METRIC_KEYS = [
    "annotator_agreement", "annotator_kappa", "calibration_ece/incumbent", "calibration_ece/shadow", "degraded/incumbent",
    "degraded/shadow", "drift/class_dist_p", "drift/image/camA/brightness", "drift/image/camA/contrast", "drift/image/camA/noise",
    "drift/image/camA/sharpness", "drift/image/camB/brightness", "drift/image/camB/contrast", "drift/image/camB/noise",
    "drift/image/camB/sharpness", "drift/softmax_p/incumbent", "drift/softmax_p/shadow", "estimated_accuracy/incumbent",
    "estimated_accuracy/shadow", "excluded_labels", "frames", "labels", "labels_used", "paired/diff", "paired/mcnemar_p", "paired/n",
    "paired/p_value", "prod_accuracy/incumbent", "prod_accuracy/incumbent_ci_high", "prod_accuracy/incumbent_ci_low",
    "prod_accuracy/shadow", "prod_accuracy/shadow_ci_high", "prod_accuracy/shadow_ci_low", "prod_accuracy_camera/camA/incumbent",
    "prod_accuracy_camera/camA/shadow", "prod_accuracy_camera/camB/incumbent", "prod_accuracy_camera/camB/shadow",
    "prod_labels/incumbent", "prod_labels/shadow", "shadow_coverage", "train_to_prod_gap/incumbent",
    "train_to_prod_gap/incumbent_ci_high", "train_to_prod_gap/incumbent_ci_low", "train_to_prod_gap/shadow",
    "train_to_prod_gap/shadow_ci_high", "train_to_prod_gap/shadow_ci_low",
]


NEW_METRIC_PREFIXES = ("estimated_accuracy/incumbent_", "estimated_accuracy/shadow_", "prod_accuracy_cs/", "train_to_prod_gap_cs/",
                       "decision/", "drift/training",
                       # issue 12: cost of errors, baselines, serving cost
                       "cost_per_1k/", "baseline_accuracy/", "baseline_cost_per_1k/", "baseline_guard/", "serving_")


def test_mlflow_metric_keys_are_unchanged(scenarios):
    from pipeline.tracking import flat_metrics

    r = scenarios["overall_shifted"]
    m = flat_metrics(r)
    # every key the notebook and users' dashboards read is still there; new figures add keys only
    assert set(METRIC_KEYS) <= set(m), sorted(set(METRIC_KEYS) - set(m))
    added = sorted(set(m) - set(METRIC_KEYS))
    assert all(k.startswith(NEW_METRIC_PREFIXES) for k in added), added
    assert m["prod_accuracy/incumbent"] == r.models["incumbent"].accuracy.value
    assert m["drift/image/camA/brightness"] == r.drift.image["camA"].corrected_p_values()["brightness"]
    assert m["excluded_labels"] == r.counts.excluded.total and m["paired/n"] == r.paired.n
    # a window inside the reference period has the same keys but the drift ones
    inside = flat_metrics(scenarios["window_inside_reference"])
    assert {k for k in METRIC_KEYS if not k.startswith("drift/")} <= set(inside)
    assert not [k for k in inside if k.startswith("drift/")]
