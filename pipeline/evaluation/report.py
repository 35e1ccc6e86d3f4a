"""Plots, the self-contained HTML report and the terminal summary of an evaluation.

Inputs are :class:`~pipeline.evaluation.result.EvaluationResult` objects; a report can be rebuilt from a saved
``evaluation.json`` alone (``EvaluationResult.from_dict(doc["overall"])``). matplotlib is imported lazily
with the Agg backend (no display needed).

* :func:`make_plots` -- PNGs: gap and accuracy over time with CI bands, confusion matrices, reliability
  diagram, per-camera accuracy bars, drift p-values over time.
* :func:`render_html` -- one HTML file, images inlined as base64, tables of every figure and the decision.
* :func:`write_report` -- both, plus ``evaluation.json``, into a folder (``pipeline.tracking.log_evaluation``
  takes it as its ``write_report``).
* :func:`format_summary` -- the plain-text table ``shadowcam evaluate`` prints.

Beside accuracy the report shows, when the result holds them: the expected cost of errors per 1,000 frames and the
confusions that drive it, the baselines (majority class, rule) next to the models with the baseline guard, the
serving cost per million predictions, and an error gallery (HTML made by :mod:`pipeline.evaluation.gallery`, passed
in as ``gallery_html``).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
from pathlib import Path
from typing import Any, Sequence

import jinja2
import numpy as np

from pipeline.evaluation.result import ROLES, Alert, Estimate, EvaluationResult

COLORS = {"incumbent": "#1f77b4", "shadow": "#d62728"}
PLOT_FILES = {
    "gap_over_time": "gap_over_time.png",
    "confusion": "confusion_matrices.png",
    "reliability": "reliability_diagram.png",
    "per_camera": "per_camera_accuracy.png",
    "drift": "drift_over_time.png",
}


# --------------------------------------------------------------------------------------------------
# small formatting helpers
# --------------------------------------------------------------------------------------------------
def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fmt_pct(x: float | None, digits: int = 1) -> str:
    return "–" if _missing(x) else f"{100 * float(x):.{digits}f}%"


def fmt_est(e: Estimate | None, digits: int = 1, signed: bool = False) -> str:
    """``83.4% [79.0, 87.1]`` from an :class:`Estimate` (``–`` when there is none or its value is NaN)."""
    if e is None or _missing(e.value):
        return "–"
    sign = "+" if signed else ""
    v = f"{100 * e.value:{sign}.{digits}f}%"
    if _missing(e.low) or _missing(e.high):
        return v
    return f"{v} [{100 * e.low:{sign}.{digits}f}, {100 * e.high:{sign}.{digits}f}]"


def fmt_p(p: float | None) -> str:
    if _missing(p):
        return "–"
    p = float(p)
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _role_figure(r: EvaluationResult, role: str, name: str) -> Any:
    """``r.models[role].<name>``, None when the role has no figures in ``r``."""
    m = r.models.get(role)
    return None if m is None else getattr(m, name)


def _time(t: float | None) -> dt.datetime | None:
    return None if t is None else dt.datetime.fromtimestamp(float(t), tz=dt.timezone.utc)


def _mid(r: EvaluationResult) -> dt.datetime | None:
    w = r.meta.window
    if w.start is None or w.end is None:
        return None
    if w.cumulative:
        return _time(w.end)
    return _time((w.start + w.end) / 2)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def make_plots(results: Sequence[EvaluationResult], overall: EvaluationResult, out_dir: str | Path, max_gap: float | None = None) -> dict[str, Path]:
    """Write the PNGs into ``out_dir``; returns {plot name: path} for those that had data."""
    plt = _plt()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}
    results = list(results) or [overall]
    meta = overall.meta
    roles = overall.roles

    # 1. accuracy and gap over time, CI bands
    fig, (ax_acc, ax_gap) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    any_point = False
    for role in roles:
        xs, acc, alo, ahi, est, gap, glo, ghi, bad = [], [], [], [], [], [], [], [], []
        for r in results:
            x = _mid(r)
            if x is None:
                continue
            a, g, e = (_role_figure(r, role, k) for k in ("accuracy", "gap", "estimated_accuracy"))
            xs.append(x)
            acc.append(_nan(a.value) if a else math.nan)
            alo.append(_nan(a.low) if a else math.nan)
            ahi.append(_nan(a.high) if a else math.nan)
            est.append(_nan(e.value) if e else math.nan)
            bad.append(bool(e is not None and not e.valid))
            gap.append(_nan(g.value) if g else math.nan)
            glo.append(_nan(g.low) if g else math.nan)
            ghi.append(_nan(g.high) if g else math.nan)
        if not xs:
            continue
        any_point = True
        c = COLORS[role]
        model = meta.models.get(role)
        ax_acc.plot(xs, acc, "o-", color=c, label=f"{role} ({model}) production")
        ax_acc.fill_between(xs, alo, ahi, color=c, alpha=0.18)
        ax_acc.plot(xs, est, "x--", color=c, alpha=0.7, label=f"{role} label-free estimate")
        flagged = [(x, v) for x, v, b in zip(xs, est, bad) if b]
        if flagged:  # contradicted by the labels, or inputs outside the training range: not a valid figure
            ax_acc.plot([x for x, _ in flagged], [v for _, v in flagged], "X", color="red", ms=9, ls="none",
                        label=f"{role} estimate contradicted / unreliable")
        card = meta.cards.get(role)
        if card is not None and card.test_accuracy is not None:
            ax_acc.axhline(card.test_accuracy, color=c, ls=":", lw=1, label=f"{role} offline test accuracy")
        ax_gap.plot(xs, gap, "o-", color=c, label=f"{role} gap")
        ax_gap.fill_between(xs, glo, ghi, color=c, alpha=0.18)
    ax_gap.axhline(0, color="grey", lw=0.8)
    if max_gap is not None:
        ax_gap.axhline(max_gap, color="orange", ls="--", lw=1, label=f"alert threshold {max_gap:g}")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_title(f"Production accuracy ({100 * (1 - meta.alpha):.0f}% CI bands)")
    ax_gap.set_ylabel("offline − production")
    ax_gap.set_title("Train-to-production gap")
    ax_gap.set_xlabel("window (UTC)")
    for ax in (ax_acc, ax_gap):
        ax.grid(alpha=0.3)
        if any_point:
            ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    made["gap_over_time"] = _save(fig, out / PLOT_FILES["gap_over_time"], plt)

    # 2. confusion matrices (row-normalised colour, counts written in)
    classes = list(meta.classes)
    mats = [(role, overall.models[role].confusion.matrix) for role in roles]
    mats = [(r, m) for r, m in mats if m]
    if mats:
        fig, axes = plt.subplots(1, len(mats), figsize=(4.8 * len(mats), 4.4), squeeze=False)
        for ax, (role, m) in zip(axes[0], mats):
            m = np.asarray(m, dtype=float)
            rows = m.sum(axis=1, keepdims=True)
            norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            cols = classes + (["other"] if m.shape[1] > len(classes) else [])
            ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
            ax.set_yticks(range(len(classes)), classes, fontsize=8)
            for i in range(m.shape[0]):
                for j in range(m.shape[1]):
                    ax.text(j, i, f"{int(m[i, j])}", ha="center", va="center", fontsize=8, color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xlabel("predicted")
            ax.set_ylabel("human label")
            ax.set_title(f"{role}: {meta.models.get(role)}", fontsize=9)
        fig.tight_layout()
        made["confusion"] = _save(fig, out / PLOT_FILES["confusion"], plt)

    # 3. reliability diagram
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfect calibration")
    for role in roles:
        cal = overall.models[role].calibration
        if cal is None:
            continue
        pts = [(b.confidence, b.accuracy, b.n) for b in cal.bins if b.n]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[role], label=f"{role} (ECE {fmt_pct(cal.ece)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy on labelled frames")
    ax.set_title("Reliability diagram")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    made["reliability"] = _save(fig, out / PLOT_FILES["reliability"], plt)

    # 4. per-camera accuracy bars with CI whiskers
    cams = sorted({c for role in roles for c in overall.models[role].per_camera})
    if cams:
        fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(cams) + 2), 4))
        width = 0.8 / max(1, len(roles))
        for k, role in enumerate(roles):
            pc = overall.models[role].per_camera
            xs, vals, lo, hi = [], [], [], []
            for i, cam in enumerate(cams):
                e = pc.get(cam)
                if e is None or _missing(e.value):
                    continue
                xs.append(i + (k - (len(roles) - 1) / 2) * width)
                vals.append(e.value)
                lo.append(max(0.0, e.value - (e.value if _missing(e.low) else e.low)))
                hi.append(max(0.0, (e.value if _missing(e.high) else e.high) - e.value))
            ax.bar(xs, vals, width, yerr=[lo, hi], capsize=3, color=COLORS[role], alpha=0.8, label=role)
        ax.set_xticks(range(len(cams)), cams, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("production accuracy")
        ax.set_title("Accuracy per camera")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        made["per_camera"] = _save(fig, out / PLOT_FILES["per_camera"], plt)

    # 5. drift p-values over time (image statistics: the smallest of each camera's)
    series: dict[str, list[tuple[Any, float]]] = {}
    for r in results:
        x = _mid(r)
        if x is None:
            continue
        image_min: dict[str, float] = {}
        for t in r.drift.p_values():
            if t.test == "softmax":
                series.setdefault(f"softmax ({t.subject})", []).append((x, t.p))
            elif t.test == "class_distribution":
                series.setdefault("predicted classes", []).append((x, t.p))
            elif t.test == "training":
                key = f"vs training: {t.subject} {t.stat.split(':')[0] if t.stat else ''}".strip()
                prev = dict(series.get(key, [])).get(x)
                if prev is None:
                    series.setdefault(key, []).append((x, t.p))
                elif t.p < prev:
                    series[key][-1] = (x, t.p)
            else:
                image_min[t.subject] = min(t.p, image_min.get(t.subject, math.inf))
        for cam, p in image_min.items():
            series.setdefault(f"image stats {cam} (min)", []).append((x, p))
    if series:
        fig, ax = plt.subplots(figsize=(9, 3.8))
        styles = ["o-", "s--", "^-.", "v:", "D-", "x--", "*-."]
        for k, (name, pts) in enumerate(series.items()):
            ax.plot([p[0] for p in pts], [max(p[1], 1e-16) for p in pts], styles[k % len(styles)], ms=4, label=name)
        ax.axhline(meta.alpha, color="orange", ls="--", lw=1, label=f"alpha {meta.alpha:g}")
        ax.set_yscale("log")
        ax.set_ylabel("p-value (corrected)")
        ax.set_title("Drift tests (vs training, or vs the reference period)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.autofmt_xdate()
        fig.tight_layout()
        made["drift"] = _save(fig, out / PLOT_FILES["drift"], plt)
    return made


def _save(fig: Any, path: Path, plt: Any) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------
_TEMPLATE = r"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>shadowcam evaluation — {{ meta.models.incumbent }} vs {{ meta.models.shadow or "no shadow" }}</title>
<style>
 body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
 h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
 table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
 th{background:#f4f4f4} td.l,th.l{text-align:left} .decision{font-size:1.15em;padding:.7em 1em;border-radius:6px;margin:1em 0}
 .promote{background:#e6f4ea;border:1px solid #7cbf8e} .keep,.equivalent,.retire{background:#eef2f8;border:1px solid #8ea6c9}
 .need_more_labels{background:#fff6e0;border:1px solid #e0b85a} .alert{background:#fdecea;border:1px solid #e08a80;padding:.5em 1em;border-radius:6px;margin:.4em 0}
 .flag{color:#b3261e;font-weight:600} img{max-width:100%;border:1px solid #eee;margin:.5em 0} .muted{color:#777;font-size:.85em}
</style></head><body>
<h1>shadowcam evaluation</h1>
<p><b>incumbent</b> {{ meta.models.incumbent }} &nbsp; <b>shadow</b> {{ meta.models.shadow or "–" }}<br>
<span class="muted">frames {{ meta.window.start_iso }} → {{ meta.window.end_iso }} · runs {{ meta.runs|join(", ") }} ·
{{ "%.0f"|format(100 * meta.confidence_level) }}% intervals · evaluated {{ evaluated_iso }}</span></p>

{% if data.decision %}<div class="decision {{ data.decision.action }}"><b>Decision: {{ data.decision.action|replace("_", " ") }}</b>
{% if data.decision.more_labels %} — about {{ data.decision.more_labels }} more labelled frames{% endif %}<br>{{ data.decision.reason }}</div>{% endif %}
{% for a in alerts %}<div class="alert"><b>ALERT {{ a.kind }}</b>: {{ a.message }}</div>{% endfor %}

<h2>Summary</h2>
<table><tr><th class="l">model</th><th>labelled frames</th><th>production accuracy</th><th>offline test accuracy</th><th>gap (offline − prod)</th><th>label-free estimate</th><th>ECE</th>{% if has_cost %}<th>cost per 1,000 frames</th>{% endif %}</tr>
{% for role, m in models %}<tr><td class="l">{{ role }}<br><span class="muted">{{ m.model }}</span></td><td>{{ m.n_labeled }}</td><td>{{ est(m.accuracy) }}</td>
<td>{{ pct(m.offline.test_accuracy) if m.offline else "–" }}{% if m.offline %} <span class="muted">(n={{ m.offline.test_size }})</span>{% endif %}</td>
<td>{{ est(m.gap, signed=True) }}</td><td>{% if m.estimated_accuracy %}{% if m.estimated_accuracy.valid %}{{ pct(m.estimated_accuracy.value) }}{% else %}<s>{{ pct(m.estimated_accuracy.value) }}</s> <span class="flag">{% if m.estimated_accuracy.contradicted_by_labels %}contradicted by labels{% else %}unreliable{% endif %}</span>{% endif %}{% else %}–{% endif %}</td><td>{{ pct(m.calibration.ece) if m.calibration else "–" }}</td>{% if has_cost %}<td>{{ money_est(m.cost) }}</td>{% endif %}</tr>{% endfor %}
</table>
<p class="muted">{% for role, m in models %}{{ role }}: accuracy {{ m.accuracy.method if m.accuracy else "–" }}{% if m.accuracy %} ({{ m.accuracy.n }} labels, worth {{ "%.0f"|format(m.accuracy.n_eff) }} uniformly sampled ones){% endif %}{% if m.accuracy_classical %}; classical on the same labels {{ pct(m.accuracy_classical.value) }} [{{ pct(m.accuracy_classical.low) }}, {{ pct(m.accuracy_classical.high) }}]{% endif %}, label-free estimate {{ m.estimated_accuracy.method if m.estimated_accuracy else "–" }}{% if not loop.last %}; {% endif %}{% endfor %}</p>
{% if images.gap_over_time %}<img alt="gap over time" src="data:image/png;base64,{{ images.gap_over_time }}">{% endif %}

<h2>Champion / challenger decision</h2>
{% if data.decision %}<p><b>{{ data.decision.action|replace("_", " ") }}</b>: {{ data.decision.reason }}</p>
{% if data.decision.low is not none and data.decision.on == "cost" %}<p class="muted">decided on cost: champion − challenger cost per 1,000 frames (what the challenger saves): anytime-valid interval [{{ money(data.decision.low, none, 2, True) }}, {{ money(data.decision.high, none, 2, True) }}] {{ data.decision.unit }} (margin ±{{ "%g"|format(data.decision.delta) }} {{ data.decision.unit }}), {{ data.decision.labels_spent }} paired labels; {{ data.decision.method }}</p>
{% elif data.decision.low is not none %}<p class="muted">challenger − champion accuracy: anytime-valid interval [{{ pct(data.decision.low) }}, {{ pct(data.decision.high) }}] (margin ±{{ pct(data.decision.delta) }}), {{ data.decision.labels_spent }} paired labels; {{ data.decision.method }}</p>{% endif %}
{% else %}<p>No challenger in shadow.</p>{% endif %}

{% if has_cost %}<h2>Cost of errors</h2>
<p>Expected cost per 1,000 frames ({{ "%.0f"|format(100 * meta.confidence_level) }}% intervals); what drives it:</p>
{% for role, m in models %}{% if m.cost %}<p><b>{{ role }}</b> {{ money_est(m.cost) }} <span class="muted">{{ m.cost.method }}{% if m.cost.per_1k_classical %}; classical on the same labels {{ money_est(m.cost, classical=True) }}{% endif %}</span></p>
{% if m.cost.drivers %}<table><tr><th class="l">human label</th><th class="l">prediction</th><th>labelled frames</th><th>per 1,000 frames</th><th>share of the error cost</th></tr>
{% for c in m.cost.drivers %}<tr><td class="l">{{ c.true }}</td><td class="l">{{ c.predicted }}</td><td>{{ c.frames }}</td><td>{{ money(c.per_1k, m.cost.currency) }}</td><td>{{ pct(c.share) }}</td></tr>{% endfor %}
</table>{% else %}<p class="muted">No costly error among the labelled frames.</p>{% endif %}{% endif %}{% endfor %}{% endif %}

{% if data.baselines %}<h2>Baselines</h2>
<table><tr><th class="l">predictor</th><th>labelled frames</th><th>accuracy</th>{% if has_cost %}<th>cost per 1,000 frames</th>{% endif %}<th class="l">significantly better than every baseline?</th></tr>
{% for role, m in models %}<tr><td class="l">{{ role }} <span class="muted">{{ m.model }}</span></td><td>{{ m.n_labeled }}</td><td>{{ est(m.accuracy) }}</td>{% if has_cost %}<td>{{ money_est(m.cost) }}</td>{% endif %}
<td class="l">{% if m.vs_baseline %}{% if m.vs_baseline.significantly_better %}yes{% else %}<span class="flag">no</span>{% endif %} <span class="muted">vs {{ m.vs_baseline.baseline }}: {{ guard(m.vs_baseline, m) }}</span>{% else %}–{% endif %}</td></tr>{% endfor %}
{% for b in data.baselines %}<tr><td class="l">baseline: {{ b.name }}<br><span class="muted">{{ b.description }}</span></td><td>{{ b.n_labeled }}</td><td>{{ est(b.accuracy) }}</td>{% if has_cost %}<td>{{ money_est(b.cost) }}</td>{% endif %}<td></td></tr>{% endfor %}
</table>{% endif %}

{% if data.serving_cost %}{% set sc = data.serving_cost %}<h2>Serving cost</h2>
<p>At {{ money(sc.price_per_device_hour, sc.currency) }} per device-hour{% if sc.device %} ({{ sc.device }}){% endif %}, over {{ sc.runs }} run(s):</p>
<table><tr><th class="l">model</th><th>per million predictions</th><th>at full utilisation</th><th>predictions per busy second</th><th>device busy</th><th>predictions</th></tr>
{% for role in ("incumbent", "shadow") %}{% set r = sc.get(role) %}{% if r %}<tr><td class="l">{{ role }} <span class="muted">{{ r.model or "" }}</span></td><td>{{ money(r.usd_per_million, sc.currency) }}</td><td>{{ money(r.usd_per_million_at_capacity, sc.currency) }}</td><td>{{ num0(r.throughput_per_busy_s) }}</td><td>{{ pct(r.utilisation, 0) }}</td><td>{{ num0(r.predictions) }}</td></tr>{% endif %}{% endfor %}
</table>
{% if sc.shadow_extra_usd_per_million is not none %}<p>Running the shadow adds <b>{{ money(sc.shadow_extra_usd_per_million, sc.currency) }}</b> per million served predictions.</p>{% endif %}{% endif %}

<h2>Champion / challenger (paired, fixed-sample report)</h2>
{% if data.paired %}<table>
{% for k, v in paired_rows %}<tr><th class="l">{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}
</table>{% else %}<p>No paired comparison (needs labelled frames with both predictions).</p>{% endif %}

{% if windows|length > 1 %}<h2>Windows</h2>
<table><tr><th>#</th><th class="l">from (UTC)</th><th>frames</th><th>labels</th>{% for role, m in models %}<th>{{ role }} accuracy</th><th>{{ role }} gap</th>{% endfor %}<th>paired p</th><th>decision</th></tr>
{% for w in windows %}<tr><td>{{ w.meta.window.index }}</td><td class="l">{{ w.meta.window.start_iso }}</td><td>{{ w.counts.frames }}</td><td>{{ w.counts.frames_with_truth }}</td>
{% for role, m in models %}<td>{{ est(role_figure(w, role, "accuracy")) }}</td><td>{{ est(role_figure(w, role, "gap"), signed=True) }}</td>{% endfor %}
<td>{{ p(w.paired.p_value if w.paired else none) }}</td><td>{{ (w.decision.action if w.decision else "–")|replace("_", " ") }}</td></tr>{% endfor %}
</table>{% endif %}

<h2>Per-class recall</h2>
<table><tr><th class="l">class</th>{% for role, m in models %}<th>{{ role }}</th>{% endfor %}{% for role, m in models %}<th>{{ role }} offline</th>{% endfor %}</tr>
{% for c in meta.classes %}<tr><td class="l">{{ c }}</td>{% for role, m in models %}{% set e = m.per_class_recall.get(c) %}<td>{{ est(e) }} <span class="muted">n={{ e.n if e else 0 }}</span></td>{% endfor %}
{% for role, m in models %}<td>{{ pct(m.offline.per_class_accuracy.get(c) if m.offline and m.offline.per_class_accuracy else none) }}</td>{% endfor %}</tr>{% endfor %}
</table>

<h2>Per camera</h2>
<table><tr><th class="l">camera</th>{% for role, m in models %}<th>{{ role }} accuracy</th>{% endfor %}</tr>
{% for cam in cameras %}<tr><td class="l">{{ cam }}</td>{% for role, m in models %}{% set e = m.per_camera.get(cam) %}<td>{{ est(e) }} <span class="muted">n={{ e.n if e else 0 }}</span></td>{% endfor %}</tr>{% endfor %}
</table>
{% if images.per_camera %}<img alt="per-camera accuracy" src="data:image/png;base64,{{ images.per_camera }}">{% endif %}

<h2>Confusion matrices</h2>
{% for role, m in models %}{% if m.confusion %}<p><b>{{ role }}</b> (rows: human label, columns: prediction)</p>
<table><tr><th></th>{% for c in confusion_cols(m) %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in m.confusion.matrix %}<tr><th class="l">{{ meta.classes[loop.index0] }}</th>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}{% endfor %}
{% if images.confusion %}<img alt="confusion matrices" src="data:image/png;base64,{{ images.confusion }}">{% endif %}

<h2>Calibration</h2>
{% if images.reliability %}<img alt="reliability diagram" style="max-width:480px" src="data:image/png;base64,{{ images.reliability }}">{% endif %}

{% if data.drift.training %}<h2>Drift against training ({{ data.drift.training.reference }})</h2>
<p>{% if data.drift.training.drifted %}<span class="flag">drifted</span>: {{ data.drift.training.findings|join("; ") }}{% else %}No shift worth acting on: the frames lie inside the training range.{% endif %}</p>
<table><tr><th class="l">feature</th><th class="l">where</th><th>beyond the training range</th><th>expected</th><th>effective n</th><th>p (corrected)</th></tr>
{% for t in data.drift.training.tails %}<tr><td class="l">{{ t.feature }} ({{ "below 1%" if t.direction == "low" else "above 99%" }})</td><td class="l">{{ t.scope }}</td><td>{{ pct(t.share) }}</td><td>{{ pct(t.expected) }}</td><td>{{ "%.0f"|format(t.n_eff) }}</td><td>{{ p(data.drift.training.corrected(t.p_value)) }}</td></tr>{% endfor %}
{% for c in data.drift.training.class_mix %}<tr><td class="l">predicted-class mix (total variation)</td><td class="l">{{ c.scope }}</td><td>{{ pct(c.tv_distance) }}</td><td>–</td><td>{{ "%.0f"|format(c.n_eff) }}</td><td>{{ p(data.drift.training.corrected(c.p_value)) }}</td></tr>{% endfor %}
</table>{% endif %}
{% if data.drift.baseline != "training" %}<h2>Drift (vs reference {{ meta.reference.start_iso }} → {{ meta.reference.end_iso }})</h2>
{% if data.drift.skipped %}<p>{{ data.drift.skipped }}</p>{% endif %}
<table><tr><th class="l">test</th><th>p-value (corrected)</th><th>drift</th></tr>
{% for name, pv in drift_rows %}<tr><td class="l">{{ name }}</td><td>{{ p(pv) }}</td><td>{% if pv is not none and pv < meta.alpha %}<span class="flag">yes</span>{% else %}no{% endif %}</td></tr>{% endfor %}
</table>
{% endif %}
{% if images.drift %}<img alt="drift over time" src="data:image/png;base64,{{ images.drift }}">{% endif %}

{% if gallery_html %}<h2>Error gallery</h2>
{{ gallery_html|safe }}{% endif %}

<h2>Annotators</h2>
{% if data.agreement %}<table>{% for k, v in data.agreement.to_dict().items() %}<tr><th class="l">{{ k }}</th><td>{{ num(v) }}</td></tr>{% endfor %}</table>
{% else %}<p>No frame has two labels yet.</p>{% endif %}

<h2>Counts</h2>
<table>{% for k, v in count_rows %}<tr><th class="l">{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>

{% if meta.notes %}<h2>Notes</h2><ul>{% for n in meta.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
<h2>Methods</h2><table>{% for k, v in meta.methods.items() %}<tr><th class="l">{{ k }}</th><td class="l">{% if v is mapping %}{% for r, t in v.items() %}{{ r }}: {{ t }}{% if not loop.last %}<br>{% endif %}{% endfor %}{% else %}{{ v }}{% endif %}</td></tr>{% endfor %}</table>
<p class="muted">Generated by shadowcam. The full figures are in evaluation.json.</p>
</body></html>
"""



def _num(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def drift_rows(result: EvaluationResult) -> list[tuple[str, float | None]]:
    """(test name, corrected p-value) for every drift test of a result; None for a test skipped for too few frames."""
    rows: list[tuple[str, float | None]] = []
    for t in result.drift.p_values(include_skipped=True):
        if t.test == "softmax":
            rows.append((f"softmax outputs ({t.subject})", t.p))
        elif t.test == "class_distribution":
            rows.append(("predicted-class distribution (incumbent)", t.p))
        elif t.test == "training":
            if t.large:  # tests of drift against training count only when the shift is large enough to act on
                rows.append((f"vs training, {t.subject}: {t.stat}", t.p))
        else:
            rows.append((f"{t.subject}: {t.stat}", t.p))
    return rows


def fmt_money(x: float | None, currency: str | None = None, digits: int = 2, signed: bool = False) -> str:
    """``1,234.50 EUR`` (``–`` when missing)."""
    if _missing(x):
        return "–"
    v = f"{float(x):{'+' if signed else ''},.{digits}f}"
    return f"{v} {currency}" if currency else v


def fmt_cost(c: Any, classical: bool = False) -> str:
    """``12.30 EUR [8.10, 17.90]`` per 1,000 frames from :class:`~pipeline.evaluation.result.CostFigures`."""
    e = None if c is None else (c.per_1k_classical if classical else c.per_1k)
    if e is None or _missing(e.value):
        return "–"
    if _missing(e.low) or _missing(e.high):
        return fmt_money(e.value, c.currency)
    return f"{fmt_money(e.value, c.currency)} [{e.low:,.2f}, {e.high:,.2f}]"


def fmt_guard(vs: Any, m: Any = None) -> str:
    """The baseline guard in words: the model's margin over the baseline and its one-sided lower bound."""
    if vs is None:
        return "–"
    level = f"{100 * (1 - vs.alpha):.0f}%"
    if vs.on == "cost":
        cur = m.cost.currency if m is not None and m.cost is not None else ""
        v = vs.diff.value
        what = f"saves {fmt_money(v, cur)}" if v >= 0 else f"costs {fmt_money(-v, cur)} more"
        return f"{what} per 1,000 frames; one-sided {level} lower bound of the saving {fmt_money(vs.low, cur, signed=True)} (n={vs.n})"
    return f"{100 * vs.diff.value:+.1f} points, one-sided {level} lower bound {100 * vs.low:+.1f} (n={vs.n})"


def _num0(x: Any) -> str:
    return "–" if _missing(x) else f"{float(x):,.0f}"


def render_html(results: Sequence[EvaluationResult], overall: EvaluationResult, images: dict[str, Path] | None = None,
                alerts: Sequence[Alert] = (), gallery_html: str | None = None) -> str:
    """The whole report as one HTML string (PNG files in ``images`` are inlined as base64).

    ``gallery_html``: an HTML fragment placed under the heading "Error gallery" (trusted: it is inserted as is;
    :func:`pipeline.evaluation.gallery.gallery_html` escapes what it takes from the data)."""
    meta = overall.meta
    models = [(r, overall.models[r]) for r in overall.roles]
    b64 = {k: base64.b64encode(Path(p).read_bytes()).decode("ascii") for k, p in (images or {}).items()}
    paired_rows = []
    if overall.paired is not None:
        paired = overall.paired.to_dict()
        paired_rows = [
            ("frames labelled with both predictions", paired["n"]),
            ("incumbent right, shadow wrong (n10)", paired["n10"]),
            ("incumbent wrong, shadow right (n01)", paired["n01"]),
            ("McNemar exact p-value", fmt_p(paired["p_value"])),
            ("accuracy difference (shadow − incumbent)", fmt_est(overall.paired.diff, signed=True)),
        ]
        for k, v in paired.items():
            if k not in ("n", "n10", "n01", "p_value", "diff") and not isinstance(v, (dict, list)):
                paired_rows.append((k, _num(v)))
    c = overall.counts
    count_rows = [
        ("frames", c.frames), ("cameras", c.cameras),
        *[(f"predictions ({r})", c.predictions[r]) for r in ROLES],
        *[(f"degraded predictions ({r}, excluded)", c.degraded[r]) for r in ROLES],
        ("shadow coverage", fmt_pct(c.shadow_coverage)), ("sampled frames", c.samples), ("labels", c.labels),
        ("labelled frames", c.labeled_frames), ("frames with a usable label", c.frames_with_truth),
        ("double-labelled frames", c.double_labeled_frames),
        *[(f"excluded: {k}", v) for k, v in c.excluded.to_dict().items()],
        ("labels without a sample row (weight 1)", c.labels_without_sample), ("reference-period frames", c.reference_frames),
    ]
    cameras = sorted({cam for _, m in models for cam in m.per_camera})

    def confusion_cols(m: Any) -> list[str]:
        ncol = len(m.confusion.matrix[0]) if m.confusion.matrix else 0
        return list(meta.classes) + (["other"] if ncol > len(meta.classes) else [])

    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined)
    tpl = env.from_string(_TEMPLATE)
    return tpl.render(
        data=overall, meta=meta, models=models, images=b64, windows=list(results), paired_rows=paired_rows, count_rows=count_rows,
        cameras=cameras, drift_rows=drift_rows(overall), alerts=list(alerts) or list(overall.alerts),
        evaluated_iso=dt.datetime.fromtimestamp(meta.evaluated_at, tz=dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ"),
        est=fmt_est, pct=fmt_pct, p=fmt_p, num=_num, role_figure=_role_figure, confusion_cols=confusion_cols,
        has_cost=any(m.cost is not None for _, m in models), money=fmt_money, money_est=fmt_cost, guard=fmt_guard, num0=_num0,
        gallery_html=gallery_html,
    )


def result_json(results: Sequence[EvaluationResult], overall: EvaluationResult, alerts: Sequence[Alert] = ()) -> dict:
    """The JSON document written as ``evaluation.json`` / ``--json``: overall result, windows, alerts."""
    return {
        "overall": overall.to_dict(),
        "windows": [r.to_dict() for r in results],
        "alerts": [a.to_dict() for a in alerts],
    }


def write_report(results: Sequence[EvaluationResult], overall: EvaluationResult, out_dir: str | Path, alerts: Sequence[Alert] = (),
                 max_gap: float | None = None, gallery_html: str | None = None) -> dict[str, Path]:
    """PNGs + ``evaluation.json`` + ``report.html`` into ``out_dir``; returns {name: path}. ``gallery_html``: the error
    gallery's HTML (:func:`pipeline.evaluation.gallery.gallery_html`, its images relative to ``out_dir``), shown under
    "Error gallery"."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = make_plots(results, overall, out, max_gap=max_gap)
    js = out / "evaluation.json"
    js.write_text(json.dumps(result_json(results, overall, alerts), indent=2, allow_nan=False))
    html = out / "report.html"
    html.write_text(render_html(results, overall, paths, alerts, gallery_html=gallery_html), encoding="utf-8")
    return {**paths, "json": js, "html": html}


# --------------------------------------------------------------------------------------------------
# terminal summary
# --------------------------------------------------------------------------------------------------
def format_summary(overall: EvaluationResult, results: Sequence[EvaluationResult] = (), alerts: Sequence[Alert] = ()) -> str:
    """The readable table ``shadowcam evaluate`` prints."""
    meta = overall.meta
    c = overall.counts
    level = f"{100 * meta.confidence_level:.0f}%"
    lines = [
        f"shadowcam evaluation  {meta.window.start_iso} -> {meta.window.end_iso}  ({len(meta.runs)} run(s), {level} CIs)",
        f"frames {c.frames}  cameras {c.cameras}  labels {c.labels} on {c.labeled_frames} frames  "
        f"usable {c.frames_with_truth}  excluded {c.excluded.total} (unsure {c.excluded.unsure}, tie {c.excluded.tie})  "
        f"shadow coverage {fmt_pct(c.shadow_coverage)}",
        "",
    ]
    header = ("role", "model", "labels", f"prod accuracy [{level} CI]", "offline", f"gap [{level} CI]", "label-free est.", "degraded")
    rows = [header]
    for role in overall.roles:
        m = overall.models[role]
        rows.append((
            role, str(m.model), str(m.n_labeled), fmt_est(m.accuracy),
            fmt_pct(m.offline.test_accuracy if m.offline else None), fmt_est(m.gap, signed=True),
            fmt_pct(m.estimated_accuracy.value if m.estimated_accuracy else None), str(c.degraded.get(role, 0)),
        ))
    if any(overall.models[r].cost is not None for r in overall.roles):
        rows[0] = (*header, "cost / 1,000 frames")
        for k, role in enumerate(overall.roles, start=1):
            rows[k] = (*rows[k], fmt_cost(overall.models[role].cost))
    for b in overall.baselines:
        row = (f"baseline {b.name}", b.description[:40], str(b.n_labeled), fmt_est(b.accuracy), "–", "–", "–", "–")
        rows.append((*row, fmt_cost(b.cost)) if len(rows[0]) > len(header) else row)
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        lines.append("  ".join(str(v).ljust(widths[i]) for i, v in enumerate(r)))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for role in overall.roles:
        m = overall.models[role]
        if m.cost is not None and m.cost.drivers:
            lines.append(f"{role} cost drivers: " + "; ".join(
                f"{c.true} -> {c.predicted} {fmt_money(c.per_1k, m.cost.currency)}/1k ({fmt_pct(c.share, 0)})" for c in m.cost.drivers[:3]))
        vs = m.vs_baseline
        if vs is not None:
            verdict = "significantly better than every baseline" if vs.significantly_better else "NOT significantly better than the baselines"
            lines.append(f"{role} vs baselines: {verdict} (closest: {vs.baseline}, {fmt_guard(vs, m)})")
    sc = overall.serving_cost
    if sc:
        cur = sc.get("currency")
        parts = [f"{r} {fmt_money((sc.get(r) or {}).get('usd_per_million'), cur)}" for r in ROLES if sc.get(r)]
        extra = sc.get("shadow_extra_usd_per_million")
        lines.append(f"serving cost per million predictions at {fmt_money(sc.get('price_per_device_hour'), cur)}/device-hour: "
                     + ", ".join(parts) + (f"; the shadow adds {fmt_money(extra, cur)} per million served" if extra is not None else ""))
    if any(overall.models[r].cost is not None or overall.models[r].vs_baseline is not None for r in overall.roles) or sc:
        lines.append("")
    paired = overall.paired
    if paired is not None:
        lines.append(
            f"paired test: n={paired.n}  incumbent-only right {paired.n10}  shadow-only right {paired.n01}  "
            f"McNemar p={fmt_p(paired.p_value)}  shadow − incumbent {fmt_est(paired.diff, signed=True)}"
        )
    dec = overall.decision
    if dec is not None:
        more = f" (~{dec.more_labels} more labelled frames)" if dec.more_labels else ""
        lines.append(f"DECISION: {dec.action.replace('_', ' ').upper()}{more}: {dec.reason}")
    rows_d = drift_rows(overall)
    flagged = [f"{n} p={fmt_p(p)}" for n, p in rows_d if p is not None and p < meta.alpha]
    if overall.drift.skipped:
        lines.append(f"drift: {overall.drift.skipped}")
    elif rows_d:
        lines.append(f"drift ({len(rows_d)} tests vs reference): " + ("; ".join(flagged) if flagged else "none detected"))
    if len(results) > 1:
        lines.append("")
        lines.append(f"{len(results)} windows:")
        for r in results:
            parts = [f"  #{r.meta.window.index:<3} {r.meta.window.start_iso}  labels {r.counts.frames_with_truth:<5}"]
            for role in ROLES:
                if r.models.get(role) is not None:
                    parts.append(f"{role} {fmt_est(_role_figure(r, role, 'accuracy'))} gap {fmt_est(_role_figure(r, role, 'gap'), signed=True)}")
            lines.append("  ".join(parts))
    for a in alerts:
        lines.append(f"ALERT {a.kind}: {a.message}")
    for n in meta.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
