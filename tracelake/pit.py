"""Point-in-time (as-of) joins: the features a row could have known at its time.

Definition, row by row: for each left row, take the latest right row with the
same keys and ``right_ts <= left_ts`` (and ``left_ts - right_ts <= ttl`` when a
TTL is given); its non-key, non-timestamp columns are added under ``prefix``;
they are null where no right row qualifies. Every left row comes back exactly
once, unchanged, duplicates included. In detail:

- A left row with a null key or a null ``left_ts`` matches nothing; right rows
  with a null key or a null ``right_ts`` are never matched.
- A TTL bounds the age of the *latest* row: if the latest row at or before
  ``left_ts`` is older than the TTL, the result is null (an older row is older
  still). ``left_ts - right_ts == ttl`` is in. For ``date`` timestamps the TTL
  counts whole days (``ttl // 1 day``).
- Ties on the winning timestamp: the greatest ``tiebreak`` wins, null being
  the smallest value. Rows still tied (or all tied rows when there is no
  tiebreak) are ordered by the remaining right value columns in the table's
  column order, with Spark's ordering (nulls smallest), and the greatest wins.
  So the result is deterministic without a tiebreak too; map-typed columns
  cannot be ordered and take no part (rows identical but for a map column are
  interchangeable).
- The winning row is taken whole: a value that is null in it stays null; no
  value is filled from an older row.
- Timestamps are ``timestamp``, ``timestamp_ntz`` or ``date``, the same type on
  both sides; key columns have the same type on both sides (cast one side
  otherwise). The right timestamp is not returned; copy it into a value column
  first if the matched row's time is wanted.

Two physical plans give the same answer, chosen per right table by its size
estimate (Spark's ``spark.sql.autoBroadcastJoinThreshold`` unless a threshold is
given):

``broadcast`` (small right tables, e.g. daily snapshots). The right table is
prepared in one task, without a shuffle: reduced to one row per (keys,
timestamp) -- the tie winner -- and each row given the next distinct timestamp
of its key (``lead``), which makes it a validity interval ``[ts, next_ts)``;
the last one of a key is open (its "tail"). Intervals of one key do not
overlap, so a left row lies in at most one. To find it in O(1), the closed
intervals are cut into time buckets whose width is the key's mean interval
length (a bucket then holds about two intervals; the table at most triples).
Each left row makes two broadcast hash probes: by keys (bucket origin and
width, and the tail), then by (keys, bucket), testing ``ts <= left_ts <
next_ts`` (and the TTL) on a couple of candidates. Left outer joins keep every
left row once. The left side is never shuffled nor sorted: the whole join runs
in generated code in the stage that reads the left rows, so its cost is linear
and immune to key skew. A right table chosen for this plan must be cheap to
compute as well as small: its preparation runs in a single task.

``sort`` (large right tables). One union of the left rows and the right rows,
tagged, with aligned columns; one shuffle by the keys; one sort by
(keys, ts, right-before-left, tie order); one pass of a running window
(``UNBOUNDED PRECEDING .. CURRENT ROW``) that carries
``last(struct(right_ts, values...), ignorenulls=True)``. Only right rows have a
non-null struct, so each left row sees the last right row at or before it, and
because the struct is carried whole, nulls inside the winning row stay null.
The TTL is checked afterwards on the carried timestamp. Cost: one shuffle and
one ``O(n log n)`` sort of left + right rows, then linear work -- no range
join and no join of all (left, right) pairs of a key, which would be
quadratic per key.

Several right tables (:func:`as_of_join_many`): tables that share a key set
and take the sort plan go into the *same* union -- one shuffle, one sort and
one window pass with one ``last`` per table -- however many there are; tables
on the broadcast plan are chained hash joins in one stage. Only a new key set
costs a new shuffle of the left rows.

Skew: the sort plan sends all rows of one key to one task, so a hot key (or
many left rows with null keys, which share one group) makes one long task
whose window buffer spills to disk; it stays correct, only slower (tempo's
answer, time brackets with overlap, can miss rows older than the bracket; we
do not trade correctness for it). The broadcast plan is immune to key skew,
another reason to prefer it whenever the right side fits in memory.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    DataType,
    DateType,
    MapType,
    StructType,
    TimestampNTZType,
    TimestampType,
    UserDefinedType,
)

from tracelake.errors import TracelakeError

Strategy = Literal["auto", "broadcast", "sort"]
STRATEGIES: tuple[str, ...] = ("auto", "broadcast", "sort")

_TS_TYPES = (TimestampType, TimestampNTZType, DateType)
_ONE_DAY = dt.timedelta(days=1)
_ONE_MICRO = dt.timedelta(microseconds=1)
# No two timestamps are further apart than this: a TTL this long checks nothing.
_MAX_SPAN = dt.datetime.max - dt.datetime.min
# Internal column names; left or right columns with this prefix are refused.
_INTERNAL = "__tl_asof_"
_TS_FIELD = _INTERNAL + "ts"  # the right timestamp inside the carried struct


class AsOfJoinError(TracelakeError, ValueError):
    """The arguments of an as-of join do not fit the frames they are applied to."""


@dataclass(frozen=True)
class AsOfSpec:
    """One right-hand table of :func:`as_of_join_many` (arguments as in :func:`as_of_join`)."""

    right: DataFrame
    keys: Sequence[str]
    right_ts: str
    ttl: dt.timedelta | None = None
    tiebreak: str | None = None
    prefix: str = ""


def as_of_join(
    left: DataFrame,
    right: DataFrame,
    *,
    keys: list[str],
    left_ts: str,
    right_ts: str,
    ttl: dt.timedelta | None = None,
    tiebreak: str | None = None,
    prefix: str = "",
) -> DataFrame:
    """Add to each left row the right row current at ``left_ts`` (see the module doc).

    Raises :class:`AsOfJoinError` for missing columns, mismatched or
    non-timestamp types, a negative TTL, or output names that would clash.
    """
    spec = AsOfSpec(right, keys, right_ts, ttl=ttl, tiebreak=tiebreak, prefix=prefix)
    return as_of_join_many(left, [spec], left_ts=left_ts)


def as_of_join_many(
    left: DataFrame,
    specs: Sequence[AsOfSpec],
    *,
    left_ts: str,
    strategy: Strategy = "auto",
    broadcast_max_bytes: int | None = None,
) -> DataFrame:
    """As-of join several right tables onto ``left`` at once.

    The result equals chaining :func:`as_of_join` once per spec, with columns
    in spec order after the left columns, but the left rows are shuffled and
    sorted once per key set rather than once per table.

    ``strategy``: ``"auto"`` broadcasts a right table whose estimated size is at
    most ``broadcast_max_bytes`` (default: the session's
    ``spark.sql.autoBroadcastJoinThreshold``; negative disables), and sorts the
    others; ``"broadcast"`` or ``"sort"`` force one plan for every table.
    """
    if strategy not in STRATEGIES:
        raise AsOfJoinError(f"strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    if not specs:
        raise AsOfJoinError("as_of_join_many needs at least one AsOfSpec")
    left_types = _column_types(left, "left")
    ts_type = _timestamp_type(left_types, left_ts, "left", "left_ts")
    plans = [_plan(i, spec, left_types, left_ts, ts_type) for i, spec in enumerate(specs)]
    _check_output_names(list(left_types), plans)

    threshold = broadcast_max_bytes
    if strategy == "auto" and threshold is None:
        threshold = int(left.sparkSession._jsparkSession.sessionState().conf().autoBroadcastJoinThreshold())
    for plan in plans:
        plan.broadcast = strategy == "broadcast" or (
            strategy == "auto" and threshold is not None and 0 <= _estimated_bytes(plan.right) <= threshold
        )

    # Group by key set, keeping the first appearance order of each group.
    groups: dict[frozenset[str], list[_Plan]] = {}
    for plan in plans:
        groups.setdefault(frozenset(plan.keys), []).append(plan)

    out = left
    for group in groups.values():
        sorted_plans = [p for p in group if not p.broadcast]
        if sorted_plans:
            out = _sort_pass(out, sorted_plans, left_ts, ts_type)
        for plan in group:
            if plan.broadcast:
                out = _broadcast_pass(out, plan, left_ts, ts_type)

    result_cols = [_col(c) for c in left.columns]
    for plan in plans:
        result_cols += [_col(plan.carried).getField(c).alias(plan.prefix + c) for c in plan.values]
    return out.select(*result_cols)


# --- planning and validation ------------------------------------------------


@dataclass
class _Plan:
    index: int
    right: DataFrame
    keys: tuple[str, ...]
    right_ts: str
    values: list[str]  # right value columns, in the right table's order
    tie_order: list[str]  # value columns that order ties: tiebreak first, then the orderable rest
    prefix: str
    ttl: dt.timedelta | None
    broadcast: bool = False
    carried: str = field(init=False)  # name of the column that holds the matched struct

    def __post_init__(self) -> None:
        self.carried = f"{_INTERNAL}{self.index}_match"

    def struct(self) -> Column:
        """The right row as one value: its timestamp first, then the value columns."""
        return F.struct(_col(self.right_ts).alias(_TS_FIELD), *[_col(c) for c in self.values])

    def order(self) -> Column:
        """The tie order of right rows sharing a timestamp (greatest wins)."""
        return F.struct(*[_col(c) for c in self.tie_order]) if self.tie_order else F.lit(0)


def _plan(
    index: int, spec: AsOfSpec, left_types: dict[str, DataType], left_ts: str, ts_type: DataType
) -> _Plan:
    where = f"as-of spec {index} ({spec.prefix or 'no prefix'})"
    if not isinstance(spec, AsOfSpec):
        raise AsOfJoinError(f"spec {index} is a {type(spec).__name__}, not an AsOfSpec")
    if not isinstance(spec.right, DataFrame):
        raise AsOfJoinError(f"{where}: right is a {type(spec.right).__name__}, not a DataFrame")
    right_types = _column_types(spec.right, f"right of {where}")
    keys = list(spec.keys) if not isinstance(spec.keys, str) else [spec.keys]
    if not keys:
        raise AsOfJoinError(
            f"{where}: keys is empty; give at least one key column "
            "(a constant column works for a join on time alone)"
        )
    if len(set(keys)) != len(keys):
        raise AsOfJoinError(f"{where}: keys {keys} repeat a column")
    for key in keys:
        for side, types in (("left", left_types), ("right", right_types)):
            if key not in types:
                raise AsOfJoinError(
                    f"{where}: key {key!r} is not a column of the {side} frame (columns: {', '.join(types)})"
                )
        if left_types[key] != right_types[key]:
            raise AsOfJoinError(
                f"{where}: key {key!r} is {left_types[key].simpleString()} on the left but "
                f"{right_types[key].simpleString()} on the right; cast one side so that both match"
            )
    if spec.right_ts in keys:
        raise AsOfJoinError(f"{where}: right_ts {spec.right_ts!r} is also a key")
    if left_ts in keys:
        raise AsOfJoinError(f"{where}: left_ts {left_ts!r} is also a key")
    right_ts_type = _timestamp_type(right_types, spec.right_ts, "right", "right_ts")
    if right_ts_type != ts_type:
        raise AsOfJoinError(
            f"{where}: right_ts {spec.right_ts!r} is {right_ts_type.simpleString()} but left_ts {left_ts!r} "
            f"is {ts_type.simpleString()}; cast one side so that both match"
        )
    if spec.ttl is not None:
        if not isinstance(spec.ttl, dt.timedelta):
            raise AsOfJoinError(f"{where}: ttl {spec.ttl!r} is not a datetime.timedelta")
        if spec.ttl < dt.timedelta(0):
            raise AsOfJoinError(f"{where}: ttl {spec.ttl} is negative")
    if not isinstance(spec.prefix, str):
        raise AsOfJoinError(f"{where}: prefix {spec.prefix!r} is not a string")

    values = [c for c in right_types if c not in keys and c != spec.right_ts]
    orderable = [c for c in values if _orderable(right_types[c])]
    tie_order = orderable
    if spec.tiebreak is not None:
        if spec.tiebreak not in values:
            raise AsOfJoinError(
                f"{where}: tiebreak {spec.tiebreak!r} is not a value column of the right frame "
                f"(value columns: {', '.join(values) or 'none'})"
            )
        if spec.tiebreak not in orderable:
            raise AsOfJoinError(
                f"{where}: tiebreak {spec.tiebreak!r} has type "
                f"{right_types[spec.tiebreak].simpleString()}, which cannot be ordered"
            )
        tie_order = [spec.tiebreak] + [c for c in orderable if c != spec.tiebreak]
    return _Plan(index, spec.right, tuple(keys), spec.right_ts, values, tie_order, spec.prefix, spec.ttl)


def _column_types(df: DataFrame, side: str) -> dict[str, DataType]:
    types: dict[str, DataType] = {}
    for f in df.schema.fields:
        if f.name.lower() in (n.lower() for n in types):
            raise AsOfJoinError(
                f"the {side} frame has the column {f.name!r} twice (names are case-insensitive)"
            )
        if f.name.startswith(_INTERNAL):
            raise AsOfJoinError(
                f"the {side} frame's column {f.name!r} uses the reserved prefix {_INTERNAL!r}"
            )
        types[f.name] = f.dataType
    return types


def _timestamp_type(types: dict[str, DataType], name: str, side: str, arg: str) -> DataType:
    if name not in types:
        raise AsOfJoinError(
            f"{arg} {name!r} is not a column of the {side} frame (columns: {', '.join(types)})"
        )
    if not isinstance(types[name], _TS_TYPES):
        raise AsOfJoinError(
            f"{arg} {name!r} is {types[name].simpleString()}; it must be timestamp, timestamp_ntz or date "
            f"(e.g. F.to_timestamp({name!r}))"
        )
    return types[name]


def _orderable(dtype: DataType) -> bool:
    if isinstance(dtype, (MapType, UserDefinedType)):
        return False
    if isinstance(dtype, ArrayType):
        return _orderable(dtype.elementType)
    if isinstance(dtype, StructType):
        return all(_orderable(f.dataType) for f in dtype.fields)
    return True


def _check_output_names(left_columns: list[str], plans: list[_Plan]) -> None:
    seen = {c.lower(): f"left column {c!r}" for c in left_columns}
    for plan in plans:
        for value in plan.values:
            name = plan.prefix + value
            if name.lower() in seen:
                raise AsOfJoinError(
                    f"right column {value!r} of spec {plan.index} would be named {name!r}, which clashes with "
                    f"{seen[name.lower()]}; choose a different prefix (now {plan.prefix!r}) or drop the column"
                )
            seen[name.lower()] = f"{value!r} of spec {plan.index}"


def _estimated_bytes(df: DataFrame) -> int:
    """Spark's size estimate of a plan (no job runs); -1 when it cannot be had."""
    try:
        return int(str(df._jdf.queryExecution().optimizedPlan().stats().sizeInBytes()))
    except Exception:
        return -1


# --- the two physical plans -------------------------------------------------


def _col(name: str) -> Column:
    return F.col("`" + name.replace("`", "``") + "`")


def _within_ttl(plan: _Plan, left_ts: Column, right_ts: Column, ts_type: DataType) -> Column:
    """``left_ts - right_ts <= ttl`` (true when there is no TTL).

    ``timestamp`` differences are elapsed time (``unix_micros``), so a daylight
    saving change in the session time zone does not stretch the TTL;
    ``timestamp_ntz`` differences are wall-clock time; ``date`` ones whole days.
    """
    if plan.ttl is None or plan.ttl >= _MAX_SPAN:
        return F.lit(True)
    if isinstance(ts_type, DateType):
        return F.datediff(left_ts, right_ts) <= F.lit(plan.ttl // _ONE_DAY)
    if isinstance(ts_type, TimestampNTZType):
        return (left_ts - right_ts) <= F.lit(plan.ttl)
    return (F.unix_micros(left_ts) - F.unix_micros(right_ts)) <= F.lit(plan.ttl // _ONE_MICRO)


def _usable(plan: _Plan, df: DataFrame) -> DataFrame:
    """Right rows that can match at all: no null key, no null timestamp."""
    cond = _col(plan.right_ts).isNotNull()
    for key in plan.keys:
        cond = cond & _col(key).isNotNull()
    return df.where(cond)


def _sort_pass(left: DataFrame, plans: list[_Plan], left_ts: str, ts_type: DataType) -> DataFrame:
    """Union + one sort + one running window for every plan of one key set."""
    keys = plans[0].keys
    ts, tag = _INTERNAL + "ts", _INTERNAL + "is_left"
    left_types = {f.name: f.dataType for f in left.schema.fields}
    slots = []  # per plan: (carried name, its type, order name, its type)
    for plan in plans:
        schema = plan.right.select(plan.struct(), plan.order()).schema
        slots.append((plan.carried, schema[0].dataType, plan.carried + "_order", schema[1].dataType))

    def tagged(owner: _Plan | None) -> list[Column]:
        cols = []
        for plan, (carried, carried_type, order, order_type) in zip(plans, slots, strict=False):
            mine = plan is owner
            cols.append((plan.struct() if mine else F.lit(None).cast(carried_type)).alias(carried))
            cols.append((plan.order() if mine else F.lit(None).cast(order_type)).alias(order))
        return cols

    union = left.select(
        *[_col(c) for c in left.columns], _col(left_ts).alias(ts), F.lit(1).alias(tag), *tagged(None)
    )
    for plan in plans:
        aligned = [_col(c) if c in keys else F.lit(None).cast(t).alias(c) for c, t in left_types.items()]
        union = union.union(
            _usable(plan, plan.right).select(
                *aligned, _col(plan.right_ts).alias(ts), F.lit(0).alias(tag), *tagged(plan)
            )
        )

    # Right rows sort before left rows of the same instant (right_ts <= left_ts
    # matches); among right rows of one instant the greatest tie order is last.
    window = (
        Window.partitionBy(*[_col(k) for k in keys])
        .orderBy(_col(ts), _col(tag), *[_col(order) for _, _, order, _ in slots])
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    )
    scanned = union.select(
        *[_col(c) for c in left.columns],
        _col(tag),
        *[F.last(_col(carried), ignorenulls=True).over(window).alias(carried) for carried, *_ in slots],
    ).where(_col(tag) == 1)

    out = [_col(c) for c in left.columns]
    for plan in plans:
        matched = _col(plan.carried)
        out.append(
            (
                F.when(_within_ttl(plan, _col(left_ts), matched.getField(_TS_FIELD), ts_type), matched)
                if plan.ttl is not None
                else matched
            ).alias(plan.carried)
        )
    return scanned.select(*out)


def _tick(ts: Column, ts_type: DataType) -> Column:
    """A long that never decreases as ``ts`` grows (only used to place rows in time buckets)."""
    if isinstance(ts_type, DateType):
        return F.unix_date(ts)
    if isinstance(ts_type, TimestampNTZType):  # wall-clock seconds, independent of the session time zone
        return (
            F.unix_date(F.to_date(ts)).cast("long") * 86_400
            + F.hour(ts) * 3_600
            + F.minute(ts) * 60
            + F.second(ts)
        )
    return F.unix_micros(ts)


def _broadcast_pass(left: DataFrame, plan: _Plan, left_ts: str, ts_type: DataType) -> DataFrame:
    """Validity intervals [ts, next ts) of the small right table, probed by two broadcast hash joins.

    Per key, the tie winner of each instant becomes an interval up to the next
    instant; the last one is open ("tail"). The closed intervals are cut into
    time buckets whose width is the key's mean interval length, so a bucket
    holds about two intervals and an interval spans about two buckets (the
    table at most triples). A left row first looks up its key's row (bucket
    origin and width, and the tail), then its (key, bucket): both are hash
    probes that test O(1) candidates, whatever the number of snapshots per key.
    """
    key_names = [f"{_INTERNAL}key{j}" for j in range(len(plan.keys))]
    name = plan.carried
    order, next_ts, tail = name + "_order", name + "_next_ts", name + "_tail"
    origin, width, bucket = name + "_origin", name + "_width", name + "_bucket"
    ts = _col(name).getField(_TS_FIELD)
    keys = [_col(n) for n in key_names]

    # The right table is small: one task prepares it, with no shuffle.
    rows = (
        _usable(plan, plan.right)
        .coalesce(1)
        .select(
            *[_col(k).alias(n) for k, n in zip(plan.keys, key_names, strict=False)],
            plan.struct().alias(name),
            plan.order().alias(order),
        )
    )
    by_time = Window.partitionBy(*keys).orderBy(ts, _col(order))
    per_key = Window.partitionBy(*keys)
    tick = _tick(ts, ts_type)
    rows = (
        rows.withColumn(next_ts, F.lead(ts).over(by_time))
        # The last row of each instant is its tie winner; the next row starts the next instant.
        .where(_col(next_ts).isNull() | (_col(next_ts) != ts))
        .select(
            *keys,
            _col(name),
            _col(next_ts),
            F.min(tick).over(per_key).alias(origin),
            # mean interval length of the key, at least one tick
            F.greatest(
                F.ceil(
                    (F.max(tick).over(per_key) - F.min(tick).over(per_key))
                    / F.greatest(F.count(F.lit(1)).over(per_key) - 1, F.lit(1))
                ),
                F.lit(1),
            ).alias(width),
        )
    )

    def bucket_of(t: Column) -> Column:
        return F.floor((_tick(t, ts_type) - _col(origin)) / _col(width))

    tails = rows.where(_col(next_ts).isNull()).select(
        *keys, _col(origin), _col(width), _col(name).alias(tail)
    )
    # Bucket of the start to bucket of the end, both included: every instant inside is covered.
    spans = rows.where(_col(next_ts).isNotNull()).select(
        *[_col(n).alias(n + "_") for n in key_names],
        F.explode(F.sequence(bucket_of(ts), bucket_of(_col(next_ts)))).alias(bucket + "_"),
        _col(name),
        _col(next_ts),
    )

    at = _col(left_ts)
    by_key = F.lit(True)
    for key, key_name in zip(plan.keys, key_names, strict=False):
        by_key = by_key & (_col(key) == _col(key_name))
    tail_ts = _col(tail).getField(_TS_FIELD)
    with_tail = left.join(F.broadcast(tails), by_key, "left").select(
        *[_col(c) for c in left.columns],
        *keys,
        _col(tail),
        # Only rows before the tail look for a closed interval.
        F.when(at < tail_ts, bucket_of(at)).alias(bucket),
    )

    span_cond = (_col(bucket) == _col(bucket + "_")) & (ts <= at) & (at < _col(next_ts))
    for key_name in key_names:
        span_cond = span_cond & (_col(key_name) == _col(key_name + "_"))
    tail_ok = tail_ts <= at
    if plan.ttl is not None:
        tail_ok = tail_ok & _within_ttl(plan, at, tail_ts, ts_type)
        span_cond = span_cond & _within_ttl(plan, at, ts, ts_type)
    joined = with_tail.join(F.broadcast(spans), span_cond, "left")
    return joined.select(
        *[_col(c) for c in left.columns], F.coalesce(F.when(tail_ok, _col(tail)), _col(name)).alias(name)
    )
