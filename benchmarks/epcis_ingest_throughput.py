"""EPCIS 2.0 ingest against CSV ingest of the same events, and the driver's memory on a large document.

``throughput`` (default): the generator writes one world twice, as CSV and
as EPCIS documents (same seed: the same scans), and ingest runs on each in
one Spark session, timed around ``spark_jobs.ingest.execute`` (landing ->
reference, bronze, quarantine, silver). Reported: events/s and EPC rows/s
of each, and the ratio within the run (the machine is shared: compare within
one run). The silver tables are compared too (they must be equal apart from
lineage columns).

``memory``: one landing day with a small generated document, then a day with
one document of ``--document-mb`` MB (the generated day's events repeated with
fresh event ids, streamed to disk); the driver process's peak RSS is read
after ingesting each (``ru_maxrss``), with the JVM's (``VmHWM``) for context.

Run (one process, serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/epcis_ingest_throughput.py --epcs 20000 --days 3
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/epcis_ingest_throughput.py memory --document-mb 300

Results and the commands used: benchmarks/results/epcis_ingest_throughput.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from spark_jobs import generate, ingest
from tracelake.config import GeneratorSettings, Settings, load_settings
from tracelake.runs import job_run
from tracelake.spark import build_spark
from tracelake.tables import read_table, table_spec

START = dt.date(2025, 7, 1)
RATES = {"epc_fake": 0.01, "epc_dup": 0.01, "loc_err": 0.01, "evt_order_err": 0.01, "jump": 0.01}
_EVENT_ID = re.compile(r'"eventID":"([^"]+)"')
MIB = 1024 * 1024


def _settings(lake: Path, master: str, partitions: int, driver_memory: str) -> Settings:
    return load_settings(
        overrides={
            "lake_root": str(lake),
            "spark.master": master,
            "spark.shuffle_partitions": partitions,
            "spark.driver_memory": driver_memory,
            "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        }
    )


def generate_world(
    spark: SparkSession, settings: Settings, fmt: str, days: int, epcs: int, seed: int
) -> dict:
    generator = GeneratorSettings.model_validate(
        {
            "start_date": START.isoformat(),
            "days": days,
            "epcs": epcs,
            "seed": seed,
            "format": fmt,
            "rates": RATES,
        }
    )
    run_settings = settings.model_copy(update={"generator": generator})
    with job_run(
        "generate", settings=run_settings, spark=spark, start=START, end=START + dt.timedelta(days=days - 1)
    ) as run:
        return generate.execute(run)


def timed_ingest(spark: SparkSession, settings: Settings, start: dt.date, end: dt.date) -> tuple[float, dict]:
    with job_run("ingest", settings=settings, spark=spark, start=start, end=end) as run:
        began = time.perf_counter()
        summary = ingest.execute(run)
        return time.perf_counter() - began, summary


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
    }


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    lakes = {fmt: work / fmt for fmt in ("csv", "epcis")}
    spark = build_spark(
        _settings(lakes["csv"], args.master, args.partitions, args.driver_memory), "bench-epcis"
    )
    end = START + dt.timedelta(days=args.days - 1)
    result: dict[str, Any] = {"machine_before": machine(), "epcs": args.epcs, "days": args.days}
    for fmt, lake in lakes.items():
        settings = _settings(lake, args.master, args.partitions, args.driver_memory)
        generated = generate_world(spark, settings, fmt, args.days, args.epcs, args.seed)
        landing = lake / "landing" / ("epcis" if fmt == "epcis" else "scans")
        size = sum(p.stat().st_size for p in landing.rglob("*") if p.is_file())
        seconds, summary = timed_ingest(spark, settings, START, end)
        events = generated["events"]
        epc_rows = (
            summary["reconciliation"]["epcis"]["epc_rows"]
            if fmt == "epcis"
            else summary["tables"]["bronze_scan_events"]["rows"]
        )
        result[fmt] = {
            "landing_bytes": size,
            "events": events,
            "epc_rows": epc_rows,
            "seconds": round(seconds, 2),
            "events_per_s": round(events / seconds, 1),
            "epc_rows_per_s": round(epc_rows / seconds, 1),
            "silver_rows": summary["tables"]["silver_scan_events"]["rows"],
        }
    lineage = ["_run_id", "_source_file"]
    silver = {
        fmt: read_table(spark, table_spec("silver_scan_events"), str(lake)).drop(*lineage)
        for fmt, lake in lakes.items()
    }
    result["silver_equal"] = (
        silver["csv"].exceptAll(silver["epcis"]).count() == 0
        and silver["epcis"].exceptAll(silver["csv"]).count() == 0
    )
    result["epcis_to_csv_events_per_s"] = round(
        result["epcis"]["events_per_s"] / result["csv"]["events_per_s"], 3
    )
    result["machine_after"] = machine()
    spark.stop()
    return result


def _big_document(small: Path, target: Path, megabytes: int) -> int:
    """The small document's events repeated (fresh event ids) up to ``megabytes``, streamed line by line."""
    lines = small.read_text().splitlines()
    header, events, footer = lines[0], [line.lstrip(",") for line in lines[1:-1]], lines[-1]
    limit, written, copy = megabytes * MIB, 0, 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as out:
        out.write(header + "\n")
        first = True
        while written < limit:
            for line in events:
                line = _EVENT_ID.sub(lambda m, suffix=f"-c{copy}": f'"eventID":"{m.group(1)}{suffix}"', line)
                out.write(("" if first else ",") + line + "\n")
                first = False
                written += len(line) + 2
            copy += 1
        out.write(footer + "\n")
    return target.stat().st_size


def _jvm_hwm_mib(spark: SparkSession) -> float | None:
    pid = spark.sparkContext._jvm.ProcessHandle.current().pid()  # type: ignore[union-attr]
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def memory(args: argparse.Namespace) -> dict[str, Any]:
    lake = Path(args.work) / "memory"
    shutil.rmtree(lake, ignore_errors=True)
    settings = _settings(lake, args.master, args.partitions, args.driver_memory)
    spark = build_spark(settings, "bench-epcis-memory")
    generate_world(spark, settings, "epcis", 1, args.epcs, args.seed)
    small = next((lake / "landing" / "epcis" / f"date={START.isoformat()}").glob("*.jsonld"))
    seconds_small, _ = timed_ingest(spark, settings, START, START)
    rss_small = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    day = START + dt.timedelta(days=1)
    size = _big_document(
        small, lake / "landing" / "epcis" / f"date={day.isoformat()}" / "big.jsonld", args.document_mb
    )
    seconds_big, summary = timed_ingest(spark, settings, day, day)
    rss_big = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    epcis = summary["reconciliation"]["epcis"]
    result = {
        "machine": machine(),
        "small_document_bytes": small.stat().st_size,
        "document_bytes": size,
        "events": sum(f["accepted_events"] for f in epcis["files"].values()),
        "epc_rows": epcis["epc_rows"],
        "seconds_small": round(seconds_small, 1),
        "seconds_big": round(seconds_big, 1),
        "driver_peak_rss_mib_after_small": round(rss_small, 1),
        "driver_peak_rss_mib_after_big": round(rss_big, 1),
        "driver_rss_growth_mib": round(rss_big - rss_small, 1),
        "jvm_peak_rss_mib": _jvm_hwm_mib(spark),
        "driver_memory": args.driver_memory,
    }
    spark.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=("throughput", "memory"), default="throughput")
    parser.add_argument("--epcs", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--document-mb", type=int, default=300)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--driver-memory", default="3g")
    parser.add_argument("--work", default="benchmarks/_work/epcis")
    parser.add_argument("--output", help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)
    result = {
        "mode": args.mode,
        "command": " ".join(sys.argv),
        "when": dt.datetime.now(dt.UTC).isoformat(),
        **(throughput(args) if args.mode == "throughput" else memory(args)),
    }
    line = json.dumps(result, default=str)
    print(line)
    if args.output:
        with open(args.output, "a") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
