"""``shadowcam data check``: a report on a dataset before training (see :mod:`models.datacheck`).

    shadowcam data check DATA [DATA ...] [--db URL] [--run RUN_ID ...] [--model FILE.onnx|models:/NAME@ALIAS]
                         [--img-size N] [--window-s S] [--label-issues] [--html FILE] [--json] ...

Examples::

    shadowcam data check data/train
    shadowcam data check my_frames/ labels/production.csv --label-issues --html data_check.html
    shadowcam data check data/train --db runs/demo/shadowcam.db --window-s 60
"""

from __future__ import annotations

import argparse

NAME = "data"
HELP = "check a dataset before training: counts, unreadable files, duplicates across splits, label issues, coverage of production"
DESCRIPTION = (
    "`check` reports on one or more data sources (ImageFolder dirs, dirs with manifest.csv, manifest CSVs): class counts "
    "and imbalance, unreadable and non-image files, exact and near-duplicate images (in particular across "
    "train/val/test), likely label errors from out-of-fold predictions (--label-issues), and with --db the share of each "
    "camera's production frames outside the range of the training images. See `shadowcam data check --help`."
)

# Defaults the help text states; they are DataCheckConfig's (tests/pipeline/test_data_cli.py checks they agree). Options
# the user does not give are left to the config.
SHOWN_DEFAULTS = {
    "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0, "window_s": 60.0, "phash_distance": 6, "shift_distance": 10,
    "shift_similarity": 0.95, "label_folds": 3, "label_img_size": 48, "label_epochs": 16, "coverage_sample": 2000,
}
_S = argparse.SUPPRESS


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    d = SHOWN_DEFAULTS
    c = sub.add_parser("check", help="report on a dataset (counts, unreadable files, duplicates, label issues, coverage)",
                       description=DESCRIPTION)
    c.add_argument("data", nargs="+", metavar="DATA", help="ImageFolder dir (DIR/<class>/*.jpg), dir with manifest.csv, or "
                   "manifest CSV (path,label[,split]); several are concatenated, the first one's classes are the label space")
    c.add_argument("--classes", default=_S, help="comma-separated class list (default: the first source's)")
    c.add_argument("--img-size", type=int, default=_S, metavar="N",
                   help="decode at NxN (default: the input size of --model, else of the store's newest incumbent, else 64)")
    c.add_argument("--val-fraction", type=float, default=_S, help=f"the split training makes when the manifest has none (default {d['val_fraction']})")
    c.add_argument("--test-fraction", type=float, default=_S, help=f"(default {d['test_fraction']})")
    c.add_argument("--seed", type=int, default=_S, help=f"split, coverage sample and label-model seed (default {d['seed']})")
    c.add_argument("--workers", type=int, default=_S, help="decoding threads (default: one per core, at most 8)")
    g = c.add_argument_group("duplicates")
    g.add_argument("--no-duplicates", action="store_true", help="skip the duplicate search")
    g.add_argument("--phash-distance", type=int, default=_S,
                   help=f"near-duplicate candidates: imagehash.phash at most this many bits apart (default {d['phash_distance']})")
    g.add_argument("--no-foreground", action="store_true",
                   help="skip the fixed-camera search (each view's background estimated, the items in front of it compared)")
    g.add_argument("--no-shift-tolerant", action="store_true",
                   help="do not look for moved copies (frames of an item moving through a fixed camera's view)")
    g.add_argument("--shift-distance", type=int, default=_S,
                   help=f"moved-copy candidates: shift hash at most this many bits apart (default {d['shift_distance']})")
    g.add_argument("--shift-similarity", type=float, default=_S,
                   help=f"a near-duplicate: thumbnails correlate at least this much at their best shift (default {d['shift_similarity']})")
    g = c.add_argument_group("label issues")
    g.add_argument("--label-issues", action="store_true",
                   help="find likely label errors: trains a small CNN on k folds (out-of-fold probabilities) and asks cleanlab")
    g.add_argument("--label-folds", type=int, default=_S, help=f"folds (default {d['label_folds']})")
    g.add_argument("--label-size", dest="label_img_size", type=int, default=_S, help=f"image side the label model sees (default {d['label_img_size']})")
    g.add_argument("--label-epochs", type=int, default=_S, help=f"epochs per fold (default {d['label_epochs']})")
    g.add_argument("--label-threads", type=int, default=_S, help="torch threads while training (default: torch's choice)")
    g = c.add_argument_group("coverage of production")
    g.add_argument("--db", default=_S, help="prediction store (SQLite path or SQLAlchemy URL): report how much of each camera's "
                   "frames lie outside the training images' range")
    g.add_argument("--run", dest="runs", action="append", default=_S, metavar="RUN_ID", help="read these runs only (repeatable; default: all)")
    g.add_argument("--model", default=_S, metavar="FILE.onnx|URI",
                   help="model whose input size and confidence reference to use (default with --db: the store's newest incumbent, when found)")
    g.add_argument("--window-s", type=float, default=_S, metavar="S", help=f"coverage windows, from each camera's first frame (default {d['window_s']:g})")
    g.add_argument("--coverage-sample", type=int, default=_S, help=f"training images whose statistics form the reference (default {d['coverage_sample']})")
    g.add_argument("--workdir", default=_S, help="MLflow store for models:/ URIs (default: the current directory, or the run's)")
    g.add_argument("--cache-dir", default=_S, help="where models:/ URIs are downloaded (default: WORKDIR/.cache/models)")
    g = c.add_argument_group("output")
    g.add_argument("--json", action="store_true", help="print the full report as JSON instead of the summary")
    g.add_argument("--html", default=None, metavar="FILE", help="also write the report as one self-contained HTML page")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _store_incumbent(db: str, cache_dir: str | None) -> dict | None:
    """The store's newest run's incumbent as DataCheckConfig fields (model, model_id, workdir), or None (logged)."""
    import logging
    from pathlib import Path

    from models.datacheck import existing_store
    from pipeline import tracking
    from pipeline.labeling.overlays import run_model_uri
    from pipeline.store import PredictionStore
    from pipeline.types import ShadowcamError

    log = logging.getLogger("shadowcam.data")
    store = PredictionStore(existing_store(db), must_exist=True)
    try:
        runs = store.list_runs()
    finally:
        store.close()
    if not runs:
        return None  # check_data says the store has no runs
    run = runs[-1]
    uri, workdir = run_model_uri(run, "incumbent")
    if uri is None:
        log.warning("the store's newest run records no incumbent model: no model size or confidence (give --model)")
        return None
    try:
        if uri.startswith("models:/"):
            path, _, _ = tracking.resolve_model_uri(uri, Path(cache_dir) if cache_dir else Path(workdir) / ".cache" / "models", workdir)
            uri = str(path)
        elif not Path(uri).is_file():
            raise FileNotFoundError(f"{uri}: model file not found")
    except (ShadowcamError, OSError) as e:
        log.warning("the store's incumbent %s is not available (%s): no model size or confidence (give --model)", uri, e)
        return None
    except Exception as e:  # MLflow's own exception types for unknown models/aliases
        log.warning("the store's incumbent %s could not be resolved (%s: %s): give --model", uri, e.__class__.__name__, e)
        return None
    return {"model": uri, "model_origin": "store", "model_id": run.get("incumbent_model") or None, "workdir": workdir}


def main(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from models.datacheck import DataCheckConfig, check_data

    names = ("img_size", "val_fraction", "test_fraction", "seed", "workers", "phash_distance", "shift_distance",
             "shift_similarity", "label_folds", "label_img_size", "label_epochs", "label_threads", "db", "runs", "model",
             "window_s", "coverage_sample", "workdir", "cache_dir")
    kw = {k: getattr(args, k) for k in names if hasattr(args, k)}
    if hasattr(args, "classes"):
        kw["class_names"] = [c.strip() for c in args.classes.split(",") if c.strip()]
    kw.update(data=list(args.data), duplicates=not args.no_duplicates, shift_tolerant=not args.no_shift_tolerant,
              foreground=not args.no_foreground,
              label_issues=args.label_issues, progress=not args.no_progress and sys.stderr.isatty())
    if kw.get("db") and not kw.get("model"):
        found = _store_incumbent(kw["db"], kw.get("cache_dir"))
        if found:
            if "workdir" in kw:
                found.pop("workdir")
            kw.update(found)
    cfg = DataCheckConfig(**kw)
    report = check_data(cfg)
    if args.html:
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(report.html(), encoding="utf-8")
    if args.json:
        print(report.to_json())
    else:
        print(report.text())
        if args.html:
            print(f"HTML report: {args.html}")
    return 0
