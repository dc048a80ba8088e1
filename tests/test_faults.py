"""Fault injection: a writer killed mid-write, a truncated data file, concurrent writers, malformed input.

Each case asserts what the lake holds before and after the fault. Concurrent writers are
tests/tracelake/test_write_conflicts.py (two real processes), malformed and unreadable landing files
tests/spark_jobs/test_landing_lossless.py, a killed ingest tests/spark_jobs/test_ingest_integration.py;
the cases here cover what those do not.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from tracelake import query

ROOT = Path(__file__).resolve().parents[1]
WRITER = ROOT / "tests" / "tracelake" / "concurrent_writer.py"

pytestmark = pytest.mark.slow


def _rows(table_path: Path, version: int | None = None) -> list[dict]:
    return sorted(DeltaTable(str(table_path), version=version).to_pyarrow_table().to_pylist(), key=str)


def test_a_writer_killed_mid_write_leaves_the_previous_version(tmp_path):
    """kill -9 while the job computes and writes its files: no commit, and the table reads as before (the
    killed run's orphan files are never read, by Spark or by the query engine)."""
    lake = tmp_path / "lake"
    table = lake / "monitoring" / "drift"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRACELAKE_CONFIG", None)

    def writer(role: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, str(WRITER), str(lake), role, "-", "0"],
            cwd=tmp_path / role,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            start_new_session=True,
        )

    for role in ("fast", "slow"):
        (tmp_path / role).mkdir()
    first = writer("fast")
    assert "RESULT" in first.communicate(timeout=600)[0]
    before = _rows(table)
    versions = DeltaTable(str(table)).version()

    killed = writer("slow")
    deadline = time.monotonic() + 600
    while not (tmp_path / "slow" / "writing").exists():
        assert time.monotonic() < deadline and killed.poll() is None
        time.sleep(0.2)
    time.sleep(4)  # inside the write: the slow rows take 8 s to compute
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)

    assert DeltaTable(str(table)).version() == versions and _rows(table) == before
    assert query.run_datafusion(lake, "SELECT feature FROM drift", query.lake_views(None, lake)).column(
        "feature"
    ).to_pylist() == ["fast0"]


def test_a_truncated_data_file_fails_only_the_queries_reading_it_in_one_line(tmp_path):
    lake = tmp_path / "lake"
    scans = lake / "silver" / "scan_events"
    write_deltalake(scans, pa.table({"event_id": [f"e{i}" for i in range(1000)], "v": list(range(1000))}))
    write_deltalake(lake / "monitoring" / "drift", pa.table({"feature": ["tier"]}))
    data = next(scans.glob("*.parquet"))
    log_before = sorted(p.read_bytes() for p in (scans / "_delta_log").glob("*.json"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])

    views = query.lake_views(None, lake)
    with pytest.raises(query.DataFusionQueryError) as error:
        query.run_datafusion(lake, "SELECT count(*), sum(v) FROM scan_events", views)
    assert "\n" not in str(error.value)
    assert query.run_datafusion(lake, "SELECT * FROM drift", views).column("feature").to_pylist() == ["tier"]
    assert sorted(p.read_bytes() for p in (scans / "_delta_log").glob("*.json")) == log_before


def test_malformed_statement_inputs_change_nothing(tmp_path):
    lake = tmp_path / "lake"
    write_deltalake(
        lake / "gold" / "scored_events", pa.table({"event_id": ["e1"], "event_date": [dt.date(2025, 7, 1)]})
    )
    before = _rows(lake / "gold" / "scored_events")
    views = query.lake_views(None, lake)
    for sql in (
        "SELECT 'unterminated",
        "SELECT * FROM scored_events WHERE",
        "\x00",
        "SELECT " + "(" * 5000 + "1",
        "SELECT * FROM scored_events; DELETE FROM scored_events",
        "SELECT 1 /* never closed",
    ):
        with pytest.raises(query.DataFusionQueryError) as error:
            query.run_datafusion(lake, sql, views)
        assert "\n" not in str(error.value)
    assert _rows(lake / "gold" / "scored_events") == before
