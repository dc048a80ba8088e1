"""Ingest of hand-written EPCIS documents end to end: bronze/epcis_events, quarantine, silver, reconciliation."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs import ingest
from tests.spark_jobs import epcis_documents as docs
from tracelake.runs import job_run
from tracelake.tables import read_table, table_spec

pytestmark = pytest.mark.slow

DELIVERED = dt.date(2025, 7, 2)  # the landing day; the events happened the day before (UTC)
EVENT_DAY = dt.date(2025, 7, 1)


@pytest.fixture(scope="module")
def lake(spark, test_settings, tmp_path_factory):
    root = tmp_path_factory.mktemp("epcis_lake")
    reference = root / "landing" / "reference"
    reference.mkdir(parents=True)
    (reference / "locations.csv").write_text(docs.LOCATIONS_CSV)
    (reference / "products.csv").write_text(docs.PRODUCTS_CSV)
    folder = root / "landing" / "epcis" / f"date={DELIVERED.isoformat()}"
    docs.write(folder / "partner.jsonld", docs.document())
    (folder / "broken.json").write_text(json.dumps(docs.document())[:300])
    settings = test_settings.model_copy(update={"lake_root": str(root)})
    summaries = []
    for _ in range(2):  # the second run must leave every table as the first left it
        with job_run("ingest", settings=settings, spark=spark, start=DELIVERED, end=DELIVERED) as run:
            summaries.append(ingest.execute(run))
    return str(root), summaries


def _table(spark, root, name):
    return read_table(spark, table_spec(name), root)


def test_bronze_has_one_row_per_epc_in_the_events_own_day(spark, lake):
    root, _ = lake
    bronze = _table(spark, root, "bronze_epcis_events")
    rows = bronze.groupBy("event_index", "event_date", "landing_date").count()
    expected = [
        (i, EVENT_DAY, DELIVERED, n)
        for i, n in {0: 1, 1: 2, 2: 3, 3: 1, 4: 2, 5: 2, 6: 1, 9: 1, 10: 1}.items()
    ]
    assertDataFrameEqual(
        rows,
        spark.createDataFrame(expected, "event_index int, event_date date, landing_date date, count long"),
    )
    assert bronze.where("event_index = 6").first()["event_id"].startswith("ni:///sha-256;")


def test_silver_gets_mapped_scans_without_the_retracted_event(spark, lake):
    root, _ = lake
    silver = _table(spark, root, "silver_scan_events").select(
        "event_id",
        "epc_code",
        "event_time",
        "event_date",
        "location_id",
        "business_step",
        "event_type",
        "operator_id",
    )
    hash_id = _table(spark, root, "bronze_epcis_events").where("event_index = 6").first()["event_id"]
    uuid1 = "urn:uuid:6a3c9f0e-6d7e-4a8e-9a55-0c1a2b3c4d01"
    ts = dt.datetime
    expected = [
        (
            f"{uuid1}#{docs.PLAIN_SGTIN}",
            docs.PLAIN_SGTIN,
            ts(2025, 7, 1, 1),
            EVENT_DAY,
            "LOC-00001",
            "WMS",
            "WMS_Outbound",
            None,
        ),
        (
            f"{uuid1}#{docs.DL_SGTIN}",
            docs.DL_SGTIN,
            ts(2025, 7, 1, 1),
            EVENT_DAY,
            "LOC-00001",
            "WMS",
            "WMS_Outbound",
            None,
        ),
        (
            hash_id,
            "urn:epc:id:sgtin:4012345.011111.7003",
            ts(2025, 7, 1, 4),
            EVENT_DAY,
            "LOC-00001",
            "WMS",
            "WMS_Outbound",
            None,
        ),
        # the correction of the retracted EVT-0001; the project's EPC code comes back from its SGTIN
        (
            "EVT-0002",
            docs.PROJECT_EPC,
            ts(2025, 7, 1, 0, 30),
            EVENT_DAY,
            "LOC-00002",
            "LGS_HUB",
            "HUB_Inbound",
            "OPR-2",
        ),
    ]
    assertDataFrameEqual(
        silver,
        spark.createDataFrame(
            expected,
            "event_id string, epc_code string, event_time timestamp, event_date date, location_id string, "
            "business_step string, event_type string, operator_id string",
        ),
    )
    parsed = _table(spark, root, "silver_scan_events").where("event_id = 'EVT-0002'").first()
    assert (parsed["epc_company"], parsed["epc_product"], parsed["epc_format_valid"]) == (
        "4012345",
        "0000011",
        True,
    )


def test_quarantine_names_file_index_and_rule(spark, lake):
    root, _ = lake
    quarantine = _table(spark, root, "bronze_quarantine").where(F.col("source") == "epcis")
    codes = quarantine.groupBy(F.split("reason", ":").getItem(0).alias("code")).count()
    assertDataFrameEqual(
        codes,
        spark.createDataFrame(
            [("schema_violation", 2), ("unparseable", 1), ("unmapped_event", 7), ("no_epc", 1)],
            "code string, count long",
        ),
    )
    reasons = {
        r["reason"] for r in quarantine.where(F.col("_source_file").endswith("partner.jsonld")).collect()
    }
    assert (
        "schema_violation: event 7: data.action must be one of ['OBSERVE', 'ADD', 'DELETE'] "
        "(rule 'enum' at data.action)"
    ) in reasons
    assert any(
        r.startswith("unmapped_event: AggregationEvent bizStep=arriving at a LGS_HUB location")
        for r in reasons
    )
    assert quarantine.select("ingest_date").distinct().collect()[0][0] == DELIVERED


def test_reconciliation_counts_events_and_epc_rows_per_file(lake):
    _, (summary, _) = lake
    epcis = summary["reconciliation"]["epcis"]
    files = {path.rsplit("/", 1)[-1]: entry for path, entry in epcis["files"].items()}
    assert files["partner.jsonld"] == {
        "events_in_document": 11,
        "accepted_events": 9,
        "epc_rows": 14,
        "quarantined_events": 2,
        "quarantined_files": 0,
        "difference": 0,
        "ok": True,
    }
    assert files["broken.json"]["quarantined_files"] == 1 and files["broken.json"]["ok"]
    assert epcis["bronze_rows_written"] == epcis["epc_rows"] == 14


def test_rerun_changes_nothing(spark, lake):
    root, (first, second) = lake
    for name in ("bronze_epcis_events", "silver_scan_events", "bronze_quarantine"):
        history = spark.sql(f"DESCRIBE HISTORY delta.`{table_spec(name).location(root)}`").orderBy("version")
        versions = [r["version"] for r in history.collect()]
        lineage = [c for c in ("_run_id", "_ingested_at") if c in table_spec(name).column_names]
        before = (
            spark.read.format("delta")
            .option("versionAsOf", versions[-2])
            .load(table_spec(name).location(root))
        )
        assertDataFrameEqual(_table(spark, root, name).drop(*lineage), before.drop(*lineage))
    assert (
        first["tables"]["silver_scan_events"]["rows"] == second["tables"]["silver_scan_events"]["rows"] == 4
    )
