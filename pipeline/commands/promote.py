"""``shadowcam promote``: move the registry aliases of a model (challenger -> champion, or roll back), on evidence.

Examples::

    shadowcam promote --model shadowcam             # only when the latest evaluation of the challenger decided promote
    shadowcam promote --model shadowcam --db runs/demo/shadowcam.db   # recompute that decision from the store
    shadowcam promote --model shadowcam --force --reason "incident 42: the champion misreads the new labels"
    shadowcam promote --model shadowcam --rollback --reason "complaints from dock 3"
"""

from __future__ import annotations

import argparse

from pipeline.config import EVALUATION_EXPERIMENT, EvalConfig

NAME = "promote"
HELP = "promote the challenger to champion when its evaluation decided promote (or --rollback)"
DESCRIPTION = (
    "Promotion happens on evidence: the newest MLflow evaluation run (`shadowcam evaluate`) whose shadow was the "
    "version `challenger` points at must have decided `promote`; with --db the decision is recomputed from the "
    "prediction store's runs that shadowed that version instead. Without such a decision (no evaluation, "
    "need_more_labels, equivalent, retire) nothing moves and the command exits with status 2, saying why; "
    "--force --reason TEXT overrides. Promotion moves alias `champion` to the challenger version, keeps the old "
    "champion as `previous_champion` and removes `challenger` (no shadow until a new candidate is registered). "
    "--rollback undoes it: `champion` goes back to `previous_champion` and the demoted version becomes `challenger` "
    "again. Both record what happened as tags on the model versions involved (shadowcam.promoted_at, "
    "shadowcam.promotion_forced, shadowcam.promotion_reason, shadowcam.promotion_evidence as JSON; "
    "shadowcam.rolled_back_at, shadowcam.rollback_reason). Uses MLFLOW_TRACKING_URI when set, else WORKDIR/mlflow.db."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="NAME", help="registered model name")
    p.add_argument("--rollback", action="store_true", help="undo the last promotion")
    p.add_argument("--force", action="store_true",
                   help="promote without an evaluation that decided promote (needs --reason; recorded on the versions)")
    p.add_argument("--reason", default=None, metavar="TEXT",
                   help="why: required with --force, optional otherwise (also with --rollback); recorded on the versions")
    p.add_argument("--db", default=None, metavar="URL",
                   help="recompute the decision from this prediction store (SQLite path or SQLAlchemy URL) over the "
                        "runs that shadowed the challenger version, instead of reading the latest MLflow evaluation")
    p.add_argument("--experiment", default=EVALUATION_EXPERIMENT, help="MLflow experiment holding the evaluation runs")
    p.add_argument("--alpha", type=float, default=EvalConfig.default("alpha"),
                   help="with --db: 1 - confidence level of the decision's interval (as `shadowcam evaluate --alpha`)")
    p.add_argument("--delta", type=float, default=EvalConfig.default("delta"),
                   help="with --db: decision margin, as `shadowcam evaluate --delta` (promote needs the lower bound above +delta)")
    p.add_argument("--workdir", default=".", help="work directory holding mlflow.db (when MLFLOW_TRACKING_URI is not set)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _store_evidence(args: argparse.Namespace, version: str):
    """The challenger version's decision recomputed from the prediction store ``args.db``."""
    from sqlalchemy.engine import make_url

    from pipeline import tracking
    from pipeline.evaluation.evaluator import Evaluator
    from pipeline.store import PredictionStore

    store = PredictionStore(args.db, must_exist=True)
    try:
        where = make_url(store.url).render_as_string(hide_password=True)
        cfg = EvalConfig(alpha=args.alpha, delta=args.delta, workdir=str(args.workdir))
        return tracking.store_evidence(
            args.model, version, where, store.list_runs(),
            lambda run_ids: Evaluator(cfg.model_copy(update={"run_ids": run_ids})).evaluate(store))
    finally:
        store.close()


def main(args: argparse.Namespace) -> int:
    import json

    from pipeline import tracking
    from pipeline.types import ConfigError

    if args.rollback and (args.force or args.db):
        raise ConfigError("--force and --db apply to a promotion, not to --rollback")
    if args.force and not (args.reason or "").strip():
        raise ConfigError("--force needs --reason TEXT: say why the evidence is overridden (it is recorded on the model versions)")
    if args.db:  # a mistyped store is refused before the registry is read (and is never created)
        from pipeline.store import PredictionStore

        PredictionStore(args.db, must_exist=True).close()

    uri = tracking.configure(args.workdir)
    evidence = None
    if args.rollback:
        result = tracking.rollback(args.model, tags=tracking.rollback_tags(args.reason))
    else:
        version = tracking.challenger_version(args.model)
        evidence = _store_evidence(args, version) if args.db else tracking.latest_evaluation(args.model, version, args.experiment)
        tracking.check_promotion_evidence(evidence, force=args.force, reason=args.reason)
        forced = args.force and not evidence.allows_promotion
        result = tracking.promote(args.model, tags=tracking.promotion_tags(evidence, forced=forced, reason=args.reason),
                                  expect_challenger=version)
        result.update(evidence=evidence.to_dict(), forced=forced)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{'rolled back' if args.rollback else 'promoted'} {args.model} ({uri}):")
    if evidence is not None:
        print(f"  evidence: {evidence.describe()}")
        if result["forced"]:
            print(f"  forced: {args.reason.strip()}")
    elif args.reason:
        print(f"  reason: {args.reason.strip()}")
    for line in result["moved"]:
        print(f"  {line}")
    print(f"  recorded on version(s) {', '.join(result.get('recorded', {}))}")
    return 0
