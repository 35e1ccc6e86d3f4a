"""Saliency maps for one frame, computed from the deployed ONNX model through ONNX Runtime.

*Why did it say that?* The map answers it for the artefact that actually runs: the ``.onnx`` file (or
``models:/NAME@ALIAS``) is loaded as an :class:`pipeline.runtime.OnnxClassifier`, and every perturbed copy of
the frame goes through :meth:`OnnxClassifier.predict` - the same resize, colour order, in-graph normalisation and
calibrated softmax as serving. Nothing here needs torch, so an edge box or the labeling server can explain what
it serves.

Methods (black-box perturbation; the score is the served probability of the target class):

``occlusion`` (default; Zeiler & Fergus 2014)
    A ``window`` x ``window`` patch of the frame (at the model's input size) is replaced by a ``baseline`` and
    slid by ``stride``; a pixel's attribution is the mean drop of the target probability over the patches that
    cover it. Same window layout and averaging as ``captum.attr.Occlusion`` (the first patch at the corner, then
    strides until the image is covered, the last patch cut off at the border): tests/pipeline/test_explain.py
    checks the maps against captum driving the same ONNX Runtime session (captum itself is not used here: it
    works on torch tensors, and ``pipeline/`` runs without torch - the import contracts in pyproject.toml).
    Deterministic; about
    ``(ceil((H - window) / stride) + 1) ** 2`` model runs (529 at 96 px with the defaults: window 8, stride 4),
    batched.
``rise`` (Petsiuk, Das & Saenko 2018)
    ``n_masks`` random smooth masks (a ``cells`` x ``cells`` grid of cells kept with probability ``p_keep``,
    upsampled bilinearly and randomly shifted); the map is the target's mean probability when a pixel is kept
    minus its mean overall (:func:`rise_attribution`). Captum has no RISE; seeded, so reproducible. Noisier and
    coarser than occlusion (measured in tests/pipeline/test_explain.py).
Grad-CAM (:func:`explain_gradcam`, optional)
    When the training checkpoint is at hand (``best.pt`` written by ``shadowcam train``), Grad-CAM through the
    ``grad-cam`` package (``pip install "shadowcam[train]"``). It explains the torch weights the ONNX file was
    exported from, not the ONNX graph itself; the perturbation methods are the ones that explain the artefact.

Every map is returned at the input frame's size as float32 in [0, 1]: for occlusion and RISE the positive part
of the attribution (regions whose removal lowers the target probability) divided by its maximum - an all-zero
map means no region supports the target; Grad-CAM's map min-max scaled. :class:`Explanation` carries the map, the
target, the frame's probabilities and ``meta`` (model, method parameters, model runs, seconds).

Speed (the demo-sized model, mobilenet_v3_small at 96 x 96, one 320 x 240 frame, the 2-core development CPU
while busy with other jobs): occlusion ~0.4-1 s (530 runs), RISE with 1000 masks ~1.3-3 s - printed by
``test_explain_is_fast_enough_for_a_page``. Load the model once (:func:`load_classifier`) for many frames.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from pipeline.batching import INTERPOLATIONS
from pipeline.runtime import TENSORRT, OnnxClassifier, resolve_providers, usable_cores
from pipeline.store import frames
from pipeline.types import ShadowcamError

log = logging.getLogger(__name__)

Method = Literal["occlusion", "rise"]
METHODS: tuple[str, ...] = ("occlusion", "rise")
GRADCAM = "gradcam"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# a frame's score function: uint8 BGR (N, h, w, 3) at the model's input size -> the target's score (N,)
ScoreFn = Callable[[np.ndarray], np.ndarray]


class ExplainError(ShadowcamError):
    """An explanation cannot be computed: unreadable image, unknown target class, bad method parameters."""


@dataclass(frozen=True)
class Explanation:
    """A saliency map for one frame and one target class.

    ``saliency``: (H, W) float32 in [0, 1] at the input frame's size (1 = strongest evidence for the target);
    ``target_class`` / ``target_index``: the class explained (the predicted one unless another was asked for);
    ``probs``: the model's probabilities for the unperturbed frame (card class order); ``method``: occlusion,
    rise or gradcam; ``meta``: what produced it (model id, parameters, model runs, seconds).
    """

    saliency: np.ndarray
    target_class: str
    target_index: int
    probs: np.ndarray
    method: str
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        s = np.asarray(self.saliency, dtype=np.float32)
        if s.ndim != 2 or s.size == 0:
            raise ValueError(f"saliency must be a non-empty (H, W) map, got shape {s.shape}")
        if not np.isfinite(s).all() or s.min() < 0.0 or s.max() > 1.0 + 1e-6:
            raise ValueError(f"saliency must be finite and in [0, 1], got {float(np.nanmin(s)):.3g}..{float(np.nanmax(s)):.3g}")
        p = np.asarray(self.probs, dtype=np.float32)
        if p.ndim != 1 or not (0 <= self.target_index < p.size):
            raise ValueError(f"target_index {self.target_index} outside probs of shape {p.shape}")
        object.__setattr__(self, "saliency", np.minimum(s, 1.0))
        object.__setattr__(self, "probs", p)

    @property
    def probability(self) -> float:
        """The model's probability of the target class on the unperturbed frame."""
        return float(self.probs[self.target_index])

    @property
    def predicted_index(self) -> int:
        return int(self.probs.argmax())


# --------------------------------------------------------------------------------------------------
# The perturbation methods: pure functions of a score function (testable without a model)
# --------------------------------------------------------------------------------------------------
def window_starts(n: int, window: int, stride: int) -> list[int]:
    """Patch offsets along one axis of length ``n``: 0, stride, ... until the axis is covered (captum's layout:
    ``ceil((n - window) / stride) + 1`` patches, the last one possibly cut off at the border)."""
    if not (1 <= window <= n):
        raise ExplainError(f"occlusion window must be in 1..{n} (the model's input side), got {window}")
    if not (1 <= stride <= window):
        raise ExplainError(f"occlusion stride must be in 1..window ({window}), got {stride}")
    return [i * stride for i in range(math.ceil((n - window) / stride) + 1)]


def occlusion_attribution(score: ScoreFn, image: np.ndarray, window: int, stride: int, baseline: np.ndarray,
                          batch_size: int = 64) -> tuple[np.ndarray, int]:
    """Occlusion attribution of ``image`` (uint8 (h, w, 3)): ``(attr (h, w) float64, model runs)``.

    ``attr[y, x]`` = mean over the ``window`` x ``window`` patches covering (y, x) of ``score(image) -
    score(image with the patch replaced by baseline)``; ``baseline`` is a uint8 image of the same shape.
    """
    h, w = image.shape[:2]
    ys, xs = window_starts(h, window, stride), window_starts(w, window, stride)
    patches = [(y, x) for y in ys for x in xs]
    s0 = float(score(image[None])[0])
    total = np.zeros((h, w), np.float64)
    count = np.zeros((h, w), np.float64)
    for start in range(0, len(patches), batch_size):
        chunk = patches[start:start + batch_size]
        batch = np.repeat(image[None], len(chunk), axis=0)
        for k, (y, x) in enumerate(chunk):
            batch[k, y:y + window, x:x + window] = baseline[y:y + window, x:x + window]
        drops = s0 - np.asarray(score(batch), np.float64)
        for (y, x), d in zip(chunk, drops):
            total[y:y + window, x:x + window] += d
            count[y:y + window, x:x + window] += 1.0
    return total / np.maximum(count, 1.0), 1 + len(patches)


def rise_masks(n: int, size: tuple[int, int], cells: int, p_keep: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` RISE masks (n, h, w) float32 in [0, 1]: a ``cells`` x ``cells`` binary grid (each cell kept with
    probability ``p_keep``), upsampled bilinearly to ``(cells + 1)`` cells' size and cropped at a random shift."""
    h, w = size
    if cells < 2 or cells > min(h, w):
        raise ExplainError(f"RISE cells must be in 2..{min(h, w)}, got {cells}")
    if not (0.0 < p_keep < 1.0):
        raise ExplainError(f"RISE p_keep must be in (0, 1), got {p_keep}")
    ch, cw = math.ceil(h / cells), math.ceil(w / cells)
    up = ((cells + 1) * cw, (cells + 1) * ch)  # cv2 size: (width, height)
    grids = (rng.random((n, cells, cells)) < p_keep).astype(np.float32)
    shifts = np.stack([rng.integers(0, ch, n), rng.integers(0, cw, n)], axis=1)
    out = np.empty((n, h, w), np.float32)
    for i in range(n):
        big = cv2.resize(grids[i], up, interpolation=cv2.INTER_LINEAR)
        dy, dx = shifts[i]
        out[i] = big[dy:dy + h, dx:dx + w]
    return out


def rise_attribution(score: ScoreFn, image: np.ndarray, baseline: np.ndarray, n_masks: int = 1000, cells: int = 8,
                     p_keep: float = 0.5, seed: int = 0, batch_size: int = 64) -> tuple[np.ndarray, int]:
    """RISE saliency of ``image`` (uint8 (h, w, 3)): ``(sal (h, w) float64, model runs)``.

    Each masked frame is ``image * M_i + baseline * (1 - M_i)`` (masks from :func:`rise_masks` with ``seed``)
    and ``sal(x) = sum_i s_i M_i(x) / sum_i M_i(x) - mean_i s_i``: the target's mean score when pixel x is kept,
    minus its mean score overall (positive: keeping x raises the score). The paper divides the weighted sum by
    ``n_masks * p_keep`` instead; dividing by each pixel's own mask total and centring the scores removes the
    masks' own pattern (their uneven coverage), which otherwise dominates the map of a confident model - two
    models with the same masks would then show the same map whatever their weights.
    """
    if n_masks < 1:
        raise ExplainError(f"RISE n_masks must be >= 1, got {n_masks}")
    h, w = image.shape[:2]
    masks = rise_masks(n_masks, (h, w), cells, p_keep, np.random.default_rng(seed))
    img_f, base_f = image.astype(np.float32), baseline.astype(np.float32)
    weighted = np.zeros((h, w), np.float64)
    scores = np.empty(n_masks, np.float64)
    for start in range(0, n_masks, batch_size):
        m = masks[start:start + batch_size, :, :, None]
        batch = np.rint(img_f * m + base_f * (1.0 - m)).clip(0, 255).astype(np.uint8)
        s = np.asarray(score(batch), np.float64)
        scores[start:start + len(s)] = s
        weighted += np.tensordot(s, m[..., 0], axes=1)
    coverage = masks.sum(axis=0, dtype=np.float64)
    return weighted / np.maximum(coverage, 1e-9) - scores.mean(), n_masks + 1


def make_baseline(image: np.ndarray, baseline: str | float) -> np.ndarray:
    """What an occluded region is replaced with, as a uint8 image like ``image``: ``"mean"`` (the frame's mean
    colour: on a belt, "nothing there"), ``"blur"`` (a strong Gaussian blur: removes shapes, keeps colour), or
    a grey level 0..255."""
    if isinstance(baseline, str):
        if baseline == "mean":
            mean = np.rint(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
            return np.broadcast_to(mean, image.shape).copy()
        if baseline == "blur":
            sigma = max(image.shape[:2]) / 8.0
            return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
        raise ExplainError(f"baseline must be 'mean', 'blur' or a grey level 0..255, got {baseline!r}")
    value = float(baseline)
    if not (0.0 <= value <= 255.0):
        raise ExplainError(f"baseline grey level must be in 0..255, got {baseline!r}")
    return np.full(image.shape, round(value), np.uint8)


def to_unit(attr: np.ndarray, positive_only: bool) -> np.ndarray:
    """Scale an attribution map to [0, 1]: the positive part over its maximum (``positive_only``), else min-max.
    A map with nothing positive (or constant) becomes all zeros."""
    a = np.asarray(attr, np.float64)
    if positive_only:
        a = np.maximum(a, 0.0)
        top = a.max(initial=0.0)
        return (a / top if top > 0 else np.zeros_like(a)).astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The deployed model
# --------------------------------------------------------------------------------------------------
def explain_providers(available: list[str] | None = None, driver: bool | None = None) -> list[str]:
    """Serving's provider choice (:func:`pipeline.runtime.resolve_providers`) without TensorRT: CUDA -> CPU.

    A TensorRT engine is built for the serving batch sizes (minutes per build); an explanation sends batches of
    perturbed frames of its own size, which would rebuild it.
    """
    return [p for p in resolve_providers(None, available, driver) if p != TENSORRT]


def load_classifier(model: str | Path | OnnxClassifier, workdir: str | Path | None = None,
                    cache_dir: str | Path | None = None, providers: list[str] | None = None) -> OnnxClassifier:
    """An :class:`OnnxClassifier` for ``model``: returned as is when already loaded, else an ``.onnx`` path or
    ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``, resolved as the runner does (the MLflow store of
    ``workdir`` when ``MLFLOW_TRACKING_URI`` is not set; downloads cached under ``cache_dir``, default
    ``<workdir>/.cache``). ``providers`` None: CUDA when it works here, else the CPU (TensorRT is skipped)."""
    if isinstance(model, OnnxClassifier):
        return model
    uri = str(model)
    if workdir is not None and cache_dir is None:
        cache_dir = Path(workdir) / ".cache"
    if providers is None:
        providers = explain_providers()
    # one explanation is hundreds of batched runs and nothing else runs beside it: every core (the serving
    # default on the CPU is half of them, for the shadow pair)
    return OnnxClassifier(uri, providers=providers, cache_dir=cache_dir, workdir=workdir, warmup_runs=1,
                          intra_op_threads=usable_cores())


def resolve_target(target: str | int | None, class_names: list[str], probs: np.ndarray) -> int:
    """The index of ``target`` (a class name or index; None: the predicted class)."""
    if target is None:
        return int(np.asarray(probs).argmax())
    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        if not (0 <= int(target) < len(class_names)):
            raise ExplainError(f"target index {target} outside the model's {len(class_names)} classes")
        return int(target)
    name = str(target)
    if name not in class_names:
        raise ExplainError(f"target class {name!r} is not one of the model's classes: {', '.join(class_names)}")
    return class_names.index(name)


def _check_image(image_bgr: Any) -> np.ndarray:
    if not isinstance(image_bgr, np.ndarray) or image_bgr.dtype != np.uint8 or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        got = f"{type(image_bgr).__name__} {getattr(image_bgr, 'dtype', '?')} {getattr(image_bgr, 'shape', '?')}"
        raise ExplainError(f"image must be a BGR uint8 (H, W, 3) array, got {got}")
    return image_bgr


def _model_sized(clf: OnnxClassifier, image_bgr: np.ndarray) -> np.ndarray:
    """The frame resized to the model's input as the batcher would (card interpolation), still BGR."""
    h, w = clf.input_size
    if image_bgr.shape[:2] == (h, w):
        return np.ascontiguousarray(image_bgr)
    interp = INTERPOLATIONS.get(clf.card.resize_interpolation.lower(), cv2.INTER_AREA)
    return cv2.resize(image_bgr, (w, h), interpolation=interp)


def explain_image(model: str | Path | OnnxClassifier, image_bgr: np.ndarray, target: str | int | None = None,
                  method: Method = "occlusion", *, window: int | None = None, stride: int | None = None,
                  baseline: str | float = "mean", n_masks: int = 1000, cells: int = 8, p_keep: float = 0.5,
                  seed: int = 0, batch_size: int = 64, workdir: str | Path | None = None,
                  cache_dir: str | Path | None = None) -> Explanation:
    """Explain the model's answer on one BGR frame through ONNX Runtime.

    Args:
        model: a loaded :class:`OnnxClassifier` (reused: load once when explaining many frames), an ``.onnx``
            path or a ``models:/`` URI (see :func:`load_classifier`; ``workdir``/``cache_dir`` apply).
        image_bgr: uint8 (H, W, 3) BGR, any size (resized to the model's input as serving does).
        target: class name or index to explain; None: the predicted class.
        method: ``"occlusion"`` or ``"rise"`` (module docstring).
        window, stride: occlusion patch side and step in model-input pixels; default: a twelfth of the shorter
            side (at least 2), and half the window.
        baseline: what occluded/masked pixels become (:func:`make_baseline`).
        n_masks, cells, p_keep, seed: RISE masks.
        batch_size: perturbed frames per ONNX Runtime call.

    The map is computed at the model's input size and resized (bilinear) to the frame's size.
    """
    if method not in METHODS:
        raise ExplainError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if batch_size < 1:
        raise ExplainError(f"batch_size must be >= 1, got {batch_size}")
    image_bgr = _check_image(image_bgr)
    t0 = time.perf_counter()
    clf = load_classifier(model, workdir=workdir, cache_dir=cache_dir)
    x = _model_sized(clf, image_bgr)
    probs = clf.predict(x[None])[0]
    idx = resolve_target(target, clf.class_names, probs)

    def score(batch: np.ndarray) -> np.ndarray:
        return clf.predict(batch)[:, idx]

    base = make_baseline(x, baseline)
    h, w = clf.input_size
    meta: dict[str, Any] = {"model": clf.model_id, "model_path": str(clf.path), "classes": clf.class_names,
                            "input_size": [h, w], "baseline": baseline, "score": "probs"}
    if method == "occlusion":
        win = int(window) if window is not None else max(2, round(min(h, w) / 12))
        step = int(stride) if stride is not None else max(1, win // 2)
        attr, runs = occlusion_attribution(score, x, win, step, base, batch_size)
        sal = to_unit(attr, positive_only=True)
        meta.update(window=win, stride=step)
    else:
        attr, runs = rise_attribution(score, x, base, n_masks=n_masks, cells=cells, p_keep=p_keep, seed=seed,
                                      batch_size=batch_size)
        sal = to_unit(attr, positive_only=True)
        meta.update(n_masks=n_masks, cells=cells, p_keep=p_keep, seed=seed)
    H, W = image_bgr.shape[:2]
    if (H, W) != (h, w):
        sal = np.clip(cv2.resize(sal, (W, H), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    meta.update(model_runs=runs, seconds=round(time.perf_counter() - t0, 4))
    log.debug("explained method=%s model=%s target=%s runs=%d seconds=%.3f", method, clf.model_id,
              clf.class_names[idx], runs, meta["seconds"])
    return Explanation(sal, clf.class_names[idx], idx, probs, method, meta)


# --------------------------------------------------------------------------------------------------
# Grad-CAM from the training checkpoint (optional: grad-cam + torch)
# --------------------------------------------------------------------------------------------------
def _gradcam_layer(backbone: Any) -> Any:
    """The layer Grad-CAM reads: the last residual block (ResNets), the last feature block (MobileNet,
    EfficientNet), else the last Conv2d."""
    if hasattr(backbone, "layer4"):
        return backbone.layer4[-1]
    if hasattr(backbone, "features"):
        return backbone.features[-1]
    convs = [m for m in backbone.modules() if type(m).__name__ == "Conv2d"]
    if not convs:
        raise ExplainError(f"Grad-CAM needs a convolutional backbone; {type(backbone).__name__} has no Conv2d layer")
    return convs[-1]


def explain_gradcam(checkpoint_model: Any, card: Any, image_bgr: np.ndarray, target: str | int | None = None) -> Explanation:
    """Grad-CAM of the training checkpoint's model on one BGR frame (``pytorch_grad_cam.GradCAM``).

    ``checkpoint_model``, ``card``: what ``models.export.load_checkpoint("best.pt")`` returns (an
    ``ImageClassifier`` with ``.backbone``, and its :class:`pipeline.modelcard.ModelCard`). The frame is resized
    and colour-converted per the card, normalised with the card's mean/std, and fed to the backbone; the probs
    are ``softmax(logits / temperature)`` as in the exported graph. Raises :class:`ExplainError` when the
    ``grad-cam`` package is not installed.
    """
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import preprocess_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError as e:
        raise ExplainError(f"Grad-CAM needs the grad-cam package ({e.name or e} is not installed): "
                           f"pip install 'shadowcam[train]'") from None
    image_bgr = _check_image(image_bgr)
    t0 = time.perf_counter()
    h, w = card.height, card.width
    interp = INTERPOLATIONS.get(card.resize_interpolation.lower(), cv2.INTER_AREA)
    x = image_bgr if image_bgr.shape[:2] == (h, w) else cv2.resize(image_bgr, (w, h), interpolation=interp)
    if card.input_color == "RGB":
        x = cv2.cvtColor(x, cv2.COLOR_BGR2RGB)
    backbone = checkpoint_model.backbone.eval()
    tensor = preprocess_image(x.astype(np.float32) / 255.0, mean=list(card.mean), std=list(card.std))
    logits = backbone(tensor).detach().cpu().numpy()[0].astype(np.float64)
    z = logits / float(card.temperature)
    probs = np.exp(z - z.max())
    probs = (probs / probs.sum()).astype(np.float32)
    idx = resolve_target(target, list(card.class_names), probs)
    with GradCAM(model=backbone, target_layers=[_gradcam_layer(backbone)]) as cam:
        grey = cam(input_tensor=tensor, targets=[ClassifierOutputTarget(idx)])[0]
    sal = to_unit(np.nan_to_num(grey), positive_only=False)
    H, W = image_bgr.shape[:2]
    if (H, W) != (h, w):
        sal = np.clip(cv2.resize(sal, (W, H), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    meta = {"model": f"{card.name}:{card.version}" if card.name and card.version else (card.name or card.arch), "arch": card.arch,
            "classes": list(card.class_names), "input_size": [h, w], "layer": type(_gradcam_layer(backbone)).__name__,
            "seconds": round(time.perf_counter() - t0, 4)}
    return Explanation(sal, card.class_names[idx], idx, probs, GRADCAM, meta)


# --------------------------------------------------------------------------------------------------
# Images in, overlays out
# --------------------------------------------------------------------------------------------------
def read_image(path: str | Path) -> np.ndarray:
    """A BGR uint8 image from a file, or :class:`ExplainError` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ExplainError(f"{p}: no such image file")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ExplainError(f"{p}: not a readable image (expected {', '.join(IMAGE_SUFFIXES)})")
    return img


def frame_image_path(store: Any, frame_id: str, image_root: str | Path | None = None) -> Path:
    """The sampled JPEG of ``frame_id`` in a :class:`pipeline.store.PredictionStore`.

    A relative ``samples.image_path`` is resolved against ``image_root`` (default: the current directory, where
    the runner's relative work dir was). Raises :class:`ExplainError` when the frame is unknown, was never
    sampled (only sampled frames keep their pixels), or its JPEG is gone.
    """
    sample = store.queued_sample(frame_id)
    if sample is None:
        if store.count(frames, frames.c.frame_id == frame_id) == 0:
            raise ExplainError(f"frame {frame_id!r} is not in the prediction store (and is not an image file)")
        raise ExplainError(f"frame {frame_id!r} has no sampled image: only frames the sampler picked keep their JPEG")
    p = Path(sample.image_path)
    if not p.is_absolute():
        p = Path(image_root or ".") / p
    if not p.is_file():
        raise ExplainError(f"frame {frame_id!r}: its sampled image {p} is missing (moved? pass the folder it is "
                           f"relative to as the image root)")
    return p


def overlay(image_bgr: np.ndarray, saliency: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The frame with the saliency map blended over it: BGR uint8, jet colour map (red = strongest evidence).

    ``saliency`` is (h, w) in [0, 1], resized to the frame when its size differs; ``alpha`` the heat map's
    weight (0: the frame, 1: the heat map alone).
    """
    image_bgr = _check_image(image_bgr)
    if not (0.0 <= alpha <= 1.0):
        raise ExplainError(f"overlay alpha must be in [0, 1], got {alpha}")
    s = np.asarray(saliency, np.float32)
    if s.ndim != 2:
        raise ExplainError(f"saliency must be an (H, W) map, got shape {s.shape}")
    H, W = image_bgr.shape[:2]
    if s.shape != (H, W):
        s = cv2.resize(s, (W, H), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.rint(np.clip(s, 0.0, 1.0) * 255.0).astype(np.uint8), cv2.COLORMAP_JET)
    return cv2.addWeighted(heat, float(alpha), image_bgr, 1.0 - float(alpha), 0.0)


def write_overlay(path: str | Path, image_bgr: np.ndarray, explanation: Explanation, alpha: float = 0.45) -> Path:
    """Write :func:`overlay` of ``explanation`` on ``image_bgr`` as a PNG at ``path`` (folders created)."""
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise ExplainError(f"{p}: overlays are written as PNG; give a path ending in .png")
    p.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(p), overlay(image_bgr, explanation.saliency, alpha)):
        raise ExplainError(f"{p}: could not write the overlay PNG")
    return p
