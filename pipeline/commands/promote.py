"""``shadowcam promote``: move the registry aliases of a model (challenger -> champion, or roll back).

Examples::

    shadowcam promote --model shadowcam             # champion := challenger, old champion -> previous_champion
    shadowcam promote --model shadowcam --rollback  # champion := previous_champion, demoted one -> challenger
"""

from __future__ import annotations

import argparse

NAME = "promote"
HELP = "promote the challenger to champion in the MLflow registry (or --rollback)"
DESCRIPTION = (
    "Promotion moves alias `champion` to the version `challenger` points at, keeps the old champion as "
    "`previous_champion` and removes `challenger` (no shadow until a new candidate is registered). "
    "--rollback undoes it: `champion` goes back to `previous_champion` and the demoted version becomes `challenger` again. "
    "Uses MLFLOW_TRACKING_URI when set, else WORKDIR/mlflow.db."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME", help="registered model name")
    p.add_argument("--rollback", action="store_true", help="undo the last promotion")
    p.add_argument("--workdir", default=".", help="work directory holding mlflow.db (when MLFLOW_TRACKING_URI is not set)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def main(args: argparse.Namespace) -> int:
    import json

    from pipeline import tracking

    uri = tracking.configure(args.workdir)
    result = tracking.rollback(args.model) if args.rollback else tracking.promote(args.model)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{'rolled back' if args.rollback else 'promoted'} {args.model} ({uri}):")
        for line in result["moved"]:
            print(f"  {line}")
    return 0
