"""Simulation of scan events: EPC journeys through the network, anomalies, landing rows.

The unit of work is a *block* of EPCs (``generator.epcs_per_block``): block
``b`` holds EPCs ``b * epcs_per_block ...`` and draws every random number from
its own generator seeded by (seed, window, b), so the output does not depend
on how Spark spreads blocks over tasks. A block is simulated with vectorised
numpy (:func:`simulate_block`); :func:`simulate` runs it over a frame of block
ids with ``mapInPandas``; the remaining functions shape the result into the
rows of the landing files.

Journey of a genuine EPC (one leg per stage of ``network.stages``): Aggregation
and Factory_Outbound at the product's factory, then Inbound and Outbound at a
warehouse, a logistics hub, a wholesaler and a retailer, each next stop drawn
with weight ``exp(-distance / nearby_scale_km)``, and POS_Sell at the
retailer's point of sale. Transit = distance / truck speed + handling; dwell is
log-uniform per business step. Journeys start uniformly over the window;
events after its end are not written (the products are still in transit).

Anomalies (each anomalous EPC carries exactly one; the rates are shares of EPCs):

- ``epc_fake``: the EPC is malformed, names an unknown company or product, has
  an impossible or future manufacture date, or (``fake_serial_share``) is well
  formed with a serial outside its product's issued ranges.
- ``epc_dup``: a clone scan of the EPC after a genuine scan (``dup_delay_minutes_*``),
  at a place of the same step at least ``dup_min_km`` away, or
  (``dup_near_share``) ``dup_near_km_*`` away.
- ``loc_err``: after one stage the journey skips at least one tier or goes
  back, then carries on normally.
- ``evt_order_err``: at one place the Outbound is scanned before the Inbound
  (the event types of two consecutive scans swapped).
- ``jump``: one arrival at a place at least ``jump_min_km`` away comes at an
  impossible speed (``jump_speed_kmh_*``).

Each incident gets one label row naming its anchor event, confirmed after one
delay; the ground truth lists its whole scope (``schemas/domain.yaml``
``label_scope``). Confounders (``confounder_rates``; docs/anomalies.md) are
legitimate and never labelled: air freight on the air lanes, returns, recalls,
missed reads and re-scans (each a share of EPCs, exclusive with the anomalies),
and device clock skew (a share of devices, applied to the scans of EPCs without
an anomaly; ``record_time`` keeps the system's time).

An anomaly or confounder is only placed where its evidence lies inside the
window; an EPC whose journey leaves no room for it (it started just before the
window's end) is not chosen for it. Data-quality corruption (``corrupt_rate``)
only touches rows of plain genuine EPCs and is never labelled.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, LongType, StringType, StructField, StructType

from spark_jobs.transforms.network import LOCATION_ID_FORMAT, Network, serial_digits
from tracelake.config import CONFOUNDERS, GeneratorSettings

ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
SECONDS_PER_DAY = 86_400
SECONDS_PER_HOUR = 3_600
EPC_HEADER = "001"
EVENT_ID_PREFIX = "EVT-"
INCIDENT_ID_PREFIX = "INC-"
# Shortest transit of a jump, so that its implied speed stays finite at one-second resolution.
JUMP_MIN_TRANSIT_S = 30.0
# Event slots per EPC are encoded in 5 bits of the event id.
SLOT_BITS = 5
# The slot code no event uses: it names the EPC's incident.
INCIDENT_SLOT = 2**SLOT_BITS - 1
# How a leg is travelled.
MODE_TRUCK, MODE_JUMP, MODE_AIR = 0, 1, 2
ROWS_PER_BATCH = 50_000

# Kinds of output rows (the first partition column of the simulated frame).
SCANS, LABELS, STATS = "scans", "labels", "stats"
TEXT_FORMATS = ("csv", "json")

# Anomaly types the simulation knows how to inject (schemas/domain.yaml lists them).
EPC_FAKE, EPC_DUP, LOC_ERR, EVT_ORDER_ERR, JUMP = "epc_fake", "epc_dup", "loc_err", "evt_order_err", "jump"
SIMULATED_ANOMALIES = (EPC_FAKE, EPC_DUP, LOC_ERR, EVT_ORDER_ERR, JUMP)
FAKE_SERIAL = "serial_out_of_range"

# Confounders (tracelake.config.CONFOUNDERS): all but clock_skew are a property of one EPC.
AIR_FREIGHT, RETURN, RECALL, MISSED_READ, RESCAN, CLOCK_SKEW = CONFOUNDERS
EPC_CONFOUNDERS = (AIR_FREIGHT, RETURN, RECALL, MISSED_READ, RESCAN)
# Ground truth (landing/_truth, not ingested).
TRUTH_LABELS, TRUTH_CONFOUNDERS = "truth_labels", "truth_confounders"

# Ways a landing row is made bad (data-quality errors ingest must quarantine).
UNPARSEABLE = "unparseable"
MISSING_FIELD = "missing_field"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_LOCATION = "unknown_location"
OUTSIDE_PARTITION = "outside_partition"
NON_UTF8 = "non_utf8"
CORRUPTIONS = {
    "csv": (UNPARSEABLE, MISSING_FIELD, BAD_TIMESTAMP, UNKNOWN_LOCATION, OUTSIDE_PARTITION, NON_UTF8),
    "json": (UNPARSEABLE, MISSING_FIELD, BAD_TIMESTAMP, UNKNOWN_LOCATION, OUTSIDE_PARTITION, NON_UTF8),
    "parquet": (MISSING_FIELD, BAD_TIMESTAMP, UNKNOWN_LOCATION, OUTSIDE_PARTITION),
}
_BAD_TIMESTAMPS = ("{date}T27:{mmss}Z", "N/A", "{dd}/{mm}/{yyyy} {hh}:{mmss}", "{date}T{hh}:{mmss}+99:00")
_LATIN1_SUFFIX = " Cr\u00e8me Br\u00fbl\u00e9e"  # written as latin-1 bytes: invalid UTF-8
_UNKNOWN_LOCATION_OFFSET = 90_000


@dataclass(frozen=True)
class SimulationPlan:
    """Everything a block simulation needs; shipped whole to the Spark tasks."""

    settings: GeneratorSettings
    network: Network
    start: dt.date
    days: int
    format: str
    anomaly_types: tuple[str, ...]
    event_types: tuple[str, ...]
    scan_columns: tuple[str, ...]
    scan_required: tuple[str, ...]
    label_columns: tuple[str, ...]

    def __post_init__(self) -> None:
        unknown = sorted(set(self.anomaly_types) - set(SIMULATED_ANOMALIES))
        if unknown:
            raise ValueError(
                f"schemas/domain.yaml lists anomaly type(s) {unknown} the generator cannot simulate"
            )
        if self.format not in CORRUPTIONS:
            raise ValueError(f"format {self.format!r} is not one of {sorted(CORRUPTIONS)}")

    @property
    def start_s(self) -> int:
        return int(dt.datetime.combine(self.start, dt.time.min, tzinfo=dt.UTC).timestamp())

    @property
    def end_s(self) -> int:
        return self.start_s + self.days * SECONDS_PER_DAY

    @property
    def n_blocks(self) -> int:
        return -(-self.settings.epcs // self.settings.epcs_per_block)

    @property
    def entropy(self) -> list[int]:
        return [self.settings.seed & (2**64 - 1), self.start.toordinal(), self.days]

    @property
    def window_days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range(self.days)]

    @property
    def label_days(self) -> list[dt.date]:
        """Every day a label of this window can be confirmed on."""
        first = self.start + dt.timedelta(days=self.settings.label_delay_days_min)
        count = self.days + self.settings.label_delay_days_max - self.settings.label_delay_days_min + 1
        return [first + dt.timedelta(days=i) for i in range(count)]

    @property
    def file_keys(self) -> int:
        """Distinct (kind, date) outputs at most: one shuffle partition each."""
        return len(self.window_days) + len(self.label_days) + 1

    def header(self, kind: str) -> str:
        return ",".join(self.scan_columns if kind == SCANS else self.label_columns)


# ---------------------------------------------------------------------------
# numpy simulation of one block


@dataclass
class BlockEvents:
    """The events of one block, one entry per written scan (flat arrays), and its incidents."""

    event_id: np.ndarray  # str
    epc_code: np.ndarray  # str
    time_s: np.ndarray  # int64 epoch seconds, as the scanning device's clock says
    record_s: np.ndarray  # int64 epoch seconds the system recorded the scan (true time + latency)
    location: np.ndarray  # location index
    event_type: np.ndarray  # index into plan.event_types
    operator_id: np.ndarray  # str
    device_id: np.ndarray  # str
    product_name: np.ndarray  # str
    label: np.ndarray  # anomaly index into plan.anomaly_types, -1 for none (the truth's scope)
    incident_id: np.ndarray  # str, "" for none
    variant: np.ndarray  # str: how the anomaly was made ("" for none)
    confounder: np.ndarray  # index into CONFOUNDERS of a per-EPC confounder shown by the event, -1 for none
    skewed: np.ndarray  # bool: the event's time carries its device's clock offset
    genuine_epc: np.ndarray  # bool: the EPC carries no anomaly at all
    incidents: dict[str, np.ndarray]  # one entry per incident: its label feed row
    epcs: int
    anomalous_epcs: dict[str, int]
    confounded_epcs: dict[str, int]


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection of uint64 (distinct inputs stay distinct)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _prefixed_hex(prefix: str, values: np.ndarray) -> np.ndarray:
    """``prefix`` + 16 lower-case hex digits of each uint64, as Python strings."""
    head = np.frombuffer(prefix.encode(), dtype=np.uint8)
    width = len(head) + 16
    raw = values.astype(">u8").view(np.uint8).reshape(-1, 8)
    out = np.empty((len(values), width), dtype=np.uint8)
    out[:, : len(head)] = head
    out[:, len(head) :: 2] = _HEX[raw >> 4]
    out[:, len(head) + 1 :: 2] = _HEX[raw & 15]
    return out.view(f"S{width}").ravel().astype(str).astype(object)


def _id_codes(plan: SimulationPlan, epc_index: np.ndarray, slot: np.ndarray) -> np.ndarray:
    key = np.random.SeedSequence(plan.entropy).generate_state(1, np.uint64)[0]
    code = (epc_index.astype(np.uint64) << np.uint64(SLOT_BITS)) | slot.astype(np.uint64)
    return _mix64(code ^ key)


def event_ids(plan: SimulationPlan, epc_index: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Unique, deterministic event ids: a keyed bijection of (global EPC index, event slot)."""
    return _prefixed_hex(EVENT_ID_PREFIX, _id_codes(plan, epc_index, slot))


def incident_ids(plan: SimulationPlan, epc_index: np.ndarray) -> np.ndarray:
    """One id per anomalous EPC (an EPC carries at most one incident): the code of a slot no event uses."""
    return _prefixed_hex(
        INCIDENT_ID_PREFIX, _id_codes(plan, epc_index, np.full(len(epc_index), INCIDENT_SLOT))
    )


def _pick_where(mask: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Per row, a uniformly chosen column index where ``mask`` holds; -1 where none does."""
    count = mask.sum(axis=1)
    k = np.minimum((u * count).astype(int), np.maximum(count - 1, 0))
    idx = np.argmax(np.cumsum(mask, axis=1) > k[:, None], axis=1)
    return np.where(count > 0, idx, -1)


def _choose(cum: np.ndarray, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Column index drawn from the cumulative probabilities ``cum[rows]``."""
    idx = (cum[rows] < u[:, None]).sum(axis=1)
    return np.minimum(idx, cum.shape[1] - 1)


@dataclass
class _Draws:
    """Random numbers per leg and per event slot, drawn once so two timelines agree."""

    loc: np.ndarray
    dwell: np.ndarray
    handling: np.ndarray
    speed: np.ndarray
    jump_speed: np.ndarray


def _truck_transit_s(plan: SimulationPlan, dist: np.ndarray, draws: _Draws, j: int) -> np.ndarray:
    s = plan.settings
    speed = s.truck_speed_kmh_min + draws.speed[:, j] * (s.truck_speed_kmh_max - s.truck_speed_kmh_min)
    handling = s.handling_hours_min + draws.handling[:, j] * (s.handling_hours_max - s.handling_hours_min)
    return (dist / speed + handling) * SECONDS_PER_HOUR


def _air_kmh(plan: SimulationPlan, draws: _Draws) -> np.ndarray:
    s = plan.settings
    return s.air_speed_kmh_min + draws.jump_speed * (s.air_speed_kmh_max - s.air_speed_kmh_min)


def _timeline(
    plan: SimulationPlan,
    path: np.ndarray,
    t0: np.ndarray,
    factory: np.ndarray,
    draws: _Draws,
    mode: np.ndarray,
    fixed: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Locations and first/second event times of each leg of each journey (NaN where none).

    ``mode[i, j]``: how leg j is travelled (truck, jump or air); ``fixed[i, j]``: the
    location of leg j where set (a return to a place already visited), else -1.
    """
    s, net = plan.settings, plan.network
    n, legs = path.shape
    last = len(net.stages) - 1
    dwell_lo = np.log([s.dwell_hours[st.business_step][0] for st in net.stages])
    dwell_hi = np.log([s.dwell_hours[st.business_step][1] for st in net.stages])
    two_events = np.array([len(st.event_types) == 2 for st in net.stages])
    loc = np.full((n, legs), -1)
    t1 = np.full((n, legs), np.nan)
    t2 = np.full((n, legs), np.nan)
    prev_loc, prev_t = factory.copy(), t0.copy()
    for j in range(legs):
        stage = path[:, j]
        active = stage >= 0
        if j == 0:
            cur, arrive = factory.copy(), t0.copy()
        else:
            cur = np.full(n, -1)
            jumping, flying = mode[:, j] == MODE_JUMP, mode[:, j] == MODE_AIR
            for tier in range(len(net.stages)):
                rows = np.flatnonzero(active & (stage == tier))
                if rows.size == 0:
                    continue
                pick = _choose(net.near_cum[tier], prev_loc[rows], draws.loc[rows, j])
                far = jumping[rows]
                if far.any():
                    pick[far] = _choose(net.jump_cum[tier], prev_loc[rows[far]], draws.loc[rows[far], j])
                fly = flying[rows]
                if fly.any():  # air legs are hub -> hub: air_cum chooses among the hubs
                    pick[fly] = _choose(net.air_cum, prev_loc[rows[fly]], draws.loc[rows[fly], j])
                cur[rows] = net.members[tier][pick]
                if tier == last:  # a retailer's products go to its own point of sale
                    own = net.pos_of[prev_loc[rows]]
                    cur[rows] = np.where(own >= 0, own, cur[rows])
            cur = np.where(fixed[:, j] >= 0, fixed[:, j], cur)
            safe = np.where(active, cur, 0)
            dist = net.distance_km[prev_loc, safe]
            transit_s = _truck_transit_s(plan, dist, draws, j)
            jump_kmh = s.jump_speed_kmh_min + draws.jump_speed * (s.jump_speed_kmh_max - s.jump_speed_kmh_min)
            transit_s = np.where(
                jumping, np.maximum(dist / jump_kmh * SECONDS_PER_HOUR, JUMP_MIN_TRANSIT_S), transit_s
            )
            transit_s = np.where(flying, dist / _air_kmh(plan, draws) * SECONDS_PER_HOUR, transit_s)
            arrive = prev_t + transit_s
        st = np.where(active, stage, 0)
        dwell_s = np.exp(dwell_lo[st] + draws.dwell[:, j] * (dwell_hi[st] - dwell_lo[st])) * SECONDS_PER_HOUR
        both = two_events[st]
        first = np.where(both, arrive, arrive + dwell_s)
        second = np.where(both, arrive + dwell_s, np.nan)
        loc[:, j] = np.where(active, cur, -1)
        t1[:, j] = np.where(active, first, np.nan)
        t2[:, j] = np.where(active, second, np.nan)
        prev_loc = np.where(active, cur, prev_loc)
        prev_t = np.where(active, np.where(both, second, first), prev_t)
    return loc, t1, t2


def _fake_epcs(
    plan: SimulationPlan,
    rng: np.random.Generator,
    parts: list[np.ndarray],
    product: np.ndarray,
    u_serial: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """EPC strings that are fake in one of five ways, built from genuine-looking parts, and the way."""
    header, company, product_code, lot, made, serial = parts
    s, net = plan.settings, plan.network
    n = len(company)
    how = rng.integers(4, size=n)
    sub = rng.integers(4, size=n)
    by_serial = u_serial < s.fake_serial_share
    unissued = net.unissued_serials(product, (u_serial / max(s.fake_serial_share, 1e-12)) % 1.0)
    known = set(net.company_code)
    low, high = 10 ** (len(net.company_code[0]) - 1), 10 ** len(net.company_code[0]) - 1
    end = plan.start + dt.timedelta(days=plan.days)
    out, variant = [], []
    for i in range(n):
        h, c, p, lt, m, sr = header[i], company[i], product_code[i], lot[i], made[i], serial[i]
        if by_serial[i]:  # well formed, known company and product, a serial never issued
            out.append(f"{h}.{c}.{p}.{lt}.{m}.{int(unissued[i]):0{len(sr)}d}")
            variant.append(FAKE_SERIAL)
            continue
        if how[i] == 0:  # malformed: fails the EPC regex
            variants = (
                f"{h[1:]}.{c}.{p}.{lt}.{m}.{sr}",
                f"{h}.{c}.{p}.{lt}.{m}.{sr[:-3]}X{sr[-2:]}",
                f"{h}.{c}.{p}.{m}.{sr}",
                f"{h}-{c}-{p}-{lt}-{m}-{sr}",
            )
            out.append(variants[sub[i]])
            variant.append("malformed")
            continue
        if how[i] == 1:  # unknown company
            c = f"{int(rng.integers(low, high + 1)):0{len(c)}d}"
            while c in known:
                c = f"{int(rng.integers(low, high + 1)):0{len(c)}d}"
            variant.append("unknown_company")
        elif how[i] == 2:  # unknown product of a known company
            limit = 10 ** len(p) - 1
            p = f"{int(rng.integers(s.products_per_company + 1, limit + 1)):0{len(p)}d}"
            variant.append("unknown_product")
        elif sub[i] < 3:  # manufacture date that is no date
            year = m[:4]
            m = (f"{year}13{m[6:]}", f"{year}0230", "00000000")[sub[i]]
            variant.append("invalid_date")
        else:  # manufactured after every scan of the window
            future = end + dt.timedelta(
                days=int(rng.integers(s.fake_future_days_min, s.fake_future_days_max + 1))
            )
            m = future.strftime("%Y%m%d")
            variant.append("future_date")
        out.append(f"{h}.{c}.{p}.{lt}.{m}.{sr}")
    return np.array(out, dtype=object), np.array(variant, dtype=object)


def _assign_kinds(rates: np.ndarray, room: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Kind index per EPC (``len(rates)``: plain genuine), at most one each.

    ``room[i, k]``: EPC i can show kind k (an anomaly or a per-EPC confounder)
    inside the window. An EPC gets k with probability rate_k / (share of the
    block's EPCs with room for k), so that the share of EPCs *showing* each
    kind matches its rate, even in a short window where late journeys have no
    room for some of them.
    """
    share = room.mean(axis=0)
    chance = np.where(share > 0, np.minimum(1.0, rates / np.where(share > 0, share, 1)), 0.0)
    prob = room * chance[None, :]
    total = prob.sum(axis=1, keepdims=True)
    prob = np.where(total > 1, prob / np.where(total > 0, total, 1), prob)
    return (np.cumsum(prob, axis=1) <= u[:, None]).sum(axis=1)


def simulate_block(plan: SimulationPlan, block: int) -> BlockEvents:
    """Simulate the EPCs of one block (pure function of the plan and the block id)."""
    s, net = plan.settings, plan.network
    first = block * s.epcs_per_block
    n = min(s.epcs_per_block, s.epcs - first)
    seeds = np.random.SeedSequence([*plan.entropy, block]).spawn(5)
    rng, rng_fake, rng_label, rng_conf = (np.random.default_rng(seeds[i]) for i in (0, 1, 2, 4))
    n_stages = len(net.stages)
    legs = 2 * n_stages - 2  # longest journey: back from the last two-event stage to tier 1
    clone_slot, rescan_slot = 2 * legs, 2 * legs + 1
    slots = 2 * legs + 2  # two events per leg, plus a clone scan and a re-scan
    if slots >= INCIDENT_SLOT:
        raise ValueError(f"{slots} event slots per EPC do not fit {SLOT_BITS} bits of the event id")
    epc_index = first + np.arange(n)

    product = rng.integers(len(net.product_code), size=n)
    t0 = plan.start_s + rng.random(n) * (plan.end_s - plan.start_s)
    u_kind = rng.random(n)
    draws = _Draws(
        loc=rng.random((n, legs)),
        dwell=rng.random((n, legs)),
        handling=rng.random((n, legs)),
        speed=rng.random((n, legs)),
        jump_speed=rng.random(n),
    )
    u_place = rng.random((n, 3))
    u_operator = rng.random((n, slots - 1))
    u_device = rng.random((n, slots - 1))
    u_dup = rng.random((n, 2))
    made_days_before = rng.integers(0, s.manufacture_days_before_max + 1, size=n)
    shift = rng.integers(1, 4, size=n)
    # Draws of the realistic profile, from a stream of their own (the ones above stay as they were).
    u_conf = rng_conf.random((n, 6))
    u_operator = np.column_stack([u_operator, rng_conf.random(n)])
    u_device = np.column_stack([u_device, rng_conf.random(n)])
    u_latency = rng_conf.random((n, slots))

    factory = net.product_factory[product]
    legs_idx = np.arange(legs)
    base_path = np.where(legs_idx < n_stages, legs_idx, -1)[None, :].repeat(n, axis=0)
    truck = np.full((n, legs), MODE_TRUCK)
    free = np.full((n, legs), -1)
    base_loc, b1, b2 = _timeline(plan, base_path, t0, factory, draws, truck, free)
    end = plan.end_s
    kinds = (*plan.anomaly_types, *EPC_CONFOUNDERS)
    code = {a: i for i, a in enumerate(kinds)}
    middle = (legs_idx >= 1) & (legs_idx <= n_stages - 2)  # stages with Inbound and Outbound
    hub_leg, wholesale_leg, retail_leg, warehouse_leg = 2, 3, 4, 1

    # Where each anomaly can go so that its evidence lies inside the window (on the genuine timeline):
    # jump: a middle stage whose arrival is inside; evt_order_err: a middle stage whose Outbound is;
    # loc_err: a stage (not the last) whose next arrival is; epc_dup: a scan from tier 1 on,
    # early enough for its clone to be inside. The confounders likewise.
    next_arrival = np.concatenate([b1[:, 1:], np.full((n, 1), np.nan)], axis=1)
    base_times = np.stack([b1, b2], axis=2).reshape(n, 2 * legs)
    slot_leg = np.arange(2 * legs) // 2
    hub = base_loc[:, hub_leg]
    partner = net.members[2][_choose(net.air_cum, np.maximum(hub, 0), draws.loc[:, hub_leg + 1])]
    flight_end = (
        b2[:, hub_leg]
        + net.distance_km[np.maximum(hub, 0), partner] / _air_kmh(plan, draws) * SECONDS_PER_HOUR
    )
    retailer = np.maximum(base_loc[:, retail_leg], 0)
    back_to = {
        RETURN: np.maximum(base_loc[:, wholesale_leg], 0),
        RECALL: np.maximum(base_loc[:, warehouse_leg], 0),
    }
    back_arrival = {
        k: b2[:, retail_leg] + _truck_transit_s(plan, net.distance_km[retailer, v], draws, retail_leg + 1)
        for k, v in back_to.items()
    }
    where = {
        EPC_FAKE: np.ones((n, 1), dtype=bool),
        JUMP: middle[None, :] & (b1 < end),
        EVT_ORDER_ERR: middle[None, :] & (b2 < end),
        LOC_ERR: (legs_idx < n_stages - 1)[None, :] & (next_arrival < end),
        EPC_DUP: (slot_leg >= 1)[None, :] & (base_times < end - s.dup_delay_minutes_max * 60),
        AIR_FREIGHT: (net.has_air_lane[np.maximum(hub, 0)] & (flight_end < end))[:, None],
        RETURN: (back_arrival[RETURN] < end)[:, None],
        RECALL: (back_arrival[RECALL] < end)[:, None],
        MISSED_READ: middle[None, :] & (b2 < end),
        RESCAN: base_times < end - s.rescan_minutes_max * 60,
    }
    rates = np.array(
        [getattr(s.rates, a) for a in plan.anomaly_types] + [s.confounder_rates[c] for c in EPC_CONFOUNDERS]
    )
    kind = _assign_kinds(rates, np.column_stack([where[k].any(axis=1) for k in kinds]), u_kind)
    genuine = kind >= len(plan.anomaly_types)  # no anomaly (maybe a confounder)

    def place(what: str, u: np.ndarray) -> np.ndarray:
        return np.where(kind == code[what], _pick_where(where[what], u), -1)

    jump_leg, order_leg, bad_from, dup_slot = (
        place(a, u_place[:, 0]) for a in (JUMP, EVT_ORDER_ERR, LOC_ERR, EPC_DUP)
    )
    missed_leg, rescanned = place(MISSED_READ, u_conf[:, 0]), place(RESCAN, u_conf[:, 1])

    # loc_err paths: stages 0..a, then b, b+1, .. last, with b in {1..a-1} or {a+2..last}.
    path = base_path.copy()
    lr = np.flatnonzero(bad_from >= 0)
    if lr.size:
        a = bad_from[lr]
        options = np.array(
            [[b for b in range(1, n_stages) if b != a_ + 1 and b != a_] for a_ in range(n_stages - 1)],
            dtype=object,
        )
        width = np.array([len(o) for o in options])
        pick = np.minimum((u_place[lr, 1] * width[a]).astype(int), width[a] - 1)
        b = np.array([options[a_][k] for a_, k in zip(a, pick, strict=False)])
        shifted = b[:, None] + legs_idx[None, :] - a[:, None] - 1
        new = np.where(legs_idx[None, :] <= a[:, None], legs_idx[None, :], shifted)
        path[lr] = np.where(new < n_stages, new, -1)
    mode, fixed = truck.copy(), free.copy()
    rows = np.flatnonzero(jump_leg >= 0)
    mode[rows, jump_leg[rows]] = MODE_JUMP
    # air freight: a second hub, flown to on an air lane, then on as usual.
    flown = np.flatnonzero(kind == code[AIR_FREIGHT])
    path[flown] = np.where(legs_idx <= hub_leg, legs_idx, legs_idx - 1)[None, :]
    path[flown] = np.where(path[flown] < n_stages, path[flown], -1)
    mode[flown, hub_leg + 1] = MODE_AIR
    # returns and recalls: from the retailer back to the wholesaler (warehouse) it came from; the journey ends.
    backward = {k: np.flatnonzero(kind == code[k]) for k in (RETURN, RECALL)}
    for k, rows in backward.items():
        path[rows, retail_leg + 1] = net.tier[back_to[k][rows]]
        path[rows, retail_leg + 2 :] = -1
        fixed[rows, retail_leg + 1] = back_to[k][rows]

    loc, t1, t2 = _timeline(plan, path, t0, factory, draws, mode, fixed)
    for rows in backward.values():
        t2[rows, retail_leg + 1] = np.nan  # the return is received: one scan

    # Event slots: (leg, first|second) plus the clone and re-scan slots at the end.
    stage = np.where(path >= 0, path, 0)
    first_type = np.array([plan.event_types.index(st.event_types[0]) for st in net.stages])
    second_type = np.array(
        [plan.event_types.index(st.event_types[-1]) if len(st.event_types) == 2 else -1 for st in net.stages]
    )
    times = np.full((n, slots), np.nan)
    times[:, : 2 * legs] = np.stack([t1, t2], axis=2).reshape(n, 2 * legs)
    locs = np.full((n, slots), -1)
    locs[:, : 2 * legs] = np.repeat(loc, 2, axis=1)
    types = np.full((n, slots), -1)
    types[:, : 2 * legs] = np.stack([first_type[stage], second_type[stage]], axis=2).reshape(n, 2 * legs)
    conf = np.full((n, slots), -1)
    returned = {RETURN: "W_Stock_Return", RECALL: "WMS_Return"}
    for k, rows in backward.items():
        types[rows, 2 * retail_leg + 1] = plan.event_types.index("R_Stock_Return")
        types[rows, 2 * (retail_leg + 1)] = plan.event_types.index(returned[k])
        conf[rows, 2 * retail_leg + 1] = conf[rows, 2 * (retail_leg + 1)] = CONFOUNDERS.index(k)
    conf[flown, 2 * (hub_leg + 1)] = CONFOUNDERS.index(AIR_FREIGHT)

    rows = np.flatnonzero(order_leg >= 0)
    j = order_leg[rows]
    types[rows, 2 * j], types[rows, 2 * j + 1] = types[rows, 2 * j + 1], types[rows, 2 * j].copy()

    variant = np.full(n, "", dtype=object)
    rows = np.flatnonzero(dup_slot >= 0)
    if rows.size:
        source_slot = dup_slot[rows]
        src = locs[rows, source_slot]
        tier = net.tier[src]
        near = u_conf[rows, 2] < s.dup_near_share
        clone = np.empty_like(src)
        for t in np.unique(tier):
            sel = tier == t
            far_cum = np.where(near[sel][:, None], net.dup_near_cum[t][src[sel]], net.dup_cum[t][src[sel]])
            clone[sel] = net.members[t][
                np.minimum((far_cum < u_dup[rows[sel], 0][:, None]).sum(axis=1), far_cum.shape[1] - 1)
            ]
        delay = s.dup_delay_minutes_min + u_dup[rows, 1] * (s.dup_delay_minutes_max - s.dup_delay_minutes_min)
        times[rows, clone_slot] = times[rows, source_slot] + delay * 60
        locs[rows, clone_slot] = clone
        types[rows, clone_slot] = types[rows, source_slot]
        variant[rows] = np.where(near, "near", "far")

    # rescan: the same scan again at the same place, before the EPC's next scan.
    rows = np.flatnonzero(rescanned >= 0)
    if rows.size:
        src_slot = rescanned[rows]
        t = times[rows, src_slot]
        later = np.where(times[rows, : 2 * legs] > t[:, None], times[rows, : 2 * legs], np.inf).min(axis=1)
        delay = (s.rescan_minutes_min + u_conf[rows, 3] * (s.rescan_minutes_max - s.rescan_minutes_min)) * 60
        times[rows, rescan_slot] = t + np.minimum(delay, (later - t) / 2)
        locs[rows, rescan_slot] = locs[rows, src_slot]
        types[rows, rescan_slot] = types[rows, src_slot]
        conf[rows, rescan_slot] = CONFOUNDERS.index(RESCAN)
        # The same operator scans again with the same device (so its clock offset is the same too).
        u_operator[rows, rescan_slot] = u_operator[rows, src_slot]
        u_device[rows, rescan_slot] = u_device[rows, src_slot]

    # missed read: the Inbound of a middle stage is never scanned, or (missed_stage_share) both of its scans;
    # the event that follows the gap shows it.
    rows = np.flatnonzero(missed_leg >= 0)
    if rows.size:
        j = missed_leg[rows]
        whole = (u_conf[rows, 4] < s.missed_stage_share) & (t1[rows, np.minimum(j + 1, legs - 1)] < end)
        times[rows, 2 * j] = np.nan
        times[rows[whole], 2 * j[whole] + 1] = np.nan
        after = np.where(whole, 2 * j + 2, 2 * j + 1)
        conf[rows, after] = CONFOUNDERS.index(MISSED_READ)
        variant[rows] = np.where(whole, "stage", "inbound")

    valid = (types >= 0) & (locs >= 0) & (times < end)  # NaN compares False
    labels = np.full((n, slots), -1)
    labels[kind == code[EPC_FAKE]] = code[EPC_FAKE]
    anchor = np.full(n, -1)
    for anomaly, at_slot in (
        (EPC_DUP, np.where(dup_slot >= 0, clone_slot, -1)),
        (LOC_ERR, np.where(bad_from >= 0, 2 * (bad_from + 1), -1)),
        (JUMP, np.where(jump_leg >= 0, 2 * jump_leg, -1)),
        (EVT_ORDER_ERR, np.where(order_leg >= 0, 2 * order_leg, -1)),
        (EVT_ORDER_ERR, np.where(order_leg >= 0, 2 * order_leg + 1, -1)),  # the later of the pair: the anchor
    ):
        rows = np.flatnonzero(at_slot >= 0)
        labels[rows, at_slot[rows]] = code[anomaly]
        anchor[rows] = at_slot[rows]
    labels = np.where(valid, labels, -1)
    conf = np.where(valid, conf, -1)

    # EPC strings.
    first_day = (t0 // SECONDS_PER_DAY).astype("int64")
    made = (first_day - made_days_before).astype("datetime64[D]")
    made_text = np.char.replace(np.datetime_as_string(made, unit="D"), "-", "")
    day_of_year = (made - made.astype("datetime64[Y]")).astype(int) + 1
    year = made.astype("datetime64[Y]").astype(int) % 100
    lot = [f"{y:02d}{d:03d}{k}" for y, d, k in zip(year, day_of_year, shift, strict=False)]
    digits = serial_digits(s.serial_stride, s.epcs, len(net.product_code))
    serial = [f"{v:0{digits}d}" for v in net.serials(product, epc_index)]
    company = net.company_code[net.product_company[product]]
    parts = [
        np.full(n, EPC_HEADER, dtype=object),
        company,
        net.product_code[product],
        np.array(lot, dtype=object),
        made_text.astype(object),
        np.array(serial, dtype=object),
    ]
    epc = np.array([".".join(p) for p in zip(*parts, strict=False)], dtype=object)
    fake = np.flatnonzero(kind == code[EPC_FAKE])
    if fake.size:
        epc[fake], variant[fake] = _fake_epcs(
            plan, rng_fake, [p[fake] for p in parts], product[fake], u_conf[fake, 5]
        )

    # Incidents: one per anomalous EPC whose evidence is in the window, confirmed all at once after one delay.
    fake_epc = kind == code[EPC_FAKE]
    visible = valid.any(axis=1)
    first_time = np.where(valid, times, np.inf).min(axis=1)
    has_anchor = np.where(anchor >= 0, valid[np.arange(n), np.maximum(anchor, 0)], False)
    inc = np.flatnonzero((fake_epc & visible) | (~fake_epc & ~genuine & has_anchor))
    low, high = s.label_delay_days_min, s.label_delay_days_max
    delay_s = np.floor((low + rng_label.random(inc.size) * (high - low)) * SECONDS_PER_DAY)
    happened = np.where(fake_epc[inc], first_time[inc], times[inc, np.maximum(anchor[inc], 0)])
    confirmed = np.floor(happened) + delay_s
    known = valid[inc] & (times[inc] <= confirmed[:, None])
    latest = np.argmax(np.where(known, times[inc], -np.inf), axis=1)
    anchor_slot = np.where(fake_epc[inc], latest, anchor[inc])
    incident_of = np.full(n, "", dtype=object)
    incident_of[inc] = incident_ids(plan, epc_index[inc])
    labels[~np.isin(np.arange(n), inc)] = -1
    incidents = {
        "event_id": event_ids(plan, epc_index[inc], anchor_slot),
        "epc_code": epc[inc],
        "anomaly_type": np.array(plan.anomaly_types, dtype=object)[kind[inc]],
        "confirmed_s": confirmed.astype(np.int64),
        "incident_id": incident_of[inc],
    }

    # Device clock skew (scans of EPCs without an anomaly, so that every label's scope stays exact).
    r, c = np.nonzero(valid)
    order = np.lexsort((c, times[r, c], r))  # per EPC in time order (stable for equal times)
    r, c = r[order], c[order]
    ev_loc = locs[r, c]
    ops = (u_operator[r, c] * s.operators_per_location).astype(int)
    devs = (u_device[r, c] * s.devices_per_location).astype(int)
    skew = np.where(genuine[r], net.device_skew_s[ev_loc, devs], 0.0)
    true_s = times[r, c]
    latency = u_latency[r, c] * s.record_latency_seconds_max
    anomalous = Counter(plan.anomaly_types[k] for k in kind[~genuine])
    shown = Counter(kinds[k] for k in kind[np.unique(np.nonzero(conf >= 0)[0])])
    return BlockEvents(
        event_id=event_ids(plan, epc_index[r], c),
        epc_code=epc[r],
        time_s=np.floor(true_s + skew).astype(np.int64),
        record_s=np.floor(true_s + latency).astype(np.int64),
        location=ev_loc,
        event_type=types[r, c],
        operator_id=net.operators[ev_loc, ops],
        device_id=net.devices[ev_loc, devs],
        product_name=net.product_name[product[r]],
        label=labels[r, c],
        incident_id=np.where(labels[r, c] >= 0, incident_of[r], ""),
        variant=np.where(labels[r, c] >= 0, variant[r], ""),
        confounder=conf[r, c],
        skewed=skew != 0,
        genuine_epc=kind[r] == len(kinds),
        incidents=incidents,
        epcs=n,
        anomalous_epcs={a: int(anomalous.get(a, 0)) for a in plan.anomaly_types},
        confounded_epcs={c: int(shown.get(c, 0)) for c in EPC_CONFOUNDERS},
    )


# ---------------------------------------------------------------------------
# landing rows of one block


def _iso(seconds: np.ndarray) -> np.ndarray:
    return np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s", timezone="UTC").astype(object)


def _day(seconds: np.ndarray) -> np.ndarray:
    return np.datetime_as_string((seconds // SECONDS_PER_DAY).astype("datetime64[D]"), unit="D").astype(
        object
    )


@dataclass
class BlockRows:
    """Landing rows of one block: per scan and per label, text fields plus their file day."""

    scans: dict[str, np.ndarray]
    scan_day: np.ndarray
    scan_time: np.ndarray
    scan_key: np.ndarray  # the genuine event id: the sort key, also of corrupted rows
    corruption: np.ndarray  # per scan: corruption name or ""
    corruption_u: np.ndarray  # per scan: a uniform number that picks the variant of a corruption
    labels: dict[str, np.ndarray]
    label_day: np.ndarray
    label_time: np.ndarray
    stats: dict


def block_rows(plan: SimulationPlan, block: int) -> BlockRows:
    """Simulate a block and lay it out as landing rows (all values text)."""
    ev = simulate_block(plan, block)
    s, net = plan.settings, plan.network
    values = {
        "event_id": ev.event_id,
        "epc_code": ev.epc_code,
        "event_time": _iso(ev.time_s),
        "record_time": _iso(ev.record_s),
        "location_id": net.location_id[ev.location],
        "business_step": np.array([st.business_step for st in net.stages], dtype=object)[
            net.tier[ev.location]
        ],
        "event_type": np.array(plan.event_types, dtype=object)[ev.event_type],
        "operator_id": ev.operator_id,
        "device_id": ev.device_id,
        "product_name": ev.product_name,
    }
    missing = [c for c in plan.scan_columns if c not in values]
    if missing:
        raise ValueError(f"the generator has no values for landing_scans column(s) {missing}")
    scans = {c: values[c].copy() for c in plan.scan_columns}  # corrupted in place below
    scan_day = _day(ev.time_s)

    rng_corrupt = np.random.default_rng(np.random.SeedSequence([*plan.entropy, block]).spawn(4)[3])
    confirmed = ev.incidents["confirmed_s"]
    labels = {
        "event_id": ev.incidents["event_id"],
        "epc_code": ev.incidents["epc_code"],
        "anomaly_type": ev.incidents["anomaly_type"],
        "confirmed_at": _iso(confirmed),
    }
    labels = {c: labels[c] for c in plan.label_columns}

    classes = np.array(CORRUPTIONS[plan.format], dtype=object)
    n_scans = len(ev.time_s)
    hit = ev.genuine_epc & (rng_corrupt.random(n_scans) < s.corrupt_rate)
    corruption = np.where(hit, classes[rng_corrupt.integers(len(classes), size=n_scans)], "").astype(object)
    corruption_u = rng_corrupt.random(n_scans)
    _corrupt_fields(plan, scans, corruption, corruption_u)

    stats = {
        "epcs": ev.epcs,
        "anomalous_epcs": ev.anomalous_epcs,
        "confounded_epcs": ev.confounded_epcs,
        "skewed_events": {CLOCK_SKEW: int(ev.skewed.sum())},
        "events": dict(Counter(scan_day.tolist())),
        "labels": dict(Counter(labels["anomaly_type"].tolist())),
        "corrupted": dict(Counter(corruption[hit].tolist())),
    }
    return BlockRows(
        scans,
        scan_day,
        ev.time_s,
        ev.event_id,
        corruption,
        corruption_u,
        labels,
        _day(confirmed),
        confirmed,
        stats,
    )


def _variant(u: float, count: int) -> int:
    return min(int(u * count), count - 1)


def _corrupt_fields(
    plan: SimulationPlan, scans: dict[str, np.ndarray], corruption: np.ndarray, corruption_u: np.ndarray
) -> None:
    """Apply the field-level corruptions in place; the line-level ones are left to :func:`_text_lines`."""
    for i in np.flatnonzero(corruption != ""):
        what, u = corruption[i], corruption_u[i]
        if what == MISSING_FIELD:
            scans[plan.scan_required[_variant(u, len(plan.scan_required))]][i] = None
        elif what == BAD_TIMESTAMP:
            t = scans["event_time"][i]
            scans["event_time"][i] = _BAD_TIMESTAMPS[_variant(u, len(_BAD_TIMESTAMPS))].format(
                date=t[:10], yyyy=t[:4], mm=t[5:7], dd=t[8:10], hh=t[11:13], mmss=t[14:19]
            )
        elif what == UNKNOWN_LOCATION:
            number = _UNKNOWN_LOCATION_OFFSET + int(u * 9_999)
            scans["location_id"][i] = LOCATION_ID_FORMAT.format(number)
        elif what == OUTSIDE_PARTITION:
            t = dt.datetime.strptime(scans["event_time"][i], ISO_FORMAT)
            shift = (_variant(u, 6) % 3 + 1) * (1 if u < 0.5 else -1)  # 1..3 days later or earlier
            scans["event_time"][i] = (t + dt.timedelta(days=shift)).strftime(ISO_FORMAT)


def _text_lines(
    plan: SimulationPlan,
    fields: dict[str, np.ndarray],
    corruption: np.ndarray | None = None,
    corruption_u: np.ndarray | None = None,
) -> list[bytes]:
    """CSV or JSON lines; the line-level corruptions break their bytes here."""
    names = list(fields)
    if plan.format == "csv":
        template = ",".join(["%s"] * len(names))
    else:
        template = "{" + ",".join(f'"{c}":"%s"' for c in names) + "}"
    columns = [fields[c] for c in names]
    clean_rows = zip(*columns, strict=False)
    if corruption is None or corruption_u is None or not (corruption != "").any():
        return [(template % row).encode() for row in clean_rows]
    lines = []
    for i, row in enumerate(clean_rows):
        what = corruption[i]
        if not what or what in (BAD_TIMESTAMP, UNKNOWN_LOCATION, OUTSIDE_PARTITION):
            lines.append((template % row).encode())
        elif what == MISSING_FIELD:
            lines.append(_line_with_gaps(plan.format, names, row).encode())
        elif what == NON_UTF8:
            row = tuple(
                v + _LATIN1_SUFFIX if c == "product_name" else v for c, v in zip(names, row, strict=False)
            )
            lines.append((template % row).encode("latin-1"))
        else:  # UNPARSEABLE: CSV with a field too few or too many, JSON cut short
            u = corruption_u[i]
            line = template % row
            if plan.format == "csv":
                line = ",".join(row[:-1]) if u < 0.5 else line + ",EXTRA"
            else:
                line = line[: int((0.1 + 0.8 * u) * len(line))]
            lines.append(line.encode())
    return lines


def _line_with_gaps(fmt: str, names: list[str], row: tuple) -> str:
    if fmt == "csv":
        return ",".join("" if v is None else v for v in row)
    return "{" + ",".join(f'"{c}":"{v}"' for c, v in zip(names, row, strict=False) if v is not None) + "}"


# ---------------------------------------------------------------------------
# Spark


def simulated_schema(plan: SimulationPlan) -> StructType:
    """kind/date/sort keys, then the text line (CSV, JSON) or the columns (Parquet)."""
    fields = [
        StructField("kind", StringType(), False),
        StructField("date", StringType(), False),
        StructField("k1", LongType(), False),
        StructField("k2", StringType(), False),
        StructField("value", BinaryType(), True),
    ]
    if plan.format not in TEXT_FORMATS:
        names = list(dict.fromkeys([*plan.scan_columns, *plan.label_columns]))
        fields += [StructField(c, StringType(), True) for c in names]
    return StructType(fields)


def render_block(plan: SimulationPlan, block: int) -> Iterator[pd.DataFrame]:
    """The rows of one block in the shape of :func:`simulated_schema`."""
    rows = block_rows(plan, block)
    text = plan.format in TEXT_FORMATS
    n_labels = len(rows.label_day)
    scans = pd.DataFrame({"kind": SCANS, "date": rows.scan_day, "k1": rows.scan_time, "k2": rows.scan_key})
    labels = pd.DataFrame(
        {
            "kind": LABELS,
            "date": rows.label_day,
            "k1": rows.label_time,
            "k2": rows.labels["event_id"] + "|" + rows.labels["anomaly_type"]
            if n_labels
            else np.array([], dtype=object),
        }
    )
    if text:
        scans["value"] = _text_lines(plan, rows.scans, rows.corruption, rows.corruption_u)
        labels["value"] = _text_lines(plan, rows.labels)
        if block == 0:  # CSV headers for every file that may exist, sorted first (k1 = -1)
            yield _headers(plan)
    else:
        scans["value"] = None
        labels["value"] = None
        for c, v in rows.scans.items():
            scans[c] = v
        for c, v in rows.labels.items():
            labels[c] = v
    stats = pd.DataFrame(
        {
            "kind": [STATS],
            "date": ["-"],
            "k1": [block],
            "k2": [""],
            "value": [json.dumps(rows.stats, sort_keys=True).encode()],
        }
    )
    columns = simulated_schema(plan).fieldNames()
    for frame in (scans, labels, stats):
        # Columns a frame lacks are null objects: reindex would add float NaN, which Spark 4's
        # Arrow conversion refuses for a string column.
        frame = frame.assign(
            **{c: np.full(len(frame), None, dtype=object) for c in columns if c not in frame}
        )
        frame = frame[columns]
        for offset in range(0, max(len(frame), 1), ROWS_PER_BATCH):
            part = frame.iloc[offset : offset + ROWS_PER_BATCH]
            if len(part):
                yield part


def _headers(plan: SimulationPlan) -> pd.DataFrame:
    if plan.format != "csv":
        return pd.DataFrame(columns=["kind", "date", "k1", "k2", "value"])
    keys = [(SCANS, d) for d in plan.window_days] + [(LABELS, d) for d in plan.label_days]
    return pd.DataFrame(
        {
            "kind": [k for k, _ in keys],
            "date": [d.isoformat() for _, d in keys],
            "k1": -1,
            "k2": "",
            "value": [plan.header(k).encode() for k, _ in keys],
        }
    )


TRUTH_COLUMNS = ("event_id", "epc_code", "anomaly_type", "incident_id", "variant", "confounder")
TRUTH_TABLES = {
    TRUTH_LABELS: ("event_id", "epc_code", "anomaly_type", "incident_id", "variant"),
    TRUTH_CONFOUNDERS: ("event_id", "epc_code", "confounder"),
}


def truth_rows(plan: SimulationPlan, block: int) -> pd.DataFrame:
    """The ground truth of one block: every labelled event (the label's whole scope) and every
    event that shows a confounder (``kind`` tells the two tables apart)."""
    ev = simulate_block(plan, block)
    labelled = ev.label >= 0
    labels = pd.DataFrame(
        {
            "kind": TRUTH_LABELS,
            "event_id": ev.event_id[labelled],
            "epc_code": ev.epc_code[labelled],
            "anomaly_type": np.array(plan.anomaly_types, dtype=object)[ev.label[labelled]],
            "incident_id": ev.incident_id[labelled],
            "variant": ev.variant[labelled],
            "confounder": None,
        }
    )
    per_epc = ev.confounder >= 0
    confounders = pd.DataFrame(
        {
            "kind": TRUTH_CONFOUNDERS,
            "event_id": np.concatenate([ev.event_id[per_epc], ev.event_id[ev.skewed]]),
            "epc_code": np.concatenate([ev.epc_code[per_epc], ev.epc_code[ev.skewed]]),
            "anomaly_type": None,
            "incident_id": None,
            "variant": None,
            "confounder": np.concatenate(
                [
                    np.array(CONFOUNDERS, dtype=object)[ev.confounder[per_epc]],
                    np.full(int(ev.skewed.sum()), CLOCK_SKEW, dtype=object),
                ]
            ),
        }
    )
    return pd.concat([labels, confounders], ignore_index=True).astype(object)


def simulate_truth(blocks: DataFrame, plan: SimulationPlan) -> DataFrame:
    """Block ids (column ``id``) -> the ground-truth rows of those blocks (see :func:`truth_rows`)."""
    schema = StructType(
        [
            StructField("kind", StringType(), False),
            *[StructField(c, StringType(), True) for c in TRUTH_COLUMNS],
        ]
    )

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for block in batch["id"].tolist():
                frame = truth_rows(plan, int(block))
                for offset in range(0, len(frame), ROWS_PER_BATCH):
                    yield frame.iloc[offset : offset + ROWS_PER_BATCH]

    return blocks.mapInPandas(run, schema)


def truth_files(truth: DataFrame, kind: str) -> DataFrame:
    """One sorted file's rows of a truth table (it is small beside the scans: one task writes it)."""
    return (
        truth.where(F.col("kind") == kind)
        .repartition(1)
        .sortWithinPartitions(*TRUTH_TABLES[kind])
        .select(*TRUTH_TABLES[kind])
    )


def simulate(blocks: DataFrame, plan: SimulationPlan) -> DataFrame:
    """Block ids (column ``id``) -> every landing row of those blocks (see :func:`simulated_schema`)."""
    schema = simulated_schema(plan)

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            for block in batch["id"].tolist():
                yield from render_block(plan, int(block))

    return blocks.mapInPandas(run, schema)


def text_files(simulated: DataFrame, partitions: int) -> DataFrame:
    """One sorted run of lines per (kind, date): ``kind, date, value`` for the text writer."""
    return (
        simulated.repartition(partitions, "kind", "date")
        .sortWithinPartitions("kind", "date", "k1", "k2")
        .select("kind", "date", F.col("value").cast("string").alias("value"))
    )


def column_files(simulated: DataFrame, kind: str, columns: tuple[str, ...], partitions: int) -> DataFrame:
    """The rows of one kind, sorted per date, with the landing columns (for Parquet)."""
    return (
        simulated.where(F.col("kind") == kind)
        .repartition(partitions, "date")
        .sortWithinPartitions("date", "k1", "k2")
        .select("date", *columns)
    )


def merge_stats(lines: list[str]) -> dict:
    """Sum the per-block statistics rows."""
    keys = ("anomalous_epcs", "confounded_epcs", "skewed_events", "events", "labels", "corrupted")
    total: dict = {"epcs": 0, **{key: Counter() for key in keys}}
    for line in lines:
        part = json.loads(line)
        total["epcs"] += part["epcs"]
        for key in keys:
            total[key].update(part[key])
    return {k: (dict(sorted(v.items())) if isinstance(v, Counter) else v) for k, v in total.items()}
