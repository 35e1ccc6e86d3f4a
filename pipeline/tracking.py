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

    def __init__(self, experiment: str, run_name: str, workdir: str | Path | None = None, enabled: bool = True) -> None:
        self.experiment, self.run_name, self.workdir, self.enabled = experiment, run_name, workdir, enabled
        self.run_id = ""
        self._ctx = None

    def __enter__(self) -> "TrackedRun":
        if self.enabled:
            import mlflow

            configure(self.workdir)
            exp_id = get_or_create_experiment(self.experiment, self.workdir)
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


def promote(name: str) -> dict:
    """Make the ``challenger`` the ``champion`` (see the module docstring). Returns what moved::

        {"model": name, "champion": new, "previous_champion": old or None, "challenger": None,
         "moved": ["champion: 1 -> 2", ...]}
    """
    aliases = get_aliases(name)
    if CHALLENGER not in aliases:
        raise RegistryError(f"model {name!r} has no {CHALLENGER!r} alias to promote; register a candidate with "
                            f"`shadowcam train ... --register {name} --alias {CHALLENGER}`")
    new = aliases[CHALLENGER]
    old = aliases.get(CHAMPION)
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
    return {"model": name, CHAMPION: new, PREVIOUS_CHAMPION: old, CHALLENGER: None, "moved": moved}


def rollback(name: str) -> dict:
    """Undo the last promotion: ``champion`` back to ``previous_champion``; the demoted version becomes
    ``challenger``; ``previous_champion`` is removed. Returns what moved (same shape as :func:`promote`)."""
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
    return {"model": name, CHAMPION: back, PREVIOUS_CHAMPION: None,
            CHALLENGER: demoted if demoted != back else aliases.get(CHALLENGER), "moved": moved}


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
        if m.calibration is not None:
            put(f"calibration_ece/{role}", m.calibration.ece)
        for cam, e in m.per_camera.items():
            put(f"prod_accuracy_camera/{metric_key_part(cam)}/{role}", e.value)
    for t in result.drift.p_values():
        if t.test == "softmax":
            put(f"drift/softmax_p/{t.subject}", t.p)
        elif t.test == "class_distribution":
            put("drift/class_dist_p", t.p)
        else:
            put(f"drift/image/{metric_key_part(t.subject)}/{metric_key_part(t.stat)}", t.p)
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
) -> str:
    """Log one evaluation as one MLflow run; returns its run id.

    ``results``: the per-window results (or ``[overall]``), logged as metric time series (step = window index,
    timestamp = window end); ``overall``'s figures are logged as ``overall/<key>`` (:func:`flat_metrics` keys).
    Artifacts: what ``write_report(results, overall, folder, alerts=alerts, max_gap=max_gap)`` writes
    (``pipeline.evaluation.report.write_report``: plots, evaluation.json, report.html) plus ``eval_config.json``,
    written into ``artifacts_dir`` (kept) or a temporary folder. Without ``write_report``, whatever
    ``artifacts_dir`` already holds is logged.
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
                write_report(results, overall, out, alerts=alerts, max_gap=max_gap)
            (out / "eval_config.json").write_text(json.dumps(meta.config, indent=2))
            mlflow.log_artifacts(str(out))
        return run.info.run_id
