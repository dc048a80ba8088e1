"""The features entrypoint on a tiny lake: the transforms' rows, lineage, idempotent reruns.

Silver, labels and locations are written with tracelake.tables.write_table;
the job runs through the CLI (the same code as spark-submit
spark_jobs/build_features.py). A rerun of the range must leave every output
table as the first run wrote it.
"""

from __future__ import annotations

import json
import random

import pytest
from delta.tables import DeltaTable
from feature_frames import air_lanes, day, locations, serial_ranges, silver, ts
from feature_frames import labels as make_labels
from journeys import featurise, first_per_key, journeys, label_rows
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from tracelake.cli import main as cli_main
from tracelake.model_io import sequence_features
from tracelake.tables import read_table, table_spec, write_table

OUTPUTS = ("features_location_daily", "features_route_daily", "features_event_features")
D1, D3 = day(2), day(4)
SETTINGS = {
    "features.lookback_days": 2,
    "features.snapshot_window_days": 2,
    "features.label_window_days": 3,
    "features.sequence_length": 5,
}


@pytest.fixture(scope="module")
def world():
    rng = random.Random(11)
    rows = journeys(rng, [f"E{i:02d}" for i in range(8)], 0.0, 80.0)
    rows = [r for r in rows if r[2] < ts(5)]  # silver of days 0..4
    labels = first_per_key(label_rows(rng, rng.sample(rows, 10), ts(0, 12), ts(5)))
    return rows, labels


@pytest.fixture(scope="module")
def lake(spark, world, tmp_path_factory):
    root = tmp_path_factory.mktemp("features") / "lake"
    rows, labels = world
    write_table(silver(spark, rows), table_spec("silver_scan_events"), root, start=day(0), end=day(4))
    write_table(
        make_labels(spark, labels),
        table_spec("silver_labels"),
        root,
        start=min(c.date() for *_, c in labels),
        end=max(c.date() for *_, c in labels),
    )
    write_table(locations(spark), table_spec("reference_locations"), root)
    write_table(air_lanes(spark), table_spec("reference_air_lanes"), root)
    write_table(serial_ranges(spark), table_spec("reference_serial_ranges"), root)
    return root


def run_features(lake, start, end, capsys):
    overrides = [x for k, v in SETTINGS.items() for x in ("--set", f"{k}={v}")]
    code = cli_main(
        [
            "features",
            "--start-date",
            start.isoformat(),
            "--end-date",
            end.isoformat(),
            "--lake-root",
            str(lake),
            *overrides,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def contents(spark, lake):
    return {name: read_table(spark, table_spec(name), lake).localCheckpoint() for name in OUTPUTS}


def last_commit(spark, lake, name):
    row = DeltaTable.forPath(spark, table_spec(name).location(lake)).history(1).first()
    return row["version"], row["operationParameters"], json.loads(row["userMetadata"])


def test_a_range_run_writes_the_transforms_rows_and_reruns_change_nothing(
    spark, test_settings, world, lake, capsys
):
    summary = run_features(lake, D1, D3, capsys)  # reads silver from the snapshot windows' reach on
    assert summary["read_from"] == "2025-06-28" and summary["missing_dates"] == []
    first = contents(spark, lake)

    # Exactly what the transforms compute from the same silver and labels.
    settings = test_settings.features.model_copy(update={k.split(".")[1]: v for k, v in SETTINGS.items()})
    expected = featurise(spark, *world, settings, D1, D3)
    in_range = F.col("snapshot_date") >= F.lit(D1)
    assertDataFrameEqual(first["features_event_features"], expected["event_features"])
    assertDataFrameEqual(first["features_location_daily"], expected["location_daily"].where(in_range))
    assertDataFrameEqual(first["features_route_daily"], expected["route_daily"].where(in_range))
    assert first["features_event_features"].count() == len([r for r in world[0] if D1 <= r[2].date() <= D3])

    # Compact sequences: every row's seq holds exactly its seq_len steps of the sequence features, no padding.
    events, width = first["features_event_features"], len(sequence_features())
    steps = SETTINGS["features.sequence_length"]
    assert (
        events.where(
            (F.size("seq") != F.col("seq_len") * width) | ~F.col("seq_len").between(1, steps)
        ).count()
        == 0
    )
    assert events.where(F.col("seq_len") < steps).count() > 0  # short histories exist: padding would show

    # Lineage: one commit per table, replacing the range, naming the run and the silver version read.
    version, parameters, meta = last_commit(spark, lake, "features_event_features")
    assert (
        version == 0 and "2025-07-03" in parameters["predicate"] and "2025-07-05" in parameters["predicate"]
    )
    assert meta["input_versions"] == {
        "silver_scan_events": 0,
        "silver_labels": 0,
        "reference_locations": 0,
        "reference_air_lanes": 0,
        "reference_serial_ranges": 0,
    }
    assert (meta["job"], meta["start_date"], meta["end_date"]) == ("features", "2025-07-03", "2025-07-05")

    # Idempotent: the same range again leaves every table as it was (one more commit each).
    # (That a one-day run writes the same rows as a range run is proved on the transforms in
    # test_event_features.py::test_a_range_run_equals_single_day_runs.)
    run_features(lake, D1, D3, capsys)
    again = contents(spark, lake)
    for name in OUTPUTS:
        assertDataFrameEqual(again[name], first[name])
        assert last_commit(spark, lake, name)[0] == 1


def test_a_day_without_silver_fails_naming_it(lake, capsys):
    code = cli_main(
        ["features", "--start-date", "2025-07-05", "--end-date", "2025-07-07", "--lake-root", str(lake)]
    )
    assert code == 2
    assert (
        "silver_scan_events has no events on 2025-07-06, 2025-07-07 (2 day(s) of the range)"
        in capsys.readouterr().err
    )
