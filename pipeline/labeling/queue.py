"""The label queue: which sampled frames still need labels, and which of them an annotator gets next.

Rules (shared by the labeling page, the exporter and the simulated annotator):

* a sample needs **two** labels from two different annotators when ``samples.double_label`` is set
  (to measure agreement), otherwise **one**; ``unsure`` counts as an answer (the evaluator drops it
  from accuracy, but the annotator has looked at the frame);
* an annotator never gets a frame they already labeled or skipped (skips live in ``label_skips``
  and hide the frame from that annotator only);
* samples whose ``status`` is ``skipped`` (set by an operator) are out of the queue for everyone;
* the queue is served oldest sample first.

Everything here is plain SQLAlchemy Core over :mod:`pipeline.store`'s tables, so it works on
SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from pipeline.store import PredictionStore, frames, label_skips, labels, samples
from pipeline.types import UNSURE, ConfigError

SKIP = "skip"


def labels_needed() -> Any:
    """SQL expression: how many labels a sample needs (2 when double_label, else 1)."""
    return sa.case((samples.c.double_label, 2), else_=1)


def _n_labels() -> Any:
    return sa.select(sa.func.count()).select_from(labels).where(labels.c.frame_id == samples.c.frame_id).scalar_subquery()


def _awaiting_where() -> Any:
    return (samples.c.status != "skipped") & (_n_labels() < labels_needed())


def _queue_select() -> sa.Select:
    return (
        sa.select(
            samples.c.frame_id, samples.c.camera_id, samples.c.strategy, samples.c.inclusion_prob, samples.c.image_path,
            samples.c.sampled_at, samples.c.double_label, samples.c.status, frames.c.source_ref, frames.c.ts,
            _n_labels().label("n_labels"), labels_needed().label("labels_needed"),
        )
        .join(frames, frames.c.frame_id == samples.c.frame_id)
        .order_by(samples.c.sampled_at, samples.c.frame_id)
    )


def awaiting_samples(store: PredictionStore, limit: int | None = None) -> list[dict]:
    """Samples that still need labels (oldest first), with ``source_ref``, ``n_labels`` and ``labels_needed``."""
    q = _queue_select().where(_awaiting_where())
    if limit is not None:
        q = q.limit(limit)
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def count_awaiting(store: PredictionStore) -> int:
    """How many samples still need at least one more label."""
    return store.count(samples, _awaiting_where())


def _annotator_where(annotator: str) -> Any:
    mine = sa.select(labels.c.frame_id).where(labels.c.annotator == annotator)
    skipped = sa.select(label_skips.c.frame_id).where(label_skips.c.annotator == annotator)
    return _awaiting_where() & samples.c.frame_id.not_in(mine) & samples.c.frame_id.not_in(skipped)


def queue_for(store: PredictionStore, annotator: str, limit: int | None = 50, exclude: Sequence[str] = ()) -> list[dict]:
    """The frames ``annotator`` may label next, oldest first: still awaiting labels, not labeled or
    skipped by this annotator. ``exclude`` drops frame ids (e.g. frames leased to someone else)."""
    q = _queue_select().where(_annotator_where(annotator))
    if exclude:
        q = q.where(samples.c.frame_id.not_in(list(exclude)))
    if limit is not None:
        q = q.limit(limit)
    with store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]


def count_queue_for(store: PredictionStore, annotator: str) -> int:
    """How many frames are in ``annotator``'s queue."""
    return store.count(samples, _annotator_where(annotator))


def count_labeled_by(store: PredictionStore, annotator: str) -> int:
    return store.count(labels, labels.c.annotator == annotator)


def add_skip(store: PredictionStore, frame_id: str, annotator: str) -> bool:
    """Hide ``frame_id`` from ``annotator``; returns False if it was already skipped by them."""
    with store.engine.begin() as conn:
        exists = conn.execute(
            sa.select(label_skips.c.frame_id).where((label_skips.c.frame_id == frame_id) & (label_skips.c.annotator == annotator))
        ).first()
        if exists:
            return False
        conn.execute(label_skips.insert().values(frame_id=frame_id, annotator=annotator, ts=time.time()))
    return True


def sample_row(store: PredictionStore, frame_id: str) -> dict | None:
    """The sample (joined with its frame's source_ref) for ``frame_id``, or None if it was never sampled."""
    q = _queue_select().where(samples.c.frame_id == frame_id)
    with store.engine.connect() as conn:
        row = conn.execute(q).first()
    return dict(row._mapping) if row else None


def label_space(store: PredictionStore, class_names: Sequence[str] | None = None) -> list[str]:
    """The classes an annotator may choose (``unsure`` is always allowed in addition).

    ``class_names`` wins; otherwise the newest run's class names in the store. Raises
    :class:`ConfigError` when neither gives any.
    """
    names = list(class_names) if class_names else store.run_class_names()
    if not names:
        raise ConfigError(
            f"no class names: the store {store.url} has no runs with class names; pass the classes explicitly (e.g. --classes a,b,c)"
        )
    bad = [n for n in names if not n or n in (UNSURE, SKIP)]
    if bad or len(set(names)) != len(names):
        raise ConfigError(f"class names must be unique, non-empty and not 'unsure'/'skip'; got {names}")
    return names


def double_label_pairs(store: PredictionStore) -> list[tuple[str, str, str]]:
    """``(frame_id, first_label, second_label)`` for every double-label sample with two labels
    (the two earliest by time) — the input of annotator-agreement statistics."""
    q = (
        sa.select(labels.c.frame_id, labels.c.label, labels.c.ts, labels.c.id)
        .join(samples, samples.c.frame_id == labels.c.frame_id)
        .where(samples.c.double_label)
        .order_by(labels.c.frame_id, labels.c.ts, labels.c.id)
    )
    by_frame: dict[str, list[str]] = {}
    with store.engine.connect() as conn:
        for fid, lab, _ts, _id in conn.execute(q):
            by_frame.setdefault(fid, []).append(lab)
    return [(fid, labs[0], labs[1]) for fid, labs in by_frame.items() if len(labs) >= 2]
