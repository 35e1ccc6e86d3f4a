"""models.train + `shadowcam train`: a tiny real training run, its MLflow run and registration, config errors,
and the CLI end to end (retraining from the checkpoint on concatenated sources, then promotion)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.modelcard import read_card
from pipeline.types import ConfigError
from tests.helpers.training import SHAPE_CLASSES, make_shapes, write_manifest


def test_tiny_training_is_well_above_chance(tiny_run):
    r = tiny_run.result
    assert r.test_accuracy >= 0.7  # chance is 1/3
    assert r.val_accuracy >= 0.7
    assert len(r.history) == 4 and 1 <= r.best_epoch <= 4
    assert r.val_accuracy == max(h["val_accuracy"] for h in r.history)
    cm = np.array(r.confusion)
    assert cm.shape == (3, 3) and cm.sum() == r.card.test_size == 36
    assert r.test_accuracy == pytest.approx(np.trace(cm) / cm.sum())
    assert set(r.per_class_accuracy) == set(SHAPE_CLASSES)
    for f in ("model.onnx", "model_fp16.onnx", "best.pt", "card.json", "confusion_matrix.png", "config.yaml", "metrics.json"):
        assert (r.out_dir / f).is_file(), f
    assert 0 < r.card.temperature and 1 / 3 <= r.card.atc_threshold < 1


def test_model_file_carries_the_training_reference(tiny_run):
    """Drift against training needs the validation split as the model saw it, inside the ONNX file."""
    from pipeline.evaluation.reference import TrainingReference
    from pipeline.imagestats import STAT_NAMES

    r = tiny_run.result
    card = read_card(r.onnx_path)
    ref = TrainingReference.from_dict(card.training_reference)
    n_val = r.card.extra["val_size"]
    assert ref.n == ref.n_total == n_val and ref.classes == tuple(SHAPE_CLASSES)
    np.testing.assert_allclose(ref.probs.sum(axis=1), 1.0, atol=1e-3)
    assert set(ref.image_stats) == set(STAT_NAMES) and all(len(v) == n_val for v in ref.image_stats.values())
    assert (r.out_dir / "training_reference.json").is_file()
    # the training images per class (the evaluator's majority-class baseline reads them)
    counts = card.extra["class_counts"]
    assert list(counts) == list(SHAPE_CLASSES) and sum(counts.values()) == r.card.extra["train_size"]
    assert all(n > 0 for n in counts.values())


def test_training_run_is_logged_and_registered(tiny_run, monkeypatch):
    from mlflow import MlflowClient

    from pipeline import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run.tracking_uri)
    tracking.configure()
    r = tiny_run.result
    client = MlflowClient()
    run = client.get_run(r.run_id)
    assert run.data.params["arch"] == "mobilenet_v3_small" and run.data.params["img_size"] == "32"
    assert run.data.metrics["test_accuracy"] == pytest.approx(r.test_accuracy)
    assert "test_accuracy_circle" in run.data.metrics and "export_max_abs_diff" in run.data.metrics
    assert [m.step for m in client.get_metric_history(r.run_id, "val_accuracy")] == [1, 2, 3, 4]
    arts = {a.path for a in client.list_artifacts(r.run_id)} | {a.path for a in client.list_artifacts(r.run_id, "model")}
    assert {"model/model.onnx", "card.json", "confusion_matrix.png", "config.yaml", "metrics.json"} <= arts
    assert r.registered_version == tracking.get_version_by_alias("tiny", "challenger")
    path, _, _ = tracking.resolve_model_uri("models:/tiny@challenger", tiny_run.root / "cache")
    card = read_card(path)
    assert card.training_run_id == r.run_id and card.name == "tiny"
    # the fp16 export of the same run registers as a version of its own (as the demo does)
    v = tracking.register_onnx(r.onnx_fp16_path, "tiny-fp16", alias="challenger", run_id=r.run_id)
    path16, _, _ = tracking.resolve_model_uri(f"models:/tiny-fp16/{v}", tiny_run.root / "cache")
    assert path16.name == "model_fp16.onnx" and read_card(path16).precision == "fp16"
    # the artifacts stay in the work directory
    assert str(tiny_run.root) in client.get_experiment(run.info.experiment_id).artifact_location


def test_training_is_seeded(shapes_data, tmp_path):
    from models.train import make_config, train

    runs = [train(make_config(data=[str(shapes_data)], img_size=32, epochs=1, batch_size=32, out=str(tmp_path / f"r{i}"),
                              track=False, progress=False, seed=3)) for i in range(2)]
    assert runs[0].history[0]["train_loss"] == runs[1].history[0]["train_loss"]
    assert runs[0].history[0]["val_loss"] == runs[1].history[0]["val_loss"]
    assert runs[0].card.temperature == runs[1].card.temperature
    assert runs[0].card.data_fingerprint == runs[1].card.data_fingerprint


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_cli_defaults_come_from_train_config(command):
    """The CLI declares no training default of its own: every option's default is TrainConfig's."""
    from pipeline.cli import get_args_parser
    from pipeline.config import TrainConfig

    argv = [command, "--data", "d"] + (["--db", "x.db"] if command == "retrain" else [])
    args = vars(get_args_parser().parse_args(argv))
    # retrain registers its model as the challenger by design; every other shared option keeps train's default
    shared = [k for k in args if k in TrainConfig.model_fields and k != "data" and not (command == "retrain" and k == "alias")]
    assert {"arch", "img_size", "epochs", "seed", "experiment"} <= set(shared)
    for k in shared:
        assert args[k] == TrainConfig.default(k), k


def test_train_help(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for opt in ("--data", "--arch", "--img-size", "--epochs", "--weights", "--experiment", "--register", "--alias", "--fp16"):
        assert opt in out


@pytest.mark.parametrize("kwargs,match", [
    ({"arch": "vgg16"}, "'arch'"),
    ({"epochs": 0}, "'epochs'"),
    ({"alias": "champion"}, "--alias needs --register"),
    ({"unknown_option": 1}, "'unknown_option'"),
])
def test_config_errors(kwargs, match, tmp_path):
    from models.train import make_config

    with pytest.raises(ConfigError, match=match):
        make_config(data=[str(tmp_path)], **kwargs)


def test_weights_errors(tmp_path):
    import torch

    from models.export import build_backbone
    from models.train import load_weights

    net = build_backbone("mobilenet_v3_small", 3)
    with pytest.raises(ConfigError, match="weights file not found"):
        load_weights(net, tmp_path / "none.pt")
    torch.save({"foo.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="none of its 1 tensors fit"):
        load_weights(net, tmp_path / "other.pt")
    # a head for another number of classes is skipped, the rest loads
    torch.save(build_backbone("mobilenet_v3_small", 5).state_dict(), tmp_path / "five.pt")
    loaded, total = load_weights(net, tmp_path / "five.pt")
    assert loaded == total - 2


def test_cli_end_to_end_retrain_with_production_labels_then_promote(tiny_run, tmp_path, monkeypatch, capsys):
    """Retrain from the checkpoint on the original data + a manifest of "production" images, register it as
    champion, then promote the earlier challenger over it."""
    from pipeline import tracking
    from pipeline.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run.tracking_uri)
    prod = make_shapes(tmp_path / "prod", n_per_class=6, size=32, seed=5)
    rows = [(f"{c}/{i:04d}.png", c, "train") for c in SHAPE_CLASSES for i in range(6)]
    manifest = write_manifest(prod / "labels.csv", rows, ("path", "label", "split"))
    out = tmp_path / "retrained"
    rc = main(["train", "--data", str(tiny_run.data), "--data", str(manifest), "--img-size", "32", "--epochs", "1", "--lr", "1e-3",
               "--batch-size", "32", "--weights", str(tiny_run.result.checkpoint_path), "--out", str(out),
               "--workdir", str(tiny_run.root), "--register", "tiny", "--alias", "champion", "--no-progress",
               "--json", str(tmp_path / "result.json")])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "registered: tiny version 2" in printed
    res = json.loads((tmp_path / "result.json").read_text())
    card = read_card(out / "model.onnx")
    assert card.extra["train_size"] == tiny_run.result.card.extra["train_size"] + 18
    assert card.data_fingerprint != tiny_run.result.card.data_fingerprint
    assert res["test_accuracy"] >= 0.7  # starts from the trained weights
    tracking.configure()
    assert tracking.get_aliases("tiny") == {"challenger": "1", "champion": "2"}
    # no evaluation of the challenger yet: promotion is refused in one line, the aliases stay
    assert main(["promote", "--model", "tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no evaluation of tiny:1" in err
    assert tracking.get_aliases("tiny") == {"challenger": "1", "champion": "2"}
    # an override with a reason is recorded on the versions
    assert main(["promote", "--model", "tiny", "--force", "--reason", "CLI end-to-end test"]) == 0
    assert tracking.get_aliases("tiny") == {"champion": "1", "previous_champion": "2"}
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version("tiny", "1").tags
    assert tags["shadowcam.promotion_forced"] == "true" and tags["shadowcam.promotion_reason"] == "CLI end-to-end test"


def test_cli_reports_data_errors_in_one_line(tmp_path, capsys):
    from pipeline.cli import main

    rc = main(["train", "--data", str(tmp_path / "missing"), "--no-mlflow", "--no-progress", "--workdir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing: data folder not found" in err
    assert not (tmp_path / "training").exists()  # nothing written for a run that never started
