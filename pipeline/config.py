"""Typed configuration, validated once, recorded with every run.

``configs/*.yaml`` files and CLI options both end up in :class:`RunConfig`; the resolved config
(``RunConfig.model_dump()``) is stored with each run in the prediction store and in MLflow.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.types import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(_Strict):
    """One camera. ``uri``: a video file, an image folder, rtsp://, http(s):// (MJPEG) or a USB index ("0")."""

    uri: str
    id: str | None = None  # camera id; derived from the uri when omitted
    max_fps: float | None = Field(default=None, gt=0)
    loop: bool = False  # folders and files: start again at the end
    on_full: Literal["auto", "drop_oldest", "block"] = "auto"  # auto: live streams drop, files block
    queue_size: int = Field(default=64, ge=1)
    # FFMPEG decoder threads for files and rtsp/http streams. 1 (default): one core per camera. FFMPEG's
    # own default (0 here: about one thread per core) decodes a single camera faster in wall time but
    # spends more CPU per frame on frame threading, CPU the models need on an edge box. Raise it for one
    # high-resolution camera on an otherwise idle machine.
    decode_threads: int = Field(default=1, ge=0)


class CameraHealthConfig(_Strict):
    reconnect_initial_s: float = Field(default=0.5, gt=0)
    reconnect_max_s: float = Field(default=2.0, gt=0)  # a camera back after an outage costs at most this much more
    reconnect_jitter: float = Field(default=0.25, ge=0, le=1)  # +- fraction of the delay
    frozen_after_s: float = Field(default=5.0, gt=0)  # identical frames this long -> frozen
    blank_std_threshold: float = Field(default=3.0, ge=0)  # grey-level std below this -> blank frame
    # consecutive frames whose mean |grey difference| (every 4th pixel) is <= this count as identical
    # (0 = bit-identical; raise it for codecs that re-encode a frozen picture with small changes)
    frozen_max_diff: float = Field(default=0.0, ge=0)
    # FFMPEG's stream analysis on opening rtsp/http cameras (its default of up to 5 s makes every
    # reconnect take ~2 s). Applied process-wide via OPENCV_FFMPEG_CAPTURE_OPTIONS unless that is
    # already set by the user; None leaves FFMPEG's default.
    ffmpeg_analyze_s: float | None = Field(default=0.5, gt=0)
    open_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=5.0, gt=0)


class BatchingConfig(_Strict):
    batch_size: int = Field(default=32, ge=1)
    max_wait_ms: float = Field(default=20.0, ge=0)


class ModelConfig(_Strict):
    """An ONNX path or ``models:/NAME@ALIAS`` (MLflow registry)."""

    uri: str
    providers: list[str] | None = None  # None: TensorRT -> CUDA -> CPU from what is installed
    timeout_s: float = Field(default=2.0, gt=0)
    intra_op_threads: int = Field(default=0, ge=0)  # 0: auto (CPU: half the cores, runtime.default_cpu_threads; GPU: ORT default)


class ShadowConfig(_Strict):
    rate: float = Field(default=1.0, ge=0, le=1)  # share of batches sent to the shadow
    timeout_s: float = Field(default=5.0, gt=0)  # a shadow batch slower than this is abandoned
    max_pending_batches: int = Field(default=2, ge=1)  # more waiting than this: shed (skip) shadow work


class SamplingConfig(_Strict):
    enabled: bool = True
    strategy: Literal["uniform", "stratified", "disagreement", "uncertainty"] = "uniform"
    rate: float = Field(default=0.05, gt=0, le=1)  # target share of frames sent for labels
    uniform_floor: float = Field(default=0.2, ge=0, le=1)  # share of the rate spent uniformly (mixing)
    budget_per_camera_per_hour: int | None = Field(default=None, ge=1)
    double_label_share: float = Field(default=0.1, ge=0, le=1)
    image_dir: str = "samples"  # JPEGs of sampled frames (relative to the work dir)
    seed: int = 0
    disagreement_boost: float = Field(default=10.0, ge=1)  # disagreement strategy: odds of incumbent != shadow frames vs others
    jpeg_quality: int = Field(default=90, ge=1, le=100)


class StoreConfig(_Strict):
    url: str = "shadowcam.db"  # SQLite path or SQLAlchemy URL (postgresql://...)
    flush_every: int = Field(default=256, ge=1)  # rows per transaction at most
    flush_interval_s: float = Field(default=0.5, gt=0)


class MetricsConfig(_Strict):
    port: int | None = Field(default=None, ge=0, le=65535)  # None: no HTTP endpoint (/metrics, /healthz)
    host: str = "127.0.0.1"


class AlertConfig(_Strict):
    max_gap: float = 0.10  # alert when the train-to-production gap's CI lower bound exceeds this
    drift_p: float = 0.01  # alert when a drift test's corrected p-value is below this
    webhook: str | None = None


class RunConfig(_Strict):
    sources: list[SourceConfig] = Field(default_factory=list)
    incumbent: ModelConfig | None = None
    shadow: ModelConfig | None = None
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    shadow_mode: ShadowConfig = Field(default_factory=ShadowConfig)
    camera_health: CameraHealthConfig = Field(default_factory=CameraHealthConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    alerts: AlertConfig = Field(default_factory=AlertConfig)
    max_frames: int | None = Field(default=None, ge=1)  # stop after this many frames in all
    workdir: str = "."

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_as_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"uri": s} if isinstance(s, str) else s for s in v]
        return v


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML file (optional) and apply overrides (CLI options). Errors name the file and field."""
    import yaml

    data: dict[str, Any] = {}
    where = "command-line options"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        _set_dotted(data, key, value)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"{where}: field {field!r}: {first['msg']} (got {first.get('input')!r})") from None


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value
