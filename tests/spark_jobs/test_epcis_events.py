"""EPCIS 2.0 parsing without Spark: hand-written documents streamed and flattened as a Spark task does."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.transforms import epcis, epcis_writer
from spark_jobs.transforms import epcis_events as ev
from tests.spark_jobs import epcis_documents as docs
from tracelake.config import PROJECT_ROOT, EpcisSettings

DAY = dt.date(2025, 7, 2)


@pytest.fixture(scope="module")
def options() -> epcis.ParseOptions:
    schema = PROJECT_ROOT / EpcisSettings().json_schema
    return epcis.ParseOptions(
        schema.read_text(), events_per_batch=4, raw_payload_max_chars=200, dl_company_prefix_length=7
    )


def _flat(path: Path, options: epcis.ParseOptions) -> pd.DataFrame:
    batches = list(epcis.stream_document(path.as_uri(), str(path), DAY, options))
    return pd.concat([epcis.flatten_batch(b, options) for b in batches], ignore_index=True)


@pytest.fixture(scope="module")
def flat(tmp_path_factory, options) -> pd.DataFrame:
    path = docs.write(tmp_path_factory.mktemp("epcis") / "doc.jsonld", docs.document())
    return _flat(path, options)


def _rows(flat: pd.DataFrame, index: int) -> pd.DataFrame:
    return flat[(flat["event_index"] == index) & flat["reason"].isna()]


def test_every_event_type_gives_one_row_per_epc(flat):
    shape = {
        i: sorted(zip(_rows(flat, i)["epc_role"], _rows(flat, i)["epc"].fillna("-"), strict=False))
        for i in range(7)
    }
    assert shape == {
        0: [("epc", docs.PROJECT_SGTIN)],
        1: sorted([("epc", docs.PLAIN_SGTIN), ("epc", docs.DL_SGTIN)]),
        2: sorted([("parent", docs.SSCC), ("child", docs.PLAIN_SGTIN), ("child", docs.DL_SGTIN)]),
        3: [("none", "-")],
        4: sorted([("input", docs.GRAI), ("output", "urn:epc:id:sgtin:4012345.022222.9")]),
        5: sorted([("parent", docs.GRAI), ("child", "urn:epc:id:sgtin:4012345.022222.10")]),
        6: [("epc", "urn:epc:id:sgtin:4012345.011111.7003")],
    }
    types = {i: _rows(flat, i)["event_type"].iloc[0] for i in range(7)}
    assert types == {
        0: "ObjectEvent",
        1: "ObjectEvent",
        2: "AggregationEvent",
        3: "TransactionEvent",
        4: "TransformationEvent",
        5: "AssociationEvent",
        6: "ObjectEvent",
    }
    sensor = json.loads(_rows(flat, 3)["sensor_element_list"].iloc[0])
    assert sensor[0]["sensorReport"][0]["value"] == 4.5
    assert json.loads(_rows(flat, 3)["quantity_list"].iloc[0])["quantityList"][0]["uom"] == "KGM"


def test_event_time_is_converted_to_utc_with_its_offset(flat):
    def utc(i: int) -> dt.datetime:
        return dt.datetime(1970, 1, 1) + dt.timedelta(
            microseconds=int(_rows(flat, i)["event_time_us"].iloc[0])
        )

    assert utc(0) == dt.datetime(2025, 7, 1, 0, 30)  # 09:30+09:00
    assert utc(1) == dt.datetime(2025, 7, 1, 1, 0)  # 20:00-05:00 the day before, local
    assert utc(2) == dt.datetime(2025, 7, 1, 2, 0)
    assert ev.utc_time("2025-07-01T09:30:00", "+09:00") == dt.datetime(
        2025, 7, 1, 0, 30
    )  # no zone: the offset's
    assert ev.utc_time("2025-07-01T09:30:00", None) is None


def test_cbv_values_in_both_forms_normalise_to_the_bare_word(flat):
    assert _rows(flat, 0)[["biz_step", "disposition"]].iloc[0].tolist() == ["receiving", "in_progress"]
    assert _rows(flat, 1)[["biz_step", "disposition"]].iloc[0].tolist() == ["shipping", "in_transit"]
    assert ev.normalize_cbv("urn:epcglobal:cbv:bizstep:shipping", "bizStep") == "shipping"
    assert ev.normalize_cbv("https://example.com/steps/x-ray", "bizStep") == "https://example.com/steps/x-ray"


def test_epc_urns_and_digital_links_parse_into_gs1_parts(flat):
    rows = _rows(flat, 1).set_index("epc")
    parts = ["epc_scheme", "epc_form", "epc_company_prefix", "epc_item_reference", "epc_serial"]
    assert rows.loc[docs.PLAIN_SGTIN, parts].tolist() == ["sgtin", "urn", "4012345", "011111", "7001"]
    assert rows.loc[docs.DL_SGTIN, parts].tolist() == ["sgtin", "digital_link", "4012345", "011111", "7002"]
    assert ev.parse_epc(docs.SSCC, 7) == ev.Epc("sscc", "urn", "4012345", "0000000111", None)
    assert ev.parse_epc(docs.GRAI, 7) == ev.Epc("grai", "urn", "4012345", "00001", "1")
    assert ev.parse_epc("https://example.com/01/abc", 7).form == "other"
    assert ev.location_gln(docs.WAREHOUSE_SGLN) == docs.WAREHOUSE_GLN
    assert ev.location_gln(docs.HUB_DL) == docs.HUB_GLN


def test_missing_event_id_gets_the_canonical_event_hash(flat):
    row = _rows(flat, 6).iloc[0]
    event = docs.events()[6]
    assert row["event_id_is_hash"] is True
    assert row["event_id"] == ev.event_hash(event, docs.CONTEXT)
    assert row["event_id"].startswith("ni:///sha-256;") and row["event_id"].endswith("?ver=CBV2.0")
    reordered = dict(reversed(list(event.items())))  # the hash does not depend on member order
    assert ev.event_hash(reordered, docs.CONTEXT) == row["event_id"]
    assert _rows(flat, 0)["event_id_is_hash"].iloc[0] is False


def test_schema_violations_are_quarantined_per_event_naming_the_rule(flat):
    bad = flat[flat["reason"].notna()].set_index("event_index")["reason"].to_dict()
    assert bad == {
        7: "schema_violation: event 7: data.action must be one of ['OBSERVE', 'ADD', 'DELETE'] (rule 'enum' at data.action)",
        8: "schema_violation: event 8: data.eventTime must be date-time (rule 'format' at data.eventTime)",
    }
    assert json.loads(flat.set_index("event_index").loc[7, "raw_payload"])["action"] == "MOVE"
    # every event is accounted for exactly once
    assert set(flat["event_index"]) == set(range(len(docs.events())))
    assert (flat["events_in_document"] == len(docs.events())).all()


def test_extensions_and_error_declarations_are_kept(flat):
    extensions = json.loads(_rows(flat, 0)["extensions"].iloc[0])
    assert extensions == {
        "https://tracelake.dev/epcis/operatorID": "OPR-1",
        "https://tracelake.dev/epcis/deviceID": "DEV-1",
        "https://tracelake.dev/epcis/productName": "Test Water 1L",
    }
    declaration = json.loads(_rows(flat, 9)["error_declaration"].iloc[0])
    assert declaration["correctiveEventIDs"] == ["urn:tracelake:event:EVT-0002"]


def test_a_document_violation_quarantines_every_event(tmp_path, options):
    doc = docs.document(docs.events()[:2])
    del doc["creationDate"]
    flat = _flat(docs.write(tmp_path / "no-date.jsonld", doc), options)
    assert flat["reason"].tolist() == [
        f"schema_violation: event {i}: document: data must contain ['creationDate'] properties (rule 'required' at data)"
        for i in (0, 1)
    ]


def test_a_file_that_is_not_json_is_quarantined_whole(tmp_path, options):
    path = tmp_path / "cut.jsonld"
    path.write_text(json.dumps(docs.document())[:500])
    flat = _flat(path, options)
    assert len(flat) == 1 and flat["event_index"].isna().all()
    assert flat["reason"].iloc[0].startswith("unparseable: not a JSON document")
    assert flat["raw_payload"].iloc[0] == path.read_text()[:200]
    path.write_bytes(b'{"type": "EPCISDocument", "x": "\xff\xfe"}')
    assert _flat(path, options)["reason"].iloc[0].startswith(("non_utf8:", "unparseable:"))


def test_query_documents_are_read_too(tmp_path, options):
    query = {
        "@context": docs.CONTEXT,
        "type": "EPCISQueryDocument",
        "schemaVersion": "2.0",
        "creationDate": "2025-07-02T09:00:00Z",
        "epcisBody": {
            "queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": docs.events()[:2]}}
        },
    }
    flat = _flat(docs.write(tmp_path / "query.json", query), options)
    assert flat["reason"].isna().all() and sorted(set(flat["event_index"])) == [0, 1]


def test_generator_identifiers_round_trip():
    assert epcis_writer.encode_epc(docs.PROJECT_EPC) == docs.PROJECT_SGTIN
    # Codes an SGTIN cannot carry (malformed, a product too long) travel as a private URN.
    for code in (
        "01.4012345.0000011.250011.20250701.000000001",
        "001-4012345-0000011-250011-20250701-1",
        "001.4012345.1234567.250011.20250701.000000001",
    ):
        assert epcis_writer.encode_epc(code).startswith("urn:tracelake:epc:")
    glns, sglns = epcis_writer.location_keys(["LOC-00001", "LOC-00002"], "4012345")
    assert glns == [docs.WAREHOUSE_GLN, docs.HUB_GLN] and sglns[0] == docs.WAREHOUSE_SGLN
    assert epcis_writer.zone_offset(127.8) == "+09:00" and epcis_writer.zone_offset(-74.0) == "-05:00"


def test_generated_events_validate_against_the_schema(options):
    scans = pd.DataFrame(
        {
            "event_id": ["EVT-1", "EVT-2"],
            "epc_code": [docs.PROJECT_EPC, "01.bad.code"],
            "event_time": ["2025-07-01T00:30:00Z", "2025-07-01T23:30:00Z"],
            "location_id": ["LOC-00001"] * 2,
            "business_step": ["Factory", "WMS"],
            "event_type": ["Aggregation", "WMS_Inbound"],
            "operator_id": ["OPR-1", "OPR-2"],
            "device_id": ["DEV-1", "DEV-2"],
            "product_name": ["Water", None],
        }
    )
    events = [
        json.loads(e) for e in epcis_writer.render_events(scans, {"LOC-00001": docs.WAREHOUSE_SGLN}, "+09:00")
    ]
    document = json.loads(
        epcis_writer.document_header("2025-07-01")
        + ",".join(map(json.dumps, events))
        + epcis_writer.DOCUMENT_FOOTER
    )
    validators = ev.validators(options.schema_text)
    validators.document(document)
    assert events[0]["eventTime"] == "2025-07-01T09:30:00+09:00" and events[0]["type"] == "AggregationEvent"
    assert events[1]["eventTime"] == "2025-07-02T08:30:00+09:00"
