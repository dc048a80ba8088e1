"""Landing files are read without losing a record: RFC 4180 CSV, BOM, CRLF; unreadable files end in one line.

The bar is the reconciliation: every landing record (not line) is a bronze row or a quarantine row.
"""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs import ingest
from tracelake import landing_records as landing
from tracelake.landing import LandingError, inventory, rows_per_day
from tracelake.runs import job_run
from tracelake.tables import read_table, table_spec

pytestmark = [pytest.mark.slow, pytest.mark.spark35]

DAY = dt.date(2025, 7, 1)
HEADER = (
    "event_id,epc_code,event_time,location_id,business_step,event_type,operator_id,device_id,product_name"
)
EPC = "001.8804823.0000001.000001.20250701.{:09d}"


def _scan(i: int, product: str) -> str:
    return f"e{i},{EPC.format(i)},2025-07-01T08:{i:02d}:00Z,LOC1,Factory,Aggregation,op,dev,{product}"


def _lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    reference = root / "landing" / "reference"
    reference.mkdir(parents=True)
    (reference / "locations.csv").write_text(
        "location_id,location_name,business_step,tier,latitude,longitude\nLOC1,Factory 1,Factory,0,37.5,127.0\n"
    )
    (reference / "products.csv").write_text("company_code,product_code,product_name\n8804823,0000001,Tea\n")
    (root / "landing" / "scans" / f"date={DAY}").mkdir(parents=True)
    return root


def _ingest(spark, test_settings, root: Path):
    settings = test_settings.model_copy(update={"lake_root": str(root)})
    with job_run("ingest", settings=settings, spark=spark, start=DAY, end=DAY) as run:
        return ingest.execute(run)


def test_rfc4180_records_bom_and_crlf_arrive_whole(spark, test_settings, tmp_path):
    root = _lake(tmp_path)
    day = root / "landing" / "scans" / f"date={DAY}"
    records = [
        _scan(1, '"line1\nline2"'),  # a quoted field holding a line break
        _scan(2, '"Box, large ""XL"" edition"'),  # quoted separator and doubled quotes
        _scan(3, "Tea"),
        _scan(4, '"three\nline\nvalue, with comma"'),
        _scan(5, 'plain "inch" mark'),  # a quote inside an unquoted field is text
    ]
    body = "\ufeff" + HEADER + "\r\n" + "\r\n".join(records) + "\r\n"
    (day / "part-00000.csv").write_bytes(body.encode("utf-8"))
    # A stray opening quote must not swallow the rest of the file: the lines after it stay records.
    stray = [_scan(6, '"never closed')] + [_scan(i, "Tea") for i in range(7, 10)]
    (day / "part-00001.csv").write_text(HEADER + "\n" + "\n".join(stray) + "\n")

    summary = _ingest(
        spark,
        test_settings.model_copy(
            update={"ingest": test_settings.ingest.model_copy(update={"csv_max_record_lines": 3})}
        ),
        root,
    )
    scans = summary["reconciliation"]["scans"]
    assert scans["landing_rows"] == 9 and scans["ok"]
    # Validation reconciles bronze with landing through the same inventory: records, not lines.
    spec = table_spec("landing_scans")
    assert rows_per_day(spark, inventory(spark, spec, str(root), [DAY]), spec, 3) == {DAY: 9}
    silver = {
        r["event_id"]: r["product_name"]
        for r in read_table(spark, table_spec("silver_scan_events"), str(root))
        .select("event_id", "product_name")
        .collect()
    }
    assert silver["e1"] == "line1\nline2"
    assert silver["e2"] == 'Box, large "XL" edition'
    assert silver["e4"] == "three\nline\nvalue, with comma"
    assert silver["e5"] == 'plain "inch" mark'
    assert {"e3", "e7", "e8", "e9"} <= set(silver) and "e6" not in silver
    quarantine = read_table(spark, table_spec("bronze_quarantine"), str(root)).collect()
    assert [r["raw_payload"] for r in quarantine] == [_scan(6, '"never closed')]


def test_unreadable_files_fail_in_one_line_naming_the_file(spark, test_settings, tmp_path):
    root = _lake(tmp_path)
    day = root / "landing" / "scans" / f"date={DAY}"
    (day / "good.csv").write_text(HEADER + "\n" + _scan(1, "Tea") + "\n")
    (day / "not-gzip.csv.gz").write_text(HEADER + "\n" + _scan(2, "Tea") + "\n")
    with pytest.raises(LandingError, match=r"not-gzip\.csv\.gz cannot be read as gzip") as error:
        _ingest(spark, test_settings, root)
    assert "\n" not in str(error.value)

    (day / "not-gzip.csv.gz").unlink()
    whole = gzip.compress((HEADER + "\n" + "\n".join(_scan(i, "Tea") for i in range(2, 400)) + "\n").encode())
    (day / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(LandingError, match=r"cut\.csv\.gz cannot be read") as error:
        _ingest(spark, test_settings, root)
    assert "\n" not in str(error.value)

    (day / "cut.csv.gz").unlink()
    (day / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(LandingError, match=r"corrupt\.parquet cannot be read as Parquet") as error:
        _ingest(spark, test_settings, root)
    assert "\n" not in str(error.value)
    assert not (root / "bronze").exists()  # refused before anything was written


def test_parquet_files_of_one_day_with_different_types_meet_as_text(spark, test_settings, tmp_path):
    root = _lake(tmp_path)
    day = root / "landing" / "scans" / f"date={DAY}"
    base = {"epc_code": EPC.format(1), "event_time": "2025-07-01T08:00:00Z", "location_id": "LOC1"}
    pq.write_table(
        pa.table({"event_id": ["e1"], **{k: [v] for k, v in base.items()}, "device_id": ["dev-7"]}),
        day / "a.parquet",
    )
    pq.write_table(
        pa.table(
            {"event_id": ["e2"], **{k: [v] for k, v in base.items()}, "device_id": pa.array([7], pa.int64())}
        ),
        day / "b.parquet",
    )
    summary = _ingest(spark, test_settings, root)
    assert summary["reconciliation"]["scans"]["landing_rows"] == 2
    bronze_rows = read_table(spark, table_spec("bronze_scan_events"), str(root)).orderBy("event_id")
    assert [(r["event_id"], r["device_id"]) for r in bronze_rows.collect()] == [("e1", "dev-7"), ("e2", "7")]


def test_csv_records_join_only_the_lines_of_a_quoted_field(spark):
    lines = spark.createDataFrame(
        [
            ('a,"x', "f", 0, 0, True),
            ('y",b', "f", 0, 1, True),
            ("c,d", "f", 0, 2, True),
            ("e,f", "g", 0, 0, False),
        ],
        "value string, _uri string, _block_start long, _line_index long, _multiline_file boolean",
    )
    got = sorted(tuple(r) for r in landing.csv_records(lines, 10).collect())
    assert got == [('a,"x\ny",b', "f"), ("c,d", "f"), ("e,f", "g")]
