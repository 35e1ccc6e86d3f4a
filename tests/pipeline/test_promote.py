"""``shadowcam promote`` only on evidence: against a real local MLflow store (SQLite in tmp_path) with tiny ONNX models
registered in it, evaluation runs logged by ``tracking.log_evaluation`` or as tags, and small prediction stores."""

from __future__ import annotations

import json
import time
from datetime import datetime

import numpy as np
import pytest

from pipeline import tracking
from pipeline.config import EVALUATION_EXPERIMENT
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.tracking import PromotionEvidence, PromotionRefused, RegistryError
from pipeline.types import Label, Prediction
from tests.helpers.onnx_models import make_tiny_classifier

CLASSES = ["a", "b", "c"]
T0 = 1_700_000_000.0


@pytest.fixture(scope="module")
def mlstore(tmp_path_factory):
    """One MLflow store for the module (creating the SQLite schema takes seconds); each test uses its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    tracking.configure(root)
    tracking.get_or_create_experiment(EVALUATION_EXPERIMENT, root)  # creates the tables now, not inside a test
    yield root
    mp.undo()


def _register(tmp_path, name: str, versions: int = 2, champion: str | None = "1", challenger: str | None = "2") -> None:
    for i in range(1, versions + 1):
        path = make_tiny_classifier(tmp_path / f"{name}_v{i}.onnx", CLASSES, seed=i)
        tracking.register_onnx(path, name)
    if champion:
        tracking.set_alias(name, "champion", champion)
    if challenger:
        tracking.set_alias(name, "challenger", challenger)


def _evaluation(shadow: str, decision: str, age_s: float = 0.0, incumbent: str = "other:1", **tags: str) -> str:
    """An evaluation run as log_evaluation tags it, started ``age_s`` seconds ago; returns its id."""
    from mlflow import MlflowClient

    client = MlflowClient()
    exp_id = tracking.get_or_create_experiment(EVALUATION_EXPERIMENT)
    run = client.create_run(exp_id, start_time=int(1000 * (time.time() - age_s)), tags={
        "shadowcam.kind": "evaluation", "shadow_model": shadow, "incumbent_model": incumbent, "decision": decision,
        "runs": "run1", **tags})
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def _version_tags(name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(name, version).tags
    return {k: v for k, v in tags.items() if k.startswith("shadowcam.")}


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from pipeline.cli import main

    rc = main(["promote", *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _one_line(err: str) -> str:
    """The CLI's error: one line, the last one (MLflow's own log lines may come before it)."""
    lines = [line for line in err.strip().splitlines() if " mlflow." not in line]
    assert len(lines) == 1 and lines[0].startswith("shadowcam promote: error: "), err
    return lines[0]


def _store_where_shadow_wins(path, incumbent: str, shadow: str, n: int = 200, run_id: str = "r1",
                             started: PredictionStore | None = None) -> PredictionStore:
    """Every frame labelled (inclusion probability 1): the incumbent is wrong on every 4th frame, the shadow on 1 in 50."""
    store = started or PredictionStore(str(path))
    store.begin_run(run_id, incumbent, shadow, CLASSES, {})
    frames, preds, samples, labels = [], [], [], []

    def probs(t: int, ok: bool) -> tuple[np.ndarray, str]:
        k = t if ok else (t + 1) % 3
        p = np.full(3, 0.05 if ok else 0.2, np.float32)
        p[k] = 0.9 if ok else 0.6
        return p, CLASSES[k]

    for i in range(n):
        fid, t = f"{run_id}:cam:{i}", i % 3
        frames.append(FrameRecord(fid, run_id, "cam", i, T0 + i))
        for role, model, ok in (("incumbent", incumbent, i % 4 != 0), ("shadow", shadow, i % 50 != 1)):
            p, lab = probs(t, ok)
            preds.append(Prediction(fid, "cam", role, model, p, lab, 1.0))
        samples.append(SampleRecord(fid, "cam", "uniform", 1.0, f"samples/{i}.jpg", T0 + i))
        labels.append(Label(fid, CLASSES[t], "ann1", T0 + 1000 + i, "simulated"))
    store.write_batch(frames, preds, (), samples)
    store.add_labels(labels)
    return store


# --- the CLI ---------------------------------------------------------------------------------------------------
def test_no_evaluation_refuses_with_one_line(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-none")
    rc, out, err = _cli(capsys, "--model", "pr-none", "--workdir", str(tmp_path))
    assert rc == 2 and out == ""
    line = _one_line(err)
    assert "cannot promote pr-none version 2 (challenger)" in line
    assert "no evaluation of pr-none:2" in line and "shadowcam evaluate" in line and "--force --reason" in line
    assert tracking.get_aliases("pr-none") == {"champion": "1", "challenger": "2"}
    assert _version_tags("pr-none", "2") == {}


def test_need_more_labels_from_log_evaluation_and_from_the_store_refuses(mlstore, tmp_path, capsys):
    """The whole chain: a real evaluation of a small store logged by log_evaluation, then the same store by --db."""
    from pipeline.evaluation.evaluator import EvalConfig, Evaluator
    from tests.helpers.evaluation_data import StoreSpec, build_store

    _register(tmp_path, "sh")  # the helper store's shadow is "sh:2", its incumbent "inc:1"
    db_path = tmp_path / "s.db"
    db = build_store(str(db_path), StoreSpec(n=60))
    overall = Evaluator(EvalConfig(reference=0.5)).evaluate(db)
    db.close()
    assert overall.meta.models["shadow"] == "sh:2" and overall.decision.action == "need_more_labels"
    run_id = tracking.log_evaluation([overall], overall, workdir=mlstore)

    rc, out, err = _cli(capsys, "--model", "sh", "--workdir", str(tmp_path))
    line = _one_line(err)
    assert rc == 2 and out == ""
    assert f"MLflow run {run_id}" in line and "vs inc:1" in line and "decided need_more_labels" in line
    assert datetime.now().strftime("%Y-") in line and " UTC" in line
    assert "label more sampled frames" in line and "--force --reason" in line

    rc, out, err = _cli(capsys, "--model", "sh", "--workdir", str(tmp_path), "--db", str(db_path))
    line = _one_line(err)
    assert rc == 2
    assert "recomputed from store" in line and "runs run1" in line and "decided need_more_labels" in line
    assert tracking.get_aliases("sh") == {"champion": "1", "challenger": "2"}
    assert _version_tags("sh", "2") == {}


def test_only_the_latest_evaluation_of_the_challenger_version_counts(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-other", versions=3)
    other = _evaluation("pr-other:3", "promote", age_s=10)  # another version decided promote: no evidence for 2
    rc, _, err = _cli(capsys, "--model", "pr-other", "--workdir", str(tmp_path))
    line = _one_line(err)
    assert rc == 2 and "no evaluation of pr-other:2" in line
    assert f"run {other} of pr-other:3" in line and "decided promote" in line  # what was found instead

    _evaluation("pr-other:2", "promote", age_s=60)  # an older evaluation of version 2 said promote ...
    newest = _evaluation("pr-other:2", "equivalent", age_s=30, decision_interval="[-0.01, 0.02]")  # ... a newer one not
    rc, _, err = _cli(capsys, "--model", "pr-other", "--workdir", str(tmp_path))
    line = _one_line(err)
    assert rc == 2 and f"MLflow run {newest}" in line and "decided equivalent" in line
    assert "does not favour version 2" in line
    assert tracking.get_aliases("pr-other") == {"champion": "1", "challenger": "2"}


def test_promote_decision_promotes_and_records_the_evidence(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-ok")
    _evaluation("pr-ok:2", "need_more_labels", age_s=60)
    run_id = _evaluation("pr-ok:2", "promote", age_s=5, incumbent="pr-ok:1", decision_interval="[0.02, 0.11]",
                         labels_spent="420")
    rc, out, err = _cli(capsys, "--model", "pr-ok", "--workdir", str(tmp_path))
    assert (rc, err) == (0, "")
    assert f"evidence: the latest evaluation of pr-ok:2 (MLflow run {run_id}" in out and "champion: 1 -> 2" in out
    assert tracking.get_aliases("pr-ok") == {"champion": "2", "previous_champion": "1"}

    promoted, demoted = _version_tags("pr-ok", "2"), _version_tags("pr-ok", "1")
    for tags, role in ((promoted, "promoted"), (demoted, "demoted")):
        assert tags["shadowcam.promotion_role"] == role
        assert tags["shadowcam.promotion_forced"] == "false" and "shadowcam.promotion_reason" not in tags
        assert (tags["shadowcam.promoted_version"], tags["shadowcam.demoted_version"]) == ("2", "1")
        assert datetime.fromisoformat(tags["shadowcam.promoted_at"]).tzinfo is not None
        evidence = json.loads(tags["shadowcam.promotion_evidence"])
        assert evidence["decision"] == "promote" and evidence["evaluation_run_id"] == run_id
        assert evidence["shadow_model"] == "pr-ok:2" and evidence["incumbent_model"] == "pr-ok:1"
        assert evidence["details"]["decision_interval"] == "[0.02, 0.11]" and evidence["details"]["labels_spent"] == "420"


def test_force_needs_a_reason(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-noreason")
    for argv in (["--force"], ["--force", "--reason", "  "]):
        rc, _, err = _cli(capsys, "--model", "pr-noreason", "--workdir", str(tmp_path), *argv)
        line = _one_line(err)
        assert rc == 2 and "--force needs --reason TEXT" in line
    rc, _, err = _cli(capsys, "--model", "pr-noreason", "--workdir", str(tmp_path), "--rollback", "--force", "--reason", "x")
    assert rc == 2 and "not to --rollback" in _one_line(err)
    assert tracking.get_aliases("pr-noreason") == {"champion": "1", "challenger": "2"}


def test_force_with_reason_promotes_without_evidence_and_says_so(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-force")
    rc, out, err = _cli(capsys, "--model", "pr-force", "--workdir", str(tmp_path), "--force", "--reason", "incident 42")
    assert (rc, err) == (0, "")
    assert "forced: incident 42" in out and "no evaluation of pr-force:2" in out
    assert tracking.get_aliases("pr-force") == {"champion": "2", "previous_champion": "1"}
    for version in ("1", "2"):
        tags = _version_tags("pr-force", version)
        assert tags["shadowcam.promotion_forced"] == "true" and tags["shadowcam.promotion_reason"] == "incident 42"
        evidence = json.loads(tags["shadowcam.promotion_evidence"])
        assert evidence["decision"] == "none" and evidence["evaluation_run_id"] is None


def test_db_recomputes_the_decision_from_the_store(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-db")
    db_path = tmp_path / "store.db"
    # an older run shadowed version 2 against another incumbent: not the pair of the newest run, left out
    store = _store_where_shadow_wins(db_path, "someone:7", "pr-db:2", n=30, run_id="r0")
    _store_where_shadow_wins(db_path, "pr-db:1", "pr-db:2", run_id="r1", started=store).close()
    rc, out, err = _cli(capsys, "--model", "pr-db", "--workdir", str(tmp_path), "--db", str(db_path), "--json")
    assert (rc, err) == (0, "")
    result = json.loads(out)
    assert result["champion"] == "2" and result["forced"] is False
    assert result["evidence"]["source"] == "store" and result["evidence"]["decision"] == "promote"
    assert result["evidence"]["store_runs"] == "r1" and result["evidence"]["incumbent_model"] == "pr-db:1"
    assert result["evidence"]["details"]["labels_spent"] == 200
    low, high = result["evidence"]["details"]["decision_interval"]
    assert 0 < low < high
    tags = _version_tags("pr-db", "2")
    assert json.loads(tags["shadowcam.promotion_evidence"])["decision"] == "promote"
    assert set(result["recorded"]) == {"1", "2"}


def test_db_without_a_run_of_the_version_refuses(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-dbnone")
    db_path = tmp_path / "store.db"
    _store_where_shadow_wins(db_path, "pr-dbnone:1", "pr-dbnone:3", n=20).close()
    rc, _, err = _cli(capsys, "--model", "pr-dbnone", "--workdir", str(tmp_path), "--db", str(db_path))
    line = _one_line(err)
    assert rc == 2 and "no run shadows pr-dbnone:2 in store" in line and "its runs shadow pr-dbnone:3" in line
    assert tracking.get_aliases("pr-dbnone") == {"champion": "1", "challenger": "2"}


def test_rollback_is_recorded(mlstore, tmp_path, capsys):
    _register(tmp_path, "pr-back")
    _evaluation("pr-back:2", "promote")
    assert _cli(capsys, "--model", "pr-back", "--workdir", str(tmp_path))[0] == 0
    rc, out, err = _cli(capsys, "--model", "pr-back", "--workdir", str(tmp_path), "--rollback", "--reason", "dock 3 complaints")
    assert (rc, err) == (0, "") and "reason: dock 3 complaints" in out and "champion: 2 -> 1" in out
    assert tracking.get_aliases("pr-back") == {"champion": "1", "challenger": "2"}
    for version, role in (("1", "restored"), ("2", "demoted")):
        tags = _version_tags("pr-back", version)
        assert tags["shadowcam.rollback_role"] == role and tags["shadowcam.rollback_reason"] == "dock 3 complaints"
        assert (tags["shadowcam.restored_version"], tags["shadowcam.rolled_back_version"]) == ("1", "2")
        assert datetime.fromisoformat(tags["shadowcam.rolled_back_at"]).tzinfo is not None


# --- the library -----------------------------------------------------------------------------------------------
def test_tracking_promote_and_rollback_without_tags_record_nothing(mlstore, tmp_path):
    """The demo calls tracking.promote(name) after its own decision: unchanged, no evidence check, no tags."""
    _register(tmp_path, "pr-lib")
    assert "recorded" not in tracking.promote("pr-lib")
    assert "recorded" not in tracking.rollback("pr-lib")
    assert _version_tags("pr-lib", "1") == {} and _version_tags("pr-lib", "2") == {}


def test_promote_refuses_when_the_challenger_moved(mlstore, tmp_path):
    _register(tmp_path, "pr-moved", versions=3)
    with pytest.raises(RegistryError, match="now points at version 2, not version 3"):
        tracking.promote("pr-moved", expect_challenger="3")
    assert tracking.get_aliases("pr-moved") == {"champion": "1", "challenger": "2"}


def test_latest_evaluation_without_the_experiment(mlstore):
    ev = tracking.latest_evaluation("pr-x", "1", experiment="no-such-experiment")
    assert (ev.evaluation, ev.decision, ev.allows_promotion) == (None, None, False)
    assert "no evaluation of pr-x:1 in MLflow experiment 'no-such-experiment'" in ev.describe()


@pytest.mark.parametrize("runs,expected", [
    ([], []),
    ([{"run_id": "a", "incumbent_model": "m:1", "shadow_model": "m:3"}], []),
    ([{"run_id": "a", "incumbent_model": "m:1", "shadow_model": "m:2"},
      {"run_id": "b", "incumbent_model": "m:0", "shadow_model": "m:2"},
      {"run_id": "c", "incumbent_model": "m:1", "shadow_model": "m:2"},
      {"run_id": "d", "incumbent_model": "m:1", "shadow_model": "m:3"}], ["a", "c"]),
    ([{"run_id": "a", "incumbent_model": "m:1", "shadow_model": None}], []),
], ids=["no runs", "other version", "newest pair only", "no shadow"])
def test_shadow_runs_pick_the_newest_pair_of_the_version(runs, expected):
    assert tracking.shadow_runs(runs, "m:2") == expected


@pytest.mark.parametrize("decision,details,advice", [
    (None, {}, "label more sampled frames and evaluate again"),
    ("need_more_labels", {"more_labels": 120}, "label more sampled frames (about 120 more paired labels)"),
    ("keep", {}, "does not favour version 4"),
    ("retire", {}, "does not favour version 4"),
    ("equivalent", {}, "does not favour version 4"),
], ids=["no decision", "need more labels", "old keep", "retire", "equivalent"])
def test_refusal_names_version_decision_run_date_and_what_to_do(decision, details, advice):
    ev = PromotionEvidence("m", "4", "mlflow", EVALUATION_EXPERIMENT, evaluation="abc123", decision=decision,
                           evaluated_at=T0, incumbent_model="m:3", details=details)
    with pytest.raises(PromotionRefused) as e:
        tracking.check_promotion_evidence(ev)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("cannot promote m version 4 (challenger): the latest evaluation of m:4")
    assert "MLflow run abc123, 2023-11-14 22:13 UTC, vs m:3" in msg
    assert f"decided {decision or 'nothing'}" in msg and advice in msg and msg.endswith("--force --reason TEXT")
    tracking.check_promotion_evidence(ev, force=True, reason="because")  # the override passes
    with pytest.raises(PromotionRefused, match="--force needs --reason"):
        tracking.check_promotion_evidence(ev, force=True, reason=" ")


def test_promote_evidence_passes_and_tags_hold_it():
    ev = PromotionEvidence("m", "4", "store", "sqlite:///s.db", evaluation="r1,r2", decision="promote", evaluated_at=T0,
                           details={"reason": "x" * 1000})
    tracking.check_promotion_evidence(ev)
    tags = tracking.promotion_tags(ev, reason=" checked ")
    doc = json.loads(tags["shadowcam.promotion_evidence"])
    assert tags["shadowcam.promotion_forced"] == "false" and tags["shadowcam.promotion_reason"] == "checked"
    assert doc["store"] == "sqlite:///s.db" and doc["store_runs"] == "r1,r2" and doc["evaluated_at"] == "2023-11-14T22:13:20+00:00"
    assert len(doc["details"]["reason"]) == 300  # long details are cut to fit registry tag values
    assert json.loads(tracking.promotion_tags(None, forced=True)["shadowcam.promotion_evidence"]) == {"decision": "none"}
    assert tracking.rollback_tags() == {} and tracking.rollback_tags("why") == {"shadowcam.rollback_reason": "why"}
