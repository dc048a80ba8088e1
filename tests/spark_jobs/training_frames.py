"""A tiny training set in the layout of training/sets/<name>, written where the training job reads it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from spark_jobs.train import feature_spec
from tracelake.config import Settings
from tracelake.tables import named_table_spec, write_table
from training.data import SPLIT_COLUMN, TEST, TRAIN, VALIDATION, arrays_to_table, synthetic_arrays

START = dt.datetime(2025, 7, 1, tzinfo=dt.timezone.utc)


def small_sequences(settings: Settings, sequence_length: int = 6) -> Settings:
    """``settings`` with short sequences (faster training; the feature spec follows the setting)."""
    return settings.model_copy(update={"features": settings.features.model_copy(
        update={"sequence_length": sequence_length})})


def write_training_set(spark: SparkSession, settings: Settings, name: str, n_rows: int = 600, *, seed: int = 0,
                       positive_rate: float = 0.1) -> int:
    """Synthetic learnable rows (training.data.synthetic_arrays) with the real feature names, split 60/20/20
    in time order; returns the Delta version written."""
    spec = feature_spec(settings)
    arrays = synthetic_arrays(n_rows, spec, seed=seed, positive_rate=positive_rate)
    n_train, n_val = int(n_rows * 0.6), int(n_rows * 0.2)
    split = [TRAIN] * n_train + [VALIDATION] * n_val + [TEST] * (n_rows - n_train - n_val)
    frame = arrays_to_table(arrays, spec, split).to_pandas()
    frame["seq"] = [list(map(float, v)) for v in frame["seq"]]
    times = [START + dt.timedelta(minutes=10 * i) for i in range(n_rows)]
    identity: dict[str, Any] = {
        "event_id": [f"e{i:06d}" for i in range(n_rows)],
        "epc_code": [f"epc{i % 97:04d}" for i in range(n_rows)],
        "event_time": times,
        "event_date": [t.date() for t in times],
        "location_id": [f"L{i % 7}" for i in range(n_rows)],
        "prev_location_id": [None] * n_rows,
        "loc_snapshot_date": [None] * n_rows,
        "route_snapshot_date": [None] * n_rows,
    }
    for column, values in identity.items():
        frame[column] = values
    frame.loc[frame.index % 11 == 0, spec.tab_features[-1]] = np.nan  # nulls the models must impute
    table = named_table_spec("training_set", name=name)
    strings = {SPLIT_COLUMN, "event_id", "epc_code", "location_id", "prev_location_id"}

    def ddl_type(column: str) -> str:
        if column == "seq":
            return "array<float>"
        if column == "seq_len" or column in spec.label_names:
            return "int"
        if column in strings:
            return "string"
        if column == "event_time":
            return "timestamp"
        return "date" if column.endswith("date") else "double"

    schema = ", ".join(f"`{c}` {ddl_type(c)}" for c in frame.columns)
    df = spark.createDataFrame(frame, schema=schema)
    return write_table(df, table, settings.lake_root, metadata={"name": name})
