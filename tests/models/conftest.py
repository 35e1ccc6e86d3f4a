"""Shared fixtures for the training-side tests: tiny shapes data and ONE tiny training run per session
(mobilenet_v3_small at 32 px, a few epochs), reused by the training, export and registry tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.training import make_shapes


@dataclass
class TinyRun:
    result: object  # models.train.TrainResult
    root: Path
    data: Path
    tracking_uri: str


@pytest.fixture(scope="session")
def shapes_data(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "data", n_per_class=80, size=32, seed=0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shapes_data) -> TinyRun:
    from models.train import make_config, train

    root = tmp_path_factory.mktemp("tiny_run")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        cfg = make_config(data=[str(shapes_data)], arch="mobilenet_v3_small", img_size=32, epochs=4, batch_size=32,
                          out=str(root / "out"), workdir=str(root), register_name="tiny", alias="challenger",
                          fp16=True, progress=False, seed=0, augment="conveyor")  # shapes have no orientation
        result = train(cfg)
    return TinyRun(result, root, shapes_data, uri)
