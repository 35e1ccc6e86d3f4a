"""The error gallery of the HTML report: the model's most confident mistakes, with what it looked at.

Among the labelled frames of the evaluated runs, a frame is an *error* of a role (incumbent or shadow) when its
truth (:mod:`pipeline.evaluation.truth`, the one truth rule, unless a ``truth`` mapping is given) differs from that
role's stored prediction. Errors are grouped by confused pair (true class, predicted class); pairs are ordered by
how many errors they hold (ties: by class names), and within a pair the errors by the role's confidence (its top
probability in the predictions table), highest first: a confident mistake is the one a floor manager or an
annotator disputing a label wants to see. Each shown error gets a saliency overlay of the *predicted* class
(:func:`pipeline.explain.explain_image`, through ONNX Runtime: "why did it say that?"), written as a PNG.

Degraded answers (``stale``/``unknown``: the fallback chain's, not the model's) are not errors of the model and
are left out; ``cpu_fallback`` answers are the model's own and stay. A labelled frame whose sampled JPEG is gone
is skipped (logged) and the next most confident error of its pair is shown instead.

:func:`gallery_html` renders the items as an HTML ``<section>`` of ``<figure>`` s, image paths relative to the
report's folder (or inlined as base64 for a single-file report), for :func:`pipeline.evaluation.report.render_html`'s
``gallery_html`` (which puts it under its own "Error gallery" heading).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.evaluation.truth import majority_truth
from pipeline.explain import ExplainError, explain_image, frame_image_path, load_classifier, read_image, write_overlay
from pipeline.types import ConfigError, Degraded

log = logging.getLogger(__name__)

NOT_MODEL_ANSWERS = frozenset({Degraded.STALE.value, Degraded.UNKNOWN.value})


@dataclass(frozen=True)
class GalleryItem:
    """One shown error: the frame, the role that erred, truth vs prediction, the role's confidence, the overlay
    PNG, and how many errors its (true, predicted) pair holds in all (``pair_errors``)."""

    frame_id: str
    camera_id: str
    role: str
    true_class: str
    predicted_class: str
    confidence: float
    image: Path
    pair_errors: int = 0


@dataclass(frozen=True)
class _Error:
    frame_id: str
    camera_id: str
    true_class: str
    predicted_class: str
    confidence: float


def _classes(store: Any, run_ids: Sequence[str], fallback: Sequence[str]) -> list[str]:
    """The runs' class list (what the truth rule counts as a known class); the model's when runs record none."""
    runs = {r["run_id"]: r for r in store.list_runs()}
    missing = [r for r in run_ids if r not in runs]
    if missing:
        raise ConfigError(f"run id(s) not in store {store.url}: {', '.join(missing)} (known: {', '.join(runs) or 'none'})")
    lists = {runs[r]["class_names"] for r in run_ids if runs[r]["class_names"]}
    if len(lists) > 1:
        raise ConfigError(f"store {store.url}: runs {list(run_ids)} use different class lists; build one gallery per class list")
    return json.loads(lists.pop()) if lists else list(fallback)


def find_errors(store: Any, run_ids: Sequence[str], role: str, classes: Sequence[str],
                truth: dict[str, str] | None = None) -> dict[tuple[str, str], list[_Error]]:
    """The role's errors on labelled frames, ``{(true, predicted): [errors, most confident first]}``."""
    pred_rows, label_rows = store.labelled_frame_rows(list(run_ids))
    if truth is None:
        labels: dict[str, list[str]] = defaultdict(list)
        for fid, label in label_rows:
            labels[fid].append(label)
        known = set(classes)
        truth = {}
        for fid, labs in labels.items():
            t = majority_truth(labs, known)
            if t.ok:
                truth[fid] = t.label
    pairs: dict[tuple[str, str], list[_Error]] = defaultdict(list)
    for fid, cam, r, probs, label, degraded in pred_rows:
        if r != role or degraded in NOT_MODEL_ANSWERS:
            continue
        true = truth.get(fid)
        if true is None or true == label:
            continue
        conf = float(probs.max()) if probs.size else 0.0
        pairs[(true, label)].append(_Error(fid, cam, true, label, conf))
    for errs in pairs.values():
        errs.sort(key=lambda e: (-e.confidence, e.frame_id))
    return dict(pairs)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:80] or "x"


def build_error_gallery(store: Any, run_ids: list[str], model: Any, out_dir: str | Path, role: str = "incumbent",
                        per_pair: int = 3, max_pairs: int = 6, method: str = "occlusion",
                        truth: dict[str, str] | None = None, image_root: str | Path | None = None,
                        **explain_kw: Any) -> list[GalleryItem]:
    """The most confident errors of ``role`` per confused class pair, each with its overlay PNG in ``out_dir``.

    Args:
        store: a :class:`pipeline.store.PredictionStore`.
        run_ids: the runs whose labelled frames count.
        model: the role's model (:class:`pipeline.runtime.OnnxClassifier`, ``.onnx`` path or ``models:/`` URI);
            loaded once for all overlays.
        out_dir: where the PNGs go (created).
        role: ``"incumbent"`` or ``"shadow"``.
        per_pair, max_pairs: errors shown per pair, pairs shown (the pairs with most errors).
        method: saliency method (:func:`pipeline.explain.explain_image`); ``explain_kw`` go to it too.
        truth: ``{frame_id: true class}`` instead of the truth rule over the stored labels (still only for the
            labelled frames of the runs; a frame missing from it has no truth).
        image_root: folder relative sampled-image paths are resolved against (default: current directory).
        explain_kw: :func:`pipeline.explain.explain_image` options (window, n_masks, ...); ``workdir`` and
            ``cache_dir`` resolve a ``models:/`` URI (:func:`pipeline.explain.load_classifier`).

    Returns the items in display order: pairs by error count (descending), errors by confidence (descending).
    """
    if role not in ("incumbent", "shadow"):
        raise ConfigError(f"gallery role must be 'incumbent' or 'shadow', got {role!r}")
    if per_pair < 1 or max_pairs < 1:
        raise ConfigError(f"gallery per_pair and max_pairs must be >= 1, got {per_pair} and {max_pairs}")
    if not run_ids:
        raise ConfigError("gallery needs at least one run id")
    clf = load_classifier(model, workdir=explain_kw.pop("workdir", None), cache_dir=explain_kw.pop("cache_dir", None))
    classes = _classes(store, run_ids, clf.class_names)
    pairs = find_errors(store, run_ids, role, classes, truth)
    ordered = sorted(pairs.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:max_pairs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items: list[GalleryItem] = []
    for (true, pred), errs in ordered:
        shown = 0
        for err in errs:
            if shown == per_pair:
                break
            try:
                path = frame_image_path(store, err.frame_id, image_root)
                image = read_image(path)
            except ExplainError as e:
                log.warning("gallery_skip frame=%s reason=%s", err.frame_id, e)
                continue
            target = pred if pred in clf.class_names else None
            explanation = explain_image(clf, image, target=target, method=method, **explain_kw)
            png = out / f"{role}_{_safe(true)}_as_{_safe(pred)}_{shown + 1}_{_safe(err.frame_id)}.png"
            write_overlay(png, image, explanation)
            items.append(GalleryItem(err.frame_id, err.camera_id, role, true, pred, err.confidence, png, len(errs)))
            shown += 1
    log.info("error_gallery role=%s pairs=%d items=%d out=%s", role, len(ordered), len(items), out)
    return items


_STYLE = ("<style>.error-gallery figure{display:inline-block;vertical-align:top;width:300px;margin:0 12px 12px 0}"
          ".error-gallery img{width:100%;height:auto;border:1px solid #ccc}"
          ".error-gallery figcaption{font-size:0.85em}</style>")


def gallery_html(items: Sequence[GalleryItem], relative_to: Path, inline: bool = False) -> str:
    """An HTML ``<section class="error-gallery">``: one block per confused pair (in the items' order), one
    ``<figure>`` per error with its overlay and a caption (frame, camera, role, confidence).

    Image ``src`` is the PNG's path relative to ``relative_to`` (the report's folder), with forward slashes;
    ``inline=True`` embeds the PNGs as base64 data URIs instead (a single-file report). Text from the data is
    escaped.
    """
    esc = html.escape
    parts = ['<section class="error-gallery">', _STYLE]
    if not items:
        parts.append("<p>No errors among the labelled frames.</p></section>")
        return "\n".join(parts)
    parts.append("<p>The most confident errors per confused pair (true class → predicted class), pairs with the "
                 "most errors first. Overlays show what the model looked at for the class it predicted (red: "
                 "strongest evidence), computed from the deployed ONNX model.</p>")
    groups: dict[tuple[str, str, str], list[GalleryItem]] = {}
    for it in items:
        groups.setdefault((it.role, it.true_class, it.predicted_class), []).append(it)
    for (role, true, pred), group in groups.items():
        total = max(it.pair_errors for it in group) or len(group)
        parts.append(f'<div class="gallery-pair"><h3>{esc(true)} → {esc(pred)} '
                     f'<small>({esc(role)}: {total} error{"s" if total != 1 else ""}, {len(group)} shown)</small></h3>')
        for it in group:
            if inline:
                src = "data:image/png;base64," + base64.b64encode(Path(it.image).read_bytes()).decode("ascii")
            else:
                src = Path(os.path.relpath(Path(it.image).resolve(), Path(relative_to).resolve())).as_posix()
            alt = f"{it.frame_id}: labelled {it.true_class}, predicted {it.predicted_class}"
            parts.append(
                f'<figure><img src="{esc(src)}" alt="{esc(alt)}" loading="lazy">'
                f"<figcaption><code>{esc(it.frame_id)}</code><br>camera {esc(it.camera_id)} · "
                f"labelled <b>{esc(it.true_class)}</b>, predicted <b>{esc(it.predicted_class)}</b> "
                f"at {100 * it.confidence:.1f}%</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</section>")
    return "\n".join(parts)
