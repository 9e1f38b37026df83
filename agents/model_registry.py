"""The MLflow model registry, in one place: where it is, what the policies are registered
as, which version an alias names, and fetching a registered artifact.

Where: ``--tracking-uri`` where a command takes one, else ``MLFLOW_TRACKING_URI``, else
``mlflow.db`` (SQLite) in the working directory; the registry is always the tracking
store. Every user of the registry (training, promotion, the service's alias watch,
``models:/`` specs) finds it through :func:`tracking_uri`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from agents.learned.artifact import META_FILE, Artifact, load_artifact

#: The registered model every trained policy is a version of.
MODEL_NAME = "dualpath-scheduler"
#: The SQLite file the store defaults to, in the working directory.
DEFAULT_DB = "mlflow.db"
#: Quiet defaults, set before MLflow is imported because it reads some at import: no usage
#: telemetry from an embedded local store, no run URLs printed on stdout (it must hold only
#: a command's --json object), no progress bars for tiny downloads. A user's own setting
#: of any of them wins.
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}

_MODEL_URI = re.compile(r"^models:/[^/@]+(@[^/@]+|/[^/@]+)$")


def tracking_uri(explicit: str | None = None) -> str:
    """The store: ``explicit``, else ``MLFLOW_TRACKING_URI``, else ./mlflow.db."""
    if explicit:
        return explicit
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB}"


def quiet() -> None:
    """Set :data:`QUIET_ENV` where the user has not (before MLflow is imported)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def alias_version(alias: str, uri: str | None = None, name: str = MODEL_NAME) -> int | None:
    """The version ``alias`` names now in the store at ``uri`` (default :func:`tracking_uri`);
    None where there is no such alias or model yet."""
    quiet()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    store = tracking_uri(uri)
    # The registry named explicitly too: it would default to whatever this process
    # last set globally, not to ``store``.
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def load_registered(uri: str) -> Artifact:
    """The artifact an MLflow model URI names (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``),
    downloaded from the store :func:`tracking_uri` names; ValueError naming ``uri`` if it
    cannot be found or holds no artifact."""
    if not _MODEL_URI.match(uri):
        raise ValueError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    quiet()
    import mlflow  # lazily: seconds to import, and only registry users need it
    from mlflow.exceptions import MlflowException

    tmp = tempfile.mkdtemp(prefix="dualpath-policy-")
    try:
        try:
            store = tracking_uri()
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=tmp, tracking_uri=store, registry_uri=store))
        except (MlflowException, OSError) as err:
            raise ValueError(f"{uri}: cannot download it ({_first_line(err)})") from err
        # The network is read into memory, so the download can go once loaded.
        return replace(load_artifact(_find_artifact(local, uri)), source=uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _find_artifact(root: Path, uri: str) -> Path:
    """The artifact directory in a download: ``root`` itself or one folder down."""
    if (root / META_FILE).is_file():
        return root
    found = [d for d in sorted(root.iterdir()) if d.is_dir() and (d / META_FILE).is_file()]
    if len(found) != 1:
        what = "no" if not found else "more than one"
        raise ValueError(f"{uri}: {what} {META_FILE} at its top or one folder down")
    return found[0]


