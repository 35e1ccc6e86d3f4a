#!/usr/bin/env python
"""Simulation: repeated looks at champion vs challenger, anytime-valid CS vs repeated McNemar.

Two equally good models (both right w.p. 0.8, correlated correctness); a team looks after every 25
paired labels up to 2,000. Prints a markdown table with (i) how often the confidence-sequence rule of
``pipeline.evaluation.sequential`` ever promotes the challenger (at most alpha/2 by construction; shown
with the margin ``--delta`` and with margin 0),
(ii) how often a fixed-sample exact McNemar test at alpha=0.05, repeated at every look, would have,
and (iii) for a challenger truly 5 points better, the median and 90th percentile of the labels each rule
needs to promote. The core is :func:`pipeline.evaluation.simulate_sequential.simulate`.

Examples::

    .venv/bin/python scripts/sim_sequential.py                    # 1,000 runs, seed 0 (~20 s)
    .venv/bin/python scripts/sim_sequential.py --runs 200 --seed 3 --rho 0.4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.evaluation.simulate_sequential import format_table, simulate  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", type=int, default=1000, help="simulated runs per scenario")
    p.add_argument("--seed", type=int, default=0, help="seed of numpy's default_rng")
    p.add_argument("--max-labels", type=int, default=2000, help="paired labels per run, equal-models scenario")
    p.add_argument("--look-every", type=int, default=25, help="paired labels between looks")
    p.add_argument("--accuracy", type=float, default=0.8, help="champion accuracy (and challenger's when equal)")
    p.add_argument("--rho", type=float, default=0.6, help="correlation of the two models' correctness")
    p.add_argument("--effect", type=float, default=0.05, help="challenger's true gain in the power scenario")
    p.add_argument("--power-max-labels", type=int, default=10000, help="paired labels per run, power scenario")
    p.add_argument("--alpha", type=float, default=0.05, help="CS level (two-sided) and McNemar's significance level")
    p.add_argument("--delta", type=float, default=0.01, help="the CS promotes when its lower bound exceeds this")
    p.add_argument("--chunk", type=int, default=200, help="runs simulated at once (memory)")
    return p


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    r = simulate(
        runs=args.runs,
        seed=args.seed,
        max_labels=args.max_labels,
        look_every=args.look_every,
        accuracy=args.accuracy,
        rho=args.rho,
        effect=args.effect,
        power_max_labels=args.power_max_labels,
        alpha=args.alpha,
        delta=args.delta,
        chunk=args.chunk,
    )
    print(format_table(r))
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
