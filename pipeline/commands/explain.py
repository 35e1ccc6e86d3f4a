"""``shadowcam explain``: a saliency overlay for one frame, computed from the deployed ONNX model.

Examples::

    shadowcam explain runs/demo/samples/cam1/frame.jpg --model models:/conveyor-classifier@champion --workdir runs/demo
    shadowcam explain 'run1:cam1:412' --model model.onnx --db runs/demo/shadowcam.db --method rise --out why.png
    shadowcam explain frame.jpg --method gradcam --checkpoint training/incumbent/best.pt --target foreign_object
"""

from __future__ import annotations

import argparse

NAME = "explain"
HELP = "write a saliency overlay for a frame or image: what the deployed model looked at"
DESCRIPTION = (
    "Explain one answer of the deployed model: perturbed copies of the frame (occlusion patches or RISE masks) run "
    "through ONNX Runtime, and the drop of the target class's probability is mapped back onto the frame, written "
    "as a PNG overlay (red: strongest evidence). The argument is an image file, or else a frame id whose sampled JPEG is "
    "read from the prediction store (--db, default WORKDIR/shadowcam.db). --method gradcam explains the training "
    "checkpoint (--checkpoint best.pt) with Grad-CAM instead (needs the training extras)."
)


METHODS = ("occlusion", "rise", "gradcam")  # pipeline.explain.METHODS + GRADCAM (spelled out: --help stays light)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="FRAME_ID|IMAGE", help="an image file, or a frame id from the prediction store")
    p.add_argument("--model", default=None, metavar="URI_OR_PATH",
                   help="the deployed model: .onnx path or models:/NAME@ALIAS (required unless --method gradcam)")
    p.add_argument("--db", default=None, help="prediction store for frame ids: SQLite path or SQLAlchemy URL; when omitted, WORKDIR/shadowcam.db")
    p.add_argument("--workdir", default=".", help="work directory: default store, MLflow store for models:/ URIs, download cache")
    p.add_argument("--image-root", default=None, help="folder that relative sampled-image paths are resolved against (default: current directory)")
    p.add_argument("--method", choices=METHODS, default="occlusion", help="saliency method")
    p.add_argument("--target", default=None, metavar="CLASS", help="class to explain (default: the predicted class)")
    p.add_argument("--out", default=None, metavar="FILE.png", help="overlay PNG (default: explain_<source>_<method>.png here)")
    p.add_argument("--window", type=int, default=None, help="occlusion patch side in model-input pixels (default: 1/12 of the shorter side)")
    p.add_argument("--stride", type=int, default=None, help="occlusion patch step (default: half the window)")
    p.add_argument("--baseline", default="mean", help="occluded pixels become: mean (the frame's mean colour), blur, or a grey level 0..255")
    p.add_argument("--masks", type=int, default=1000, help="RISE: number of random masks")
    p.add_argument("--seed", type=int, default=0, help="RISE: mask seed")
    p.add_argument("--checkpoint", default=None, metavar="best.pt", help="gradcam: the training checkpoint written by shadowcam train")
    p.add_argument("--alpha", type=float, default=0.45, help="weight of the heat map in the overlay")


def _baseline(text: str) -> str | float:
    try:
        return float(text)
    except ValueError:
        return text


def _load_source(args: argparse.Namespace):
    """``(image_bgr, label for the output name)`` from an image path or a frame id in the store."""
    from pathlib import Path

    from pipeline.explain import IMAGE_SUFFIXES, ExplainError, frame_image_path, read_image
    from pipeline.store import PredictionStore, default_sqlite_url

    src = Path(args.source)
    if src.is_file():
        return read_image(src), src.stem
    if src.suffix.lower() in IMAGE_SUFFIXES:
        raise ExplainError(f"{src}: no such image file")
    db = args.db or default_sqlite_url(args.workdir)
    if "://" not in db or db.startswith("sqlite:///"):
        path = Path(db.split("sqlite:///", 1)[-1])
        if not path.is_file():
            raise ExplainError(f"{args.source!r} is not an image file, and the prediction store {path} to look it up "
                               f"as a frame id does not exist (give --db or --workdir)")
    store = PredictionStore(db, must_exist=True)
    try:
        image_path = frame_image_path(store, args.source, args.image_root)
    finally:
        store.close()
    return read_image(image_path), args.source


def main(args: argparse.Namespace) -> int:
    import re
    from pathlib import Path

    from pipeline.explain import GRADCAM, ExplainError, explain_gradcam, explain_image, write_overlay

    if args.method != GRADCAM and not args.model:
        raise ExplainError("--model is required (an .onnx path or models:/NAME@ALIAS) unless --method gradcam")
    if args.method == GRADCAM and not args.checkpoint:
        raise ExplainError("--method gradcam needs --checkpoint best.pt (the training checkpoint of the model)")
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() != ".png":
        raise ExplainError(f"--out {out}: overlays are written as PNG; give a path ending in .png")
    image, label = _load_source(args)

    if args.method == GRADCAM:
        from models.export import load_checkpoint  # the training side: torch + grad-cam

        module, card = load_checkpoint(args.checkpoint)
        if args.model:
            from pipeline.explain import load_classifier

            deployed = load_classifier(args.model, workdir=args.workdir)
            if deployed.class_names != list(card.class_names):
                raise ExplainError(f"--checkpoint {args.checkpoint} has classes {card.class_names}, --model "
                                   f"{args.model} has {deployed.class_names}: not the same model")
        explanation = explain_gradcam(module, card, image, target=args.target)
    else:
        explanation = explain_image(args.model, image, target=args.target, method=args.method, window=args.window,
                                    stride=args.stride, baseline=_baseline(args.baseline), n_masks=args.masks,
                                    seed=args.seed, workdir=args.workdir)
    if out is None:
        out = Path(f"explain_{re.sub(r'[^A-Za-z0-9._-]+', '_', label)}_{args.method}.png")
    path = write_overlay(out, image, explanation, alpha=args.alpha)
    e = explanation
    classes = e.meta.get("classes") or []
    note = ""
    if e.predicted_index != e.target_index:
        predicted = classes[e.predicted_index] if e.predicted_index < len(classes) else f"#{e.predicted_index}"
        note = f"  (predicted: {predicted}, probability {float(e.probs.max()):.3f})"
    print(f"target: {e.target_class}  probability: {e.probability:.3f}{note}")
    print(f"method: {e.method}  model: {e.meta.get('model', '?')}  model runs: {e.meta.get('model_runs', '-')}  "
          f"seconds: {e.meta.get('seconds', 0):.2f}")
    print(f"overlay: {path}")
    return 0
