import math
import statistics

import pytest
from feature_frames import day, empty, haversine_km, locations, silver, ts
from feature_frames import labels as make_labels
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_jobs.build_features import first_snapshot_day, read_from
from spark_jobs.transforms.event_features import (
    FeatureDefinitionError,
    _in_order,
    event_features,
    scan_steps,
    sequence_features,
    tabular_features,
)
from spark_jobs.transforms.snapshots import location_snapshots, route_snapshots
from tracelake.tables import conform, domain, table_spec

TABLE = "features_event_features"


def features(spark, rows, settings, start, end, loc=None, route=None):
    steps = scan_steps(silver(spark, rows), settings)
    return event_features(
        steps,
        loc if loc is not None else empty(spark, "features_location_daily"),
        route if route is not None else empty(spark, "features_route_daily"),
        start=start,
        end=end,
        settings=settings,
    )


def step_values(df, feature, settings):
    """Per row: the values of one sequence feature over the real steps of ``seq``."""
    n, f = len(sequence_features()), sequence_features().index(feature)
    return F.transform(F.sequence(F.lit(0), F.col("seq_len") - 1), lambda i: F.col("seq")[i * n + f])


JOURNEY = [
    ("a1", "A", ts(0, 1), "F1", "Aggregation"),
    ("a2", "A", ts(0, 5), "F1", "Factory_Outbound"),
    ("a3", "A", ts(1, 2), "W1", "WMS_Inbound"),
    ("a4", "A", ts(2, 2), "W1", "WMS_Outbound"),
    # Same instant at two places: event_id orders them (a5 before a6).
    ("a6", "A", ts(2, 8), "H2", "HUB_Inbound"),
    ("a5", "A", ts(2, 8), "H1", "HUB_Inbound"),
]


def test_sequences_hold_only_the_real_steps_of_earlier_events(spark, test_settings):
    settings = test_settings.features.model_copy(update={"sequence_length": 3})
    out = features(spark, JOURNEY, settings, day(0), day(2))
    n = len(sequence_features())
    got = out.select(
        "event_id",
        "seq_len",
        step_values(out, "tier", settings).alias("tiers"),
        step_values(out, "event_type_idx", settings).alias("types"),
        F.size("seq").alias("size"),
    )
    expected = spark.createDataFrame(
        [
            ("a1", 1, [0.0], [1.0]),
            ("a2", 2, [0.0, 0.0], [1.0, 2.0]),
            ("a3", 3, [0.0, 0.0, 1.0], [1.0, 2.0, 3.0]),
            ("a4", 3, [0.0, 1.0, 1.0], [2.0, 3.0, 4.0]),
            ("a5", 3, [1.0, 1.0, 2.0], [3.0, 4.0, 5.0]),
            ("a6", 3, [1.0, 2.0, 2.0], [4.0, 5.0, 5.0]),
        ],
        "event_id string, seq_len int, tiers array<float>, types array<float>",
    ).select("*", (F.col("seq_len") * n).alias("size"))  # compact: seq_len steps of n features, no padding
    assertDataFrameEqual(got, expected)


def test_sequence_of_an_event_ignores_later_rows(spark, test_settings):
    """Adding later events (and a tie that sorts after) changes nothing of earlier events."""
    settings = test_settings.features
    full = features(spark, JOURNEY, settings, day(0), day(2))
    first_four = features(spark, JOURNEY[:4], settings, day(0), day(2))
    assertDataFrameEqual(full.where(F.col("event_id") <= "a4"), first_four)
    # a5 sorts before its same-instant twin a6 and so does not see it.
    without_twin = features(spark, [r for r in JOURNEY if r[0] != "a6"], settings, day(0), day(2))
    assertDataFrameEqual(full.where(F.col("event_id") <= "a5"), without_twin)


LOOKBACK_JOURNEY = [
    ("b1", "B", ts(0, 0), "F1", "Aggregation"),
    ("b2", "B", ts(0, 12), "F1", "Factory_Outbound"),
    ("b3", "B", ts(1, 6), "W1", "WMS_Inbound"),
    ("b4", "B", ts(2, 0), "W1", "WMS_Outbound"),
    ("b5", "B", ts(2, 6), "F1", "Factory_Outbound"),  # backwards, exactly one day after b3
]


def test_history_aggregates_within_the_lookback(spark, test_settings):
    settings = test_settings.features.model_copy(update={"lookback_days": 1})
    out = features(spark, LOOKBACK_JOURNEY, settings, day(0), day(2))
    log1p = math.log1p
    speed_fw = haversine_km("F1", "W1") / 18.0
    speed_wf = haversine_km("W1", "F1") / 6.0
    columns = [
        "event_id",
        "has_prev",
        "gap_log",
        "hist_scans",
        "hist_distinct_locations",
        "hist_span_log",
        "hist_max_tier",
        "hist_max_speed_log",
        "hist_max_tier_jump",
        "hist_backward_moves",
        "hist_min_gap_other_location_log",
        "hist_out_without_in",
    ]
    expected = spark.createDataFrame(
        [
            ("b1", 0.0, None, 1.0, 1.0, 0.0, 0.0, None, None, 0.0, None, 0.0),
            ("b2", 1.0, log1p(43200), 2.0, 1.0, log1p(43200), 0.0, 0.0, 0.0, 0.0, None, 0.0),
            # b1 lies outside b3's history, so b2 (outbound) has no scan before it there.
            (
                "b3",
                1.0,
                log1p(64800),
                2.0,
                2.0,
                log1p(64800),
                1.0,
                log1p(speed_fw),
                1.0,
                0.0,
                log1p(64800),
                1.0,
            ),
            ("b4", 1.0, log1p(64800), 2.0, 1.0, log1p(64800), 1.0, 0.0, 0.0, 0.0, None, 0.0),
            # b3 is exactly one lookback before b5: in.
            (
                "b5",
                1.0,
                log1p(21600),
                3.0,
                2.0,
                log1p(86400),
                1.0,
                log1p(speed_wf),
                0.0,
                1.0,
                log1p(21600),
                1.0,
            ),
        ],
        ", ".join(f"{c} {'string' if c == 'event_id' else 'double'}" for c in columns),
    )
    assertDataFrameEqual(out.select(*columns), expected)
    # In b4's sequence the first step (b3) has its previous scan outside b4's history.
    assertDataFrameEqual(
        out.where("event_id = 'b4'").select(step_values(out, "has_prev", settings).alias("has_prev")),
        spark.createDataFrame([([0.0, 1.0],)], "has_prev array<float>"),
    )


def test_scan_steps_previous_scan_and_flags(spark, test_settings):
    settings = test_settings.features.model_copy(update={"lookback_days": 1})
    rows = [*LOOKBACK_JOURNEY, ("c1", "C", ts(0, 3), "W1", "WMS_Outbound"), ("c2", "C", ts(5, 0), "H1", None)]
    got = scan_steps(silver(spark, rows), settings).select(
        "event_id",
        "has_prev",
        "prev_location_id",
        "tier_change",
        "same_location",
        "is_inbound",
        "is_outbound",
        "out_without_in",
        "event_type_idx",
        "business_step_idx",
    )
    expected = spark.createDataFrame(
        [
            ("b1", False, None, None, None, False, False, False, 1, 1),
            ("b2", True, "F1", 0, True, False, True, False, 2, 1),
            ("b3", True, "F1", 1, False, True, False, False, 3, 2),
            ("b4", True, "W1", 0, True, False, True, False, 4, 2),
            ("b5", True, "W1", -1, False, False, True, True, 2, 1),
            ("c1", False, None, None, None, False, True, True, 4, 2),
            ("c2", False, None, None, None, False, False, False, 0, 3),  # 5 days later: a new history
        ],
        "event_id string, has_prev boolean, prev_location_id string, tier_change int, same_location boolean, "
        "is_inbound boolean, is_outbound boolean, out_without_in boolean, event_type_idx int, business_step_idx int",
    )
    assertDataFrameEqual(got, expected)


def test_snapshots_join_as_of_the_event_within_the_ttl(spark, test_settings):
    rows = [("a1", "A", ts(1, 1), "F1", "Aggregation"), ("a2", "A", ts(2, 6), "W1", "WMS_Inbound")]
    loc_spec, route_spec = table_spec("features_location_daily"), table_spec("features_route_daily")

    def loc_row(location, d, events):
        values = dict.fromkeys(loc_spec.column_names)
        values.update(
            location_id=location,
            snapshot_date=day(d),
            snapshot_ts=ts(d),
            events=events,
            epcs=0,
            inbound_events=0,
            outbound_events=0,
            arrivals=0,
            label_window_events=0,
        )
        return tuple(values[c] for c in loc_spec.column_names)

    loc = spark.createDataFrame(
        [loc_row("F1", 0, 10), loc_row("W1", 1, 20), loc_row("W1", 2, 30), loc_row("W1", 3, 40)],
        loc_spec.schema,
    )
    route = spark.createDataFrame(
        [("F1", "W1", day(1), ts(1), 3, 100.0, 10.0, 90.0, 95.0)], route_spec.schema
    )
    columns = [
        "event_id",
        "loc_snapshot_date",
        "loc_events",
        "route_snapshot_date",
        "route_transits",
        "route_gap_ratio_p05",
    ]
    schema = (
        "event_id string, loc_snapshot_date date, loc_events double, route_snapshot_date date, "
        "route_transits double, route_gap_ratio_p05 double"
    )
    gap = 29 * 3600.0
    # TTL 24 h: a1 sees no F1 snapshot of its day, a2 its own day's W1 row; the route row is a day old.
    out = features(spark, rows, test_settings.features, day(1), day(2), loc, route)
    assertDataFrameEqual(
        out.select(*columns),
        spark.createDataFrame(
            [("a1", None, None, None, None, None), ("a2", day(2), 30.0, None, None, None)], schema
        ),
    )
    # TTL 48 h: a1 takes the day-old F1 row, a2 the day-old route row; never the future W1 row of day 3.
    longer = test_settings.features.model_copy(update={"snapshot_ttl_hours": 48.0})
    out = features(spark, rows, longer, day(1), day(2), loc, route)
    assertDataFrameEqual(
        out.select(*columns),
        spark.createDataFrame(
            [("a1", day(0), 10.0, None, None, None), ("a2", day(2), 30.0, day(1), 3.0, gap / 90.0)], schema
        ),
    )


def test_output_matches_the_table_and_the_feature_lists(spark, test_settings):
    out = features(spark, JOURNEY, test_settings.features, day(0), day(2))
    spec = table_spec(TABLE)
    assert out.columns == spec.column_names
    conform(out, spec).collect()  # casts cleanly
    assert out.columns[10:] == tabular_features()
    assert len(sequence_features()) == 16 and sequence_features()[0] == "gap_log"
    with pytest.raises(FeatureDefinitionError, match="'bogus'"):
        _in_order(["bogus"], {}, "tabular")


def test_a_range_run_equals_single_day_runs(spark, test_settings):
    """Backfill invariance: each day's rows do not depend on the range a run was given."""
    settings = test_settings.features.model_copy(
        update={"lookback_days": 1, "snapshot_window_days": 1, "label_window_days": 2}
    )
    rows = [
        ("x1", "X", ts(0, 1), "F1", "Aggregation"),
        ("x2", "X", ts(0, 20), "F1", "Factory_Outbound"),
        ("x3", "X", ts(1, 22), "W1", "WMS_Inbound"),
        ("x4", "X", ts(2, 23), "W1", "WMS_Outbound"),
        ("x5", "X", ts(3, 2), "H1", "HUB_Inbound"),
        ("x6", "X", ts(4, 10), "S1", "W_Stock_Inbound"),
        ("y1", "Y", ts(1, 5), "F1", "Factory_Outbound"),
        ("y2", "Y", ts(2, 5), "W1", "WMS_Inbound"),
        ("y3", "Y", ts(4, 1), "W1", "WMS_Outbound"),
        ("y4", "Y", ts(4, 2), "H2", "HUB_Inbound"),
    ]
    events = silver(spark, rows)
    labels = make_labels(spark, [("x3", "loc_err", ts(2, 1)), ("y2", "jump", ts(3, 0))])

    def build(start, end):
        steps = scan_steps(
            events.where(F.col("event_date").between(read_from(start, settings), end)), settings
        )
        first = first_snapshot_day(start, settings)
        loc = location_snapshots(
            steps, labels, locations(spark), first_day=first, last_day=end, settings=settings
        )
        route = route_snapshots(steps, first_day=first, last_day=end, settings=settings)
        in_range = F.col("snapshot_date") >= start
        return [
            loc.where(in_range),
            route.where(in_range),
            event_features(steps, loc, route, start=start, end=end, settings=settings),
        ]

    whole = build(day(2), day(4))
    singles = [build(day(d), day(d)) for d in (2, 3, 4)]
    for i, frame in enumerate(whole):
        assertDataFrameEqual(frame, singles[0][i].union(singles[1][i]).union(singles[2][i]))


def test_snapshot_statistics_do_not_depend_on_row_order(spark, test_settings):
    """Means and deviations come from exact sums: any partitioning or order of the rows gives the same bits.

    (Sums of doubles depend on the order rows meet in; a backfill of a range in one job would then
    write different last bits than one run per day.)
    """
    settings = test_settings.features.model_copy(update={"lookback_days": 2, "snapshot_window_days": 2})
    # Dwell times at F1 and transits F1 -> W1 with fractional seconds of very different sizes.
    rows = []
    for i in range(40):
        epc, start = f"E{i}", 1 + (i % 7) * 0.123456789
        rows += [
            (f"{epc}a", epc, ts(0, start), "F1", "Aggregation"),
            (f"{epc}b", epc, ts(0, start + 1e-3 * i + 0.5), "F1", "Factory_Outbound"),
            (f"{epc}c", epc, ts(1, start + (i % 11) * 1.000000777), "W1", "WMS_Inbound"),
        ]
    events = silver(spark, rows)
    labels = make_labels(spark, [])

    def snapshots(frame):
        steps = scan_steps(frame, settings)
        loc = location_snapshots(
            steps, labels, locations(spark), first_day=day(1), last_day=day(2), settings=settings
        )
        return loc, route_snapshots(steps, first_day=day(1), last_day=day(2), settings=settings)

    a = snapshots(events)
    b = snapshots(events.orderBy(F.col("event_id").desc()).repartition(7))
    for one, other in zip(a, b, strict=False):
        assert one.count() > 0
        assert one.exceptAll(other).count() == 0 and other.exceptAll(one).count() == 0
    route = (
        a[1]
        .where("from_location_id = 'F1' AND to_location_id = 'W1' AND snapshot_date = '2025-07-03'")
        .first()
    )
    transits = [86_400 + ((i % 11) * 1.000000777 - 1e-3 * i - 0.5) * 3600 for i in range(40)]
    assert route["transits"] == 40
    # (timestamps carry whole microseconds)
    assert route["transit_mean_s"] == pytest.approx(sum(transits) / 40, rel=1e-9)
    assert route["transit_std_s"] == pytest.approx(statistics.stdev(transits), rel=1e-6)


def test_context_features_air_lanes_serials_returns_and_the_previous_hop(spark, test_settings):
    from feature_frames import air_lanes, serial_ranges

    settings = test_settings.features.model_copy(update={"lookback_days": 3, "sequence_length": 4})
    rows = [
        ("d1", "D", ts(0, 1), "W1", "WMS_Inbound", {"serial": "950"}),  # serial in the second issued range
        ("d2", "D", ts(0, 2), "W1", "WMS_Outbound", {"serial": "950"}),
        ("d3", "D", ts(0, 6), "H1", "HUB_Inbound", {"serial": "950"}),
        ("d4", "D", ts(0, 8), "H2", "HUB_Inbound", {"serial": "950"}),  # H1 -> H2: the air lane
        ("d5", "D", ts(0, 20), "W1", "WMS_Return", {"serial": "950"}),  # back one tier... as a return
        ("x1", "X", ts(0, 3), "H1", "HUB_Inbound", {"serial": "700"}),  # never issued
    ]
    steps = scan_steps(
        silver(spark, rows), settings, air_lanes=air_lanes(spark), serial_ranges=serial_ranges(spark)
    )
    out = event_features(
        steps,
        empty(spark, "features_location_daily"),
        empty(spark, "features_route_daily"),
        start=day(0),
        end=day(0),
        settings=settings,
    )
    columns = [
        "event_id",
        "tier_change_unusual",
        "prev_event_type_idx",
        "same_event_type_as_prev",
        "prev_inbound_here",
        "prev_tier_change",
        "prev_same_location",
        "air_lane",
        "serial_issued",
        "epc_any_invalid",
    ]
    idx = {name: i + 1 for i, name in enumerate(domain().event_types)}
    expected = spark.createDataFrame(
        [
            ("d1", 0.0, 0.0, 0.0, 0.0, None, None, 0.0, 1.0, 0.0),
            ("d2", 0.0, float(idx["WMS_Inbound"]), 0.0, 1.0, None, None, 0.0, 1.0, 0.0),
            ("d3", 0.0, float(idx["WMS_Outbound"]), 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0),
            ("d4", 0.0, float(idx["HUB_Inbound"]), 1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0),
            ("d5", 1.0, float(idx["HUB_Inbound"]), 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            ("x1", 0.0, 0.0, 0.0, 0.0, None, None, 0.0, 0.0, 1.0),
        ],
        ", ".join(f"{c} {'string' if c == 'event_id' else 'double'}" for c in columns),
    )
    assertDataFrameEqual(out.select(*columns), expected)
    # Without the reference tables the serial check is unknown and no hop is an air lane.
    plain = features(spark, rows, settings, day(0), day(0)).select("event_id", "serial_issued", "air_lane")
    assert {(r[1], r[2]) for r in plain.collect()} == {(None, 0.0)}


def test_device_offset_is_the_mean_of_the_24_hours_up_to_the_scan(spark, test_settings):
    # One device (H1) whose clock offset changes scan by scan; scans exactly 24 h apart, several at
    # one instant, and a scan without a record time. The running-total form must give the mean over
    # [t - 24 h, t], both bounds in, peers included, nulls left out.
    hours = [0.0, 1.0, 1.0, 6.0, 24.0, 24.0, 25.0, 49.0, 49.5, 73.5]
    offsets = [10.0, -4.0, 7.0, None, 3.0, 1.0, 2.0, 40.0, -8.0, 0.5]
    rows = [(f"e{i}", f"E{i}", ts(0, h), "H1", "HUB_Inbound") for i, h in enumerate(hours)]
    record = {f"e{i}": o for i, o in enumerate(offsets)}
    frame = silver(spark, rows)
    shift = F.create_map(*[x for k, v in record.items() if v is not None for x in (F.lit(k), F.lit(v))])
    frame = frame.withColumn(
        "record_time",
        F.when(
            F.col("event_id").isin([k for k, v in record.items() if v is not None]),
            F.timestamp_micros(F.unix_micros("event_time") - (shift[F.col("event_id")] * 1e6).cast("long")),
        ),
    )
    got = {r["event_id"]: r["device_offset_s"] for r in scan_steps(frame, test_settings.features).collect()}
    for i, hour in enumerate(hours):
        window = [o for h, o in zip(hours, offsets, strict=True) if hour - 24 <= h <= hour and o is not None]
        assert got[f"e{i}"] == pytest.approx(statistics.mean(window)), (i, hour, window)
