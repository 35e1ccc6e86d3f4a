"""``shadowcam bench``: measure throughput and latency on this machine and write ``docs/benchmarks.md``.

Examples::

    shadowcam bench                                  # the full benchmark (a few minutes on 2 CPU cores)
    shadowcam bench --quick --out /tmp/bench.md      # tiny sizes: checks that everything runs (seconds)
    shadowcam bench --arch mobilenet_v3_small --img-size 96 --frames 2000 --out docs/benchmarks_mnv3.md

See :mod:`apps.bench` for what is measured and how. Needs the training extras (torch, torchvision):
the naive baseline runs PyTorch eager and the models are exported from torchvision.
"""

from __future__ import annotations

import argparse

from apps.config import BenchConfig
from pipeline.config import ARCHS

NAME = "bench"
HELP = "benchmark end-to-end throughput and latency against a naive loop and the raw ONNX Runtime bound"
DESCRIPTION = (
    "Export two torchvision classifiers to ONNX, generate a 640x480 conveyor video, then measure on this machine: "
    "the raw ONNX Runtime throughput of both models, a naive cv2 + torchvision + PyTorch eager loop, the end-to-end "
    "throughput of `shadowcam run` with incumbent and shadow, and the incumbent's p50/p99 latency with and without the "
    "shadow at half the end-to-end rate. Writes a markdown report with the machine's description and PASS/FAIL "
    "against the targets (end-to-end >= 2x naive, >= 80% of the raw bound, p99 with shadow <= 1.10x without)."
)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pixel sizes like 64,128, got {text!r}") from None


def _both(name: str) -> str:
    """'default X; --quick Y' for a help text, from BenchConfig (defaults are declared once, there)."""
    fmt = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    return f"default {fmt(BenchConfig.default(name))}; --quick {fmt(BenchConfig.QUICK[name])}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig.default
    p.add_argument("--out", default=str(d("out")), help="markdown report to write")
    p.add_argument("--frames", type=int, default=argparse.SUPPRESS, help=f"frames of the generated video ({_both('frames')})")
    p.add_argument("--arch", default=d("arch"), help=f"torchvision architecture of both models ({', '.join(ARCHS)})")
    p.add_argument("--img-size", type=int, default=argparse.SUPPRESS,
                   help=f"model input size in pixels, square; the targets are judged at it ({_both('img_size')})")
    p.add_argument("--other-sizes", type=_sizes, default=argparse.SUPPRESS,
                   help=f"comma-separated input sizes also measured (raw bound + end-to-end only); '' for none ({_both('other_sizes')})")
    p.add_argument("--batch-size", type=int, default=argparse.SUPPRESS, help=f"pipeline and raw-bound batch size ({_both('batch_size')})")
    p.add_argument("--repeats", type=int, default=argparse.SUPPRESS,
                   help=f"alternating rounds of raw bound, naive loop and end-to-end; the best of each is reported ({_both('repeats')})")
    p.add_argument("--latency-frames", type=int, default=argparse.SUPPRESS, help=f"frames per latency run ({_both('latency_frames')})")
    p.add_argument("--latency-repeats", type=int, default=argparse.SUPPRESS,
                   help=f"latency runs per variant, alternating ({_both('latency_repeats')})")
    p.add_argument("--workdir", default=str(d("workdir")), help="models, video, stores and bench_results.json go here")
    p.add_argument("--seed", type=int, default=d("seed"), help="seed of the video and the model weights")
    p.add_argument("--quick", action="store_true", help="tiny sizes: runs in seconds; numbers are not meaningful")
    p.add_argument("--no-progress", action="store_true", help="no progress messages")


def main(args: argparse.Namespace) -> int:
    import shlex

    from apps.bench import run_bench  # torch and the runtime: imported only when the command runs
    from pipeline.types import ConfigError

    if args.arch not in ARCHS:
        raise ConfigError(f"--arch {args.arch!r} is not supported; expected one of {', '.join(ARCHS)}")
    # options left out keep the (quick or full) defaults of BenchConfig
    given = {k: getattr(args, k, None) for k in ("frames", "img_size", "other_sizes", "batch_size", "repeats", "latency_frames",
                                                  "latency_repeats")}
    # the command line as it reproduces this run (parsed options, not sys.argv: also right when called from code)
    parts = ["shadowcam bench"]
    d = BenchConfig.default
    for opt, val, default in (("--out", args.out, str(d("out"))), ("--workdir", args.workdir, str(d("workdir"))),
                              ("--arch", args.arch, d("arch")), ("--seed", args.seed, d("seed"))):
        if val != default:
            parts.append(f"{opt} {shlex.quote(str(val))}")
    parts += [f"--{k.replace('_', '-')} " + (shlex.quote(",".join(map(str, v))) if isinstance(v, tuple) else str(v))
              for k, v in given.items() if v is not None]
    if args.quick:
        parts.append("--quick")
    common = dict(out=args.out, workdir=args.workdir, arch=args.arch, seed=args.seed, command=" ".join(parts))
    if args.quick:
        cfg = BenchConfig.quick_config(**common, **given)
    else:
        cfg = BenchConfig(**common, **{k: v for k, v in given.items() if v is not None})
    res = run_bench(cfg, progress=not args.no_progress)
    ra, ok = res["ratios"], res["pass"]
    verdict = lambda b: "PASS" if b else "FAIL"  # noqa: E731
    print(f"end-to-end {res['e2e']['fps_both']:.1f} frames/s (both models), naive {res['naive']['fps']:.1f}, "
          f"raw ONNX Runtime bound {res['raw']['fps_both']:.1f}")
    print(f"end-to-end / naive {ra['naive_speedup']:.2f}x {verdict(ok['naive_speedup'])}; "
          f"/ raw bound {ra['bound_share'] * 100:.1f}% {verdict(ok['bound_share'])}; "
          f"p99 with/without shadow {ra['p99_ratio']:.3f} {verdict(ok['p99_ratio'])}")
    print(f"report written to {cfg.out}")
    return 0
