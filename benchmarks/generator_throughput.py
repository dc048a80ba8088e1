"""Generator throughput (events/s): simulated EPC journeys written as landing files.

Times `spark_jobs.generate.execute` (simulation on Spark + landing CSV/JSON/Parquet
files + labels + reference files) in one Spark session, after one small untimed
warm-up run, so JVM start-up is not counted. Each size gets a fresh landing
folder under the work dir. Events per second = generated scan events / seconds.

Run (serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/generator_throughput.py

Results and the command used: benchmarks/results/generator_throughput.md.
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

from spark_jobs import generate
from tracelake.config import GeneratorSettings, load_settings
from tracelake.runs import job_run
from tracelake.spark import build_spark

START = dt.date(2025, 7, 1)


def run_once(spark, settings, lake: Path, epcs: int, days: int, seed: int, fmt: str) -> tuple[float, dict]:
    shutil.rmtree(lake, ignore_errors=True)
    options = {"start_date": START.isoformat(), "days": days, "epcs": epcs, "seed": seed, "format": fmt}
    run_settings = settings.model_copy(
        update={"lake_root": str(lake), "generator": GeneratorSettings.model_validate(options)}
    )
    started = time.perf_counter()
    with job_run(
        "generate", settings=run_settings, spark=spark, start=START, end=START + dt.timedelta(days=days - 1)
    ) as run:
        summary = generate.execute(run)
    return time.perf_counter() - started, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epcs", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--days", type=int, default=14, help="simulated days (landing partitions)")
    parser.add_argument("--format", default="csv", choices=["csv", "json", "parquet"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/generate")
    parser.add_argument("--keep", action="store_true", help="keep the generated files (default: delete them)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="configuration override, e.g. generator.epcs_per_block=50000",
    )
    args = parser.parse_args(argv)

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
    spark = build_spark(settings, "bench-generate")
    print(
        f"# generator benchmark: {platform.node()} {os.cpu_count()} cpus, master {settings.spark.master}, "
        f"driver memory {settings.spark.driver_memory}, format {args.format}, {args.days} days; "
        f"load average at start {os.getloadavg()}",
        flush=True,
    )
    run_once(spark, settings, work / "warmup", 2_000, 2, args.seed, args.format)  # JIT, caches
    results = []
    for epcs in args.epcs:
        lake = work / f"epcs_{epcs}"
        seconds, summary = run_once(spark, settings, lake, epcs, args.days, args.seed, args.format)
        size = sum(f.stat().st_size for f in (lake / "landing").rglob("*") if f.is_file())
        row = {
            "epcs": epcs,
            "days": args.days,
            "format": args.format,
            "events": summary["events"],
            "labels": sum(summary["labels"].values()),
            "files": summary["files"],
            "landing_bytes": size,
            "seconds": round(seconds, 1),
            "events_per_s": round(summary["events"] / seconds),
            "load_average": os.getloadavg(),
        }
        results.append(row)
        print(json.dumps(row), flush=True)
        if not args.keep:
            shutil.rmtree(lake, ignore_errors=True)
    shutil.rmtree(work / "warmup", ignore_errors=True)
    print(
        "\n| EPCs | days | events | seconds | events/s | landing MB |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for r in results:
        print(
            f"| {r['epcs']:,} | {r['days']} | {r['events']:,} | {r['seconds']} | {r['events_per_s']:,} | "
            f"{r['landing_bytes'] / 1e6:.0f} |"
        )
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"load average at end {os.getloadavg()}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
