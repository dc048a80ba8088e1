"""Landing rows -> one row per delivered record, every landing column as text.

Pure transforms: the entrypoint reads the files (CSV and JSON lines as text
lines, so that a quarantined row keeps its raw payload; Parquet as rows) and
attaches what it knows about each file; these functions parse the lines
against the landing schema of ``schemas/tables/landing_*.yaml``.

CSV is RFC 4180: :func:`csv_records` joins the lines of a record whose quoted
field holds a line break, and fields are parsed with ``"`` as both quote and
escape (``"Box, large ""XL"" edition"`` is ``Box, large "XL" edition``). A
UTF-8 byte-order mark is dropped; CRLF line ends are line ends.

Output of :func:`parse_text_lines` and :func:`parse_parquet_rows` (same shape):
``source, _source_file, landing_date, raw_payload, <landing columns as
string>, parse_error, extra_columns``. ``parse_error`` is null for a parsed
row, else ``"<code>: <detail>"`` (``non_utf8`` or ``unparseable``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from tracelake.compat import utf8_with_replacement
from tracelake.tables import TableSpec

# File name endings -> landing format; ``.gz`` text files are read the same way.
FORMATS: dict[str, str] = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
TEXT_FORMATS = ("csv", "json")
COMPRESSED_SUFFIX = ".gz"

NON_UTF8 = "non_utf8"
UNPARSEABLE = "unparseable"


_CORRUPT = "_corrupt_record"
# Commas outside double quotes: counts the fields of a malformed CSV line for its message.
_CSV_SEPARATOR = ',(?=(?:[^"]*"[^"]*")*[^"]*$)'
_REPLACEMENT_CHAR = "\ufffd"
_BOM = "\ufeff"
# RFC 4180: '"' quotes a field, and '""' inside a quoted field is one '"'.
CSV_OPTIONS = {"quote": '"', "escape": '"'}


def landing_format(file_name: str) -> str | None:
    """``csv``, ``json`` or ``parquet`` from a file name (``x.csv.gz`` is csv), else None."""
    name = file_name.lower()
    if name.endswith(COMPRESSED_SUFFIX):
        name = name[: -len(COMPRESSED_SUFFIX)]
        return next((f for ext, f in FORMATS.items() if name.endswith(ext) and f in TEXT_FORMATS), None)
    return next((f for ext, f in FORMATS.items() if name.endswith(ext)), None)


def _clean(value: Column) -> Column:
    """Trimmed text; empty means missing."""
    trimmed = F.trim(value)
    return F.when(trimmed != "", trimmed)


def _utf8_checked(value: Column) -> Column:
    """The line decoded as UTF-8, without a leading byte-order mark. Spark's text reader keeps
    invalid bytes as they are; decoding turns each into U+FFFD, which is what ``non_utf8`` looks for."""
    return F.regexp_replace(utf8_with_replacement(value), f"^{_BOM}", "")


def _without_bom(value: Column) -> Column:
    return F.regexp_replace(value, f"^{_BOM}", "")


def odd_quotes(value: Column) -> Column:
    """True when the line holds an odd number of '"': it opens or closes a quoted field that spans lines."""
    return ((F.length(value) - F.length(F.regexp_replace(value, '"', ""))) % 2) == 1


def csv_records(lines: DataFrame, max_record_lines: int) -> DataFrame:
    """CSV text lines -> CSV records: a line inside a quoted field is joined to the record it continues.

    ``lines`` has ``value``, ``_uri`` (the file), ``_block_start`` and ``_line_index`` (the line's
    place in its file: the split it was read in, then its order there) and ``_multiline_file``
    (the file has a line with an odd number of quotes; only those files are ordered and
    joined, the others pass as they are). A record ends where its quotes balance; a quote left
    open for more than ``max_record_lines`` lines is a stray one and its lines stay records of
    their own. The joined record keeps its line breaks as ``\n``. Returns ``value, _uri``.
    """
    single = lines.where(~F.col("_multiline_file")).select("value", "_uri")
    in_file = Window.partitionBy("_uri").orderBy("_block_start", "_line_index")
    so_far = in_file.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    multi = (
        lines.where(F.col("_multiline_file"))
        .withColumn("_odd", odd_quotes(F.col("value")).cast("int"))
        .withColumn("_starts", ((F.sum("_odd").over(so_far) - F.col("_odd")) % 2 == 0).cast("int"))
        .withColumn("_record", F.sum("_starts").over(so_far))
        .withColumn("_lines", F.count(F.lit(1)).over(Window.partitionBy("_uri", "_record")))
        # A stray quote: each of its lines keeps a key of its own.
        .withColumn(
            "_key",
            F.when(
                F.col("_lines") <= max_record_lines,
                F.struct(
                    F.col("_record").alias("record"),
                    F.lit(-1).cast("long").alias("block"),
                    F.lit(-1).cast("long").alias("line"),
                ),
            ).otherwise(
                F.struct(
                    F.col("_record").alias("record"),
                    F.col("_block_start").cast("long").alias("block"),
                    F.col("_line_index").cast("long").alias("line"),
                )
            ),
        )
        .groupBy("_uri", "_key")
        .agg(F.sort_array(F.collect_list(F.struct("_block_start", "_line_index", "value"))).alias("_parts"))
        .select(F.array_join(F.transform("_parts", lambda part: part["value"]), "\n").alias("value"), "_uri")
    )
    return single.unionByName(multi)


def _case(branches: Sequence[tuple[Column, Column]]) -> Column:
    """CASE WHEN over (condition, value) pairs; null when there are none."""
    expr = F.lit(None)
    for i, (condition, value) in enumerate(branches):
        expr = F.when(condition, value) if i == 0 else expr.when(condition, value)
    return expr


def parse_text_lines(
    lines: DataFrame,
    spec: TableSpec,
    csv_headers: Mapping[int, Sequence[str]],
) -> DataFrame:
    """Parse CSV and JSON-lines text lines of one landing table.

    ``lines`` has ``value, source, _source_file, format, landing_date,
    header_id, header_line``: the raw line, the file it came from,
    its format, its landing partition date, and for CSV the id of the file's
    header (a key of ``csv_headers``, the header's column names in file order)
    and the header line itself, which is dropped. JSON keys outside the
    landing schema come back in ``extra_columns``.
    """
    names = spec.column_names
    text = _utf8_checked(F.col("value"))
    lines = lines.where(
        ~((F.col("format") == "csv") & (_without_bom(F.col("value")) == _without_bom(F.col("header_line"))))
    ).withColumn("raw_payload", text)

    # CSV: one positional schema per distinct header, mapped onto the landing columns by name.
    csv_records, csv_widths = [], []
    for header_id, header in sorted(csv_headers.items()):
        positional = ", ".join(f"`_c{i}` string" for i in range(len(header))) + f", `{_CORRUPT}` string"
        parsed = F.from_csv(
            F.col("raw_payload"), positional, {**CSV_OPTIONS, "columnNameOfCorruptRecord": _CORRUPT}
        )
        fields = [
            (parsed[f"_c{header.index(n)}"] if n in header else F.lit(None).cast("string")).alias(n)
            for n in names
        ]
        is_this = F.col("header_id") == header_id
        csv_records.append((is_this, F.struct(*fields, parsed[_CORRUPT].alias(_CORRUPT))))
        csv_widths.append((is_this, F.lit(len(header))))

    json_schema = ", ".join(f"`{n}` string" for n in names) + f", `{_CORRUPT}` string"
    json_parsed = F.from_json(F.col("raw_payload"), json_schema, {"columnNameOfCorruptRecord": _CORRUPT})
    record = F.when(F.col("format") == "csv", _case(csv_records)).otherwise(json_parsed)
    lines = lines.withColumn("_record", record)

    csv_fields = F.size(F.split(F.col("raw_payload"), _CSV_SEPARATOR))
    parse_error = (
        F.when(
            F.col("raw_payload").contains(_REPLACEMENT_CHAR),
            F.lit(f"{NON_UTF8}: invalid UTF-8 bytes (shown as U+FFFD)"),
        )
        .when(F.trim(F.col("raw_payload")) == "", F.lit(f"{UNPARSEABLE}: blank line"))
        .when(
            (F.col("format") == "csv") & odd_quotes(F.col("raw_payload")),
            F.lit(f"{UNPARSEABLE}: a quoted field is never closed"),
        )
        .when(
            (F.col("format") == "csv") & F.col(f"_record.{_CORRUPT}").isNotNull(),
            F.format_string(f"{UNPARSEABLE}: expected %d fields, got %d", _case(csv_widths), csv_fields),
        )
        .when(
            (F.col("format") == "json")
            & (F.col("_record").isNull() | F.col(f"_record.{_CORRUPT}").isNotNull()),
            F.lit(f"{UNPARSEABLE}: not a JSON object"),
        )
    )
    known = F.array(*[F.lit(n) for n in names])
    extra = F.when(
        F.col("format") == "json",
        F.array_sort(
            F.array_except(
                F.coalesce(F.json_object_keys("raw_payload"), F.array().cast("array<string>")), known
            )
        ),
    ).otherwise(F.array().cast("array<string>"))
    return lines.select(
        "source",
        "_source_file",
        "landing_date",
        "raw_payload",
        *[F.when(parse_error.isNull(), _clean(F.col(f"_record.{n}"))).alias(n) for n in names],
        parse_error.alias("parse_error"),
        F.when(parse_error.isNull(), extra).otherwise(F.array().cast("array<string>")).alias("extra_columns"),
    )


def parse_parquet_rows(rows: DataFrame, spec: TableSpec) -> DataFrame:
    """Landing rows read from Parquet, in the shape of :func:`parse_text_lines`.

    ``rows`` has ``_payload`` (a struct of the file's own columns; the read
    merges the schemas of all files), ``source``, ``_source_file`` and
    ``landing_date``. The raw payload is the row as JSON. A Parquet file's
    extra columns are known from its footer, so ``extra_columns`` is empty.
    """
    present = set(rows.schema["_payload"].dataType.fieldNames())  # type: ignore[attr-defined]
    payload = F.to_json(F.col("_payload"))
    parse_error = F.when(
        payload.contains(_REPLACEMENT_CHAR), F.lit(f"{NON_UTF8}: invalid UTF-8 bytes (shown as U+FFFD)")
    )
    return rows.select(
        "source",
        "_source_file",
        "landing_date",
        payload.alias("raw_payload"),
        *[
            (
                F.when(parse_error.isNull(), _clean(F.col("_payload").getField(n).cast("string")))
                if n in present
                else F.lit(None).cast("string")
            ).alias(n)
            for n in spec.column_names
        ],
        parse_error.alias("parse_error"),
        F.array().cast("array<string>").alias("extra_columns"),
    )


def parsed_ddl(spec: TableSpec) -> str:
    """DDL of the parsed frame of a landing table (e.g. for an empty one)."""
    columns = ", ".join(f"`{n}` string" for n in spec.column_names)
    return (
        f"source string, _source_file string, landing_date date, raw_payload string, {columns}, "
        "parse_error string, extra_columns array<string>"
    )
