"""One local Spark session for the whole test run: UTC, few shuffle partitions.

Also a real S3-compatible server on loopback (SeaweedFS, `scripts/s3-server`) for the tests of
an object-storage lake, and the shared session pointed at it through S3A.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tracelake.config import Settings, load_settings
from tracelake.spark import build_spark, spark_line

# The longest files of a full run (`--durations`, slowest first). Under `-n 2 --dist loadfile
# --no-loadscope-reorder` a worker takes the next file in collection order when it is free, so these
# start first and the short files fill the other worker; a long file started last would run alone.
LONGEST_FILES = (
    "tests/dags/test_daily_dag_runs.py",
    "tests/spark_jobs/test_epcis_generate.py",
    "tests/test_object_storage.py",
    "tests/spark_jobs/test_ingest_integration.py",
    "tests/dags/test_dags.py",
    "tests/spark_jobs/test_train.py",
    "tests/spark_jobs/test_epcis_ingest.py",
    "tests/batch_scoring/test_score.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest files first, each file kept whole and in its own order."""
    root = config.rootpath
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))


@pytest.fixture(scope="session")
def test_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    lake = tmp_path_factory.mktemp("lake")
    return load_settings(
        overrides={
            "lake_root": str(lake),
            "spark.master": "local[2]",
            "spark.shuffle_partitions": 2,
            "spark.driver_memory": "2g",
            "spark.conf": {
                "spark.ui.enabled": "false",
                "spark.ui.showConsoleProgress": "false",
                "spark.default.parallelism": "2",
                "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("warehouse")),
                "spark.driver.extraJavaOptions": f"-Duser.timezone=UTC -Dderby.system.home={lake}",
            },
        },
        environ={},
    )


@pytest.fixture(scope="session")
def spark(test_settings: Settings) -> Iterator[SparkSession]:
    session = build_spark(test_settings, "tests")
    yield session
    session.stop()


@pytest.fixture()
def lake_settings(test_settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose lake is a fresh folder for this test (same Spark session)."""
    return test_settings.model_copy(update={"lake_root": str(tmp_path / "lake")})


@pytest.fixture(scope="session")
def line_loader() -> str:
    """The training loader this Spark line is tested with: petastorm where it is installed (the 3.5
    line), else the Arrow loader (the default of every line)."""
    try:
        import petastorm  # noqa: F401
    except ImportError:
        return "arrow"
    return "petastorm"


REPO_ROOT = Path(__file__).resolve().parent.parent
S3_SERVER_SCRIPT = REPO_ROOT / "scripts" / "s3-server"
S3_SERVER_BINARY = REPO_ROOT / ".s3" / "weed"
S3_ENV_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


@dataclass(frozen=True)
class S3Server:
    """A running loopback S3 endpoint and the one identity it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str

    def client(self):  # -> botocore S3 client (boto3 ships no type stubs)
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}),
        )

    def make_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)


def _free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS's S3 gateway on a free loopback port with a throwaway data folder.

    Its credentials are generated here and exported as the standard AWS_* variables for the
    session (so S3A's, boto3's and pyarrow's default provider chains find them), then restored.
    """
    if not S3_SERVER_BINARY.exists():
        pytest.fail(
            f"{S3_SERVER_BINARY} is missing: run `make setup` (it builds the loopback S3 server)",
            pytrace=False,
        )
    data_dir = tmp_path_factory.mktemp("s3-server")
    access_key, secret_key, region = (
        "tl" + secrets.token_hex(9).upper(),
        secrets.token_urlsafe(30),
        "us-east-1",
    )
    credentials = {
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
    }
    started = subprocess.run(
        [
            sys.executable,
            str(S3_SERVER_SCRIPT),
            "start",
            "--port",
            str(_free_loopback_port()),
            "--dir",
            str(data_dir),
        ],
        env={**os.environ, **credentials},
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    if started.returncode != 0:
        pytest.fail(f"loopback S3 server did not start: {started.stderr.strip()}", pytrace=False)
    server = S3Server(started.stdout.strip().splitlines()[-1], access_key, secret_key, region)
    saved = {key: os.environ.get(key) for key in S3_ENV_KEYS}
    os.environ.update(credentials)
    try:
        yield server
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        subprocess.run(
            # The data folder is thrown away: no need to wait ~16 s for a graceful stop.
            [
                sys.executable,
                str(S3_SERVER_SCRIPT),
                "stop",
                "--dir",
                str(data_dir),
                "--grace",
                "2",
            ],
            check=False,
            timeout=60,
        )


# S3A credential providers of each Spark line's hadoop-aws (AWS SDK v2 from Hadoop 3.4, v1 before):
# the environment first, then JVM system properties, which (unlike the environment of an
# already running JVM) can be set after the shared session started.
_S3A_CREDENTIAL_PROVIDERS = {
    "v2": "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider,"
    "software.amazon.awssdk.auth.credentials.SystemPropertyCredentialsProvider",
    "v1": "com.amazonaws.auth.EnvironmentVariableCredentialsProvider,com.amazonaws.auth.SystemPropertiesCredentialsProvider",
}
# SDK v2 reads aws.secretAccessKey, SDK v1 aws.secretKey; both read aws.accessKeyId.
_JVM_CREDENTIAL_PROPERTIES = ("aws.accessKeyId", "aws.secretAccessKey", "aws.secretKey")


@contextmanager
def _s3a_configured(spark: SparkSession, s3_server: S3Server) -> Iterator[SparkSession]:
    """The shared session with S3A pointed at the loopback server (keys never in the Hadoop conf)."""
    hadoop_conf = spark._jsc.hadoopConfiguration()  # type: ignore[union-attr]
    sdk = "v1" if spark_line() == "3.5" else "v2"
    settings = {
        "fs.s3a.endpoint": s3_server.endpoint,
        "fs.s3a.endpoint.region": s3_server.region,
        "fs.s3a.path.style.access": "true",
        "fs.s3a.connection.ssl.enabled": "false",
        "fs.s3a.aws.credentials.provider": _S3A_CREDENTIAL_PROVIDERS[sdk],
    }
    for key, value in settings.items():
        hadoop_conf.set(key, value)
    system = spark._jvm.java.lang.System  # type: ignore[union-attr]
    values = (s3_server.access_key, s3_server.secret_key, s3_server.secret_key)
    for name, value in zip(_JVM_CREDENTIAL_PROPERTIES, values, strict=True):
        system.setProperty(name, value)
    try:
        yield spark
    finally:
        for name in _JVM_CREDENTIAL_PROPERTIES:
            system.clearProperty(name)


@pytest.fixture()
def s3a_spark(spark: SparkSession, s3_server: S3Server) -> Iterator[SparkSession]:
    """The shared session with S3A pointed at the loopback server, for one test."""
    with _s3a_configured(spark, s3_server) as session:
        yield session


@pytest.fixture(scope="module")
def s3a_spark_module(spark: SparkSession, s3_server: S3Server) -> Iterator[SparkSession]:
    """The same for a whole module (a lake built once and read by several tests)."""
    with _s3a_configured(spark, s3_server) as session:
        yield session
