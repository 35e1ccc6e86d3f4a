"""Everything MLflow: where the store is, registering ONNX models, aliases, promotion, resolving ``models:/`` URIs.

mlflow is imported inside the functions, so the runtime imports this module without it.

Where the store is: ``MLFLOW_TRACKING_URI`` when set, else a local SQLite file ``<workdir>/mlflow.db`` (the
embedded default). Artifacts of experiments created here live in ``<workdir>/mlartifacts``, never in the
current directory. :func:`configure` sets both the tracking and the registry URI.

Registry conventions (MLflow's own alias convention)::

    champion            the incumbent: the model whose answers are served
    challenger          the shadow: sees the same frames, its answers are only recorded
    previous_champion   the champion before the last promotion (what --rollback goes back to)

:func:`promote` moves ``champion`` to the ``challenger`` version, keeps the old champion as
``previous_champion`` and *removes* ``challenger``: after a promotion there is no shadow until a new
candidate is registered (``shadowcam train --register NAME --alias challenger``) -- shadowing the champion
with itself would only cost compute. :func:`rollback` undoes one promotion: ``champion`` goes back to
``previous_champion``, the demoted version becomes ``challenger`` again (so it keeps being measured), and
``previous_champion`` is removed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import EVALUATION_EXPERIMENT
from pipeline.evaluation.result import ROLES, Alert, EvaluationResult
from pipeline.types import ShadowcamError

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous_champion"
DB_NAME = "mlflow.db"
ARTIFACT_DIR = "mlartifacts"
REGISTRY_EXPERIMENT = "shadowcam-registry"  # holds the runs created to carry ONNX files registered without a run
MODEL_ARTIFACT_PATH = "model"  # artifact folder of a run that holds the registered model.onnx (see model_artifact_dir)

_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


class RegistryError(ShadowcamError):
    """A registered model, version or alias does not exist, or a promotion cannot be done."""


# --- where the store is ----------------------------------------------------------------------------------------
def tracking_uri(workdir: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs workdir or cwd>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = Path(workdir or ".").resolve()
    return f"sqlite:///{root / DB_NAME}"


def artifact_root(workdir: str | Path | None = None) -> str:
    """Artifact location (file URI) for experiments created here: ``<workdir>/mlartifacts``.

    When the tracking URI is a local SQLite file and no workdir is given, the folder next to the database.
    """
    if workdir is None:
        uri = tracking_uri(None)
        if uri.startswith("sqlite:///"):
            return (Path(uri[len("sqlite:///"):]).parent / ARTIFACT_DIR).resolve().as_uri()
    return (Path(workdir or ".").resolve() / ARTIFACT_DIR).as_uri()


def configure(workdir: str | Path | None = None) -> str:
    """Point MLflow's tracking and registry at :func:`tracking_uri`; returns the URI.

    Also disables MLflow's usage telemetry unless the environment says otherwise (cameras run offline).
    """
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    uri = tracking_uri(workdir)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def get_or_create_experiment(name: str, workdir: str | Path | None = None) -> str:
    """Experiment id of ``name``, creating it if needed.

    With a local store (SQLite or file URI) new experiments keep their artifacts under ``<workdir>/mlartifacts``
    (:func:`artifact_root`); with a tracking server the server's artifact store is used.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    uri = mlflow.get_tracking_uri()
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    location = f"{artifact_root(workdir)}/{_safe(name)}" if local else None
    return client.create_experiment(name, artifact_location=location)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "experiment"


# --- training runs -----------------------------------------------------------------------------------------------
class TrackedRun:
    """One MLflow run as training code sees it: params, per-step metrics, artifacts, tags, and its id.

    ``TrackedRun(experiment, run_name, workdir, enabled=False)`` does nothing (``shadowcam train --no-mlflow``), so
    the training loop logs unconditionally. Use as a context manager; the run ends (FINISHED, or FAILED on an
    exception) when the block does.
    """

    def __init__(self, experiment: str, run_name: str, workdir: str | Path | None = None, enabled: bool = True,
                 run_id: str | None = None) -> None:
        """``run_id``: continue that run (a resumed training) instead of starting a new one."""
        self.experiment, self.run_name, self.workdir, self.enabled = experiment, run_name, workdir, enabled
        self.run_id = ""
        self._resume_id = run_id
        self._ctx = None

    def __enter__(self) -> "TrackedRun":
        if self.enabled:
            import mlflow

            configure(self.workdir)
            exp_id = get_or_create_experiment(self.experiment, self.workdir)
            if self._resume_id:
                self._ctx = mlflow.start_run(run_id=self._resume_id)
            else:
                self._ctx = mlflow.start_run(experiment_id=exp_id, run_name=self.run_name)
            self.run_id = self._ctx.__enter__().info.run_id
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)
            self._ctx = None

    def log_params(self, params: dict) -> None:
        """Lists and dicts are logged as JSON text (MLflow params are strings)."""
        if self.enabled:
            import mlflow

            mlflow.log_params({k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_metrics(metrics, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            import mlflow

            mlflow.log_artifact(str(path), artifact_path)

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.enabled:
            import mlflow

            mlflow.set_tags(tags)


# --- registry ----------------------------------------------------------------------------------------------------
def _client():
    from mlflow import MlflowClient

    return MlflowClient()


def register_onnx(onnx_path: str | Path, name: str, alias: str | None = None, run_id: str | None = None,
                  workdir: str | Path | None = None) -> str:
    """Register an ONNX file as a new version of model ``name``; returns the version (a string).

    The file is logged byte for byte (metadata and model card intact) into the run's artifact folder
    :func:`model_artifact_dir` (``model/`` for ``model.onnx``, ``model_fp16/`` for ``model_fp16.onnx``), unless the
    run already has it there; that folder, holding only this file, is the version's source. Without ``run_id`` a small run in the ``shadowcam-registry`` experiment is created to carry it.
    ``alias`` (e.g. ``challenger``) is then pointed at the new version. Call :func:`configure` first.
    """
    from mlflow.exceptions import MlflowException

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file() or onnx_path.suffix.lower() != ".onnx":
        raise RegistryError(f"{onnx_path}: not an .onnx file")
    artifact_dir = model_artifact_dir(onnx_path)
    client = _client()
    if run_id is None:
        exp_id = get_or_create_experiment(REGISTRY_EXPERIMENT, workdir)
        run = client.create_run(exp_id, run_name=f"register-{name}", tags={"shadowcam.kind": "registration"})
        run_id = run.info.run_id
        client.log_artifact(run_id, str(onnx_path), artifact_dir)
        client.set_terminated(run_id)
    else:
        logged = [Path(f.path).name for f in client.list_artifacts(run_id, artifact_dir)]
        if logged and logged != [onnx_path.name]:
            raise RegistryError(f"run {run_id}: artifact folder {artifact_dir!r} already holds {logged}; "
                                f"cannot register {onnx_path.name} from it")
        if not logged:
            client.log_artifact(run_id, str(onnx_path), artifact_dir)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="shadowcam ONNX classifier (model card in the file's metadata)")
    mv = client.create_model_version(name, source=f"runs:/{run_id}/{artifact_dir}", run_id=run_id,
                                     tags={"onnx_file": onnx_path.name})
    version = str(mv.version)
    if alias:
        set_alias(name, alias, version)
    log.info("registered %s as %s version %s%s", onnx_path, name, version, f" @{alias}" if alias else "")
    return version


def model_artifact_dir(onnx_path: str | Path) -> str:
    """Run artifact folder that holds one registered ONNX file: ``model`` for model.onnx, else the file's stem."""
    stem = Path(onnx_path).stem
    return MODEL_ARTIFACT_PATH if stem == "model" else _safe(stem)


def _check_model(name: str):
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_registered_model(name)
    except MlflowException:
        raise RegistryError(f"registered model {name!r} not found in {tracking_uri_in_use()}") from None


def tracking_uri_in_use() -> str:
    import mlflow

    return mlflow.get_tracking_uri()


def set_alias(name: str, alias: str, version: str | int) -> None:
    """Point ``alias`` of model ``name`` at ``version`` (moving it if it pointed elsewhere)."""
    from mlflow.exceptions import MlflowException

    _check_model(name)
    try:
        _client().set_registered_model_alias(name, alias, str(version))
    except MlflowException as e:
        raise RegistryError(f"cannot set alias {alias!r} of model {name!r} to version {version}: {e.message}") from None


def get_aliases(name: str) -> dict[str, str]:
    """``{alias: version}`` of model ``name``."""
    model = _check_model(name)
    return {a: str(v) for a, v in (model.aliases or {}).items()}


def get_version_by_alias(name: str, alias: str) -> str:
    """The version ``alias`` points at; :class:`RegistryError` naming the known aliases when it does not exist."""
    aliases = get_aliases(name)
    if alias not in aliases:
        known = ", ".join(f"{a}->{v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(f"model {name!r} has no alias {alias!r} (aliases: {known})")
    return aliases[alias]


def _delete_alias(name: str, alias: str) -> None:
    _client().delete_registered_model_alias(name, alias)


def promote(name: str, *, tags: dict[str, str] | None = None, expect_challenger: str | None = None) -> dict:
    """Make the ``challenger`` the ``champion`` (see the module docstring). Returns what moved::

        {"model": name, "champion": new, "previous_champion": old or None, "challenger": None,
         "moved": ["champion: 1 -> 2", ...]}

    No evidence is checked here (the CLI checks it first: :func:`check_promotion_evidence`). ``tags`` (e.g.
    :func:`promotion_tags`): when given, written with the time and the versions involved on the promoted and the
    demoted model version (:func:`record_promotion`), and the result gains ``"recorded": {version: tags}``.
    ``expect_challenger``: refuse (:class:`RegistryError`) when ``challenger`` no longer points at this version
    (it moved after the evidence was checked).
    """
    aliases = get_aliases(name)
    if CHALLENGER not in aliases:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} alias to promote; register a candidate with "
                            f"`shadowcam train ... --register {name} --alias {CHALLENGER}`")
    new = aliases[CHALLENGER]
    old = aliases.get(CHAMPION)
    if expect_challenger is not None and str(expect_challenger) != new:
        raise RegistryError(f"model {name!r}: {CHALLENGER!r} now points at version {new}, not version {expect_challenger} "
                            f"whose evidence was checked; run the promotion again")
    if old == new:
        raise RegistryError(f"model {name!r}: challenger and champion are both version {new}; nothing to promote")
    moved = [f"{CHAMPION}: {old or '(none)'} -> {new}"]
    set_alias(name, CHAMPION, new)
    if old is not None:
        set_alias(name, PREVIOUS_CHAMPION, old)
        moved.append(f"{PREVIOUS_CHAMPION}: {aliases.get(PREVIOUS_CHAMPION, '(none)')} -> {old}")
    elif PREVIOUS_CHAMPION in aliases:
        _delete_alias(name, PREVIOUS_CHAMPION)
        moved.append(f"{PREVIOUS_CHAMPION}: {aliases[PREVIOUS_CHAMPION]} -> (removed)")
    _delete_alias(name, CHALLENGER)
    moved.append(f"{CHALLENGER}: {new} -> (removed)")
    result = {"model": name, CHAMPION: new, PREVIOUS_CHAMPION: old, CHALLENGER: None, "moved": moved}
    if tags is not None:
        result["recorded"] = record_promotion(name, new, old, tags)
    return result


def rollback(name: str, *, tags: dict[str, str] | None = None) -> dict:
    """Undo the last promotion: ``champion`` back to ``previous_champion``; the demoted version becomes
    ``challenger``; ``previous_champion`` is removed. Returns what moved (same shape as :func:`promote`).

    ``tags`` (e.g. :func:`rollback_tags`): when given, written with the time and the versions involved on both
    versions (:func:`record_rollback`), and the result gains ``"recorded": {version: tags}``."""
    aliases = get_aliases(name)
    if PREVIOUS_CHAMPION not in aliases:
        raise RegistryError(f"model {name!r} has no {PREVIOUS_CHAMPION!r} alias; nothing to roll back to")
    back = aliases[PREVIOUS_CHAMPION]
    demoted = aliases.get(CHAMPION)
    moved = [f"{CHAMPION}: {demoted or '(none)'} -> {back}"]
    set_alias(name, CHAMPION, back)
    if demoted is not None and demoted != back:
        moved.append(f"{CHALLENGER}: {aliases.get(CHALLENGER, '(none)')} -> {demoted}")
        set_alias(name, CHALLENGER, demoted)
    _delete_alias(name, PREVIOUS_CHAMPION)
    moved.append(f"{PREVIOUS_CHAMPION}: {back} -> (removed)")
    result = {"model": name, CHAMPION: back, PREVIOUS_CHAMPION: None,
              CHALLENGER: demoted if demoted != back else aliases.get(CHALLENGER), "moved": moved}
    if tags is not None:
        result["recorded"] = record_rollback(name, back, demoted, tags)
    return result


# --- resolving model URIs --------------------------------------------------------------------------------------
def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/VERSION`` -> (NAME, None, VERSION)."""
    m = _MODELS_URI.match(uri.strip())
    if not m:
        raise RegistryError(f"{uri!r} is not a model URI (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    return m.group("name"), m.group("alias"), m.group("version")


def resolve_model_uri(uri: str, cache_dir: str | Path, workdir: str | Path | None = None) -> tuple[Path, str, str]:
    """Turn a model reference into a local ONNX file: ``(path, name, version)``.

    * a plain ``.onnx`` path -> ``(path, file stem, "")``;
    * ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> the registered version's artifacts are downloaded
      into ``<cache_dir>/<NAME>/<VERSION>/`` (reused when already there: versions are immutable) and the
      ``.onnx`` inside is returned.

    ``workdir`` picks the local store when ``MLFLOW_TRACKING_URI`` is not set (see :func:`configure`).
    """
    if not uri.startswith("models:/"):
        path = Path(uri)
        if not path.is_file():
            raise RegistryError(f"{path}: model file not found (expected an .onnx path or models:/NAME@ALIAS)")
        return path, path.stem, ""
    name, alias, version = parse_models_uri(uri)
    configure(workdir)
    if alias is not None:
        version = get_version_by_alias(name, alias)
    else:
        _check_model(name)
        from mlflow.exceptions import MlflowException

        try:
            _client().get_model_version(name, version)
        except MlflowException:
            raise RegistryError(f"model {name!r} has no version {version}") from None
    dest = Path(cache_dir) / _safe(name) / str(version)
    found = _find_onnx(dest)
    if found is None:
        import mlflow

        tmp = dest.with_name(dest.name + ".partial")
        tmp.mkdir(parents=True, exist_ok=True)
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(tmp))
        if _find_onnx(tmp) is None:
            raise RegistryError(f"models:/{name}/{version} holds no .onnx file")
        if dest.exists():  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.rename(dest)
        found = _find_onnx(dest)
        if found is None:
            raise RegistryError(f"models:/{name}/{version}: download to {dest} holds no .onnx file")
    return found, name, str(version)


def _find_onnx(folder: Path) -> Path | None:
    if not folder.is_dir():
        return None
    files = sorted(folder.rglob("*.onnx"))
    if not files:
        return None
    preferred = [f for f in files if f.name == "model.onnx"]
    return preferred[0] if preferred else files[0]


# --- evaluation runs ---------------------------------------------------------------------------------------------
# One MLflow run per evaluation: per-window figures as metric time series (step = window index), the overall figures
# as overall/<key>, the report's files as artifacts. notebooks/compare_experiments.ipynb reads these metric keys and
# tags: do not rename them. (The imports of this block sit here so that blocks of different authors do not touch
# each other's lines.)

_KEY_BAD = re.compile(r"[^\w.\- ]")


def metric_key_part(name: str) -> str:
    """A camera id or stat name made safe for an MLflow metric key (letters, digits, _ - . space)."""
    return _KEY_BAD.sub("_", str(name)).strip(" .") or "_"


def flat_metrics(result: EvaluationResult) -> dict[str, float]:
    """The result's headline figures under their MLflow keys (missing and non-finite figures are left out)."""
    out: dict[str, float] = {}

    def put(key: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            out[key] = float(value)

    for role in ROLES:
        m = result.models.get(role)
        if m is None:
            continue
        if m.accuracy is not None:
            put(f"prod_accuracy/{role}", m.accuracy.value)
            put(f"prod_accuracy/{role}_ci_low", m.accuracy.low)
            put(f"prod_accuracy/{role}_ci_high", m.accuracy.high)
        put(f"prod_labels/{role}", m.n_labeled)
        if m.gap is not None:
            put(f"train_to_prod_gap/{role}", m.gap.value)
            put(f"train_to_prod_gap/{role}_ci_low", m.gap.low)
            put(f"train_to_prod_gap/{role}_ci_high", m.gap.high)
        if m.estimated_accuracy is not None:
            put(f"estimated_accuracy/{role}", m.estimated_accuracy.value)
            if m.estimated_accuracy.contradicted_by_labels is not None:
                put(f"estimated_accuracy/{role}_contradicted_by_labels", float(m.estimated_accuracy.contradicted_by_labels))
            put(f"estimated_accuracy/{role}_valid", float(m.estimated_accuracy.valid))
        for key, e in (("prod_accuracy_cs", m.accuracy_cs), ("train_to_prod_gap_cs", m.gap_cs)):
            if e is not None:
                put(f"{key}/{role}_low", e.low)
                put(f"{key}/{role}_high", e.high)
        if m.calibration is not None:
            put(f"calibration_ece/{role}", m.calibration.ece)
        for cam, e in m.per_camera.items():
            put(f"prod_accuracy_camera/{metric_key_part(cam)}/{role}", e.value)
        if m.cost is not None:
            put(f"cost_per_1k/{role}", m.cost.per_1k.value)
            put(f"cost_per_1k/{role}_ci_low", m.cost.per_1k.low)
            put(f"cost_per_1k/{role}_ci_high", m.cost.per_1k.high)
        if m.vs_baseline is not None:
            put(f"baseline_guard/{role}_significantly_better", float(m.vs_baseline.significantly_better))
            put(f"baseline_guard/{role}_diff_low", m.vs_baseline.low)
    for b in result.baselines:
        key = metric_key_part(b.name)
        if b.accuracy is not None:
            put(f"baseline_accuracy/{key}", b.accuracy.value)
            put(f"baseline_accuracy/{key}_ci_low", b.accuracy.low)
            put(f"baseline_accuracy/{key}_ci_high", b.accuracy.high)
        if b.cost is not None:
            put(f"baseline_cost_per_1k/{key}", b.cost.per_1k.value)
    sc = result.serving_cost
    if sc:
        for role in ROLES:
            put(f"serving_usd_per_million/{role}", (sc.get(role) or {}).get("usd_per_million"))
            put(f"serving_usd_per_million_at_capacity/{role}", (sc.get(role) or {}).get("usd_per_million_at_capacity"))
        put("serving_shadow_extra_usd_per_million", sc.get("shadow_extra_usd_per_million"))
    for t in result.drift.p_values():
        if t.test == "softmax":
            put(f"drift/softmax_p/{t.subject}", t.p)
        elif t.test == "class_distribution":
            put("drift/class_dist_p", t.p)
        elif t.test == "training":
            put(f"drift/training/{metric_key_part(t.subject)}/{metric_key_part(t.stat)}", t.p)
        else:
            put(f"drift/image/{metric_key_part(t.subject)}/{metric_key_part(t.stat)}", t.p)
    td = result.drift.training
    if td is not None:
        put("drift/training_drifted", float(td.drifted))
        put("drift/training_share_outside", td.largest_share_outside)
    d = result.decision
    if d is not None and d.low is not None:
        put("decision/diff_low", d.low)
        put("decision/diff_high", d.high)
        put("decision/labels_spent", d.labels_spent)
    c = result.counts
    put("labels", c.labels)
    put("labels_used", c.frames_with_truth)
    put("frames", c.frames)
    put("shadow_coverage", c.shadow_coverage)
    put("excluded_labels", c.excluded.total)
    for role in ROLES:
        put(f"degraded/{role}", c.degraded.get(role))
    if result.paired is not None:
        p = result.paired
        put("paired/mcnemar_p", p.p_mcnemar)
        put("paired/p_value", p.p_value)
        put("paired/diff", p.diff.value)
        put("paired/n", p.n)
    if result.agreement is not None:
        put("annotator_agreement", result.agreement.agreement)
        put("annotator_kappa", result.agreement.kappa)
    return out


def log_evaluation(
    results: Sequence[EvaluationResult],
    overall: EvaluationResult,
    experiment: str = EVALUATION_EXPERIMENT,
    workdir: str | Path | None = None,
    run_name: str | None = None,
    artifacts_dir: str | Path | None = None,
    alerts: Sequence[Alert] = (),
    max_gap: float | None = None,
    write_report: Callable[..., Any] | None = None,
    report_kwargs: dict[str, Any] | None = None,
) -> str:
    """Log one evaluation as one MLflow run; returns its run id.

    ``results``: the per-window results (or ``[overall]``), logged as metric time series (step = window index,
    timestamp = window end); ``overall``'s figures are logged as ``overall/<key>`` (:func:`flat_metrics` keys).
    Artifacts: what ``write_report(results, overall, folder, alerts=alerts, max_gap=max_gap)`` writes
    (``pipeline.evaluation.report.write_report``: plots, evaluation.json, report.html) plus ``eval_config.json``,
    written into ``artifacts_dir`` (kept) or a temporary folder. Without ``write_report``, whatever
    ``artifacts_dir`` already holds is logged. ``report_kwargs``: more keyword arguments for ``write_report`` (e.g.
    ``gallery_html``, the error gallery of :mod:`pipeline.evaluation.gallery`).
    """
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    configure(workdir)
    exp_id = get_or_create_experiment(experiment, workdir)
    meta = overall.meta
    inc, sh = meta.models.get("incumbent"), meta.models.get("shadow")
    tags = {
        "incumbent_model": inc or "",
        "shadow_model": sh or "",
        "window": f"{meta.window.start_iso}..{meta.window.end_iso}",
        "window_s": str(results[0].meta.window.length_s if results else ""),
        "decision": overall.decision.action if overall.decision is not None else "",
        "alerts": str(len(alerts)),
        "shadowcam.kind": "evaluation",
        "runs": ",".join(meta.runs),
    }
    if overall.decision is not None and overall.decision.low is not None:  # the evidence `shadowcam promote` records
        tags.update({"decision_interval": f"[{overall.decision.low:+.4f}, {overall.decision.high:+.4f}]",
                     "decision_delta": str(overall.decision.delta), "labels_spent": str(overall.decision.labels_spent),
                     "decision_reason": overall.decision.reason[:500]})
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name or f"evaluate {inc} vs {sh}", tags=tags) as run:
        client = MlflowClient()
        mlflow.log_params({"alpha": meta.alpha, "reference": json.dumps(meta.reference.spec), "windows": len(results),
                           "cumulative": meta.window.cumulative})
        batch: list[Metric] = []
        for res in results:
            step = int(res.meta.window.index)
            stamp = int(1000 * (res.meta.window.end or res.meta.evaluated_at))
            batch += [Metric(k, v, stamp, step) for k, v in flat_metrics(res).items()]
        stamp = int(1000 * meta.evaluated_at)
        batch += [Metric(f"overall/{k}", v, stamp, 0) for k, v in flat_metrics(overall).items()]
        for i in range(0, len(batch), 900):  # MLflow accepts at most 1000 metrics per batch
            client.log_batch(run.info.run_id, metrics=batch[i : i + 900])
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(artifacts_dir) if artifacts_dir else Path(tmp)
            out.mkdir(parents=True, exist_ok=True)
            if write_report is not None:
                write_report(results, overall, out, alerts=alerts, max_gap=max_gap, **(report_kwargs or {}))
            (out / "eval_config.json").write_text(json.dumps(meta.config, indent=2))
            mlflow.log_artifacts(str(out))
        return run.info.run_id


# --- promotion evidence ------------------------------------------------------------------------------------------
# `shadowcam promote` moves the aliases only when the newest evaluation of the challenger version decided `promote`
# (or with --force --reason); what the promotion rested on is written as tags on the model versions involved.
# Evaluation runs are found by the tags log_evaluation writes: shadowcam.kind=evaluation, decision, incumbent_model
# and shadow_model = "NAME:VERSION" (the id the runtime gives a model loaded as models:/NAME@ALIAS or
# models:/NAME/VERSION; a shadow loaded from a plain .onnx file is named after its card or file and is not found).

PROMOTE_DECISION = "promote"
NEED_MORE_LABELS = "need_more_labels"
TAG_PROMOTED_AT = "shadowcam.promoted_at"
TAG_PROMOTION_FORCED = "shadowcam.promotion_forced"  # "true" when --force overrode missing or contrary evidence
TAG_PROMOTION_REASON = "shadowcam.promotion_reason"
TAG_PROMOTION_EVIDENCE = "shadowcam.promotion_evidence"  # JSON: PromotionEvidence.to_dict()
TAG_PROMOTION_ROLE = "shadowcam.promotion_role"  # "promoted" | "demoted"
TAG_PROMOTED_VERSION = "shadowcam.promoted_version"
TAG_DEMOTED_VERSION = "shadowcam.demoted_version"
TAG_ROLLED_BACK_AT = "shadowcam.rolled_back_at"
TAG_ROLLBACK_REASON = "shadowcam.rollback_reason"
TAG_ROLLBACK_ROLE = "shadowcam.rollback_role"  # "restored" (champion again) | "demoted" (challenger again)
TAG_RESTORED_VERSION = "shadowcam.restored_version"
TAG_ROLLED_BACK_VERSION = "shadowcam.rolled_back_version"
# overall figures of an evaluation run copied into the evidence when present (flat_metrics keys under overall/)
EVIDENCE_METRICS = ("paired/diff", "paired/p_value", "paired/n", "labels", "labels_used")
_EVIDENCE_SKIP_TAGS = {"incumbent_model", "shadow_model", "decision", "shadowcam.kind"}
_DETAIL_MAX = 300  # characters kept of one evidence detail (registry tag values are limited in length)
_FORCE_HINT = "or override with --force --reason TEXT"


class PromotionRefused(RegistryError):
    """The evidence does not allow a promotion: no evaluation of the challenger version, or it did not decide promote."""


def model_version_id(name: str, version: str | int) -> str:
    """The model id predictions and evaluation runs carry for a registered version: ``NAME:VERSION``."""
    return f"{name}:{version}"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _date(ts: float | None) -> str:
    return "date unknown" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _detail(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _DETAIL_MAX:
        return value[: _DETAIL_MAX - 3] + "..."
    return value


@dataclass(frozen=True)
class PromotionEvidence:
    """What a promotion of ``model`` version ``version`` rests on: the decision of its newest evaluation.

    ``source``: ``"mlflow"`` (an evaluation run in experiment ``where``) or ``"store"`` (the decision recomputed from
    the prediction store ``where``). ``evaluation``: the MLflow run id, or the store's run ids joined by ``,``;
    None when nothing evaluated this version. ``decision``: the decision's action (``promote``, ``retire``,
    ``equivalent``, ``need_more_labels``, older ``keep``), None when there is none. ``details``: what else the
    evaluation says (interval, labels, p-value, ...) as found; ``hint``: when nothing was found, what was found instead.
    """

    model: str
    version: str
    source: str
    where: str
    evaluation: str | None = None
    decision: str | None = None
    evaluated_at: float | None = None
    incumbent_model: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    hint: str = ""

    @property
    def shadow_model(self) -> str:
        return model_version_id(self.model, self.version)

    @property
    def allows_promotion(self) -> bool:
        return self.decision == PROMOTE_DECISION

    def describe(self) -> str:
        """One line: which evaluation, when, and what it decided."""
        if self.evaluation is None:
            where = (f"MLflow experiment {self.where!r}" if self.source == "mlflow" else f"store {self.where}")
            what = "no evaluation of" if self.source == "mlflow" else "no run shadows"
            return f"{what} {self.shadow_model} in {where}" + (f" ({self.hint})" if self.hint else "")
        how = f"MLflow run {self.evaluation}" if self.source == "mlflow" else f"recomputed from store {self.where}, runs {self.evaluation}"
        vs = f", vs {self.incumbent_model}" if self.incumbent_model else ""
        return (f"the latest evaluation of {self.shadow_model} ({how}, {_date(self.evaluated_at)}{vs}) decided "
                f"{self.decision or 'nothing (no paired result)'}")

    def advice(self) -> str:
        """What to do when the evidence does not allow the promotion."""
        if self.evaluation is None:
            if self.source == "store":
                return (f"shadow models:/{self.model}@{CHALLENGER} (`shadowcam run --shadow ...`), label the sampled "
                        f"frames and try again")
            return f"evaluate runs that shadow models:/{self.model}@{CHALLENGER} (`shadowcam evaluate`)"
        if self.decision in (NEED_MORE_LABELS, None):
            more = next((v for k, v in self.details.items() if k.endswith("more_labels")), None)
            extra = f" (about {more} more paired labels)" if more not in (None, "", "None") else ""
            return f"label more sampled frames{extra} and evaluate again"
        return f"the evaluation does not favour version {self.version}; keep the champion or register a better candidate"

    def refusal(self) -> str:
        """The one-line reason a promotion is refused."""
        line = (f"cannot promote {self.model} version {self.version} ({CHALLENGER}): {self.describe()}; "
                f"{self.advice()}, {_FORCE_HINT}")
        return " ".join(line.split())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, as recorded in :data:`TAG_PROMOTION_EVIDENCE`."""
        out: dict[str, Any] = {
            "source": self.source,
            "experiment" if self.source == "mlflow" else "store": self.where,
            "shadow_model": self.shadow_model,
            "decision": self.decision or "none",
            "evaluation_run_id" if self.source == "mlflow" else "store_runs": self.evaluation,
            "evaluated_at": _iso(self.evaluated_at),
            "incumbent_model": self.incumbent_model,
        }
        if self.details:
            out["details"] = {k: _detail(v) for k, v in self.details.items()}
        if self.hint:
            out["hint"] = _detail(self.hint)
        return out


def challenger_version(name: str) -> str:
    """The version alias ``challenger`` of model ``name`` points at (:class:`RegistryError` when there is none)."""
    aliases = get_aliases(name)
    if CHALLENGER not in aliases:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} alias to promote; register a candidate with "
                            f"`shadowcam train ... --register {name} --alias {CHALLENGER}`")
    return aliases[CHALLENGER]


def _filter_value(value: str) -> str:
    """A string constant for an MLflow search filter."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise RegistryError(f"cannot search MLflow for {value!r}: it holds both kinds of quotes")


def _search_evaluations(exp_id: str, condition: str, max_results: int):
    return _client().search_runs(
        [exp_id], filter_string=f"tags.`shadowcam.kind` = 'evaluation' and {condition}",
        order_by=["attributes.start_time DESC"], max_results=max_results)


def latest_evaluation(name: str, version: str | int, experiment: str = EVALUATION_EXPERIMENT) -> PromotionEvidence:
    """Evidence from the newest MLflow evaluation run (:func:`log_evaluation`) whose ``shadow_model`` tag is
    ``NAME:VERSION``: its ``decision`` tag, date, incumbent, and the figures it logged (:data:`EVIDENCE_METRICS`,
    any further tags such as a decision interval or labels spent; missing ones are left out). When there is none,
    ``evaluation`` is None and ``hint`` names the newest evaluation of another version of the model, if any.
    Call :func:`configure` first."""
    version = str(version)
    sid = model_version_id(name, version)
    exp = _client().get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage == "deleted":
        return PromotionEvidence(name, version, "mlflow", experiment, hint="the experiment does not exist")
    runs = _search_evaluations(exp.experiment_id, f"tags.shadow_model = {_filter_value(sid)}", 1)
    if not runs:
        others = [r for r in _search_evaluations(exp.experiment_id, f"tags.shadow_model LIKE {_filter_value(name + ':%')}", 50)
                  if r.data.tags.get("shadow_model", "").startswith(f"{name}:")]
        hint = ""
        if others:
            o = others[0]
            hint = (f"the newest evaluation of {name} there is run {o.info.run_id} of {o.data.tags['shadow_model']} "
                    f"on {_date(o.info.start_time / 1000)}, decided {o.data.tags.get('decision') or 'nothing'}")
        return PromotionEvidence(name, version, "mlflow", experiment, hint=hint)
    run = runs[0]
    tags = run.data.tags
    details: dict[str, Any] = {k: v for k, v in sorted(tags.items())
                               if k not in _EVIDENCE_SKIP_TAGS and not k.startswith("mlflow.") and v != ""}
    for key in EVIDENCE_METRICS:
        if f"overall/{key}" in run.data.metrics:
            details[key] = run.data.metrics[f"overall/{key}"]
    return PromotionEvidence(
        name, version, "mlflow", experiment, evaluation=run.info.run_id, decision=tags.get("decision") or None,
        evaluated_at=run.info.start_time / 1000 if run.info.start_time else None,
        incumbent_model=tags.get("incumbent_model") or None, details=details,
    )


def shadow_runs(runs: Sequence[dict], shadow_model: str) -> list[str]:
    """Ids of the prediction-store runs (``PredictionStore.list_runs()`` rows, oldest first) that shadowed
    ``shadow_model`` against the same incumbent as the newest of them (one model pair, as the evaluator's default
    scope); empty when no run shadowed it."""
    mine = [r for r in runs if r.get("shadow_model") == shadow_model]
    if not mine:
        return []
    incumbent = mine[-1].get("incumbent_model")
    return [r["run_id"] for r in mine if r.get("incumbent_model") == incumbent]


def store_evidence(name: str, version: str | int, where: str, runs: Sequence[dict],
                   evaluate: Callable[[list[str]], EvaluationResult]) -> PromotionEvidence:
    """Evidence recomputed from a prediction store: ``evaluate(run_ids)`` (an ``Evaluator`` over those runs) is
    called on :func:`shadow_runs` and its decision read. ``where`` names the store (no password); ``runs``: its
    ``list_runs()``."""
    version = str(version)
    sid = model_version_id(name, version)
    run_ids = shadow_runs(runs, sid)
    if not run_ids:
        seen = sorted({str(r.get("shadow_model")) for r in runs if r.get("shadow_model")})
        hint = f"its runs shadow {', '.join(seen)}" if seen else "it has no runs with a shadow"
        return PromotionEvidence(name, version, "store", where, hint=hint)
    result = evaluate(run_ids)
    details: dict[str, Any] = {"labels": result.counts.labels, "labels_used": result.counts.frames_with_truth}
    if result.paired is not None:
        p = result.paired
        details.update({"paired/n": p.n, "paired/diff": p.diff.value, "paired/interval": [p.diff.low, p.diff.high],
                        "paired/p_value": p.p_value})
    for key in ("alpha", "delta"):
        if key in result.meta.config:
            details[key] = result.meta.config[key]
    dec = result.decision
    if dec is not None:  # read by name: older decisions lack the interval fields
        low, high = getattr(dec, "low", None), getattr(dec, "high", None)
        if low is not None and high is not None:
            details["decision_interval"] = [low, high]
        for key in ("delta", "labels_spent", "more_labels", "method", "reason"):
            if getattr(dec, key, None) is not None:
                details[key] = getattr(dec, key)
    return PromotionEvidence(
        name, version, "store", where, evaluation=",".join(run_ids), decision=dec.action if dec is not None else None,
        evaluated_at=result.meta.evaluated_at, incumbent_model=result.meta.models.get("incumbent"), details=details,
    )


def check_promotion_evidence(evidence: PromotionEvidence, force: bool = False, reason: str | None = None) -> None:
    """Allow a promotion only when ``evidence`` decided promote, or when ``force`` comes with a ``reason``;
    otherwise :class:`PromotionRefused` with a one-line reason (:meth:`PromotionEvidence.refusal`)."""
    if force:
        if not (reason or "").strip():
            raise PromotionRefused("--force needs --reason TEXT: say why the evidence is overridden "
                                   "(it is recorded on the model versions)")
        return
    if not evidence.allows_promotion:
        raise PromotionRefused(evidence.refusal())


def promotion_tags(evidence: PromotionEvidence | None, forced: bool = False, reason: str | None = None) -> dict[str, str]:
    """Registry tags recording a promotion: forced or not, the reason (when given), the evidence as JSON
    (``{"decision": "none"}`` without evidence). For :func:`promote`'s ``tags``."""
    doc = evidence.to_dict() if evidence is not None else {"decision": "none"}
    tags = {TAG_PROMOTION_FORCED: "true" if forced else "false", TAG_PROMOTION_EVIDENCE: json.dumps(doc, sort_keys=True)}
    if reason and reason.strip():
        tags[TAG_PROMOTION_REASON] = reason.strip()
    return tags


def rollback_tags(reason: str | None = None) -> dict[str, str]:
    """Registry tags recording a rollback (the reason, when given). For :func:`rollback`'s ``tags``."""
    return {TAG_ROLLBACK_REASON: reason.strip()} if reason and reason.strip() else {}


def set_version_tags(name: str, version: str | int, tags: dict[str, str]) -> None:
    """Set tags on model version ``name``/``version`` (:class:`RegistryError` naming the tag when one fails)."""
    from mlflow.exceptions import MlflowException

    client = _client()
    for key, value in tags.items():
        try:
            client.set_model_version_tag(name, str(version), key, str(value))
        except MlflowException as e:
            raise RegistryError(f"cannot set tag {key!r} on model {name!r} version {version}: {e.message}") from None


def _record(name: str, event: dict[str, str], tags: dict[str, str], roles: dict[str, str | None],
            role_tag: str) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for role, version in roles.items():
        if version is None or str(version) in out:
            continue
        version_tags = {**tags, **event, role_tag: role}
        set_version_tags(name, version, version_tags)
        out[str(version)] = version_tags
    return out


def record_promotion(name: str, promoted: str, demoted: str | None, tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """Write ``tags`` plus the time and the versions involved on the promoted and the demoted version; returns
    ``{version: tags written}``."""
    event = {TAG_PROMOTED_AT: _now_iso(),
             TAG_PROMOTED_VERSION: str(promoted), TAG_DEMOTED_VERSION: str(demoted) if demoted is not None else "none"}
    return _record(name, event, tags, {"promoted": promoted, "demoted": demoted}, TAG_PROMOTION_ROLE)


def record_rollback(name: str, restored: str, demoted: str | None, tags: dict[str, str]) -> dict[str, dict[str, str]]:
    """Write ``tags`` plus the time and the versions involved on the restored champion and the demoted version;
    returns ``{version: tags written}``."""
    event = {TAG_ROLLED_BACK_AT: _now_iso(),
             TAG_RESTORED_VERSION: str(restored), TAG_ROLLED_BACK_VERSION: str(demoted) if demoted is not None else "none"}
    return _record(name, event, tags, {"restored": restored, "demoted": demoted}, TAG_ROLLBACK_ROLE)
