"""The evaluation settings issue 12 added to the typed config: costs, the decision's scale, baselines, serving price."""

from __future__ import annotations

import pytest

from pipeline.config import AlertConfig, BaselineConfig, CostConfig, EvalConfig, load_costs
from pipeline.types import ConfigError


def test_cost_config_defaults_and_file_forms(tmp_path):
    c = CostConfig()
    assert (c.currency, c.matrix, c.default_error_cost, c.value_correct) == ("EUR", {}, 1.0, {})
    (tmp_path / "c.yaml").write_text("currency: USD\nmatrix:\n  a:\n    b: 3\nvalue_correct:\n  a: 0.5\n")
    assert load_costs(tmp_path / "c.yaml") == CostConfig(currency="USD", matrix={"a": {"b": 3.0}}, value_correct={"a": 0.5})
    (tmp_path / "bad.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: expected a mapping of cost settings"):
        load_costs(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("matrix: {}\ncurency: EUR\n")
    with pytest.raises(ConfigError, match=r"typo.yaml \(costs\): .*field 'curency'"):
        load_costs(tmp_path / "typo.yaml")


@pytest.mark.parametrize("kw,error", [
    ({"decide_on": "cost"}, "decide_on='cost' needs a cost matrix"),
    ({"delta": 1.0}, "must be < 1"),
    ({"decide_on": "both"}, "decide_on"),
    ({"price_per_device_hour": 0}, "price_per_device_hour"),
    ({"baselines": {"rule": "not an entry point"}}, "entry point"),
    ({"baselines": {"image_size": 2}}, "image_size"),
])
def test_eval_config_rejects(kw, error):
    with pytest.raises(ConfigError, match=error) as e:
        EvalConfig(**kw)
    assert "\n" not in str(e.value)


def test_eval_config_records_the_new_settings():
    cfg = EvalConfig(costs={"matrix": {"a": {"b": 2}}}, decide_on="cost", delta=25.0, price_per_device_hour=1.2,
                     baselines=BaselineConfig(rule="pkg.rules:empty_or_parcel"))
    doc = cfg.model_dump(mode="json")
    assert doc["costs"]["matrix"] == {"a": {"b": 2.0}} and doc["decide_on"] == "cost" and doc["delta"] == 25.0
    assert doc["baselines"] == {"enabled": True, "rule": "pkg.rules:empty_or_parcel", "empty_class": "empty_belt", "image_size": 32,
                                "max_background_frames": 200}
    assert EvalConfig.model_validate(doc) == cfg
    assert AlertConfig().baseline is True
