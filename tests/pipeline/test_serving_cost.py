"""Serving cost: the arithmetic on made-up summaries (numbers worked out by hand), and a real short run whose summary
carries each model's busy time and the cost (real ONNX Runtime, a real video, real SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import RunConfig, load_config
from pipeline.runner import Runner
from pipeline.serving_cost import ServingCost, combine_runs, serving_cost
from pipeline.store import PredictionStore
from pipeline.types import ConfigError, Role
from tests.helpers.media import write_video
from tests.helpers.onnx_models import SleepyClassifier, make_tiny_classifier

CLASSES = ["box", "bag", "empty"]


def summary(wall: float, inc_preds: int, inc_busy: float, sh_preds: int | None = None, sh_busy: float = 0.0,
            run_id: str = "r", price: float | None = None) -> dict:
    """A made-up RunSummary.to_dict() with only what the cost reads (and an optional recorded price)."""
    s = {
        "run_id": run_id, "duration_s": wall, "frames_served": inc_preds,
        "incumbent": {"model": "inc:1", "busy_s": inc_busy},
        "shadow": {"model": None} if sh_preds is None else {"model": "sh:2", "frames_predicted": sh_preds, "busy_s": sh_busy},
        "extra": {},
    }
    if price is not None:
        s["extra"]["serving_cost"] = {"price_per_device_hour": price, "currency": "EUR", "device": "box-7"}
    return s


def test_worked_example_one_hour_two_models() -> None:
    # 1 h at 2.00/h -> a bill of 2.00; busy 900 s + 300 s -> shares 75% / 25%
    c = serving_cost(summary(3600.0, 1_000_000, 900.0, 500_000, 300.0), 2.0, device="2-vCPU VM")
    inc, sh = c.incumbent, c.shadow
    assert (inc.role, inc.model, inc.predictions, inc.busy_s, inc.wall_s) == ("incumbent", "inc:1", 1_000_000, 900.0, 3600.0)
    assert inc.throughput_per_busy_s == pytest.approx(1_000_000 / 900)
    assert inc.utilisation == pytest.approx(0.25)
    assert inc.usd_per_million == pytest.approx(1.50)  # 2.00 * 0.75 for 1e6 predictions
    assert inc.usd_per_million_at_capacity == pytest.approx(0.50)  # 2.00 * 900/3600 for 1e6
    assert sh is not None and sh.predictions == 500_000
    assert sh.utilisation == pytest.approx(300 / 3600)
    assert sh.usd_per_million == pytest.approx(1.00)  # 0.50 for 5e5 predictions
    assert sh.usd_per_million_at_capacity == pytest.approx(2.0 * 300 / 3600 / 0.5)  # 0.1667 for 5e5 -> 0.333
    assert c.shadow_extra_usd_per_million == pytest.approx(0.50)  # the shadow's 0.50 over 1e6 served predictions
    assert c.shadow_extra_usd_per_million_at_capacity == pytest.approx(2.0 * 300 / 3600)
    assert (c.price_per_device_hour, c.currency, c.device, c.runs) == (2.0, "USD", "2-vCPU VM", 1)
    # round trip, and the plain-words lines
    assert ServingCost.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    text = c.describe()
    assert "$1.50 per million predictions in this run ($0.50 at capacity)" in text
    assert "running the shadow adds $0.50 per million served predictions" in text


def test_incumbent_alone_carries_the_whole_bill() -> None:
    # 100 s at 3.60/h = 0.10; 2,000 predictions -> 50.00 per million; busy 20 s -> 10.00 per million at capacity
    c = serving_cost(summary(100.0, 2000, 20.0), 3.6, currency="EUR")
    assert c.shadow is None and c.shadow_extra_usd_per_million is None
    assert c.incumbent.usd_per_million == pytest.approx(50.0)
    assert c.incumbent.usd_per_million_at_capacity == pytest.approx(10.0)
    assert c.incumbent.utilisation == pytest.approx(0.2)
    assert "EUR 50.00 per million" in c.describe()


def test_overlapping_busy_times_mean_a_saturated_device() -> None:
    # 100 s at 36.00/h = 1.00; busy 80 s + 60 s = 140 s > 100 s: both ran at once, the device was saturated, so each
    # model holds its share of the wall time (80/140 and 60/140 of 100 s) and "at capacity" is "in this run"
    c = serving_cost(summary(100.0, 1000, 80.0, 500, 60.0), 36.0)
    assert c.incumbent.usd_per_million == pytest.approx(1.0 * 80 / 140 / 1000 * 1e6)
    assert c.incumbent.usd_per_million_at_capacity == pytest.approx(c.incumbent.usd_per_million)
    assert c.shadow.usd_per_million_at_capacity == pytest.approx(c.shadow.usd_per_million)
    assert c.shadow_extra_usd_per_million_at_capacity == pytest.approx(c.shadow_extra_usd_per_million)
    assert c.incumbent.utilisation == pytest.approx(0.8) and c.incumbent.throughput_per_busy_s == pytest.approx(12.5)


def test_the_drain_is_billed_too() -> None:
    # extra.wall_s (serve loop + drain) is what the device is billed for; duration_s only for older summaries
    s = summary(100.0, 2000, 20.0)
    s["extra"]["wall_s"] = 200.0
    assert serving_cost(s, 3.6).incumbent.usd_per_million == pytest.approx(100.0)  # 0.20 for 2,000 predictions


def test_undefined_figures_are_none_not_nan() -> None:
    c = serving_cost(summary(0.0, 0, 0.0, 0, 0.0), 1.0)
    for m in (c.incumbent, c.shadow):
        assert m.usd_per_million is None and m.throughput_per_busy_s is None and m.utilisation is None
    assert c.shadow_extra_usd_per_million is None
    json.dumps(c.to_dict(), allow_nan=False)


@pytest.mark.parametrize("price", [0, -1.0, float("nan"), float("inf"), "cheap", None])
def test_bad_price_is_one_clear_error(price) -> None:
    with pytest.raises(ValueError, match="price_per_device_hour"):
        serving_cost(summary(10.0, 10, 1.0), price)


def test_summary_without_busy_time_is_refused_by_name() -> None:
    s = summary(10.0, 10, 1.0, run_id="old")
    del s["incumbent"]["busy_s"]
    with pytest.raises(ValueError, match=r"run old: .*incumbent\.busy_s"):
        serving_cost(s, 1.0)
    with pytest.raises(ValueError, match="not valid JSON"):
        serving_cost("{nope", 1.0)


def test_combine_runs_sums_then_costs() -> None:
    a = summary(1800.0, 400_000, 600.0, 400_000, 200.0, run_id="a")
    b = summary(1800.0, 600_000, 300.0, 100_000, 100.0, run_id="b", price=2.0)
    old = summary(50.0, 10, 1.0, run_id="old")
    del old["incumbent"]["busy_s"]  # recorded before busy time: left out
    both = combine_runs([json.dumps(a), b, None, old])  # JSON text as stored, a run not ended, an old run
    assert both is not None
    one = serving_cost(summary(3600.0, 1_000_000, 900.0, 500_000, 300.0), 2.0)
    assert both.runs == 2 and both.incumbent.busy_s == 900.0 and both.shadow.predictions == 500_000
    # the price, currency and device recorded in b's summary; otherwise the same figures as the single run above
    assert (both.price_per_device_hour, both.currency, both.device) == (2.0, "EUR", "box-7")
    assert both.incumbent.usd_per_million == pytest.approx(one.incumbent.usd_per_million)
    assert both.shadow_extra_usd_per_million == pytest.approx(one.shadow_extra_usd_per_million)
    # an explicit price wins; without a recorded or given price, or without any costable run: None
    assert combine_runs([a, b], price_per_device_hour=4.0).incumbent.usd_per_million == pytest.approx(3.0)
    assert combine_runs([a]) is None
    assert combine_runs([old], price_per_device_hour=1.0) is None
    assert combine_runs([], price_per_device_hour=1.0) is None


def test_config_block_validates() -> None:
    cfg = RunConfig(serving_cost={"price_per_device_hour": 0.096, "device": "2-vCPU VM"})
    assert cfg.serving_cost.currency == "USD"
    with pytest.raises(ConfigError, match="price_per_device_hour"):
        RunConfig(serving_cost={"price_per_device_hour": 0})
    with pytest.raises(ConfigError, match="price_per_device_hour"):
        RunConfig(serving_cost={"currency": "USD"})
    with pytest.raises(ConfigError, match="pirce"):
        RunConfig(serving_cost={"price_per_device_hour": 1.0, "pirce": 2})


def test_real_run_records_busy_time_and_cost(tmp_path: Path) -> None:
    """A 60-frame video through the real runner: the shadow sleeps 20 ms per batch, so its busy time is at least
    batches x 20 ms; the summary (returned and stored) carries both models' busy time and the serving cost."""
    video = write_video(tmp_path / "dock.avi", 60, seed=1)
    inc_path = make_tiny_classifier(tmp_path / "inc.onnx", CLASSES, input_size=(24, 32), seed=1)
    sh_path = make_tiny_classifier(tmp_path / "sh.onnx", CLASSES, input_size=(24, 32), seed=2)
    shadow = SleepyClassifier(sh_path, Role.SHADOW, providers=["cpu"], sleep_s=0.02)
    cfg = load_config(None, {
        "sources": [str(video)], "incumbent": {"uri": str(inc_path), "providers": ["cpu"]},
        "batching.batch_size": 8, "batching.max_wait_ms": 10, "shadow_mode.max_pending_batches": 64,
        "sampling.enabled": False, "store.url": "store.db", "workdir": str(tmp_path / "work"),
        "serving_cost": {"price_per_device_hour": 3.6, "device": "test box"},
    })
    warmup_calls = shadow.calls
    s = Runner(cfg, shadow=shadow, install_signal_handlers=False).run()
    assert s.frames_served == 60 and s.shadow["frames_predicted"] == 60
    shadow_batches = shadow.calls - warmup_calls
    assert shadow_batches >= 60 // 8
    assert s.incumbent["busy_s"] > 0
    assert shadow_batches * 0.02 <= s.shadow["busy_s"] <= s.extra["wall_s"] + 1.0
    cost = s.extra["serving_cost"]
    assert cost["device"] == "test box" and cost["price_per_device_hour"] == 3.6
    inc, sh = cost["incumbent"], cost["shadow"]
    # the wall time billed: the serve loop and the drain after it
    assert s.duration_s <= s.extra["wall_s"] and inc["wall_s"] == pytest.approx(s.extra["wall_s"])
    assert inc["predictions"] == 60 and sh["predictions"] == 60
    # the run's bill (3.6/h over the wall time) is split between the models by busy time
    bill = 3.6 * s.extra["wall_s"] / 3600
    assert (inc["usd_per_million"] + sh["usd_per_million"]) * 60 / 1e6 == pytest.approx(bill, rel=1e-3)
    overlap = min(1.0, s.extra["wall_s"] / (s.incumbent["busy_s"] + s.shadow["busy_s"]))  # 1 unless both ran at once
    assert sh["usd_per_million_at_capacity"] == pytest.approx(3.6 * s.shadow["busy_s"] * overlap / 3600 / 60 * 1e6, rel=1e-3)
    assert sh["usd_per_million_at_capacity"] <= sh["usd_per_million"] * (1 + 1e-9)
    assert cost["shadow_extra_usd_per_million"] == pytest.approx(sh["usd_per_million"])  # full coverage: the same
    text = s.format_table()
    assert "per million predictions in this run" in text and "running the shadow adds $" in text
    # stored with the run, where the evaluator reads it
    st = PredictionStore(str(tmp_path / "work" / "store.db"))
    try:
        stored = json.loads(st.list_runs()[-1]["summary"])
    finally:
        st.close()
    assert stored["extra"]["serving_cost"] == json.loads(json.dumps(cost))
    assert combine_runs([stored]).incumbent.busy_s == pytest.approx(s.incumbent["busy_s"], abs=1e-6)
