"""models.loader + the streaming training path: same results whatever the workers and cache, unreadable images
skipped while streaming, resumable runs, early stopping, class balance, augmentation policies, initial weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.types import ConfigError
from tests.helpers.training import make_shapes


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes") / "data", n_per_class=40, size=32, seed=1)


def _train(data, out, **kw):
    from models.train import make_config, train

    base = dict(data=[str(data)], img_size=32, epochs=2, batch_size=32, out=str(out), workdir=str(out.parent),
                progress=False, seed=0, workers=0, track=False, augment="conveyor")
    return train(make_config(**{**base, **kw}))


def _weights(result):
    import torch

    return torch.load(result.checkpoint_path, map_location="cpu", weights_only=False)


def _same_weights(a, b) -> bool:
    sa, sb = _weights(a)["state_dict"], _weights(b)["state_dict"]
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k].numpy(), sb[k].numpy()) for k in sa)


def test_streamed_with_a_worker_equals_cached_in_memory(shapes, tmp_path):
    """Augmentation is seeded per (epoch, image) and the order per epoch: the batches are the same whether the
    images stream from disk through a worker process or come from the in-memory cache."""
    cached = _train(shapes, tmp_path / "cached", cache="memory", workers=0)
    streamed = _train(shapes, tmp_path / "streamed", cache="none", workers=1)
    assert [h["train_loss"] for h in cached.history] == pytest.approx([h["train_loss"] for h in streamed.history], abs=1e-6)
    assert cached.test_accuracy == streamed.test_accuracy
    assert _same_weights(cached, streamed)
    params = json.loads((tmp_path / "streamed" / "metrics.json").read_text())["final"]
    assert params["unreadable_images"] == 0


def test_unreadable_images_are_skipped_while_streaming(shapes, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(shapes, data)
    (data / "circle" / "0000.png").write_bytes(b"not a png")
    r = _train(data, tmp_path / "out", cache="none", epochs=1)
    final = json.loads((tmp_path / "out" / "metrics.json").read_text())["final"]
    assert final["unreadable_images"] == 1
    # the unreadable image is in one split; the val and test figures cover the readable ones only
    assert r.card.extra["val_size"] + r.card.test_size in (35, 36) and sum(r.confusion[0]) + sum(r.confusion[1]) + sum(r.confusion[2]) == r.card.test_size
    for i in range(1, 13):  # 13 of 120 unreadable: above max_bad_fraction 5%
        (data / "square" / f"{i:04d}.png").write_bytes(b"")
    from pipeline.types import DataError

    # streaming finds them as it goes: the run fails once the training split alone is past the limit
    with pytest.raises(DataError, match=r"of 120 images \(.*\) are missing or unreadable, more than max_bad_fraction"):
        _train(data, tmp_path / "out2", cache="none", epochs=1)


def test_an_interrupted_run_resumes_to_the_same_model(shapes, tmp_path, monkeypatch):
    """Interrupt after epoch 2 of 3, resume from last.pt: the same weights as a run that was never interrupted,
    in the same MLflow run."""
    from mlflow import MlflowClient

    import models.loader as loader

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    whole = _train(shapes, tmp_path / "whole", epochs=3, track=True)

    real = loader.EpochOrder.set_epoch

    def stop_at_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        real(self, epoch)

    monkeypatch.setattr(loader.EpochOrder, "set_epoch", stop_at_3)
    with pytest.raises(KeyboardInterrupt):
        _train(shapes, tmp_path / "cut", epochs=3, track=True)
    monkeypatch.setattr(loader.EpochOrder, "set_epoch", real)
    assert (tmp_path / "cut" / "last.pt").is_file() and not (tmp_path / "cut" / "model.onnx").exists()

    with pytest.raises(ConfigError, match="differs from the interrupted one in lr"):
        _train(shapes, tmp_path / "cut", epochs=3, track=True, lr=1e-3, resume=str(tmp_path / "cut"))
    resumed = _train(shapes, tmp_path / "cut", epochs=3, track=True, resume=str(tmp_path / "cut"))
    assert len(resumed.history) == 3 and resumed.history[-1]["epoch"] == 3
    assert _same_weights(whole, resumed) and resumed.test_accuracy == whole.test_accuracy
    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(resumed.run_id, "val_accuracy")]
    assert steps == [1, 2, 3]

    with pytest.raises(ConfigError, match="no last.pt"):
        _train(shapes, tmp_path / "x", resume=str(tmp_path / "nowhere"))


def test_early_stopping_when_validation_accuracy_stalls(shapes, tmp_path):
    r = _train(shapes, tmp_path / "es", epochs=8, lr=1e-12, patience=2)
    # with a learning rate of ~0 the accuracy of epoch 1 is never beaten: epochs 2 and 3 stall, then it stops
    assert len(r.history) == 3 and r.card.extra["stopped_early_at_epoch"] == 3
    full = _train(shapes, tmp_path / "full", epochs=3, lr=1e-12)
    assert full.card.extra["stopped_early_at_epoch"] is None


def test_class_weights_and_balanced_order():
    from models.loader import EpochOrder
    from models.train import class_weights

    labels = np.array([0] * 90 + [1] * 10)
    w = class_weights(labels, 3)
    assert w == pytest.approx([100 / 270, 100 / 30, 0.0])
    order = list(EpochOrder(100, seed=0, weights=w[labels]))
    share_minority = np.mean(labels[order] == 1)
    assert 0.38 < share_minority < 0.62  # balanced draws: about half from the 10% class
    assert sorted(EpochOrder(100, seed=0)) == list(range(100))  # unweighted: a permutation


def test_class_balanced_training_runs(shapes, tmp_path):
    for mode in ("loss", "sampler"):
        r = _train(shapes, tmp_path / mode, class_balance=mode, epochs=1)
        assert set(r.per_class_accuracy) == {"circle", "square", "triangle"}


def test_augmentation_policies(tmp_path, shapes):
    import albumentations as A

    from models.augment import build_transform, resolve_policy, save_policy

    names = lambda t: [type(x).__name__ for x in t.transforms]  # noqa: E731
    assert "HorizontalFlip" in names(build_transform("conveyor")) and "VerticalFlip" in names(build_transform("conveyor"))
    generic = build_transform("generic")
    assert not {"HorizontalFlip", "VerticalFlip"} & set(names(generic))
    affine = next(x for x in generic.transforms if isinstance(x, A.Affine))
    assert max(abs(v) for v in affine.rotate) <= 10
    # auto: conveyor for a `shadowcam synth` set (its manifest has the generator's shift column), generic otherwise
    synth = tmp_path / "synth"
    synth.mkdir()
    (synth / "manifest.csv").write_text("path,label,split,shift\n")
    assert resolve_policy("auto", [str(synth)]) == "conveyor" and resolve_policy("auto", [str(shapes)]) == "generic"
    assert resolve_policy("light", []) == "conveyor"
    # a policy file in albumentations' own format is used as it is, and recorded with the run
    policy = save_policy(A.Compose([A.ToGray(p=1.0)]), tmp_path / "grey.json")
    r = _train(shapes, tmp_path / "grey", augment=str(policy), epochs=1)
    recorded = json.loads((tmp_path / "grey" / "augmentation.json").read_text())
    assert "ToGray" in json.dumps(recorded) and r.card.extra["augment"] == str(policy)


def test_bad_augmentation_policies_are_one_line_errors(tmp_path, shapes):
    from models.augment import load_policy
    from models.train import make_config

    with pytest.raises(ConfigError, match="'augment'.*conveyor, generic.*no such file"):
        make_config(data=[str(shapes)], augment="sideways")
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ConfigError, match="bad.json is not an albumentations policy"):
        load_policy(bad)


def test_initial_weights_from_the_local_torch_cache_or_from_scratch(tmp_path, monkeypatch):
    import torch
    import torchvision

    from models.train import cached_torchvision_weights, initial_weights, make_config

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.hub.set_dir(str(tmp_path / "torch" / "hub"))
    cfg = make_config(data=[str(tmp_path)], arch="mobilenet_v3_small")
    path, how = initial_weights(cfg)
    assert path is None and how.startswith("from scratch") and "never downloads" in how
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    f = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    f.parent.mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict(), f)
    assert cached_torchvision_weights("mobilenet_v3_small") == f
    path, how = initial_weights(cfg)
    assert path == str(f) and "local torch cache" in how
    assert initial_weights(make_config(data=[str(tmp_path)], pretrained=False))[0] is None
    assert initial_weights(make_config(data=[str(tmp_path)], weights="w.pt")) == ("w.pt", "--weights w.pt")
