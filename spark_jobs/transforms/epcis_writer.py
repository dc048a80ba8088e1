"""The generator's EPCIS 2.0 output: the simulated scans as GS1 EPCIS documents.

The same simulation as the CSV, JSON and Parquet formats (the scan rows of
:mod:`spark_jobs.transforms.generate`), written as ``EPCISDocument`` JSON-LD
files, one per landing day (or per ``epcis.events_per_document`` events):

- each scan is one event: ``Aggregation`` an AggregationEvent (childEPCs),
  every other type an ObjectEvent (epcList), with the type's CBV business step,
  disposition and action from ``schemas/epcis_mapping.yaml``;
- readPoint and bizLocation are the location's SGLN (reference/locations gains
  ``gln`` and ``sgln``); eventTime is local time of the network's region with
  its eventTimeZoneOffset;
- identifiers follow the project conventions of the mapping file (SGTIN EPCs,
  ``urn:tracelake:event:`` event ids, operator/device/product as extensions),
  so that ingest gives back the very scan rows the CSV format delivers.

A document is written as lines by Spark's text writer: a header line, one line
per event (a comma before every event but a document's first), a footer line;
no task holds a document.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from spark_jobs.transforms import epcis_events as ev
from spark_jobs.transforms.epcis_events import gs1_check_digit

FORMAT = "epcis"
# The simulation behind an EPCIS delivery renders column values (the Parquet layout).
SIMULATION_FORMAT = "parquet"
EXTENSION = "jsonld"
CONTEXT_URL = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
SCHEMA_VERSION = "2.0"
SECONDS_PER_HOUR = 3_600
DEGREES_PER_HOUR = 15.0  # of longitude: the region's local time zone
_DAY_MARK = "@DAY@"
_FOOTER_KEY = 2**62  # sorts after every event (k1 = event time in seconds)
_PROJECT_EPC = re.compile(r"^([0-9]{3})\.([0-9]+)\.([0-9]+)\.([0-9]+)\.([0-9]{8})\.([0-9]+)$")


def identifiers() -> dict[str, Any]:
    return ev.mapping()["project_identifiers"]


# ---------------------------------------------------------------------------
# locations


def location_keys(location_ids: Any, company_prefix: str) -> tuple[list[str], list[str]]:
    """GLN and SGLN of each ``LOC-nnnnn`` location: the company prefix, the number as location reference."""
    width = 12 - len(company_prefix)
    glns, sglns = [], []
    for location_id in location_ids:
        number = int(str(location_id).rsplit("-", 1)[-1])
        reference = f"{number:0{width}d}"
        if len(reference) > width:
            raise ValueError(
                f"location {location_id} does not fit a GLN under company prefix {company_prefix}: "
                f"{width} digits of location reference; use a shorter epcis.location_company_prefix"
            )
        glns.append(company_prefix + reference + gs1_check_digit(company_prefix + reference))
        sglns.append(f"urn:epc:id:sgln:{company_prefix}.{reference}.0")
    return glns, sglns


def with_location_keys(locations: pd.DataFrame, company_prefix: str) -> pd.DataFrame:
    """The locations reference frame with its ``gln`` and ``sgln`` columns."""
    glns, sglns = location_keys(locations["location_id"], company_prefix)
    return locations.assign(gln=glns, sgln=sglns)


def zone_offset(longitude: float) -> str:
    """The whole-hour UTC offset of a longitude, as ``+09:00``."""
    hours = round(longitude / DEGREES_PER_HOUR)
    return f"{'+' if hours >= 0 else '-'}{abs(hours):02d}:00"


# ---------------------------------------------------------------------------
# identifiers


def encode_epc(code: str) -> str:
    """A project EPC code as an SGTIN URN when it fits one (see schemas/epcis_mapping.yaml), else a private URN."""
    ids = identifiers()
    match = _PROJECT_EPC.match(code)
    if match:
        header, company, product, lot, made, serial = match.groups()
        width = 12 - len(company)
        digits = int(ids["product_digits"])
        item = (
            product[-width:]
            if len(product) > width and set(product[:-width]) <= {"0"}
            else product.zfill(width)
        )
        decoded = item.zfill(digits) if len(item) < digits else item
        if header == ids["epc_header"] and width > 0 and len(item) == width and decoded == product:
            return f"urn:epc:id:sgtin:{company}.{ids['sgtin_indicator']}{item}.{lot}.{made}.{serial}"
    return ids["epc_urn_prefix"] + quote(code, safe="-._~")


def encode_event_id(event_id: str) -> str:
    return identifiers()["event_id_urn_prefix"] + quote(event_id, safe="-._~")


def event_shapes() -> dict[str, dict[str, str]]:
    """Project event type -> the EPCIS shape the generator writes (the first row of the type in the mapping)."""
    shapes: dict[str, dict[str, str]] = {}
    for row in ev.mapping()["event_types"]:
        if "action" in row:
            shapes.setdefault(row["event_type"], row)
    return shapes


def context() -> list[Any]:
    ids = identifiers()
    return [CONTEXT_URL, {ids["prefix"]: ids["namespace"]}]


def _local_times(iso_utc: np.ndarray, offset: str) -> np.ndarray:
    sign = -1 if offset.startswith("-") else 1
    seconds = sign * (int(offset[1:3]) * SECONDS_PER_HOUR + int(offset[4:6]) * 60)
    utc = np.array([t.removesuffix("Z") for t in iso_utc], dtype="datetime64[s]")
    return np.char.add(
        np.datetime_as_string(utc + np.timedelta64(seconds, "s"), unit="s").astype(str), offset
    )


def render_events(scans: pd.DataFrame, sgln: Mapping[str, str], offset: str) -> list[str]:
    """Scan rows (landing_scans columns, text) -> one EPCIS event (compact JSON) each."""
    ids = identifiers()
    shapes = event_shapes()
    extension = {column: f"{ids['prefix']}:{name}" for column, name in ids["extensions"].items()}
    local = _local_times(scans["event_time"].to_numpy(), offset)
    out = []
    for i, row in enumerate(scans.itertuples(index=False)):
        shape = shapes.get(row.event_type)
        if shape is None:
            raise ValueError(
                f"event type {row.event_type!r} has no EPCIS shape in schemas/epcis_mapping.yaml"
            )
        place = {"id": sgln[row.location_id]}
        epcs = [encode_epc(row.epc_code)]
        event: dict[str, Any] = {
            "type": shape["epcis_type"],
            "eventID": encode_event_id(row.event_id),
            "eventTime": str(local[i]),
            "eventTimeZoneOffset": offset,
            **({"recordTime": row.record_time} if getattr(row, "record_time", None) else {}),
            ("childEPCs" if shape["epcis_type"] == "AggregationEvent" else "epcList"): epcs,
            "action": shape["action"],
            "bizStep": shape["biz_step"],
            "disposition": shape["disposition"],
            "readPoint": place,
            "bizLocation": place,
        }
        for column, key in extension.items():
            value = getattr(row, column)
            if value is not None:
                event[key] = value
        out.append(json.dumps(event, separators=(",", ":"), ensure_ascii=False))
    return out


def document_header(day: str) -> str:
    """Everything of a day's document before its first event (creation date: the day's end, deterministic)."""
    head = json.dumps(
        {
            "@context": context(),
            "type": "EPCISDocument",
            "schemaVersion": SCHEMA_VERSION,
            "creationDate": f"{day}T23:59:59Z",
        },
        separators=(",", ":"),
    )
    return head[:-1] + ',"epcisBody":{"eventList":['


DOCUMENT_FOOTER = "]}}"


# ---------------------------------------------------------------------------
# Spark


def document_lines(
    scans: DataFrame, sgln: Mapping[str, str], offset: str, events_per_document: int
) -> DataFrame:
    """Scan rows (``date, k1, k2`` + landing columns) -> ``date, doc, k1, k2, value``: every line of every document."""
    columns = list(scans.columns)
    text_columns = [c for c in columns if c not in ("date", "k1", "k2")]

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            yield pd.DataFrame(
                {
                    "date": batch["date"],
                    "k1": batch["k1"],
                    "k2": batch["k2"],
                    "value": render_events(batch[text_columns], sgln, offset),
                }
            )

    events = scans.mapInPandas(run, "date string, k1 long, k2 string, value string")
    position = F.row_number().over(Window.partitionBy("date").orderBy("k1", "k2")) - 1
    events = events.withColumn("_n", position)
    doc = (
        (F.col("_n") / F.lit(events_per_document)).cast("long")
        if events_per_document
        else F.lit(0).cast("long")
    )
    first = (F.col("_n") % F.lit(events_per_document) == 0) if events_per_document else (F.col("_n") == 0)
    lines = events.select(
        "date",
        doc.alias("doc"),
        "k1",
        "k2",
        F.when(first, F.col("value")).otherwise(F.concat(F.lit(","), F.col("value"))).alias("value"),
    )
    before, _, after = document_header(_DAY_MARK).partition(
        _DAY_MARK
    )  # the header is the same but for the day
    bounds = lines.select("date", "doc").distinct()
    heads = bounds.select(
        "date",
        "doc",
        F.lit(-1).cast("long").alias("k1"),
        F.lit("").alias("k2"),
        F.concat(F.lit(before), F.col("date"), F.lit(after)).alias("value"),
    )
    feet = bounds.select(
        "date",
        "doc",
        F.lit(_FOOTER_KEY).cast("long").alias("k1"),
        F.lit("").alias("k2"),
        F.lit(DOCUMENT_FOOTER).alias("value"),
    )
    return lines.unionByName(heads).unionByName(feet)


def write_documents(lines: DataFrame, staged: Path, partitions: int) -> None:
    """One text file per document under ``staged/date=D/doc=N/``."""
    (
        lines.repartition(partitions, "date", "doc")
        .sortWithinPartitions("date", "doc", "k1", "k2")
        .select("date", "doc", "value")
        .write.partitionBy("date", "doc")
        .text(str(staged))
    )


def publish(staged: Path, root: Path, days: list[dt.date], tmp: Path) -> list[Path]:
    """Move each day's documents to ``root/date=D/part-NNNNN.jsonld`` (a day's folder replaced as a whole)."""
    published: list[Path] = []
    for day in days:
        name = f"date={day.isoformat()}"
        folders = sorted((staged / name).glob("doc=*"), key=lambda p: int(p.name[len("doc=") :]))
        target = root / name
        old = tmp / "old-epcis" / name
        if target.exists():
            old.parent.mkdir(parents=True, exist_ok=True)
            os.rename(target, old)
        if not folders:
            continue
        ready = tmp / "ready-epcis" / name
        ready.mkdir(parents=True)
        for folder in folders:
            parts = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
            if len(parts) != 1:
                raise RuntimeError(f"document {folder} was written as {len(parts)} files instead of one")
            dest = ready / f"part-{int(folder.name[len('doc=') :]):05d}.{EXTENSION}"
            os.rename(parts[0], dest)
            published.append(target / dest.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(ready, target)
    return published


def remove(root: Path, days: list[dt.date], tmp: Path) -> None:
    """Take a window's EPCIS deliveries away (another format now delivers those days)."""
    publish(tmp / "nothing-staged", root, days, tmp)
