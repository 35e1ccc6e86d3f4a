"""Configs of the applications (pydantic, like every shadowcam config; see :mod:`pipeline.config`).

Torch-free and runtime-free on purpose: the CLI builds its ``--help`` from these defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from pipeline.config import ARCHS, TrainConfig, _Strict


# --- shadowcam demo --------------------------------------------------------------------------------------------------
class DemoConfig(_Strict):
    """The demo's sizes and settings; :meth:`preset` gives the default or the ``--fast`` story."""

    workdir: Path = Path("work/demo")
    fast: bool = False
    seed: int = 0
    model_name: str = "conveyor-classifier"
    camera: str = "dock-cam-1"
    train_images: int = Field(default=3000, ge=60)
    shifted_test_frames: int = Field(default=3000, ge=1)  # offline test clip: the same camera under the stream-2 conditions
    stream1_frames: int = Field(default=3000, ge=1)
    stream2_frames: int = Field(default=1500, ge=1)  # per round of stream 2
    # stream 2 goes on in rounds of stream2_frames (the camera keeps running, people keep labelling) until the
    # anytime-valid decision is made, or this many rounds: looking after every round is what the decision allows
    stream2_max_rounds: int = Field(default=12, ge=1)
    frame_size: tuple[int, int] = (240, 320)  # (h, w) of the production camera
    dwell: tuple[int, int] = (3, 6)  # frames each item stays in view (a fast belt: many parcels per minute)
    fps: float = Field(default=10.0, gt=0)  # simulated camera frame rate (timestamps come from the video's own clock)
    window_s: float = Field(default=60.0, gt=0)  # evaluation window, in simulated seconds
    sample_rate: float = Field(default=0.2, ge=0, le=1)
    # the best combination of docs/label_efficiency.md (`shadowcam bench labels`): uniform sampling with the
    # evaluator's model-assisted estimate (EvalConfig.estimator, its default)
    sample_strategy: Literal["uniform", "stratified", "disagreement", "uncertainty", "neyman"] = "uniform"
    uniform_floor: float = Field(default=0.3, ge=0, le=1)
    # stream 1 also draws a training sample (SamplingConfig.training: uncertainty, this mean share of the frames the
    # evaluation sample left) for the retraining that follows; the evaluator leaves those labels out. 0: none
    training_sample_rate: float = Field(default=0.15, ge=0, le=1)
    annotator_error: float = Field(default=0.0, ge=0, le=1)
    epochs: int | None = Field(default=None, ge=1)  # None: the training default
    # model input size: 96 px keeps the details the shifted frames still show (a label or a tear on a blurred
    # poly mailer at night); --fast trains at the training default (64) to stay within its time
    img_size: int | None = Field(default=96, ge=16)
    retrain_epochs: int | None = Field(default=16, ge=1)  # fine-tuning the incumbent's weights needs fewer epochs
    retrain_lr: float = Field(default=2e-3, gt=0)
    # issue 12: what errors cost (a cost matrix file; relative paths are read from the repository root), what a
    # device-hour costs (an assumption: an on-demand 2-vCPU cloud VM; every run's summary and the evaluations turn it
    # into money per million predictions), and the error gallery with saliency overlays in the stream-1 report
    costs: str | None = "configs/costs.example.yaml"
    price_per_device_hour: float | None = Field(default=0.096, gt=0)
    device_name: str = "2-vCPU cloud VM (assumed price)"
    gallery: bool = True
    progress: bool = True
    clean: bool = True  # start from an empty work dir (the demo's own files only)

    # what --fast changes (everything else as above)
    FAST: ClassVar[dict[str, Any]] = {"train_images": 1500, "stream1_frames": 1200, "stream2_frames": 1500,
                            "shifted_test_frames": 1500, "img_size": None, "window_s": 30.0, "sample_rate": 0.3}

    @classmethod
    def preset(cls, fast: bool, **kw: Any) -> "DemoConfig":
        return cls(**{**(cls.FAST if fast else {}), "fast": fast, **kw})


# --- shadowcam bench -------------------------------------------------------------------------------------------------
class BenchConfig(_Strict):
    """What ``shadowcam bench`` measures and where it writes. ``quick``: tiny sizes (tests, smoke runs)."""

    out: Path = Path("docs/benchmarks.md")
    workdir: Path = Path("runs/bench")
    frames: int = Field(default=1500, ge=1)  # frames of the generated video (end-to-end, naive and raw runs all use them all)
    arch: str = "resnet18"
    # the targets are judged at the input size `shadowcam train` uses by default (the size users deploy)
    img_size: int = Field(default=TrainConfig.model_fields["img_size"].default, ge=1)
    # input sizes also measured (raw bound and end-to-end only, each judged against the bound-share target): how
    # the pipeline's fixed cost per frame (decode, resize, store) weighs against models of different cost
    other_sizes: tuple[int, ...] = (96, 128)
    batch_size: int = Field(default=32, ge=1)  # the pipeline's default batching.batch_size
    video_size: tuple[int, int] = (480, 640)  # (height, width)
    repeats: int = Field(default=2, ge=1)  # rounds of (raw bound, naive loop, end-to-end), alternating; the best of each is reported
    latency_frames: int = Field(default=600, ge=1)  # frames per latency run
    latency_repeats: int = Field(default=5, ge=1)  # runs per variant (without / with shadow), alternating
    latency_rate_share: float = Field(default=0.5, gt=0, le=1)  # of the measured end-to-end rate
    min_seconds: float = Field(default=3.0, gt=0)  # raw ORT: repeat passes over the frames until at least this long
    isolation_seconds: float = Field(default=3.0, gt=0)  # per variant
    isolation_sleep_s: float = Field(default=1.0, ge=0)
    seed: int = 0
    quick: bool = False
    command: str = ""

    QUICK: ClassVar[dict[str, Any]] = {"frames": 96, "img_size": 32, "other_sizes": (24,), "batch_size": 16, "repeats": 1,
                             "latency_frames": 48, "latency_repeats": 1, "min_seconds": 0.3, "isolation_seconds": 0.3,
                             "isolation_sleep_s": 0.2, "quick": True}

    @model_validator(mode="after")
    def _check(self) -> "BenchConfig":
        if any(v < 1 for v in self.other_sizes):
            raise ValueError(f"other_sizes must be positive integers, got {self.other_sizes!r}")
        if self.latency_frames > self.frames:
            raise ValueError(f"latency_frames ({self.latency_frames}) must not exceed frames ({self.frames})")
        if self.arch not in ARCHS:
            raise ValueError(f"arch {self.arch!r} is not supported; expected one of {', '.join(ARCHS)}")
        return self

    @classmethod
    def quick_config(cls, **kw: Any) -> "BenchConfig":
        """Tiny sizes: seconds, not minutes (numbers are not meaningful, the document's shape is)."""
        return cls(**{**cls.QUICK, **{k: v for k, v in kw.items() if v is not None}})

