"""EPCIS 2.0 landing documents -> bronze/epcis_events (+ quarantine) -> scan rows for silver.

Spark transforms around :mod:`spark_jobs.transforms.epcis_events`:

1. :func:`parse_documents`: a frame of landing files (one per partition) ->
   one row per event, its JSON text and its document's ``@context``. Each
   file is streamed by one Python task (ijson), events leave in Arrow batches
   of ``events_per_batch``; no task, and never the driver, holds a document.
2. :func:`flatten_events`: spread over ``partitions`` tasks, each event is
   checked against GS1's schema and becomes one record per EPC, or one
   quarantine record with a reason.
3. :func:`bronze_rows`, :func:`quarantine_rows`, :func:`file_outcomes`: the
   bronze table's rows, the quarantine rows, per-file counts to reconcile.
4. :func:`scan_rows`: bronze EPCIS rows -> rows shaped like bronze/scan_events
   (location resolved by GLN/SGLN, event type by ``schemas/epcis_mapping.yaml``,
   retracted events dropped), plus the rows that cannot go to silver and why.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    BooleanType,
    DateType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
)

from spark_jobs.transforms import epcis_events as ev

SOURCE = "epcis"
# Reasons an EPC row of bronze does not reach silver (it stays in bronze).
UNMAPPED_EVENT = "unmapped_event"
UNKNOWN_LOCATION = "unknown_location"
NO_EPC = "no_epc"

PARSED_SCHEMA = StructType(
    [
        StructField("_source_file", StringType(), False),
        StructField("landing_date", DateType(), False),
        StructField("event_index", IntegerType(), True),
        StructField("payload", StringType(), True),
        StructField("context", StringType(), True),
        StructField("problem", StringType(), True),
        StructField("events_in_document", IntegerType(), True),
    ]
)

_RECORD_STRINGS = (
    "event_id",
    "event_type",
    "action",
    "biz_step",
    "disposition",
    "event_time_zone_offset",
    "read_point",
    "biz_location",
    "epc",
    "epc_role",
    "epc_scheme",
    "epc_form",
    "epc_company_prefix",
    "epc_item_reference",
    "epc_serial",
    "biz_transaction_list",
    "source_list",
    "destination_list",
    "quantity_list",
    "sensor_element_list",
    "extensions",
    "error_declaration",
)
FLAT_SCHEMA = StructType(
    [
        StructField("_source_file", StringType(), False),
        StructField("landing_date", DateType(), False),
        StructField("event_index", IntegerType(), True),
        StructField("events_in_document", IntegerType(), True),
        StructField("reason", StringType(), True),
        StructField("raw_payload", StringType(), True),
        StructField("event_id_is_hash", BooleanType(), True),
        StructField("event_time_us", LongType(), True),
        StructField("record_time_us", LongType(), True),
        *[StructField(name, StringType(), True) for name in _RECORD_STRINGS],
    ]
)


@dataclass(frozen=True)
class ParseOptions:
    """What the Python tasks need; shipped whole (the schema as text: executors need no file)."""

    schema_text: str
    events_per_batch: int
    raw_payload_max_chars: int
    dl_company_prefix_length: int


# ---------------------------------------------------------------------------
# 1. documents -> events


def _open(uri: str) -> Any:
    """A byte stream of any file system pyarrow knows (local, S3, GCS, HDFS); .gz is decompressed."""
    from pyarrow import fs

    if uri.startswith("file:/") and not uri.startswith("file:///"):
        uri = "file://" + uri[len("file:") :]
    filesystem, path = fs.FileSystem.from_uri(uri)
    return filesystem.open_input_stream(path, compression="detect")


def _objects(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """Nullable numbers and flags as Python objects (None for missing): pandas would make them floats, and
    its nullable extension types do not convert through Spark's Arrow path on every line."""
    for column in columns:
        values = frame[column].tolist()
        frame[column] = pd.Series(
            [None if v is None or pd.isna(v) else v for v in values], dtype=object, index=frame.index
        )
    return frame


def _parsed_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=PARSED_SCHEMA.fieldNames(), dtype=object)
    return _objects(frame, ("event_index", "events_in_document"))


def stream_document(
    uri: str, source_file: str, landing_date: dt.date, options: ParseOptions
) -> Iterator[pd.DataFrame]:
    """One file -> batches of event rows; a file that is not JSON -> one row with its head and the reason."""
    base: dict[str, Any] = {
        "_source_file": source_file,
        "landing_date": landing_date,
        "events_in_document": 0,
    }
    validate = ev.validators(options.schema_text)
    try:
        with _open(uri) as stream:
            envelope = ev.read_envelope(stream)
    except ev.DocumentError as exc:
        with _open(uri) as stream:
            head = ev.head_text(stream, options.raw_payload_max_chars)
        yield _parsed_frame(
            [{**base, "event_index": None, "payload": head, "context": None, "problem": str(exc)}]
        )
        return
    problem = ev.document_problem(envelope, validate.document)
    prefix = ev.event_list_prefix(envelope.document) or envelope.event_prefix
    if envelope.events == 0 or prefix is None:
        if problem:  # nothing to quarantine event by event: the document itself
            text = json.dumps(envelope.document, ensure_ascii=False)[: options.raw_payload_max_chars]
            yield _parsed_frame(
                [{**base, "event_index": None, "payload": text, "context": None, "problem": problem}]
            )
        return
    base["events_in_document"] = envelope.events
    context = envelope.document.get("@context") if isinstance(envelope.document, dict) else None
    context_json = json.dumps(context, ensure_ascii=False) if context is not None else None
    rows: list[dict[str, Any]] = []
    with _open(uri) as stream:
        for index, event in enumerate(ev.iter_events(stream, prefix)):
            rows.append(
                {
                    **base,
                    "event_index": index,
                    "payload": json.dumps(event, ensure_ascii=False),
                    "context": context_json,
                    "problem": problem,
                }
            )
            if len(rows) >= options.events_per_batch:
                yield _parsed_frame(rows)
                rows = []
    if rows:
        yield _parsed_frame(rows)


def parse_documents(files: DataFrame, options: ParseOptions) -> DataFrame:
    """``_uri, _source_file, landing_date`` per file (one file per partition) -> event rows (PARSED_SCHEMA)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for uri, source_file, landing_date in zip(
                batch["_uri"], batch["_source_file"], batch["landing_date"], strict=False
            ):
                yield from stream_document(uri, source_file, landing_date, options)

    return files.select("_uri", "_source_file", "landing_date").mapInPandas(run, PARSED_SCHEMA)


def file_frame(spark: SparkSession, files: list[tuple[str, str, dt.date]]) -> DataFrame:
    """The landing files as a frame with one file per partition (one streaming task each)."""
    schema = "_uri string, _source_file string, landing_date date"
    rdd = spark.sparkContext.parallelize(files, max(len(files), 1))
    return spark.createDataFrame(rdd, schema)


# ---------------------------------------------------------------------------
# 2. events -> records


def _micros(value: dt.datetime | None) -> int | None:
    if value is None:
        return None
    return int((value - dt.datetime(1970, 1, 1)).total_seconds() * 1_000_000)


def flatten_batch(batch: pd.DataFrame, options: ParseOptions) -> pd.DataFrame:
    """Event rows -> records (one per EPC) or quarantine rows (``reason`` set)."""
    validate = ev.validators(options.schema_text)
    out: list[dict[str, Any]] = []
    for row in batch.rename(columns={"_source_file": "source_file"}).itertuples(index=False):
        base = {
            "_source_file": row.source_file,
            "landing_date": row.landing_date,
            "event_index": None if pd.isna(row.event_index) else int(row.event_index),
            "events_in_document": int(row.events_in_document),
        }
        if row.problem is not None and not pd.isna(row.problem):
            prefix = "" if base["event_index"] is None else f"event {base['event_index']}: "
            code, _, detail = str(row.problem).partition(": ")
            out.append({**base, "reason": f"{code}: {prefix}{detail}", "raw_payload": row.payload})
            continue
        records, problem = ev.check_and_flatten(
            row.payload, row.context, validate.event, options.dl_company_prefix_length
        )
        if problem:
            code, _, detail = problem.partition(": ")
            out.append(
                {
                    **base,
                    "reason": f"{code}: event {base['event_index']}: {detail}",
                    "raw_payload": row.payload,
                }
            )
            continue
        for record in records:
            event_time, record_time = record.pop("event_time"), record.pop("record_time")
            out.append(
                {
                    **base,
                    **record,
                    "event_time_us": _micros(event_time),
                    "record_time_us": _micros(record_time),
                }
            )
    frame = pd.DataFrame(out, columns=FLAT_SCHEMA.fieldNames(), dtype=object)
    return _objects(
        frame, ("event_index", "events_in_document", "event_time_us", "record_time_us", "event_id_is_hash")
    )


def flatten_events(parsed: DataFrame, options: ParseOptions, partitions: int) -> DataFrame:
    """Spread the events over ``partitions`` tasks and check and flatten them (FLAT_SCHEMA)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield flatten_batch(batch, options)

    spread = parsed.repartition(partitions, "_source_file", "event_index")
    return spread.mapInPandas(run, FLAT_SCHEMA)


# ---------------------------------------------------------------------------
# 3. bronze, quarantine, counts


def _lineage(run_id: str, ingested_at: dt.datetime) -> list[Column]:
    return [F.lit(ingested_at).cast("timestamp").alias("_ingested_at"), F.lit(run_id).alias("_run_id")]


def bronze_rows(flat: DataFrame, run_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Accepted records in the columns of bronze_epcis_events."""
    event_time = F.timestamp_micros("event_time_us")
    return flat.where(F.col("reason").isNull()).select(
        "event_id",
        "event_id_is_hash",
        "event_type",
        "action",
        "biz_step",
        "disposition",
        event_time.alias("event_time"),
        "event_time_zone_offset",
        F.timestamp_micros("record_time_us").alias("record_time"),
        "read_point",
        "biz_location",
        "epc",
        "epc_role",
        "epc_scheme",
        "epc_form",
        "epc_company_prefix",
        "epc_item_reference",
        "epc_serial",
        "biz_transaction_list",
        "source_list",
        "destination_list",
        "quantity_list",
        "sensor_element_list",
        "extensions",
        "error_declaration",
        "event_index",
        F.to_date(event_time).alias("event_date"),
        "landing_date",
        "_source_file",
        *_lineage(run_id, ingested_at),
    )


def quarantine_rows(flat: DataFrame, run_id: str, ingested_at: dt.datetime) -> DataFrame:
    """Quarantined events (and whole files) in the columns of bronze_quarantine."""
    return flat.where(F.col("reason").isNotNull()).select(
        F.lit(SOURCE).alias("source"),
        "raw_payload",
        "reason",
        F.col("landing_date").alias("ingest_date"),
        "_source_file",
        *_lineage(run_id, ingested_at),
    )


def file_outcomes(flat: DataFrame) -> DataFrame:
    """Per file and outcome (reason code, null = accepted): events, rows, whole-file rows, the smallest reason."""
    code = F.when(F.col("reason").isNotNull(), F.split(F.col("reason"), ":").getItem(0))
    return flat.groupBy("_source_file", "landing_date", code.alias("reason_code")).agg(
        F.countDistinct("event_index").alias("events"),
        F.count(F.lit(1)).alias("rows"),
        F.count(F.when(F.col("event_index").isNull(), F.lit(1))).alias("whole_file"),
        F.min("reason").alias("example"),
        F.max("events_in_document").alias("events_in_document"),
    )


# ---------------------------------------------------------------------------
# 4. bronze -> scan rows for silver


def mapping_frame(spark: SparkSession) -> DataFrame:
    """The mapping table: (epcis_type, biz_step, business_step) -> event_type; first row of a key wins."""
    rows, seen = [], set()
    for row in ev.mapping()["event_types"]:
        key = (row["epcis_type"], row["biz_step"], row["business_step"])
        if key not in seen:
            seen.add(key)
            rows.append((*key, row["event_type"]))
    return spark.createDataFrame(
        rows, "_epcis_type string, _biz_step string, _map_step string, _mapped_type string"
    )


def project_event_id(event_id: Column) -> Column:
    """eventID -> the project's event id (the generator's URN wrapper removed); other ids as delivered."""
    prefix = ev.mapping()["project_identifiers"]["event_id_urn_prefix"]
    return F.when(event_id.startswith(prefix), F.expr(f"substring(event_id, {len(prefix) + 1})")).otherwise(
        event_id
    )


def project_epc_code() -> Column:
    """The EPC of a row as silver's epc_code: the project code where the EPC carries one, else the EPC URI."""
    ids = ev.mapping()["project_identifiers"]
    digits, indicator = int(ids["product_digits"]), str(ids["sgtin_indicator"])
    serial = F.col("epc_serial")
    item = F.col("epc_item_reference")
    product = F.expr("substring(epc_item_reference, 2)")
    padded = F.when(F.length(product) < digits, F.lpad(product, digits, "0")).otherwise(product)
    convention = (
        (F.col("epc_scheme") == "sgtin")
        & serial.rlike(r"^[0-9]+\.[0-9]{8}\.[0-9]+$")
        & item.rlike(r"^[0-9]+$")
        & item.startswith(indicator)
        & F.col("epc_company_prefix").rlike(r"^[0-9]+$")
    )
    private = F.col("epc").startswith(ids["epc_urn_prefix"])
    return (
        F.when(
            convention,
            F.concat_ws(".", F.lit(ids["epc_header"]), F.col("epc_company_prefix"), padded, serial),
        )
        .when(private, F.expr(f"url_decode(substring(epc, {len(ids['epc_urn_prefix']) + 1}))"))
        .otherwise(F.col("epc"))
    )


def _extension(name: str) -> Column:
    ids = ev.mapping()["project_identifiers"]
    values = F.from_json(F.col("extensions"), "map<string,string>")
    return values.getItem(ids["namespace"] + ids["extensions"][name])


def retracted_ids(bronze: DataFrame) -> DataFrame:
    """Event ids an error declaration retracts (the declaration carries the retracted event's id)."""
    return bronze.where(F.col("error_declaration").isNotNull()).select("event_id").distinct()


def scan_rows(
    bronze: DataFrame, locations: DataFrame, mapping: DataFrame, run_id: str
) -> tuple[DataFrame, DataFrame]:
    """Bronze EPCIS rows -> (rows in the columns of bronze_scan_events, rows kept out of silver with ``reason``).

    An error declaration retracts every row of the event id it carries (the
    declaration itself included): neither counts in silver. Events naming
    several EPCs give one scan per EPC, ``<event id>#<epc>``.
    """
    live = bronze.join(F.broadcast(retracted_ids(bronze)), "event_id", "left_anti")
    places = locations.select(
        F.col("gln").alias("location_gln"), "location_id", F.col("business_step").alias("_step")
    ).where(F.col("gln").isNotNull())
    epcs_in_event = F.count(F.lit(1)).over(Window.partitionBy("_source_file", "event_index", "event_id"))
    rows = (
        live.withColumn("location_gln", _location_gln())
        .join(F.broadcast(places), "location_gln", "left")
        .join(
            F.broadcast(mapping),
            (F.col("event_type") == F.col("_epcis_type"))
            & (F.col("biz_step") == F.col("_biz_step"))
            & (F.col("_step") == F.col("_map_step")),
            "left",
        )
        .withColumn("_epcs", epcs_in_event)
    )
    reason = (
        F.when(
            F.col("epc").isNull(),
            F.concat(F.lit(f"{NO_EPC}: event "), F.col("event_id"), F.lit(" names quantities only")),
        )
        .when(
            F.col("location_id").isNull(),
            F.format_string(
                f"{UNKNOWN_LOCATION}: readPoint %s / bizLocation %s is no GLN or SGLN of reference/locations",
                F.coalesce(F.col("read_point"), F.lit("-")),
                F.coalesce(F.col("biz_location"), F.lit("-")),
            ),
        )
        .when(
            F.col("_mapped_type").isNull(),
            F.format_string(
                f"{UNMAPPED_EVENT}: %s bizStep=%s at a %s location has no row in schemas/epcis_mapping.yaml",
                F.col("event_type"),
                F.coalesce(F.col("biz_step"), F.lit("-")),
                F.col("_step"),
            ),
        )
    )
    event_id = project_event_id(F.col("event_id"))
    epc_code = project_epc_code()
    classified = rows.withColumn("reason", reason)
    scans = classified.where(F.col("reason").isNull()).select(
        F.when(F.col("_epcs") > 1, F.concat(event_id, F.lit("#"), F.col("epc")))
        .otherwise(event_id)
        .alias("event_id"),
        epc_code.alias("epc_code"),
        "event_time",
        "record_time",
        "location_id",
        F.col("_step").alias("business_step"),
        F.col("_mapped_type").alias("event_type"),
        _extension("operator_id").alias("operator_id"),
        _extension("device_id").alias("device_id"),
        _extension("product_name").alias("product_name"),
        "event_date",
        "_source_file",
        "_ingested_at",
        F.lit(run_id).alias("_run_id"),
    )
    kept_out = classified.where(F.col("reason").isNotNull()).select(
        F.lit(SOURCE).alias("source"),
        F.to_json(
            F.struct(
                "event_id",
                "event_type",
                "biz_step",
                "epc",
                "read_point",
                "biz_location",
                "event_time",
                "event_index",
            )
        ).alias("raw_payload"),
        "reason",
        F.col("landing_date").alias("ingest_date"),
        "_source_file",
        "landing_date",
    )
    return scans, kept_out


def _location_gln() -> Column:
    """The GLN of readPoint, else of bizLocation (SGLN URN or Digital Link), as in :func:`ev.location_gln`."""

    def gln(uri: Column) -> Column:
        sgln = F.regexp_extract(uri, r"^urn:epc:id:sgln:([0-9]+)\.([0-9]*)\.", 0)
        body = F.concat(
            F.regexp_extract(uri, r"^urn:epc:id:sgln:([0-9]+)\.([0-9]*)\.", 1),
            F.regexp_extract(uri, r"^urn:epc:id:sgln:([0-9]+)\.([0-9]*)\.", 2),
        )
        from_urn = F.when((sgln != "") & (F.length(body) == 12), F.concat(body, _check_digit(body)))
        from_link = F.regexp_extract(uri, r"/414/([0-9]{13})(/|$|\?)", 1)
        return F.coalesce(from_urn, F.when(from_link != "", from_link))

    return F.coalesce(gln(F.col("read_point")), gln(F.col("biz_location")))


def _check_digit(body: Column) -> Column:
    """GS1 mod-10 check digit of a 12-digit body (weights 1,3,1,3,... from the left)."""
    total = sum(body.substr(i + 1, 1).cast("int") * (1 if i % 2 == 0 else 3) for i in range(12))
    return ((F.lit(10) - total % 10) % 10).cast("string")
