"""Table access from one place: name -> path, schema, partition column.

Specs are read from ``schemas/tables/<name>.yaml``; code never restates a
schema. Writes go through :func:`write_table`, which replaces exactly the
partitions (or owned rows) a run is responsible for in one atomic Delta commit
and records lineage in the commit's user metadata.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # pyspark is imported where it is used: the query engine reads specs without it
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import DataType, StructType

from tracelake import storage
from tracelake.config import PROJECT_ROOT
from tracelake.errors import TracelakeError

SCHEMAS_DIR = PROJECT_ROOT / "schemas"


class TableError(TracelakeError, RuntimeError):
    """A table is missing, malformed, or a frame does not match its schema."""


_SIMPLE_TYPE_NAMES = ("string", "int", "bigint", "double", "float", "boolean", "date", "timestamp")


@lru_cache(maxsize=1)
def _simple_types() -> dict[str, DataType]:
    from pyspark.sql import types as T

    return {
        "string": T.StringType(),
        "int": T.IntegerType(),
        "bigint": T.LongType(),
        "double": T.DoubleType(),
        "float": T.FloatType(),
        "boolean": T.BooleanType(),
        "date": T.DateType(),
        "timestamp": T.TimestampType(),
    }


def parse_type(text: str) -> DataType:
    """Spark type from the DDL spelling used in schemas/ (simple types and array<...>)."""
    from pyspark.sql.types import ArrayType

    name = text.strip().lower()
    if name in _SIMPLE_TYPE_NAMES:
        return _simple_types()[name]
    if name.startswith("array<") and name.endswith(">"):
        return ArrayType(parse_type(name[len("array<") : -1]), containsNull=True)
    raise TableError(
        f"unsupported column type {text!r} in schemas/; use one of {sorted(_SIMPLE_TYPE_NAMES)} or array<...>"
    )


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    nullable: bool = True
    description: str = ""
    # What the column is to its readers, e.g. "feature" for a model input
    # (features_event_features.yaml); empty for plain columns.
    role: str = ""


@dataclass(frozen=True)
class TableSpec:
    name: str
    path: str
    format: str
    columns: tuple[ColumnSpec, ...]
    partition_by: str | None = None
    owned_by_column: str | None = None
    expectations: str | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def schema(self) -> StructType:
        from pyspark.sql.types import StructField, StructType

        return StructType([StructField(c.name, parse_type(c.type), c.nullable) for c in self.columns])

    @property
    def ddl(self) -> str:
        return ", ".join(f"`{c.name}` {c.type}" for c in self.columns)

    @property
    def required_columns(self) -> list[str]:
        return [c.name for c in self.columns if not c.nullable]

    @property
    def date_column(self) -> str | None:
        """Column whose date range a run owns (owned_by_column, else the partition column)."""
        return self.owned_by_column or self.partition_by

    def location(self, lake_root: str | Path) -> str:
        """The table's folder under the lake root (a local path or an object-store URI)."""
        return storage.join(str(lake_root), self.path)

    @property
    def expectations_file(self) -> Path | None:
        return SCHEMAS_DIR / "expectations" / self.expectations if self.expectations else None


def _spec_from_yaml(data: dict[str, Any]) -> TableSpec:
    known = {
        "name",
        "path",
        "format",
        "columns",
        "columns_from",
        "partition_by",
        "owned_by_column",
        "expectations",
        "description",
    }
    # `columns_from: <table>` starts the column list with that table's columns.
    inherited = table_spec(data["columns_from"]).columns if data.get("columns_from") else ()
    return TableSpec(
        name=data["name"],
        path=data["path"],
        format=data.get("format", "delta"),
        columns=inherited + tuple(ColumnSpec(**c) for c in data.get("columns") or ()),
        partition_by=data.get("partition_by"),
        owned_by_column=data.get("owned_by_column"),
        expectations=data.get("expectations"),
        description=(data.get("description") or "").strip(),
        extra={k: v for k, v in data.items() if k not in known},
    )


@cache
def table_spec(name: str) -> TableSpec:
    """The spec of table ``name`` (file ``schemas/tables/<name>.yaml``)."""
    file = SCHEMAS_DIR / "tables" / f"{name}.yaml"
    if not file.is_file():
        known = sorted(p.stem for p in (SCHEMAS_DIR / "tables").glob("*.yaml"))
        raise TableError(f"unknown table {name!r}; known tables: {', '.join(known)}")
    return _spec_from_yaml(yaml.safe_load(file.read_text()))


# One canonical spelling per name: lower case, digits and '-' (no '_' or '.', which the query
# view name ``training_set_<name with '-' as '_'>`` could not tell apart; no trailing newline).
_PATH_PARAM = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")


def canonical_name(value: str) -> str:
    """The canonical spelling closest to ``value`` (for the error message)."""
    return re.sub(r"[^a-z0-9]+", "-", value.strip().lower()).strip("-")[:128] or "my-set"


def named_table_spec(table: str, /, **params: str) -> TableSpec:
    """The spec of a table family whose path has placeholders, e.g.
    ``named_table_spec("training_set", name="weekly")`` -> path ``training/sets/weekly``."""
    spec = table_spec(table)
    for key, value in params.items():
        if not isinstance(value, str) or not _PATH_PARAM.fullmatch(value):
            suggestion = canonical_name(value) if isinstance(value, str) else "my-set"
            raise TableError(
                f"table {table!r}: {key} {value!r} is not a canonical name; use lower-case letters, digits and "
                f"'-' (starting with a letter or digit, at most 128 characters), e.g. {suggestion!r}"
            )
    try:
        path = spec.path.format(**params)
    except KeyError as exc:
        raise TableError(
            f"table {table!r} has path {spec.path!r}; pass {exc.args[0]}=... to name it"
        ) from None
    return replace(spec, path=path)


def all_table_specs() -> list[TableSpec]:
    return [table_spec(p.stem) for p in sorted((SCHEMAS_DIR / "tables").glob("*.yaml"))]


@dataclass(frozen=True)
class Domain:
    """The domain's enumerations, as ``schemas/domain.yaml`` declares them."""

    epc_regex: str
    anomaly_types: tuple[str, ...]
    # anomaly type -> how far one confirmed label reaches: event, epc or swapped_pair
    label_scope: dict[str, str]
    # business step -> tier, in journey order
    business_steps: dict[str, int]
    event_types: tuple[str, ...]
    return_event_types: tuple[str, ...]
    # generator profiles (``generator.profiles``), read by tracelake.config
    generator: dict[str, Any]

    def value(self, key: str) -> Any:
        """One enumeration by its YAML key (the expectation suites' ``$domain`` references)."""
        if key not in {f.name for f in fields(self)}:
            raise KeyError(key)
        return getattr(self, key)

    @staticmethod
    def field_names() -> list[str]:
        return sorted(f.name for f in fields(Domain))


@cache
def domain() -> Domain:
    """Domain enumerations (anomaly types, business steps and tiers, event types, EPC regex)."""
    raw: dict[str, Any] = yaml.safe_load((SCHEMAS_DIR / "domain.yaml").read_text())
    return Domain(
        epc_regex=str(raw["epc_regex"]),
        anomaly_types=tuple(raw["anomaly_types"]),
        label_scope=dict(raw.get("label_scope") or {}),
        business_steps={str(k): int(v) for k, v in raw["business_steps"].items()},
        event_types=tuple(raw["event_types"]),
        return_event_types=tuple(raw.get("return_event_types") or ()),
        generator=dict(raw.get("generator") or {}),
    )


def conform(df: DataFrame, spec: TableSpec) -> DataFrame:
    """Select the spec's columns in order, cast to its types; fail on missing columns."""
    from pyspark.sql import functions as F

    missing = [c for c in spec.column_names if c not in df.columns]
    if missing:
        raise TableError(f"frame for table {spec.name!r} lacks column(s) {missing}; it has {df.columns}")
    return df.select(*[F.col(c.name).cast(c.type).alias(c.name) for c in spec.columns])


def table_exists(spark: SparkSession, spec: TableSpec, lake_root: str | Path) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, spec.location(lake_root))


def read_table(
    spark: SparkSession, spec: TableSpec, lake_root: str | Path, version: int | None = None
) -> DataFrame:
    """Read a Delta table (optionally at a version); a clear error when it is absent."""
    location = spec.location(lake_root)
    if not table_exists(spark, spec, lake_root):
        raise TableError(
            f"table {spec.name!r} does not exist at {location}; run the job that writes it first"
        )
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    return reader.load(location)


def read_range(
    spark: SparkSession, spec: TableSpec, lake_root: str | Path, start: dt.date, end: dt.date
) -> DataFrame:
    """Rows of the table whose date column lies in [start, end] (partition pruning)."""
    from pyspark.sql import functions as F

    column = spec.date_column
    if column is None:
        raise TableError(f"table {spec.name!r} has no date column to select a range on")
    return read_table(spark, spec, lake_root).where(
        F.col(column).between(F.lit(start.isoformat()).cast("date"), F.lit(end.isoformat()).cast("date"))
    )


def latest_version(spark: SparkSession, spec: TableSpec, lake_root: str | Path) -> int | None:
    """The table's current Delta version, or None when it does not exist yet."""
    from delta.tables import DeltaTable

    if not table_exists(spark, spec, lake_root):
        return None
    row = DeltaTable.forPath(spark, spec.location(lake_root)).history(1).select("version").first()
    return int(row["version"]) if row else None


def commit_metadata(
    spark: SparkSession, spec: TableSpec, lake_root: str | Path, version: int
) -> dict[str, Any]:
    """The ``userMetadata`` the writer recorded in the commit of ``version`` ({} when none)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    row = (
        DeltaTable.forPath(spark, spec.location(lake_root))
        .history()
        .where(F.col("version") == version)
        .select("userMetadata")
        .first()
    )
    return json.loads(row["userMetadata"]) if row and row["userMetadata"] else {}


def snapshot_files(spark: SparkSession, spec: TableSpec, lake_root: str | Path, version: int) -> list[str]:
    """The data files of the table's snapshot at ``version`` (URIs), as Delta lists them.

    Readers outside Spark (pyarrow) read exactly these files, so the version pin holds and files
    of other versions still on disk are never read. Deletion vectors would hide rows that a plain
    Parquet reader still sees: a table that has them enabled is refused.
    """
    location = spec.location(lake_root)
    detail = spark.sql(f"DESCRIBE DETAIL delta.`{location}`").first()
    properties = (detail["properties"] if detail else None) or {}
    if str(properties.get("delta.enableDeletionVectors", "false")).lower() == "true":
        raise TableError(
            f"table {spec.name!r} at {location} has deletion vectors enabled; its Parquet files "
            "cannot be read without Delta. Disable them (ALTER TABLE ... SET TBLPROPERTIES "
            "('delta.enableDeletionVectors' = false)) and rewrite the table"
        )
    return sorted(read_table(spark, spec, lake_root, version=version).inputFiles())


def rows_written(spark: SparkSession, spec: TableSpec, lake_root: str | Path) -> int:
    """Rows the table's latest commit wrote, as Delta records it (no scan of the data)."""
    from delta.tables import DeltaTable

    metrics = (
        DeltaTable.forPath(spark, spec.location(lake_root)).history(1).select("operationMetrics").first()
    )
    return int((metrics[0] or {}).get("numOutputRows", 0)) if metrics else 0


def write_table(
    df: DataFrame,
    spec: TableSpec,
    lake_root: str | Path,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    metadata: dict[str, Any] | None = None,
    dates: Sequence[dt.date] | None = None,
) -> int:
    """Write ``df`` to the table, replacing what the run owns, in one Delta commit.

    With ``start``/``end`` the run owns the rows whose date column lies in the
    range: they are replaced (``replaceWhere``), other dates stay untouched, and
    rows of ``df`` outside the range make the commit fail instead of leaking.
    Without a range the whole table is replaced. Delta commits atomically, so
    a killed write leaves the previous version readable. With ``dates`` the run
    owns exactly those days of the date column (e.g. the event days an EPCIS
    delivery touched). Returns the new version.
    """
    from delta.tables import DeltaTable

    location = spec.location(lake_root)
    writer = conform(df, spec).write.format("delta").mode("overwrite")
    if metadata:
        writer = writer.option("userMetadata", json.dumps(metadata, sort_keys=True, default=str))
    if spec.partition_by:
        writer = writer.partitionBy(spec.partition_by)
    if dates is not None:
        column = spec.date_column
        if column is None or not dates:
            raise TableError(
                f"table {spec.name!r}: a write of chosen dates needs a date column and at least one date"
            )
        listed = ", ".join(f"DATE'{d.isoformat()}'" for d in sorted(set(dates)))
        writer = writer.option("replaceWhere", f"`{column}` IN ({listed})")
    elif start is not None or end is not None:
        column = spec.date_column
        if column is None or start is None or end is None:
            raise TableError(f"table {spec.name!r}: a range write needs a date column and both dates")
        predicate = f"`{column}` >= DATE'{start.isoformat()}' AND `{column}` <= DATE'{end.isoformat()}'"
        writer = writer.option("replaceWhere", predicate)
    else:
        writer = writer.option("overwriteSchema", "true")
    spark = df.sparkSession
    retries, backoff = conflict_policy(spark)
    for attempt in range(retries + 1):
        try:
            writer.save(location)
            break
        except Exception as error:  # py4j / Delta's captured conflict exceptions
            if not is_write_conflict(error):
                raise
            if attempt == retries:
                raise WriteConflictError(
                    conflict_message(spark, spec, location, metadata, error, retries)
                ) from None
            # The write replaces what the run owns: redoing it is safe; wait so that the other writer finishes.
            time.sleep(backoff * 2**attempt * random.uniform(1.0, 1.5))
    row = DeltaTable.forPath(spark, location).history(1).select("version").first()
    assert row is not None, "a table just written has a history"
    return int(row["version"])


class WriteConflictError(TableError):
    """Another writer committed to the table while this run was writing, and retries did not help."""


# Session settings that job_run sets from ``tables.*`` (a session without them uses the defaults).
CONFLICT_RETRIES_CONF = "spark.tracelake.tables.conflictRetries"
CONFLICT_BACKOFF_CONF = "spark.tracelake.tables.conflictBackoffSeconds"
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentWriteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
    "DeltaConcurrentModificationException",
    "DELTA_CONCURRENT",
    "DELTA_METADATA_CHANGED",
    "DELTA_PROTOCOL_CHANGED",
)


def conflict_policy(spark: SparkSession) -> tuple[int, float]:
    """(retries, first backoff in seconds) for write conflicts, from the session (``tables.*`` settings)."""
    from tracelake.config import TablesSettings

    defaults = TablesSettings()
    retries = spark.conf.get(CONFLICT_RETRIES_CONF, str(defaults.conflict_retries))
    backoff = spark.conf.get(CONFLICT_BACKOFF_CONF, str(defaults.conflict_backoff_s))
    return int(retries or 0), float(backoff or 0)


def is_write_conflict(error: BaseException) -> bool:
    """True for Delta's optimistic-concurrency conflicts (another commit won the race)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    head = str(error)[:2000]
    return any(name in names or name in head for name in _CONFLICTS)


def _conflict_kind(error: BaseException) -> str:
    head = str(error)[:2000]
    return next(
        (name for name in _CONFLICTS if name in {c.__name__ for c in type(error).__mro__} or name in head),
        type(error).__name__,
    )


def conflict_message(
    spark: SparkSession,
    spec: TableSpec,
    location: str,
    metadata: dict[str, Any] | None,
    error: BaseException,
    retries: int,
) -> str:
    """One line: the table, the other writer's run (from its commit info) and what to do."""
    from delta.tables import DeltaTable

    own = (metadata or {}).get("run_id")
    other = "a writer without tracelake commit info"
    try:
        for row in (
            DeltaTable.forPath(spark, location)
            .history(10)
            .select("version", "timestamp", "operation", "userMetadata")
            .collect()
        ):
            info = json.loads(row["userMetadata"] or "{}")
            if info.get("run_id") != own:
                other = (
                    f"run {info.get('run_id') or 'unknown'} (job {info.get('job') or 'unknown'}, "
                    f"{row['operation']} at version {row['version']}, {row['timestamp']})"
                )
                break
    except Exception:
        pass
    return (
        f"table {spec.name} at {location}: another writer committed while this run was writing ({other}); "
        f"{_conflict_kind(error)} after {retries} retr{'y' if retries == 1 else 'ies'}. Rerun when that run "
        f"has finished (or raise tables.conflict_retries)"
    )
