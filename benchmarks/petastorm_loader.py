"""Data path: rows/s the petastorm loader delivers per training process, against rows/s a training step consumes.

The training split of a synthetic set shaped like the real one (14 sequence
features x 25 steps, 50 tabular features, 5 labels) is materialised by
petastorm's ``make_spark_converter`` exactly as the training job does it
(training/spark_data.py: ``model_columns`` + the configured row-group size),
then read by the loader the train function uses
(``training.data.PetastormSource.train_batches``: the converter's ``make_torch_dataloader``, rank
sharding by row group, shuffle buffer, [B, T, F] batches) for one epoch, as
rank 0 of a world of 1 and of 2 processes, with 1 and 2 reader workers. The
consumption side is ``train_fn`` itself on the same rows on this CPU (one
process, one epoch, in-memory source) and, for the GPU, the figures recorded
by benchmarks/gpu_train.py in results/training_gpu.jsonl.

    flock /tmp/tracelake-bench.lock .venv/bin/python benchmarks/petastorm_loader.py \
        --rows 100000 --out benchmarks/results/petastorm_loader.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = ("epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump")


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def bench_settings(lake: Path):
    """The project's defaults with this shared machine's limits: local[2], driver memory 3g."""
    from tracelake.config import Settings

    base = Settings(lake_root=str(lake))
    return base.model_copy(
        update={"spark": base.spark.model_copy(update={"master": "local[2]", "driver_memory": "3g"})}
    )


def loader_rate(
    urls: list[str], spec, *, world_size: int, workers: int, batch_size: int, shuffle_buffer_rows: int
) -> dict:
    from training.data import PetastormSource

    source = PetastormSource(
        {"train": urls},
        spec,
        rank=0,
        world_size=world_size,
        batch_size=batch_size,
        seed=7,
        workers=workers,
        shuffle_buffer_rows=shuffle_buffer_rows,
    )
    started = time.perf_counter()
    rows = steps = 0
    for batch in source.train_batches(epoch=0):
        rows += int(batch.labels.shape[0])
        steps += 1
    elapsed = time.perf_counter() - started
    source.close()
    return {
        "world_size": world_size,
        "reader_workers": workers,
        "batch_size": batch_size,
        "shuffle_buffer_rows": shuffle_buffer_rows,
        "rows": rows,
        "steps": steps,
        "seconds": round(elapsed, 2),
        "rows_per_s_per_process": round(rows / elapsed, 1),
    }


def cpu_step_rate(data: str, spec, *, batch_size: int, work: Path) -> dict:
    """train_fn (one process, one epoch) on the same rows: samples/s a training step consumes on this CPU."""
    from tracelake.config import TrainingSettings
    from training.train_fn import make_train_config

    settings = TrainingSettings(
        epochs=1,
        batch_size=batch_size,
        eval_batch_size=8192,
        hidden_size=64,
        seed=3,
        torch_threads=0,
        checkpoint_every_steps=100_000,
        log_every_steps=1000,
        early_stopping_patience=2,
    )
    config = work / "config.json"
    config.write_text(
        json.dumps(make_train_config(settings, spec, {"kind": "parquet", "path": data}, work / "run"))
    )
    result_file = work / "result.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "training.train_fn",
            "--config-json",
            str(config),
            "--result-json",
            str(result_file),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    result = json.loads(result_file.read_text())
    return {
        "samples_per_s_per_process": round(result["samples_per_s_per_process"], 1),
        "per_epoch_train_s": [round(s, 2) for s in result["timing"]["per_epoch_train_s"]],
        "threads": os.cpu_count(),
        "batch_size": batch_size,
    }


def gpu_step_rates() -> list[dict]:
    path = ROOT / "benchmarks" / "results" / "training_gpu.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [
        {k: r[k] for k in ("gpu_name", "nproc", "batch_size", "samples_per_s_per_process") if k in r}
        for r in rows
        if r.get("device") == "cuda"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic set (60%% train)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from pyspark.sql import functions as F

    from tracelake.spark import build_spark
    from training.data import SPLIT_COLUMN, synthetic_feature_spec, write_synthetic_dataset
    from training.spark_data import cache_url, spark_converters

    spec = synthetic_feature_spec(n_seq=14, n_tab=50, seq_len=25, label_names=LABELS)
    work = Path(tempfile.mkdtemp(prefix="petastorm_bench_"))
    settings = bench_settings(work / "lake")
    row_group_bytes = settings.training.petastorm_row_group_bytes
    data = write_synthetic_dataset(work / "data", spec, args.rows, seed=1, row_group_rows=65_536)
    load_before = _uptime()
    spark = build_spark(settings, "bench-petastorm-loader")
    records = []
    try:
        df = spark.read.parquet(data).where(F.col(SPLIT_COLUMN) == "train")
        started = time.perf_counter()
        with spark_converters(
            df,
            spec,
            cache_dir_url=cache_url(settings.lake_root, "bench"),
            splits=("train",),
            row_group_bytes=row_group_bytes,
        ) as converted:
            convert_s = time.perf_counter() - started
            urls = converted["train"].file_urls
            from urllib.parse import urlparse

            import pyarrow.parquet as pq

            groups = sum(pq.ParquetFile(urlparse(u).path).metadata.num_row_groups for u in urls)
            spark.stop()  # the loader runs in the training processes, without Spark
            spark = None
            for world_size in (1, 2):
                for workers in (1, 2):
                    for buffer in (0, 8192):
                        record = loader_rate(
                            urls,
                            spec,
                            world_size=world_size,
                            workers=workers,
                            batch_size=args.batch_size,
                            shuffle_buffer_rows=buffer,
                        )
                        print(json.dumps(record), flush=True)
                        records.append(record)
    finally:
        if spark is not None:
            spark.stop()
    cpu = cpu_step_rate(data, spec, batch_size=args.batch_size, work=work)
    summary = {
        "benchmark": "petastorm_loader",
        "rows": args.rows,
        "train_rows": converted["train"].rows,
        "converter_files": len(urls),
        "row_groups": groups,
        "row_group_bytes": row_group_bytes,
        "convert_s": round(convert_s, 1),
        "loader": records,
        "cpu_train_step": cpu,
        "gpu_train_step": gpu_step_rates(),
        "uptime_before": load_before,
        "uptime_after": _uptime(),
        "cores": os.cpu_count(),
    }
    print(json.dumps(summary, indent=1), flush=True)
    with open(args.out, "a") as handle:
        handle.write(json.dumps(summary) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
