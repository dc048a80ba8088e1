"""Landing parsing and bronze typing/quarantine on tiny hand-made frames (whole-frame comparison)."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs.transforms import bronze
from tracelake import landing_records as landing
from tracelake.tables import domain, table_spec

pytestmark = pytest.mark.spark35

SCANS = table_spec("landing_scans")
LABELS = table_spec("landing_labels")
DAY = dt.date(2025, 7, 1)
INGESTED = dt.datetime(2025, 7, 2, 3, 0, 0)
LINES_DDL = (
    "value string, source string, _source_file string, format string, landing_date date, "
    "header_id int, header_line string"
)
# The files here predate the optional record_time column: it parses as null.
OLD_COLUMNS = [c for c in SCANS.column_names if c != "record_time"]
HEADER = ",".join(OLD_COLUMNS)
EPC = "001.8804823.0000001.000001.20250701.000000001"


def _lines(spark, rows):
    """Text lines; a value given as bytes becomes a line holding exactly those bytes."""
    plain = [
        (v if isinstance(v, str) else None, v.hex() if isinstance(v, bytes) else None, *rest)
        for v, *rest in rows
    ]
    frame = spark.createDataFrame(plain, "text string, hex string, " + LINES_DDL.split(", ", 1)[1])
    return frame.select(
        F.coalesce(F.col("text"), F.unhex("hex").cast("string")).alias("value"),
        *[c for c in frame.columns if c not in ("text", "hex")],
    )


def _csv(value, file="f1.csv", header_id=0, header=HEADER):
    return (value, "scans", file, "csv", DAY, header_id, header)


def _json(value, file="f2.json"):
    return (value, "scans", file, "json", DAY, None, None)


def _parsed(spark, rows):
    ddl = landing.parsed_ddl(SCANS)
    return spark.createDataFrame(rows, ddl)


def _scan(
    event_id="e1",
    epc=EPC,
    time="2025-07-01T08:00:00Z",
    location="LOC-1",
    file="f1.csv",
    raw="raw",
    error=None,
    extra=None,
):
    return (
        "scans",
        file,
        DAY,
        raw,
        event_id,
        epc,
        time,
        None,
        location,
        "Factory",
        "Aggregation",
        "op",
        "dev",
        "Tea",
        error,
        extra or [],
    )


def test_landing_format_from_extension():
    assert [
        landing.landing_format(n)
        for n in ("a.csv", "b.JSON", "c.jsonl", "d.parquet", "e.csv.gz", "f.txt", "g.parquet.gz")
    ] == ["csv", "json", "json", "parquet", "csv", None, None]


def test_parse_text_lines_csv_and_json(spark):
    good = f"e1,{EPC},2025-07-01T08:00:00Z,LOC-1,Factory,Aggregation,op,dev,Tea"
    reordered = "event_time,event_id,location_id,epc_code,note"
    lines = _lines(
        spark,
        [
            _csv(HEADER),  # the header line is not a row
            _csv(good),
            _csv(f'e2,"{EPC}", 2025-07-01T09:00:00Z ,LOC-1,,,,,'),  # quoted, padded, empty optionals
            _csv("e3,x,2025-07-01T08:00:00Z,LOC-1"),  # too few fields
            _csv(""),
            _csv(b"e4,\xff\xfe,2025-07-01T08:00:00Z,LOC-1,,,,,"),
            _csv("2025-07-01T10:00:00Z,e5,LOC-2,X.Y,hello", file="f3.csv", header_id=1, header=reordered),
            _json(
                '{"event_id":"e6","epc_code":"E","event_time":"2025-07-01T08:00:00Z","location_id":"L","zz":1,"aa":2}'
            ),
            _json('{"event_id":"e7","epc_code":"E","event_time":"2025-07-01T08:00:00Z"'),
            _json("[1, 2]"),
        ],
    )
    headers = {0: OLD_COLUMNS, 1: reordered.split(",")}
    actual = landing.parse_text_lines(lines, SCANS, headers)
    cols = ("e1", EPC, "2025-07-01T08:00:00Z", None, "LOC-1", "Factory", "Aggregation", "op", "dev", "Tea")
    none9 = (None,) * len(SCANS.column_names)
    expected = _parsed(
        spark,
        [
            ("scans", "f1.csv", DAY, good, *cols, None, []),
            (
                "scans",
                "f1.csv",
                DAY,
                f'e2,"{EPC}", 2025-07-01T09:00:00Z ,LOC-1,,,,,',
                "e2",
                EPC,
                "2025-07-01T09:00:00Z",
                None,
                "LOC-1",
                None,
                None,
                None,
                None,
                None,
                None,
                [],
            ),
            (
                "scans",
                "f1.csv",
                DAY,
                "e3,x,2025-07-01T08:00:00Z,LOC-1",
                *none9,
                "unparseable: expected 9 fields, got 4",
                [],
            ),
            ("scans", "f1.csv", DAY, "", *none9, "unparseable: blank line", []),
            (
                "scans",
                "f1.csv",
                DAY,
                "e4,\ufffd\ufffd,2025-07-01T08:00:00Z,LOC-1,,,,,",
                *none9,
                "non_utf8: invalid UTF-8 bytes (shown as U+FFFD)",
                [],
            ),
            (
                "scans",
                "f3.csv",
                DAY,
                "2025-07-01T10:00:00Z,e5,LOC-2,X.Y,hello",
                "e5",
                "X.Y",
                "2025-07-01T10:00:00Z",
                None,
                "LOC-2",
                None,
                None,
                None,
                None,
                None,
                None,
                [],
            ),
            (
                "scans",
                "f2.json",
                DAY,
                '{"event_id":"e6","epc_code":"E","event_time":"2025-07-01T08:00:00Z","location_id":"L","zz":1,"aa":2}',
                "e6",
                "E",
                "2025-07-01T08:00:00Z",
                None,
                "L",
                None,
                None,
                None,
                None,
                None,
                None,
                ["aa", "zz"],
            ),
            (
                "scans",
                "f2.json",
                DAY,
                '{"event_id":"e7","epc_code":"E","event_time":"2025-07-01T08:00:00Z"',
                *none9,
                "unparseable: not a JSON object",
                [],
            ),
            ("scans", "f2.json", DAY, "[1, 2]", *none9, "unparseable: not a JSON object", []),
        ],
    )
    assertDataFrameEqual(actual, expected)


def test_parse_parquet_rows_keeps_the_row_as_json(spark):
    rows = spark.createDataFrame(
        [("e1", "E", "2025-07-01T08:00:00Z", "L", "x", "f.parquet", DAY)],
        "event_id string, epc_code string, event_time string, location_id string, extra string, "
        "_source_file string, landing_date date",
    )
    rows = rows.select(
        F.struct("event_id", "epc_code", "event_time", "location_id", "extra").alias("_payload"),
        F.lit("scans").alias("source"),
        "_source_file",
        "landing_date",
    )
    expected = _parsed(
        spark,
        [
            (
                "scans",
                "f.parquet",
                DAY,
                '{"event_id":"e1","epc_code":"E","event_time":"2025-07-01T08:00:00Z","location_id":"L","extra":"x"}',
                "e1",
                "E",
                "2025-07-01T08:00:00Z",
                None,
                "L",
                None,
                None,
                None,
                None,
                None,
                None,
                [],
            )
        ],
    )
    assertDataFrameEqual(landing.parse_parquet_rows(rows, SCANS), expected)


def test_classify_scans_gives_each_row_one_reason(spark):
    locations = spark.createDataFrame([("LOC-1",)], "location_id string")
    parsed = _parsed(
        spark,
        [
            _scan("ok"),
            _scan("ok-offset", time="2025-07-01T10:30:00+02:00", epc="not-an-epc"),  # a fake EPC flows on
            _scan(None, raw="bad1", error="unparseable: expected 9 fields, got 7"),
            _scan(None, epc=None, raw="bad2"),
            _scan("e3", time="2025-13-01", raw="bad3"),
            _scan("e4", time="N/A", location="LOC-99999", raw="bad4"),  # bad type wins over unknown location
            _scan("e5", location="LOC-99999", raw="bad5"),
            _scan("e6", time="2025-07-02T00:00:03Z", raw="bad6"),
            _scan("e7", time="2025-07-01T00:00:00+01:00", raw="bad7"),  # 2025-06-30T23:00Z
        ],
    )
    classified = bronze.classify_scans(parsed, locations, SCANS.required_columns)
    assertDataFrameEqual(
        classified.select("event_id", "reason_code", "reason", "event_ts"),
        spark.createDataFrame(
            [
                ("ok", None, None, dt.datetime(2025, 7, 1, 8)),
                ("ok-offset", None, None, dt.datetime(2025, 7, 1, 8, 30)),
                (None, "unparseable", "unparseable: expected 9 fields, got 7", dt.datetime(2025, 7, 1, 8)),
                (
                    None,
                    "missing_required",
                    "missing_required: event_id, epc_code",
                    dt.datetime(2025, 7, 1, 8),
                ),
                ("e3", "bad_type", "bad_type: event_time='2025-13-01'", None),
                ("e4", "bad_type", "bad_type: event_time='N/A'", None),
                ("e5", "unknown_location", "unknown_location: LOC-99999", dt.datetime(2025, 7, 1, 8)),
                (
                    "e6",
                    "outside_partition",
                    "outside_partition: event_time 2025-07-02T00:00:03Z not in date=2025-07-01",
                    dt.datetime(2025, 7, 2, 0, 0, 3),
                ),
                (
                    "e7",
                    "outside_partition",
                    "outside_partition: event_time 2025-07-01T00:00:00+01:00 not in date=2025-07-01",
                    dt.datetime(2025, 6, 30, 23),
                ),
            ],
            "event_id string, reason_code string, reason string, event_ts timestamp",
        ),
    )
    assert {r.reason_code for r in classified.collect()} - {None} <= set(bronze.REASON_CODES)


def test_bronze_and_quarantine_rows(spark):
    locations = spark.createDataFrame([("LOC-1",)], "location_id string")
    parsed = _parsed(spark, [_scan("ok", raw="r-ok"), _scan("e5", location="LOC-9", raw="r-bad")])
    classified = bronze.classify_scans(parsed, locations, SCANS.required_columns)
    assertDataFrameEqual(
        bronze.bronze_scan_events(classified, "run-1", INGESTED),
        spark.createDataFrame(
            [
                (
                    "ok",
                    EPC,
                    dt.datetime(2025, 7, 1, 8),
                    None,
                    "LOC-1",
                    "Factory",
                    "Aggregation",
                    "op",
                    "dev",
                    "Tea",
                    DAY,
                    "f1.csv",
                    INGESTED,
                    "run-1",
                )
            ],
            table_spec("bronze_scan_events").ddl,
        ),
    )
    assertDataFrameEqual(
        bronze.quarantine_rows(classified, "run-1", INGESTED),
        spark.createDataFrame(
            [("scans", "r-bad", "unknown_location: LOC-9", DAY, "f1.csv", INGESTED, "run-1")],
            table_spec("bronze_quarantine").ddl,
        ),
    )


def test_classify_labels(spark):
    def label(event_id, anomaly, confirmed, raw):
        return ("labels", "l.csv", DAY, raw, event_id, "E", anomaly, confirmed, None, [])

    parsed = spark.createDataFrame(
        [
            label("e1", "jump", "2025-07-01T10:00:00Z", "ok"),
            label("e2", "teleport", "2025-07-01T10:00:00Z", "r2"),
            label("e3", "jump", "yesterday", "r3"),
            label("e4", "jump", "2025-06-30T10:00:00Z", "r4"),
            label("e5", None, "2025-07-01T10:00:00Z", "r5"),
        ],
        landing.parsed_ddl(LABELS),
    )
    classified = bronze.classify_labels(parsed, domain().anomaly_types, LABELS.required_columns)
    assertDataFrameEqual(
        classified.select("raw_payload", "reason"),
        spark.createDataFrame(
            [
                ("ok", None),
                ("r2", "unknown_anomaly_type: 'teleport'"),
                ("r3", "bad_type: confirmed_at='yesterday'"),
                ("r4", "outside_partition: confirmed_at 2025-06-30T10:00:00Z not in date=2025-07-01"),
                ("r5", "missing_required: anomaly_type"),
            ],
            "raw_payload string, reason string",
        ),
    )
    assertDataFrameEqual(
        bronze.accepted_labels(classified),
        spark.createDataFrame(
            [("e1", "E", "jump", dt.datetime(2025, 7, 1, 10), DAY)],
            "event_id string, epc_code string, anomaly_type string, confirmed_at timestamp, label_date date",
        ),
    )


def test_landing_outcomes_count_per_file_and_reason(spark):
    ddl = (
        "source string, _source_file string, reason_code string, reason string, raw_payload string, "
        "extra_columns array<string>"
    )
    scans = spark.createDataFrame(
        [
            ("scans", "a", None, None, "1", ["x"]),
            ("scans", "a", None, None, "2", ["y", "x"]),
            ("scans", "a", "bad_type", "bad_type: t='b'", "4", []),
            ("scans", "a", "bad_type", "bad_type: t='a'", "3", []),
        ],
        ddl,
    )
    labels = spark.createDataFrame([("labels", "l", None, None, "5", [])], ddl)
    assertDataFrameEqual(
        bronze.landing_outcomes(scans, labels),
        spark.createDataFrame(
            [
                ("scans", "a", None, 2, ["x", "y"], None),
                ("scans", "a", "bad_type", 2, [], ("bad_type: t='a'", "3")),
                ("labels", "l", None, 1, [], None),
            ],
            "source string, _source_file string, reason_code string, rows bigint, extra_columns array<string>, "
            "example struct<reason: string, raw_payload: string>",
        ),
    )


def test_reconcile_passes_and_fails():
    outcomes = [
        {"source": "scans", "reason_code": None, "rows": 10},
        {"source": "scans", "reason_code": "bad_type", "rows": 2},
        {"source": "labels", "reason_code": None, "rows": 3},
        {"source": "labels", "reason_code": "unknown_anomaly_type", "rows": 1},
    ]
    result = bronze.reconcile(outcomes, {"bronze_scan_events": 10, "bronze_quarantine": 3})
    assert result["scans"] == {
        "landing_rows": 12,
        "accepted_rows": 10,
        "quarantine_rows": 2,
        "bronze_rows": 10,
        "difference": 0,
        "ok": True,
    }
    assert result["labels"]["ok"] and result["quarantine_table"]["ok"]
    with pytest.raises(bronze.ReconciliationError, match="'difference': 1"):
        bronze.reconcile(outcomes, {"bronze_scan_events": 9, "bronze_quarantine": 3})
    with pytest.raises(bronze.ReconciliationError, match="quarantine_table"):
        bronze.reconcile(outcomes, {"bronze_scan_events": 10, "bronze_quarantine": 2})
    assert bronze.reconcile(outcomes, {"bronze_scan_events": 9, "bronze_quarantine": 3}, tolerance=1)[
        "scans"
    ]["ok"]


def test_typed_reference_reports_bad_rows(spark):
    spec = table_spec("reference_locations")
    raw = spark.createDataFrame(
        [
            ("L1", "Factory 01", "Factory", "0", "37.5", " 127.0 "),
            ("L2", "Hub", "LGS_HUB", "two", "36.0", "128.0"),
            ("L3", "Shop", "POS", "5", "", "128.0"),
            ("L3", "Shop again", "POS", "5", "36.0", "128.0"),
        ],
        "location_id string, location_name string, business_step string, tier string, latitude string, "
        "longitude string",
    )
    assertDataFrameEqual(
        bronze.typed_reference(raw, spec, ["location_id"]),
        spark.createDataFrame(
            [
                ("L1", "Factory 01", "Factory", 0, 37.5, 127.0, None, None, None),
                ("L2", "Hub", "LGS_HUB", None, 36.0, 128.0, None, None, "tier='two' is not a int"),
                (
                    "L3",
                    "Shop",
                    "POS",
                    5,
                    None,
                    128.0,
                    None,
                    None,
                    "latitude='' is not a double; location_id occurs 2 times",
                ),
                ("L3", "Shop again", "POS", 5, 36.0, 128.0, None, None, "location_id occurs 2 times"),
            ],
            spec.ddl + ", _problem string",
        ),
    )
