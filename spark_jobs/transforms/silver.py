"""Bronze -> silver: one row per event, enriched with its location and parsed EPC.

Pure transforms. Nothing is dropped but re-delivered duplicates: fake or
cloned EPCs flow on with their validity flags, for the model to score.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

EPC_PARTS = ("epc_header", "epc_company", "epc_product", "epc_lot", "epc_manufacture_date_text", "epc_serial")

# Tie-break of duplicate event_ids: the earliest event, then the first file by
# name, then every other column, so that the surviving row never depends on
# the order Spark happens to read files in.
_DEDUP_ORDER = (
    "event_time",
    "_source_file",
    "epc_code",
    "location_id",
    "business_step",
    "event_type",
    "operator_id",
    "device_id",
    "product_name",
    "record_time",
)


def _first_per(df: DataFrame, keys: list[str], order: list[str]) -> DataFrame:
    window = Window.partitionBy(*keys).orderBy(*[F.col(c).asc_nulls_first() for c in order])
    return df.withColumn("_rank", F.row_number().over(window)).where(F.col("_rank") == 1).drop("_rank")


def deduplicate_events(bronze: DataFrame) -> DataFrame:
    """One row per ``event_id``, chosen deterministically (see ``_DEDUP_ORDER``)."""
    return _first_per(bronze, ["event_id"], list(_DEDUP_ORDER))


def enrich_with_locations(events: DataFrame, locations: DataFrame) -> DataFrame:
    """Add location_name, location_tier, latitude, longitude from reference/locations (unique ids)."""
    reference = locations.select(
        "location_id", "location_name", F.col("tier").alias("location_tier"), "latitude", "longitude"
    )
    return events.join(F.broadcast(reference), "location_id", "left")


def _manufacture_date(text: Column) -> Column:
    """``yyyyMMdd`` -> date; null when it is not a real calendar day (never raises, ANSI or not)."""
    # Only eight-digit text is cast: under ANSI (Spark 4's default) casting "0A" raises, and
    # Spark does not promise to skip the right side of an AND whose left side is false.
    digits = F.when(text.rlike(r"^[0-9]{8}$"), text)
    year, month, day = (
        digits.substr(1, 4).cast("int"),
        digits.substr(5, 2).cast("int"),
        digits.substr(7, 2).cast("int"),
    )
    in_range = digits.isNotNull() & (year >= 1) & month.between(1, 12) & day.between(1, 31)
    candidate = F.date_add(F.make_date(year, month, F.lit(1)), day - 1)
    # Day 31 of a 30-day month rolls into the next month: not a real day.
    return F.when(in_range, F.when(F.month(candidate) == month, candidate))


def parse_epc(events: DataFrame, products: DataFrame, epc_regex: str) -> DataFrame:
    """Split ``epc_code`` into its six parts and add the validity flags.

    Parts are filled whenever the code has six dot-separated parts, even if
    they are not digits; ``epc_format_valid`` says whether it matches the
    domain regex. ``epc_company_known``/``epc_product_known`` look the parts
    up in reference/products; ``epc_manufacture_date_valid`` is true when the
    date parses and is not after the scan's day.
    """
    parts = F.split(F.col("epc_code"), r"\.", -1)
    six = F.size(parts) == len(EPC_PARTS)
    companies = (
        products.select(F.col("company_code").alias("epc_company"))
        .distinct()
        .withColumn("_company_known", F.lit(True))
    )
    pairs = (
        products.select(
            F.col("company_code").alias("epc_company"), F.col("product_code").alias("epc_product")
        )
        .distinct()
        .withColumn("_product_known", F.lit(True))
    )
    parsed = events.select(
        "*", *[F.when(six, parts.getItem(i)).alias(name) for i, name in enumerate(EPC_PARTS)]
    )
    manufactured = _manufacture_date(F.col("epc_manufacture_date_text"))
    return (
        parsed.join(F.broadcast(companies), "epc_company", "left")
        .join(F.broadcast(pairs), ["epc_company", "epc_product"], "left")
        .withColumn("epc_manufacture_date", manufactured)
        .withColumn("epc_format_valid", F.coalesce(F.col("epc_code").rlike(epc_regex), F.lit(False)))
        .withColumn("epc_company_known", F.coalesce(F.col("_company_known"), F.lit(False)))
        .withColumn("epc_product_known", F.coalesce(F.col("_product_known"), F.lit(False)))
        .withColumn(
            "epc_manufacture_date_valid",
            F.coalesce(F.col("epc_manufacture_date") <= F.col("event_date"), F.lit(False)),
        )
        .drop("_company_known", "_product_known", "epc_manufacture_date_text")
    )


def silver_scan_events(
    bronze: DataFrame, locations: DataFrame, products: DataFrame, epc_regex: str, run_id: str
) -> DataFrame:
    """Bronze scan events -> silver: deduplicated, enriched, EPC parsed; ``_run_id`` of this run."""
    events = deduplicate_events(bronze).drop("_ingested_at", "_run_id")
    enriched = parse_epc(enrich_with_locations(events, locations), products, epc_regex)
    return enriched.withColumn("_run_id", F.lit(run_id))


def silver_labels(labels: DataFrame, run_id: str) -> DataFrame:
    """One row per (event_id, anomaly_type): the earliest confirmation; ``_run_id`` of this run."""
    first = _first_per(labels, ["event_id", "anomaly_type"], ["confirmed_at", "label_date", "epc_code"])
    return first.withColumn("_run_id", F.lit(run_id))
