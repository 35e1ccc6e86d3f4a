"""``shadowcam export``: re-export a training checkpoint (best.pt) to a verified ONNX with its model card.

``shadowcam train`` already exports; this is for another precision/opset later, without retraining::

    shadowcam export --checkpoint training/<run>/best.pt --out model_fp16.onnx --fp16
"""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "re-export a training checkpoint (best.pt) to verified ONNX (+ model card)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="best.pt", help="checkpoint written by shadowcam train")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="output ONNX file")
    p.add_argument("--fp16", action="store_true", help="float16 weights/compute (uint8 input, float32 outputs kept)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--tolerance", type=float, default=None, help="max |ONNX Runtime - torch| allowed (default 1e-3 fp32, 5e-2 fp16)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter")


def main(args: argparse.Namespace) -> int:
    from models.export import export_onnx, load_checkpoint

    model, card = load_checkpoint(args.checkpoint)
    report = export_onnx(model, card, args.out, precision="fp16" if args.fp16 else "fp32", opset=args.opset,
                         tolerance=args.tolerance, dynamo=args.dynamo)
    print(f"wrote {report.path} ({report.card.precision}, opset {report.card.opset}): "
          f"max |diff| probs={report.max_abs_diff_probs:.2g} logits={report.max_abs_diff_logits:.2g} "
          f"(tolerance {report.card.export_tolerance:g})")
    return 0
