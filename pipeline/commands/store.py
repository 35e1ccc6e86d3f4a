"""``shadowcam store``: keep a prediction store to the size of a month (retention) and see what it holds.

Examples::

    shadowcam store retain --config configs/run.example.yaml --dry-run     # what store.retention would do
    shadowcam store retain --db postgresql://shadowcam@db-host/shadowcam --full-days 14
    shadowcam store size --db runs/demo/shadowcam.db                        # bytes per prediction, per table
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipeline.config import RetentionConfig

NAME = "store"
HELP = "apply the retention policy to a prediction store (retain), or report its size (size)"
DESCRIPTION = (
    "retain: frames older than full_days keep their full rows (frame, predictions with probabilities) only when "
    "sampled or labelled, or drawn into the seeded reservoir (reservoir_per_camera_day per run, camera and UTC day); "
    "every other old frame is folded into per-window aggregates (counts, incumbent-vs-shadow agreement, histograms of "
    "confidence, of each class's probability and of the image statistics the drift check uses) in the "
    "window_aggregates table, and its rows are deleted. One transaction per window; running it again does nothing "
    "new. The policy is store.retention of --config (configs/run.example.yaml), overridden by the options here. "
    "size: bytes per stored prediction (tables with their indexes)."
)


def _db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, metavar="URL",
                   help="prediction store: SQLite path or SQLAlchemy URL; when omitted, store.url of --config, else WORKDIR/shadowcam.db")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="run config whose store block (url, retention) applies")
    p.add_argument("--workdir", default=None, help="where a relative store.url lives; when omitted, the config's workdir, else .")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    r = sub.add_parser("retain", help="apply the retention policy (store.retention)", description=DESCRIPTION)
    _db_args(r)
    r.add_argument("--full-days", type=float, default=None, metavar="DAYS",
                   help=f"keep every row this many days (default: the config's, else {RetentionConfig.default('full_days'):g})")
    r.add_argument("--reservoir", type=int, default=None, metavar="K",
                   help=f"frames kept in full per run, camera and day (default: the config's, else "
                        f"{RetentionConfig.default('reservoir_per_camera_day')})")
    r.add_argument("--window", default=None, metavar="DURATION",
                   help="aggregate window, dividing a day (10m, 1h, 6h, 1d; default: the config's, else 1h)")
    r.add_argument("--dry-run", action="store_true", help="report what would be kept, aggregated and deleted; write nothing")
    r.add_argument("--vacuum", action="store_true",
                   help="afterwards, give the freed space back (SQLite: VACUUM rewrites the file, needs its size free on disk "
                        "and locks the store meanwhile; PostgreSQL: VACUUM ANALYZE)")
    s = sub.add_parser("size", help="bytes per prediction and per table")
    _db_args(s)


def _resolve(args: argparse.Namespace) -> tuple[str, RetentionConfig]:
    from pipeline.config import load_config

    cfg = load_config(args.config) if args.config else None
    url = args.db or (cfg.store.url if cfg else "shadowcam.db")
    workdir = args.workdir or (cfg.workdir if cfg and cfg.workdir else ".")
    if "://" not in url and not Path(url).is_absolute():
        url = str(Path(workdir) / url)
    return url, (cfg.store.retention if cfg else RetentionConfig())


def main(args: argparse.Namespace) -> int:
    from pipeline.store import redact_url

    url, policy = _resolve(args)
    if args.store_command == "size":
        from pipeline.retention import store_size

        size = store_size(url)
        if args.json:
            print(json.dumps(size, indent=2))
        else:
            print(f"{redact_url(url)} ({size['backend']}): {size['n_predictions']} predictions, "
                  f"{size['bytes_per_prediction']:.1f} bytes each (frames, predictions, samples, labels with their indexes); "
                  f"{size['total_bytes'] / 1e6:.1f} MB in all")
            for name, n in sorted(size["tables"].items(), key=lambda kv: -kv[1]):
                print(f"  {name:<24} {n / 1e6:10.2f} MB")
        return 0

    from pipeline.retention import retain, vacuum

    doc = policy.model_dump()
    for key, value in (("full_days", args.full_days), ("reservoir_per_camera_day", args.reservoir), ("window", args.window)):
        if value is not None:
            doc[key] = value
    policy = RetentionConfig(**doc)
    report = retain(url, policy, dry_run=args.dry_run)
    if args.vacuum and not args.dry_run:
        vacuum(url)
    if args.json:
        print(json.dumps({"store": redact_url(url), "policy": policy.model_dump(), **report.__dict__}, indent=2))
    else:
        print(report.summary())
    return 0
