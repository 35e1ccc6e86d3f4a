"""A simulated annotator: labels the queue from the synthetic generator's ground truth.

For demos and tests. The truth comes from manifest CSVs (the ones ``models/synthetic.py`` writes):
each has a ``label`` column and either ``source_ref`` or ``path``. Relative paths are resolved
against the manifest's folder; a reference may carry a ``#<frame index>`` suffix for video frames.
A stored frame is matched by its ``frames.source_ref`` (an image path, or ``<video path>#<index>``),
after both sides are made absolute and symlinks resolved.

With ``error_rate`` p, each answer is, with probability p, a wrong class drawn uniformly among the
other classes (a symmetric noise model; with K classes the chance of each specific wrong class is
p / (K - 1)). Samples flagged ``double_label`` get two independent simulated annotators
(``<annotator>`` and ``<annotator>-2``), so annotator agreement can be measured too.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.labeling import queue
from pipeline.store import PredictionStore
from pipeline.types import DataError, Label

log = logging.getLogger(__name__)

_FRAME_SUFFIX = re.compile(r"^(.*)#(\d+)$")


def normalize_ref(ref: str, base: str | Path | None = None) -> str:
    """``path`` or ``path#index`` -> absolute, symlink-resolved path (plus ``#index``)."""
    ref = ref.strip()
    m = _FRAME_SUFFIX.match(ref)
    path, suffix = (m.group(1), f"#{int(m.group(2))}") if m else (ref, "")
    if "://" in path:  # a stream URL: compare as is
        return path + suffix
    p = Path(path)
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return os.path.realpath(p) + suffix


def load_ground_truth(manifests: Sequence[str | Path]) -> dict[str, str]:
    """Read manifests into ``{normalized source ref: true label}``.

    Raises :class:`DataError` naming the file and line for a missing file, a missing column,
    an empty label, or the same reference given two different labels.
    """
    truth: dict[str, str] = {}
    where: dict[str, str] = {}
    for m in manifests:
        mp = Path(m)
        try:
            text = mp.read_text(encoding="utf-8-sig")
        except OSError as e:
            raise DataError(f"cannot read manifest {mp}: {e.strerror}") from None
        reader = csv.DictReader(text.splitlines())
        cols = [c.strip() for c in (reader.fieldnames or [])]
        ref_col = "source_ref" if "source_ref" in cols else "path" if "path" in cols else None
        if ref_col is None or "label" not in cols:
            raise DataError(f"{mp}: manifest columns {cols}; expected a label column and a source_ref or path column")
        base = mp.resolve().parent
        for rec in reader:
            line = reader.line_num
            rec = {(k or "").strip(): (v or "").strip() for k, v in rec.items()}
            ref, lab = rec.get(ref_col, ""), rec.get("label", "")
            if not ref or not lab:
                raise DataError(f"{mp}:{line}: empty {ref_col if not ref else 'label'}; expected {ref_col},label on every row")
            key = normalize_ref(ref, base)
            if key in truth and truth[key] != lab:
                raise DataError(f"{mp}:{line}: {ref!r} is labeled {lab!r} here but {truth[key]!r} at {where[key]}")
            truth[key] = lab
            where[key] = f"{mp}:{line}"
    return truth


def truth_for(truth: dict[str, str], source_ref: str) -> str | None:
    """The true label of a stored frame, by its ``frames.source_ref`` (None when unknown)."""
    if not source_ref:
        return None
    return truth.get(source_ref) or truth.get(normalize_ref(source_ref))


def simulate_labels(
    store: PredictionStore,
    manifests: Sequence[str | Path],
    error_rate: float = 0.0,
    annotator: str = "sim",
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> int:
    """Label every sample awaiting labels from the manifests' ground truth; returns labels written.

    ``classes`` is the label space wrong answers are drawn from (default: the store's class names,
    else the manifests' labels). Frames whose source isn't in any manifest are left pending (and
    logged); if none of the pending frames match, :class:`DataError` says so.
    """
    if not 0.0 <= error_rate <= 1.0:
        raise DataError(f"error_rate must be in [0, 1], got {error_rate}")
    truth = load_ground_truth(manifests)
    if classes:
        space = list(classes)
    else:
        space = store.run_class_names() or sorted(set(truth.values()))
    rng = np.random.default_rng(seed)
    annotators = [annotator, f"{annotator}-2"]
    pending = sorted(queue.awaiting_samples(store), key=lambda r: r.frame_id)
    existing = store.labels_by([r.frame_id for r in pending], annotators)
    new: list[Label] = []
    unmatched: list[str] = []
    for r in pending:
        true = truth_for(truth, r.source_ref)
        if true is None:
            unmatched.append(r.frame_id)
            continue
        if true not in space:
            raise DataError(
                f"frame {r.frame_id} ({r.source_ref}): manifest label {true!r} is not a class of this deployment {space}"
            )
        missing = r.labels_missing
        for who in annotators:
            if missing <= 0:
                break
            if (r.frame_id, who) in existing:
                continue
            lab = true
            if error_rate > 0 and len(space) > 1 and rng.random() < error_rate:
                others = [c for c in space if c != true]
                lab = others[int(rng.integers(len(others)))]
            new.append(Label(frame_id=r.frame_id, label=lab, annotator=who, source="simulated"))
            missing -= 1
    if unmatched:
        log.warning(
            "%d of %d pending frames have no ground truth in the manifests and stay pending (e.g. %s)",
            len(unmatched), len(pending), unmatched[0],
        )
        if len(unmatched) == len(pending):
            ex = next((r.source_ref for r in pending if r.frame_id == unmatched[0]), "")
            raise DataError(
                f"none of the {len(pending)} pending frames has ground truth in {[str(m) for m in manifests]} "
                f"(e.g. frame {unmatched[0]} with source_ref {ex!r}); expected manifests listing the frames' source files"
            )
    return store.add_labels(new)

