"""The cost of errors: the matrix from the config, per-frame and expected costs, the drivers, the interval's
coverage by simulation (both estimators, equal and unequal inclusion probabilities), and the decision on cost."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as st

from pipeline.config import CostConfig, load_costs
from pipeline.evaluation import costs, ppi, stats
from pipeline.evaluation.evaluator import EvalConfig, Evaluator
from pipeline.evaluation.report import format_summary, render_html
from pipeline.tracking import flat_metrics
from pipeline.types import ConfigError
from tests.pipeline.evaluation import conveyor_store

EXAMPLE = Path(__file__).parents[3] / "configs" / "costs.example.yaml"
DEMO_CLASSES = ["empty_belt", "parcel_ok", "parcel_damaged", "parcel_open_flap", "label_missing", "foreign_object"]


# --------------------------------------------------------------------------------------------------
# the matrix
# --------------------------------------------------------------------------------------------------
def test_matrix_from_config_defaults_values_and_no_class_column():
    cfg = CostConfig(currency="EUR", matrix={"b": {"a": 50.0}}, default_error_cost=2.0, value_correct={"c": 3.0})
    cm = costs.cost_matrix(cfg, ["a", "b", "c"])
    assert cm.matrix.tolist() == [[0, 2, 2, 2], [50, 0, 2, 2], [2, 2, -3, 2]]
    assert (cm.low, cm.high, cm.span) == (-3.0, 50.0, 53.0)
    assert costs.frame_costs(cm, np.array([1, 1, 2, 0]), np.array([0, -1, 2, 0])).tolist() == [50, 2, -3, 0]
    # the model's own expected cost: sum_k p_k C(k, predicted)
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert costs.expected_cost(cm, probs, np.array([0, 2])) == pytest.approx([0.2 * 50 + 0.1 * 2, 0.1 * 2 + 0.1 * 2 - 0.8 * 3])


@pytest.mark.parametrize("cfg,message", [
    (CostConfig(matrix={"parcel": {"a": 1.0}}), "costs.matrix: unknown class 'parcel' (the model's classes: a, b, c)"),
    (CostConfig(matrix={"a": {"z": 1.0}}), "costs.matrix['a']: unknown class 'z'"),
    (CostConfig(value_correct={"q": 1.0}), "costs.value_correct: unknown class 'q'"),
    (CostConfig(default_error_cost=0.0), "every decision costs 0"),
])
def test_matrix_names_the_unknown_class_and_the_valid_ones(cfg, message):
    with pytest.raises(ConfigError, match=None) as e:
        costs.cost_matrix(cfg, ["a", "b", "c"])
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("data,field", [
    ({"matrix": {"a": {"a": 1.0}}}, "a correct decision is not an error"),
    ({"matrix": {"a": {"b": -1.0}}}, "must be a finite cost >= 0"),
    ({"value_correct": {"a": -2.0}}, "must be a finite value >= 0"),
    ({"default_error_cost": -1}, "default_error_cost"),
    ({"matrx": {}}, "matrx"),
])
def test_cost_config_rejects_bad_values(data, field):
    with pytest.raises(ConfigError, match=field):
        CostConfig(**data)


def test_example_file_fits_the_demo_classes_and_weighs_misses_above_false_alarms(tmp_path):
    cfg = load_costs(EXAMPLE)
    try:
        from models.synthetic import CLASS_NAMES
    except ImportError:  # runtime-only install: the list as the demo has it
        CLASS_NAMES = DEMO_CLASSES
    cm = costs.cost_matrix(cfg, CLASS_NAMES)
    c = {(t, p): cm.matrix[CLASS_NAMES.index(t), CLASS_NAMES.index(p)] for t in CLASS_NAMES for p in CLASS_NAMES}
    assert cfg.currency == "EUR"
    assert c["parcel_damaged", "parcel_ok"] > 10 * c["parcel_ok", "parcel_damaged"]  # a missed damage vs a false alarm
    assert c["foreign_object", "empty_belt"] == max(c.values())
    # a file with a top-level `costs:` key reads the same; EvalConfig takes the path too
    (tmp_path / "run.yaml").write_text("costs:\n" + "".join("  " + line + "\n" for line in EXAMPLE.read_text().splitlines()))
    assert load_costs(tmp_path / "run.yaml") == cfg
    assert EvalConfig(costs=str(EXAMPLE)).costs == cfg
    with pytest.raises(ConfigError, match="not found"):
        load_costs(tmp_path / "missing.yaml")


def test_drivers_are_the_costly_confusions_with_their_shares():
    cm = costs.cost_matrix(CostConfig(matrix={"b": {"a": 50.0}}, default_error_cost=1.0), ["a", "b", "c"])
    truth = np.array([1] * 2 + [0] * 10 + [2] * 88)
    pred = np.array([0] * 2 + [1] * 10 + [2] * 88)
    d = costs.cost_drivers(cm, truth, pred)
    assert [(x.true, x.predicted, x.frames) for x in d] == [("b", "a", 2), ("a", "b", 10)]
    assert d[0].per_1k == pytest.approx(1000 * 2 * 50 / 100) and d[0].share == pytest.approx(100 / 110)
    # weighted: the frames of a rarely sampled pair count for more of the stream
    w = costs.cost_drivers(cm, truth, pred, np.where(truth == 0, 0.1, 1.0))
    assert w[0].predicted == "b" and w[0].per_1k == pytest.approx(1000 * 100 * 1 / (2 + 100 + 88))


def test_predictor_bounds_and_a_constant_cost_have_no_interval():
    cm = costs.cost_matrix(CostConfig(matrix={"b": {"a": 50.0}}, default_error_cost=1.0), ["a", "b", "c"])
    assert costs.predictor_bounds(cm, (2,)) == (0.0, 1.0)
    assert costs.predictor_bounds(cm) == (0.0, 50.0)
    f = costs.cost_figures(cm, np.array([2, 2]), np.array([2, 2]), bounds=(0.0, 0.0))
    assert (f.per_1k.value, f.per_1k.low, f.per_1k.high) == (0.0, 0.0, 0.0)


# --------------------------------------------------------------------------------------------------
# coverage by simulation
# --------------------------------------------------------------------------------------------------
# six classes like the demo's, a skewed prior, errors from cheap to very expensive, a value for some correct decisions
SIM_C = np.array([
    [-0.0, 2, 3, 3, 3, 5],
    [1, -0.05, 8, 6, 4, 5],
    [30, 120, -0.5, 20, 25, 30],
    [15, 60, 10, -0.3, 15, 15],
    [10, 35, 8, 8, -0.2, 10],
    [400, 250, 200, 200, 200, -1.0],
])
SIM_PRIOR = np.array([0.15, 0.6, 0.08, 0.07, 0.07, 0.03])


def _stream(rng: np.random.Generator, N: int, miscalibrated: bool):
    """Softmax outputs, truths drawn from them (calibrated) or from a flattened version (the model is overconfident),
    and the argmax predictions."""
    logits = rng.normal(size=(N, 6)) + np.log(SIM_PRIOR)
    logits[np.arange(N), rng.choice(6, size=N, p=SIM_PRIOR)] += 3.0
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    q = p if not miscalibrated else np.sqrt(p) / np.sqrt(p).sum(axis=1, keepdims=True)
    truth = (rng.random(N)[:, None] > q.cumsum(axis=1)).sum(axis=1)
    return p, np.minimum(truth, 5), p.argmax(axis=1)


@pytest.mark.parametrize("estimator", ["classical", "model_assisted"])
@pytest.mark.parametrize("design", ["uniform", "unequal"])
def test_cost_interval_covers_the_stream_cost(estimator, design):
    """500 simulated windows of 5,000 frames with ~500 labels (half of them from an overconfident model): the 95%
    interval covers the window's true cost per 1,000 frames within a binomial band around 95%."""
    rng = np.random.default_rng({"classical": 1, "model_assisted": 2}[estimator] * 10 + (design == "unequal"))
    cm = costs.CostMatrix(tuple("abcdef"), np.column_stack([SIM_C, np.full(6, 5.0)]), "EUR")
    sims, N, rate, hits = 500, 5000, 0.1, 0
    for s in range(sims):
        p, truth, pred = _stream(rng, N, miscalibrated=s % 2 == 1)
        theta = 1000 * float(cm.matrix[truth, pred].mean())
        if design == "uniform":
            pi = np.full(N, rate)
        else:  # uncertainty sampling: low-confidence frames (more often wrong, and costly) five times as likely
            raw = 0.2 + 3 * (1 - p.max(axis=1))
            pi = np.clip(rate * raw / raw.mean(), 0.2 * rate, 1.0)
        lab = rng.random(N) < pi
        stream = None
        if estimator == "model_assisted":
            stream = costs.StreamCosts(np.where(lab, cm.matrix[truth, pred], 0.0), lab, pi, costs.expected_cost(cm, p, pred))
        f = costs.cost_figures(cm, truth[lab], pred[lab], None if design == "uniform" else pi[lab], 0.05, stream)
        hits += f.per_1k.low <= theta <= f.per_1k.high
        assert f.method.startswith("model-assisted" if estimator == "model_assisted" else ("mean" if design == "uniform" else "Hajek"))
    lo, hi = st.binom.ppf([0.0005, 0.9995], sims, 0.95) / sims  # a 99.9% band around 95%
    assert lo <= hits / sims <= hi, hits / sims


def test_model_assisted_cost_uses_the_proxy_and_agrees_with_the_classical_one():
    rng = np.random.default_rng(5)
    cm = costs.CostMatrix(tuple("abcdef"), np.column_stack([SIM_C, np.full(6, 5.0)]), "EUR")
    p, truth, pred = _stream(rng, 20000, miscalibrated=False)
    lab = rng.random(20000) < 0.05
    proxy = costs.expected_cost(cm, p, pred)
    values = np.where(lab, cm.matrix[truth, pred], 0.0)
    ma = costs.cost_figures(cm, truth[lab], pred[lab], None, 0.05, costs.StreamCosts(values, lab, np.full(20000, 0.05), proxy))
    assert ma.per_1k_classical is not None
    assert ma.per_1k.se < ma.per_1k_classical.se  # a calibrated model's expected cost buys precision
    assert abs(ma.per_1k.value - ma.per_1k_classical.value) < 3 * ma.per_1k_classical.se
    # the same numbers through ppi directly
    r = ppi.model_assisted_mean(values, lab, np.full(20000, 0.05), proxy, 0.05, cm.bounds)
    assert ma.per_1k.value == pytest.approx(1000 * r.value) and ma.per_1k.low == pytest.approx(1000 * r.low)


def test_bounded_mean_is_agresti_coull_for_a_proportion_and_keeps_room_for_an_unseen_expensive_error():
    y = np.array([1] * 30 + [0] * 70, dtype=float)
    e = stats.bounded_mean(y, None, 0.05, (0.0, 1.0))
    from statsmodels.stats.proportion import proportion_confint

    lo, hi = proportion_confint(30, 100, 0.05, method="agresti_coull")
    assert (e.low, e.high) == pytest.approx((lo, hi), abs=2e-3)
    assert e.value == 0.3 and e.n == 100 and e.n_eff == pytest.approx(100)
    # 200 frames that all cost 1 on a range up to 250: the interval still reaches above what was seen
    e = stats.bounded_mean(np.ones(200), None, 0.05, (0.0, 250.0))
    assert e.value == pytest.approx(1.0) and e.high > 1.0 + 250 * 3.8 / 200 * 0.5
    with pytest.raises(ValueError, match="must lie in"):
        stats.bounded_mean(np.array([300.0]), None, 0.05, (0.0, 250.0))


# --------------------------------------------------------------------------------------------------
# in the evaluator: figures, the decision on cost, MLflow keys, report
# --------------------------------------------------------------------------------------------------
CLASSES = ["empty_belt", "parcel_ok", "foreign_object"]
COSTS = {"currency": "EUR", "matrix": {"foreign_object": {"empty_belt": 100.0, "parcel_ok": 100.0}}, "default_error_cost": 1.0}


@pytest.fixture(scope="module")
def pair_store(tmp_path_factory):
    """2,000 frames, every one labelled: the champion errs on 10% of the cheap frames (parcel_ok <-> empty_belt) and
    never misses a foreign object; the challenger is more accurate (97% vs 91%) but misses 30% of the foreign objects."""
    n = 2000
    truth = ["foreign_object" if i % 10 == 0 else ("parcel_ok" if i % 2 else "empty_belt") for i in range(n)]
    swap = {"parcel_ok": "empty_belt", "empty_belt": "parcel_ok"}
    inc = [swap[t] if t != "foreign_object" and i % 10 in (1, 2) and i % 20 < 10 else t for i, t in enumerate(truth)]
    sh = [("parcel_ok" if (i // 10) % 10 < 3 else t) if t == "foreign_object" else t for i, t in enumerate(truth)]
    store = conveyor_store.build(str(tmp_path_factory.mktemp("pair") / "s.db"), CLASSES, truth, {"incumbent": inc, "shadow": sh})
    yield store
    store.close()


def test_a_more_accurate_challenger_with_the_expensive_error_is_promoted_on_accuracy_not_on_cost(pair_store):
    on_acc = Evaluator(EvalConfig(costs=COSTS)).evaluate(pair_store)
    inc, sh = on_acc.models["incumbent"], on_acc.models["shadow"]
    assert sh.accuracy.value > inc.accuracy.value + 0.04
    assert sh.cost.per_1k.low > inc.cost.per_1k.high  # the challenger costs more, and the intervals say so
    assert inc.cost.per_1k.value == pytest.approx(1000 * 0.09, rel=0.25) and sh.cost.per_1k.value == pytest.approx(3000, rel=0.25)
    assert (sh.cost.drivers[0].true, sh.cost.drivers[0].predicted) == ("foreign_object", "parcel_ok")
    assert sh.cost.drivers[0].share == pytest.approx(1.0)
    assert on_acc.decision.action == "promote" and on_acc.decision.on == "accuracy"

    on_cost = Evaluator(EvalConfig(costs=COSTS, decide_on="cost", delta=5.0)).evaluate(pair_store)
    d = on_cost.decision
    assert d.on == "cost" and d.unit == "EUR" and d.delta == 5.0
    assert d.action == "retire"
    assert d.high < 0  # the challenger would cost more per 1,000 frames, in EUR
    assert d.low <= 1000 * (0.09 - 3.0) <= d.high
    assert "EUR" in d.reason and "per 1,000 frames" in d.reason


def test_cost_figures_reach_mlflow_keys_the_summary_and_the_report(pair_store):
    res = Evaluator(EvalConfig(costs=COSTS, estimator="classical")).evaluate(pair_store)
    m = flat_metrics(res)
    for role in ("incumbent", "shadow"):
        c = res.models[role].cost
        assert m[f"cost_per_1k/{role}"] == c.per_1k.value
        assert (m[f"cost_per_1k/{role}_ci_low"], m[f"cost_per_1k/{role}_ci_high"]) == (c.per_1k.low, c.per_1k.high)
        assert c.method.startswith("mean") and c.per_1k_classical is None
    assert "incumbent" in res.meta.methods["cost"]
    text = format_summary(res)
    assert "cost / 1,000 frames" in text and "shadow cost drivers: foreign_object -> parcel_ok" in text
    html = render_html([], res)
    assert "<h2>Cost of errors</h2>" in html and "share of the error cost" in html
    # the result reads back from its JSON with its cost figures
    from pipeline.evaluation.result import EvaluationResult

    back = EvaluationResult.from_json(res.to_json())
    assert back.models["shadow"].cost == res.models["shadow"].cost


def test_decide_on_cost_needs_costs_and_reads_delta_in_cost_units():
    with pytest.raises(ConfigError, match="decide_on='cost' needs a cost matrix"):
        EvalConfig(decide_on="cost")
    with pytest.raises(ConfigError, match="must be < 1"):
        EvalConfig(delta=5.0)
    assert EvalConfig(decide_on="cost", costs=COSTS, delta=5.0).delta == 5.0
    assert math.isclose(EvalConfig().delta, 0.01)


# --------------------------------------------------------------------------------------------------
# serving cost (pipeline.serving_cost) in the evaluation
# --------------------------------------------------------------------------------------------------
def test_serving_cost_of_the_runs_reaches_the_result_mlflow_and_the_report(tmp_path):
    truth = ["parcel_ok", "empty_belt"] * 50
    store = conveyor_store.build(str(tmp_path / "s.db"), CLASSES, truth, {"incumbent": truth, "shadow": truth})
    # the worked example of pipeline/serving_cost.py: one hour, incumbent busy 900 s for 1,000,000 predictions,
    # shadow busy 300 s for 500,000
    store.end_run(conveyor_store.RUN_ID, {"duration_s": 3600.0, "frames_served": 1_000_000,
                                          "incumbent": {"model": "inc:1", "busy_s": 900.0},
                                          "shadow": {"model": "sh:2", "busy_s": 300.0, "frames_predicted": 500_000}})
    assert Evaluator(EvalConfig()).evaluate(store).serving_cost is None  # no price given, none recorded
    res = Evaluator(EvalConfig(price_per_device_hour=2.0)).evaluate(store)
    sc = res.serving_cost
    assert sc["incumbent"]["usd_per_million"] == pytest.approx(1.5) and sc["shadow"]["usd_per_million"] == pytest.approx(1.0)
    assert sc["shadow_extra_usd_per_million"] == pytest.approx(0.5)
    m = flat_metrics(res)
    assert m["serving_usd_per_million/incumbent"] == pytest.approx(1.5)
    assert m["serving_shadow_extra_usd_per_million"] == pytest.approx(0.5)
    html = render_html([], res)
    assert "<h2>Serving cost</h2>" in html and "Running the shadow adds <b>0.50 USD</b>" in html
    assert "the shadow adds 0.50 USD per million served" in format_summary(res)
    from pipeline.evaluation.result import EvaluationResult

    assert EvaluationResult.from_json(res.to_json()).serving_cost == sc
    # windows carry no serving cost (it is a figure of the runs, not of a slice of frames)
    assert all(w.serving_cost is None for w in Evaluator(EvalConfig(price_per_device_hour=2.0)).evaluate_windows(store, 50))
    store.close()


def test_evaluate_cli_reads_costs_decides_on_cost_and_prices_serving(pair_store, tmp_path, capsys):
    from pipeline.cli import main

    (tmp_path / "costs.yaml").write_text("currency: EUR\ndefault_error_cost: 1\nmatrix:\n  foreign_object:\n    empty_belt: 100\n"
                                         "    parcel_ok: 100\n")
    out = tmp_path / "eval.json"
    rc = main(["evaluate", "--db", pair_store.url, "--no-mlflow", "--workdir", str(tmp_path), "--costs", str(tmp_path / "costs.yaml"),
               "--decide-on", "cost", "--delta", "5", "--no-baselines", "--price-per-device-hour", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "DECISION: RETIRE" in text and "EUR saved per 1,000 frames" in text and "cost / 1,000 frames" in text
    import json

    doc = json.loads(out.read_text())["overall"]
    assert doc["data"]["decision"]["on"] == "cost" and doc["data"]["baselines"] == []
    assert doc["meta"]["config"]["costs"]["currency"] == "EUR" and doc["meta"]["config"]["price_per_device_hour"] == 2.0
    (tmp_path / "bad.yaml").write_text("matrix:\n  pallet:\n    parcel_ok: 3\n")
    rc = main(["evaluate", "--db", pair_store.url, "--no-mlflow", "--workdir", str(tmp_path), "--costs", str(tmp_path / "bad.yaml")])
    err = capsys.readouterr().err
    assert rc != 0 and "costs.matrix: unknown class 'pallet' (the model's classes: empty_belt, parcel_ok, foreign_object)" in err
