"""Property-based sweeps (hypothesis) over the three readers of user files: the run-config loader
(:func:`pipeline.config.load_config`), the label importers (:mod:`pipeline.labeling.io`: CSV, JSONL, Label Studio)
and the training-data manifest reader (:func:`models.data.read_manifest`).

Every malformed input must raise the project's own error type (ConfigError, LabelImportError, DataError) with a
one-line message naming the file, the line and the field; never a bare exception, and a refused label import
leaves every table of the store as it was. Derandomized (the same examples on every run) and bounded: the file
runs in well under a minute on a busy 2-core box.
"""

from __future__ import annotations

import csv
import io
import json
import re
import string
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.data import SPLITS, read_manifest
from pipeline.config import RunConfig, load_config
from pipeline.labeling.io import import_labels
from pipeline.store import metadata
from pipeline.types import ConfigError, DataError, LabelImportError
from tests.pipeline.labeling.conftest import CLASSES, fill_store

SWEEP = settings(derandomize=True, deadline=None, max_examples=100, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FILE_LEVEL = ("no labels found", "unsupported file extension", "not UTF-8 text", "cannot read the file")

# plain text; and text with the characters that break naive readers (quotes, separators, control characters,
# line separators other than \n, lone surrogates are left out: a file on disk is UTF-8)
plain = st.text(string.ascii_letters + string.digits + "_-", min_size=1, max_size=12)
nasty = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True),
                    nasty, plain)
values = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(plain, kids, max_size=3)),
                      max_leaves=6)


_TMP = tempfile.TemporaryDirectory(prefix="shadowcam-prop-")  # removed at exit; each example overwrites its file


def _tmpfile(name: str) -> Path:
    return Path(_TMP.name) / name


def _assert_one_line(msg: str, path: Path) -> None:
    assert "\n" not in msg and "\r" not in msg, msg
    assert msg.startswith(str(path)), msg


# --- the config loader ---------------------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "sources": [{"uri": "dock1.mp4", "max_fps": 5.0, "loop": False}, "shelf/"],
    "incumbent": {"uri": "model.onnx", "providers": ["cpu"]},
    "batching": {"batch_size": 8, "max_wait_ms": 10},
    "sampling": {"enabled": True, "rate": 0.2},
    "store": {"url": "store.db"},
    "max_frames": 100,
    "workdir": ".",
}


def _paths(d: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(d, list):
        for i, v in enumerate(d):
            out += _paths(v, prefix + (i,))
    return out


def _mutate(doc: dict, path: tuple, value: Any, action: str) -> None:
    node = doc
    for part in path[:-1]:
        node = node[part]
    last = path[-1]
    if action == "delete":
        del node[last]
    elif action == "add" and isinstance(node, dict):
        node[f"{last}_x"] = value  # an unknown key next to a known one
    else:
        node[last] = value


@st.composite
def config_docs(draw) -> tuple[str | bytes, dict | None]:
    """``(yaml_text, doc)``: BASE with a few random mutations, or (sometimes) raw text or bytes that may not be YAML."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(nasty, st.binary(max_size=40), st.sampled_from(
            ["[1, 2", "a: [", "- a\n- b\n", "[]", "0", "false", "key: value: x", "!!python/object:os.system x",
             "a: 1\na: 2\n", "\t- x", "store: x.db\n"]))), None
    doc = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(doc)
        if not paths:
            break
        _mutate(doc, draw(st.sampled_from(paths)), draw(values), draw(st.sampled_from(["set", "set", "delete", "add"])))
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), doc


@SWEEP
@given(config_docs(), st.dictionaries(st.sampled_from(["store.url", "batching.batch_size", "sampling.rate", "max_frames",
                                                       "store", "sources", "incumbent.uri", "workdir"]), values, max_size=2))
def test_config_loader_raises_config_error_naming_file_line_and_field(case: tuple[str | bytes, dict | None], overrides: dict) -> None:
    text, doc = case
    path = _tmpfile("run.yaml")
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:
        msg = str(e)
        _assert_one_line(msg, path)
        assert re.match(rf"^{re.escape(str(path))}(:\d+)?: ", msg), msg
        m = re.search(r"field '([^']*)'", msg)
        if m and doc is not None and isinstance(doc, dict):
            top = m.group(1).split(".")[0]
            if top in doc and not any(k.split(".")[0] == top for k in overrides):  # the file spells the field out
                assert re.match(rf"^{re.escape(str(path))}:\d+: field ", msg), msg
        return
    assert isinstance(cfg, RunConfig)


def test_config_error_points_at_the_line_of_the_field(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("sources:\n  - uri: dock1.mp4\n    max_fps: -3\nbatching:\n  batch_size: 8\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    assert str(ei.value) == f"{path}:3: field 'sources.0.max_fps': Input should be greater than 0 (got -3)"
    path.write_text("store: sqlite.db\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path, {"store.url": "x.db"})
    assert str(ei.value) == f"{path}: field 'store': expected a mapping of settings (to set 'store.url' in it), got 'sqlite.db'"
    path.write_text("batching:\n  batch_size: [8\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:3: not valid YAML \("):
        load_config(path)
    path.write_bytes(b"workdir: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text"):
        load_config(path)
    path.write_text("[]\n")
    with pytest.raises(ConfigError, match=r":1: expected a mapping of settings at the top level, got a YAML list"):
        load_config(path)


# --- the label importers ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store_box(tmp_path_factory):
    filled = fill_store(tmp_path_factory.mktemp("prop_store"), n=6)
    yield filled
    filled.store.close()


def _counts(store) -> dict[str, int]:
    return {t.name: store.count(t) for t in metadata.sorted_tables}


def _check_import(store, path: Path) -> None:
    """Import ``path``: either it works and exactly its labels were added, or a one-line LabelImportError naming the
    file (and the line of every row-level problem) and nothing changed in any table."""
    before = _counts(store)
    try:
        n = import_labels(store, path, annotator="prop")
    except LabelImportError as e:
        _assert_one_line(str(e), path)
        assert "nothing was imported" in str(e)
        for problem in getattr(e, "problems", []):
            _assert_one_line(problem, path)
            if not any(w in problem for w in FILE_LEVEL):
                assert re.match(rf"^{re.escape(str(path))}:\d+: ", problem), problem
        assert _counts(store) == before
        return
    after = _counts(store)
    assert after["labels"] == before["labels"] + n and n > 0


label_rows = st.lists(st.fixed_dictionaries({
    "frame_id": st.one_of(st.sampled_from([f"r1:cam{i % 2}:{i}" for i in range(6)]), nasty, st.integers(), st.none()),
    "label": st.one_of(st.sampled_from(CLASSES + ["unsure", "Box", "crate"]), nasty, st.integers(), st.none()),
    "annotator": st.one_of(st.none(), plain, nasty, st.integers(), st.text(min_size=129, max_size=140)),
}), min_size=0, max_size=6)


@SWEEP
@given(label_rows, st.sampled_from(["frame_id,label,annotator", "label,frame_id", "frame_id,label,label", "frame_id",
                                    "Frame_ID , Label", ""]),
       st.booleans(), st.lists(nasty, max_size=2), st.lists(st.lists(nasty, max_size=2), max_size=6))
def test_csv_label_import_sweep(store_box, rows, header, quoted, junk_lines, extras) -> None:
    path = _tmpfile("labels.csv")
    cols = [c.strip().lower() for c in header.split(",")] if header else []
    buf = io.StringIO()
    if header:
        buf.write(header + "\n")
    w = csv.writer(buf, lineterminator="\n")
    for k, r in enumerate(rows):
        cells = ["" if r.get(c) is None else str(r[c]) for c in cols] or [str(r["frame_id"])]
        cells += extras[k] if k < len(extras) else []  # a row with more cells than the header
        if quoted:
            w.writerow(cells)
        else:
            buf.write(",".join(cells) + "\n")  # unquoted: separators and quotes inside values break the row
    for j in junk_lines:
        buf.write(j + "\n")
    path.write_text(buf.getvalue(), encoding="utf-8")
    _check_import(store_box.store, path)


@SWEEP
@given(st.lists(st.one_of(
    label_rows.map(lambda rs: [json.dumps(r) for r in rs]),
    label_rows.map(lambda rs: [json.dumps(r, ensure_ascii=False) for r in rs]),  # raw U+2028 etc. inside strings
    st.lists(values.map(lambda v: json.dumps(v, allow_nan=True)), max_size=3),
    st.lists(nasty, max_size=3),
), max_size=3))
def test_jsonl_label_import_sweep(store_box, chunks) -> None:
    path = _tmpfile("labels.jsonl")
    path.write_text("\n".join(line for chunk in chunks for line in chunk) + "\n", encoding="utf-8")
    _check_import(store_box.store, path)


ls_annotation = st.one_of(
    st.fixed_dictionaries({
        "completed_by": st.one_of(st.integers(1, 9), st.fixed_dictionaries({"email": plain}), st.none(), nasty),
        "was_cancelled": st.one_of(st.booleans(), st.none(), nasty),
        "result": st.one_of(
            st.lists(st.fixed_dictionaries({"value": st.fixed_dictionaries({"choices": st.one_of(
                st.lists(st.one_of(st.sampled_from(CLASSES), nasty, st.integers()), max_size=2), plain, st.none())})}), max_size=2),
            values),
    }),
    values,
)
ls_task = st.one_of(
    st.fixed_dictionaries({
        "id": st.one_of(st.integers(), nasty, st.none()),
        "data": st.one_of(st.fixed_dictionaries({"frame_id": st.one_of(st.sampled_from([f"r1:cam{i % 2}:{i}" for i in range(6)]),
                                                                       nasty, st.integers())}), values),
        "annotations": st.one_of(st.lists(ls_annotation, max_size=3), values),
    }),
    values,
)


@SWEEP
@given(st.one_of(st.lists(ls_task, max_size=4), values), st.booleans(), st.booleans())
def test_labelstudio_import_sweep(store_box, doc, indent, truncate) -> None:
    path = _tmpfile("export.json")
    text = json.dumps(doc, indent=1 if indent else None, allow_nan=True)
    if truncate:
        text = text[: max(1, len(text) // 2)]  # a cut-off download
    path.write_text(text, encoding="utf-8")
    _check_import(store_box.store, path)


FAULTS = {
    # field -> a strategy for a value that must be refused in that field
    "label": plain.filter(lambda s: s not in CLASSES + ["unsure"] and s.lower() not in CLASSES),
    "frame_id": plain.map(lambda s: f"zz:{s}"),
    "annotator": st.one_of(st.text(string.ascii_letters, min_size=129, max_size=140),
                           st.tuples(plain, st.sampled_from("\x00\x01\x07\x1b\x7f"), plain).map("".join)),
}


@SWEEP
@given(st.lists(st.tuples(st.integers(0, 5), st.sampled_from(sorted(FAULTS)), st.data()), min_size=1, max_size=5),
       st.sampled_from(["csv", "jsonl"]))
def test_each_bad_row_is_named_by_line_and_field(store_box, faulty, fmt) -> None:
    """Rows of a file with known faults: every faulty row's problem names its line and the field."""
    rows, expect = [], []
    for k, (frame, fault, data) in enumerate(faulty):
        row = {"frame_id": f"r1:cam{frame % 2}:{frame}", "label": CLASSES[frame % 3], "annotator": f"a{k}"}
        row[fault] = data.draw(FAULTS[fault])
        rows.append(row)
        expect.append((k + (2 if fmt == "csv" else 1), fault))
    path = _tmpfile(f"labels.{fmt}")
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["frame_id", "label", "annotator"])
        w.writerows([[r["frame_id"], r["label"], r["annotator"]] for r in rows])
        path.write_text(buf.getvalue(), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    before = _counts(store_box.store)
    with pytest.raises(LabelImportError) as ei:
        import_labels(store_box.store, path, max_reported=100)
    _assert_one_line(str(ei.value), path)
    for line, field in expect:
        assert any(p.startswith(f"{path}:{line}: field '{field}': ") for p in ei.value.problems), (line, field, ei.value.problems)
    assert _counts(store_box.store) == before


# --- the manifest reader -----------------------------------------------------------------------------------------------

manifest_rows = st.lists(st.fixed_dictionaries({
    "path": st.one_of(plain.map(lambda s: f"img/{s}.png"), nasty, st.sampled_from(["a.txt", "", " "])),
    "label": st.one_of(st.sampled_from(CLASSES), nasty, st.just("")),
    "split": st.one_of(st.sampled_from(list(SPLITS) + ["", "holdout", "Train"]), nasty),
    "group": st.one_of(st.none(), plain, nasty),
}), max_size=6)


@SWEEP
@given(manifest_rows, st.sampled_from(["path,label,split,group", "path,label", "label,path,split", "source_ref,label",
                                       "path", "path,label,label", ""]),
       st.booleans(), st.lists(nasty, max_size=2), st.lists(st.lists(nasty, max_size=2), max_size=6))
def test_manifest_reader_sweep(rows, header, quoted, junk_lines, extras) -> None:
    path = _tmpfile("manifest.csv")
    cols = header.split(",") if header else []
    buf = io.StringIO()
    if header:
        buf.write(header + "\n")
    w = csv.writer(buf, lineterminator="\n")
    for k, r in enumerate(rows):
        cells = ["" if r.get("path" if c == "source_ref" else c) is None else str(r["path" if c == "source_ref" else c])
                 for c in cols] or [r["path"]]
        cells += extras[k] if k < len(extras) else []  # a row with more cells than the header
        if quoted:
            w.writerow(cells)
        else:
            buf.write(",".join(cells) + "\n")
    for j in junk_lines:
        buf.write(j + "\n")
    path.write_text(buf.getvalue(), encoding="utf-8")
    try:
        listing = read_manifest(path)
    except DataError as e:
        _assert_one_line(str(e), path)
        return
    assert listing.samples and all(s.label and s.split in (None, *SPLITS) for s in listing.samples)
    assert all("\x00" not in str(s.path) for s in listing.samples)


MANIFEST_FAULTS = {
    "label": st.just(""),
    "path": st.just(""),
    "split": plain.filter(lambda s: s not in SPLITS),
    "group": st.tuples(plain, st.sampled_from("\x00\x01\x1b\x7f"), plain).map("".join),
}


@SWEEP
@given(st.integers(0, 5), st.sampled_from(sorted(MANIFEST_FAULTS)), st.data())
def test_manifest_error_names_line_and_field(at, fault, data) -> None:
    rows = [{"path": f"img/{i}.png", "label": CLASSES[i % 3], "split": "", "group": f"g{i}"} for i in range(6)]
    rows[at][fault] = data.draw(MANIFEST_FAULTS[fault])
    path = _tmpfile("manifest.csv")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "label", "split", "group"])
    w.writerows([[r["path"], r["label"], r["split"], r["group"]] for r in rows])
    path.write_text(buf.getvalue(), encoding="utf-8")
    with pytest.raises(DataError) as ei:
        read_manifest(path)
    _assert_one_line(str(ei.value), path)
    assert str(ei.value).startswith(f"{path}:{at + 2}: field '{fault}': "), str(ei.value)
