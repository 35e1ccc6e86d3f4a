"""Label export/import: round trips in every format, and every bad input rejected row by row, writing nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipeline.cli import main as cli_main
from pipeline.labeling import queue
from pipeline.labeling.io import export_pending, import_labels, labelstudio_tasks, pending_rows
from pipeline.store import labels, samples
from pipeline.types import Label, LabelImportError

from .conftest import Filled


def _labelstudio_export(tasks: list[dict], answers: dict[str, list[tuple[str, object]]]) -> list[dict]:
    """Shape Label Studio's JSON export: our tasks with ids, annotations[].result[].value.choices, completed_by."""
    out = []
    for k, t in enumerate(tasks, 1):
        anns = []
        for j, (choice, who) in enumerate(answers.get(t["data"]["frame_id"], []), 1):
            anns.append({
                "id": 100 * k + j, "completed_by": who, "was_cancelled": False, "ground_truth": False, "lead_time": 2.5,
                "result": [{"id": f"r{k}{j}", "type": "choices", "from_name": "class", "to_name": "image", "origin": "manual",
                            "value": {"choices": [choice]}}],
            })
        out.append({"id": k, "project": 1, "data": t["data"], "annotations": anns, "predictions": []})
    return out


def test_export_csv_lists_pending_frames(filled: Filled, tmp_path: Path) -> None:
    out = tmp_path / "pending.csv"
    assert export_pending(filled.store, out, "csv") == 6
    rows = list(csv.DictReader(out.open()))
    assert [r["frame_id"] for r in rows] == filled.frame_ids
    assert set(rows[0]) == {"frame_id", "camera_id", "source_ref", "image_path", "labels_missing"}
    assert rows[0]["camera_id"] == "cam0" and rows[0]["source_ref"].endswith("img_000.png") and rows[0]["image_path"].endswith(".jpg")
    assert [r["labels_missing"] for r in rows] == ["1", "2", "1", "1", "1", "1"]  # frame 1 is double_label


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "labelstudio"])
def test_round_trip(filled: Filled, tmp_path: Path, fmt: str) -> None:
    exported = tmp_path / f"pending.{fmt}"
    export_pending(filled.store, exported, fmt)
    if fmt == "csv":
        ids = [r["frame_id"] for r in csv.DictReader(exported.open())]
        labfile = tmp_path / "labels.csv"
        with labfile.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["frame_id", "label", "annotator"])
            for fid in ids:
                w.writerow([fid, filled.truth[fid], "alice"])
            w.writerow([ids[1], "unsure", "bob"])  # the double-label frame's second answer
    elif fmt == "jsonl":
        ids = [json.loads(line)["frame_id"] for line in exported.read_text().splitlines()]
        labfile = tmp_path / "labels.jsonl"
        lines = [json.dumps({"frame_id": fid, "label": filled.truth[fid], "annotator": "alice"}) for fid in ids]
        lines.append(json.dumps({"frame_id": ids[1], "label": "unsure", "annotator": "bob"}))
        labfile.write_text("\n".join(lines) + "\n")
    else:
        tasks = json.loads(exported.read_text())
        assert all(set(t) == {"data"} and {"image", "frame_id"} <= set(t["data"]) for t in tasks)
        ids = [t["data"]["frame_id"] for t in tasks]
        answers = {fid: [(filled.truth[fid], {"id": 7, "email": "alice"})] for fid in ids}
        answers[ids[1]].append(("unsure", {"id": 8, "email": "bob"}))
        labfile = tmp_path / "labels.json"
        labfile.write_text(json.dumps(_labelstudio_export(tasks, answers), indent=2))
    assert ids == filled.frame_ids
    assert import_labels(filled.store, labfile) == 7
    rows = filled.store.table_rows(labels, order_by=labels.c.id)
    assert {(r["frame_id"], r["label"], r["annotator"]) for r in rows if r["annotator"] == "alice"} == {
        (fid, filled.truth[fid], "alice") for fid in ids
    }
    assert [(r["frame_id"], r["label"], r["annotator"]) for r in rows if r["annotator"] == "bob"] == [(ids[1], "unsure", "bob")]
    assert all(r["source"] == "import" for r in rows)
    assert filled.store.count(samples, samples.c.status == "labeled") == 6
    assert pending_rows(filled.store) == []


def test_double_label_frame_stays_pending_until_second_label(filled: Filled, tmp_path: Path) -> None:
    f = tmp_path / "one.csv"
    f.write_text("frame_id,label\n" + "".join(f"{fid},{filled.truth[fid]}\n" for fid in filled.frame_ids))
    assert import_labels(filled.store, f, annotator="carol") == 6
    pend = pending_rows(filled.store)
    assert [(r["frame_id"], r["labels_missing"]) for r in pend] == [(filled.frame_ids[1], 1)]
    assert filled.store.count(samples, samples.c.status == "pending") == 1
    assert filled.store.table_rows(labels)[0]["annotator"] == "carol"  # --annotator fills rows without one


def test_labelstudio_annotator_ids_and_cancelled(filled: Filled, tmp_path: Path) -> None:
    tasks = labelstudio_tasks(pending_rows(filled.store), image_url_prefix="/data/local-files/?d=")
    assert tasks[0]["data"]["image"].startswith("/data/local-files/?d=") and "?d=/" not in tasks[0]["data"]["image"]
    export = _labelstudio_export(tasks[:2], {filled.frame_ids[0]: [("box", 3)], filled.frame_ids[1]: [("pallet", 3)]})
    export[1]["annotations"][0]["was_cancelled"] = True  # skipped in Label Studio: ignored
    export.append({"id": 99, "data": tasks[2]["data"], "annotations": []})  # not labeled yet: ignored
    p = tmp_path / "ls.json"
    p.write_text(json.dumps(export))
    assert import_labels(filled.store, p) == 1
    (row,) = filled.store.table_rows(labels)
    assert (row["frame_id"], row["label"], row["annotator"]) == (filled.frame_ids[0], "box", "labelstudio-3")


# --- bad input: every case names file:line, and nothing is written -----------------------------------

F0, F1 = "{f0}", "{f1}"
BAD = [
    # (case, file name, content, expected message fragment ("{name}" = the file's path))
    ("unknown class", "l.csv", f"frame_id,label\n{F0},box\n{F1},crate\n", "{name}:3: field 'label': unknown class 'crate'; expected one of: box, pallet, empty, unsure"),
    ("unknown class, close match", "l.csv", f"frame_id,label\n{F0},Box\n", "{name}:2: field 'label': unknown class 'Box' (did you mean 'box'?)"),
    ("unknown frame id", "l.csv", f"frame_id,label\n{F0},box\nr9:cam0:99,box\n", "{name}:3: field 'frame_id': unknown frame id 'r9:cam0:99'"),
    ("duplicate in file", "l.csv", f"frame_id,label\n{F0},box\n{F1},box\n{F0},pallet\n", "{name}:4: duplicate label for frame '{f0}' by annotator 'import' (first at line 2)"),
    ("duplicate in file, jsonl", "l.jsonl", f'{{"frame_id": "{F0}", "label": "box", "annotator": "a"}}\n{{"frame_id": "{F0}", "label": "box", "annotator": "a"}}\n', "{name}:2: duplicate label for frame '{f0}' by annotator 'a' (first at line 1)"),
    ("duplicate vs existing", "l.csv", f"frame_id,label,annotator\n{F1},box,x\n{F0},empty,old\n", "{name}:3: frame '{f0}' already has a label by annotator 'old' in the store ('box')"),
    ("malformed row: missing column", "l.csv", f"frame_id,label\n{F0},box\n{F1}\n", "{name}:3: malformed row: 1 field(s), expected 2 (frame_id,label)"),
    ("malformed row: empty label", "l.csv", f"frame_id,label\n{F0},\n", "{name}:2: field 'label': empty"),
    ("header lacks label", "l.csv", f"frame_id,class\n{F0},box\n", "{name}:1: header 'frame_id,class' lacks column(s) label"),
    ("bad JSON line", "l.jsonl", f'{{"frame_id": "{F0}", "label": "box"}}\n{{"frame_id": "{F1}", "label": \n', "{name}:2: malformed row: not valid JSON"),
    ("jsonl missing label", "l.jsonl", f'{{"frame_id": "{F0}"}}\n', "{name}:1: field 'label': missing or not a string"),
    ("jsonl not an object", "l.jsonl", '["a", "b"]\n', "{name}:1: malformed row: a JSON list"),
    ("empty file", "l.csv", "", "{name}: no labels found"),
    ("header only", "l.csv", "frame_id,label\n", "{name}: no labels found"),
    ("empty jsonl", "l.jsonl", "\n\n", "{name}: no labels found"),
    ("wrong extension", "l.txt", f"frame_id,label\n{F0},box\n", "{name}: unsupported file extension '.txt'; expected .csv"),
    ("labelstudio bad JSON", "l.json", '[\n {"data": {"frame_id": "x"},\n  "annotations": [}\n]', "{name}:3: not valid JSON"),
    ("labelstudio not a list", "l.json", '{"data": {}}', "{name}:1: a JSON dict; expected a Label Studio JSON export"),
    ("labelstudio no frame_id", "l.json", '[\n {"id": 1, "data": {"image": "a.jpg"}, "annotations": []}\n]', "{name}:2: task 1 (id 1): malformed task: no data.frame_id"),
    ("labelstudio two choices", "l.json",
     f'[\n {{"id": 1, "data": {{"frame_id": "{F0}"}}, "annotations": [{{"result": [{{"value": {{"choices": ["box"]}}}}]}}]}},\n'
     f' {{"id": 2, "data": {{"frame_id": "{F1}"}},\n   "annotations": [{{"result": [{{"value": {{"choices": ["box", "pallet"]}}}}]}}]}}\n]',
     "{name}:3: task 2 (id 2), annotation 1: malformed annotation: 2 choice(s) ['box', 'pallet']; expected exactly one"),
    ("labelstudio unknown class", "l.json",
     f'[\n {{"id": 5, "data": {{"frame_id": "{F0}"}}, "annotations": [{{"completed_by": 2, "result": [{{"value": {{"choices": ["crate"]}}}}]}}]}}\n]',
     "{name}:2: field 'label': unknown class 'crate'"),
]


@pytest.mark.parametrize("case,fname,content,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_reported_and_nothing_written(filled: Filled, tmp_path: Path, case: str, fname: str, content: str, expected: str) -> None:
    f0, f1 = filled.frame_ids[0], filled.frame_ids[1]
    filled.store.add_labels([Label(frame_id=f0, label="box", annotator="old", source="web")])
    p = tmp_path / fname
    p.write_text(content.replace(F0, f0).replace(F1, f1))
    before = filled.store.count(labels)
    status_before = filled.store.table_rows(samples, order_by=samples.c.frame_id)
    with pytest.raises(LabelImportError) as ei:
        import_labels(filled.store, p)
    msg = str(ei.value)
    assert expected.format(name=p, f0=f0) in msg, msg
    assert "nothing was imported" in msg
    assert filled.store.count(labels) == before == 1
    assert filled.store.table_rows(samples, order_by=samples.c.frame_id) == status_before


def test_all_problems_listed_and_capped(filled: Filled, tmp_path: Path) -> None:
    p = tmp_path / "many.csv"
    p.write_text("frame_id,label\n" + "".join(f"nope:{i},crate\n" for i in range(30)) + f"{filled.frame_ids[0]},box\n")
    with pytest.raises(LabelImportError) as ei:
        import_labels(filled.store, p, max_reported=5)
    assert len(ei.value.problems) == 60  # unknown class + unknown frame on each of 30 rows
    assert f"{p}:2: field 'label': unknown class 'crate'" in str(ei.value) and "... and 55 more" in str(ei.value)
    assert filled.store.count(labels) == 0


def test_unsure_is_a_valid_label(filled: Filled, tmp_path: Path) -> None:
    p = tmp_path / "u.jsonl"
    p.write_text(json.dumps({"frame_id": filled.frame_ids[2], "label": "unsure"}) + "\n")
    assert import_labels(filled.store, p, annotator="dan") == 1
    assert filled.store.table_rows(labels)[0]["label"] == "unsure"
    assert queue.count_awaiting(filled.store) == 5


def test_cli_export_and_import(filled: Filled, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "tasks.json"
    assert cli_main(["label", "export", "--db", filled.url, "--pending", "--format", "labelstudio", "--out", str(out)]) == 0
    assert "exported 6 frame(s)" in capsys.readouterr().out
    assert cli_main(["label", "export", "--db", filled.url, "--pending", "--format", "jsonl"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 6
    good = tmp_path / "good.csv"
    good.write_text(f"frame_id,label\n{filled.frame_ids[0]},box\n")
    assert cli_main(["label", "import", str(good), "--db", filled.url, "--annotator", "eve"]) == 0
    assert "imported 1 label(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text(f"frame_id,label\n{filled.frame_ids[1]},crate\n")
    assert cli_main(["label", "import", str(bad), "--db", filled.url]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2: field 'label': unknown class 'crate'" in err and "nothing was imported" in err
    assert filled.store.count(labels) == 1
