"""The one Spark session builder: Delta enabled, UTC, settings from config.

There is no global session: jobs call :func:`build_spark` at their edge and
pass the session down.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from tracelake import storage
from tracelake.config import PROJECT_ROOT, Settings
from tracelake.errors import TracelakeError

DELTA_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


class SparkSetupError(TracelakeError, RuntimeError):
    """Spark cannot be started as configured (e.g. the Delta JARs are missing)."""


def _pyspark_jars_dir() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent / "jars"


def spark_line() -> str:
    """``major.minor`` of the installed pyspark, e.g. ``4.2`` (the Spark line this environment runs)."""
    from importlib.metadata import version

    return ".".join(version("pyspark").split(".")[:2])


def jars_dir(settings: Settings) -> Path:
    """The configured Delta JAR folder, or this Spark line's folder that `make setup` fills."""
    return (
        Path(settings.spark.jars_dir)
        if settings.spark.jars_dir
        else PROJECT_ROOT / ".jars" / f"spark{spark_line()}"
    )


def delta_jars(settings: Settings) -> list[str]:
    """Delta JARs to put on the classpath, or [] when pyspark already ships them.

    `make setup` copies them into pyspark's own jars folder, so `spark-submit`,
    `pyspark` and standalone workers started from this install all have Delta;
    otherwise they are passed with ``spark.jars`` from the configured folder.
    """
    if any(_pyspark_jars_dir().glob("delta-spark_*.jar")):
        return []
    folder = jars_dir(settings)
    jars = sorted(str(p) for p in folder.glob("delta-*.jar"))
    if not jars:
        raise SparkSetupError(
            f"no Delta Lake JARs in {str(folder)!r} nor in pyspark's jars folder; "
            "run `make setup` (it fetches them from Maven Central) or set spark.jars_dir"
        )
    return jars


def check_s3a_jars() -> None:
    """Hadoop's S3A connector must be on the classpath for an s3a:// lake (`make setup` puts it there)."""
    if not any(_pyspark_jars_dir().glob("hadoop-aws-*.jar")):
        raise SparkSetupError(
            f"the lake is on S3 but Hadoop's S3A connector (hadoop-aws) is not in {str(_pyspark_jars_dir())!r}; "
            "run `make setup` (it fetches the JARs matching this Spark line from Maven Central)"
        )


def local_cores(master: str) -> int | None:
    """The task slots of a local master (``local``, ``local[4]``, ``local[*]``, ``local[4,2]``); None otherwise."""
    match = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master.strip())
    if match is None:
        return None
    slots = match.group(1)
    if slots is None:
        return 1
    if slots == "*":
        return os.cpu_count() or 1
    return max(int(slots), 1)


def spark_conf(settings: Settings, app_name: str) -> dict[str, str]:
    """Every setting the session is built with (useful to spark-submit too)."""
    conf: dict[str, str] = {
        "spark.app.name": f"{settings.spark.app_name_prefix}-{app_name}",
        "spark.master": settings.spark.master,
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.sql.shuffle.partitions": str(settings.spark.shuffle_partitions),
        "spark.driver.memory": settings.spark.driver_memory,
        "spark.ui.showConsoleProgress": "true",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Executors (local or on standalone workers of this install) run this
        # very interpreter, which has the project's packages.
        "spark.pyspark.python": sys.executable,
        # Lineage: Delta keeps userMetadata in each commit's info.
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
        **DELTA_CONF,
    }
    cores = local_cores(settings.spark.master)
    if cores is not None:
        # Delta rebuilds a table's state from its log in a job of snapshotPartitions tasks, 50 by
        # default (sized for clusters and large logs); every read, history and write of a table
        # runs one. In local mode one task per core took 20-34 % off validate, features and score
        # at 94k events (benchmarks/results/spark_settings_ab.md). spark.conf still overrides it.
        conf["spark.databricks.delta.snapshotPartitions"] = str(cores)
    jars = delta_jars(settings)
    if jars:
        conf["spark.jars"] = ",".join(jars)
    if storage.scheme(settings.lake_uri) in storage.S3_SCHEMES or settings.storage.s3_endpoint:
        check_s3a_jars()
        conf.update(storage.hadoop_conf(settings.storage.object_store()))
    conf.update(settings.spark.conf)
    return conf


def build_spark(settings: Settings, app_name: str) -> SparkSession:
    """Create (or join, under spark-submit) the session for one job."""
    # PySpark takes the executors' interpreter from this variable, not from
    # spark.pyspark.python, when the driver is a plain Python process.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_conf(settings, app_name).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
