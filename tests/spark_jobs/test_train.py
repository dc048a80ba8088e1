"""The training job end to end on a tiny training set, then the promotion gate and rollback.

One training run (both models, TorchDistributor local mode with 2 CPU processes)
is shared by the tests of this module; they run in file order.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import mlflow
import pytest
import torch
from mlflow import MlflowClient
from training_frames import small_sequences, write_training_set

from spark_jobs import promote, rollback, train
from tracelake.model_registry import CHALLENGER, CHAMPION, get_version, register_onnx_model
from tracelake.runs import job_run
from tracelake.tables import named_table_spec, read_table
from tracelake.tracking import configure_mlflow
from training.data import columns_to_arrays
from training.model import SequenceAnomalyModel
from training.onnx_export import export_onnx

pytestmark = pytest.mark.spark35

SET = "tiny"
LSTM_NAME, BASELINE_NAME, RULES_NAME = (
    "tracelake-anomaly-lstm",
    "tracelake-anomaly-baseline",
    "tracelake-anomaly-rules",
)


@pytest.fixture(scope="module")
def settings(test_settings, tmp_path_factory):
    lake = tmp_path_factory.mktemp("train_lake")
    return small_sequences(test_settings.model_copy(update={"lake_root": str(lake)}))


@pytest.fixture(scope="module")
def trained(spark, settings, line_loader) -> dict[str, Any]:
    write_training_set(spark, settings, SET, n_rows=600, seed=1, with_sources=True)
    with job_run("train", settings=settings, spark=spark) as run:
        return train.execute(
            run,
            SET,
            models="lstm,baseline,rules",
            num_processes=2,
            local_mode=True,
            use_gpu=False,
            epochs=2,
            batch_size=32,
            learning_rate=1e-2,
            onnx_exporter="torchscript",
            bootstrap_samples=50,
            baseline_max_iter=4,
            hidden_size=16,
            tab_hidden_size=16,
            head_hidden_size=16,
            loader=line_loader,
        )


def test_train_registers_the_three_detectors_with_metrics_and_artifacts(trained, settings, capsys):
    configure_mlflow(settings)
    client = MlflowClient()
    assert trained["training_set_version"] == 0 and trained["immature_labels"] is False
    labels = list(trained["models"]["lstm"]["test_pr_auc"])
    assert trained["test_positives"] == {label: trained["test_positives"][label] for label in labels}
    assert all(n > 0 for n in trained["test_positives"].values())
    for name, key in ((LSTM_NAME, "lstm"), (BASELINE_NAME, "baseline"), (RULES_NAME, "rules")):
        version = get_version(name, alias=CHALLENGER)
        assert str(version.version) == trained["models"][key]["version"] == "1"
        assert version.tags["training_set"] == SET and version.tags["training_set_version"] == "0"
        assert version.tags[train.IMMATURE_TAG] == "false"
        assert float(version.tags["test_macro_pr_auc"]) == pytest.approx(
            trained["models"][key]["test_macro"]["pr_auc"], abs=1e-6
        )
        run = client.get_run(version.run_id)
        assert run.data.tags["training_set"] == SET and run.data.tags[train.DETECTOR_TAG] == key
        assert set(run.data.metrics) >= {
            "test_macro_pr_auc",
            *(f"test_pr_auc_{l}" for l in labels),
            *(f"test_positives_{l}" for l in labels),
        }
        assert run.data.metrics["test_positives_jump"] == trained["test_positives"]["jump"]
        artifacts = {a.path for a in client.list_artifacts(version.run_id, "plots")}
        assert {"plots/pr_curves_test.png", "plots/confusion_matrices_test.png"} <= artifacts
    lstm = trained["models"]["lstm"]
    assert lstm["onnx_max_abs_diff"] < 1e-4 and lstm["parity_rows"] == 120
    lstm_run = get_version(LSTM_NAME, alias=CHALLENGER).run_id
    assert [m.step for m in client.get_metric_history(lstm_run, "val_loss")] == [0, 1]  # per epoch
    assert {a.path for a in client.list_artifacts(lstm_run, "model")} >= {"model/model.onnx"}
    assert client.get_model_version(BASELINE_NAME, "1").tags["format"] == "spark-ml"
    assert {
        a.path for a in client.list_artifacts(get_version(BASELINE_NAME, alias=CHALLENGER).run_id, "model")
    } >= {"model/sparkml", "model/baseline.json"}
    parent = client.get_run(trained["mlflow_run_id"])
    assert parent.data.params["training_set_version"] == "0" and "env.torch" in parent.data.params
    header = trained["comparison"].splitlines()[0]
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "label",
        "metric",
        "rules",
        "baseline",
        "lstm",
    ]
    assert client.get_model_version(RULES_NAME, "1").tags["format"] == "rules-json"
    assert set(trained["models"]["rules"]["variants"]) == set(labels)
    rows = {
        tuple(cell.strip() for cell in line.strip("|").split("|")[:2])
        for line in trained["comparison"].splitlines()[2:]
    }
    assert rows == {
        (label, metric)
        for label in [*trained["models"]["lstm"]["test_pr_auc"], "macro"]
        for metric in ("pr_auc", "roc_auc", "precision", "recall", "f1")
    }
    assert not (Path(settings.lake_root) / "_petastorm_cache").exists() or not any(
        (Path(settings.lake_root) / "_petastorm_cache").iterdir()
    )  # the converters' cache is removed


def _register_inverted(spark, settings, trained) -> str:
    """The trained LSTM with its output layer negated (ranks rows backwards): a deliberately worse model."""
    model = SequenceAnomalyModel.load(Path(trained["models"]["lstm"]["output_dir"]) / "model.pt")
    with torch.no_grad():
        model.head[-1].weight.neg_()
        model.head[-1].bias.neg_()
    frame = (
        read_table(spark, named_table_spec("training_set", name=SET), settings.lake_root)
        .where("split = 'test'")
        .toPandas()
    )
    spec = model.feature_spec
    rows = columns_to_arrays({c: frame[c].to_numpy() for c in spec.columns}, spec)
    path = Path(settings.lake_root) / "inverted" / "model.onnx"
    export_onnx(model, path, rows, thresholds=trained["models"]["lstm"]["thresholds"], exporter="torchscript")
    configure_mlflow(settings)
    with mlflow.start_run(run_name="inverted") as run:
        version = register_onnx_model(
            LSTM_NAME, path, run_id=run.info.run_id, tags={"training_set": SET, "training_set_version": "0"}
        )
    return str(version.version)


def test_promote_then_refuse_worse_then_rollback(spark, settings, trained, capsys):
    client = MlflowClient()
    trained_version = trained["models"]["lstm"]["version"]
    bad = _register_inverted(spark, settings, trained)
    with job_run("promote", settings=settings, spark=spark) as run:
        # No champion yet: the (deliberately bad) challenger becomes the first champion.
        first = promote.execute(run, models=["lstm"])[LSTM_NAME]
        assert (
            first["promoted"] and first["champion"] == bad and first["reason"].startswith("no champion yet")
        )
        # The trained model as challenger: better on the same test rows (both re-scored with ONNX Runtime).
        client.set_registered_model_alias(LSTM_NAME, CHALLENGER, trained_version)
        second = promote.execute(run, models=["lstm"])[LSTM_NAME]
        assert second["promoted"] and second["champion"] == trained_version
        scores = second["scores"]
        assert scores["challenger"]["macro_pr_auc"] > scores["champion"]["macro_pr_auc"]
        # Both judged on the set's test days rebuilt from the current features and labels.
        frame = read_table(spark, named_table_spec("training_set", name=SET), settings.lake_root)
        first_test_day = frame.where("split = 'test'").agg({"event_date": "min"}).first()[0]
        assert second["window"]["first_day"] == first_test_day.isoformat()
        assert (
            scores["challenger"]["rows"]
            == scores["champion"]["rows"]
            == frame.where(f"event_date >= '{first_test_day}'").count()
        )
        assert client.get_model_version(LSTM_NAME, trained_version).tags[promote.PREVIOUS_CHAMPION_TAG] == bad
        # A worse challenger is refused; the champion stays.
        worse = _register_inverted(spark, settings, trained)
        third = promote.execute(run, models=["lstm"])[LSTM_NAME]
        assert not third["promoted"] and third["champion"] == trained_version
        assert third["scores"]["challenger"]["macro_pr_auc"] < third["scores"]["champion"]["macro_pr_auc"]
        assert "refused" in client.get_model_version(LSTM_NAME, worse).tags[promote.DECISION_TAG]
        assert str(get_version(LSTM_NAME, alias=CHAMPION).version) == trained_version
        out = capsys.readouterr().out
        assert "PROMOTED v" + bad in out and "kept champion v" + trained_version in out
        assert "not better than the margin" in out

    with job_run("rollback", settings=settings, spark=spark) as run:
        back = rollback.execute(run, models=["lstm"])[LSTM_NAME]
        assert (back["from_version"], back["champion"]) == (trained_version, bad)
        assert str(get_version(LSTM_NAME, alias=CHAMPION).version) == bad
        assert client.get_model_version(LSTM_NAME, trained_version).tags[promote.ROLLED_BACK_TAG]
        with pytest.raises(rollback.RollbackError, match="first one"):
            rollback.execute(run, models=["lstm"])
    # The rolled-back version is not promoted again without --force.
    client.set_registered_model_alias(LSTM_NAME, CHALLENGER, trained_version)
    with job_run("promote", settings=settings, spark=spark) as run:
        again = promote.execute(run, models=["lstm"])[LSTM_NAME]
    assert not again["promoted"] and "rolled back" in again["reason"]


def test_a_model_of_a_set_with_immature_labels_is_never_promoted(spark, settings, trained):
    configure_mlflow(settings)
    path = Path(settings.lake_root) / "immature" / "rules.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    with mlflow.start_run(run_name="immature"):
        mlflow.log_artifact(str(path), "model")
        run_id = mlflow.active_run().info.run_id
    from tracelake.model_registry import register_artifacts

    version = register_artifacts(
        RULES_NAME,
        run_id,
        "model",
        tags={
            "training_set": SET,
            "training_set_version": "0",
            train.IMMATURE_TAG: "true",
            "format": "rules-json",
        },
    )
    with job_run("promote", settings=settings, spark=spark) as run:
        decision = promote.execute(run, models=["rules"])[RULES_NAME]
    assert not decision["promoted"] and "--allow-immature-labels" in decision["reason"]
    assert decision["challenger"] == str(version.version)
    assert (
        "refused"
        in MlflowClient().get_model_version(RULES_NAME, str(version.version)).tags[promote.DECISION_TAG]
    )


def test_first_baseline_becomes_champion(spark, settings, trained):
    with job_run("promote", settings=settings, spark=spark) as run:
        decision = promote.execute(run, models=["baseline"])[BASELINE_NAME]
    assert decision["promoted"] and decision["champion"] == trained["models"]["baseline"]["version"]
    assert decision["reason"].startswith("no champion yet")


def test_cli_errors_name_the_value(capsys):
    from tracelake.cli import main

    assert main(["train", "--training-set", "../x"]) == 2
    assert "../x" in capsys.readouterr().err
    assert main(["train", "--training-set", "x", "--models", "lstm,forest"]) == 2
    assert "forest" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("challenger", "champion", "margin", "expected"),
    [
        (0.60, 0.50, 0.05, True),
        (0.54, 0.50, 0.05, False),
        (0.50, 0.50, 0.0, False),
        (0.40, float("nan"), 0.0, True),
        (float("nan"), 0.50, 0.0, False),
    ],
)
def test_decide_needs_more_than_the_margin(challenger, champion, margin, expected):
    assert promote.decide(challenger, champion, margin) is expected


def test_cli_options_override_config_both_ways():
    args = train.parse_args(["--training-set", "s", "--cluster-mode", "--no-use-gpu", "--num-processes", "4"])
    assert (args.local_mode, args.use_gpu, args.num_processes) == (False, False, 4)
    args = train.parse_args(["--training-set", "s", "--use-gpu"])
    assert (args.local_mode, args.use_gpu, args.num_processes) == (
        None,
        True,
        None,
    )  # None: the configured value


def test_resume_continues_the_latest_interrupted_run(spark, settings):
    with job_run("train", settings=settings, spark=spark) as run:
        parent = Path(settings.lake_root) / settings.training.runs_dir / "resume-set"
        assert train.run_dir_for(run, "resume-set", resume=True) == str(
            parent / run.run_id
        )  # nothing to resume
        for name, age, finished in (("old", 300, False), ("new", 100, False), ("done", 0, True)):
            checkpoint = parent / name / "checkpoints" / "last.pt"
            checkpoint.parent.mkdir(parents=True)
            checkpoint.write_bytes(b"")
            os.utime(checkpoint, (time.time() - age, time.time() - age))
            if finished:
                (parent / name / "result.json").write_text("{}")
        assert train.run_dir_for(run, "resume-set", resume=True) == str(parent / "new")
        assert train.run_dir_for(run, "resume-set", resume=False) == str(parent / run.run_id)
