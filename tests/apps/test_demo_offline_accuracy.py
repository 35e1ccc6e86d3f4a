"""``apps.demo.offline_accuracy``: a model file scored on a labelled image folder through the serving runtime."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from apps.demo import offline_accuracy
from pipeline.evaluation.stats import wilson_interval
from pipeline.types import DataError
from tests.helpers.onnx_models import make_tiny_classifier, red_only_weights


def write_folder(folder: Path, rows: list[tuple[str, str]]) -> Path:
    """rows: (colour, label) -> 40x30 BGR images and a generate_dataset-style manifest.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    bgr = {"red": (0, 0, 255), "blue": (255, 0, 0)}
    with (folder / "manifest.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for i, (colour, label) in enumerate(rows):
            img = np.zeros((30, 40, 3), np.uint8)
            img[:] = bgr[colour]
            cv2.imwrite(str(folder / f"{i:03d}.png"), img)
            w.writerow([f"{i:03d}.png", label])
    return folder


def test_offline_accuracy_counts_what_the_served_model_answers(tmp_path: Path) -> None:
    names = ["red", "other"]
    W, b = red_only_weights(names)
    model = make_tiny_classifier(tmp_path / "m.onnx", names, weights=W, bias=b)
    # 6 red images labelled red, 3 blue labelled other, 1 blue mislabelled red: the model is right on 9 of 10
    rows = [("red", "red")] * 6 + [("blue", "other")] * 3 + [("blue", "red")]
    folder = write_folder(tmp_path / "test", rows)
    got = offline_accuracy(model, folder, batch_size=4)  # batches of 4: the last one is short
    lo, hi = wilson_interval(9, 10)
    assert got == {"accuracy": 0.9, "low": pytest.approx(lo), "high": pytest.approx(hi), "n": 10}


def test_offline_accuracy_reads_a_stream_folder_manifest(tmp_path: Path) -> None:
    """write_stream(fmt="folder") manifests name images by absolute path (source_ref)."""
    names = ["red", "other"]
    W, b = red_only_weights(names)
    model = make_tiny_classifier(tmp_path / "m.onnx", names, weights=W, bias=b)
    folder = write_folder(tmp_path / "clip", [("red", "red"), ("blue", "other"), ("blue", "red"), ("red", "other")])
    rows = list(csv.DictReader((folder / "manifest.csv").open()))
    manifest = tmp_path / "clip.csv"
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_ref", "label", "camera"])
        w.writerows([[str(folder / r["path"]), r["label"], "cam"] for r in rows])
    assert offline_accuracy(model, manifest)["accuracy"] == 0.5
    bad = tmp_path / "bad.csv"
    bad.write_text("file,class\na.png,red\n")
    with pytest.raises(DataError, match=r"bad.csv:1: manifest is missing column"):
        offline_accuracy(model, bad)


def test_offline_accuracy_names_the_unreadable_file(tmp_path: Path) -> None:
    model = make_tiny_classifier(tmp_path / "m.onnx", ["red", "other"])
    folder = write_folder(tmp_path / "test", [("red", "red"), ("blue", "other")])
    (folder / "001.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="001.png"):
        offline_accuracy(model, folder)
