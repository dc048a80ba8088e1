"""What the training job records in MLflow: the parent run, one nested run per detector, their
parameters, metrics, JSON artifacts and the comparison of the detectors.

Every detector's run carries the tag ``tracelake.detector`` and the training
set's tags; its metrics are the evaluation report's flat metrics (only the
finite ones: an undefined metric is left out, not logged as NaN) plus the
detector's own figures.
"""

from __future__ import annotations

import json
import math
import platform
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from tracelake.config import TrainingSettings
from training.evaluation import EvaluationReport

DETECTOR_TAG = "tracelake.detector"
# The packages whose versions a training run records.
ENVIRONMENT_PACKAGES = (
    "torch",
    "pyspark",
    "delta-spark",
    "mlflow",
    "petastorm",
    "pyarrow",
    "numpy",
    "onnx",
    "onnxruntime",
)


def environment() -> dict[str, str]:
    """Interpreter, platform and the versions of the packages training depends on."""
    info = {"python": platform.python_version(), "platform": platform.platform()}
    for package in ENVIRONMENT_PACKAGES:
        try:
            info[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def pip_freeze() -> str:
    """Every installed distribution as ``name==version`` lines, sorted."""
    return (
        "\n".join(
            sorted(
                f"{d.metadata['Name']}=={d.version}"
                for d in importlib_metadata.distributions()
                if d.metadata["Name"]
            )
        )
        + "\n"
    )


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(float(value))


def finite_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries MLflow can store (finite numbers), as floats."""
    return {key: float(value) for key, value in values.items() if finite(value)}


def flat_params(settings: TrainingSettings) -> dict[str, Any]:
    """The training settings as MLflow parameters (lists and mappings as JSON)."""
    return {
        k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
        for k, v in settings.model_dump(mode="json").items()
    }


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str, allow_nan=True))


def log_json(obj: Any, artifact_path: str, filename: str) -> None:
    """``obj`` as the active run's artifact ``<artifact_path>/<filename>``."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / filename
        write_json(target, obj)
        mlflow.log_artifact(str(target), artifact_path)


@contextmanager
def parent_run(
    training_set: str, *, version: int | None, models: Sequence[str], tags: Mapping[str, str]
) -> Iterator[Any]:
    """The run of one training invocation: the set's tags, its name and version, the environment."""
    import mlflow

    with mlflow.start_run(run_name=f"train {training_set}") as run:
        mlflow.set_tags({**tags, "models": ",".join(models)})
        mlflow.log_params(
            {
                "training_set": training_set,
                "training_set_version": version,
                "models": ",".join(models),
                **{f"env.{k}": v for k, v in environment().items()},
            }
        )
        mlflow.log_text(pip_freeze(), "environment/requirements.txt")
        yield run


@contextmanager
def detector_run(detector: str, training_set: str, tags: Mapping[str, str]) -> Iterator[Any]:
    """The nested run of one detector, tagged with the set's tags and ``tracelake.detector``."""
    import mlflow

    with mlflow.start_run(run_name=f"{detector} {training_set}", nested=True) as run:
        mlflow.set_tags({**tags, "model": detector, DETECTOR_TAG: detector})
        yield run


def log_evaluation(report: EvaluationReport, **extra: Any) -> None:
    """The report's flat test metrics and ``extra`` figures (the finite ones) in the active run."""
    import mlflow

    mlflow.log_metrics(finite_metrics({**report.flat_metrics(), **extra}))


def log_history(history: Sequence[Mapping[str, Any]]) -> None:
    """Per-epoch figures of the sequence model, each at its epoch as the step."""
    import mlflow

    for record in history:
        mlflow.log_metrics(
            finite_metrics({k: v for k, v in record.items() if k != "epoch"}), step=int(record["epoch"])
        )


def log_comparison(table: str, reports: Mapping[str, EvaluationReport]) -> None:
    """The comparison table and each detector's macro PR-AUC in the parent run."""
    import mlflow

    mlflow.log_text(table + "\n", "comparison/test_metrics.md")
    for name, report in reports.items():
        mlflow.log_metric(f"{name}_test_macro_pr_auc", report.macro_value("pr_auc"))
