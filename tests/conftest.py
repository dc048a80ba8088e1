"""One local Spark session for the whole test run: UTC, few shuffle partitions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyspark.sql import SparkSession

from tracelake.config import Settings, load_settings
from tracelake.spark import build_spark


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
