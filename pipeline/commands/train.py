"""``shadowcam train``: train a classifier, export a verified ONNX with its model card, log it to MLflow.

Examples::

    shadowcam synth --out data/synth && shadowcam train --data data/synth
    shadowcam train --data data/synth --data labels/production.csv --register shadowcam --alias challenger
    shadowcam train --data my_frames/ --arch resnet18 --img-size 96 --epochs 30 --weights resnet18.pth
    shadowcam train --data frames.csv --augment my_policy.json --class-balance sampler --patience 5
    shadowcam train --data frames.csv --resume runs/training/20261129T2200Z-mobilenet_v3_small   # after an interruption
"""

from __future__ import annotations

import argparse

from pipeline.config import ARCHS, TrainConfig

NAME = "train"
HELP = "train a classifier on ImageFolders/manifests, export verified ONNX + model card, log to MLflow"
DESCRIPTION = (
    "Train a torchvision classifier on one or more data sources (ImageFolder directories or CSV manifests "
    "path,label[,split][,group], concatenated; a folder with manifest.csv uses it), streamed from disk by worker "
    "processes (or cached in memory when small). Starts from --weights, else torchvision's ImageNet weights when they "
    "are in the local torch cache, else from scratch (never downloads). Train/val/test split by group when the "
    "manifest has a group column (camera, video, time block: near-duplicate frames never straddle splits), "
    "stratified otherwise, unless the manifest gives the split; best epoch by validation accuracy; softmax "
    "temperature and ATC threshold fitted on validation; test accuracy, per-class accuracy and confusion matrix. "
    "Exports ONNX (uint8 NHWC input, preprocessing in the graph) verified against torch, with the model card in its "
    "metadata, logs an MLflow run and optionally registers the model under an alias."
)

def add_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig.default  # every default is declared once, on the config model
    p.add_argument("--data", required=True, action="extend", nargs="+", metavar="DIR|CSV",
                   help="ImageFolder dir (DIR/<class>/*.jpg), dir with manifest.csv, or manifest CSV; repeat to concatenate "
                        "(the first source's classes are the label space)")
    p.add_argument("--arch", choices=ARCHS, default=d("arch"), help="torchvision architecture")
    p.add_argument("--img-size", type=int, default=d("img_size"), help="square model input size in pixels")
    p.add_argument("--epochs", type=int, default=d("epochs"), help="training epochs")
    p.add_argument("--batch-size", type=int, default=d("batch_size"), help="batch size")
    p.add_argument("--lr", type=float, default=d("lr"), help="peak learning rate (AdamW, one-cycle schedule)")
    p.add_argument("--seed", type=int, default=d("seed"), help="seed for split, init, shuffling and augmentation")
    p.add_argument("--out", default=None, help="output folder (ONNX, checkpoint, card, plots); default WORKDIR/training/<time>-<arch>")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="local initial weights: a torchvision state dict or a shadowcam best.pt (nothing is downloaded)")
    p.add_argument("--classes", default=None, metavar="A,B,...",
                   help="fix the class list and its order (e.g. the incumbent's); default: the first source's")
    p.add_argument("--augment", default=d("augment"), metavar="PRESET|FILE",
                   help="augmentation: conveyor (flips + rotations, top-down conveyor cameras), generic (no flips, "
                        "rotations <= 8 deg), none, auto (conveyor for a `shadowcam synth` set, generic otherwise), or an "
                        "albumentations policy file written by A.save (JSON/YAML)")
    p.add_argument("--class-balance", choices=("none", "loss", "sampler"), default=d("class_balance"),
                   help="class imbalance: class-weighted loss, or class-balanced sampling of batches")
    p.add_argument("--patience", type=int, default=None, metavar="EPOCHS",
                   help="early stopping: stop after this many epochs without a better validation accuracy")
    p.add_argument("--resume", default=None, metavar="DIR|last.pt",
                   help="continue an interrupted run from its last.pt (written after every epoch); same data and settings")
    p.add_argument("--no-pretrained", action="store_true",
                   help="without --weights, start from scratch even when torchvision's weights are in the torch cache")
    p.add_argument("--workers", type=int, default=None, help="decoding worker processes (default: one per core but one)")
    p.add_argument("--cache", choices=("auto", "memory", "none"), default=d("cache"),
                   help="decode the dataset into memory first (memory), stream it from disk every epoch (none), or "
                        "cache when it fits --cache-max-gb (auto)")
    p.add_argument("--cache-max-gb", type=float, default=d("cache_max_gb"), help="memory budget of --cache auto")
    p.add_argument("--fp16", action="store_true", help="also export a float16 ONNX variant (model_fp16.onnx)")
    p.add_argument("--max-bad-fraction", type=float, default=d("max_bad_fraction"),
                   help="share of unreadable images skipped with a warning before the run fails")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d("device"), help="training device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--experiment", default=d("experiment"), help="MLflow experiment")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow (no --register then)")
    p.add_argument("--register", default=None, metavar="NAME", help="register the ONNX as a new version of this model")
    p.add_argument("--alias", default=None, metavar="ALIAS", help="alias for the new version (champion, challenger)")
    p.add_argument("--workdir", default=d("workdir"), help="work directory: mlflow.db, mlartifacts/, default output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result (metrics, paths, card) as JSON")


def main(args: argparse.Namespace) -> int:
    import json

    from models.train import make_config, result_dict, train
    from pipeline.types import ConfigError

    if args.no_mlflow and args.register:
        raise ConfigError("--register needs MLflow; drop --no-mlflow")
    cfg = make_config(
        data=args.data, arch=args.arch, img_size=args.img_size, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, out=args.out, weights=args.weights,
        class_names=[c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None,
        augment=args.augment, fp16=args.fp16, max_bad_fraction=args.max_bad_fraction, device=args.device,
        threads=args.threads, experiment=args.experiment, track=not args.no_mlflow, register_name=args.register,
        alias=args.alias, workdir=args.workdir, progress=not args.no_progress, class_balance=args.class_balance,
        patience=args.patience, resume=args.resume, pretrained=not args.no_pretrained, workers=args.workers,
        cache=args.cache, cache_max_gb=args.cache_max_gb,
    )
    result = train(cfg)
    print(result.summary())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result_dict(result), f, indent=2)
    return 0
