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

With ``--from-lake PATH`` no Spark runs: the features/event_features Delta
table at PATH, written by the feature job before this change (padded ``seq``),
is read with delta-rs and the new layout is derived from the same rows
(``tracelake.model_io.compact_sequences``, the real ``seq_len`` steps). Memory
as above; disk: both layouts written by pyarrow.parquet as one file each with
the compression of the source's files (like for like), and the source's own
Delta file bytes for reference.

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
import pyarrow.parquet as pq
from deltalake import DeltaTable
from pyspark.sql import functions as F

from spark_jobs import build_features, generate, ingest
from tracelake.config import GeneratorSettings, load_settings
from tracelake.model_io import SEQ_COLUMN, SEQ_LEN_COLUMN, FeatureSpec, compact_sequences, model_inputs
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


def _arrow_figures(arrow: pa.Table) -> dict[str, Any]:
    rows = arrow.num_rows
    return {
        "rows": rows,
        "arrow_bytes": arrow.nbytes,
        "arrow_seq_bytes": arrow.column(SEQ_COLUMN).nbytes,
        "arrow_bytes_per_event": round(arrow.nbytes / rows, 1),
        "arrow_seq_bytes_per_event": round(arrow.column(SEQ_COLUMN).nbytes / rows, 1),
    }


def same_model_inputs(new_table: pa.Table, old_table: pa.Table, spec: FeatureSpec) -> bool:
    """Model inputs of the compact rows and of the padded ones (read as a fixed-size list) are identical."""
    width = spec.seq_len * spec.n_seq
    padded = pa.FixedSizeListArray.from_arrays(old_table.column(SEQ_COLUMN).combine_chunks().flatten(), width)
    old_table = old_table.set_column(old_table.schema.get_field_index(SEQ_COLUMN), SEQ_COLUMN, padded)
    for start in range(0, new_table.num_rows, 50_000):  # in slices: the padded inputs are large
        a = model_inputs(new_table.slice(start, 50_000), spec)
        b = model_inputs(old_table.slice(start, 50_000), spec)
        if not all(np.array_equal(a[k], b[k], equal_nan=True) for k in ("seq", "seq_len", "tab")):
            return False
    return True


def from_lake(path: Path, work: Path) -> dict[str, Any]:
    """Both layouts of the rows of an old-layout (padded) feature table, without Spark."""
    table = DeltaTable(str(path))
    old_table = table.to_pyarrow_table()
    actions = pa.table(table.get_add_actions(flatten=True))
    source_disk = int(pc.sum(actions.column("size_bytes")).as_py())
    first_file = path / str(actions.column("path")[0].as_py())
    codec = str(pq.ParquetFile(first_file).metadata.row_group(0).column(0).compression).lower()
    n_features = len(FeatureSpec.from_schema(1).seq_features)
    lengths = pc.list_value_length(old_table.column(SEQ_COLUMN)).to_numpy()
    width = int(lengths.max())
    if (lengths != width).any() or width % n_features:
        raise SystemExit(f"{path}: seq is not of one padded width (already compact?)")
    steps = width // n_features
    spec = FeatureSpec.from_schema(steps)
    seq_len = old_table.column(SEQ_LEN_COLUMN).to_numpy()
    values = old_table.column(SEQ_COLUMN).combine_chunks().flatten().to_numpy(zero_copy_only=False)
    compact = compact_sequences(values.reshape(-1, steps, n_features), seq_len)
    new_table = old_table.set_column(old_table.schema.get_field_index(SEQ_COLUMN), SEQ_COLUMN, compact)
    work.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Any] = {}
    for name, arrow in (("new", new_table), ("old", old_table)):
        file = work / f"{name}.parquet"
        pq.write_table(arrow, file, compression=codec)
        disk = file.stat().st_size
        figures[name] = {
            **_arrow_figures(arrow),
            "disk_bytes": disk,
            "disk_bytes_per_event": round(disk / arrow.num_rows, 1),
        }
    figures["old"]["source_delta_disk_bytes"] = source_disk
    figures["old"]["source_delta_disk_bytes_per_event"] = round(source_disk / old_table.num_rows, 1)
    return {
        "mode": "from-lake",
        "source": str(path),
        "source_version": table.version(),
        "source_files": actions.num_rows,
        "days": len(pc.unique(old_table.column("event_date"))),
        "sequence_length": steps,
        "sequence_features": n_features,
        "mean_seq_len": round(float(seq_len.mean()), 2),
        "compression": codec,
        **figures,
        "model_inputs_identical": same_model_inputs(new_table, old_table, spec),
    }


def report(r: dict[str, Any]) -> str:
    """The results as markdown."""
    machine = r["machine"]
    rows = [
        ("memory (Arrow nbytes), whole row", "arrow_bytes_per_event", "arrow_bytes"),
        ("memory (Arrow nbytes), `seq` only", "arrow_seq_bytes_per_event", "arrow_seq_bytes"),
        (
            "disk (Parquet, one pyarrow file each)"
            if r["mode"] == "from-lake"
            else "disk (current Delta version's files)",
            "disk_bytes_per_event",
            "disk_bytes",
        ),
    ]
    lines = [
        "# features/event_features: bytes per event, compact `seq` vs padded `seq`",
        "",
        f"Command: `.venv/bin/python {' '.join(r['command'].split()[1:])}`  ",
        f"Commit: `{r['commit']}`{' (with uncommitted changes)' if r['dirty'] else ''}; machine: "
        f"{machine['nproc']} cpus, {machine['memory_gib']} GiB memory, Python {machine['python']}; "
        f"load average {r['load_average_start']} at start, {r['load_average_end']} at end "
        "(sizes do not depend on load).",
        "",
    ]
    if r["mode"] == "from-lake":
        lines += [
            f"Rows: the feature table at `{r['source']}` (version {r['source_version']}, {r['source_files']} "
            f"files, {r['days']} days), written by the feature job before this change (padded `seq`): "
            f"{r['new']['rows']} events; `seq` of up to {r['sequence_length']} steps x "
            f"{r['sequence_features']} features, mean real length {r['mean_seq_len']} steps.",
            "New layout: the same rows with `seq` cut to its real steps (`model_io.compact_sequences`).",
            f"Disk: each layout written by pyarrow.parquet as one file, compression `{r['compression']}` "
            f"(that of the source); the source's own Delta files (Spark-written, padded) hold "
            f"{r['old']['source_delta_disk_bytes_per_event']:,.1f} bytes/event.",
            "",
        ]
    else:
        lines += [
            f"{r['epcs']} EPCs x {r['days']} days built with Spark `local[2]`: {r['new']['rows']} events; "
            f"`seq` of up to {r['sequence_length']} steps x {r['sequence_features']} features, mean real "
            f"length {r['mean_seq_len']} steps. Parquet compression `{r['compression']}` for both.",
            "",
            "Old layout: the same rows with `seq` right-padded to the full length by the expression the",
            "feature job used before, written by Spark with the same partitioning and compression.",
            "",
        ]
    lines += [
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
    parser.add_argument("--from-lake", help="an old-layout features/event_features Delta table: no Spark")
    args = parser.parse_args(argv)

    work = Path(args.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    if args.from_lake:
        load_start = os.getloadavg()
        return finish(load_start, Path(args.out), from_lake(Path(args.from_lake), work))
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
    width = feature_spec.seq_len * feature_spec.n_seq
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
    new_table = new_table.take(np.argsort(new_table.column("event_id").to_numpy(zero_copy_only=False)))
    old_table = old_table.take(np.argsort(old_table.column("event_id").to_numpy(zero_copy_only=False)))
    seq_len = new_table.column(SEQ_LEN_COLUMN).to_numpy()
    figures = {
        "mode": "build",
        "epcs": args.epcs,
        "days": args.days,
        "sequence_length": steps,
        "sequence_features": feature_spec.n_seq,
        "mean_seq_len": round(float(seq_len.mean()), 2),
        "compression": spark.conf.get("spark.sql.parquet.compression.codec"),
        "new": new,
        "old": before,
        "model_inputs_identical": same_model_inputs(new_table, old_table, feature_spec),
    }
    spark.stop()
    return finish(load_start, Path(args.out), figures)


def finish(load_start: tuple[float, float, float], out: Path, figures: dict[str, Any]) -> int:
    """The run's provenance added; writes the .json and .md and prints; 1 when the layouts' inputs differ."""
    new, before = figures["new"], figures["old"]
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
        **figures,
        "new_over_old": {
            key: round(new[key] / before[key], 3) for key in ("arrow_bytes", "arrow_seq_bytes", "disk_bytes")
        },
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(results))
    print(json.dumps(results, indent=2))
    if not results["model_inputs_identical"] or new["rows"] != before["rows"]:
        print("the layouts do not give the same model inputs", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
