"""Batch scoring throughput: Spark + ONNX Runtime against one ORT process and a PyTorch pandas UDF.

Set-up: a synthetic features_event_features table in the real layout (every
tabular feature, sequences of features.sequence_length steps, right-padded)
and a model of the configured size (config ``training``: LSTM, hidden 64),
exported to ONNX and registered as ``champion`` in a SQLite MLflow under the
benchmark's lake. Rows/s are rows scored per wall-clock second.

Cases (one Spark session, ``local[2]``, so JVM start-up is not counted):

1. ``ort_single``: one Python process, one ORT session (intra/inter-op threads
   from config ``scoring``, as each Spark worker has), batches of
   ``scoring.arrow_batch_rows`` fed through the very code the workers run
   (``batch_scoring.transforms.predict``: frame -> arrays -> session.run);
   the rows are in memory first (the read is not timed). ``ort_only`` is the
   same without the frame -> array conversion.
2. ``spark_ort``: the scoring stage inside Spark (Delta read, mapInArrow with
   one ORT session per Python worker, flags, lineage columns) into Spark's
   ``noop`` sink, at 1x, 2x and 4x the rows. The target is >= 85% of
   2 x ``ort_single`` (two cores).
3. ``spark_torch_udf``: the same stage with a per-batch PyTorch pandas UDF (the
   model rebuilt from broadcast weights for every Arrow batch, torch threads 1).
4. ``job``: ``batch_scoring.score.execute`` on the 1x rows (write to
   gold/scored_events + validation included).
5. a range of ``--range-days`` days in one job against one job per day
   (``score.execute`` each, write and validation included).

Run (serialized with the other benchmarks):
    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/scoring_throughput.py

Results: benchmarks/results/scoring_throughput.md (+ .json), with the command and `uptime`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
START = dt.date(2025, 7, 1)
MODEL_NAME = "tracelake-anomaly-lstm"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def feature_frame(spark: Any, rows: int, days: int, seed: int) -> Any:
    """``rows`` synthetic rows of features_event_features spread over ``days`` days from START."""
    from pyspark.sql import functions as F

    from spark_jobs.transforms.event_features import sequence_features
    from tracelake.tables import table_spec

    spec = table_spec("features_event_features")
    width = len(sequence_features())
    steps = 25
    base = spark.range(rows).select(
        F.col("id"),
        (F.col("id") % days).cast("int").alias("day_index"),
        (1 + F.abs(F.hash(F.col("id"), F.lit(seed))) % steps).cast("int").alias("seq_len"),
    )
    day = F.date_add(F.lit(START), F.col("day_index"))
    values = {
        "event_id": F.format_string("ev-%010d", F.col("id")),
        "epc_code": F.format_string("001.8804823.%07d.000001.20250701.%09d", F.col("id") % 97, F.col("id")),
        "event_date": day,
        "event_time": (F.unix_timestamp(day.cast("timestamp")) + F.abs(F.hash("id")) % 86_400).cast(
            "timestamp"
        ),
        "location_id": F.format_string("LOC%03d", F.col("id") % 101),
        "prev_location_id": F.format_string("LOC%03d", (F.col("id") + 1) % 101),
        "loc_snapshot_date": day,
        "route_snapshot_date": day,
        # time-major, the seq_len real steps only (compact); values a hash of (row, element)
        "seq": F.transform(
            F.sequence(F.lit(0), F.col("seq_len") * width - 1),
            lambda i: (F.abs(F.hash(F.col("id"), i, F.lit(seed))) % 2000 / 1000.0 - 1.0).cast("float"),
        ),
    }
    columns = []
    for k, column in enumerate(spec.columns):
        if column.name in values:
            columns.append(values[column.name].alias(column.name))
        elif column.name == "seq_len":
            columns.append(F.col("seq_len"))
        else:  # a tabular feature: ~N(0, 1), 10% null where nullable
            value = F.randn(seed + k)
            if column.nullable:
                value = F.when(F.rand(seed + 1000 + k) < 0.1, None).otherwise(value)
            columns.append(value.cast(column.type).alias(column.name))
    return base.select(*columns)


def build_model(spark: Any, features: Any, folder: Path, settings: Any) -> tuple[Path, Any]:
    """A model of the configured size, preprocessing fit on a sample, exported with the torchscript exporter."""
    import torch

    from spark_jobs.transforms.event_features import sequence_features, tabular_features
    from training.data import FeatureSpec, columns_to_arrays, default_label_names
    from training.model import ModelConfig, PreprocessingStats, SequenceAnomalyModel
    from training.onnx_export import export_onnx

    labels = default_label_names()
    spec = FeatureSpec(
        tuple(sequence_features()), tuple(tabular_features()), settings.features.sequence_length, labels
    )
    sample = features.limit(2048).toPandas()
    columns = {c: sample[c].to_numpy() for c in sample.columns}
    columns.update({label: np.zeros(len(sample), np.float32) for label in labels})
    arrays = columns_to_arrays(columns, spec)
    torch.manual_seed(0)
    model = SequenceAnomalyModel(ModelConfig.from_settings(spec, settings.training))
    stats = PreprocessingStats(spec)
    stats.update(arrays.to_batch())
    model.set_preprocessing(stats, pos_weight_cap=settings.training.pos_weight_cap)
    model.eval()
    path = folder / "model.onnx"
    export_onnx(
        model, path, arrays.take(slice(0, 256)), thresholds=dict.fromkeys(labels, 0.5), exporter="torchscript"
    )
    return path, model


def register(settings: Any, path: Path) -> str:
    import mlflow

    from tracelake.model_registry import CHAMPION, register_onnx_model
    from tracelake.tracking import configure_mlflow

    configure_mlflow(settings)
    with mlflow.start_run(run_name="scoring benchmark") as run:
        version = register_onnx_model(MODEL_NAME, path, run_id=run.info.run_id)
    mlflow.MlflowClient().set_registered_model_alias(MODEL_NAME, CHAMPION, version.version)
    return str(version.version)


def ort_single(loaded: Any, frame: Any, batch_rows: int) -> dict[str, float]:
    """One process, one session, the workers' code path, rows already in memory."""
    from batch_scoring.transforms import feeds, predict, session_for

    session = session_for(loaded.model)
    predict(frame.iloc[:batch_rows], loaded.model)  # warm-up
    started = time.perf_counter()
    for start in range(0, len(frame), batch_rows):
        predict(frame.iloc[start : start + batch_rows], loaded.model)
    with_conversion = time.perf_counter() - started
    batches = [feeds(frame.iloc[s : s + batch_rows], loaded.model) for s in range(0, len(frame), batch_rows)]
    started = time.perf_counter()
    for batch in batches:
        session.run(["probabilities"], batch)
    only = time.perf_counter() - started
    return {
        "rows": len(frame),
        "seconds": with_conversion,
        "rows_per_s": len(frame) / with_conversion,
        "ort_only_seconds": only,
        "ort_only_rows_per_s": len(frame) / only,
    }


def ort_single_with_read(loaded: Any, table_path: str, day: dt.date, batch_rows: int) -> dict[str, float]:
    """One process reading the day's Parquet files itself (delta-rs lists them, pyarrow reads), then ORT."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable

    from batch_scoring.transforms import KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, predict

    model = loaded.model
    columns = [
        c for c in (*KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, *model.tab_features) if c != "event_date"
    ]
    started = time.perf_counter()
    files = DeltaTable(table_path).file_uris(partition_filters=[("event_date", "=", day.isoformat())])
    rows = 0
    for file in files:
        for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            predict({name: table[name] for name in table.column_names}, model)
            rows += batch.num_rows
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def torch_udf_frame(features: Any, model: Any, spark: Any) -> Any:
    """Probabilities by a per-batch PyTorch pandas UDF: the model rebuilt from broadcast weights per batch."""
    import pandas as pd

    from batch_scoring.transforms import KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN

    spec = model.feature_spec
    config = model.config.to_dict()
    state = spark.sparkContext.broadcast({k: v.clone() for k, v in model.state_dict().items()})
    names = [f"p_{label}" for label in spec.label_names]

    def score(batches: Any) -> Any:
        import torch

        from training.data import FeatureSpec, columns_to_arrays
        from training.model import ModelConfig, ProbabilityModel, SequenceAnomalyModel

        torch.set_num_threads(1)
        for batch in batches:
            net = SequenceAnomalyModel(ModelConfig.from_dict(config))  # per batch: the naive UDF
            net.load_state_dict(state.value)
            wrapper = ProbabilityModel(net).eval()
            columns = {c: batch[c] for c in (SEQ_COLUMN, SEQ_LEN_COLUMN, *spec.tab_features)}
            columns.update({label: np.zeros(len(batch), np.float32) for label in spec.label_names})
            arrays = columns_to_arrays(columns, FeatureSpec.from_dict(config["feature_spec"]))
            with torch.no_grad():
                p = (
                    wrapper(
                        torch.from_numpy(arrays.seq),
                        torch.from_numpy(arrays.seq_len),
                        torch.from_numpy(arrays.tab),
                    )
                    .numpy()
                    .astype(np.float64)
                )
            out = batch[list(KEY_COLUMNS)].copy()
            for j, name in enumerate(names):
                out[name] = p[:, j]
            yield pd.DataFrame(out)

    source = features.select(*KEY_COLUMNS, SEQ_COLUMN, SEQ_LEN_COLUMN, *spec.tab_features)
    ddl = ", ".join(
        [f"`{f.name}` {f.dataType.simpleString()}" for f in source.schema if f.name in KEY_COLUMNS]
        + [f"`{n}` double" for n in names]
    )
    return source.mapInPandas(score, schema=ddl)


def convert_only_frame(features: Any, model: Any) -> Any:
    """The scoring stage without the model: Delta read, Arrow -> pandas -> model arrays, constant output."""
    from batch_scoring.transforms import KEY_COLUMNS, feeds

    def convert(batches: Any) -> Any:
        for batch in batches:
            feeds(batch, model)
            out = batch[list(KEY_COLUMNS)].copy()
            for label in model.label_names:
                out[f"p_{label}"] = 0.0
            yield out

    source = features.select(*KEY_COLUMNS, "seq", "seq_len", *model.tab_features)
    ddl = ", ".join(
        [f"`{f.name}` {f.dataType.simpleString()}" for f in source.schema if f.name in KEY_COLUMNS]
        + [f"`p_{label}` double" for label in model.label_names]
    )
    return source.mapInPandas(convert, schema=ddl)


def timed_noop(frame: Any) -> float:
    started = time.perf_counter()
    frame.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000, help="rows of the 1x case")
    parser.add_argument("--range-days", type=int, default=30)
    parser.add_argument("--range-rows-per-day", type=int, default=2_000)
    parser.add_argument("--lake", default="/tmp/tracelake-bench-scoring")
    parser.add_argument("--skip-range", action="store_true")
    parser.add_argument(
        "--repeats", type=int, default=1, help="time each throughput case this many times, keep the best"
    )
    parser.add_argument("--out", default=str(RESULTS / "scoring_throughput.json"), help="results JSON")
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    from batch_scoring import score
    from batch_scoring.model_loading import load_onnx_model
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
            "spark.shuffle_partitions": 4,
            "spark.conf": {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"},
        },
        environ={},
    )
    spark = build_spark(settings, "bench-scoring")
    spark.conf.set(score.ARROW_BATCH_CONF, str(settings.scoring.arrow_batch_rows))
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "uptime_start": uptime(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "settings": {
            "scoring": settings.scoring.model_dump(),
            "model": {
                k: getattr(settings.training, k)
                for k in ("cell", "hidden_size", "tab_hidden_size", "head_hidden_size")
            },
        },
    }
    spec = table_spec("features_event_features")
    sizes = {"1x": args.rows, "2x": 2 * args.rows, "4x": 4 * args.rows}
    # One table, three days: day 0 holds 1x rows, day 1 another 1x, day 2 2x; 1x = day 0,
    # 2x = days 0-1, 4x = days 0-2 (each case reads only its partitions).
    base = feature_frame(spark, 4 * args.rows, 1, seed=7)
    day_index = (
        F.when(F.col("event_id") < F.format_string("ev-%010d", F.lit(args.rows)), 0)
        .when(F.col("event_id") < F.format_string("ev-%010d", F.lit(2 * args.rows)), 1)
        .otherwise(2)
    )
    last = START + dt.timedelta(days=2)
    with_day = base.withColumn("event_date", F.date_add(F.lit(START), day_index))
    t0 = time.perf_counter()
    write_table(with_day, spec, str(lake), start=START, end=last)
    results["setup_write_s"] = round(time.perf_counter() - t0, 1)
    features = read_table(spark, spec, str(lake))
    frames = {
        "1x": features.where(F.col("event_date") == F.lit(START)),
        "2x": features.where(F.col("event_date") <= F.lit(START + dt.timedelta(days=1))),
        "4x": features,
    }

    folder = lake / "_model"
    folder.mkdir()
    path, torch_model = build_model(spark, frames["1x"], folder, settings)
    version = register(settings, path)
    results["model_version"] = version

    with job_run("score", settings=settings, spark=spark, start=START, end=START) as run:
        loaded = load_onnx_model(run, settings.scoring.model_uri)
        one_x = frames["1x"].toPandas()
        results["ort_single"] = max(
            (ort_single(loaded, one_x, settings.scoring.arrow_batch_rows) for _ in range(args.repeats)),
            key=lambda r: r["rows_per_s"],
        )
        del one_x
        results["ort_single_with_read"] = max(
            (
                ort_single_with_read(
                    loaded, spec.location(str(lake)), START, settings.scoring.arrow_batch_rows
                )
                for _ in range(args.repeats)
            ),
            key=lambda r: r["rows_per_s"],
        )
        print("ort single with read", json.dumps(results["ort_single_with_read"]), flush=True)
        print(json.dumps(results["ort_single"]), flush=True)
        # Warm-up (untimed): start the Python workers and build their ORT sessions, as any
        # long-running job has after its first batches.
        timed_noop(score.scored_frame(frames["1x"], loaded, run.run_id, dt.datetime.now(dt.UTC)))
        scaling = {}
        for name, frame in frames.items():
            seconds = min(
                timed_noop(score.scored_frame(frame, loaded, run.run_id, dt.datetime.now(dt.UTC)))
                for _ in range(args.repeats)
            )
            scaling[name] = {
                "rows": sizes[name],
                "seconds": seconds,
                "rows_per_s": sizes[name] / seconds,
                "tasks": frame.rdd.getNumPartitions(),
            }
            print(name, json.dumps(scaling[name]), flush=True)
        results["spark_ort"] = scaling
        # The same 2x with Spark's vectorized Parquet reader for nested columns (off by default in 3.5).
        nested = "spark.sql.parquet.enableNestedColumnVectorizedReader"
        spark.conf.set(nested, "true")
        for label, frame_of in (
            (
                "spark_ort_nested_reader_2x",
                lambda: score.scored_frame(frames["2x"], loaded, run.run_id, dt.datetime.now(dt.UTC)),
            ),
            ("spark_convert_only_nested_reader_1x", lambda: convert_only_frame(frames["1x"], loaded.model)),
        ):
            seconds = min(timed_noop(frame_of()) for _ in range(args.repeats))
            rows = sizes["2x"] if "2x" in label else sizes["1x"]
            results[label] = {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}
            print(label, json.dumps(results[label]), flush=True)
        spark.conf.unset(nested)
        seconds = min(
            timed_noop(torch_udf_frame(frames["1x"], torch_model, spark)) for _ in range(args.repeats)
        )
        results["spark_torch_udf"] = {
            "rows": sizes["1x"],
            "seconds": seconds,
            "rows_per_s": sizes["1x"] / seconds,
        }
        print("torch udf", json.dumps(results["spark_torch_udf"]), flush=True)
        seconds = min(timed_noop(convert_only_frame(frames["1x"], loaded.model)) for _ in range(args.repeats))
        results["spark_convert_only"] = {
            "rows": sizes["1x"],
            "seconds": seconds,
            "rows_per_s": sizes["1x"] / seconds,
        }
        print("convert only", json.dumps(results["spark_convert_only"]), flush=True)
        loaded.release()

    started = time.perf_counter()
    with job_run("score", settings=settings, spark=spark, start=START, end=START) as run:
        summary = score.execute(run)
    seconds = time.perf_counter() - started
    results["job"] = {
        "rows": summary["tables"]["gold_scored_events"]["rows"],
        "seconds": seconds,
        "rows_per_s": summary["tables"]["gold_scored_events"]["rows"] / seconds,
        "validation_passed": summary["validation"]["passed"],
    }
    print("job", json.dumps(results["job"]), flush=True)
    single = results["ort_single"]["rows_per_s"]
    results["spark_vs_2x_single"] = results["spark_ort"]["1x"]["rows_per_s"] / (2 * single)
    results["spark_2x_vs_2x_single"] = results["spark_ort"]["2x"]["rows_per_s"] / (2 * single)
    results["spark_2x_vs_2x_single_with_read"] = results["spark_ort"]["2x"]["rows_per_s"] / (
        2 * results["ort_single_with_read"]["rows_per_s"]
    )
    results["uptime_after_throughput"] = uptime()
    _write(results, args.out)

    if not args.skip_range:
        days = args.range_days
        end = START + dt.timedelta(days=days - 1)
        rows = days * args.range_rows_per_day
        write_table(feature_frame(spark, rows, days, seed=11), spec, str(lake), start=START, end=end)

        def one_job() -> float:
            started = time.perf_counter()
            with job_run("score", settings=settings, spark=spark, start=START, end=end) as run:
                score.execute(run)
            return time.perf_counter() - started

        # Every run replaces partitions that exist (as reruns and backfills do); the one-job case
        # runs before and after the single-day runs, so neither side alone pays a first-run cost.
        first = one_job()
        print("range one job", first, flush=True)
        started = time.perf_counter()
        for i in range(days):
            day = START + dt.timedelta(days=i)
            with job_run("score", settings=settings, spark=spark, start=day, end=day) as run:
                score.execute(run)
        per_day = time.perf_counter() - started
        print("range per day", per_day, flush=True)
        second = one_job()
        print("range one job again", second, flush=True)
        results["range"] = {
            "days": days,
            "rows": rows,
            "one_job_s": [first, second],
            "per_day_runs_s": per_day,
            "speedup_vs_mean_one_job": per_day / ((first + second) / 2),
        }
        results["uptime_end"] = uptime()
        _write(results, args.out)
    spark.stop()
    return 0


def _write(results: dict[str, Any], out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(results, indent=2, default=str))
    Path(out).with_suffix(".md").write_text(_markdown(results))


def _markdown(r: dict[str, Any]) -> str:
    """The results as a short table (the JSON beside it has every number)."""
    lines = [
        "# Batch scoring throughput",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Machine: {r['cpus']} CPUs, shared with other users' jobs; load before: `{r['uptime_start']}`",
        f"after the throughput cases: `{r.get('uptime_after_throughput', '-')}`"
        + (f"; at the end: `{r['uptime_end']}`" if "uptime_end" in r else ""),
        "",
        "| case | rows | seconds | rows/s |",
        "| --- | ---: | ---: | ---: |",
    ]
    single = r.get("ort_single", {})
    if single:
        lines.append(
            f"| ORT, one process (workers' code path) | {single['rows']} | {single['seconds']:.2f} | "
            f"{single['rows_per_s']:.0f} |"
        )
        lines.append(
            f"| ORT, one process, session.run only | {single['rows']} | {single['ort_only_seconds']:.2f} | "
            f"{single['ort_only_rows_per_s']:.0f} |"
        )
    if "ort_single_with_read" in r:
        c = r["ort_single_with_read"]
        lines.append(
            f"| ORT, one process, reading the Parquet files itself (pyarrow) | {c['rows']} | "
            f"{c['seconds']:.2f} | {c['rows_per_s']:.0f} |"
        )
    for name, case in r.get("spark_ort", {}).items():
        tasks = f", {case['tasks']} task(s)" if "tasks" in case else ""
        lines.append(
            f"| Spark local[2] + ORT mapInArrow, {name}{tasks} (noop sink) | {case['rows']} | "
            f"{case['seconds']:.2f} | {case['rows_per_s']:.0f} |"
        )
    if "spark_torch_udf" in r:
        c = r["spark_torch_udf"]
        lines.append(
            f"| Spark local[2] + per-batch PyTorch UDF, 1x (noop sink) | {c['rows']} | {c['seconds']:.2f} | "
            f"{c['rows_per_s']:.0f} |"
        )
    if "spark_convert_only" in r:
        c = r["spark_convert_only"]
        lines.append(
            f"| Spark local[2], same read and conversion, no model, 1x (noop sink) | {c['rows']} | "
            f"{c['seconds']:.2f} | {c['rows_per_s']:.0f} |"
        )
    for key, text in (
        ("spark_ort_nested_reader_2x", "Spark local[2] + ORT, 2x, nested vectorized Parquet reader on"),
        ("spark_convert_only_nested_reader_1x", "Spark, no model, 1x, nested vectorized Parquet reader on"),
    ):
        if key in r:
            c = r[key]
            lines.append(f"| {text} | {c['rows']} | {c['seconds']:.2f} | {c['rows_per_s']:.0f} |")
    if "job" in r:
        c = r["job"]
        lines.append(
            f"| score.execute 1x (Delta write + validation) | {c['rows']} | {c['seconds']:.2f} | "
            f"{c['rows_per_s']:.0f} |"
        )
    if "spark_vs_2x_single" in r:
        lines += ["", f"Spark 1x / (2 x one-process ORT) = {r['spark_vs_2x_single']:.2f} (target >= 0.85)."]
    if "spark_2x_vs_2x_single" in r:
        lines += [
            f"Spark 2x / (2 x one-process ORT) = {r['spark_2x_vs_2x_single']:.2f}; against one process that "
            f"reads the files itself: {r['spark_2x_vs_2x_single_with_read']:.2f}."
        ]
    if "range" in r:
        g = r["range"]
        lines += [
            "",
            f"Range of {g['days']} days ({g['rows']} rows), write + validation included: one job "
            f"{' s, '.join(f'{v:.1f}' for v in g['one_job_s'])} s (run before and after); "
            f"{g['days']} single-day runs {g['per_day_runs_s']:.1f} s; "
            f"single-day runs / one job = {g['speedup_vs_mean_one_job']:.1f}x.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
