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

import logging
import os
import re
from pathlib import Path

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
    import mlflow
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
