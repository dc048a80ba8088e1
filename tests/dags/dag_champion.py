"""A champion model for the daily DAG's scoring and monitoring tasks on a tiny lake.

Training is the training DAG's business and takes minutes; the daily DAG only
needs *a* registered champion. This builds one the way the training job
registers its models, just without the optimisation: the real sequence model
(training/model.py) over the real feature layout, preprocessing statistics
fit on a reference training set written to the lake (random rows in the layout
of training/sets/<name>, which monitoring compares against), exported to ONNX
with the parity check, registered through tracelake.model_registry with the
``training_set`` tags, and given the ``champion`` alias.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

REFERENCE_SET = "dag-test-reference"
REFERENCE_ROWS = 300


def reference_rows(n: int, day: dt.date, seed: int) -> pd.DataFrame:
    """``n`` random rows in the layout of training_set (features_event_features + labels + split)."""
    from spark_jobs.transforms.event_features import sequence_features
    from tracelake.tables import domain, named_table_spec

    spec = named_table_spec("training_set", name=REFERENCE_SET)
    rng = np.random.default_rng(seed)
    seq_len = rng.integers(1, 26, size=n)
    width = len(sequence_features())
    data: dict[str, object] = {
        "event_id": [f"ref-{i:05d}" for i in range(n)],
        "epc_code": [f"001.{i % 37}.1.2.3.{i}" for i in range(n)],
        "event_time": [
            dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=int(s))
            for s in rng.integers(0, 86_400, size=n)
        ],
        "event_date": [day] * n,
        "location_id": [f"LOC{i % 7}" for i in range(n)],
        "prev_location_id": [None if i % 5 == 0 else f"LOC{(i + 1) % 7}" for i in range(n)],
        "loc_snapshot_date": [day] * n,
        "route_snapshot_date": [None] * n,
        "seq": [  # compact: the real steps only
            row[: k * width]
            for row, k in zip(rng.normal(size=(n, 25 * width)).astype(np.float32), seq_len, strict=True)
        ],
        "seq_len": seq_len.astype(np.int32),
    }
    for column in spec.columns:
        if column.role == "feature":
            values = rng.normal(size=n)
            if column.nullable:
                values[rng.random(n) < 0.1] = np.nan
            data[column.name] = values
    for label in domain().anomaly_types:
        data[label] = (rng.random(n) < 0.1).astype(np.int32)
    n_train, n_val = int(n * 0.6), int(n * 0.2)
    data["split"] = ["train"] * n_train + ["validation"] * n_val + ["test"] * (n - n_train - n_val)
    return pd.DataFrame(data)[spec.column_names]


def register_champion(spark, settings, workdir: Path, reference_day: dt.date) -> str:
    """Write the reference training set, register a model trained on nothing, alias it champion; its version."""
    import mlflow
    import torch

    from spark_jobs.transforms.event_features import sequence_features, tabular_features
    from tracelake.model_registry import CHAMPION, register_onnx_model
    from tracelake.tables import domain, named_table_spec, write_table
    from tracelake.tracking import configure_mlflow
    from training.data import FeatureSpec, columns_to_arrays
    from training.model import ModelConfig, PreprocessingStats, SequenceAnomalyModel
    from training.onnx_export import export_onnx

    lake = str(settings.lake_path)
    reference = reference_rows(REFERENCE_ROWS, reference_day, seed=7)
    set_spec = named_table_spec("training_set", name=REFERENCE_SET)
    frame = spark.createDataFrame(
        reference.astype(object).where(reference.notna(), None), schema=set_spec.schema
    )
    set_version = write_table(frame, set_spec, lake)

    labels = tuple(domain().anomaly_types)
    spec = FeatureSpec(
        tuple(sequence_features()), tuple(tabular_features()), settings.features.sequence_length, labels
    )
    torch.manual_seed(0)
    model = SequenceAnomalyModel(ModelConfig(spec, hidden_size=8, tab_hidden_size=8, head_hidden_size=8))
    rows = columns_to_arrays({c: reference[c].to_numpy() for c in reference.columns}, spec)
    stats = PreprocessingStats(spec)
    stats.update(rows.to_batch())
    model.set_preprocessing(stats, pos_weight_cap=settings.training.pos_weight_cap)
    model.eval()
    onnx_path = workdir / "champion.onnx"
    export_onnx(
        model,
        onnx_path,
        rows.take(slice(0, 64)),
        thresholds=dict.fromkeys(labels, 0.5),
        exporter="torchscript",
    )

    configure_mlflow(settings)
    try:
        with mlflow.start_run(run_name="dag-test-champion") as run:
            version = register_onnx_model(
                settings.training.lstm_model_name,
                onnx_path,
                run_id=run.info.run_id,
                tags={"training_set": REFERENCE_SET, "training_set_version": str(set_version)},
            )
        mlflow.MlflowClient().set_registered_model_alias(
            settings.training.lstm_model_name, CHAMPION, version.version
        )
    finally:
        mlflow.set_tracking_uri(None)
    return str(version.version)
