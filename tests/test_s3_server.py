"""Round trips through the real loopback S3 server (SeaweedFS): Spark over S3A with Delta,
delta-rs and pyarrow's S3 file system reading what Spark wrote, and the server's own checks."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

if TYPE_CHECKING:
    from tests.conftest import S3Server


def _new_bucket(s3_server: S3Server) -> str:
    bucket = f"tracelake-{secrets.token_hex(4)}"
    s3_server.make_bucket(bucket)
    return bucket


def _write_delta(spark: SparkSession, uri: str) -> None:
    """Version 0 with 40 rows, version 1 appends 10 more: two commits in _delta_log."""
    rows = spark.range(0, 40).withColumn("site", F.concat(F.lit("site-"), (F.col("id") % 3).cast("string")))
    rows.write.format("delta").mode("overwrite").save(uri)
    more = spark.range(40, 50).withColumn("site", F.lit("site-9"))
    more.write.format("delta").mode("append").save(uri)


def _arrow_s3(s3_server: S3Server) -> pafs.S3FileSystem:
    """Credentials come from the AWS_* variables the fixture exported (the SDK's default chain)."""
    return pafs.S3FileSystem(
        endpoint_override=s3_server.endpoint.removeprefix("http://"),
        scheme="http",
        region=s3_server.region,
    )


@pytest.mark.spark35
def test_the_server_refuses_unsigned_and_wrongly_signed_requests(
    s3_server: S3Server,
) -> None:
    import urllib.error
    import urllib.request

    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    assert s3_server.endpoint.startswith("http://127.0.0.1:")
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(s3_server.endpoint + "/", timeout=5)
    assert anonymous.value.code == 403

    impostor = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key="not-" + s3_server.secret_key,
        region_name=s3_server.region,
        config=Config(s3={"addressing_style": "path"}),
    )
    with pytest.raises(ClientError, match="SignatureDoesNotMatch|AccessDenied"):
        impostor.list_buckets()

    bucket = _new_bucket(s3_server)
    assert bucket in {entry["Name"] for entry in s3_server.client().list_buckets()["Buckets"]}


@pytest.mark.slow
@pytest.mark.spark35
def test_spark_writes_a_delta_table_to_s3a_and_reads_it_back(
    s3a_spark: SparkSession, s3_server: S3Server
) -> None:
    uri = f"s3a://{_new_bucket(s3_server)}/t"
    _write_delta(s3a_spark, uri)

    table = s3a_spark.read.format("delta").load(uri)
    assert table.count() == 50
    assert table.agg(F.sum("id")).first()[0] == sum(range(50))
    history = s3a_spark.sql(f"DESCRIBE HISTORY delta.`{uri}`").select("version", "operation").collect()
    assert sorted((row.version, row.operation) for row in history) == [
        (0, "WRITE"),
        (1, "WRITE"),
    ]
    version_zero = s3a_spark.read.format("delta").option("versionAsOf", 0).load(uri)
    assert version_zero.count() == 40


@pytest.mark.slow
@pytest.mark.spark35
def test_delta_rs_reads_the_table_spark_wrote(s3a_spark: SparkSession, s3_server: S3Server) -> None:
    from deltalake import DeltaTable

    bucket = _new_bucket(s3_server)
    _write_delta(s3a_spark, f"s3a://{bucket}/t")

    # Keys from the AWS_* environment; only the endpoint's particulars are options.
    storage_options = {
        "AWS_ENDPOINT_URL": s3_server.endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_REGION": s3_server.region,
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
    }
    table = DeltaTable(f"s3://{bucket}/t", storage_options=storage_options)
    assert table.version() == 1
    assert {field.name for field in table.schema().fields} == {"id", "site"}
    files = table.file_uris()
    assert files and all(uri.startswith(f"s3://{bucket}/t/") and uri.endswith(".parquet") for uri in files)
    older = DeltaTable(f"s3://{bucket}/t", storage_options=storage_options, version=0)
    assert len(older.file_uris()) < len(files)

    # Rows through pyarrow: the 3.5 line's deltalake has no pyarrow extra (it lists files only).
    arrow = _arrow_s3(s3_server)
    ids = [
        value
        for uri in files
        for value in pq.read_table(uri.removeprefix("s3://"), filesystem=arrow, columns=["id"])
        .column("id")
        .to_pylist()
    ]
    assert sorted(ids) == list(range(50))


@pytest.mark.slow
@pytest.mark.spark35
def test_pyarrow_lists_the_delta_table_spark_wrote(s3a_spark: SparkSession, s3_server: S3Server) -> None:
    bucket = _new_bucket(s3_server)
    _write_delta(s3a_spark, f"s3a://{bucket}/t")

    arrow = _arrow_s3(s3_server)
    listed = arrow.get_file_info(pafs.FileSelector(f"{bucket}/t", recursive=True))
    files = {
        info.path.removeprefix(f"{bucket}/t/"): info for info in listed if info.type == pafs.FileType.File
    }
    commits = sorted(name for name in files if name.startswith("_delta_log/") and name.endswith(".json"))
    assert commits == [
        "_delta_log/00000000000000000000.json",
        "_delta_log/00000000000000000001.json",
    ]
    data_files = [name for name in files if name.endswith(".parquet") and not name.startswith("_delta_log/")]
    assert data_files and all(files[name].size > 0 for name in data_files)
    with arrow.open_input_stream(f"{bucket}/t/_delta_log/00000000000000000000.json") as commit:
        assert b'"protocol"' in commit.read()
