"""Drift monitoring: PSI arithmetic, and a shifted input flagged on its day only, the day that
monitoring/drift hands to retraining."""

from __future__ import annotations

import logging
import math

from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual
from scoring_frames import DAY1, DAY2, SHIFTED, SHIFTED_STEP

from batch_scoring import drift, monitor
from tracelake.pipeline import drifted_days
from tracelake.runs import job_run
from tracelake.tables import read_table, table_spec


class _Records(logging.Handler):
    """Keeps the records of the monitor job's logger (which does not propagate to pytest's caplog)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_psi_of_known_shares():
    same = {drift.NULL_BIN: 0, 0: 50, 1: 50}
    assert drift.psi(same, same, n_bins=2, epsilon=1e-4) == 0.0
    # 80/20 against 50/50: (0.3 ln 1.6) + (-0.3 ln 0.4)
    expected = 0.3 * math.log(0.8 / 0.5) + (-0.3) * math.log(0.2 / 0.5)
    assert math.isclose(drift.psi({0: 80, 1: 20}, {0: 50, 1: 50}, n_bins=2, epsilon=1e-4), expected)
    # a bin empty in the reference stays finite (share floored at epsilon)
    assert math.isfinite(drift.psi({drift.NULL_BIN: 10, 0: 90}, {0: 100}, n_bins=1, epsilon=1e-4))
    assert [drift.status(v, 0.1, 0.25) for v in (0.05, 0.1, 0.3)] == ["ok", "warn", "drift"]


def test_bins_put_nulls_apart_and_cut_at_the_edges(spark):
    frame = spark.createDataFrame(
        [(float(v),) for v in (0, 1, 1.5, 2, 3)] + [(None,), (float("nan"),)], "x double"
    )
    got = drift.bin_counts(frame, {"x": [1.0, 2.0]})
    expected = spark.createDataFrame(
        [("x", -1, 2), ("x", 0, 2), ("x", 1, 2), ("x", 2, 1)], "feature string, bin int, count bigint"
    )
    assertDataFrameEqual(got, expected)


def test_bins_of_several_columns_per_group(spark):
    frame = spark.createDataFrame(
        [("d1", 0.5, 10), ("d1", 2.5, None), ("d2", 1.5, 30), ("d2", 1.5, 40)], "day string, x double, y int"
    )
    got = drift.bin_counts(frame, {"x": [1.0, 2.0], "y": [25.0]}, ["day"])
    expected = spark.createDataFrame(
        [
            ("d1", "x", 0, 1),
            ("d1", "x", 2, 1),
            ("d1", "y", -1, 1),
            ("d1", "y", 0, 1),
            ("d2", "x", 1, 2),
            ("d2", "y", 1, 2),
        ],
        "day string, feature string, bin int, count bigint",
    )
    assertDataFrameEqual(got, expected)


def test_event_step_picks_the_last_real_step(spark):
    # steps x 2 features, time-major, real steps only; seq_len 2 -> step 1 (elements 2, 3); 3 -> step 2 (4, 5)
    frame = spark.createDataFrame(
        [
            ("a", [0.0, 1.0, 2.0, 3.0], 2),
            ("b", [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], 3),
            ("c", [7.0, 8.0], 1),
        ],
        "id string, seq array<float>, seq_len int",
    )
    got = drift.with_event_step(frame, ["x", "y"]).drop("seq")
    expected = spark.createDataFrame(
        [("a", 2, 2.0, 3.0), ("b", 3, 4.0, 5.0), ("c", 1, 7.0, 8.0)],
        "id string, seq_len int, seq_last_x double, seq_last_y double",
    )
    assertDataFrameEqual(got, expected)
    assert drift.event_step_inputs(["x", "y"]) == ["seq_len", "seq_last_x", "seq_last_y"]


def test_monitor_flags_the_shifted_input_on_its_day(spark, scoring_lake, scored):
    settings = scoring_lake["settings"]
    warnings = _Records(logging.WARNING)
    logger = logging.getLogger(f"tracelake.{monitor.JOB}")
    logger.addHandler(warnings)
    try:
        with job_run("monitor", settings=settings, spark=spark, start=DAY1, end=DAY2) as run:
            summary = monitor.execute(run)
    finally:
        logger.removeHandler(warnings)
    table = read_table(spark, table_spec("monitoring_drift"), str(settings.lake_path))

    step = f"seq_last_{SHIFTED_STEP}"
    shifted = table.where(F.col("feature").isin(SHIFTED, step)).select(
        "event_date", "feature", "kind", "status"
    )
    expected = spark.createDataFrame(
        [
            (DAY1, SHIFTED, "input", "ok"),
            (DAY2, SHIFTED, "input", "drift"),
            (DAY1, step, "input", "ok"),
            (DAY2, step, "input", "drift"),
        ],
        "event_date date, feature string, kind string, status string",
    )
    assertDataFrameEqual(shifted, expected)
    # every tabular input, seq_len, every sequence feature at the event's step and every score column:
    # one row per day
    n_inputs = len(scoring_lake["spec"].tab_features) + 1 + len(scoring_lake["spec"].seq_features)
    per_day = table.groupBy("event_date", "kind").count()
    assertDataFrameEqual(
        per_day,
        spark.createDataFrame(
            [(DAY1, "input", n_inputs), (DAY2, "input", n_inputs), (DAY1, "score", 6), (DAY2, "score", 6)],
            "event_date date, kind string, count bigint",
        ),
    )
    # nothing else drifts on day 1 (same distribution as the reference)
    assert table.where((F.col("event_date") == F.lit(DAY1)) & (F.col("status") == "drift")).count() == 0

    assert {SHIFTED, step} <= set(summary["retrain_days"][DAY2.isoformat()])
    # each drifted column of day 2 is logged as a warning, with the day, the column and its PSI
    logged = {(r.event_date, r.feature) for r in warnings.records if "drift:" in r.getMessage()}
    assert {(DAY2.isoformat(), SHIFTED), (DAY2.isoformat(), step)} <= logged
    assert all(day == DAY2.isoformat() for day, _ in logged)
    assert DAY1.isoformat() not in summary["retrain_days"]
    # Retraining is triggered from the table (read without Spark, as the daily DAG's flag_retraining
    # does): day 2 only, its drift rows naming the shifted input and the model's reference.
    lake = str(settings.lake_path)
    assert drifted_days(lake, DAY1, DAY2) == [DAY2]
    assert drifted_days(lake, DAY1, DAY1) == []
    drifted = table.where((F.col("event_date") == F.lit(DAY2)) & (F.col("status") == "drift")).collect()
    assert SHIFTED in {r["feature"] for r in drifted}
    assert all(r["reference"].startswith("training_set:ref@v") for r in drifted)
