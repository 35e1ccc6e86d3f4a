"""models.data: listing, checks of bad input (one-line DataError naming the file/class), split, loading."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.data import list_source, load_dataset, read_manifest, stratified_split
from pipeline.types import DataError
from tests.helpers.training import SHAPE_CLASSES, make_shapes, write_manifest


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_shapes(tmp_path_factory.mktemp("shapes") / "data", n_per_class=20, size=24, seed=1)


@pytest.fixture
def data(shapes, tmp_path) -> Path:
    """A private copy the test may break."""
    return Path(shutil.copytree(shapes, tmp_path / "data"))


def test_image_folder_loads_rgb_at_size_with_stratified_split(shapes):
    ds = load_dataset(shapes, 16, seed=3, progress=False)
    assert ds.class_names == list(SHAPE_CLASSES)
    assert ds.images["train"].dtype == np.uint8 and ds.images["train"].shape[1:] == (16, 16, 3)
    assert sum(ds.size(s) for s in ("train", "val", "test")) == 60
    for split in ("val", "test"):  # 20 per class * 0.15 = 3 per class
        assert ds.class_counts(split) == {c: 3 for c in SHAPE_CLASSES}
    # RGB order: the red circles are red in channel 0
    circles = ds.images["train"][ds.labels["train"] == 0].astype(float)
    assert circles[..., 0].max(axis=(1, 2)).mean() > circles[..., 2].max(axis=(1, 2)).mean() + 50
    again = load_dataset(shapes, 16, seed=3, progress=False)
    assert again.paths == ds.paths and again.fingerprint == ds.fingerprint
    other = load_dataset(shapes, 16, seed=4, progress=False)
    assert other.paths["test"] != ds.paths["test"]


def test_stratified_split_counts():
    labels = np.repeat(np.arange(4), [100, 10, 3, 2])
    split = stratified_split(labels, 0.2, 0.1, seed=0)
    for c, (v, t) in enumerate([(20, 10), (2, 1), (1, 1), (0, 0)]):
        assert (split[labels == c] == "val").sum() == v
        assert (split[labels == c] == "test").sum() == t
    assert (stratified_split(labels, 0.2, 0.1, seed=0) == split).all()


def test_manifest_with_split_and_extra_columns(shapes, tmp_path):
    rows = [(str(p), p.parent.name, ("train", "val", "test")[i % 3], "cam1")  # absolute paths are allowed
            for i, p in enumerate(sorted(shapes.rglob("*.png")))]
    m = write_manifest(tmp_path / "m.csv", rows, ("path", "label", "split", "camera"))
    ds = load_dataset(m, 16, progress=False)
    assert (ds.size("train"), ds.size("val"), ds.size("test")) == (20, 20, 20)
    assert ds.fingerprint == read_manifest(m).fingerprint


def test_manifest_paths_are_relative_to_the_manifest(data):
    m = write_manifest(data / "sub" / "labels.csv", [("../circle/0000.png", "circle"), ("../square/0001.png", "square")])
    listing = read_manifest(m)
    assert [s.path.resolve() for s in listing.samples] == [data / "circle" / "0000.png", data / "square" / "0001.png"]
    assert listing.classes == ["circle", "square"]


def test_folder_with_manifest_uses_the_manifest(data):
    rows = [(f"{c}/{i:04d}.png", c) for c in SHAPE_CLASSES for i in range(10)]
    write_manifest(data / "manifest.csv", rows)
    listing = list_source(data)
    assert listing.kind == "manifest" and len(listing.samples) == 30


def test_two_sources_concatenate_and_fingerprint_changes(shapes, tmp_path):
    extra = tmp_path / "prod"
    make_shapes(extra, n_per_class=4, size=24, seed=9, classes=("circle", "square"))
    rows = [(f"{c}/{i:04d}.png", c, "train") for c in ("circle", "square") for i in range(4)]
    m = write_manifest(extra / "labels.csv", rows, ("path", "label", "split"))
    base = load_dataset(shapes, 16, progress=False)
    both = load_dataset([shapes, m], 16, progress=False)
    assert both.class_names == list(SHAPE_CLASSES)
    assert both.size("train") == base.size("train") + 8
    assert both.fingerprint != base.fingerprint


def test_unreadable_images_below_the_fraction_are_skipped(data, caplog):
    (data / "circle" / "0000.png").write_bytes(b"not a png")
    with caplog.at_level(logging.WARNING, logger="models.data"):
        ds = load_dataset(data, 16, max_bad_fraction=0.05, progress=False)
    assert ds.unreadable == [str(data / "circle" / "0000.png")]
    assert sum(ds.size(s) for s in ("train", "val", "test")) == 59
    assert "0000.png" in caplog.text


def test_non_image_files_are_ignored_and_counted(data):
    (data / "circle" / "notes.txt").write_text("hello")
    (data / "square" / "Thumbs.db").write_bytes(b"\0")
    ds = load_dataset(data, 16, progress=False)
    assert ds.non_images == 2 and sum(ds.size(s) for s in ("train", "val", "test")) == 60


def _break(case: str, data: Path, tmp_path: Path) -> tuple[object, dict]:
    """Make the bad input of ``case``; returns (sources, kwargs) for load_dataset."""
    if case == "missing folder":
        return data / "nope", {}
    if case == "missing manifest":
        return tmp_path / "nope.csv", {}
    if case == "no class folders":
        empty = tmp_path / "flat"
        empty.mkdir()
        shutil.copy(data / "circle" / "0000.png", empty / "a.png")
        return empty, {}
    if case == "empty class":
        (data / "hexagon").mkdir()
        return data, {}
    if case == "class with only non-images":
        (data / "hexagon").mkdir()
        (data / "hexagon" / "readme.txt").write_text("x")
        return data, {}
    if case == "corrupt above fraction":
        for i in range(4):
            (data / "square" / f"{i:04d}.png").write_bytes(b"\x89PNG broken")
        return data, {"max_bad_fraction": 0.05}
    if case == "manifest missing column":
        return write_manifest(tmp_path / "m.csv", [("circle/0000.png",)], ("path",)), {}
    if case == "manifest unknown label":
        m = write_manifest(tmp_path / "prod.csv", [(str(data / "circle" / "0000.png"), "hexagon")])
        return [data, m], {}
    if case == "manifest label not in given classes":
        m = write_manifest(tmp_path / "m.csv", [(str(data / "circle" / "0000.png"), "circle"),
                                                (str(data / "square" / "0000.png"), "square")])
        return m, {"class_names": ["circle", "triangle"]}
    if case == "given class without images":
        return data, {"class_names": [*SHAPE_CLASSES, "hexagon"]}
    if case == "manifest bad split":
        return write_manifest(tmp_path / "m.csv", [(str(data / "circle" / "0000.png"), "circle", "holdout")],
                              ("path", "label", "split")), {}
    if case == "manifest missing files":
        rows = [(str(data / c / f"{i:04d}.png"), c) for c in SHAPE_CLASSES for i in range(10)]
        rows += [(str(data / "circle" / "gone.png"), "circle")] * 3
        return write_manifest(tmp_path / "m.csv", rows), {}
    if case == "manifest only non-images":
        return write_manifest(tmp_path / "m.csv", [("a.txt", "circle"), ("b.csv", "square")]), {}
    if case == "manifest empty label":
        return write_manifest(tmp_path / "m.csv", [("circle/0000.png", "")]), {}
    raise AssertionError(case)


BAD_INPUTS = [
    # case, words the one-line message must contain ({data}/{tmp} are substituted)
    ("missing folder", ["{data}/nope", "not found"]),
    ("missing manifest", ["{tmp}/nope.csv", "manifest not found"]),
    ("no class folders", ["{tmp}/flat", "no class sub-folders"]),
    ("empty class", ["hexagon", "has no images"]),
    ("class with only non-images", ["hexagon", "has no images", "1 non-image"]),
    ("corrupt above fraction", ["4 of 60", "max_bad_fraction", "square/0000.png"]),
    ("manifest missing column", ["{tmp}/m.csv", "missing column(s) label"]),
    ("manifest unknown label", ["{tmp}/prod.csv", "'hexagon'", "not in the class list"]),
    ("manifest label not in given classes", ["{tmp}/m.csv", "'square'", "not in the class list"]),
    ("given class without images", ["'hexagon'", "has no images"]),
    ("manifest bad split", ["{tmp}/m.csv:2", "'holdout'"]),
    ("manifest missing files", ["3 of 33", "gone.png"]),
    ("manifest only non-images", ["{tmp}/m.csv", "no images", "2 non-image"]),
    ("manifest empty label", ["{tmp}/m.csv:2", "field 'label': empty"]),
]


@pytest.mark.parametrize("case,expected", BAD_INPUTS, ids=[c for c, _ in BAD_INPUTS])
def test_bad_input_raises_one_line_error_naming_the_culprit(case, expected, data, tmp_path):
    sources, kwargs = _break(case, data, tmp_path)
    with pytest.raises(DataError) as exc:
        load_dataset(sources, 16, progress=False, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg
    for word in expected:
        assert word.format(data=data, tmp=tmp_path) in msg, msg


def test_a_labelled_stream_clip_is_a_data_source(tmp_path):
    """write_stream(fmt="folder") names its images in source_ref (absolute paths); read as they are."""
    from models.synthetic import write_stream

    manifest = write_stream(tmp_path / "clip", 6, seed=1, size=(48, 64), dwell=(2, 2), fmt="folder", progress=False)
    listing = list_source(manifest)
    rows = manifest.read_text().splitlines()[1:]
    assert [str(s.path) for s in listing.samples] == [r.split(",")[0] for r in rows]
    assert [s.label for s in listing.samples] == [r.split(",")[1] for r in rows]
    assert all(s.path.is_file() and s.split is None for s in listing.samples)


def test_groups_never_straddle_splits_and_follow_the_fractions(tmp_path, shapes):
    from models.data import assign_splits, group_split, index_dataset

    rng = np.random.default_rng(0)
    groups = [f"video{g}" for g in range(60) for _ in range(int(rng.integers(3, 8)))]
    labels = np.array([int(g[5:]) % 3 for g in groups])
    split = group_split(groups, labels, 0.15, 0.15, seed=1)
    by_group = {}
    for g, s in zip(groups, split):
        by_group.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())
    for name, frac in (("val", 0.15), ("test", 0.15)):
        share = np.mean(split == name)
        assert abs(share - frac) < 0.06, (name, share)
        assert set(labels[split == name]) == {0, 1, 2}  # stratified by the groups' majority class
    assert list(group_split(groups, labels, 0.15, 0.15, seed=1)) == list(split)
    # rows with a split keep it; grouped rows split by group, the rest stratified
    rows = [("circle/0000.png", "circle", "test", ""), ("circle/0001.png", "circle", "", "a"),
            ("circle/0002.png", "circle", "", "a")] + [
        (f"{c}/{i:04d}.png", c, "", f"{c}{i // 4}") for c in SHAPE_CLASSES for i in range(3, 20)]
    m = write_manifest(shapes / "grouped.csv", rows, ("path", "label", "split", "group"))
    try:
        idx = index_dataset(m, seed=0)
        where = {p: s for s in ("train", "val", "test") for p in idx.paths[s]}
        assert where[str(shapes / "circle/0000.png")] == "test"
        assert where[str(shapes / "circle/0001.png")] == where[str(shapes / "circle/0002.png")]
        for c in SHAPE_CLASSES:
            for g in range(1, 5):
                members = {where[str(shapes / f"{c}/{i:04d}.png")] for i in range(max(3, 4 * g), min(20, 4 * g + 4))}
                assert len(members) == 1, (c, g, members)
        assert idx.groups["train"] and all(g is not None for s in ("val",) for g in idx.groups[s])
    finally:
        m.unlink()
    flat = assign_splits([type("S", (), {"split": None, "group": None})()] * 30, np.arange(30) % 3, 0.2, 0.2, 0)
    assert list(flat) == list(stratified_split(np.arange(30) % 3, 0.2, 0.2, 0))
