"""The lake's files as Spark's JVM sees them: through Hadoop's FileSystem, so any URI Spark reads works.

Used where the driver must look at files before (or instead of) reading them
with Spark: listing landing partitions, a CSV file's header line, a Parquet
file's footer. Every call goes through the session's Hadoop configuration, so
``s3a://`` and ``file:`` lakes behave the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tracelake.errors import TracelakeError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


class HadoopReadError(TracelakeError, OSError):
    """A file exists but cannot be read as ``what`` (e.g. a ``.gz`` that is not gzip)."""

    def __init__(self, path: str, what: str, error: BaseException) -> None:
        self.path, self.what, self.cause = path, what, java_cause(error)
        super().__init__(f"{path} cannot be read as {what} ({self.cause})")


@dataclass(frozen=True)
class FileStatus:
    """One entry of a listing."""

    path: str  # as shown to people
    uri: str  # as Spark's _metadata.file_path spells it
    name: str
    parent_name: str
    is_dir: bool
    size: int


def java_cause(error: BaseException) -> str:
    """The innermost cause of a JVM error, as one line (e.g. ``java.util.zip.ZipException: Not in GZIP format``)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    causes = [line.removeprefix("Caused by: ") for line in lines if line.startswith("Caused by: ")]
    first = next((line for line in lines if not line.startswith("An error occurred while calling")), "")
    return (causes[-1] if causes else first or type(error).__name__)[:300]


def _jvm(spark: SparkSession) -> Any:
    return spark._jvm


def _hadoop_conf(spark: SparkSession) -> Any:
    return spark._jsc.hadoopConfiguration()


def _file_system(spark: SparkSession, path: str) -> tuple[Any, Any]:
    jpath = _jvm(spark).org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(_hadoop_conf(spark)), jpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, jpath = _file_system(spark, path)
    return bool(fs.exists(jpath))


def glob(spark: SparkSession, pattern: str) -> list[FileStatus]:
    """The files and folders matching a Hadoop glob (``{a,b}``, ``*``); [] when none (or no parent) exists."""
    fs, jpattern = _file_system(spark, pattern)
    found = []
    for status in fs.globStatus(jpattern) or []:
        jpath = status.getPath()
        found.append(
            FileStatus(
                path=str(jpath),
                uri=str(jpath.toUri()),
                name=str(jpath.getName()),
                parent_name=str(jpath.getParent().getName()),
                is_dir=bool(status.isDirectory()),
                size=int(status.getLen()),
            )
        )
    return found


def first_line(spark: SparkSession, path: str) -> str | None:
    """The first line of a text file (decompressed by its extension's codec), or None when it is empty."""
    jvm = _jvm(spark)
    fs, jpath = _file_system(spark, path)
    what = "gzip-compressed text" if path.endswith(".gz") else "text"
    try:
        stream = fs.open(jpath)
        codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(_hadoop_conf(spark)).getCodec(jpath)
        if codec is not None:
            stream = codec.createInputStream(stream)
        reader = jvm.java.io.BufferedReader(jvm.java.io.InputStreamReader(stream, "UTF-8"))
    except Exception as error:
        raise HadoopReadError(path, what, error) from None
    try:
        line = reader.readLine()
        return None if line is None else str(line)
    except Exception as error:
        raise HadoopReadError(path, what, error) from None
    finally:
        reader.close()


def parquet_schema(spark: SparkSession, path: str) -> tuple[tuple[str, str], ...]:
    """(column, Parquet type) of each column of a Parquet file's footer."""
    jvm = _jvm(spark)
    _, jpath = _file_system(spark, path)
    try:
        input_file = jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(jpath, _hadoop_conf(spark))
        reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(input_file)
    except Exception as error:
        raise HadoopReadError(path, "Parquet", error) from None
    try:
        fields = reader.getFooter().getFileMetaData().getSchema().getFields()
        return tuple((str(f.getName()), str(f.toString())) for f in fields)
    finally:
        reader.close()
