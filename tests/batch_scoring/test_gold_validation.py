"""The gate scoring passes before it reports success (schemas/expectations/gold_scored_events.json):
a scored day with a missing row or a probability outside [0, 1] fails, and only that day."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
from scoring_frames import DAY1, DAY2, feature_rows, to_spark

from tracelake.runs import job_run
from tracelake.tables import domain, table_spec, write_table
from tracelake.validation import ValidationFailed, require_valid, validate_table

ROWS = 4


def gold_rows(features) -> list[dict]:
    labels = domain().anomaly_types
    rows = []
    for r in features.itertuples():
        p = [0.1, 0.2, 0.3, 0.4, 0.05]
        rows.append(
            {
                "event_id": r.event_id,
                "epc_code": r.epc_code,
                "event_time": r.event_time.to_pydatetime(),
                "location_id": r.location_id,
                "event_date": r.event_date,
                **{f"p_{label}": v for label, v in zip(labels, p, strict=False)},
                **{f"flag_{label}": v >= 0.35 for label, v in zip(labels, p, strict=False)},
                "anomaly_score": max(p),
                "anomaly_flag": True,
                "model_name": "m",
                "model_version": "1",
                "model_run_id": "r",
                "scored_at": dt.datetime(2025, 7, 3),
                "_run_id": "run",
            }
        )
    return rows


def test_gate_fails_the_day_with_a_lost_row_or_a_bad_probability(spark, lake_settings):
    lake = str(lake_settings.lake_path)
    features = [feature_rows(ROWS, day, seed=i, prefix="g") for i, day in enumerate((DAY1, DAY2))]
    spec = table_spec("features_event_features")
    write_table(
        to_spark(spark, pd.concat(features, ignore_index=True), spec), spec, lake, start=DAY1, end=DAY2
    )
    # (a complete scored range passing this suite is test_score.py's scoring run)
    bad = gold_rows(features[0]) + gold_rows(features[1])[1:]  # day 2 loses an event
    bad[-1]["p_jump"] = 1.5  # and one probability leaves [0, 1]
    gold = table_spec("gold_scored_events")
    frame = spark.createDataFrame([tuple(r[c] for c in gold.column_names) for r in bad], gold.schema)
    write_table(frame, gold, lake, start=DAY1, end=DAY2)
    with job_run("score", settings=lake_settings, spark=spark, start=DAY1, end=DAY2) as run:
        report = validate_table(run, "gold_scored_events")
    failed = {(o.type, o.column) for o in report.critical_failures}
    # the lost row, the probability, and anomaly_score no longer being the largest probability
    assert failed == {
        ("expect_table_row_count_to_equal", "(table)"),
        ("expect_column_values_to_be_between", "p_jump"),
        ("unexpected_rows_expectation", "(table)"),
    }, report.summary_text()
    assert report.failed_partitions == [DAY2] and report.passed_ranges() == [(DAY1, DAY1)]
    with pytest.raises(ValidationFailed, match="gold_scored_events .* failed validation"):
        require_valid(report)
