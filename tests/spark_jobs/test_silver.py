"""Silver transforms on tiny hand-made frames: dedup, enrichment, EPC parsing and flags, labels."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.testing import assertDataFrameEqual

from spark_jobs.transforms import silver
from tracelake.tables import domain, table_spec

pytestmark = pytest.mark.spark35

BRONZE = table_spec("bronze_scan_events")
DAY = dt.date(2025, 7, 1)
T8 = dt.datetime(2025, 7, 1, 8)
INGESTED = dt.datetime(2025, 7, 2, 3)
EPC = "001.8804823.0000001.000001.20250701.000000001"


def _bronze(event_id="e1", epc=EPC, time=T8, location="L1", file="a.csv", operator="op"):
    return (
        event_id,
        epc,
        time,
        None,
        location,
        "Factory",
        "Aggregation",
        operator,
        "dev",
        "Tea",
        time.date(),
        file,
        INGESTED,
        "bronze-run",
    )


def _locations(spark):
    return spark.createDataFrame(
        [
            ("L1", "Factory 01", "Factory", 0, 37.5, 127.0, None, None),
            ("L2", "Shop 01", "POS", 5, 36.0, 128.0, None, None),
        ],
        table_spec("reference_locations").ddl,
    )


def _products(spark):
    return spark.createDataFrame([("8804823", "0000001", "Tea")], table_spec("reference_products").ddl)


def test_deduplicate_events_keeps_one_row_per_event_id_deterministically(spark):
    rows = [
        _bronze("e1", file="b.csv"),
        _bronze("e1", file="a.csv"),  # the same event re-delivered in another file: a.csv wins (name order)
        _bronze("e1", file="a.csv"),  # and twice in one file
        _bronze("e2", time=dt.datetime(2025, 7, 1, 9), operator="late"),
        _bronze("e2", time=T8, operator="early", file="z.csv"),  # conflicting copies: the earliest event wins
        _bronze("e3"),
    ]
    expected = [
        _bronze("e1", file="a.csv"),
        _bronze("e2", time=T8, operator="early", file="z.csv"),
        _bronze("e3"),
    ]
    for order in (rows, rows[::-1]):
        assertDataFrameEqual(
            silver.deduplicate_events(spark.createDataFrame(order, BRONZE.ddl)),
            spark.createDataFrame(expected, BRONZE.ddl),
        )


def test_enrich_with_locations(spark):
    events = spark.createDataFrame([("e1", "L1"), ("e2", "L2")], "event_id string, location_id string")
    assertDataFrameEqual(
        silver.enrich_with_locations(events, _locations(spark)),
        spark.createDataFrame(
            [("L1", "e1", "Factory 01", 0, 37.5, 127.0), ("L2", "e2", "Shop 01", 5, 36.0, 128.0)],
            "location_id string, event_id string, location_name string, location_tier int, latitude double, "
            "longitude double",
        ),
    )


def test_parse_epc_parts_and_flags(spark):
    cases = [
        ("ok", EPC, DAY),
        ("unknown_company", "001.1111111.0000001.000001.20250701.000000001", DAY),
        ("unknown_product", "001.8804823.0000009.000001.20250701.000000001", DAY),
        ("made_after_scan", "001.8804823.0000001.000001.20250702.000000001", DAY),
        ("no_such_day", "001.8804823.0000001.000001.20250231.000000001", DAY),
        ("month_13", "001.8804823.0000001.000001.20251301.000000001", DAY),
        ("letters", "001.8804823.0000001.000001.2025070A.000000001", DAY),
        ("bad_header", "01.8804823.0000001.000001.20250701.000000001", DAY),
        ("five_parts", "001.8804823.0000001.000001.20250701", DAY),
        ("garbage", "FAKE-EPC", DAY),
    ]
    events = spark.createDataFrame(cases, "event_id string, epc_code string, event_date date")
    parsed = silver.parse_epc(events, _products(spark), domain().epc_regex)
    d = dt.date
    assertDataFrameEqual(
        parsed.select(
            "event_id",
            "epc_header",
            "epc_company",
            "epc_product",
            "epc_lot",
            "epc_manufacture_date",
            "epc_serial",
            "epc_format_valid",
            "epc_company_known",
            "epc_product_known",
            "epc_manufacture_date_valid",
        ),
        spark.createDataFrame(
            [
                (
                    "ok",
                    "001",
                    "8804823",
                    "0000001",
                    "000001",
                    d(2025, 7, 1),
                    "000000001",
                    True,
                    True,
                    True,
                    True,
                ),
                (
                    "unknown_company",
                    "001",
                    "1111111",
                    "0000001",
                    "000001",
                    d(2025, 7, 1),
                    "000000001",
                    True,
                    False,
                    False,
                    True,
                ),
                (
                    "unknown_product",
                    "001",
                    "8804823",
                    "0000009",
                    "000001",
                    d(2025, 7, 1),
                    "000000001",
                    True,
                    True,
                    False,
                    True,
                ),
                (
                    "made_after_scan",
                    "001",
                    "8804823",
                    "0000001",
                    "000001",
                    d(2025, 7, 2),
                    "000000001",
                    True,
                    True,
                    True,
                    False,
                ),
                (
                    "no_such_day",
                    "001",
                    "8804823",
                    "0000001",
                    "000001",
                    None,
                    "000000001",
                    True,
                    True,
                    True,
                    False,
                ),
                (
                    "month_13",
                    "001",
                    "8804823",
                    "0000001",
                    "000001",
                    None,
                    "000000001",
                    True,
                    True,
                    True,
                    False,
                ),
                (
                    "letters",
                    "001",
                    "8804823",
                    "0000001",
                    "000001",
                    None,
                    "000000001",
                    False,
                    True,
                    True,
                    False,
                ),
                (
                    "bad_header",
                    "01",
                    "8804823",
                    "0000001",
                    "000001",
                    d(2025, 7, 1),
                    "000000001",
                    False,
                    True,
                    True,
                    True,
                ),
                ("five_parts", None, None, None, None, None, None, False, False, False, False),
                ("garbage", None, None, None, None, None, None, False, False, False, False),
            ],
            "event_id string, epc_header string, epc_company string, epc_product string, epc_lot string, "
            "epc_manufacture_date date, epc_serial string, epc_format_valid boolean, epc_company_known boolean, "
            "epc_product_known boolean, epc_manufacture_date_valid boolean",
        ),
    )


def test_silver_scan_events_matches_the_table_schema(spark):
    bronze = spark.createDataFrame(
        [_bronze("e1"), _bronze("e1", file="b.csv"), _bronze("e2", location="L2", epc="FAKE")], BRONZE.ddl
    )
    spec = table_spec("silver_scan_events")
    actual = silver.silver_scan_events(
        bronze, _locations(spark), _products(spark), domain().epc_regex, "run-9"
    )
    d = dt.date(2025, 7, 1)
    assertDataFrameEqual(
        actual.select(*spec.column_names),
        spark.createDataFrame(
            [
                (
                    "e1",
                    EPC,
                    T8,
                    None,
                    d,
                    "L1",
                    "Factory",
                    "Aggregation",
                    "op",
                    "dev",
                    "Tea",
                    "Factory 01",
                    0,
                    37.5,
                    127.0,
                    "001",
                    "8804823",
                    "0000001",
                    "000001",
                    d,
                    "000000001",
                    True,
                    True,
                    True,
                    True,
                    "a.csv",
                    "run-9",
                ),
                (
                    "e2",
                    "FAKE",
                    T8,
                    None,
                    d,
                    "L2",
                    "Factory",
                    "Aggregation",
                    "op",
                    "dev",
                    "Tea",
                    "Shop 01",
                    5,
                    36.0,
                    128.0,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                    False,
                    False,
                    False,
                    False,
                    "a.csv",
                    "run-9",
                ),
            ],
            spec.ddl,
        ),
    )


def test_silver_labels_keep_the_earliest_confirmation(spark):
    ddl = "event_id string, epc_code string, anomaly_type string, confirmed_at timestamp, label_date date"
    t1, t2 = dt.datetime(2025, 7, 1, 10), dt.datetime(2025, 7, 2, 9)
    labels = spark.createDataFrame(
        [
            ("e1", "E", "jump", t2, dt.date(2025, 7, 2)),
            ("e1", "E", "jump", t1, DAY),
            ("e1", "E", "jump", t1, DAY),
            ("e1", "E", "loc_err", t2, dt.date(2025, 7, 2)),
        ],
        ddl,
    )
    assertDataFrameEqual(
        silver.silver_labels(labels, "run-9"),
        spark.createDataFrame(
            [
                ("e1", "E", "jump", t1, DAY, "run-9"),
                ("e1", "E", "loc_err", t2, dt.date(2025, 7, 2), "run-9"),
            ],
            table_spec("silver_labels").ddl,
        ),
    )
