"""As-of join family: tracelake.pit against DuckDB, Spark 4.3's native ASOF JOIN and tempo.

One workload: scan events (event_id, location_id, event_time, two payload
columns) meet a daily snapshot table (location_id, effective_ts, three value
columns, ~8% of location-days missing, some nulls) with a TTL of 2 days: each
event gets the latest snapshot of its location at or before its time, or nulls
when that snapshot is older than the TTL or there is none.

Shapes (data generated once with numpy + pyarrow into Parquet, the same files
for every engine):

- ``few_keys``: 200 locations x 90 days (the shape of the earlier check).
- ``many_keys``: 20,000 locations x 30 days.
- ``skewed``: 2,000 locations x 90 days, 4 hot locations hold 80% of events.

Modes, each measured for every engine on every shape:

- source ``cached``: both inputs held in memory before timing (Spark
  ``cache()`` + count; DuckDB tables); source ``parquet``: every timed run
  reads the Parquet files.
- output ``materialised``: every row and column of the result is produced
  (Spark: the noop writer; DuckDB: ``CREATE TEMP TABLE ... AS``);
  output ``aggregated``: count(*), count and sums of the joined columns.

Engines: ``tracelake`` (``as_of_join``, plan chosen by ``auto``, project
session settings) and ``tempo`` (dbl-tempo ``asofJoin``) in the project's venv
(Spark 4.2); ``duckdb`` (``ASOF LEFT JOIN``, 2 threads); ``spark43``
(``LEFT ASOF JOIN ... MATCH_CONDITION``, ``spark.sql.join.asofJoin.enabled``)
in the benchmark-only venv built by ``benchmarks/asof_env.sh``, as a separate
process. Spark runs ``local[2]``, driver memory 3g, 8 shuffle partitions, UTC.

Each engine also writes its full result once (untimed, from Parquet) to
Parquet; ``report`` compares those row by row (full outer join on event_id,
every column ``IS DISTINCT FROM``) against tracelake's, and writes
benchmarks/results/asof_join_family.{json,md}.

Run (each step serialized with other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/asof_join_family.py generate
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/asof_join_family.py run --engine tracelake
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/asof_join_family.py run --engine duckdb
    flock /tmp/tracelake-bench.lock .venv-bench-spark43/bin/python benchmarks/asof_join_family.py run --engine spark43
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/asof_join_family.py run --engine tempo --repeats 1
    .venv/bin/python benchmarks/asof_join_family.py report
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

START = dt.datetime(2025, 7, 1, tzinfo=dt.UTC)
TTL = dt.timedelta(days=2)
TTL_US = int(TTL.total_seconds() * 1_000_000)
STEPS = ["Factory", "WMS", "LGS_HUB", "W_STOCK", "R_STOCK", "POS"]
VALUES = ["event_count", "anomaly_rate", "mean_dwell_s"]
OUT_VALUES = [f"snap_{v}" for v in VALUES]
LEFT = ["event_id", "location_id", "event_time", "business_step", "operator_id"]
SHAPES: dict[str, dict] = {
    "few_keys": {"events": 2_000_000, "keys": 200, "days": 90, "hot_keys": 0, "hot_share": 0.0},
    "many_keys": {"events": 2_000_000, "keys": 20_000, "days": 30, "hot_keys": 0, "hot_share": 0.0},
    "skewed": {"events": 2_000_000, "keys": 2_000, "days": 90, "hot_keys": 4, "hot_share": 0.8},
}
SOURCES = ["cached", "parquet"]
OUTPUTS = ["materialised", "aggregated"]
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- data ---------------------------------------------------------------------


def generate(work: Path, seed: int, files: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    for name, shape in SHAPES.items():
        d = work / name
        if (d / "DONE").exists():
            continue
        (d / "events").mkdir(parents=True, exist_ok=True)
        (d / "snapshots").mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        n, k, days = shape["events"], shape["keys"], shape["days"]
        names = pa.array([f"LOC{i:05d}" for i in range(k)])
        # snapshots: one per location and day at midnight, ~8% missing
        loc = np.repeat(np.arange(k), days)
        day = np.tile(np.arange(days), k)
        h = rng.integers(0, 100, size=loc.size)
        keep = h >= 8
        loc, day, h = loc[keep], day[keep], h[keep]
        start_us = int(START.timestamp() * 1_000_000)
        snaps = pa.table(
            {
                "location_id": names.take(pa.array(loc)),
                "effective_ts": pa.array(start_us + day * 86_400_000_000, pa.timestamp("us", tz="UTC")),
                "event_count": pa.array(h * 37 + loc, pa.int64()),
                "anomaly_rate": pa.array(h / 1000.0, mask=h < 13),
                "mean_dwell_s": pa.array(loc * 11.5 + day),
            }
        )
        pq.write_table(snaps, d / "snapshots" / "part-0.parquet")
        # events: uniform over [start - 1 day, start + days); hot keys take hot_share of them
        if shape["hot_keys"]:
            hot = rng.random(n) < shape["hot_share"]
            key = np.where(
                hot,
                rng.integers(0, shape["hot_keys"], size=n),
                rng.integers(shape["hot_keys"], k, size=n),
            )
        else:
            key = rng.integers(0, k, size=n)
        ts = start_us - 86_400_000_000 + rng.integers(0, (days + 1) * 86_400_000_000, size=n)
        steps = pa.array(STEPS)
        events = pa.table(
            {
                "event_id": pa.array(np.arange(n, dtype=np.int64)),
                "location_id": names.take(pa.array(key)),
                "event_time": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "business_step": steps.take(pa.array(rng.integers(0, len(STEPS), size=n))),
                "operator_id": pa.array([f"op{i:03d}" for i in range(500)]).take(
                    pa.array(rng.integers(0, 500, size=n))
                ),
            }
        )
        per = -(-n // files)
        for i in range(files):  # several files so Spark reads with more than one task
            pq.write_table(events.slice(i * per, per), d / "events" / f"part-{i}.parquet")
        (d / "DONE").write_text(json.dumps({**shape, "snapshots": snaps.num_rows, "seed": seed}))
        print(f"{name}: {n:,} events, {snaps.num_rows:,} snapshots", flush=True)


# --- Spark engines ------------------------------------------------------------


def spark_session(engine: str, driver_memory: str):
    if engine in ("tracelake", "tempo"):
        from tracelake.config import load_settings
        from tracelake.spark import build_spark

        settings = load_settings(
            overrides={
                "lake_root": "/tmp/tracelake-bench/asof-family/lake",
                "spark.master": "local[2]",
                "spark.driver_memory": driver_memory,
                "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
            }
        )
        spark = build_spark(settings, f"bench-asof-family-{engine}")
    else:  # Spark 4.3, the benchmark-only venv: the project's session settings that matter here
        from pyspark.sql import SparkSession

        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        spark = (
            SparkSession.builder.master("local[2]")
            .appName("bench-asof-family-spark43")
            .config("spark.driver.memory", driver_memory)
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.join.asofJoin.enabled", "true")
            .getOrCreate()
        )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def spark_join(engine: str, spark, events, snaps):

    if engine == "tracelake":
        from tracelake.pit import as_of_join

        return as_of_join(
            events,
            snaps,
            keys=["location_id"],
            left_ts="event_time",
            right_ts="effective_ts",
            ttl=TTL,
            prefix="snap_",
        )
    if engine == "tempo":
        from tempo import TSDF

        right = snaps.withColumnRenamed("effective_ts", "event_time")
        joined = (
            TSDF(events, ts_col="event_time", partition_cols=["location_id"])
            .asofJoin(
                TSDF(right, ts_col="event_time", partition_cols=["location_id"]),
                right_prefix="snap",
                skipNulls=False,
                tolerance=int(TTL.total_seconds()),
            )
            .df
        )
        return joined.select(*LEFT, *OUT_VALUES)
    # spark43: the native operator, TTL applied to the matched row afterwards
    events.createOrReplaceTempView("events")
    snaps.createOrReplaceTempView("snaps")
    ok = f"unix_micros(e.event_time) - unix_micros(s.effective_ts) <= {TTL_US}"
    cols = ", ".join(f"CASE WHEN {ok} THEN s.{v} END AS snap_{v}" for v in VALUES)
    return spark.sql(
        f"SELECT e.*, {cols} FROM events e LEFT ASOF JOIN snaps s "
        "MATCH_CONDITION (e.event_time >= s.effective_ts) ON e.location_id = s.location_id"
    )


def spark_aggregate(df) -> dict:
    from pyspark.sql import functions as F

    row = df.agg(
        F.count(F.lit(1)).alias("rows"),
        F.count("snap_event_count").alias("matched"),
        F.sum("snap_event_count").alias("sum_event_count"),
        F.sum("snap_anomaly_rate").alias("sum_anomaly_rate"),
        F.sum("snap_mean_dwell_s").alias("sum_mean_dwell_s"),
    ).first()
    return row.asDict()


def run_spark(engine: str, args, work: Path, out: Path) -> None:
    import pyspark

    spark = spark_session(engine, args.driver_memory)
    version = {"engine_version": f"pyspark {pyspark.__version__}"}
    if engine == "tempo":
        from importlib.metadata import version as v

        version["engine_version"] += f", dbl-tempo {v('dbl-tempo')}"
    for shape in args.shapes:
        d = work / shape
        base_e = spark.read.parquet(str(d / "events"))
        base_s = spark.read.parquet(str(d / "snapshots"))
        extra = {}
        if engine == "tracelake":
            from tracelake.pit import _estimated_bytes

            threshold = int(spark._jsparkSession.sessionState().conf().autoBroadcastJoinThreshold())
            extra["plan"] = "broadcast" if 0 <= _estimated_bytes(base_s) <= threshold else "sort"
        # The answer, once, untimed (also a warm-up run).
        t0 = time.perf_counter()
        spark_join(engine, spark, base_e, base_s).write.mode("overwrite").parquet(
            str(work / "answers" / engine / shape)
        )
        print(f"{engine} {shape}: answer written in {time.perf_counter() - t0:.1f} s", flush=True)
        for source in SOURCES:
            e, s = base_e, base_s
            if source == "cached":
                e, s = base_e.cache(), base_s.cache()
                e.count(), s.count()
            for output in OUTPUTS:
                runs, agg = [], None
                before = load()
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    df = spark_join(engine, spark, e, s)
                    if output == "materialised":
                        df.write.mode("overwrite").format("noop").save()
                    else:
                        agg = spark_aggregate(df)
                    runs.append(round(time.perf_counter() - t0, 3))
                record(out, engine, shape, source, output, runs, before, agg, {**version, **extra})
            if source == "cached":
                e.unpersist(blocking=True), s.unpersist(blocking=True)
    spark.stop()


# --- DuckDB -------------------------------------------------------------------

DUCK_SQL = """
SELECT e.*, {cols}
FROM {events} e ASOF LEFT JOIN {snaps} s
  ON e.location_id = s.location_id AND e.event_time >= s.effective_ts
"""


def duck_query(events: str, snaps: str) -> str:
    ok = f"epoch_us(e.event_time) - epoch_us(s.effective_ts) <= {TTL_US}"
    cols = ", ".join(f"CASE WHEN {ok} THEN s.{v} END AS snap_{v}" for v in VALUES)
    return DUCK_SQL.format(cols=cols, events=events, snaps=snaps)


def run_duckdb(args, work: Path, out: Path) -> None:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {args.duckdb_threads}")
    con.execute(f"SET memory_limit = '{args.duckdb_memory}'")
    con.execute("SET TimeZone = 'UTC'")
    version = {"engine_version": f"duckdb {duckdb.__version__}", "threads": args.duckdb_threads}
    for shape in args.shapes:
        d = work / shape
        pe = f"read_parquet('{d / 'events'}/*.parquet')"
        ps = f"read_parquet('{d / 'snapshots'}/*.parquet')"
        answer = work / "answers" / "duckdb" / shape
        answer.mkdir(parents=True, exist_ok=True)
        con.execute(f"COPY ({duck_query(pe, ps)}) TO '{answer / 'part-0.parquet'}' (FORMAT parquet)")
        for source in SOURCES:
            if source == "cached":
                con.execute(f"CREATE OR REPLACE TABLE ev AS SELECT * FROM {pe}")
                con.execute(f"CREATE OR REPLACE TABLE sn AS SELECT * FROM {ps}")
                e, s = "ev", "sn"
            else:
                e, s = pe, ps
            q = duck_query(e, s)
            for output in OUTPUTS:
                runs, agg = [], None
                before = load()
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    if output == "materialised":
                        con.execute(f"CREATE OR REPLACE TEMP TABLE result AS {q}")
                    else:
                        row = con.execute(
                            "SELECT count(*), count(snap_event_count), sum(snap_event_count), "
                            f"sum(snap_anomaly_rate), sum(snap_mean_dwell_s) FROM ({q})"
                        ).fetchone()
                        agg = dict(
                            zip(
                                [
                                    "rows",
                                    "matched",
                                    "sum_event_count",
                                    "sum_anomaly_rate",
                                    "sum_mean_dwell_s",
                                ],
                                [int(row[0]), int(row[1]), int(row[2]), float(row[3]), float(row[4])],
                                strict=True,
                            )
                        )
                    runs.append(round(time.perf_counter() - t0, 3))
                record(out, "duckdb", shape, source, output, runs, before, agg, version)
            con.execute("DROP TABLE IF EXISTS result")
        con.execute("DROP TABLE IF EXISTS ev")
        con.execute("DROP TABLE IF EXISTS sn")


# --- records and report -------------------------------------------------------


def record(out: Path, engine, shape, source, output, runs, before, agg, extra) -> None:
    row = {
        "engine": engine,
        "shape": shape,
        "source": source,
        "output": output,
        "seconds": runs,
        "best_s": min(runs),
        "load_before": before,
        "load_after": load(),
        "aggregate": agg,
        **extra,
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def compare_answers(work: Path, shapes: list[str], engines: list[str]) -> list[dict]:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    checks = []
    cols = LEFT + OUT_VALUES
    for shape in shapes:
        ref = work / "answers" / "tracelake" / shape
        for engine in engines:
            other = work / "answers" / engine / shape
            if engine == "tracelake" or not other.exists():
                continue
            differ = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in cols)
            row = con.execute(
                f"""
                WITH a AS (SELECT * FROM read_parquet('{ref}/*.parquet')),
                     b AS (SELECT * FROM read_parquet('{other}/*.parquet'))
                SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM b),
                       (SELECT count(DISTINCT event_id) FROM a), (SELECT count(DISTINCT event_id) FROM b),
                       (SELECT count(*) FROM a FULL JOIN b USING (event_id) WHERE {differ}),
                       (SELECT count(snap_event_count) FROM a)
                """
            ).fetchone()
            check = dict(
                zip(
                    ["rows_ref", "rows_other", "ids_ref", "ids_other", "rows_differing", "matched_ref"],
                    map(int, row),
                    strict=True,
                )
            )
            check.update(shape=shape, reference="tracelake", engine=engine)
            check["same"] = (
                check["rows_differing"] == 0
                and check["rows_ref"] == check["rows_other"] == check["ids_ref"] == check["ids_other"]
            )
            checks.append(check)
            print(json.dumps(check), flush=True)
    return checks


def report(args, work: Path) -> None:
    rows = [json.loads(line) for line in (work / "measurements.jsonl").read_text().splitlines() if line]
    latest: dict[tuple, dict] = {}
    for r in rows:  # the last measurement of each cell counts
        latest[(r["engine"], r["shape"], r["source"], r["output"])] = r
    engines = [e for e in ["tracelake", "spark43", "duckdb", "tempo"] if any(k[0] == e for k in latest)]
    checks = compare_answers(work, list(SHAPES), engines)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    meta = {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "machine": f"{platform.node()}, nproc {os.cpu_count()}, {mem:.1f} GiB",
        "shapes": SHAPES,
        "ttl_days": TTL.days,
        "spark": "local[2], driver memory 3g, 8 shuffle partitions, UTC",
    }
    table = []
    for shape in SHAPES:
        for source in SOURCES:
            for output in OUTPUTS:
                cell = {e: latest.get((e, shape, source, output)) for e in engines}
                ours = cell.get("tracelake")
                entry = {"shape": shape, "source": source, "output": output}
                for e, r in cell.items():
                    entry[e] = r["best_s"] if r else None
                if ours:
                    for e in engines:
                        if e != "tracelake" and cell.get(e):
                            entry[f"{e}/tracelake"] = round(cell[e]["best_s"] / ours["best_s"], 2)
                table.append(entry)
    # aggregates agree across engines (count, matched, integer sum exactly)
    agg_checks = []
    for shape in SHAPES:
        vals = {
            e: latest[(e, shape, "parquet", "aggregated")]["aggregate"]
            for e in engines
            if (e, shape, "parquet", "aggregated") in latest
        }
        ref = vals.get("tracelake")
        if ref:
            for e, v in vals.items():
                agg_checks.append(
                    {
                        "shape": shape,
                        "engine": e,
                        "same_count_matched_sum": all(
                            v[x] == ref[x] for x in ("rows", "matched", "sum_event_count")
                        ),
                        "aggregate": v,
                    }
                )
    out = {
        "meta": meta,
        "table": table,
        "answer_checks": checks,
        "aggregate_checks": agg_checks,
        "measurements": list(latest.values()),
    }
    (RESULTS / "asof_join_family.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        "| shape | source | output | "
        + " | ".join(f"{e} s" for e in engines)
        + " | "
        + " | ".join(f"{e} / tracelake" for e in engines if e != "tracelake")
        + " |",
        "| --- | --- | --- | "
        + " | ".join("---:" for _ in engines)
        + " | "
        + " | ".join("---:" for e in engines if e != "tracelake")
        + " |",
    ]
    for t in table:
        lines.append(
            f"| {t['shape']} | {t['source']} | {t['output']} | "
            + " | ".join("—" if t.get(e) is None else f"{t[e]:.2f}" for e in engines)
            + " | "
            + " | ".join(
                "—" if t.get(f"{e}/tracelake") is None else f"{t[f'{e}/tracelake']:.2f}"
                for e in engines
                if e != "tracelake"
            )
            + " |"
        )
    # targets, per cell: tracelake at least as fast as Spark 4.3's operator, within 2x of DuckDB
    targets = []
    for t in table:
        if t.get("tracelake") is None:
            continue
        s43, duck = t.get("spark43"), t.get("duckdb")
        targets.append(
            {
                "shape": t["shape"],
                "source": t["source"],
                "output": t["output"],
                "vs_spark43": None if s43 is None else t["tracelake"] <= s43,
                "within_2x_duckdb": None if duck is None else t["tracelake"] <= 2 * duck,
            }
        )
    out["targets"] = targets
    (RESULTS / "asof_join_family.json").write_text(json.dumps(out, indent=2) + "\n")
    loads = [x for r in latest.values() for x in (r["load_before"][0], r["load_after"][0])]
    md = [
        "| shape | source | output | tracelake <= spark43 | tracelake <= 2 x duckdb |",
        "| --- | --- | --- | --- | --- |",
    ]
    yn = {True: "met", False: "**missed**", None: "—"}
    for t in targets:
        md.append(
            f"| {t['shape']} | {t['source']} | {t['output']} | {yn[t['vs_spark43']]} | {yn[t['within_2x_duckdb']]} |"
        )
    checks_md = [
        f"- {c['shape']}: tracelake vs {c['engine']}: {c['rows_ref']:,} vs {c['rows_other']:,} rows, "
        f"{c['rows_differing']} rows differ ({'same' if c['same'] else '**different**'}); "
        f"{c['matched_ref']:,} events matched a snapshot"
        for c in checks
    ]
    (work / "table.md").write_text(
        "\n".join(lines)
        + "\n\nTargets per cell:\n\n"
        + "\n".join(md)
        + "\n\nRow-by-row checks (from Parquet, untimed answers):\n\n"
        + "\n".join(checks_md)
        + f"\n\n1-minute load average over all measurements: {min(loads)} .. {max(loads)}\n"
    )
    print((work / "table.md").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["generate", "run", "report"])
    parser.add_argument("--engine", choices=["tracelake", "tempo", "duckdb", "spark43"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--driver-memory", default="3g")
    parser.add_argument("--duckdb-threads", type=int, default=2)
    parser.add_argument("--duckdb-memory", default="4GB")
    parser.add_argument("--files", type=int, default=4, help="Parquet files per events table")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/asof-family")
    args = parser.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"# {args.step} {args.engine or ''}: {platform.node()}, nproc {os.cpu_count()}, load {load()}, "
        f"python {sys.executable}",
        flush=True,
    )
    if args.step == "generate":
        generate(work, args.seed, args.files)
    elif args.step == "report":
        report(args, work)
    else:
        out = work / "measurements.jsonl"
        if args.engine == "duckdb":
            run_duckdb(args, work, out)
        elif args.engine:
            run_spark(args.engine, args, work, out)
        else:
            parser.error("run needs --engine")
    print(f"# done, load {load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
