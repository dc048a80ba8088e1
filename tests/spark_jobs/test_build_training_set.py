"""The training-set job end to end on a tiny lake: labels known at --as-of, temporal split, lineage.

Event features come from the production transforms on a hand-made journey;
labels are confirmed before, exactly at, and just after the cut-off T. The
job runs through the CLI (the spark-submit entrypoint's code) with the split
boundaries set in config.
"""

from __future__ import annotations

import datetime as dt
import json

import pytest
from delta.tables import DeltaTable
from feature_frames import day, ts
from feature_frames import labels as make_labels
from journeys import featurise
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs.transforms.training_set import (
    ImmatureLabelsError,
    SplitError,
    check_mature,
    labels_as_of,
    mature_last_day,
    split_boundaries,
    training_set,
)
from tracelake.cli import main as cli_main
from tracelake.config import TrainingSetSettings
from tracelake.tables import named_table_spec, read_table, table_spec, write_table

T = ts(4, 12)  # --as-of 2025-07-05T12:00:00 (UTC)
MICRO = dt.timedelta(microseconds=1)
FEATURES, LABELS = table_spec("features_event_features"), table_spec("silver_labels")
SET = named_table_spec("training_set", name="cut")
EVENTS = [
    ("e0", "A", ts(0, 1), "F1", "Aggregation"),
    ("e1", "A", ts(1, 2), "F1", "Factory_Outbound"),
    ("e2", "A", ts(2, 3), "W1", "WMS_Inbound"),
    ("e3", "B", ts(3, 4), "F1", "Aggregation"),
    ("e4", "B", T, "W1", "WMS_Inbound"),  # exactly at T: in
    ("e5", "B", T + MICRO, "W1", "WMS_Outbound"),  # after T: out
    ("e6", "A", ts(5, 1), "H1", "HUB_Inbound"),  # after T (and after T's day): out
]
FIRST_LABELS = [("e0", "epc_fake", ts(1)), ("e2", "epc_dup", ts(3)), ("e2", "evt_order_err", ts(3, 5))]
LATER_LABELS = [
    ("e0", "jump", T),  # confirmed exactly at T: known
    ("e1", "loc_err", T + MICRO),  # confirmed just after T: unknown
    ("e4", "jump", T),
    ("e5", "jump", T + dt.timedelta(hours=2)),
]


def write_labels(spark, root, rows):
    labels = make_labels(spark, rows, {event: epc for event, epc, *_ in EVENTS})
    days = [c.date() for _, _, c in rows]
    return write_table(labels, LABELS, root, start=min(days), end=max(days))


@pytest.fixture(scope="module")
def lake(spark, test_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("training") / "lake"
    features = featurise(spark, EVENTS, [], test_settings.features, day(0), day(5))["event_features"]
    write_table(features, FEATURES, root, start=day(0), end=day(5))  # version 0
    write_labels(spark, root, FIRST_LABELS)  # version 0
    write_labels(spark, root, LATER_LABELS)  # version 1 (other label days)
    return root


def test_labels_known_at_as_of_and_a_temporal_split_from_config(spark, lake, capsys):
    code = cli_main(
        [
            "training-set",
            "--start-date",
            "2025-07-01",
            "--end-date",
            "2025-07-06",
            "--as-of",
            "2025-07-05T12:00:00",
            "--name",
            "cut",
            "--lake-root",
            str(lake),
            "--set",
            "training_set.validation_start=2025-07-03",
            "--set",
            "training_set.test_start=2025-07-05",
            "--allow-immature-labels",
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"] == {"validation_start": "2025-07-03", "test_start": "2025-07-05"}
    assert summary["last_day"] == "2025-07-05"
    assert summary["immature_labels"] is True

    written = read_table(spark, SET, lake)
    got = written.select("event_id", "split", "epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")
    expected = spark.createDataFrame(
        [
            ("e0", "train", 1, 0, 0, 0, 1),
            # EPC A is known fake: all its events are; e1 is the other half of e2's order error;
            # its own loc_err label came 1 µs after T.
            ("e1", "train", 1, 0, 0, 1, 0),
            ("e2", "validation", 1, 1, 0, 1, 0),
            ("e3", "validation", 0, 0, 0, 0, 0),
            ("e4", "test", 0, 0, 0, 0, 1),
        ],
        "event_id string, split string, epc_fake int, epc_dup int, loc_err int, evt_order_err int, jump int",
    )
    assertDataFrameEqual(got, expected)
    # The feature columns are the event features, untouched.
    features = read_table(spark, FEATURES, lake)
    assertDataFrameEqual(written.select(*features.columns), features.where(F.col("event_time") <= F.lit(T)))
    # train < validation < test in time.
    bounds = {
        r["split"]: (r["first"], r["last"])
        for r in written.groupBy("split")
        .agg(F.min("event_date").alias("first"), F.max("event_date").alias("last"))
        .collect()
    }
    assert bounds["train"][1] < bounds["validation"][0] <= bounds["validation"][1] < bounds["test"][0]


def test_commit_info_records_the_versions_read_and_rebuilds_exactly(spark, lake):
    history = (
        DeltaTable.forPath(spark, SET.location(lake)).history(1).select("version", "userMetadata").first()
    )
    meta = json.loads(history["userMetadata"])
    assert meta["input_versions"] == {"features_event_features": 0, "silver_labels": 1}
    assert (meta["job"], meta["name"], meta["as_of"]) == ("training-set", "cut", "2025-07-05T12:00:00+00:00")
    assert meta["split"] == {"validation_start": "2025-07-03", "test_start": "2025-07-05"}
    assert (meta["immature_labels"], meta["label_max_delay_days"]) == (True, 14)

    # A label for an old event arrives later, confirmed (backdated) before T: silver moves on, ...
    write_labels(spark, lake, [("e3", "loc_err", ts(3, 6))])
    # ... yet the recorded versions give back exactly the set that was written.
    rebuilt = training_set(
        read_table(spark, FEATURES, lake, version=meta["input_versions"]["features_event_features"]).where(
            F.col("event_date") <= F.lit(day(4))
        ),
        read_table(spark, LABELS, lake, version=meta["input_versions"]["silver_labels"]),
        as_of=dt.datetime.fromisoformat(meta["as_of"]),
        validation_start=dt.date.fromisoformat(meta["split"]["validation_start"]),
        test_start=dt.date.fromisoformat(meta["split"]["test_start"]),
    )
    written = read_table(spark, SET, lake, version=history["version"])
    assertDataFrameEqual(rebuilt, written)
    latest = read_table(spark, LABELS, lake)
    assert latest.where("event_id = 'e3'").count() == 1  # the new label is there, and not in the rebuilt set
    assert rebuilt.where("event_id = 'e3'").select("loc_err").first()[0] == 0


def test_split_boundaries_from_fractions_and_explicit_dates():
    days10 = (dt.date(2025, 7, 1), dt.date(2025, 7, 10))
    assert split_boundaries(*days10, TrainingSetSettings()) == (dt.date(2025, 7, 7), dt.date(2025, 7, 9))
    explicit = TrainingSetSettings(validation_start="2025-07-04", test_start="2025-07-08")
    assert split_boundaries(*days10, explicit) == (dt.date(2025, 7, 4), dt.date(2025, 7, 8))
    with pytest.raises(SplitError, match="cannot hold train, validation and test days"):
        split_boundaries(dt.date(2025, 7, 1), dt.date(2025, 7, 2), TrainingSetSettings())
    with pytest.raises(
        SplitError, match="validation_start=2025-07-08 and test_start=2025-07-12 must satisfy"
    ):
        split_boundaries(*days10, TrainingSetSettings(validation_start="2025-07-08", test_start="2025-07-12"))


def test_a_set_whose_labels_are_not_mature_is_refused_naming_the_dates(lake, capsys):
    code = cli_main(
        [
            "training-set",
            "--start-date",
            "2025-07-01",
            "--end-date",
            "2025-07-04",
            "--as-of",
            "2025-07-10",
            "--name",
            "young",
            "--lake-root",
            str(lake),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the job's one-line error
    assert code == 2
    assert "the test window ends 2025-07-04" in err and "labels.max_delay_days=14" in err
    assert "complete only from 2025-07-19" in err and "--allow-immature-labels" in err
    assert "end the range by 2025-06-25" in err


def test_the_window_is_mature_exactly_max_delay_days_after_its_last_day():
    last_day = dt.date(2025, 7, 4)
    check_mature(last_day, dt.datetime(2025, 7, 8, tzinfo=dt.UTC), 3)
    with pytest.raises(ImmatureLabelsError):
        check_mature(last_day, dt.datetime(2025, 7, 7, 23, 59, tzinfo=dt.UTC), 3)
    assert mature_last_day(dt.datetime(2025, 7, 8, tzinfo=dt.UTC), 3) == last_day


def test_labels_spread_over_their_incident_only_with_what_is_known_at_the_cut(spark):
    events = spark.createDataFrame(
        [
            ("a1", "A", ts(0, 1)),
            ("a2", "A", ts(1, 1)),
            ("a3", "A", ts(3, 1)),
            ("b1", "B", ts(0, 2)),
            ("b2", "B", ts(1, 2)),
            ("b3", "B", ts(2, 2)),
            ("c1", "C", ts(0, 3)),
            ("c2", "C", ts(1, 3)),
        ],
        "event_id string, epc_code string, event_time timestamp",
    )
    labels = make_labels(
        spark,
        [
            ("a2", "epc_fake", ts(2)),  # A known fake at day 2: a1, a2 and the later a3 are fake
            ("b3", "evt_order_err", ts(3)),  # b2 and b3 swapped
            ("c2", "epc_fake", ts(5)),  # confirmed after the cut: nothing of C is known
            ("b1", "jump", ts(2)),  # event scope: b1 only
        ],
        {"a2": "A", "b3": "B", "c2": "C", "b1": "B"},
    )
    got = labels_as_of(labels, ts(4), events)
    types = ["epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump"]
    expected = spark.createDataFrame(
        [
            ("a1", 1, 0, 0, 0, 0),
            ("a2", 1, 0, 0, 0, 0),
            ("a3", 1, 0, 0, 0, 0),
            ("b1", 0, 0, 0, 0, 1),
            ("b2", 0, 0, 0, 1, 0),
            ("b3", 0, 0, 0, 1, 0),
        ],
        "event_id string, " + ", ".join(f"{t} int" for t in types),
    )
    assertDataFrameEqual(got.select("event_id", *types), expected)
    # Everything confirmed after the cut stays unknown however it would spread.
    assert labels_as_of(labels, ts(1), events).count() == 0


def test_days_without_event_features_fail_naming_them(lake, capsys):
    code = cli_main(
        [
            "training-set",
            "--start-date",
            "2025-07-01",
            "--end-date",
            "2025-07-08",
            "--as-of",
            "2025-08-01",
            "--name",
            "gaps",
            "--lake-root",
            str(lake),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]  # the job's one-line error
    assert code == 2
    assert "features_event_features has no rows on 2025-07-07, 2025-07-08 (2 day(s) of the range)" in err
    assert "run `tracelake features` for those days first" in err
