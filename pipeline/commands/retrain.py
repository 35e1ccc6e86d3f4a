"""``shadowcam retrain``: retrain on the original data plus labelled production frames; register as challenger.

Example (a nightly job)::

    shadowcam retrain --db work/shadowcam.db --data data/train --register conveyor --workdir work
    shadowcam run ... --shadow models:/conveyor@challenger      # the challenger runs in shadow
    shadowcam evaluate --db work/shadowcam.db                   # the paired test decides
    shadowcam promote --model conveyor                          # when it says promote
"""

from __future__ import annotations

import argparse

from pipeline.config import ARCHS, TrainConfig

NAME = "retrain"
HELP = "retrain with production labels (store) + original data; verified ONNX registered as challenger"
DESCRIPTION = (
    "Collect every labelled production frame from the prediction store (its sampled JPEG and the majority of its "
    "non-unsure labels), write them as a manifest grouped by camera and time block (whole blocks go to one split), "
    "train on the original data plus that manifest in the incumbent's "
    "label space (verified ONNX export, MLflow run), and register the new version with the alias 'challenger'. "
    "Promotion is left to the evaluator's paired test and `shadowcam promote`."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig.default
    p.add_argument("--db", required=True, help="prediction store URL or SQLite path (labels + sampled frames)")
    p.add_argument("--data", required=True, action="extend", nargs="+", metavar="DIR|CSV",
                   help="the original training data (ImageFolder dir or manifest CSV); repeatable")
    p.add_argument("--register", default=None, metavar="NAME", help="registered model to add the new version to")
    p.add_argument("--alias", default="challenger", help="alias for the new version")
    p.add_argument("--base-model", default=None, metavar="URI",
                   help="model whose label space to keep (models:/NAME@champion or .onnx); default: the store's newest run")
    p.add_argument("--arch", choices=ARCHS, default=d("arch"), help="torchvision architecture")
    p.add_argument("--img-size", type=int, default=d("img_size"), help="model input size in pixels")
    p.add_argument("--epochs", type=int, default=d("epochs"), help="training epochs")
    p.add_argument("--seed", type=int, default=d("seed"), help="seed")
    p.add_argument("--lr", type=float, default=d("lr"), help="peak learning rate (lower it when fine-tuning --weights)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="start from these weights (e.g. the incumbent's best.pt: fine-tuning); nothing is downloaded")
    p.add_argument("--augment", default=d("augment"), metavar="PRESET|FILE",
                   help="augmentation preset (conveyor, generic, none, auto) or albumentations policy file")
    p.add_argument("--class-balance", choices=("none", "loss", "sampler"), default=d("class_balance"),
                   help="class imbalance: class-weighted loss, or class-balanced batches")
    p.add_argument("--patience", type=int, default=None, metavar="EPOCHS", help="early stopping on validation accuracy")
    p.add_argument("--out", default=None, help="output folder (default WORKDIR/retrain)")
    p.add_argument("--workdir", default=".", help="work directory (mlflow.db, mlartifacts/)")
    p.add_argument("--experiment", default=d("experiment"), help="MLflow experiment")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from models.retrain import retrain
    from pipeline.store import PredictionStore

    PredictionStore(args.db, must_exist=True).close()  # a mistyped store path is refused here, not created by retrain()
    result, prod = retrain(
        args.db, args.data, workdir=args.workdir, register_name=args.register, alias=args.alias if args.register else None,
        base_model=args.base_model, arch=args.arch, img_size=args.img_size, epochs=args.epochs, seed=args.seed,
        out=args.out, experiment=args.experiment, progress=not args.no_progress, lr=args.lr, weights=args.weights,
        augment=args.augment, class_balance=args.class_balance, patience=args.patience,
    )
    print(f"production frames used: {prod.n_frames} ({prod.n_excluded} labelled frames left out) from {prod.manifest}")
    print("per class: " + ", ".join(f"{c} {n}" for c, n in prod.class_counts.items()))
    print(result.summary())
    return 0
