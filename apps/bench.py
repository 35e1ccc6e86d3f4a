"""``shadowcam bench``: the first benchmark, measured on the machine it runs on, written to ``docs/benchmarks.md``.

Every number in the document is measured by :func:`run_bench`; none is typed. What is measured, in order:

1. **raw ONNX Runtime bound**: both exported models (incumbent then shadow, one after the other) on frames
   decoded and resized beforehand, in batches of the pipeline's batch size, each model in a plain
   ``onnxruntime.InferenceSession`` with default options. Nothing else runs, so this is the most frames/s
   this machine can push through both models with ONNX Runtime.
2. **naive loop**: what a team writes first - ``cv2.VideoCapture.read``, per-frame torchvision-style
   preprocessing (PIL image, ``Resize``, ``ToTensor``, ``Normalize``), then the incumbent and the shadow as
   PyTorch eager modules (the same weights as the ONNX files), batch size 1, predictions kept in a list.
3. **end-to-end**: the real :class:`pipeline.runner.Runner` (what ``shadowcam run`` runs) on the generated
   640x480 video: reader thread, batcher, incumbent + shadow pair, store writer with SQLite, per-frame image
   statistics and label sampling at its default rate. Frames/s = frames served / wall time from the readers'
   start until the store is flushed and closed; the shadow's coverage is reported, and the ratios use the
   frames that got *both* predictions per second.
4. **latency**: incumbent latency from frame read (the reader queued it) to served prediction (the pair
   returned it), per frame, with and without the shadow, with the video paced (``max_fps``) at a share
   (default half) of the end-to-end rate measured in 3. Runs alternate (without, with, without, with, ...)
   so that drift of the machine hits both alike; the first 5% of each run is discarded as warm-up.
5. **shadow isolation** (from ``scripts/bench_shadow_isolation.py``): serving throughput of the shadow pair on
   in-memory batches with no shadow and with a shadow that sleeps 1 s per batch.

The models are torchvision classifiers of ``arch`` at ``img_size``, randomly initialised (seeded; the
incumbent and the shadow get different weights) and exported through :func:`models.export.export_onnx`
(verified, uint8 NHWC input). Throughput does not depend on the weights.

The three comparisons (targets from issue 5): end-to-end >= 2x the naive loop, >= 80% of the raw bound,
and the shadow costs the incumbent's p99 latency <= 10%.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torchvision import transforms

from apps.config import BenchConfig
from models.export import IMAGENET_MEAN, IMAGENET_STD, ImageClassifier, build_backbone, export_onnx
from models.synthetic import CLASS_NAMES, write_stream
from pipeline.batching import resize_into
from pipeline.config import ShadowConfig, load_config
from pipeline.modelcard import ModelCard
from pipeline.runner import Runner
from pipeline.runtime import OnnxClassifier, usable_cores
from pipeline.shadow import ShadowPair
from pipeline.types import ConfigError, Frame, FrameBatch, Role

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"naive_speedup": 2.0, "bound_share": 0.80, "p99_ratio": 1.10}
WARMUP_SHARE = 0.05  # of each latency run, discarded
OTHER_LOAD_WARN = 0.05  # the report warns when other processes used more than this share of the CPU
VIDEO_FPS = 30.0  # the generated video's nominal frame rate (its own clock; reading is not paced by it)


# --- the machine -----------------------------------------------------------------------------------------------------

def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """A description of this machine and the software versions the numbers depend on."""

    cpu = re.search(r"^model name\s*:\s*(.+)$", _read("/proc/cpuinfo"), re.M)
    mem = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.M)
    osr = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.M)

    usable = usable_cores()
    commit = _git("rev-parse", "--short=12", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    return {
        "cpu": cpu.group(1).strip() if cpu else platform.processor() or "unknown",
        "cores": os.cpu_count() or 0,
        "cores_usable": usable,
        "ram_gib": round(int(mem.group(1)) / 1024**2, 1) if mem else None,
        "os": f"{osr.group(1) if osr else platform.system()} (kernel {platform.release()})",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "ort_providers_available": list(ort.get_available_providers()),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": (commit + (" (with uncommitted changes)" if dirty else "")) if commit else "unknown",
    }


def load_average() -> tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3  # type: ignore[return-value]


class OtherLoad:
    """Share of the machine's CPU time used by *other* processes while the block ran (Linux ``/proc/stat``).

    ``with OtherLoad() as o: ...`` then ``o.share``: (busy CPU time of the whole machine - this process's CPU
    time) / (wall time x cores), in [0, 1]; None where ``/proc/stat`` is unreadable. A quiet machine gives ~0.
    """

    def __init__(self) -> None:
        self.share: float | None = None

    @staticmethod
    def _busy_s() -> float | None:
        line = _read("/proc/stat").split("\n", 1)[0].split()
        if not line or line[0] != "cpu":
            return None
        v = [int(x) for x in line[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
        return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user nice system idle iowait irq softirq steal

    def __enter__(self) -> "OtherLoad":
        self._t0 = time.perf_counter()
        self._busy0 = self._busy_s()
        t = os.times()
        self._own0 = t.user + t.system
        return self

    def __exit__(self, *exc: Any) -> None:
        busy1 = self._busy_s()
        if self._busy0 is None or busy1 is None:
            return
        t = os.times()
        own = t.user + t.system - self._own0
        wall = time.perf_counter() - self._t0
        cores = max(1, os.cpu_count() or 1)
        self.share = min(1.0, max(0.0, (busy1 - self._busy0 - own) / (wall * cores))) if wall > 0 else None


# --- inputs: models and video --------------------------------------------------------------------------------------

@dataclass
class BenchModels:
    incumbent_path: Path
    shadow_path: Path
    incumbent: Any  # models.export.ImageClassifier (torch), same weights as the ONNX file
    shadow: Any
    class_names: list[str]
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_abs_diff: float
    providers: list[str] = field(default_factory=list)  # what ONNX Runtime really uses here (probed once)
    threads: int | None = None  # intra-op threads the pipeline's sessions use by default here (None: ORT's default)


def _class_names() -> list[str]:
    try:

        return list(CLASS_NAMES)
    except Exception:  # the synthetic module is optional for the benchmark
        return ["empty_belt", "parcel_ok", "parcel_damaged", "parcel_open_flap", "label_missing", "foreign_object"]


def prepare_models(cfg: BenchConfig) -> BenchModels:
    """Two randomly initialised torchvision classifiers (seeds 1 and 2) exported to verified ONNX in the work dir."""


    names = _class_names()
    out = cfg.workdir / "models"
    paths, mods, diffs = [], [], []
    for role, seed in (("incumbent", 1), ("shadow", 2)):
        torch.manual_seed(cfg.seed * 100 + seed)
        model = ImageClassifier(build_backbone(cfg.arch, len(names))).eval()
        card = ModelCard(class_names=names, input_size=[cfg.img_size, cfg.img_size], arch=cfg.arch,
                         name=f"bench-{role}", version=f"{cfg.arch}-{cfg.img_size}-s{seed}")
        rep = export_onnx(model, card, out / f"{role}_{cfg.arch}_{cfg.img_size}.onnx", seed=cfg.seed)
        paths.append(rep.path)
        mods.append(model)
        diffs.append(max(rep.max_abs_diff_probs, rep.max_abs_diff_logits))
    # the providers ONNX Runtime really starts here from the default choice (TensorRT -> CUDA -> CPU as installed);
    # every measurement then asks for exactly these, so they all run on the same ones

    probe = OnnxClassifier(paths[0], warmup_runs=0)
    providers, threads = list(probe.providers), probe.threads
    del probe
    return BenchModels(paths[0], paths[1], mods[0], mods[1], names, (cfg.img_size, cfg.img_size),
                       tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), max(diffs), providers, threads)


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    try:
        while cap.grab():
            n += 1
    finally:
        cap.release()
    return n


def _draw_conveyor(n_frames: int, path: Path, size: tuple[int, int], seed: int) -> None:
    """Fallback when :mod:`models.synthetic` is unavailable: boxes riding a striped belt, drawn with OpenCV."""
    h, w = size
    rng = np.random.default_rng(seed)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, (w, h))
    if not vw.isOpened():
        raise OSError(f"cv2.VideoWriter cannot open {path} (mp4v codec unavailable?)")
    boxes = [(int(rng.integers(0, w)), int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(40, 120)),
              tuple(int(c) for c in rng.integers(60, 220, 3))) for _ in range(4)]
    try:
        for i in range(n_frames):
            img = np.full((h, w, 3), 70, np.uint8)
            for x in range(-(i * 6) % 40, w, 40):
                cv2.line(img, (x, 0), (x, h), (55, 55, 55), 2)
            for bx, by, s, c in boxes:
                x = (bx + i * 6) % (w + s) - s
                cv2.rectangle(img, (x, by - s // 2), (x + s, by + s // 2), c, -1)
            img = cv2.add(img, rng.integers(0, 8, img.shape, dtype=np.uint8))
            vw.write(img)
    finally:
        vw.release()


def prepare_video(cfg: BenchConfig, progress: bool = True) -> tuple[Path, str]:
    """The 640x480 conveyor video (generated once per size/seed, then reused). Returns (path, how it was made)."""
    h, w = cfg.video_size
    path = (cfg.workdir / f"conveyor_{w}x{h}_{cfg.frames}f_s{cfg.seed}.mp4").absolute()
    how = "models.synthetic.write_stream (warehouse conveyor scene, mp4v)"
    marker = path.with_suffix(".how")
    if path.is_file() and _count_frames(path) == cfg.frames:
        return path, marker.read_text().strip() if marker.is_file() else how
    path.parent.mkdir(parents=True, exist_ok=True)
    try:

        write_stream(path, cfg.frames, seed=cfg.seed, size=(h, w), fps=VIDEO_FPS, progress=progress)
    except Exception as e:  # the scene generator is optional here: any 640x480 video measures the same work
        log.warning("synthetic stream unavailable (%s: %s); drawing a simple conveyor with OpenCV", type(e).__name__, e)
        how = "OpenCV-drawn conveyor (boxes on a striped belt, mp4v)"
        _draw_conveyor(cfg.frames, path, (h, w), cfg.seed)
    n = _count_frames(path)
    if n != cfg.frames:
        raise OSError(f"{path}: wrote {cfg.frames} frames but {n} decode back")
    marker.write_text(how + "\n")
    return path, how


def decode_resized(video: Path, n: int, size: tuple[int, int], to_rgb: bool = True) -> np.ndarray:
    """The first ``n`` frames of ``video``, resized to ``size`` (h, w) as the batcher does (INTER_AREA): uint8 NHWC."""

    h, w = size
    out = np.empty((n, h, w, 3), np.uint8)
    cap = cv2.VideoCapture(str(video))
    try:
        for i in range(n):
            ok, img = cap.read()
            if not ok:
                raise OSError(f"{video}: only {i} frames decodable, {n} needed")
            resize_into(img, out[i], cv2.INTER_AREA)  # as the batcher does
    finally:
        cap.release()
    return np.ascontiguousarray(out[..., ::-1]) if to_rgb else out


# --- measurements --------------------------------------------------------------------------------------------------

RAW_LAYOUTS = {
    # name: (intra-op threads per session, concurrent) - how both models may share the cores
    "serial, ORT default threads": (0, False),  # incumbent then shadow, each on ONNX Runtime's default thread pool
    "serial, 1 thread each": (1, False),
    "concurrent, 1 thread each": (1, True),  # one Python thread per model, both running at once
}


def measure_raw_ort(inc_path: Path, sh_path: Path, images: np.ndarray, batch_size: int, min_seconds: float,
                    providers: list[str]) -> dict[str, Any]:
    """Frames/s of both models (incumbent then shadow) on pre-decoded, pre-resized batches: the bound.

    ONNX Runtime is measured in each of :data:`RAW_LAYOUTS` (which one is fastest depends on the machine:
    on two cores one thread per model, both at once, avoids the thread pool's synchronisation), and the bound
    is the fastest. Each model's frames/s counts frames that *both* models processed.
    """

    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]

    def sessions(threads: int) -> list[Any]:
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        out = [ort.InferenceSession(str(p), sess_options=so, providers=providers) for p in (inc_path, sh_path)]
        for s in out:  # warm-up
            s.run(["probs"], {"image": batches[0]})
        return out

    def serial(models: list[Any]) -> tuple[float, int]:
        n = passes = 0
        t0 = time.perf_counter()
        while True:
            for b in batches:
                for s in models:
                    s.run(["probs"], {"image": b})
                n += len(b)
            passes += 1
            if time.perf_counter() - t0 >= min_seconds:
                return n / (time.perf_counter() - t0), passes

    def concurrent(models: list[Any]) -> tuple[float, int]:
        done = [0] * len(models)
        passes = [0] * len(models)
        t0 = time.perf_counter()

        def work(i: int) -> None:
            while True:
                for b in batches:
                    models[i].run(["probs"], {"image": b})
                    done[i] += len(b)
                passes[i] += 1
                if time.perf_counter() - t0 >= min_seconds:
                    return

        threads = [threading.Thread(target=work, args=(i,), name=f"raw-{i}") for i in range(len(models))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return min(done) / (time.perf_counter() - t0), min(passes)

    layouts: dict[str, float] = {}
    passes = 0
    inc_only = 0.0
    used: list[str] = []
    for name, (threads, conc) in RAW_LAYOUTS.items():
        ss = sessions(threads)
        used = list(ss[0].get_providers())
        fps, p = (concurrent if conc else serial)(ss)
        layouts[name] = fps
        if name == "serial, ORT default threads":
            inc_only, _ = serial(ss[:1])
            passes = p
        del ss
        gc.collect()
    best = max(layouts, key=layouts.__getitem__)
    return {"fps_both": layouts[best], "layout": best, "layouts": layouts, "fps_incumbent_only": inc_only,
            "passes": passes, "batch_size": batch_size, "providers": used}


def measure_naive(video: Path, models: BenchModels, n_frames: int) -> dict[str, Any]:
    """The loop a team writes first: cv2 read, torchvision transforms on a PIL image, torch eager, batch size 1."""

    h, w = models.input_size
    tf = transforms.Compose([
        transforms.Resize((h, w)),
        transforms.ToTensor(),
        transforms.Normalize(mean=models.mean, std=models.std),
    ])
    # the team's models: the torchvision backbones with the very weights that were exported
    incumbent = models.incumbent.backbone.eval()
    shadow = models.shadow.backbone.eval()
    with torch.no_grad():  # warm-up (first-call allocations), not timed
        x = torch.zeros(1, 3, h, w)
        incumbent(x), shadow(x)
    results: list[tuple[int, int]] = []
    cap = cv2.VideoCapture(str(video))
    t0 = time.perf_counter()
    with torch.no_grad():
        while len(results) < n_frames:
            ok, frame = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            x = tf(Image.fromarray(rgb)).unsqueeze(0)
            p_inc = torch.softmax(incumbent(x), dim=1)
            p_sh = torch.softmax(shadow(x), dim=1)
            results.append((int(p_inc.argmax()), int(p_sh.argmax())))
    dt = time.perf_counter() - t0
    cap.release()
    if len(results) < n_frames:
        raise OSError(f"{video}: naive loop read {len(results)} frames, expected {n_frames}")
    return {"fps": len(results) / dt, "frames": len(results), "seconds": dt, "torch_threads": torch.get_num_threads()}


def _run_config(cfg: BenchConfig, video: Path, models: BenchModels, db: Path, shadow: bool,
                max_fps: float | None = None, max_frames: int | None = None):
    """The RunConfig of ``shadowcam run --source VIDEO --incumbent INC [--shadow SH] --providers P --batch-size B``."""

    source: dict[str, Any] = {"uri": str(video), "id": "bench"}
    if max_fps is not None:
        source["max_fps"] = float(max_fps)
    overrides: dict[str, Any] = {
        "sources": [source],
        "incumbent": {"uri": str(models.incumbent_path), "providers": models.providers},
        "batching.batch_size": cfg.batch_size,
        "store.url": str(db),
        "workdir": str(cfg.workdir),
        "max_frames": max_frames,
    }
    if shadow:
        overrides["shadow"] = {"uri": str(models.shadow_path), "providers": models.providers}
    return load_config(None, overrides)


def _fresh_db(path: Path) -> Path:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return path


def measure_end_to_end(cfg: BenchConfig, video: Path, models: BenchModels) -> dict[str, Any]:
    """The real Runner, incumbent + shadow, store and sampling on, reading the whole video as fast as it can."""

    db = _fresh_db(cfg.workdir / "bench_e2e.db")
    run_cfg = _run_config(cfg, video, models, db, shadow=True)
    summary = Runner(run_cfg, install_signal_handlers=False).run()
    wall = time.time() - summary.started_at  # readers' start -> store flushed and closed
    served = summary.frames_served
    cov = float(summary.shadow.get("coverage", 0.0))
    st = summary.store
    return {
        "fps": served / wall,
        "fps_both": served * cov / wall,  # frames that got both predictions, per second
        "runner_reported_fps": summary.throughput_fps,
        "frames": served,
        "seconds": wall,
        "coverage": cov,
        "frames_shed": summary.shadow.get("frames_shed", 0),
        "backpressure": "on" if (summary.shadow.get("backpressure") or {}).get("enabled") else "off",
        "shadow_batches_background": summary.shadow.get("batches_background", 0),
        "shadow_batches_catch_up": summary.shadow.get("batches_catch_up", 0),
        "shadow_catch_up": summary.shadow.get("catch_up"),
        "intra_op_threads": [summary.incumbent.get("intra_op_threads"), summary.shadow.get("intra_op_threads")],
        "predictions_committed": st.get("predictions_committed", 0),
        "samples_committed": st.get("samples_committed", 0),
        "stats_skipped": st.get("stats_skipped", 0),
        "write_errors": st.get("write_errors", 0),
        "providers_incumbent": summary.incumbent.get("providers", []),
        "providers_shadow": summary.shadow.get("providers", []),
        "batch_latency_ms": summary.incumbent.get("latency_ms", {}),
        "sampling_rate": run_cfg.sampling.rate,
        "sampling_strategy": run_cfg.sampling.strategy,
    }


class _ReadStamps:
    """A reader "waker": the reader calls ``set()`` right after queueing each frame (and once when it ends),
    so the k-th call is the moment frame ``seq == k`` was read."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def set(self) -> None:
        self.times.append(time.perf_counter())


def _latency_run(cfg: BenchConfig, video: Path, models: BenchModels, shadow: bool, rate: float, tag: str) -> dict[str, Any]:

    stamps = _ReadStamps()
    served_at: dict[int, float] = {}

    def on_readers(readers: list[Any]) -> None:
        if len(readers) != 1:
            raise ConfigError("latency measurement expects exactly one source")
        readers[0].add_waker(stamps)

    def on_batch(served: Any) -> None:
        t = time.perf_counter()
        for f in served.batch.frames:
            served_at[f.seq] = t

    db = _fresh_db(cfg.workdir / f"bench_latency_{tag}.db")
    run_cfg = _run_config(cfg, video, models, db, shadow=shadow, max_fps=rate, max_frames=cfg.latency_frames)
    summary = Runner(run_cfg, on_batch=on_batch, on_readers=on_readers, install_signal_handlers=False).run()
    skip = int(len(served_at) * WARMUP_SHARE)
    lat = [(served_at[s] - stamps.times[s]) * 1000.0 for s in sorted(served_at) if s >= skip and s < len(stamps.times)]
    return {"latencies_ms": lat, "coverage": float(summary.shadow.get("coverage", 0.0)) if shadow else None,
            "frames": summary.frames_served, "fps": summary.throughput_fps,
            "lanes": (summary.shadow.get("batches_background", 0), summary.shadow.get("batches_catch_up", 0)) if shadow else None,
            "catch_up": summary.shadow.get("catch_up") if shadow else None,
            "threads": [summary.incumbent.get("intra_op_threads"), summary.shadow.get("intra_op_threads") if shadow else None],
            "inference_ms": summary.incumbent.get("latency_ms", {})}


def measure_latency(cfg: BenchConfig, video: Path, models: BenchModels, rate: float) -> dict[str, Any]:
    """Incumbent read->served latency per frame, without and with the shadow, paced at ``rate`` frames/s."""
    runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
    for rep in range(cfg.latency_repeats):
        for variant in ("without", "with"):
            runs[variant].append(_latency_run(cfg, video, models, variant == "with", rate, f"{variant}_{rep}"))
    out: dict[str, Any] = {"rate_fps": rate, "repeats": cfg.latency_repeats}
    for variant, rs in runs.items():
        lat = np.concatenate([np.asarray(r["latencies_ms"]) for r in rs])
        out[variant] = {
            "p50_ms": float(np.percentile(lat, 50)),
            "p90_ms": float(np.percentile(lat, 90)),
            "p99_ms": float(np.percentile(lat, 99)),
            "mean_ms": float(lat.mean()),
            "max_ms": float(lat.max()),
            "frames": int(lat.size),
            "served_fps": statistics.median(r["fps"] for r in rs),
            "coverage": statistics.median(r["coverage"] for r in rs) if variant == "with" else None,
            "shadow_batches_background": sum(r["lanes"][0] for r in rs) if variant == "with" else None,
            "shadow_batches_catch_up": sum(r["lanes"][1] for r in rs) if variant == "with" else None,
            "shadow_catch_up": rs[0]["catch_up"],
            "intra_op_threads": rs[0]["threads"],
            "p99_per_run_ms": [float(np.percentile(r["latencies_ms"], 99)) for r in rs],
            # the pair's own incumbent time per batch (inference and fallback chain only; no waiting for frames)
            "inference_p50_ms": statistics.median(r["inference_ms"].get("p50") or 0.0 for r in rs),
            "inference_p99_ms": statistics.median(r["inference_ms"].get("p99") or 0.0 for r in rs),
        }
    return out


def measure_isolation(models: BenchModels, images: np.ndarray, batch_size: int, seconds: float, sleep_s: float) -> dict[str, Any]:
    """Serving frames/s of the shadow pair on in-memory batches: no shadow vs a shadow sleeping ``sleep_s`` per batch."""

    class SleepyShadow(OnnxClassifier):
        def predict(self, batch: Any, run_options: Any = None) -> np.ndarray:
            time.sleep(sleep_s)
            return super().predict(batch, run_options)

    bgr = np.ascontiguousarray(images[..., ::-1])
    batches = []
    for b, i in enumerate(range(0, len(bgr) - batch_size + 1, batch_size)):
        imgs = bgr[i:i + batch_size]
        frames = tuple(Frame("bench", i + k, float(i + k), imgs[k]) for k in range(batch_size))
        batches.append(FrameBatch(frames=frames, images=imgs))
    if not batches:
        raise ConfigError(f"isolation benchmark needs at least one full batch of {batch_size} frames")
    inc = OnnxClassifier(models.incumbent_path, providers=models.providers, warmup_batch_size=batch_size)
    variants = {"none": None,
                "sleeping": SleepyShadow(models.shadow_path, role=Role.SHADOW, providers=models.providers, warmup_runs=0)}
    res: dict[str, Any] = {"sleep_s": sleep_s}
    for name, sh in variants.items():
        pair = ShadowPair(inc, sh, ShadowConfig(timeout_s=max(5.0, 2 * sleep_s)), cpu_twin=False).start()
        n = 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for b in batches:
                pair.infer(b)
                n += len(b)
        dt = time.perf_counter() - t0
        st = pair.stats()
        pair.close(drain=False, timeout=0.5)
        res[name] = {"fps": n / dt, "coverage": st["shadow"]["coverage"]}
    res["ratio"] = res["sleeping"]["fps"] / res["none"]["fps"]
    return res


# --- the whole benchmark -------------------------------------------------------------------------------------------

def measure_size(cfg: BenchConfig, video: Path, size: int) -> dict[str, Any]:
    """Raw bound and end-to-end throughput with both models at ``size`` x ``size`` (same arch, video, repeats)."""

    scfg = cfg.model_copy(update={"img_size": size})
    models = prepare_models(scfg)
    images = decode_resized(video, cfg.frames, models.input_size, to_rgb=True)
    raws, e2es = [], []
    for _ in range(cfg.repeats):
        raws.append(measure_raw_ort(models.incumbent_path, models.shadow_path, images, cfg.batch_size, cfg.min_seconds,
                                    models.providers))
        gc.collect()
        e2es.append(measure_end_to_end(scfg, video, models))
    raw = max(raws, key=lambda r: r["fps_both"])
    e2e = max(e2es, key=lambda r: r["fps_both"])
    return {"img_size": size, "raw_fps_both": raw["fps_both"], "raw_layout": raw["layout"], "e2e_fps_both": e2e["fps_both"],
            "coverage": e2e["coverage"], "bound_share": e2e["fps_both"] / raw["fps_both"],
            "runs": {"raw_fps_both": [r["fps_both"] for r in raws], "e2e_fps_both": [r["fps_both"] for r in e2es]}}


def run_bench(cfg: BenchConfig, progress: bool = True) -> dict[str, Any]:
    """Measure everything (see the module docstring), write the markdown to ``cfg.out``, return the results."""
    # absolute, so the runs' stores are not placed relative to their own work dir a second time
    cfg = cfg.model_copy(update={"workdir": cfg.workdir.resolve()})
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    say = (lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True)) if progress else (lambda m: None)  # noqa: E731
    t_start = time.perf_counter()
    other_all = OtherLoad().__enter__()
    load_before = load_average()
    say(f"load average before: {load_before}")
    say(f"exporting {cfg.arch} at {cfg.img_size}x{cfg.img_size} (incumbent and shadow)")
    models = prepare_models(cfg)
    say(f"generating the {cfg.video_size[1]}x{cfg.video_size[0]} video ({cfg.frames} frames)")
    video, video_how = prepare_video(cfg, progress=progress)
    images = decode_resized(video, cfg.frames, models.input_size, to_rgb=True)

    # rounds of (raw bound, naive loop, end-to-end), alternating so that a change in the machine's load hits all
    # three alike; the best run of each is reported (the one least disturbed), all runs are kept in the results
    runs: dict[str, list[dict[str, Any]]] = {"raw": [], "naive": [], "e2e": []}
    for k in range(cfg.repeats):
        tag = f" (round {k + 1}/{cfg.repeats})" if cfg.repeats > 1 else ""
        say(f"raw ONNX Runtime bound{tag}")
        with OtherLoad() as other:
            runs["raw"].append(measure_raw_ort(models.incumbent_path, models.shadow_path, images, cfg.batch_size,
                                               cfg.min_seconds, models.providers))
        runs["raw"][-1]["other_load"] = other.share
        say(f"  {runs['raw'][-1]['fps_both']:.1f} frames/s (both models)")
        say(f"naive loop (cv2 + torchvision transforms + torch eager, batch 1){tag}")
        with OtherLoad() as other:
            runs["naive"].append(measure_naive(video, models, cfg.frames))
        runs["naive"][-1]["other_load"] = other.share
        say(f"  {runs['naive'][-1]['fps']:.1f} frames/s")
        gc.collect()
        say(f"end-to-end: shadowcam run (Runner), incumbent + shadow, store + sampling{tag}")
        with OtherLoad() as other:
            runs["e2e"].append(measure_end_to_end(cfg, video, models))
        runs["e2e"][-1]["other_load"] = other.share
        say(f"  {runs['e2e'][-1]['fps']:.1f} frames/s served, shadow coverage {runs['e2e'][-1]['coverage']:.3f}")
    raw = max(runs["raw"], key=lambda r: r["fps_both"])
    naive = max(runs["naive"], key=lambda r: r["fps"])
    e2e = max(runs["e2e"], key=lambda r: r["fps_both"])
    rate = max(1.0, round(cfg.latency_rate_share * e2e["fps_both"], 1))
    say(f"latency at {rate:g} frames/s, without and with the shadow ({cfg.latency_repeats} runs each)")
    with OtherLoad() as other:
        lat = measure_latency(cfg, video, models, rate)
    lat["other_load"] = other.share
    say(f"  p99 {lat['without']['p99_ms']:.1f} ms without, {lat['with']['p99_ms']:.1f} ms with")
    say("shadow isolation (sleeping shadow)")
    iso = measure_isolation(models, images, cfg.batch_size, cfg.isolation_seconds, cfg.isolation_sleep_s)
    sizes = []
    for size in cfg.other_sizes:
        if size == cfg.img_size:
            continue
        say(f"model size {size}x{size}: raw bound and end-to-end ({cfg.repeats} alternating rounds)")
        sizes.append(measure_size(cfg, video, size))
        say(f"  raw {sizes[-1]['raw_fps_both']:.1f}, end-to-end {sizes[-1]['e2e_fps_both']:.1f} frames/s "
            f"({sizes[-1]['bound_share'] * 100:.1f}%)")
    load_after = load_average()
    other_all.__exit__(None, None, None)

    ratios = {
        "naive_speedup": e2e["fps_both"] / naive["fps"],
        "bound_share": e2e["fps_both"] / raw["fps_both"],
        "p99_ratio": lat["with"]["p99_ms"] / lat["without"]["p99_ms"],
    }
    results = {
        "config": cfg.model_dump(mode="json"),
        "machine": machine_info(),
        "load_before": load_before,
        "load_after": load_after,
        "other_load": other_all.share,
        "models": {"arch": cfg.arch, "img_size": cfg.img_size, "classes": len(models.class_names),
                   "incumbent": models.incumbent_path.name, "shadow": models.shadow_path.name,
                   "onnx_mb": round(models.incumbent_path.stat().st_size / 1e6, 1),
                   "export_max_abs_diff": models.max_abs_diff, "threads": models.threads},
        "video": {"path": str(video), "frames": cfg.frames, "width": cfg.video_size[1], "height": cfg.video_size[0],
                  "how": video_how, "mb": round(video.stat().st_size / 1e6, 1)},
        "raw": raw,
        "naive": naive,
        "e2e": e2e,
        "latency": {k: ({kk: vv for kk, vv in v.items()} if isinstance(v, dict) else v) for k, v in lat.items()},
        "isolation": iso,
        "sizes": sizes,
        "runs": {"raw_fps_both": [r["fps_both"] for r in runs["raw"]], "naive_fps": [r["fps"] for r in runs["naive"]],
                 "e2e_fps_both": [r["fps_both"] for r in runs["e2e"]],
                 "other_load": {k: [r["other_load"] for r in v] for k, v in runs.items()}},
        "ratios": ratios,
        "pass": {"naive_speedup": ratios["naive_speedup"] >= TARGETS["naive_speedup"],
                 "bound_share": ratios["bound_share"] >= TARGETS["bound_share"],
                 "p99_ratio": ratios["p99_ratio"] <= TARGETS["p99_ratio"]},
        "bench_seconds": time.perf_counter() - t_start,
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    kept_md, kept_json = _kept_sections(cfg.out)
    cfg.out.write_text(render_markdown(results) + kept_md)
    raw_json = json.dumps(results, indent=2, default=str) + "\n"
    (cfg.workdir / "bench_results.json").write_text(raw_json)
    # committed beside the document it was rendered from (with the other scripts' keys it already held)
    cfg.out.with_suffix(".json").write_text(json.dumps({**results, **kept_json}, indent=2, default=str) + "\n")
    say(f"wrote {cfg.out} (and {cfg.workdir / 'bench_results.json'}) in {results['bench_seconds']:.0f} s")
    return results


# --- the document --------------------------------------------------------------------------------------------------

def _f(v: float, nd: int = 1) -> str:
    return f"{v:.{nd}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _pending() -> int:

    return ShadowConfig().max_pending_batches


# Sections other scripts generate into the same document (scripts/gpu_bench.py): a bench run keeps them.
KEPT_SECTIONS = ("gpu_bench",)


def _kept_sections(out: Path) -> tuple[str, dict[str, Any]]:
    """The generated blocks (``<!-- BEGIN name ... -->`` .. ``<!-- END name -->``) and JSON keys of
    :data:`KEPT_SECTIONS` already in ``out`` and its ``.json``, to write back after this bench's own text."""
    md, js = "", {}
    if out.exists():
        text = out.read_text()
        for name in KEPT_SECTIONS:
            m = re.search(rf"<!-- BEGIN {name}\b.*?<!-- END {name} -->\n?", text, flags=re.S)
            if m:
                md += "\n" + m.group(0)
    if out.with_suffix(".json").exists():
        try:
            old = json.loads(out.with_suffix(".json").read_text())
        except ValueError:
            old = {}
        js = {k: old[k] for k in KEPT_SECTIONS if isinstance(old, dict) and k in old}
    return md, js


def render_markdown(r: dict[str, Any]) -> str:
    """The benchmark document. Every number comes from ``r`` (the measurements)."""
    m, c, raw, naive, e2e, lat, iso = r["machine"], r["config"], r["raw"], r["naive"], r["e2e"], r["latency"], r["isolation"]
    ra, ok = r["ratios"], r["pass"]
    verdict = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    runs = r["runs"]
    best = lambda xs: "" if len(xs) < 2 else f"; best of {len(xs)} alternating runs: {', '.join(_f(x) for x in xs)}"  # noqa: E731

    def other(xs: list[float | None]) -> str:
        if not xs or any(x is None for x in xs):
            return ""
        return f"; other processes used {', '.join(f'{x * 100:.0f}%' for x in xs)} of the CPU during the run(s)"

    L: list[str] = [
        "# Benchmarks",
        "",
        "<!-- generated by `shadowcam bench`; do not edit by hand - rerun the command -->",
        "",
        f"Generated by `{c['command'] or 'shadowcam bench'}` on {m['date']} at commit `{m['git_commit']}`"
        + (" (**--quick**: tiny sizes, numbers not meaningful)" if c["quick"] else "") + ".",
        "Every number below was measured by that command on the machine described here; none is typed.",
        "",
        *([f"**Warning:** other processes used {r['other_load'] * 100:.0f}% of the CPU during the benchmark: they shared "
           f"the cores, so the numbers are less reliable.", ""] if (r.get("other_load") or 0.0) > OTHER_LOAD_WARN else []),
        "## Machine",
        "",
        *_table(["item", "value"], [
            ["CPU", m["cpu"]],
            ["cores (usable)", f"{m['cores']} ({m['cores_usable']})"],
            ["RAM (GiB)", str(m["ram_gib"])],
            ["OS", m["os"]],
            ["Python", m["python"]],
            ["onnxruntime", f"{m['onnxruntime']} (available providers: {', '.join(m['ort_providers_available'])})"],
            ["providers used", f"incumbent {', '.join(e2e['providers_incumbent'])}; shadow {', '.join(e2e['providers_shadow'])}; "
                               f"raw bound {', '.join(raw['providers'])} (ONNX Runtime's choice from TensorRT, CUDA, CPU "
                               f"as installed, probed once, then asked for by every measurement)"],
            ["torch", f"{m['torch']} ({m['torch_threads']} threads)"],
            ["opencv", m["opencv"]],
            ["numpy", m["numpy"]],
            ["load average before (1/5/15 min; counts this benchmark's own threads too)", " / ".join(_f(x, 2) for x in r["load_before"])],
            ["load average after (1/5/15 min)", " / ".join(_f(x, 2) for x in r["load_after"])],
            ["CPU used by other processes during the benchmark",
             "-" if r.get("other_load") is None else f"{r['other_load'] * 100:.1f}% of the cores"],
        ]),
        "## Setup",
        "",
        f"* Models: incumbent and shadow are both torchvision `{c['arch']}` at {c['img_size']}x{c['img_size']}, "
        f"{r['models']['classes']} classes, randomly initialised with different seeds (throughput does not depend on the "
        f"weights), exported by `models.export.export_onnx` (verified: max |ONNX Runtime - torch| = "
        f"{r['models']['export_max_abs_diff']:.1e}; uint8 NHWC input, preprocessing in the graph; "
        f"{r['models']['onnx_mb']} MB each).",
        f"* Video: {r['video']['frames']} frames of {r['video']['width']}x{r['video']['height']}, {r['video']['how']}, "
        f"{r['video']['mb']} MB. The raw bound, the naive loop and the end-to-end run all process all of these frames.",
        f"* Pipeline config: defaults of `shadowcam run` (batch size {c['batch_size']}, max wait 20 ms, shadow rate 1.0, "
        f"SQLite store, per-frame image statistics, {e2e['sampling_strategy']} label sampling at {e2e['sampling_rate']:g}). "
        f"ONNX Runtime intra-op threads, incumbent / shadow: {' / '.join(str(x) for x in e2e['intra_op_threads'])} in the "
        f"replay (throughput) runs, {' / '.join(str(x) for x in lat['with']['intra_op_threads'])} in the real-time "
        f"(latency) runs (the runner's CPU defaults: half the cores per model for a replay, all cores for the incumbent "
        f"in real time). On the CPU the shadow runs "
        f"on a lowest-priority background lane; when it falls behind, a replay of files at full speed (the throughput "
        f"runs) lets it catch up at normal priority, and with `shadow_mode.backpressure: auto` ("
        f"{e2e.get('backpressure', 'on')} in these runs) the replay waits for it when its queue of {_pending()} batches "
        f"is full instead of shedding (the coverage below), while a real-time source (a camera, "
        f"or a file paced with max_fps: the latency runs) sheds its batches instead, so it never takes CPU from the "
        f"incumbent (`pipeline/shadow.py`, \"CPU priority\").",
        "",
        "## Throughput",
        "",
        *_table(["measurement", "frames/s", "what it includes"], [
            ["end-to-end `shadowcam run` (both models)", _f(e2e["fps_both"]),
             f"Runner: decode, resize, batch, incumbent + shadow (coverage {e2e['coverage']:.3f}; shadow batches on the "
             f"background / catch-up lane: {e2e['shadow_batches_background']} / {e2e['shadow_batches_catch_up']}), store writes "
             f"({e2e['predictions_committed']} predictions), image stats, sampling ({e2e['samples_committed']} JPEGs); "
             f"{e2e['frames']} frames in {_f(e2e['seconds'], 2)} s from readers' start to store closed{best(runs['e2e_fps_both'])}"
             f"{other(runs['other_load']['e2e'])}"],
            ["end-to-end frames served", _f(e2e["fps"]), "frames served per second, whether or not the shadow saw them"],
            ["naive loop", _f(naive["fps"]),
             "cv2 read, PIL + torchvision Resize/ToTensor/Normalize, torch eager incumbent then shadow, batch 1; "
             f"no store, no sampling{best(runs['naive_fps'])}{other(runs['other_load']['naive'])}"],
            ["raw ONNX Runtime bound (both models)", _f(raw["fps_both"]),
             f"both models on pre-decoded, pre-resized uint8 batches of {raw['batch_size']}, nothing else running; "
             f"the fastest of the thread layouts below ({raw['layout']}){best(runs['raw_fps_both'])}"
             f"{other(runs['other_load']['raw'])}"],
            *[[f"raw ONNX Runtime, {name}", _f(v), "both models, this layout"] for name, v in raw["layouts"].items()],
            ["raw ONNX Runtime, incumbent only", _f(raw["fps_incumbent_only"]), "ORT default threads; for reference"],
        ]),
        "## Latency",
        "",
        f"Incumbent latency per frame, from the moment the camera reader queued the frame to the moment the served "
        f"prediction was returned, with the video paced at {_f(lat['rate_fps'])} frames/s "
        f"({c['latency_rate_share']:g} x the end-to-end rate with both models); {c['latency_frames']} frames per run, "
        f"{lat['repeats']} alternating run(s) per variant, the first {WARMUP_SHARE:.0%} of each run discarded. "
        f"The latency includes the batcher's wait for more frames (up to max wait after a batch's first frame); "
        f"the last two columns are the pair's own incumbent time per batch (inference only), medians over the runs. "
        f"Shadow batches on the background / catch-up lane in the runs with the shadow: "
        f"{lat['with']['shadow_batches_background']} / {lat['with']['shadow_batches_catch_up']}"
        f"{other([lat.get('other_load')])}.",
        "",
        *_table(["shadow", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms", "frames", "served frames/s", "shadow coverage",
                 "inference p50 ms", "inference p99 ms", "p99 ms per run"], [
            [v, _f(lat[v]["p50_ms"], 2), _f(lat[v]["p90_ms"], 2), _f(lat[v]["p99_ms"], 2), _f(lat[v]["mean_ms"], 2),
             _f(lat[v]["max_ms"], 2), str(lat[v]["frames"]), _f(lat[v]["served_fps"]),
             "-" if lat[v]["coverage"] is None else f"{lat[v]['coverage']:.3f}",
             _f(lat[v]["inference_p50_ms"], 2), _f(lat[v]["inference_p99_ms"], 2),
             ", ".join(_f(x) for x in lat[v]["p99_per_run_ms"])]
            for v in ("without", "with")
        ]),
        "## Targets (issue 5)",
        "",
        *_table(["ratio", "measured", "target", "result"], [
            ["end-to-end / naive loop", f"{ra['naive_speedup']:.2f}x", f">= {TARGETS['naive_speedup']:g}x", verdict(ok["naive_speedup"])],
            ["end-to-end / raw ONNX Runtime bound", f"{ra['bound_share'] * 100:.1f}%", f">= {TARGETS['bound_share'] * 100:g}%",
             verdict(ok["bound_share"])],
            ["incumbent p99 with shadow / without", f"{ra['p99_ratio']:.3f}", f"<= {TARGETS['p99_ratio']:.2f}", verdict(ok["p99_ratio"])],
        ]),
        "The end-to-end figure in the ratios counts only frames that got both predictions (frames served x shadow coverage).",
        "",
        *(_size_section(r) if r.get("sizes") else []),
        "## Shadow isolation",
        "",
        f"Serving throughput of the shadow pair on in-memory batches of {c['batch_size']} (no reader, no store), "
        f"{c['isolation_seconds']:g} s per variant.",
        "",
        *_table(["shadow", "frames/s", "shadow coverage"], [
            ["none", _f(iso["none"]["fps"]), "-"],
            [f"sleeps {iso['sleep_s']:g} s per batch", _f(iso["sleeping"]["fps"]), f"{iso['sleeping']['coverage']:.3f}"],
        ]),
        f"A shadow that sleeps {iso['sleep_s']:g} s per batch leaves the incumbent at {iso['ratio'] * 100:.1f}% of its "
        "throughput without a shadow; the shadow sheds batches instead (lower coverage).",
        "",
        "## How to reproduce",
        "",
        "```",
        f"{c['command'] or 'shadowcam bench'}",
        "```",
        "",
        f"The whole benchmark took {r['bench_seconds']:.0f} s. Raw results: `{Path(c['out']).with_suffix('.json').name}` beside this document. "
        "The cores may be shared with other work: compare the load averages above with the core count before trusting "
        "small differences.",
        "",
    ]
    return "\n".join(L)


def _size_section(r: dict[str, Any]) -> list[str]:
    c, raw, e2e = r["config"], r["raw"], r["e2e"]
    rows = [{"img_size": c["img_size"], "raw_fps_both": raw["fps_both"], "e2e_fps_both": e2e["fps_both"],
             "bound_share": r["ratios"]["bound_share"], "coverage": e2e["coverage"], "main": True}]
    rows += [{**x, "main": False} for x in r["sizes"]]
    rows.sort(key=lambda x: x["img_size"])
    return [
        "## Model size",
        "",
        f"The pipeline's own work per frame (decoding the {r['video']['width']}x{r['video']['height']} frame, resizing it, "
        "storing two predictions, statistics and sampling) does not depend on the models, so its share of the CPU grows "
        f"as the models get cheaper. Both `{c['arch']}` models at each input size, same video, same defaults, best of "
        f"{c['repeats']} alternating runs each (the targets above are judged at {c['img_size']}x{c['img_size']}, marked *).",
        "",
        *_table(["input size", "raw ONNX Runtime bound, frames/s", "end-to-end, frames/s", "end-to-end / bound",
                 f">= {TARGETS['bound_share'] * 100:.0f}% of bound", "shadow coverage"], [
            [f"{x['img_size']}x{x['img_size']}" + (" *" if x["main"] else ""), _f(x["raw_fps_both"]), _f(x["e2e_fps_both"]),
             f"{x['bound_share'] * 100:.1f}%", "PASS" if x["bound_share"] >= TARGETS["bound_share"] else "FAIL",
             f"{x['coverage']:.3f}"] for x in rows
        ]),
        "A miss is reported as a miss: the targets are not moved to another size.",
        "",
    ]


_NUM = re.compile(r"^[<>=]*\s*(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)\s*(x|%)?$", re.I)


def parse_markdown(text: str) -> dict[str, dict[str, list[str]]]:
    """Tables of a benchmark document: ``{section title: {first cell of row: [other cells]}}``."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for line in text.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            out.setdefault(section, {})
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.setdefault(section, {})[cells[0]] = cells[1:]
    return out


def number(cell: str) -> float:
    """A table cell as a float (``2.31x``, ``84.5%``, ``>= 80%`` ...); ValueError if it is not numeric."""
    m = _NUM.match(cell.strip())
    if not m:
        raise ValueError(f"not a number: {cell!r}")
    return float(m.group(1))


def write_document(results: Mapping[str, Any], out: Path, render: Callable[[Mapping[str, Any]], str]) -> None:
    """Write a bench's document (``render(results)``) to ``out`` and its raw results beside it (``out`` with .json)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(results))
    out.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
