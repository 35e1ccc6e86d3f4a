"""``shadowcam demo``: the whole story on synthetic warehouse data, in minutes, on a laptop.

1. synthesize a clean training set, train the incumbent, register it as ``champion`` (its fp16 export
   goes in as the first ``challenger``: "can we serve the half-precision model?");
2. stream a production camera feed whose conditions change over simulated time (day → night shift →
   night + motion blur at a higher belt speed + a new packaging type) through the shadow runtime;
3. the simulated annotator labels the sampled frames (ground truth from the generator);
4. evaluation windows log the train-to-production gap opening, with CIs, to MLflow;
5. scripted retraining on the original data + the labelled production frames → ``challenger``;
6. the challenger runs in shadow on fresh production frames; the evaluator's paired test decides,
   and ``promote`` moves the aliases only if it says so;
7. a closing summary table, plus where to look next.

Every number in the summary is measured on the way; nothing is built in. Because the generator knows
the truth of *every* frame, the demo also prints the true production accuracy and true gap next to the
estimates from the sampled labels, so the intervals can be checked against the truth.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from apps.config import DemoConfig
from models.data import list_source
from models.retrain import retrain
from models.synthetic import generate_dataset, write_stream
from models.train import make_config, train
from pipeline import tracking
from pipeline.batching import INTERPOLATIONS, resize_into
from pipeline.config import AlertConfig, RunConfig
from pipeline.evaluation import alerts as alerts_mod
from pipeline.evaluation import gallery
from pipeline.evaluation import report
from pipeline.evaluation.evaluator import EvalConfig, Evaluator
from pipeline.evaluation.result import EvaluationResult
from pipeline.evaluation.ppi import wilson_labels_for_half_width
from pipeline.evaluation.stats import wilson_interval
from pipeline.labeling.simulate import normalize_ref, simulate_labels
from pipeline.runner import Runner
from pipeline.runtime import OnnxClassifier
from pipeline.store import TRAINING_PREFIX, PredictionStore, samples
from pipeline.types import DataError

log = logging.getLogger("shadowcam.demo")

SHIFTED = ["night:2", "motion_blur:2", "new_packaging"]
# the demo's checks: measured, and each one can fail (tests/apps/test_demo_checks.py shows how)
CHECK_GAP_CI = "stream1: gap CI contains the true gap"
CHECK_ENDS_BELOW = "stream1: incumbent ends >= 15 points below offline"
CHECK_FP16 = "stream1: the fp16 shadow is judged equivalent"
CHECK_CONTRADICTED = "stream1: the label-free estimate is flagged as contradicted in the last windows"
CHECK_DRIFT_FIRST = "stream2: drifted from training in its first window"
CHECK_RETRAINED = "stream2: the retrained challenger's gap is at most half the champion's on the same frames"
CHECK_PROMOTE = "stream2: the anytime-valid decision is promote"
CHECK_BASELINE = ("stream1: in the night + blur windows the baseline alert fires if, and only if, the incumbent is "
                  "not significantly better than the best baseline")


def gap_halved(champion_gap: float | None, challenger_gap: float | None) -> bool | None:
    """Retraining worked: the challenger's own train-to-production gap (its offline test accuracy - its production
    accuracy) is at most half the champion's gap on the same frames. None when a gap is missing. A model that was
    not retrained has the champion's gap (or worse) and fails: g <= g / 2 only for g <= 0."""
    if champion_gap is None or challenger_gap is None:
        return None
    return bool(challenger_gap <= champion_gap / 2)


@dataclass
class DemoResult:
    workdir: str
    tracking_uri: str
    timings_s: dict[str, float] = field(default_factory=dict)
    models: dict[str, dict] = field(default_factory=dict)  # per model version: offline, production, true, gap
    windows: list[dict] = field(default_factory=list)  # stream 1: per window accuracy & gap of the incumbent
    decision: dict | None = None
    paired: dict | None = None  # the paired champion/challenger test on stream 2
    promoted: dict | None = None
    labels_used: dict[str, int] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    decisions: dict[str, dict] = field(default_factory=dict)  # per stream: the anytime-valid decision
    stream2_rounds: int = 0  # rounds of stream 2 streamed and labelled until the decision was made
    drift: dict[str, list] = field(default_factory=dict)  # per stream: each window's drift against training
    serving_cost: dict[str, dict] = field(default_factory=dict)  # per stream: pipeline.serving_cost over its runs
    baselines: dict[str, list] = field(default_factory=dict)  # per stream: the baselines scored on the same labels


class _Steps:
    """Numbered step headers and timings (the demo's progress, next to the per-step progress bars)."""

    def __init__(self, total: int, result: DemoResult):
        self.total, self.i, self.result = total, 0, result
        self.t0 = time.perf_counter()
        self._name: str | None = None
        self._start = 0.0

    def __call__(self, name: str, text: str) -> None:
        self.done()
        self.i += 1
        self._name, self._start = name, time.perf_counter()
        print(f"\n[{self.i}/{self.total}] {text}", flush=True)

    def done(self) -> None:
        if self._name:
            dt = time.perf_counter() - self._start
            self.result.timings_s[self._name] = round(dt, 1)
            print(f"      ({dt:.0f} s)", flush=True)
            self._name = None


def _true_accuracy(store, run_id: str, manifest: Path) -> dict[str, dict[str, float]]:
    """Accuracy of each role on EVERY frame of a run, from the generator's labels (the truth the
    sampled labels estimate). Returns {role: {"accuracy", "n"}} plus per phase."""
    truth, phase = {}, {}
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            ref = normalize_ref(row["source_ref"])
            truth[ref], phase[ref] = row["label"], row.get("shift") or "clean"
    acc: dict[str, dict[str, list[int]]] = {}
    for p in store.run_predictions(run_id):
        ref = normalize_ref(p.source_ref)
        if ref not in truth or p.degraded:
            continue
        for key in ("all", phase[ref]):
            acc.setdefault(p.role, {}).setdefault(key, []).append(int(p.label == truth[ref]))
    return {role: {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in d.items()} for role, d in acc.items()}


def offline_accuracy(model_path: str | Path, manifest: str | Path, batch_size: int = 128) -> dict[str, Any]:
    """Accuracy of an ONNX model file on labelled images, through the same runtime as production, with a
    Wilson 95% interval (which assumes independent images: for a clip, whose consecutive frames show the same
    parcel, it is too narrow).

    ``manifest``: any data source :func:`models.data.list_source` reads (a manifest CSV, e.g. a labelled clip
    from :func:`models.synthetic.write_stream` with ``fmt="folder"``, or a folder with ``manifest.csv``).
    """


    listing = list_source(manifest)
    samples = listing.samples
    clf = OnnxClassifier(model_path, warmup_runs=0)
    names = clf.class_names
    interp = INTERPOLATIONS[clf.card.resize_interpolation.lower()]
    h, w = clf.input_size
    correct = 0
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        batch = np.empty((len(chunk), h, w, 3), np.uint8)
        for j, s in enumerate(chunk):  # the serving path's decode and resize (the card's interpolation)
            im = cv2.imread(str(s.path), cv2.IMREAD_COLOR)
            if im is None:
                raise DataError(f"{listing.source}: cannot read {s.path}")
            resize_into(im, batch[j], interp)
        pred = clf.predict(batch).argmax(1)
        correct += sum(names[k] == s.label for k, s in zip(pred, chunk))
    low, high = wilson_interval(correct, len(samples))
    return {"accuracy": correct / len(samples), "low": low, "high": high, "n": len(samples)}


def costs_path(cfg: DemoConfig) -> Path | None:
    """The demo's cost matrix file (a relative path is read from the repository root)."""
    if not cfg.costs:
        return None
    path = Path(cfg.costs)
    path = path if path.is_absolute() else Path(__file__).resolve().parents[1] / path
    if not path.is_file():
        raise DataError(f"demo costs: {path} not found (DemoConfig.costs: a cost matrix YAML, or None for no costs)")
    return path


def _eval_config(cfg: DemoConfig, run_ids: list[str]) -> EvalConfig:
    costs = costs_path(cfg)
    return EvalConfig(run_ids=run_ids, workdir=str(cfg.workdir), costs=str(costs) if costs else None,
                      price_per_device_hour=cfg.price_per_device_hour)


def _evaluate(store: PredictionStore, run_ids: str | list[str], cfg: DemoConfig, name: str, window_s: float | None,
              first_run_only_windows: bool = False, gallery_model: str | Path | None = None,
              ) -> tuple[EvaluationResult, list[EvaluationResult], str]:
    run_ids = [run_ids] if isinstance(run_ids, str) else list(run_ids)
    ev = Evaluator(_eval_config(cfg, run_ids))
    overall = ev.evaluate(store)
    win_ev = Evaluator(_eval_config(cfg, run_ids[:1])) if first_run_only_windows else ev
    windows = win_ev.evaluate_windows(store, window_s) if window_s else []
    alert_cfg = AlertConfig()
    fired = alerts_mod.dispatch(windows[-1] if windows else overall, alert_cfg, workdir=cfg.workdir)
    if windows:  # the alerts belong to the newest window (as `shadowcam evaluate` records them)
        windows[-1] = windows[-1].with_alerts(fired)
    else:
        overall = overall.with_alerts(fired)
    out = cfg.workdir / "reports" / name
    report_kwargs = {}
    if gallery_model is not None and cfg.gallery:
        # the most confident errors per confused class pair, each with the deployed model's saliency overlay
        items = gallery.build_error_gallery(store, run_ids, gallery_model, out / "gallery", role="incumbent",
                                            workdir=cfg.workdir)
        report_kwargs["gallery_html"] = gallery.gallery_html(items, relative_to=out)
        print(f"error gallery: {len(items)} frames with overlays in {out / 'gallery'}")
    tracking.log_evaluation(windows or [overall], overall, workdir=cfg.workdir, run_name=f"demo: {name}", artifacts_dir=out,
                            alerts=fired, max_gap=alert_cfg.max_gap, write_report=report.write_report,
                            report_kwargs=report_kwargs)
    print(report.format_summary(overall, windows, fired))
    return overall, windows, str(out / "report.html")


def _role_row(result: EvaluationResult, role: str) -> dict:
    m = result.models.get(role)
    if m is None:
        return {"model": None, "offline_accuracy": None, "prod_accuracy": None, "prod_ci": [None, None], "gap": None,
                "gap_ci": [None, None], "gap_cs": [None, None], "estimated_accuracy": None, "estimate_contradicted": None,
                "estimate_unreliable": None,
                "n_labeled": None, "estimator": None, "n_eff": None, "uniform_wilson_labels": None,
                "cost_per_1k": None, "cost_ci": [None, None], "cost_currency": None, "cost_drivers": [], "vs_baseline": None}
    acc, gap, est = m.accuracy, m.gap, m.estimated_accuracy
    return {
        "model": m.model,
        "offline_accuracy": m.offline.test_accuracy if m.offline else None,
        "prod_accuracy": acc.value if acc else None, "prod_ci": [acc.low, acc.high] if acc else [None, None],
        "gap": gap.value if gap else None, "gap_ci": [gap.low, gap.high] if gap else [None, None],
        "gap_cs": [m.gap_cs.low, m.gap_cs.high] if m.gap_cs else [None, None],  # anytime-valid
        "estimated_accuracy": est.value if est else None,
        "estimate_contradicted": est.contradicted_by_labels if est else None,
        "estimate_unreliable": est.unreliable if est else None,
        "n_labeled": m.n_labeled,
        # issue 12: expected cost of errors per 1,000 frames (configs/costs.example.yaml) and the baseline guard
        "cost_per_1k": m.cost.per_1k.value if m.cost else None,
        "cost_ci": [m.cost.per_1k.low, m.cost.per_1k.high] if m.cost else [None, None],
        "cost_currency": m.cost.currency if m.cost else None,
        "cost_drivers": [f"{d.true} -> {d.predicted}" for d in m.cost.drivers[:3]] if m.cost else [],
        "vs_baseline": (None if m.vs_baseline is None else
                        {"baseline": m.vs_baseline.baseline, "on": m.vs_baseline.on, "diff": m.vs_baseline.diff.value,
                         "low": m.vs_baseline.low, "significantly_better": m.vs_baseline.significantly_better}),
        # what the labels bought: the estimator, its effective labels, and what uniform sampling + Wilson would have
        # needed for the same interval width
        "estimator": acc.method if acc else None,
        "n_eff": acc.n_eff if acc else None,
        "uniform_wilson_labels": _uniform_wilson_labels(acc),
    }


def _baseline_rows(result: EvaluationResult) -> list[dict]:
    """The baselines scored on the result's labels (accuracy and cost of errors), for the summary."""
    return [{"name": b.name, "description": b.description, "n_labeled": b.n_labeled,
             "accuracy": b.accuracy.value if b.accuracy else None,
             "accuracy_ci": [b.accuracy.low, b.accuracy.high] if b.accuracy else [None, None],
             "cost_per_1k": b.cost.per_1k.value if b.cost else None,
             "cost_ci": [b.cost.per_1k.low, b.cost.per_1k.high] if b.cost else [None, None]}
            for b in (result.baselines or ())]


def _uniform_wilson_labels(acc) -> int | None:
    """Labels uniform sampling + a Wilson interval needs for the width ``acc`` reached (at its accuracy)."""
    if acc is None or not (0 < (acc.high - acc.low) / 2 < 0.5) or acc.value != acc.value:
        return None
    return wilson_labels_for_half_width(acc.value, (acc.high - acc.low) / 2)


def _drift_row(w: EvaluationResult) -> dict:
    """One window's drift against training, for the summary."""
    td = w.drift.training
    return {"window": w.meta.window.index, "baseline": w.drift.baseline, "drifted": bool(td.drifted) if td else None,
            "largest_share_outside": td.largest_share_outside if td else None,
            "finding": td.findings[0] if td and td.findings else None}


def run_demo(cfg: DemoConfig) -> DemoResult:
    """Run the whole story; returns what it measured (also written to WORKDIR/demo_summary.json)."""

    wd = cfg.workdir = Path(cfg.workdir).resolve()
    if cfg.clean and wd.exists():
        for sub in ("data", "streams", "training", "retrain", "samples", "reports", "mlartifacts", ".cache", "metrics"):
            shutil.rmtree(wd / sub, ignore_errors=True)
        for f in ("shadowcam.db", "shadowcam.db-wal", "shadowcam.db-shm", "mlflow.db", "demo_summary.json"):
            (wd / f).unlink(missing_ok=True)
    wd.mkdir(parents=True, exist_ok=True)
    uri = tracking.configure(wd)
    res = DemoResult(workdir=str(wd), tracking_uri=uri)
    steps = _Steps(7, res)
    name, db = cfg.model_name, str(wd / "shadowcam.db")
    train_kw = {"epochs": cfg.epochs} if cfg.epochs else {}
    size_kw = {"img_size": cfg.img_size} if cfg.img_size else {}
    print(f"shadowcam demo ({'fast' if cfg.fast else 'full'}) in {wd}\nMLflow: {uri}")

    # 1 --------------------------------------------------------------------------------------------------
    steps("train", f"Synthesize {cfg.train_images} clean conveyor images, train the incumbent, register it as 'champion'")
    train_dir = wd / "data" / "train"
    # rendered at the camera's frame size, as production frames are: training resizes them to the model's input the
    # way the runtime resizes camera frames, so clean production frames look like training (images rendered at the
    # model size directly keep a pixel-level texture that downscaled camera frames lose, and drift against training
    # would flag even the day shift as "blurrier than training")
    generate_dataset(train_dir, cfg.train_images, seed=cfg.seed, img_size=cfg.frame_size, progress=cfg.progress)
    # an offline test clip from the same camera under the conditions production will drift into (night + motion
    # blur + new packaging), every frame labelled: each model's offline accuracy "on the same conditions"
    shifted_test = write_stream(wd / "data" / "test_shifted", cfg.shifted_test_frames, seed=cfg.seed + 303,
                                phases=[(1.0, SHIFTED)], size=cfg.frame_size, fps=cfg.fps, dwell=cfg.dwell, fmt="folder",
                                camera=cfg.camera, progress=cfg.progress, scene_seed=cfg.seed + 101)
    inc = train(make_config(data=[str(train_dir)], workdir=str(wd), seed=cfg.seed, register_name=name, alias="champion",
                            fp16=True, out=str(wd / "training" / "incumbent"), progress=cfg.progress, **train_kw, **size_kw))
    print(inc.summary())
    fp16_version = None
    if inc.onnx_fp16_path:
        fp16_version = tracking.register_onnx(inc.onnx_fp16_path, name, alias="challenger", run_id=inc.run_id or None)
        print(f"registered the fp16 export as {name} version {fp16_version} (alias 'challenger'): the first shadow")
    shadow_uri = f"models:/{name}@challenger" if fp16_version else None

    # 2 --------------------------------------------------------------------------------------------------
    n1 = cfg.stream1_frames
    phases = [(0.3, []), (0.3, [SHIFTED[0]]), (0.4, SHIFTED)]
    steps("stream1", f"Stream {n1} production frames (day -> night shift -> night + motion blur + new packaging) "
                     f"through `shadowcam run`, champion serving, challenger in shadow")
    m1 = write_stream(wd / "streams" / "shift1.mp4", n1, seed=cfg.seed + 101, phases=phases, size=cfg.frame_size,
                      fps=cfg.fps, dwell=cfg.dwell, camera=cfg.camera, progress=cfg.progress)
    run1 = _run(cfg, m1.with_suffix(".mp4"), f"models:/{name}@champion", shadow_uri, db, training=True)

    # 3 --------------------------------------------------------------------------------------------------
    steps("label1", "The simulated annotator labels the sampled frames (ground truth from the generator)")
    store = PredictionStore(db)
    try:
        n_lab = simulate_labels(store, [m1], error_rate=cfg.annotator_error, seed=cfg.seed)
        print(f"{n_lab} labels written")
        res.labels_used["stream1"] = n_lab
        n_train = sum(1 for r in store.table_rows(samples, where=samples.c.strategy.like(f"{TRAINING_PREFIX}%"))
                      if r["frame_id"].startswith(run1.run_id))
        if n_train:  # of which drawn for retraining only (the evaluator leaves them out)
            res.labels_used["stream1 training sample"] = n_train

        # 4 ----------------------------------------------------------------------------------------------
        steps("evaluate1", f"Evaluate in {cfg.window_s:.0f} s windows: the train-to-production gap opening, logged to MLflow")
        overall1, windows1, html1 = _evaluate(store, run1.run_id, cfg, "stream1", cfg.window_s,
                                              gallery_model=inc.onnx_path)
        truth1 = _true_accuracy(store, run1.run_id, m1)
    finally:
        store.close()
    res.reports["stream1"] = html1
    for w in windows1:
        row = _role_row(w, "incumbent")
        row["window"] = w.meta.window.index
        row["labels"] = w.counts.frames_with_truth
        # the baseline guard of this window, as `shadowcam evaluate` would alert on it
        row["baseline_alert"] = any(a.kind == "baseline" and a.subject == "incumbent"
                                    for a in alerts_mod.check_alerts(w, AlertConfig()))
        res.windows.append(row)
    res.serving_cost["stream1"] = overall1.serving_cost or {}
    res.baselines["stream1"] = _baseline_rows(overall1)
    res.drift["stream1"] = [_drift_row(w) for w in windows1]
    inc_row = _role_row(overall1, "incumbent")
    inc_row["true_prod_accuracy"] = truth1.get("incumbent", {}).get("all", {}).get("accuracy")
    inc_row["true_by_phase"] = {k: v["accuracy"] for k, v in truth1.get("incumbent", {}).items()}
    last_phase = ",".join(SHIFTED)
    # 'ends' = the last window, where all three shifts are on
    last = res.windows[-1] if res.windows else inc_row
    inc_row["last_window_prod_accuracy"] = last.get("prod_accuracy")
    inc_same = offline_accuracy(inc.onnx_path, shifted_test)
    inc_row["offline_same_conditions"] = inc_same["accuracy"]
    res.models[f"v{inc.registered_version} champion (stream 1)"] = inc_row
    if fp16_version:
        sh_row = _role_row(overall1, "shadow")
        sh_row["true_prod_accuracy"] = truth1.get("shadow", {}).get("all", {}).get("accuracy")
        sh_row["offline_same_conditions"] = offline_accuracy(inc.onnx_fp16_path, shifted_test)["accuracy"]
        res.models[f"v{fp16_version} fp16 shadow (stream 1)"] = sh_row
    if inc_row["offline_accuracy"] is not None and inc_row["true_prod_accuracy"] is not None and inc_row["gap_ci"][0] is not None:
        true_gap = inc_row["offline_accuracy"] - inc_row["true_prod_accuracy"]
        inc_row["true_gap"] = true_gap
        res.checks[CHECK_GAP_CI] = bool(inc_row["gap_ci"][0] <= true_gap <= inc_row["gap_ci"][1])
    if last.get("prod_accuracy") is not None and inc_row["offline_accuracy"] is not None:
        res.checks[CHECK_ENDS_BELOW] = bool(inc_row["offline_accuracy"] - last["prod_accuracy"] >= 0.15)
    if fp16_version and overall1.decision is not None:
        res.decisions["stream1"] = overall1.decision.to_dict()
        res.checks[CHECK_FP16] = overall1.decision.action == "equivalent"
    # the windows wholly inside the last phase (night + blur + new packaging): there the estimate must not stand
    last_start = (1.0 - phases[-1][0]) * n1 / cfg.fps
    tail = [w for w in res.windows if w["window"] * cfg.window_s >= last_start and w.get("estimate_contradicted") is not None]
    if tail:
        res.checks[CHECK_CONTRADICTED] = all(w["estimate_contradicted"] for w in tail)
    guarded = [w for w in res.windows if w["window"] * cfg.window_s >= last_start and w.get("vs_baseline")]
    if guarded:
        res.checks[CHECK_BASELINE] = all(w["baseline_alert"] == (not w["vs_baseline"]["significantly_better"])
                                         for w in guarded)
    truth_last = truth1.get("incumbent", {}).get(last_phase, {}).get("accuracy")
    if truth_last is not None:
        inc_row["true_accuracy_shifted_phase"] = truth_last

    # 5 --------------------------------------------------------------------------------------------------
    steps("retrain", "Scripted retraining: original data + labelled production frames -> verified ONNX -> 'challenger'")
    ch, prod = retrain(db, [str(train_dir)], workdir=wd, register_name=name, alias="challenger",
                       class_names=inc.card.class_names, seed=cfg.seed + 1, progress=cfg.progress,
                       out=str(wd / "retrain"), weights=str(inc.checkpoint_path), lr=cfg.retrain_lr,
                       **({"epochs": cfg.retrain_epochs} if cfg.retrain_epochs else train_kw), **size_kw)
    print(f"production frames used: {prod.n_frames}\n{ch.summary()}")
    res.labels_used["retraining"] = prod.n_frames

    # 6 --------------------------------------------------------------------------------------------------
    n2 = cfg.stream2_frames
    steps("stream2", f"Fresh production frames (rounds of {n2}, night + motion blur + new packaging): champion serves, "
                     "the retrained challenger runs in shadow; label until the anytime-valid decision is made")
    # the same camera later on: the scene (belt, lights) of stream 1, other parcels. The camera keeps running and
    # people keep labelling until the decision is made; the confidence sequence stays valid at every look.
    runs2, manifests2, n_lab2 = _stream2_until_decided(cfg, name, db)
    res.labels_used["stream2"] = n_lab2
    res.stream2_rounds = len(runs2)
    store = PredictionStore(db)
    try:
        overall2, windows2, html2 = _evaluate(store, runs2, cfg, "stream2", cfg.window_s, first_run_only_windows=True)
        truth2: dict[str, dict[str, dict[str, float]]] = {}
        for run_id, m2 in zip(runs2, manifests2):
            for role, by in _true_accuracy(store, run_id, m2).items():
                for k, v in by.items():
                    t = truth2.setdefault(role, {}).setdefault(k, {"accuracy": 0.0, "n": 0})
                    t["accuracy"], t["n"] = (t["accuracy"] * t["n"] + v["accuracy"] * v["n"]) / (t["n"] + v["n"]), t["n"] + v["n"]
    finally:
        store.close()
    res.reports["stream2"] = html2
    for role, tag in (("incumbent", f"v{inc.registered_version} champion (stream 2)"), ("shadow", f"v{ch.registered_version} retrained challenger (stream 2)")):
        row = _role_row(overall2, role)
        row["true_prod_accuracy"] = truth2.get(role, {}).get("all", {}).get("accuracy")
        res.models[tag] = row
    ch_same = offline_accuracy(ch.onnx_path, shifted_test)
    champ_row = res.models[f"v{inc.registered_version} champion (stream 2)"]
    champ_row["offline_same_conditions"] = inc_same["accuracy"]
    ch_row = res.models[f"v{ch.registered_version} retrained challenger (stream 2)"]
    ch_row["offline_same_conditions"] = ch_same["accuracy"]
    for row in (champ_row, ch_row):
        if row["offline_accuracy"] is not None and row["true_prod_accuracy"] is not None:
            row["true_gap"] = row["offline_accuracy"] - row["true_prod_accuracy"]
    halved = gap_halved(champ_row["gap"], ch_row["gap"])
    if halved is not None:
        res.checks[CHECK_RETRAINED] = halved
    res.drift["stream2"] = [_drift_row(w) for w in windows2]
    if res.drift["stream2"]:
        res.checks[CHECK_DRIFT_FIRST] = bool(res.drift["stream2"][0]["drifted"])
    res.serving_cost["stream2"] = overall2.serving_cost or {}
    res.baselines["stream2"] = _baseline_rows(overall2)
    res.decision = overall2.decision.to_dict() if overall2.decision else None
    res.decisions["stream2"] = res.decision or {}
    res.paired = overall2.paired.to_dict() if overall2.paired else None

    # 7 --------------------------------------------------------------------------------------------------
    steps("promote", "Decision: promote only on the evidence of the anytime-valid decision")
    action = (res.decision or {}).get("action")
    if action == "promote":
        evidence = tracking.latest_evaluation(name, str(ch.registered_version))
        tracking.check_promotion_evidence(evidence)
        res.promoted = tracking.promote(name, tags=tracking.promotion_tags(evidence), expect_challenger=str(ch.registered_version))
        print(f"promoted: {res.promoted}")
    else:
        print(f"not promoted: {(res.decision or {}).get('reason')}")
    res.checks[CHECK_PROMOTE] = action == "promote"
    steps.done()
    res.timings_s["total"] = round(time.perf_counter() - steps.t0, 1)
    (wd / "demo_summary.json").write_text(json.dumps(asdict(res), indent=2, default=str))
    print(format_summary(res))
    return res


def _stream2_until_decided(cfg: DemoConfig, name: str, db: str) -> tuple[list[str], list[Path], int]:
    """Stream 2 in rounds (the same camera later: the scene of stream 1, other parcels), each labelled, until the
    anytime-valid decision is made or ``stream2_max_rounds`` are spent. Returns (run ids, manifests, labels)."""
    wd = cfg.workdir
    runs, manifests, n_labels = [], [], 0
    for rnd in range(cfg.stream2_max_rounds):
        m = write_stream(wd / "streams" / f"shift2_{rnd}.mp4", cfg.stream2_frames, seed=cfg.seed + 202 + 1000 * rnd,
                         phases=[(1.0, SHIFTED)], size=cfg.frame_size, fps=cfg.fps, dwell=cfg.dwell, camera=cfg.camera,
                         progress=cfg.progress, scene_seed=cfg.seed + 101)
        runs.append(_run(cfg, m.with_suffix(".mp4"), f"models:/{name}@champion", f"models:/{name}@challenger", db).run_id)
        manifests.append(m)
        store = PredictionStore(db)
        try:
            n_labels += simulate_labels(store, [m], error_rate=cfg.annotator_error, seed=cfg.seed + 1 + rnd)
            look = Evaluator(EvalConfig(run_ids=runs, workdir=str(wd))).evaluate(store)
        finally:
            store.close()
        d = look.decision
        print(f"round {rnd + 1}: {n_labels} labels so far; decision {d.action if d else None}: {d.reason if d else ''}")
        if d is None or d.action != "need_more_labels":
            break
    return runs, manifests, n_labels


def _run(cfg: DemoConfig, video: Path, incumbent: str, shadow: str | None, db: str, training: bool = False):
    """One `shadowcam run` of ``video``; ``training``: also draw the training sample (cfg.training_sample_rate)."""
    train_sample = {"strategy": "uncertainty", "rate": cfg.training_sample_rate} if training and cfg.training_sample_rate > 0 else None
    rc = RunConfig.model_validate({
        "sources": [{"uri": str(video), "id": cfg.camera}],
        "incumbent": {"uri": incumbent},
        "shadow": {"uri": shadow} if shadow else None,
        "sampling": {"strategy": cfg.sample_strategy, "rate": cfg.sample_rate, "uniform_floor": cfg.uniform_floor,
                     "seed": cfg.seed, "double_label_share": 0.05, "training": train_sample},
        "store": {"url": db},
        "serving_cost": ({"price_per_device_hour": cfg.price_per_device_hour, "device": cfg.device_name}
                         if cfg.price_per_device_hour else None),
        "workdir": str(cfg.workdir),
    })
    summary = Runner(rc, progress=cfg.progress, install_signal_handlers=False).run()
    print(summary.format_table())
    return summary


def _pct(x: Any) -> str:
    return "   -  " if x is None else f"{100 * x:5.1f}%"


def _ci(ci: list) -> str:
    return "" if not ci or ci[0] is None else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_summary(res: DemoResult) -> str:
    lines = ["", "=" * 100, "shadowcam demo: summary", "=" * 100]
    head = (f"{'model':<44} {'offline':>8} {'offline*':>9} {'production (95% CI)':>24} {'true prod':>10} "
            f"{'gap (95% CI)':>22} {'labels':>7}")
    lines += [head, "-" * len(head)]
    for tag, m in res.models.items():
        lines.append(f"{tag:<44} {_pct(m.get('offline_accuracy')):>8} {_pct(m.get('offline_same_conditions')):>9} "
                     f"{_pct(m.get('prod_accuracy')) + ' ' + _ci(m.get('prod_ci')):>24} "
                     f"{_pct(m.get('true_prod_accuracy')):>10} {_pct(m.get('gap')) + ' ' + _ci(m.get('gap_ci')):>22} {m.get('n_labeled') or 0:>7}")
    lines.append("offline: the model's own test split; offline*: an offline test clip from the same camera under night + "
                 "motion blur + new packaging (the conditions stream 2 runs under), every frame labelled; gap: offline - production")
    true_gaps = [(tag, m) for tag, m in res.models.items() if "stream 2" in tag and m.get("gap") is not None]
    if true_gaps:
        lines.append("gaps on stream 2 (offline test accuracy - production accuracy, 95% CI; true gap from every frame):")
        for tag, m in true_gaps:
            lines.append(f"  {tag:<44} {_pct(m.get('gap'))} {_ci(m.get('gap_ci'))}   true {_pct(m.get('true_gap'))}")
    drift1 = {d["window"]: d for d in res.drift.get("stream1", [])}
    if res.windows:
        lines.append("\nincumbent on stream 1, window by window (the gap opening; label-free estimate; drift against training):")
        for w in res.windows:
            est = w.get("estimated_accuracy")
            flag = (" CONTRADICTED by labels" if w.get("estimate_contradicted") else "") + (" (unreliable)" if w.get("estimate_unreliable") else "")
            dr = drift1.get(w["window"]) or {}
            drift_txt = f"; drifted: {dr['finding']}" if dr.get("drifted") else "; no drift from training" if dr.get("drifted") is False else ""
            vs = w.get("vs_baseline") or {}
            base_txt = (f"; vs {vs['baseline']} baseline {100 * vs['diff']:+.1f} pts (lower bound {100 * vs['low']:+.1f})"
                        f"{' BASELINE ALERT' if w.get('baseline_alert') else ''}") if vs and vs.get("on") == "accuracy" else ""
            lines.append(f"  window {w['window']}: production {_pct(w.get('prod_accuracy'))} {_ci(w.get('prod_ci'))}, "
                         f"gap {_pct(w.get('gap'))} {_ci(w.get('gap_ci'))}, {w.get('labels')} labels, "
                         f"label-free {_pct(est)}{flag}{drift_txt}{base_txt}")
    costed = [(tag, m) for tag, m in res.models.items() if m.get("cost_per_1k") is not None]
    if costed:
        lines.append("\ncost of errors per 1,000 frames (configs/costs.example.yaml; 95% CI; the confusions that drive it):")
        for tag, m in costed:
            lo, hi = m["cost_ci"]
            lines.append(f"  {tag:<44} {m['cost_per_1k']:>9,.1f} [{lo:,.1f}, {hi:,.1f}] {m['cost_currency']}; "
                         f"{', '.join(m['cost_drivers'])}")
    for stream, rows in res.baselines.items():
        if rows:
            lines.append(f"baselines on {stream}'s labels (accuracy, 95% CI; cost per 1,000 frames):")
            for b in rows:
                cost = f"; cost {b['cost_per_1k']:,.1f}" if b.get("cost_per_1k") is not None else ""
                lines.append(f"  {b['name']:<10} {_pct(b['accuracy'])} {_ci(b['accuracy_ci'])}{cost}  ({b['description']})")
    for tag, m in res.models.items():
        vs = m.get("vs_baseline")
        if vs:
            unit = "points" if vs["on"] == "accuracy" else "per 1,000 frames"
            scale = 100 if vs["on"] == "accuracy" else 1
            lines.append(f"  {tag:<44} vs {vs['baseline']}: {scale * vs['diff']:+.1f} {unit} (one-sided lower bound "
                         f"{scale * vs['low']:+.1f}): {'significantly better' if vs['significantly_better'] else 'NOT significantly better'}")
    for stream, sc in res.serving_cost.items():
        if sc:
            parts = [f"{role} {sc[role]['usd_per_million']:,.2f}" for role in ("incumbent", "shadow")
                     if sc.get(role) and sc[role].get("usd_per_million") is not None]
            extra = sc.get("shadow_extra_usd_per_million")
            lines.append(f"serving cost on {stream} ({sc.get('currency', 'USD')} per million predictions at "
                         f"{sc.get('price_per_device_hour')}/device-hour{', ' + sc['device'] if sc.get('device') else ''}): "
                         f"{', '.join(parts)}"
                         + (f"; the shadow adds {extra:,.2f} per million served" if extra is not None else ""))
    for d in res.drift.get("stream2", [])[:1]:
        lines.append(f"stream 2, first window: {'drifted from training: ' + str(d.get('finding')) if d.get('drifted') else 'no drift from training'}")
    lines.append(f"\nlabels used: {res.labels_used}")
    lines.append("what the labels bought (production accuracy interval): labels spent vs labels uniform sampling + Wilson "
                 "would have needed for the same width")
    for tag, m in res.models.items():
        if m.get("uniform_wilson_labels") is not None:
            ratio = m["n_labeled"] / m["uniform_wilson_labels"] if m["uniform_wilson_labels"] else float("nan")
            lines.append(f"  {tag:<44} {m['n_labeled']:>5} spent, {m['uniform_wilson_labels']:>5} uniform + Wilson "
                         f"({ratio:.2f}x); {str(m.get('estimator')).split(';')[0]}")
    for stream, d in res.decisions.items():
        rounds = f" after {res.stream2_rounds} round(s) of labelling" if stream == "stream2" and res.stream2_rounds else ""
        lines.append(f"decision ({stream}, anytime-valid, challenger - champion{rounds}): {d.get('action')} - {d.get('reason')}")
    if res.promoted:
        lines.append(f"aliases moved: {res.promoted}")
    lines.append("\nchecks (measured, not built in):")
    for k, v in res.checks.items():
        lines.append(f"  [{'ok' if v else 'NO'}] {k}")
    lines.append(f"\ntimings (s): {res.timings_s}")
    lines.append("\nwhere to look next:")
    lines.append(f"  mlflow ui --backend-store-uri {res.tracking_uri}    # experiments shadowcam-training, shadowcam-deployment")
    for k, v in res.reports.items():
        lines.append(f"  HTML report ({k}): {v}")
    lines.append(f"  notebooks/compare_experiments.ipynb with SHADOWCAM_WORKDIR={res.workdir}")
    return "\n".join(lines)
