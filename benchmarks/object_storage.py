"""The same day's ingest, features and scoring on a local lake and on an s3a:// lake, in one run.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/object_storage.py --epcs 20000 --rounds 2

Set-up (untimed): the loopback S3 server (`scripts/s3-server`, SeaweedFS) with fresh
credentials, one Spark session (`local[2]`) configured for it exactly as a job on an s3a://
lake configures itself (`tracelake.storage.hadoop_conf`), one generated landing day written
to the local lake and uploaded to the bucket, and one champion model (the scoring
benchmark's: the configured model size, untrained) in an MLflow store both lakes share.

Each round runs ingest -> features -> score for that day on both lakes (local first in odd
rounds, s3a first in even ones, so a change of load touches both alike); each step is the
project's own job (`execute` inside `job_run`: Delta commits, validation of gold included).
Reported per lake: the best wall seconds of each step, and for the s3a lake the S3
requests the server counted during the step (SeaweedFS's `request_total`, by type).

Results: benchmarks/results/object_storage.json and .md (command, commit, machine, load).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DAY = dt.date(2025, 7, 1)
BUCKET = "bench"
STEPS = ("ingest", "features", "score")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def s3_requests(metrics_url: str) -> Counter[str]:
    """SeaweedFS's S3 request counters by request type (all buckets, all status codes)."""
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    counts: Counter[str] = Counter()
    for match in re.finditer(r"^SeaweedFS_s3_request_total\{([^}]*)\}\s+([0-9.e+]+)$", text, re.MULTILINE):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        counts[labels.get("type", "?")] += int(float(match.group(2)))
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epcs", type=int, default=20_000, help="EPCs of the generated day")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/object_storage")
    parser.add_argument("--out", default=str(RESULTS / "object_storage.json"))
    args = parser.parse_args(argv)

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ["AWS_ACCESS_KEY_ID"] = "bench" + secrets.token_hex(4)
    os.environ["AWS_SECRET_ACCESS_KEY"] = secrets.token_hex(16)
    os.environ.setdefault("AWS_REGION", "us-east-1")
    port, metrics_port = _free_port(), _free_port()
    server = [sys.executable, str(ROOT / "scripts" / "s3-server")]
    endpoint = (
        subprocess.run(
            [
                *server,
                "start",
                "--port",
                str(port),
                "--dir",
                str(work / "s3"),
                "--metrics-port",
                str(metrics_port),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    try:
        return run(args, work, endpoint, f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        subprocess.run([*server, "stop", "--dir", str(work / "s3")], check=False)


def run(args: argparse.Namespace, work: Path, endpoint: str, metrics_url: str) -> int:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import boto3
    from scoring_throughput import build_model, register

    from batch_scoring import score
    from spark_jobs import build_features, generate, ingest
    from tracelake import storage
    from tracelake.config import load_settings
    from tracelake.runs import job_run
    from tracelake.spark import build_spark
    from tracelake.tables import read_table, table_spec

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
    common = {
        "spark.master": "local[2]",
        "spark.driver_memory": "4g",
        "spark.shuffle_partitions": 4,
        "storage.s3_endpoint": endpoint,
        "storage.s3_path_style": True,
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "generator.epcs": args.epcs,
        "generator.days": 1,
        "generator.start_date": DAY.isoformat(),
        "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
    }
    lakes = {"local": str(work / "lake"), "s3a": f"s3a://{BUCKET}/lake"}
    settings = {
        name: load_settings(overrides={**common, "lake_root": root}, environ={})
        for name, root in lakes.items()
    }
    spark = build_spark(settings["s3a"], "bench-object-storage")
    hadoop = spark._jsc.hadoopConfiguration()
    for key, value in storage.hadoop_conf(settings["s3a"].storage.object_store()).items():
        if key.startswith("spark.hadoop."):  # the session may predate these settings (a shared JVM)
            hadoop.set(key.removeprefix("spark.hadoop."), value)

    with job_run("generate", settings=settings["local"], spark=spark, start=DAY, end=DAY) as r:
        generated = generate.execute(r)
    storage.upload(work / "lake" / "landing", storage.join(lakes["s3a"], "landing"))

    jobs = {"ingest": ingest.execute, "features": build_features.execute, "score": score.execute}
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_start": _uptime(),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "events": generated["events"],
        "server": "SeaweedFS (scripts/s3-server), loopback",
        "runs": [],
    }
    model_registered = False
    for round_number in range(args.rounds):
        order = ["local", "s3a"] if round_number % 2 == 0 else ["s3a", "local"]
        for lake in order:
            for step in STEPS:
                if step == "score" and not model_registered:
                    features = read_table(spark, table_spec("features_event_features"), lakes["local"])
                    path, _ = build_model(spark, features, work, settings["local"])
                    register(settings["local"], path)
                    model_registered = True
                storage.use(settings[lake].storage.object_store())
                before = s3_requests(metrics_url)
                started = time.perf_counter()
                with job_run(step, settings=settings[lake], spark=spark, start=DAY, end=DAY) as r:
                    jobs[step](r)
                seconds = time.perf_counter() - started
                requests = s3_requests(metrics_url) - before
                record = {
                    "round": round_number,
                    "lake": lake,
                    "step": step,
                    "seconds": round(seconds, 2),
                    "s3_requests": sum(requests.values()),
                    "s3_requests_by_type": dict(requests),
                }
                results["runs"].append(record)
                print(json.dumps(record), flush=True)
    results["uptime_end"] = _uptime()
    best = {
        (r["lake"], r["step"]): min(
            x["seconds"] for x in results["runs"] if (x["lake"], x["step"]) == (r["lake"], r["step"])
        )
        for r in results["runs"]
    }
    results["best_seconds"] = {f"{lake}/{step}": s for (lake, step), s in best.items()}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{generated['events']} events of {DAY}; best of {args.rounds} rounds\n")
    print(
        "| step | local s | s3a s | s3a / local | S3 requests (s3a run) |\n| --- | ---: | ---: | ---: | ---: |"
    )
    for step in STEPS:
        local, remote = best[("local", step)], best[("s3a", step)]
        requests = max(r["s3_requests"] for r in results["runs"] if (r["lake"], r["step"]) == ("s3a", step))
        print(f"| {step} | {local:.1f} | {remote:.1f} | {remote / local:.2f} | {requests} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
