"""``shadowcam bench [WHAT]``: measure this machine and the product, and write the document of each bench.

``WHAT`` (default ``throughput``) picks the bench from :data:`BENCHES`:

* ``throughput``: throughput and latency on this machine, ``docs/benchmarks.md`` (see :mod:`apps.bench`);
* ``estimate``: every label-free accuracy estimator against the truth on the synthetic shift suite,
  ``docs/label_free.md`` (see :mod:`apps.bench_estimate`);
* ``labels``: labels a +-2-point 95% interval on production accuracy needs, per sampling strategy x estimator,
  against uniform sampling + Wilson, on the demo's clean and shifted streams, ``docs/label_efficiency.md``
  (see :mod:`apps.bench_labels`);
* ``serving``: money per million predictions of the demo-size model on this machine, from the runner's measured busy
  time and a stated price per device-hour, ``docs/serving_cost.md`` and the README's table (see :mod:`apps.bench_serving`);
* ``store``: fills stores of 1M and 10M predictions (SQLite by default) in bulk, times ``shadowcam evaluate`` on each as a
  child process (wall time, peak memory), measures bytes per prediction (and before/after: the schema-v2 JSON format
  against today's, on SQLite and PostgreSQL) and the write rate of 1 and 4 writers into SQLite and into a throw-away
  PostgreSQL server it starts itself when PostgreSQL is installed, ``docs/scale.md`` (see :mod:`pipeline.scale`; no
  training extras needed).

Examples::

    shadowcam bench                                  # the full throughput benchmark (a few minutes on 2 CPU cores)
    shadowcam bench --quick --out /tmp/bench.md      # tiny sizes: checks that everything runs (seconds)
    shadowcam bench --arch mobilenet_v3_small --img-size 96 --frames 2000 --out docs/benchmarks_mnv3.md
    shadowcam bench estimate                         # trains two models (~2 min each on 2 cores), then 41 test sets
    shadowcam bench estimate --model a.onnx --shadow b.onnx --shifts night,glare --n 100 --out /tmp/lf.md
    shadowcam bench labels                           # trains two models, renders 2 x 3000 frames, simulates labelings
    shadowcam bench labels --model a.onnx --shadow b.onnx --reps 20 --strategies uniform,neyman --out /tmp/le.md
    shadowcam bench serving                          # ~1 min: the README's serving-cost table for this machine
    shadowcam bench serving --price 2.50 --device-name "1x L4 GPU VM" --readme ''   # your price; README untouched
    shadowcam bench store                            # 1M and 10M predictions: ~15 min on 2 cores, most of it filling
    shadowcam bench store --sizes 20000 --bytes-predictions 20000 --write-predictions 20000 --postgres never  # a minute
    shadowcam bench store --sizes 1000000 --db postgresql://me@db/shadowcam_bench --write-db postgresql://me@db/writes

Needs the training extras (torch, torchvision, albumentations): the throughput bench's naive baseline runs
PyTorch eager and exports torchvision models; the estimate bench renders shifted sets and may train.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apps.config import BenchConfig
from pipeline.config import ARCHS, TrainConfig

NAME = "bench"
HELP = ("benchmark end-to-end throughput and latency against a naive loop and the raw ONNX Runtime bound; "
        "`bench estimate`: label-free accuracy estimates against the truth; `bench labels`: labels needed per "
        "sampling strategy and estimator")
DESCRIPTION = (
    "Export two torchvision classifiers to ONNX, generate a 640x480 conveyor video, then measure on this machine: "
    "the raw ONNX Runtime throughput of both models, a naive cv2 + torchvision + PyTorch eager loop, the end-to-end "
    "throughput of `shadowcam run` with incumbent and shadow, and the incumbent's p50/p99 latency with and without the "
    "shadow at half the end-to-end rate. Writes a markdown report with the machine's description and PASS/FAIL "
    "against the targets (end-to-end >= 2x naive, >= 80% of the raw bound, p99 with shadow <= 1.10x without). "
    "`shadowcam bench estimate` instead trains (or takes) an incumbent and a shadow, runs labelled synthetic test sets "
    "of every camera shift at every severity through the runtime, and writes each label-free accuracy estimator's "
    "estimate against the truth, with its mean absolute error, to docs/label_free.md. "
    "`shadowcam bench labels` trains (or takes) the same two models, scores the demo's clean and shifted camera "
    "streams, simulates repeated labelings with every sampling strategy and writes how many labels the classical and "
    "the model-assisted estimator need for a +-2-point 95% interval, against uniform sampling + Wilson, to "
    "docs/label_efficiency.md."
)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pixel sizes like 64,128, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,3,5, got {text!r}") from None


def _both(name: str) -> str:
    """'default X; --quick Y' for a help text, from BenchConfig (defaults are declared once, there)."""
    fmt = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
    return f"default {fmt(BenchConfig.default(name))}; --quick {fmt(BenchConfig.QUICK[name])}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchConfig.default
    p.add_argument("what", nargs="?", choices=tuple(BENCHES), default="throughput",
                   help="which bench: " + "; ".join(f"{k}: {b.help}" for k, b in BENCHES.items()))
    p.add_argument("--out", default=argparse.SUPPRESS,
                   help=f"markdown report to write (default {d('out')}; estimate: docs/label_free.md; labels: "
                        "docs/label_efficiency.md)")
    p.add_argument("--frames", type=int, default=argparse.SUPPRESS, help=f"frames of the generated video ({_both('frames')})")
    p.add_argument("--arch", default=argparse.SUPPRESS,
                   help=f"torchvision architecture of both models ({', '.join(ARCHS)}; default {d('arch')}; serving: "
                        f"{TrainConfig.default('arch')}, the demo's)")
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
    p.add_argument("--workdir", default=argparse.SUPPRESS,
                   help=f"models, video, stores and bench_results.json go here (default {d('workdir')}; estimate: "
                        "runs/bench_estimate, its models and test sets; labels: runs/bench_labels, its models and "
                        "scored pools)")
    p.add_argument("--seed", type=int, default=d("seed"),
                   help="seed of the video and the model weights (estimate: of the training set and the incumbent; "
                        "the shadow and the test sets use seed + 1)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: runs in seconds; numbers are not meaningful")
    p.add_argument("--no-progress", action="store_true", help="no progress messages")
    e = p.add_argument_group("estimate", "options of `shadowcam bench estimate` (defaults: apps.bench_estimate.EstimateBenchConfig); "
                                         "--model, --shadow, --train-images and --render-size also of `bench labels`")
    e.add_argument("--model", default=argparse.SUPPRESS, metavar="FILE.onnx",
                   help="incumbent to measure (ONNX file or models:/ URI); default: train one with the training defaults")
    e.add_argument("--shadow", default=argparse.SUPPRESS, metavar="FILE.onnx",
                   help="shadow model beside it (the disagreement estimators and the labels bench's proxy need two); "
                        "default: train one (next seed)")
    e.add_argument("--n", type=int, default=argparse.SUPPRESS, help="labelled test images per shift x severity and clean")
    e.add_argument("--shifts", type=_names, default=argparse.SUPPRESS,
                   help="comma-separated shifts of models/shifts.py to measure; default: all of them")
    e.add_argument("--severities", type=_ints, default=argparse.SUPPRESS, help="comma-separated severities 1-5; default: all")
    e.add_argument("--labels", type=int, default=argparse.SUPPRESS,
                   help="labelled frames per test set for recalibrated ATC, the one estimator that uses labels")
    e.add_argument("--train-images", type=int, default=argparse.SUPPRESS, help="clean training images when a model is trained")
    e.add_argument("--render-size", type=int, default=argparse.SUPPRESS,
                   help="pixel size of the rendered square test images (labels: of the training images)")
    sv = p.add_argument_group("serving", "options of `shadowcam bench serving` (defaults: apps.bench_serving.ServingBenchConfig); "
                                         "also --frames, --arch, --img-size, --batch-size")
    sv.add_argument("--price", type=float, default=argparse.SUPPRESS,
                    help="price per device-hour (an assumption, stated in the table; default 0.096 USD, a 2-vCPU cloud VM)")
    sv.add_argument("--price-note", default=argparse.SUPPRESS, help="where the price comes from (printed under the table)")
    sv.add_argument("--currency", default=argparse.SUPPRESS, help="currency of the price (default USD)")
    sv.add_argument("--device-name", dest="device", default=argparse.SUPPRESS,
                    help="device column of the table (default: this machine's CPU and cores)")
    sv.add_argument("--camera-fps", type=float, default=argparse.SUPPRESS, help="frame rate of the paced one-camera run")
    sv.add_argument("--readme", default=argparse.SUPPRESS,
                    help="README whose serving-cost block is replaced (default README.md; '' to leave it alone)")
    lb = p.add_argument_group("labels", "options of `shadowcam bench labels` (defaults: apps.bench_labels.LabelBenchConfig)")
    lb.add_argument("--pools", default=argparse.SUPPRESS, metavar="POOLS.npz",
                    help="simulate on the scored pools of an earlier run (its workdir's pools.npz) instead of taking "
                         "or training models and rendering the streams")
    lb.add_argument("--pool-frames", type=int, default=argparse.SUPPRESS,
                    help="frames of each stream (clean, shifted) rendered and scored: the pools the streams are drawn from")
    lb.add_argument("--stream-frames", type=int, default=argparse.SUPPRESS,
                    help="frames per simulated stream (drawn from the pool with replacement)")
    lb.add_argument("--rate", type=float, default=argparse.SUPPRESS, help="the sampler's rate (share of frames labelled)")
    lb.add_argument("--check-every", type=int, default=argparse.SUPPRESS, help="frames between two looks at the interval")
    lb.add_argument("--reps", type=int, default=argparse.SUPPRESS, help="simulated labelings per stream x strategy")
    lb.add_argument("--strategies", type=_names, default=argparse.SUPPRESS,
                    help="comma-separated sampling strategies (uniform is the baseline and must be one); default: all")
    lb.add_argument("--half-width", type=float, default=argparse.SUPPRESS,
                    help="the target: interval half-width in accuracy (0.02 = +-2 points)")
    lb.add_argument("--workers", type=int, default=argparse.SUPPRESS, help="simulation processes (default: up to 2 cores)")
    st = p.add_argument_group("store", "options of `shadowcam bench store` (defaults: pipeline.scale.StoreBenchConfig); also "
                                       "--out (default docs/scale.md) and --workdir (default runs/bench_store)")
    st.add_argument("--sizes", type=_ints, default=argparse.SUPPRESS,
                    help="comma-separated numbers of predictions to fill and evaluate (default 1000000,10000000)")
    st.add_argument("--db", default=argparse.SUPPRESS,
                    help="fill this (empty) store instead of a fresh SQLite file per size: SQLite path or postgresql:// URL; one size")
    st.add_argument("--eval-repeats", type=int, default=argparse.SUPPRESS,
                    help="`shadowcam evaluate` runs per size; the fastest is reported (default 1)")
    st.add_argument("--write-db", default=argparse.SUPPRESS,
                    help="the one store the write rate is measured on (default: a fresh SQLite file and a fresh database on the "
                         "throw-away PostgreSQL server per writer setting)")
    st.add_argument("--writers", type=_ints, default=argparse.SUPPRESS, help="writer processes of the write-rate runs (default 1,4)")
    st.add_argument("--write-predictions", type=int, default=argparse.SUPPRESS,
                    help="predictions per write-rate run (default 200000)")
    st.add_argument("--postgres", choices=("auto", "always", "never"), default=argparse.SUPPRESS,
                    help="start a throw-away PostgreSQL server (initdb + pg_ctl from /usr/lib/postgresql/*/bin, 127.0.0.1, "
                         "default durable settings) for the PostgreSQL bytes and write rate: auto (default) when installed, "
                         "always (an error when not), never")
    st.add_argument("--bytes-predictions", type=int, default=argparse.SUPPRESS,
                    help="predictions written in the schema-v2 format and in today's to compare bytes per prediction "
                         "(default 500000; 0: not measured)")
    st.add_argument("--keep", action="store_true", default=argparse.SUPPRESS, help="keep the filled stores in the work directory")


@dataclass(frozen=True)
class Bench:
    """One bench: its one-line help, its options (``dest`` names; the others are refused) and its entry point."""

    help: str
    options: tuple[str, ...]
    run: Callable[[argparse.Namespace], int]


COMMON = ("out", "workdir", "seed", "quick", "no_progress")
# options with a visible default cannot be told apart from "not given": refused only when they differ from it
_VISIBLE_DEFAULTS = {"arch": BenchConfig.default("arch")}


def _reject_foreign(args: argparse.Namespace) -> None:
    from pipeline.types import ConfigError

    mine = set(COMMON) | set(BENCHES[args.what].options)
    for what, bench in BENCHES.items():
        for opt in bench.options:
            if opt in mine or not hasattr(args, opt):
                continue
            if opt in _VISIBLE_DEFAULTS and getattr(args, opt) == _VISIBLE_DEFAULTS[opt]:
                continue
            raise ConfigError(f"--{opt.replace('_', '-')} belongs to `shadowcam bench {what}`, not to `shadowcam bench {args.what}`")


def main(args: argparse.Namespace) -> int:
    _reject_foreign(args)
    return BENCHES[args.what].run(args)


def _throughput(args: argparse.Namespace) -> int:
    import shlex

    from apps.bench import run_bench  # torch and the runtime: imported only when the command runs
    from pipeline.types import ConfigError

    args.out = getattr(args, "out", str(BenchConfig.default("out")))
    args.workdir = getattr(args, "workdir", str(BenchConfig.default("workdir")))
    args.arch = getattr(args, "arch", BenchConfig.default("arch"))
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


def _config(args: argparse.Namespace, what: str, options: tuple[str, ...], cls: Any) -> Any:
    """The bench's config from the options given (the others keep the config's defaults), with the command line
    that reproduces it recorded in ``command``."""
    import shlex

    given = {k: getattr(args, k) for k in ("out", "workdir", *options) if hasattr(args, k)}
    parts = [f"shadowcam bench {what}"]
    for k, v in given.items():
        parts.append(f"--{k.replace('_', '-')} " + shlex.quote(",".join(map(str, v)) if isinstance(v, tuple) else str(v)))
    if args.seed != BenchConfig.default("seed"):
        parts.append(f"--seed {args.seed}")
    if args.quick:
        parts.append("--quick")
    kw = {**given, "seed": args.seed, "command": " ".join(parts)}
    return cls.quick_config(**kw) if args.quick else cls(**kw)


ESTIMATE_OPTIONS = ("model", "shadow", "n", "shifts", "severities", "labels", "train_images", "render_size")


def _estimate(args: argparse.Namespace) -> int:
    from apps.bench_estimate import EstimateBenchConfig, run_estimate_bench  # torch, the runtime: when the command runs

    cfg = _config(args, "estimate", ESTIMATE_OPTIONS, EstimateBenchConfig)
    res = run_estimate_bench(cfg, progress=not args.no_progress)
    s = res["summary"]
    pts = lambda v: "-" if v is None else f"{v * 100:.1f}"  # noqa: E731
    for e in res["estimators"]:
        m = s["mae"][e["name"]]["pooled"]
        print(f"{e['title']:<32} MAE {pts(m['mild']):>5} points at severities <= 3, {pts(m['severe']):>5} at > 3")
    print(f"best label-free: {s['best'] or '-'}; target MAE <= {s['target_mae'] * 100:.0f} points at severities <= 3: "
          f"{s['verdict']}")
    print(f"report written to {cfg.out}")
    return 0


LABELS_OPTIONS = ("model", "shadow", "pools", "train_images", "render_size", "pool_frames", "stream_frames", "rate",
                  "check_every", "reps", "strategies", "half_width", "workers")


def _labels(args: argparse.Namespace) -> int:
    from apps.bench_labels import LabelBenchConfig, run_label_bench  # the runtime, the renderer: when the command runs

    cfg = _config(args, "labels", LABELS_OPTIONS, LabelBenchConfig)
    res = run_label_bench(cfg, progress=not args.no_progress)
    s = res["summary"]
    fmt = lambda v: "not reached" if v is None or v == float("inf") else f"{v:.0f}"  # noqa: E731
    for row in s["rows"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        cov = "-" if row["coverage"] is None else f"{row['coverage'] * 100:.0f}%"
        print(f"{row['stream']:<8} {row['strategy']:<13} {row['estimator']:<15} median {fmt(row['median']):>11} labels "
              f"{ratio:>6}  coverage {cov}")
    b = s["best"]
    if b:
        print(f"best: {b['strategy']} + {b['estimator']} (" + ", ".join(f"{n} {v:.2f}x" for n, v in b["ratios"].items())
              + ")")
    print(f"target <= {s['target_ratio']:g}x uniform + Wilson on the shifted stream, <= {s['max_ratio']:.1f}x on both: "
          f"{s['verdict']}")
    print(f"report written to {cfg.out}")
    return 0


SERVING_OPTIONS = ("frames", "arch", "img_size", "batch_size", "price", "price_note", "currency", "device", "camera_fps",
                   "readme")


def _serving(args: argparse.Namespace) -> int:
    from apps.bench_serving import ServingBenchConfig, run_serving_bench  # the runtime, torch: when the command runs

    cfg = _config(args, "serving", SERVING_OPTIONS, ServingBenchConfig)
    res = run_serving_bench(cfg, progress=not args.no_progress)
    for run in res["runs"]:
        c = run["serving_cost"]
        what = "replay at full speed" if run["max_fps"] is None else f"one camera at {run['max_fps']:g} frames/s"
        for role in ("incumbent", "shadow"):
            m = c.get(role)
            if m:
                print(f"{what:<26} {role:<9} {m['throughput_per_busy_s']:>9,.0f} predictions/busy s  "
                      f"{c['currency']} {m['usd_per_million_at_capacity']:.3g} per million at capacity, "
                      f"{m['usd_per_million']:.3g} in this run")
    print(f"report written to {cfg.out}" + (f"; table in {cfg.readme}" if cfg.readme else ""))
    return 0


STORE_OPTIONS = ("sizes", "db", "eval_repeats", "write_db", "writers", "write_predictions", "postgres", "bytes_predictions", "keep")


def _store(args: argparse.Namespace) -> int:
    import shlex

    from pipeline.scale import StoreBenchConfig, run_store_bench

    given = {k: getattr(args, k) for k in ("out", "workdir", *STORE_OPTIONS) if hasattr(args, k)}
    parts = ["shadowcam bench store"]
    for k, v in given.items():
        flag = f"--{k.replace('_', '-')}"
        if v is True:
            parts.append(flag)
        else:
            parts.append(f"{flag} " + shlex.quote(",".join(map(str, v)) if isinstance(v, tuple) else str(v)))
    if "eval_repeats" in given:
        given["repeats"] = given.pop("eval_repeats")
    if args.quick:
        given.setdefault("sizes", (20_000,))
        given.setdefault("write_predictions", 2_000)
        given.setdefault("writers", (1,))
        given.setdefault("bytes_predictions", 4_000)
        parts.append("--quick")
    cfg = StoreBenchConfig(**given, seed=args.seed, command=" ".join(parts))
    res = run_store_bench(cfg, progress=not args.no_progress)
    for s in res["sizes"]:
        e = s["evaluate"]
        bpp = s.get("bytes_per_prediction")
        print(f"{s['n_predictions']:>12,} predictions, {s['labels']:,} labels: evaluate {e['seconds']:.1f} s "
              f"(CPU {e['cpu_seconds']:.1f} s), peak {e['max_rss_bytes'] / 2**30:.2f} GiB"
              + (f", {bpp:.0f} bytes/prediction" if bpp is not None else ""))
    for b in res.get("bytes", []):
        print(f"bytes/prediction ({b['backend']}): {b['before']['bytes_per_prediction']:.0f} in the v2 format, "
              f"{b['after']['bytes_per_prediction']:.0f} now ({b['ratio'] * 100:.0f}%)")
    for w in res["writes"]:
        ok = "" if w["backend"] != "postgresql" else (" PASS" if w["predictions_per_s"] >= cfg.write_target else " FAIL")
        print(f"write rate: {w['writers']} writer(s) {w['predictions_per_s']:,.0f} predictions/s ({w['backend']}){ok}")
    if not res["postgres"]["ran"]:
        print(res["postgres"]["note"])
    print(f"report written to {cfg.out}")
    return 0


BENCHES: dict[str, Bench] = {
    "throughput": Bench("throughput and latency of `shadowcam run` against a naive loop and the raw ONNX Runtime bound",
                        ("frames", "arch", "img_size", "other_sizes", "batch_size", "repeats", "latency_frames",
                         "latency_repeats"), _throughput),
    "estimate": Bench("label-free accuracy estimators against the truth on the synthetic camera shifts",
                      ESTIMATE_OPTIONS, _estimate),
    "labels": Bench("labels a +-2-point 95% accuracy interval needs per sampling strategy and estimator, against "
                    "uniform + Wilson", LABELS_OPTIONS, _labels),
    "serving": Bench("money per million predictions of the demo-size model on this machine (runner busy time x a stated "
                     "price per device-hour), for the README", SERVING_OPTIONS, _serving),
    "store": Bench("evaluation time and memory, bytes per prediction and write rate of stores of 1M and 10M predictions "
                   "(docs/scale.md)", STORE_OPTIONS, _store),
}
