#!/usr/bin/env python
"""The GPU server path (issue 14): N camera streams decoded on the CPU, batched across cameras, two models on one GPU.

What one run does, in order:

1. **Streams.** Writes ``--clips`` synthetic camera clips (a conveyor scene: textured belt, moving parcels, sensor
   noise; 1920x1080 at 30 fps by default) as H.264 at ``--bitrate-mbps`` (keyframe every 2 s, no B-frames, as
   cameras send). Encoder, first that works: PyAV's libx264 (``pip install av``), OpenCV's FFmpeg with an H.264
   FourCC (``avc1``/``H264``/``X264``; the PyPI wheels have no H.264 encoder), else MPEG-4 Part 2 (``mp4v``), which
   is *reported* as a fallback: it is cheaper to decode than H.264, so its decode figures flatter the host.
   Clips are cached in ``--streams-dir`` (``.gpu/gpu_bench/streams``, git-ignored) by their parameters.
2. **Decode ceiling.** One clip decoded on one thread (OpenCV's FFmpeg, ``CAP_PROP_N_THREADS=1``) for
   ``--ceiling-seconds``: frames/s of decoding alone (``grab``), and of the worker's whole path (decode, convert to
   BGR, resize to the model input); each times the usable cores is the host's ceiling (perfect scaling assumed,
   so it is an upper bound), and divided by 30 the streams it could feed.
3. **Models.** An incumbent and a shadow (same architecture, different seeded random weights: speed does not
   depend on the weights), exported to ONNX with the graph contract of ``models/export.py`` (uint8 NHWC RGB in,
   normalisation in the graph, ``logits``/``probs`` out; kept standalone here because the GPU image has no
   pydantic). GPU: float16 weights and convolutions (float32 with TensorRT, which makes its own fp16 engine);
   CPU: float32.
4. **Sessions.** GPU: ONNX Runtime's CUDA provider with ``prefer_nhwc=1``, cuDNN's exhaustive algorithm search and
   its largest workspace (the options of :data:`pipeline.runtime.CUDA_PROVIDER_OPTIONS`, plus the workspace),
   IO binding (one upload of the uint8 batch, shared by both models; outputs stay on the device until read), batches
   padded to power-of-two sizes so each shape is searched (and warmed) once; the TensorRT provider first, with an
   engine and timing cache in ``--workdir``, when its libraries (``libnvinfer``) load. CPU: the CPU provider,
   both models concurrently with half the cores each (the layout ``shadowcam bench`` finds fastest).
5. **Model time.** Incumbent + shadow on one batch of ``--batch-size`` for ``--model-seconds``: ms per frame for
   both models, with the batch uploaded each time (as in the pipeline) and, on a GPU, already on the device;
   against torch eager (``channels_last``, float16 on a GPU, ``cudnn.benchmark``) when torch is importable.
6. **Cameras sweep.** For each count in ``--cameras``: one worker process per camera decodes its clip (looped,
   each camera at its own offset) paced at ``--fps`` as a live camera delivers it, resizes each frame in the
   worker and hands it over in shared memory (a ring of slots per camera; a camera whose slots are all taken
   drops the frame, as a live source must); the parent batches frames across cameras (``--batch-size``, at most
   ``--max-wait-ms`` after a batch's first frame) and runs both models on each batch. Measured over
   ``--seconds`` after ``--warmup`` s: frames/s with both predictions, per camera, latency from the frame's
   arrival to both predictions, drops, and the CPU share other processes took. A camera is *sustained* when it
   got >= 95% of ``--fps`` end to end with a p99 latency under ``--max-latency-ms``; the report gives the largest
   count whose cameras were all sustained.

Results: a JSON file (``--json``) and, unless ``--no-docs``, the key ``gpu_bench`` (one entry per machine kind:
``cpu`` or ``gpu``) in ``docs/benchmarks.json`` and a generated block (between ``<!-- BEGIN gpu_bench`` and
``<!-- END gpu_bench -->``) in ``docs/benchmarks.md`` that says which machine each figure came from. ``shadowcam
bench`` rewrites both files whole; ``--render-only`` puts the block back from a results JSON.

On this machine (no GPU)::

    .venv/bin/python scripts/gpu_bench.py --cpu            # 1..8 cameras, ~10 s each, ResNet-18 at 64x64

On a GPU host (see ``scripts/gpu_bench.sh`` for the whole sequence on the lent device, from a checkout here)::

    python3 scripts/gpu_bench.py --gpu --clips 4 --json gpu_bench.json --no-docs   # cameras 16,32,40,48,56,64
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import queue
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.types import ConfigError  # noqa: E402  (numpy only: importable on the GPU image without pydantic)

JSON_KEY = "gpu_bench"
BLOCK_BEGIN = "<!-- BEGIN gpu_bench: generated by scripts/gpu_bench.py; do not edit by hand - rerun the script -->"
BLOCK_END = "<!-- END gpu_bench -->"
CLASSES = 6
SUSTAIN_SHARE = 0.95  # a camera is sustained at >= 95% of its frame rate end to end
SLOTS_PER_CAMERA = 8  # shared-memory frames per camera (~270 ms at 30 fps) before the camera drops frames
# pipeline.runtime.CUDA_PROVIDER_OPTIONS (tests/test_gpu_bench.py checks they agree) plus cuDNN's largest workspace,
# which lets the exhaustive search pick the fastest algorithms that need one
CUDA_OPTIONS = {"cudnn_conv_algo_search": "EXHAUSTIVE", "prefer_nhwc": "1", "cudnn_conv_use_max_workspace": "1"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
H264_FOURCCS = ("avc1", "H264", "X264")
SHOWN_OPTIONS = (*CUDA_OPTIONS, "trt_fp16_enable", "trt_engine_cache_enable", "trt_timing_cache_enable")


def say(msg: str) -> None:
    print(f"[gpu_bench] {msg}", file=sys.stderr, flush=True)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- 1. streams ------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamSpec:
    width: int = 1920
    height: int = 1080
    fps: float = 30.0
    seconds: float = 4.0
    bitrate_mbps: float = 4.0
    clips: int = 2

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def clip_name(self, i: int, codec: str) -> str:
        return f"cam{i}_{self.width}x{self.height}_{self.fps:g}fps_{self.frames}f_{self.bitrate_mbps:g}M_{codec}.mp4"


def scene_frames(spec: StreamSpec, seed: int) -> Iterator[np.ndarray]:
    """BGR frames of a conveyor camera: a textured belt moving right, parcels of several sizes, sensor noise.

    Built from a few precomputed layers (a belt panorama, noise frames) so that a 1080p frame costs a copy, a few
    rectangles and a saturating add, not a fresh random image: the encoder, not the generator, is the slow part.
    """
    import cv2

    rng = np.random.default_rng(seed)
    w, h = spec.width, spec.height
    period = 256
    coarse = rng.integers(40, 200, (max(2, h // 16), max(2, (w + period) // 16), 3), dtype=np.uint8)
    belt = cv2.resize(coarse, (w + period, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.integers(0, 40, (h, w + period, 3), dtype=np.uint8)
    belt = cv2.add(cv2.convertScaleAbs(belt, alpha=0.8), fine)
    for x in range(0, w + period, 64):  # belt slats
        cv2.line(belt, (x, 0), (x, h - 1), (30, 30, 30), max(1, w // 480))
    noise = [rng.integers(0, 12, (h, w, 3), dtype=np.uint8) for _ in range(4)]
    parcels = [(rng.uniform(0, w), rng.uniform(0.1, 0.7) * h, rng.uniform(0.08, 0.2) * w, rng.uniform(0.1, 0.25) * h,
                rng.uniform(2, 9) * w / 1920, tuple(int(c) for c in rng.integers(40, 230, 3))) for _ in range(5)]
    frame = np.empty((h, w, 3), np.uint8)
    for i in range(spec.frames):
        off = (i * max(1, w // 480)) % period
        np.copyto(frame, belt[:, period - off: period - off + w])
        for x0, y, bw, bh, v, colour in parcels:
            x = (x0 + v * i) % (w + bw) - bw
            p1, p2 = (int(x), int(y)), (int(x + bw), int(y + bh))
            cv2.rectangle(frame, p1, p2, colour, -1)
            cv2.rectangle(frame, p1, p2, (20, 20, 20), max(1, w // 640))
            cv2.putText(frame, "SKU", (int(x + bw * 0.1), int(y + bh * 0.6)), cv2.FONT_HERSHEY_SIMPLEX,
                        max(0.3, bh / 80), (250, 250, 250), max(1, w // 640))
        cv2.add(frame, noise[i % len(noise)], dst=frame)
        yield frame


def _fourcc_name(v: float) -> str:
    n = int(v)
    return "".join(chr((n >> (8 * k)) & 0xFF) for k in range(4)).strip("\x00") if n > 0 else "?"


def probe_clip(path: Path) -> dict[str, Any]:
    """What OpenCV's FFmpeg sees in a clip: FourCC, frame count, size; raises ConfigError if it cannot read it."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        if not cap.isOpened():
            raise ConfigError(f"{path}: OpenCV cannot open this clip (no FFmpeg backend or an unreadable file)")
        ok, img = cap.read()
        if not ok:
            raise ConfigError(f"{path}: OpenCV opens this clip but decodes no frame (codec missing from its FFmpeg?)")
        return {"fourcc": _fourcc_name(cap.get(cv2.CAP_PROP_FOURCC)), "frames": int(cap.get(cv2.CAP_PROP_FRAME_COUNT)),
                "width": img.shape[1], "height": img.shape[0]}
    finally:
        cap.release()


def _encode_pyav(path: Path, spec: StreamSpec, seed: int) -> str:
    import av

    gop = max(1, round(2 * spec.fps))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(spec.fps))
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, "yuv420p"
        stream.bit_rate = int(spec.bitrate_mbps * 1e6)
        stream.options = {"preset": "veryfast", "x264-params": f"keyint={gop}:min-keyint={gop}:bframes=0:scenecut=0"}
        for img in scene_frames(spec, seed):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return f"PyAV {av.__version__} libx264 (veryfast, {spec.bitrate_mbps:g} Mbit/s, keyframe every {gop} frames, no B-frames)"


def _encode_cv2(path: Path, spec: StreamSpec, seed: int, fourcc: str) -> bool:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*fourcc), spec.fps, (spec.width, spec.height))
    if not writer.isOpened():
        return False
    try:
        for img in scene_frames(spec, seed):
            writer.write(img)
    finally:
        writer.release()
    return path.is_file() and path.stat().st_size > 0


def encoder_plan() -> tuple[str, str]:
    """(how, why): the first encoder that writes H.264 here ("pyav" or an OpenCV FourCC), else ("mp4v", why not)."""
    import cv2

    reasons = []
    try:
        import av

        av.codec.Codec("libx264", "w")
        return "pyav", ""
    except ImportError:
        reasons.append("PyAV is not installed")
    except Exception as e:  # av.codec raises its own UnknownCodecError
        reasons.append(f"PyAV has no libx264 ({type(e).__name__})")
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu_bench_probe_{os.getpid()}.mp4"
    for cc in H264_FOURCCS:
        try:
            writer = cv2.VideoWriter(str(probe), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*cc), 30, (64, 64))
            ok = writer.isOpened()
            writer.release()
        finally:
            probe.unlink(missing_ok=True)
        if ok:
            return cc, ""
    reasons.append(f"OpenCV's FFmpeg has no H.264 encoder (FourCCs {', '.join(H264_FOURCCS)} refused)")
    return "mp4v", "; ".join(reasons)


def make_streams(spec: StreamSpec, streams_dir: Path) -> dict[str, Any]:
    """Write (or reuse) ``spec.clips`` clips in ``streams_dir``; returns their paths and how they were encoded.

    A clip found in ``streams_dir`` under its parameter name is reused (``--streams-dir`` of clips made on another
    machine: the GPU image has no H.264 encoder), whichever encoder wrote it; its sidecar ``.json`` says which.
    """
    streams_dir.mkdir(parents=True, exist_ok=True)
    plan: tuple[str, str] | None = None
    paths, infos = [], []
    for i in range(spec.clips):
        found = [p for p in (streams_dir / spec.clip_name(i, c) for c in ("h264", "mpeg4")) if p.is_file()]
        if found:
            path = found[0]
        else:
            plan = plan or encoder_plan()
            how, why = plan
            codec = "mpeg4" if how == "mp4v" else "h264"
            path = streams_dir / spec.clip_name(i, codec)
            tmp = path.with_suffix(".tmp.mp4")
            t0 = time.perf_counter()
            say(f"encoding clip {i + 1}/{spec.clips}: {spec.width}x{spec.height}, {spec.frames} frames, {how}")
            if how == "pyav":
                encoder = _encode_pyav(tmp, spec, seed=1000 + i)
            else:
                if not _encode_cv2(tmp, spec, 1000 + i, how):
                    raise ConfigError(f"{tmp}: OpenCV's VideoWriter could not write {how!r}")
                encoder = f"OpenCV {__import__('cv2').__version__} FFmpeg VideoWriter, FourCC {how}"
            tmp.replace(path)
            side = {"encoder": encoder, "codec": codec, "fallback_reason": why, "encode_seconds": time.perf_counter() - t0}
            path.with_suffix(".json").write_text(json.dumps(side, indent=1) + "\n")
        side_path = path.with_suffix(".json")
        side = json.loads(side_path.read_text()) if side_path.is_file() else {"encoder": "unknown", "fallback_reason": ""}
        probe = probe_clip(path)
        if (probe["width"], probe["height"]) != (spec.width, spec.height):
            raise ConfigError(f"{path}: decodes at {probe['width']}x{probe['height']}, expected {spec.width}x{spec.height}")
        paths.append(path)
        infos.append({**side, **probe, "path": str(path), "mbit_per_s": path.stat().st_size * 8 / 1e6 / spec.seconds})
    h264 = all(x["fourcc"].lower() in ("avc1", "h264", "x264") for x in infos)
    return {"paths": [str(p) for p in paths], "h264": h264, "codec": "H.264" if h264 else "/".join(sorted({x["fourcc"] for x in infos})),
            "encoder": infos[0]["encoder"], "fallback_reason": "" if h264 else (infos[0].get("fallback_reason") or "not H.264"),
            "mbit_per_s": round(float(np.mean([x["mbit_per_s"] for x in infos])), 2), **asdict(spec), "frames": spec.frames}


# --- 2. decoding -------------------------------------------------------------------------------------------------------

def open_capture(path: str | Path) -> Any:
    """OpenCV capture on FFmpeg with one decoding thread (one camera = one core's worth of decoding)."""
    import cv2

    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise ConfigError(f"{path}: OpenCV cannot open this clip")
    return cap


def resize_into(img: np.ndarray, out: np.ndarray, how: str = "fast") -> None:
    """Resize a BGR frame into ``out`` (the model's input size) with area averaging.

    ``how="area"``: one ``cv2.INTER_AREA`` pass (what the pipeline's batcher does). From 1080p to 224x224 that pass
    costs more than decoding the frame (its general path: non-integer factors), so ``"fast"`` (the default of the
    workers) first halves the frame with ``INTER_AREA`` while it stays at least the output's size (OpenCV's fast
    2x2 path), then does the area pass on the small image: 3-4x cheaper, within a few grey levels of one pass.
    """
    import cv2

    h, w = out.shape[:2]
    if how == "fast":
        while img.shape[0] >= 2 * h and img.shape[1] >= 2 * w and img.shape[0] % 2 == 0 and img.shape[1] % 2 == 0:
            img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    cv2.resize(img, (w, h), dst=out, interpolation=cv2.INTER_AREA)


def _decode_rate(path: str, seconds: float, size: int | None, how: str = "fast") -> float:
    """Frames/s on this thread: decoding alone (``size`` None: ``grab``), or decode + BGR + resize to ``size``."""
    out = np.empty((size, size, 3), np.uint8) if size else None
    cap = open_capture(path)
    n, t0 = 0, time.perf_counter()
    try:
        while time.perf_counter() - t0 < seconds:
            if size is None:
                ok = cap.grab()
            else:
                ok, img = cap.read()
                if ok:
                    resize_into(img, out, how)
            if not ok:  # end of the clip: loop (a new capture, as the workers do)
                cap.release()
                cap = open_capture(path)
                continue
            n += 1
        return n / (time.perf_counter() - t0)
    finally:
        cap.release()


def decode_ceiling(path: str, seconds: float, size: int, fps: float) -> dict[str, Any]:
    """The host's decode ceiling from one thread's decode rate (see the module docstring, step 2)."""
    import cv2

    cv2.setNumThreads(1)
    cores = usable_cores()
    only = _decode_rate(path, seconds * 0.4, None)
    path_rate = _decode_rate(path, seconds * 0.4, size, "fast")
    area_rate = _decode_rate(path, seconds * 0.2, size, "area")
    cv2.setNumThreads(0)
    return {"cores": cores, "decode_only_fps_per_core": round(only, 1), "worker_path_fps_per_core": round(path_rate, 1),
            "decode_only_ceiling_fps": round(only * cores, 1), "worker_path_ceiling_fps": round(path_rate * cores, 1),
            "decode_only_ceiling_streams": round(only * cores / fps, 1),
            "worker_path_ceiling_streams": round(path_rate * cores / fps, 1),
            "one_pass_area_fps_per_core": round(area_rate, 1), "seconds": seconds}


def camera_worker(cam: int, path: str, size: int, slots_raw: Any, n_slots: int, free: Any, ready: Any, stop: Any,
                  t0: Any, fps: float, skip: int) -> None:
    """One camera (a worker process): decode its clip at ``fps`` as a live camera delivers it, resize into a free
    shared-memory slot, tell the parent ``("frame", cam, slot, arrival)``; drop the frame if no slot is free.

    Frame k *arrives* at ``t0 + k / fps``; the worker waits for it, then decodes it. A worker slower than ``fps``
    falls behind and its latency grows (the parent measures both). The clip loops; ``skip`` frames are skipped
    at the start so cameras that share a clip do not show the same frame at the same time.
    """
    import cv2

    cv2.setNumThreads(1)
    slots = np.frombuffer(slots_raw, np.uint8).reshape(n_slots, size, size, 3)
    decoded = dropped = seq = 0
    try:
        cap = open_capture(path)
        for _ in range(skip):
            cap.grab()
        ready.put(("ready", cam, None, None))
        while t0.value == 0.0 and not stop.is_set():
            time.sleep(0.002)
        start, k = t0.value, 0
        while not stop.is_set():
            arrival = start + k / fps
            wait = arrival - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            ok, img = cap.read()
            if not ok:
                cap.release()
                cap = open_capture(path)
                ok, img = cap.read()
                if not ok:
                    raise ConfigError(f"{path}: no frame after reopening the clip")
            decoded += 1
            k += 1
            if free.acquire(False):
                slot = seq % n_slots
                resize_into(img, slots[slot], "fast")
                ready.put(("frame", cam, slot, arrival))
                seq += 1
            else:
                dropped += 1
        cap.release()
        ready.put(("done", cam, {"decoded": decoded, "dropped": dropped}, None))
    except BaseException as e:  # tell the parent instead of dying silently
        ready.put(("error", cam, f"camera {cam}: {type(e).__name__}: {e}", None))


# --- 3. models ---------------------------------------------------------------------------------------------------------

def build_torch_model(arch: str, size: int, seed: int, dtype: str = "float32") -> Any:
    """The graph contract of models/export.py around a randomly initialised backbone (uint8 NHWC in -> logits, probs).

    ``arch``: a torchvision classifier name (``resnet18``, ``mobilenet_v3_small``...) or ``tiny`` (two strided
    convolutions: for tests). ``dtype`` float16: the backbone in float16 (preprocessing and outputs in float32).
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if arch == "tiny":
        backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                                 nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, CLASSES))
    else:
        import torchvision

        if not hasattr(torchvision.models, arch):
            raise ConfigError(f"--arch {arch!r}: not a torchvision model (or 'tiny')")
        backbone = getattr(torchvision.models, arch)(weights=None, num_classes=CLASSES)
    compute = torch.float16 if dtype == "float16" else torch.float32

    class Contract(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = backbone.to(compute)
            mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
            self.register_buffer("scale", 1.0 / (255.0 * std))
            self.register_buffer("shift", mean / std)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = (image.to(torch.float32) * self.scale - self.shift).permute(0, 3, 1, 2).to(compute)
            logits = self.backbone(x).to(torch.float32)
            return logits, torch.softmax(logits, dim=1)

    return Contract().eval()


def export_model(arch: str, size: int, seed: int, precision: str, path: Path) -> Path:
    """Export (or reuse) the model to ``path``: opset 17, dynamic batch, input ``image``, outputs ``logits``/``probs``."""
    if path.is_file():
        return path
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_torch_model(arch, size, seed, "float16" if precision == "fp16" else "float32")
    tmp = path.with_suffix(".tmp.onnx")
    import warnings

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(2, size, size, 3, dtype=torch.uint8),), str(tmp), opset_version=17,
                          input_names=["image"], output_names=["logits", "probs"], dynamo=False,
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probs": {0: "batch"}})
    tmp.replace(path)
    return path


def tensorrt_libraries() -> tuple[bool, str]:
    """Whether TensorRT's runtime library loads (ONNX Runtime lists its provider whether or not it does)."""
    import ctypes

    for name in ("libnvinfer.so.10", "libnvinfer.so"):
        try:
            ctypes.CDLL(name)
            return True, name
        except OSError:
            pass
    try:  # the pip wheels (tensorrt-cu12/13-libs) keep the library in their package folder
        import tensorrt_libs  # type: ignore[import-not-found]

        for lib in Path(tensorrt_libs.__file__).parent.glob("libnvinfer.so*"):
            ctypes.CDLL(str(lib))
            return True, str(lib)
    except (ImportError, OSError):
        pass
    return False, "libnvinfer.so.10 not found (TensorRT is not installed)"


def batch_buckets(batch_size: int) -> list[int]:
    """Batch sizes a GPU session sees: powers of two below ``batch_size``, and ``batch_size`` (partial batches are
    padded up to the next one, so cuDNN's search and TensorRT's profiles meet a handful of shapes, each once)."""
    out, b = [], 1
    while b < batch_size:
        out.append(b)
        b *= 2
    return out + [batch_size]


class Engine:
    """Incumbent + shadow on ONNX Runtime; :meth:`infer` runs both on one batch (see the module docstring, step 4)."""

    def __init__(self, paths: tuple[Path, Path], device: str, batch_size: int, workdir: Path, trt: bool,
                 concurrent: bool = True, threads: int | None = None, size: int = 224, io_binding: bool | None = None):
        """``io_binding``: None = on a GPU only; True on the CPU runs the GPU's code path with CPU buffers (tests)."""
        import onnxruntime as ort

        self.device, self.batch_size, self.size = device, batch_size, size
        self.io_binding = device == "cuda" if io_binding is None else bool(io_binding)
        self.buckets = batch_buckets(batch_size) if self.io_binding else []
        self.concurrent = concurrent
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device == "cpu":
            cores = usable_cores()
            self.threads = threads or (max(1, cores // 2) if concurrent else cores)
            so.intra_op_num_threads = self.threads
            providers: list[Any] = ["CPUExecutionProvider"]
        else:
            self.threads = None
            providers = [("CUDAExecutionProvider", dict(CUDA_OPTIONS, device_id="0")), "CPUExecutionProvider"]
            if trt:
                cache = workdir / "trt_cache"
                cache.mkdir(parents=True, exist_ok=True)
                shape = f"{size}x{size}x3"
                providers.insert(0, ("TensorrtExecutionProvider", {
                    "device_id": "0", "trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                    "trt_engine_cache_path": str(cache), "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache),
                    "trt_profile_min_shapes": f"image:1x{shape}", "trt_profile_opt_shapes": f"image:{batch_size}x{shape}",
                    "trt_profile_max_shapes": f"image:{batch_size}x{shape}"}))
        self.sessions = [ort.InferenceSession(str(p), sess_options=so, providers=providers) for p in paths]
        self.providers = list(self.sessions[0].get_providers())
        if device == "cuda" and self.providers[0] == "CPUExecutionProvider":
            raise ConfigError("ONNX Runtime could not start its CUDA provider (onnxruntime-gpu installed? CUDA/cuDNN "
                              "libraries found? import torch first); use --cpu on a machine without a GPU")
        self.provider_options = {k: v for k, v in self.sessions[0].get_provider_options().items() if k != "CPUExecutionProvider"}
        self._pool = ThreadPoolExecutor(1) if concurrent else None
        self._dev: dict[int, tuple[Any, list[Any]]] = {}
        for b in self.buckets:  # device input (shared by both models) and output buffers per bucket
            x = ort.OrtValue.ortvalue_from_shape_and_type([b, size, size, 3], np.uint8, device, 0)
            outs = [ort.OrtValue.ortvalue_from_shape_and_type([b, CLASSES], np.float32, device, 0) for _ in paths]
            self._dev[b] = (x, outs)

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n) if self.buckets else n

    def _run(self, k: int, images: np.ndarray) -> np.ndarray:
        s = self.sessions[k]
        if not self.io_binding:
            return s.run(["probs"], {"image": images})[0]
        x, outs = self._dev[len(images)]
        binding = s.io_binding()
        binding.bind_ortvalue_input("image", x)
        binding.bind_ortvalue_output("probs", outs[k])
        s.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def upload(self, images: np.ndarray) -> None:
        """IO binding: copy the (bucket-sized) batch into its device buffer, once for both models."""
        if self.io_binding:
            self._dev[len(images)][0].update_inplace(images)

    def infer(self, images: np.ndarray, upload: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Both models' probabilities for ``images`` (uint8 NHWC RGB; on a GPU of a bucket's size)."""
        if upload:
            self.upload(images)
        if self._pool is None:
            return self._run(0, images), self._run(1, images)
        shadow = self._pool.submit(self._run, 1, images)
        return self._run(0, images), shadow.result()

    def warmup(self, runs: int = 3) -> float:
        t0 = time.perf_counter()
        for b in self.buckets or [self.batch_size]:
            x = np.zeros((b, self.size, self.size, 3), np.uint8)
            for _ in range(runs):
                self.infer(x)
        return time.perf_counter() - t0

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


def timed(fn: Any, frames_per_call: int, seconds: float, sync: Any = None) -> dict[str, float]:
    """ms per frame of ``fn()`` over at least ``seconds`` (after one untimed call), with its spread over 5 slices."""
    fn()
    if sync:
        sync()
    per_call: list[float] = []
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or len(per_call) < 5:
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        per_call.append(time.perf_counter() - t)
    ms = 1000 * sum(per_call) / (len(per_call) * frames_per_call)
    return {"ms_per_frame": round(ms, 4), "frames_per_s": round(1000 / ms, 1), "calls": len(per_call),
            "median_ms_per_frame": round(1000 * float(np.median(per_call)) / frames_per_call, 4)}


def torch_eager(arch: str, size: int, batch: np.ndarray, device: str, seconds: float) -> dict[str, Any]:
    """Incumbent then shadow as torch eager modules on the same batch: channels_last, float16 on a GPU."""
    try:
        import torch
    except ImportError as e:
        return {"skipped": f"torch not importable ({e})"}
    dtype = "float16" if device == "cuda" else "float32"
    models = []
    for seed in (1, 2):
        m = build_torch_model(arch, size, seed, dtype).to(device)
        m.backbone.to(memory_format=torch.channels_last)
        models.append(m)
    if device == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(usable_cores())
    x = torch.from_numpy(batch).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else None

    def run() -> None:
        with torch.inference_mode():
            for m in models:
                m(x)[1].cpu()

    out = timed(run, len(batch), seconds, sync)
    return {**out, "torch": torch.__version__, "dtype": dtype, "threads": torch.get_num_threads() if device == "cpu" else None,
            "layout": "channels_last, serial (incumbent then shadow), input on the device, probs copied back"}


# --- 4. the cameras sweep ----------------------------------------------------------------------------------------------

class CpuUse:
    """CPU used by this process tree and by everything else on the machine while the block ran (Linux /proc/stat)."""

    @staticmethod
    def _busy() -> float | None:
        try:
            f = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        v = [int(x) for x in f[1:9]]
        return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> "CpuUse":
        self.t, self.busy, self.own = time.perf_counter(), self._busy(), os.times()
        return self

    def __exit__(self, *exc: Any) -> None:
        wall, busy, own = time.perf_counter() - self.t, self._busy(), os.times()
        cap = wall * usable_cores()
        mine = sum(getattr(own, k) - getattr(self.own, k) for k in ("user", "system", "children_user", "children_system"))
        self.own_share = round(mine / cap, 3)
        self.other_share = None if busy is None or self.busy is None else round(max(0.0, (busy - self.busy) - mine) / cap, 3)


def run_point(n_cams: int, clips: list[str], engine: Engine, args: argparse.Namespace) -> dict[str, Any]:
    """One point of the sweep: ``n_cams`` camera workers for ``args.warmup + args.seconds`` s (module docstring, 6)."""
    ctx = mp.get_context("spawn")
    size, k_slots, fps = args.img_size, SLOTS_PER_CAMERA, args.fps
    ready, stop, t0 = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0, lock=False)
    raws = [ctx.RawArray("B", k_slots * size * size * 3) for _ in range(n_cams)]
    slots = [np.frombuffer(r, np.uint8).reshape(k_slots, size, size, 3) for r in raws]
    frees = [ctx.Semaphore(k_slots) for _ in range(n_cams)]
    procs = [ctx.Process(target=camera_worker, daemon=True, name=f"camera-{c}",
                         args=(c, clips[c % len(clips)], size, raws[c], k_slots, frees[c], ready, stop, t0, fps,
                               (c // len(clips)) * 7 % 29))
             for c in range(n_cams)]
    cpu = CpuUse().__enter__()
    for p in procs:
        p.start()
    errors: list[str] = []
    started = 0
    deadline = time.monotonic() + 120
    while started < n_cams:
        try:
            kind, cam, payload, _ = ready.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise ConfigError(f"{n_cams} cameras: only {started} workers started within 120 s") from None
        if kind == "error":
            raise ConfigError(str(payload))
        started += kind == "ready"

    B = args.batch_size
    bufs: queue.Queue[np.ndarray] = queue.Queue()
    for _ in range(3):
        bufs.put(np.empty((B, size, size, 3), np.uint8))
    batches: queue.Queue[Any] = queue.Queue(maxsize=2)
    stats: dict[int, dict[str, int]] = {}
    max_wait = args.max_wait_ms / 1000

    def collect() -> None:
        """Frames from the cameras into batches (RGB, as the models want), until every camera said done."""
        import cv2

        buf, n, cams, arrivals, first = bufs.get(), 0, [], [], 0.0
        done = 0
        while done < n_cams:
            timeout = 0.2 if n == 0 else max(0.0, first + max_wait - time.monotonic())
            try:
                kind, cam, payload, arrival = ready.get(timeout=timeout)
            except queue.Empty:
                kind = None
                if stop.is_set() and not any(p.is_alive() for p in procs):  # a worker died without a word
                    errors.append(f"{n_cams - done} camera worker(s) exited without reporting (exit codes "
                                  f"{[p.exitcode for p in procs]})")
                    break
            if kind == "frame":
                cv2.cvtColor(slots[cam][payload], cv2.COLOR_BGR2RGB, dst=buf[n])
                frees[cam].release()
                if n == 0:
                    first = time.monotonic()
                cams.append(cam)
                arrivals.append(arrival)
                n += 1
            elif kind == "done":
                stats[cam] = payload
                done += 1
            elif kind == "error":
                errors.append(str(payload))
                done += 1
            if n and (n == B or time.monotonic() - first >= max_wait or done == n_cams):
                batches.put((buf, n, np.array(cams), np.array(arrivals)))
                buf, n, cams, arrivals = bufs.get(), 0, [], []
        if n:
            batches.put((buf, n, np.array(cams), np.array(arrivals)))
        batches.put(None)

    collector = threading.Thread(target=collect, name="collector", daemon=True)
    start = time.monotonic() + 0.2
    t0.value = start
    w0, w1 = start + args.warmup, start + args.warmup + args.seconds
    collector.start()
    rec_cam, rec_arr, rec_done, batch_n, infer_s = [], [], [], [], 0.0
    stopped = False
    while True:
        if not stopped and time.monotonic() >= w1:
            stop.set()
            stopped = True
        try:
            item = batches.get(timeout=0.1)
        except queue.Empty:
            continue
        if item is None:
            break
        buf, n, cams, arrivals = item
        t = time.perf_counter()
        inc, sh = engine.infer(buf[:engine.bucket(n)])
        if not (np.isfinite(inc[:n]).all() and np.isfinite(sh[:n]).all()):
            raise ConfigError("a model returned non-finite probabilities")
        infer_s += time.perf_counter() - t
        done_at = time.monotonic()
        bufs.put(buf)
        rec_cam.append(cams)
        rec_arr.append(arrivals)
        rec_done.append(np.full(n, done_at))
        batch_n.append(n)
    collector.join(10)
    for p in procs:
        p.join(10)
        if p.is_alive():
            p.terminate()
    cpu.__exit__(None, None, None)
    if errors:
        raise ConfigError(errors[0])

    cam_a, arr_a, done_a = (np.concatenate(x) if x else np.zeros(0) for x in (rec_cam, rec_arr, rec_done))
    in_window = (done_a >= w0) & (done_a < w1)
    per_cam = np.bincount(cam_a[in_window].astype(int), minlength=n_cams) / args.seconds
    lat_ms = 1000 * (done_a - arr_a)[(arr_a >= w0) & (arr_a < w1)]
    p50, p99 = (float(np.percentile(lat_ms, q)) if len(lat_ms) else math.inf for q in (50, 99))
    decoded = sum(s["decoded"] for s in stats.values())
    dropped = sum(s["dropped"] for s in stats.values())
    cams_ok = int(((per_cam >= SUSTAIN_SHARE * fps)).sum()) if p99 <= args.max_latency_ms else 0
    return {
        "cameras": n_cams, "seconds": args.seconds, "warmup_s": args.warmup,
        "fps_total": round(float(per_cam.sum()), 1), "fps_per_camera_min": round(float(per_cam.min()), 2),
        "fps_per_camera_median": round(float(np.median(per_cam)), 2), "fps_target_total": n_cams * fps,
        "latency_p50_ms": round(p50, 1), "latency_p99_ms": round(p99, 1),
        "frames_decoded": decoded, "frames_dropped": dropped, "drop_share": round(dropped / max(1, decoded), 4),
        "batches": len(batch_n), "mean_batch": round(float(np.mean(batch_n)), 1) if batch_n else 0.0,
        "infer_ms_per_frame": round(1000 * infer_s / max(1, sum(batch_n)), 3),
        "cameras_sustained": cams_ok, "sustained": cams_ok == n_cams,
        "own_cpu_share": cpu.own_share, "other_cpu_share": cpu.other_share,
    }


# --- 5. the machine, the whole run -------------------------------------------------------------------------------------

def _git(*a: str) -> str:
    try:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(device: str) -> dict[str, Any]:
    import cv2
    import onnxruntime as ort

    def read(p: str) -> str:
        try:
            return Path(p).read_text()
        except OSError:
            return ""

    cpu = re.search(r"^model name\s*:\s*(.+)$", read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", read("/proc/meminfo"), re.M)
    gpu = None
    if device == "cuda":
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
            gpu = out.splitlines()[0] if out else None
        except (OSError, subprocess.SubprocessError):
            pass
    commit = _git("rev-parse", "--short=12", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    try:
        import torch

        torch_v = torch.__version__
    except ImportError:
        torch_v = None
    return {"cpu": cpu.group(1).strip() if cpu else platform.processor(), "cores": os.cpu_count(), "cores_usable": usable_cores(),
            "ram_gib": round(int(mem.group(1)) / 1024**2, 1) if mem else None, "gpu": gpu,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
            "onnxruntime": ort.__version__, "ort_providers_available": ort.get_available_providers(),
            "opencv": cv2.__version__, "numpy": np.__version__, "torch": torch_v,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": (commit + (" (with uncommitted changes)" if dirty else "")) if commit else "unknown"}


def parse_cameras(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ConfigError(f"--cameras {text!r}: expected a comma-separated list of camera counts >= 1, e.g. 1,2,4,8")
    return counts


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything in the module docstring; returns the results (also written where the arguments say)."""
    t_start = time.perf_counter()
    device = "cpu" if args.cpu else "cuda"
    cameras = parse_cameras(args.cameras)
    workdir = Path(args.workdir)
    if device == "cuda":
        try:  # torch first: its CUDA 13 / cuDNN libraries are the ones onnxruntime-gpu finds
            import torch  # noqa: F401
        except ImportError:
            pass
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):  # CUDA/cuDNN from the nvidia-* wheels torch brought (no-op if absent)
            try:
                ort.preload_dlls()
            except Exception as e:  # noqa: BLE001 - a failed preload shows up as a CUDA provider that cannot start
                say(f"onnxruntime.preload_dlls(): {type(e).__name__}: {e}")
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError(f"--gpu: this onnxruntime ({ort.__version__}) has no CUDA provider; install onnxruntime-gpu "
                              "or run with --cpu")
    machine = machine_info(device)
    say(f"{device}: {machine['cpu']} x {machine['cores_usable']} cores, GPU {machine['gpu'] or 'none'}; "
        f"load average {machine['load_average']}")

    spec = StreamSpec(args.width, args.height, args.fps, args.clip_seconds, args.bitrate_mbps, args.clips or min(max(cameras), 4))
    streams = make_streams(spec, Path(args.streams_dir))
    if not streams["h264"]:
        say(f"streams are {streams['codec']}, not H.264: {streams['fallback_reason']}")
    say(f"decode ceiling ({args.ceiling_seconds:g} s on one thread)")
    ceiling = decode_ceiling(streams["paths"][0], args.ceiling_seconds, args.img_size, args.fps)
    say(f"  {ceiling['decode_only_fps_per_core']} frames/s decoding, {ceiling['worker_path_fps_per_core']} with resize, "
        f"per core; x {ceiling['cores']} cores = {ceiling['decode_only_ceiling_streams']} streams of {args.fps:g} fps")

    trt_ok, trt_why = tensorrt_libraries() if device == "cuda" and args.trt != "off" else (False, "not asked for" if device == "cuda" else "CPU run")
    precision = "fp32" if device == "cpu" or trt_ok else "fp16"
    models_dir = workdir / "models"
    paths = tuple(export_model(args.arch, args.img_size, seed, precision,
                               models_dir / f"{args.arch}_{args.img_size}_{precision}_seed{seed}.onnx") for seed in (1, 2))
    say(f"models: {args.arch} at {args.img_size}x{args.img_size}, {precision}; TensorRT: {trt_why}")
    engine = Engine(paths, device, args.batch_size, workdir, trt_ok, concurrent=not args.serial, size=args.img_size)  # type: ignore[arg-type]
    warm_s = engine.warmup()
    say(f"  providers {engine.providers}; warm-up {warm_s:.1f} s")

    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (args.batch_size, args.img_size, args.img_size, 3), dtype=np.uint8)
    model_ms: dict[str, Any] = {"batch": args.batch_size}
    model_ms["ort"] = {**timed(lambda: engine.infer(full), len(full), args.model_seconds),
                       "layout": ("concurrent" if engine.concurrent else "serial") + (
                           f", {engine.threads} intra-op thread(s) each" if device == "cpu" else ", IO binding") +
                       ", batch uploaded each call" * (device == "cuda")}
    if device == "cuda":
        engine.upload(full)
        model_ms["ort_device_resident"] = {**timed(lambda: engine.infer(full, upload=False), len(full), args.model_seconds),
                                           "layout": "input already on the device (GPU time alone)"}
    say(f"  ONNX Runtime {model_ms['ort']['ms_per_frame']:.4f} ms/frame (both models)")
    if args.torch:
        model_ms["torch_eager"] = torch_eager(args.arch, args.img_size, full, device, args.model_seconds)
        te = model_ms["torch_eager"]
        if "ms_per_frame" in te:
            ref = model_ms.get("ort_device_resident", model_ms["ort"])["ms_per_frame"]
            model_ms["torch_over_ort"] = round(te["ms_per_frame"] / ref, 2)
            say(f"  torch eager {te['ms_per_frame']:.4f} ms/frame (both models): ONNX Runtime is {model_ms['torch_over_ort']}x faster")
    else:
        model_ms["torch_eager"] = {"skipped": "--no-torch"}

    points = []
    for n in cameras:
        say(f"{n} camera(s): {args.warmup:g} s warm-up + {args.seconds:g} s")
        points.append(run_point(n, streams["paths"], engine, args))
        p = points[-1]
        say(f"  {p['fps_total']} frames/s end to end ({p['fps_per_camera_min']}..{p['fps_per_camera_median']} per camera), "
            f"p99 {p['latency_p99_ms']} ms, {p['cameras_sustained']}/{n} sustained, other processes "
            f"{p['other_cpu_share']} of the CPU")
    engine.close()
    sustained = [p["cameras"] for p in points if p["sustained"]]
    return {
        "mode": "gpu" if device == "cuda" else "cpu",
        "command": "python scripts/gpu_bench.py " + " ".join(args.argv),
        "machine": machine,
        "streams": {k: v for k, v in streams.items() if k != "paths"} | {"clips_files": [Path(p).name for p in streams["paths"]]},
        "decode": {"decoder": "OpenCV FFmpeg (cv2.VideoCapture, 1 thread per camera); in the worker, BGR frame resized "
                              "to the model input by 2x area halvings then one area pass (resize_into, 'fast')"},
        "decode_ceiling": ceiling,
        "models": {"arch": args.arch, "img_size": args.img_size, "classes": CLASSES, "precision": precision,
                   "onnx_mb": round(paths[0].stat().st_size / 1e6, 2), "providers": engine.providers,
                   "provider_options": engine.provider_options, "tensorrt": {"used": trt_ok and engine.providers[0].startswith("Tensorrt"),
                                                                              "libraries": trt_why},
                   "io_binding": device == "cuda", "warmup_s": round(warm_s, 1),
                   "layout": ("incumbent and shadow concurrently" if engine.concurrent else "shadow after incumbent") + (
                       f", {engine.threads} intra-op thread(s) each" if device == "cpu"
                       else ", each session on its own CUDA stream, IO binding (one upload per batch for both)")},
        "batching": {"batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms, "buckets": engine.buckets or None,
                     "slots_per_camera": SLOTS_PER_CAMERA},
        "model_ms": model_ms,
        "points": points,
        "streams_sustained": max(sustained) if sustained else 0,
        "sustain_rule": f">= {SUSTAIN_SHARE:.0%} of {args.fps:g} fps per camera end to end and p99 latency <= {args.max_latency_ms:g} ms",
        "max_fps_total": max(p["fps_total"] for p in points),
        "bench_seconds": round(time.perf_counter() - t_start, 1),
    }


# --- 6. the document ---------------------------------------------------------------------------------------------------

def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows), ""]


def _entry_md(r: dict[str, Any]) -> list[str]:
    m, s, d, mo, ms = r["machine"], r["streams"], r["decode_ceiling"], r["models"], r["model_ms"]
    gpu = r["mode"] == "gpu"
    title = f"GPU: {m['gpu']}" if gpu else "CPU only"
    L = [f"### {title}; {m['cpu']}, {m['cores_usable']} usable cores",
         "",
         f"Measured by `{r['command']}` on {m['date']} at commit `{m['git_commit']}` ({m['os']}, Python {m['python']}, "
         f"onnxruntime {m['onnxruntime']}, OpenCV {m['opencv']}, torch {m['torch'] or 'absent'}); "
         f"load average at the start {' / '.join(str(x) for x in m['load_average'])} on {m['cores_usable']} cores; "
         f"the whole run took {r['bench_seconds']:.0f} s.",
         ""]
    if not gpu:
        L += ["These figures are from the CPU of the machine named above, not from a GPU server. "
              "The machine was shared with other work while they were taken (the load average above, and the "
              "column 'other processes' below): the scaling is indicative, not a clean measurement. "
              f"The models run at {r['models']['img_size']}x{r['models']['img_size']} here (the GPU run's default is "
              "224x224), so that two cores have some CPU left for decoding.", ""]
    codec_note = "" if s["h264"] else f" (**not H.264**: {s['fallback_reason']}; MPEG-4 Part 2 decodes faster, so the decode figures flatter the host)"
    L += _table(["item", "value"], [
        ["streams", f"{s['clips']} distinct clip(s) of {s['width']}x{s['height']} at {s['fps']:g} fps, "
                    f"{s['frames']} frames looped, {s['codec']}{codec_note}, {s['mbit_per_s']} Mbit/s; {s['encoder']}"],
        ["decoding", r["decode"]["decoder"] + f"; one worker process per camera, frames to the parent in shared memory "
                     f"({r['batching']['slots_per_camera']} slots per camera; a camera with no free slot drops the frame)"],
        ["models", f"incumbent + shadow: {mo['arch']} at {mo['img_size']}x{mo['img_size']}, {mo['classes']} classes, random "
                   f"weights, {mo['precision']}, {mo['onnx_mb']} MB each"],
        ["ONNX Runtime", f"providers in use {', '.join(mo['providers'])}; {mo['layout']}; TensorRT "
                         f"{'used' if mo['tensorrt']['used'] else 'not used'} ({mo['tensorrt']['libraries']})"
                         + "".join(f"; {k}: " + ", ".join(f"{kk}={vv}" for kk, vv in sorted(v.items()) if kk in SHOWN_OPTIONS)
                                   for k, v in mo["provider_options"].items())],
        ["batching", f"across cameras, up to {r['batching']['batch_size']} frames, at most {r['batching']['max_wait_ms']:g} ms after "
                     f"a batch's first frame" + (f"; padded to {r['batching']['buckets']}" if r["batching"]["buckets"] else "")],
    ])
    L += ["**Decode ceiling** (one thread, the first clip; times the usable cores, assuming perfect scaling):", ""]
    L += _table(["path", "frames/s per core", "x cores", "frames/s", f"streams of {s['fps']:g} fps"], [
        ["decoding alone (`grab`)", d["decode_only_fps_per_core"], d["cores"], d["decode_only_ceiling_fps"], d["decode_only_ceiling_streams"]],
        ["worker path (decode + BGR + resize: halvings, then area)", d["worker_path_fps_per_core"], d["cores"],
         d["worker_path_ceiling_fps"], d["worker_path_ceiling_streams"]],
        *([["for reference: decode + BGR + one INTER_AREA pass (the pipeline's resize)", d["one_pass_area_fps_per_core"],
            d["cores"], round(d["one_pass_area_fps_per_core"] * d["cores"], 1),
            round(d["one_pass_area_fps_per_core"] * d["cores"] / s["fps"], 1)]] if "one_pass_area_fps_per_core" in d else []),
    ])
    rows = [["ONNX Runtime", ms["ort"]["ms_per_frame"], ms["ort"]["frames_per_s"], ms["ort"]["layout"]]]
    if "ort_device_resident" in ms:
        x = ms["ort_device_resident"]
        rows.append(["ONNX Runtime", x["ms_per_frame"], x["frames_per_s"], x["layout"]])
    te = ms["torch_eager"]
    rows.append(["torch eager", te["ms_per_frame"], te["frames_per_s"], f"{te['dtype']}, {te['layout']}"] if "ms_per_frame" in te
                else ["torch eager", "-", "-", te["skipped"]])
    L += [f"**Model time**, incumbent + shadow together, on batches of {ms['batch']} (ms per frame: both models):", ""]
    L += _table(["framework", "ms per frame", "frames/s", "how"], rows)
    if "torch_over_ort" in ms:
        L += [f"torch eager takes {ms['torch_over_ort']}x the time of ONNX Runtime"
              + (" (input on the device for both)." if gpu else "."), ""]
    L += [f"**Cameras** (each paced at {s['fps']:g} fps; {r['points'][0]['warmup_s']:g} s warm-up then {r['points'][0]['seconds']:g} s "
          f"measured; 'sustained': {r['sustain_rule']}):", ""]
    L += _table(["cameras", "frames/s end to end (both models)", "target", "per camera min / median", "latency p50 / p99 ms",
                 "dropped", "mean batch", "inference ms/frame", "sustained", "CPU: this run / other processes"], [
        [p["cameras"], p["fps_total"], f"{p['fps_target_total']:g}", f"{p['fps_per_camera_min']} / {p['fps_per_camera_median']}",
         f"{p['latency_p50_ms']} / {p['latency_p99_ms']}", f"{p['drop_share']:.1%}", p["mean_batch"], p["infer_ms_per_frame"],
         f"{p['cameras_sustained']}/{p['cameras']}",
         f"{p['own_cpu_share']:.0%} / {p['other_cpu_share']:.0%}" if p["other_cpu_share"] is not None else "-"] for p in r["points"]
    ])
    L += [f"Streams sustained at {s['fps']:g} fps: **{r['streams_sustained']}** (the largest count tried whose cameras all kept up; "
          f"counts tried: {', '.join(str(p['cameras']) for p in r['points'])}), against a decode ceiling of "
          f"{d['decode_only_ceiling_streams']} streams (decoding alone) or {d['worker_path_ceiling_streams']} (the worker's path).", ""]
    return L


def render_block(entries: dict[str, dict[str, Any]]) -> str:
    """The generated block of docs/benchmarks.md for the entries of the ``gpu_bench`` key (``cpu``, ``gpu``)."""
    L = [BLOCK_BEGIN, "", "## GPU server path (`scripts/gpu_bench.py`)", "",
         "N synthetic camera streams (1080p30 H.264 by default) decoded by CPU decoders in worker processes, frames "
         "batched across cameras, incumbent + shadow on ONNX Runtime; how many cameras one box sustains at 30 fps end "
         "to end, against the host's decode ceiling, and the models' time against torch eager. The numbers in this "
         "section come from `scripts/gpu_bench.py` (not from `shadowcam bench`, which measured the sections above); "
         "each subsection names the machine it ran on. Raw results: key `gpu_bench` of `benchmarks.json`.", ""]
    if "gpu" not in entries:
        L += ["**No GPU figures yet.** No device was lent to the session that wrote this section (issue 14), so the "
              "GPU path has not been measured; the script is ready, and `bash scripts/gpu_bench.sh` prints the "
              "one-shot sequence a session with a device runs (it carries the clips and onnxruntime-gpu there, runs "
              "`scripts/gpu_bench.py --gpu`, and brings back the JSON that renders the GPU subsection here).", ""]
    for mode in ("gpu", "cpu"):
        if mode in entries:
            L += _entry_md(entries[mode])
    L.append(BLOCK_END)
    return "\n".join(L) + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with its gpu_bench block replaced by ``block`` (appended after a blank line if it has none)."""
    start = text.find(BLOCK_BEGIN[: BLOCK_BEGIN.index(":")])
    end = text.find(BLOCK_END)
    if start >= 0 and end > start:
        return text[:start] + block + text[end + len(BLOCK_END):].lstrip("\n")
    return text.rstrip("\n") + "\n\n" + block if text.strip() else block


def write_docs(results: dict[str, Any] | None, doc: Path) -> None:
    """Put ``results`` under ``gpu_bench.<mode>`` of ``doc``'s JSON twin and re-render the block of ``doc`` from it."""
    doc_json = doc.with_suffix(".json")
    data = json.loads(doc_json.read_text()) if doc_json.is_file() else {}
    entries = data.setdefault(JSON_KEY, {})
    if results is not None:
        entries[results["mode"]] = results
    if not entries:
        raise ConfigError(f"{doc_json}: no {JSON_KEY!r} results to render; run the benchmark first")
    doc_json.parent.mkdir(parents=True, exist_ok=True)
    doc_json.write_text(json.dumps(data, indent=2, default=str) + "\n")
    doc.write_text(replace_block(doc.read_text() if doc.is_file() else "# Benchmarks\n", render_block(entries)))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--cpu", action="store_true", help="CPU provider (this machine); defaults for the 1..8 scaling curve")
    where.add_argument("--gpu", action="store_true", help="CUDA (and TensorRT) provider; the default where CUDA is available")
    p.add_argument("--cameras", help="camera counts to run, comma-separated (default: 1,2,3,4,6,8 on the CPU, "
                                     "16,32,40,48,56,64 on a GPU)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per camera count")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds per camera count before measuring")
    p.add_argument("--width", type=int, default=1920)
    p.add_argument("--height", type=int, default=1080)
    p.add_argument("--fps", type=float, default=30.0)
    p.add_argument("--clip-seconds", type=float, default=4.0, help="length of each synthetic clip (looped)")
    p.add_argument("--clips", type=int, default=0, help="distinct clips (0: min(cameras, 4)); cameras share them")
    p.add_argument("--bitrate-mbps", type=float, default=4.0)
    p.add_argument("--arch", help="torchvision classifier or 'tiny' (default resnet18)", default="resnet18")
    p.add_argument("--img-size", type=int, help="model input side (default: 224 on a GPU, 64 on the CPU)")
    p.add_argument("--batch-size", type=int, help="frames per batch across cameras (default: 64 on a GPU, 32 on the CPU)")
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--max-latency-ms", type=float, default=1000.0, help="p99 arrival-to-prediction latency to count as sustained")
    p.add_argument("--serial", action="store_true", help="run the shadow after the incumbent instead of concurrently")
    p.add_argument("--trt", choices=["auto", "off"], default="auto", help="TensorRT provider when its libraries load")
    p.add_argument("--no-torch", dest="torch", action="store_false", help="skip the torch eager comparison")
    p.add_argument("--ceiling-seconds", type=float, default=4.0)
    p.add_argument("--model-seconds", type=float, default=3.0)
    p.add_argument("--workdir", default=str(ROOT / "runs" / "gpu_bench"), help="models, TensorRT engine cache")
    p.add_argument("--streams-dir", default=str(ROOT / ".gpu" / "gpu_bench" / "streams"),
                   help="where the clips are written and reused from (.gpu/ is git-ignored; scripts/gpu_bench.sh carries "
                        "it to a GPU host)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--doc", default=str(ROOT / "docs" / "benchmarks.md"),
                   help="document whose gpu_bench block (and JSON twin's gpu_bench key) is updated")
    p.add_argument("--no-docs", action="store_true", help="leave the document alone")
    p.add_argument("--render-only", action="store_true", help="only re-render the block from the JSON twin's gpu_bench key")
    p.add_argument("--from-json", metavar="PATH", help="only put results measured elsewhere (a --json file, e.g. "
                                                     "brought back from a GPU host) into the document")
    p.add_argument("--generate-only", action="store_true", help="only write the clips (e.g. to carry them to a GPU host)")
    args = p.parse_args(argv)
    args.argv = argv
    if not args.cpu and not args.gpu and not (args.render_only or args.generate_only or args.from_json):
        try:
            import onnxruntime as ort

            cuda = "CUDAExecutionProvider" in ort.get_available_providers() and Path("/dev/nvidia0").exists()
        except ImportError:
            cuda = False
        args.gpu, args.cpu = cuda, not cuda
        if not cuda:
            say("no GPU here: running on the CPU (as --cpu)")
    gpu = bool(args.gpu)
    args.cameras = args.cameras or ("16,32,40,48,56,64" if gpu else "1,2,3,4,6,8")
    parse_cameras(args.cameras)
    args.img_size = args.img_size or (224 if gpu else 64)
    args.batch_size = args.batch_size or (64 if gpu else 32)
    for name in ("seconds", "fps", "clip_seconds", "bitrate_mbps", "max_wait_ms", "ceiling_seconds", "model_seconds"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive number")
    for name in ("width", "height", "img_size", "batch_size"):
        if getattr(args, name) < 1 or (name in ("width", "height") and getattr(args, name) % 2):
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)}: expected a positive (for the video, even) integer")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        if args.render_only:
            write_docs(None, Path(args.doc))
            say(f"re-rendered the gpu_bench block of {args.doc}")
            return 0
        if args.from_json:
            src = Path(args.from_json)
            try:
                results = json.loads(src.read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"--from-json {src}: not a readable JSON file ({e})") from None
            if not isinstance(results, dict) or results.get("mode") not in ("cpu", "gpu") or "points" not in results:
                raise ConfigError(f"--from-json {src}: not a gpu_bench results file (expected 'mode' cpu/gpu and 'points')")
            write_docs(results, Path(args.doc))
            say(f"put the {results['mode']} results of {src} into {args.doc} and its JSON twin")
            return 0
        if args.generate_only:
            spec = StreamSpec(args.width, args.height, args.fps, args.clip_seconds, args.bitrate_mbps,
                              args.clips or min(max(parse_cameras(args.cameras)), 4))
            s = make_streams(spec, Path(args.streams_dir))
            say(f"{len(s['paths'])} clip(s), {s['codec']}, {s['mbit_per_s']} Mbit/s: {', '.join(s['paths'])}")
            return 0
        results = run(args)
    except ConfigError as e:
        print(f"gpu_bench: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2, default=str) + "\n"
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    if not args.no_docs:
        write_docs(results, Path(args.doc))
        say(f"wrote the gpu_bench block of {args.doc} and key {JSON_KEY}.{results['mode']} of {Path(args.doc).with_suffix('.json')}")
    say(f"streams sustained at {args.fps:g} fps: {results['streams_sustained']}; decode ceiling "
        f"{results['decode_ceiling']['decode_only_ceiling_streams']} streams; took {results['bench_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
