"""What serving costs: dollars per million predictions for each model of a run, and what the shadow adds.

Pure functions over run summaries (:meth:`pipeline.runner.RunSummary.to_dict`, also stored as JSON in the store's
``runs.summary``); no I/O. The runner measures, per model, how long its session was running inference
(``busy_s``: the sum of its batch calls' wall times, :mod:`pipeline.serving` / :mod:`pipeline.shadow`) and how
many predictions it made; the run's wall time is ``extra.wall_s`` (the serve loop and the drain after it, while the
shadow finishes its queue; ``duration_s``, the serve loop alone, for older summaries). With a price per device-hour
(:class:`pipeline.config.ServingCostConfig`) that gives, per model:

* ``throughput_per_busy_s`` = predictions / busy_s: what one device-second of inference yields;
* ``utilisation`` = busy_s / wall_s: the share of the run the model kept the device busy (the two models of a
  pair may run at the same time on different cores, so their utilisations may add up to more than 1);
* ``usd_per_million`` - **what the run actually cost** per million predictions: the device is billed for the
  whole wall time, idle or not, and the bill is shared between the models in proportion to their busy time;
* ``usd_per_million_at_capacity`` - what it would cost on a device kept fully busy (the bill for the busy time
  only): the floor a well-packed deployment reaches, and the honest figure for sizing a fleet. When the two models'
  busy times add up to more than the wall time (they ran at the same time, e.g. on different CPU cores), the device
  was saturated: each model is billed its share of the wall time, so "at capacity" equals "in this run" then.

Busy time counts a model as holding the whole device while it runs. On a GPU that is how it is; on a CPU, where a
session may use only some of the cores (the runner gives each model half of them in a replay), the device could
serve more at once, so the at-capacity figure is an upper bound there (conservative).

And for the pair, ``shadow_extra_usd_per_million``: the shadow's share of the bill per million *served*
(incumbent) predictions - what running the shadow adds to every million answers the cameras get (with
``shadow_extra_usd_per_million_at_capacity`` its fully-busy counterpart). All amounts are in ``currency``
(the field names say ``usd`` because that is the default).

Worked example (``tests/pipeline/test_serving_cost.py``): one hour at 2.00 per device-hour, the incumbent busy
900 s for 1,000,000 predictions, the shadow busy 300 s for 500,000. The bill is 2.00; the incumbent's share is
900 / 1200 = 75%, so 1.50 per million (0.50 at capacity); the shadow's 0.50 for 500,000 predictions, 1.00 per
million (0.33 at capacity); the shadow adds 0.50 per million served predictions (0.17 at capacity).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ModelServingCost", "ServingCost", "combine_runs", "serving_cost"]

MILLION = 1_000_000.0


@dataclass(frozen=True)
class ModelServingCost:
    """One model's serving figures over a run (or runs, :func:`combine_runs`); None where a figure is undefined
    (no predictions, no busy time, no wall time)."""

    role: str  # incumbent | shadow
    model: str | None  # "name:version" (several joined by ", " when combined runs used different ones)
    predictions: int
    busy_s: float
    wall_s: float
    throughput_per_busy_s: float | None  # predictions per second of inference
    utilisation: float | None  # busy_s / wall_s
    usd_per_million: float | None  # the run's bill (whole wall time), this model's share, per million predictions
    usd_per_million_at_capacity: float | None  # the bill for the busy time only, per million predictions

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ServingCost:
    """Serving cost of the incumbent and the shadow of one run or several (see the module docstring)."""

    price_per_device_hour: float
    currency: str
    device: str | None
    incumbent: ModelServingCost
    shadow: ModelServingCost | None
    shadow_extra_usd_per_million: float | None  # the shadow's share of the bill per million served predictions
    shadow_extra_usd_per_million_at_capacity: float | None = None
    runs: int = 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``RunSummary.extra["serving_cost"]`` holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ServingCost":
        """Read back :meth:`to_dict`."""
        try:
            inc = ModelServingCost(**d["incumbent"])
            sh = ModelServingCost(**d["shadow"]) if d.get("shadow") else None
            rest = {k: v for k, v in d.items() if k not in ("incumbent", "shadow")}
            return cls(incumbent=inc, shadow=sh, **rest)
        except (KeyError, TypeError) as e:
            raise ValueError(f"serving cost: expected ServingCost.to_dict() fields, got keys {sorted(d)} ({e})") from None

    @property
    def symbol(self) -> str:
        """``$`` for USD, else the currency code followed by a space."""
        return "$" if self.currency.upper() == "USD" else f"{self.currency} "

    def describe(self) -> str:
        """Plain words, one line per model and one for the shadow's extra cost (for summaries and pages)."""
        s = self.symbol
        fmt = lambda v: "-" if v is None else f"{s}{v:,.2f}"  # noqa: E731
        lines = [f"serving cost at {s}{self.price_per_device_hour:g} per device-hour"
                 + (f" ({self.device})" if self.device else "") + ":"]
        for m in (self.incumbent, self.shadow):
            if m is None:
                continue
            util = "-" if m.utilisation is None else f"{100 * m.utilisation:.0f}%"
            thr = "-" if m.throughput_per_busy_s is None else f"{m.throughput_per_busy_s:,.0f}"
            lines.append(f"  {m.role} {m.model}: {fmt(m.usd_per_million)} per million predictions in this run "
                         f"({fmt(m.usd_per_million_at_capacity)} at capacity); {thr} predictions per busy second, "
                         f"device busy {util} of the time")
        if self.shadow is not None:
            lines.append(f"  running the shadow adds {fmt(self.shadow_extra_usd_per_million)} per million served "
                         f"predictions ({fmt(self.shadow_extra_usd_per_million_at_capacity)} at capacity)")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# the arithmetic
# --------------------------------------------------------------------------------------------------
@dataclass
class _Totals:
    predictions: int = 0
    busy_s: float = 0.0
    models: list[str] = dataclasses.field(default_factory=list)

    def add(self, predictions: int, busy_s: float, model: str | None) -> None:
        self.predictions += int(predictions)
        self.busy_s += float(busy_s)
        if model and model not in self.models:
            self.models.append(model)


def _div(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _price(price: Any, where: str) -> float:
    try:
        p = float(price)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: price_per_device_hour must be a number > 0, got {price!r}") from None
    if not (p > 0 and math.isfinite(p)):
        raise ValueError(f"{where}: price_per_device_hour must be a finite number > 0, got {price!r}")
    return p


def _compute(inc: _Totals, sh: _Totals | None, wall_s: float, price: float, currency: str, device: str | None,
             runs: int) -> ServingCost:
    bill = price * wall_s / 3600.0  # the device is billed for the whole wall time
    busy_total = inc.busy_s + (sh.busy_s if sh is not None else 0.0)
    # device-seconds a model held: its busy time, scaled down when the models' busy times overlap (sum > wall)
    overlap = min(1.0, wall_s / busy_total) if busy_total > 0 and wall_s > 0 else 1.0

    def model_cost(role: str, t: _Totals) -> ModelServingCost:
        share = _div(t.busy_s, busy_total)
        if share is None:  # no busy time measured at all: the incumbent carries the bill
            share = 1.0 if role == "incumbent" else 0.0
        per_m = _div(bill * share * MILLION, t.predictions)
        cap = _div(price * t.busy_s * overlap / 3600.0 * MILLION, t.predictions)
        return ModelServingCost(role, ", ".join(t.models) or None, t.predictions, round(t.busy_s, 6), round(wall_s, 6),
                                _div(t.predictions, t.busy_s), _div(t.busy_s, wall_s), per_m, cap)

    mi = model_cost("incumbent", inc)
    ms = model_cost("shadow", sh) if sh is not None else None
    extra = extra_cap = None
    if ms is not None and inc.predictions > 0:
        share = _div(ms.busy_s, busy_total) or 0.0
        extra = bill * share * MILLION / inc.predictions
        extra_cap = price * ms.busy_s * overlap / 3600.0 * MILLION / inc.predictions
    return ServingCost(price, currency, device, mi, ms, extra, extra_cap, runs)


def _as_summary(s: Mapping[str, Any] | str | None, where: str) -> dict[str, Any] | None:
    if s is None or s == "":
        return None
    if isinstance(s, str):
        try:
            s = json.loads(s)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: run summary is not valid JSON ({e})") from None
    if not isinstance(s, Mapping):
        raise ValueError(f"{where}: expected a run summary object (RunSummary.to_dict()), got {type(s).__name__}")
    return dict(s)


def _read(summary: Mapping[str, Any], where: str) -> tuple[_Totals, _Totals | None, float]:
    """(incumbent totals, shadow totals or None, wall seconds) of one summary; ValueError when busy time is missing."""
    inc = summary.get("incumbent") or {}
    sh = summary.get("shadow") or {}
    if "busy_s" not in inc:
        raise ValueError(f"{where}: the summary has no incumbent.busy_s (runs recorded before serving cost was "
                         "measured cannot be costed)")
    wall = float((summary.get("extra") or {}).get("wall_s") or summary.get("duration_s") or 0.0)
    ti = _Totals()
    ti.add(int(summary.get("frames_served") or 0), float(inc["busy_s"]), inc.get("model"))
    ts = None
    if sh.get("model"):
        ts = _Totals()
        ts.add(int(sh.get("frames_predicted") or 0), float(sh.get("busy_s") or 0.0), sh.get("model"))
    return ti, ts, wall


def serving_cost(summary: Mapping[str, Any] | str, price_per_device_hour: float, currency: str = "USD",
                 device: str | None = None) -> ServingCost:
    """The serving cost of one run from its summary (``RunSummary.to_dict()`` or its JSON).

    Predictions: the incumbent's are the frames served (every served frame is a prediction the cameras got); the
    shadow's are the frames it predicted. Raises ValueError naming what is missing (a summary without
    ``incumbent.busy_s``) or a price that is not a finite number > 0.
    """
    where = "serving_cost"
    s = _as_summary(summary, where)
    if s is None:
        raise ValueError(f"{where}: no run summary (the run has not ended?)")
    where = f"run {s.get('run_id', '?')}"
    price = _price(price_per_device_hour, where)
    ti, ts, wall = _read(s, where)
    return _compute(ti, ts, wall, price, currency, device, 1)


def combine_runs(summaries: Iterable[Mapping[str, Any] | str | None], price_per_device_hour: float | None = None,
                 currency: str | None = None, device: str | None = None) -> ServingCost | None:
    """One serving cost over several runs (e.g. every run of a deployment): predictions, busy and wall time summed
    per role, then costed as one run.

    ``summaries``: run summaries (dicts or the store's JSON text); None entries (runs not ended) and summaries
    without busy time (recorded before it was measured) are left out. ``price_per_device_hour`` None: the price
    recorded in the summaries (``extra.serving_cost``, the newest given), with its currency and device unless
    ``currency`` / ``device`` are given. Returns None when no price is given or recorded, or no summary has busy
    time. Wall times are added up: runs that ran at the same time on one device are counted as if one after the other.
    """
    ti, ts, wall, runs = _Totals(), None, 0.0, 0
    recorded: Mapping[str, Any] | None = None
    for k, raw in enumerate(summaries):
        s = _as_summary(raw, f"summary {k}")
        if s is None:
            continue
        rec = (s.get("extra") or {}).get("serving_cost")
        if isinstance(rec, Mapping) and rec.get("price_per_device_hour"):
            recorded = rec
        try:
            i, sh, w = _read(s, f"run {s.get('run_id', k)}")
        except ValueError:
            continue
        ti.add(i.predictions, i.busy_s, ", ".join(i.models) or None)
        if sh is not None:
            ts = ts or _Totals()
            ts.add(sh.predictions, sh.busy_s, ", ".join(sh.models) or None)
        wall += w
        runs += 1
    if runs == 0:
        return None
    if price_per_device_hour is None:
        if recorded is None:
            return None
        price_per_device_hour = recorded["price_per_device_hour"]
        currency = currency or recorded.get("currency")
    if recorded is not None:  # the device the runs named (a price given here re-prices the same device)
        device = device or recorded.get("device")
    price = _price(price_per_device_hour, "combine_runs")
    return _compute(ti, ts, wall, price, currency or "USD", device, runs)
