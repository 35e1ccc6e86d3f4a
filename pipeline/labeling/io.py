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
  ``annotations[].result[].value.choices`` (one choice per annotation). Annotations the annotator
  cancelled (skipped) and tasks without annotations are not labels: they are counted
  (:class:`ImportSummary` ``cancelled`` / ``unannotated``, logged) and not imported. The annotator is the
  annotation's ``completed_by`` (its email when Label Studio gives an object, else ``labelstudio-<id>``).

A row's own annotator wins; the ``annotator`` argument (``--annotator``) fills rows that have none,
and the default is ``import``. Every row is checked — the label is a class of *the model of the frame's
run* (the class list that run recorded; ``--classes`` narrows it, and is the label space of runs that
recorded none) or ``unsure``; the frame exists; no (frame, annotator) pair twice in the file or already
in the store; each field is text the store takes (no control characters, within the column's length);
the row is well formed. A label outside its model's classes is refused here rather than dropped later
by the evaluator; there is no option to skip such rows (fix or delete them in the file). All problems are
collected, each as ``file:line: field 'name': what is wrong; what was expected``, and an import is
all-or-nothing: any problem raises :class:`~pipeline.types.LabelImportError` — a one-line message with
the count and the first problems, the full list in ``.problems`` — and writes nothing.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import exc as sa_exc

from pipeline.labeling import queue
from pipeline.store import PredictionStore
from pipeline.types import UNSURE, Label, LabelImportError

EXPORT_FORMATS = ("csv", "jsonl", "labelstudio")
EXPORT_COLUMNS = ("frame_id", "camera_id", "source_ref", "image_path", "labels_missing")
IMPORT_SUFFIXES = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "labelstudio"}
DEFAULT_ANNOTATOR = "import"
MAX_REPORTED = 5  # problems quoted in the one-line error (all of them are in LabelImportError.problems)

log = logging.getLogger(__name__)


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

# Longest values the labels table takes (frame ids are matched against frames.frame_id, String(200)).
FIELD_LIMITS = {"frame_id": 200, "label": 128, "annotator": 128}


@dataclass(frozen=True)
class LabelRow:
    """One label read from a file, with the line it came from (for messages)."""

    line: int
    frame_id: str
    label: str
    annotator: str | None  # None: not in the file (filled from the caller's default)


@dataclass
class LabelFile:
    """What :func:`read_label_file` found: the rows, the problems, and what the file skips on purpose."""

    rows: list[LabelRow] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cancelled: int = 0  # Label Studio annotations the annotator cancelled ("skip" in Label Studio)
    unannotated: int = 0  # Label Studio tasks nobody has annotated yet


@dataclass(frozen=True)
class ImportSummary:
    """What an import wrote, and what the file held that is not a label (counted, never silently dropped)."""

    path: str
    imported: int
    cancelled: int = 0  # Label Studio annotations cancelled by the annotator: not labels, not imported
    unannotated: int = 0  # Label Studio tasks without annotations: not imported

    def describe(self) -> str:
        text = f"imported {self.imported} label(s) from {self.path}"
        skipped = [f"{n} {what}" for n, what in ((self.cancelled, "cancelled annotation(s)"),
                                                 (self.unannotated, "task(s) without annotations")) if n]
        return text + (f"; skipped {' and '.join(skipped)}" if skipped else "")


def _loc(path: Path, line: int | None) -> str:
    return f"{path}:{line}" if line else str(path)


def _field_problem(name: str, value: str) -> str | None:
    """Why ``value`` cannot go into the store as field ``name`` (None when it can)."""
    bad = next((c for c in value if ord(c) < 32 and c != "\t" or ord(c) == 127), None)
    if bad is not None:
        return f"field {name!r}: contains the control character {bad!r}; expected plain text"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"field {name!r}: not valid Unicode text (a lone surrogate); expected UTF-8 text"
    limit = FIELD_LIMITS.get(name)
    if limit is not None and len(value) > limit:
        return f"field {name!r}: {len(value)} characters; expected at most {limit}"
    return None


def _make_row(p: Path, line: int, where: str, frame_id: str, label: str, annotator: str | None, problems: list[str]) -> LabelRow | None:
    """A :class:`LabelRow`, or None with each unusable field reported in ``problems``."""
    found = [m for m in (_field_problem("frame_id", frame_id), _field_problem("label", label),
                         _field_problem("annotator", annotator) if annotator is not None else None) if m]
    problems.extend(f"{where}: {m}" for m in found)
    return None if found else LabelRow(line, frame_id, label, annotator)


def read_label_file(path: str | Path) -> LabelFile:
    """Parse a label file by its extension. Never raises for bad content: every problem (one line each, naming
    ``file:line`` and the field) is in ``problems``; a file-level problem (unreadable file) is the only one."""
    p = Path(path)
    kind = IMPORT_SUFFIXES.get(p.suffix.lower())
    if kind is None:
        return LabelFile(problems=[(
            f"{p}: unsupported file extension {p.suffix or '(none)'!r}; expected .csv (frame_id,label[,annotator]), "
            ".jsonl (one {\"frame_id\", \"label\"} object per line) or .json (a Label Studio JSON export)"
        )])
    try:
        text = p.read_text(encoding="utf-8-sig")
    except OSError as e:
        return LabelFile(problems=[f"{p}: cannot read the file: {e.strerror or e.__class__.__name__}"])
    except UnicodeDecodeError as e:
        return LabelFile(problems=[f"{p}: not UTF-8 text ({e.reason} at byte {e.start}); expected a UTF-8 {kind} file"])
    return {"csv": _read_csv, "jsonl": _read_jsonl, "labelstudio": _read_labelstudio}[kind](p, text)


def _read_csv(p: Path, text: str) -> LabelFile:
    out = LabelFile()
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    try:
        for rec in reader:
            line = reader.line_num
            if not rec or all(not c.strip() for c in rec):
                continue
            if header is None:
                header = [c.strip().lower() for c in rec]
                missing = [c for c in ("frame_id", "label") if c not in header]
                twice = sorted({c for c in header if c and header.count(c) > 1})
                if missing or twice:
                    what = f"lacks column(s) {', '.join(missing)}" if missing else f"repeats column(s) {', '.join(twice)}"
                    return LabelFile(problems=[
                        f"{_loc(p, line)}: header {','.join(header)!r} {what}; expected a header line frame_id,label[,annotator]"
                    ])
                continue
            if len(rec) != len(header):
                out.problems.append(
                    f"{_loc(p, line)}: malformed row: {len(rec)} field(s), expected {len(header)} ({','.join(header)})"
                )
                continue
            d = {k: v.strip() for k, v in zip(header, rec)}
            bad = [c for c in ("frame_id", "label") if not d[c]]
            if bad:
                out.problems.append(f"{_loc(p, line)}: field {bad[0]!r}: empty; expected frame_id,label[,annotator]")
                continue
            row = _make_row(p, line, _loc(p, line), d["frame_id"], d["label"], d.get("annotator") or None, out.problems)
            if row is not None:
                out.rows.append(row)
    except csv.Error as e:
        out.problems.append(f"{_loc(p, reader.line_num)}: malformed CSV: {' '.join(str(e).split())}")
    return out


def _read_jsonl(p: Path, text: str) -> LabelFile:
    out = LabelFile()
    expected = 'expected an object like {"frame_id": "...", "label": "...", "annotator": "..."}'
    # split on "\n" only: str.splitlines() would also cut a valid JSON line at U+2028 and other separators
    for line, raw in enumerate(text.split("\n"), 1):
        if not raw.strip():
            continue
        where = _loc(p, line)
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, RecursionError) as e:
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else "nested too deeply"
            out.problems.append(f"{where}: malformed row: not valid JSON ({why}); {expected}")
            continue
        if not isinstance(obj, dict):
            out.problems.append(f"{where}: malformed row: a JSON {type(obj).__name__}; {expected}")
            continue
        bad = [k for k in ("frame_id", "label") if not isinstance(obj.get(k), str) or not obj[k].strip()]
        if bad:
            out.problems.append(f"{where}: field {bad[0]!r}: missing or not a string; {expected}")
            continue
        ann = obj.get("annotator")
        if ann is not None and (not isinstance(ann, str) or not ann.strip()):
            out.problems.append(f"{where}: field 'annotator': must be a non-empty string, got {_short(ann)}")
            continue
        row = _make_row(p, line, where, obj["frame_id"].strip(), obj["label"].strip(), ann.strip() if ann else None, out.problems)
        if row is not None:
            out.rows.append(row)
    return out


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (one line, whatever the value)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _labelstudio_annotator(ann: dict) -> str | None:
    who = ann.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("username") or who.get("id")
        return str(who) if who not in (None, "") else None
    return f"labelstudio-{who}" if who not in (None, "") else None


def _read_labelstudio(p: Path, text: str) -> LabelFile:
    expected = "expected a Label Studio JSON export (a list of tasks)"
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return LabelFile(problems=[f"{_loc(p, e.lineno)}: not valid JSON ({e.msg} at column {e.colno}); {expected}"])
    except RecursionError:
        return LabelFile(problems=[f"{_loc(p, 1)}: JSON nested too deeply; {expected}"])
    if not isinstance(doc, list):
        return LabelFile(problems=[f"{_loc(p, 1)}: a JSON {type(doc).__name__}; {expected}"])
    lines = _top_level_item_lines(text)
    out = LabelFile()
    for i, task in enumerate(doc):
        line = lines[i] if i < len(lines) else None
        where = f"{_loc(p, line)}: task {i + 1}"
        if not isinstance(task, dict):
            out.problems.append(f"{where}: malformed task: a JSON {type(task).__name__}; expected an object with data and annotations")
            continue
        if "id" in task:
            where += f" (id {task['id'] if isinstance(task['id'], int) else _short(task['id'])})"
        data = task.get("data")
        fid = data.get("frame_id") if isinstance(data, dict) else None
        if not isinstance(fid, str) or not fid.strip():
            out.problems.append(
                f"{where}: malformed task: no data.frame_id; expected tasks made by `shadowcam label export --format labelstudio`"
            )
            continue
        anns = task.get("annotations") or []
        if not isinstance(anns, list):
            out.problems.append(f"{where}: malformed task: field 'annotations' is a {type(anns).__name__}; expected a list")
            continue
        if not anns:
            out.unannotated += 1  # not labelled in Label Studio yet
        for j, ann in enumerate(anns):
            awhere = f"{where}, annotation {j + 1}"
            if not isinstance(ann, dict):
                out.problems.append(f"{awhere}: malformed annotation: expected an object with a result list")
                continue
            if ann.get("was_cancelled") is True:
                out.cancelled += 1  # skipped by the annotator in Label Studio: counted, not a label
                continue
            results = ann.get("result")
            if not isinstance(results, list):
                out.problems.append(f"{awhere}: malformed annotation: no result list; expected result[].value.choices")
                continue
            choices: list[Any] = []
            for res in results:
                if isinstance(res, dict) and isinstance(res.get("value"), dict) and "choices" in res["value"]:
                    c = res["value"]["choices"]
                    choices.extend(c if isinstance(c, list) else [c])
            if len(choices) != 1 or not isinstance(choices[0], str) or not choices[0].strip():
                out.problems.append(
                    f"{awhere}: malformed annotation: {len(choices)} choice(s) {_short(choices)}; expected exactly one class name "
                    "in result[].value.choices (a single-choice <Choices> control)"
                )
                continue
            row = _make_row(p, line or 0, awhere, fid.strip(), choices[0].strip(), _labelstudio_annotator(ann), out.problems)
            if row is not None:
                out.rows.append(row)
    return out


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
    store: PredictionStore,
    path: Path,
    rows: Sequence[LabelRow],
    class_names: Sequence[str],
    annotator: str | None,
    only: Sequence[str] | None = None,
) -> tuple[list[Label], list[str]]:
    """Check rows against the label space and the store. Returns ``(labels, problems)``.

    A row's label must be a class of *its frame's* model (the class list the frame's run recorded), or
    ``unsure``: a label the evaluator would drop later is refused here. ``only`` (the caller's explicit class
    list) narrows that further; ``class_names`` is the label space of frames whose run recorded no classes.
    """
    frames_info = store.frame_class_names({r.frame_id for r in rows})
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
        run_id, run_classes = frames_info.get(r.frame_id, ("", []))
        if run_classes:
            allowed = [c for c in run_classes if only is None or c in only] + [UNSURE]
            whose = f" (the classes run {run_id!r} recorded for its model" + (", within the given class names)" if only else ")")
        else:
            allowed, whose = list(class_names) + [UNSURE], ""
        if r.label not in allowed:
            hint = difflib.get_close_matches(r.label, allowed, n=1, cutoff=0.6) or [c for c in allowed if c.lower() == r.label.lower()]
            problems.append(
                f"{where}: field 'label': unknown class {_short(r.label)}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; expected one of: {', '.join(allowed)}{whose}"
            )
            ok = False
        if r.frame_id not in frames_info:
            problems.append(f"{where}: field 'frame_id': unknown frame id {_short(r.frame_id)}; expected a frame_id from "
                            "`shadowcam label export` of this store")
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


def import_label_file(
    store: PredictionStore,
    path: str | Path,
    annotator: str | None = None,
    class_names: Sequence[str] | None = None,
    max_reported: int = MAX_REPORTED,
) -> ImportSummary:
    """Validate and import a label file, all or nothing; returns what was written and what was skipped.

    Raises :class:`LabelImportError` with a one-line message: the problem count and the first ``max_reported``
    problems (each ``file:line: field ...: what; expected ...``); the exception's ``problems`` attribute has all
    of them (those beyond the message are logged too). Nothing is written then. Label Studio annotations the
    annotator cancelled and tasks nobody annotated are not labels: they are counted in the summary (and logged).
    """
    p = Path(path)
    classes = queue.label_space(store, class_names)
    found = read_label_file(p)
    problems = list(found.problems)
    new: list[Label] = []
    if found.rows:
        new, more = validate_rows(store, p, found.rows, classes, annotator, only=class_names)
        problems += more
    elif not problems:
        skipped = f" ({found.cancelled} cancelled annotation(s), {found.unannotated} task(s) without annotations)" \
            if found.cancelled or found.unannotated else ""
        problems.append(f"{p}: no labels found{skipped}; expected at least one row (frame_id,label[,annotator])")
    if problems:
        shown = problems[:max_reported]
        for extra in problems[max_reported:]:
            log.warning("%s", extra)
        more = f" | ... and {len(problems) - len(shown)} more (logged above)" if len(problems) > len(shown) else ""
        err = LabelImportError(f"{p}: {len(problems)} problem(s); nothing was imported: " + " | ".join(shown) + more)
        err.problems = problems  # type: ignore[attr-defined]
        raise err
    try:
        n = store.add_labels(new)
    except sa_exc.SQLAlchemyError as e:  # e.g. a label written by someone else meanwhile: the transaction rolled back
        raise LabelImportError(f"{p}: the store refused the labels ({e.__class__.__name__}: "
                               f"{' '.join(str(getattr(e, 'orig', None) or e).split())[:300]}); nothing was imported") from None
    summary = ImportSummary(str(p), n, found.cancelled, found.unannotated)
    if found.cancelled or found.unannotated:
        log.info("%s", summary.describe())
    return summary


def import_labels(
    store: PredictionStore,
    path: str | Path,
    annotator: str | None = None,
    class_names: Sequence[str] | None = None,
    max_reported: int = MAX_REPORTED,
) -> int:
    """:func:`import_label_file`, returning only the number of labels written."""
    return import_label_file(store, path, annotator, class_names, max_reported).imported
