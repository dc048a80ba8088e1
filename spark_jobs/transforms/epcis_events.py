"""EPCIS 2.0 documents -> events -> one record per EPC (plain Python, run inside Spark tasks).

A document can be hundreds of MB, so nothing here holds one whole: a file is
read twice as a stream with ijson (C backend): once for its envelope (every
member but the events, whose tokens are skipped) and once for its events, one
at a time, handed on in batches. Each event is then checked against GS1's
EPCIS 2.0 JSON Schema (the eventList item definition of the document schema,
so an event is judged exactly as inside its document), its identifiers and
vocabulary are normalised, and it becomes one record per EPC it names.

Vocabulary and identifiers (see docs/epcis.md):

- CBV values arrive as bare words (``shipping``), as GS1 web URIs
  (``https://ref.gs1.org/cbv/BizStep-shipping``) or as EPCIS 1.x URNs
  (``urn:epcglobal:cbv:bizstep:shipping``); all become the bare word.
  Other vocabularies keep their URI.
- EPCs arrive as EPC pure-identity URNs (``urn:epc:id:sgtin:0614141.107346.2017``)
  or GS1 Digital Link URIs (``https://id.gs1.org/01/00614141073467/21/2017``);
  both give scheme, company prefix, item reference (with the indicator) and serial.
- eventTime is converted to UTC with its own offset (or eventTimeZoneOffset
  when it names none); an event without eventID gets the canonical EPCIS
  event hash (GS1's reference implementation, ``ni:///sha-256;...``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import yaml

from tracelake.tables import SCHEMAS_DIR

MAPPING_FILE = SCHEMAS_DIR / "epcis_mapping.yaml"

EVENT_TYPES = (
    "ObjectEvent",
    "AggregationEvent",
    "TransactionEvent",
    "TransformationEvent",
    "AssociationEvent",
)
# Where the events of each document type lie (ijson prefixes, ``item`` = an array element).
EVENT_LIST_PREFIXES = {
    "EPCISDocument": "epcisBody.eventList",
    "EPCISQueryDocument": "epcisBody.queryResults.resultsBody.eventList",
}
_ITEM_PREFIXES = tuple(p + ".item" for p in EVENT_LIST_PREFIXES.values())

# Quarantine reason codes of EPCIS input (``"<code>: <detail>"``).
NON_UTF8 = "non_utf8"
UNPARSEABLE = "unparseable"
SCHEMA_VIOLATION = "schema_violation"
BAD_TYPE = "bad_type"

# EPC fields of each event type -> the role of the EPCs they name.
EPC_FIELDS = (
    ("epcList", "epc"),
    ("parentID", "parent"),
    ("childEPCs", "child"),
    ("inputEPCList", "input"),
    ("outputEPCList", "output"),
)
QUANTITY_FIELDS = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")
# Members with a column of their own; every other member of an event is an extension.
MODELLED = {
    "type",
    "eventID",
    "eventTime",
    "eventTimeZoneOffset",
    "recordTime",
    "action",
    "bizStep",
    "disposition",
    "readPoint",
    "bizLocation",
    "bizTransactionList",
    "sourceList",
    "destinationList",
    "sensorElementList",
    "errorDeclaration",
    "@context",
    *[f for f, _ in EPC_FIELDS],
    *QUANTITY_FIELDS,
}

# CBV vocabularies in their three spellings.
_CBV_FORMS = {
    "bizStep": (
        "https://ref.gs1.org/cbv/BizStep-",
        "http://ref.gs1.org/cbv/BizStep-",
        "urn:epcglobal:cbv:bizstep:",
        "cbv:BizStep-",
        "https://gs1.org/voc/BizStep-",
    ),
    "disposition": (
        "https://ref.gs1.org/cbv/Disp-",
        "http://ref.gs1.org/cbv/Disp-",
        "urn:epcglobal:cbv:disp:",
        "cbv:Disp-",
        "https://gs1.org/voc/Disp-",
    ),
}
CBV_URI = {"bizStep": "https://ref.gs1.org/cbv/BizStep-", "disposition": "https://ref.gs1.org/cbv/Disp-"}

_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")
_HAS_ZONE = re.compile(r"(Z|z|[+-]\d{2}:?\d{2})$")
_GS1_DL_KEYS = {
    "01": "sgtin",
    "00": "sscc",
    "8003": "grai",
    "8004": "giai",
    "414": "sgln",
    "8018": "gsrn",
    "253": "gdti",
    "255": "sgcn",
    "8010": "cpi",
    "417": "pgln",
}
# Digital Link key qualifiers: the serial-like component that follows a primary key.
_DL_QUALIFIERS = {"01": "21", "414": "254", "8010": "8011"}


class DocumentError(ValueError):
    """A document cannot be read as JSON (the whole file is quarantined)."""


@lru_cache(maxsize=1)
def mapping() -> dict[str, Any]:
    """``schemas/epcis_mapping.yaml``: event mapping rows and the project's identifier conventions."""
    return yaml.safe_load(MAPPING_FILE.read_text())


# ---------------------------------------------------------------------------
# vocabulary, time, identifiers


def normalize_cbv(value: Any, field: str) -> str | None:
    """A CBV bizStep or disposition as its bare word; a non-CBV URI as delivered."""
    if value is None:
        return None
    text = str(value).strip()
    for prefix in _CBV_FORMS[field]:
        if text.lower().startswith(prefix.lower()):
            return text[len(prefix) :].lower()
    return text if ":" in text else text.lower()


def _offset(text: str | None) -> dt.timedelta | None:
    match = _OFFSET.match(text or "")
    if not match:
        return None
    sign, hours, minutes = match.groups()
    delta = dt.timedelta(hours=int(hours), minutes=int(minutes))
    return -delta if sign == "-" else delta


def utc_time(text: Any, zone_offset: Any = None) -> dt.datetime | None:
    """An xsd:dateTime as a naive UTC datetime: its own offset, else ``zone_offset``; None when unreadable."""
    if not isinstance(text, str):
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        delta = _offset(zone_offset) if isinstance(zone_offset, str) else None
        if delta is None:
            return None
        return parsed - delta
    return parsed.astimezone(dt.UTC).replace(tzinfo=None)


def gs1_check_digit(digits: str) -> str:
    """The GS1 mod-10 check digit of a GTIN/GLN/SSCC body."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return str((10 - total % 10) % 10)


@dataclass(frozen=True)
class Epc:
    """An identifier split into its GS1 parts (``form``: urn, digital_link or other)."""

    scheme: str | None
    form: str
    company_prefix: str | None = None
    item_reference: str | None = None
    serial: str | None = None


def parse_epc(uri: str, dl_company_prefix_length: int) -> Epc:
    """EPC pure-identity URN or GS1 Digital Link URI -> scheme, company prefix, item reference, serial."""
    if uri.startswith("urn:epc:id:"):
        scheme, _, rest = uri[len("urn:epc:id:") :].partition(":")
        parts = rest.split(".", 2)
        company = parts[0] or None
        item = parts[1] if len(parts) > 1 else None
        serial = unquote(parts[2]) if len(parts) > 2 else None
        if scheme in ("giai", "gsrn", "gsrnp", "sscc", "gdti", "pgln") and len(parts) == 2:
            item, serial = (None, unquote(parts[1])) if scheme == "giai" else (parts[1], None)
        return Epc(scheme.lower() or None, "urn", company, item, serial)
    split = urlsplit(uri)
    if split.scheme in ("http", "https"):
        segments = [unquote(s) for s in split.path.split("/") if s]
        for i, key in enumerate(segments[:-1]):
            if key in _GS1_DL_KEYS and segments[i + 1]:
                return _digital_link(key, segments[i + 1], segments[i + 2 :], dl_company_prefix_length)
    return Epc(None, "other")


def _digital_link(key: str, value: str, rest: list[str], length: int) -> Epc:
    scheme = _GS1_DL_KEYS[key]
    qualifier = _DL_QUALIFIERS.get(key)
    serial = None
    if qualifier is not None and len(rest) >= 2 and rest[0] == qualifier:
        serial = rest[1]
    if key == "01" and len(value) == 14 and value.isdigit():  # indicator, company, item, check
        return Epc(scheme, "digital_link", value[1 : 1 + length], value[0] + value[1 + length : 13], serial)
    if key == "00" and len(value) == 18 and value.isdigit():  # extension, company, serial reference, check
        return Epc(scheme, "digital_link", value[1 : 1 + length], value[0] + value[1 + length : 17], None)
    if key in ("414", "417") and len(value) == 13 and value.isdigit():
        return Epc(scheme, "digital_link", value[:length], value[length:12], serial)
    if (
        key == "8003" and len(value) >= 14 and value[:14].isdigit()
    ):  # 0 + company + asset type + check + serial
        return Epc(scheme, "digital_link", value[1 : 1 + length], value[1 + length : 13], value[14:] or None)
    if key in ("01", "00", "414", "417", "8003"):  # a numeric key of the wrong shape: not a Digital Link
        return Epc(None, "other")
    return Epc(scheme, "digital_link", value[:length], None, value[length:] or None)


def location_gln(uri: Any) -> str | None:
    """The 13-digit GLN a readPoint/bizLocation id names (SGLN URN or Digital Link), else None."""
    if not isinstance(uri, str):
        return None
    if uri.startswith("urn:epc:id:sgln:"):
        parts = uri[len("urn:epc:id:sgln:") :].split(".")
        body = "".join(parts[:2])
        if len(parts) >= 2 and len(body) == 12 and body.isdigit():
            return body + gs1_check_digit(body)
        return None
    segments = [s for s in urlsplit(uri).path.split("/") if s]
    for i, key in enumerate(segments[:-1]):
        if key == "414" and len(segments[i + 1]) == 13 and segments[i + 1].isdigit():
            return segments[i + 1]
    return None


def context_prefixes(context: Any) -> dict[str, str]:
    """Prefix -> namespace IRI declared in a JSON-LD @context (string entries are remote contexts)."""
    entries = context if isinstance(context, list) else [context]
    prefixes: dict[str, str] = {}
    for entry in entries:
        if isinstance(entry, dict):
            prefixes.update({k: v for k, v in entry.items() if isinstance(v, str) and not k.startswith("@")})
    return prefixes


def expand_key(key: str, prefixes: Mapping[str, str]) -> str:
    """``tl:operatorID`` -> ``https://tracelake.dev/epcis/operatorID`` when ``tl`` is declared; else as is."""
    prefix, sep, name = key.partition(":")
    return prefixes[prefix] + name if sep and prefix in prefixes else key


def event_hash(event: Mapping[str, Any], context: Any) -> str:
    """The canonical EPCIS event hash (CBV 2.0, sha-256) by GS1's reference implementation."""
    from epcis_event_hash_generator import hash_generator, json_to_py

    document = {"@context": context or [], "epcisBody": {"eventList": [json.loads(json.dumps(event))]}}
    hashes = hash_generator.epcis_hashes_from_events(json_to_py.event_list_from_epcis_document_json(document))
    if not hashes:
        raise ValueError("the event hash generator produced no hash for this event")
    return str(hashes[0])


# ---------------------------------------------------------------------------
# streaming a document


@dataclass
class Envelope:
    """A document without its events: what validates the document itself."""

    document: Any
    events: int
    event_prefix: str | None


def _json_error(exc: Exception) -> DocumentError:
    text = str(exc)
    code = NON_UTF8 if "utf" in text.lower() or isinstance(exc, UnicodeDecodeError) else UNPARSEABLE
    return DocumentError(f"{code}: not a JSON document ({text.strip()[:200]})")


def read_envelope(stream: IO[bytes]) -> Envelope:
    """Every member of the document but its events (their tokens are skipped), and how many events it has."""
    import ijson
    from ijson.common import ObjectBuilder

    builder = ObjectBuilder()
    count, seen_prefix = 0, None
    try:
        for prefix, event, value in ijson.parse(stream, use_float=True):
            if prefix.startswith(_ITEM_PREFIXES):
                if prefix in _ITEM_PREFIXES and event not in ("end_map", "end_array", "map_key"):
                    count += 1
                    seen_prefix = prefix[: -len(".item")]
                continue
            builder.event(event, value)
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise _json_error(exc) from exc
    document = getattr(builder, "value", None)
    return Envelope(document, count, seen_prefix)


def iter_events(stream: IO[bytes], event_prefix: str) -> Iterator[Any]:
    """The events under ``event_prefix``, one at a time."""
    import ijson

    try:
        yield from ijson.items(stream, event_prefix + ".item", use_float=True)
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise _json_error(exc) from exc


def event_list_prefix(document: Any) -> str | None:
    """Where a document's events are, from its type (None: not an EPCIS document)."""
    if isinstance(document, dict):
        return EVENT_LIST_PREFIXES.get(str(document.get("type")))
    return None


def head_text(stream: IO[bytes], chars: int) -> str:
    """The start of a file as text (invalid bytes replaced), for a whole-file quarantine row."""
    return stream.read(chars * 4).decode("utf-8", errors="replace")[:chars]


# ---------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class Validators:
    document: Callable[[Any], Any]
    event: Callable[[Any], Any]


_VALIDATORS: dict[str, Validators] = {}


def validators(schema_text: str) -> Validators:
    """GS1's schema compiled (once per Python worker): the whole document, and one eventList item."""
    import fastjsonschema

    key = hashlib.sha256(schema_text.encode()).hexdigest()
    if key not in _VALIDATORS:
        schema = json.loads(schema_text)
        schema.pop("$id", None)  # resolved locally, never fetched
        item_ref = schema["definitions"]["eventList"]["items"]["$ref"]
        event_schema = {
            "$schema": schema.get("$schema"),
            "definitions": schema["definitions"],
            "$ref": item_ref,
        }
        _VALIDATORS[key] = Validators(fastjsonschema.compile(schema), fastjsonschema.compile(event_schema))
    return _VALIDATORS[key]


def schema_problem(validate: Callable[[Any], Any], instance: Any) -> str | None:
    """None when ``instance`` validates, else the first violation: message, rule and where."""
    import fastjsonschema

    try:
        validate(instance)
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"{exc.message} (rule '{exc.rule}' at {exc.name})"
    return None


def document_problem(envelope: Envelope, validate_document: Callable[[Any], Any]) -> str | None:
    """A schema violation of the document itself (its events left out), or None."""
    document = envelope.document
    if not isinstance(document, dict):
        return f"{SCHEMA_VIOLATION}: the document is a JSON {type(document).__name__}, not an EPCIS document object"
    prefix = event_list_prefix(document)
    if prefix is None:
        return (
            f"{SCHEMA_VIOLATION}: document type {document.get('type')!r} is not one of "
            f"{sorted(EVENT_LIST_PREFIXES)} (rule 'enum' at data.type)"
        )
    if envelope.event_prefix not in (None, prefix):
        return f"{SCHEMA_VIOLATION}: events under {envelope.event_prefix}, but a {document['type']} keeps them under {prefix}"
    problem = schema_problem(validate_document, document)
    return f"{SCHEMA_VIOLATION}: document: {problem}" if problem else None


# ---------------------------------------------------------------------------
# one event -> records


def _json(value: Any) -> str | None:
    return (
        None
        if value is None
        else json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    )


def _place(value: Any) -> str | None:
    return value.get("id") if isinstance(value, dict) else None


def _extensions(event: Mapping[str, Any], prefixes: Mapping[str, str]) -> dict[str, Any]:
    return {expand_key(k, prefixes): v for k, v in event.items() if k not in MODELLED}


def _epcs(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    named: list[tuple[str, str]] = []
    for field, role in EPC_FIELDS:
        value = event.get(field)
        if isinstance(value, str):
            named.append((value, role))
        elif isinstance(value, list):
            named.extend((v, role) for v in value if isinstance(v, str))
    return named


def event_records(
    event: Mapping[str, Any], context: Any, dl_company_prefix_length: int
) -> tuple[list[dict[str, Any]], str | None]:
    """The bronze records of a schema-valid event (one per EPC), or none and a reason."""
    event_time = utc_time(event.get("eventTime"), event.get("eventTimeZoneOffset"))
    if event_time is None:
        return [], (
            f"{BAD_TYPE}: eventTime={event.get('eventTime')!r} has no time zone and eventTimeZoneOffset="
            f"{event.get('eventTimeZoneOffset')!r} gives none"
        )
    record_time = utc_time(event.get("recordTime"), event.get("eventTimeZoneOffset"))
    given_id = event.get("eventID")
    try:
        event_id = given_id if isinstance(given_id, str) and given_id else event_hash(event, context)
    except Exception as exc:
        return (
            [],
            f"{BAD_TYPE}: no eventID and the event hash cannot be computed ({type(exc).__name__}: {exc})",
        )
    prefixes = context_prefixes(context)
    quantities = {f: event[f] for f in QUANTITY_FIELDS if f in event}
    extensions = _extensions(event, prefixes)
    common = {
        "event_id": event_id,
        "event_id_is_hash": not (isinstance(given_id, str) and given_id),
        "event_type": event.get("type"),
        "action": event.get("action"),
        "biz_step": normalize_cbv(event.get("bizStep"), "bizStep"),
        "disposition": normalize_cbv(event.get("disposition"), "disposition"),
        "event_time": event_time,
        "event_time_zone_offset": event.get("eventTimeZoneOffset"),
        "record_time": record_time,
        "read_point": _place(event.get("readPoint")),
        "biz_location": _place(event.get("bizLocation")),
        "biz_transaction_list": _json(event.get("bizTransactionList")),
        "source_list": _json(event.get("sourceList")),
        "destination_list": _json(event.get("destinationList")),
        "quantity_list": _json(quantities or None),
        "sensor_element_list": _json(event.get("sensorElementList")),
        "extensions": _json(extensions or None),
        "error_declaration": _json(event.get("errorDeclaration")),
    }
    named = _epcs(event) or [(None, "none")]
    records = []
    for epc, role in named:
        parts = parse_epc(epc, dl_company_prefix_length) if epc else Epc(None, "other")
        records.append(
            {
                **common,
                "epc": epc,
                "epc_role": role,
                "epc_scheme": parts.scheme,
                "epc_form": parts.form if epc else None,
                "epc_company_prefix": parts.company_prefix,
                "epc_item_reference": parts.item_reference,
                "epc_serial": parts.serial,
            }
        )
    return records, None


def check_and_flatten(
    payload: str,
    context_json: str | None,
    validate_event: Callable[[Any], Any],
    dl_company_prefix_length: int,
) -> tuple[list[dict[str, Any]], str | None]:
    """One event (JSON text) -> its bronze records, or a quarantine reason naming the schema rule."""
    event = json.loads(payload)
    problem = schema_problem(validate_event, event)
    if problem:
        return [], f"{SCHEMA_VIOLATION}: {problem}"
    context = json.loads(context_json) if context_json else None
    return event_records(event, context, dl_company_prefix_length)


def records_of(
    events: Sequence[Mapping[str, Any]], context: Any, dl_company_prefix_length: int
) -> list[dict[str, Any]]:
    """Records of several valid events (tests and the generator's round trip)."""
    out: list[dict[str, Any]] = []
    for event in events:
        records, problem = event_records(event, context, dl_company_prefix_length)
        if problem:
            raise ValueError(problem)
        out.extend(records)
    return out
