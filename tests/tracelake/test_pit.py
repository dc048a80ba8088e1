"""The as-of join against its row-by-row definition, on both physical plans."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from pyspark.sql import DataFrame
from pyspark.testing import assertDataFrameEqual

from tracelake.errors import TracelakeError
from tracelake.pit import AsOfJoinError, AsOfSpec, as_of_join, as_of_join_many

pytestmark = pytest.mark.spark35

BASE = dt.datetime(2025, 7, 1, 8)
TTL = dt.timedelta(minutes=3)
MICRO = dt.timedelta(microseconds=1)
LEFT_DDL = "id int, k1 int, k2 string, t timestamp, payload string"
RIGHT_DDL = "k1 int, k2 string, rt timestamp, v int, w double, s string"
STRATEGIES = ["sort", "broadcast"]


def _rank(value):
    """Spark's ascending order, nulls first, as a Python sort key."""
    return (0,) if value is None else (1, value)


def reference(left_rows, spec_rows, *, keys, left_ts, right_ts, values, ttl=None, tiebreak=None):
    """Row by row: the right values current at each left row's time (None where none)."""
    tie_order = ([tiebreak] if tiebreak else []) + [c for c in values if c != tiebreak]
    out = []
    for row in left_rows:
        at = row[left_ts]
        if at is None or any(row[k] is None for k in keys):
            out.append((None,) * len(values))
            continue
        candidates = [
            r
            for r in spec_rows
            if r[right_ts] is not None
            and r[right_ts] <= at
            and all(r[k] is not None and r[k] == row[k] for k in keys)
        ]
        if not candidates:
            out.append((None,) * len(values))
            continue
        latest = max(r[right_ts] for r in candidates)
        if ttl is not None and at - latest > ttl:
            out.append((None,) * len(values))
            continue
        winner = max(
            (r for r in candidates if r[right_ts] == latest),
            key=lambda r: tuple(_rank(r[c]) for c in tie_order),
        )
        out.append(tuple(winner[c] for c in values))
    return out


def expected_frame(spark, left_rows: list[tuple], refs: list[list[tuple]], actual: DataFrame) -> DataFrame:
    rows = [tuple(row) + sum((ref[i] for ref in refs), ()) for i, row in enumerate(left_rows)]
    return spark.createDataFrame(rows, actual.schema)


class Frames:
    """Random left and right frames, and the same rows as Python tuples."""

    def __init__(self, spark, seed: int):
        rng = random.Random(seed)

        def ts():
            t = BASE + dt.timedelta(minutes=rng.randint(0, 12))
            # Just past the TTL edge: left_ts - right_ts == TTL + 1µs.
            return t - MICRO if rng.random() < 0.15 else t

        def maybe(value, p_null):
            return None if rng.random() < p_null else value

        left = [
            (i, maybe(rng.randint(0, 2), 0.1), maybe(rng.choice("ab"), 0.1), maybe(ts(), 0.08), f"p{i}")
            for i in range(70)
        ]
        left += [left[rng.randrange(len(left))] for _ in range(6)]  # duplicate left rows
        right = [
            (
                maybe(rng.randint(0, 2), 0.05),
                maybe(rng.choice("ab"), 0.05),
                maybe(ts(), 0.05),
                maybe(rng.randint(0, 3), 0.2),
                maybe(rng.randint(0, 4) / 2, 0.3),
                maybe(rng.choice("xyz"), 0.3),
            )
            for _ in range(45)
        ]
        self.left_rows, self.right_rows = left, right
        self.left = spark.createDataFrame(left, LEFT_DDL)
        self.right = spark.createDataFrame(right, RIGHT_DDL)

    def specs(self) -> list[AsOfSpec]:
        return [
            AsOfSpec(self.right, ["k1", "k2"], "rt", ttl=TTL, tiebreak="v", prefix="a_"),
            AsOfSpec(self.right, ["k2", "k1"], "rt", prefix="b_"),  # same key set, no TTL, no tiebreak
            AsOfSpec(
                self.right.select("k1", "rt", "v", "s"), ["k1"], "rt", ttl=TTL, prefix="c_"
            ),  # other keys
        ]

    def reference(self, spec: AsOfSpec) -> list[tuple]:
        def dicts(rows, ddl):
            names = [part.split()[0] for part in ddl.split(", ")]
            return [dict(zip(names, row, strict=False)) for row in rows]

        values = [c for c in spec.right.columns if c not in spec.keys and c != spec.right_ts]
        return reference(
            dicts(self.left_rows, LEFT_DDL),
            dicts(self.right_rows, RIGHT_DDL),
            keys=list(spec.keys),
            left_ts="t",
            right_ts=spec.right_ts,
            values=values,
            ttl=spec.ttl,
            tiebreak=spec.tiebreak,
        )


@pytest.mark.parametrize("seed", range(2))
def test_single_join_matches_reference(spark, seed):
    f = Frames(spark, seed)
    for spec in f.specs()[seed : seed + 2]:
        actual = as_of_join(
            f.left,
            spec.right,
            keys=list(spec.keys),
            left_ts="t",
            right_ts=spec.right_ts,
            ttl=spec.ttl,
            tiebreak=spec.tiebreak,
            prefix=spec.prefix,
        )
        values = [c for c in ("v", "w", "s") if c in spec.right.columns]
        assert actual.columns == f.left.columns + [spec.prefix + c for c in values]
        assertDataFrameEqual(actual, expected_frame(spark, f.left_rows, [f.reference(spec)], actual))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("seed", range(10, 12))
def test_many_matches_reference(spark, seed, strategy):
    f = Frames(spark, seed)
    actual = as_of_join_many(f.left, f.specs(), left_ts="t", strategy=strategy)
    assertDataFrameEqual(
        actual, expected_frame(spark, f.left_rows, [f.reference(s) for s in f.specs()], actual)
    )


def test_many_equals_chained_single_joins_and_shares_the_sort(spark):
    f = Frames(spark, 99)
    left, specs = f.left, f.specs()
    chained = left
    for s in specs:
        chained = as_of_join(
            chained,
            s.right,
            keys=list(s.keys),
            left_ts="t",
            right_ts=s.right_ts,
            ttl=s.ttl,
            tiebreak=s.tiebreak,
            prefix=s.prefix,
        )
    many = as_of_join_many(left, specs, left_ts="t", strategy="sort")
    assert many.columns == chained.columns
    assertDataFrameEqual(many, chained)

    # Two key sets: two sorted window passes over the left rows, not three.
    def windows(df):
        return df._jdf.queryExecution().optimizedPlan().toString().count("Window [")

    assert (windows(many), windows(chained)) == (2, 3)


def test_auto_strategy_broadcasts_small_tables_only(spark, tmp_path):
    left, right = Frames(spark, 7).left, Frames(spark, 7).right
    right.write.parquet(str(tmp_path / "right"))
    right = spark.read.parquet(str(tmp_path / "right"))
    kwargs = dict(keys=["k1", "k2"], left_ts="t", right_ts="rt", ttl=TTL, tiebreak="v", prefix="r_")
    small = as_of_join(left, right, **kwargs)
    assert "BroadcastHashJoin" in small._jdf.queryExecution().executedPlan().toString()
    spec = AsOfSpec(right, ["k1", "k2"], "rt", ttl=TTL, tiebreak="v", prefix="r_")
    large = as_of_join_many(left, [spec], left_ts="t", broadcast_max_bytes=1)
    assert "BroadcastHashJoin" not in large._jdf.queryExecution().executedPlan().toString()
    assertDataFrameEqual(small, large)


# --- hand-written edge cases, each on both plans ----------------------------


def T(minutes: float, micros: int = 0) -> dt.datetime:
    return BASE + dt.timedelta(minutes=minutes, microseconds=micros)


def join(left, right, strategy, **kwargs):
    spec = AsOfSpec(right, kwargs.pop("keys", ["k"]), kwargs.pop("right_ts", "rt"), **kwargs)
    return as_of_join_many(left, [spec], left_ts="t", strategy=strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_edges(spark, strategy):
    left = spark.createDataFrame(
        [
            (1, "a", T(10)),
            (2, "a", T(10)),
            (3, "b", T(10)),
            (4, "b", T(10)),
            (5, "c", T(10)),
            (6, None, T(10)),
            (7, "a", None),
            (2, "a", T(10)),
            (8, "d", T(0)),
        ],
        "id int, k string, t timestamp",
    )
    right = spark.createDataFrame(
        [
            ("a", T(7), 1, 1.5),
            ("a", T(7), 3, None),
            ("a", T(7), None, 9.0),
            ("a", T(10, 1), 99, 99.0),
            ("b", T(7, -1), 5, 5.0),
            ("b", T(6), 6, 6.0),
            ("c", T(9), 1, None),
            ("c", T(8), 2, 8.0),
            (None, T(1), 7, 7.0),
            ("d", None, 8, 8.0),
        ],
        "k string, rt timestamp, tb int, x double",
    )
    actual = join(left, right, strategy, ttl=dt.timedelta(minutes=3), tiebreak="tb", prefix="f_")
    expected = spark.createDataFrame(
        [
            (1, "a", T(10), 3, None),  # tie at 7: greatest tiebreak wins (null is smallest); age == TTL is in
            (2, "a", T(10), 3, None),  # the 10:00.000001 row is after the left row: not used
            (2, "a", T(10), 3, None),  # duplicate left rows both come back
            (3, "b", T(10), None, None),  # latest row is TTL + 1µs old: out, and no fallback to an older one
            (4, "b", T(10), None, None),
            (
                5,
                "c",
                T(10),
                1,
                None,
            ),  # null in the winning row stays null (8.0 from an older row is not used)
            (6, None, T(10), None, None),  # null key matches nothing, not even a right row with a null key
            (7, "a", None, None, None),  # null left_ts matches nothing
            (8, "d", T(0), None, None),
        ],  # right row with null timestamp never matches
        "id int, k string, t timestamp, f_tb int, f_x double",
    )
    assertDataFrameEqual(actual, expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_ties_without_tiebreak_are_deterministic(spark, strategy):
    left = spark.createDataFrame([(1, "a", T(5))], "id int, k string, t timestamp")
    rows = [("a", T(1), 2, "z"), ("a", T(1), 2, None), ("a", T(1), 1, "zz"), ("a", T(0), 9, "old")]
    expected = spark.createDataFrame(
        [(1, "a", T(5), 2, "z")], "id int, k string, t timestamp, u int, v string"
    )
    for order in (rows, rows[::-1]):
        right = spark.createDataFrame(order, "k string, rt timestamp, u int, v string").repartition(3)
        assertDataFrameEqual(join(left, right, strategy), expected)
    # The tiebreak column decides first, the other columns only among rows still tied.
    right = spark.createDataFrame(rows, "k string, rt timestamp, u int, v string")
    assertDataFrameEqual(
        join(left, right, strategy, tiebreak="v"),
        spark.createDataFrame([(1, "a", T(5), 1, "zz")], expected.schema),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_several_keys_empty_right_and_ttl_zero(spark, strategy):
    left = spark.createDataFrame(
        [(1, "a", T(5)), (1, "b", T(5)), (2, "a", T(5))], "k1 int, k2 string, t timestamp"
    )
    right = spark.createDataFrame(
        [(1, "a", T(5), "hit"), (1, "b", T(4), "stale")], "k1 int, k2 string, rt timestamp, v string"
    )
    actual = join(left, right, strategy, keys=["k1", "k2"], ttl=dt.timedelta(0))
    assertDataFrameEqual(
        actual,
        spark.createDataFrame(
            [(1, "a", T(5), "hit"), (1, "b", T(5), None), (2, "a", T(5), None)],
            "k1 int, k2 string, t timestamp, v string",
        ),
    )
    empty = right.limit(0)
    assertDataFrameEqual(
        join(left, empty, strategy, keys=["k1", "k2"]),
        spark.createDataFrame([(*tuple(r), None) for r in left.collect()], actual.schema),
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_date_and_timestamp_ntz(spark, strategy):
    d = dt.date(2025, 7, 10)
    left = spark.createDataFrame([("a", d), ("b", d)], "k string, t date")
    right = spark.createDataFrame(
        [("a", d - dt.timedelta(days=2), 1), ("b", d - dt.timedelta(days=3), 2)], "k string, rt date, v int"
    )
    # For dates a TTL counts whole days: 2 days 23h still admits only 2 days.
    assertDataFrameEqual(
        join(left, right, strategy, ttl=dt.timedelta(days=2, hours=23)),
        spark.createDataFrame([("a", d, 1), ("b", d, None)], "k string, t date, v int"),
    )
    left = spark.createDataFrame([("a", T(5))], "k string, t timestamp_ntz")
    right = spark.createDataFrame([("a", T(2), 1), ("a", T(1, -1), 2)], "k string, rt timestamp_ntz, v int")
    assertDataFrameEqual(
        join(left, right, strategy, ttl=dt.timedelta(minutes=3)),
        spark.createDataFrame([("a", T(5), 1)], "k string, t timestamp_ntz, v int"),
    )
    assertDataFrameEqual(
        join(left, right.where("v = 2"), strategy, ttl=dt.timedelta(minutes=4)),
        spark.createDataFrame([("a", T(5), None)], "k string, t timestamp_ntz, v int"),
    )


@pytest.mark.parametrize("ts_type", ["timestamp", "timestamp_ntz", "date"])
def test_uneven_spacing_and_far_left_rows(spark, ts_type):
    """Intervals of very different lengths (each cut into many time buckets by the broadcast plan)."""
    step = dt.timedelta(days=1) if ts_type == "date" else dt.timedelta(minutes=1)
    origin = dt.date(2025, 7, 1) if ts_type == "date" else BASE
    offsets = {"a": [0, 1, 2, 3, 100, 101, 500], "b": [7], "c": [0, 0, 2, 300]}
    right_rows = [(k, origin + o * step, i) for k, offs in offsets.items() for i, o in enumerate(offs)]
    left_rows = [(k, origin + o * step) for k in "abcd" for o in range(-5, 620, 7)]
    left_rows += [
        (k, origin + o * step + (step / 2 if ts_type != "date" else dt.timedelta(0)))
        for k in "ac"
        for o in (1, 2, 99, 100, 300, 500)
    ]
    left = spark.createDataFrame(left_rows, f"k string, t {ts_type}")
    right = spark.createDataFrame(right_rows, f"k string, rt {ts_type}, v int")
    ttls = (None, 150 * step)
    expected = [
        reference(
            [dict(k=k, t=t) for k, t in left_rows],
            [dict(k=k, rt=t, v=v) for k, t, v in right_rows],
            keys=["k"],
            left_ts="t",
            right_ts="rt",
            values=["v"],
            ttl=ttl,
        )
        for ttl in ttls
    ]
    specs = [AsOfSpec(right, ["k"], "rt", ttl=ttl, prefix=f"p{i}_") for i, ttl in enumerate(ttls)]
    for strategy in STRATEGIES:
        actual = as_of_join_many(left, specs, left_ts="t", strategy=strategy)
        assertDataFrameEqual(actual, expected_frame(spark, left_rows, expected, actual))


def test_odd_column_names(spark):
    left = spark.createDataFrame([("a", T(5))], "`the key` string, `t.s` timestamp")
    right = spark.createDataFrame([("a", T(1), 1)], "`the key` string, `r.t` timestamp, `a.b` int")
    for strategy in STRATEGIES:
        spec = AsOfSpec(right, ["the key"], "r.t", prefix="p.")
        actual = as_of_join_many(left, [spec], left_ts="t.s", strategy=strategy)
        assert actual.columns == ["the key", "t.s", "p.a.b"]
        assert actual.collect()[0]["p.a.b"] == 1


def test_bad_arguments_say_what_is_wrong(spark):
    left = spark.createDataFrame([(1, "a", T(5))], "id int, k string, t timestamp")
    right = spark.createDataFrame(
        [("a", T(1), 1, {"m": 1})], "k string, rt timestamp, id int, m map<string,int>"
    )

    def call(**overrides):
        kwargs = dict(keys=["k"], left_ts="t", right_ts="rt", prefix="r_") | overrides
        return as_of_join(left, kwargs.pop("right", right), **kwargs)

    cases = [
        (dict(keys=["nope"]), "key 'nope' is not a column of the left frame"),
        (dict(keys=[]), "keys is empty"),
        (dict(keys=["k", "k"]), "repeat"),
        (dict(left_ts="missing"), "left_ts 'missing' is not a column"),
        (dict(right_ts="id"), "right_ts 'id' is int"),
        (dict(left_ts="k"), "left_ts 'k' is string; it must be timestamp"),
        (dict(keys=["k", "rt"]), "key 'rt' is not a column of the left frame"),
        (dict(prefix=""), "'id' .* clashes with left column 'id'"),
        (dict(prefix="", right=right.drop("id").withColumnRenamed("m", "ID")), "clashes"),
        (dict(ttl=dt.timedelta(seconds=-1)), "negative"),
        (dict(ttl=5), "not a datetime.timedelta"),
        (dict(tiebreak="zz"), "tiebreak 'zz' is not a value column"),
        (dict(tiebreak="rt"), "tiebreak 'rt' is not a value column"),
        (dict(tiebreak="m"), "cannot be ordered"),
        (
            dict(right=right.withColumn("rt", right.rt.cast("date"))),
            "right_ts 'rt' is date but left_ts 't' is timestamp",
        ),
        (dict(right=right.withColumn("k", right.id)), "key 'k' is string on the left but int on the right"),
        (dict(right=right.withColumn("__tl_asof_x", right.id)), "reserved prefix"),
    ]
    for overrides, message in cases:
        with pytest.raises(AsOfJoinError, match=message):
            call(**overrides)
    assert issubclass(AsOfJoinError, TracelakeError)
    with pytest.raises(AsOfJoinError, match="strategy"):
        as_of_join_many(left, [AsOfSpec(right, ["k"], "rt", prefix="r_")], left_ts="t", strategy="fast")
    with pytest.raises(AsOfJoinError, match="at least one"):
        as_of_join_many(left, [], left_ts="t")
    # Two specs whose prefixed columns collide with each other.
    spec = AsOfSpec(right.drop("m"), ["k"], "rt", prefix="r_")
    with pytest.raises(AsOfJoinError, match="'r_id', which clashes with 'id' of spec 0"):
        as_of_join_many(left, [spec, spec], left_ts="t")
