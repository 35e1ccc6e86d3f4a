#!/usr/bin/env python
"""Benchmark: does a misbehaving shadow slow the incumbent down?

Measures the incumbent's serving throughput (frames/s) with no shadow, with a healthy shadow, with a shadow that
sleeps ``--sleep`` s per batch and with a shadow that raises, alternating the variants ``--repeats`` times
(A/B/C/D, A/B/C/D, ...) so drift of the machine hits them all alike, and prints the median of each, its ratio to
"no shadow" and the shadow coverage.

Two modes:

* ``pair`` (default): ``ShadowPair.infer`` on pre-built batches in memory - the serving path alone.
* ``runner``: the whole ``Runner`` on a looping image folder with ``max_frames`` (cameras, batcher, store writer);
  throughput and coverage come from the run summary, as ``shadowcam run`` prints them.

The acceptance criterion of issue 3: with the 1 s/batch sleeping shadow, throughput within 5 % of no shadow
(ratio >= 0.95) and a lower shadow coverage reported.

Examples::

    .venv/bin/python scripts/bench_shadow_isolation.py                       # tiny generated model, CPU
    .venv/bin/python scripts/bench_shadow_isolation.py --model resnet18.onnx --providers cuda --batch-size 64 --seconds 10
    .venv/bin/python scripts/bench_shadow_isolation.py --mode runner --frames 4000
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

VARIANTS = ("none", "healthy", "sleep", "raise")


def build_models(args, tmp: Path):
    from tests.helpers.onnx_models import make_tiny_classifier

    if args.model:
        return Path(args.model), Path(args.shadow_model or args.model)
    classes = ["box", "bag", "empty", "pallet"]
    inc = make_tiny_classifier(tmp / "incumbent.onnx", classes, input_size=(args.size, args.size), seed=1)
    sh = make_tiny_classifier(tmp / "shadow.onnx", classes, input_size=(args.size, args.size), seed=2)
    return inc, sh


def make_shadow(variant: str, path: Path, providers, sleep_s: float):
    from pipeline.runtime import OnnxClassifier
    from pipeline.types import Role
    from tests.helpers.onnx_models import RaisingClassifier, SleepyClassifier

    if variant == "none":
        return None
    if variant == "healthy":
        return OnnxClassifier(path, role=Role.SHADOW, providers=providers)
    if variant == "sleep":
        return SleepyClassifier(path, role=Role.SHADOW, providers=providers, sleep_s=sleep_s)
    return RaisingClassifier(path, role=Role.SHADOW, providers=providers)


def bench_pair(args, inc_path: Path, sh_path: Path) -> dict[str, list[dict]]:
    from pipeline.config import ShadowConfig
    from pipeline.runtime import OnnxClassifier
    from pipeline.shadow import ShadowPair
    from pipeline.types import Frame, FrameBatch

    inc = OnnxClassifier(inc_path, providers=args.providers, warmup_batch_size=args.batch_size, warmup_runs=5)
    h, w = inc.input_size
    rng = np.random.default_rng(0)
    batches = []
    for b in range(16):
        imgs = rng.integers(0, 256, (args.batch_size, h, w, 3), dtype=np.uint8)
        frames = tuple(Frame(f"cam{i % 4}", b * args.batch_size + i, float(b), imgs[i]) for i in range(args.batch_size))
        batches.append(FrameBatch(frames=frames, images=imgs))
    shadows = {v: make_shadow(v, sh_path, args.providers, args.sleep) for v in args.variants}
    out: dict[str, list[dict]] = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for v in args.variants:
            pair = ShadowPair(inc, shadows[v], ShadowConfig(timeout_s=args.shadow_timeout), cpu_twin=False).start()
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                for b in batches:
                    pair.infer(b)
                    n += len(b)
            dt = time.perf_counter() - t0
            st = pair.stats()
            pair.close(drain=False, timeout=0.5)
            out[v].append({"fps": n / dt, "coverage": st["shadow"]["coverage"], "p50_ms": st["incumbent"]["latency_ms"]["p50"],
                           "p99_ms": st["incumbent"]["latency_ms"]["p99"], "shed_frames": st["shadow"]["frames_shed"]})
            print(f"  rep {rep + 1} {v:<8} {n / dt:10.1f} frames/s  coverage {st['shadow']['coverage']:.3f}", flush=True)
    return out


def bench_runner(args, inc_path: Path, sh_path: Path, tmp: Path) -> dict[str, list[dict]]:
    import cv2

    from pipeline.config import load_config
    from pipeline.runner import Runner

    folder = tmp / "frames"
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(64):
        img = rng.integers(30, 220, (240, 320, 3), dtype=np.uint8)
        cv2.putText(img, str(i), (10, 200), cv2.FONT_HERSHEY_SIMPLEX, 3, (255, 255, 255), 4)
        cv2.imwrite(str(folder / f"f{i:03d}.jpg"), img)
    out: dict[str, list[dict]] = {v: [] for v in args.variants}
    for rep in range(args.repeats):
        for v in args.variants:
            cfg = load_config(None, {
                "sources": [{"uri": str(folder), "id": f"cam{k}", "loop": True} for k in range(args.cameras)],
                "incumbent": {"uri": str(inc_path), "providers": args.providers},
                "batching.batch_size": args.batch_size,
                "shadow_mode.timeout_s": args.shadow_timeout,
                "max_frames": args.frames,
                "sampling.enabled": False,
                "store.url": str(tmp / f"bench_{v}_{rep}.db"),
                "workdir": str(tmp),
            })
            shadow = make_shadow(v, sh_path, args.providers, args.sleep)
            s = Runner(cfg, shadow=shadow, install_signal_handlers=False, image_stats=not args.no_stats).run()
            out[v].append({"fps": s.throughput_fps, "coverage": s.shadow["coverage"], "p50_ms": s.incumbent["latency_ms"]["p50"],
                           "p99_ms": s.incumbent["latency_ms"]["p99"], "shed_frames": s.shadow.get("frames_shed", 0)})
            print(f"  rep {rep + 1} {v:<8} {s.throughput_fps:10.1f} frames/s  coverage {s.shadow['coverage']:.3f}", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=["pair", "runner"], default="pair")
    p.add_argument("--model", default=None, help="incumbent .onnx (default: a tiny generated model)")
    p.add_argument("--shadow-model", default=None, help="shadow .onnx (default: --model)")
    p.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--size", type=int, default=64, help="input size of the generated tiny model")
    p.add_argument("--sleep", type=float, default=1.0, help="seconds the sleeping shadow sleeps per batch")
    p.add_argument("--shadow-timeout", type=float, default=5.0)
    p.add_argument("--seconds", type=float, default=3.0, help="pair mode: seconds per measurement")
    p.add_argument("--frames", type=int, default=3000, help="runner mode: frames per run")
    p.add_argument("--no-stats", action="store_true", help="runner mode: no per-frame image statistics")
    p.add_argument("--cameras", type=int, default=4, help="runner mode: looping folder cameras (one reader thread each)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--json", default=None, help="write the raw numbers here")
    args = p.parse_args()
    args.providers = [x for x in args.providers.split(",") if x]
    args.variants = [v for v in args.variants.split(",") if v]
    if "none" not in args.variants:
        args.variants.insert(0, "none")

    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, available {ort.get_available_providers()}, mode {args.mode}, "
          f"batch {args.batch_size}, repeats {args.repeats}")
    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as d:
        tmp = Path(d)
        inc_path, sh_path = build_models(args, tmp)
        res = bench_pair(args, inc_path, sh_path) if args.mode == "pair" else bench_runner(args, inc_path, sh_path, tmp)
    base = statistics.median(r["fps"] for r in res["none"])
    print(f"\n{'shadow':<9} {'frames/s (median)':>18} {'vs none':>8} {'coverage':>9} {'p50 ms':>8} {'p99 ms':>8}")
    summary = {}
    for v, rows in res.items():
        fps = statistics.median(r["fps"] for r in rows)
        cov = statistics.median(r["coverage"] for r in rows)
        p50 = statistics.median(r["p50_ms"] or 0 for r in rows)
        p99 = statistics.median(r["p99_ms"] or 0 for r in rows)
        summary[v] = {"fps": fps, "ratio": fps / base, "coverage": cov, "p50_ms": p50, "p99_ms": p99}
        print(f"{v:<9} {fps:18.1f} {fps / base:8.3f} {cov:9.3f} {p50:8.2f} {p99:8.2f}")
    if "sleep" in summary:
        ok = summary["sleep"]["ratio"] >= 0.95 and summary["sleep"]["coverage"] < summary.get("healthy", {"coverage": 1.0})["coverage"]
        print(f"\nsleeping shadow ({args.sleep:g} s/batch): throughput {summary['sleep']['ratio'] * 100:.1f}% of no shadow, "
              f"coverage {summary['sleep']['coverage']:.3f} -> {'PASS' if ok else 'FAIL'} (criterion: >= 95%, lower coverage)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": {k: v for k, v in vars(args).items()}, "raw": res, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
