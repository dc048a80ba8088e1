"""The few places where Spark 3.5 and Spark 4.x differ, each in one small function.

The project runs unchanged on both lines (Spark 4.2 by default, 3.5 for vendor LTS
clusters); code that needs a different API per line calls a function of this module
instead of testing versions itself.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import version

from pyspark.sql import Column
from pyspark.sql import functions as F


@lru_cache(maxsize=1)
def spark_major() -> int:
    """The major version of the installed pyspark (3 or 4)."""
    return int(version("pyspark").split(".")[0])


def utf8_with_replacement(text: Column) -> Column:
    """A string column with every invalid UTF-8 byte sequence replaced by U+FFFD.

    Spark's text reader keeps invalid bytes as they are. On Spark 3.5 ``decode(…, 'UTF-8')``
    replaces them; Spark 4 makes ``decode`` raise on malformed input (ANSI-style coding
    errors) and offers ``make_valid_utf8`` for the replacing behaviour instead.
    """
    if spark_major() >= 4:
        return F.make_valid_utf8(text)
    return F.decode(text.cast("binary"), "UTF-8")
