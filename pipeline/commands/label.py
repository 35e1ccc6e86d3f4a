"""``shadowcam label``: the labeling page, label import/export, and the simulated annotator.

    shadowcam label tokens add NAME --db URL [--role annotator|reviewer|admin] [--out FILE] [--rotate]
                                     [--token-file FILE | --token-env VAR]
    shadowcam label tokens revoke NAME|TOKEN_ID --db URL
    shadowcam label tokens list --db URL
    shadowcam label serve    --db URL [--host 127.0.0.1] [--port 8765] [--certfile CERT.pem --keyfile KEY.pem]
                             [--tokens-file FILE] [--token TOKEN:ANNOTATOR[:ROLE] (warned: shows in ps)]
                             [--session-idle 1h] [--session-max 12h] [--workers N]
                             [--show-predictions] [--classes a,b,c] [--image-root DIR]
                             [--target 2pts@95|decision] [--target-scope camera|model]
                             [--no-explain] [--explain-model FILE.onnx|models:/NAME@ALIAS] [--reviewer NAME ...]
    (tokens live hashed in the store; --tokens-file and $SHADOWCAM_LABEL_TOKENS, TOKEN:ANNOTATOR[:ROLE] entries,
     are registered into it at start; see docs/security.md)
                             [--eval-config FILE.yaml] [--costs FILE.yaml] [--price-per-device-hour P] [--workdir DIR]
    (pages: / labeling, /review disagreements with overlays, /status one page per deployment for managers)
    shadowcam label export   --db URL --pending [--format csv|jsonl|labelstudio] [--out FILE]
    shadowcam label import   FILE --db URL [--annotator NAME] [--classes a,b,c]
    shadowcam label simulate --db URL --manifest FILE [--manifest FILE ...] [--error-rate 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.config import LabelAuthConfig

NAME = "label"
HELP = "label sampled frames: web page, import/export, simulated annotator"
DESCRIPTION = (
    "Label sampled frames: `serve` the labeling page, manage its login `tokens`, `export` the frames awaiting labels, `import` labels "
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
    s.add_argument("--token", action="append", default=[], metavar="TOKEN:ANNOTATOR[:ROLE]",
                   help="register a login token (repeatable); works, with a warning: command lines show in `ps` and shell "
                        "history - prefer --tokens-file, $SHADOWCAM_LABEL_TOKENS or `shadowcam label tokens add`")
    s.add_argument("--tokens-file", default=None,
                   help="register the tokens of this file (TOKEN:ANNOTATOR[:ROLE] per line; chmod 600) into the store at start")
    s.add_argument("--certfile", default=None, help="TLS certificate (PEM): serve HTTPS; session cookies get the Secure flag")
    s.add_argument("--keyfile", default=None, help="TLS private key (PEM) of --certfile")
    s.add_argument("--session-idle", default=None, metavar="DURATION",
                   help=f"a session ends after this long without a request (default {LabelAuthConfig.default('session_idle_s'):g}s)")
    s.add_argument("--session-max", default=None, metavar="DURATION",
                   help=f"a session ends this long after its login (default {LabelAuthConfig.default('session_max_s'):g}s)")
    s.add_argument("--workers", type=int, default=1,
                   help="uvicorn worker processes (they share sessions, leases and lockouts through the store)")
    s.add_argument("--show-predictions", action="store_true", help="offer a collapsed 'reveal model predictions' toggle (off: never shown)")
    s.add_argument("--classes", default=None, help="comma-separated class names (default: those of the newest run in the store)")
    s.add_argument("--image-root", default=None,
                   help="the one folder images are served from (relative image paths are resolved against it); default: the "
                        "store's sample folders (each run's sampling.image_dir); images outside are refused")
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
                   help="tokens registered by --token/--tokens-file/$SHADOWCAM_LABEL_TOKENS for this annotator without a ROLE "
                        "get the reviewer role (repeatable; otherwise roles come from the store's tokens)")
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

    t = sub.add_parser("tokens", help="add, revoke or list the labeling page's login tokens", formatter_class=fmt)
    tsub = t.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    ta = tsub.add_parser("add", help="store a token for an annotator (generated and shown once, unless given)", formatter_class=fmt)
    ta.add_argument("name", help="annotator name (letters, digits, ._@-)")
    ta.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")
    ta.add_argument("--role", choices=["annotator", "reviewer", "admin"], default="annotator",
                    help="annotator: labels; reviewer: also /review (resolve ties) and /status; admin: also manages tokens")
    ta.add_argument("--out", default=None, help="write the token to this new file (mode 600) instead of printing it")
    ta.add_argument("--rotate", action="store_true", help="replace the annotator's active token (it is revoked, its sessions end)")
    src = ta.add_mutually_exclusive_group()
    src.add_argument("--token-file", default=None, help="use the token on this file's first line instead of a generated one")
    src.add_argument("--token-env", default=None, metavar="VAR", help="use the token in this environment variable")
    tr = tsub.add_parser("revoke", help="revoke a token (by annotator or token id); its sessions end at once", formatter_class=fmt)
    tr.add_argument("who", help="annotator name or token id")
    tr.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")
    tl = tsub.add_parser("list", help="list the tokens (never the tokens themselves)", formatter_class=fmt)
    tl.add_argument("--db", required=True, help="prediction store: SQLite path or SQLAlchemy URL")

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
    store = PredictionStore(args.db, must_exist=True)
    try:
        if args.label_command == "tokens":
            return _tokens(args, store)
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


def _tokens(args: argparse.Namespace, store: Any) -> int:
    import time

    from pipeline.labeling.auth import issue_token, revoke_token
    from pipeline.types import ConfigError

    if args.tokens_command == "add":
        token = None
        if args.token_file:
            try:
                lines = Path(args.token_file).read_text().splitlines()
            except OSError as e:
                raise ConfigError(f"--token-file {args.token_file}: {e.strerror}") from None
            token = lines[0].strip() if lines else ""
            if not token:
                raise ConfigError(f"--token-file {args.token_file}: empty; expected the token on its first line")
        elif args.token_env:
            token = os.environ.get(args.token_env, "").strip()
            if not token:
                raise ConfigError(f"--token-env {args.token_env}: the variable is not set or empty")
        out = Path(args.out) if args.out else None
        if out is not None and out.exists():
            raise ConfigError(f"--out {out}: exists; give a new file (the token is written once, mode 600)")
        where = f"--token-file {args.token_file}" if args.token_file else f"--token-env {args.token_env}" if args.token_env else "token"
        issued = issue_token(store, args.name, args.role, token=token, rotate=args.rotate, where=where)
        rotated = f" (revoked {', '.join(issued.revoked)})" if issued.revoked else ""
        if out is not None:
            try:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except OSError as e:
                store.revoke_label_tokens(issued.token_id)
                raise ConfigError(f"--out {out}: {e.strerror} (the token was revoked again)") from None
            with os.fdopen(fd, "w") as f:
                f.write(issued.token + "\n")
            print(f"token {issued.token_id} for {issued.annotator} ({issued.role}) written to {out} (mode 600){rotated}")
        elif token is None:
            print(f"token {issued.token_id} for {issued.annotator} ({issued.role}){rotated}; it is shown this once:", file=sys.stderr)
            print(issued.token)
        else:
            print(f"token {issued.token_id} for {issued.annotator} ({issued.role}) stored{rotated}")
        return 0
    if args.tokens_command == "revoke":
        ids = revoke_token(store, args.who)
        print(f"revoked token(s) {', '.join(ids)}; their sessions have ended")
        return 0
    cfg = LabelAuthConfig()
    live = store.open_label_sessions(time.time(), cfg.session_idle_s, cfg.session_max_s)
    rows = store.label_tokens()
    fmt = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"
    print(f"{'id':<13} {'annotator':<20} {'role':<10} {'created':<17} {'revoked':<17} sessions")
    for t in rows:
        print(f"{t.token_id:<13} {t.annotator:<20} {t.role:<10} {fmt(t.created_at):<17} {fmt(t.revoked_at):<17} {live.get(t.token_id, 0)}")
    if not rows:
        print("(no tokens: add one with `shadowcam label tokens add NAME --role annotator --db ...`)")
    return 0


def _serve(args: argparse.Namespace) -> int:
    import json

    import uvicorn

    from pipeline.config import parse_duration
    from pipeline.labeling.app import SERVE_ENV, create_app, plain_http_warning
    from pipeline.labeling.auth import (
        TOKEN_ENV,
        parse_token_entries,
        read_tokens_file,
        register_tokens,
        tokens_from_env,
    )
    from pipeline.labeling.targets import parse_target
    from pipeline.store import PredictionStore
    from pipeline.types import ConfigError

    target = parse_target(args.target, scope=args.target_scope) if args.target else None
    eval_config = _eval_config(args)
    status_window = parse_duration(args.status_window, "--status-window") if args.status_window else None
    auth = LabelAuthConfig(**{k: parse_duration(v, f"--{k.replace('_s', '').replace('_', '-')}") for k, v in
                              (("session_idle_s", args.session_idle), ("session_max_s", args.session_max)) if v is not None})
    if bool(args.certfile) != bool(args.keyfile):
        raise ConfigError("--certfile and --keyfile go together (TLS needs both)")
    for opt, path in (("--certfile", args.certfile), ("--keyfile", args.keyfile)):
        if path and not Path(path).is_file():
            raise ConfigError(f"{opt} {path}: no such file")
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")

    # tokens given to `serve` are registered (hashed) into the store; none are needed when the store has some
    entries: dict[str, tuple[str, str]] = {}
    sources = []
    if args.token:
        print("WARNING: --token puts tokens in `ps` output and shell history; use --tokens-file FILE (chmod 600), "
              f"${TOKEN_ENV} or `shadowcam label tokens add` instead", file=sys.stderr, flush=True)
        sources.append(parse_token_entries("\n".join(args.token), "--token"))
    if args.tokens_file:
        sources.append(read_tokens_file(args.tokens_file))
    sources.append(tokens_from_env())
    for src in sources:
        for tok, (name, role) in src.items():
            if tok in entries or any(n == name for n, _ in entries.values()):
                raise ConfigError(f"token for {name!r} given twice (--token, --tokens-file, ${TOKEN_ENV})")
            entries[tok] = (name, role)
    reviewers = set(args.reviewer)
    store = PredictionStore(args.db, must_exist=True)
    try:
        if entries:
            # a ROLE-less entry is "annotator"; --reviewer NAME upgrades it (the old flag's meaning)
            entries = {t: (n, "reviewer" if r == "annotator" and n in reviewers else r) for t, (n, r) in entries.items()}
            for line in register_tokens(store, entries):
                print(f"token {line}", flush=True)
        n_active = len(store.label_tokens(active_only=True))
    finally:
        store.close()
    kwargs: dict[str, Any] = dict(class_names=_classes(args.classes), image_root=args.image_root, show_predictions=args.show_predictions,
                                  explain=not args.no_explain, explain_model=args.explain_model, explain_method=args.explain_method,
                                  status_refresh_s=args.status_refresh, status_window_s=status_window)
    app = create_app(args.db, target=target, eval_config=eval_config, auth=auth, **kwargs)  # validates everything once
    tls = bool(args.certfile)
    scheme = "https" if tls else "http"
    host = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"labeling page: {scheme}://{host}:{args.port}/  ({n_active} active token(s) in the store, classes: "
          f"{', '.join(app.state.class_names)})", flush=True)
    print(f"review: {scheme}://{host}:{args.port}/review  status: {scheme}://{host}:{args.port}/status  (reviewers and admins; "
          f"tokens: /admin or `shadowcam label tokens list`)", flush=True)
    if target is not None:
        what = "the champion/challenger decision" if target.kind == "decision" else f"±{100 * target.half_width:g} points"
        print(f"label target: {what} at {100 * target.level:g}% per {target.scope}", flush=True)
    warning = plain_http_warning(args.host, tls)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    ssl = dict(ssl_certfile=args.certfile, ssl_keyfile=args.keyfile) if tls else {}
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **ssl)
        return 0
    # several workers: each builds its app from the same settings (uvicorn needs an import string for that)
    os.environ[SERVE_ENV] = json.dumps(dict(kwargs, store_url=args.db, auth=auth.model_dump(mode="json"),
                                            target=target.model_dump(mode="json") if target else None,
                                            eval_config=eval_config.model_dump(mode="json")))
    uvicorn.run("pipeline.labeling.app:app_from_env", factory=True, workers=args.workers, host=args.host, port=args.port,
                log_level="warning", **ssl)
    return 0
