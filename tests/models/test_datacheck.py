"""models.datacheck: counts and unreadable files, the pair search, duplicates across splits (planted copies and a
conveyor clip split at random), planted label flips, coverage of production from a real SQLite store, and the
MLflow artifacts. Every dataset is made here.

Figures measured with these tests' data (seeded; the assertions guard them with some room):

* planted copies (JPEG q60, 75% resize, brightness +-5%, each put in another split): all found, precision 0.98
  (1,000 images + 100 copies, measured before the foreground comparison: recall 1.0, precision 0.99);
* a synthetic conveyor clip (600 frames at 96x128, items in view 3-6 frames, moving ~7% of the width per frame) split
  at random 70/15/15, on four scenes (stream seeds 3 / 11 / 21 / 33; 21 is a roller belt whose static stripes
  defeat whole-image comparisons): of the val/test frames whose item also has frames in train, 100% / 100% / 97% /
  100% are paired with a train frame of the same item (before the foreground comparison: 97% / 91% / 17% / 80%); of
  the cross-split pairs reported, 0.98 / 0.97 / 0.99 / 0.99 show the same item or two empty-belt frames, and of
  those that are not two background-only frames 0.92 / 0.89 / 0.95 / 0.94 (the rest: look-alike parcels). phash
  alone finds ~1% of them. 4-7 s of `data check` per scene (2 shared cores; all four: docs/byod.md);
* 5% label flips among 720 synthetic images (64 px): 92% found, precision 0.59 (out-of-fold accuracy 0.86); another
  draw (900 images): 76% / 0.74.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from models.datacheck import (
    DataCheckConfig,
    check_data,
    class_balance,
    find_duplicates,
    hamming_pairs,
    log_data_check,
    shift_similarity,
)
from pipeline.imagestats import image_stats_batch
from pipeline.store import FrameRecord, PredictionStore
from pipeline.types import ConfigError, DataError, Prediction


def _cfg(*data, **kw) -> DataCheckConfig:
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return DataCheckConfig(data=[str(d) for d in data], **kw)


def _noise_image(rng: np.random.Generator, size=(40, 48), scale: float = 1.0) -> np.ndarray:
    img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), size[::-1], interpolation=cv2.INTER_CUBIC)
    return np.clip(img.astype(np.float32) * scale, 0, 255).astype(np.uint8)


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# --- counts, unreadable, non-image files -----------------------------------------------------------------------
def test_counts_imbalance_unreadable_and_non_image_files(tmp_path):
    rng = np.random.default_rng(0)
    for cls, n in (("big", 6), ("small", 2)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            cv2.imwrite(str(tmp_path / cls / f"{i}.png"), _noise_image(rng))
    (tmp_path / "big" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (tmp_path / "small" / "notes.txt").write_text("not an image")

    r = check_data(_cfg(tmp_path, img_size=32))

    assert (r.n_listed, r.n_images, r.non_images) == (9, 8, 1)
    assert r.unreadable == [str(tmp_path / "big" / "broken.jpg")]
    assert r.class_counts == {"big": 6, "small": 2}
    assert (r.imbalance_ratio, r.smallest_class, r.smallest_share) == (3.0, "small", 0.25)
    # the split training makes: a class of 6 gets one val and one test image, a class of 2 stays in train
    assert r.split_source == "stratified"
    assert r.split_counts == {"train": {"big": 4, "small": 2}, "val": {"big": 1, "small": 0}, "test": {"big": 1, "small": 0}}
    assert r.duplicates.n_exact_groups == 0 and r.duplicates.n_near_pairs == 0
    text = r.text()
    assert "1 unreadable, 1 non-image file(s) skipped" in text and "largest/smallest class = 3.0" in text
    d = json.loads(r.to_json())
    assert d["unreadable"] == [str(tmp_path / "big" / "broken.jpg")] and d["class_counts"]["small"] == 2
    assert "<table>" in r.html() and "broken.jpg" in r.html()


def test_class_balance_of_an_empty_class_is_unbounded():
    assert class_balance({"a": 4, "b": 0}) == (None, "b", 0.0)
    assert class_balance({"a": 3, "b": 1}) == (3.0, "b", 0.25)


def test_exact_copies_with_different_labels_and_bad_inputs(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for i in range(8):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), _noise_image(rng))
        rows.append({"path": p.name, "label": "a" if i < 4 else "b", "split": "train" if i % 2 == 0 else "test"})
    (tmp_path / "copy.png").write_bytes((tmp_path / "0.png").read_bytes())  # an exact copy of a train image ...
    rows.append({"path": "copy.png", "label": "b", "split": "test"})  # ... labelled otherwise, in test
    (tmp_path / "copy2.png").write_bytes((tmp_path / "0.png").read_bytes())  # and one more, labelled alike
    rows.append({"path": "copy2.png", "label": "a", "split": "test"})
    m = _write_manifest(tmp_path / "m.csv", rows)

    d = check_data(_cfg(m, img_size=32)).duplicates

    # one set of 3 identical files: 3 pairs, 2 of them train-test and 2 with different labels
    assert (d.n_exact_groups, d.n_exact_images, d.n_near_pairs, d.n_groups, d.largest_group) == (1, 3, 0, 1, 3)
    assert d.conflicting_labels == 2 and d.cross_split_pairs == {"train-val": 0, "train-test": 2, "val-test": 0}
    assert d.leaked == {"val": [0, 0], "test": [2, 6]}
    assert d.pairs[0].kind == "exact" and d.pairs[0].a == str(tmp_path / "0.png")
    assert {p.b for p in d.pairs} == {str(tmp_path / "copy.png"), str(tmp_path / "copy2.png")}

    with pytest.raises(DataError, match="data folder not found"):
        check_data(_cfg(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="field 'window_s'"):
        _cfg(m, window_s=0)


# --- the pair search -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0, 3, 4, 7, 10])
def test_hamming_pairs_finds_exactly_the_pairs_within_the_distance(t):
    rng = np.random.default_rng(t)
    base = rng.integers(0, 2**63, 300, dtype=np.uint64)
    flips = [np.uint64(sum(1 << int(b) for b in rng.choice(64, k, replace=False))) for k in rng.integers(0, 13, 300)]
    h = np.concatenate([base, base ^ np.array(flips, np.uint64)])  # every hash has a partner 0-12 bits away
    i, j, d = hamming_pairs(h, t)
    a, b = np.triu_indices(len(h), 1)
    dist = np.bitwise_count(h[a] ^ h[b])
    want = dist <= t
    assert sorted(zip(i.tolist(), j.tolist(), d.tolist())) == sorted(zip(a[want].tolist(), b[want].tolist(), dist[want].tolist()))
    assert want.sum() >= 10  # the test means something at every t
    with pytest.raises(OverflowError, match="candidate pairs"):
        hamming_pairs(h, t, max_candidates=10)


def test_shift_similarity_recognises_a_moved_copy():
    rng = np.random.default_rng(0)
    a = cv2.GaussianBlur(rng.integers(0, 256, (32, 32)).astype(np.uint8), (3, 3), 0)
    moved = np.roll(a, (3, -5), axis=(0, 1))
    other = cv2.GaussianBlur(rng.integers(0, 256, (32, 32)).astype(np.uint8), (3, 3), 0)
    s = shift_similarity(np.stack([a, moved, other]), np.array([0, 0]), np.array([1, 2]))
    assert s[0] > 0.999 and s[1] < 0.5


def test_moved_copies_are_found_unless_colours_differ_and_the_search_stays_bounded():
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (32, 32)).astype(np.uint8), (5, 5), 0)
    moved = [np.roll(texture, (int(rng.integers(-6, 7)), int(rng.integers(-6, 7))), axis=(0, 1)) for _ in range(10)]
    others = [cv2.GaussianBlur(rng.integers(0, 256, (32, 32)).astype(np.uint8), (5, 5), 0) for _ in range(40)]
    thumbs = np.stack(moved + others)
    n = len(thumbs)
    phashes = rng.integers(0, 2**63, n, dtype=np.uint64)  # perceptual hashes that match nothing: only the shift pass finds
    colours = np.full((n, 3), 100.0)
    colours[9] = (140, 100, 60)  # the last moved copy has another colour (a green belt next to a grey one)
    args = ([f"{k}.jpg" for k in range(n)], ["train"] * 5 + ["test"] * (n - 5), ["x"] * n, [str(k) for k in range(n)], phashes, thumbs)

    d = find_duplicates(*args, _cfg("unused", max_pairs_listed=1000), colours)
    pairs = {(p.a, p.b) for p in d.pairs}
    assert pairs == {(f"{a}.jpg", f"{b}.jpg") for a in range(9) for b in range(a + 1, 9)}  # 36 pairs, none with 9
    assert {p.method for p in d.pairs} == {"shifted"} and d.cross_split_pairs["train-test"] == 5 * 4
    assert d.leaked["test"] == [4, 45] and d.n_groups == 1 and d.largest_group == 9

    tight = find_duplicates(*args, _cfg("unused", max_candidates_per_image=1), colours)
    assert tight.notes and tight.notes[0].startswith(("shift-tolerant search tightened", "shift-tolerant search skipped"))


def test_a_static_view_its_empty_frames_and_a_moving_item_in_front_of_it():
    from models.datacheck import (
        BACKGROUND_ONLY,
        FOREGROUND,
        ForegroundViews,
        describe_foreground,
        find_views,
    )

    rng = np.random.default_rng(0)
    side = 64
    stripes = np.tile(((np.arange(side) // 3) % 2 * 60 + 60).astype(np.float32), (side, 1))  # static roller stripes
    bg = np.repeat(stripes[..., None], 3, axis=2)
    items = [cv2.GaussianBlur(rng.integers(0, 256, (14, 14, 3)).astype(np.float32), (3, 3), 0) for _ in range(2)]

    def frame(item: int | None, x: int) -> np.ndarray:
        img = bg + rng.normal(0, 1.5, bg.shape)
        if item is not None:
            img[25:39, x:x + 14] = items[item]
        return np.clip(img, 0, 255).astype(np.uint8)

    frames = [frame(None, 0) for _ in range(6)] + [frame(0, x) for x in (4, 12, 20, 28, 36)] + [frame(1, x) for x in (8, 24, 40)]
    views = find_views(np.stack(frames))
    assert len(views) == 1 and np.abs(views.backgrounds[0] - bg).max() < 8
    described = [describe_foreground(f, views) for f in frames]
    assert [d[1] for d in described] == [BACKGROUND_ONLY] * 6 + [FOREGROUND] * 8
    fg = ForegroundViews(*(np.array([d[i] for d in described]) for i in range(5)))
    n = len(frames)
    splits = ["train", "test"] * (n // 2)
    d = find_duplicates([f"{k}.png" for k in range(n)], splits, ["x"] * n, [str(k) for k in range(n)],
                        rng.integers(0, 2**63, n, dtype=np.uint64), np.zeros((n, 32, 32), np.uint8),
                        _cfg("unused", max_pairs_listed=8, shift_tolerant=False), foreground=fg)
    # the 6 empty frames: one set, 15 pairs counted (9 across splits), listed only up to max_pairs_listed
    assert d.n_near_by_method["background"] == 15 and len(d.background_sets) == 1 and d.background_sets[0].n_images == 6
    fpairs = {(int(p.a[:-4]), int(p.b[:-4])) for p in find_duplicates(
        [f"{k}.png" for k in range(n)], splits, ["x"] * n, [str(k) for k in range(n)], rng.integers(0, 2**63, n, dtype=np.uint64),
        np.zeros((n, 32, 32), np.uint8), _cfg("unused", max_pairs_listed=1000, shift_tolerant=False), foreground=fg).pairs
        if p.method == "foreground"}
    first, second = set(range(6, 11)), set(range(11, 14))
    assert all({a, b} <= first or {a, b} <= second for a, b in fpairs)  # never one item with the other
    assert {k for p in fpairs for k in p} == first | second  # every frame of an item is paired with another of it
    assert len(d.pairs) == 8 and d.n_views == 1


# --- near-duplicates across splits --------------------------------------------------------------------------------
def _jpeg(img: np.ndarray, q: int) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])[1], cv2.IMREAD_COLOR)


def test_planted_copies_in_other_splits_are_all_found(tmp_path):
    from models.synthetic import generate_dataset

    generate_dataset(tmp_path / "ds", 240, seed=3, img_size=96, progress=False)
    rows = list(csv.DictReader((tmp_path / "ds" / "manifest.csv").read_text().splitlines()))
    rng = np.random.default_rng(0)
    split = rng.choice(["train", "val", "test"], len(rows), p=[0.7, 0.15, 0.15])
    out = [{"path": str(tmp_path / "ds" / r["path"]), "label": r["label"], "split": s} for r, s in zip(rows, split)]
    planted = set()
    for k, i in enumerate(rng.choice(len(rows), 40, replace=False)):
        img = cv2.imread(out[i]["path"])
        copy = [_jpeg(img, 60), cv2.resize(cv2.resize(img, (72, 72), interpolation=cv2.INTER_AREA), (96, 96)),
                np.clip(img * 1.05, 0, 255).astype(np.uint8), (img * 0.95).astype(np.uint8)][k % 4]
        p = tmp_path / f"copy_{k}.jpg"
        cv2.imwrite(str(p), copy)
        other = {"train": "test", "val": "train", "test": "train"}[out[i]["split"]]
        out.append({"path": str(p), "label": out[i]["label"], "split": other})
        planted.add(frozenset((out[i]["path"], str(p))))
    m = _write_manifest(tmp_path / "m.csv", out)

    d = check_data(_cfg(m, max_pairs_listed=10_000)).duplicates

    found = {frozenset((p.a, p.b)) for p in d.pairs if p.cross_split}
    assert len(found & planted) == len(planted)  # recall 1.0
    assert len(found & planted) / len(found) >= 0.9  # measured 1.0
    assert sum(d.cross_split_pairs.values()) == len(found)


@pytest.mark.parametrize("seed", [3, 11, 21, 33])
def test_a_clip_split_at_random_leaks_and_the_check_finds_it(tmp_path, seed):
    from models.synthetic import iter_stream, write_stream

    n, dwell = 600, (3, 6)
    manifest = write_stream(tmp_path / "clip", n, seed=seed, size=(96, 128), dwell=dwell, fmt="folder", progress=False)
    item = np.array([f.slot for f in iter_stream(n, seed, None, (96, 128), dwell)])  # which item each frame shows
    rows = list(csv.DictReader(manifest.read_text().splitlines()))
    split = np.random.default_rng(0).choice(["train", "val", "test"], n, p=[0.7, 0.15, 0.15])
    m = _write_manifest(tmp_path / "m.csv", [{"path": r["source_ref"], "label": r["label"], "split": s} for r, s in zip(rows, split)])

    d = check_data(_cfg(m, max_pairs_listed=100_000)).duplicates

    frame = {r["source_ref"]: k for k, r in enumerate(rows)}
    label = np.array([r["label"] for r in rows])
    pairs = [(frame[p.a], frame[p.b]) for p in d.pairs if p.cross_split]
    # planted leaks: val/test frames whose item also has frames in train
    in_train = {item[k] for k in range(n) if split[k] == "train"}
    leaks = {k for k in range(n) if split[k] != "train" and item[k] in in_train}
    found = {b if split[a] == "train" else a for a, b in pairs if "train" in (split[a], split[b]) and item[a] == item[b]}
    recall = len(found & leaks) / len(leaks)
    alike = np.mean([item[a] == item[b] or label[a] == label[b] == "empty_belt" for a, b in pairs])
    # the pairs that compare items (not two background-only frames): most show the same item
    items = [(a, b) for (a, b), p in zip(pairs, [p for p in d.pairs if p.cross_split]) if p.method != "background"]
    same_item = np.mean([item[a] == item[b] or label[a] == label[b] == "empty_belt" for a, b in items])
    assert len(leaks) > 150
    assert recall >= 0.95, recall  # measured 1.0 / 1.0 / 0.965 / 1.0 (seeds 3 / 11 / 21 / 33)
    assert alike >= 0.95, alike  # measured 0.984 / 0.971 / 0.987 / 0.994
    assert same_item >= 0.85, same_item
    assert d.n_views == 1 and len(d.background_sets) == 1  # one camera; its empty-belt frames form one set
    assert d.n_near_pairs == sum(d.n_near_by_method.values()) and d.n_near_by_method["background"] > 0
    if seed == 3:  # the whole-image comparisons alone (phash; no shift, no foreground) miss moving items
        d0 = check_data(_cfg(m, max_pairs_listed=100_000, shift_tolerant=False, foreground=False)).duplicates
        pairs0 = [(frame[p.a], frame[p.b]) for p in d0.pairs if p.cross_split]
        found0 = {b if split[a] == "train" else a for a, b in pairs0 if "train" in (split[a], split[b]) and item[a] == item[b]}
        assert len(found0 & leaks) / len(leaks) < 0.2


# --- label issues ------------------------------------------------------------------------------------------------
def test_planted_label_flips_are_found(tmp_path):
    from models.synthetic import generate_dataset

    generate_dataset(tmp_path / "ds", 720, seed=5, img_size=64, progress=False)
    rows = list(csv.DictReader((tmp_path / "ds" / "manifest.csv").read_text().splitlines()))
    classes = sorted({r["label"] for r in rows})
    rng = np.random.default_rng(0)
    flipped = rng.choice(len(rows), int(0.05 * len(rows)), replace=False)
    for k in flipped:
        rows[k]["label"] = classes[(classes.index(rows[k]["label"]) + int(rng.integers(1, len(classes)))) % len(classes)]
    m = _write_manifest(tmp_path / "ds" / "flipped.csv", [{"path": r["path"], "label": r["label"]} for r in rows])

    li = check_data(_cfg(m, duplicates=False, label_issues=True, label_threads=1, img_size=64)).label_issues

    flagged = {Path(x.path).name for x in li.issues}
    truth = {Path(rows[k]["path"]).name for k in flipped}
    recall, precision = len(flagged & truth) / len(truth), len(flagged & truth) / max(1, len(flagged))
    assert recall >= 0.7, (recall, precision)  # measured ~0.9
    assert precision >= 0.5, (recall, precision)  # measured ~0.7
    assert li.n_checked == 720 and li.oof_accuracy > 0.8
    confidences = [x.self_confidence for x in li.issues]
    assert confidences == sorted(confidences)
    x = next(x for x in li.issues if Path(x.path).name in truth)
    k = next(k for k in flipped if Path(rows[k]["path"]).name == Path(x.path).name)
    assert x.given == rows[k]["label"] and x.suggested != x.given


# --- coverage of production -----------------------------------------------------------------------------------------
def _frames_with_stats(images_bgr: np.ndarray) -> dict[str, np.ndarray]:
    return image_stats_batch(np.ascontiguousarray(images_bgr))


@pytest.fixture
def training_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(120):
            cv2.imwrite(str(tmp_path / "train" / cls / f"{i}.png"), _noise_image(rng, (32, 32), rng.uniform(0.8, 1.0)))
    return tmp_path / "train"


def test_coverage_reports_dark_windows_outside_and_the_rest_inside(tmp_path, training_folder):
    from pipeline.modelcard import read_card, write_card
    from tests.helpers.onnx_models import make_tiny_classifier

    rng = np.random.default_rng(1)
    day = np.stack([_noise_image(rng, (32, 32), rng.uniform(0.8, 1.0)) for _ in range(240)])
    night = (day * 0.35).astype(np.uint8)
    # a model whose validation images were confident (0.9)
    onnx_path = make_tiny_classifier(tmp_path / "m.onnx", ["a", "b"], input_size=(32, 32), name="lin", version="7")
    import onnx

    model = onnx.load(str(onnx_path))
    card = read_card(onnx_path)
    card.training_reference = {"classes": ["a", "b"], "probs": [[0.9, 0.1]] * 100 + [[0.95, 0.05]] * 100, "n_total": 200}
    write_card(model, card)
    onnx.save(model, str(onnx_path))

    db = tmp_path / "shadowcam.db"
    store = PredictionStore(str(db))
    store.begin_run("r1", "lin:7", None, ["a", "b"], {})
    frames, preds = [], []
    # cam-1: 120 day frames in window 0, 120 night frames in window 1 (one every 0.5 s), the model unsure at night
    # cam-2: day all along
    for cam, images in (("cam-1", np.concatenate([day[:120], night[:120]])), ("cam-2", day)):
        stats = _frames_with_stats(images)
        for i in range(len(images)):
            fid = f"r1:{cam}:{i}"
            frames.append(FrameRecord(fid, "r1", cam, i, 1000.0 + 0.5 * i, "", 32, 32,
                                      *(float(stats[k][i]) for k in ("brightness", "contrast", "sharpness", "noise"))))
            unsure = cam == "cam-1" and i >= 120
            p = np.array([0.55, 0.45] if unsure else [0.92, 0.08], np.float32)
            preds.append(Prediction(fid, cam, "incumbent", "lin:7", p, "a"))
    store.write_batch(frames, preds)
    store.close()

    r = check_data(_cfg(training_folder, db=str(db), model=str(onnx_path), duplicates=False))
    cov = r.coverage

    assert r.img_size == [32, 32] and cov.model == "lin:7" and cov.confidence_reference == 200
    by_cam = {c.camera: c for c in cov.cameras}
    cam1, cam2 = by_cam["cam-1"], by_cam["cam-2"]
    assert [(w.index, w.n_frames, w.outside) for w in cam1.windows] == [(0, 120, False), (1, 120, True)]
    night_w = cam1.windows[1]
    assert any(f.startswith("100% of cam-1's frames are darker than 99% of training frames") for f in night_w.findings), night_w.findings
    assert any("less confident than 99% of validation frames" in f for f in night_w.findings), night_w.findings
    assert (cam1.windows_outside, cam1.frames_outside, cam2.windows_outside) == (1, 120, 0)
    assert [w.outside for w in cam2.windows] == [False, False]
    # over all of cam-1's frames half are dark: a share in words, not significant on its own (one long correlated block)
    dark = next(t for t in cam1.overall.tails if (t.feature, t.direction) == ("brightness", "low"))
    assert dark.share == pytest.approx(0.5, abs=0.02) and "50% of cam-1's frames are darker than 99% of training frames" in cam1.large_shares
    assert "cam-1: 240 frames, 1 of 2 window(s) OUTSIDE" in r.text() and "cam-2: 240 frames, inside" in r.text()
    json.loads(r.to_json())

    with pytest.raises(ConfigError, match="run id"):
        check_data(_cfg(training_folder, db=str(db), runs=["nope"], duplicates=False))


# --- MLflow ----------------------------------------------------------------------------------------------------------
def test_log_data_check_writes_both_artifacts_to_a_real_mlflow_run(tmp_path, training_folder, monkeypatch):
    from mlflow import MlflowClient

    from pipeline.tracking import TrackedRun

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    report = check_data(_cfg(training_folder, img_size=32))
    with TrackedRun("data-check-test", "r", workdir=tmp_path) as run:
        written = log_data_check(report, run, tmp_dir=tmp_path / "out")
    assert [p.name for p in written] == ["data_check.json", "data_check.html"]
    names = sorted(a.path for a in MlflowClient().list_artifacts(run.run_id))
    assert names == ["data_check.html", "data_check.json"]
    assert json.loads((tmp_path / "out" / "data_check.json").read_text())["n_images"] == 240
