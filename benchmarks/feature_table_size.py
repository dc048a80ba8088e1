"""Bytes per event of features/event_features: the compact ``seq`` (real steps only) against the padded one.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/feature_table_size.py --epcs 2000 --days 5

Builds a lake in one Spark session (``local[2]``): generate -> ingest -> features
for ``--days`` days of ``--epcs`` EPCs (the project's own jobs). The feature
table as written is the new layout. The old layout is computed in the same run
from the same rows: ``seq`` right-padded with 0 to ``features.sequence_length``
steps by the expression the feature job used before (``concat(seq,
array_repeat(0, T * F - size(seq)))``), written by Spark as a Delta table with
the same partitioning and Parquet compression. Both are measured the same way:

- memory: ``nbytes`` of the table read with delta-rs (``DeltaTable.to_pyarrow_table``),
  as a whole and for the ``seq`` column alone;
- disk: the sum of the sizes of the current version's files (delta-rs add actions).

The model inputs of both layouts (``tracelake.model_io.model_inputs``; the old
one read as a padded ``fixed_size_list``) are checked to be identical.

Results: benchmarks/results/feature_table_size.json and .md (command, commit, machine, load).
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
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyspark.sql import functions as F

from spark_jobs import build_features, generate, ingest
from tracelake.config import GeneratorSettings, load_settings
from tracelake.model_io import SEQ_COLUMN, FeatureSpec, model_inputs
from tracelake.runs import job_run
from tracelake.spark import build_spark
from tracelake.tables import read_table, table_spec

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
START = dt.date(2025, 7, 1)
TABLE = "features_event_features"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()


def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def measure(path: Path) -> dict[str, Any]:
    """Rows, Arrow bytes (table, seq column) and the current version's file bytes of a Delta table."""
    table = DeltaTable(str(path))
    arrow = table.to_pyarrow_table()
    actions = pa.table(table.get_add_actions(flatten=True))
    disk = int(pc.sum(actions.column("size_bytes")).as_py())
    rows = arrow.num_rows
    return {
        "rows": rows,
        "files": actions.num_rows,
        "arrow_bytes": arrow.nbytes,
        "arrow_seq_bytes": arrow.column(SEQ_COLUMN).nbytes,
        "disk_bytes": disk,
        "arrow_bytes_per_event": round(arrow.nbytes / rows, 1),
        "arrow_seq_bytes_per_event": round(arrow.column(SEQ_COLUMN).nbytes / rows, 1),
        "disk_bytes_per_event": round(disk / rows, 1),
        "_table": arrow,
    }


def report(r: dict[str, Any]) -> str:
    """The results as markdown."""
    machine = r["machine"]
    rows = [
        ("memory (Arrow nbytes), whole row", "arrow_bytes_per_event", "arrow_bytes"),
        ("memory (Arrow nbytes), `seq` only", "arrow_seq_bytes_per_event", "arrow_seq_bytes"),
        ("disk (current Delta version's files)", "disk_bytes_per_event", "disk_bytes"),
    ]
    lines = [
        "# features/event_features: bytes per event, compact `seq` vs padded `seq`",
        "",
        f"Command: `flock /tmp/tracelake-bench.lock .venv/bin/python {' '.join(r['command'].split()[1:])}`  ",
        f"Commit: `{r['commit']}`{' (with uncommitted changes)' if r['dirty'] else ''}; machine: "
        f"{machine['nproc']} cpus, {machine['memory_gib']} GiB memory, Python {machine['python']}, "
        f"Spark `local[2]`; load average {r['load_average_start']} at start, {r['load_average_end']} at end.",
        "",
        f"{r['epcs']} EPCs x {r['days']} days: {r['new']['rows']} events; `seq` of up to "
        f"{r['sequence_length']} steps x {r['sequence_features']} features, mean real length "
        f"{r['mean_seq_len']} steps. Parquet compression `{r['compression']}` for both.",
        "",
        "Old layout: the same rows with `seq` right-padded to the full length by the expression the",
        "feature job used before, written by Spark with the same partitioning and compression.",
        "",
        "| measure | old (padded) bytes/event | new (compact) bytes/event | new / old |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, per_event, total in rows:
        lines.append(
            f"| {label} | {r['old'][per_event]:,.1f} | {r['new'][per_event]:,.1f} | "
            f"{r['new'][total] / r['old'][total]:.3f} |"
        )
    lines += [
        "",
        f"Model inputs (`tracelake.model_io.model_inputs`) of both layouts identical: "
        f"{r['model_inputs_identical']}.",
        "",
        "Raw figures: [feature_table_size.json](feature_table_size.json).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epcs", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work-dir", default="/tmp/tracelake-bench/feature_table_size")
    parser.add_argument("--out", default=str(RESULTS / "feature_table_size.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    lake = work / "lake"
    settings = load_settings(
        overrides=[
            "spark.master=local[2]",
            "spark.driver_memory=3g",
            "spark.shuffle_partitions=4",
            f"lake_root={lake}",
            *args.overrides,
        ]
    )
    settings.spark.conf.update({"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"})
    end = START + dt.timedelta(days=args.days - 1)
    load_start = os.getloadavg()
    spark = build_spark(settings, "bench-feature-table-size")
    options = {"start_date": START.isoformat(), "days": args.days, "epcs": args.epcs, "seed": args.seed}
    generator = settings.model_copy(update={"generator": GeneratorSettings.model_validate(options)})
    for name, job, run_settings in (
        ("generate", generate.execute, generator),
        ("ingest", ingest.execute, settings),
        ("features", build_features.execute, settings),
    ):
        with job_run(name, settings=run_settings, spark=spark, start=START, end=end) as run:
            job(run)

    spec = table_spec(TABLE)
    steps = settings.features.sequence_length
    feature_spec = FeatureSpec.from_schema(steps)
    width = steps * feature_spec.n_seq
    new_path = Path(spec.location(str(lake)))
    old_path = work / "old_layout" / "event_features"
    features = read_table(spark, spec, str(lake))
    padding = F.array_repeat(F.lit(0.0).cast("float"), F.lit(width) - F.size(SEQ_COLUMN))
    old = features.withColumn(SEQ_COLUMN, F.concat(F.col(SEQ_COLUMN), padding))
    (
        old.write.format("delta")
        .mode("overwrite")
        .partitionBy(spec.partition_by)
        .option("compression", spark.conf.get("spark.sql.parquet.compression.codec"))
        .save(str(old_path))
    )

    new, before = measure(new_path), measure(old_path)
    new_table, old_table = new.pop("_table"), before.pop("_table")
    # Same rows, same model inputs: the padded old column read as a fixed-size list (the padded layout).
    order_new = np.argsort(new_table.column("event_id").to_numpy(zero_copy_only=False))
    order_old = np.argsort(old_table.column("event_id").to_numpy(zero_copy_only=False))
    new_table, old_table = new_table.take(order_new), old_table.take(order_old)
    padded = pa.FixedSizeListArray.from_arrays(old_table.column(SEQ_COLUMN).combine_chunks().flatten(), width)
    old_table = old_table.set_column(old_table.schema.get_field_index(SEQ_COLUMN), SEQ_COLUMN, padded)
    feeds_new, feeds_old = model_inputs(new_table, feature_spec), model_inputs(old_table, feature_spec)
    identical = all(
        np.array_equal(feeds_new[k], feeds_old[k], equal_nan=True) for k in ("seq", "seq_len", "tab")
    )
    seq_len = new_table.column("seq_len").to_numpy()

    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": {
            "node": platform.node(),
            "nproc": os.cpu_count(),
            "memory_gib": round(_memory_gib(), 1),
            "python": platform.python_version(),
        },
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "epcs": args.epcs,
        "days": args.days,
        "sequence_length": steps,
        "sequence_features": feature_spec.n_seq,
        "mean_seq_len": round(float(seq_len.mean()), 2),
        "compression": spark.conf.get("spark.sql.parquet.compression.codec"),
        "new": new,
        "old": before,
        "new_over_old": {
            key: round(new[key] / before[key], 3) for key in ("arrow_bytes", "arrow_seq_bytes", "disk_bytes")
        },
        "model_inputs_identical": identical,
    }
    spark.stop()
    out = Path(args.out)
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(results))
    print(json.dumps(results, indent=2))
    if not identical or new["rows"] != before["rows"]:
        print("the layouts do not give the same model inputs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
