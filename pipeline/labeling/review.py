"""Review mode: the labelled frames on which the human label and a model disagree.

A reviewer (someone settling disputed labels, or checking what a model gets wrong) sees each such frame with its
labels, the model's prediction and confidence, and - on the page - the model's saliency overlay. The truth of a frame
is the evaluator's rule (:func:`pipeline.evaluation.truth.majority_truth`); frames without a truth (all ``unsure``,
tied, unknown class) are not disagreements and are counted apart, and so are degraded predictions (a stale or
"unknown" answer from the fallback chain is not the model's). Most confident first: a confident disagreement is
either a label worth a second look or the model's most telling error.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.evaluation.truth import majority_truth
from pipeline.store import PredictionStore

__all__ = ["REVIEW_SOURCE", "ReviewItem", "ReviewList", "Tie", "disagreements", "resolution_refusal", "ties"]


@dataclass(frozen=True)
class ReviewItem:
    """One frame whose truth differs from ``role``'s prediction; ``complete``: it needs no more labels."""

    frame_id: str
    run_id: str
    camera_id: str
    ts: float
    truth: str
    labels: tuple[tuple[str, str], ...]  # (annotator, label), oldest first
    role: str
    model: str
    predicted: str
    confidence: float
    other: tuple[tuple[str, str, str, float], ...] = ()  # the other models' (role, model, label, confidence)
    complete: bool = True


@dataclass(frozen=True)
class ReviewList:
    items: list[ReviewItem]
    frames_labelled: int  # labelled, sampled frames with a prediction of the role
    no_truth: dict[str, int] = field(default_factory=dict)  # status -> frames without a truth (unsure, tie, unknown_class)
    degraded: int = 0  # frames whose prediction of the role was degraded (left out)


def disagreements(store: PredictionStore, classes: Sequence[str], role: str = "incumbent",
                  run_ids: Sequence[str] | None = None) -> ReviewList:
    """The frames where the truth and ``role``'s prediction differ, most confident prediction first."""
    pred_rows, label_rows = store.review_rows(run_ids)
    labels: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for fid, label, annotator, _ts in label_rows:
        labels[fid].append((annotator, label))
    preds: dict[str, list[tuple]] = defaultdict(list)
    for row in pred_rows:
        preds[row[0]].append(row)
    items: list[ReviewItem] = []
    no_truth: dict[str, int] = defaultdict(int)
    degraded = seen = 0
    for fid, rows in preds.items():
        mine = next((r for r in rows if r[6] == role), None)
        if mine is None or fid not in labels:
            continue
        seen += 1
        _, run_id, cam, ts, _img, double, _role, name, version, pred, conf, deg = mine
        if deg is not None:
            degraded += 1
            continue
        truth = majority_truth((lab for _, lab in labels[fid]), classes)
        if not truth.ok:
            no_truth[truth.status] += 1
            continue
        if pred == truth.label:
            continue
        other = tuple((r[6], f"{r[7]}:{r[8]}" if r[8] else r[7], r[9], float(r[10])) for r in rows if r[6] != role)
        items.append(ReviewItem(fid, run_id, cam, float(ts), truth.label or "", tuple(labels[fid]), role,
                                f"{name}:{version}" if version else name, pred, float(conf), other,
                                complete=len(labels[fid]) >= (2 if double else 1)))
    items.sort(key=lambda i: (-i.confidence, i.ts, i.frame_id))
    return ReviewList(items, seen, dict(no_truth), degraded)


# --- resolving ties: a reviewer's deciding vote -------------------------------------------------------------------------
REVIEW_SOURCE = "review"  # labels.source of a reviewer's deciding label


@dataclass(frozen=True)
class Tie:
    """A double-labelled frame whose two answers tie (no truth): a reviewer picks one of ``answers``."""

    frame_id: str
    labels: tuple[tuple[str, str], ...]  # (annotator, label), oldest first
    answers: tuple[str, ...]  # the distinct class answers a reviewer may choose between


def _tie_answers(rows: Sequence[tuple[str, str, str]], classes: Sequence[str]) -> tuple[str, ...] | None:
    """The answers a reviewer may choose between when ``rows`` (annotator, label, source) tie; None when they do not."""
    if any(src == REVIEW_SOURCE for _, _, src in rows):
        return None
    if majority_truth((lab for _, lab, _ in rows), classes).status != "tie":
        return None
    return tuple(dict.fromkeys(lab for _, lab, _ in rows if lab in classes))


def ties(store: PredictionStore, classes: Sequence[str]) -> list[Tie]:
    """The double-labelled frames whose labels tie and that no reviewer has resolved yet, oldest sample first."""
    out = []
    for fid, rows in store.double_label_frame_labels().items():
        answers = _tie_answers(rows, classes)
        if answers:
            out.append(Tie(fid, tuple((a, lab) for a, lab, _ in rows), answers))
    return out


def resolution_refusal(classes: Sequence[str], label: str):
    """The rule :meth:`PredictionStore.resolve_label` checks under the frame's lock: the frame's labels must tie, not be
    resolved yet, and ``label`` must be one of the tied answers (then the resolution is a 2-1 majority). Returns a
    function of the frame's label rows giving a refusal status (``not_tied``, ``not_an_answer``) or None."""

    def refuse(rows: list[tuple[str, str, str]]) -> str | None:
        answers = _tie_answers(rows, classes)
        if answers is None:
            return "not_tied"
        return None if label in answers else "not_an_answer"

    return refuse
