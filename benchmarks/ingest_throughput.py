"""Ingest throughput: one day of ~100k events, and a 30-day range in one job against 30 single-day runs.

The generator writes the landing files (CSV, with corrupt rows); ingest runs
in one Spark session with the default settings (`local[*]`), timed around
`spark_jobs.ingest.execute` (landing -> reference, bronze, quarantine,
silver), so JVM start-up is not counted; each spark-submit would add it once
per run, which only widens the gap between 30 runs and one.

Run (one process, serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/ingest_throughput.py

Results and the command used: benchmarks/results/ingest_throughput.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from spark_jobs import generate, ingest
from tracelake.config import GeneratorSettings, Settings, load_settings
from tracelake.dates import days_between
from tracelake.runs import job_run
from tracelake.spark import build_spark
from tracelake.tables import read_table, table_spec

START = dt.date(2025, 7, 1)
OUTPUTS = ("reference", "bronze", "silver")  # top-level folders ingest writes under the lake
COMPARED = ("bronze_scan_events", "bronze_quarantine", "silver_scan_events", "silver_labels")


def generated_lake(
    spark: SparkSession, settings: Settings, lake: Path, days: int, epcs: int, seed: int, corrupt_rate: float
) -> dict[str, Any]:
    """Landing files for the window (reused when a previous run made the same ones)."""
    options = {
        "start_date": START.isoformat(),
        "days": days,
        "epcs": epcs,
        "seed": seed,
        "format": "csv",
        "corrupt_rate": corrupt_rate,
    }
    marker = lake / "generated.json"
    if marker.is_file() and json.loads(marker.read_text())["options"] == options:
        return json.loads(marker.read_text())["summary"]
    shutil.rmtree(lake, ignore_errors=True)
    run_settings = settings.model_copy(
        update={"lake_root": str(lake), "generator": GeneratorSettings.model_validate(options)}
    )
    with job_run(
        "generate", settings=run_settings, spark=spark, start=START, end=START + dt.timedelta(days=days - 1)
    ) as run:
        summary = generate.execute(run)
    marker.write_text(json.dumps({"options": options, "summary": summary}, default=str))
    return summary


def clear_outputs(lake: Path) -> None:
    for folder in OUTPUTS:
        shutil.rmtree(lake / folder, ignore_errors=True)


def timed_ingest(
    spark: SparkSession, settings: Settings, lake: Path, start: dt.date, end: dt.date
) -> tuple[float, dict]:
    run_settings = settings.model_copy(update={"lake_root": str(lake)})
    started = time.perf_counter()
    with job_run("ingest", settings=run_settings, spark=spark, start=start, end=end) as run:
        summary = ingest.execute(run)
    return time.perf_counter() - started, summary


def row_counts(spark: SparkSession, lake: Path) -> dict[str, int]:
    return {name: read_table(spark, table_spec(name), lake).count() for name in COMPARED}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--day-epcs", type=int, default=51_000, help="EPCs of the one-day case (~2 events each)"
    )
    parser.add_argument("--range-days", type=int, default=30, help="days of the range case (0: skip it)")
    parser.add_argument("--range-epcs", type=int, default=50_000, help="EPCs of the range case")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of the one-day case")
    parser.add_argument("--corrupt-rate", type=float, default=0.001)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/ingest")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override, e.g. spark.master=local[4]",
    )
    args = parser.parse_args(argv)

    # Within the machine's rules (2 cores shared, driver memory <= 3g); --set wins.
    settings = load_settings(
        overrides=[
            "spark.master=local[2]",
            "spark.driver_memory=3g",
            "spark.shuffle_partitions=4",
            *args.overrides,
        ]
    )
    settings.spark.conf.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    spark = build_spark(settings, "bench-ingest")
    print(
        f"# ingest benchmark: {platform.node()} {os.cpu_count()} cpus, master {settings.spark.master}, "
        f"shuffle partitions {settings.spark.shuffle_partitions}, driver memory {settings.spark.driver_memory}; "
        f"load average at start {os.getloadavg()}",
        flush=True,
    )
    results: dict[str, Any] = {}

    # One day of ~100k events.
    day_lake = work / "one_day"
    generated = generated_lake(spark, settings, day_lake, 1, args.day_epcs, args.seed, args.corrupt_rate)
    day_seconds = []
    for _ in range(args.repeats):
        seconds, summary = timed_ingest(spark, settings, day_lake, START, START)
        day_seconds.append(round(seconds, 2))
        landing_rows = summary["reconciliation"]["scans"]["landing_rows"]
        print(
            json.dumps(
                {
                    "case": "one day",
                    "landing_rows": landing_rows,
                    "seconds": round(seconds, 2),
                    "events_per_s": round(landing_rows / seconds),
                }
            ),
            flush=True,
        )
    results["one_day"] = {
        "epcs": args.day_epcs,
        "generated_events": generated["events"],
        "landing_rows": landing_rows,
        "seconds": day_seconds,
        "events_per_s": [round(landing_rows / s) for s in day_seconds],
    }

    if args.range_days <= 0:
        results["load_average_end"] = os.getloadavg()
        (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
        spark.stop()
        return 0

    # A range: one job over all days against one job per day, on the same landing files.
    range_lake = work / f"range_{args.range_days}d"
    generated = generated_lake(
        spark, settings, range_lake, args.range_days, args.range_epcs, args.seed, args.corrupt_rate
    )
    end = START + dt.timedelta(days=args.range_days - 1)
    clear_outputs(range_lake)
    one_job, summary = timed_ingest(spark, settings, range_lake, START, end)
    landing_rows = summary["reconciliation"]["scans"]["landing_rows"]
    counts_one_job = row_counts(spark, range_lake)
    print(
        json.dumps(
            {
                "case": f"{args.range_days} days, one job",
                "landing_rows": landing_rows,
                "seconds": round(one_job, 2),
                "events_per_s": round(landing_rows / one_job),
            }
        ),
        flush=True,
    )

    clear_outputs(range_lake)
    per_day = []
    for day in days_between(START, end):
        seconds, _ = timed_ingest(spark, settings, range_lake, day, day)
        per_day.append(round(seconds, 2))
        print(
            json.dumps({"case": "single day", "day": day.isoformat(), "seconds": round(seconds, 2)}),
            flush=True,
        )
    many_jobs = sum(per_day)
    counts_many_jobs = row_counts(spark, range_lake)
    results["range"] = {
        "days": args.range_days,
        "epcs": args.range_epcs,
        "generated_events": generated["events"],
        "landing_rows": landing_rows,
        "one_job_s": round(one_job, 2),
        "single_day_runs_s": round(many_jobs, 2),
        "single_day_run_s": per_day,
        "ratio": round(many_jobs / one_job, 2),
        "one_job_events_per_s": round(landing_rows / one_job),
        "single_day_events_per_s": round(landing_rows / many_jobs),
        "same_row_counts": counts_one_job == counts_many_jobs,
        "row_counts": counts_one_job,
    }
    print(
        json.dumps(
            {"case": "range", **{k: v for k, v in results["range"].items() if k != "single_day_run_s"}}
        ),
        flush=True,
    )
    if counts_one_job != counts_many_jobs:
        print(f"MISMATCH: one job wrote {counts_one_job}, single-day runs {counts_many_jobs}", flush=True)

    results["load_average_end"] = os.getloadavg()
    (work / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"load average at end {os.getloadavg()}")
    spark.stop()
    return 0 if counts_one_job == counts_many_jobs else 1


if __name__ == "__main__":
    sys.exit(main())
