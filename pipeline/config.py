"""Typed configuration, validated once, recorded with every run.

``configs/*.yaml`` files and CLI options both end up in :class:`RunConfig`; the resolved config
(``RunConfig.model_dump()``) is stored with each run in the prediction store and in MLflow.
Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import math
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.types import ConfigError


# True while validate_config() validates a whole document: nested configs then let pydantic's ValidationError through,
# so the one message names the full dotted field ("sources.0.max_fps") and its line, not just the inner class.
_WHOLE_DOCUMENT: ContextVar[bool] = ContextVar("shadowcam_config_whole_document", default=False)
M = TypeVar("M", bound=BaseModel)


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters (a message never quotes a whole section)."""
    text = " ".join(repr(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def config_error(e: ValidationError, where: str, text: str | None = None) -> ConfigError:
    """A pydantic error as the project's one-line :class:`ConfigError` naming where and which field.

    ``text``: the YAML the data came from; the message then names the line of the field as ``where:LINE:``
    (the deepest part of the field's path that the file spells out)."""
    first = e.errors()[0]
    loc = tuple(first["loc"])
    field = ".".join(str(x) for x in loc) or "(top level)"
    line = yaml_line(text, loc) if text is not None else None
    msg = " ".join(str(first["msg"]).split())
    return ConfigError(f"{where}{f':{line}' if line else ''}: field {field!r}: {msg} (got {_short(first.get('input'))})")


def yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at path ``loc`` (mapping keys, sequence indexes) in ``text``, or of the deepest
    node on that path the text has; None when the text cannot be composed or the path is not in it at all."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError):
        return None
    line = None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == str(part)), None)
            if hit is None:
                break
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


class _Strict(BaseModel):
    """Base of every config: unknown keys are errors, assignments are validated, and a bad value raises the
    project's one-line :class:`ConfigError` (not pydantic's multi-line ``ValidationError``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            if _WHOLE_DOCUMENT.get():  # inside validate_config: the outer call names the file and the full field path
                raise
            raise config_error(e, type(self).__name__) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise config_error(e, type(self).__name__) from None

    @classmethod
    def default(cls, name: str) -> Any:
        """The declared default of field ``name`` (the CLI reads its option defaults from here)."""
        f = cls.model_fields[name]
        return f.get_default(call_default_factory=True)


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
    # What happens when the shadow's queue is full (pipeline/shadow.py, "backpressure"): "auto" waits for the shadow
    # when every source is a replay (files/folders read at full speed) and sheds otherwise (live cameras, or files
    # paced with max_fps: the incumbent is never delayed); "always" waits, "never" sheds.
    backpressure: Literal["auto", "always", "never"] = "auto"
    # with backpressure: the longest the serve loop waits for room in the shadow's queue, and the longest one shadow
    # call may run (instead of timeout_s) before it is abandoned; two abandoned calls mark the shadow stuck (shed)
    backpressure_max_wait_s: float = Field(default=60.0, gt=0)


class LabelTarget(_Strict):
    """How much certainty the labels should buy, per camera or per model (``SamplingConfig.target``).

    ``kind="half_width"``: label until the production-accuracy interval (``level``) is at most +-``half_width``
    (e.g. +-2 points at 95%). ``kind="decision"``: label until the champion/challenger decision is made (the
    anytime-valid decision of the evaluator). While the target is met the sampler's rate is multiplied by
    ``met_factor``; while drift against the training reference is detected it is multiplied by ``drift_factor``
    (capped so no probability exceeds 1). ``check_every_s``: how often the run re-reads the store to check.
    """

    kind: Literal["half_width", "decision"] = "half_width"
    half_width: float = Field(default=0.02, gt=0, lt=0.5)
    level: float = Field(default=0.95, gt=0, lt=1)
    scope: Literal["camera", "model"] = "camera"
    met_factor: float = Field(default=0.1, gt=0, le=1)  # > 0: every frame keeps a chance (unbiased estimates)
    drift_factor: float = Field(default=2.0, ge=1)
    check_every_s: float = Field(default=60.0, gt=0)


class LabelAuthConfig(_Strict):
    """The labeling page's sessions, login rate limits, cookies and request limits (docs/security.md).

    Sessions live in the store: one ends ``session_idle_s`` after its last request, and ``session_max_s`` after
    its login whatever happens (then the annotator logs in again). ``last_seen`` is written at most every
    ``touch_every_s`` (a write per request would load the store), so idle expiry is exact to that much.
    Failed logins are counted in the store over the last ``login_window_s``: ``max_failures_per_client`` from one
    client address, or ``max_failures_per_annotator`` against one annotator's token, lock further logins out
    (429) until older failures leave the window. ``secure_cookie``: ``auto`` sets ``Secure`` when the request came
    over TLS. Request bodies larger than ``max_body_bytes`` are refused with 413.
    """

    session_idle_s: float = Field(default=3600.0, gt=0, allow_inf_nan=False)
    session_max_s: float = Field(default=12 * 3600.0, gt=0, allow_inf_nan=False)
    touch_every_s: float = Field(default=60.0, ge=0, allow_inf_nan=False)
    login_window_s: float = Field(default=900.0, gt=0, allow_inf_nan=False)
    max_failures_per_client: int = Field(default=20, ge=1)
    max_failures_per_annotator: int = Field(default=5, ge=1)
    secure_cookie: Literal["auto", "always", "never"] = "auto"
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)

    @model_validator(mode="after")
    def _idle_within_max(self) -> "LabelAuthConfig":
        if self.session_idle_s > self.session_max_s:
            raise ValueError(f"session_idle_s ({self.session_idle_s:g}) must not exceed session_max_s ({self.session_max_s:g})")
        return self


class TrainingSampleConfig(_Strict):
    """Extra frames drawn for *retraining* (active learning), on top of the evaluation sample.

    The evaluation sample (``SamplingConfig.strategy``/``rate``) stays as it is, so accuracy estimates keep their
    design; of the frames it did not draw, each is drawn for training with probability ``rate * u / mean(u)``
    (``uncertainty``: ``u = 1 - margin``) or boosted where the incumbent and the shadow disagree
    (``disagreement``). These samples are recorded with strategy ``training:<strategy>``: people label them like
    any other and retraining uses them, but the evaluator leaves them out (``PredictionStore.evaluation_rows``),
    since a frame picked for being hard would bias an accuracy estimate that does not know its probability."""

    strategy: Literal["uncertainty", "disagreement"] = "uncertainty"
    rate: float = Field(default=0.05, gt=0, le=1)  # mean share of the frames the evaluation sample left


class SamplingConfig(_Strict):
    enabled: bool = True
    strategy: Literal["uniform", "stratified", "disagreement", "uncertainty", "neyman"] = "uniform"
    rate: float = Field(default=0.05, gt=0, le=1)  # target share of frames sent for labels
    uniform_floor: float = Field(default=0.2, ge=0, le=1)  # share of the rate spent uniformly (mixing)
    budget_per_camera_per_hour: int | None = Field(default=None, ge=1)
    double_label_share: float = Field(default=0.1, ge=0, le=1)
    image_dir: str = "samples"  # JPEGs of sampled frames (relative to the work dir)
    seed: int = 0
    disagreement_boost: float = Field(default=10.0, ge=1)  # disagreement strategy: odds of incumbent != shadow frames vs others
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    # neyman: strata of predicted correctness = the incumbent's calibrated confidence cut at these edges (x agreement
    # with the shadow when there is one); labels go to strata in proportion to their share x sd of correctness,
    # the sd estimated from the stratum's labels once it has `neyman_min_labels`, before that from its confidence
    neyman_edges: tuple[float, ...] = (0.6, 0.8, 0.9, 0.97, 0.995)
    neyman_min_labels: int = Field(default=20, ge=2)
    target: LabelTarget | None = None  # label target (None: sample at `rate` throughout)
    training: TrainingSampleConfig | None = None  # extra frames for retraining, left out of estimates

    @field_validator("neyman_edges")
    @classmethod
    def _edges_increasing(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v or any(not 0 < e < 1 for e in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"neyman_edges must be increasing confidences in (0, 1), got {list(v)}")
        return v


class RetentionConfig(_Strict):
    """What ``shadowcam store retain`` keeps (:mod:`pipeline.retention`). Frames younger than ``full_days`` keep
    everything; older ones keep their full rows (frame, predictions with probabilities) only when sampled or
    labelled, or drawn into the reservoir (``reservoir_per_camera_day`` frames per run, camera and UTC day, chosen by
    a hash seeded with ``seed``: the same frames on every run); the rest become per-``window`` aggregates (counts,
    incumbent-vs-shadow agreement, confidence, probability and image-statistic histograms) and are deleted."""

    full_days: float = Field(default=30.0, gt=0, allow_inf_nan=False)  # keep every row this many days (by frame time)
    reservoir_per_camera_day: int = Field(default=200, ge=0)  # frames kept in full per run, camera and day
    window: float = 3600.0  # aggregate window: seconds or a duration (10m, 1h); divides a day
    confidence_bins: int = Field(default=20, ge=2, le=1000)  # histogram bins over [0, 1] (confidence, each class's probability)
    seed: int = 0  # the reservoir's hash seed

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: Any) -> float:
        w = parse_duration(v, "store.retention.window")
        if w < 60 or 86400 % w:
            raise ValueError(f"must divide a day into whole windows of at least 60 s (60s, 10m, 1h, 6h, 1d), got {v!r}")
        return w


class StoreConfig(_Strict):
    url: str = "shadowcam.db"  # SQLite path or SQLAlchemy URL (postgresql://...)
    flush_every: int = Field(default=256, ge=1)  # rows per transaction at most
    flush_interval_s: float = Field(default=0.5, gt=0)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)  # applied by `shadowcam store retain`


class MetricsConfig(_Strict):
    port: int | None = Field(default=None, ge=0, le=65535)  # None: no HTTP endpoint (/metrics, /healthz)
    host: str = "127.0.0.1"


class AlertConfig(_Strict):
    max_gap: float = 0.10  # alert when the train-to-production gap's CI lower bound exceeds this
    drift_p: float = 0.01  # alert when a drift test's corrected p-value is below this
    webhook: str | None = None
    # alert when a model is not significantly better than the best baseline (majority class, rule) on the same labels
    baseline: bool = True


class ServingCostConfig(_Strict):
    """What a device-hour costs, to turn the run's measured busy time into money per million predictions
    (:mod:`pipeline.serving_cost`; shown in the run summary as ``extra.serving_cost``)."""

    price_per_device_hour: float = Field(gt=0, allow_inf_nan=False)  # what the machine serving the models costs an hour
    currency: str = Field(default="USD", min_length=1, max_length=8)  # ISO code shown next to the amounts
    device: str | None = None  # free text, e.g. "H100 80GB", "2-vCPU cloud VM"


class ClusterConfig(_Strict):
    """``cluster:`` - spread the run's cameras over a Ray cluster (:mod:`pipeline.fleet`, ``shadowcam run --cluster``).

    Each actor runs a :class:`pipeline.runner.Runner` over ``cameras_per_actor`` cameras (in config order) with its
    own incumbent and shadow sessions; all of them write to the one ``store.url`` (PostgreSQL). Ray restarts an actor
    that dies (``max_restarts``) and re-runs its work (``max_task_retries``): replayed files and folders continue
    after the frames already committed, live cameras reconnect.
    """

    # None: RAY_ADDRESS, else the cluster `ray start` began on this machine, else a new local one; "ray://HOST:10001"
    # (Ray Client, from outside the cluster) or "HOST:6379" (the head's GCS address, from a cluster node)
    address: str | None = None
    cameras_per_actor: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)  # CPUs each actor asks for (and, unless set, its models' intra-op threads)
    num_gpus: float | None = Field(default=None, ge=0)  # per actor; None: a share of the cluster's GPUs when it has some, else 0
    max_restarts: int = Field(default=3, ge=-1)  # restarts per actor (-1: without limit)
    max_task_retries: int = Field(default=-1, ge=-1)  # re-runs of an actor's work after a restart (-1: as many as restarts)
    placement: Literal["spread", "pack"] = "spread"  # spread: actors round-robin over the nodes (soft); pack: Ray decides
    report_every_s: float = Field(default=5.0, gt=0)  # how often the driver gathers and logs the actors' metrics
    env: dict[str, str] = Field(default_factory=dict)  # extra environment variables of the actors (runtime_env)

    @field_validator("address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is None or v == "auto" or v.startswith("ray://") or re.fullmatch(r"[\w.\-\[\]:]+:\d+", v):
            return v
        raise ValueError(f"expected null, 'auto', 'ray://HOST:PORT' (Ray Client) or 'HOST:PORT' (the head's address), got {v!r}")


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
    serving_cost: ServingCostConfig | None = None  # None: no cost figures in the summary
    cluster: ClusterConfig | None = None  # None: one process; set: the cameras spread over Ray actors (pipeline.fleet)
    max_frames: int | None = Field(default=None, ge=1)  # stop after this many frames in all
    workdir: str = "."

    @field_validator("sources", mode="before")
    @classmethod
    def _sources_as_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"uri": s} if isinstance(s, str) else s for s in v]
        return v


# --- training ----------------------------------------------------------------------------------------------------
# Torch-free, so the CLI reads its defaults (and `--help` works) on a runtime-only install.
AUGMENT_PRESETS = ("auto", "conveyor", "generic", "none", "light")  # light: the old name of conveyor
ARCHS = ("resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0")  # torchvision backbones
Arch = Literal["resnet18", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0"]
TRAINING_EXPERIMENT = "shadowcam-training"


class TrainConfig(_Strict):
    """Everything a training run depends on; recorded with the run (``config.yaml`` and MLflow params)."""

    data: list[str]  # ImageFolder dirs and/or CSV manifests, concatenated (the first one's classes rule)
    arch: Arch = "mobilenet_v3_small"
    img_size: int = Field(default=64, ge=16, le=1024)
    epochs: int = Field(default=24, ge=1)
    batch_size: int = Field(default=64, ge=2)
    lr: float = Field(default=6e-3, gt=0)  # peak LR of the one-cycle schedule
    weight_decay: float = Field(default=0.02, ge=0)
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    # augmentation policy: a preset (conveyor: flips + rotations, for top-down conveyor cameras; generic: no flips,
    # rotations <= 8 deg; none), "auto" (conveyor for a `shadowcam synth` set, generic otherwise) or an albumentations
    # policy file (A.save JSON/YAML); see models/augment.py
    augment: str = "auto"
    class_balance: Literal["none", "loss", "sampler"] = "none"  # loss: class-weighted loss; sampler: balanced batches
    workers: int | None = Field(default=None, ge=0)  # worker processes; None: models.loader.default_workers
    # decode the whole dataset into memory at model size first (memory), stream every epoch from disk (none), or
    # cache when it fits cache_max_gb (auto)
    cache: Literal["auto", "memory", "none"] = "auto"
    cache_max_gb: float = Field(default=1.0, ge=0)
    patience: int | None = Field(default=None, ge=1)  # early stopping: epochs without a better validation accuracy
    resume: str | None = None  # a last.pt checkpoint (or the folder holding it) of an interrupted run to continue
    # with no --weights: start from torchvision's ImageNet weights when they are in the local torch cache (never
    # downloaded); otherwise from scratch
    pretrained: bool = True
    # `shadowcam data check` (counts, unreadable files, exact and near-duplicates across the splits) on the training
    # data, logged with the run (data_check.json/.html); the leak it finds is also a param (cross_split_duplicates)
    data_check: bool = True
    seed: int = 0
    class_names: list[str] | None = None  # fix the label space (e.g. the incumbent's); default: first source's
    val_fraction: float = Field(default=0.15, ge=0, lt=1)
    test_fraction: float = Field(default=0.15, ge=0, lt=1)
    max_bad_fraction: float = Field(default=0.05, ge=0, le=1)  # unreadable images tolerated before DataError
    weights: str | None = None  # local state dict (torchvision or shadowcam checkpoint); nothing is downloaded
    out: str | None = None  # output folder; default <workdir>/training/<UTC time>-<arch>
    workdir: str = "."
    experiment: str = TRAINING_EXPERIMENT
    track: bool = True  # log to MLflow
    register_name: str | None = None  # registered model name (CLI: --register)
    alias: str | None = None  # alias set on the registered version (champion / challenger)
    fp16: bool = False  # also export a float16 variant
    opset: int = Field(default=17, ge=17)
    export_tolerance: float | None = None  # default: models.export.TOLERANCE
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, ge=1)  # torch intra-op threads; None: torch's default
    progress: bool = True

    @field_validator("data", mode="before")
    @classmethod
    def _data_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, (str, Path)) else [str(x) for x in v]

    @field_validator("data")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one data source is needed")
        return v

    @field_validator("augment")
    @classmethod
    def _policy(cls, v: str) -> str:
        if v in AUGMENT_PRESETS or Path(v).is_file():
            return v
        raise ValueError(f"expected one of {', '.join(AUGMENT_PRESETS)} or an albumentations policy file (A.save "
                         f"JSON/YAML), got {v!r} (no such file)")


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """The YAML document in ``path`` ({} when empty); a missing or unreadable file, text that is not UTF-8 and bad
    YAML are each a one-line :class:`ConfigError` naming the file (and the line, for bad YAML; ``what``: how the file is
    called in that message)."""
    return _parse_yaml(Path(path), _read_text(Path(path), what))


def _read_text(path: Path, what: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); expected a YAML {what}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the {what} ({e.strerror or e.__class__.__name__})") from None


def _parse_yaml(path: Path, text: str) -> Any:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{where}: not valid YAML ({what})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    return {} if doc is None else doc


def validate_config(model: type[M], data: Any, where: str, text: str | None = None) -> M:
    """``model.model_validate(data)`` with every problem as one one-line :class:`ConfigError`: ``where`` (a file),
    the line of the field when ``text`` (the YAML) is given, the full dotted field, what was wrong and the value."""
    token = _WHOLE_DOCUMENT.set(True)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise config_error(e, where, text) from None
    except ConfigError as e:  # a validator raised its own one-line error (e.g. a costs file it loads): say where
        raise ConfigError(f"{where}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:  # a validator met a value of a type it did not expect
        raise ConfigError(f"{where}: invalid value ({e.__class__.__name__}: {_short(str(e), 160)})") from None
    finally:
        _WHOLE_DOCUMENT.reset(token)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a YAML file (optional) and apply overrides (CLI options, dotted keys such as ``store.url``).

    Every problem is a one-line :class:`ConfigError` naming the file, the line and the field
    (``configs/run.yaml:12: field 'batching.max_batch': ...``): bad YAML, a document that is not a mapping,
    unknown keys, wrong types and out-of-range values. Nothing else escapes."""
    data: dict[str, Any] = {}
    where = "command-line options"
    text: str | None = None
    if path is not None:
        path = Path(path)
        where = str(path)
        text = _read_text(path, "config file")
        data = _parse_yaml(path, text)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}:1: expected a mapping of settings at the top level, got a YAML {type(data).__name__}")
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        _set_dotted(data, key, value, where)
    return validate_config(RunConfig, data, where, text)


def _set_dotted(d: dict[str, Any], key: str, value: Any, where: str = "command-line options") -> None:
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            section = ".".join(parts[: i + 1])
            raise ConfigError(f"{where}: field {section!r}: expected a mapping of settings (to set {key!r} in it), "
                              f"got {_short(nxt)}")
        d = nxt
    d[parts[-1]] = value


# --- evaluation --------------------------------------------------------------------------------------------------

EVALUATION_EXPERIMENT = "shadowcam-deployment"  # MLflow experiment of evaluation runs (pipeline.tracking.log_evaluation)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|sec|m|min|h|d)?\s*$", re.IGNORECASE)
_UNIT_S = {None: 1.0, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float | int, what: str = "duration") -> float:
    """``"300s"``, ``"10m"``, ``"1.5h"``, ``"2d"`` or a bare number of seconds -> seconds (> 0)."""
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ConfigError(f"{what}: expected a duration like 300s, 10m, 1h or 2d, got {text!r}")
        value = float(m.group(1)) * _UNIT_S[m.group(2).lower() if m.group(2) else None]
    if not (value > 0 and math.isfinite(value)):
        raise ConfigError(f"{what}: must be a positive duration, got {text!r}")
    return value


class ReferenceDuration(_Strict):
    """Drift reference: the first ``duration_s`` seconds from the scope's first frame."""

    duration_s: float = Field(gt=0, allow_inf_nan=False)


class ReferenceRange(_Strict):
    """Drift reference: frames with ``start <= ts < end`` (Unix seconds)."""

    start: float = Field(allow_inf_nan=False)
    end: float = Field(allow_inf_nan=False)

    @field_validator("end")
    @classmethod
    def _after_start(cls, v: float, info: Any) -> float:
        start = info.data.get("start")
        if start is not None and not start < v:
            raise ValueError(f"reference range must have start < end, got {start} .. {v}")
        return v


# A fraction in (0, 1) of the scope's frames (by time), a duration from the first frame, or explicit timestamps.
Reference = float | ReferenceDuration | ReferenceRange


def parse_reference(text: str | float) -> float | ReferenceDuration:
    """``--reference``: a fraction in (0, 1) (``"0.2"``) or a duration (``"10m"``) -> 0.2 or ``ReferenceDuration(duration_s=600)``."""
    s = str(text).strip()
    try:
        f = float(s)
    except ValueError:
        return ReferenceDuration(duration_s=parse_duration(s, "--reference"))
    if 0 < f < 1:
        return f
    raise ConfigError(f"--reference: a bare number must be a fraction in (0, 1) (or give a duration like 10m), got {text!r}")


class CostConfig(_Strict):
    """What a model's decisions cost (``costs:``; :mod:`pipeline.evaluation.costs`), in ``currency`` per frame.

    ``matrix[true][predicted]``: the cost of predicting ``predicted`` on a frame whose truth is ``true`` (an error,
    so ``true != predicted``; >= 0). Pairs not listed cost ``default_error_cost``, and so does a prediction that names
    no class. ``value_correct[class]``: what a correct decision on a frame of that class is worth (>= 0); it counts as
    a negative cost, so expected cost per 1,000 frames can be negative (the model earns). Classes not listed there
    are worth 0. Class names are checked against the model's classes when an evaluation starts (an unknown class is
    an error naming it and the valid ones). ``configs/costs.example.yaml`` is a commented example.
    """

    currency: str = Field(default="EUR", min_length=1, max_length=16)  # unit of every cost (shown next to the figures)
    matrix: dict[str, dict[str, float]] = Field(default_factory=dict)  # true class -> predicted class -> cost of the error
    default_error_cost: float = Field(default=1.0, ge=0, allow_inf_nan=False)  # cost of an error not listed in `matrix`
    value_correct: dict[str, float] = Field(default_factory=dict)  # class -> value of a correct decision (a negative cost)

    @field_validator("matrix")
    @classmethod
    def _errors_only(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for t, row in v.items():
            for p, c in row.items():
                if t == p:
                    raise ValueError(f"matrix[{t!r}][{p!r}]: a correct decision is not an error; give what it is worth in value_correct")
                if not (math.isfinite(c) and c >= 0):
                    raise ValueError(f"matrix[{t!r}][{p!r}] must be a finite cost >= 0, got {c!r}")
        return v

    @field_validator("value_correct")
    @classmethod
    def _values_non_negative(cls, v: dict[str, float]) -> dict[str, float]:
        for k, c in v.items():
            if not (math.isfinite(c) and c >= 0):
                raise ValueError(f"value_correct[{k!r}] must be a finite value >= 0 (it is subtracted as a negative cost), got {c!r}")
        return v


def load_costs(path: str | Path) -> CostConfig:
    """A :class:`CostConfig` from a YAML file: either the mapping itself or a file with a top-level ``costs:`` key
    (so a run config's ``costs`` section can be pointed at too). Errors name the file and the field."""
    path = Path(path)
    data = read_yaml(path, "costs file")
    if isinstance(data, dict) and set(data) == {"costs"}:
        data = data["costs"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of cost settings (currency, matrix, default_error_cost, value_correct), "
                          f"got {type(data).__name__}")
    try:
        return CostConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(e, f"{path} (costs)") from None
    except ConfigError as e:  # raised by _Strict with the class name: say which file
        raise ConfigError(f"{path} (costs): {e}") from None


class BaselineConfig(_Strict):
    """The baselines every evaluation also scores on the same labelled frames (:mod:`pipeline.evaluation.baselines`).

    ``rule``: a Python entry point ``"package.module:function"`` called as ``function(image_bgr, camera_id)`` on each
    labelled frame's sampled JPEG, returning a class name; None: the built-in frame-difference rule (a frame that
    differs from its camera's background more than an Otsu threshold shows "something", else ``empty_class``).
    """

    enabled: bool = True
    rule: str | None = None
    empty_class: str = "empty_belt"  # the class the frame-difference rule predicts for a frame like the background
    image_size: int = Field(default=32, ge=4, le=512)  # frames are compared at this size (pixels, square)
    max_background_frames: int = Field(default=200, ge=3)  # sampled JPEGs per camera behind its median background

    @field_validator("rule")
    @classmethod
    def _entry_point(cls, v: str | None) -> str | None:
        if v is None:
            return v
        module, sep, func = v.partition(":")
        if not sep or not module.strip() or not func.strip() or not all(part.isidentifier() for part in module.split(".") + func.split(".")):
            raise ValueError(f"a rule is a Python entry point 'package.module:function', got {v!r}")
        return v


class EvalConfig(_Strict):
    """What an evaluation computes and how (``pipeline.evaluation.evaluator.Evaluator``); recorded in every
    result's ``meta.config`` (``model_dump(mode="json")``). The CLI reads its option defaults from here."""

    alpha: float = Field(default=0.05, gt=0, lt=1)  # 1 - confidence level of every interval and the level of every test
    # Drift reference: a fraction in (0, 1) of the scope's frames (by time), {"duration_s": s} from the first frame,
    # or {"start": ts, "end": ts}. Also accepted: "0.2" / "10m" (parse_reference) and the older tagged tuples
    # ("duration", s) / ("range", start, end).
    reference: Reference = 0.2
    min_effect: float = 0.0  # recorded for older scripts (stats.recommend); decisions use `delta`
    power: float = Field(default=0.8, gt=0, lt=1)  # power used to size "need more labels"
    cumulative: bool = False  # evaluate_windows: cumulative results instead of per-window slices
    incumbent_card: str | None = None  # ONNX file whose card holds the incumbent's offline figures
    shadow_card: str | None = None
    cache_dir: str | None = None  # where models:/ URIs are downloaded to (default <workdir>/.cache/models, as the runner)
    workdir: str | None = None  # MLflow store for models:/ URIs (pipeline.tracking.configure), default cache location
    run_ids: list[str] | None = None  # None: runs with the newest run's model pair
    calibration_bins: int = Field(default=10, ge=2)
    # What drift is measured against: "training" (the model cards' training reference profile: train-to-production
    # drift; the run start when a card has none) or "run_start" (the `reference` period of the evaluated frames).
    drift_baseline: Literal["training", "run_start"] = "training"
    # A drift against training is acted on (alerts, `drifted`) only when its share of frames beyond the training
    # range is this far above the 1% expected (or the predicted-class mix this far away in total variation).
    drift_min_effect: float = Field(default=0.10, gt=0, lt=1)
    # Champion/challenger decisions (anytime-valid): a difference within +-delta is not worth the labels. With
    # decide_on="accuracy" a difference in accuracy (< 1); with decide_on="cost" in cost units per 1,000 frames.
    delta: float = Field(default=0.01, ge=0, allow_inf_nan=False)
    # Fixed scale of the inverse-probability-weighted confidence sequences: the smallest inclusion probability the
    # sampler uses (uniform_floor * rate). None: read from the evaluated runs' sampling config.
    pi_floor: float | None = Field(default=None, gt=0, le=1)
    # Accuracy, gap and paired difference: "model_assisted" (active PPI++ with a cross-fitted proxy of "this
    # prediction is correct", pipeline.evaluation.ppi) when the window has at least `proxy_min_labels` labelled
    # frames, else (or with "classical") the inverse-probability-weighted / Wilson estimate of pipeline.evaluation.stats
    estimator: Literal["model_assisted", "classical"] = "model_assisted"
    proxy_folds: int = Field(default=5, ge=2)
    proxy_min_labels: int = Field(default=100, ge=10)
    # Cost of errors (pipeline.evaluation.costs): expected cost per 1,000 frames for every model and baseline. Also
    # accepted: the path of a YAML file (load_costs). None: no cost figures.
    costs: CostConfig | None = None
    # What the champion/challenger decision weighs: accuracy, or the paired per-frame cost difference (needs `costs`;
    # `delta` is then in cost units per 1,000 frames, and the baseline alert compares costs too).
    decide_on: Literal["accuracy", "cost"] = "accuracy"
    baselines: BaselineConfig = Field(default_factory=BaselineConfig)
    # Serving cost (pipeline.serving_cost.combine_runs over the evaluated runs' summaries): the price of a device-hour;
    # None: the price the runs recorded (no serving cost when they recorded none).
    price_per_device_hour: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("costs", mode="before")
    @classmethod
    def _costs_file(cls, v: Any) -> Any:
        if isinstance(v, (str, Path)):
            return load_costs(v)
        return v

    @model_validator(mode="after")
    def _decision_scale(self) -> "EvalConfig":
        if self.decide_on == "cost" and self.costs is None:
            raise ValueError("decide_on='cost' needs a cost matrix (costs: ..., or --costs FILE.yaml)")
        if self.decide_on == "accuracy" and not self.delta < 1:
            raise ValueError(f"delta is a difference in accuracy with decide_on='accuracy' and must be < 1, got {self.delta!r} "
                             "(with decide_on='cost' it is in cost units per 1,000 frames)")
        return self

    @field_validator("reference", mode="before")
    @classmethod
    def _reference_forms(cls, v: Any) -> Any:
        if isinstance(v, str):
            return parse_reference(v)
        if isinstance(v, (tuple, list)) and v and v[0] == "duration" and len(v) == 2:
            return ReferenceDuration(duration_s=parse_duration(v[1], "reference duration"))
        if isinstance(v, (tuple, list)) and v and v[0] == "range" and len(v) == 3:
            return ReferenceRange(start=v[1], end=v[2])
        if isinstance(v, dict):  # pick the form by its keys (a union would report every form's errors)
            return ReferenceDuration(**v) if "duration_s" in v else ReferenceRange(**v)
        if isinstance(v, (tuple, list)):
            raise ValueError(f"expected a fraction, {{'duration_s': s}} or {{'start': ts, 'end': ts}}, got {v!r}")
        return v

    @field_validator("reference")
    @classmethod
    def _fraction_in_range(cls, v: Any) -> Any:
        if isinstance(v, float) and not 0 < v < 1:
            raise ValueError(f"a reference fraction must be in (0, 1), got {v}")
        return v
