"""Label import and export, so an external labeling tool can do the labeling.

Export (``shadowcam label export --pending``) writes the samples still awaiting labels (see
:mod:`pipeline.labeling.queue`) as

* ``csv`` / ``jsonl``: ``frame_id, camera_id, source_ref, image_path, labels_missing``;
* ``labelstudio``: Label Studio tasks, ``[{"data": {"image": ..., "frame_id": ..., ...}}, ...]``; import
  them into a project whose labeling config has an ``<Image name="image" value="$image"/>`` and one
  ``<Choices>`` control with this deployment's class names (plus ``unsure`` if wanted).

Import (``shadowcam label import FILE``) reads, by the file's extension,

* ``.csv``: a header with ``frame_id,label`` and optionally ``annotator``;
* ``.jsonl`` / ``.ndjson``: one object per line, ``{"frame_id": ..., "label": ..., "annotator": ...}``;
* ``.json``: a Label Studio JSON export: a list of tasks, each with ``data.frame_id`` and
  ``annotations[].result[].value.choices`` (one choice per annotation). Cancelled (skipped)
  annotations and tasks without annotations are ignored. The annotator is the annotation's
  ``completed_by`` (its email when Label Studio gives an object, else ``labelstudio-<id>``).

A row's own annotator wins; the ``annotator`` argument (``--annotator``) fills rows that have none,
and the default is ``import``. Every row is checked — label is a class of this deployment or
``unsure``, the frame exists, no (frame, annotator) pair twice in the file or already in the
store, the row is well formed — and *all* problems are reported as ``file:line: what is wrong;
what was expected``. An import is all-or-nothing: any problem raises
:class:`~pipeline.types.LabelImportError` (with ``.problems``, the full list) and writes nothing.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pipeline.labeling import queue
from pipeline.store import PredictionStore
from pipeline.types import UNSURE, Label, LabelImportError

EXPORT_FORMATS = ("csv", "jsonl", "labelstudio")
EXPORT_COLUMNS = ("frame_id", "camera_id", "source_ref", "image_path", "labels_missing")
IMPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "labelstudio"}
DEFAULT_ANNOTATOR = "import"
MAX_REPORTED = 20


# --- export -------------------------------------------------------------------------------------


def pending_rows(store: PredictionStore) -> list[dict]:
    """The samples awaiting labels, as export rows (oldest first)."""
    return [
        dict(frame_id=r.frame_id, camera_id=r.camera_id, source_ref=r.source_ref, image_path=r.image_path, labels_missing=r.labels_missing)
        for r in queue.awaiting_samples(store)
    ]


def labelstudio_tasks(rows: Sequence[dict], image_url_prefix: str | None = None) -> list[dict]:
    """Label Studio tasks for export rows. ``image_url_prefix`` (e.g. ``/data/local-files/?d=``)
    is put in front of the image path with its leading ``/`` removed, for Label Studio's local
    file serving; without it the image is the path as stored."""
    tasks = []
    for r in rows:
        image = r["image_path"] if image_url_prefix is None else image_url_prefix + str(r["image_path"]).lstrip("/")
        tasks.append({"data": {"image": image, "frame_id": r["frame_id"], "camera_id": r["camera_id"], "source_ref": r["source_ref"]}})
    return tasks


def export_pending(
    store: PredictionStore, out: str | Path | TextIO | None = None, fmt: str = "csv", image_url_prefix: str | None = None
) -> int:
    """Write the samples awaiting labels to ``out`` (a path, an open text file, or stdout when None)
    as ``csv``, ``jsonl`` or ``labelstudio`` tasks. Returns the number of frames written."""
    if fmt not in EXPORT_FORMATS:
        raise LabelImportError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
    rows = pending_rows(store)
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.DictWriter(buf, fieldnames=list(EXPORT_COLUMNS), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    elif fmt == "jsonl":
        for r in rows:
            buf.write(json.dumps(r) + "\n")
    else:
        json.dump(labelstudio_tasks(rows, image_url_prefix), buf, indent=1)
        buf.write("\n")
    if out is None:
        sys.stdout.write(buf.getvalue())
    elif isinstance(out, (str, Path)):
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(buf.getvalue())
    else:
        out.write(buf.getvalue())
    return len(rows)


# --- import -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    """One label read from a file, with the line it came from (for messages)."""

    line: int
    frame_id: str
    label: str
    annotator: str | None  # None: not in the file (filled from the caller's default)


def _loc(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def read_label_file(path: str | Path) -> tuple[list[LabelRow], list[str]]:
    """Parse a label file by its extension. Returns ``(rows, problems)``; never raises for bad content
    (only the file-level problems, such as an unreadable file, come back as a single problem)."""
    p = Path(path)
    kind = IMPORT_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        return [], [
            f"{p}: unsupported file extension {p.suffix or '(none)'!r}; expected .csv (frame_id,label[,annotator]), "
            ".jsonl (one {\"frame_id\", \"label\"} object per line) or .json (a Label Studio JSON export)"
        ]
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        return [], [f"{p}: cannot read the file: {e.strerror}"]
    except UnicodeDecodeError as e:
        return [], [f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); expected a UTF-8 {kind} file"]
    return {"csv": _read_csv, "jsonl": _read_jsonl, "labelstudio": _read_labelstudio}[kind](p, text)


def _read_csv(p: Path, text: str) -> tuple[list[LabelRow], list[str]]:
    rows: list[LabelRow] = []
    problems: list[str] = []
    reader = csv.reader(io.StringIO(text))
    header: list[str] | None = None
    try:
        for rec in reader:
            line = reader.line_num
            if not rec or all(not c.strip() for c in rec):
                continue
            if header is None:
                header = [c.strip().lower() for c in rec]
                missing = [c for c in ("frame_id", "label") if c not in header]
                if missing:
                    return [], [
                        f"{_loc(p, line)}: header {','.join(header)!r} lacks column(s) {', '.join(missing)}; "
                        "expected a header line frame_id,label[,annotator]"
                    ]
                continue
            if len(rec) != len(header):
                problems.append(
                    f"{_loc(p, line)}: malformed row: {len(rec)} field(s), expected {len(header)} ({','.join(header)})"
                )
                continue
            d = {k: v.strip() for k, v in zip(header, rec)}
            bad = [c for c in ("frame_id", "label") if not d[c]]
            if bad:
                problems.append(f"{_loc(p, line)}: malformed row: empty {' and '.join(bad)}; expected frame_id,label[,annotator]")
                continue
            rows.append(LabelRow(line, d["frame_id"], d["label"], d.get("annotator") or None))
    except csv.Error as e:
        problems.append(f"{_loc(p, reader.line_num)}: malformed CSV: {e}")
    return rows, problems


def _read_jsonl(p: Path, text: str) -> tuple[list[LabelRow], list[str]]:
    rows: list[LabelRow] = []
    problems: list[str] = []
    expected = 'expected an object like {"frame_id": "...", "label": "...", "annotator": "..."}'
    for line, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(f"{_loc(p, line)}: malformed row: not valid JSON ({e.msg} at column {e.colno}); {expected}")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{_loc(p, line)}: malformed row: a JSON {type(obj).__name__}; {expected}")
            continue
        bad = [k for k in ("frame_id", "label") if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if bad:
            problems.append(f"{_loc(p, line)}: malformed row: missing or non-string {' and '.join(bad)}; {expected}")
            continue
        ann = obj.get("annotator")
        if ann is not None and (not isinstance(ann, str) or not ann.strip()):
            problems.append(f"{_loc(p, line)}: malformed row: annotator must be a non-empty string, got {ann!r}")
            continue
        rows.append(LabelRow(line, obj["frame_id"].strip(), obj["label"].strip(), ann.strip() if ann else None))
    return rows, problems


def _labelstudio_annotator(ann: dict) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
        return str(who) if who not in (None, "") else None
    return f"labelstudio-{who}" if who not in (None, "") else None


def _read_labelstudio(p: Path, text: str) -> tuple[list[LabelRow], list[str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return [], [f"{_loc(p, e.lineno)}: not valid JSON ({e.msg} at column {e.colno}); expected a Label Studio JSON export (a list of tasks)"]
    if not isinstance(doc, list):
        return [], [f"{_loc(p, 1)}: a JSON {type(doc).__name__}; expected a Label Studio JSON export (a list of tasks)"]
    lines = _top_level_item_lines(text)
    rows: list[LabelRow] = []
    problems: list[str] = []
    for i, task in enumerate(doc):
        line = lines[i] if i < len(lines) else None
        where = f"{_loc(p, line)}: task {i + 1}"
        if not isinstance(task, dict):
            problems.append(f"{where}: malformed task: a JSON {type(task).__name__}; expected an object with data and annotations")
            continue
        if "id" in task:
            where += f" (id {task['id']})"
        data = task.get("data")
        fid = data.get("frame_id") if isinstance(data, dict) else None
        if not isinstance(fid, str) or not fid.strip():
            problems.append(
                f"{where}: malformed task: no data.frame_id; expected tasks made by `shadowcam label export --format labelstudio`"
            )
            continue
        anns = task.get("annotations") or []
        if not isinstance(anns, list):
            problems.append(f"{where}: malformed task: annotations is a {type(anns).__name__}; expected a list")
            continue
        for j, ann in enumerate(anns):
            awhere = f"{where}, annotation {j + 1}"
            if not isinstance(ann, dict):
                problems.append(f"{awhere}: malformed annotation: expected an object with a result list")
                continue
            if ann.get("was_cancelled"):
                continue  # skipped in Label Studio
            results = ann.get("result")
            if not isinstance(results, list):
                problems.append(f"{awhere}: malformed annotation: no result list; expected result[].value.choices")
                continue
            choices: list[Any] = []
            for res in results:
                if isinstance(res, dict) and isinstance(res.get("value"), dict) and "choices" in res["value"]:
                    c = res["value"]["choices"]
                    choices.extend(c if isinstance(c, list) else [c])
            if len(choices) != 1 or not isinstance(choices[0], str) or not choices[0].strip():
                problems.append(
                    f"{awhere}: malformed annotation: {len(choices)} choice(s) {choices!r}; expected exactly one class name "
                    "in result[].value.choices (a single-choice <Choices> control)"
                )
                continue
            rows.append(LabelRow(line or 0, fid.strip(), choices[0].strip(), _labelstudio_annotator(ann)))
    return rows, problems


def _top_level_item_lines(text: str) -> list[int]:
    """Line numbers where each element of a top-level JSON array starts (the text is valid JSON)."""
    dec = json.JSONDecoder()
    out: list[int] = []
    i = text.index("[") + 1
    n = len(text)
    while True:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "]":
            return out
        out.append(text.count("\n", 0, i) + 1)
        _, i = dec.raw_decode(text, i)


def validate_rows(
    store: PredictionStore, path: Path, rows: Sequence[LabelRow], class_names: Sequence[str], annotator: str | None
) -> tuple[list[Label], list[str]]:
    """Check rows against the label space and the store. Returns ``(labels, problems)``."""
    allowed = list(class_names) + [UNSURE]
    known = store.existing_frame_ids({r.frame_id for r in rows})
    default = annotator or DEFAULT_ANNOTATOR
    resolved = [(r, r.annotator or default) for r in rows]
    existing = store.labels_by({r.frame_id for r in rows}, {a for _, a in resolved})
    seen: dict[tuple[str, str], int] = {}
    out: list[Label] = []
    problems: list[str] = []
    now = time.time()
    for r, who in resolved:
        where = _loc(path, r.line)
        ok = True
        if r.label not in allowed:
            hint = difflib.get_close_matches(r.label, allowed, n=1, cutoff=0.6) or [c for c in allowed if c.lower() == r.label.lower()]
            problems.append(
                f"{where}: unknown class {r.label!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; expected one of: {', '.join(allowed)}"
            )
            ok = False
        if r.frame_id not in known:
            problems.append(f"{where}: unknown frame id {r.frame_id!r}; expected a frame_id from `shadowcam label export` of this store")
            ok = False
        key = (r.frame_id, who)
        if key in seen:
            problems.append(f"{where}: duplicate label for frame {r.frame_id!r} by annotator {who!r} (first at line {seen[key]}); expected one label per frame and annotator")
            ok = False
        else:
            seen[key] = r.line
        if key in existing:
            problems.append(
                f"{where}: frame {r.frame_id!r} already has a label by annotator {who!r} in the store ({existing[key]!r}); "
                "expected new labels only (drop the row or use another annotator name)"
            )
            ok = False
        if ok:
            out.append(Label(frame_id=r.frame_id, label=r.label, annotator=who, timestamp=now, source="import"))
    return out, problems


def import_labels(
    store: PredictionStore,
    path: str | Path,
    annotator: str | None = None,
    class_names: Sequence[str] | None = None,
    max_reported: int = MAX_REPORTED,
) -> int:
    """Validate and import a label file, all or nothing. Returns the number of labels written.

    Raises :class:`LabelImportError` listing (up to ``max_reported``) problems, each as
    ``file:line: ...``; the exception's ``problems`` attribute has all of them. Nothing is written then.
    """
    p = Path(path)
    classes = queue.label_space(store, class_names)
    rows, problems = read_label_file(p)
    new: list[Label] = []
    if rows:
        new, more = validate_rows(store, p, rows, classes, annotator)
        problems += more
    elif not problems:
        problems.append(f"{p}: no labels found; expected at least one row (frame_id,label[,annotator])")
    if problems:
        shown = problems[:max_reported]
        extra = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        err = LabelImportError(
            f"{p}: {len(problems)} problem(s); nothing was imported:\n  " + "\n  ".join(shown) + extra
        )
        err.problems = problems  # type: ignore[attr-defined]
        raise err
    return store.add_labels(new)
