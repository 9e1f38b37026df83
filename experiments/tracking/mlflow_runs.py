"""MLflow tracking and the model registry of trained scheduler policies.

Where runs go: ``--tracking-uri`` if given, else ``MLFLOW_TRACKING_URI``, else the
embedded default, a SQLite store (through SQLAlchemy) at ``./mlflow.db`` with
artifacts in ``./mlartifacts``. Experiments created on a database store get their
artifact folder set explicitly (``mlartifacts`` beside a SQLite file), because
MLflow would otherwise scatter artifacts into ``./mlruns`` of whatever directory
the process happened to start in.

A trained policy is a directory of opaque files (an ONNX graph and its JSON
metadata). It is logged as plain run artifacts and registered as a version of
:data:`MODEL_NAME` whose source is that artifact folder. MLflow 3's
``mlflow.register_model("runs:/...")`` only accepts LoggedModels, so versions are
created with ``MlflowClient.create_model_version`` instead. Aliases
(``challenger``, ``champion``) name versions; ``models:/NAME@ALIAS`` and
``models:/NAME/VERSION`` resolve back to a local copy of the files.

MLflow is imported on first use: commands that never track should not pay for it.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import logging
import numbers
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agents.model_registry import MODEL_NAME, quiet, tracking_uri

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import ActiveRun, MlflowClient
    from mlflow.entities import Run

DEFAULT_EXPERIMENT = "dualpath"
DEFAULT_ARTIFACTS = "mlartifacts"
POLICY_ARTIFACT_PATH = "policy"

# MLflow's limits (mlflow.utils.validation): it refuses longer keys and values, so we cut.
_MAX_PARAM_KEY = 250
_MAX_PARAM_VALUE = 6000

# A database store that MLflow reaches through SQLAlchemy: it has no artifact
# location of its own, so we give experiments one.
_DB_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")

# INFO chatter on every new database: schema creation and alembic migrations.
_NOISY_LOGGERS = ("mlflow.store.db.utils", "mlflow.store.model_registry.abstract_store",
                  "alembic", "alembic.runtime.migration")

_state: dict[str, str] = {}  # the URI and experiment setup() configured, once it has run

# At import, so that the settings are in place whenever this module is imported
# before MLflow; _mlflow() repeats it in case something cleared them since.
quiet()


def _mlflow() -> ModuleType:
    quiet()
    import mlflow

    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def _client() -> MlflowClient:
    _ensure_setup()
    return _mlflow().MlflowClient()


def _sqlite_file(uri: str) -> Path | None:
    m = re.match(r"^sqlite(?:\+\w+)?:///(?P<path>[^?]*)", uri)
    if m is None or m["path"] in ("", ":memory:"):
        return None
    return Path(m["path"]).resolve()  # a relative path is relative to the cwd, as in SQLAlchemy


def artifact_location(uri: str) -> str | None:
    """Artifact folder for experiments created on ``uri``; None lets the server choose.

    A SQLite file store keeps artifacts in ``mlartifacts`` beside the file; other
    database stores in ``./mlartifacts``; a tracking server manages its own.
    """
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in _DB_SCHEMES:
        return None
    db_file = _sqlite_file(uri)
    root = db_file.parent if db_file is not None else Path.cwd().resolve()
    return (root / DEFAULT_ARTIFACTS).as_uri()


def setup(explicit_uri: str | None = None, experiment: str = DEFAULT_EXPERIMENT) -> None:
    """Point tracking and the registry at one store and make ``experiment`` active.

    Idempotent; safe when several processes create the experiment at once.
    """
    mlflow = _mlflow()
    uri = tracking_uri(explicit_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    with _store_lock(uri):
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(experiment)  # creates a new store's schema
    if exp is None:
        try:
            exp_id = client.create_experiment(experiment, artifact_location=artifact_location(uri))
        except mlflow.exceptions.MlflowException as e:
            if e.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp_id = client.get_experiment_by_name(experiment).experiment_id
    else:
        exp_id = exp.experiment_id
    mlflow.set_experiment(experiment_id=exp_id)
    _state.update(uri=uri, experiment=experiment)


@contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Serialise first use of a SQLite store across processes: two processes creating
    its schema at once break MLflow's migrations (seen with parallel training runs)."""
    db = _sqlite_file(uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _ensure_setup() -> None:
    if not _state:
        setup()


# ---------------------------------------------------------------- runs


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as dotted keys; values as strings (lists as JSON) within MLflow limits."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, prefix=f"{name}."))
            continue
        text = json.dumps(value, default=str) if isinstance(value, list | tuple) else str(value)
        out[name[:_MAX_PARAM_KEY]] = text[:_MAX_PARAM_VALUE]
    return out


@contextmanager
def run(name: str, config: Mapping[str, Any],
        tags: Mapping[str, str] | None = None) -> Iterator[ActiveRun]:
    """Start a run: config as flattened params and as ``config.json``; yields the run.

    Nested under the active run if there is one (a sweep's trials under the sweep).
    The run ends FINISHED, or FAILED if the body raises.
    """
    _ensure_setup()
    mlflow = _mlflow()
    nested = mlflow.active_run() is not None
    with mlflow.start_run(run_name=name, tags=dict(tags or {}), nested=nested) as active:
        params = flatten(config)
        if params:
            mlflow.log_params(params)
        mlflow.log_text(json.dumps(config, indent=2, default=str), "config.json")
        yield active


def create_run(name: str, config: Mapping[str, Any],
               tags: Mapping[str, str] | None = None) -> str:
    """Create a run without making it active (its id can be handed to workers that train
    while it waits); log into it later with :func:`resume`, end it with :func:`end_run`."""
    _ensure_setup()
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name(_state["experiment"])
    run = client.create_run(experiment.experiment_id, run_name=name, tags=dict(tags or {}))
    run_id = str(run.info.run_id)
    for key, value in flatten(config).items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, json.dumps(config, indent=2, default=str), "config.json")
    return run_id


@contextmanager
def resume(run_id: str) -> Iterator[ActiveRun]:
    """Make a created run active; it ends FINISHED, or FAILED if the body raises."""
    _ensure_setup()
    with _mlflow().start_run(run_id=run_id) as active:
        yield active


def end_run(run_id: str, status: str = "FINISHED") -> None:
    _mlflow().MlflowClient().set_terminated(run_id, status)


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log the real-valued entries of ``metrics`` (bools as 0/1); others are skipped."""
    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, numbers.Real)}
    if numeric:
        _mlflow().log_metrics(numeric, step=step)


def log_figure(fig: Figure, name: str) -> None:
    """Log a matplotlib figure as a PNG artifact (``.png`` added when missing)."""
    _mlflow().log_figure(fig, name if name.lower().endswith(".png") else f"{name}.png")


def log_artifact_dir(path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
    _mlflow().log_artifacts(str(path), artifact_path)


def _csv(rows: list[dict[str, Any]]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def log_table(rows: list[dict[str, Any]], name: str) -> None:
    """Log rows as ``NAME.json`` and ``NAME.csv`` (columns in first-seen order)."""
    mlflow = _mlflow()
    mlflow.log_text(json.dumps(rows, indent=2, default=str), f"{name}.json")
    mlflow.log_text(_csv(rows), f"{name}.csv")


# ---------------------------------------------------------------- registry


def _run_id(run_or_id: ActiveRun | Run | str) -> str:
    return run_or_id if isinstance(run_or_id, str) else run_or_id.info.run_id


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.create_registered_model(name)
    except _mlflow().exceptions.MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def register_policy(local_dir: str | os.PathLike[str], run: ActiveRun | Run | str,
                    alias: str | None = "challenger", *, name: str = MODEL_NAME) -> int:
    """Log the files of ``local_dir`` under ``run`` and register them as a new version.

    The directory is logged as the run's ``policy/`` artifacts; the new version of
    ``name`` points at them, and ``alias`` (if not None) is moved to it. Returns
    the version number.
    """
    src = Path(local_dir)
    if not src.is_dir() or not any(src.iterdir()):
        raise ValueError(f"{src}: not a directory of policy files")
    client = _client()
    run_id = _run_id(run)
    client.log_artifacts(run_id, str(src), POLICY_ARTIFACT_PATH)
    source = f"{client.get_run(run_id).info.artifact_uri}/{POLICY_ARTIFACT_PATH}"
    _ensure_registered_model(client, name)
    mv = client.create_model_version(name, source=source, run_id=run_id)
    version = int(mv.version)
    if alias is not None:
        set_alias(alias, version, name=name)
    return version


def set_alias(alias: str, version: int, *, name: str = MODEL_NAME) -> None:
    """Point ``alias`` at ``version`` of ``name`` (moving it if it named another)."""
    _client().set_registered_model_alias(name, alias, str(version))


def get_alias_version(alias: str, *, name: str = MODEL_NAME) -> int | None:
    """The version ``alias`` names, or None when the alias or the model does not exist."""
    client = _client()
    try:
        model = client.get_registered_model(name)
    except _mlflow().exceptions.MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = model.aliases.get(alias)
    return None if version is None else int(version)


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def _resolve_version(uri: str) -> tuple[str, int]:
    m = _MODEL_URI.match(uri)
    if m is None:
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    name = m["name"]
    if m["alias"] is not None:
        version = get_alias_version(m["alias"], name=name)
        if version is None:
            raise LookupError(f"{uri}: no registered model {name!r} with alias {m['alias']!r}")
        return name, version
    return name, int(m["version"])


def model_version(uri: str) -> int:
    """The version a ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` URI names now."""
    _ensure_setup()
    return _resolve_version(uri)[1]


def download_model(uri: str, dst: str | os.PathLike[str] | None = None) -> Path:
    """Copy the files of a registered version into ``dst`` (a new temporary folder if None).

    ``uri`` is ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``. Raises
    ``ValueError`` for another form and ``LookupError`` naming ``uri`` when the
    model, alias or version does not exist.
    """
    name, version = _resolve_version(uri)
    client = _client()
    mlflow = _mlflow()
    try:
        source = client.get_model_version_download_uri(name, str(version))
    except mlflow.exceptions.MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(f"{uri}: {e.message}") from e
        raise
    # Always a copy the caller owns: with a local artifact store MLflow would
    # otherwise hand back the registry's own folder when no destination is given.
    out = Path(tempfile.mkdtemp(prefix="dualpath-model-") if dst is None else dst)
    out.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(out)))
