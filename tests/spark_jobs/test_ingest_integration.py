"""Ingest end to end: generated landing files (with corrupt rows) plus hand-made re-deliveries.

One small lake, two ingest runs of the same range (the second must change
nothing), then a run that must fail on a file missing a required column.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs import generate, ingest
from tracelake.config import GeneratorSettings
from tracelake.landing import LandingError
from tracelake.runs import job_run
from tracelake.tables import latest_version, read_table, table_spec

pytestmark = [pytest.mark.slow, pytest.mark.spark35]

START, END = dt.date(2025, 7, 1), dt.date(2025, 7, 2)
OUTPUTS = (
    "reference_locations",
    "reference_products",
    "reference_air_lanes",
    "reference_serial_ranges",
    "bronze_scan_events",
    "bronze_quarantine",
    "silver_scan_events",
    "silver_labels",
)
LINEAGE = ["_run_id", "_ingested_at"]
# Generator corruption -> the quarantine reason it must end in.
REASON_OF = {
    "unparseable": "unparseable",
    "missing_field": "missing_required",
    "bad_timestamp": "bad_type",
    "unknown_location": "unknown_location",
    "outside_partition": "outside_partition",
    "non_utf8": "non_utf8",
}
# Hand-made deliveries, all sorting after the generator's part-*.csv files.
COPY_CSV = "redelivered-copy.csv"
COPY_JSON = "redelivered-extra.json"
COPY_PARQUET = "redelivered-extra.parquet"
BAD_LABELS = "redelivered-bad-labels.csv"


def _ingest(spark, settings):
    with job_run("ingest", settings=settings, spark=spark, start=START, end=END) as run:
        return ingest.execute(run)


def _contents(spark, lake, versions=None):
    """Every output table (at the given versions), without the columns that name the run."""
    return {
        name: read_table(spark, table_spec(name), lake, version=(versions or {}).get(name)).drop(
            *[c for c in LINEAGE if c in table_spec(name).column_names]
        )
        for name in OUTPUTS
    }


def _clean(row: dict, locations: set[str]) -> bool:
    """A generated day-2 row that no corruption touched."""
    try:
        day = dt.datetime.strptime(row["event_time"], "%Y-%m-%dT%H:%M:%SZ").date()
    except (TypeError, ValueError):
        return False
    known = any(line.startswith(row["location_id"] + ",") for line in locations)
    return (
        day == END
        and known
        and None not in row
        and all(row.values())
        and all(v.isascii() for v in row.values())
    )


@pytest.fixture(scope="module")
def lake(spark, test_settings, tmp_path_factory):
    """Two generated days with corrupt rows, plus re-delivered files: a CSV copy, JSON and Parquet with extras."""
    root = tmp_path_factory.mktemp("ingest_lake")
    generator = GeneratorSettings.model_validate(
        {
            "start_date": START.isoformat(),
            "days": 2,
            "epcs": 150,
            "seed": 13,
            "format": "csv",
            "corrupt_rate": 0.06,
            "rates": {
                "epc_fake": 0.05,
                "epc_dup": 0.05,
                "loc_err": 0.05,
                "evt_order_err": 0.05,
                "jump": 0.05,
            },
            # Labels confirmed a day after the event, so that day 1's labels land in the range.
            "label_delay_days_min": 1,
            "label_delay_days_max": 1,
        }
    )
    settings = test_settings.model_copy(update={"lake_root": str(root), "generator": generator})
    with job_run("generate", settings=settings, spark=spark, start=START, end=END) as run:
        generated = generate.execute(run)

    scans = root / "landing" / "scans"
    day1, day2 = scans / f"date={START}", scans / f"date={END}"
    # A re-delivery of a whole file, corrupt rows included.
    shutil.copy(day1 / "part-00000.csv", day1 / COPY_CSV)
    # The first two rows of day 2 again, as JSON lines and as Parquet, each with a column nobody asked for.
    locations = set((root / "landing" / "reference" / "locations.csv").read_text().split())
    with (day2 / "part-00000.csv").open(encoding="latin-1", newline="") as f:
        good = [r for r in csv.DictReader(f) if _clean(r, locations)][:2]
    (day2 / COPY_JSON).write_text("".join(json.dumps({**g, "colour": "red"}) + "\n" for g in good))
    pq.write_table(pa.Table.from_pylist([{**g, "weight_kg": "1.5"} for g in good[::-1]]), day2 / COPY_PARQUET)
    # Labels that must be quarantined (source labels).
    labels_day = root / "landing" / "labels" / f"date={END}"
    labels_day.mkdir(parents=True, exist_ok=True)
    (labels_day / BAD_LABELS).write_text(
        "event_id,epc_code,anomaly_type,confirmed_at\n"
        f"{good[0]['event_id']},{good[0]['epc_code']},teleport,{END}T10:00:00Z\n"
        f"{good[0]['event_id']},{good[0]['epc_code']},jump,{END}T27:00:00Z\n"
    )
    return {
        "root": root,
        "settings": settings,
        "generated": generated,
        "good_ids": [g["event_id"] for g in good],
    }


@pytest.fixture(scope="module")
def runs(spark, lake):
    """Ingest the range twice; both summaries and the table versions after the first run."""
    first = _ingest(spark, lake["settings"])
    versions = {name: t["version"] for name, t in first["tables"].items()}
    second = _ingest(spark, lake["settings"])
    return first, second, versions


def test_reconciles_and_quarantines_every_bad_input_class(spark, lake, runs):
    first, _, _ = runs
    root, generated = lake["root"], lake["generated"]
    reconciliation = first["reconciliation"]
    assert all(r["ok"] and r["difference"] == 0 for r in reconciliation.values())
    copies = 2 * len(lake["good_ids"])
    # The CSV copy re-delivers all of day 1, corrupt rows included.
    day1_rows = generated["events_per_day"][START.isoformat()]
    assert reconciliation["scans"]["landing_rows"] == generated["events"] + day1_rows + copies

    quarantine = read_table(spark, table_spec("bronze_quarantine"), root)
    original = quarantine.where(~F.col("_source_file").contains("redelivered"))
    per_reason = {
        r["code"]: r["count"]
        for r in original.where(F.col("source") == "scans")
        .groupBy(F.split("reason", ":")[0].alias("code"))
        .count()
        .collect()
    }
    expected = {REASON_OF[k]: v for k, v in generated["corrupted_rows"].items()}
    assert per_reason == expected and set(expected) == set(REASON_OF.values())
    # The copy's bad rows are quarantined exactly like the original's.
    day1 = quarantine.where(F.col("ingest_date") == START)
    assertDataFrameEqual(
        day1.where(F.col("_source_file").endswith(COPY_CSV)).select("raw_payload", "reason"),
        day1.where(F.col("_source_file").endswith("part-00000.csv")).select("raw_payload", "reason"),
    )
    assert first["quarantine"]["labels"] == {"bad_type": 1, "unknown_anomaly_type": 1}


def test_air_lanes_serial_ranges_and_record_time_reach_the_lake(spark, lake, runs):
    root = lake["root"]
    landing = root / "landing" / "reference"
    for name, file in (
        ("reference_air_lanes", "air_lanes.csv"),
        ("reference_serial_ranges", "serial_ranges.csv"),
    ):
        table = read_table(spark, table_spec(name), root)
        assert table.columns == table_spec(name).column_names
        assert table.count() == len((landing / file).read_text().splitlines()) - 1 > 0
    # record_time travels from landing to silver; event_time - record_time shows a device's clock offset.
    silver = read_table(spark, table_spec("silver_scan_events"), root)
    offsets = silver.select(
        (F.unix_timestamp("event_time") - F.unix_timestamp("record_time")).alias("offset")
    )
    assert offsets.where(F.col("offset").isNull()).count() == 0
    assert offsets.where(F.abs("offset") > 60).count() > 0  # skewed devices
    assert (
        offsets.where(F.col("offset").between(-60, 0)).count() > 0
    )  # correct clocks: a small recording latency


def test_extra_columns_are_reported_and_left_out(lake, runs):
    first, _, _ = runs
    extras = {Path(path.split(":", 1)[1]).name: columns for path, columns in first["extra_columns"].items()}
    assert extras == {COPY_JSON: ["colour"], COPY_PARQUET: ["weight_kg"]}


def test_redelivered_rows_do_not_double_silver(spark, lake, runs):
    first, _, _ = runs
    root = lake["root"]
    bronze_events = read_table(spark, table_spec("bronze_scan_events"), root)
    silver_events = read_table(spark, table_spec("silver_scan_events"), root)
    distinct_ids = bronze_events.select("event_id").distinct().count()
    assert silver_events.count() == silver_events.select("event_id").distinct().count() == distinct_ids
    assert (
        first["duplicates_dropped"]["silver_scan_events"]
        == first["tables"]["bronze_scan_events"]["rows"] - distinct_ids
        > 0
    )
    # The surviving copy is the original delivery's, whatever the read order.
    assert silver_events.where(F.col("_source_file").contains("redelivered")).count() == 0
    assert silver_events.where(F.col("event_id").isin(lake["good_ids"])).count() == len(lake["good_ids"])
    assert first["tables"]["silver_labels"]["rows"] > 0


def test_rerun_leaves_every_table_as_one_run_does(spark, lake, runs):
    first, second, versions = runs
    assert second["reconciliation"] == first["reconciliation"]
    assert second["quarantine"] == first["quarantine"]
    before, after = _contents(spark, lake["root"], versions), _contents(spark, lake["root"])
    for name in OUTPUTS:
        assertDataFrameEqual(after[name], before[name])
        # Unchanged reference files are not written again; every range table is replaced in one commit.
        kept = name.startswith("reference_")
        assert second["tables"][name]["version"] == versions[name] + (0 if kept else 1), name
        assert second["tables"][name]["rows"] == (0 if kept else first["tables"][name]["rows"]), name
    # Lineage: the commit records the run, its range and the code.
    from delta.tables import DeltaTable

    meta = json.loads(
        DeltaTable.forPath(spark, table_spec("silver_scan_events").location(lake["root"]))
        .history(1)
        .select("userMetadata")
        .first()[0]
    )
    assert (meta["run_id"], meta["start_date"], meta["end_date"]) == (second["run_id"], str(START), str(END))
    assert meta["input_versions"]["bronze_scan_events"] == second["tables"]["bronze_scan_events"]["version"]
    assert meta["code_version"]


def test_a_changed_reference_file_replaces_its_table(spark, lake, runs):
    root = lake["root"]
    locations = root / "landing" / "reference" / "locations.csv"
    original = locations.read_bytes()
    before = latest_version(spark, table_spec("reference_locations"), root)
    try:
        # Same rows, one more blank line: the bytes differ, so the file is typed and written again.
        locations.write_bytes(original + b"\n")
        summary = _ingest(spark, lake["settings"])
        assert summary["tables"]["reference_locations"]["version"] == before + 1
        assert summary["tables"]["reference_locations"]["rows"] > 0
        assert summary["tables"]["reference_products"]["rows"] == 0  # its file did not change
    finally:
        locations.write_bytes(original)


def test_missing_required_column_fails_naming_file_and_column(spark, lake, runs):
    day2 = lake["root"] / "landing" / "scans" / f"date={END}"
    bad = day2 / "late-delivery.csv"
    bad.write_text("event_id,epc_code,location_id\nx,y,LOC-00001\n")
    try:
        with pytest.raises(
            LandingError, match=r"late-delivery\.csv lacks required column\(s\) \['event_time'\]"
        ):
            _ingest(spark, lake["settings"])
    finally:
        bad.unlink()


def test_killed_mid_write_leaves_the_last_version_readable_and_a_rerun_completes(spark, lake, runs):
    """SIGKILL a spark-submit-equivalent ingest while it writes silver; Delta's commit is atomic."""
    root = lake["root"]
    committed = {name: latest_version(spark, table_spec(name), root) for name in OUTPUTS}
    before = _contents(spark, root)
    command = [
        sys.executable,
        "-m",
        "spark_jobs.ingest",
        "--start-date",
        str(START),
        "--end-date",
        str(END),
        "--lake-root",
        str(root),
        "--master",
        "local[1]",
        "--set",
        "spark.driver_memory=1g",
    ]
    job = subprocess.Popen(
        command,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("TRACELAKE_")},
    )
    try:
        for line in job.stderr:  # the job's JSON log lines
            if '"write silver_scan_events: started"' in line:
                time.sleep(1.0)  # let the write's tasks start writing files
                break
        else:
            pytest.fail(f"ingest ended (exit {job.wait()}) before writing silver")
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the Python driver and its JVM
        job.wait()
    assert job.returncode == -signal.SIGKILL

    # No half-written version: silver's last commit is the one before the kill, and it reads in full.
    assert latest_version(spark, table_spec("silver_scan_events"), root) == committed["silver_scan_events"]
    assertDataFrameEqual(_contents(spark, root)["silver_scan_events"], before["silver_scan_events"])
    rerun = _ingest(spark, lake["settings"])
    assert all(r["ok"] for r in rerun["reconciliation"].values())
    after = _contents(spark, root)
    for name in OUTPUTS:
        assertDataFrameEqual(after[name], before[name])
