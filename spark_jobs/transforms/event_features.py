"""Per-event features: the EPC's recent sequence, its history, and snapshots as of the event.

The same functions build the training features and the scoring features;
there is no second implementation. Names and order of the model's inputs live
in ``schemas/tables/features_event_features.yaml`` only; read them with
:func:`tracelake.model_io.sequence_features` and
:func:`tracelake.model_io.tabular_features` (the model's input contract).

Point in time. Every value of an event E at time t uses only the EPC's events
at or before E -- ordered by ``(event_time, event_id)``, so ties on the time
are broken the same way on every run -- that lie within
``features.lookback_days`` before t (E's *history*), and snapshot rows whose
effective time is at or before t (within ``features.snapshot_ttl_hours``).

Why a history window rather than "everything so far": a job reads silver from
``start - lookback`` on, so anything older is invisible to some runs and not
to others. Bounding every value by E's own window makes the features of a day
independent of the range a run was given: a 30-day backfill and 30 single-day
runs write the same rows. Consequences, applied throughout:

- the *previous scan* of an event is the EPC's preceding event only when it
  lies in the event's history; a longer gap starts a new history;
- in E's sequence, a step whose own previous scan is older than E's history
  counts as having none (has_prev 0, zero gap/distance/speed/tier change);
- aggregates over consecutive pairs (max speed, backward moves, ...) use the
  pairs whose two scans both lie in E's history.

Order key. ``ord = unix_micros(event_time) * 1024 + rank among the EPC's
events at the same microsecond (by event_id)``: one bigint that orders events
exactly like ``(event_time, event_id)`` and lets ``RANGE`` window frames
express "within L before this event" as the constant offset ``L * 1024``.
(Over 1024 events of one EPC at one microsecond would share a key.)
"""

from __future__ import annotations

import datetime as dt
import math

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from tracelake.config import FeatureSettings
from tracelake.errors import TracelakeError
from tracelake.model_io import (
    FEATURES_TABLE,
    SEQ_COLUMN,
    SEQ_LEN_COLUMN,
    sequence_features,
    tabular_features,
)
from tracelake.pit import AsOfSpec, as_of_join_many
from tracelake.tables import domain

EARTH_RADIUS_KM = 6371.0088  # mean Earth radius (IUGG)
TIE_SLOTS = 1024  # events of one EPC at one microsecond that the order key tells apart
_MICROS = 1_000_000


class FeatureDefinitionError(TracelakeError, RuntimeError):
    """The feature table's schema names a feature that the code does not compute (or the reverse)."""


def history_span(settings: FeatureSettings) -> int:
    """The lookback as an offset of the order key."""
    return settings.lookback_days * 86_400 * _MICROS * TIE_SLOTS


# --- per-event steps ----------------------------------------------------------


def _haversine_km(lat1: Column, lon1: Column, lat2: Column, lon2: Column) -> Column:
    p1, p2 = F.radians(lat1), F.radians(lat2)
    dp, dl = p2 - p1, F.radians(lon2) - F.radians(lon1)
    a = F.pow(F.sin(dp / 2), 2) + F.cos(p1) * F.cos(p2) * F.pow(F.sin(dl / 2), 2)
    return F.lit(2 * EARTH_RADIUS_KM) * F.asin(F.least(F.lit(1.0), F.sqrt(a)))


def _index_of(column: str, values: list[str]) -> Column:
    """1 + position of the value in ``values``; 0 for null or unknown values."""
    positions = F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(i + 1))])
    return F.coalesce(positions[F.col(column)], F.lit(0)).cast("int")


def _serial_issued(silver: DataFrame, serial_ranges: DataFrame | None) -> DataFrame:
    """``serial_issued``: 1 when the EPC's serial lies in a range the product master issued for its
    company and product, 0 when the product has ranges and none holds it, null otherwise.

    The ranges are gathered into one array per product and broadcast, so each event meets its
    product's ranges in the stage that reads it: silver is not shuffled for this column.
    """
    if serial_ranges is None:
        return silver.withColumn("serial_issued", F.lit(None).cast("int"))
    number = "decimal(38,0)"
    per_product = serial_ranges.groupBy(
        F.col("company_prefix").alias("_r_company"), F.col("item_reference").alias("_r_product")
    ).agg(
        F.collect_list(
            F.struct(
                F.col("serial_from").cast(number).alias("low"), F.col("serial_to").cast(number).alias("high")
            )
        ).alias("_r_ranges")
    )
    serial = F.expr(f"try_cast(epc_serial AS {number})")
    issued = F.exists(
        F.col("_r_ranges"), lambda r: F.coalesce(serial.between(r["low"], r["high"]), F.lit(False))
    )
    return silver.join(
        F.broadcast(per_product),
        (F.col("epc_company") == F.col("_r_company")) & (F.col("epc_product") == F.col("_r_product")),
        "left",
    ).select(*silver.columns, issued.cast("int").alias("serial_issued"))


def _undirected(air_lanes: DataFrame) -> DataFrame:
    """(from, to) of every air lane in both directions."""
    lanes = air_lanes.select(
        F.col("origin_location_id").alias("_lane_from"), F.col("destination_location_id").alias("_lane_to")
    )
    swapped = lanes.select(F.col("_lane_to").alias("_lane_from"), F.col("_lane_from").alias("_lane_to"))
    return lanes.unionByName(swapped).distinct().withColumn("_on_lane", F.lit(True))


def _device_offset_s(silver: DataFrame) -> Column:
    """Mean ``event_time - record_time`` (s) of the device's scans in the 24 hours up to this one.

    A sliding RANGE frame would re-aggregate its whole buffer each time its start moves: quadratic
    in a busy device's scans per day (hundreds at 10M events a month). The frame's sum and count are
    differences of two running totals instead, each kept in one pass: everything up to this scan
    (peers included) minus everything older than 24 hours before it. The totals are exact integers
    (microseconds summed as decimals), so the difference is exact whatever the first row read.
    """
    if "record_time" not in silver.columns:
        return F.lit(None).cast("double")
    offset_us = (F.unix_micros("event_time") - F.unix_micros("record_time")).cast("decimal(38,0)")
    by_time = Window.partitionBy("device_id").orderBy(F.unix_micros("event_time"))
    upto = by_time.rangeBetween(Window.unboundedPreceding, Window.currentRow)
    older = by_time.rangeBetween(Window.unboundedPreceding, -(86_400 * _MICROS) - 1)
    total = F.sum(offset_us).over(upto) - F.coalesce(F.sum(offset_us).over(older), F.lit(0))
    count = F.count(offset_us).over(upto) - F.count(offset_us).over(older)
    return F.when(
        F.col("device_id").isNotNull() & (count > 0), total.cast("double") / count / F.lit(float(_MICROS))
    )


def scan_steps(
    silver: DataFrame,
    settings: FeatureSettings,
    *,
    air_lanes: DataFrame | None = None,
    serial_ranges: DataFrame | None = None,
) -> DataFrame:
    """Silver scan events plus each event's order key and its relation to its previous scan.

    Added columns: ``micros``, ``ord`` (order key, see the module doc),
    ``has_prev``, ``prev_ord``, ``prev_location_id``, ``prev_tier``, ``gap_s``, ``gap_us``,
    ``dist_km``, ``speed_kmh``, ``tier_change``, ``same_location``,
    ``prev_event_type_idx``, ``air_lane`` (the hop from the previous scan is a
    designated air lane of ``air_lanes``) (the previous-scan columns are null
    without a previous scan in the history), the previous hop's
    ``prev_speed_kmh``, ``prev_tier_change``, ``prev_same_location`` (null
    unless both earlier scans lie in the history), ``is_inbound``, ``is_outbound``,
    ``out_without_in``, ``is_return``, ``event_type_idx``, ``business_step_idx``,
    ``hour_sin``, ``hour_cos``, ``serial_issued`` (against ``serial_ranges``;
    null without them) and ``device_offset_s`` (mean event_time - record_time of
    the device's scans in the day up to this one: its clock's recent offset;
    null without record times). Both the snapshots and the event features start
    from this frame.
    """
    doms = domain()
    by_epc = Window.partitionBy("epc_code")
    micros = F.unix_micros("event_time")
    tie = F.row_number().over(by_epc.orderBy("event_time", "event_id")) - F.rank().over(
        by_epc.orderBy("event_time")
    )
    silver = _serial_issued(silver, serial_ranges)
    # The device window comes before the EPC windows so that the frame leaves this function
    # partitioned by EPC and sorted by ``ord``: event_features' EPC windows then need no second
    # shuffle and sort of the (persisted) steps.
    steps = (
        silver.withColumn("micros", micros)
        .withColumn("device_offset_s", _device_offset_s(silver))
        .withColumn("ord", F.col("micros") * TIE_SLOTS + F.least(tie, F.lit(TIE_SLOTS - 1)))
    )
    in_order = by_epc.orderBy("ord")
    steps = steps.select(
        "*",
        *[
            F.lag(c).over(in_order).alias(f"_prev_{c}")
            for c in ("ord", "micros", "location_id", "location_tier", "latitude", "longitude", "event_type")
        ],
    )
    if air_lanes is not None:
        lanes = _undirected(air_lanes)
        steps = steps.join(
            F.broadcast(lanes),
            (F.col("_prev_location_id") == F.col("_lane_from")) & (F.col("location_id") == F.col("_lane_to")),
            "left",
        ).drop("_lane_from", "_lane_to")
    else:
        steps = steps.withColumn("_on_lane", F.lit(None).cast("boolean"))
    prev_ord = F.col("_prev_ord")
    steps = steps.withColumn(
        "has_prev", prev_ord.isNotNull() & (prev_ord >= F.col("ord") - F.lit(history_span(settings)))
    )

    def when_prev(value: Column) -> Column:
        return F.when(F.col("has_prev"), value)

    gap_s = (F.col("micros") - F.col("_prev_micros")) / F.lit(float(_MICROS))
    dist = _haversine_km(
        F.col("_prev_latitude"), F.col("_prev_longitude"), F.col("latitude"), F.col("longitude")
    )
    hours = F.greatest(gap_s, F.lit(settings.min_gap_seconds)) / F.lit(3600.0)
    event_type = F.coalesce(F.col("event_type"), F.lit(""))
    is_outbound = event_type.endswith("_Outbound")
    same_location = F.col("location_id") == F.col("_prev_location_id")
    hour = (F.col("micros") % F.lit(86_400 * _MICROS)) / F.lit(3600.0 * _MICROS)
    angle = hour * F.lit(2 * math.pi / 24)
    event_types = list(doms.event_types)
    returns = list(doms.return_event_types)
    steps = steps.select(
        *[c for c in steps.columns if not c.startswith("_")],
        when_prev(F.col("_prev_ord")).alias("prev_ord"),
        when_prev(F.col("_prev_location_id")).alias("prev_location_id"),
        when_prev(F.col("_prev_location_tier")).alias("prev_tier"),
        when_prev(gap_s).alias("gap_s"),
        when_prev(F.col("micros") - F.col("_prev_micros")).alias("gap_us"),
        when_prev(dist).alias("dist_km"),
        when_prev(dist / hours).alias("speed_kmh"),
        when_prev(F.col("location_tier") - F.col("_prev_location_tier")).alias("tier_change"),
        when_prev(same_location).alias("same_location"),
        when_prev(F.coalesce(_index_of("_prev_event_type", event_types), F.lit(0))).alias(
            "prev_event_type_idx"
        ),
        when_prev(F.coalesce(F.col("_on_lane"), F.lit(False))).alias("air_lane"),
        event_type.endswith("_Inbound").alias("is_inbound"),
        is_outbound.alias("is_outbound"),
        (is_outbound & ~F.coalesce(F.col("has_prev") & same_location, F.lit(False))).alias("out_without_in"),
        event_type.isin(returns).alias("is_return") if returns else F.lit(False).alias("is_return"),
        _index_of("event_type", event_types).alias("event_type_idx"),
        _index_of("business_step", list(doms.business_steps)).alias("business_step_idx"),
        F.sin(angle).alias("hour_sin"),
        F.cos(angle).alias("hour_cos"),
    )
    # The hop before the previous scan, when both of its scans lie in this event's history.
    linked_before = F.col("has_prev") & (
        F.lag("prev_ord").over(in_order) >= F.col("ord") - F.lit(history_span(settings))
    )
    return steps.select(
        *[c for c in steps.columns if not c.startswith("_")],
        *[
            F.when(linked_before, F.lag(c).over(in_order)).alias(f"prev_{c}")
            for c in ("speed_kmh", "tier_change", "same_location")
        ],
    )


# --- the event features ---------------------------------------------------------


def _flag(column: Column) -> Column:
    return F.coalesce(column.cast("double"), F.lit(0.0))


def _log1p(column: Column) -> Column:
    """log1p of a non-negative quantity; null stays null."""
    return F.log1p(F.when(column < 0, F.lit(0.0)).otherwise(column))


def _step_struct() -> Column:
    """One sequence step as collected by the window: its order keys and raw values."""
    return F.struct(
        *[
            F.col(c)
            for c in (
                "ord",
                "prev_ord",
                "gap_s",
                "location_tier",
                "tier_change",
                "dist_km",
                "speed_kmh",
                "event_type_idx",
                "business_step_idx",
                "hour_sin",
                "hour_cos",
                "same_location",
                "is_inbound",
                "is_outbound",
                "is_return",
                "air_lane",
            )
        ]
    )


def _step_values(step: Column, bound: Column) -> dict[str, Column]:
    """Sequence features of one step of an event whose history starts at order key ``bound``."""
    linked = step["prev_ord"].isNotNull() & (step["prev_ord"] >= bound)

    def if_linked(value: Column) -> Column:
        return F.when(linked, value).otherwise(F.lit(0.0))

    return {
        "gap_log": if_linked(_log1p(step["gap_s"])),
        "has_prev": if_linked(F.lit(1.0)),
        "tier": step["location_tier"].cast("double"),
        "tier_change": if_linked(step["tier_change"].cast("double")),
        "dist_log": if_linked(_log1p(step["dist_km"])),
        "speed_log": if_linked(_log1p(step["speed_kmh"])),
        "event_type_idx": step["event_type_idx"].cast("double"),
        "business_step_idx": step["business_step_idx"].cast("double"),
        "hour_sin": step["hour_sin"],
        "hour_cos": step["hour_cos"],
        "same_location": if_linked(_flag(step["same_location"])),
        "is_inbound": _flag(step["is_inbound"]),
        "is_outbound": _flag(step["is_outbound"]),
        "out_without_in": _flag(
            step["is_outbound"] & ~(linked & F.coalesce(step["same_location"], F.lit(False)))
        ),
        "is_return": _flag(step["is_return"]),
        "air_lane": if_linked(_flag(step["air_lane"])),
    }


def _in_order(names: list[str], values: dict[str, Column], what: str) -> list[Column]:
    missing, unused = [n for n in names if n not in values], sorted(set(values) - set(names))
    if missing or unused:
        raise FeatureDefinitionError(
            f"{what} features: schemas/tables/{FEATURES_TABLE}.yaml names {missing or 'nothing'} that the code does not "
            f"compute, and the code computes {unused or 'nothing'} that the schema does not name; keep them in step"
        )
    return [values[n].alias(n) for n in names]


def _recent_steps(settings: FeatureSettings) -> Column:
    """The event's last ``sequence_length`` events that lie in its history, oldest first (step structs)."""
    bound = F.col("ord") - F.lit(history_span(settings))
    last_rows = (
        Window.partitionBy("epc_code")
        .orderBy("ord")
        .rowsBetween(-(settings.sequence_length - 1), Window.currentRow)
    )
    return F.filter(F.collect_list(_step_struct()).over(last_rows), lambda s: s["ord"] >= bound)


def _sequence(recent: Column, settings: FeatureSettings) -> Column:
    """``seq``: the steps' sequence features flattened time-major, real steps only (no padding).

    ``size(seq) = seq_len * len(sequence_features)``; the model's padded input
    is built from it by tracelake.model_io (pad_sequences).
    """
    names = sequence_features()
    bound = F.col("ord") - F.lit(history_span(settings))
    return F.flatten(
        F.transform(
            recent,
            lambda s: F.array(
                *[c.cast("float") for c in _in_order(names, _step_values(s, bound), "sequence")]
            ),
        )
    )


# Values of the pair (scan -> the EPC's next scan), read from the next scan.
_NEXT = {
    "_next_gap_s": "gap_s",
    "_next_speed_kmh": "speed_kmh",
    "_next_tier_change": "tier_change",
    "_next_same_location": "same_location",
    "_next_out_without_in": "out_without_in",
}


def _history(settings: FeatureSettings) -> dict[str, Column]:
    """EPC aggregates over the event's history, raw (RANGE frames on the order key).

    Pair aggregates run over the pairs (scan -> next scan) whose first scan
    lies in the history *before* this event, so the second scan is at most
    this event and both lie in the history. :data:`_HISTORY_FINISH` turns the
    raw values into the features.
    """
    span = history_span(settings)
    by_epc = Window.partitionBy("epc_code").orderBy("ord")
    history = by_epc.rangeBetween(-span, Window.currentRow)
    earlier = by_epc.rangeBetween(-span, -1)
    return {
        "hist_scans": F.count(F.lit(1)).over(history),
        "hist_distinct_locations": F.size(F.collect_set("location_id").over(history)),
        "hist_span_log": F.col("micros") - F.min("micros").over(history),
        "hist_max_tier": F.max("location_tier").over(history),
        "hist_max_speed_log": F.max("_next_speed_kmh").over(earlier),
        "hist_max_tier_jump": F.max("_next_tier_change").over(earlier),
        "hist_backward_moves": F.sum((F.col("_next_tier_change") < 0).cast("int")).over(earlier),
        "hist_min_gap_other_location_log": F.min(
            F.when(~F.col("_next_same_location"), F.col("_next_gap_s"))
        ).over(earlier),
        # Outbound scans not preceded in the history by a scan at their location:
        # the pairs' second scans, plus the first scan of the history if outbound.
        "hist_out_without_in": F.coalesce(
            F.sum(F.col("_next_out_without_in").cast("int")).over(earlier), F.lit(0)
        )
        + F.first(F.col("is_outbound").cast("int")).over(history),
    }


_HISTORY_FINISH = {
    "hist_span_log": lambda c: _log1p(c / F.lit(float(_MICROS))),
    "hist_max_speed_log": _log1p,
    "hist_min_gap_other_location_log": _log1p,
    "hist_backward_moves": lambda c: F.coalesce(c, F.lit(0)).cast("double"),
}


def _current(settings: FeatureSettings) -> dict[str, Column]:
    """Tabular features of the event itself, its EPC code and its snapshots (after the as-of join)."""
    gap = F.col("gap_s")
    values = {
        "gap_log": _log1p(gap),
        "has_prev": _flag(F.col("has_prev")),
        "tier": F.col("location_tier").cast("double"),
        "tier_change": F.col("tier_change").cast("double"),
        "dist_log": _log1p(F.col("dist_km")),
        "speed_log": _log1p(F.col("speed_kmh")),
        "same_location": F.col("same_location").cast("double"),
        "is_inbound": _flag(F.col("is_inbound")),
        "is_outbound": _flag(F.col("is_outbound")),
        "out_without_in": _flag(F.col("out_without_in")),
        "event_type_idx": F.col("event_type_idx").cast("double"),
        "business_step_idx": F.col("business_step_idx").cast("double"),
        "hour_sin": F.col("hour_sin"),
        "hour_cos": F.col("hour_cos"),
        "days_since_manufacture": (
            F.col("micros") - F.unix_date("epc_manufacture_date").cast("bigint") * F.lit(86_400 * _MICROS)
        )
        / F.lit(86_400.0 * _MICROS),
        "route_gap_ratio_p05": F.when(F.col("route_transit_p05_s") > 0, gap / F.col("route_transit_p05_s")),
        "route_gap_z": F.when(
            F.col("route_transit_std_s") > 0,
            (gap - F.col("route_transit_mean_s")) / F.col("route_transit_std_s"),
        ),
    }
    validity = ("epc_format_valid", "epc_company_known", "epc_product_known", "epc_manufacture_date_valid")
    for flag in validity:
        values[flag] = _flag(F.col(flag))
    tier_change = F.col("tier_change")
    values.update(
        {
            "tier_change_unusual": _flag(~tier_change.isin(0, 1)),
            "prev_event_type_idx": _flag(F.col("prev_event_type_idx")),
            "same_event_type_as_prev": _flag(
                F.col("has_prev") & (F.col("prev_event_type_idx") == F.col("event_type_idx"))
            ),
            # An Inbound here right before this scan: what an Outbound should follow.
            "prev_inbound_here": _flag(
                F.col("same_location") & F.col("prev_event_type_idx").isin(_inbound_indexes())
            ),
            "prev_speed_log": _log1p(F.col("prev_speed_kmh")),
            "prev_tier_change": F.col("prev_tier_change").cast("double"),
            "prev_same_location": F.col("prev_same_location").cast("double"),
            "serial_issued": F.col("serial_issued").cast("double"),
            "epc_any_invalid": _flag(
                ~(
                    F.col("epc_format_valid")
                    & F.col("epc_company_known")
                    & F.col("epc_product_known")
                    & F.col("epc_manufacture_date_valid")
                    & F.coalesce(F.col("serial_issued") == 1, F.lit(True))
                )
            ),
            "air_lane": _flag(F.col("air_lane")),
            "is_return": _flag(F.col("is_return")),
            "device_offset_s": F.col("device_offset_s"),
        }
    )
    return values


def _inbound_indexes() -> list[int]:
    """event_type_idx values of the *_Inbound event types."""
    return [i + 1 for i, name in enumerate(domain().event_types) if str(name).endswith("_Inbound")]


def snapshot_ttl(settings: FeatureSettings) -> dt.timedelta:
    return dt.timedelta(hours=settings.snapshot_ttl_hours)


def event_features(
    steps: DataFrame,
    location_snapshots: DataFrame,
    route_snapshots: DataFrame,
    *,
    start: dt.date,
    end: dt.date,
    settings: FeatureSettings,
) -> DataFrame:
    """One row per event of ``steps`` dated in [start, end], in the features_event_features layout.

    ``steps`` is :func:`scan_steps` of silver read from at least ``start -
    lookback_days`` (older rows are ignored); the snapshot frames hold the
    snapshot rows (features_location_daily / features_route_daily layout)
    that may be joined, i.e. at least the days [start - TTL, end].
    """
    window_start = start - dt.timedelta(days=settings.lookback_days)
    in_reach = steps.where(F.col("event_date") >= F.lit(window_start))
    by_epc = Window.partitionBy("epc_code").orderBy("ord")
    with_next = in_reach.select("*", *[F.lead(c).over(by_epc).alias(n) for n, c in _NEXT.items()])
    history = _history(settings)
    # Window values first, then what is derived from them (each window aggregate computed once).
    windowed = (
        with_next.select(
            *in_reach.columns,
            _recent_steps(settings).alias("_recent"),
            *[v.alias(k) for k, v in history.items()],
        )
        .where(F.col("event_date").between(F.lit(start), F.lit(end)))
        .select(
            *in_reach.columns,
            _sequence(F.col("_recent"), settings).alias(SEQ_COLUMN),
            F.size("_recent").alias(SEQ_LEN_COLUMN),
            *[_HISTORY_FINISH.get(k, lambda c: c.cast("double"))(F.col(k)).alias(k) for k in history],
        )
    )

    ttl = snapshot_ttl(settings)
    routes = route_snapshots.withColumnRenamed("from_location_id", "prev_location_id").withColumnRenamed(
        "to_location_id", "location_id"
    )
    joined = as_of_join_many(
        windowed,
        [
            AsOfSpec(location_snapshots, ["location_id"], "snapshot_ts", ttl=ttl, prefix="loc_"),
            AsOfSpec(routes, ["prev_location_id", "location_id"], "snapshot_ts", ttl=ttl, prefix="route_"),
        ],
        left_ts="event_time",
    )

    values = {**_current(settings), **{k: F.col(k) for k in history}}
    snapshot_columns = [
        c
        for c in joined.columns
        if c.startswith(("loc_", "route_")) and c not in ("loc_snapshot_date", "route_snapshot_date")
    ]
    values.update({c: F.col(c).cast("double") for c in snapshot_columns})
    return joined.select(
        "event_id",
        "epc_code",
        "event_time",
        "event_date",
        "location_id",
        "prev_location_id",
        "loc_snapshot_date",
        "route_snapshot_date",
        SEQ_COLUMN,
        SEQ_LEN_COLUMN,
        *_in_order(tabular_features(), values, "tabular"),
    )
