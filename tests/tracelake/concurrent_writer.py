"""One of two processes writing the same Delta table at once (tests/tracelake/test_write_conflicts.py).

    python tests/tracelake/concurrent_writer.py LAKE ROLE SYNC_DIR RETRIES [RETRIES ...]

ROLE ``slow`` computes its rows for SLOW_SECONDS; ``fast`` starts FAST_DELAY seconds later and commits
first, so that the slow writer's commit conflicts. One round per RETRIES value; the two processes meet
before each round through files in SYNC_DIR (``-``: write alone, e.g. to be killed mid-write; a file
``writing`` in the current folder marks the start of the write). Prints one ``RESULT {json}`` line per round.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from pathlib import Path

SLOW_SECONDS = 8
FAST_DELAY = 3
DAY = dt.date(2025, 7, 1)


def meet(sync: Path, role: str, round_no: int, timeout: float = 900) -> None:
    (sync / f"{role}-{round_no}").touch()
    other = sync / f"{'fast' if role == 'slow' else 'slow'}-{round_no}"
    deadline = time.monotonic() + timeout
    while not other.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other writer never reached round {round_no}")
        time.sleep(0.1)


def main(lake: str, role: str, sync_dir: str, retries: list[int]) -> None:
    from pyspark.sql import functions as F

    from tracelake.config import load_settings
    from tracelake.spark import build_spark
    from tracelake.tables import (
        CONFLICT_BACKOFF_CONF,
        CONFLICT_RETRIES_CONF,
        TableError,
        table_spec,
        write_table,
    )

    settings = load_settings(
        overrides={
            "lake_root": lake,
            "spark.master": "local[1]",
            "spark.shuffle_partitions": 1,
            "spark.driver_memory": "1g",
            "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        },
        environ={},
    )
    spark = build_spark(settings, f"writer-{role}")
    spark.sparkContext.setLogLevel("OFF")
    spec = table_spec("monitoring_drift")
    t = dt.datetime(2025, 7, 1, 8)

    def slowly(value: str) -> str:
        time.sleep(SLOW_SECONDS)
        return value

    slow_udf = F.udf(slowly, "string")
    for round_no, attempts in enumerate(retries):
        spark.conf.set(CONFLICT_RETRIES_CONF, str(attempts))
        spark.conf.set(CONFLICT_BACKOFF_CONF, "1")
        run_id = f"{role}-round{round_no}"
        frame = spark.createDataFrame(
            [
                (
                    DAY,
                    f"{role}{round_no}",
                    "input",
                    0.01,
                    "ok",
                    0.25,
                    0.1,
                    3,
                    0.0,
                    10,
                    "s@v0",
                    "m",
                    "1",
                    t,
                    run_id,
                )
            ],
            spec.schema,
        )
        if role == "slow":
            frame = frame.withColumn("feature", slow_udf("feature"))
        if sync_dir != "-":
            meet(Path(sync_dir), role, round_no)
        else:
            Path("writing").touch()  # alone: tells the test (in its working folder) the write begins
        if role == "fast":
            time.sleep(FAST_DELAY)
        result: dict = {"round": round_no, "role": role, "run_id": run_id}
        try:
            result["version"] = write_table(
                frame, spec, lake, start=DAY, end=DAY, metadata={"run_id": run_id, "job": f"writer-{role}"}
            )
        except TableError as error:
            result["error"] = str(error)
        print("RESULT " + json.dumps(result), flush=True)
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], [int(v) for v in sys.argv[4:]])
