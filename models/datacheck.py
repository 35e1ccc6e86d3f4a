"""``shadowcam data check``: what a dataset holds before training, and how much of production it covers.

One entry point, :func:`check_data` (a :class:`DataCheckConfig` in, a :class:`DataReport` out), built from pure
functions that each answer one question and can be tested on arrays:

* **Counts** (:func:`class_balance`): images per class and split, the largest/smallest class ratio, the smallest
  class's share; non-image files skipped and images that do not decode (every image is decoded once, with
  :func:`models.data.load_image`, at the model input size).
* **Splits** (:func:`assign_splits`): the manifest's ``split`` column where it has one, else the split training
  would make (:func:`models.data.assign_splits` with the same fractions and seed: by group where the manifest has one).
* **Duplicates** (:func:`find_duplicates`): exact copies (sha256 of the file bytes) and near-duplicates, in
  particular pairs whose two images sit in *different* splits: a test image whose near-copy is in the training
  split measures memory, not generalisation. Finding them takes three steps, none of which compares all pairs:

  1. *candidates* from two 64-bit hashes, each searched within a Hamming radius by multi-index hashing
     (:func:`hamming_pairs`): ``imagehash.phash`` (the DCT hash; catches re-encodes, resizes, brightness changes,
     still scenes) and a translation-invariant hash (:func:`shift_features`, :func:`shift_hashes`: the 2-D DFT
     magnitudes of a 32x32 grey thumbnail, which ignore *where* things are). The second is needed for video:
     frames of one item moving through a fixed camera's view are not perceptual near-duplicates (measured on a
     synthetic conveyor clip: consecutive frames 6-8% of the width apart are a median 16 phash bits apart, as far
     as unrelated frames, and phash finds under 5% of them);
  2. *verification*: a candidate pair is kept when the thumbnails' normalised cross-correlation at their best
     relative shift (:func:`shift_similarity`) is at least ``shift_similarity`` (0.95) and their mean colours agree
     (:func:`chromaticity_gap`; grey thumbnails cannot tell a green belt from a grey one). Hashes alone are not
     enough for a fixed camera: every frame shares its belt and rails, so unrelated frames collide (phash within
     4 bits: 85 unrelated pairs among 3,000 synthetic images, none of them above 0.92 correlation).
  3. *in front of a fixed view* (``foreground``): whole-image comparisons fail where a busy *static* background
     (roller-belt stripes) outweighs the item that moves across it, and on an empty belt, whose frames' hashes are
     noise. So :func:`estimate_views` decodes a sample (``view_sample``), finds the fixed views in it
     (:func:`find_views`: leader clustering of 16x16 thumbnails that agree pixel by pixel; photos without a shared
     background give none) and estimates each one's background (:func:`robust_background`: a median that leaves
     out the foreground); every image is then compared with its view at 64x64 (:func:`describe_foreground`, with a
     threshold from the view's own noise, :func:`noise_threshold`): nothing in front of the background makes it
     *background-only*; else its foreground (item, shadow) is cut out into a centred 32x32 canvas.
     :func:`foreground_pairs` pairs canvases of one view within ``foreground_distance`` bits of a shift hash or a
     DCT hash that correlate at least ``foreground_similarity`` (0.8) and agree in colour and size. The
     background-only images of a view are near-duplicates of each other: each view's set is counted as all its
     pairs from its members (never compared pairwise) and listed only as far as ``max_pairs_listed`` allows.

  Measured with ``tests/models/test_datacheck.py``'s data and ``scripts/byod_bench.py neardup`` (docs/byod.md):
  planted JPEG/resize/brightness copies are all found (precision 0.98); of a conveyor clip's frames split at
  random, the val/test frames whose item also has frames in train are paired with one of them in 100% / 100% /
  97% / 100% of cases on four scenes (stream seeds 3 / 11 / 21 / 33; 21 is a roller belt; before step 3: 97% / 91%
  / 17% / 80%), at a precision (pairs showing the same item or two empty-belt frames) of 0.97-0.99. Video still
  belongs in a group-aware split (a ``group`` column); this check is the safety net. Not quadratic: 100,000
  images' phash pairs take ~10 s; each hash search tightens its radius (noted in the report) when the images are
  too alike for it; small sets of foregrounds (``EXHAUSTIVE_FOREGROUNDS``) are compared exhaustively.

* **Label issues** (:func:`find_label_issues`, only when asked: it trains): out-of-fold predicted probabilities
  from a small CNN trained ``label_folds`` times on the other folds, handed to ``cleanlab.filter.find_label_issues``.
  Each flagged image comes with its given label, the model's suggestion and the self-confidence (the out-of-fold
  probability of the given label), lowest first. Measured: 5% planted flips among 720 / 900 synthetic images: 92% /
  76% found at precision 0.59 / 0.74.
* **Coverage of production** (:func:`production_coverage`, with ``db``): for each camera of a prediction store,
  overall and per ``window_s`` window from its first frame, the share of frames whose image statistics
  (:mod:`pipeline.imagestats`, stored per frame at the model input size) lie beyond the training images' 1%/99%
  quantiles in a direction that hurts a model (:data:`pipeline.evaluation.reference.DIRECTIONS`), and with a model
  card also the share of its predictions less confident than 99% of its validation images. The tests are those of
  :func:`pipeline.evaluation.reference.training_drift` with a reference built from the training images: a window
  is *outside* the training data's coverage when a share beyond a tail is significant and at least ``min_effect``
  (10 points) above the 1% expected.

:func:`log_data_check` logs ``data_check.json`` and ``data_check.html`` to an MLflow run (training calls it).
Timing on 3,000 96-px JPEGs (2 threads of a shared 2-core machine): 2-3.5 s for listing, decoding and hashing, under
1 s for the duplicate search; see ``DataReport.timings_s``. ``label_issues`` adds ~2 minutes (one thread).
"""

from __future__ import annotations

import base64
import hashlib
import html as _html
import json
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from models.data import SPLITS, Sample, combine_sources, load_image
from pipeline.config import _Strict
from pipeline.evaluation.reference import (
    DEFAULT_MIN_EFFECT,
    DEFAULT_TAIL,
    DIRECTIONS,
    build_reference,
    training_drift,
)
from pipeline.evaluation.result import TailShift
from pipeline.imagestats import STAT_NAMES, image_stats_batch
from pipeline.types import ConfigError, DataError

log = logging.getLogger(__name__)

THUMB = 32  # side of the grey thumbnails the shift-tolerant detector compares
DEFAULT_IMG_SIZE = 64  # model input size when neither --img-size nor a model card says
SPLIT_PAIRS = (("train", "val"), ("train", "test"), ("val", "test"))


class DataCheckConfig(_Strict):
    """What :func:`check_data` checks, and how. Every field has a default except ``data``."""

    data: list[str] = Field(min_length=1)  # ImageFolder dirs, dirs with manifest.csv, or manifest CSVs (concatenated)
    class_names: list[str] | None = None  # the label space (default: the first source's classes)
    img_size: int | tuple[int, int] | None = None  # model input (square, or (height, width)); None: from the model card, else 64
    val_fraction: float = Field(default=0.15, ge=0, lt=1)  # the split training would make, when the manifest gives none
    test_fraction: float = Field(default=0.15, ge=0, lt=1)
    seed: int = 0
    workers: int = Field(default_factory=lambda: min(8, os.cpu_count() or 1), ge=1)  # decoding threads
    progress: bool = True
    # duplicates
    duplicates: bool = True
    phash_distance: int = Field(default=6, ge=0, le=16)  # candidates: phash bits apart, at most
    shift_tolerant: bool = True  # also look for moved copies (frames of one item crossing a fixed view)
    shift_distance: int = Field(default=10, ge=0, le=16)  # candidates: shift-hash bits apart, at most
    shift_similarity: float = Field(default=0.95, gt=0, le=1)  # a near-duplicate: thumbnail cross-correlation at the best shift, at least
    colour_tolerance: float = Field(default=0.02, ge=0, le=1)  # ... and their mean chromaticities (r, g, b shares) differ by at most this
    max_candidates_per_image: int = Field(default=2000, ge=1)  # shift pass: tighten its radius above this many candidates
    foreground: bool = True  # also compare what stands in front of a fixed camera's background (items on a static belt)
    view_sample: int = Field(default=1000, ge=8)  # images decoded first to find the fixed views and their backgrounds
    foreground_threshold: float | None = Field(default=None, gt=0, le=255)  # grey levels (largest of R, G, B) from the background that are foreground (None: per view, from its noise)
    foreground_distance: int = Field(default=12, ge=0, le=16)  # foreground candidates: shift hashes of the foreground at most this many bits apart
    foreground_similarity: float = Field(default=0.8, gt=0, le=1)  # a near-duplicate: foreground canvases correlate at least this much at the best shift
    max_pairs_listed: int = Field(default=200, ge=0)  # pairs kept in the report (cross-split first); all are counted
    # label issues (trains a small model: only when asked)
    label_issues: bool = False
    label_folds: int = Field(default=3, ge=2, le=10)
    label_img_size: int = Field(default=48, ge=16, le=128)
    label_epochs: int = Field(default=16, ge=1)
    label_width: int = Field(default=16, ge=4, le=128)  # channels of the first conv layer (doubling twice)
    label_batch_size: int = Field(default=64, ge=2)
    label_threads: int | None = Field(default=None, ge=1)  # torch threads while training (None: torch's default)
    label_filter: Literal["prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"] = "both"
    # coverage of production
    db: str | None = None  # prediction store URL or SQLite path
    runs: list[str] | None = None  # store runs to read (default: all)
    window_s: float = Field(default=60.0, gt=0)  # coverage windows, from each camera's first frame
    model: str | None = None  # ONNX path or models:/ URI: its input size and confidence reference
    model_origin: Literal["given", "store"] = "given"  # "store": the store's newest incumbent, found by the CLI
    model_id: str | None = None  # "name:version" the store records for that model's predictions (default: from its card)
    workdir: str = "."  # where models:/ URIs are resolved (MLflow store) ...
    cache_dir: str | None = None  # ... and downloaded (default WORKDIR/.cache/models)
    coverage_sample: int = Field(default=2000, ge=10)  # training images whose statistics form the reference
    tail: float = Field(default=DEFAULT_TAIL, gt=0, lt=0.5)
    min_effect: float = Field(default=DEFAULT_MIN_EFFECT, gt=0, lt=1)
    alpha: float = Field(default=0.01, gt=0, lt=1)

    @field_validator("img_size")
    @classmethod
    def _size(cls, v: Any) -> Any:
        if v is None:
            return v
        h, w = (v, v) if isinstance(v, int) else v
        if min(h, w) < 8:
            raise ValueError(f"img_size must be at least 8 pixels, got {v}")
        return v


# --------------------------------------------------------------------------------------------------
# Report types
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicatePair:
    """Two images that are copies (``kind="exact"``: same file bytes) or near-copies of each other.

    ``method``: "sha256", "perceptual" (phash within ``distance`` bits) or "shifted" (shift hash within ``distance``
    bits and thumbnail cross-correlation ``similarity`` at the best shift), "foreground" (the same thing in front of
    one fixed view: the foreground canvases' shift hashes within ``distance`` bits, their cross-correlation
    ``similarity``) or "background" (both show nothing but their view's background; ``distance`` 0)."""

    a: str
    b: str
    split_a: str
    split_b: str
    label_a: str
    label_b: str
    kind: Literal["exact", "near"]
    method: str
    distance: int
    similarity: float | None = None

    @property
    def cross_split(self) -> bool:
        return self.split_a != self.split_b


@dataclass(frozen=True)
class BackgroundSet:
    """Images of one fixed view with nothing in front of its background (an empty belt): near-duplicates of each
    other, counted as all their pairs (listed only as far as ``max_pairs_listed`` allows)."""

    view: int
    n_images: int
    by_split: dict[str, int]
    examples: list[str]  # a few of its images


@dataclass(frozen=True)
class Duplicates:
    """Exact and near-duplicates. Counts cover every pair found; ``pairs`` lists at most ``max_pairs_listed``
    (cross-split pairs first, then the closest)."""

    n_exact_groups: int  # sets of byte-identical files
    n_exact_images: int  # images in those sets
    exact_groups: list[list[str]]  # the largest first (at most 50 listed)
    n_near_pairs: int  # pairs that are near but not exact copies
    n_near_by_method: dict[str, int]
    pairs: list[DuplicatePair]
    cross_split_pairs: dict[str, int]  # "train-test" -> pairs (exact + near) whose images sit in those two splits
    leaked: dict[str, list[int]]  # "val"/"test" -> [images with a (near-)copy in train, images in that split]
    conflicting_labels: int  # pairs (exact + near) whose labels differ
    n_groups: int  # connected sets of (near-)copies (two or more images)
    largest_group: int
    method: str
    notes: list[str] = field(default_factory=list)
    n_views: int = 0  # fixed views (cameras) whose background was estimated and compared with (0: foreground off or none found)
    background_sets: list[BackgroundSet] = field(default_factory=list)  # per view, its background-only images (2 or more)


@dataclass(frozen=True)
class LabelIssue:
    path: str
    split: str
    given: str
    suggested: str
    self_confidence: float  # out-of-fold probability of the given label
    suggested_probability: float


@dataclass(frozen=True)
class LabelIssues:
    n_checked: int
    issues: list[LabelIssue]  # lowest self-confidence first
    folds: int
    oof_accuracy: float  # out-of-fold accuracy against the given labels
    model: str
    method: str
    seconds: float


@dataclass(frozen=True)
class CoverageWindow:
    """One camera over one window (or over all its frames: ``index`` None)."""

    camera: str
    index: int | None
    start_s: float  # seconds after the camera's first frame
    end_s: float
    start_ts: float  # frame timestamps (epoch seconds) of the first and last frame in it
    end_ts: float
    n_frames: int
    runs: list[str]
    outside: bool  # some share beyond a training tail is significant and >= min_effect above the tail
    findings: list[str]  # the shares that make it outside, in words, largest first
    largest_share: float | None  # largest share of frames beyond any tail tested
    tails: list[TailShift]


@dataclass(frozen=True)
class CameraCoverage:
    """One camera: its windows, and the same tests over all its frames (``overall``; consecutive frames are
    correlated, so a long block of night frames is less evidence than as many scattered ones: ``overall.outside``
    can be False while a window is outside). ``large_shares``: the shares of all its frames beyond a training tail by
    at least ``min_effect``, in words, whether significant or not."""

    camera: str
    overall: CoverageWindow
    windows: list[CoverageWindow]
    windows_outside: int
    frames_outside: int  # frames in the windows outside
    large_shares: list[str]


@dataclass(frozen=True)
class Coverage:
    db: str
    runs: list[str]
    img_size: list[int]  # [height, width] the training images' statistics were computed at
    n_reference: int  # training images in the reference
    reference_quantiles: dict[str, list[float]]  # feature -> [tail quantile, 1 - tail quantile] of the training images
    model: str | None  # whose confidence was compared ("name:version")
    confidence_reference: int | None  # validation images in that model's reference
    window_s: float
    tail: float
    min_effect: float
    alpha: float
    cameras: list[CameraCoverage]
    notes: list[str] = field(default_factory=list)


@dataclass
class DataReport:
    """Everything :func:`check_data` found. ``to_dict()`` is JSON-ready; ``text()`` the summary a person reads;
    ``html()`` one self-contained page (thumbnails embedded)."""

    sources: list[str]
    classes: list[str]
    img_size: list[int]  # [height, width] the images were decoded at
    n_listed: int  # image files listed by the sources
    n_images: int  # decoded
    non_images: int  # files skipped because their extension is not an image type
    unreadable: list[str]
    split_source: str  # "manifest", "stratified" or "manifest + stratified"
    class_counts: dict[str, int]  # decoded images per class
    split_counts: dict[str, dict[str, int]]  # split -> class -> images
    imbalance_ratio: float | None  # largest / smallest class (None when a class has no images)
    smallest_class: str
    smallest_share: float
    duplicates: Duplicates | None = None
    label_issues: LabelIssues | None = None
    coverage: Coverage | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def text(self) -> str:
        return format_text(self)

    def html(self) -> str:
        return render_html(self)


def _jsonable(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return _jsonable(asdict(x))
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# --------------------------------------------------------------------------------------------------
# Pure functions: counts, splits
# --------------------------------------------------------------------------------------------------
def class_balance(counts: dict[str, int]) -> tuple[float | None, str, float]:
    """(largest / smallest class count, the smallest class, its share of all images). The ratio is None when a
    class has no images (infinitely imbalanced)."""
    if not counts:
        raise ValueError("class_balance needs at least one class")
    total = sum(counts.values())
    smallest = min(counts, key=lambda c: (counts[c], c))
    lo, hi = counts[smallest], max(counts.values())
    return (hi / lo if lo else None), smallest, (lo / total if total else 0.0)


def assign_splits(samples: Sequence[Sample], labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, str]:
    """Each sample's split (array of "train"/"val"/"test") and where it came from: the split training makes
    (:func:`models.data.assign_splits`: the manifest's own, else by group, else stratified)."""
    from models.data import assign_splits as training_splits

    split = training_splits(samples, labels, val_fraction, test_fraction, seed)
    given = sum(s.split is not None for s in samples)
    grouped = sum(s.split is None and s.group is not None for s in samples)
    parts = [name for name, n in (("manifest", given), ("group", grouped), ("stratified", len(samples) - given - grouped)) if n]
    return split.astype(str) if len(split) else np.empty(0, dtype="<U5"), " + ".join(parts) or "manifest"


# --------------------------------------------------------------------------------------------------
# Pure functions: hashes and pair search
# --------------------------------------------------------------------------------------------------
def pack_bits(bits: np.ndarray) -> np.ndarray:
    """(N, 64) booleans -> (N,) uint64, first bit most significant (as ``str(imagehash.ImageHash)`` reads)."""
    bits = np.asarray(bits, dtype=bool).reshape(len(bits), -1)
    if bits.shape[1] != 64:
        raise ValueError(f"expected 64 bits per hash, got {bits.shape[1]}")
    return np.packbits(bits, axis=1).view(">u8").astype(np.uint64).reshape(-1)


def grey_thumbnails(images: np.ndarray, side: int = THUMB) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N, side, side) uint8 grey, resized with ``cv2.INTER_AREA``."""
    out = np.empty((len(images), side, side), np.uint8)
    for i, im in enumerate(images):
        out[i] = cv2.resize(cv2.cvtColor(im, cv2.COLOR_RGB2GRAY), (side, side), interpolation=cv2.INTER_AREA)
    return out


def shift_features(thumbs: np.ndarray, batch: int = 8192) -> np.ndarray:
    """(N, 63) translation-invariant descriptors of (N, H, W) grey thumbnails: the log-magnitudes of the 2-D DFT of
    each mean-subtracted thumbnail at the 63 lowest non-zero frequencies of one half plane (rows -4..3, columns
    0..7; the other half mirrors it), minus their mean (which removes a global gain: brightness and contrast).
    A circular shift leaves DFT magnitudes unchanged, so an item that moved through a fixed view keeps them.
    Computed ``batch`` thumbnails at a time (the transform is complex128: 16 KB per 32x32 thumbnail)."""
    t = np.asarray(thumbs)
    if t.ndim != 3:
        raise ValueError(f"thumbnails must be (N, H, W), got {t.shape}")
    out = np.empty((len(t), 63), np.float32)
    ky = np.r_[0:4, -4:0]
    for s in range(0, len(t), batch):
        g = t[s:s + batch].astype(np.float32)
        g -= g.mean(axis=(1, 2), keepdims=True)
        mag = np.abs(np.fft.fft2(g))
        v = np.log1p(mag[:, ky][:, :, :8]).reshape(len(g), 64)[:, 1:]
        out[s:s + batch] = v - v.mean(axis=1, keepdims=True)
    return out


def shift_hashes(features: np.ndarray, medians: np.ndarray | None = None) -> np.ndarray:
    """64-bit hashes of :func:`shift_features`: bit k says whether frequency k is stronger than its median over the
    dataset (``medians``, default computed from ``features``; the 64th bit is 0). Thresholding at the dataset's own
    median, not the image's, keeps what tells images apart: every photo's spectrum falls with frequency, so
    per-image thresholds would give every image nearly the same bits (and the pair search nearly all pairs).
    Hashes are comparable only under the same ``medians``."""
    v = np.asarray(features, np.float32)
    if len(v) == 0:
        return np.empty(0, np.uint64)
    med = np.median(v, axis=0) if medians is None else np.asarray(medians, np.float32)
    return pack_bits(np.concatenate([v > med, np.zeros((len(v), 1), bool)], axis=1))


def _masks(bits: int, radius: int) -> np.ndarray:
    """Every ``bits``-bit integer with at most ``radius`` bits set."""
    from itertools import combinations

    out = [0]
    for r in range(1, radius + 1):
        out += [sum(1 << b for b in c) for c in combinations(range(bits), r)]
    return np.array(out, dtype=np.int64)


def hamming_pairs(hashes: np.ndarray, max_distance: int, chunks: int = 4, max_candidates: int | None = None,
                  batch: int = 2_000_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` of 64-bit hashes within ``max_distance`` bits: ``(i, j, distance)``, sorted by (i, j).

    Multi-index hashing (Norouzi, Punjani & Fleet 2012): the 64 bits are cut into ``chunks`` chunks; by pigeonhole,
    two hashes within ``max_distance`` bits agree on some chunk up to ``max_distance // chunks`` bits. Each chunk's
    values are sorted once; each hash looks up its own chunk value and those few bits away (binary search), and
    only those candidates have their full distance computed. For N uniformly spread hashes and 16-bit chunks a
    hash meets about ``chunks * probes * N / 65536`` candidates instead of N: sub-quadratic in practice, exact
    (no pair within the distance is missed).

    ``max_candidates``: raise :class:`OverflowError` (before any pair is compared) when more candidate pairs
    would be examined; the caller can tighten ``max_distance``.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64).reshape(-1)
    n = len(h)
    if not 0 <= max_distance <= 64:
        raise ValueError(f"max_distance must be in [0, 64], got {max_distance}")
    if 64 % chunks:
        raise ValueError(f"chunks must divide 64, got {chunks}")
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64))
    if n < 2:
        return empty
    width = 64 // chunks
    radius = max_distance // chunks
    masks = _masks(width, min(radius, width))
    chunk_keys = [((h >> np.uint64(c * width)) & np.uint64((1 << width) - 1)).astype(np.int64) for c in range(chunks)]
    orders = [np.argsort(k, kind="stable") for k in chunk_keys]
    sorted_keys = [k[o] for k, o in zip(chunk_keys, orders)]

    def lookups():  # (order, first index, count) of each hash's bucket, per chunk and probe; recomputed, not stored
        for keys, order, sk in zip(chunk_keys, orders, sorted_keys):
            for m in masks:
                q = keys ^ m
                lo = np.searchsorted(sk, q, "left")
                yield order, lo, np.searchsorted(sk, q, "right") - lo

    if max_candidates is not None:
        total = sum(int(cnt.sum()) for _, _, cnt in lookups())
        if total > max_candidates:
            raise OverflowError(f"{total} candidate pairs for {n} hashes within {max_distance} bits (limit {max_candidates})")
    found_i, found_j, found_d = [], [], []
    idx = np.arange(n)
    for order, lo, cnt in lookups():
        # expand (i, bucket range) into candidate pairs, a batch of query hashes at a time
        cum = np.cumsum(cnt)
        start = 0
        while start < n:
            base = cum[start - 1] if start else 0
            stop = max(int(np.searchsorted(cum, base + batch, "right")), start + 1)
            c = cnt[start:stop]
            if c.sum():
                ii = np.repeat(idx[start:stop], c)
                offs = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
                jj = order[np.repeat(lo[start:stop], c) + offs]
                keep = ii < jj
                ii, jj = ii[keep], jj[keep]
                d = np.bitwise_count(h[ii] ^ h[jj]).astype(np.int64)
                ok = d <= max_distance
                found_i.append(ii[ok])
                found_j.append(jj[ok])
                found_d.append(d[ok])
            start = stop
    if not found_i:
        return empty
    i, j, d = np.concatenate(found_i), np.concatenate(found_j), np.concatenate(found_d)
    key, first = np.unique(i * n + j, return_index=True)
    return key // n, key % n, d[first]


def shift_similarity(thumbs: np.ndarray, i: np.ndarray, j: np.ndarray, batch: int = 4096) -> np.ndarray:
    """Normalised cross-correlation of thumbnails ``i`` and ``j`` (mean-subtracted, unit norm) at the best circular
    shift, per pair, in [-1, 1]: 1 when one is the other moved. Computed with FFTs, ``batch`` pairs at a time."""
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    out = np.empty(len(i), np.float32)
    if len(i) == 0:
        return out
    g = np.asarray(thumbs, np.float32)
    shape = g.shape[1:]
    for s in range(0, len(i), batch):
        a, b = g[i[s:s + batch]], g[j[s:s + batch]]
        a = a - a.mean(axis=(1, 2), keepdims=True)
        b = b - b.mean(axis=(1, 2), keepdims=True)
        na = np.sqrt((a * a).sum(axis=(1, 2)))
        nb = np.sqrt((b * b).sum(axis=(1, 2)))
        corr = np.fft.irfft2(np.fft.rfft2(a) * np.conj(np.fft.rfft2(b)), s=shape).max(axis=(1, 2))
        out[s:s + batch] = corr / np.maximum(na * nb, 1e-6)
    return out


class _UnionFind:
    def __init__(self, n: int):
        self.parent = np.arange(n)

    def find(self, x: int) -> int:
        p = self.parent
        root = x
        while p[root] != root:
            root = p[root]
        while p[x] != root:
            p[x], x = root, p[x]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def chromaticity_gap(colours: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Largest difference between the R, G, B shares of images ``i`` and ``j``'s mean colours (``colours``: (N, 3));
    unchanged by brightness or contrast scaling, large between a green and a grey belt (which grey thumbnails
    cannot tell apart)."""
    c = np.asarray(colours, np.float64)
    share = c / np.maximum(c.sum(axis=1, keepdims=True), 1e-6)
    return np.abs(share[np.asarray(i, np.int64)] - share[np.asarray(j, np.int64)]).max(axis=1) if len(i) else np.empty(0)


# --------------------------------------------------------------------------------------------------
# Pure functions: fixed views, their backgrounds, and what is in front of them
# --------------------------------------------------------------------------------------------------
FG_SIDE = 64  # images are compared with their view's background at FG_SIDE x FG_SIDE
ITEM = 32  # side of the foreground descriptors
VIEW_MATCH_SIDE = 16  # side of the blurred thumbnails that decide which fixed view an image shows
VIEW_TOLERANCE = 8.0  # grey levels (largest of R, G, B) within which such a thumbnail pixel agrees with a view's background
NO_VIEW, BACKGROUND_ONLY, FOREGROUND = -1, 0, 1  # ForegroundViews.state
EXHAUSTIVE_FOREGROUNDS = 128  # foreground_pairs compares all pairs of this many foregrounds or fewer
BACKGROUND_THRESHOLD = 25.0  # grey levels: what robust_background leaves out while estimating a background


def _view_thumbs(images: np.ndarray) -> np.ndarray:
    """(N, S, S, 3) -> (N, VIEW_MATCH_SIDE, VIEW_MATCH_SIDE, 3) float32 (area averages: sensor noise cancels)."""
    m = VIEW_MATCH_SIDE
    return np.stack([cv2.resize(np.asarray(im, np.float32), (m, m), interpolation=cv2.INTER_AREA) for im in images]) \
        if len(images) else np.empty((0, m, m, 3), np.float32)


def view_agreement(thumbs: np.ndarray, background: np.ndarray, tolerance: float) -> np.ndarray:
    """Share of pixels of each of ``thumbs`` ((N, m, m, 3)) within ``tolerance`` grey levels (largest of R, G, B) of
    ``background`` ((m, m, 3)): near 1 for a frame of that view, 1 minus the share something covers when an item is
    in front of it, low for another view (or another lighting)."""
    return (np.abs(np.asarray(thumbs, np.float32) - background).max(axis=-1) <= tolerance).mean(axis=(1, 2))


_K3 = np.ones((3, 3), np.uint8)


def foreground_mask(image: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) uint8 0/1: where ``image`` differs from ``background`` (both (H, W, 3)) by more than ``threshold``
    grey levels in some channel, after a 3x3 blur; a 3x3 opening drops isolated pixels and one-pixel lines (sensor
    noise, a belt's splice line), a closing and hole filling make an item one solid silhouette (an item's pixels
    that happen to match the background behind it do not punch holes in it)."""
    diff = cv2.GaussianBlur(np.abs(np.asarray(image, np.float32) - background).max(axis=-1), (3, 3), 0)
    m = cv2.morphologyEx((diff > threshold).astype(np.uint8), cv2.MORPH_OPEN, _K3)
    if not m.any():
        return m
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, _K3)
    # fill holes: what the border cannot reach through the background is inside an item
    flood = np.pad(1 - m, 1, constant_values=1)
    cv2.floodFill(flood, None, (0, 0), 2)
    return (m | (flood[1:-1, 1:-1] == 1)).astype(np.uint8)


def robust_background(frames: np.ndarray, threshold: float, rounds: int = 2) -> np.ndarray:
    """The background of frames of one fixed view ((M, H, W, 3)). A plain per-pixel median keeps a ghost where
    items pass in most frames (the middle of a conveyor), so: the median of the quarter of the frames that agree
    best with the plain median (the emptiest ones; at least 8), then ``rounds`` times the per-pixel median of all
    frames that do not show foreground there (:func:`foreground_mask` against the previous estimate, dilated by a
    pixel)."""
    f = np.asarray(frames, np.float32)
    plain = np.median(f, axis=0)
    agree = (np.abs(f - plain).max(axis=-1) <= threshold).mean(axis=(1, 2))
    k = min(len(f), max(8, len(f) // 4))
    bg = np.median(f[np.argsort(-agree, kind="stable")[:k]], axis=0)
    for _ in range(rounds):
        masks = np.stack([cv2.dilate(foreground_mask(x, bg, threshold), _K3) for x in f]).astype(bool)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: foreground in every frame
                bg = np.nanmedian(np.where(masks[..., None], np.nan, f), axis=0)
        bg = np.where(np.isnan(bg), plain, bg)
    return bg.astype(np.float32)


@dataclass(frozen=True)
class Views:
    """The fixed views :func:`find_views` found: their backgrounds, the foreground threshold of each (grey levels)
    and the backgrounds' :func:`_view_thumbs`."""

    backgrounds: np.ndarray  # (K, H, W, 3) float32
    thresholds: np.ndarray  # (K,) float32
    thumbs: np.ndarray  # (K, VIEW_MATCH_SIDE, VIEW_MATCH_SIDE, 3) float32

    def __len__(self) -> int:
        return len(self.backgrounds)


def noise_threshold(frames: np.ndarray, background: np.ndarray, factor: float = 6.0, low: float = 16.0,
                    high: float = 40.0) -> float:
    """A foreground threshold for one view: ``factor`` times the median (blurred, largest-channel) difference
    between its ``frames`` and its ``background`` (most pixels are background, so the median is the noise: sensor,
    compression, a moving belt's texture), within [``low``, ``high``] grey levels. A quiet static view (rollers)
    gets a low one, so a dark item on a dark belt still stands out; a noisy view a high one."""
    f = np.asarray(frames, np.float32)
    med = float(np.median([np.median(cv2.GaussianBlur(np.abs(x - background).max(axis=-1), (3, 3), 0)) for x in f]))
    return float(np.clip(factor * med, low, high))


def find_views(frames: np.ndarray, threshold: float | None = None, tolerance: float = VIEW_TOLERANCE, min_agreement: float = 0.6,
               min_frames: int = 8, max_views: int = 16, max_tries: int = 64, max_frames: int = 256,
               seed: int = 0) -> Views:
    """The fixed views (cameras) among ``frames`` ((S, H, W, 3) uint8, a sample of the dataset), K >= 0 of them.
    Leader clustering on :func:`view_agreement`: a frame drawn at random gathers the free frames that agree with it
    on at least ``min_agreement`` of their pixels; with ``min_frames`` or more, their :func:`robust_background`
    (from at most ``max_frames`` of them) is a view, which then claims every free frame that agrees with it. Stops
    after ``max_views`` views or ``max_tries`` draws in a row that found none (photos that share no background give
    no view: the foreground comparison then does nothing). Each view's foreground threshold is ``threshold``, or
    by default its :func:`noise_threshold`."""
    f = np.asarray(frames)
    m = VIEW_MATCH_SIDE
    none = Views(np.empty((0, *f.shape[1:]), np.float32), np.empty(0, np.float32), np.empty((0, m, m, 3), np.float32))
    if len(f) < min_frames:
        return none
    rng = np.random.default_rng(seed)
    small = _view_thumbs(f)
    free = np.ones(len(f), bool)
    views: list[np.ndarray] = []
    thresholds: list[float] = []
    misses = 0
    for i in rng.permutation(len(f)):
        if len(views) >= max_views or misses >= max_tries or free.sum() < min_frames:
            break
        if not free[i]:
            continue
        cand = np.flatnonzero(free)
        members = cand[view_agreement(small[cand], small[i], tolerance) >= min_agreement]
        if len(members) < min_frames:
            misses += 1
            continue
        pick = members if len(members) <= max_frames else rng.choice(members, max_frames, replace=False)
        bg = robust_background(f[pick], BACKGROUND_THRESHOLD if threshold is None else threshold)
        claimed = cand[view_agreement(small[cand], _view_thumbs(bg[None])[0], tolerance) >= min_agreement]
        if len(claimed) < min_frames:
            misses += 1
            continue
        views.append(bg)
        thresholds.append(noise_threshold(f[pick], bg) if threshold is None else float(threshold))
        free[claimed] = False
        misses = 0
    if not views:
        return none
    bgs = np.stack(views)
    return Views(bgs, np.array(thresholds, np.float32), _view_thumbs(bgs))


@dataclass
class ForegroundViews:
    """Per image, what stands in front of its fixed view (see :func:`describe_foreground`)."""

    view: np.ndarray  # (N,) int16: index of the view (background) it shows, -1 none
    state: np.ndarray  # (N,) int8: NO_VIEW, BACKGROUND_ONLY (nothing in front of the view) or FOREGROUND
    canvas: np.ndarray  # (N, ITEM, ITEM) int8: the foreground's grey levels minus their mean, centred, 0 elsewhere
    colour: np.ndarray  # (N, 3) float32: the foreground's mean R, G, B
    area: np.ndarray  # (N,) float32: share of the image it covers

    @classmethod
    def empty(cls, n: int) -> ForegroundViews:
        return cls(np.full(n, -1, np.int16), np.full(n, NO_VIEW, np.int8), np.zeros((n, ITEM, ITEM), np.int8),
                   np.zeros((n, 3), np.float32), np.zeros(n, np.float32))



def describe_foreground(image: np.ndarray, views: Views, tolerance: float = VIEW_TOLERANCE, min_agreement: float = 0.5,
                        min_blob: float = 0.004) -> tuple[int, int, np.ndarray, np.ndarray, float]:
    """(view, state, canvas, colour, area) of one ``image`` ((H, W, 3), the views' size) against the fixed ``views``.

    The view is the one the image agrees with most (:func:`view_agreement`), when on at least ``min_agreement`` of
    its pixels. The foreground is :func:`foreground_mask`'s (at the view's threshold) connected parts of at least
    ``min_blob`` of the image; none at all (not a pixel) makes the image BACKGROUND_ONLY; only specks (a sliver of
    an item leaving the view) make it NO_VIEW: neither empty nor comparable. The canvas holds the foreground's grey
    levels (less its one-pixel rim, which mixes in the background) minus their mean, 0 elsewhere, in a square window
    centred on it (side ``ITEM`` pixels of the image, more for a larger foreground, resized to ``ITEM``), slightly
    blurred: where the item is in the view no longer matters, its size, shape and markings do."""
    none = (-1, NO_VIEW, np.zeros((ITEM, ITEM), np.int8), np.zeros(3, np.float32), 0.0)
    if not len(views):
        return none
    img = np.asarray(image, np.float32)
    agree = view_agreement(views.thumbs, _view_thumbs(img[None])[0], tolerance)
    v = int(np.argmax(agree))
    if agree[v] < min_agreement:
        return none
    m = foreground_mask(img, views.backgrounds[v], float(views.thresholds[v]))
    if not m.any():
        return v, BACKGROUND_ONLY, none[2], none[3], 0.0
    _, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    big = np.flatnonzero(stats[1:, cv2.CC_STAT_AREA] >= min_blob * m.size) + 1
    if not len(big):
        return v, NO_VIEW, none[2], none[3], 0.0
    keep = np.isin(lab, big)
    inner = cv2.erode(keep.astype(np.uint8), _K3).astype(bool)  # the item's own pixels: its rim mixes in the background
    inner = inner if inner.any() else keep
    grey = img @ np.array([0.299, 0.587, 0.114], np.float32)
    vals = np.where(inner, grey - grey[inner].mean(), 0.0).astype(np.float32)
    ys, xs = np.nonzero(keep)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side = int(max(ITEM, math.ceil(1.25 * max(y1 - y0, x1 - x0))))
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    pad = np.pad(vals, side)
    win = pad[cy + side - side // 2: cy + side - side // 2 + side, cx + side - side // 2: cx + side - side // 2 + side]
    canvas = cv2.resize(win, (ITEM, ITEM), interpolation=cv2.INTER_AREA) if side != ITEM else win
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.7)  # an item a few pixels on is resampled differently: compare its shapes, not its aliasing
    return (v, FOREGROUND, np.clip(np.round(canvas), -127, 127).astype(np.int8), img[keep].mean(axis=0).astype(np.float32),
            float(keep.mean()))


def dct_hashes(canvases: np.ndarray) -> np.ndarray:
    """64-bit hashes of (N, S, S) canvases: bit k says whether the k-th of the 8x8 lowest 2-D DCT coefficients is
    above its median over the canvases given (as :func:`shift_hashes` thresholds, so comparable only within one
    call). The canvases are centred on their foreground, so this hash sees where within the item things are, which
    the shift hash's Fourier magnitudes do not: the two find different candidates."""
    from scipy.fft import dctn

    c = np.asarray(canvases, np.float32)
    if not len(c):
        return np.empty(0, np.uint64)
    low = dctn(c, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(c), 64)
    return pack_bits(low > np.median(low, axis=0))


def _bounded_pairs(hashes: np.ndarray, radius: int, limit: int) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray] | None, int]:
    """:func:`hamming_pairs` within ``radius`` bits, the radius tightened to the next one that probes fewer buckets
    while more than ``limit`` candidate pairs would be examined: (pairs, radius used), pairs None when even 3 bits
    is too many."""
    t = radius
    while True:
        try:
            return hamming_pairs(hashes, t, max_candidates=limit), t
        except OverflowError:
            if t < 4:
                return None, t
            t = (t // 4) * 4 - 1  # 4 chunks: t // 4 bits each


def foreground_pairs(fg: ForegroundViews, cfg: DataCheckConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Pairs of FOREGROUND images of one view whose foregrounds are the same thing: candidates within
    ``cfg.foreground_distance`` bits of the canvases' shift hashes (:func:`shift_features` of the canvases) or of
    their :func:`dct_hashes` (each search bounded like the shift pass; all pairs when there are at most
    ``EXHAUSTIVE_FOREGROUNDS``), kept when the canvases correlate at least ``cfg.foreground_similarity`` at their best
    shift (:func:`shift_similarity`), the foregrounds' mean colours agree (:func:`chromaticity_gap` at most twice
    ``cfg.colour_tolerance``: the foreground alone, without the background that dilutes a colour difference) and
    their areas are within a factor 2. Returns (i, j, distance, similarity, notes), i < j image indices."""
    empty = np.empty(0, np.int64)
    idx = np.flatnonzero(fg.state == FOREGROUND)
    if len(idx) < 2:
        return empty, empty, empty, np.empty(0, np.float32), []
    canvas = fg.canvas[idx].astype(np.float32)
    limit = cfg.max_candidates_per_image * len(idx)
    notes, keys, dists = [], [], []
    if len(idx) <= EXHAUSTIVE_FOREGROUNDS:  # a few: compare them all (hash bits thresholded at the median of a few are noise)
        a, b = np.triu_indices(len(idx), 1)
        keys.append(a * len(idx) + b)
        dists.append(np.zeros(len(a), np.int64))
    for name, hashes in () if keys else (("shift", shift_hashes(shift_features(canvas))), ("DCT", dct_hashes(canvas))):
        found, t = _bounded_pairs(hashes, cfg.foreground_distance, limit)
        if found is None:
            notes.append(f"foreground search ({name} hash) skipped: the foregrounds are so alike that even 3 bits would "
                         f"examine over {limit} candidate pairs (raise max_candidates_per_image to force it)")
            continue
        if t != cfg.foreground_distance:
            notes.append(f"foreground search ({name} hash) tightened from {cfg.foreground_distance} to {t} bits: the "
                         f"foregrounds are alike enough that {cfg.foreground_distance} bits would examine over {limit} candidate pairs")
        keys.append(found[0] * len(idx) + found[1])
        dists.append(found[2])
    if not keys:
        return empty, empty, empty, np.empty(0, np.float32), notes
    key, first = np.unique(np.concatenate(keys), return_index=True)  # a pair both hashes propose: its first distance
    a, b, d = key // len(idx), key % len(idx), np.concatenate(dists)[first]
    ok = fg.view[idx[a]] == fg.view[idx[b]]
    area_a, area_b = fg.area[idx[a]], fg.area[idx[b]]
    ok &= np.minimum(area_a, area_b) * 2 >= np.maximum(area_a, area_b)
    a, b, d = a[ok], b[ok], d[ok]
    ok = chromaticity_gap(fg.colour[idx], a, b) <= 2 * cfg.colour_tolerance
    a, b, d = a[ok], b[ok], d[ok]
    sim = shift_similarity(canvas, a, b)
    ok = sim >= cfg.foreground_similarity
    return idx[a[ok]], idx[b[ok]], d[ok], sim[ok], notes


def find_duplicates(paths: Sequence[str], splits: Sequence[str], labels: Sequence[str], digests: Sequence[str],
                    phashes: np.ndarray, thumbs: np.ndarray, cfg: DataCheckConfig, colours: np.ndarray | None = None,
                    foreground: ForegroundViews | None = None) -> Duplicates:
    """Exact copies (equal ``digests``) and near-copies: candidate pairs within ``cfg.phash_distance`` bits of
    ``phashes`` or (``cfg.shift_tolerant``) ``cfg.shift_distance`` bits of the shift hashes of ``thumbs``, kept
    when :func:`shift_similarity` is at least ``cfg.shift_similarity`` and (with ``colours``, the images' mean
    R, G, B) their :func:`chromaticity_gap` at most ``cfg.colour_tolerance``; with ``foreground``
    (``cfg.foreground``: :func:`describe_foreground` of each image against its fixed view), also the pairs of
    :func:`foreground_pairs` and the sets of images that show nothing but their view's background (see the module
    docstring). Inputs are per decoded image, in one order."""
    n = len(paths)
    splits = np.asarray(splits, dtype=object)
    labels_a = np.asarray(labels, dtype=object)
    notes: list[str] = []
    # exact: equal file bytes
    by_digest: dict[str, list[int]] = defaultdict(list)
    for k, dg in enumerate(digests):
        by_digest[dg].append(k)
    groups = sorted((g for g in by_digest.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
    # near: candidates from both hashes (as pair keys i * n + j, i < j), each kept when the thumbnails correlate at
    # their best shift and the colours agree
    pi, pj, pd = hamming_pairs(phashes, cfg.phash_distance)
    keys, dist, shifted = pi * n + pj, pd, np.zeros(len(pi), bool)
    if cfg.shift_tolerant and n > 1:
        limit = cfg.max_candidates_per_image * n
        found, t = _bounded_pairs(shift_hashes(shift_features(thumbs)), cfg.shift_distance, limit)
        if found is None:
            notes.append(f"shift-tolerant search skipped: the images are so alike that even 3 bits would examine over "
                         f"{limit} candidate pairs (raise max_candidates_per_image to force it)")
        else:
            if t != cfg.shift_distance:
                notes.append(f"shift-tolerant search tightened from {cfg.shift_distance} to {t} bits: the images are alike "
                             f"enough that {cfg.shift_distance} bits would examine over {limit} candidate pairs")
            si, sj, sd = found
            extra = ~np.isin(si * n + sj, keys)  # pairs phash already proposed stay "perceptual"
            keys = np.concatenate([keys, (si * n + sj)[extra]])
            dist = np.concatenate([dist, sd[extra]])
            shifted = np.concatenate([shifted, np.ones(int(extra.sum()), bool)])
    ci, cj = keys // n, keys % n
    group = np.full(n, -1, np.int64)
    for gi, g in enumerate(groups):
        group[g] = gi
    keep = (group[ci] < 0) | (group[ci] != group[cj])  # byte-identical pairs are exact, not near
    sim = np.zeros(len(ci), np.float32)
    sim[keep] = shift_similarity(thumbs, ci[keep], cj[keep])
    keep &= sim >= cfg.shift_similarity
    if colours is not None:
        keep[keep] &= chromaticity_gap(colours, ci[keep], cj[keep]) <= cfg.colour_tolerance
    near = [(int(a), int(b), "shifted" if s else "perceptual", int(d), float(q))
            for a, b, s, d, q in zip(ci[keep], cj[keep], shifted[keep], dist[keep], sim[keep])]
    # the foreground in front of a fixed view: pairs the whole-image comparison did not find, and background-only sets
    bg_sets: list[np.ndarray] = []
    use_fg = cfg.foreground and foreground is not None and n > 1
    if use_fg:
        fi, fj, fd, fs, fg_notes = foreground_pairs(foreground, cfg)
        notes += fg_notes
        fk = fi * n + fj
        new = ~np.isin(fk, keys[keep]) & ((group[fi] < 0) | (group[fi] != group[fj]))
        near += [(int(a), int(b), "foreground", int(d), float(q)) for a, b, d, q in zip(fi[new], fj[new], fd[new], fs[new])]
        empty = np.flatnonzero(foreground.state == BACKGROUND_ONLY)
        for v in np.unique(foreground.view[empty]):
            members = empty[foreground.view[empty] == v]
            if len(members) > 1:
                bg_sets.append(members)
    in_bg = np.full(n, -1, np.int64)
    for k, members in enumerate(bg_sets):
        in_bg[members] = k
    near = [p for p in near if in_bg[p[0]] < 0 or in_bg[p[0]] != in_bg[p[1]]]  # a background set's pairs are counted as its own
    near.sort(key=lambda p: (p[0], p[1]))
    # counts: a set of k identical files (or of k background-only frames of one view) holds k(k-1)/2 pairs, counted
    # from its members (never enumerated); the report lists an exact set as pairs of its first file with the others,
    # a background set as its pairs, cross-split first, as far as max_pairs_listed allows
    uf = _UnionFind(n)
    cross: Counter[str] = Counter()
    leaked: dict[str, set[int]] = {"val": set(), "test": set()}
    conflicts = 0

    def count_set(members: Sequence[int], sign: int = 1) -> None:
        nonlocal conflicts
        by_split = Counter(splits[members].tolist())
        by_label = Counter(labels_a[members].tolist())
        conflicts += sign * (len(members) * (len(members) - 1) - sum(c * (c - 1) for c in by_label.values())) // 2
        for a, b in SPLIT_PAIRS:
            cross[f"{a}-{b}"] += sign * by_split.get(a, 0) * by_split.get(b, 0)
        if sign > 0 and by_split.get("train"):
            for k in members:
                if splits[k] in leaked:
                    leaked[splits[k]].add(k)

    for g in groups:
        for k in g[1:]:
            uf.union(g[0], k)
        count_set(g)
    n_background_pairs = 0
    for members in bg_sets:
        for k in members[1:]:
            uf.union(int(members[0]), int(k))
        count_set(members)
        n_background_pairs += len(members) * (len(members) - 1) // 2
    for g in groups:  # pairs both byte-identical and background-only are counted once, as exact
        for members in Counter(int(in_bg[k]) for k in g if in_bg[k] >= 0).items():
            if members[1] > 1:
                twins = [k for k in g if in_bg[k] == members[0]]
                count_set(twins, -1)
                n_background_pairs -= len(twins) * (len(twins) - 1) // 2
    near_pairs = [(a, b, "near", m, d, q) for a, b, m, d, q in near]
    for a, b, *_ in near_pairs:
        uf.union(a, b)
        sa, sb = splits[a], splits[b]
        conflicts += labels_a[a] != labels_a[b]
        if sa != sb:
            cross["-".join(sorted((sa, sb), key=SPLITS.index))] += 1
            if "train" in (sa, sb):
                other = b if sa == "train" else a
                if splits[other] in leaked:
                    leaked[splits[other]].add(other)
    all_pairs = [(g[0], k, "exact", "sha256", 0, None) for g in groups for k in g[1:]] + near_pairs
    sizes = Counter(uf.find(k) for k in range(n)) if all_pairs or bg_sets else Counter()
    multi = [s for s in sizes.values() if s > 1]
    in_split = Counter(splits.tolist())

    def _pair(a, b, kind, method, d, s) -> DuplicatePair:
        return DuplicatePair(paths[a], paths[b], str(splits[a]), str(splits[b]), str(labels_a[a]), str(labels_a[b]),
                             kind, method, int(d), None if s is None else round(float(s), 4))

    ranked = sorted(all_pairs, key=lambda p: (splits[p[0]] == splits[p[1]], p[2] != "exact", p[4], -(p[5] or 1.0), p[0], p[1]))
    cap = cfg.max_pairs_listed
    first = [p for p in ranked if splits[p[0]] != splits[p[1]]]
    listed = first[:cap]
    listed += _background_pairs(bg_sets, splits, group, cross_split=True, limit=cap - len(listed))
    listed += [p for p in ranked if splits[p[0]] == splits[p[1]]][:max(0, cap - len(listed))]
    listed += _background_pairs(bg_sets, splits, group, cross_split=False, limit=cap - len(listed))
    methods = Counter(p[2] for p in near)
    method = (f"exact: sha256 of the file bytes; near: candidates within {cfg.phash_distance} bits of imagehash.phash (perceptual)"
              + (f" or {cfg.shift_distance} bits of a Fourier-magnitude hash (shifted)" if cfg.shift_tolerant else "")
              + f", kept when the {THUMB}x{THUMB} grey thumbnails' cross-correlation at the best shift is >= {cfg.shift_similarity:g}"
              + (f" and the mean colours' R, G, B shares differ by <= {cfg.colour_tolerance:g}" if colours is not None else "")
              + (f"; in front of a fixed view's background (estimated from a sample): foregrounds within {cfg.foreground_distance} "
                 f"bits of a Fourier-magnitude hash whose {ITEM}x{ITEM} canvases correlate >= {cfg.foreground_similarity:g} "
                 "(foreground), and frames with nothing in front of the background (background)" if use_fg else ""))
    n_views = len(np.unique(foreground.view[foreground.view >= 0])) if use_fg else 0
    return Duplicates(
        n_exact_groups=len(groups), n_exact_images=sum(len(g) for g in groups),
        exact_groups=[[paths[k] for k in g] for g in groups[:50]], n_near_pairs=len(near) + n_background_pairs,
        n_near_by_method={**{m: int(methods.get(m, 0)) for m in ("perceptual", "shifted", "foreground")}, "background": n_background_pairs},
        pairs=[_pair(*p) for p in listed],
        cross_split_pairs={f"{a}-{b}": int(cross.get(f"{a}-{b}", 0)) for a, b in SPLIT_PAIRS},
        leaked={s: [len(leaked[s]), int(in_split.get(s, 0))] for s in ("val", "test")},
        conflicting_labels=int(conflicts), n_groups=len(multi), largest_group=max(multi, default=0), method=method, notes=notes,
        n_views=n_views,
        background_sets=[BackgroundSet(int(foreground.view[m[0]]), len(m), {s: int((splits[m] == s).sum()) for s in SPLITS},
                                       [paths[k] for k in m[:3]]) for m in bg_sets],
    )


def _background_pairs(bg_sets: Sequence[np.ndarray], splits: np.ndarray, group: np.ndarray, cross_split: bool,
                      limit: int) -> list[tuple]:
    """Up to ``limit`` pairs of the background sets (cross-split ones, or those within a split), enumerated only as
    far as needed; pairs of byte-identical files are left out (they are listed as exact)."""
    out: list[tuple] = []
    if limit <= 0:
        return out
    for members in bg_sets:
        by = {s: members[splits[members] == s] for s in SPLITS}
        combos = SPLIT_PAIRS if cross_split else tuple((s, s) for s in SPLITS)
        for sa, sb in combos:
            xs, ys = by[sa], by[sb]
            for ai, x in enumerate(xs):
                for y in (ys[ai + 1:] if sa == sb else ys):
                    if group[x] >= 0 and group[x] == group[y]:
                        continue
                    out.append((int(min(x, y)), int(max(x, y)), "near", "background", 0, None))
                    if len(out) >= limit:
                        return out
    return out


# --------------------------------------------------------------------------------------------------
# Decoding: every image once
# --------------------------------------------------------------------------------------------------
@dataclass
class _Scan:
    ok: np.ndarray  # (N,) bool: decoded
    digests: list[str]
    phashes: np.ndarray  # (N,) uint64
    thumbs: np.ndarray  # (N, THUMB, THUMB) uint8
    colours: np.ndarray  # (N, 3) mean R, G, B
    stats: dict[int, dict[str, float]]  # index -> image statistics (only for the coverage sample)
    small: dict[int, np.ndarray]  # index -> RGB image at the label-issue size
    foreground: ForegroundViews | None = None  # with views: what stands in front of each image's fixed view


def _phash64(rgb: np.ndarray) -> int:
    import imagehash
    from PIL import Image

    bits = imagehash.phash(Image.fromarray(rgb)).hash.reshape(-1)
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def _fg_image(img: np.ndarray) -> np.ndarray:
    """An RGB image at the size the foreground is analysed at (FG_SIDE x FG_SIDE)."""
    return img if img.shape[:2] == (FG_SIDE, FG_SIDE) else cv2.resize(img, (FG_SIDE, FG_SIDE), interpolation=cv2.INTER_AREA)


def estimate_views(paths: Sequence[Path], size: tuple[int, int], cfg: DataCheckConfig) -> Views:
    """:func:`find_views` on a seeded sample of ``cfg.view_sample`` images (decoded as :func:`scan_images` does)."""
    n = len(paths)
    pick = np.sort(np.random.default_rng(cfg.seed).choice(n, min(n, cfg.view_sample), replace=False)) if n else np.empty(0, int)

    def one(k: int) -> np.ndarray | None:
        img = load_image(paths[k], size)
        return None if img is None else _fg_image(img)

    with ThreadPoolExecutor(max_workers=max(1, cfg.workers)) as ex:
        frames = [im for im in ex.map(one, pick.tolist()) if im is not None]
    frames_a = np.stack(frames) if frames else np.empty((0, FG_SIDE, FG_SIDE, 3), np.uint8)
    return find_views(frames_a, cfg.foreground_threshold, seed=cfg.seed)


def scan_images(paths: Sequence[Path], size: tuple[int, int], *, hashes: bool = True, want_stats: np.ndarray | None = None,
                small_size: int | None = None, workers: int = 1, progress: bool = False, views: Views | None = None) -> _Scan:
    """Read and decode every file once (``load_image`` at ``size``, RGB): its sha256, and with ``hashes`` its phash
    and grey thumbnail (and with ``views`` its :func:`describe_foreground` at FG_SIDE x FG_SIDE); on request its
    image statistics (BGR at ``size``, as the runtime computes them: only where ``want_stats``) and a copy at
    ``small_size``. ``workers`` threads (OpenCV and PIL release the GIL)."""
    from tqdm.auto import tqdm

    n = len(paths)
    ok = np.zeros(n, bool)
    digests = [""] * n
    phashes = np.zeros(n, np.uint64)
    thumbs = np.zeros((n if hashes else 0, THUMB, THUMB), np.uint8)
    colours = np.zeros((n if hashes else 0, 3), np.float32)
    stats: dict[int, dict[str, float]] = {}
    small: dict[int, np.ndarray] = {}
    fg = ForegroundViews.empty(n) if hashes and views is not None else None

    def one(k: int) -> None:
        p = paths[k]
        try:
            raw = Path(p).read_bytes()
        except OSError:
            return
        img = load_image(p, size)
        if img is None:
            return
        digests[k] = hashlib.sha256(raw).hexdigest()
        if hashes:
            phashes[k] = np.uint64(_phash64(img))
            thumbs[k] = cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), (THUMB, THUMB), interpolation=cv2.INTER_AREA)
            colours[k] = img.reshape(-1, 3).mean(axis=0)
            if fg is not None:
                fg.view[k], fg.state[k], fg.canvas[k], fg.colour[k], fg.area[k] = describe_foreground(_fg_image(img), views)
        if want_stats is not None and want_stats[k]:
            s = image_stats_batch(np.ascontiguousarray(img[None, ..., ::-1]))
            stats[k] = {name: float(v[0]) for name, v in s.items()}
        if small_size is not None:
            small[k] = cv2.resize(img, (small_size, small_size), interpolation=cv2.INTER_AREA)
        ok[k] = True

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        for _ in tqdm(ex.map(one, range(n)), total=n, desc="data check: decoding", unit="img", disable=not progress, leave=False):
            pass
    return _Scan(ok, digests, phashes, thumbs, colours, stats, small, fg)


# --------------------------------------------------------------------------------------------------
# Label issues: out-of-fold probabilities from a small CNN, then cleanlab
# --------------------------------------------------------------------------------------------------
def _small_cnn(n_classes: int, width: int):
    from torch import nn

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    w = width
    return nn.Sequential(block(3, w), nn.MaxPool2d(2), block(w, 2 * w), nn.MaxPool2d(2), block(2 * w, 4 * w), nn.MaxPool2d(2),
                         block(4 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * w, n_classes))


def out_of_fold_probs(images: np.ndarray, labels: np.ndarray, n_classes: int, cfg: DataCheckConfig, progress: bool = False) -> np.ndarray:
    """(N, C) softmax of each image from a model that did not train on it: ``cfg.label_folds`` stratified folds, a
    small CNN (four 3x3 conv blocks, ``cfg.label_width`` channels doubling) trained from scratch on the other folds
    with AdamW, a one-cycle schedule and +-4 px shifts (no flips or rotations: they can change a class).

    Measured on 900 synthetic 6-class images at 48 px: out-of-fold accuracy 0.92 in ~40 s on one core
    (torchvision's mobilenet_v3_small from scratch stays at chance there with this little data and time)."""
    import torch
    from torch import nn
    from tqdm.auto import tqdm

    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    y_all = torch.from_numpy(np.asarray(labels, np.int64))
    n = len(y_all)
    rng = np.random.default_rng(cfg.seed)
    folds = np.empty(n, np.int64)
    for c in np.unique(labels):  # stratified: each class spread over the folds
        idx = np.flatnonzero(labels == c)
        folds[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % cfg.label_folds
    probs = np.zeros((n, n_classes), np.float32)
    threads = torch.get_num_threads()
    if cfg.label_threads:
        torch.set_num_threads(cfg.label_threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(total=cfg.label_folds * cfg.label_epochs, desc="data check: label model", unit="epoch", disable=not progress, leave=False)
    try:
        for f in range(cfg.label_folds):
            torch.manual_seed(cfg.seed + f)
            tr, te = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
            if len(tr) == 0 or len(te) == 0:
                continue
            net = _small_cnn(n_classes, cfg.label_width)
            opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
            bs = cfg.label_batch_size
            steps = cfg.label_epochs * math.ceil(len(tr) / bs)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
            xt, yt = x_all[tr], y_all[tr]
            net.train()
            for _ in range(cfg.label_epochs):
                perm = torch.randperm(len(tr), generator=gen)
                for s in range(0, len(tr), bs):
                    b = perm[s:s + bs]
                    xb = xt[b]
                    dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()
                    h, w = xb.shape[2:]
                    xb = nn.functional.pad(xb, (4, 4, 4, 4), mode="replicate")[:, :, dy:dy + h, dx:dx + w]
                    loss = nn.functional.cross_entropy(net(xb), yt[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                bar.update(1)
            net.eval()
            with torch.no_grad():
                out = [torch.softmax(net(x_all[te[s:s + 256]]), dim=1) for s in range(0, len(te), 256)]
            probs[te] = torch.cat(out).numpy()
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return probs


def label_issues_from_probs(labels: np.ndarray, probs: np.ndarray, filter_by: str = "both") -> np.ndarray:
    """Indices of likely label errors, lowest self-confidence first (``cleanlab.filter.find_label_issues``)."""
    from cleanlab.filter import find_label_issues as _cleanlab_find

    labels = np.asarray(labels, np.int64)
    if len(np.unique(labels)) < 2:
        return np.empty(0, np.int64)
    return np.asarray(_cleanlab_find(labels, probs, filter_by=filter_by, return_indices_ranked_by="self_confidence"), np.int64)


def find_label_issues(images: np.ndarray, labels: np.ndarray, classes: Sequence[str], paths: Sequence[str],
                      splits: Sequence[str], cfg: DataCheckConfig) -> LabelIssues:
    """Train the out-of-fold model, ask cleanlab, and describe each flagged image."""
    t0 = time.perf_counter()
    labels = np.asarray(labels, np.int64)
    probs = out_of_fold_probs(images, labels, len(classes), cfg, progress=cfg.progress)
    idx = label_issues_from_probs(labels, probs, cfg.label_filter)
    issues = [LabelIssue(paths[k], str(splits[k]), classes[labels[k]], classes[int(probs[k].argmax())],
                         round(float(probs[k, labels[k]]), 4), round(float(probs[k].max()), 4)) for k in idx]
    return LabelIssues(
        n_checked=len(labels), issues=issues, folds=cfg.label_folds,
        oof_accuracy=float((probs.argmax(axis=1) == labels).mean()) if len(labels) else float("nan"),
        model=f"small CNN ({cfg.label_width}-{4 * cfg.label_width} channels) at {cfg.label_img_size} px, {cfg.label_epochs} epochs, "
              f"{cfg.label_folds}-fold out-of-fold",
        method=f"cleanlab.filter.find_label_issues(filter_by={cfg.label_filter!r}), ranked by self-confidence",
        seconds=round(time.perf_counter() - t0, 2),
    )


# --------------------------------------------------------------------------------------------------
# Coverage of production
# --------------------------------------------------------------------------------------------------
def image_reference(stats: dict[str, np.ndarray], source: str = "training images"):
    """A :class:`~pipeline.evaluation.reference.TrainingReference` holding only image statistics (its one-class
    ``probs`` are a placeholder: :func:`training_drift` tests image statistics against it, never confidence)."""
    n = len(next(iter(stats.values())))
    if n < 2:
        raise DataError(f"coverage needs the statistics of at least 2 training images, got {n}")
    return build_reference(np.ones((n, 1)), stats, ["image"], source=source, max_points=n)


def _window_figures(camera: str, index: int | None, start_s: float, end_s: float, frame_ts: np.ndarray, runs: np.ndarray,
                    ts: np.ndarray, stats: dict[str, np.ndarray], refs: dict, probs: np.ndarray | None, prob_ts: np.ndarray | None,
                    model_role: str | None, cfg: DataCheckConfig) -> CoverageWindow:
    """One window's tests: ``frame_ts``/``runs`` of all its frames, ``ts``/``stats`` of those with statistics,
    ``probs``/``prob_ts`` of those with a usable prediction of ``model_role``."""
    probs_arg = {model_role: probs} if model_role and probs is not None and len(probs) else None
    td = training_drift(refs, probs_arg, stats, cameras=np.full(len(ts), camera, object), ts=ts, alpha=cfg.alpha,
                        min_effect=cfg.min_effect, tail=cfg.tail,
                        prob_ts={model_role: prob_ts} if probs_arg else None,
                        prob_cameras={model_role: np.full(len(prob_ts), camera, object)} if probs_arg else None,
                        image_role="images")
    hits = sorted(((t.effect, t.description) for t in td.tails if td.corrected(t.p_value) < cfg.alpha and t.effect >= cfg.min_effect),
                  key=lambda h: -h[0])
    return CoverageWindow(camera, index, round(start_s, 3), round(end_s, 3), float(frame_ts.min()), float(frame_ts.max()),
                          len(frame_ts), sorted(set(runs.tolist())), bool(hits), [h[1] for h in hits],
                          max((t.share for t in td.tails), default=None), list(td.tails))


def production_coverage(train_stats: dict[str, np.ndarray], frames: dict[str, np.ndarray], cfg: DataCheckConfig,
                        img_size: tuple[int, int], db: str, run_ids: Sequence[str], confidence_reference=None,
                        model_name: str | None = None, pred_probs: np.ndarray | None = None,
                        pred_index: np.ndarray | None = None, notes: Sequence[str] = ()) -> Coverage:
    """Coverage of production per camera, overall and per window (pure: arrays in, figures out).

    ``frames``: ``camera`` (N,), ``ts`` (N,), ``run`` (N,) and one (N,) array per name of
    :data:`~pipeline.imagestats.STAT_NAMES` (NaN where a frame has none); ``train_stats``: name -> values of the
    training images. With ``confidence_reference`` (a model card's ``TrainingReference``), ``pred_probs`` (M, C)
    are that model's softmax on frames ``pred_index`` (M,) and their confidence is compared too.
    """
    refs: dict[str, Any] = {"images": image_reference(train_stats, f"training images ({len(next(iter(train_stats.values())))})")}
    role = None
    if confidence_reference is not None and pred_probs is not None and len(pred_probs):
        role = model_name or "model"
        refs[role] = confidence_reference
    cams = np.asarray(frames["camera"], dtype=object)
    ts = np.asarray(frames["ts"], np.float64)
    runs = np.asarray(frames["run"], dtype=object)
    stat_ok = np.all([np.isfinite(np.asarray(frames[k], np.float64)) for k in STAT_NAMES], axis=0) if len(ts) else np.zeros(0, bool)
    has_pred = np.zeros(len(ts), bool)
    row_of = np.full(len(ts), -1, np.int64)
    if role is not None:
        has_pred[pred_index] = True
        row_of[pred_index] = np.arange(len(pred_index))
    out: list[CameraCoverage] = []
    for cam in sorted(set(cams.tolist())):
        sel = np.flatnonzero(cams == cam)
        sel = sel[np.argsort(ts[sel], kind="stable")]
        t0 = ts[sel[0]]

        def figures(rows: np.ndarray, index: int | None, a: float, b: float, cam: str = str(cam)) -> CoverageWindow:
            ok = rows[stat_ok[rows]]
            stats = {k: np.asarray(frames[k], np.float64)[ok] for k in STAT_NAMES}
            pr = rows[has_pred[rows]]
            probs = pred_probs[row_of[pr]] if role is not None and len(pr) else None
            return _window_figures(cam, index, a, b, ts[rows], runs[rows], ts[ok], stats, refs, probs,
                                   ts[pr] if probs is not None else None, role, cfg)

        overall = figures(sel, None, 0.0, float(ts[sel[-1]] - t0))
        widx = np.floor((ts[sel] - t0) / cfg.window_s).astype(np.int64)
        windows = [figures(sel[widx == w], int(w), w * cfg.window_s, (w + 1) * cfg.window_s) for w in np.unique(widx)]
        large = [t.description for t in sorted(overall.tails, key=lambda t: -t.effect) if t.effect >= cfg.min_effect]
        out.append(CameraCoverage(str(cam), overall, windows, sum(w.outside for w in windows),
                                  sum(w.n_frames for w in windows if w.outside), large))
    ref = refs["images"]
    quant = {k: [float(np.quantile(ref.image_stats[k], cfg.tail)), float(np.quantile(ref.image_stats[k], 1 - cfg.tail))] for k in STAT_NAMES}
    return Coverage(db=db, runs=list(run_ids), img_size=list(img_size), n_reference=ref.n, reference_quantiles=quant,
                    model=model_name if role else None, confidence_reference=refs[role].n if role else None,
                    window_s=cfg.window_s, tail=cfg.tail, min_effect=cfg.min_effect, alpha=cfg.alpha, cameras=out, notes=list(notes))


def _read_card(cfg: DataCheckConfig):
    """(card, display name, "name:version" or None when the version is unknown) of ``cfg.model``, or Nones.
    A ``models:/`` URI is resolved (and downloaded into the cache) with :func:`pipeline.tracking.resolve_model_uri`."""
    from pipeline.modelcard import read_card

    if not cfg.model:
        return None, None, None
    version = ""
    if cfg.model.startswith("models:/"):
        from pipeline import tracking

        cache = Path(cfg.cache_dir) if cfg.cache_dir else Path(cfg.workdir) / ".cache" / "models"
        path, _, version = tracking.resolve_model_uri(cfg.model, cache, cfg.workdir)
    else:
        path = Path(cfg.model)
    card = read_card(path)
    version = card.version or version
    name = card.name or Path(path).stem
    model_id = f"{name}:{version}" if version else None
    return card, model_id or name, model_id


def existing_store(db: str) -> str:
    """``db`` when it names an existing store; a SQLite file that is not there is a :class:`DataError` (opening
    it would create an empty one)."""
    from pipeline.store import normalize_url

    url = normalize_url(db)
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:" and not Path(url[len("sqlite:///"):]).is_file():
        raise DataError(f"{db}: prediction store not found (expected a shadowcam.db written by `shadowcam run`, or a database URL)")
    return db


def _store_frames(cfg: DataCheckConfig, card_name: str | None, model_id: str | None
                  ) -> tuple[dict[str, np.ndarray], list[str], np.ndarray | None, np.ndarray | None, list[str]]:
    """The store's frames (camera, ts, run, statistics) and, with a model, its predictions' softmax and rows: the
    predictions recorded as ``model_id`` ("name:version"), else the incumbent's named ``card_name``, else the
    incumbent's (with a note)."""
    from pipeline.store import PredictionStore

    notes: list[str] = []
    store = PredictionStore(existing_store(cfg.db))
    try:
        all_runs = store.list_runs()
        if not all_runs:
            raise DataError(f"prediction store {cfg.db}: no runs yet (run `shadowcam run` first)")
        known = [r["run_id"] for r in all_runs]
        run_ids = list(cfg.runs) if cfg.runs else known
        missing = [r for r in run_ids if r not in known]
        if missing:
            raise ConfigError(f"run id(s) not in store {cfg.db}: {', '.join(missing)} (known: {', '.join(known)})")
        frows, prows, run_col = [], [], []
        for rid in run_ids:  # one run at a time: the rows do not say which run a frame belongs to
            f, p, _, _ = store.evaluation_rows([rid], STAT_NAMES)
            frows += f
            prows += p
            run_col += [rid] * len(f)
    finally:
        store.close()
    if not frows:
        raise DataError(f"prediction store {cfg.db}: runs {', '.join(run_ids)} hold no frames")
    frames = {
        "camera": np.array([r[1] for r in frows], dtype=object),
        "ts": np.array([r[2] for r in frows], np.float64),
        "run": np.array(run_col, dtype=object),
    }
    for j, k in enumerate(STAT_NAMES):
        frames[k] = np.array([np.nan if r[3 + j] is None else r[3 + j] for r in frows], np.float64)
    if not np.isfinite(frames["brightness"]).any():
        notes.append("the store's frames carry no image statistics (written by an older shadowcam?): image coverage not measured")
    probs = index = None
    if card_name is not None:
        pos = {r[0]: k for k, r in enumerate(frows)}
        usable = [(pos[fid], role, f"{name}:{ver}" if ver else name, name, p) for fid, role, name, ver, p, _, degraded in prows
                  if degraded is None and fid in pos]
        if model_id:  # the exact model
            rows = [(k, p) for k, _, mid, _, p in usable if mid == model_id]
        else:  # a card without a registry version: its name, as the incumbent
            rows = [(k, p) for k, role, _, name, p in usable if name == card_name and role == "incumbent"]
        if not rows:
            rows = [(k, p) for k, role, _, _, p in usable if role == "incumbent"]
            if rows:
                notes.append(f"no predictions of {model_id or card_name} in the store: the incumbent's confidence is compared with its reference")
        if rows and len({len(p) for _, p in rows}) == 1:
            index = np.array([k for k, _ in rows], np.int64)
            probs = np.stack([p for _, p in rows]).astype(np.float64)
    return frames, run_ids, probs, index, notes


# --------------------------------------------------------------------------------------------------
# The entry point
# --------------------------------------------------------------------------------------------------
def _size_pair(size: int | tuple[int, int] | Sequence[int]) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def check_data(cfg: DataCheckConfig) -> DataReport:
    """List, decode and check the sources (see the module docstring); read the store when ``cfg.db`` is set."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    listings, classes = combine_sources(cfg.data, cfg.class_names)
    samples = [s for lst in listings for s in lst.samples]
    non_images = sum(lst.non_images for lst in listings)
    card, model_name, model_id = _read_card(cfg)
    coverage_notes: list[str] = []
    if cfg.img_size is not None:
        size = _size_pair(cfg.img_size)
        if card is not None and tuple(card.input_size) != size:
            coverage_notes.append(f"--img-size {size[0]}x{size[1]} differs from {model_name}'s input {card.input_size[0]}x{card.input_size[1]}: "
                                  "production statistics are computed at the model's size")
    elif card is not None:
        size = _size_pair(card.input_size)
    else:
        size = (DEFAULT_IMG_SIZE, DEFAULT_IMG_SIZE)
    timings["list"] = time.perf_counter() - t

    # coverage sample: a seeded subset of the images listed for training (the split is known after decoding, so
    # draw from every sample and keep the training ones; oversample to allow for the other splits)
    want_stats = None
    if cfg.db:
        rng = np.random.default_rng(cfg.seed)
        want_stats = np.zeros(len(samples), bool)
        k = min(len(samples), math.ceil(cfg.coverage_sample / max(0.05, 1 - cfg.val_fraction - cfg.test_fraction)) + 50)
        want_stats[rng.choice(len(samples), k, replace=False)] = True
    views = None
    if cfg.duplicates and cfg.foreground and len(samples) > 1:
        t = time.perf_counter()
        views = estimate_views([s.path for s in samples], size, cfg)
        timings["views"] = time.perf_counter() - t
    t = time.perf_counter()
    scan = scan_images([s.path for s in samples], size, hashes=cfg.duplicates, want_stats=want_stats,
                       small_size=cfg.label_img_size if cfg.label_issues else None, workers=cfg.workers, progress=cfg.progress,
                       views=views)
    timings["decode_and_hash"] = time.perf_counter() - t

    unreadable = [str(s.path) for s, ok in zip(samples, scan.ok) if not ok]
    keep = np.flatnonzero(scan.ok)
    kept = [samples[k] for k in keep]
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[s.label] for s in kept], np.int64)
    splits, split_source = assign_splits(kept, labels, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    counts = {c: int(n) for c, n in zip(classes, np.bincount(labels, minlength=len(classes)))}
    split_counts = {sp: {c: int(n) for c, n in zip(classes, np.bincount(labels[splits == sp], minlength=len(classes)))} for sp in SPLITS}
    ratio, smallest, share = class_balance(counts)
    paths = [str(s.path) for s in kept]
    names = [classes[i] for i in labels]

    report = DataReport(
        sources=[str(lst.source) for lst in listings], classes=list(classes), img_size=list(size), n_listed=len(samples),
        n_images=len(kept), non_images=non_images, unreadable=unreadable, split_source=split_source, class_counts=counts,
        split_counts=split_counts, imbalance_ratio=ratio, smallest_class=smallest, smallest_share=share,
        config=cfg.model_dump(mode="json"),
    )
    if cfg.duplicates and len(kept) > 1:
        t = time.perf_counter()
        fg = scan.foreground
        if fg is not None:
            fg = ForegroundViews(fg.view[keep], fg.state[keep], fg.canvas[keep], fg.colour[keep], fg.area[keep])
        report.duplicates = find_duplicates(paths, splits, names, [scan.digests[k] for k in keep], scan.phashes[keep],
                                            scan.thumbs[keep], cfg, scan.colours[keep], foreground=fg)
        timings["duplicates"] = time.perf_counter() - t
    if cfg.label_issues and len(kept) > 1:
        t = time.perf_counter()
        images = np.stack([scan.small[k] for k in keep])
        report.label_issues = find_label_issues(images, labels, classes, paths, splits, cfg)
        timings["label_issues"] = time.perf_counter() - t
    if cfg.db:
        t = time.perf_counter()
        train_rows = np.array([k for k, sp in zip(keep, splits) if sp == "train" and k in scan.stats], np.int64)
        train_rows = train_rows[np.random.default_rng(cfg.seed).permutation(len(train_rows))][: cfg.coverage_sample]
        if len(train_rows) < 2:
            raise DataError(f"coverage needs decoded training images; {len(train_rows)} in the sample")
        train_stats = {name: np.array([scan.stats[k][name] for k in train_rows]) for name in STAT_NAMES}
        if cfg.model_id:
            model_name = model_id = cfg.model_id
        frames, run_ids, probs, pindex, notes = _store_frames(cfg, None if card is None else (card.name or model_name), model_id)
        conf_ref = None
        if card is not None and probs is not None:
            from pipeline.evaluation.reference import TrainingReference

            if card.training_reference:
                conf_ref = TrainingReference.from_dict(card.training_reference, f"{model_name}: training reference")
            else:
                notes.append(f"{model_name}'s model card has no training reference: confidence not compared")
        elif card is not None:
            notes.append(f"no usable predictions in the store for {model_name}: confidence not compared")
        origin = " (the store's newest incumbent)" if cfg.model_origin == "store" else ""
        report.coverage = production_coverage(train_stats, frames, cfg, size, str(cfg.db), run_ids, conf_ref,
                                              (model_name + origin) if model_name else None, probs if conf_ref else None,
                                              pindex if conf_ref else None, notes=coverage_notes + notes)
        timings["coverage"] = time.perf_counter() - t
    report.timings_s = {k: round(v, 3) for k, v in timings.items()}
    return report


# --------------------------------------------------------------------------------------------------
# MLflow
# --------------------------------------------------------------------------------------------------
def log_data_check(report: DataReport, run: Any, tmp_dir: str | Path | None = None) -> list[Path]:
    """Write ``data_check.json`` and ``data_check.html`` and log them on ``run`` (anything with
    ``log_artifact(path, artifact_path=None)``, e.g. :class:`pipeline.tracking.TrackedRun`). Returns the files
    written (in ``tmp_dir``, else a temporary folder removed afterwards)."""
    import tempfile

    def write(folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        js, page = folder / "data_check.json", folder / "data_check.html"
        js.write_text(report.to_json(), encoding="utf-8")
        page.write_text(report.html(), encoding="utf-8")
        for p in (js, page):
            run.log_artifact(p)
        return [js, page]

    if tmp_dir is not None:
        return write(Path(tmp_dir))
    with tempfile.TemporaryDirectory(prefix="shadowcam-datacheck-") as d:
        return write(Path(d))


# --------------------------------------------------------------------------------------------------
# Words
# --------------------------------------------------------------------------------------------------
def _pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _window_name(w: CoverageWindow) -> str:
    if w.index is None:
        return "all frames"
    return f"window {w.index} [{w.start_s:g} s, {w.end_s:g} s)"


def coverage_lines(cov: Coverage) -> list[str]:
    out = []
    for cc in cov.cameras:
        o = cc.overall
        state = (f"{cc.windows_outside} of {len(cc.windows)} window(s) OUTSIDE the training data's coverage ({cc.frames_outside} frames)"
                 if cc.windows_outside else f"inside the training data's coverage in all {len(cc.windows)} window(s)")
        out.append(f"  {cc.camera}: {o.n_frames} frames, {state}" + (f"; over all frames: {'; '.join(cc.large_shares)}" if cc.large_shares else ""))
        for w in cc.windows:
            if w.outside:
                what = "OUTSIDE: " + "; ".join(w.findings)
            else:
                what = f"inside (at most {_pct(w.largest_share)} of frames beyond a training tail)"
            out.append(f"    {_window_name(w):26s} {w.n_frames:6d} frames  {what}")
    return out


def _near_methods(d: Duplicates) -> str:
    m = d.n_near_by_method
    return ", ".join(f"{m.get(k, 0)} {k}" for k in ("perceptual", "shifted", "foreground", "background") if k in m)


def format_text(r: DataReport) -> str:
    n_cls = len(r.classes)
    lines = [f"shadowcam data check: {', '.join(r.sources)}",
             f"Images: {r.n_images} decoded of {r.n_listed} listed at {r.img_size[0]}x{r.img_size[1]}; "
             f"{len(r.unreadable)} unreadable, {r.non_images} non-image file(s) skipped"]
    for p in r.unreadable[:10]:
        lines.append(f"  unreadable: {p}")
    if len(r.unreadable) > 10:
        lines.append(f"  ... and {len(r.unreadable) - 10} more")
    total = max(1, r.n_images)
    lines.append(f"Classes ({n_cls}): " + ", ".join(f"{c} {n} ({n / total:.0%})" for c, n in r.class_counts.items()))
    ratio = "infinite (a class has no readable image)" if r.imbalance_ratio is None else f"{r.imbalance_ratio:.1f}"
    lines.append(f"Imbalance: largest/smallest class = {ratio}; smallest class {r.smallest_class} holds {_pct(r.smallest_share, 1)} of the images")
    lines.append(f"Splits ({r.split_source}): " + ", ".join(f"{s} {sum(r.split_counts[s].values())}" for s in SPLITS))
    d = r.duplicates
    if d is not None:
        lines.append(f"Duplicates: {d.n_exact_groups} set(s) of exact copies ({d.n_exact_images} images); {d.n_near_pairs} near-duplicate pair(s) "
                     f"({_near_methods(d)}); {d.conflicting_labels} pair(s) with different labels")
        for b in d.background_sets:
            lines.append(f"  view {b.view}: {b.n_images} images show only its background (" + ", ".join(f"{s} {k}" for s, k in b.by_split.items())
                         + f"), all near-duplicates of each other; e.g. {b.examples[0]}")
        cross = ", ".join(f"{k} {v}" for k, v in d.cross_split_pairs.items())
        lines.append(f"  across splits: {cross} pair(s)")
        for s in ("val", "test"):
            k, n = d.leaked[s]
            if n:
                lines.append(f"  {k} of {n} {s} images ({k / n:.1%}) have an exact or near copy in train")
        for p in [p for p in d.pairs if p.cross_split][:5]:
            lines.append(f"  e.g. {p.split_a}:{p.a}  ~  {p.split_b}:{p.b}  ({p.method}, {p.distance} bits"
                         + (f", similarity {p.similarity:.2f})" if p.similarity is not None else ")"))
        lines.extend(f"  note: {x}" for x in d.notes)
    li = r.label_issues
    if li is not None:
        lines.append(f"Label issues: {len(li.issues)} likely label error(s) among {li.n_checked} images "
                     f"({len(li.issues) / max(1, li.n_checked):.1%}); out-of-fold accuracy {li.oof_accuracy:.1%} ({li.model})")
        for x in li.issues[:10]:
            lines.append(f"  {x.path}: labelled {x.given}, looks like {x.suggested} (p(given) = {x.self_confidence:.2f})")
        if len(li.issues) > 10:
            lines.append(f"  ... {len(li.issues) - 10} more in the JSON/HTML report")
    cov = r.coverage
    if cov is not None:
        conf = f"; confidence of {cov.model} vs its {cov.confidence_reference} validation images" if cov.model else ""
        lines.append(f"Coverage of production ({cov.db}, runs {', '.join(cov.runs)}; {cov.n_reference} training images at "
                     f"{cov.img_size[0]}x{cov.img_size[1]}{conf}; windows of {cov.window_s:g} s; outside = more than "
                     f"{_pct(cov.tail + cov.min_effect)} of frames beyond a {_pct(cov.tail)} training tail, significant at {cov.alpha:g}):")
        lines.extend(coverage_lines(cov))
        lines.extend(f"  note: {x}" for x in cov.notes)
    if r.timings_s:
        lines.append("Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.timings_s.items()))
    return "\n".join(lines)


def _thumb_uri(path: str, side: int = 72) -> str | None:
    img = load_image(path, side)
    if img is None:
        return None
    ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def _img(path: str) -> str:
    uri = _thumb_uri(path)
    title = _html.escape(path)
    return f'<img src="{uri}" title="{title}" alt="{title}">' if uri else f'<span class="muted">({title} unreadable)</span>'


_CSS = """
 body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
 h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
 table{border-collapse:collapse;margin:.6em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;vertical-align:top}
 th{background:#f4f4f4} td.l,th.l{text-align:left} .out{background:#fdecea} .in{background:#e6f4ea}
 .flag{color:#b3261e;font-weight:600} img{width:72px;height:72px;border:1px solid #eee;margin:0 .2em} .muted{color:#777;font-size:.85em}
 code{font-size:.85em}
"""


def render_html(r: DataReport, max_pairs: int = 24, max_issues: int = 40) -> str:
    """One self-contained page: counts, duplicates (thumbnails of the cross-split pairs first), label issues,
    coverage per camera and window."""
    e = _html.escape
    h: list[str] = ['<!doctype html><html lang="en"><head><meta charset="utf-8"><title>shadowcam data check</title>',
                    f"<style>{_CSS}</style></head><body>", "<h1>shadowcam data check</h1>",
                    f"<p>{e(', '.join(r.sources))}<br><span class='muted'>{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.created_at))}"
                    f" · images decoded at {r.img_size[0]}x{r.img_size[1]}</span></p>"]
    h.append("<h2>Images and classes</h2>")
    h.append(f"<p>{r.n_images} images decoded of {r.n_listed} listed; <b>{len(r.unreadable)}</b> unreadable; {r.non_images} non-image file(s) "
             f"skipped. Splits from: {e(r.split_source)}.</p>")
    h.append("<table><tr><th class=l>class</th>" + "".join(f"<th>{s}</th>" for s in SPLITS) + "<th>all</th><th>share</th></tr>")
    total = max(1, r.n_images)
    for c in r.classes:
        cls = " class=flag" if c == r.smallest_class else ""
        h.append(f"<tr><td class=l{cls}>{e(c)}</td>" + "".join(f"<td>{r.split_counts[s][c]}</td>" for s in SPLITS)
                 + f"<td>{r.class_counts[c]}</td><td>{r.class_counts[c] / total:.1%}</td></tr>")
    h.append("</table>")
    ratio = "∞" if r.imbalance_ratio is None else f"{r.imbalance_ratio:.1f}"
    h.append(f"<p>Largest / smallest class: <b>{ratio}</b>; the smallest, {e(r.smallest_class)}, holds {_pct(r.smallest_share, 1)}.</p>")
    if r.unreadable:
        h.append("<p>Unreadable:</p><ul>" + "".join(f"<li><code>{e(p)}</code></li>" for p in r.unreadable[:100]) + "</ul>")
    d = r.duplicates
    if d is not None:
        h.append("<h2>Duplicates</h2>")
        h.append(f"<p>{d.n_exact_groups} set(s) of exact copies ({d.n_exact_images} images); {d.n_near_pairs} near-duplicate pair(s) "
                 f"({e(_near_methods(d))}); "
                 f"{d.n_groups} connected group(s), the largest of {d.largest_group} images; {d.conflicting_labels} pair(s) with "
                 f"different labels.<br><span class=muted>{e(d.method)}</span></p>")
        for b in d.background_sets:
            h.append(f"<p>View {b.view}: <b>{b.n_images}</b> images show only its background (" + e(", ".join(f"{s} {k}" for s, k in b.by_split.items()))
                     + "), all near-duplicates of each other, e.g. " + "".join(_img(x) for x in b.examples) + "</p>")
        h.append("<table><tr><th class=l>splits</th><th>pairs</th></tr>" + "".join(
            f"<tr><td class=l>{k}</td><td{' class=flag' if v else ''}>{v}</td></tr>" for k, v in d.cross_split_pairs.items()) + "</table>")
        for s in ("val", "test"):
            k, n = d.leaked[s]
            if n:
                h.append(f"<p>{'<b class=flag>' if k else '<b>'}{k} of {n} {s} images ({k / n:.1%})</b> have an exact or near copy in train.</p>")
        shown = d.pairs[:max_pairs]
        if shown:
            h.append("<table><tr><th>a</th><th>b</th><th class=l>splits</th><th class=l>labels</th><th class=l>how</th></tr>")
            for p in shown:
                how = f"{p.method}, {p.distance} bits" + (f", similarity {p.similarity:.2f}" if p.similarity is not None else "")
                lab = e(p.label_a) if p.label_a == p.label_b else f"<span class=flag>{e(p.label_a)} / {e(p.label_b)}</span>"
                h.append(f"<tr><td>{_img(p.a)}</td><td>{_img(p.b)}</td><td class=l{' class=flag' if p.cross_split else ''}>"
                         f"{p.split_a} / {p.split_b}</td><td class=l>{lab}</td><td class=l>{e(how)}<br><span class=muted>"
                         f"{e(Path(p.a).name)}<br>{e(Path(p.b).name)}</span></td></tr>")
            h.append("</table>")
        h.extend(f"<p class=muted>{e(x)}</p>" for x in d.notes)
    li = r.label_issues
    if li is not None:
        h.append("<h2>Likely label errors</h2>")
        h.append(f"<p>{len(li.issues)} of {li.n_checked} images ({len(li.issues) / max(1, li.n_checked):.1%}); out-of-fold accuracy "
                 f"{li.oof_accuracy:.1%}; {li.seconds:.0f} s.<br><span class=muted>{e(li.model)}; {e(li.method)}</span></p>")
        if li.issues:
            h.append("<table><tr><th></th><th class=l>file</th><th class=l>given</th><th class=l>suggested</th><th>p(given)</th><th>p(suggested)</th></tr>")
            for x in li.issues[:max_issues]:
                h.append(f"<tr><td>{_img(x.path)}</td><td class=l><code>{e(x.path)}</code><br>{x.split}</td><td class=l>{e(x.given)}</td>"
                         f"<td class=l>{e(x.suggested)}</td><td>{x.self_confidence:.2f}</td><td>{x.suggested_probability:.2f}</td></tr>")
            h.append("</table>")
            if len(li.issues) > max_issues:
                h.append(f"<p class=muted>{len(li.issues) - max_issues} more in data_check.json.</p>")
    cov = r.coverage
    if cov is not None:
        h.append("<h2>Coverage of production</h2>")
        conf = f" The confidence of {e(cov.model)} is compared with its {cov.confidence_reference} validation images." if cov.model else ""
        h.append(f"<p>Store <code>{e(cov.db)}</code>, runs {e(', '.join(cov.runs))}. Reference: {cov.n_reference} training images at "
                 f"{cov.img_size[0]}x{cov.img_size[1]}.{conf} A window lies <b>outside</b> the training data's coverage when more than "
                 f"{_pct(cov.tail + cov.min_effect)} of its frames are beyond a {_pct(cov.tail)} tail of the training images (significant at "
                 f"{cov.alpha:g}, Bonferroni).</p>")
        h.append("<table><tr><th class=l>feature</th><th>training " + _pct(cov.tail) + "</th><th>training " + _pct(1 - cov.tail) + "</th></tr>"
                 + "".join(f"<tr><td class=l>{k}</td><td>{v[0]:.1f}</td><td>{v[1]:.1f}</td></tr>" for k, v in cov.reference_quantiles.items())
                 + "</table>")
        feats = [(f, d_) for f in (*STAT_NAMES, "confidence") for d_ in DIRECTIONS.get(f, ())]
        for cc in cov.cameras:
            h.append(f"<h3>{e(cc.camera)}</h3>")
            h.append("<table><tr><th class=l>window</th><th>frames</th>" + "".join(f"<th>{f} {d_}</th>" for f, d_ in feats)
                     + "<th class=l>verdict</th></tr>")
            for w in [cc.overall, *cc.windows]:
                shares = {(t.feature, t.direction): t.share for t in w.tails}
                cells = "".join(f"<td>{_pct(shares.get(k))}</td>" for k in feats)
                verdict = ("<b>outside</b>: " + e("; ".join(w.findings))) if w.outside else "inside"
                h.append(f"<tr class={'out' if w.outside else 'in'}><td class=l>{e(_window_name(w))}</td><td>{w.n_frames}</td>{cells}"
                         f"<td class=l>{verdict}</td></tr>")
            h.append("</table>")
        h.extend(f"<p class=muted>{e(x)}</p>" for x in cov.notes)
    if r.timings_s:
        h.append("<p class=muted>Time: " + ", ".join(f"{k} {v:.1f} s" for k, v in r.timings_s.items()) + "</p>")
    h.append("</body></html>")
    return "\n".join(h)
