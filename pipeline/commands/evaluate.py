"""``shadowcam evaluate``: production accuracy, the train-to-production gap, the champion/challenger decision and
drift from the prediction store, logged to MLflow, with alerts.

Examples::

    shadowcam evaluate --db runs/demo/shadowcam.db --window 10m
    shadowcam evaluate --db postgresql://user@host/shadowcam --json eval.json --html eval.html --no-mlflow
    shadowcam evaluate --db runs/demo/shadowcam.db --costs configs/costs.example.yaml --decide-on cost --delta 5
"""

from __future__ import annotations

import argparse

from pipeline.config import EVALUATION_EXPERIMENT, EvalConfig

NAME = "evaluate"
HELP = "measure both models' production accuracy, gap, paired decision and drift; log to MLflow"
DESCRIPTION = (
    "Join predictions with human labels and compute, for the incumbent and the shadow: production accuracy with a CI, "
    "per-class recall, per-camera accuracy, the train-to-production gap against the model card, the paired "
    "champion/challenger test and decision, drift against a reference period and a label-free accuracy estimate; "
    "with --costs, the expected cost of errors per 1,000 frames; a majority-class and a rule baseline on the same labels; "
    "the serving cost per million predictions when a price per device-hour is known. "
    "Logs one MLflow run (time series over windows, plots, HTML report), prints a summary and raises alerts "
    "(checked on the newest window when --window is given, else on the whole scope)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="prediction store: SQLite path or SQLAlchemy URL; when omitted, WORKDIR/shadowcam.db")
    p.add_argument("--workdir", default=".", help="work directory: default store, mlflow.db, metrics/evaluation.prom")
    p.add_argument("--window", default=None, metavar="DURATION", help="also evaluate consecutive windows of this length (300s, 10m, 1h); MLflow step = window index")
    p.add_argument("--cumulative", action="store_true", help="windows accumulate from the first frame instead of being separate slices")
    p.add_argument("--reference", default=str(EvalConfig.default("reference")), metavar="FRACTION|DURATION",
                   help="drift reference: the first fraction of the frames (0.2) or the first DURATION (30m)")
    p.add_argument("--run", dest="runs", action="append", default=None, metavar="RUN_ID", help="evaluate these runs only (repeatable); when omitted, the runs with the newest run's model pair")
    p.add_argument("--incumbent-card", default=None, metavar="FILE.onnx", help="ONNX file whose model card holds the incumbent's offline accuracy; when omitted, found from the stored run config")
    p.add_argument("--shadow-card", default=None, metavar="FILE.onnx", help="same for the shadow model")
    p.add_argument("--cache-dir", default=None, help="where models:/ URIs are downloaded to when resolving cards; when omitted, WORKDIR/.cache/models (as `shadowcam run`)")
    p.add_argument("--alpha", type=float, default=EvalConfig.default("alpha"), help="1 - confidence level of the intervals, level of the tests")
    p.add_argument("--delta", type=float, default=EvalConfig.default("delta"),
                   help="decision margin: a challenger - champion difference within +-delta is not worth the labels "
                        "(promote needs the anytime-valid lower bound above +delta)")
    p.add_argument("--min-effect", type=float, default=EvalConfig.default("min_effect"),
                   help="recorded for older scripts; decisions use --delta")
    p.add_argument("--drift-baseline", choices=("training", "run_start"), default=EvalConfig.default("drift_baseline"),
                   help="compare windows with the models' training reference profile (train-to-production drift) or with "
                        "the start of the evaluated frames (--reference)")
    p.add_argument("--drift-min-effect", type=float, default=EvalConfig.default("drift_min_effect"),
                   help="drift against training is acted on when this share of frames (above the 1%% expected) lies "
                        "beyond the training range")
    p.add_argument("--pi-floor", type=float, default=None,
                   help="scale of the weighted confidence sequences: the smallest inclusion probability the sampler "
                        "uses; when omitted, read from the runs' sampling config")
    p.add_argument("--estimator", choices=("model_assisted", "classical"), default=EvalConfig.default("estimator"),
                   help="accuracy and gap: model_assisted uses every frame's predictions with the labels (active PPI++, "
                        "cross-fitted proxy; classical figures kept beside them), classical only the labelled frames")
    p.add_argument("--proxy-min-labels", type=int, default=EvalConfig.default("proxy_min_labels"),
                   help="labelled frames a window needs before its figures are model-assisted")
    p.add_argument("--costs", default=None, metavar="FILE.yaml",
                   help="cost matrix (currency, matrix[true][predicted], default_error_cost, value_correct; see "
                        "configs/costs.example.yaml): report the expected cost of errors per 1,000 frames")
    p.add_argument("--decide-on", choices=("accuracy", "cost"), default=EvalConfig.default("decide_on"),
                   help="what the champion/challenger decision and the baseline guard weigh; cost needs --costs, and --delta "
                        "is then in cost units per 1,000 frames")
    p.add_argument("--baseline-rule", default=None, metavar="MODULE:FUNCTION",
                   help="rule baseline: a Python function (image_bgr, camera_id) -> class name; when omitted, the "
                        "frame-difference empty-belt rule")
    p.add_argument("--no-baselines", action="store_true", help="do not score the majority-class and rule baselines")
    p.add_argument("--price-per-device-hour", type=float, default=None,
                   help="price of a device-hour for the serving cost per million predictions; when omitted, the price the "
                        "runs recorded (none: no serving cost)")
    p.add_argument("--experiment", default=EVALUATION_EXPERIMENT, help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--json", default=None, metavar="FILE", help="write the full result (overall, windows, alerts) as JSON")
    p.add_argument("--html", default=None, metavar="FILE", help="write the self-contained HTML report")
    p.add_argument("--no-gallery", action="store_true",
                   help="leave the error gallery (the most confident errors with saliency overlays) out of the report")
    p.add_argument("--gallery-model", default=None, metavar="URI|FILE.onnx",
                   help="the model the gallery explains (default: the incumbent of the newest evaluated run)")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="run config whose `alerts` section sets thresholds; when omitted, the newest stored run config's")
    p.add_argument("--max-gap", type=float, default=None, help="alert when a gap's CI lower bound exceeds this (overrides the config)")
    p.add_argument("--drift-p", type=float, default=None, help="alert when a drift p-value is below this (overrides the config)")
    p.add_argument("--webhook", default=None, help="POST alerts as JSON to this URL (overrides the config)")
    p.add_argument("--fail-on-alert", action="store_true", help="exit with status 3 when an alert fires")


def _alert_config(args: argparse.Namespace, store) -> "object":
    import json

    from pipeline.config import AlertConfig, load_config

    if args.config:
        base = load_config(args.config).alerts
    else:
        base = AlertConfig()
        runs = store.list_runs()
        if runs and runs[-1].get("config"):
            try:
                stored = json.loads(runs[-1]["config"]).get("alerts")
                if isinstance(stored, dict):
                    base = AlertConfig.model_validate(stored)
            except (ValueError, TypeError):
                pass
    updates = {k: v for k, v in (("max_gap", args.max_gap), ("drift_p", args.drift_p), ("webhook", args.webhook)) if v is not None}
    return base.model_copy(update=updates) if updates else base


def _gallery(store, overall, args: argparse.Namespace, out_dir, log) -> list | None:
    """The error gallery's items (overlays in ``out_dir``), or None (with a warning) when it cannot be made."""
    from pipeline.evaluation import gallery
    from pipeline.labeling.overlays import run_model_uri
    from pipeline.types import ShadowcamError

    model, workdir = args.gallery_model, args.workdir
    if model is None:
        runs = {r["run_id"]: r for r in store.list_runs()}
        newest = [runs[r] for r in reversed(overall.meta.runs) if r in runs]
        if newest:
            model, workdir = run_model_uri(newest[0], "incumbent")
    if model is None:
        log.warning("error gallery left out: the evaluated runs record no incumbent model (give --gallery-model)")
        return None
    try:
        return gallery.build_error_gallery(store, list(overall.meta.runs), model, out_dir, role="incumbent",
                                           workdir=workdir)
    except (ShadowcamError, OSError, ValueError) as e:
        log.warning("error gallery left out: %s", e)
        return None


def _gallery_html(items: list | None, out_dir, inline: bool) -> str | None:
    from pipeline.evaluation import gallery

    return None if items is None else gallery.gallery_html(items, relative_to=out_dir, inline=inline)


def main(args: argparse.Namespace) -> int:
    import logging
    import shutil
    import tempfile
    from pathlib import Path

    from pipeline import tracking
    from pipeline.config import BaselineConfig, load_costs, parse_duration, parse_reference
    from pipeline.evaluation import alerts as alerts_mod
    from pipeline.evaluation import report
    from pipeline.evaluation.evaluator import Evaluator
    from pipeline.store import PredictionStore, default_sqlite_url

    log = logging.getLogger("shadowcam.evaluate")
    workdir = Path(args.workdir)
    store = PredictionStore(args.db or default_sqlite_url(workdir), must_exist=True)
    try:
        cfg = EvalConfig(
            alpha=args.alpha, reference=parse_reference(args.reference), min_effect=args.min_effect, cumulative=args.cumulative,
            incumbent_card=args.incumbent_card, shadow_card=args.shadow_card, cache_dir=args.cache_dir, run_ids=args.runs,
            workdir=str(workdir), delta=args.delta, drift_baseline=args.drift_baseline, drift_min_effect=args.drift_min_effect,
            pi_floor=args.pi_floor, estimator=args.estimator, proxy_min_labels=args.proxy_min_labels,
            costs=load_costs(args.costs) if args.costs else None, decide_on=args.decide_on,
            baselines=BaselineConfig(enabled=not args.no_baselines, rule=args.baseline_rule),
            price_per_device_hour=args.price_per_device_hour,
        )
        alert_cfg = _alert_config(args, store)
        ev = Evaluator(cfg)
        overall = ev.evaluate(store)
        windows = ev.evaluate_windows(store, parse_duration(args.window, "--window")) if args.window else []
        gallery_dir = Path(tempfile.mkdtemp(prefix="shadowcam-gallery-"))
        items = None if args.no_gallery or not (args.html or not args.no_mlflow) else _gallery(store, overall, args, gallery_dir, log)
    finally:
        store.close()

    # alerts look at the newest state: the last window when windows are evaluated, else the whole scope;
    # they are kept with that result and with the overall one
    fired = alerts_mod.dispatch(windows[-1] if windows else overall, alert_cfg, workdir=workdir)
    if windows:
        windows[-1] = windows[-1].with_alerts(fired)
    overall = overall.with_alerts(fired)

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        import json

        Path(args.json).write_text(json.dumps(report.result_json(windows, overall, fired), indent=2, allow_nan=False))
    if args.html:
        with tempfile.TemporaryDirectory() as tmp:
            paths = report.make_plots(windows, overall, tmp, max_gap=alert_cfg.max_gap)
            Path(args.html).parent.mkdir(parents=True, exist_ok=True)
            gallery_html = _gallery_html(items, gallery_dir, inline=True)
            Path(args.html).write_text(report.render_html(windows, overall, paths, fired, gallery_html=gallery_html),
                                       encoding="utf-8")

    status = 0
    run_id = None
    if not args.no_mlflow:
        try:
            run_id = tracking.log_evaluation(windows or [overall], overall, experiment=args.experiment, workdir=workdir, alerts=fired,
                                             max_gap=alert_cfg.max_gap, write_report=report.write_report,
                                             report_kwargs={"gallery_html": _gallery_html(items, gallery_dir, inline=True)})
        except Exception as e:  # MLflow's own exception types: the figures are still printed and written
            log.error("MLflow logging failed: %s: %s", e.__class__.__name__, e)
            status = 1

    shutil.rmtree(gallery_dir, ignore_errors=True)  # the report embeds the overlays
    print(report.format_summary(overall, windows, fired))
    if args.json:
        print(f"JSON: {args.json}")
    if args.html:
        print(f"HTML report: {args.html}")
    if run_id:
        print(f"MLflow run {run_id} in experiment {args.experiment!r}")
    if fired and args.fail_on_alert:
        return 3
    return status
