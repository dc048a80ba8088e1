"""Which days a table has, read from the Delta log, agree with a scan of its rows."""

from __future__ import annotations

import datetime as dt

from tracelake.ranges import days_in_log, missing_days
from tracelake.tables import ColumnSpec, TableSpec

D1, D2, D3 = dt.date(2025, 7, 1), dt.date(2025, 7, 2), dt.date(2025, 7, 3)


def _spec(partition_by: str | None) -> TableSpec:
    columns = (ColumnSpec(name="event_id", type="string"), ColumnSpec(name="event_date", type="date"))
    return TableSpec(
        "days", "days", "delta", columns, partition_by=partition_by, owned_by_column="event_date"
    )


def test_days_in_the_log_are_the_days_with_rows_at_that_version(spark, tmp_path):
    spec, lake = _spec("event_date"), str(tmp_path)
    path = spec.location(lake)
    rows = spark.createDataFrame([("a", D1), ("b", D1), ("c", D3)], "event_id string, event_date date")
    rows.write.format("delta").partitionBy("event_date").save(path)
    # Version 1 empties D1's partition the way a job's replace of an empty day does.
    (
        spark.createDataFrame([], "event_id string, event_date date")
        .write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"event_date = '{D1}'")
        .save(path)
    )

    assert days_in_log(spec, lake, 0, D1, D3) == {D1, D3}
    assert days_in_log(spec, lake, 1, D1, D3) == {D3}
    assert days_in_log(spec, lake, 0, D2, D3) == {D3}  # outside the range is left out
    current = spark.read.format("delta").load(path)
    assert missing_days(current, "event_date", D1, D3) == [D1, D2]  # the scan agrees with version 1


def test_a_table_not_partitioned_by_its_date_is_left_to_the_scan(spark, tmp_path):
    spec, lake = _spec(None), str(tmp_path)
    spark.createDataFrame([("a", D1)], "event_id string, event_date date").write.format("delta").save(
        spec.location(lake)
    )
    assert days_in_log(spec, lake, 0, D1, D3) is None
