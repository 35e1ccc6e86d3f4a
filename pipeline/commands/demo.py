"""``shadowcam demo``: the whole story in one command (see apps/demo.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from apps.config import DemoConfig

NAME = "demo"
HELP = "run the whole story on synthetic data: train, shadow-run, label, evaluate, retrain, promote"
DESCRIPTION = (
    "Synthesize a clean training set and train the incumbent (alias champion); stream a production feed whose "
    "conditions drift (day -> night -> night + motion blur + new packaging) through the shadow runtime; label the "
    "sampled frames with the simulated annotator; log the train-to-production gap per window to MLflow; retrain with "
    "the production labels (alias challenger); run the challenger in shadow on fresh frames; promote only if the "
    "anytime-valid decision says so; print a summary. Default settings take about 12 minutes on a 2-core CPU, --fast about 5."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = DemoConfig.default
    p.add_argument("--workdir", default=str(d("workdir")), help="where everything goes (data, models, store, mlflow.db, reports)")
    p.add_argument("--fast", action="store_true", help="smaller data and streams (about 5 minutes; what the tests run)")
    p.add_argument("--seed", type=int, default=d("seed"), help="seed of every generator and training run")
    p.add_argument("--model-name", default=d("model_name"), help="registered model name in MLflow")
    p.add_argument("--annotator-error", type=float, default=d("annotator_error"), help="error rate of the simulated annotator")
    p.add_argument("--sample-strategy", default=None, choices=("uniform", "stratified", "disagreement", "uncertainty"),
                   help=f"label sampling strategy (default {d('sample_strategy')} with a uniform floor)")
    full, fast = DemoConfig.preset(False), DemoConfig.preset(True)
    p.add_argument("--sample-rate", type=float, default=None,
                   help=f"share of production frames sent for labels (default {full.sample_rate:g}, --fast {fast.sample_rate:g})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--keep", action="store_true", help="do not clear the demo's previous files in --workdir first")


def main(args: argparse.Namespace) -> int:
    from apps.demo import run_demo  # training and the runtime: imported only when the command runs

    kw = {}
    if args.sample_rate is not None:
        kw["sample_rate"] = args.sample_rate
    if args.sample_strategy:
        kw["sample_strategy"] = args.sample_strategy
    cfg = DemoConfig.preset(args.fast, workdir=Path(args.workdir), seed=args.seed, model_name=args.model_name,
                            annotator_error=args.annotator_error, progress=not args.no_progress, clean=not args.keep, **kw)
    run_demo(cfg)
    return 0
