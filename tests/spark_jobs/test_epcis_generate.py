"""`generate --format epcis` writes the CSV world as valid EPCIS documents: the same seed gives the same silver."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs import generate, ingest
from tracelake.config import PROJECT_ROOT, EpcisSettings, GeneratorSettings
from tracelake.runs import job_run
from tracelake.tables import read_table, table_spec

pytestmark = pytest.mark.slow

START, END = dt.date(2025, 7, 1), dt.date(2025, 7, 2)
LINEAGE = ["_run_id", "_source_file"]


def _world(spark, settings, root, fmt):
    generator = GeneratorSettings.model_validate(
        {
            "start_date": START.isoformat(),
            "days": 2,
            "epcs": 150,
            "seed": 11,
            "format": fmt,
            "rates": {"epc_fake": 0.1, "epc_dup": 0.05, "loc_err": 0.05, "evt_order_err": 0.05, "jump": 0.05},
        }
    )
    # A small document size, so that a day is split into several documents.
    run_settings = settings.model_copy(
        update={
            "lake_root": str(root),
            "generator": generator,
            "epcis": EpcisSettings(events_per_document=250),
        }
    )
    with job_run("generate", settings=run_settings, spark=spark, start=START, end=END) as run:
        generated = generate.execute(run)
    with job_run("ingest", settings=run_settings, spark=spark, start=START, end=END) as run:
        ingested = ingest.execute(run)
    return generated, ingested


@pytest.fixture(scope="module")
def worlds(spark, test_settings, tmp_path_factory):
    roots = {fmt: tmp_path_factory.mktemp(f"world_{fmt}") for fmt in ("csv", "epcis")}
    return {fmt: (root, *_world(spark, test_settings, root, fmt)) for fmt, root in roots.items()}


def test_same_seed_same_silver_scan_events(spark, worlds):
    silver = {
        fmt: read_table(spark, table_spec("silver_scan_events"), str(root)).drop(*LINEAGE)
        for fmt, (root, _, _) in worlds.items()
    }
    assert silver["csv"].count() > 300
    assertDataFrameEqual(silver["epcis"], silver["csv"])


def test_documents_are_valid_and_split_per_n_events(spark, worlds):
    root, generated, ingested = worlds["epcis"]
    documents = sorted((root / "landing" / "epcis").rglob("*.jsonld"))
    assert len(documents) > 2 and not list((root / "landing" / "scans").rglob("*.*"))
    assert {p.parent.name for p in documents} == {"date=2025-07-01", "date=2025-07-02"}
    loaded = [json.loads(p.read_text()) for p in documents]
    assert {d["type"] for d in loaded} == {"EPCISDocument"}
    assert max(len(d["epcisBody"]["eventList"]) for d in loaded) == 250  # split per 250 events
    assert sum(len(d["epcisBody"]["eventList"]) for d in loaded) == generated["events"]
    assert loaded[0]["epcisBody"]["eventList"][0]["readPoint"]["id"].startswith("urn:epc:id:sgln:")
    # every event passed GS1's schema and the mapping: nothing quarantined, every event in silver
    assert ingested["quarantine"] == {}
    assert ingested["tables"]["silver_scan_events"]["rows"] == generated["events"]
    quarantine = read_table(spark, table_spec("bronze_quarantine"), str(root)).where(
        F.col("source") == "epcis"
    )
    assert quarantine.count() == 0
    locations = read_table(spark, table_spec("reference_locations"), str(root))
    assert locations.where(F.col("sgln").isNull() | ~F.col("gln").rlike("^[0-9]{13}$")).count() == 0
    # labels stay in their own feed
    assert list((root / "landing" / "labels").rglob("*.parquet"))


def test_driver_memory_does_not_grow_with_document_size(tmp_path):
    """A multi-hundred-MB generated document, ingested in a fresh process: the driver's peak RSS stays flat."""
    megabytes = int(__import__("os").environ.get("TRACELAKE_EPCIS_DOCUMENT_MB", "300"))
    command = [
        sys.executable,
        str(PROJECT_ROOT / "benchmarks" / "epcis_ingest_throughput.py"),
        "memory",
        "--document-mb",
        str(megabytes),
        "--epcs",
        "2000",
        "--work",
        str(tmp_path),
        "--driver-memory",
        "2g",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=7200, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(result)
    assert result["document_bytes"] >= megabytes * 1024 * 1024
    assert result["epc_rows"] == result["events"] > 0
    # The driver never holds a document: its peak grows by far less than the document (64 MiB of slack for
    # Spark's own bookkeeping of the bigger job), whatever the document's size.
    assert result["driver_rss_growth_mib"] < min(64, result["document_bytes"] / 1024 / 1024 / 10)
