"""The model registry contract shared by training (registers) and scoring (resolves).

A registered ONNX model version is a folder of run artifacts (``<artifact
path>/model.onnx`` plus whatever files travel with it) registered under a
model name, with model-version tags:

- ``onnx_sha256``: the SHA-256 of ``model.onnx`` at registration; scoring
  refuses a file whose checksum differs (a swapped or corrupted artifact);
- ``format``: ``onnx`` (or the flavour of a non-ONNX model, e.g. the MLlib baseline);
- whatever the caller adds (training set name and Delta version, metrics).

The feature order, label names and thresholds travel inside the ONNX file's
metadata (see ``training.onnx_export``), so the file alone is enough to score.

Aliases: a new version gets ``challenger``; ``champion`` is moved only by the
promotion gate (``tracelake promote``) and by ``tracelake rollback``, through
:class:`AliasChanges` and :func:`roll_back_champion` here. Neither needs Spark:
alias moves and their tags are registry calls only. The tags they leave:
``promotion_decision`` (why the gate promoted or refused), ``previous_champion``
(on a promoted version: the champion it replaced, where rollback goes back to)
and ``rolled_back`` (on a version rolled back from; the gate skips it).

A run that registers several models does it inside :func:`atomic_registration`:
the versions are created as the models finish, but their aliases move only when
the whole run succeeds; a failed run deletes the versions it created, so the
registry shows either all of a run's models or none.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracelake.errors import TracelakeError

if TYPE_CHECKING:
    from tracelake.config import TrainingSettings

MODEL_FILE = "model.onnx"
CHECKSUM_TAG = "onnx_sha256"
FORMAT_TAG = "format"
CHALLENGER = "challenger"
CHAMPION = "champion"
# A version trained on a set built with --allow-immature-labels ("true"): never promoted.
IMMATURE_TAG = "tracelake.immature_labels"
PREVIOUS_CHAMPION_TAG = "previous_champion"
DECISION_TAG = "promotion_decision"
ROLLED_BACK_TAG = "rolled_back"
# The detectors and how settings name their registered models; the gate and rollback default to the two
# learned ones.
DETECTORS = ("lstm", "baseline", "rules")
DEFAULT_DETECTORS = ("lstm", "baseline")

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w-]+)|/(?P<version>\d+))$")


class ModelResolutionError(TracelakeError, LookupError):
    """A model URI names no registered model version."""


class ModelChecksumError(TracelakeError, ValueError):
    """The downloaded model file is not the one that was registered."""


class DetectorChoiceError(TracelakeError, ValueError):
    """``--models`` names a detector that has no registered model."""


class RollbackError(TracelakeError, RuntimeError):
    """There is nothing to roll back to."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, alias, version)."""
    match = _MODEL_URI.match(uri.strip())
    if not match:
        raise ModelResolutionError(
            f"model URI {uri!r} is not of the form models:/<name>@<alias> or models:/<name>/<version>"
        )
    return match["name"], match["alias"], match["version"]


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


@dataclass
class RegistrationBatch:
    """Versions created by one run, and the aliases they get once the run succeeds."""

    created: list[tuple[str, str]] = field(default_factory=list)  # (model name, version)
    aliases: list[tuple[str, str, str]] = field(default_factory=list)  # (model name, alias, version)

    def commit(self) -> None:
        client = _client()
        for name, alias, version in self.aliases:
            client.set_registered_model_alias(name, alias, version)

    def rollback(self) -> list[tuple[str, str]]:
        """Delete every version this batch created; returns the ones that could not be deleted."""
        client = _client()
        left = []
        for name, version in reversed(self.created):
            try:
                client.delete_model_version(name, version)
            except Exception:
                left.append((name, version))
        return left


_BATCH: ContextVar[RegistrationBatch | None] = ContextVar("tracelake_registration_batch", default=None)


@contextmanager
def atomic_registration() -> Iterator[RegistrationBatch]:
    """Register all-or-nothing: aliases move when the block succeeds; on any error the versions
    registered inside it are deleted again (and the error propagates)."""
    batch = RegistrationBatch()
    token = _BATCH.set(batch)
    try:
        yield batch
    except BaseException:
        _BATCH.reset(token)
        left = batch.rollback()
        if left:
            import logging

            logging.getLogger("tracelake.model_registry").error(
                "could not unregister the failed run's model versions", extra={"versions": left}
            )
        raise
    _BATCH.reset(token)
    batch.commit()


def ensure_registered_model(name: str, description: str = "") -> None:
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description or None)


def register_artifacts(
    name: str,
    run_id: str,
    artifact_path: str,
    *,
    tags: dict[str, str] | None = None,
    alias: str | None = CHALLENGER,
    description: str = "",
) -> Any:
    """Register the run's artifact folder as a new version of ``name`` and give it ``alias``.

    The caller has already logged the folder (``mlflow.log_artifacts``) in run ``run_id``.
    Returns the MLflow ``ModelVersion``.
    """
    client = _client()
    ensure_registered_model(name, description)
    version = client.create_model_version(
        name=name,
        source=f"runs:/{run_id}/{artifact_path}",
        run_id=run_id,
        tags={key: str(value) for key, value in (tags or {}).items()},
    )
    batch = _BATCH.get()
    if batch is not None:
        batch.created.append((name, str(version.version)))
        if alias:
            batch.aliases.append((name, alias, str(version.version)))
    elif alias:
        client.set_registered_model_alias(name, alias, version.version)
    return client.get_model_version(name, version.version)


def register_onnx_model(
    name: str,
    onnx_path: str | os.PathLike[str],
    *,
    run_id: str,
    artifact_path: str = "model",
    extra_files: list[str | os.PathLike[str]] | None = None,
    tags: dict[str, str] | None = None,
    alias: str | None = CHALLENGER,
) -> Any:
    """Log ``onnx_path`` (as ``<artifact_path>/model.onnx``) in run ``run_id`` and register it.

    The checksum tag is computed here from the very bytes that were logged.
    """
    import tempfile

    client = _client()
    with tempfile.TemporaryDirectory() as staging:
        folder = Path(staging)
        target = folder / MODEL_FILE
        target.write_bytes(Path(onnx_path).read_bytes())
        for extra in extra_files or []:
            (folder / Path(extra).name).write_bytes(Path(extra).read_bytes())
        checksum = sha256_of(target)
        client.log_artifacts(run_id, str(folder), artifact_path)
    all_tags = {FORMAT_TAG: "onnx", CHECKSUM_TAG: checksum, **(tags or {})}
    return register_artifacts(name, run_id, artifact_path, tags=all_tags, alias=alias)


def get_version(name: str, *, alias: str | None = None, version: str | None = None) -> Any:
    """The ModelVersion for an alias or a version number, with a clear error when there is none."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        if alias is not None:
            return client.get_model_version_by_alias(name, alias)
        return client.get_model_version(name, str(version))
    except MlflowException as error:
        what = f"alias {alias!r}" if alias is not None else f"version {version}"
        raise ModelResolutionError(
            f"registered model {name!r} has no {what} in the registry at {_registry_uri()} "
            f"({error.error_code}); train and promote a model first (tracelake train, tracelake promote)"
        ) from None


def _registry_uri() -> str:
    import mlflow

    return mlflow.get_registry_uri()


@dataclass(frozen=True)
class ResolvedOnnxModel:
    """A registered ONNX model version downloaded to a local folder and verified."""

    uri: str
    name: str
    version: str
    run_id: str
    path: Path
    sha256: str
    tags: dict[str, str] = field(default_factory=dict)


def fetch_onnx_model(uri: str, dest_dir: str | os.PathLike[str]) -> ResolvedOnnxModel:
    """Resolve ``uri``, download its artifacts into ``dest_dir`` and verify the checksum."""
    import mlflow

    name, alias, version_number = parse_model_uri(uri)
    version = get_version(name, alias=alias, version=version_number)
    tags = dict(version.tags or {})
    expected = tags.get(CHECKSUM_TAG)
    if not expected:
        raise ModelChecksumError(
            f"{name} version {version.version} has no {CHECKSUM_TAG} tag: it was not registered as an "
            "ONNX model by tracelake and cannot be scored"
        )
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, dst_path=str(dest_dir)))
    model_file = local / MODEL_FILE if local.is_dir() else local
    if not model_file.is_file():
        raise ModelResolutionError(
            f"{name} version {version.version} ({version.source}) holds no {MODEL_FILE}"
        )
    actual = sha256_of(model_file)
    if actual != expected:
        raise ModelChecksumError(
            f"{name} version {version.version}: {model_file.name} has SHA-256 {actual[:16]}…, the registry "
            f"recorded {expected[:16]}…; the artifact was changed after registration — refusing to score with it"
        )
    return ResolvedOnnxModel(
        uri=uri,
        name=name,
        version=str(version.version),
        run_id=version.run_id or "",
        path=model_file,
        sha256=actual,
        tags=tags,
    )


# --- champion moves: the promotion gate and rollback ---------------------------------------------


def registered_model_names(training: TrainingSettings, detectors: Sequence[str] | None) -> dict[str, str]:
    """detector -> registered model name for ``detectors`` (default: :data:`DEFAULT_DETECTORS`)."""
    chosen = list(detectors or DEFAULT_DETECTORS)
    unknown = [d for d in chosen if d not in DETECTORS]
    if unknown or not chosen:
        raise DetectorChoiceError(f"--models {','.join(chosen)!r}: choose from {', '.join(DETECTORS)}")
    names = {
        "lstm": training.lstm_model_name,
        "baseline": training.baseline_model_name,
        "rules": training.rules_model_name,
    }
    return {detector: names[detector] for detector in chosen}


def decision_time() -> str:
    """The UTC time that prefixes a decision tag (seconds)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def alias_version(name: str, alias: str) -> Any | None:
    """The ModelVersion ``alias`` points at, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


class AliasChanges:
    """Alias moves and version tags collected first and applied together (:meth:`apply`), so that a
    command deciding for several models moves nothing until every decision is made."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def set_registered_model_alias(self, name: str, alias: str, version: str | int) -> None:
        self.calls.append(("set_registered_model_alias", (name, alias, version)))

    def set_model_version_tag(self, name: str, version: str | int, key: str, value: str) -> None:
        self.calls.append(("set_model_version_tag", (name, version, key, value)))

    def apply(self) -> None:
        client = _client()
        for method, args in self.calls:
            getattr(client, method)(*args)
        self.calls.clear()


def roll_back_champion(name: str, to_version: str | None = None) -> dict[str, str]:
    """Move ``name``'s champion alias to ``to_version`` or, without it, to the previous champion recorded
    on the current one; tag the version rolled back from. Returns {model, from_version, champion}."""
    client = _client()
    current = get_version(name, alias=CHAMPION)
    target = to_version or (current.tags or {}).get(PREVIOUS_CHAMPION_TAG)
    if not target:
        raise RollbackError(
            f"{name}: champion version {current.version} records no previous champion (it was the "
            "first one); pass --to-version N to choose the version to go back to"
        )
    previous = get_version(name, version=str(target))  # a clear error if it does not exist
    if str(previous.version) == str(current.version):
        raise RollbackError(f"{name}: version {target} is already the champion")
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.set_model_version_tag(
        name, current.version, ROLLED_BACK_TAG, f"{decision_time()} to version {previous.version}"
    )
    return {"model": name, "from_version": str(current.version), "champion": str(previous.version)}
