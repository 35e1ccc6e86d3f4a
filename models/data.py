"""Training data: ImageFolder directories and CSV manifests, checked, split and loaded into memory.

A *data source* is one of

* an ImageFolder directory ``DIR/<class>/*.jpg`` (class = sub-folder name; hidden folders skipped);
* a CSV manifest with columns ``path,label[,split][,group]`` (paths relative to the manifest's folder, or absolute;
  extra columns such as ``camera``/``shift`` are ignored; ``split`` is ``train``, ``val`` or ``test``,
  empty = assign it here; ``group`` names what must stay in one split: a camera, a video, a time block); a manifest without ``path`` may name its images in ``source_ref`` instead (what
  ``models.synthetic.write_stream(fmt="folder")`` writes: a labelled clip is a data source as it is);
* a directory that contains ``manifest.csv`` (what ``shadowcam synth`` writes): the manifest is used, so the
  data fingerprint is the manifest's hash.

Several sources are concatenated (e.g. the original training set plus a manifest of production frames that
humans labelled). The class list is, in order of precedence: the one given explicitly (``class_names``, e.g.
the incumbent model's, so a retrained model answers in the same label space), else the first source's
(ImageFolder: its sub-folders; manifest: its sorted labels). A label in a later source that is not in the class
list is an error, as is a class with no images at all.

Splits: rows whose source gives a ``split`` keep it. The rest are split by :func:`assign_splits`: **by group** where
the row has a ``group`` (whole groups go to one split, so near-duplicate frames of one video or time block never
straddle train and test), stratified by class otherwise.

:func:`index_dataset` lists, checks and splits without decoding anything (what training streams from, see
:mod:`models.loader`); :func:`load_dataset` also decodes every image once with OpenCV at the model input size
(``cv2.INTER_AREA``, the interpolation recorded in the model card and used by the runtime) into one uint8 RGB array
``(N, H, W, 3)`` per split, for small datasets and tests.

Every check raises :class:`pipeline.types.DataError` with a one-line message naming the file or class.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from pipeline.types import DataError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MANIFEST_NAME = "manifest.csv"
SPLITS = ("train", "val", "test")
REQUIRED_COLUMNS = ("path", "label")
RESIZE_INTERPOLATION = "area"  # recorded in the model card; the runtime resizes camera frames the same way
_CV2_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST, "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class Sample:
    """One labelled image before decoding."""

    path: Path
    label: str
    split: str | None = None  # None: assigned by assign_splits
    group: str | None = None  # rows of one group (camera, video, time block) always land in one split


@dataclass
class SourceListing:
    """What one data source holds, before any image is decoded."""

    source: Path
    kind: str  # "folder" | "manifest"
    samples: list[Sample]
    classes: list[str]  # the class list this source declares
    fingerprint: str  # sha256 (hex) of the manifest file, or of the folder's sorted "path,label" listing
    non_images: int = 0  # files skipped because their extension is not an image type


class _SplitCounts:
    """Rows per split and per class, for a dataclass with ``class_names`` and ``labels`` (split -> class indices)."""

    class_names: list[str]
    labels: dict[str, np.ndarray]

    def size(self, split: str) -> int:
        return int(self.labels[split].shape[0])

    def class_counts(self, split: str) -> dict[str, int]:
        counts = np.bincount(self.labels[split], minlength=len(self.class_names))
        return {c: int(n) for c, n in zip(self.class_names, counts)}


@dataclass
class Dataset(_SplitCounts):
    """Decoded images per split, all at the model input size, RGB uint8 ``(N, H, W, 3)``."""

    class_names: list[str]
    img_size: int
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]  # int64 class indices into class_names
    paths: dict[str, list[str]]
    fingerprint: str  # sha256 over the sources' fingerprints (a single source: its own fingerprint)
    sources: list[str]
    unreadable: list[str] = field(default_factory=list)  # files skipped because they could not be decoded
    non_images: int = 0


    def summary(self) -> str:
        parts = [f"{s}={self.size(s)}" for s in SPLITS]
        return f"{len(self.class_names)} classes, " + ", ".join(parts) + f", {len(self.unreadable)} unreadable, {self.non_images} non-image files skipped"


# --- listing sources ---------------------------------------------------------------------------------------
def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def list_image_folder(root: str | Path) -> SourceListing:
    """List an ImageFolder ``root/<class>/*``. Non-image files are skipped and counted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected {root}/<class>/*.jpg or {root}/{MANIFEST_NAME})")
    samples: list[Sample] = []
    non_images = 0
    for d in class_dirs:
        files = sorted(p for p in d.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if is_image_file(p)]
        skipped = len(files) - len(images)
        non_images += skipped
        if not images:
            extra = f" ({skipped} non-image file(s) ignored; expected {', '.join(sorted(IMAGE_EXTENSIONS))})" if skipped else ""
            raise DataError(f"{d}: class {d.name!r} has no images{extra}")
        samples.extend(Sample(p, d.name) for p in images)
    if non_images:
        log.warning("%s: ignored %d non-image file(s)", root, non_images)
    listing = "".join(f"{s.path.relative_to(root).as_posix()},{s.label}\n" for s in samples)
    return SourceListing(root, "folder", samples, [d.name for d in class_dirs],
                         hashlib.sha256(listing.encode()).hexdigest(), non_images)


def _field_problem(name: str, value: str) -> str | None:
    """Why ``value`` is unusable as manifest field ``name`` (None when it is usable)."""
    bad = next((c for c in value if ord(c) < 32 and c != "\t" or ord(c) == 127), None)
    if bad is not None:
        return f"field {name!r}: contains the control character {bad!r}; expected plain text"
    return None


def read_manifest(path: str | Path) -> SourceListing:
    """Read a CSV manifest ``path,label[,split][,group]`` (header required; other columns ignored).

    Every problem is a one-line :class:`DataError` naming ``file:line`` and the field (``field 'label': empty``); a
    row with more or fewer cells than the header is an error too, never a silently shifted row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read the manifest ({e.strerror or e.__class__.__name__})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: manifest is not UTF-8 text ({e.reason} at byte {e.start})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header_row = next((r for r in reader if r and any(c.strip() for c in r)), [])
        columns = [c.strip() for c in header_row]
        header_line = reader.line_num
        path_col = "path" if "path" in columns or "source_ref" not in columns else "source_ref"  # stream clips
        missing = [c for c in REQUIRED_COLUMNS if c not in columns and not (c == "path" and path_col != "path")]
        if missing:
            raise DataError(f"{path}:{header_line or 1}: manifest is missing column(s) {', '.join(missing)} "
                            f"(expected a header path,label[,split]; got {_short(','.join(columns)) if columns else 'nothing'})")
        twice = sorted({c for c in (path_col, "label", "split", "group") if columns.count(c) > 1})
        if twice:
            raise DataError(f"{path}:{header_line}: manifest header repeats column(s) {', '.join(twice)}")
        base = path.parent
        samples: list[Sample] = []
        non_images = 0
        for rec in reader:
            lineno = reader.line_num
            if not rec or not any(c.strip() for c in rec):
                continue
            if len(rec) != len(columns):
                raise DataError(f"{path}:{lineno}: malformed row: {len(rec)} field(s), expected {len(columns)} "
                                f"({_short(','.join(columns))})")
            row = {k: v.strip() for k, v in zip(columns, rec)}
            rel, label, split = row.get(path_col, ""), row.get("label", ""), row.get("split", "") or None
            group = row.get("group", "") or None
            for name, value in ((path_col, rel), ("label", label)):
                if not value:
                    raise DataError(f"{path}:{lineno}: field {name!r}: empty; expected an image path and its label")
            for name, value in ((path_col, rel), ("label", label), ("group", group or "")):
                why = _field_problem(name, value)
                if why:
                    raise DataError(f"{path}:{lineno}: {why}")
            if split is not None and split not in SPLITS:
                raise DataError(f"{path}:{lineno}: field 'split': {_short(split)} is not one of {', '.join(SPLITS)} (or empty)")
            p = Path(rel)
            p = p if p.is_absolute() else base / p
            if not is_image_file(p):
                non_images += 1
                continue
            samples.append(Sample(p, label, split, group))
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: malformed CSV ({' '.join(str(e).split())})") from None
    if not samples:
        why = f" ({non_images} non-image row(s) ignored)" if non_images else ""
        raise DataError(f"{path}: manifest lists no images{why}")
    if non_images:
        log.warning("%s: ignored %d non-image row(s)", path, non_images)
    classes = sorted({s.label for s in samples})
    return SourceListing(path, "manifest", samples, classes, hashlib.sha256(raw).hexdigest(), non_images)


def _short(text: str, limit: int = 80) -> str:
    """``repr(text)`` cut to ``limit`` characters, for one-line messages."""
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def list_source(source: str | Path) -> SourceListing:
    """A manifest file, a folder with ``manifest.csv``, or an ImageFolder (see the module docstring)."""
    source = Path(source)
    if source.is_file():
        return read_manifest(source)
    if source.is_dir():
        if (source / MANIFEST_NAME).is_file():
            return read_manifest(source / MANIFEST_NAME)
        return list_image_folder(source)
    if source.suffix.lower() == ".csv":
        raise DataError(f"{source}: manifest not found")
    raise DataError(f"{source}: data folder not found")


# --- splitting -----------------------------------------------------------------------------------------------
def stratified_split(labels: Sequence[int] | np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Assign each example to train/val/test, class by class (seeded). Returns an array of split names.

    Each class with at least 3 examples gets at least one validation and one test example; smaller classes
    go to training only.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) with sum < 1")
    labels = np.asarray(labels)
    out = np.empty(labels.shape[0], dtype=object)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(idx.size)]
        n = idx.size
        n_val = int(round(n * val_fraction))
        n_test = int(round(n * test_fraction))
        if n >= 3:
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
        else:
            n_val = n_test = 0
        out[idx[:n_val]] = "val"
        out[idx[n_val:n_val + n_test]] = "test"
        out[idx[n_val + n_test:]] = "train"
    return out


def group_split(groups: Sequence[str], labels: Sequence[int] | np.ndarray, val_fraction: float, test_fraction: float,
                seed: int) -> np.ndarray:
    """Assign whole groups to train/val/test (seeded); returns an array of split names, one per row.

    Groups are stratified by their majority class: within each class the groups are shuffled and taken for
    validation until that class's validation rows reach ``val_fraction`` of its rows, then for test likewise; the
    rest train. With few groups the fractions are approximate (a group is never cut); a class with fewer than
    three groups keeps them all in training.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) with sum < 1")
    groups = np.asarray([str(g) for g in groups], dtype=object)
    labels = np.asarray(labels)
    uniq, inv = np.unique(groups, return_inverse=True)
    sizes = np.bincount(inv)
    majority = np.array([np.bincount(labels[inv == g]).argmax() for g in range(len(uniq))])
    rng = np.random.default_rng(seed)
    split_of = np.full(len(uniq), "train", dtype=object)
    for c in np.unique(majority):
        gs = np.flatnonzero(majority == c)
        gs = gs[rng.permutation(gs.size)]
        if gs.size < 3:
            continue
        total = sizes[gs].sum()
        taken = 0
        for name, frac in (("val", val_fraction), ("test", test_fraction)):
            want = frac * total
            got = 0
            while frac > 0 and taken < gs.size - 1 and (got == 0 or got + sizes[gs[taken]] / 2 <= want):
                split_of[gs[taken]] = name
                got += sizes[gs[taken]]
                taken += 1
    return split_of[inv]


def assign_splits(samples: Sequence[Sample], labels: Sequence[int] | np.ndarray, val_fraction: float,
                  test_fraction: float, seed: int) -> np.ndarray:
    """The split of every row: its own ``split`` when given; else by :func:`group_split` for rows with a ``group``,
    :func:`stratified_split` for the rest. Returns an array of split names."""
    labels = np.asarray(labels)
    split = np.array([s.split for s in samples], dtype=object)
    todo = np.flatnonzero(split == None)  # noqa: E711 (object array comparison)
    grouped = np.array([i for i in todo if samples[i].group is not None], dtype=np.int64)
    single = np.array([i for i in todo if samples[i].group is None], dtype=np.int64)
    if grouped.size:
        split[grouped] = group_split([samples[i].group for i in grouped], labels[grouped], val_fraction, test_fraction, seed)
    if single.size:
        split[single] = stratified_split(labels[single], val_fraction, test_fraction, seed)
    return split


# --- decoding ----------------------------------------------------------------------------------------------------
def load_image(path: str | Path, size: int | tuple[int, int], interpolation: str = RESIZE_INTERPOLATION) -> np.ndarray | None:
    """Decode one image as RGB uint8 ``(H, W, 3)`` at ``size`` (int = square; else (height, width)).

    Returns None when the file is missing or cannot be decoded. Grey and BGRA images are converted.
    """
    try:
        buf = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if buf.size == 0:
        return None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # always 3-channel BGR
    if img is None or img.size == 0:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if img.shape[:2] != (h, w):
        img = cv2.resize(img, (w, h), interpolation=_CV2_INTERP[interpolation])
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def combine_sources(sources: Iterable[str | Path], class_names: Sequence[str] | None = None) -> tuple[list[SourceListing], list[str]]:
    """List every source and check its labels against the class list (explicit, else the first source's)."""
    listings = [list_source(s) for s in sources]
    if not listings:
        raise DataError("no data sources given (expected at least one ImageFolder directory or manifest)")
    classes = list(class_names) if class_names else list(listings[0].classes)
    if len(set(classes)) != len(classes):
        raise DataError(f"class list has duplicates: {classes}")
    known = set(classes)
    for lst in listings:
        for s in lst.samples:
            if s.label not in known:
                raise DataError(f"{lst.source}: label {s.label!r} (file {s.path.name}) is not in the class list {classes}")
    counts = Counter(s.label for lst in listings for s in lst.samples)
    empty = [c for c in classes if counts[c] == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} has no images in {', '.join(str(l.source) for l in listings)}"
                        + (f" (also empty: {', '.join(map(repr, empty[1:]))})" if len(empty) > 1 else ""))
    return listings, classes


@dataclass
class DataIndex(_SplitCounts):
    """The rows of every split, listed and checked but not decoded: what training streams from."""

    class_names: list[str]
    paths: dict[str, list[str]]
    labels: dict[str, np.ndarray]  # int64 class indices into class_names
    groups: dict[str, list[str | None]]
    fingerprint: str
    sources: list[str]
    non_images: int = 0



def index_dataset(
    sources: Sequence[str | Path] | str | Path,
    *,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> DataIndex:
    """List and check the sources and assign every row its split (:func:`assign_splits`); decodes nothing."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    listings, classes = combine_sources(sources, class_names)
    index = {c: i for i, c in enumerate(classes)}
    samples = [s for lst in listings for s in lst.samples]
    labels = np.array([index[s.label] for s in samples], dtype=np.int64)
    split = assign_splits(samples, labels, val_fraction, test_fraction, seed)
    paths, by_split, groups = {}, {}, {}
    for name in SPLITS:
        m = split == name
        by_split[name] = labels[m]
        paths[name] = [str(s.path) for s, mm in zip(samples, m) if mm]
        groups[name] = [s.group for s, mm in zip(samples, m) if mm]
    if by_split["train"].size == 0:
        raise DataError(f"no training images after the split of {', '.join(str(l.source) for l in listings)}")
    if len(listings) == 1:
        fingerprint = listings[0].fingerprint
    else:
        fingerprint = hashlib.sha256("".join(l.fingerprint for l in listings).encode()).hexdigest()
    return DataIndex(classes, paths, by_split, groups, fingerprint, [str(l.source) for l in listings],
                     sum(l.non_images for l in listings))


def check_unreadable(unreadable: Sequence[str], total: int, max_bad_fraction: float, warn: bool = True) -> None:
    """Warn about skipped images (``warn``), or raise :class:`DataError` when more than ``max_bad_fraction`` of
    ``total``."""
    if not unreadable:
        return
    frac = len(unreadable) / max(total, 1)
    shown = ", ".join(unreadable[:3]) + (", ..." if len(unreadable) > 3 else "")
    if frac > max_bad_fraction:
        raise DataError(f"{len(unreadable)} of {total} images ({frac:.1%}) are missing or unreadable, "
                        f"more than max_bad_fraction={max_bad_fraction:.1%}: {shown}")
    if warn:
        log.warning("skipped %d unreadable image(s) of %d: %s", len(unreadable), total, shown)


def load_dataset(
    sources: Sequence[str | Path] | str | Path,
    img_size: int,
    *,
    class_names: Sequence[str] | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    max_bad_fraction: float = 0.05,
    progress: bool = True,
) -> Dataset:
    """List, check, split (:func:`index_dataset`) and decode the sources into memory (see the module docstring).

    Unreadable images are skipped with a warning and counted; above ``max_bad_fraction`` of all listed images
    a :class:`DataError` names the first of them.
    """
    from tqdm.auto import tqdm

    idx = index_dataset(sources, class_names=class_names, val_fraction=val_fraction, test_fraction=test_fraction,
                        seed=seed)
    total = sum(idx.size(s) for s in SPLITS)
    unreadable: list[str] = []
    ds_images, ds_labels, ds_paths = {}, {}, {}
    bar = tqdm(total=total, desc="loading images", unit="img", disable=not progress, leave=False)
    for name in SPLITS:
        images = np.empty((idx.size(name), img_size, img_size, 3), dtype=np.uint8)
        keep = np.zeros(idx.size(name), dtype=bool)
        for i, p in enumerate(idx.paths[name]):
            img = load_image(p, img_size)
            bar.update(1)
            if img is None:
                unreadable.append(p)
                continue
            images[i] = img
            keep[i] = True
        ds_images[name] = np.ascontiguousarray(images[keep])
        ds_labels[name] = idx.labels[name][keep]
        ds_paths[name] = [p for p, k in zip(idx.paths[name], keep) if k]
    bar.close()
    check_unreadable(unreadable, total, max_bad_fraction)
    lost = sorted(set(idx.class_names) - {idx.class_names[k] for name in SPLITS for k in ds_labels[name]})
    if lost:
        raise DataError(f"class {lost[0]!r} has no readable images")
    if ds_labels["train"].size == 0:
        raise DataError(f"no training images after the split of {', '.join(idx.sources)}")
    return Dataset(idx.class_names, img_size, ds_images, ds_labels, ds_paths, idx.fingerprint, idx.sources,
                   unreadable, idx.non_images)
