"""MLflow tracking and registry set-up.

Embedded default: a SQLite backend and a local artifact folder, both under
``<lake>/_mlflow``; any tracking server by config (``mlflow.tracking_uri``,
e.g. ``http://mlflow:5000``), with an optional separate registry URI.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    else:
        folder = settings.lake_path / MLFLOW_DIR
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        artifacts = (folder / "artifacts").as_uri()
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
    if target.tracking_uri.startswith("sqlite:///"):
        Path(target.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(target.tracking_uri)
    mlflow.set_registry_uri(target.registry_uri)
    if mlflow.get_experiment_by_name(target.experiment) is None:
        mlflow.create_experiment(target.experiment, artifact_location=target.artifact_location)
    mlflow.set_experiment(target.experiment)
    return target
