"""Validation gates of the feature layer: features_event_features and training sets.

Good data is what the production transforms make of seeded random journeys
(tests/spark_jobs/journeys.py), written with tracelake.tables.write_table so
that the gate's read path and its reconciliation with silver are the real
ones. Bad data is injected into copies of the good rows; each case checks the
expectation, the column and the days the failure is traced to.
"""

from __future__ import annotations

import datetime as dt
import random
from pathlib import Path

import pytest
from feature_frames import day, silver, ts
from feature_frames import labels as make_labels
from journeys import ANOMALIES, featurise, first_per_key, journeys, label_rows

from spark_jobs.transforms.training_set import training_set
from tracelake.cli import main as cli_main
from tracelake.runs import job_run
from tracelake.tables import named_table_spec, table_spec, write_table
from tracelake.validation import load_suite, validate_frame, validate_table

D1, D2, D3 = day(1), day(2), day(3)
FEATURES, SILVER = table_spec("features_event_features"), table_spec("silver_scan_events")
SET_NAME = "validated"
TRAINING_SET = named_table_spec("training_set", name=SET_NAME)
AS_OF = dt.datetime.combine(day(4), dt.time(), tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def data(spark, test_settings):
    """Journeys featurised for D1..D3; (silver rows, feature rows, training-set rows) as plain Rows."""
    rng = random.Random(7)
    rows = journeys(rng, [f"E{i:02d}" for i in range(14)], 0.0, 60.0)
    rows = [r for r in rows if r[2].date() <= D3]
    # Sparse labels, and one of each type confirmed early (each type has a positive in the set).
    labels = first_per_key(
        label_rows(rng, rng.sample(rows, 8), ts(0), ts(5))
        + [(rows[i][0], t, ts(1)) for i, t in enumerate(ANOMALIES)]
    )
    settings = test_settings.features
    features = featurise(spark, rows, labels, settings, D1, D3)["event_features"]
    in_range = [r for r in rows if D1 <= r[2].date() <= D3]
    training = training_set(
        features, make_labels(spark, labels), as_of=AS_OF, validation_start=D2, test_start=D3
    )
    return in_range, features.collect(), training.collect()


@pytest.fixture(scope="module")
def lake(spark, test_settings, data, tmp_path_factory):
    """Settings of a lake holding silver, the event features and the training set of D1..D3."""
    settings = test_settings.model_copy(
        update={"lake_root": str(tmp_path_factory.mktemp("features") / "lake")}
    )
    silver_rows, feature_rows, training_rows = data
    write_table(silver(spark, silver_rows), SILVER, settings.lake_path, start=D1, end=D3)
    write_table(
        spark.createDataFrame(feature_rows, FEATURES.schema), FEATURES, settings.lake_path, start=D1, end=D3
    )
    write_table(spark.createDataFrame(training_rows, TRAINING_SET.schema), TRAINING_SET, settings.lake_path)
    return settings


def validate(spark, settings, spec, rows, reference=None):
    """Validate in-memory rows with the table's suite (no lake); returns the report."""
    with job_run("validate", settings=settings, spark=spark, start=D1, end=D3) as run:
        return validate_frame(
            spark.createDataFrame(rows, spec.ddl),
            load_suite(spec),
            date_column="event_date",
            start=D1,
            end=D3,
            run_id=run.run_id,
            settings=settings.validation,
            log=run.log,
            reference_counts=reference,
        )


def failures(report):
    """(expectation, column) -> days, of the critical failures."""
    return {(o.type, o.column): o.partitions for o in report.critical_failures}


def edit(rows, spec, changes):
    """Plain dicts of the rows (in the table's column order) with ``changes[i]`` applied to row i."""
    out = [r.asDict() for r in rows]
    for i, update in changes.items():
        out[i].update(update(out[i]) if callable(update) else update)
    return [tuple(r[c] for c in spec.column_names) for r in out]


ALL_DAYS = [D1.isoformat(), D2.isoformat(), D3.isoformat()]


def test_good_event_features_pass(spark, lake):
    with job_run("validate", settings=lake, spark=spark, start=D1, end=D3) as run:
        report = validate_table(run, FEATURES)
    assert report.passed, report.summary_text()
    assert not report.warnings, report.summary_text()
    assert report.passed_ranges() == [(D1, D3)] and report.row_count > 0
    assert Path(report.results_path).parent.parent == lake.lake_path / "_validation" / FEATURES.name
    assert Path(report.docs_path).is_file()


def test_bad_event_features_fail_naming_expectation_and_column(spark, lake, data):
    _, rows, _ = data
    on_d2 = [i for i, r in enumerate(rows) if r["event_date"] == D2]
    a, b, c, d, e, f = on_d2[:6]
    bad = edit(
        rows,
        FEATURES,
        {
            a: {"event_id": None},  # null key
            b: lambda r: {"event_id": rows[c]["event_id"]},  # duplicated event id
            d: {"hour_sin": 1.5},  # out of range
            e: {"loc_rate_jump": 2.0},  # a rate over 1
            f: lambda r: {
                "loc_snapshot_date": r["event_date"] + dt.timedelta(days=1)
            },  # a snapshot from the future
            **{
                i: (lambda r: {"speed_log": None if r["speed_log"] is None else r["speed_log"] * 10})
                for i in range(len(rows))
                if i not in (a, b, d, e, f)
            },  # speeds shifted (km/h -> 10 x log)
        },
    )
    # Silver has one more event on D2 than there are feature rows: a row went missing.
    per_day = {x: sum(r["event_date"].isoformat() == x for r in rows) for x in ALL_DAYS}
    key = next(e.key for e in load_suite(FEATURES).entries if e.row_count_terms is not None)
    reference = {key: {**per_day, D2.isoformat(): per_day[D2.isoformat()] + 1}}

    report = validate(spark, lake, FEATURES, bad, reference)

    second = [D2.isoformat()]
    assert failures(report) == {
        ("expect_column_values_to_not_be_null", "event_id"): second,
        ("expect_column_values_to_be_unique", "event_id"): second,
        ("expect_column_values_to_be_between", "hour_sin"): second,
        ("expect_column_values_to_be_between", "loc_rate_jump"): second,
        ("unexpected_rows_expectation", "(table)"): second,  # the future snapshot
        ("expect_table_row_count_to_equal", "(table)"): second,
        ("expect_column_mean_to_be_between", "speed_log"): ALL_DAYS,  # an aggregate fails the whole range
    }
    by_type = {(o.type, o.column): o for o in report.critical_failures}
    assert by_type[("unexpected_rows_expectation", "(table)")].examples[0]["event_id"] == rows[f]["event_id"]
    assert by_type[("expect_column_values_to_be_between", "hour_sin")].examples == [1.5]
    summary = report.summary_text()
    assert "CRITICAL  expect_column_mean_to_be_between  column=speed_log  observed=" in summary
    assert "CRITICAL  expect_column_values_to_be_unique  column=event_id" in summary
    assert report.passed_ranges() == []


def test_bad_training_set_fails_naming_expectation_and_column(spark, lake, data):
    _, _, rows = data
    on_d1 = [i for i, r in enumerate(rows) if r["event_date"] == D1]
    on_d3 = [i for i, r in enumerate(rows) if r["event_date"] == D3]
    bad = edit(
        rows,
        TRAINING_SET,
        {
            on_d1[0]: {"split": None},  # null split
            on_d1[1]: {"epc_fake": 2},  # not a 0/1 label
            on_d1[2]: lambda r: {"event_id": rows[on_d1[3]]["event_id"]},  # duplicated event id
            on_d3[0]: {"split": "train"},  # a test-day row in train
            **{i: {"jump": 1} for i in on_d3[1:]},  # most events labelled jump
        },
    )

    report = validate(spark, lake, TRAINING_SET, bad)

    first, third = [D1.isoformat()], [D3.isoformat()]
    assert failures(report) == {
        ("expect_column_values_to_not_be_null", "split"): first,
        ("expect_column_values_to_be_in_set", "epc_fake"): first,
        ("expect_column_values_to_be_unique", "event_id"): first,
        ("unexpected_rows_expectation", "(table)"): third,  # the split is no longer temporal
        ("expect_column_mean_to_be_between", "jump"): ALL_DAYS,
    }
    order = {(o.type, o.column): o for o in report.critical_failures}[
        ("unexpected_rows_expectation", "(table)")
    ]
    assert [x["event_id"] for x in order.examples] == [rows[on_d3[0]]["event_id"]]


def test_good_training_set_passes_through_the_cli(spark, lake, capsys):
    common = [
        "--start-date",
        D1.isoformat(),
        "--end-date",
        D3.isoformat(),
        "--lake-root",
        str(lake.lake_path),
    ]
    assert cli_main(["validate", "--table", "training_set", "--name", SET_NAME, *common]) == 0
    out = capsys.readouterr().out
    assert "validation of training_set 2025-07-02..2025-07-04" in out
    assert "PASSED" in out and "0 critical failure(s), 0 warning(s)" in out, out
    assert cli_main(["validate", "--table", "training_set", *common]) == 2
    assert "pass --name" in capsys.readouterr().err


@pytest.mark.parametrize("table", ["features", "training_set"])
def test_a_sequence_not_of_seq_len_steps_fails(spark, lake, data, table):
    """seq holds exactly seq_len steps (compact): one padded by a step and one cut short are both caught."""
    spec, rows = (FEATURES, data[1]) if table == "features" else (TRAINING_SET, data[2])
    on_d2 = [i for i, r in enumerate(rows) if r["event_date"] == D2]
    padded, cut = on_d2[:2]
    width = len(rows[padded]["seq"]) // rows[padded]["seq_len"]
    bad = edit(
        rows,
        spec,
        {
            padded: lambda r: {"seq": [*r["seq"], *[0.0] * width]},  # one step of padding
            cut: lambda r: {"seq": r["seq"][:-1]},  # one value short
        },
    )

    reference = None
    if table == "features":  # the row count reconciles with silver: give the true counts
        per_day = {x: sum(r["event_date"].isoformat() == x for r in rows) for x in ALL_DAYS}
        reference = {next(e.key for e in load_suite(spec).entries if e.row_count_terms is not None): per_day}
    report = validate(spark, lake, spec, bad, reference)

    by_type = {(o.type, o.column): o for o in report.critical_failures}
    failure = by_type[("unexpected_rows_expectation", "(table)")]
    assert failure.partitions == [D2.isoformat()]
    assert {x["event_id"] for x in failure.examples} == {rows[padded]["event_id"], rows[cut]["event_id"]}
