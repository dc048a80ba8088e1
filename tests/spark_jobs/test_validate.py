"""Validation gates: every suite passes good data and names what bad data breaks.

One small lake (two days of landing, bronze, quarantine, silver, labels) is
written with tracelake.tables.write_table, so the gate's read path is the
real one. Bad data is injected into copies of the good rows; each case
checks the expectation, the column and the days the failure is traced to.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest

from tracelake.cli import main as cli_main
from tracelake.runs import job_run
from tracelake.tables import all_table_specs, domain, table_spec, write_table
from tracelake.validation import (
    SEVERITIES,
    Outcome,
    SuiteError,
    ValidationFailed,
    ValidationReport,
    gx_suite,
    load_suite,
    require_valid,
    validate_frame,
    validate_table,
)

D1, D2, D3 = dt.date(2025, 7, 1), dt.date(2025, 7, 2), dt.date(2025, 7, 3)
PER_DAY = 30
SILVER, BRONZE, LABELS = (
    table_spec(n) for n in ("silver_scan_events", "bronze_scan_events", "silver_labels")
)
QUARANTINE, LANDING = table_spec("bronze_quarantine"), table_spec("landing_scans")
STEPS = list(domain().business_steps.items())  # (business_step, tier)
EVENT_TYPES = domain().event_types
ANOMALY_TYPES = domain().anomaly_types


# ---------------------------------------------------------------- valid rows, per the table schemas


def silver_rows(day: dt.date, n: int = PER_DAY) -> list[dict]:
    rows = []
    for i in range(n):
        step, tier = STEPS[i % len(STEPS)]
        serial = f"{day:%d}{i:07d}"
        rows.append(
            {
                "event_id": f"ev-{day:%m%d}-{i:03d}",
                "epc_code": f"001.8804823.0000001.000001.20250601.{serial}",
                "event_time": dt.datetime.combine(day, dt.time(6 + i % 12, i % 60)),
                "record_time": dt.datetime.combine(day, dt.time(6 + i % 12, i % 60, 7)),
                "event_date": day,
                "location_id": f"LOC-{tier:05d}",
                "business_step": step,
                "event_type": EVENT_TYPES[i % len(EVENT_TYPES)],
                "operator_id": "op-1",
                "device_id": "dev-1",
                "product_name": "Green Tea 500ml",
                "location_name": f"{step} 01",
                "location_tier": tier,
                "latitude": 36.0 + (i % 10) * 0.1,
                "longitude": 127.5 + (i % 10) * 0.1,
                "epc_header": "001",
                "epc_company": "8804823",
                "epc_product": "0000001",
                "epc_lot": "000001",
                "epc_manufacture_date": dt.date(2025, 6, 1),
                "epc_serial": serial,
                "epc_format_valid": True,
                "epc_company_known": True,
                "epc_product_known": True,
                "epc_manufacture_date_valid": True,
                "_source_file": f"landing/scans/date={day}/part-00000.csv",
                "_run_id": "test",
            }
        )
    return rows


def bronze_rows(day: dt.date) -> list[dict]:
    rows = [
        {c: r[c] for c in BRONZE.column_names if c in r} | {"_ingested_at": dt.datetime(2025, 7, 4)}
        for r in silver_rows(day)
    ]
    return [*rows, dict(rows[0])]  # bronze keeps a re-delivered duplicate


def label_rows(day: dt.date) -> list[dict]:
    return [
        {
            "event_id": r["event_id"],
            "epc_code": r["epc_code"],
            "anomaly_type": ANOMALY_TYPES[i % len(ANOMALY_TYPES)],
            "confirmed_at": dt.datetime.combine(day, dt.time(9, i)),
            "label_date": day,
            "_run_id": "test",
        }
        for i, r in enumerate(silver_rows(day)[:8])
    ]


def frame(spark, spec, rows):
    """A frame in the table's column order; DDL types, every column nullable (bad rows hold nulls)."""
    return spark.createDataFrame([tuple(r[c] for c in spec.column_names) for r in rows], spec.ddl)


def write_landing(lake: Path, day: dt.date, rows: list[dict], extra_lines: int = 0) -> None:
    folder = Path(LANDING.location(lake)) / f"date={day}"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "part-00000.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(LANDING.column_names)
        for r in rows:
            writer.writerow(
                [
                    f"{r[c]:%Y-%m-%dT%H:%M:%SZ}" if c in ("event_time", "record_time") else r[c]
                    for c in LANDING.column_names
                ]
            )
        for i in range(extra_lines):
            writer.writerow(["broken", "line", str(i)])


@pytest.fixture(scope="module")
def lake(spark, test_settings, tmp_path_factory):
    """Settings of a lake holding two good days of every validated table (and their previous layers)."""
    settings = test_settings.model_copy(
        update={"lake_root": str(tmp_path_factory.mktemp("validated") / "lake")}
    )
    root = settings.lake_path
    bronze = bronze_rows(D1) + bronze_rows(D2)
    for day in (D1, D2):
        # D2 also delivered one unreadable line, which ingest quarantined.
        write_landing(root, day, [r for r in bronze if r["event_date"] == day], extra_lines=int(day == D2))
    quarantined = [
        {
            "source": "scans",
            "raw_payload": "broken,line,0",
            "reason": "unparseable: expected 9 fields, got 3",
            "ingest_date": D2,
            "_source_file": "x.csv",
            "_ingested_at": dt.datetime(2025, 7, 4),
            "_run_id": "test",
        }
    ]
    write_table(frame(spark, QUARANTINE, quarantined), QUARANTINE, root, start=D1, end=D2)
    write_table(frame(spark, BRONZE, bronze), BRONZE, root, start=D1, end=D2)
    write_table(frame(spark, SILVER, silver_rows(D1) + silver_rows(D2)), SILVER, root, start=D1, end=D2)
    write_table(frame(spark, LABELS, label_rows(D1) + label_rows(D2)), LABELS, root, start=D1, end=D2)
    return settings


def validate(spark, settings, spec, rows, reference=None):
    """Validate an in-memory frame with the table's suite (no lake); returns the report."""
    suite = load_suite(spec)
    with job_run("validate", settings=settings, spark=spark, start=D1, end=D2) as run:
        return validate_frame(
            frame(spark, spec, rows),
            suite,
            date_column=spec.date_column,
            start=D1,
            end=D2,
            run_id=run.run_id,
            settings=settings.validation,
            log=run.log,
            reference_counts=reference,
        )


def failures(report: ValidationReport) -> dict[tuple[str, str], list[str]]:
    """(expectation, column) -> days, of the critical failures."""
    return {(o.type, o.column): o.partitions for o in report.critical_failures}


def reconciliation_key(spec) -> str:
    return next(e.key for e in load_suite(spec).entries if e.row_count_terms is not None)


# ---------------------------------------------------------------- suites


def test_every_suite_loads_resolved_and_gx_accepts_it():
    specs = [s for s in all_table_specs() if s.expectations]
    assert {"bronze_scan_events", "silver_scan_events", "silver_labels"} <= {s.name for s in specs}
    for spec in specs:
        suite = load_suite(spec)
        assert suite.entries and {e.severity for e in suite.entries} <= set(SEVERITIES)
        for entry in suite.entries:
            text = json.dumps(entry.kwargs)
            assert not any(p in text for p in ('"$domain"', '"$table"', '"$column"')), (spec.name, entry.key)
        expectations = gx_suite(suite, {e.key: 0 for e in suite.entries if e.row_count_terms is not None})
        assert len(expectations.expectations) == len(suite.entries)
        assert all(e.meta["severity"] in SEVERITIES for e in expectations.expectations)


def test_placeholders_come_from_the_schemas():
    entries = {(e.type, e.kwargs.get("column")): e for e in load_suite(SILVER).entries}
    assert entries[("expect_column_values_to_be_in_set", "business_step")].kwargs["value_set"] == [
        s for s, _ in STEPS
    ]
    assert entries[("expect_column_values_to_be_in_set", "location_tier")].kwargs["value_set"] == [
        0,
        1,
        2,
        3,
        4,
        5,
    ]
    assert entries[("expect_column_values_to_match_regex", "epc_code")].kwargs["regex"] == domain().epc_regex
    assert entries[("expect_table_columns_to_match_set", None)].kwargs["column_set"] == SILVER.column_names
    assert entries[("expect_column_values_to_be_of_type", "location_tier")].kwargs["type_"] == "IntegerType"
    not_null = {c for t, c in entries if t == "expect_column_values_to_not_be_null"}
    assert set(SILVER.required_columns) <= not_null


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "event_id"},
                "severity": "fatal",
            },
            r"bad\.json expectation #0 .*severity 'fatal'",
        ),
        (
            {
                "type": "expect_column_values_to_not_be_null",
                "kwargs": {"column": "evnt_id"},
                "severity": "critical",
            },
            r"expectation #0 .*\['evnt_id'\] are not columns of table 'silver_labels'",
        ),
        (
            {
                "type": "expect_column_values_to_be_in_set",
                "severity": "critical",
                "kwargs": {"column": "anomaly_type", "value_set": {"$domain": "anomalies"}},
            },
            r"unknown \$domain key 'anomalies'.*anomaly_types",
        ),
    ],
)
def test_suite_errors_name_the_file_entry_and_value(tmp_path, entry, message):
    file = tmp_path / "bad.json"
    file.write_text(json.dumps({"expectations": [entry]}))
    with pytest.raises(SuiteError, match=message):
        load_suite(dataclasses.replace(LABELS, expectations=str(file)))


def test_gx_refusal_is_a_suite_error(tmp_path):
    file = tmp_path / "bad.json"
    file.write_text(
        json.dumps(
            {
                "expectations": [
                    {
                        "type": "expect_column_values_to_be_between",
                        "kwargs": {"column": "label_date", "mostly": 7},
                        "severity": "critical",
                    }
                ]
            }
        )
    )
    with pytest.raises(SuiteError, match="expectation 0 .*Great Expectations refuses it"):
        gx_suite(load_suite(dataclasses.replace(LABELS, expectations=str(file))))


# ---------------------------------------------------------------- good data passes (read from the lake)


@pytest.mark.parametrize("table", ["bronze_scan_events", "silver_scan_events", "silver_labels"])
def test_good_data_passes(spark, lake, table):
    with job_run("validate", settings=lake, spark=spark, start=D1, end=D2) as run:
        report = validate_table(run, table)
    assert report.passed, report.summary_text()
    assert not report.warnings, report.summary_text()
    assert report.failed_partitions == [] and report.passed_ranges() == [(D1, D2)]
    assert report.row_count > 0
    saved = json.loads(Path(report.results_path).read_text())
    assert saved["passed"] is True and saved["table"] == table and saved["gx_result"]["success"] is True
    assert Path(report.results_path).parent == lake.lake_path / "_validation" / table / run.run_id
    docs = Path(report.docs_path)
    assert docs.name == "index.html" and docs.is_file()
    assert list(docs.parent.glob(f"validations/{table}/**/*.html"))


# ---------------------------------------------------------------- bad data fails, naming expectation, column, days


def test_bad_silver_fails_naming_expectation_and_column(spark, lake):
    rows = silver_rows(D1) + silver_rows(D2)
    day2 = [r for r in rows if r["event_date"] == D2]
    day2[1]["location_id"] = None  # null key
    day2[2]["event_id"] = day2[3]["event_id"]  # duplicated event id
    day2[4]["longitude"] = 200.0  # out of range
    day2[5]["event_time"] = dt.datetime.combine(D1, dt.time(23))  # outside its partition
    for r in day2[10:18]:  # 8 of 60 EPCs malformed: over the mostly=0.9
        r["epc_code"] = f"BAD-EPC-{r['epc_serial']}"
    for r in rows:  # distribution shifted north
        r["latitude"] += 8.0
    reference = {reconciliation_key(SILVER): {D1.isoformat(): PER_DAY, D2.isoformat(): PER_DAY + 1}}

    report = validate(spark, lake, SILVER, rows, reference)

    both, second = [D1.isoformat(), D2.isoformat()], [D2.isoformat()]
    assert failures(report) == {
        ("expect_column_values_to_not_be_null", "location_id"): second,
        ("expect_column_values_to_be_unique", "event_id"): second,
        ("expect_column_values_to_be_between", "longitude"): second,
        ("unexpected_rows_expectation", "(table)"): second,
        ("expect_column_values_to_match_regex", "epc_code"): second,
        ("expect_table_row_count_to_equal", "(table)"): second,  # 1 row missing on D2 vs bronze
        ("expect_column_mean_to_be_between", "latitude"): both,  # an aggregate fails the whole range
    }
    assert not report.passed and report.failed_partitions == [D1, D2]
    by_type = {o.type: o for o in report.critical_failures}
    assert by_type["expect_column_values_to_be_unique"].examples == [day2[3]["event_id"]] * 2
    assert by_type["expect_column_values_to_match_regex"].unexpected_count == 8
    assert by_type["expect_column_values_to_match_regex"].examples[0].startswith("BAD-EPC-")
    assert by_type["expect_table_row_count_to_equal"].observed["by_day"] == {
        D2.isoformat(): {"rows": PER_DAY, "expected": PER_DAY + 1}
    }
    summary = report.summary_text()
    assert "FAILED" in summary
    assert "expect_column_values_to_be_unique  column=event_id" in summary
    assert "expect_column_mean_to_be_between  column=latitude  observed=44." in summary
    with pytest.raises(ValidationFailed, match="expect_column_values_to_not_be_null on location_id"):
        require_valid(report)


def test_bad_bronze_fails_naming_expectation_and_column(spark, lake):
    rows = bronze_rows(D1) + bronze_rows(D2)
    day1 = [r for r in rows if r["event_date"] == D1]
    day1[1]["event_id"] = None  # null key
    day1[2]["business_step"] = "Moon"  # not in the enumeration
    day1[3]["event_time"] = dt.datetime.combine(D2, dt.time(1))  # outside its partition
    for r in day1[10:19]:  # 9 of 62 EPCs malformed
        r["epc_code"] = r["epc_code"].replace(".", "-")

    report = validate(
        spark, lake, BRONZE, rows, {reconciliation_key(BRONZE): {D1.isoformat(): 31, D2.isoformat(): 31}}
    )

    first = [D1.isoformat()]
    assert failures(report) == {
        ("expect_column_values_to_not_be_null", "event_id"): first,
        ("expect_column_values_to_be_in_set", "business_step"): first,
        ("unexpected_rows_expectation", "(table)"): first,
        ("expect_column_values_to_match_regex", "epc_code"): first,
    }
    assert report.passed_ranges() == [(D2, D2)]
    assert by_type(report)["expect_column_values_to_be_in_set"].examples == ["Moon"]
    assert by_type(report)["unexpected_rows_expectation"].examples[0]["event_id"] == day1[3]["event_id"]


def test_bad_labels_fail_naming_expectation_and_column(spark, lake):
    rows = label_rows(D1) + label_rows(D2)
    rows[1]["epc_code"] = None  # null key (D1)
    rows[9]["anomaly_type"] = rows[8]["anomaly_type"]  # (event_id, anomaly_type) twice (D2)
    rows[9]["event_id"] = rows[8]["event_id"]
    rows[10]["anomaly_type"] = "teleport"  # not an anomaly type (D2)
    rows[11]["confirmed_at"] = dt.datetime.combine(D3, dt.time(0, 5))  # outside label_date (D2)

    report = validate(spark, lake, LABELS, rows)

    first, second = [D1.isoformat()], [D2.isoformat()]
    assert failures(report) == {
        ("expect_column_values_to_not_be_null", "epc_code"): first,
        ("expect_compound_columns_to_be_unique", "event_id,anomaly_type"): second,
        ("expect_column_values_to_be_in_set", "anomaly_type"): second,
        ("unexpected_rows_expectation", "(table)"): second,
    }
    assert report.passed_ranges() == []


def test_warning_failure_is_recorded_but_does_not_fail_the_step(spark, lake):
    report = validate(spark, lake, LABELS, [])  # a range without any confirmed label
    assert report.passed and report.critical_failures == []
    assert [(o.type, o.severity, o.observed) for o in report.warnings] == [
        ("expect_table_row_count_to_be_between", "warning", 0)
    ]
    assert "WARNING   expect_table_row_count_to_be_between" in report.summary_text()
    assert require_valid(report) is report


# ---------------------------------------------------------------- the entrypoint


def test_cli_exits_1_on_critical_failure_and_writes_results_and_data_docs(spark, lake, capsys):
    root = lake.lake_path
    silver = silver_rows(D3)
    silver[5]["event_id"] = silver[6]["event_id"]  # a duplicate got through, and bronze has no D3 at all
    write_table(frame(spark, SILVER, silver), SILVER, root, start=D3, end=D3)

    code = cli_main(
        [
            "validate",
            "--table",
            "silver_scan_events",
            "--start-date",
            D3.isoformat(),
            "--lake-root",
            str(root),
            "--set",
            "spark.shuffle_partitions=2",
        ]
    )

    assert code == 1
    out = capsys.readouterr().out
    assert "validation of silver_scan_events 2025-07-03..2025-07-03" in out and "FAILED" in out
    assert "CRITICAL  expect_column_values_to_be_unique  column=event_id" in out
    assert "failed days (next step must skip them): 2025-07-03" in out
    assert "CRITICAL  expect_table_row_count_to_equal  column=(table)  observed=" in out
    results = Path(out.split("results: ")[1].splitlines()[0])
    assert results.parent.parent == root / "_validation" / "silver_scan_events"
    saved = json.loads(results.read_text())
    assert (saved["passed"], saved["failed_partitions"]) == (False, ["2025-07-03"])
    assert [o["type"] for o in saved["outcomes"] if not o["success"]] == [
        "expect_table_row_count_to_equal",
        "expect_column_values_to_be_unique",
    ]
    assert (results.parent / "data_docs" / "index.html").is_file()


def test_cli_user_error_exits_2(capsys, lake):
    assert (
        cli_main(
            [
                "validate",
                "--table",
                "silver_scan_event",
                "--start-date",
                "2025-07-01",
                "--lake-root",
                str(lake.lake_path),
            ]
        )
        == 2
    )
    assert "unknown table 'silver_scan_event'" in capsys.readouterr().err


# ---------------------------------------------------------------- the report, without Spark


def test_report_gates_days_and_ranges():
    def outcome(severity, days, success=False):
        return Outcome(
            key="1",
            type="expect_column_values_to_be_unique",
            severity=severity,
            columns=["event_id"],
            success=success,
            unexpected_count=2,
            element_count=10,
            unexpected_percent=20.0,
            examples=["e1", "e1"],
            partitions=days,
        )

    report = ValidationReport(
        table="silver_scan_events",
        suite="silver_scan_events",
        run_id="r",
        start=D1,
        end=D1 + dt.timedelta(days=3),
        date_column="event_date",
        row_count=10,
        outcomes=[
            outcome("critical", ["2025-07-02"]),
            outcome("warning", ["2025-07-04"]),
            outcome("critical", [], True),
        ],
    )
    assert report.failed_partitions == [D2]
    assert report.passed_ranges() == [(D1, D1), (D3, dt.date(2025, 7, 4))]
    with pytest.raises(ValidationFailed, match="expect_column_values_to_be_unique on event_id") as raised:
        require_valid(report)
    assert raised.value.report is report


def by_type(report: ValidationReport) -> dict[str, Outcome]:
    return {o.type: o for o in report.critical_failures}
