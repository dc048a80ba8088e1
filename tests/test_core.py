import datetime as dt
import itertools
from types import SimpleNamespace

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from tracelake.config import ConfigError, load_settings
from tracelake.dates import DateRangeError, days_between, parse_date
from tracelake.tables import TableError, conform, read_range, snapshot_files, table_spec, write_table


def test_settings_layering_env_then_cli(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("lake_root: /from/file\nspark: {master: 'local[1]', shuffle_partitions: 3}\n")
    settings = load_settings(
        file,
        ["spark.shuffle_partitions=5"],
        environ={"TRACELAKE_LAKE_ROOT": "/from/env", "TRACELAKE_SPARK__MASTER": "local[4]"},
    )
    assert (settings.lake_root, settings.spark.master, settings.spark.shuffle_partitions) == (
        "/from/env",
        "local[4]",
        5,
    )


def test_settings_errors_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match="generator.epcs|epcs"):
        load_settings(overrides=["generator.epcs=-3"], environ={})
    with pytest.raises(ConfigError, match="section.field=value"):
        load_settings(overrides=["nonsense"], environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_dates():
    assert days_between(dt.date(2025, 7, 30), dt.date(2025, 8, 1)) == [
        dt.date(2025, 7, 30),
        dt.date(2025, 7, 31),
        dt.date(2025, 8, 1),
    ]
    with pytest.raises(DateRangeError, match="before start"):
        days_between(dt.date(2025, 8, 2), dt.date(2025, 8, 1))
    with pytest.raises(DateRangeError, match="'2025-13-01'"):
        parse_date("2025-13-01")


def test_unknown_table_lists_known_ones():
    with pytest.raises(TableError, match="known tables: .*silver_scan_events"):
        table_spec("silver_scan_event")


def test_range_write_replaces_only_owned_partitions(spark, lake_settings):
    spec = table_spec("silver_labels")
    lake = lake_settings.lake_root
    ddl = "event_id string, epc_code string, anomaly_type string, confirmed_at timestamp, label_date date, _run_id string"

    def frame(rows):
        return spark.createDataFrame(rows, ddl)

    ts = dt.datetime(2025, 7, 1, 10)
    day1, day2 = dt.date(2025, 7, 1), dt.date(2025, 7, 2)
    write_table(
        frame([("e1", "x", "jump", ts, day1, "r1"), ("e2", "x", "jump", ts, day2, "r1")]),
        spec,
        lake,
        start=day1,
        end=day2,
    )
    version = write_table(
        frame([("e3", "x", "loc_err", ts, day2, "r2")]),
        spec,
        lake,
        start=day2,
        end=day2,
        metadata={"run_id": "r2"},
    )
    assertDataFrameEqual(
        read_range(spark, spec, lake, day1, day2).select("event_id", "_run_id"),
        spark.createDataFrame([("e1", "r1"), ("e3", "r2")], "event_id string, _run_id string"),
    )
    assert version == 1
    # Rows outside the owned range are refused, not silently written.
    with pytest.raises(Exception, match="(?i)replaceWhere|constraint|predicate"):
        write_table(frame([("e4", "x", "jump", ts, day1, "r3")]), spec, lake, start=day2, end=day2)


def test_snapshot_files_are_the_versions_own_files(spark, lake_settings):
    """pyarrow readers of a version read exactly its files, not the files of later versions on disk."""
    import pyarrow.dataset as pads

    spec = table_spec("silver_labels")
    lake = lake_settings.lake_root
    ddl = "event_id string, epc_code string, anomaly_type string, confirmed_at timestamp, label_date date, _run_id string"
    ts, day = dt.datetime(2025, 7, 1, 10), dt.date(2025, 7, 1)
    write_table(spark.createDataFrame([("e1", "x", "jump", ts, day, "r1")], ddl), spec, lake)
    write_table(spark.createDataFrame([("e2", "x", "jump", ts, day, "r2")], ddl), spec, lake)
    first, second = snapshot_files(spark, spec, lake, 0), snapshot_files(spark, spec, lake, 1)
    assert first and second and not set(first) & set(second)
    paths = [f.removeprefix("file:") for f in first]
    assert pads.dataset(paths, format="parquet").to_table(columns=["event_id"]).column(0).to_pylist() == [
        "e1"
    ]


def test_conform_names_missing_columns(spark):
    with pytest.raises(TableError, match="lacks column"):
        conform(spark.range(1).withColumn("event_id", F.lit("a")), table_spec("silver_labels"))


# ---------------------------------------------------------------- the pipeline's declaration


def test_daily_steps_are_declared_once_with_their_commands_and_gates():
    from tracelake.cli import COMMANDS, entrypoint_file
    from tracelake.pipeline import DAILY_STEPS, Gate, in_order, step

    steps = in_order(DAILY_STEPS)
    assert [s.name for s in steps] == [
        "ingest",
        "validate_bronze",
        "validate_silver",
        "build_features",
        "validate_features",
        "score",
        "monitor",
    ]
    assert all(s.command in COMMANDS and s.doc and s.stops_when for s in steps)
    assert all(s.upstream == (before.name,) for before, s in itertools.pairwise(steps))
    assert steps[0].upstream == ()
    checks = {s.name: (s.command, s.args, s.validates) for s in steps if s.gate is Gate.CHECK}
    assert checks == {
        f"validate_{short}": ("validate", ("--table", table), table)
        for short, table in [
            ("bronze", "bronze_scan_events"),
            ("silver", "silver_scan_events"),
            ("features", "features_event_features"),
        ]
    }
    # Gold is validated once, by the score step (which fails on bad scores), never by a second step.
    assert step("score").validates == "gold_scored_events" and step("score").gate is Gate.STOP
    assert [s.name for s in steps if s.validates == "gold_scored_events"] == ["score"]
    assert step("monitor").gate is Gate.WARN
    assert [s.name for s in steps if s.needs_champion] == ["score", "monitor"]
    assert entrypoint_file("score") == "batch_scoring/score.py"
    with pytest.raises(ValueError, match="not declared before it"):
        in_order((step("monitor"), step("score")))


def test_training_steps_are_declared_once_in_order():
    from tracelake.cli import COMMANDS
    from tracelake.pipeline import TRAINING_STEPS, Gate, in_order

    steps = in_order(TRAINING_STEPS)
    assert [(s.name, s.command) for s in steps] == [
        ("build_training_set", "training-set"),
        ("validate_training_set", "validate"),
        ("train", "train"),
        ("promote", "promote"),
    ]
    assert all(s.command in COMMANDS and s.doc and s.stops_when for s in steps)
    assert all(s.upstream == (before.name,) for before, s in itertools.pairwise(steps))
    # The training set is checked before anything trains on it.
    assert [(s.name, s.args, s.validates) for s in steps if s.gate is Gate.CHECK] == [
        ("validate_training_set", ("--table", "training_set"), "training_set")
    ]


def test_the_demo_runs_the_declared_steps_and_a_check_keeps_only_the_days_that_passed(monkeypatch):
    """The demo's runner over the declaration, without Spark: each check narrows the day ranges the
    following steps run on; the other steps run their command's execute once per range."""
    from tracelake import demo
    from tracelake.pipeline import DAILY_STEPS

    calls: list[tuple[str, dt.date, dt.date]] = []
    bodies: list[str] = []
    day = [dt.date(2025, 7, d) for d in range(1, 6)]

    class Recorder(demo.Pipeline):
        def __init__(self) -> None:  # no Spark session
            pass

        def step(self, job, start, end, body, label=""):
            calls.append((label or job, start, end))
            bodies.append(body.__name__)

        def validate(self, table, start, end):
            calls.append((f"validate {table}", start, end))
            # silver fails on day 3
            if table == "silver_scan_events" and start <= day[2] <= end:
                return [r for r in [(start, day[1]), (day[3], end)] if r[0] <= r[1]]
            return [(start, end)]

    def execute(run):
        return None

    def score_and_show_top(run):
        return None

    module = SimpleNamespace(execute=execute, score_and_show_top=score_and_show_top)
    monkeypatch.setattr(demo, "entrypoint_module", lambda command: module)
    pipeline = Recorder()
    ranges = pipeline.run_steps(DAILY_STEPS[:5], [(day[0], day[4])])
    assert ranges == [(day[0], day[1]), (day[3], day[4])]
    assert calls == [
        ("ingest", day[0], day[4]),
        ("validate bronze_scan_events", day[0], day[4]),
        ("validate silver_scan_events", day[0], day[4]),
        ("features", day[0], day[1]),
        ("features", day[3], day[4]),
        ("validate features_event_features", day[0], day[1]),
        ("validate features_event_features", day[3], day[4]),
    ]
    calls.clear()
    bodies.clear()
    pipeline.run_steps(DAILY_STEPS[5:], [(day[3], day[4])], show_top=True)
    assert calls == [("score", day[3], day[4]), ("monitor", day[3], day[4])]
    assert bodies == ["score_and_show_top", "execute"]
