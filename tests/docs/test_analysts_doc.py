"""docs/analysts.md: every SQL query runs through `tracelake query`, every Python snippet runs as written
(delta-rs and DuckDB without Spark) against a small scored lake, and the engines agree on the numbers."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tracelake import query
from tracelake.tables import domain, table_spec, write_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysts.md"
DAYS = (dt.date(2025, 7, 1), dt.date(2025, 7, 7))  # the dates the doc's queries use
ROWS_PER_DAY = 24
LAKE_LINE = 'LAKE = "./lake"  # the lake root'


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", DOC.read_text(), flags=re.S | re.M)


def scored_rows() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    labels = domain().anomaly_types
    rows = []
    for day in DAYS:
        for i in range(ROWS_PER_DAY):
            p = rng.uniform(size=len(labels)) ** 3  # mostly low, a few high
            t = dt.datetime.combine(day, dt.time(hour=i % 24, minute=i))
            rows.append(
                {
                    "event_id": f"e{day:%d}{i:03d}",
                    "epc_code": f"001.1.1.1.20250601.{i % 8}",
                    "event_time": t,
                    "location_id": f"LOC{i % 3}",
                    "event_date": day,
                    **{f"p_{label}": float(v) for label, v in zip(labels, p, strict=False)},
                    **{f"flag_{label}": bool(v >= 0.5) for label, v in zip(labels, p, strict=False)},
                    "anomaly_score": float(p.max()),
                    "anomaly_flag": bool((p >= 0.5).any()),
                    "model_name": "tracelake-anomaly-lstm",
                    "model_version": "1",
                    "model_run_id": "r1",
                    "scored_at": dt.datetime(2025, 7, 8),
                    "_run_id": "run1",
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def lake(spark, test_settings, tmp_path_factory):
    """A lake with gold/scored_events (two days), reference/locations, silver/labels and monitoring/drift."""
    root = str(tmp_path_factory.mktemp("analysts") / "lake")
    frame = scored_rows()
    spec = table_spec("gold_scored_events")
    write_table(
        spark.createDataFrame(frame[spec.column_names], spec.schema), spec, root, start=DAYS[0], end=DAYS[1]
    )
    spec = table_spec("reference_locations")
    write_table(
        spark.createDataFrame(
            [(f"LOC{i}", f"Hub {i}", "LGS_HUB", 2, 37.5 + i, 127.0, None, None) for i in range(3)],
            spec.schema,
        ),
        spec,
        root,
    )
    flagged = frame[frame["anomaly_flag"]]
    spec = table_spec("silver_labels")
    write_table(
        spark.createDataFrame(
            [
                (r.event_id, r.epc_code, "jump", dt.datetime(2025, 7, 9), dt.date(2025, 7, 9), "run0")
                for r in flagged.head(3).itertuples()
            ],
            spec.schema,
        ),
        spec,
        root,
    )
    spec = table_spec("monitoring_drift")
    write_table(
        spark.createDataFrame(
            [
                (
                    day,
                    feature,
                    kind,
                    psi,
                    status,
                    0.25,
                    0.1,
                    ROWS_PER_DAY,
                    0.0,
                    100,
                    "training_set:demo@v0",
                    "tracelake-anomaly-lstm",
                    "1",
                    dt.datetime(2025, 7, 8),
                    "run2",
                )
                for day in DAYS
                for feature, kind, psi, status in (
                    ("tier", "input", 0.01, "ok"),
                    (
                        "hist_scans",
                        "input",
                        0.4 if day == DAYS[1] else 0.02,
                        "drift" if day == DAYS[1] else "ok",
                    ),
                    ("anomaly_score", "score", 0.12, "warn"),
                )
            ],
            spec.schema,
        ),
        spec,
        root,
        start=DAYS[0],
        end=DAYS[1],
    )
    return {"root": root, "frame": frame}


def test_the_doc_has_the_starter_queries():
    sql = blocks("sql")
    assert len(sql) >= 8 and len(blocks("python")) == 2
    text = DOC.read_text()
    for topic in ("per location and day", "Top EPCs", "Score distribution", "delta-rs", "DuckDB"):
        assert topic in text


def run_both(spark, root: str, sql: str) -> pd.DataFrame:
    """The statement through the default engine and, where Spark runs it, through --engine spark; they agree."""
    if sql.lstrip().upper().startswith("DESCRIBE HISTORY"):
        spark_rows = query.run_query(spark, root, sql).toPandas()
        default = query.run_datafusion(root, sql, query.lake_views(None, root)).to_pandas()
        assert default["version"].tolist() == spark_rows["version"].tolist()
        assert default["operation"].tolist() == spark_rows["operation"].tolist()
        return default
    default = query.run_datafusion(root, sql, query.lake_views(None, root)).to_pandas()
    if "VERSION AS OF" in sql.upper():  # time travel is the default engine's
        return default
    on_spark = query.run_query(spark, root, sql).toPandas()
    assert list(default.columns) == list(on_spark.columns) and len(default) == len(on_spark), sql
    for column in default.columns:
        left, right = default[column], on_spark[column]
        if pd.api.types.is_numeric_dtype(left) and pd.api.types.is_numeric_dtype(right):
            np.testing.assert_allclose(left.astype(float), right.astype(float), rtol=1e-9, err_msg=sql)
        elif pd.api.types.is_datetime64_any_dtype(left):
            assert (left.dt.tz_localize(None) if left.dt.tz else left).tolist() == right.tolist(), sql
        else:
            assert left.astype(str).tolist() == right.astype(str).tolist(), sql
    return default


def test_every_sql_query_runs_through_tracelake_query(spark, lake):
    """Both engines: the default (DataFusion) one and --engine spark."""
    frame = lake["frame"]
    results = []
    for sql in blocks("sql"):
        rows = run_both(spark, lake["root"], sql)
        assert len(rows), f"no rows from:\n{sql}"
        results.append(rows)
    per_location, per_type, top_epcs, top_day = results[:4]

    expected = (
        frame.groupby(["event_date", "location_id"])
        .agg(events=("event_id", "size"), flagged=("anomaly_flag", "sum"))
        .reset_index()
    )
    got = per_location[["event_date", "location_id", "events", "flagged"]]
    pd.testing.assert_frame_equal(
        got.sort_values(["event_date", "location_id"]).reset_index(drop=True), expected, check_dtype=False
    )
    assert set(per_location["location_name"]) == {"Hub 0", "Hub 1", "Hub 2"}
    assert per_type["events"].tolist() == [ROWS_PER_DAY, ROWS_PER_DAY]
    assert per_type["jump"].tolist() == [
        int(frame[frame["event_date"] == d]["flag_jump"].sum()) for d in DAYS
    ]
    assert top_epcs["max_score"].iloc[0] == round(frame["anomaly_score"].max(), 4)
    day = frame[frame["event_date"] == DAYS[1]].sort_values(
        ["anomaly_score", "event_id"], ascending=[False, True]
    )
    assert top_day["epc_code"].tolist() == day["epc_code"].head(len(top_day)).tolist()
    assert results[-1]["events"].tolist() == [ROWS_PER_DAY, ROWS_PER_DAY]  # VERSION AS OF 0


def test_python_snippets_run_without_spark_and_agree(lake, capsys):
    frame = lake["frame"]
    namespaces = []
    for code in blocks("python"):
        assert LAKE_LINE in code
        namespace: dict = {}
        exec(compile(code.replace(LAKE_LINE, f"LAKE = {lake['root']!r}"), str(DOC), "exec"), namespace)
        namespaces.append(namespace)
    capsys.readouterr()
    delta_rs, duck = namespaces

    day = frame[frame["event_date"] == DAYS[1]]
    expected = day[day["anomaly_flag"]].groupby("location_id").size().to_dict()
    got = delta_rs["flagged"]
    assert (
        dict(zip(got.column("location_id").to_pylist(), got.column("flagged").to_pylist(), strict=False))
        == expected
    )

    per_location = duck["per_location"].sort_values(["event_date", "location_id"]).reset_index(drop=True)
    expected = (
        frame.groupby(["event_date", "location_id"])
        .agg(events=("event_id", "size"), flagged=("anomaly_flag", "sum"))
        .reset_index()
    )
    assert per_location["event_date"].astype(str).tolist() == expected["event_date"].astype(str).tolist()
    assert (
        per_location[["location_id", "events", "flagged"]].values.tolist()
        == expected[["location_id", "events", "flagged"]].values.tolist()
    )

    top = day.sort_values(["anomaly_score", "event_id"], ascending=[False, True]).head(10)
    assert duck["top"]["epc_code"].tolist() == top["epc_code"].tolist()
    np.testing.assert_allclose(duck["top"]["anomaly_score"], top["anomaly_score"])
