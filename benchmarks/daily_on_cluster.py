"""The daily DAG, unchanged, against a Spark standalone cluster (master + 2 workers on loopback).

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/daily_on_cluster.py [--epcs 200] [--day 2025-07-01]

1. a fresh lake in a temporary folder: landing files for one day (the generator,
   local Spark) and a champion model registered as the daily DAG's scoring expects
   (tests/dags/dag_champion.py: the real model and registry, untrained weights);
2. `tracelake cluster start` (tracelake/standalone.py): one master, two workers
   with one core each, from the installed pyspark (Delta JARs in its jars folder);
3. `airflow dags test tracelake_daily <day + 1>` with an embedded Airflow home
   (SQLite) and the connection `spark_default` = `spark://127.0.0.1:7077`:
   every Spark task is the DAG's own spark-submit, only the connection differs;
4. reads each task's state and duration from Airflow's database, and from the
   master's JSON the applications that ran and the executors each worker ran;
5. stops the cluster (always) and writes benchmarks/results/daily_on_cluster.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "dags"))
RESULTS = ROOT / "benchmarks" / "results"
VENV_BIN = Path(sys.executable).parent
PORT, WEBUI = 7077, 8080


def prepare_lake(lake: Path, work: Path, day: dt.date, epcs: int) -> dict:
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
            "generator.days": 1,
            "generator.start_date": day.isoformat(),
            "spark.conf": {"spark.ui.enabled": "false"},
        },
        environ={},
    )
    spark = build_spark(settings, "bench-prepare")
    try:
        with job_run("generate", settings=settings, spark=spark, start=day, end=day) as run:
            summary = generate.execute(run)
        version = register_champion(spark, settings, work, day - dt.timedelta(days=14))
    finally:
        spark.stop()
    return {"events": summary.get("events"), "champion_version": version}


def airflow_env(home: Path, lake: Path, master: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "TRACELAKE_", "PYSPARK_"))}
    host, port = master.removeprefix("spark://").split(":")
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps(
                {"conn_type": "spark", "host": f"spark://{host}", "port": int(port)}
            ),
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", os.defpath)]),
            "TRACELAKE_PYTHON": sys.executable,
            "TRACELAKE_LAKE_ROOT": str(lake),
            "TRACELAKE_DAG_RETRIES": "0",
            "TRACELAKE_DAG_DRIVER_MEMORY": "1g",
            "TRACELAKE_SPARK__SHUFFLE_PARTITIONS": "2",
            "TRACELAKE_SPARK__CONF": json.dumps({"spark.executor.memory": "1g", "spark.cores.max": "2"}),
        }
    )
    return env


def task_rows(home: Path) -> list[dict]:
    with sqlite3.connect(home / "airflow.db") as db:
        (run_id,) = db.execute(
            "SELECT run_id FROM dag_run WHERE dag_id = 'tracelake_daily' ORDER BY id DESC LIMIT 1"
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, state, duration FROM task_instance WHERE dag_id = 'tracelake_daily' AND run_id = ? "
            "ORDER BY start_date",
            (run_id,),
        ).fetchall()
    return [{"task": t, "state": s, "seconds": round(d, 1) if d is not None else None} for t, s, d in rows]


def master_info() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{WEBUI}/json/", timeout=5) as response:
        return json.load(response)


def executors_per_worker(state_dir: Path) -> dict[str, int]:
    """Executor folders each worker created (work-dir/<app-id>/<executor-id>): proof that the workers ran tasks."""
    return {
        w.name: sum(1 for app in w.glob("app-*") for _ in app.iterdir())
        for w in sorted(state_dir.glob("worker-*"))
        if w.is_dir()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epcs", type=int, default=200)
    parser.add_argument("--day", default="2025-07-01", help="the day the DAG run processes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    day = dt.date.fromisoformat(args.day)

    from tracelake import standalone

    work = Path(tempfile.mkdtemp(prefix="tracelake-daily-cluster-"))
    lake, home, state_dir = work / "lake", work / "airflow", work / "cluster"
    home.mkdir()
    load_before = os.getloadavg()
    t0 = time.monotonic()
    prepared = prepare_lake(lake, work, day, args.epcs)
    prepare_s = time.monotonic() - t0

    state = standalone.start(
        state_dir, workers=2, cores_per_worker=1, memory_per_worker="1g", port=PORT, webui_port=WEBUI
    )
    try:
        info = master_info()
        env = airflow_env(home, lake, state.master_url)
        migrate = subprocess.run(
            [str(VENV_BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True
        )
        if migrate.returncode:
            raise SystemExit(migrate.stdout[-3000:] + migrate.stderr[-3000:])
        logical = (day + dt.timedelta(days=1)).isoformat()
        t1 = time.monotonic()
        done = subprocess.run(
            [str(VENV_BIN / "airflow"), "dags", "test", "tracelake_daily", logical],
            env=env,
            capture_output=True,
            text=True,
            cwd=str(ROOT),
        )
        dag_s = time.monotonic() - t1
        (work / "dags_test.log").write_text(done.stdout + done.stderr)
        after = master_info()
        executors = executors_per_worker(state_dir)
    finally:
        standalone.stop(state_dir)

    tasks = task_rows(home)
    result = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": "flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/daily_on_cluster.py "
        f"--epcs {args.epcs} --day {args.day}",
        "master": state.master_url,
        "workers_alive": sum(1 for w in info.get("workers", []) if w.get("state") == "ALIVE"),
        "worker_cores": [w.get("cores") for w in info.get("workers", [])],
        "events": prepared["events"],
        "champion_version": prepared["champion_version"],
        "prepare_s": round(prepare_s, 1),
        "dags_test_s": round(dag_s, 1),
        "dags_test_rc": done.returncode,
        "dag_run_state": "success" if "state=success" in done.stdout else "failed",
        "tasks": tasks,
        "applications": [
            {
                "name": a.get("name"),
                "cores": a.get("cores"),
                "state": a.get("state"),
                "duration_s": round(a.get("duration", 0) / 1000, 1),
            }
            for a in after.get("completedapps", [])
        ],
        "executor_dirs_per_worker": executors,
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
        "log": str(work / "dags_test.log") if args.keep else None,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "daily_on_cluster.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# The daily DAG on a Spark standalone cluster",
        "",
        f"`{result['command']}` ({result['when']}; {result['cores']} cores shared with other work, "
        f"load average before {result['load_before']}, after {result['load_after']})",
        "",
        f"- cluster: {result['master']}, {result['workers_alive']} workers alive, cores {result['worker_cores']}; "
        "started and stopped by `tracelake.standalone` (the `tracelake cluster start|stop` code)",
        f"- lake: {result['events']} scan events of {args.epcs} EPCs on {args.day}, champion model version "
        f"{result['champion_version']} (prepared in {result['prepare_s']} s on local Spark)",
        f"- `airflow dags test tracelake_daily {logical}` with `spark_default` = `{state.master_url}`: "
        f"exit {result['dags_test_rc']}, run {result['dag_run_state']}, {result['dags_test_s']} s",
        f"- executor folders created per worker: {executors}",
        "",
        "| task | state | seconds |",
        "| --- | --- | --- |",
        *(f"| {t['task']} | {t['state']} | {t['seconds']} |" for t in tasks),
        "",
        "Applications the master ran (one per spark-submit):",
        "",
        "| application | cores | state | seconds |",
        "| --- | --- | --- | --- |",
        *(
            f"| {a['name']} | {a['cores']} | {a['state']} | {a['duration_s']} |"
            for a in result["applications"]
        ),
        "",
    ]
    (RESULTS / "daily_on_cluster.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0 if done.returncode == 0 and result["dag_run_state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
