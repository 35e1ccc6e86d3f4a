"""The simulated annotator: truth from manifests, seeded symmetric label noise, double labels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.labeling import queue
from pipeline.labeling.simulate import load_ground_truth, simulate_labels, truth_for
from pipeline.store import FrameRecord, SampleRecord, labels, samples
from pipeline.types import DataError, Label

from .conftest import CLASSES, Filled, fill_store


def test_error_rate_zero_labels_everything_correctly(filled: Filled) -> None:
    assert simulate_labels(filled.store, [filled.manifest]) == 7  # 6 frames, one of them double_label
    rows = filled.store.table_rows(labels)
    assert all(r["label"] == filled.truth[r["frame_id"]] for r in rows)
    assert all(r["source"] == "simulated" for r in rows)
    by_frame = Counter(r["frame_id"] for r in rows)
    assert by_frame[filled.frame_ids[1]] == 2 and {r["annotator"] for r in rows if r["frame_id"] == filled.frame_ids[1]} == {"sim", "sim-2"}
    assert queue.count_awaiting(filled.store) == 0
    assert filled.store.count(samples, samples.c.status == "labeled") == 6
    assert queue.double_label_pairs(filled.store) == [(filled.frame_ids[1], "pallet", "pallet")]
    assert simulate_labels(filled.store, [filled.manifest]) == 0  # nothing left


def test_error_rate_gives_that_share_of_wrong_labels(tmp_path: Path) -> None:
    f = fill_store(tmp_path / "big", n=300, seed=1)
    try:
        assert simulate_labels(f.store, [f.manifest], error_rate=0.2, seed=3) == 300
        rows = f.store.table_rows(labels)
        wrong = [r for r in rows if r["label"] != f.truth[r["frame_id"]]]
        share = len(wrong) / len(rows)
        assert 0.2 - 0.07 < share < 0.2 + 0.07  # 3 binomial SDs at n=300
        # wrong answers are spread over the other classes, never the true one
        pairs = Counter((f.truth[r["frame_id"]], r["label"]) for r in wrong)
        assert all(t != lab for t, lab in pairs) and len(pairs) == 6
        # same seed, same answers
        f2 = fill_store(tmp_path / "big2", n=300, seed=1)
        simulate_labels(f2.store, [f2.manifest], error_rate=0.2, seed=3)
        assert sorted((r["frame_id"], r["label"]) for r in f2.store.table_rows(labels)) == sorted((r["frame_id"], r["label"]) for r in rows)
        f2.store.close()
    finally:
        f.store.close()


def test_frames_labeled_by_humans_are_not_relabeled(filled: Filled) -> None:
    f0, f1 = filled.frame_ids[0], filled.frame_ids[1]
    filled.store.add_labels([Label(frame_id=f0, label="empty", annotator="alice"), Label(frame_id=f1, label="box", annotator="alice")])
    assert simulate_labels(filled.store, [filled.manifest]) == 5  # 4 single frames + the double frame's second label
    assert {r["annotator"] for r in filled.store.table_rows(labels, labels.c.frame_id == f0)} == {"alice"}
    assert {r["annotator"] for r in filled.store.table_rows(labels, labels.c.frame_id == f1)} == {"alice", "sim"}


def test_video_refs_and_source_ref_column(filled: Filled, tmp_path: Path) -> None:
    video = tmp_path / "vids" / "belt.mp4"
    video.parent.mkdir()
    video.write_bytes(b"")  # only the path matters
    frecs = [FrameRecord(frame_id=f"r1:vid:{k}", run_id="r1", camera_id="vid", seq=k, ts=3000.0 + k, source_ref=f"{video.resolve()}#{k}") for k in range(3)]
    srecs = [SampleRecord(frame_id=r.frame_id, camera_id="vid", strategy="uniform", inclusion_prob=1.0, image_path="x.jpg", sampled_at=3000.0 + r.seq) for r in frecs]
    filled.store.write_batch(frame_records=frecs, sample_records=srecs)
    man = tmp_path / "vids" / "frames.csv"
    man.write_text("source_ref,label\nbelt.mp4#0,box\nbelt.mp4#1,empty\nbelt.mp4#2,pallet\n")
    truth = load_ground_truth([man])
    assert truth_for(truth, f"{video.resolve()}#1") == "empty" and truth_for(truth, "/elsewhere.mp4#1") is None
    assert simulate_labels(filled.store, [filled.manifest, man]) == 10
    got = {r["frame_id"]: r["label"] for r in filled.store.table_rows(labels, labels.c.frame_id.like("r1:vid:%"))}
    assert got == {"r1:vid:0": "box", "r1:vid:1": "empty", "r1:vid:2": "pallet"}


@pytest.mark.parametrize(
    "content,expected",
    [
        ("file,label\na.png,box\n", "expected a label column and a source_ref or path column"),
        ("path,label\nsrc/img_000.png,\n", ":2: empty label"),
        ("path,label\nsrc/img_000.png,box\nsrc/img_000.png,empty\n", ":3: 'src/img_000.png' is labeled 'empty' here but 'box' at"),
    ],
)
def test_bad_manifest(filled: Filled, tmp_path: Path, content: str, expected: str) -> None:
    man = filled.root / "bad.csv"
    man.write_text(content)
    with pytest.raises(DataError, match=None) as ei:
        simulate_labels(filled.store, [man])
    assert expected in str(ei.value) and str(man) in str(ei.value)
    assert filled.store.count(labels) == 0


def test_no_matching_frames_and_foreign_labels(filled: Filled, tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("path,label\nnothere.png,box\n")
    with pytest.raises(DataError, match="none of the 6 pending frames has ground truth"):
        simulate_labels(filled.store, [other])
    with pytest.raises(DataError, match="is not a class of this deployment"):
        simulate_labels(filled.store, [filled.manifest], classes=["box", "pallet"])
    with pytest.raises(DataError, match="error_rate must be in"):
        simulate_labels(filled.store, [filled.manifest], error_rate=1.5)
    with pytest.raises(DataError, match="cannot read manifest"):
        simulate_labels(filled.store, [tmp_path / "missing.csv"])
    assert filled.store.count(labels) == 0


def test_cli_simulate(filled: Filled, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["label", "simulate", "--db", filled.url, "--manifest", str(filled.manifest), "--error-rate", "0", "--seed", "1"]) == 0
    assert "simulated 7 label(s)" in capsys.readouterr().out
    assert sorted(set(r["label"] for r in filled.store.table_rows(labels))) == sorted(CLASSES)
