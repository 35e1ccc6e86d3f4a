"""pipeline.tracking against a real local MLflow store (SQLite in tmp_path): registry, aliases, promote/rollback,
resolving models:/ URIs. The ONNX files are tiny graphs built without torch."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import tracking
from pipeline.modelcard import read_card
from pipeline.tracking import RegistryError
from tests.helpers.training import make_tiny_onnx


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating the SQLite schema takes seconds); each test uses its own model name."""
    root = tmp_path_factory.mktemp("mlflow")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    tracking.configure(root)
    yield root
    mp.undo()


@pytest.fixture
def onnx_files(tmp_path):
    return [make_tiny_onnx(tmp_path / f"v{i}" / "model.onnx", seed=i) for i in range(3)]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_tracking_uri_defaults_to_sqlite_in_workdir(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.artifact_root(tmp_path) == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/x.db")
    assert tracking.tracking_uri(tmp_path) == "sqlite:////elsewhere/x.db"


def test_pipeline_tracking_imports_without_mlflow():
    code = "import sys, pipeline.tracking, pipeline.commands.train, pipeline.commands.promote; " \
           "bad = [m for m in ('mlflow', 'torch', 'albumentations') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stdout + r.stderr


def test_register_versions_keep_the_file_and_card_intact(store, onnx_files, tmp_path):
    v1 = tracking.register_onnx(onnx_files[0], "reg-intact", alias="champion")
    v2 = tracking.register_onnx(onnx_files[1], "reg-intact", alias="challenger")
    assert (v1, v2) == ("1", "2")
    assert tracking.get_aliases("reg-intact") == {"champion": "1", "challenger": "2"}
    path, name, version = tracking.resolve_model_uri("models:/reg-intact@challenger", tmp_path / "cache")
    assert (name, version) == ("reg-intact", "2")
    assert path.suffix == ".onnx" and _sha(path) == _sha(onnx_files[1])
    assert read_card(path).extra["seed"] == 1
    # artifacts live next to the store, not in the current directory
    assert any((store / "mlartifacts").rglob("model.onnx"))


def test_two_files_of_one_run_register_as_separate_versions(store, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(tracking.get_or_create_experiment("reg-test", store)).info.run_id
    a = make_tiny_onnx(tmp_path / "model.onnx", seed=5)
    b = make_tiny_onnx(tmp_path / "model_fp16.onnx", seed=6)
    va = tracking.register_onnx(a, "reg-run", run_id=run_id)
    vb = tracking.register_onnx(b, "reg-run", run_id=run_id)
    pa, _, _ = tracking.resolve_model_uri(f"models:/reg-run/{va}", tmp_path / "cache")
    pb, _, _ = tracking.resolve_model_uri(f"models:/reg-run/{vb}", tmp_path / "cache")
    assert (pa.name, _sha(pa)) == ("model.onnx", _sha(a))
    assert (pb.name, _sha(pb)) == ("model_fp16.onnx", _sha(b))
    assert tracking.register_onnx(a, "reg-run", run_id=run_id) == "3"  # same file again: no second upload needed


def test_resolve_by_version_and_cache_reuse(store, onnx_files, tmp_path):
    tracking.register_onnx(onnx_files[2], "reg-resolve")
    p1, _, v = tracking.resolve_model_uri("models:/reg-resolve/1", tmp_path / "cache")
    assert v == "1" and p1.parent.parent.name == "reg-resolve"
    stamp = p1.stat().st_mtime_ns
    p2, _, _ = tracking.resolve_model_uri("models:/reg-resolve/1", tmp_path / "cache")
    assert p2 == p1 and p2.stat().st_mtime_ns == stamp  # not downloaded again


def test_resolve_plain_path(onnx_files, tmp_path):
    assert tracking.resolve_model_uri(str(onnx_files[0]), tmp_path) == (onnx_files[0], "model", "")


def test_promote_and_rollback_move_the_aliases(store, onnx_files):
    name = "reg-promote"
    for f, alias in zip(onnx_files, ("champion", None, "challenger")):
        tracking.register_onnx(f, name, alias=alias)
    assert tracking.get_aliases(name) == {"champion": "1", "challenger": "3"}

    r = tracking.promote(name)
    assert (r["champion"], r["previous_champion"], r["challenger"]) == ("3", "1", None)
    assert tracking.get_aliases(name) == {"champion": "3", "previous_champion": "1"}
    assert r["moved"][0] == "champion: 1 -> 3"

    r = tracking.rollback(name)
    assert (r["champion"], r["challenger"]) == ("1", "3")
    assert tracking.get_aliases(name) == {"champion": "1", "challenger": "3"}

    with pytest.raises(RegistryError, match="no 'previous_champion'"):
        tracking.rollback(name)
    tracking.promote(name)  # promoting again after a rollback works the same way
    assert tracking.get_aliases(name) == {"champion": "3", "previous_champion": "1"}
    with pytest.raises(RegistryError, match="no 'challenger' alias to promote"):
        tracking.promote(name)


def test_first_promotion_without_champion(store, onnx_files):
    tracking.register_onnx(onnx_files[0], "reg-first", alias="challenger")
    r = tracking.promote("reg-first")
    assert r["previous_champion"] is None
    assert tracking.get_aliases("reg-first") == {"champion": "1"}


def test_set_alias_and_get_version_by_alias(store, onnx_files):
    tracking.register_onnx(onnx_files[0], "reg-alias")
    tracking.register_onnx(onnx_files[1], "reg-alias")
    tracking.set_alias("reg-alias", "champion", 2)
    assert tracking.get_version_by_alias("reg-alias", "champion") == "2"
    tracking.set_alias("reg-alias", "champion", "1")
    assert tracking.get_version_by_alias("reg-alias", "champion") == "1"


@pytest.mark.parametrize("call,match", [
    (lambda c: tracking.get_version_by_alias("reg-errors", "staging"), r"has no alias 'staging' \(aliases: champion->1\)"),
    (lambda c: tracking.get_aliases("no-such-model"), "registered model 'no-such-model' not found"),
    (lambda c: tracking.promote("no-such-model"), "'no-such-model' not found"),
    (lambda c: tracking.set_alias("reg-errors", "champion", 99), "cannot set alias 'champion' of model 'reg-errors' to version 99"),
    (lambda c: tracking.resolve_model_uri("models:/reg-errors@nope", c), "has no alias 'nope'"),
    (lambda c: tracking.resolve_model_uri("models:/reg-errors/7", c), "has no version 7"),
    (lambda c: tracking.resolve_model_uri("models:/", c), "not a model URI"),
    (lambda c: tracking.resolve_model_uri("missing.onnx", c), "missing.onnx: model file not found"),
    (lambda c: tracking.register_onnx(Path(c) / "x.txt", "reg-errors"), "not an .onnx file"),
], ids=["unknown alias", "unknown model", "promote unknown", "bad version", "resolve alias", "resolve version",
        "bad uri", "missing file", "not onnx"])
def test_registry_errors_name_what_is_missing(store, onnx_files, tmp_path, call, match):
    try:
        tracking.get_aliases("reg-errors")
    except RegistryError:
        tracking.register_onnx(onnx_files[0], "reg-errors", alias="champion")
    with pytest.raises(RegistryError, match=match):
        call(tmp_path)


def test_promote_cli(store, onnx_files, capsys):
    from pipeline.cli import main

    tracking.register_onnx(onnx_files[0], "reg-cli", alias="champion")
    tracking.register_onnx(onnx_files[1], "reg-cli", alias="challenger")
    from mlflow import MlflowClient  # the evaluation the promotion rests on (tests/pipeline/test_promote.py tests the rule)

    MlflowClient().create_run(tracking.get_or_create_experiment(tracking.EVALUATION_EXPERIMENT, store), tags={
        "shadowcam.kind": "evaluation", "shadow_model": "reg-cli:2", "decision": "promote"})
    assert main(["promote", "--model", "reg-cli"]) == 0
    out = capsys.readouterr().out
    assert "champion: 1 -> 2" in out and "previous_champion: (none) -> 1" in out
    assert main(["promote", "--model", "reg-cli", "--rollback"]) == 0
    assert "champion: 2 -> 1" in capsys.readouterr().out
    assert tracking.get_aliases("reg-cli") == {"champion": "1", "challenger": "2"}
    assert main(["promote", "--model", "reg-cli", "--rollback"]) == 2
    assert "nothing to roll back" in capsys.readouterr().err


def test_log_evaluation_logs_the_given_artifacts_folder_and_config(store, tmp_path):
    """Without ``write_report`` the caller's folder is logged as it is, plus the evaluation config."""
    from mlflow import MlflowClient

    from pipeline.evaluation.evaluator import EvalConfig, Evaluator
    from tests.helpers.evaluation_data import StoreSpec, build_store

    db = build_store(str(tmp_path / "s.db"), StoreSpec(n=60))
    overall = Evaluator(EvalConfig(reference=0.5)).evaluate(db)
    db.close()
    out = tmp_path / "art"
    out.mkdir()
    (out / "note.txt").write_text("written by the caller")
    run_id = tracking.log_evaluation([overall], overall, experiment="eval-artifacts", workdir=store, artifacts_dir=out,
                                     run_name="given folder")
    client = MlflowClient()
    run = client.get_run(run_id)
    assert {a.path for a in client.list_artifacts(run_id)} == {"note.txt", "eval_config.json"}
    assert run.data.params["reference"] == "0.5" and run.data.params["windows"] == "1"
    assert run.data.tags["shadowcam.kind"] == "evaluation" and run.data.tags["decision"] == overall.decision.action
    assert run.data.metrics["prod_accuracy/incumbent"] == overall.models["incumbent"].accuracy.value
    assert run.data.metrics["overall/labels"] == overall.counts.labels
