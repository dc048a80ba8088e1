"""`airflow backfill create` of the daily DAG, twice, against an embedded Airflow: it runs and is idempotent.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/airflow_backfill.py [--days 2] [--epcs 200]

1. a fresh lake in a temporary folder with landing files for ``--days`` days from
   2025-07-01 and a champion model (tests/dags/dag_champion.py);
2. `airflow standalone` (scheduler, DAG processor, API server, triggerer; LocalExecutor;
   SQLite) in an embedded AIRFLOW_HOME, connection spark_default = local[2];
3. `airflow backfill create --dag-id tracelake_daily --from-date D1 --to-date Dn`
   (a backfill run's logical date is the start of its data interval: the runs
   process days D1..Dn), waits until every run finished, fingerprints the tables;
4. the same command again with ``--reprocess-behavior completed`` (every day
   rerun), fingerprints again: the tables must be identical (row counts and a
   hash of every column except the run's own ids and timestamps, floats rounded
   to 9 decimals);
5. stops Airflow and writes benchmarks/results/airflow_backfill.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "dags"))
RESULTS = ROOT / "benchmarks" / "results"
VENV_BIN = Path(sys.executable).parent
START = dt.date(2025, 7, 1)
FLOAT_DIGITS = 9  # decimals kept of float columns in the content hash
TABLES = [
    "bronze_scan_events",
    "silver_scan_events",
    "features_event_features",
    "gold_scored_events",
    "monitoring_drift",
]


def prepare_lake(lake: Path, work: Path, days: int, epcs: int) -> dict:
    from dag_champion import register_champion

    from spark_jobs import generate
    from tracelake.config import load_settings
    from tracelake.runs import job_run
    from tracelake.spark import build_spark

    settings = load_settings(
        overrides={
            "lake_root": str(lake),
            "spark.master": "local[2]",
            "spark.driver_memory": "1g",
            "spark.shuffle_partitions": 2,
            "generator.epcs": epcs,
            "generator.days": days,
            "generator.start_date": START.isoformat(),
            "spark.conf": {"spark.ui.enabled": "false"},
        },
        environ={},
    )
    spark = build_spark(settings, "bench-prepare")
    try:
        end = START + dt.timedelta(days=days - 1)
        with job_run("generate", settings=settings, spark=spark, start=START, end=end) as run:
            summary = generate.execute(run)
        version = register_champion(spark, settings, work, START - dt.timedelta(days=14))
    finally:
        spark.stop()
    return {"events": summary.get("events"), "champion_version": version}


def fingerprints(lake: Path) -> dict[str, dict]:
    """Per table: rows per day, a hash of the content (run ids and timestamps of the run left out), Delta version."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from tracelake.config import load_settings
    from tracelake.spark import build_spark
    from tracelake.tables import table_spec

    settings = load_settings(
        overrides={
            "lake_root": str(lake),
            "spark.master": "local[2]",
            "spark.driver_memory": "1g",
            "spark.conf": {"spark.ui.enabled": "false"},
        },
        environ={},
    )
    spark = build_spark(settings, "bench-fingerprint")
    out = {}
    try:
        for name in TABLES:
            spec = table_spec(name)
            path = spec.location(str(lake))
            if not Path(path).exists():
                out[name] = None
                continue
            frame = spark.read.format("delta").load(path)
            stable = [c for c in frame.columns if not c.startswith("_") and not c.endswith("_at")]
            # Floating-point values rounded before hashing: a float sum after a shuffle adds its
            # inputs in arrival order, so a rerun may differ in the last bits without differing.
            values = [
                F.round(F.col(c), FLOAT_DIGITS) if dtype in ("double", "float") else F.col(c)
                for c, dtype in frame.dtypes
                if c in stable
            ]
            day = spec.partition_by
            grouped = frame.groupBy(day) if day else frame.groupBy()
            rows = grouped.agg(
                F.count(F.lit(1)).alias("rows"), F.sum(F.xxhash64(*values)).cast("string").alias("hash")
            ).collect()
            out[name] = {
                "days": {str(r[day]) if day else "all": [r["rows"], r["hash"]] for r in rows},
                "version": DeltaTable.forPath(spark, path).history(1).first().version,
                "left_out": sorted(set(frame.columns) - set(stable)),
            }
    finally:
        spark.stop()
    return out


def dag_runs(home: Path) -> list[tuple]:
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(
            "SELECT run_id, run_type, logical_date, state, backfill_id FROM dag_run "
            "WHERE dag_id = 'tracelake_daily' ORDER BY logical_date, id"
        ).fetchall()


def backfill_runs(home: Path, backfill_id: int) -> list[tuple]:
    """(logical date, run state, reason a date got no run) of each date of a backfill."""
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute(
            "SELECT b.logical_date, r.state, b.exception_reason FROM backfill_dag_run b "
            "LEFT JOIN dag_run r ON r.id = b.dag_run_id WHERE b.backfill_id = ? ORDER BY b.logical_date",
            (backfill_id,),
        ).fetchall()


def wait_for_backfill(home: Path, backfill_id: int, timeout_s: float) -> list[tuple]:
    """Wait until the scheduler marks the backfill completed (every run finished)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with sqlite3.connect(home / "airflow.db") as db:
            (completed,) = db.execute(
                "SELECT completed_at FROM backfill WHERE id = ?", (backfill_id,)
            ).fetchone()
        if completed:
            return backfill_runs(home, backfill_id)
        time.sleep(10)
    raise TimeoutError(
        f"backfill {backfill_id} not finished after {timeout_s:.0f}s: {backfill_runs(home, backfill_id)}"
    )


def task_states(home: Path, backfill_id: int) -> dict[str, dict[str, str]]:
    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute(
            "SELECT b.logical_date, t.task_id, t.state FROM backfill_dag_run b JOIN dag_run r ON r.id = b.dag_run_id "
            "JOIN task_instance t ON t.run_id = r.run_id AND t.dag_id = r.dag_id WHERE b.backfill_id = ?",
            (backfill_id,),
        ).fetchall()
    out: dict[str, dict[str, str]] = {}
    for logical, task, state in rows:
        out.setdefault(str(logical)[:10], {})[task] = state
    return out


def latest_backfill_id(home: Path) -> int:
    with sqlite3.connect(home / "airflow.db") as db:
        return db.execute("SELECT max(id) FROM backfill").fetchone()[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--epcs", type=int, default=200)
    parser.add_argument("--timeout-s", type=float, default=2400)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="tracelake-backfill-"))
    lake, home = work / "lake", work / "airflow"
    home.mkdir()
    log: list[str] = [f"load average at start: {[round(x, 2) for x in os.getloadavg()]}"]
    prepared = prepare_lake(lake, work, args.days, args.epcs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRACELAKE_", "PYSPARK_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__PARALLELISM": "2",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__API__PORT": "18080",
            "AIRFLOW__API__BASE_URL": "http://127.0.0.1:18080",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://127.0.0.1:18080/execution/",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
            "TRACELAKE_PYTHON": sys.executable,
            "TRACELAKE_LAKE_ROOT": str(lake),
            "TRACELAKE_DAG_RETRIES": "0",
            "TRACELAKE_DAG_DRIVER_MEMORY": "1g",
            "TRACELAKE_SPARK__SHUFFLE_PARTITIONS": "2",
            "TRACELAKE_SPARK__CONF": json.dumps({"spark.ui.enabled": "false"}),
        }
    )
    airflow = str(VENV_BIN / "airflow")

    def cli(*cmd: str) -> str:
        done = subprocess.run(
            [airflow, *cmd], env=env, capture_output=True, text=True, cwd=str(ROOT), timeout=600
        )
        shown = "\n".join(
            line for line in done.stdout.splitlines() if "[info" not in line and "[warning" not in line
        )
        log.append(f"$ airflow {' '.join(cmd)}\n{shown.strip()}\n(exit {done.returncode})")
        if done.returncode:
            raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
        return done.stdout

    cli("db", "migrate")
    cli("dags", "reserialize")
    # A backfill run's logical date is the start of its data interval: the days to process.
    first = START.isoformat()
    last = (START + dt.timedelta(days=args.days - 1)).isoformat()
    standalone = subprocess.Popen(
        [airflow, "standalone"],
        env=env,
        cwd=str(work),
        start_new_session=True,
        stdout=(work / "standalone.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    result: dict = {"prepared": prepared, "rounds": []}
    try:
        cli("dags", "unpause", "tracelake_daily")
        cli(
            "backfill",
            "create",
            "--dag-id",
            "tracelake_daily",
            "--from-date",
            first,
            "--to-date",
            last,
            "--dry-run",
        )
        for round_no, extra in enumerate([[], ["--reprocess-behavior", "completed"]], start=1):
            t0 = time.monotonic()
            cli(
                "backfill",
                "create",
                "--dag-id",
                "tracelake_daily",
                "--from-date",
                first,
                "--to-date",
                last,
                "--max-active-runs",
                "1",
                *extra,
            )
            backfill_id = latest_backfill_id(home)
            runs = wait_for_backfill(home, backfill_id, args.timeout_s)
            seconds = time.monotonic() - t0
            result["rounds"].append(
                {
                    "round": round_no,
                    "extra": extra,
                    "backfill_id": backfill_id,
                    "seconds": round(seconds, 1),
                    "runs": [(str(d)[:10], s, reason) for d, s, reason in runs],
                    "tasks": task_states(home, backfill_id),
                    "tables": fingerprints(lake),
                }
            )
            log.append(f"round {round_no}: backfill {backfill_id} finished in {seconds:.0f}s: {sorted(runs)}")
    finally:
        os.killpg(standalone.pid, signal.SIGTERM)
        try:
            standalone.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(standalone.pid, signal.SIGKILL)
    result["dag_runs"] = [tuple(map(str, r)) for r in dag_runs(home)]
    log.append(f"load average at end: {[round(x, 2) for x in os.getloadavg()]}")

    rounds = result["rounds"]
    identical = len(rounds) == 2 and all(
        (rounds[0]["tables"][t] or {}).get("days") == (rounds[1]["tables"][t] or {}).get("days")
        for t in TABLES
    )
    all_success = all(s == "success" for r in rounds for _, s, _ in r["runs"])
    result["identical_after_rerun"] = identical
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "airflow_backfill.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    lines = [
        "# `airflow backfill create` of tracelake_daily, run twice",
        "",
        f"`flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/airflow_backfill.py --days {args.days} "
        f"--epcs {args.epcs}` ({dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, "
        f"{os.cpu_count()} cores shared with other work). Embedded Airflow: `airflow standalone` "
        "(LocalExecutor, SQLite) in a temporary AIRFLOW_HOME; spark_default = local[2]; "
        f"lake: {prepared['events']} scan events of {args.epcs} EPCs over {args.days} days.",
        "",
        f"- every backfill run successful: **{all_success}**",
        f"- tables identical after the second backfill (rows per day and a content hash, run ids and "
        f"timestamps left out, floats rounded to {FLOAT_DIGITS} decimals): **{identical}**",
        "",
        "| round | options | seconds | runs (logical date, state) |",
        "| --- | --- | --- | --- |",
        *(
            f"| {r['round']} | `{' '.join(r['extra']) or '-'}` | {r['seconds']} | {r['runs']} |"
            for r in rounds
        ),
        "",
        "| table | round 1: rows per day, Delta version | round 2: rows per day, Delta version |",
        "| --- | --- | --- |",
        *(
            f"| {t} | {fmt(rounds[0]['tables'].get(t))} | {fmt(rounds[1]['tables'].get(t)) if len(rounds) > 1 else '-'} |"
            for t in TABLES
        ),
        "",
        "What was run and what it printed (Airflow's own log lines left out):",
        "",
        "```text",
        *log,
        "```",
        "",
    ]
    (RESULTS / "airflow_backfill.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if identical and all_success else 1


def fmt(table: dict | None) -> str:
    if not table:
        return "-"
    return (
        ", ".join(f"{day}: {rows}" for day, (rows, _) in sorted(table["days"].items()))
        + f" (v{table['version']})"
    )


if __name__ == "__main__":
    sys.exit(main())
