"""Register an ONNX file, resolve it by alias and version, refuse a changed artifact."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from tracelake.model_registry import (
    CHAMPION,
    ModelChecksumError,
    ModelResolutionError,
    fetch_onnx_model,
    parse_model_uri,
    register_onnx_model,
)
from tracelake.tracking import configure_mlflow


@pytest.fixture()
def registry(test_settings, tmp_path):
    settings = test_settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    configure_mlflow(settings)
    yield settings
    mlflow.set_tracking_uri(None)


def _register(tmp_path: Path, payload: bytes) -> object:
    model = tmp_path / "m.onnx"
    model.write_bytes(payload)
    with mlflow.start_run() as run:
        return register_onnx_model(
            "tracelake-test", model, run_id=run.info.run_id, tags={"training_set": "demo"}
        )


def test_parse_model_uri():
    assert parse_model_uri("models:/m@champion") == ("m", "champion", None)
    assert parse_model_uri("models:/m/3") == ("m", None, "3")
    with pytest.raises(ModelResolutionError, match="models:/<name>@<alias>"):
        parse_model_uri("runs:/abc/model")


def test_register_then_fetch_by_alias_and_version(registry, tmp_path):
    first = _register(tmp_path, b"first model")
    second = _register(tmp_path, b"second model")
    assert (str(first.version), str(second.version)) == ("1", "2")
    assert second.aliases == ["challenger"]
    mlflow.MlflowClient().set_registered_model_alias("tracelake-test", CHAMPION, "1")

    champion = fetch_onnx_model("models:/tracelake-test@champion", tmp_path / "a")
    assert (champion.version, champion.path.read_bytes()) == ("1", b"first model")
    assert champion.tags["training_set"] == "demo" and champion.run_id == first.run_id
    assert fetch_onnx_model("models:/tracelake-test/2", tmp_path / "b").path.read_bytes() == b"second model"


def test_changed_artifact_is_refused(registry, tmp_path):
    version = _register(tmp_path, b"original bytes")
    stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source)) / "model.onnx"
    # Tamper with the artifact store itself, not a downloaded copy.
    store_file = Path(str(registry.lake_path)) / "_mlflow" / "artifacts"
    target = next(store_file.rglob("model.onnx"))
    target.write_bytes(b"swapped bytes")
    assert stored.read_bytes() == b"original bytes"
    with pytest.raises(ModelChecksumError, match="changed after registration"):
        fetch_onnx_model("models:/tracelake-test@challenger", tmp_path / "c")


def test_missing_alias_is_a_clear_error(registry, tmp_path):
    _register(tmp_path, b"x")
    with pytest.raises(ModelResolutionError, match="no alias 'champion'"):
        fetch_onnx_model("models:/tracelake-test@champion", tmp_path / "d")


def _aliases(name: str) -> dict[str, str]:
    return {
        alias: str(version)
        for alias, version in mlflow.MlflowClient().get_registered_model(name).aliases.items()
    }


def test_a_failed_run_registers_nothing_and_keeps_the_old_challenger(registry, tmp_path):
    from tracelake.model_registry import atomic_registration

    before = _register(tmp_path, b"kept")
    with pytest.raises(RuntimeError, match="baseline failed"), atomic_registration():
        registered = _register(tmp_path, b"new lstm")
        assert _aliases("tracelake-test") == {"challenger": str(before.version)}  # not moved yet
        assert str(registered.version) == "2"
        raise RuntimeError("baseline failed")
    versions = mlflow.MlflowClient().search_model_versions("name='tracelake-test'")
    assert [str(v.version) for v in versions] == [str(before.version)]
    assert _aliases("tracelake-test") == {"challenger": str(before.version)}

    with atomic_registration():
        done = _register(tmp_path, b"new lstm again")
    assert _aliases("tracelake-test") == {"challenger": str(done.version)}


def test_promote_checks_every_model_before_moving_any_alias(registry, tmp_path):
    from spark_jobs import promote
    from tracelake.model_registry import register_artifacts
    from training.registry import registry_run

    names = registry.training.lstm_model_name, registry.training.baseline_model_name
    model = tmp_path / "m.onnx"
    model.write_bytes(b"lstm")
    with mlflow.start_run() as run:
        register_onnx_model(names[0], model, run_id=run.info.run_id, tags={"training_set": "demo"})
    with registry_run("promote", settings=registry) as job:
        with pytest.raises(ModelResolutionError, match=f"{names[1]!r} has no alias 'challenger'"):
            promote.execute(job)
        assert "champion" not in _aliases(names[0])  # nothing moved

        with mlflow.start_run() as run:
            mlflow.log_text("baseline", "model/baseline.txt")
            register_artifacts(names[1], run.info.run_id, "model", tags={"training_set": "demo"})
        outcomes = promote.execute(job)
        assert all(o["promoted"] for o in outcomes.values())
        assert _aliases(names[0])["champion"] == "1" and _aliases(names[1])["champion"] == "1"
    assert not job.spark_started  # first champions need no test window: no Spark session


def test_rollback_moves_the_champion_back_without_starting_spark(registry, tmp_path):
    """Rollback is registry calls only: run as the CLI runs it, it starts no JVM and no Spark session."""
    import os
    import subprocess
    import sys

    from tracelake.model_registry import PREVIOUS_CHAMPION_TAG, ROLLED_BACK_TAG

    name = registry.training.lstm_model_name
    model = tmp_path / "m.onnx"
    versions = []
    for payload in (b"first champion", b"second champion"):
        model.write_bytes(payload)
        with mlflow.start_run() as run:
            versions.append(str(register_onnx_model(name, model, run_id=run.info.run_id).version))
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(name, CHAMPION, versions[1])
    client.set_model_version_tag(name, versions[1], PREVIOUS_CHAMPION_TAG, versions[0])

    script = (
        "import sys\n"
        "from spark_jobs import rollback\n"
        "code = rollback.main(sys.argv[1:])\n"
        "from pyspark import SparkContext\n"
        "assert SparkContext._gateway is None, 'rollback started a JVM'\n"
        "assert SparkContext._active_spark_context is None, 'rollback started a Spark session'\n"
        "sys.exit(code)\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACELAKE_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-c", script, "--models", "lstm", "--lake-root", str(registry.lake_root)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"champion v{versions[1]} -> v{versions[0]}" in done.stdout
    assert _aliases(name)[CHAMPION] == versions[0]
    assert client.get_model_version(name, versions[1]).tags[ROLLED_BACK_TAG]
