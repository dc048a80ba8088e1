"""A tiny lake for the scoring tests: event features of two days, a training set, a registered model.

The feature rows are random but in the real layout of features_event_features
(every tabular feature, sequences of the configured length), so the model,
the scoring job and monitoring read exactly what they read in production.
Day 2 carries one shifted tabular input (``SHIFTED``) and one sequence feature
shifted at the event's own step (``SHIFTED_STEP``) for the drift test.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from tracelake.model_io import FeatureSpec, sequence_features, tabular_features
from tracelake.model_registry import CHAMPION, register_onnx_model
from tracelake.tables import domain, named_table_spec, table_spec, write_table
from tracelake.tracking import configure_mlflow
from training.data import columns_to_arrays
from training.model import ModelConfig, PreprocessingStats, SequenceAnomalyModel
from training.onnx_export import export_onnx

DAY1, DAY2 = dt.date(2025, 7, 1), dt.date(2025, 7, 2)
ROWS_PER_DAY = 400
REFERENCE_ROWS = 1200
MODEL_NAME = "tracelake-anomaly-lstm"
REFERENCE_SET = "ref"
SHIFTED = "hist_scans"
SHIFTED_STEP = "gap_log"


def feature_rows(n: int, day: dt.date, seed: int, prefix: str) -> pd.DataFrame:
    """``n`` random rows of features_event_features on ``day``."""
    spec = table_spec("features_event_features")
    rng = np.random.default_rng(seed)
    width = len(sequence_features())
    seq_len = rng.integers(1, 26, size=n)
    seq = rng.normal(size=(n, 25 * width)).astype(np.float32)
    times = [
        dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=int(s))
        for s in rng.integers(0, 86_400, size=n)
    ]
    data: dict[str, object] = {
        "event_id": [f"{prefix}-{day:%d}-{i:05d}" for i in range(n)],
        "epc_code": [f"001.{i % 37}.1.2.3.{i}" for i in range(n)],
        "event_time": times,
        "event_date": [day] * n,
        "location_id": [f"LOC{i % 7}" for i in range(n)],
        "prev_location_id": [None if i % 5 == 0 else f"LOC{(i + 1) % 7}" for i in range(n)],
        "loc_snapshot_date": [day] * n,
        "route_snapshot_date": [None] * n,
        "seq": [row[: k * width] for row, k in zip(seq, seq_len, strict=True)],  # compact: real steps only
        "seq_len": seq_len.astype(np.int32),
    }
    for column in spec.columns:
        if column.role == "feature":
            values = rng.normal(size=n)
            if column.nullable:
                values[rng.random(n) < 0.1] = np.nan
            data[column.name] = values
    return pd.DataFrame(data)[spec.column_names]


def to_spark(spark, frame: pd.DataFrame, spec):
    return spark.createDataFrame(frame.astype(object).where(frame.notna(), None), schema=spec.schema)


@pytest.fixture(scope="package")
def scoring_lake(spark, test_settings, tmp_path_factory):
    """Settings of a lake with features (2 days), training set `ref`, and a registered champion model."""
    root = tmp_path_factory.mktemp("scoring")
    # Small Arrow batches: each task feeds its worker's one ORT session several batches.
    settings = test_settings.model_copy(
        update={
            "lake_root": str(root / "lake"),
            "scoring": test_settings.scoring.model_copy(update={"arrow_batch_rows": 128}),
        }
    )
    lake = str(settings.lake_path)
    features_spec = table_spec("features_event_features")
    day1 = feature_rows(ROWS_PER_DAY, DAY1, seed=1, prefix="a")
    day2 = feature_rows(ROWS_PER_DAY, DAY2, seed=2, prefix="a")
    day2[SHIFTED] = day2[SHIFTED] + 3.0  # drifted input on day 2
    width, step_feature = len(sequence_features()), sequence_features().index(SHIFTED_STEP)
    for seq, n in zip(day2["seq"], day2["seq_len"], strict=False):
        seq[(n - 1) * width + step_feature] += 3.0  # drifted sequence feature at the event's step on day 2
    features = pd.concat([day1, day2], ignore_index=True)
    write_table(to_spark(spark, features, features_spec), features_spec, lake, start=DAY1, end=DAY2)

    labels = tuple(domain().anomaly_types)
    reference = feature_rows(REFERENCE_ROWS, DAY1 - dt.timedelta(days=10), seed=3, prefix="r")
    rng = np.random.default_rng(4)
    for label in labels:
        reference[label] = (rng.random(REFERENCE_ROWS) < 0.1).astype(np.int32)
    n_train, n_val = int(REFERENCE_ROWS * 0.6), int(REFERENCE_ROWS * 0.2)
    reference["split"] = (
        ["train"] * n_train + ["validation"] * n_val + ["test"] * (REFERENCE_ROWS - n_train - n_val)
    )
    set_spec = named_table_spec("training_set", name=REFERENCE_SET)
    set_version = write_table(to_spark(spark, reference, set_spec), set_spec, lake)

    spec = FeatureSpec(tuple(sequence_features()), tuple(tabular_features()), 25, labels)
    torch.manual_seed(0)
    model = SequenceAnomalyModel(ModelConfig(spec, hidden_size=8, tab_hidden_size=8, head_hidden_size=8))
    train_rows = columns_to_arrays({c: reference[c].to_numpy() for c in reference.columns}, spec)
    stats = PreprocessingStats(spec)
    stats.update(train_rows.to_batch())
    model.set_preprocessing(stats, pos_weight_cap=50.0)
    model.eval()
    onnx_path = root / "model.onnx"
    thresholds = {label: 0.3 + 0.05 * i for i, label in enumerate(labels)}
    export_onnx(
        model, onnx_path, train_rows.take(slice(0, 64)), thresholds=thresholds, exporter="torchscript"
    )

    configure_mlflow(settings)
    with mlflow.start_run() as run:
        version = register_onnx_model(
            MODEL_NAME,
            onnx_path,
            run_id=run.info.run_id,
            tags={"training_set": REFERENCE_SET, "training_set_version": str(set_version)},
        )
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    yield {
        "settings": settings,
        "onnx_path": Path(onnx_path),
        "thresholds": thresholds,
        "spec": spec,
        "model_version": str(version.version),
        "mlflow_run_id": run.info.run_id,
    }
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="package")
def scored(spark, scoring_lake):
    """One scoring run of DAY1..DAY2 with the champion: its summary and the table it wrote (checkpointed)."""
    from batch_scoring import score
    from tracelake.runs import job_run
    from tracelake.tables import read_table

    settings = scoring_lake["settings"]
    with job_run("score", settings=settings, spark=spark, start=DAY1, end=DAY2) as run:
        summary = score.execute(run)
    table = read_table(spark, table_spec("gold_scored_events"), str(settings.lake_path))
    return summary, table.localCheckpoint()
