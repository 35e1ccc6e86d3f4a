"""Issue 15, "bad input elsewhere": each case gets a one-line error (or an honest count), and nothing is half-written.

* a ``mysql://`` store URL: a one-line StoreError (no ModuleNotFoundError traceback), password redacted;
* a mistyped SQLite path: every command that reads a store refuses it, and creates neither the file nor its folders
  (only ``run``/``demo`` create stores);
* non-image files in a folder source: counted in the run summary, named in the source's health event, logged once;
* cancelled Label Studio annotations: counted in the import summary;
* labels outside the model's classes: refused at import (file:line, field, allowed classes), nothing written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.labeling.io import import_label_file, import_labels
from pipeline.store import PredictionStore, metadata
from pipeline.types import LabelImportError, StoreError
from tests.helpers.media import make_image_folder
from tests.pipeline.labeling.conftest import fill_store

STORE_HELP = "expected a SQLite path (runs/x/shadowcam.db, sqlite:///PATH) or a PostgreSQL URL (postgresql://USER@HOST/DB)"


def table_counts(store: PredictionStore) -> dict[str, int]:
    """Rows in every table of the store's schema (whatever other features added)."""
    return {t.name: store.count(t) for t in metadata.sorted_tables}


def one_error_line(err: str, command: str) -> str:
    """The CLI's stderr holds exactly one line, ``shadowcam COMMAND: error: ...``; returns the message."""
    lines = err.splitlines()
    assert len(lines) == 1, err
    prefix = f"shadowcam {command}: error: "
    assert lines[0].startswith(prefix), err
    return lines[0][len(prefix):]


# --- a store URL for a database shadowcam does not support -------------------------------------------------------

def test_mysql_url_is_a_one_line_store_error(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as ei:
        PredictionStore("mysql://shadow:s3cret@127.0.0.1/shadowcam")
    assert str(ei.value) == f"mysql://shadow:***@127.0.0.1/shadowcam: unsupported store database 'mysql'; {STORE_HELP}"
    with pytest.raises(StoreError, match=r"^mysql\+pymysql://u@h/d: unsupported store database 'mysql'; expected"):
        PredictionStore("mysql+pymysql://u@h/d")  # any driver of it: no ModuleNotFoundError either
    with pytest.raises(StoreError, match=r"^postgresql\+psycopg2://u@h/d: database driver 'psycopg2' is not installed; "
                                         r"use postgresql:// \(psycopg 3, installed with shadowcam\)$"):
        PredictionStore("postgresql+psycopg2://u@h/d")

    assert cli_main(["evaluate", "--db", "mysql://shadow:s3cret@127.0.0.1/shadowcam", "--no-mlflow"]) == 2
    msg = one_error_line(capsys.readouterr().err, "evaluate")
    assert msg == f"mysql://shadow:***@127.0.0.1/shadowcam: unsupported store database 'mysql'; {STORE_HELP}"
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unreachable_postgresql_is_one_line_with_the_password_hidden() -> None:
    with pytest.raises(StoreError) as ei:
        PredictionStore("postgresql://shadow:s3cret@127.0.0.1:1/shadowcam")  # port 1: connection refused at once
    msg = str(ei.value)
    assert msg.startswith("cannot open prediction store 'postgresql://shadow:***@127.0.0.1:1/shadowcam': OperationalError: ")
    assert "\n" not in msg and "s3cret" not in msg and "sqlalche.me" not in msg


# --- a mistyped SQLite path -----------------------------------------------------------------------------------------

READERS = {
    # command -> argv with {db} (a store path that does not exist) and {tmp}
    "evaluate": ["evaluate", "--db", "{db}", "--no-mlflow", "--workdir", "{tmp}"],
    "label export": ["label", "export", "--db", "{db}", "--pending"],
    "label import": ["label", "import", "{tmp}/labels.csv", "--db", "{db}"],
    "label simulate": ["label", "simulate", "--db", "{db}", "--manifest", "{tmp}/m.csv"],
    "promote": ["promote", "--model", "conveyor", "--db", "{db}", "--workdir", "{tmp}"],
    "retrain": ["retrain", "--db", "{db}", "--data", "{tmp}/data", "--workdir", "{tmp}"],
}


@pytest.mark.parametrize("command", list(READERS))
def test_a_mistyped_store_path_is_refused_and_nothing_is_created(command: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    db = tmp_path / "runs" / "dmeo" / "shadowcam.db"  # the typo: runs/dmeo
    (tmp_path / "labels.csv").write_text("frame_id,label\nr1:cam0:0,box\n")
    argv = [a.format(db=db, tmp=tmp_path) for a in READERS[command]]
    before = sorted(tmp_path.rglob("*"))
    assert cli_main(argv) == 2
    msg = one_error_line(capsys.readouterr().err, command.split()[0])
    assert msg == (f"{db}: prediction store not found (does not exist); give the shadowcam.db that `shadowcam run` or "
                   "`shadowcam demo` wrote (only they create stores), or a postgresql:// URL")
    assert not (tmp_path / "runs").exists()  # neither the file nor its folders
    assert sorted(tmp_path.rglob("*")) == before


def test_data_check_refuses_a_mistyped_store(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    for cls in ("box", "bag"):
        make_image_folder(data / cls, 2, seed=len(cls))
    db = tmp_path / "runs" / "dmeo" / "shadowcam.db"
    assert cli_main(["data", "check", str(data), "--db", str(db), "--no-duplicates"]) == 2
    msg = one_error_line(capsys.readouterr().err, "data")
    assert msg.startswith(f"{db}: prediction store not found")
    assert not (tmp_path / "runs").exists()


def test_not_a_store_is_refused_untouched(tmp_path: Path) -> None:
    empty, text = tmp_path / "empty.db", tmp_path / "notes.db"
    empty.write_bytes(b"")
    text.write_text("not a database\n" * 100)
    with pytest.raises(StoreError) as ei:
        PredictionStore(str(empty), must_exist=True)
    assert str(ei.value) == (f"{empty}: not a shadowcam prediction store (no schema_meta table); give the store that "
                             "`shadowcam run` or `shadowcam demo` wrote")
    with pytest.raises(StoreError) as ei:
        PredictionStore(str(text), must_exist=True)
    assert str(ei.value) == f"cannot open prediction store {str(text)!r}: DatabaseError: file is not a database"
    with pytest.raises(StoreError, match=r"prediction store not found \(is a folder, not a store file\)"):
        PredictionStore(str(tmp_path), must_exist=True)
    assert empty.read_bytes() == b"" and text.read_text() == "not a database\n" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "notes.db"]  # no -wal / -shm either


def test_only_creating_commands_create_a_store(tmp_path: Path) -> None:
    """``run``/``demo`` open with must_exist=False (the default): the file and its folders appear; afterwards a
    reading command opens the same path."""
    path = tmp_path / "new" / "dir" / "shadowcam.db"
    PredictionStore(str(path)).close()
    assert path.is_file()
    store = PredictionStore(str(path), must_exist=True)
    assert table_counts(store)["frames"] == 0
    store.close()


# --- non-image files in a folder source --------------------------------------------------------------------------

def test_non_image_files_are_counted_reported_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.config import load_config
    from pipeline.runner import Runner
    from pipeline.store import health_events, runs
    from tests.helpers.onnx_models import make_tiny_classifier

    folder = tmp_path / "shelf"
    make_image_folder(folder, 4, extra=["notes.txt", "Thumbs.db"])
    model = make_tiny_classifier(tmp_path / "inc.onnx", ["box", "bag", "empty"], input_size=(24, 32), seed=1)
    cfg = load_config(None, {"sources": [str(folder)], "incumbent": {"uri": str(model), "providers": ["cpu"]},
                             "store.url": "store.db", "workdir": str(tmp_path / "work"), "sampling.enabled": False})
    with caplog.at_level(logging.WARNING, logger="pipeline.sources.folder"):
        summary = Runner(cfg).run()
    cam = summary.cameras["shelf"]
    assert (cam["frames_read"], cam["skipped_non_image"]) == (4, 2)
    warned = [r.getMessage() for r in caplog.records if r.name == "pipeline.sources.folder"]
    assert warned == [(f"source {str(folder)!r}: 2 non-image file(s) skipped: Thumbs.db, notes.txt "
                       "(expected files ending in .bmp, .jp2, .jpeg, .jpg, .pbm, .pgm, .png, .ppm, .tif, .tiff, .webp)")]
    store = PredictionStore(str(tmp_path / "work" / "store.db"), must_exist=True)
    try:
        (connected,) = store.table_rows(health_events, (health_events.c.kind == "connected") & (health_events.c.camera_id == "shelf"))
        assert connected["detail"] == f"folder {folder.resolve()} (4 images, 2 non-image file(s) skipped: Thumbs.db, notes.txt)"
        (run,) = store.table_rows(runs)
        assert json.loads(run["summary"])["cameras"]["shelf"]["skipped_non_image"] == 2
    finally:
        store.close()


# --- Label Studio: cancelled annotations ---------------------------------------------------------------------------

def test_cancelled_labelstudio_annotations_are_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    filled = fill_store(tmp_path / "w", n=4)
    f0, f1, f2, f3 = filled.frame_ids

    def ann(choice: str, who: int, cancelled: bool = False) -> dict:
        return {"completed_by": who, "was_cancelled": cancelled, "result": [{"value": {"choices": [choice]}}]}

    export = [
        {"id": 1, "data": {"frame_id": f0}, "annotations": [ann("box", 3)]},
        {"id": 2, "data": {"frame_id": f1}, "annotations": [ann("pallet", 3, cancelled=True), ann("pallet", 4)]},
        {"id": 3, "data": {"frame_id": f2}, "annotations": [ann("empty", 3, cancelled=True)]},
        {"id": 4, "data": {"frame_id": f3}, "annotations": []},
    ]
    p = tmp_path / "ls.json"
    p.write_text(json.dumps(export, indent=1))
    with caplog.at_level(logging.INFO, logger="pipeline.labeling.io"):
        summary = import_label_file(filled.store, p)
    assert (summary.imported, summary.cancelled, summary.unannotated) == (2, 2, 1)
    line = f"imported 2 label(s) from {p}; skipped 2 cancelled annotation(s) and 1 task(s) without annotations"
    assert summary.describe() == line
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.labeling.io"] == [line]

    only_cancelled = tmp_path / "ls2.json"
    only_cancelled.write_text(json.dumps([{"id": 9, "data": {"frame_id": f3}, "annotations": [ann("box", 5, cancelled=True)]}]))
    before = table_counts(filled.store)
    with pytest.raises(LabelImportError) as ei:
        import_labels(filled.store, only_cancelled)
    assert str(ei.value) == (f"{only_cancelled}: 1 problem(s); nothing was imported: {only_cancelled}: no labels found "
                             "(1 cancelled annotation(s), 0 task(s) without annotations); expected at least one row "
                             "(frame_id,label[,annotator])")
    assert table_counts(filled.store) == before
    filled.store.close()


# --- labels outside the model's classes ----------------------------------------------------------------------------

def test_labels_outside_the_frames_model_classes_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Run r1's model knows box/pallet/empty; a newer run r2 (another model) added crate. A 'crate' label on an r1
    frame would be dropped by the evaluator later: refused at import, also when --classes names crate."""
    filled = fill_store(tmp_path / "w", n=4)
    filled.store.begin_run("r2", "inc:2", None, ["box", "pallet", "empty", "crate"], {})  # the newest run
    f0, f1 = filled.frame_ids[:2]
    p = tmp_path / "labels.csv"
    p.write_text(f"frame_id,label,annotator\n{f0},box,ann\n{f1},crate,ann\n")
    before = table_counts(filled.store)
    expected = (f"{p}: 1 problem(s); nothing was imported: {p}:3: field 'label': unknown class 'crate'; expected one of: "
                "box, pallet, empty, unsure (the classes run 'r1' recorded for its model)")
    with pytest.raises(LabelImportError) as ei:
        import_labels(filled.store, p)
    assert str(ei.value) == expected
    with pytest.raises(LabelImportError) as ei:
        import_labels(filled.store, p, class_names=["box", "pallet", "empty", "crate"])
    assert str(ei.value) == expected.replace("for its model)", "for its model, within the given class names)")
    assert table_counts(filled.store) == before

    assert cli_main(["label", "import", str(p), "--db", filled.url]) == 2
    assert one_error_line(capsys.readouterr().err, "label") == expected
    assert table_counts(filled.store) == before
    filled.store.close()
