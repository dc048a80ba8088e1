"""Tiny hand-made silver frames for the feature tests (imported by the test modules beside it)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pyspark.sql import DataFrame, SparkSession

from tracelake.tables import table_spec

# location_id -> (business_step, tier, latitude, longitude)
LOCATIONS = {
    "F1": ("Factory", 0, 37.50, 127.00),
    "W1": ("WMS", 1, 37.40, 127.10),
    "H1": ("LGS_HUB", 2, 36.50, 127.50),
    "H2": ("LGS_HUB", 2, 35.20, 129.00),
    "S1": ("W_STOCK", 3, 35.90, 128.60),
    "R1": ("R_STOCK", 4, 35.85, 128.55),
    "P1": ("POS", 5, 35.85, 128.56),
}
EPOCH_DAY = dt.date(2025, 7, 1)
DEVICE_OFFSET_S = {"H1": 90.0, "S1": -30.0}
# A designated air lane (both directions) and the serials issued for the one test product.
AIR_LANES = [("H1", "H2")]
SERIAL_RANGES = [("8804823", "0000001", "1", "500"), ("8804823", "0000001", "900", "999")]


def ts(day: int, hour: float = 0.0) -> dt.datetime:
    """Day ``day`` after 2025-07-01 (0 = July 1st) at ``hour`` (UTC, naive as Spark reads it in a UTC session)."""
    return dt.datetime.combine(EPOCH_DAY + dt.timedelta(days=day), dt.time()) + dt.timedelta(hours=hour)


def day(n: int) -> dt.date:
    return EPOCH_DAY + dt.timedelta(days=n)


def silver(spark: SparkSession, rows: Iterable[tuple]) -> DataFrame:
    """Silver scan events from (event_id, epc_code, event_time, location_id, event_type[, flags dict])."""
    spec = table_spec("silver_scan_events")
    out = []
    for row in rows:
        event_id, epc, time, location, event_type = row[:5]
        flags = row[5] if len(row) > 5 else {}
        step, tier, lat, lon = LOCATIONS[location]
        values = {
            "event_id": event_id,
            "epc_code": epc,
            "event_time": time,
            "event_date": time.date(),
            "location_id": location,
            "business_step": step,
            "event_type": event_type,
            "operator_id": "op",
            "device_id": f"dev-{location}",
            "product_name": "p",
            "location_name": location,
            "location_tier": tier,
            "latitude": lat,
            "longitude": lon,
            "epc_header": "001",
            "epc_company": "8804823",
            "epc_product": "0000001",
            "epc_lot": "000001",
            "epc_manufacture_date": flags.get("manufacture_date", dt.date(2025, 6, 1)),
            "epc_serial": flags.get("serial", "1"),
            "epc_format_valid": flags.get("format_valid", True),
            "epc_company_known": True,
            "epc_product_known": True,
            "epc_manufacture_date_valid": True,
            "_source_file": "test",
            "_run_id": "test",
            # The device's clock runs ahead of the system's by a per-location number of seconds.
            "record_time": time - dt.timedelta(seconds=DEVICE_OFFSET_S.get(location, 0.0)),
        }
        out.append(tuple(values[c] for c in spec.column_names))
    return spark.createDataFrame(out, spec.schema)


def labels(
    spark: SparkSession, rows: Iterable[tuple[str, str, dt.datetime]], epcs: dict[str, str] | None = None
) -> DataFrame:
    """Silver labels from (event_id, anomaly_type, confirmed_at); ``epcs`` maps event -> EPC (default "epc")."""
    spec = table_spec("silver_labels")
    return spark.createDataFrame(
        [(e, (epcs or {}).get(e, "epc"), t, c, c.date(), "test") for e, t, c in rows], spec.schema
    )


def locations(spark: SparkSession) -> DataFrame:
    spec = table_spec("reference_locations")
    return spark.createDataFrame(
        [(k, k, s, t, la, lo, None, None) for k, (s, t, la, lo) in LOCATIONS.items()], spec.schema
    )


def air_lanes(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(AIR_LANES, table_spec("reference_air_lanes").schema)


def serial_ranges(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(SERIAL_RANGES, table_spec("reference_serial_ranges").schema)


def empty(spark: SparkSession, table: str) -> DataFrame:
    """An empty frame with the table's schema (e.g. no snapshot rows to join)."""
    return spark.createDataFrame([], table_spec(table).schema)


def haversine_km(a: str, b: str) -> float:
    """Great-circle km between two test locations (the reference for the Spark formula)."""
    import math

    (_, _, lat1, lon1), (_, _, lat2, lon2) = LOCATIONS[a], LOCATIONS[b]
    p1, p2 = math.radians(lat1), math.radians(lat2)
    h = (
        math.sin((p2 - p1) / 2) ** 2
        + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * 6371.0088 * math.asin(math.sqrt(h))
