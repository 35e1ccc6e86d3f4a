"""The label queue: which sampled frames still need labels, and which of them an annotator gets next.

Rules (shared by the labeling page, the exporter and the simulated annotator):

* a sample needs **two** labels from two different annotators when ``samples.double_label`` is set
  (to measure agreement), otherwise **one**; ``unsure`` counts as an answer (the evaluator drops it
  from accuracy, but the annotator has looked at the frame);
* an annotator never gets a frame they already labeled or skipped (skips live in ``label_skips``
  and hide the frame from that annotator only);
* samples whose ``status`` is ``skipped`` (set by an operator) are out of the queue for everyone;
* the queue is served oldest sample first.

The rules run as queries of :class:`~pipeline.store.PredictionStore` (the only place with SQL), so they
hold on SQLite and PostgreSQL alike; the functions here are the labeling side's names for them, and each
queued sample comes back as a :class:`~pipeline.store.QueuedSample`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.store import PredictionStore, QueuedSample
from pipeline.types import UNSURE, ConfigError

SKIP = "skip"


def awaiting_samples(store: PredictionStore, limit: int | None = None) -> list[QueuedSample]:
    """Samples that still need labels (oldest first), with ``source_ref``, ``n_labels`` and ``labels_needed``."""
    return store.samples_awaiting_labels(limit)


def count_awaiting(store: PredictionStore) -> int:
    """How many samples still need at least one more label."""
    return store.count_samples_awaiting_labels()


def queue_for(store: PredictionStore, annotator: str, limit: int | None = 50, exclude: Sequence[str] = ()) -> list[QueuedSample]:
    """The frames ``annotator`` may label next, oldest first: still awaiting labels, not labeled or
    skipped by this annotator. ``exclude`` drops frame ids (e.g. frames leased to someone else)."""
    return store.next_frames_to_label(annotator, limit, exclude)


def count_queue_for(store: PredictionStore, annotator: str) -> int:
    """How many frames are in ``annotator``'s queue."""
    return store.count_frames_to_label(annotator)


def count_labeled_by(store: PredictionStore, annotator: str) -> int:
    return store.count_labels_by(annotator)


def add_skip(store: PredictionStore, frame_id: str, annotator: str) -> bool:
    """Hide ``frame_id`` from ``annotator``; returns False if it was already skipped by them."""
    return store.add_label_skip(frame_id, annotator)


def sample_row(store: PredictionStore, frame_id: str) -> QueuedSample | None:
    """The sample (with its frame's source_ref) for ``frame_id``, or None if it was never sampled."""
    return store.queued_sample(frame_id)


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
    return store.double_label_pairs()
