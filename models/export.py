"""ONNX export honouring the graph contract in :mod:`pipeline.modelcard`, verified every time.

The exported graph takes the camera frame as it comes out of the frame batcher, so serving has no
hand-written preprocessing that could drift from training::

    image  uint8 (batch, H, W, 3), RGB          -- the model card's input_size / input_color
      -> Cast(float) -> * 1/(255*std) - mean/std  -- i.e. (x/255 - mean) / std, per channel
      -> Transpose NHWC -> NCHW -> backbone
    logits float32 (batch, n_classes)
    probs  float32 (batch, n_classes) = softmax(logits / temperature)

Training runs the very same :class:`ImageClassifier` module (uint8 NHWC in), so the preprocessing in the
graph is the one the weights were trained with.

Every export is verified (:func:`verify_onnx`): ``onnx.checker`` (full check), then ONNX Runtime on the CPU
against torch on a fixed seeded uint8 batch (plus real images when given). The max absolute differences of
``probs`` and ``logits`` go into the model card (``export_max_abs_diff`` = the probs difference, the served
output; both in ``extra``). The export fails with :class:`ExportError` (and the file is removed) when the probs
difference exceeds the tolerance, or the logits difference exceeds tolerance x max(1, max |logit|): float32
rounding grows with the logits' magnitude, and out-of-distribution verification images can give logits of 50+.
For the fp16 variant only the probs are bounded (5e-2): its logits carry float16 rounding of every weight and
activation (a few percent of their magnitude on the noise images), recorded in the card but not checked. The fp16 variant keeps the uint8 input and float32 outputs; its weights and
convolutions are float16 (ONNX Runtime's CPU provider runs it by inserting casts; GPUs run it natively).
"""

from __future__ import annotations

import copy
import logging
import warnings
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.config import ARCHS
from pipeline.modelcard import INPUT_NAME, LOGITS_NAME, PROBS_NAME, ModelCard, read_card, write_card
from pipeline.types import ModelCardError

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ExportError(ModelCardError):
    """The ONNX export failed its checks (checker error, or ONNX Runtime disagrees with torch)."""


def build_backbone(arch: str, num_classes: int) -> nn.Module:
    """A torchvision classifier with ``num_classes`` outputs, randomly initialised (nothing is downloaded)."""
    import torchvision

    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)


class ImageClassifier(nn.Module):
    """Backbone plus the in-graph preprocessing and calibrated softmax of the graph contract.

    ``forward(image)`` takes uint8 ``(N, H, W, 3)`` RGB and returns ``(logits, probs)``, both float32.
    ``temperature`` is a buffer, set after calibration. ``compute_dtype`` float16 makes the fp16 variant.
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 temperature: float = 1.0):
        super().__init__()
        self.backbone = backbone
        mean_t = torch.tensor(mean, dtype=torch.float32)
        std_t = torch.tensor(std, dtype=torch.float32)
        self.register_buffer("scale", 1.0 / (255.0 * std_t))
        self.register_buffer("shift", mean_t / std_t)
        self.register_buffer("temperature", torch.tensor(float(temperature), dtype=torch.float32))
        self.compute_dtype = torch.float32

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW (a channels_last view: no copy of the pixels)."""
        x = image.to(torch.float32) * self.scale - self.shift
        return x.permute(0, 3, 1, 2).to(self.compute_dtype)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.preprocess(image)).to(torch.float32)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(image)
        return logits, torch.softmax(logits / self.temperature, dim=1)


@dataclass
class ExportReport:
    path: Path
    card: ModelCard
    max_abs_diff_probs: float
    max_abs_diff_logits: float


def _as_fp16(model: ImageClassifier) -> ImageClassifier:
    m16 = copy.deepcopy(model).eval()
    m16.backbone.half()
    m16.compute_dtype = torch.float16
    return m16


def export_onnx(
    model: ImageClassifier,
    card: ModelCard,
    out_path: str | Path,
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    tolerance: float | None = None,
    verify_images: np.ndarray | None = None,
    seed: int = 0,
    dynamo: bool = False,
) -> ExportReport:
    """Export ``model`` (fp32 ``ImageClassifier``) to ``out_path`` with ``card`` in its metadata, and verify it.

    ``precision``: ``"fp32"`` or ``"fp16"``. ``tolerance``: max allowed abs difference of probs and logits
    between ONNX Runtime and the fp32 torch model (default :data:`TOLERANCE`). ``verify_images``: optional
    real uint8 NHWC images added to the seeded random verification batch. ``dynamo``: use the
    ``torch.export``-based exporter instead of the TorchScript one (slower here; same graph contract).
    Returns the report with the card as written (precision, opset, diffs and tolerance filled in).
    """
    import onnx

    if precision not in TOLERANCE:
        raise ExportError(f"precision must be one of {', '.join(TOLERANCE)}, got {precision!r}")
    tolerance = TOLERANCE[precision] if tolerance is None else float(tolerance)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    target = _as_fp16(model) if precision == "fp16" else model
    h, w = card.height, card.width
    example = torch.zeros((2, h, w, 3), dtype=torch.uint8)
    names = dict(input_names=[INPUT_NAME], output_names=[LOGITS_NAME, PROBS_NAME])
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            if dynamo:
                batch = torch.export.Dim("batch", min=1, max=65536)
                prog = torch.onnx.export(target, (example,), None, opset_version=max(opset, 18), dynamo=True,
                                         dynamic_shapes={"image": {0: batch}}, external_data=False, **names)
                proto = prog.model_proto
            else:
                tmp = out_path.with_suffix(".tmp.onnx")
                torch.onnx.export(target, (example,), str(tmp), opset_version=opset, dynamo=False,
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}, PROBS_NAME: {0: "batch"}},
                                  **names)
                proto = onnx.load(str(tmp))
                tmp.unlink()
    except Exception as e:  # the exporters raise many types
        raise ExportError(f"{out_path}: torch.onnx.export failed for arch {card.arch} ({type(e).__name__}: {e})") from e
    actual_opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    card = replace(card, precision=precision, opset=int(actual_opset), export_tolerance=tolerance,
                   temperature=float(model.temperature.item()),
                   created_at=card.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"))
    write_card(proto, card)
    onnx.save(proto, str(out_path))

    try:
        d_probs, d_logits, logit_scale = verify_onnx(out_path, model, verify_images=verify_images, seed=seed)
    except ExportError:
        out_path.unlink(missing_ok=True)
        raise
    d_logits_rel = d_logits / max(1.0, logit_scale)
    card = replace(card, export_max_abs_diff=d_probs)
    card.extra = {**card.extra, "export_max_abs_diff_probs": d_probs, "export_max_abs_diff_logits": d_logits,
                  "export_logits_scale": logit_scale}
    if d_probs > tolerance or (precision == "fp32" and d_logits_rel > tolerance):
        out_path.unlink(missing_ok=True)
        raise ExportError(f"{out_path}: ONNX Runtime disagrees with torch ({precision}): max |diff| probs={d_probs:.3g}, "
                          f"logits={d_logits:.3g} (max |logit| {logit_scale:.3g}) > tolerance {tolerance:g}")
    write_card(proto, card)
    onnx.save(proto, str(out_path))
    read_card(out_path)  # the card must read back
    log.info("exported %s (%s, opset %d): max |diff| probs=%.2g logits=%.2g", out_path, precision, actual_opset, d_probs, d_logits)
    return ExportReport(out_path, card, d_probs, d_logits)


def verification_batch(h: int, w: int, n: int = 8, seed: int = 0, images: np.ndarray | None = None) -> np.ndarray:
    """The fixed uint8 NHWC batch used for parity checks: seeded noise, plus ``images`` when given."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    if images is not None and len(images):
        batch = np.concatenate([batch, np.asarray(images, dtype=np.uint8)[:, :h, :w]], axis=0)
    return batch


def verify_onnx(onnx_path: str | Path, model: ImageClassifier, *, verify_images: np.ndarray | None = None,
                seed: int = 0) -> tuple[float, float, float]:
    """Check the file (``onnx.checker``, graph contract) and compare ONNX Runtime (CPU) with torch.

    Returns ``(max_abs_diff_probs, max_abs_diff_logits, max_abs_torch_logit)``. Raises :class:`ExportError` when the file breaks
    the contract (names, dtypes, layout) or the checker rejects it.
    """
    import onnx
    import onnxruntime as ort

    onnx_path = Path(onnx_path)
    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as e:
        raise ExportError(f"{onnx_path}: onnx.checker rejected the model ({e})") from e
    card = read_card(onnx_path)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if [i.name for i in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(uint8)":
        raise ExportError(f"{onnx_path}: input must be one uint8 tensor named {INPUT_NAME!r}, got "
                          f"{[(i.name, i.type) for i in inputs]}")
    shape = inputs[0].shape
    if len(shape) != 4 or list(shape[1:]) != [card.height, card.width, 3] or isinstance(shape[0], int):
        raise ExportError(f"{onnx_path}: input shape must be (batch, {card.height}, {card.width}, 3) with a dynamic batch, got {shape}")
    if [o.name for o in outputs] != [LOGITS_NAME, PROBS_NAME] or any(o.type != "tensor(float)" for o in outputs):
        raise ExportError(f"{onnx_path}: outputs must be float32 {LOGITS_NAME!r}, {PROBS_NAME!r}, got "
                          f"{[(o.name, o.type) for o in outputs]}")
    batch = verification_batch(card.height, card.width, seed=seed, images=verify_images)
    ort_logits, ort_probs = sess.run([LOGITS_NAME, PROBS_NAME], {INPUT_NAME: batch})
    model = model.eval().cpu()
    with torch.no_grad():
        t_logits, t_probs = model(torch.from_numpy(batch))
    d_logits = float(np.abs(ort_logits - t_logits.numpy()).max())
    d_probs = float(np.abs(ort_probs - t_probs.numpy()).max())
    if not (np.isfinite(d_logits) and np.isfinite(d_probs)):
        raise ExportError(f"{onnx_path}: non-finite outputs from ONNX Runtime")
    return d_probs, d_logits, float(np.abs(t_logits.numpy()).max())


# --- checkpoints ---------------------------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, model: ImageClassifier, card: ModelCard) -> Path:
    """Save weights + card (JSON) so :func:`load_checkpoint` can rebuild and re-export the model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "card": card.to_json(),
                "mean": list(card.mean), "std": list(card.std)}, path)
    return path


def load_checkpoint(path: str | Path) -> tuple[ImageClassifier, ModelCard]:
    """Rebuild the :class:`ImageClassifier` and card saved by :func:`save_checkpoint`."""
    path = Path(path)
    if not path.is_file():
        raise ModelCardError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        card = ModelCard.from_json(ckpt["card"], where=str(path))
    except (KeyError, RuntimeError, EOFError, OSError) as e:
        raise ModelCardError(f"{path}: not a shadowcam checkpoint ({type(e).__name__}: {e})") from None
    model = ImageClassifier(build_backbone(card.arch, card.n_classes), card.mean, card.std, card.temperature)
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), card
