"""Feature backfill: a 30-day range in one job against 30 single-day runs, on the same silver.

Times `spark_jobs.build_features.execute` (snapshots + point-in-time event
features, written to Delta) in one Spark session, so JVM start-up is not
counted (each spark-submit would add it once per run, which only widens the
gap). Order: one job, 30 single-day runs, one job again (the one-job figure
is the mean of the two, so a change in the machine's load during the
single-day runs shows). The outputs of both ways are compared in full
(row counts and an order-independent hash of every row of every table).

Silver comes from the lake given (default: the 30-day lake of
benchmarks/ingest_throughput.py); when it has no silver the script generates
and ingests one first (--epcs, --days).

Run (serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/feature_backfill.py

Results and the command used: benchmarks/results/feature_backfill.md.
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

from pyspark.sql import functions as F

from spark_jobs import build_features, generate, ingest
from tracelake.config import GeneratorSettings, load_settings
from tracelake.dates import days_between
from tracelake.runs import job_run
from tracelake.spark import build_spark
from tracelake.tables import read_table, table_exists, table_spec

START = dt.date(2025, 7, 1)
OUTPUTS = ("features_location_daily", "features_route_daily", "features_event_features")


def timed(spark, settings, job, fn, start, end) -> tuple[float, dict]:
    started = time.perf_counter()
    with job_run(job, settings=settings, spark=spark, start=start, end=end) as run:
        summary = fn(run)
    return time.perf_counter() - started, summary


def fingerprint(spark, lake: Path) -> dict[str, list[int]]:
    """Per output table: [rows, order-independent sum of a hash of every column of every row]."""
    out = {}
    for name in OUTPUTS:
        df = read_table(spark, table_spec(name), lake)
        row = df.select(F.count(F.lit(1)), F.sum(F.xxhash64(*df.columns) % F.lit(1 << 40))).first()
        out[name] = [int(row[0]), int(row[1] or 0)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lake",
        default="/tmp/tracelake-bench/ingest/range_30d",
        help="lake holding silver for the days (made when absent)",
    )
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--epcs", type=int, default=50_000, help="EPCs to generate when the lake has no silver"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    lake = Path(args.lake)
    settings = load_settings(
        overrides=[
            "spark.master=local[2]",
            "spark.driver_memory=3g",
            "spark.shuffle_partitions=4",
            f"lake_root={lake}",
            *args.overrides,
        ]
    )
    settings.spark.conf.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    spark = build_spark(settings, "bench-features")
    end = START + dt.timedelta(days=args.days - 1)
    print(
        f"# feature backfill benchmark: {platform.node()} {os.cpu_count()} cpus, master {settings.spark.master}, "
        f"driver memory {settings.spark.driver_memory}, shuffle partitions {settings.spark.shuffle_partitions}; "
        f"load average at start {os.getloadavg()}",
        flush=True,
    )
    if not table_exists(spark, table_spec("silver_scan_events"), lake):
        options = {"start_date": START.isoformat(), "days": args.days, "epcs": args.epcs, "seed": args.seed}
        gen = settings.model_copy(update={"generator": GeneratorSettings.model_validate(options)})
        timed(spark, gen, "generate", generate.execute, START, end)
        timed(spark, settings, "ingest", ingest.execute, START, end)
    silver = read_table(spark, table_spec("silver_scan_events"), lake).where(
        F.col("event_date").between(START, end)
    )
    events = silver.count()

    def clear() -> None:
        shutil.rmtree(lake / "features", ignore_errors=True)

    clear()
    first, _summary = timed(spark, settings, "features", build_features.execute, START, end)
    one_job = fingerprint(spark, lake)
    print(
        json.dumps(
            {
                "case": f"{args.days} days, one job",
                "seconds": round(first, 1),
                "events": events,
                "load_average": os.getloadavg(),
            }
        ),
        flush=True,
    )
    clear()
    singles = []
    for day in days_between(START, end):
        seconds, _ = timed(spark, settings, "features", build_features.execute, day, day)
        singles.append(round(seconds, 1))
        print(
            json.dumps(
                {
                    "case": "single day",
                    "day": day.isoformat(),
                    "seconds": round(seconds, 1),
                    "load_average": os.getloadavg(),
                }
            ),
            flush=True,
        )
    single_day = fingerprint(spark, lake)
    clear()
    second, _ = timed(spark, settings, "features", build_features.execute, START, end)
    print(
        json.dumps(
            {
                "case": f"{args.days} days, one job (again)",
                "seconds": round(second, 1),
                "load_average": os.getloadavg(),
            }
        ),
        flush=True,
    )
    one_job_s = (first + second) / 2
    result = {
        "days": args.days,
        "events": events,
        "one_job_s": [round(first, 1), round(second, 1)],
        "single_day_runs_s": round(sum(singles), 1),
        "single_day_run_s": singles,
        "ratio": round(sum(singles) / one_job_s, 2),
        "one_job_events_per_s": round(events / one_job_s),
        "single_day_events_per_s": round(events / sum(singles)),
        "same_output": one_job == single_day,
        "fingerprint": one_job,
        "load_average_end": os.getloadavg(),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "single_day_run_s"}), flush=True)
    if one_job != single_day:
        print(f"MISMATCH: one job wrote {one_job}, single-day runs {single_day}", flush=True)
    (lake.parent / "feature_backfill_results.json").write_text(json.dumps(result, indent=2))
    spark.stop()
    return 0 if one_job == single_day else 1


if __name__ == "__main__":
    sys.exit(main())
