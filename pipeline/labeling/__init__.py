"""Human labels: the labeling page, label import/export, and a simulated annotator.

* :mod:`pipeline.labeling.queue` — which sampled frames still need labels and who gets which next
  (double-label samples need two different annotators; skips hide a frame from one annotator).
* :mod:`pipeline.labeling.app` — ``create_app(...)``, the FastAPI labeling page (``shadowcam label serve``).
* :mod:`pipeline.labeling.auth` — tokens (argon2id-hashed in the store, ``shadowcam label tokens``), server-side
  sessions, store-backed login rate limits, CSRF tokens, roles (docs/security.md).
* :mod:`pipeline.labeling.io` — ``export_pending(...)`` (CSV / JSONL / Label Studio tasks) and
  ``import_labels(...)`` (CSV / JSONL / Label Studio export; validated, all-or-nothing).
* :mod:`pipeline.labeling.simulate` — ``simulate_labels(...)``: ground truth from synthetic-data
  manifests with a configurable error rate, for demos and tests.

Labels land in the store's ``labels`` table with ``source`` = ``web`` | ``review`` | ``import`` | ``simulated``
(every one also in the append-only ``label_audit``);
the label ``unsure`` is a valid answer that the evaluator leaves out of accuracy.
Submodules are imported on demand (FastAPI is only needed by the page).
"""
