"""The validated data types that flow between shadowcam's stages.

Every stage takes and returns these; shape and value errors surface where they are made,
not three stages later. Nothing here imports torch, mlflow or albumentations.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np


class ShadowcamError(Exception):
    """Base class of every error shadowcam raises on purpose."""


class ConfigError(ShadowcamError):
    """A configuration file or option is invalid."""


class CameraUnavailableError(ShadowcamError):
    """A camera source cannot be opened (after the configured retries)."""


class ModelCardError(ShadowcamError):
    """An ONNX file lacks a valid shadowcam model card, or two cards are incompatible."""


class DataError(ShadowcamError):
    """Training data (folder, manifest, image) is missing or malformed."""


class LabelImportError(ShadowcamError):
    """A label file has rows that cannot be imported; nothing was imported."""


class StoreError(ShadowcamError):
    """The prediction store cannot be opened or migrated."""


class Role(str, enum.Enum):
    """Which side of the shadow pair produced a prediction."""

    INCUMBENT = "incumbent"  # served; MLflow alias `champion`
    SHADOW = "shadow"  # best effort; MLflow alias `challenger`


class Degraded(str, enum.Enum):
    """Why a served prediction is not a normal incumbent answer (None when it is)."""

    CPU_FALLBACK = "cpu_fallback"  # the incumbent failed on its provider and was retried on CPU
    STALE = "stale"  # the camera's last good prediction, re-served
    UNKNOWN = "unknown"  # nothing to serve: label "unknown", uniform probabilities


class HealthKind(str, enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    CORRUPT = "corrupt"  # an undecodable frame
    FROZEN = "frozen"  # identical frames for longer than the configured time
    BLANK = "blank"  # a black or uniform frame
    RECOVERED = "recovered"  # frozen/blank condition ended
    EOF = "eof"  # a file or folder source is exhausted


def make_frame_id(run_id: str, camera_id: str, seq: int) -> str:
    """Frame ids are unique across runs sharing a store: ``<run>:<camera>:<seq>``."""
    return f"{run_id}:{camera_id}:{seq}"


@dataclass(frozen=True)
class Frame:
    """One decoded camera frame, as OpenCV gives it (BGR, uint8, HxWx3)."""

    camera_id: str
    seq: int
    timestamp: float  # seconds since the epoch; the stream's own clock where available
    image: np.ndarray  # (H, W, 3) uint8, BGR
    source_ref: str = ""  # file path for folder sources, "video.mp4#123" for videos, URL#seq for streams
    frame_id: str = ""

    def __post_init__(self) -> None:
        if not self.camera_id:
            raise ValueError("Frame.camera_id must be a non-empty string")
        if self.seq < 0:
            raise ValueError(f"Frame.seq must be >= 0, got {self.seq} for camera {self.camera_id}")
        img = self.image
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            got = f"{type(img).__name__} {getattr(img, 'dtype', '?')} {getattr(img, 'shape', '?')}"
            raise ValueError(f"Frame.image must be uint8 (H, W, 3), got {got} for camera {self.camera_id}")
        if not self.frame_id:
            object.__setattr__(self, "frame_id", f"{self.camera_id}:{self.seq}")


@dataclass(frozen=True)
class HealthEvent:
    camera_id: str
    kind: HealthKind
    timestamp: float
    detail: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", HealthKind(self.kind))


@dataclass(frozen=True)
class FrameBatch:
    """Frames from any cameras, resized to the model's input size and stacked NHWC uint8.

    ``images`` keeps the colour order of the source (BGR from OpenCV); the classifier converts
    to the order its model card asks for.
    """

    frames: tuple[Frame, ...]
    images: np.ndarray  # (N, H, W, 3) uint8

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(f"FrameBatch.images must be uint8 (N, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if self.images.shape[0] != n:
            raise ValueError(f"FrameBatch has {n} frames but {self.images.shape[0]} images")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def frame_ids(self) -> list[str]:
        return [f.frame_id for f in self.frames]


@dataclass(frozen=True)
class Prediction:
    frame_id: str
    camera_id: str
    role: Role
    model: str  # "name:version"
    probs: np.ndarray  # (n_classes,) float32, sums to 1
    label: str
    latency_ms: float = 0.0
    degraded: Degraded | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", Role(self.role))
        if self.degraded is not None:
            object.__setattr__(self, "degraded", Degraded(self.degraded))
        p = np.asarray(self.probs, dtype=np.float32)
        if p.ndim != 1 or p.size == 0:
            raise ValueError(f"probs must be 1-D and non-empty, got shape {p.shape} for frame {self.frame_id}")
        if not np.all(np.isfinite(p)) or (p < -1e-6).any() or not math.isclose(float(p.sum()), 1.0, abs_tol=1e-3):
            raise ValueError(f"probs must be finite, >= 0 and sum to 1 (sum={float(p.sum()):.4f}) for frame {self.frame_id}")
        object.__setattr__(self, "probs", p)

    @property
    def confidence(self) -> float:
        return float(self.probs.max())

    @property
    def model_name(self) -> str:
        return self.model.rsplit(":", 1)[0]

    @property
    def model_version(self) -> str:
        parts = self.model.rsplit(":", 1)
        return parts[1] if len(parts) == 2 else ""


@dataclass(frozen=True)
class Label:
    """A human (or simulated) answer for one frame. ``label`` may be a class name or ``unsure``."""

    frame_id: str
    label: str
    annotator: str = "unknown"
    timestamp: float = 0.0
    source: str = "web"  # web | import | simulated

    def __post_init__(self) -> None:
        if not self.frame_id:
            raise ValueError("Label.frame_id must be non-empty")
        if not self.label:
            raise ValueError(f"Label.label must be non-empty for frame {self.frame_id}")


UNSURE = "unsure"
UNKNOWN_LABEL = "unknown"


@dataclass
class Result:
    """What accumulators return: data plus the meta saying what produced it (alibi-detect habit)."""

    data: dict
    meta: dict = field(default_factory=dict)
