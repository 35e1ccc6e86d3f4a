"""Saliency overlays for the labeling page: which model explains a frame, computing it once, caching the PNG.

The page shows an overlay only for a frame the annotator has already answered (the rule lives in
:mod:`pipeline.labeling.app`); this module only makes the picture:

* **which model**: the incumbent of the frame's run (``runs.incumbent_model`` and the run's stored config) - or its
  shadow, for the review of the challenger's disagreements - or one model for every frame when the page was
  started with ``--explain-model``. The run's model is found as the
  evaluator finds its card: the ONNX file the runner loaded (``_resolved.incumbent.path`` in the stored config)
  when it is still there, else the configured URI - a registry alias (``models:/NAME@ALIAS``) pinned to the
  version the predictions were made with (``models:/NAME/VERSION``), since the alias may have moved since.
* **computing**: :func:`pipeline.explain.explain_image` (occlusion by default) through ONNX Runtime on the
  sampled frame's JPEG - the picture the annotator saw - explaining the class the model's stored prediction named
  (the answer the page shows next to it; with ``--explain-model``, that model's own predicted class). Loaded models
  are kept (one session per model file); overlays are computed one at a time on a worker thread, so a burst of
  requests cannot starve the page of CPU, and a frame asked for twice is computed once.
* **caching**: PNGs under the samples' folder: ``<folder of the sample JPEG>/overlays/<model key>/<frame>.png``,
  written to a temporary name and renamed, so a half-written file is never served.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.store import PredictionStore
from pipeline.types import ShadowcamError

log = logging.getLogger(__name__)

__all__ = ["OverlayError", "OverlayMaker", "run_model_uri"]

OVERLAY_DIR = "overlays"
WAIT_S = 120.0  # a request waits at most this long for its overlay


class OverlayError(ShadowcamError):
    """No overlay can be made for a frame (no model recorded, model file gone, image missing, explain failed)."""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "x"


def run_model_uri(run: dict[str, Any], role: str = "incumbent") -> tuple[str | None, str]:
    """(the model a run used in ``role``, the run's workdir) from a ``runs`` row (``PredictionStore.list_runs``).

    The model is the ONNX file the runner loaded when it still exists, else the configured URI; a
    ``models:/NAME@ALIAS`` URI is pinned to the version in ``<role>_model`` (``NAME:VERSION``). None when the
    run's config names no model for the role."""
    try:
        cfg = json.loads(run.get("config") or "{}")
    except json.JSONDecodeError:
        cfg = {}
    workdir = str(cfg.get("workdir") or ".")
    section = cfg.get(role) or {}
    resolved = (cfg.get("_resolved") or {}).get(role) or {}
    path = resolved.get("path") if isinstance(resolved, dict) else None
    if path and Path(path).is_file():
        return str(path), workdir
    uri = (section.get("uri") if isinstance(section, dict) else None) or (resolved.get("uri") if isinstance(resolved, dict) else None)
    if not uri:
        return None, workdir
    uri = str(uri)
    if uri.startswith("models:/"):
        name, _, version = (run.get(f"{role}_model") or "").rpartition(":")
        body = uri[len("models:/"):]
        if name and version.isdigit() and (body.split("@", 1)[0] == name or body.split("/", 1)[0] == name):
            uri = f"models:/{name}/{version}"
    elif not Path(uri).is_absolute() and not Path(uri).is_file() and (Path(workdir) / uri).is_file():
        uri = str(Path(workdir) / uri)
    return uri, workdir


class OverlayMaker:
    """Overlays for sampled frames of ``store`` (see the module docstring).

    Args:
        store: the prediction store (frames, runs, samples).
        resolve_image: maps a sample's ``image_path`` to the file (the page's image-root rule); None: refused.
        model: explain every frame with this model (``--explain-model``: an ``.onnx`` path or ``models:/`` URI);
            None: each frame's run incumbent.
        method: ``occlusion`` or ``rise`` (:func:`pipeline.explain.explain_image`).
        workdir: MLflow store for ``models:/`` URIs (default: the run's workdir); cache_dir: their downloads
            (default ``<workdir>/.cache``).
    """

    def __init__(self, store: PredictionStore, resolve_image: Any, model: str | Path | None = None,
                 method: str = "occlusion", workdir: str | Path | None = None, cache_dir: str | Path | None = None):
        self.store = store
        self.resolve_image = resolve_image
        self.model = str(model) if model is not None else None
        self.method = method
        self.workdir = str(workdir) if workdir is not None else None
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self._models: dict[str, Any] = {}  # model reference -> OnnxClassifier
        self._pending: dict[Path, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlay")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- which model, where the PNG goes --------------------------------------------------------------
    def model_for(self, frame_id: str, role: str = "incumbent") -> tuple[str, str]:
        """(model reference, workdir) explaining ``frame_id`` for ``role``; :class:`OverlayError` when there is none."""
        if self.model is not None:
            return self.model, self.workdir or "."
        run = self.store.frame_run(frame_id)
        if run is None:
            raise OverlayError(f"frame {frame_id!r} is not in the store")
        uri, run_workdir = run_model_uri(run, role)
        if uri is None:
            raise OverlayError(f"run {run['run_id']} records no {role} model file or URI; start the page with "
                               "--explain-model FILE.onnx")
        return uri, self.workdir or run_workdir

    def path_for(self, frame_id: str, role: str = "incumbent") -> Path:
        """Where ``frame_id``'s overlay PNG (for ``role``'s model) is, or will be, cached."""
        row = self.store.queued_sample(frame_id)
        if row is None:
            raise OverlayError(f"frame {frame_id!r} was never sampled")
        image = self.resolve_image(row.image_path)
        if image is None:
            raise OverlayError(f"the image of frame {frame_id!r} lies outside the image root")
        model, _ = self.model_for(frame_id, role)
        key = f"{_safe(Path(model).stem if not model.startswith('models:/') else model[8:])}-{self.method}-" \
              + hashlib.sha1(model.encode()).hexdigest()[:8]
        return Path(image).parent / OVERLAY_DIR / key / f"{_safe(frame_id)}.png"

    # --- the verbs ---------------------------------------------------------------------------------
    def prefetch(self, frame_id: str, role: str = "incumbent") -> None:
        """Start computing ``frame_id``'s overlay in the background (errors are logged when it is asked for)."""
        try:
            self._submit(frame_id, role)
        except OverlayError as e:
            log.info("overlay for %s not prefetched: %s", frame_id, e)

    def get(self, frame_id: str, role: str = "incumbent", timeout_s: float = WAIT_S) -> Path:
        """The overlay PNG of ``frame_id`` for ``role``'s model: cached, or computed now (waits up to ``timeout_s``)."""
        path, fut = self._submit(frame_id, role)
        if fut is None:
            return path
        try:
            return fut.result(timeout=timeout_s)
        except OverlayError:
            raise
        except TimeoutError:
            raise OverlayError(f"the overlay of frame {frame_id!r} took longer than {timeout_s:g} s") from None
        except Exception as e:
            raise OverlayError(f"the overlay of frame {frame_id!r} failed: {e.__class__.__name__}: {e}") from None

    def _submit(self, frame_id: str, role: str) -> tuple[Path, Future | None]:
        path = self.path_for(frame_id, role)
        with self._lock:
            if path.is_file():
                return path, None
            fut = self._pending.get(path)
            if fut is None:
                fut = self._pool.submit(self._make, frame_id, role, path)
                self._pending[path] = fut
                fut.add_done_callback(lambda _f, p=path: self._forget(p))
        return path, fut

    def _forget(self, path: Path) -> None:
        with self._lock:
            self._pending.pop(path, None)

    def _classifier(self, model: str, workdir: str) -> Any:
        from pipeline.explain import load_classifier

        with self._lock:
            clf = self._models.get(model)
        if clf is None:
            cache = self.cache_dir or str(Path(workdir) / ".cache")
            try:
                clf = load_classifier(model, workdir=workdir, cache_dir=cache)
            except ShadowcamError as e:
                raise OverlayError(f"cannot load model {model!r}: {e}") from None
            with self._lock:
                self._models[model] = clf
        return clf

    def _make(self, frame_id: str, role: str, path: Path) -> Path:
        from pipeline.explain import ExplainError, explain_image, read_image, write_overlay

        if path.is_file():
            return path
        model, workdir = self.model_for(frame_id, role)
        row = self.store.queued_sample(frame_id)
        image_path = self.resolve_image(row.image_path) if row is not None else None
        if image_path is None:
            raise OverlayError(f"frame {frame_id!r}: no sampled image to explain (the frame was not sampled, or its "
                               f"image lies outside the served image root)")
        try:
            image = read_image(image_path)
            clf = self._classifier(model, workdir)
            target = None  # the run's own model: the class its stored prediction named (what the page shows)
            if self.model is None:
                stored = next((p.label for p in self.store.predictions_for_frame(frame_id) if p.role == role), None)
                target = stored if stored in clf.class_names else None
            expl = explain_image(clf, image, target=target, method=self.method)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.png")
            write_overlay(tmp, image, expl)
            os.replace(tmp, path)
        except ExplainError as e:
            raise OverlayError(f"frame {frame_id!r}: {e}") from None
        except OSError as e:
            raise OverlayError(f"frame {frame_id!r}: cannot write {path}: {e.strerror or e}") from None
        log.info("overlay frame=%s model=%s target=%s seconds=%s", frame_id, expl.meta.get("model"), expl.target_class,
                 expl.meta.get("seconds"))
        return path
