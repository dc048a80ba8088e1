"""Experiment: could scoring reach 85% of 2 x one ORT process if the workers read the Parquet files themselves?

benchmarks/results/scoring_throughput_notes.md shows the Spark path is bound
by the JVM's read + Arrow conversion of ``seq`` (54k rows/s without a model,
below 2 x 64k). This measures the alternative on the same synthetic table and
model as benchmarks/scoring_throughput.py (its set-up functions are reused):

1. ``ort_single_with_read``: one process lists the Delta snapshot's files of
   the rows (delta-rs), reads them with pyarrow and scores them (the
   per-process limit);
2. ``spark_ort``: the production path (batch_scoring.score.scored_frame:
   Delta read in the JVM, mapInPandas, one ORT session per worker) into the
   ``noop`` sink;
3. ``spark_file_tasks``: Spark distributes the snapshot's file list (one task
   per file) and each Python worker reads its file with pyarrow and scores
   it with the same ``predict``; only keys and probabilities go back to the
   JVM, into the ``noop`` sink.

Rows: ``--rows`` per day over ``--days`` days. Best of ``--repeats``.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/scoring_file_tasks.py

Results: benchmarks/results/scoring_file_tasks.md (+ .json), with the command and ``uptime``.
This is a measurement, not the production path: it bypasses Spark's reader,
so it would need its own handling of deletion vectors and column mapping.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scoring_throughput import (
    RESULTS,
    START,
    build_model,
    feature_frame,
    register,
    timed_noop,
    uptime,
)


def file_tasks_frame(spark: Any, files: list[str], model: Any, batch_rows: int) -> Any:
    """One task per Parquet file: the worker reads it with pyarrow and scores it; keys + probabilities out."""
    import pandas as pd

    from batch_scoring.transforms import KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, predict

    read = [c for c in (*KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, *model.tab_features) if c != "event_date"]
    keys = [c for c in KEY_COLUMNS if c != "event_date"]
    names = [f"p_{label}" for label in model.label_names]

    def score(paths: Any) -> Any:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for frame in paths:
            for path in frame["path"]:
                day = dt.date.fromisoformat(path.split("event_date=")[1].split("/")[0])
                for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=read):
                    table = pa.Table.from_batches([batch])
                    p = predict({name: table[name] for name in table.column_names}, model)
                    out = table.select(keys).to_pandas()
                    out["event_date"] = day
                    for j, name in enumerate(names):
                        out[name] = p[:, j].astype("float64")
                    yield pd.DataFrame(out)

    source = spark.sparkContext.parallelize([(f,) for f in files], len(files)).toDF("path string")
    ddl = (
        "event_id string, epc_code string, event_time timestamp, location_id string, event_date date, "
        + ", ".join(f"`{n}` double" for n in names)
    )
    return source.mapInPandas(score, schema=ddl)


def ort_single_with_read(model: Any, files: list[str], batch_rows: int) -> dict[str, float]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_scoring.transforms import KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, predict

    read = [c for c in (*KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, *model.tab_features) if c != "event_date"]
    started, rows = time.perf_counter(), 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=read):
            table = pa.Table.from_batches([batch])
            predict({name: table[name] for name in table.column_names}, model)
            rows += batch.num_rows
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000, help="rows per day")
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--files-per-day", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lake", default="/tmp/tracelake-bench-file-tasks")
    parser.add_argument("--out", default=str(RESULTS / "scoring_file_tasks.json"))
    args = parser.parse_args(argv)

    from deltalake import DeltaTable
    from pyspark.sql import functions as F

    from batch_scoring import score
    from batch_scoring.model_loading import load_onnx_model
    from batch_scoring.transforms import session_for
    from tracelake.config import load_settings
    from tracelake.runs import job_run
    from tracelake.spark import build_spark
    from tracelake.tables import read_table, table_spec, write_table

    lake = Path(args.lake)
    shutil.rmtree(lake, ignore_errors=True)
    lake.mkdir(parents=True)
    settings = load_settings(
        overrides={
            "lake_root": str(lake),
            "spark.master": "local[2]",
            "spark.driver_memory": "3g",
            "spark.shuffle_partitions": 2,
            "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        },
        environ={},
    )
    spark = build_spark(settings, "bench-file-tasks")
    batch_rows = settings.scoring.arrow_batch_rows
    spark.conf.set(score.ARROW_BATCH_CONF, str(batch_rows))
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_start": uptime(),
        "cpus": os.cpu_count(),
        "scoring": settings.scoring.model_dump(),
    }
    spec = table_spec("features_event_features")
    end = START + dt.timedelta(days=args.days - 1)
    frame = feature_frame(spark, args.rows * args.days, args.days, seed=11)
    write_table(
        frame.repartition(args.files_per_day, "event_date", F.col("event_id")),
        spec,
        str(lake),
        start=START,
        end=end,
    )
    features = read_table(spark, spec, str(lake))
    files = DeltaTable(spec.location(str(lake))).file_uris()
    rows = args.rows * args.days
    results.update(rows=rows, files=len(files))
    folder = lake / "_model"
    folder.mkdir()
    path, _ = build_model(spark, features.where(F.col("event_date") == F.lit(START)), folder, settings)
    register(settings, path)

    with job_run("score", settings=settings, spark=spark, start=START, end=end) as run:
        loaded = load_onnx_model(run, settings.scoring.model_uri)
        session_for(loaded.model)
        results["ort_single_with_read"] = max(
            (ort_single_with_read(loaded.model, files, batch_rows) for _ in range(args.repeats)),
            key=lambda r: r["rows_per_s"],
        )
        print("ort single with read", json.dumps(results["ort_single_with_read"]), flush=True)
        cases = {
            "spark_ort": lambda: score.scored_frame(features, loaded, run.run_id, dt.datetime.now(dt.UTC)),
            "spark_file_tasks": lambda: file_tasks_frame(spark, files, loaded.model, batch_rows),
        }
        for frame_of in cases.values():  # warm-up: workers started, sessions built
            timed_noop(frame_of())
        for name, frame_of in cases.items():
            seconds = min(timed_noop(frame_of()) for _ in range(args.repeats))
            results[name] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
            print(name, json.dumps(results[name]), flush=True)
        # the file-task path scores the same rows as the production path
        got = file_tasks_frame(spark, files, loaded.model, batch_rows).select("event_id", "p_jump")
        want = score.scored_frame(features, loaded, run.run_id, dt.datetime.now(dt.UTC)).select(
            "event_id", F.col("p_jump").alias("want")
        )
        diff = (
            got.join(want, "event_id")
            .select(
                F.count("*").alias("n"), F.max(F.abs(F.col("p_jump") - F.col("want"))).alias("max_abs_diff")
            )
            .first()
        )
        results["same_rows"] = {"joined": diff["n"], "max_abs_diff": diff["max_abs_diff"]}
        loaded.release()
    limit = 2 * results["ort_single_with_read"]["rows_per_s"]
    for name in ("spark_ort", "spark_file_tasks"):
        results[name]["vs_2x_single_with_read"] = results[name]["rows_per_s"] / limit
    results["uptime_end"] = uptime()
    spark.stop()
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    Path(args.out).with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Scoring with the workers reading the Parquet files themselves (experiment)",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {r['cpus']} CPUs, shared; load before: `{r['uptime_start']}`; after: `{r['uptime_end']}`",
        "",
        f"{r['rows']} rows in {r['files']} Parquet files; best of the repeats; noop sink.",
        "",
        "| case | rows/s | vs 2 x one process reading the files |",
        "| --- | ---: | ---: |",
    ]
    lines.append(
        f"| one ORT process reading the files itself | {r['ort_single_with_read']['rows_per_s']:.0f} | |"
    )
    for name, label in (
        ("spark_ort", "Spark local[2] + ORT mapInPandas (production path)"),
        ("spark_file_tasks", "Spark local[2], one task per file, workers read with pyarrow"),
    ):
        lines.append(f"| {label} | {r[name]['rows_per_s']:.0f} | {r[name]['vs_2x_single_with_read']:.2f} |")
    lines += [
        "",
        f"Same rows, same scores: {r['same_rows']['joined']} rows joined on event_id, "
        f"max |p_jump difference| {r['same_rows']['max_abs_diff']}.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
