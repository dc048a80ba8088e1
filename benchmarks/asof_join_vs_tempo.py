"""tracelake's as_of_join against databrickslabs tempo's asofJoin, on the same data.

Scan events (keyed by location_id, event_time) meet a daily snapshot table (one
row per location and day, effective at midnight, some days missing) with a
TTL. Each timed run reads the Parquet inputs, joins, and materialises every
row and column of the result: with ``--sink noop`` (the default) through
Spark's no-op writer, which measures the join without the cost of encoding
the output, with ``--sink parquet`` as Parquet files (mode overwrite). The time
covers the whole job, not plan building. Each method's result is also written
to Parquet once (untimed) and the results are compared in full (exceptAll both
ways, plus row counts).

Run (one process, serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/asof_join_vs_tempo.py

Results and the command used: benchmarks/results/asof_join_vs_tempo.md.
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
from collections.abc import Callable
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from tracelake.config import load_settings
from tracelake.pit import AsOfSpec, as_of_join, as_of_join_many
from tracelake.spark import build_spark

START = dt.datetime(2025, 7, 1)
BASELINE = "read events only (no join)"
PREFIX = "snap"  # tempo joins its prefix with "_"; ours is used as given
STEPS = ["Factory", "WMS", "LGS_HUB", "W_STOCK", "R_STOCK", "POS"]


def import_tempo():
    """tempo's TSDF (tempo imports IPython for notebook display; the dev extra installs it)."""
    from tempo import TSDF

    return TSDF


def generate(
    spark: SparkSession, work: Path, events: int, locations: int, days: int, seed: int
) -> tuple[str, str]:
    """Write the events and snapshots as Parquet (deterministic for the seed); return their paths."""
    snap_path = work / f"snapshots_{locations}x{days}"
    if not (snap_path / "_SUCCESS").exists():
        (
            spark.range(locations * days)
            .select(
                (F.col("id") % locations).alias("loc"),
                (F.col("id") / locations).cast("int").alias("day"),
                F.pmod(F.xxhash64("id", F.lit(seed)), F.lit(100)).alias("h"),
            )
            .where("h >= 8")  # ~8% of location-days have no snapshot: the TTL decides
            .select(
                F.format_string("LOC%04d", "loc").alias("location_id"),
                (F.lit(START) + F.make_dt_interval(F.col("day"))).alias("effective_ts"),
                (F.col("h") * 37 + F.col("loc")).cast("long").alias("event_count"),
                F.when(F.col("h") >= 13, F.col("h") / 1000.0).alias("anomaly_rate"),  # some nulls
                (F.col("loc") * 11.5 + F.col("day")).alias("mean_dwell_s"),
            )
            .write.mode("overwrite")
            .parquet(str(snap_path))
        )
    event_path = work / f"events_{events}"
    if not (event_path / "_SUCCESS").exists():
        start_us = int((START - dt.timedelta(days=1)).replace(tzinfo=dt.UTC).timestamp() * 1e6)
        span_us = (days + 1) * 86_400_000_000
        h = lambda salt: F.xxhash64("id", F.lit(seed + salt))  # noqa: E731
        (
            spark.range(events)
            .select(
                F.col("id").alias("event_id"),
                F.format_string(
                    "001.8804823.%07d.000001.20250701.%09d",
                    F.pmod(h(1), F.lit(50)),
                    F.pmod(h(2), F.lit(10**9)),
                ).alias("epc_code"),
                F.format_string("LOC%04d", F.pmod(h(3), F.lit(locations))).alias("location_id"),
                F.timestamp_micros(F.lit(start_us) + F.pmod(h(4), F.lit(span_us))).alias("event_time"),
                F.element_at(
                    F.array(*map(F.lit, STEPS)), (F.pmod(h(5), F.lit(len(STEPS))) + 1).cast("int")
                ).alias("business_step"),
                F.format_string("op%03d", F.pmod(h(6), F.lit(500))).alias("operator_id"),
            )
            .write.mode("overwrite")
            .parquet(str(event_path))
        )
    return str(event_path), str(snap_path)


def ours(spark: SparkSession, events: str, snaps: str, ttl: dt.timedelta, strategy: str) -> DataFrame:
    left, right = spark.read.parquet(events), spark.read.parquet(snaps)
    if strategy == "auto":  # exactly what callers get
        return as_of_join(
            left,
            right,
            keys=["location_id"],
            left_ts="event_time",
            right_ts="effective_ts",
            ttl=ttl,
            prefix=PREFIX + "_",
        )
    spec = AsOfSpec(right, ["location_id"], "effective_ts", ttl=ttl, prefix=PREFIX + "_")
    return as_of_join_many(left, [spec], left_ts="event_time", strategy=strategy)  # type: ignore[arg-type]


def tempo(spark: SparkSession, events: str, snaps: str, ttl: dt.timedelta) -> DataFrame:
    TSDF = import_tempo()
    left, right = spark.read.parquet(events), spark.read.parquet(snaps)
    # tempo 0.1.30 looks the left timestamp's name up in the right frame: both must share it.
    right = right.withColumnRenamed("effective_ts", "event_time")
    joined = (
        TSDF(left, ts_col="event_time", partition_cols=["location_id"])
        .asofJoin(
            TSDF(right, ts_col="event_time", partition_cols=["location_id"]),
            right_prefix=PREFIX,
            skipNulls=False,  # take the latest row whole, as ours does (default True fills from older rows)
            tolerance=int(ttl.total_seconds()),  # inclusive, like our TTL
        )
        .df
    )
    values = [c for c in right.columns if c not in ("location_id", "event_time")]
    return joined.select(*left.columns, *[f"{PREFIX}_{c}" for c in values])


def timed(build: Callable[[], DataFrame], sink: str, out: str) -> float:
    started = time.perf_counter()
    writer = build().write.mode("overwrite").format(sink)
    writer.save() if sink == "noop" else writer.save(out)
    return time.perf_counter() - started


def compare(spark: SparkSession, a: str, b: str) -> dict[str, int]:
    x, y = spark.read.parquet(a), spark.read.parquet(b)
    return {
        "rows_a": x.count(),
        "rows_b": y.count(),
        "only_in_a": x.exceptAll(y).count(),
        "only_in_b": y.exceptAll(x).count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, nargs="+", default=[2_000_000, 4_000_000, 8_000_000])
    parser.add_argument(
        "--tempo-events",
        type=int,
        nargs="*",
        default=None,
        help="sizes at which tempo also runs (a subset of --events; default: all)",
    )
    parser.add_argument("--locations", type=int, default=200)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--ttl-days", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sink", choices=["noop", "parquet"], default="noop")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="3g")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/asof")
    args = parser.parse_args(argv)
    if args.tempo_events is None:
        args.tempo_events = list(args.events)

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    settings = load_settings(
        overrides={
            "lake_root": str(work / "lake"),
            "spark.master": args.master,
            "spark.driver_memory": args.driver_memory,
            "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        }
    )
    spark = build_spark(settings, "bench-asof")
    spark.sparkContext.setLogLevel("ERROR")
    ttl = dt.timedelta(days=args.ttl_days)
    methods: dict[str, Callable[[str, str], DataFrame]] = {
        "ours (auto: broadcast)": lambda e, s: ours(spark, e, s, ttl, "auto"),
        "ours (sort plan forced)": lambda e, s: ours(spark, e, s, ttl, "sort"),
        "tempo asofJoin": lambda e, s: tempo(spark, e, s, ttl),
        # Not a join: reading and materialising the left rows alone, the floor under every method.
        BASELINE: lambda e, s: spark.read.parquet(e),
    }
    print(
        f"# as-of join benchmark: {platform.node()} {os.cpu_count()} cpus, master {args.master}, "
        f"driver memory {args.driver_memory}, sink {args.sink}, shuffle partitions {settings.spark.shuffle_partitions}, "
        f"load average at start {os.getloadavg()}",
        flush=True,
    )

    results = []
    for n in args.events:
        events, snaps = generate(spark, work, n, args.locations, args.days, args.seed)
        todo = [m for m in methods if m != "tempo asofJoin" or n in args.tempo_events]
        if n == args.events[0]:  # one untimed run of each, so JIT and caches warm for all alike
            for name in todo:
                timed(
                    lambda name=name, events=events, snaps=snaps: methods[name](events, snaps),
                    args.sink,
                    str(work / "warmup"),
                )
        # Round robin, so that a change in the machine's load affects every method alike.
        outs = {name: str(work / f"out_{n}_{i}") for i, name in enumerate(todo) if name != BASELINE}
        seconds: dict[str, list[float]] = {name: [] for name in todo}
        for _ in range(args.repeats):
            for name in todo:
                seconds[name].append(
                    timed(
                        lambda name=name, events=events, snaps=snaps: methods[name](events, snaps),
                        args.sink,
                        outs.get(name, str(work / "baseline")),
                    )
                )
        for name in todo:
            row = {
                "events": n,
                "method": name,
                "seconds": [round(s, 2) for s in seconds[name]],
                "median_s": round(statistics.median(seconds[name]), 2),
                "load_average": os.getloadavg(),
            }
            results.append(row)
            print(json.dumps(row), flush=True)
        if args.sink != "parquet":
            for name in outs:
                timed(
                    lambda name=name, events=events, snaps=snaps: methods[name](events, snaps),
                    "parquet",
                    outs[name],
                )
        reference = outs["ours (auto: broadcast)"]
        joined = spark.read.parquet(reference)
        shares = (
            joined.select(
                F.count("*").alias("rows"),
                F.count("snap_event_count").alias("matched"),
                F.count("snap_anomaly_rate").alias("matched_rate_not_null"),
            )
            .first()
            .asDict()
        )
        for name, out in outs.items():
            if out != reference:
                check = compare(spark, reference, out)
                print(
                    json.dumps({"events": n, "check": f"ours (auto) vs {name}", **check, **shares}),
                    flush=True,
                )
                if (
                    check["only_in_a"]
                    or check["only_in_b"]
                    or check["rows_a"] != check["rows_b"]
                    or check["rows_a"] != n
                ):
                    print(f"MISMATCH at {n} events: ours (auto) vs {name}: {check}", flush=True)
                    return 1

    print(f"\n| events | method | median s ({args.sink} sink) | runs (s) |\n| ---: | --- | ---: | --- |")
    for row in results:
        print(
            f"| {row['events']:,} | {row['method']} | {row['median_s']} | {', '.join(map(str, row['seconds']))} |"
        )
    by = {(r["events"], r["method"]): r["median_s"] for r in results}
    for n in args.events:
        if (n, "tempo asofJoin") in by:
            for name in methods:
                if name not in ("tempo asofJoin", BASELINE):
                    print(
                        f"- {n:,} events: {name} is {by[(n, 'tempo asofJoin')] / by[(n, name)]:.1f}x tempo's speed"
                    )
        if (n, BASELINE) in by and (n, "tempo asofJoin") in by:
            floor = by[(n, BASELINE)]
            for name in methods:
                if name not in ("tempo asofJoin", BASELINE) and by[(n, name)] > floor:
                    print(
                        f"  above the read-only floor ({floor} s): {name} "
                        f"{(by[(n, 'tempo asofJoin')] - floor) / (by[(n, name)] - floor):.1f}x tempo's speed"
                    )
    (work / f"results_{args.sink}.json").write_text(json.dumps(results, indent=2))
    print(f"load average at end {os.getloadavg()}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
