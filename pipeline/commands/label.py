"""``shadowcam label``: the labeling page, label import/export, and the simulated annotator.

    shadowcam label serve    --db URL [--host 127.0.0.1] [--port 8765] [--token TOKEN:ANNOTATOR ...]
                             [--tokens-file FILE] [--show-predictions] [--classes a,b,c] [--image-root DIR]
                             [--target 2pts@95|decision] [--target-scope camera|model]
                             [--no-explain] [--explain-model FILE.onnx|models:/NAME@ALIAS] [--reviewer NAME ...]
                             [--eval-config FILE.yaml] [--costs FILE.yaml] [--price-per-device-hour P] [--workdir DIR]
    (pages: / labeling, /review disagreements with overlays, /status one page per deployment for managers)
    shadowcam label export   --db URL --pending [--format csv|jsonl|labelstudio] [--out FILE]
    shadowcam label import   FILE --db URL [--annotator NAME] [--classes a,b,c]
    shadowcam label simulate --db URL --manifest FILE [--manifest FILE ...] [--error-rate 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

NAME = "label"
HELP = "label sampled frames: web page, import/export, simulated annotator"
DESCRIPTION = (
    "Label sampled frames: `serve` the labeling page, `export` the frames awaiting labels, `import` labels "
    "(CSV/JSONL/Label Studio), or `simulate` an annotator from synthetic ground truth. See `shadowcam label ACTION --help`."
)


def _classes(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="label_command", metavar="ACTION", required=True)
    fmt = argparse.ArgumentDefaultsHelpFormatter

    s = sub.add_parser("serve", help="run the labeling web page", formatter_class=fmt)
    s.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")
    s.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for the whole network)")
    s.add_argument("--port", type=int, default=8765, help="TCP port")
    s.add_argument("--token", action="append", default=[], metavar="TOKEN:ANNOTATOR",
                   help="an annotator's login token (repeatable); none given: one random token for annotator 'annotator' is made and printed")
    s.add_argument("--tokens-file", default=None, help="file with one TOKEN:ANNOTATOR per line")
    s.add_argument("--show-predictions", action="store_true", help="offer a collapsed 'reveal model predictions' toggle (off: never shown)")
    s.add_argument("--classes", default=None, help="comma-separated class names (default: those of the newest run in the store)")
    s.add_argument("--image-root", default=None, help="folder relative image paths are resolved against; images outside it are refused (default: current directory, no restriction)")
    s.add_argument("--target", default=None, metavar="TARGET",
                   help="label target shown above the frame: '2pts@95' or '±2@95%%' (accuracy interval of ±2 points at 95%%), "
                        "or 'decision' (until the champion/challenger decision is reached); default: none shown")
    s.add_argument("--target-scope", choices=["camera", "model"], default="camera",
                   help="the target holds per camera or for the model as a whole")
    s.add_argument("--no-explain", action="store_true",
                   help="do not show the model's saliency overlay after an answer (nor in /review)")
    s.add_argument("--explain-model", default=None, metavar="FILE.onnx|URI",
                   help="explain every frame with this model (default: the incumbent of the frame's run, as recorded in the store)")
    s.add_argument("--explain-method", choices=["occlusion", "rise"], default="occlusion", help="saliency method of the overlays")
    s.add_argument("--reviewer", action="append", default=[], metavar="ANNOTATOR",
                   help="annotator allowed into /review (repeatable); none given: everyone logged in")
    s.add_argument("--eval-config", default=None, metavar="FILE.yaml",
                   help="evaluation settings for /status and the target (EvalConfig fields: alpha, costs, baselines, ...)")
    s.add_argument("--costs", default=None, metavar="FILE.yaml",
                   help="cost matrix for /status's cost of errors per 1,000 frames (overrides the eval config's costs)")
    s.add_argument("--price-per-device-hour", type=float, default=None,
                   help="serving price for /status (default: the price the runs recorded from their serving_cost config)")
    s.add_argument("--workdir", default=None,
                   help="MLflow store for models:/ URIs (overlays, model cards) and their download cache (default: each run's workdir)")
    s.add_argument("--status-refresh", type=float, default=60.0, metavar="SECONDS",
                   help="/status figures are re-evaluated at most this often (in the background)")
    s.add_argument("--status-window", default=None, metavar="DURATION",
                   help="window of the trend on /status (300s, 10m, 1h); default: the deployment's time span / 8")

    e = sub.add_parser("export", help="write the frames awaiting labels for an external tool", formatter_class=fmt)
    e.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")
    e.add_argument("--pending", action="store_true", required=True, help="export the frames awaiting labels (the only selection so far)")
    e.add_argument("--format", choices=["csv", "jsonl", "labelstudio"], default="csv", help="output format; labelstudio = Label Studio tasks JSON")
    e.add_argument("--out", default=None, help="output file (default: stdout)")
    e.add_argument("--image-url-prefix", default=None,
                   help="labelstudio only: put this in front of image paths (e.g. '/data/local-files/?d=' for Label Studio local files)")

    i = sub.add_parser("import", help="import labels from CSV/JSONL or a Label Studio JSON export (all or nothing)", formatter_class=fmt)
    i.add_argument("file", help=".csv (frame_id,label[,annotator]), .jsonl, or .json (Label Studio export)")
    i.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")
    i.add_argument("--annotator", default=None, help="annotator for rows without one (default: 'import')")
    i.add_argument("--classes", default=None, help="comma-separated class names (default: those of the newest run in the store)")

    m = sub.add_parser("simulate", help="label the queue from synthetic ground truth (demos, tests)", formatter_class=fmt)
    m.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")
    m.add_argument("--manifest", action="append", required=True, help="manifest CSV with source_ref (or path) and label; repeatable")
    m.add_argument("--error-rate", type=float, default=0.0, help="share of answers replaced by a uniformly drawn wrong class")
    m.add_argument("--seed", type=int, default=0, help="random seed of the simulated errors")
    m.add_argument("--annotator", default="sim", help="simulated annotator name (double-label frames also get NAME-2)")
    m.add_argument("--classes", default=None, help="comma-separated class names (default: the store's, else the manifests')")


def main(args: argparse.Namespace) -> int:
    from pipeline.store import PredictionStore

    if args.label_command == "serve":
        return _serve(args)
    store = PredictionStore(args.db)
    try:
        if args.label_command == "export":
            from pipeline.labeling.io import export_pending

            n = export_pending(store, args.out, args.format, args.image_url_prefix)
            if args.out:
                print(f"exported {n} frame(s) awaiting labels to {args.out} ({args.format})")
            return 0
        if args.label_command == "import":
            from pipeline.labeling.io import import_labels

            n = import_labels(store, args.file, annotator=args.annotator, class_names=_classes(args.classes))
            print(f"imported {n} label(s) from {args.file}")
            return 0
        if args.label_command == "simulate":
            from pipeline.labeling.simulate import simulate_labels

            n = simulate_labels(store, args.manifest, error_rate=args.error_rate, annotator=args.annotator, seed=args.seed,
                                classes=_classes(args.classes))
            print(f"simulated {n} label(s) (error rate {args.error_rate:g}, seed {args.seed})")
            return 0
    finally:
        store.close()
    return 2


def _eval_config(args: argparse.Namespace) -> Any:
    """The EvalConfig of /status: ``--eval-config`` (a YAML mapping of EvalConfig fields), then ``--costs``,
    ``--price-per-device-hour`` and ``--workdir`` on top."""
    from pydantic import ValidationError

    from pipeline.config import EvalConfig, config_error, read_yaml
    from pipeline.types import ConfigError

    data: dict[str, Any] = {}
    if args.eval_config:
        path = Path(args.eval_config)
        try:
            data = read_yaml(path, "file")
        except ConfigError as e:
            raise ConfigError(f"--eval-config {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"--eval-config {path}: expected a mapping of EvalConfig fields, got {type(data).__name__}")
    for key, value in (("costs", args.costs), ("price_per_device_hour", args.price_per_device_hour), ("workdir", args.workdir)):
        if value is not None:
            data[key] = value
    where = f"--eval-config {args.eval_config}" if args.eval_config else "label serve options"
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, where) from None
    except ConfigError as e:  # a nested config (costs, baselines) reports itself: say where it came from
        raise ConfigError(f"{where}: {e}") from None


def _serve(args: argparse.Namespace) -> int:
    import secrets

    import uvicorn

    from pipeline.config import parse_duration
    from pipeline.labeling.app import create_app, parse_token_specs, read_tokens_file
    from pipeline.labeling.targets import parse_target
    from pipeline.types import ConfigError

    target = parse_target(args.target, scope=args.target_scope) if args.target else None
    eval_config = _eval_config(args)
    status_window = parse_duration(args.status_window, "--status-window") if args.status_window else None

    tokens = parse_token_specs(args.token)
    if args.tokens_file:
        for tok, who in read_tokens_file(args.tokens_file).items():
            if tok in tokens:
                raise ConfigError(f"{args.tokens_file}: token for {who!r} is also given with --token")
            tokens[tok] = who
    generated = None
    if not tokens:
        generated = secrets.token_urlsafe(12)
        tokens = {generated: "annotator"}
    app = create_app(args.db, class_names=_classes(args.classes), tokens=tokens, image_root=args.image_root,
                     show_predictions=args.show_predictions, target=target, explain=not args.no_explain,
                     explain_model=args.explain_model, explain_method=args.explain_method, reviewers=args.reviewer,
                     eval_config=eval_config, status_refresh_s=args.status_refresh, status_window_s=status_window)
    host = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"labeling page: http://{host}:{args.port}/  ({len(tokens)} annotator token(s), classes: {', '.join(app.state.class_names)})", flush=True)
    print(f"review: http://{host}:{args.port}/review  status: http://{host}:{args.port}/status  (same login"
          + (f"; reviewers: {', '.join(args.reviewer)}" if args.reviewer else "") + ")", flush=True)
    if target is not None:
        what = "the champion/challenger decision" if target.kind == "decision" else f"±{100 * target.half_width:g} points"
        print(f"label target: {what} at {100 * target.level:g}% per {target.scope}", flush=True)
    if generated:
        print(f"no --token given: log in with token {generated} (annotator 'annotator')", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
