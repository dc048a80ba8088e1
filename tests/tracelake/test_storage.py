"""The lake URI layer: local folders and object-store URIs through one set of functions."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from tracelake import storage
from tracelake.config import ConfigError, load_settings
from tracelake.tables import table_spec


def test_joining_keeps_the_scheme_that_pathlib_would_break():
    assert (
        storage.join("s3a://bucket/lake", "silver", "scan_events") == "s3a://bucket/lake/silver/scan_events"
    )
    assert storage.join("s3a://bucket/lake/", "/silver/") == "s3a://bucket/lake/silver"
    assert storage.join("/data/lake", "a", "b.json") == "/data/lake/a/b.json"
    assert table_spec("silver_scan_events").location("s3a://b/lake") == "s3a://b/lake/silver/scan_events"


def test_lake_roots_normalise_to_one_form(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.normalize_root("./lake") == str(tmp_path / "lake")
    assert storage.normalize_root(f"file://{tmp_path}/lake") == str(tmp_path / "lake")
    assert storage.normalize_root("s3a://bucket/lake/") == "s3a://bucket/lake"
    assert storage.is_local("/x") and storage.is_local("file:///x") and not storage.is_local("s3a://b/x")
    assert storage.arrow_uri("s3a://b/x") == "s3://b/x" and storage.spark_uri("s3://b/x") == "s3a://b/x"


def test_a_lake_uri_without_a_bucket_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="names no bucket") as error:
        load_settings(overrides=["lake_root=s3a:///lake"])
    assert "\n" not in str(error.value)


def test_settings_carry_the_object_store_to_every_python_reader(monkeypatch):
    settings = load_settings(
        overrides=[
            "lake_root=s3a://bucket/lake",
            "storage.s3_endpoint=http://127.0.0.1:9",
            "storage.s3_path_style=true",
        ]
    )
    try:
        assert settings.lake_uri == "s3a://bucket/lake"
        assert storage.current() == storage.ObjectStore("http://127.0.0.1:9", True, "us-east-1")
        options = storage.delta_rs_options()
        assert options["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9" and options["AWS_ALLOW_HTTP"] == "true"
        assert not any("SECRET" in key or "ACCESS_KEY" in key for key in options)
        conf = storage.hadoop_conf(storage.current())
        assert conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
        assert conf["spark.delta.logStore.s3a.impl"] == "io.delta.storage.S3SingleDriverLogStore"
        assert not any("secret" in key.lower() or "access.key" in key.lower() for key in conf)
        fs, path = storage.filesystem("s3a://bucket/lake/x.json")
        assert fs.type_name == "s3" and path == "bucket/lake/x.json"
        with pytest.raises(storage.StorageError, match="object storage"):
            _ = settings.lake_path
    finally:
        storage.use(storage.ObjectStore())


def test_local_file_operations(tmp_path: Path):
    root = str(tmp_path / "lake")
    storage.write_text(storage.join(root, "a", "b.json"), "{}")
    assert storage.read_text(storage.join(root, "a", "b.json")) == "{}"
    assert storage.is_file(storage.join(root, "a", "b.json")) and storage.is_dir(storage.join(root, "a"))
    assert (
        storage.list_dir(storage.join(root, "a")) == ["b.json"]
        and storage.list_dir(storage.join(root, "none")) == []
    )
    assert not list((tmp_path / "lake" / "a").glob(".*"))  # no temporary file left behind
    (tmp_path / "lake" / "c.csv.gz").write_bytes(gzip.compress(b"h1,h2\r\n1,2\n"))
    assert storage.first_line(storage.join(root, "c.csv.gz")) == "h1,h2"
    assert storage.list_files(root, ".json") == [storage.join(root, "a", "b.json")]
    storage.delete_tree(storage.join(root, "a"))
    assert not storage.exists(storage.join(root, "a"))


def test_a_working_folder_of_a_local_lake_is_the_folder_itself(tmp_path: Path):
    folder = storage.WorkingFolder(str(tmp_path / "run"))
    assert folder.local == tmp_path / "run" and not folder.remote
    assert folder.uri_of(folder.local / "checkpoints" / "last.pt") == str(
        tmp_path / "run" / "checkpoints" / "last.pt"
    )
