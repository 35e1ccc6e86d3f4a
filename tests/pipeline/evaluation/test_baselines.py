"""The baseline guard: the majority class, the frame-difference rule on rendered belt images, a user rule, and the
alert that fires exactly when a model is not significantly better than the best baseline."""

from __future__ import annotations

import sys
import textwrap

import cv2
import numpy as np
import pytest

from pipeline.config import AlertConfig, BaselineConfig, CostConfig
from pipeline.evaluation import baselines
from pipeline.evaluation.alerts import check_alerts
from pipeline.evaluation.costs import cost_matrix
from pipeline.evaluation.evaluator import EvalConfig, Evaluator
from pipeline.evaluation.report import format_summary, render_html
from pipeline.tracking import flat_metrics
from pipeline.types import ConfigError
from tests.pipeline.evaluation import conveyor_store
from tests.pipeline.evaluation.conveyor_store import belt_image

CLASSES = ["empty_belt", "parcel_ok", "parcel_damaged"]


# --------------------------------------------------------------------------------------------------
# the pieces
# --------------------------------------------------------------------------------------------------
def test_majority_class_from_the_card_counts_else_the_weighted_labels():
    truth = np.array([0, 0, 0, 1, 1, 2])
    c = baselines.majority_class(CLASSES, {"empty_belt": 10, "parcel_ok": 500, "parcel_damaged": 40}, truth, exclude="empty_belt")
    assert (c.index, c.busy, c.note) == (1, 1, None) and "training set" in c.source
    c = baselines.majority_class(CLASSES, None, truth, exclude="empty_belt")
    assert (c.index, c.busy) == (0, 1) and "no training class counts" in c.note
    # inverse-probability weights: the rarely sampled parcel_damaged frame stands for many frames
    c = baselines.majority_class(CLASSES, None, truth, np.array([1, 1, 1, 1, 1, 0.1]))
    assert c.index == 2


def test_otsu_threshold_splits_two_groups():
    rng = np.random.default_rng(0)
    v = np.concatenate([rng.normal(3, 0.5, 80), rng.normal(20, 3, 40)])
    t = baselines.otsu_threshold(v)
    assert 5 < t < 14
    assert baselines.otsu_threshold(np.full(5, 2.0)) == 2.0


def test_frame_difference_rule_scores_rendered_empty_belts_and_parcels():
    rng = np.random.default_rng(1)
    kinds = ["empty_belt"] * 40 + ["parcel_ok"] * 50 + ["label_missing"] * 10 + ["foreign_object"] * 10
    imgs = {cam: [] for cam in ("c0", "c1")}
    test = []
    for k, kind in enumerate(kinds * 2):
        cam = "c0" if k < len(kinds) else "c1"
        img = belt_image(kind, rng, camera_seed=0 if cam == "c0" else 1).astype(np.float32)
        small = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)
        imgs[cam].append(small)
        test.append((small, cam, kind))
    rule = baselines.FrameDifferenceRule(empty=0, busy=1).fit(imgs)
    pred = [rule.predict(im, cam) for im, cam, _ in test]
    empty = [p for p, (_, _, k) in zip(pred, test) if k == "empty_belt"]
    parcels = [p for p, (_, _, k) in zip(pred, test) if k in ("parcel_ok", "label_missing")]
    assert np.mean(np.array(empty) == 0) == 1.0
    assert np.mean(np.array(parcels) == 1) == 1.0
    # (a small object changes the frame far less than a parcel: the two-group threshold may put it with the empty
    # belts; either way the rule, which knows only "empty" and "parcel", gets it wrong)
    assert rule.predict(test[0][0], "unknown camera") == -1


def test_user_rule_errors_name_the_rule_and_the_value(tmp_path, monkeypatch):
    (tmp_path / "my_rules.py").write_text(textwrap.dedent("""
        def bright(image, camera):
            return "parcel_ok" if image.mean() > 100 else "empty_belt"
        def typo(image, camera):
            return "parcel_okk"
        def broken(image, camera):
            raise RuntimeError("no model here")
        not_callable = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    img = np.full((8, 8, 3), 200, np.uint8)
    assert baselines.apply_rule(baselines.load_rule("my_rules:bright"), "my_rules:bright", img, "c", CLASSES) == 1
    with pytest.raises(ConfigError, match=r"baseline rule 'my_rules:typo' returned 'parcel_okk' for frame f7: expected one of empty_belt"):
        baselines.apply_rule(baselines.load_rule("my_rules:typo"), "my_rules:typo", img, "c", CLASSES, "f7")
    with pytest.raises(ConfigError, match=r"baseline rule 'my_rules:broken' raised RuntimeError: no model here"):
        baselines.apply_rule(baselines.load_rule("my_rules:broken"), "my_rules:broken", img, "c", CLASSES)
    for spec, msg in (("my_rules:nothing", "has no 'nothing'"), ("my_rules:not_callable", "is not callable"),
                      ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'")):
        with pytest.raises(ConfigError, match=msg):
            baselines.load_rule(spec)
    with pytest.raises(ConfigError, match="entry point"):
        BaselineConfig(rule="my_rules.bright")
    sys.modules.pop("my_rules", None)


def test_compare_on_accuracy_and_on_cost_point_the_same_way():
    truth = np.array([1] * 60 + [0] * 25 + [2] * 15)
    base = np.full(100, 1)
    good = truth.copy()
    acc = baselines.compare_accuracy(truth, good, base, None, 0.05, "majority")
    assert acc.diff.value == pytest.approx(0.40) and acc.low > 0.25 and acc.significantly_better
    cm = cost_matrix(CostConfig(matrix={"parcel_damaged": {"parcel_ok": 40.0}}, default_error_cost=1.0), CLASSES)
    cost = baselines.compare_cost(cm, truth, good, base, None, 0.05, "majority")
    assert cost.on == "cost" and cost.diff.value == pytest.approx(1000 * (25 * 1 + 15 * 40) / 100)
    assert cost.significantly_better
    same = baselines.compare_accuracy(truth, base, base, None, 0.05, "majority")
    assert same.diff.value == 0 and not same.significantly_better
    both = baselines.compare([acc, same])
    assert both.baseline == "majority" and both.low == same.low and not both.significantly_better


# --------------------------------------------------------------------------------------------------
# in the evaluator: the guard and its alert
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def guard_store(tmp_path_factory):
    """400 labelled frames with JPEGs: 60% parcel_ok, 25% empty_belt, 15% parcel_damaged. The incumbent always says
    parcel_ok (the majority rate, and worse than the empty-belt rule); the shadow is right on 97% of frames."""
    tmp = tmp_path_factory.mktemp("guard")
    (tmp / "img").mkdir()
    n = 400
    truth = ["parcel_damaged" if i % 20 < 3 else ("empty_belt" if i % 20 < 8 else "parcel_ok") for i in range(n)]
    inc = ["parcel_ok"] * n
    sh = [("parcel_ok" if t == "parcel_damaged" and i % 5 == 0 else t) for i, t in enumerate(truth)]
    store = conveyor_store.build(str(tmp / "s.db"), CLASSES, truth, {"incumbent": inc, "shadow": sh}, pi=1.0, image_dir=tmp / "img",
                                 cameras=("cam1", "cam2"))
    yield store, truth
    store.close()


def test_baseline_alert_fires_iff_a_model_is_not_significantly_better(guard_store):
    store, truth = guard_store
    res = Evaluator(EvalConfig()).evaluate(store)
    maj, rule = res.baseline("majority"), res.baseline("rule")
    assert maj is not None and rule is not None
    assert maj.accuracy.value == pytest.approx(0.6, abs=0.03) and maj.n_labeled == 400
    # the frame-difference rule gets the empty belts and the parcel_ok frames right, and calls parcel_damaged parcel_ok
    assert rule.n_labeled == 400 and rule.accuracy.value == pytest.approx(0.85, abs=0.01)
    assert "empty_belt" in rule.description and "parcel_ok" in rule.description

    inc, sh = res.models["incumbent"].vs_baseline, res.models["shadow"].vs_baseline
    assert not inc.significantly_better and inc.baseline == "rule" and inc.low < 0
    assert sh.significantly_better and sh.low > 0 and sh.on == "accuracy"
    alerts = check_alerts(res, AlertConfig())
    fired = {a.subject for a in alerts if a.kind == "baseline"}
    for role in ("incumbent", "shadow"):  # alert iff not significantly better
        assert (role in fired) == (not res.models[role].vs_baseline.significantly_better)
    msg = next(a.message for a in alerts if a.kind == "baseline")
    assert "not significantly better than the rule baseline" in msg
    assert not [a for a in check_alerts(res, AlertConfig(baseline=False)) if a.kind == "baseline"]

    m = flat_metrics(res)
    assert m["baseline_accuracy/majority"] == maj.accuracy.value and m["baseline_accuracy/rule"] == rule.accuracy.value
    assert m["baseline_guard/incumbent_significantly_better"] == 0.0 and m["baseline_guard/shadow_significantly_better"] == 1.0
    html = render_html([], res, alerts=alerts)
    assert "<h2>Baselines</h2>" in html and "baseline: rule" in html and "ALERT baseline" in html
    assert "baseline rule" in format_summary(res, [], alerts)


def test_the_guard_on_cost_and_a_user_rule(guard_store, tmp_path, monkeypatch):
    store, _ = guard_store
    (tmp_path / "always_rules.py").write_text("def damaged(image, camera):\n    return 'parcel_damaged'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    costs = {"matrix": {"parcel_damaged": {"parcel_ok": 40.0, "empty_belt": 40.0}}, "default_error_cost": 1.0}
    res = Evaluator(EvalConfig(costs=costs, decide_on="cost", delta=5.0,
                               baselines=BaselineConfig(rule="always_rules:damaged"))).evaluate(store)
    rule = res.baseline("rule")
    assert rule.description == "user rule always_rules:damaged" and rule.accuracy.value == pytest.approx(0.15, abs=0.01)
    assert rule.cost is not None and res.baseline("majority").cost is not None
    # the shadow is far more accurate than "always parcel_damaged" (97% vs 15%), but a third of the damaged parcels
    # it misses cost 40 each, while the rule's false alarms cost 1: on cost the rule is cheaper, and the guard says so
    sh = res.models["shadow"].vs_baseline
    assert sh.on == "cost" and sh.baseline == "rule" and not sh.significantly_better
    assert sh.diff.value == pytest.approx(1000 * (0.85 * 1 - 0.05 * 40), abs=1e-6)
    inc = res.models["incumbent"].vs_baseline
    assert not inc.significantly_better and inc.diff.value < 0
    fired = [a for a in check_alerts(res, AlertConfig()) if a.kind == "baseline"]
    assert {a.subject for a in fired} == {"incumbent", "shadow"}
    sh_msg = next(a.message for a in fired if a.subject == "shadow")
    assert "not significantly better than the rule baseline (user rule always_rules:damaged)" in sh_msg
    assert f"costs {1000 * (0.05 * 40 - 0.85):,.2f} EUR more per 1,000 frames than it" in sh_msg
    on_acc = Evaluator(EvalConfig(costs=costs, baselines=BaselineConfig(rule="always_rules:damaged"))).evaluate(store)
    assert on_acc.models["shadow"].vs_baseline.significantly_better
    sys.modules.pop("always_rules", None)


def test_no_baselines_when_disabled_and_notes_when_images_are_missing(tmp_path):
    truth = ["parcel_ok", "empty_belt"] * 50
    store = conveyor_store.build(str(tmp_path / "s.db"), CLASSES, truth, {"incumbent": truth}, pi=1.0)  # no JPEGs written
    res = Evaluator(EvalConfig()).evaluate(store)
    assert [b.name for b in res.baselines] == ["majority"]
    assert any("rule baseline not scored: none of the 100 labelled frames has a readable sampled JPEG" in n for n in res.meta.notes)
    off = Evaluator(EvalConfig(baselines=BaselineConfig(enabled=False))).evaluate(store)
    assert off.baselines == () and off.models["incumbent"].vs_baseline is None
    store.close()
