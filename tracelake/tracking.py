"""MLflow tracking and registry set-up.

Embedded default: a SQLite backend and a local artifact folder, both under
``<lake>/_mlflow``; any tracking server by config (``mlflow.tracking_uri``,
e.g. ``http://mlflow:5000``), with an optional separate registry URI.

A lake on object storage keeps the artifacts (model files, evaluation reports,
plots) beside it, under ``<lake>/_mlflow/artifacts``; a SQLite file cannot live
there, so without a tracking server the run and registry database is a file of
this machine (``~/.cache/tracelake/mlflow/<lake>``). Jobs on several machines
need ``mlflow.tracking_uri`` pointing at one server.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from tracelake import storage
from tracelake.config import Settings

MLFLOW_DIR = "_mlflow"


@dataclass(frozen=True)
class TrackingTarget:
    tracking_uri: str
    registry_uri: str
    experiment: str
    artifact_location: str | None


def tracking_target(settings: Settings) -> TrackingTarget:
    """Where runs and models go for these settings (no side effects)."""
    if settings.mlflow.tracking_uri:
        uri = settings.mlflow.tracking_uri
        artifacts = None  # the server decides
    elif storage.is_local(settings.lake_uri):
        folder = settings.lake_path / MLFLOW_DIR
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        artifacts = (folder / "artifacts").as_uri()
    else:
        key = hashlib.sha256(settings.lake_uri.encode()).hexdigest()[:16]
        uri = f"sqlite:///{Path.home() / '.cache' / 'tracelake' / 'mlflow' / key / 'mlflow.db'}"
        artifacts = storage.arrow_uri(storage.join(settings.lake_uri, MLFLOW_DIR, "artifacts"))
    return TrackingTarget(
        tracking_uri=uri,
        registry_uri=settings.mlflow.registry_uri or uri,
        experiment=settings.mlflow.experiment,
        artifact_location=artifacts,
    )


def configure_mlflow(settings: Settings) -> TrackingTarget:
    """Point the mlflow client at the configured store and select the experiment."""
    import mlflow

    target = tracking_target(settings)
    store = settings.storage.object_store()
    if store.endpoint:  # MLflow's S3 artifact client (boto3) reads its endpoint from here
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", store.endpoint)
    if target.tracking_uri.startswith("sqlite:///"):
        Path(target.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.registry_uri)
    if mlflow.get_experiment_by_name(target.experiment) is None:
        mlflow.create_experiment(target.experiment, artifact_location=target.artifact_location)
    mlflow.set_experiment(target.experiment)
    return target
