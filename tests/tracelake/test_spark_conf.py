"""The session settings tracelake builds: local-mode defaults that a user's spark.conf still overrides."""

import os

import pytest

from tracelake.config import load_settings
from tracelake.spark import local_cores, spark_conf

SNAPSHOT_PARTITIONS = "spark.databricks.delta.snapshotPartitions"


@pytest.mark.parametrize(
    ("master", "cores"),
    [
        ("local", 1),
        ("local[3]", 3),
        ("local[*]", os.cpu_count()),
        ("local[2,4]", 2),
        ("spark://127.0.0.1:7077", None),
        ("yarn", None),
        ("local-cluster[2,1,1024]", None),
    ],
)
def test_local_cores(master, cores):
    assert local_cores(master) == cores


def test_delta_state_rebuilt_in_one_task_per_local_core():
    conf = spark_conf(load_settings(overrides=["spark.master=local[2]"], environ={}), "t")
    assert conf[SNAPSHOT_PARTITIONS] == "2"


def test_cluster_master_keeps_deltas_default_and_spark_conf_overrides():
    cluster = spark_conf(load_settings(overrides=["spark.master=spark://127.0.0.1:7077"], environ={}), "t")
    assert SNAPSHOT_PARTITIONS not in cluster
    overridden = spark_conf(
        load_settings(
            overrides=["spark.master=local[2]", f'spark.conf={{"{SNAPSHOT_PARTITIONS}": "8"}}'], environ={}
        ),
        "t",
    )
    assert overridden[SNAPSHOT_PARTITIONS] == "8"
