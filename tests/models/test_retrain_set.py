"""The production set for retraining, from a tiny store made here (no training): the one truth rule, the manifest,
splits by time blocks, frames left out."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import pytest

from models.retrain import export_production_set, majority_labels
from pipeline.store import FrameRecord, PredictionStore, SampleRecord
from pipeline.types import DataError, Label

CLASSES = ["box", "bag", "empty"]


def _store(root: Path, n: int, cameras: int = 1, sampled=None, missing_image=(), training=()) -> tuple[PredictionStore, list[str]]:
    """``n`` frames one second apart per camera; frames in ``sampled`` (default all) are sampled with a JPEG file
    (an empty stand-in: retraining only checks that it exists), except those in ``missing_image``."""
    store = PredictionStore(str(root / "store.db"))
    store.begin_run("r1", "inc:1", None, CLASSES, {})
    ids = [f"r1:cam{i % cameras}:{i}" for i in range(n)]
    frecs = [FrameRecord(fid, "r1", f"cam{i % cameras}", i, 1000.0 + i // cameras) for i, fid in enumerate(ids)]
    srecs = []
    for i, fid in enumerate(ids):
        if sampled is not None and i not in sampled:
            continue
        jpg = root / f"{i}.jpg"
        if i not in missing_image:
            jpg.write_bytes(b"\xff\xd8\xff")
        srecs.append(SampleRecord(fid, f"cam{i % cameras}", "training:uncertainty" if i in training else "uniform", 0.5,
                                  str(jpg), 2000.0 + i))
    store.write_batch(frame_records=frecs, sample_records=srecs)
    return store, ids


def _label(store: PredictionStore, fid: str, *answers: str) -> None:
    store.add_labels([Label(fid, lab, f"ann{k}", 10.0 + k) for k, lab in enumerate(answers)])


def _read(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def mixed(tmp_path: Path):
    store, f = _store(tmp_path, 8, sampled={0, 1, 2, 3, 4, 5, 6}, missing_image={5})
    _label(store, f[0], "box", "box", "bag")      # majority: box
    _label(store, f[1], "unsure", "unsure")       # all unsure: no truth
    _label(store, f[2], "box", "bag")             # tie: no truth
    _label(store, f[3], "crate", "crate", "bag")  # unknown classes do not vote: bag
    _label(store, f[4], "crate")                  # no known class: no truth
    _label(store, f[5], "empty")                  # truth, but its JPEG is gone
    _label(store, f[7], "bag", "unsure")          # truth, but never sampled (no JPEG)
    # f[6] is sampled and unlabelled
    yield store, f
    store.close()


def test_majority_labels_follow_the_one_truth_rule(mixed) -> None:
    store, f = mixed
    truth, excluded = majority_labels(store, CLASSES)
    assert truth == {f[0]: "box", f[3]: "bag", f[5]: "empty", f[7]: "bag"}
    assert excluded == 3  # f1 (unsure), f2 (tie), f4 (unknown class)
    # the label space decides what votes: without "bag", f3 has no known class and f7 only "unsure"
    truth, excluded = majority_labels(store, ["box", "empty"])
    assert truth == {f[0]: "box", f[2]: "box", f[5]: "empty"} and excluded == 4


def test_export_writes_labelled_sampled_frames_with_images(mixed, tmp_path: Path) -> None:
    store, f = mixed
    out = tmp_path / "out" / "production.csv"
    prod = export_production_set(store, out, CLASSES, repeat=3, val_fraction=0.0, test_fraction=0.0)
    assert prod.manifest == out and prod.n_frames == 2
    assert prod.n_excluded == 4  # three without truth + f5 whose image is missing
    assert prod.class_counts == {"box": 1, "bag": 1, "empty": 0}
    rows = _read(out)
    assert list(rows[0]) == ["path", "label", "split", "group", "camera", "frame_id"]
    # every row is a training row here, written `repeat` times
    assert Counter((r["frame_id"], r["label"], r["split"]) for r in rows) == {(f[0], "box", "train"): 3, (f[3], "bag", "train"): 3}
    assert {r["path"] for r in rows} == {str((tmp_path / "0.jpg").resolve()), str((tmp_path / "3.jpg").resolve())}


def test_export_splits_by_time_blocks(tmp_path: Path) -> None:
    store, f = _store(tmp_path, 60, cameras=2)  # 30 s per camera, one frame a second
    for i, fid in enumerate(f):
        _label(store, fid, CLASSES[i % 3])
    prod = export_production_set(store, tmp_path / "p.csv", CLASSES, repeat=2, block_s=5.0, val_fraction=0.2, test_fraction=0.2, seed=1)
    store.close()
    assert prod.n_frames == 60 and prod.n_excluded == 0 and prod.class_counts == {"box": 20, "bag": 20, "empty": 20}
    rows = _read(tmp_path / "p.csv")
    ts = {fid: 1000 + i // 2 for i, fid in enumerate(f)}
    split_of_block: dict[tuple[str, int], set[str]] = {}
    for r in rows:
        split_of_block.setdefault((r["camera"], int(ts[r["frame_id"]] // 5)), set()).add(r["split"])
    assert len(split_of_block) == 12 and all(len(s) == 1 for s in split_of_block.values())  # whole blocks per split
    # the manifest names each frame's group (camera/time block): what training's group split and `data check` read
    assert {r["group"] for r in rows} == {f"{cam}/t{b:06d}" for cam, b in split_of_block}
    assert all(r["group"] == f"{r['camera']}/t{int(ts[r['frame_id']] // 5):06d}" for r in rows)
    per_split = Counter(next(iter(s)) for s in split_of_block.values())
    # models.data.group_split: by each block's majority class, at least one block per class for val and for test
    assert per_split["val"] >= 2 and per_split["test"] >= 2 and per_split["train"] >= 4 and sum(per_split.values()) == 12
    frames_per_split = Counter(r["split"] for r in rows)
    # 5 frames a block; training rows twice
    assert frames_per_split["val"] == 5 * per_split["val"] and frames_per_split["train"] == 2 * 5 * per_split["train"]


def test_export_without_usable_labels_is_a_clear_error(tmp_path: Path) -> None:
    store, f = _store(tmp_path, 3)
    _label(store, f[0], "unsure")
    with pytest.raises(DataError, match="no labelled production frames with images"):
        export_production_set(store, tmp_path / "p.csv", CLASSES)
    store.close()


def test_training_sample_frames_are_for_training_only(tmp_path: Path) -> None:
    """Frames of the training sample (drawn for being hard) never enter val or test: in a train block they are
    training rows like the others, in a val/test block they are left out (not moved: near-copies would leak)."""
    training = set(range(0, 60, 3))
    store, f = _store(tmp_path, 60, cameras=2, training=training)
    for i, fid in enumerate(f):
        _label(store, fid, CLASSES[i % 3])
    prod = export_production_set(store, tmp_path / "p.csv", CLASSES, repeat=1, block_s=5.0, val_fraction=0.2,
                                 test_fraction=0.2, seed=1)
    store.close()
    rows = _read(tmp_path / "p.csv")
    split_of = {r["frame_id"]: r["split"] for r in rows}
    tr_ids = {f[i] for i in training}
    assert all(split_of[fid] == "train" for fid in tr_ids if fid in split_of)
    held = [fid for fid in tr_ids if fid not in split_of]
    assert held and prod.n_training_sample_held_out == len(held)
    assert prod.n_frames == 60 - len(held) == len(rows)
    # the evaluation-sample frames keep their blocks' splits
    assert {"val", "test"} <= {split_of[fid] for fid in f if fid not in tr_ids}
