"""Validation cost: validating one day of ~100k events, as a fraction of the ingest that wrote it.

One landing day (~100k generated events, CSV, with corrupt rows) is ingested
(landing -> bronze, quarantine, silver, labels: `spark_jobs.ingest.execute`),
then bronze_scan_events and silver_scan_events of that day are validated with
their suites (`tracelake.validation.validate_table`: read, reconciliation with
the previous layer, Great Expectations, results JSON and Data Docs). The three
steps run round robin --repeats times in one Spark session, so a change in
the machine's load touches all alike; medians are compared.

Run (serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/validation_cost.py

Results and the command used: benchmarks/results/validation_cost.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from spark_jobs import generate, ingest
from tracelake.config import GeneratorSettings, load_settings
from tracelake.runs import job_run
from tracelake.spark import build_spark
from tracelake.validation import validate_table

DAY = dt.date(2025, 7, 1)
TABLES = ("bronze_scan_events", "silver_scan_events")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default="/tmp/tracelake-bench/validation/lake")
    parser.add_argument(
        "--epcs", type=int, default=51_000, help="EPCs of the day (~2 events each on day one)"
    )
    parser.add_argument("--corrupt-rate", type=float, default=0.001)
    parser.add_argument("--repeats", type=int, default=3)
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
    spark = build_spark(settings, "bench-validation")
    print(
        f"# validation cost benchmark: {platform.node()} {os.cpu_count()} cpus, master {settings.spark.master}, "
        f"driver memory {settings.spark.driver_memory}, shuffle partitions {settings.spark.shuffle_partitions}; "
        f"load average at start {os.getloadavg()}",
        flush=True,
    )
    options = {
        "start_date": DAY.isoformat(),
        "days": 1,
        "epcs": args.epcs,
        "seed": args.seed,
        "format": "csv",
        "corrupt_rate": args.corrupt_rate,
    }
    marker = lake / "generated.json"
    if not marker.is_file() or json.loads(marker.read_text()) != options:
        gen = settings.model_copy(update={"generator": GeneratorSettings.model_validate(options)})
        with job_run("generate", settings=gen, spark=spark, start=DAY, end=DAY) as run:
            generate.execute(run)
        marker.write_text(json.dumps(options))

    seconds: dict[str, list[float]] = {"ingest": [], **{f"validate {t}": [] for t in TABLES}}
    phases: dict[str, dict[str, float]] = {}
    rows: dict[str, int] = {}
    for i in range(args.repeats + 1):  # the first round warms up and is not counted
        clock = time.perf_counter()
        with job_run("ingest", settings=settings, spark=spark, start=DAY, end=DAY) as run:
            summary = ingest.execute(run)
        took = {"ingest": time.perf_counter() - clock}
        rows["landing"] = summary["reconciliation"]["scans"]["landing_rows"]
        for table in TABLES:
            clock = time.perf_counter()
            with job_run("validate", settings=settings, spark=spark, start=DAY, end=DAY) as run:
                report = validate_table(run, table)
            took[f"validate {table}"] = time.perf_counter() - clock
            assert report.passed, report.summary_text()
            rows[table], phases[table] = report.row_count, report.timings
        print(
            json.dumps(
                {
                    "round": i,
                    "counted": i > 0,
                    **{k: round(v, 2) for k, v in took.items()},
                    "load_average": os.getloadavg(),
                }
            ),
            flush=True,
        )
        if i > 0:
            for key, value in took.items():
                seconds[key].append(round(value, 2))
    median = {k: statistics.median(v) for k, v in seconds.items()}
    result = {
        "rows": rows,
        "seconds": seconds,
        "median_s": median,
        "fraction_of_ingest": {k: round(v / median["ingest"], 3) for k, v in median.items() if k != "ingest"},
        "both_layers_fraction_of_ingest": round(
            sum(v for k, v in median.items() if k != "ingest") / median["ingest"], 3
        ),
        "last_validation_phases_s": phases,
        "load_average_end": os.getloadavg(),
    }
    print(json.dumps(result, indent=2), flush=True)
    (lake.parent / "results.json").write_text(json.dumps(result, indent=2))
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
