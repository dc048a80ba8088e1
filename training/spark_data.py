"""Spark -> torch: a training set's splits materialised by petastorm's ``make_spark_converter``.

:func:`spark_converters` selects the model's columns of each split (train and
validation for training, test for evaluation and the ONNX parity check),
materialises each as parquet through ``make_spark_converter`` into a cache
folder under the lake (``<lake>/_petastorm_cache/<run id>``), and yields the
converters; the folder is deleted when the ``with`` block ends, also on error.
The files hold ``seq`` right-padded to ``seq_len * n_seq`` values
(:func:`padded_model_columns`): petastorm hands a batch of rows to torch as one
dense tensor, which variable-length (compact) lists cannot form.
The train function reads the files with :class:`training.data.PetastormSource`
(``{"kind": "petastorm", "urls": converter.file_urls}``), sharded by rank.

Every executor and training process must see the cache folder: a local path
is enough on one host (local mode, a loopback standalone cluster); on a real
cluster configure ``training.petastorm_cache_url`` (a shared file system URL).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from tracelake import storage
from tracelake.errors import TracelakeError
from tracelake.model_io import SEQ_COLUMN, SEQ_LEN_COLUMN, SPLIT_COLUMN, SPLITS, FeatureSpec
from training.data import Arrays, columns_to_arrays

CACHE_DIR = "_petastorm_cache"


class SparkDataError(TracelakeError, ValueError):
    """The training set cannot be handed to torch as it is."""


def model_columns(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """The model's columns in layout order: tabular features as float, seq, seq_len as int, labels as int."""
    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise SparkDataError(
            f"the training set lacks column(s) {missing}; rebuild it with `tracelake training-set`"
        )
    return df.select(
        *[F.col(name).cast("float").alias(name) for name in spec.tab_features],
        F.col(SEQ_COLUMN).cast("array<float>").alias(SEQ_COLUMN),
        F.col(SEQ_LEN_COLUMN).cast("int").alias(SEQ_LEN_COLUMN),
        *[F.col(name).cast("int").alias(name) for name in spec.label_names],
    )


def padded_model_columns(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """:func:`model_columns` with ``seq`` right-padded with 0 to ``spec.seq_len`` steps (fixed width)."""
    columns = model_columns(df, spec)
    width = spec.seq_len * spec.n_seq
    padding = F.array_repeat(F.lit(0.0).cast("float"), F.lit(width) - F.size(SEQ_COLUMN))
    return columns.withColumn(SEQ_COLUMN, F.concat(F.col(SEQ_COLUMN), padding))


def split_counts(df: DataFrame) -> dict[str, int]:
    """Rows per split (every split of tracelake.model_io.SPLITS present, 0 when absent)."""
    counts = {
        row[SPLIT_COLUMN]: int(row["n"])
        for row in df.groupBy(SPLIT_COLUMN).agg(F.count("*").alias("n")).collect()
    }
    return {split: counts.get(split, 0) for split in SPLITS}


@dataclass
class Converted:
    """One split as petastorm-materialised parquet files."""

    converter: Any
    rows: int

    @property
    def file_urls(self) -> list[str]:
        return list(self.converter.file_urls)


def cache_url(lake_root: str | Path, run_id: str, configured: str | None = None) -> str:
    """``file://`` URL of this run's cache folder (under the lake unless configured)."""
    if configured:
        return f"{configured.rstrip('/')}/{run_id}"
    folder = storage.join(str(lake_root), CACHE_DIR, run_id)
    return (
        storage.local_path(folder).resolve().as_uri()
        if storage.is_local(folder)
        else storage.spark_uri(folder)
    )


def _remove(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        shutil.rmtree(parsed.path, ignore_errors=True)
    else:
        storage.delete_tree(url)


@contextmanager
def spark_converters(
    df: DataFrame,
    spec: FeatureSpec,
    *,
    cache_dir_url: str,
    splits: Sequence[str] = SPLITS,
    row_group_bytes: int = 32 * 1024 * 1024,
) -> Iterator[dict[str, Converted]]:
    """Materialise ``splits`` of a training set with ``make_spark_converter``; delete them afterwards."""
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\.|$)")
    spark = df.sparkSession
    previous = spark.conf.get(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, None)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, cache_dir_url)
    converted: dict[str, Converted] = {}
    try:
        for split in splits:
            part = padded_model_columns(df.where(F.col(SPLIT_COLUMN) == split), spec)
            converter = make_spark_converter(part, parquet_row_group_size_bytes=row_group_bytes)
            if len(converter) == 0:
                raise SparkDataError(
                    f"split {split!r} of the training set has no rows; the training set needs "
                    f"rows in each of {list(splits)} (check the training_set split settings)"
                )
            converted[split] = Converted(converter, len(converter))
        yield converted
    finally:
        for item in converted.values():
            with suppress(Exception):
                item.converter.delete()
        _remove(cache_dir_url)
        if previous is None:
            spark.conf.unset(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF)
        else:
            spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, previous)


def petastorm_data_config(converted: Mapping[str, Converted]) -> dict[str, Any]:
    """The ``data`` entry of the train function's config for these converters."""
    return {
        "kind": "petastorm",
        "urls": {split: item.file_urls for split, item in converted.items()},
        "rows": {split: item.rows for split, item in converted.items()},
    }


def read_converted(item: Converted, spec: FeatureSpec, limit: int | None = None) -> Arrays:
    """A converted split as :class:`Arrays` (pyarrow, on the driver), at most ``limit`` rows."""
    paths = [urlparse(url).path if url.startswith("file:") else url for url in item.file_urls]
    table = pq.ParquetDataset(paths).read(columns=spec.columns) if paths else None
    if table is None:
        raise SparkDataError("the converted split has no files")
    if limit:
        table = table.slice(0, limit)
    # The files hold seq padded to a fixed width (padded_model_columns): read it as the padded layout.
    seq = table.column(SEQ_COLUMN).combine_chunks()
    width = spec.seq_len * spec.n_seq
    if seq.null_count or pc.any(pc.not_equal(pc.list_value_length(seq), width)).as_py():
        raise SparkDataError(
            f"the converted split's {SEQ_COLUMN!r} rows must all hold {width} values (padded)"
        )
    fixed = pa.FixedSizeListArray.from_arrays(seq.flatten(), width)
    return columns_to_arrays(
        table.set_column(table.schema.get_field_index(SEQ_COLUMN), SEQ_COLUMN, fixed), spec
    )
