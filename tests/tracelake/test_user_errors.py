"""Every user error is one short line, before Spark starts: dates, settings, table and training-set names."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracelake.config import ConfigError, load_settings
from tracelake.dates import describe_days, parse_date
from tracelake.tables import TableError, named_table_spec

ROOT = Path(__file__).resolve().parents[2]


def test_a_long_list_of_days_is_a_short_summary():
    start = dt.date(2000, 1, 1)
    every = [start + dt.timedelta(days=i) for i in range(10_000)]
    assert describe_days(every) == "2000-01-01..2027-05-18 (10000 days)"
    gaps = [d for i, d in enumerate(every) if i % 3]
    text = describe_days(gaps)
    assert len(text) < 150 and text.endswith("more run(s) (6666 days)")
    assert (
        describe_days([dt.date(2025, 7, 3), dt.date(2025, 7, 1), dt.date(2025, 7, 2), dt.date(2025, 7, 9)])
        == "2025-07-01..2025-07-03, 2025-07-09 (4 days)"
    )


def test_setting_errors_are_one_line_per_bad_key_with_what_is_allowed():
    with pytest.raises(ConfigError) as error:
        load_settings(
            overrides=[
                "spark.shuffle_partitions=abc",
                "query.engine=duckdb",
                "spark.nope=1",
                "ingest.csv_max_record_lines=0",
            ],
            environ={},
        )
    lines = str(error.value).splitlines()
    assert lines[0] == "invalid configuration:" and len(lines) == 5
    assert "setting spark.shuffle_partitions='abc' is invalid: expected a whole number" in lines
    assert "setting query.engine='duckdb' is invalid: expected one of 'datafusion' or 'spark'" in lines
    assert any(line.startswith("setting spark.nope is unknown; known here: master, ") for line in lines)
    assert "setting ingest.csv_max_record_lines=0 is invalid: expected a number >= 1" in lines
    with pytest.raises(
        ConfigError,
        match=r"^invalid configuration: setting generator.epcs=-5 is invalid: "
        r"expected a number >= 1$",
    ):
        load_settings(overrides=["generator.epcs=-5"], environ={})


@pytest.mark.parametrize("name", ["a_b", "a.b", "A-b", "weekly\n", "-x", "", "a" * 129, "../x", "a b"])
def test_training_set_names_have_one_canonical_form(name):
    with pytest.raises(TableError, match="not a canonical name") as error:
        named_table_spec("training_set", name=name)
    assert "\n" not in str(error.value).replace(repr(name), "")


def test_canonical_training_set_names_pass():
    assert (
        named_table_spec("training_set", name="set-20250707t0300").path == "training/sets/set-20250707t0300"
    )
    assert parse_date("2025-07-01") == dt.date(2025, 7, 1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["validate", "--table", "nope", "--start-date", "2025-07-01"], "unknown table 'nope'"),
        (
            ["validate", "--table", "training_set", "--name", "a_b", "--start-date", "2025-07-01"],
            "not a canonical name",
        ),
        (["ingest", "--start-date", "2025-07-01", "--end-date", "2025-06-01"], "is before start date"),
        (
            ["ingest", "--start-date", "2025-07-01", "--set", "spark.shuffle_partitions=x"],
            "expected a whole number",
        ),
        (
            ["training-set", "--start-date", "2025-07-01", "--as-of", "2025-07-09", "--name", "a.b"],
            "not a canonical",
        ),
        (["query", "--set", "query.engine=duckdb", "SELECT 1"], "expected one of 'datafusion' or 'spark'"),
    ],
)
def test_cli_user_errors_are_one_line_before_spark_starts(tmp_path, argv, message):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRACELAKE_LAKE_ROOT": str(tmp_path / "lake")}
    env.pop("TRACELAKE_CONFIG", None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tracelake.cli", *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    elapsed = time.perf_counter() - started
    plain = [line for line in done.stderr.splitlines() if not line.startswith("{")]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(plain) == 1 and plain[0].startswith("error: ") and message in plain[0], done.stderr[-2000:]
    assert "SparkContext" not in done.stderr and "log4j" not in done.stderr and elapsed < 30
