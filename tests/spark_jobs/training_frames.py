"""A tiny training set in the layout of training/sets/<name>, written where the training job reads it."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from spark_jobs.train import feature_spec
from tracelake.config import Settings
from tracelake.tables import named_table_spec, table_spec, write_table
from training.data import SPLIT_COLUMN, TEST, TRAIN, VALIDATION, arrays_to_table, synthetic_arrays

START = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)


def small_sequences(settings: Settings, sequence_length: int = 6) -> Settings:
    """``settings`` with short sequences (faster training; the feature spec follows the setting)."""
    return settings.model_copy(
        update={"features": settings.features.model_copy(update={"sequence_length": sequence_length})}
    )


def write_training_set(
    spark: SparkSession,
    settings: Settings,
    name: str,
    n_rows: int = 600,
    *,
    seed: int = 0,
    positive_rate: float = 0.1,
    with_sources: bool = False,
    immature: bool = False,
) -> int:
    """Synthetic learnable rows (training.data.synthetic_arrays) with the real feature names, split 60/20/20
    in time order; returns the Delta version written. ``with_sources`` also writes the event features
    and labels it stands for; ``immature`` marks it as built with --allow-immature-labels."""
    spec = feature_spec(settings)
    arrays = synthetic_arrays(n_rows, spec, seed=seed, positive_rate=positive_rate)
    n_train, n_val = int(n_rows * 0.6), int(n_rows * 0.2)
    split = [TRAIN] * n_train + [VALIDATION] * n_val + [TEST] * (n_rows - n_train - n_val)
    frame = arrays_to_table(arrays, spec, split).to_pandas()
    frame["seq"] = [list(map(float, v)) for v in frame["seq"]]
    times = [START + dt.timedelta(minutes=10 * i) for i in range(n_rows)]
    identity: dict[str, Any] = {
        "event_id": [f"e{i:06d}" for i in range(n_rows)],
        "epc_code": [f"epc{i:06d}" for i in range(n_rows)],
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
    if with_sources:
        write_sources(spark, settings, df, list(spec.label_names))
    test_days = frame.loc[frame[SPLIT_COLUMN] == TEST, "event_date"]
    metadata = {
        "name": name,
        "split": {"test_start": min(test_days).isoformat()},
        "last_day": max(frame["event_date"]).isoformat(),
        "immature_labels": immature,
    }
    return write_table(df, table, settings.lake_root, metadata=metadata)


def write_sources(spark: SparkSession, settings: Settings, training_set: Any, labels: list[str]) -> None:
    """The event features and silver labels the set could have been built from (what the promotion gate
    rebuilds the test window from): every positive confirmed one day after its event."""
    from pyspark.sql import functions as F

    features = table_spec("features_event_features")
    write_table(
        training_set.select(*features.column_names),
        features,
        settings.lake_root,
        start=START.date(),
        end=START.date() + dt.timedelta(days=30),
    )
    positives = training_set.select(
        "event_id",
        "epc_code",
        "event_time",
        F.explode(F.array(*[F.when(F.col(label) == 1, F.lit(label)) for label in labels])).alias(
            "anomaly_type"
        ),
    ).where(F.col("anomaly_type").isNotNull())
    confirmed = F.col("event_time") + F.expr("INTERVAL 1 DAY")
    label_rows = positives.select(
        "event_id",
        "epc_code",
        "anomaly_type",
        confirmed.alias("confirmed_at"),
        F.to_date(confirmed).alias("label_date"),
        F.lit("test").alias("_run_id"),
    )
    write_table(
        label_rows,
        table_spec("silver_labels"),
        settings.lake_root,
        start=START.date(),
        end=START.date() + dt.timedelta(days=30),
    )
