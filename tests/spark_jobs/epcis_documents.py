"""Hand-written EPCIS 2.0 documents for the tests: every event type, both CBV forms, time-zone
offsets, Digital Link EPCs, an error declaration, an event without eventID and schema violations."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

CONTEXT = [
    "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
    {"tl": "https://tracelake.dev/epcis/"},
]
# Two locations of the hand-made reference (company prefix 4012345).
WAREHOUSE_SGLN = "urn:epc:id:sgln:4012345.00001.0"
WAREHOUSE_GLN = "4012345000016"
HUB_DL = "https://id.gs1.org/414/4012345000023/254/7"
HUB_GLN = "4012345000023"
LOCATIONS_CSV = (
    "location_id,location_name,business_step,tier,latitude,longitude,gln,sgln\n"
    f"LOC-00001,Warehouse 01,WMS,1,37.5,127.0,{WAREHOUSE_GLN},{WAREHOUSE_SGLN}\n"
    f"LOC-00002,Logistics Hub 01,LGS_HUB,2,36.3,127.4,{HUB_GLN},urn:epc:id:sgln:4012345.00002.0\n"
)
PRODUCTS_CSV = "company_code,product_code,product_name\n4012345,0000011,Test Water 1L\n"

# The project's own EPC convention (schemas/epcis_mapping.yaml) and a plain GS1 SGTIN.
PROJECT_EPC = "001.4012345.0000011.250011.20250701.000000001"
PROJECT_SGTIN = "urn:epc:id:sgtin:4012345.000011.250011.20250701.000000001"
PLAIN_SGTIN = "urn:epc:id:sgtin:4012345.011111.7001"
DL_SGTIN = "https://id.gs1.org/01/04012345111118/21/7002"  # GTIN 0 4012345 11111 8, serial 7002
SSCC = "urn:epc:id:sscc:4012345.0000000111"
GRAI = "urn:epc:id:grai:4012345.00001.1"


def _event(**fields: Any) -> dict[str, Any]:
    return {"eventTimeZoneOffset": "+09:00", "readPoint": {"id": WAREHOUSE_SGLN}, **fields}


def events() -> list[dict[str, Any]]:
    """Index -> what it shows (tests refer to the indices)."""
    return [
        # 0: ObjectEvent, bare CBV words, +09:00 offset, the project's SGTIN convention, extensions.
        _event(
            type="ObjectEvent",
            eventID="urn:tracelake:event:EVT-0001",
            eventTime="2025-07-01T09:30:00+09:00",
            action="OBSERVE",
            epcList=[PROJECT_SGTIN],
            bizStep="receiving",
            disposition="in_progress",
            **{"tl:operatorID": "OPR-1", "tl:deviceID": "DEV-1", "tl:productName": "Test Water 1L"},
        ),
        # 1: ObjectEvent, full CBV URIs, -05:00 offset, two EPCs (URN and Digital Link), bizLocation only.
        {
            "type": "ObjectEvent",
            "eventID": "urn:uuid:6a3c9f0e-6d7e-4a8e-9a55-0c1a2b3c4d01",
            "eventTime": "2025-06-30T20:00:00-05:00",
            "eventTimeZoneOffset": "-05:00",
            "action": "OBSERVE",
            "epcList": [PLAIN_SGTIN, DL_SGTIN],
            "bizStep": "https://ref.gs1.org/cbv/BizStep-shipping",
            "disposition": "https://ref.gs1.org/cbv/Disp-in_transit",
            "bizLocation": {"id": WAREHOUSE_SGLN},
            "bizTransactionList": [
                {"type": "po", "bizTransaction": "urn:epcglobal:cbv:bt:4012345000009:PO-1"}
            ],
        },
        # 2: AggregationEvent: parent SSCC and two children (three rows), Digital Link readPoint, UTC.
        {
            "type": "AggregationEvent",
            "eventID": "urn:uuid:6a3c9f0e-6d7e-4a8e-9a55-0c1a2b3c4d02",
            "eventTime": "2025-07-01T02:00:00Z",
            "eventTimeZoneOffset": "+00:00",
            "action": "ADD",
            "parentID": SSCC,
            "childEPCs": [PLAIN_SGTIN, DL_SGTIN],
            "bizStep": "arriving",
            "readPoint": {"id": HUB_DL},
        },
        # 3: TransactionEvent (quantities only: one row without EPC), sensor data kept.
        _event(
            type="TransactionEvent",
            eventID="urn:uuid:6a3c9f0e-6d7e-4a8e-9a55-0c1a2b3c4d03",
            eventTime="2025-07-01T10:00:00+09:00",
            action="ADD",
            bizTransactionList=[
                {"type": "inv", "bizTransaction": "urn:epcglobal:cbv:bt:4012345000009:INV-9"}
            ],
            quantityList=[
                {"epcClass": "urn:epc:class:lgtin:4012345.011111.LOT1", "quantity": 12, "uom": "KGM"}
            ],
            sensorElementList=[{"sensorReport": [{"type": "Temperature", "value": 4.5, "uom": "CEL"}]}],
        ),
        # 4: TransformationEvent: an input and an output EPC, no action.
        _event(
            type="TransformationEvent",
            eventID="urn:uuid:6a3c9f0e-6d7e-4a8e-9a55-0c1a2b3c4d04",
            eventTime="2025-07-01T11:00:00+09:00",
            inputEPCList=[GRAI],
            outputEPCList=["urn:epc:id:sgtin:4012345.022222.9"],
            bizStep="commissioning",
        ),
        # 5: AssociationEvent: a GRAI parent, a child.
        _event(
            type="AssociationEvent",
            eventID="urn:uuid:6a3c9f0e-6d7e-4a8e-9a55-0c1a2b3c4d05",
            eventTime="2025-07-01T12:00:00+09:00",
            action="ADD",
            parentID=GRAI,
            childEPCs=["urn:epc:id:sgtin:4012345.022222.10"],
            bizStep="assembling",
        ),
        # 6: no eventID: gets the canonical event hash.
        _event(
            type="ObjectEvent",
            eventTime="2025-07-01T13:00:00+09:00",
            action="OBSERVE",
            epcList=["urn:epc:id:sgtin:4012345.011111.7003"],
            bizStep="shipping",
            disposition="in_transit",
        ),
        # 7: schema violation: action is not one of the three.
        _event(
            type="ObjectEvent",
            eventID="urn:uuid:bad-1",
            eventTime="2025-07-01T14:00:00+09:00",
            action="MOVE",
            epcList=[PLAIN_SGTIN],
        ),
        # 8: schema violation: eventTime is no date-time.
        _event(
            type="ObjectEvent",
            eventID="urn:uuid:bad-2",
            eventTime="yesterday",
            action="OBSERVE",
            epcList=[PLAIN_SGTIN],
        ),
        # 9: error declaration retracting event 0 (same eventID, same event), with a correction.
        _event(
            type="ObjectEvent",
            eventID="urn:tracelake:event:EVT-0001",
            eventTime="2025-07-01T09:30:00+09:00",
            action="OBSERVE",
            epcList=[PROJECT_SGTIN],
            bizStep="receiving",
            disposition="in_progress",
            errorDeclaration={
                "declarationTime": "2025-07-02T08:00:00Z",
                "reason": "incorrect_data",
                "correctiveEventIDs": ["urn:tracelake:event:EVT-0002"],
            },
        ),
        # 10: the correction: the same scan, at the hub.
        _event(
            type="ObjectEvent",
            eventID="urn:tracelake:event:EVT-0002",
            eventTime="2025-07-01T09:30:00+09:00",
            action="OBSERVE",
            epcList=[PROJECT_SGTIN],
            bizStep="arriving",
            readPoint={"id": HUB_DL},
            **{"tl:operatorID": "OPR-2"},
        ),
    ]


def document(event_list: list[dict[str, Any]] | None = None, **envelope: Any) -> dict[str, Any]:
    body = copy.deepcopy(events() if event_list is None else event_list)
    return {
        "@context": CONTEXT,
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": "2025-07-02T09:00:00Z",
        **envelope,
        "epcisBody": {"eventList": body},
    }


def write(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))
    return path
