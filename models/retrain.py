"""Scripted retraining: the original training data plus the production frames people labelled.

``shadowcam retrain --db URL --data DIR [--data DIR ...] --register NAME`` (or :func:`retrain`):

1. collect every labelled production frame from the prediction store (its sampled JPEG and its truth
   under the one truth rule, :func:`pipeline.evaluation.truth.majority_truth`: the majority of its
   non-``unsure`` labels naming a known class; all-unsure, tied and unknown-class frames are left out);
2. write them as a CSV manifest (``path,label,split,group,...``) beside the new model, grouped by camera and
   block of time (consecutive frames show the same parcel, so a frame-by-frame split would leak) and split
   train/val/test by whole groups with the training code's group split, with the training rows repeated so
   production weighs about as much as the original data;
3. train on the original data + that manifest, in the incumbent's label space, with the usual
   verified ONNX export (:mod:`models.export`) and MLflow run;
4. register the result under ``NAME`` with the alias ``challenger`` (the shadow slot).

Promotion is *not* done here: the challenger first runs in shadow, and the evaluator's paired test
decides (``shadowcam evaluate`` then ``shadowcam promote``).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import store as st
from pipeline.evaluation.truth import majority_truth
from pipeline.types import DataError

log = logging.getLogger("shadowcam.retrain")


@dataclass
class ProductionSet:
    manifest: Path
    n_frames: int  # labelled frames written to the manifest
    n_excluded: int  # labelled frames left out (unsure only, tied, unknown class, image missing)
    class_counts: dict[str, int]
    # frames of the training sample (drawn for being hard, SamplingConfig.training) whose time block went to val or
    # test: left out, since a test split picked for difficulty would understate the offline accuracy, and moving
    # them to train would put near-copies of test frames into training
    n_training_sample_held_out: int = 0


def majority_labels(store: st.PredictionStore, class_names: list[str]) -> tuple[dict[str, str], int]:
    """frame_id -> its truth under :func:`~pipeline.evaluation.truth.majority_truth` (labels outside
    ``class_names`` do not vote); and how many labelled frames have none (all unsure, tied, no known class)."""
    known = set(class_names)
    out: dict[str, str] = {}
    excluded = 0
    for fid, frame_labels in store.labels_by_frame().items():
        truth = majority_truth(frame_labels, known)
        if truth.ok:
            out[fid] = truth.label
        else:
            excluded += 1
    return out, excluded


def time_block_groups(cameras: list[str], ts: list[float], block_s: float) -> list[str]:
    """The group of every frame: its camera and its block of ``block_s`` seconds (``"dock-cam-1/t0042"``).

    Consecutive video frames show the same parcel; splitting them one by one would put near-copies of a test frame
    into training and flatter the offline accuracy, so whole groups go to one split.
    """
    return [f"{cam}/t{int(t // block_s):06d}" for cam, t in zip(cameras, ts)]


def export_production_set(store: st.PredictionStore, out_csv: str | Path, class_names: list[str], repeat: int = 1,
                          block_s: float = 5.0, val_fraction: float = 0.15, test_fraction: float = 0.15,
                          seed: int = 0) -> ProductionSet:
    """Write the labelled production frames (sampled JPEGs) as a training manifest ``path,label,split``.

    Splits are assigned by whole camera time blocks (:func:`time_block_groups`, split with the training code's
    :func:`models.data.group_split`, stratified by each block's majority label); training rows are written
    ``repeat`` times, so a few hundred production frames weigh against thousands of original images.
    Frames of the training sample (strategy ``training:...``) are used for training only: in a val or test block
    they are left out (``n_training_sample_held_out``).
    """
    out_csv = Path(out_csv)
    truth, excluded = majority_labels(store, class_names)
    rows = []
    for s in store.sampled_frames():
        if s.frame_id not in truth:
            continue
        if not s.image_path or not Path(s.image_path).is_file():
            excluded += 1
            continue
        rows.append((str(Path(s.image_path).resolve()), truth[s.frame_id], s.camera_id, s.frame_id, s.ts,
                     s.strategy.startswith(st.TRAINING_PREFIX)))
    if not rows:
        raise DataError(
            f"store {store.url}: no labelled production frames with images to retrain on "
            "(label sampled frames first: `shadowcam label serve`, `label import` or `label simulate`)"
        )
    rows.sort(key=lambda r: r[3])
    from models.data import group_split

    groups = time_block_groups([r[2] for r in rows], [r[4] for r in rows], block_s)
    codes = {c: i for i, c in enumerate(sorted({r[1] for r in rows}))}
    splits = list(group_split(groups, [codes[r[1]] for r in rows], val_fraction, test_fraction, seed))
    held_out = [sp != "train" and r[5] for r, sp in zip(rows, splits)]
    kept = [(r, sp, g) for r, sp, g, h in zip(rows, splits, groups, held_out) if not h]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with out_csv.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "group", "camera", "frame_id"])
        for r, sp, g in kept:
            for _ in range(max(1, repeat) if sp == "train" else 1):
                w.writerow([r[0], r[1], sp, g, r[2], r[3]])
    counts = Counter(r[1] for r, _, _ in kept)
    return ProductionSet(out_csv, len(kept), excluded, {c: counts.get(c, 0) for c in class_names}, sum(held_out))


def retrain(
    db: str,
    data: list[str],
    workdir: str | Path = ".",
    register_name: str | None = None,
    alias: str | None = "challenger",
    class_names: list[str] | None = None,
    base_model: str | None = None,
    repeat: int | None = None,
    **train_kwargs: Any,
):
    """Retrain on ``data`` + the store's labelled production frames; returns (TrainResult, ProductionSet).

    ``class_names``: the label space (default: the incumbent's, i.e. the store's newest run, or the
    ``base_model`` card's when given — a ``models:/NAME@ALIAS`` URI or an .onnx path).
    ``train_kwargs`` go to :class:`models.train.TrainConfig` (arch, img_size, epochs, seed, ...).
    """
    from models.train import make_config, train

    workdir = Path(workdir)
    store = st.PredictionStore(db)
    try:
        if class_names is None and base_model:
            from pipeline import tracking
            from pipeline.modelcard import read_card

            path, _, _ = tracking.resolve_model_uri(base_model, workdir / ".cache" / "models", workdir=workdir)
            class_names = read_card(path).class_names
        class_names = class_names or store.run_class_names()
        if not class_names:
            raise DataError(f"store {store.url}: no runs recorded, so the label space is unknown; pass --base-model")
        out_dir = Path(train_kwargs.pop("out", None) or workdir / "retrain")
        if repeat is None:  # production frames weigh about as much as the original training images
            from models.data import list_source

            n_base = sum(len(list_source(d).samples) for d in data)
            n_prod = max(1, len(majority_labels(store, class_names)[0]))
            repeat = int(min(8, max(1, round(0.7 * n_base / (0.7 * n_prod)))))
        prod = export_production_set(store, out_dir / "production_labels.csv", class_names, repeat=repeat,
                                     seed=int(train_kwargs.get("seed", 0)))
    finally:
        store.close()
    log.info("retrain: %d labelled production frames (%d left out, %d of the training sample held out of val/test "
             "blocks; training rows x%d) + %s", prod.n_frames, prod.n_excluded, prod.n_training_sample_held_out, repeat,
             ", ".join(data))
    cfg = make_config(
        data=[*data, str(prod.manifest)], class_names=class_names, workdir=str(workdir), out=str(out_dir),
        register_name=register_name, alias=alias if register_name else None, **train_kwargs,
    )
    result = train(cfg)
    return result, prod
