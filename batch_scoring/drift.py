"""Population stability index (PSI) of columns against a reference, as pure transforms.

Bins come from the reference: ``bins - 1`` interior quantiles (duplicates
dropped, so a column with few distinct values gets fewer bins) cut the real
line into intervals ``(-inf, e1], (e1, e2], ..., (e_k, +inf)``; null and NaN
values form one more bin, so a column that starts arriving empty drifts too.

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

with each share floored at ``epsilon`` so that an empty bin keeps PSI finite.
Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 a shift worth
acting on (config ``monitoring.warn_psi`` / ``monitoring.drift_psi``).

Counting is one pass over each frame: every row becomes one (column, bin)
pair per monitored column, encoded as one integer (``explode`` of an int
array), then a ``groupBy`` counts; only the counts (columns x bins x days)
reach the driver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from tracelake.model_io import SEQ_COLUMN, SEQ_LEN_COLUMN

NULL_BIN = -1
OK, WARN, DRIFT = "ok", "warn", "drift"


SEQ_LEN_INPUT = SEQ_LEN_COLUMN  # the sequence input's length is monitored as it is
EVENT_STEP_PREFIX = "seq_last_"


def event_step_inputs(seq_features: Sequence[str]) -> list[str]:
    """Monitored columns of the sequence input: its length and each step feature at the event's own step."""
    return [SEQ_LEN_INPUT, *(f"{EVENT_STEP_PREFIX}{name}" for name in seq_features)]


def with_event_step(
    frame: DataFrame,
    seq_features: Sequence[str],
    seq_column: str = SEQ_COLUMN,
    seq_len_column: str = SEQ_LEN_COLUMN,
) -> DataFrame:
    """Add ``seq_last_<f>``: feature ``f`` of the sequence's last real step, i.e. of the event itself.

    ``seq`` is time-major (element ``t * len(seq_features) + f`` is feature
    ``f`` of step ``t``) and holds steps ``0 .. seq_len - 1`` (no padding), so
    the event's own step, the last, starts at ``(seq_len - 1) * len(seq_features)``.
    The EPC's older steps are left out: they repeat earlier events' values.
    """
    width = len(seq_features)
    start = (F.col(seq_len_column) - 1) * F.lit(width)
    return frame.select(
        "*",
        *[
            F.element_at(F.col(seq_column), start + F.lit(j + 1))
            .cast("double")
            .alias(f"{EVENT_STEP_PREFIX}{name}")
            for j, name in enumerate(seq_features)
        ],
    )


def quantile_edges(
    reference: DataFrame, columns: Sequence[str], bins: int, relative_error: float
) -> dict[str, list[float]]:
    """Interior bin edges of each column: its reference quantiles at 1/bins .. (bins-1)/bins, distinct."""
    probabilities = [i / bins for i in range(1, bins)]
    clean = reference.select(
        *[
            F.when(F.isnan(F.col(c).cast("double")), None).otherwise(F.col(c).cast("double")).alias(c)
            for c in columns
        ]
    )
    quantiles = clean.approxQuantile(list(columns), probabilities, relative_error)
    return {
        column: sorted({float(q) for q in values}) for column, values in zip(columns, quantiles, strict=False)
    }


def bin_index(column: Column, edges: Sequence[float]) -> Column:
    """0-based bin of a value among ``(-inf, e1], (e1, e2], ... (e_k, inf)``; NULL_BIN for null or NaN."""
    value = column.cast("double")
    index = F.lit(0)
    for edge in edges:
        index = index + (value > F.lit(edge)).cast("int")
    return F.when(value.isNull() | F.isnan(value), F.lit(NULL_BIN)).otherwise(index)


def bin_counts(
    frame: DataFrame, edges: Mapping[str, Sequence[float]], group_by: Sequence[str] = ()
) -> DataFrame:
    """Rows per (group, column, bin): columns ``*group_by, feature, bin, count``.

    Each row's (column, bin) pairs are exploded as single integers -- the column's position times
    ``width`` plus the bin -- so the aggregation groups by fixed-width keys; names and bins are
    decoded from the few aggregated rows.
    """
    names = list(edges)
    if not names:
        raise ValueError("bin_counts needs at least one column")
    width = max(len(cuts) for cuts in edges.values()) + 2  # bins NULL_BIN .. len(cuts)
    codes = F.array(
        *[
            F.lit(position * width - NULL_BIN) + bin_index(F.col(name), edges[name])
            for position, name in enumerate(names)
        ]
    )
    code = F.col("_code")
    return (
        frame.select(*group_by, F.explode(codes).alias("_code"))
        .groupBy(*group_by, "_code")
        .count()
        .select(
            *group_by,
            F.element_at(F.array(*[F.lit(n) for n in names]), F.floor(code / width).cast("int") + 1).alias(
                "feature"
            ),
            (code % width + NULL_BIN).cast("int").alias("bin"),
            "count",
        )
    )


def psi(actual: Mapping[int, int], expected: Mapping[int, int], n_bins: int, epsilon: float) -> float:
    """PSI of two bin -> count maps over bins NULL_BIN, 0 .. n_bins-1."""
    total_actual, total_expected = sum(actual.values()), sum(expected.values())
    if total_actual == 0 or total_expected == 0:
        return 0.0
    value = 0.0
    for b in (NULL_BIN, *range(n_bins)):
        a = max(actual.get(b, 0) / total_actual, epsilon)
        e = max(expected.get(b, 0) / total_expected, epsilon)
        value += (a - e) * math.log(a / e)
    return value


def status(value: float, warn_psi: float, drift_psi: float) -> str:
    return DRIFT if value >= drift_psi else WARN if value >= warn_psi else OK
