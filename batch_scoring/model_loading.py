"""Registered models for the batch jobs (score, monitor): resolved, verified, loaded, shipped.

The load functions do all the IO -- resolve the URI in the MLflow registry,
download the artifact, refuse it when its SHA-256 differs from the one
recorded at registration, read the ONNX metadata (or the rules document) --
and return plain frozen values: :class:`LoadedModel` for an ONNX model (its
bytes broadcast to the executors once checked against the scored table's
labels), :class:`LoadedRules` for a rules detector (training/rules.py, scored
by Spark expressions, nothing to ship). ``release()`` drops the broadcast.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from batch_scoring.transforms import ScoringModel, ScoringModelError, scoring_model
from tracelake.model_io import label_names, read_metadata
from tracelake.runs import JobRun


@dataclass(frozen=True)
class RegisteredVersion:
    """Which registered model version a job uses, as recorded in its outputs' lineage."""

    uri: str
    name: str
    version: str
    run_id: str
    sha256: str
    tags: dict[str, str]

    def lineage(self) -> dict[str, str]:
        return {
            "model_uri": self.uri,
            "model_name": self.name,
            "model_version": self.version,
            "model_run_id": self.run_id,
            "model_sha256": self.sha256,
        }


@dataclass(frozen=True)
class LoadedModel(RegisteredVersion):
    """A registered ONNX model verified and broadcast: ``model`` is what the workers score with."""

    metadata: dict[str, Any]  # tracelake.model_io.read_metadata of the ONNX file
    model: ScoringModel  # its payload: the model bytes as a broadcast
    size_bytes: int

    def release(self) -> None:
        """Drop the broadcast model bytes from the executors."""
        payload = self.model.payload
        if hasattr(payload, "unpersist"):
            payload.unpersist()


@dataclass(frozen=True)
class RulesFlags:
    """What :func:`batch_scoring.transforms.flags_and_score` needs of a model: labels and thresholds."""

    label_names: tuple[str, ...]
    thresholds: tuple[float, ...]


@dataclass(frozen=True)
class LoadedRules(RegisteredVersion):
    """A registered rules detector (training/rules.py): scored by Spark expressions, no model file to ship."""

    detector: Any  # training.rules.RulesDetector
    model: RulesFlags

    def release(self) -> None:
        """Nothing is broadcast."""


def load_model(run: JobRun, uri: str) -> LoadedModel | LoadedRules:
    """The registered version behind ``uri``: ONNX (the sequence model) or a rules detector."""
    from tracelake.model_registry import FORMAT_TAG, get_version, parse_model_uri
    from tracelake.tracking import configure_mlflow
    from training.rules import FORMAT as RULES_FORMAT

    configure_mlflow(run.settings)
    name, alias, number = parse_model_uri(uri)
    if (get_version(name, alias=alias, version=number).tags or {}).get(FORMAT_TAG) == RULES_FORMAT:
        return load_rules(run, uri)
    return load_onnx_model(run, uri)


def load_onnx_model(run: JobRun, uri: str) -> LoadedModel:
    """Resolve ``uri``, check its checksum and metadata against the scored table, broadcast its bytes."""
    from tracelake.model_registry import fetch_onnx_model
    from tracelake.tracking import configure_mlflow

    configure_mlflow(run.settings)
    with tempfile.TemporaryDirectory(prefix="tracelake-model-") as folder:
        resolved = fetch_onnx_model(uri, folder)  # raises ModelChecksumError on a changed artifact
        data = Path(resolved.path).read_bytes()
        metadata = read_metadata(resolved.path)
    settings = run.settings.scoring
    checked, warnings = scoring_model(
        metadata,
        data,
        resolved.sha256,
        label_names=label_names(),
        default_threshold=settings.default_threshold,
        intra_op_threads=settings.intra_op_threads,
        inter_op_threads=settings.inter_op_threads,
    )
    for warning in warnings:
        run.log.warning(warning, extra={"model": resolved.name, "model_version": resolved.version})
    run.log.event(
        "model resolved",
        model_uri=uri,
        model=resolved.name,
        model_version=resolved.version,
        model_run_id=resolved.run_id,
        sha256=resolved.sha256,
        bytes=len(data),
    )
    return LoadedModel(
        uri=uri,
        name=resolved.name,
        version=resolved.version,
        run_id=resolved.run_id,
        sha256=resolved.sha256,
        tags=dict(resolved.tags),
        metadata=metadata,
        model=replace(checked, payload=run.spark.sparkContext.broadcast(data)),
        size_bytes=len(data),
    )


def load_rules(run: JobRun, uri: str) -> LoadedRules:
    """Resolve ``uri`` to a rules detector, check its checksum and that it covers the scored table's labels."""
    import mlflow

    from tracelake.model_registry import (
        CHECKSUM_TAG,
        ModelChecksumError,
        get_version,
        parse_model_uri,
        sha256_of,
    )
    from tracelake.tracking import configure_mlflow
    from training.rules import RulesDetector

    configure_mlflow(run.settings)
    name, alias, number = parse_model_uri(uri)
    version = get_version(name, alias=alias, version=number)
    with tempfile.TemporaryDirectory(prefix="tracelake-rules-") as folder:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=folder))
        document = local / "rules.json"
        expected, actual = (version.tags or {}).get(CHECKSUM_TAG), sha256_of(document)
        if expected != actual:
            raise ModelChecksumError(
                f"{name} version {version.version}: rules.json has SHA-256 {actual}, "
                f"the registry recorded {expected}; it was changed after registration"
            )
        detector = RulesDetector.from_json(document.read_text())
    labels = label_names()
    if sorted(detector.labels) != sorted(labels):
        raise ScoringModelError(
            f"rules detector {name} v{version.version} covers {detector.labels}, "
            f"the scored table needs {list(labels)}"
        )
    run.log.event(
        "model resolved",
        model_uri=uri,
        model=name,
        model_version=str(version.version),
        kind="rules",
        variants=dict(detector.variants),
    )
    return LoadedRules(
        uri=uri,
        name=name,
        version=str(version.version),
        run_id=version.run_id,
        sha256=actual,
        tags=dict(version.tags or {}),
        detector=detector,
        model=RulesFlags(labels, tuple(detector.thresholds[label] for label in labels)),
    )
