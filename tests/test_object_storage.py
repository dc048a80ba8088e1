"""The whole pipeline on an ``s3a://`` lake served by a real S3-compatible server on loopback.

One demo run (generate -> ingest -> validate -> features -> training set -> train -> promote ->
score -> monitor) on ``local[2]`` writes the lake into the bucket; then the daily steps run
again for one day as ``tracelake`` commands on a loopback standalone cluster; delta-rs (the
analysts' query engine) reads the gold table from the same bucket. Nothing may land on the
local disk under the lake's name.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tracelake import standalone, storage
from tracelake.config import load_settings
from tracelake.demo import DEMO_TRAINING_SET
from tracelake.demo import main as demo_main
from tracelake.tables import latest_version, read_table, table_spec
from tracelake.tracking import tracking_target

pytestmark = pytest.mark.slow

# A bucket of its own per run: the embedded MLflow database of an object-store lake is a file of
# this machine keyed by the lake's URI, which a later run must not find.
BUCKET = f"tracelake-e2e-{secrets.token_hex(4)}"
DAYS, EPCS = 10, 400
START = "2025-07-01"
LAST_DAY = "2025-07-10"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lake_args(s3_server, lake: str) -> list[str]:
    return [
        "--lake-root",
        lake,
        "--set",
        f"storage.s3_endpoint={s3_server.endpoint}",
        "--set",
        "storage.s3_path_style=true",
        "--set",
        f"storage.s3_region={s3_server.region}",
    ]


@pytest.fixture(scope="module")
def s3_lake(s3_server, s3a_spark_module, tmp_path_factory):
    """The demo, run once on an s3a:// lake; yields the lake URI and the settings it ran with."""
    s3_server.make_bucket(BUCKET)
    lake = f"s3a://{BUCKET}/lake"
    cwd = tmp_path_factory.mktemp("cwd")
    previous = os.getcwd()
    os.chdir(cwd)  # a stray local write under the lake's name would show up here
    try:
        code = demo_main(
            [
                "--days",
                str(DAYS),
                "--epcs",
                str(EPCS),
                "--start-date",
                START,
                *_lake_args(s3_server, lake),
                "--set",
                "generator.label_delay_days_max=2",
                "--set",
                "spark.master=local[2]",
            ]
        )
    finally:
        os.chdir(previous)
    settings = load_settings(
        overrides=[
            f"lake_root={lake}",
            f"storage.s3_endpoint={s3_server.endpoint}",
            "storage.s3_path_style=true",
            f"storage.s3_region={s3_server.region}",
        ]
    )
    yield {"lake": lake, "settings": settings, "code": code, "cwd": cwd}
    storage.use(storage.ObjectStore())
    database = Path(tracking_target(settings).tracking_uri.removeprefix("sqlite:///"))
    shutil.rmtree(database.parent, ignore_errors=True)


def test_the_whole_pipeline_runs_on_an_s3a_lake_and_keeps_everything_in_the_bucket(s3_lake, s3a_spark_module):
    assert s3_lake["code"] == 0
    lake, settings = s3_lake["lake"], s3_lake["settings"]
    storage.use(settings.storage.object_store())
    scored = read_table(s3a_spark_module, table_spec("gold_scored_events"), lake)
    assert scored.count() > 0 and scored.where("anomaly_score IS NULL").count() == 0
    # Python-side artefacts beside the tables, in the bucket: validation reports, the training run
    # folder with its checkpoints, MLflow's model files, the drift table.
    assert storage.list_files(storage.join(lake, "_validation"), "results.json")
    runs = storage.join(lake, settings.training.runs_dir, DEMO_TRAINING_SET)
    assert storage.list_files(runs, "last.pt") and storage.list_files(runs, "result.json")
    assert storage.list_files(storage.join(lake, "_mlflow", "artifacts"), ".onnx")
    assert read_table(s3a_spark_module, table_spec("monitoring_drift"), lake).count() > 0
    assert list(s3_lake["cwd"].iterdir()) == []  # nothing written to a local ./lake or s3a: folder


def test_delta_rs_reads_the_gold_table_from_the_same_bucket(s3_lake, s3_server, s3a_spark_module, capsys):
    from deltalake import DeltaTable

    from tracelake.query import main as query_main

    rows = read_table(s3a_spark_module, table_spec("gold_scored_events"), s3_lake["lake"]).count()
    storage.use(s3_lake["settings"].storage.object_store())
    gold = storage.join(s3_lake["lake"], table_spec("gold_scored_events").path)
    table = DeltaTable(storage.arrow_uri(gold), storage_options=storage.delta_rs_options())
    assert table.to_pyarrow_table(columns=["anomaly_score"]).num_rows == rows
    # The analysts' tool: `tracelake query` on its DataFusion engine, straight from the bucket.
    code = query_main(
        ["SELECT count(*) AS scored_rows FROM scored_events", *_lake_args(s3_server, s3_lake["lake"])]
    )
    out = capsys.readouterr().out
    assert code == 0 and "scored_rows" in out and str(rows) in out


def test_the_daily_steps_run_on_a_standalone_cluster_against_the_same_bucket(
    s3_lake, s3_server, s3a_spark_module, tmp_path
):
    """ingest -> validate -> features -> score -> monitor for one day, each a `tracelake` command
    submitted to a loopback master with one worker (the executors reach the bucket themselves)."""
    state = standalone.start(
        tmp_path / "cluster", workers=1, memory_per_worker="1g", port=_free_port(), webui_port=_free_port()
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
    }
    common = [
        *_lake_args(s3_server, s3_lake["lake"]),
        "--master",
        state.master_url,
        "--set",
        "spark.shuffle_partitions=2",
        "--set",
        "generator.label_delay_days_max=2",
        "--start-date",
        LAST_DAY,
    ]
    steps = [["ingest"], ["validate", "--table", "silver_scan_events"], ["features"], ["score"], ["monitor"]]
    gold = table_spec("gold_scored_events")
    before = latest_version(s3a_spark_module, gold, s3_lake["lake"])
    try:
        for step in steps:
            done = subprocess.run(
                [sys.executable, "-m", "tracelake.cli", *step, *common],
                check=False,
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, f"{step}: {done.stderr[-2000:]}"
    finally:
        standalone.stop(tmp_path / "cluster")
    assert latest_version(s3a_spark_module, gold, s3_lake["lake"]) > before
    day = read_table(s3a_spark_module, gold, s3_lake["lake"]).where(f"event_date = DATE'{LAST_DAY}'")
    assert day.count() > 0
