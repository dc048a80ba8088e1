"""Daily snapshot features: what silver data strictly before a day says about locations and routes.

A snapshot for day D has the effective timestamp ``snapshot_ts`` = the start
of D (UTC) and uses only scans dated before D and labels confirmed before
``snapshot_ts``. All days of a range come out of one Spark job, with no loop
over days: each input row is *spread* to the snapshot days whose window holds
it (``explode(sequence(first_day, last_day))``), and one aggregation per table
groups by (key, snapshot day). Additive measures are summed per (location,
scan day) first, so only those few daily rows are spread; transit-time
percentiles are not additive, so their rows are spread themselves --
``snapshot_window_days`` copies each; distinct EPCs spread only the snapshot
days a (location, EPC) pair's earlier scan did not cover (:func:`_distinct_epcs`).

Means and standard deviations come from exact sums (integer microseconds
summed as decimals), never from sums of doubles: floating-point addition
depends on the order rows meet in, and a backfill of a range in one job must
write the same bits as one run per day.

Inputs are :func:`spark_jobs.transforms.event_features.scan_steps` of silver
(the previous-scan columns that dwell, order and transit times need), the
silver labels and the reference locations. The steps must cover
:func:`steps_needed_from` on: windows reach back ``label_window_days``, and a
scan's previous scan up to ``lookback_days`` before it.
"""

from __future__ import annotations

import datetime as dt

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from tracelake.config import FeatureSettings
from tracelake.tables import domain

SNAPSHOT_DATE, SNAPSHOT_TS = "snapshot_date", "snapshot_ts"


def steps_needed_from(first_day: dt.date, settings: FeatureSettings) -> dt.date:
    """The earliest scan day that snapshots from ``first_day`` on can depend on."""
    reach = max(settings.label_window_days, settings.snapshot_window_days + settings.lookback_days)
    return first_day - dt.timedelta(days=reach)


def _spread(
    df: DataFrame, from_day: Column, to_day: Column, first_day: dt.date, last_day: dt.date
) -> DataFrame:
    """Each row once per snapshot day in [from_day, to_day] ∩ [first_day, last_day]."""
    low = F.greatest(from_day, F.lit(first_day))
    high = F.least(to_day, F.lit(last_day))
    return df.where(low <= high).withColumn(SNAPSHOT_DATE, F.explode(F.sequence(low, high)))


def _window_days(day: Column, days: int) -> tuple[Column, Column]:
    """Snapshot days whose window of ``days`` days before them holds ``day``: day+1 .. day+days."""
    return F.date_add(day, 1), F.date_add(day, days)


def _effective_ts(day: Column) -> Column:
    """Start of the day in UTC, whatever the session time zone."""
    return F.timestamp_seconds(F.unix_date(day).cast("bigint") * F.lit(86_400))


def _ratio(numerator: str, denominator: str) -> Column:
    return F.when(F.col(denominator) > 0, F.col(numerator) / F.col(denominator))


_EXACT = "decimal(38,0)"
_MICROS_PER_S = 1_000_000.0


def _exact_moments(value_us: Column, prefix: str) -> list[Column]:
    """Count, sum and sum of squares of an integer microsecond value, all exact (order-independent)."""
    exact = value_us.cast(_EXACT)
    return [
        F.count(value_us).alias(f"{prefix}_n"),
        F.sum(exact).alias(f"{prefix}_sum"),
        F.sum(exact * exact).alias(f"{prefix}_sumsq"),
    ]


def _mean_std(prefix: str, unit_us: float) -> tuple[Column, Column]:
    """Mean and sample standard deviation in ``unit_us`` units from :func:`_exact_moments` columns."""
    n = F.col(f"{prefix}_n")
    total, squares = F.col(f"{prefix}_sum").cast("double"), F.col(f"{prefix}_sumsq").cast("double")
    mean = F.when(n > 0, total / n / F.lit(unit_us))
    variance = (squares - total * total / n) / (n - 1) / F.lit(unit_us * unit_us)
    return mean, F.when(n > 1, F.sqrt(F.greatest(variance, F.lit(0.0))))


def _distinct_epcs(steps: DataFrame, window: int, first_day: dt.date, last_day: dt.date) -> DataFrame:
    """``epcs``: distinct EPCs scanned at a location in the ``window`` days before each snapshot day.

    Counted without a distinct count of the spread rows: each scan day of a (location, EPC) adds
    only the snapshot days that the pair's previous scan day did not already cover (the days of its
    window after the previous day's window), so the pair's intervals are disjoint and counting
    them is exact. A same-day scan adds nothing. The frame is partitioned by EPC and sorted by
    ``ord`` (:func:`scan_steps`), so the window over (EPC, location) needs no shuffle.
    """
    day = F.col("event_date")
    previous = F.lag(day).over(Window.partitionBy("epc_code", "location_id").orderBy("event_date"))
    low, high = _window_days(day, window)
    fresh_from = F.when(previous.isNull(), low).otherwise(F.greatest(low, F.date_add(previous, window + 1)))
    fresh = steps.where(F.col("epc_code").isNotNull()).select(
        "location_id", fresh_from.alias("_from"), high.alias("_to")
    )
    return (
        _spread(fresh, F.col("_from"), F.col("_to"), first_day, last_day)
        .groupBy("location_id", SNAPSHOT_DATE)
        .agg(F.count(F.lit(1)).alias("epcs"))
    )


def location_snapshots(
    steps: DataFrame,
    labels: DataFrame,
    locations: DataFrame,
    *,
    first_day: dt.date,
    last_day: dt.date,
    settings: FeatureSettings,
) -> DataFrame:
    """One row per reference location and day of [first_day, last_day] (features_location_daily layout)."""
    window, label_window = settings.snapshot_window_days, settings.label_window_days
    arrival = F.col("has_prev") & ~F.col("same_location")
    dwell_us = F.when(F.col("has_prev") & F.col("same_location"), F.col("gap_us"))

    def count_if(cond: Column) -> Column:
        return F.sum(F.coalesce(cond, F.lit(False)).cast("long"))

    daily = steps.groupBy("location_id", "event_date").agg(
        F.count(F.lit(1)).alias("events"),
        count_if(F.col("is_inbound")).alias("inbound_events"),
        count_if(F.col("is_outbound")).alias("outbound_events"),
        count_if(F.col("out_without_in")).alias("out_without_in"),
        *_exact_moments(dwell_us, "dwell"),
        count_if(arrival).alias("arrivals"),
        count_if(arrival & (F.col("tier_change") < 0)).alias("backward"),
    )
    sums = [
        "events",
        "inbound_events",
        "outbound_events",
        "out_without_in",
        "dwell_n",
        "dwell_sum",
        "dwell_sumsq",
        "arrivals",
        "backward",
    ]
    in_window = (
        _spread(daily, *_window_days(F.col("event_date"), window), first_day, last_day)
        .groupBy("location_id", SNAPSHOT_DATE)
        .agg(*[F.sum(c).alias(c) for c in sums])
    )
    label_events = (
        _spread(daily, *_window_days(F.col("event_date"), label_window), first_day, last_day)
        .groupBy("location_id", SNAPSHOT_DATE)
        .agg(F.sum("events").alias("label_window_events"))
    )
    epcs = _distinct_epcs(steps, window, first_day, last_day)

    # A label counts from the day after its confirmation (confirmed_at < start of D).
    types = list(domain().anomaly_types)
    known = (
        labels.where(F.col("anomaly_type").isin(types))
        .groupBy("event_id", "anomaly_type")
        .agg(F.min("confirmed_at").alias("confirmed_at"))
        .join(steps.select("event_id", "location_id", "event_date"), "event_id")
    )
    known_from = F.date_add(F.greatest(F.col("event_date"), F.to_date("confirmed_at")), 1)
    labelled = (
        _spread(known, known_from, F.date_add(F.col("event_date"), label_window), first_day, last_day)
        .groupBy("location_id", SNAPSHOT_DATE)
        .pivot("anomaly_type", types)
        .count()
    )

    days = (
        locations.select("location_id")
        .distinct()
        .crossJoin(
            locations.sparkSession.range(1).select(
                F.explode(F.sequence(F.lit(first_day), F.lit(last_day))).alias(SNAPSHOT_DATE)
            )
        )
    )
    keys = ["location_id", SNAPSHOT_DATE]
    grid = (
        days.join(in_window, keys, "left")
        .join(label_events, keys, "left")
        .join(epcs, keys, "left")
        .join(labelled, keys, "left")
        .na.fill(0, [*sums, "label_window_events", "epcs", *types])
    )
    dwell_mean_h, dwell_std_h = _mean_std("dwell", 3600 * _MICROS_PER_S)
    return grid.select(
        "location_id",
        SNAPSHOT_DATE,
        _effective_ts(F.col(SNAPSHOT_DATE)).alias(SNAPSHOT_TS),
        "events",
        "epcs",
        "inbound_events",
        "outbound_events",
        _ratio("out_without_in", "outbound_events").alias("out_without_in_share"),
        dwell_mean_h.alias("dwell_mean_h"),
        dwell_std_h.alias("dwell_std_h"),
        "arrivals",
        _ratio("backward", "arrivals").alias("backward_share"),
        "label_window_events",
        *[_ratio(t, "label_window_events").alias(f"rate_{t}") for t in types],
    )


def route_snapshots(
    steps: DataFrame, *, first_day: dt.date, last_day: dt.date, settings: FeatureSettings
) -> DataFrame:
    """Transit-time statistics per (from, to) route and day (features_route_daily layout)."""
    transits = steps.where(F.col("has_prev") & ~F.col("same_location")).select(
        F.col("prev_location_id").alias("from_location_id"),
        F.col("location_id").alias("to_location_id"),
        "event_date",
        F.col("gap_s").alias("transit_s"),
        F.col("gap_us").alias("transit_us"),
    )
    spread = _spread(
        transits, *_window_days(F.col("event_date"), settings.snapshot_window_days), first_day, last_day
    )
    transit_mean_s, transit_std_s = _mean_std("transit", _MICROS_PER_S)
    return (
        spread.groupBy("from_location_id", "to_location_id", SNAPSHOT_DATE)
        .agg(
            *_exact_moments(F.col("transit_us"), "transit"),
            # percentile sorts its values, so it does not depend on their order
            F.percentile("transit_s", F.lit(0.05)).alias("transit_p05_s"),
            F.percentile("transit_s", F.lit(0.5)).alias("transit_p50_s"),
        )
        .select(
            "from_location_id",
            "to_location_id",
            SNAPSHOT_DATE,
            _effective_ts(F.col(SNAPSHOT_DATE)).alias(SNAPSHOT_TS),
            F.col("transit_n").alias("transits"),
            transit_mean_s.alias("transit_mean_s"),
            transit_std_s.alias("transit_std_s"),
            "transit_p05_s",
            "transit_p50_s",
        )
    )
