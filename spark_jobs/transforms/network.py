"""The simulated supply network and product catalogue of the generator.

Everything here is small (hundreds of locations, tens of products) and built
on the driver, deterministically from the network seed; the Spark tasks that
simulate journeys receive it whole.

The journey follows ``schemas/domain.yaml``: business steps in tier order, and
the event types in journey order, one group per step, each group ending at its
``*_Outbound`` (the last, the point of sale, has only ``POS_Sell``); the
``return_event_types`` are backward moves outside the journey.

Reference data beside the locations and products: the air lanes (hub pairs at
least ``air_lane_min_km`` apart, listed in both directions) and the serial
ranges each product issued.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tracelake.config import GeneratorSettings
from tracelake.errors import TracelakeError
from tracelake.tables import Domain

EARTH_RADIUS_KM = 6371.0088
KM_PER_DEGREE_LAT = 111.32
COORDINATE_DECIMALS = 5
LOCATION_ID_FORMAT = "LOC-{:05d}"
COMPANY_CODE_DIGITS = 7
PRODUCT_CODE_DIGITS = 7
# Companies draw their GS1-style codes from this range (880: a national prefix).
COMPANY_CODE_RANGE = (8_800_000, 8_999_999)

# Display names per business step ("{n}" is the location's number within its step).
_LOCATION_NAMES = {
    "Factory": "Factory {n:02d}",
    "WMS": "Warehouse {n:02d}",
    "LGS_HUB": "Logistics Hub {n:02d}",
    "W_STOCK": "Wholesaler {n:03d}",
    "R_STOCK": "Retailer {n:03d}",
    "POS": "Retailer {n:03d} Checkout",
}
_BRANDS = (
    "Nordvik",
    "Sunhaven",
    "Bluecrest",
    "Maplewood",
    "Ironleaf",
    "Goldfield",
    "Riverstone",
    "Silverpine",
    "Oakridge",
    "Clearwater",
    "Redcliff",
    "Greenvale",
)
_ITEMS = (
    "Sparkling Water",
    "Green Tea",
    "Instant Noodles",
    "Rice Crackers",
    "Face Cream",
    "Shampoo",
    "Vitamin C Tablets",
    "Hand Soap",
    "Coffee Beans",
    "Soy Sauce",
    "Sunscreen",
    "Toothpaste",
    "Protein Bar",
    "Laundry Detergent",
    "Olive Oil",
    "Dark Chocolate",
    "Energy Drink",
    "Lip Balm",
    "Baby Wipes",
    "Kimchi",
    "Red Ginseng Extract",
    "Honey",
    "Body Lotion",
    "Cold Brew",
)
_SIZES = ("50ml", "100ml", "250ml", "500ml", "1L", "100g", "250g", "500g", "1kg", "12pk", "30ct")


class NetworkError(TracelakeError, ValueError):
    """The network cannot be built from the configured sizes or the domain file."""


@dataclass(frozen=True)
class Stage:
    """One business step of the journey: its tier and the event types scanned there."""

    tier: int
    business_step: str
    event_types: tuple[str, ...]


def journey_stages(domain: Domain) -> tuple[Stage, ...]:
    """Stages in tier order, with their event types, from ``schemas/domain.yaml``."""
    steps = sorted(domain.business_steps.items(), key=lambda kv: kv[1])
    groups: list[list[str]] = [[]]
    backward = set(domain.return_event_types)
    for event_type in (t for t in domain.event_types if t not in backward):
        groups[-1].append(event_type)
        if event_type.endswith("_Outbound"):
            groups.append([])
    groups = [g for g in groups if g]
    if len(groups) != len(steps) or [t for _, t in steps] != list(range(len(steps))):
        raise NetworkError(
            f"schemas/domain.yaml: {len(groups)} event-type groups {groups} do not match the "
            f"business steps {dict(steps)} (tiers 0..n-1, one group per step, each ending at *_Outbound)"
        )
    return tuple(Stage(tier, step, tuple(g)) for (step, tier), g in zip(steps, groups, strict=False))


def haversine_km(lat1: Any, lon1: Any, lat2: Any, lon2: Any) -> Any:
    """Great-circle distance in km (numpy broadcasting)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


@dataclass(frozen=True)
class Network:
    """Locations (indexed 0..n-1), distances, next-stop choice tables, products."""

    stages: tuple[Stage, ...]
    location_id: np.ndarray  # str
    location_name: np.ndarray  # str
    tier: np.ndarray  # int
    latitude: np.ndarray
    longitude: np.ndarray
    distance_km: np.ndarray  # (n_locations, n_locations)
    members: tuple[np.ndarray, ...]  # per tier: location indices
    # per tier: (n_locations, len(members[tier])) cumulative choice probabilities
    near_cum: tuple[np.ndarray, ...]
    jump_cum: tuple[np.ndarray, ...]
    dup_cum: tuple[np.ndarray, ...]
    dup_near_cum: tuple[np.ndarray, ...]  # clone places dup_near_km_min..dup_near_km_max away
    air_cum: np.ndarray  # (n_locations, n_hubs): cumulative choice of an air-lane partner among the hubs
    has_air_lane: np.ndarray  # bool per location: a hub with at least one air lane
    air_lanes: np.ndarray  # (n_hubs, n_hubs) bool, symmetric: the designated air lanes
    pos_of: np.ndarray  # location index -> its point of sale (retailers), else -1
    operators: np.ndarray  # (n_locations, operators_per_location) str
    devices: np.ndarray  # (n_locations, devices_per_location) str
    device_skew_s: (
        np.ndarray
    )  # (n_locations, devices_per_location): clock offset in seconds (0: correct clock)
    company_code: np.ndarray  # str, per company
    product_company: np.ndarray  # company index per product
    product_code: np.ndarray  # str, per product
    product_name: np.ndarray  # str, per product
    product_factory: np.ndarray  # location index of the factory making each product
    serial_stride: int  # 0: serials are EPC numbers, else product k issues from k * stride + 1
    serial_issued: int  # serials per product range (serial_stride > 0)

    @property
    def n_locations(self) -> int:
        return len(self.location_id)

    def locations_frame(self) -> pd.DataFrame:
        """The locations reference (landing_locations columns, all text)."""
        return pd.DataFrame(
            {
                "location_id": self.location_id,
                "location_name": self.location_name,
                "business_step": [self.stages[t].business_step for t in self.tier],
                "tier": [str(t) for t in self.tier],
                "latitude": [f"{v:.{COORDINATE_DECIMALS}f}" for v in self.latitude],
                "longitude": [f"{v:.{COORDINATE_DECIMALS}f}" for v in self.longitude],
            }
        )

    def air_lanes_frame(self) -> pd.DataFrame:
        """Designated air lanes (landing_air_lanes columns): both directions of each hub pair."""
        hubs = self.members[2]
        origin, dest = np.nonzero(self.air_lanes)
        return pd.DataFrame(
            {
                "origin_location_id": self.location_id[hubs[origin]].astype(object),
                "destination_location_id": self.location_id[hubs[dest]].astype(object),
            }
        )

    def serial_ranges_frame(self, epcs: int) -> pd.DataFrame:
        """The serials each product issued (landing_serial_ranges columns), as silver's EPC parts."""
        k = np.arange(len(self.product_code))
        if self.serial_stride:
            low, high = k * self.serial_stride + 1, k * self.serial_stride + self.serial_issued
        else:
            low, high = np.ones_like(k), np.full_like(k, max(epcs, 1))
        width = serial_digits(self.serial_stride, epcs, len(k))
        return pd.DataFrame(
            {
                "company_prefix": self.company_code[self.product_company],
                "item_reference": self.product_code,
                "serial_from": [f"{v:0{width}d}" for v in low],
                "serial_to": [f"{v:0{width}d}" for v in high],
            }
        )

    def serials(self, product: np.ndarray, number: np.ndarray) -> np.ndarray:
        """Issued serial (as an integer) of the EPC with global ``number`` of each ``product``."""
        if self.serial_stride:
            return product.astype(np.int64) * self.serial_stride + 1 + number.astype(np.int64)
        return number.astype(np.int64) + 1

    def unissued_serials(self, product: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A serial in the product's own block that lies outside its issued range."""
        stride = self.serial_stride or 2 * max(int(self.serial_issued), 1)
        room = stride - self.serial_issued
        return product.astype(np.int64) * stride + 1 + self.serial_issued + (u * room).astype(np.int64) % room

    def products_frame(self) -> pd.DataFrame:
        """The genuine company/product pairs (landing_products columns)."""
        return pd.DataFrame(
            {
                "company_code": self.company_code[self.product_company],
                "product_code": self.product_code,
                "product_name": self.product_name,
            }
        )


def _cumulative(weights: np.ndarray) -> np.ndarray:
    cum = np.cumsum(weights, axis=1)
    cum /= cum[:, -1:]
    cum[:, -1] = 1.0
    return cum


def _far_weights(distance: np.ndarray, min_km: float) -> np.ndarray:
    """Uniform over candidates at least min_km away; the farthest one where none is."""
    far = (distance >= min_km).astype(float)
    none = far.sum(axis=1) == 0
    far[none, distance[none].argmax(axis=1)] = 1.0
    return far


SERIAL_DIGITS = 9


def serial_digits(stride: int, epcs: int, products: int) -> int:
    """Width of the zero-padded serial: 9 digits, more where the largest serial needs them."""
    largest = stride * products if stride else epcs
    return max(SERIAL_DIGITS, len(str(largest)))


def _band_weights(distance: np.ndarray, low: float, high: float) -> np.ndarray:
    """Uniform over candidates low..high km away; the nearest one at least low away where none is."""
    band = ((distance >= low) & (distance <= high)).astype(float)
    none = band.sum(axis=1) == 0
    if none.any():
        beyond = np.where(distance[none] >= low, distance[none], np.inf)
        pick = np.where(np.isfinite(beyond).any(axis=1), beyond.argmin(axis=1), distance[none].argmax(axis=1))
        band[np.flatnonzero(none), pick] = 1.0
    return band


def _in_region(rng: np.random.Generator, n: int, half: float) -> np.ndarray:
    return rng.uniform(-half, half, size=(n, 2))


def build_network(settings: GeneratorSettings, domain: Domain) -> Network:
    """The network and catalogue for ``settings`` (same settings -> same network)."""
    stages = journey_stages(domain)
    steps = [s.business_step for s in stages]
    unknown = sorted(set(settings.dwell_hours) - set(steps))
    if unknown:
        raise NetworkError(f"generator.dwell_hours names unknown business step(s) {unknown}; known: {steps}")
    if len(stages) != 6:
        raise NetworkError(
            f"the generator simulates 6 business steps (factory .. point of sale), domain.yaml has {steps}"
        )
    seed = settings.seed if settings.network_seed is None else settings.network_seed
    rng = np.random.default_rng([seed, 0x6E6574])  # "net"

    half = settings.region_km / 2
    cities = _in_region(rng, settings.cities, half * 0.8)

    def near_cities(n: int) -> np.ndarray:
        centre = cities[rng.integers(settings.cities, size=n)]
        return np.clip(centre + rng.normal(0, settings.city_spread_km, size=(n, 2)), -half, half)

    counts = [
        settings.factories,
        settings.warehouses,
        settings.hubs,
        settings.wholesalers,
        settings.retailers,
    ]
    xy_parts = [
        _in_region(rng, settings.factories, half),
        _in_region(rng, settings.warehouses, half),
        _in_region(rng, settings.hubs, half),
        near_cities(settings.wholesalers),
        near_cities(settings.retailers),
    ]
    retail_xy = xy_parts[4]
    angle = rng.uniform(0, 2 * np.pi, size=settings.retailers)
    radius = rng.uniform(0.05, settings.pos_distance_km_max, size=settings.retailers)
    xy_parts.append(retail_xy + np.column_stack([np.cos(angle), np.sin(angle)]) * radius[:, None])
    counts.append(settings.retailers)

    xy = np.vstack(xy_parts)
    tier = np.repeat(np.arange(len(stages)), counts)
    number = np.concatenate([np.arange(1, c + 1) for c in counts])
    latitude = np.round(settings.region_center_lat + xy[:, 1] / KM_PER_DEGREE_LAT, COORDINATE_DECIMALS)
    lon_scale = KM_PER_DEGREE_LAT * np.cos(np.radians(settings.region_center_lat))
    longitude = np.round(settings.region_center_lon + xy[:, 0] / lon_scale, COORDINATE_DECIMALS)
    n = len(tier)
    location_id = np.array([LOCATION_ID_FORMAT.format(i + 1) for i in range(n)], dtype=object)
    location_name = np.array(
        [
            _LOCATION_NAMES.get(steps[t], steps[t] + " {n:03d}").format(n=k)
            for t, k in zip(tier, number, strict=False)
        ],
        dtype=object,
    )
    distance = haversine_km(latitude[:, None], longitude[:, None], latitude[None, :], longitude[None, :])

    members = tuple(np.flatnonzero(tier == t) for t in range(len(stages)))
    near_cum = tuple(_cumulative(np.exp(-distance[:, m] / settings.nearby_scale_km) + 1e-12) for m in members)
    jump_cum = tuple(_cumulative(_far_weights(distance[:, m], settings.jump_min_km)) for m in members)
    dup_cum = tuple(_cumulative(_far_weights(distance[:, m], settings.dup_min_km)) for m in members)
    dup_near_cum = tuple(
        _cumulative(_band_weights(distance[:, m], settings.dup_near_km_min, settings.dup_near_km_max))
        for m in members
    )
    hubs = members[2]
    lanes = distance[np.ix_(hubs, hubs)] >= settings.air_lane_min_km
    np.fill_diagonal(lanes, False)
    air_weights = np.zeros((n, len(hubs)))
    air_weights[hubs] = lanes
    has_air_lane = air_weights.sum(axis=1) > 0
    air_weights[~has_air_lane, 0] = 1.0  # never used: only hubs with a lane fly
    air_cum = _cumulative(air_weights)
    pos_of = np.full(n, -1)
    pos_of[members[4]] = members[5]

    operators = np.array(
        [[f"OPR-{i + 1:05d}-{k + 1:02d}" for k in range(settings.operators_per_location)] for i in range(n)],
        dtype=object,
    )
    devices = np.array(
        [[f"DEV-{i + 1:05d}-{k + 1:02d}" for k in range(settings.devices_per_location)] for i in range(n)],
        dtype=object,
    )

    # Clock skew from a stream of its own, so that the rest of the network does not depend on it.
    rng_skew = np.random.default_rng([seed, 0x736B6577])  # "skew"
    skewed = rng_skew.random(devices.shape) < settings.confounder_rates.get("clock_skew", 0.0)
    magnitude = rng_skew.uniform(
        settings.clock_skew_seconds_min, settings.clock_skew_seconds_max, size=devices.shape
    )
    sign = np.where(rng_skew.random(devices.shape) < 0.5, -1.0, 1.0)
    device_skew_s = np.where(skewed, np.round(sign * magnitude), 0.0)

    low, high = COMPANY_CODE_RANGE
    company_code = np.array(
        [
            f"{c:0{COMPANY_CODE_DIGITS}d}"
            for c in rng.choice(np.arange(low, high + 1), settings.companies, replace=False)
        ],
        dtype=object,
    )
    per = settings.products_per_company
    product_company = np.repeat(np.arange(settings.companies), per)
    product_code = np.array(
        [f"{k + 1:0{PRODUCT_CODE_DIGITS}d}" for _ in range(settings.companies) for k in range(per)],
        dtype=object,
    )
    brands = rng.permutation(len(_BRANDS))
    names = []
    for c in range(settings.companies):
        brand = _BRANDS[brands[c % len(_BRANDS)]] + ("" if c < len(_BRANDS) else f" {c // len(_BRANDS) + 1}")
        combos = rng.permutation(len(_ITEMS) * len(_SIZES))
        for k in range(per):
            item, size = divmod(int(combos[k % len(combos)]), len(_SIZES))
            suffix = "" if k < len(combos) else f" v{k // len(combos) + 1}"
            names.append(f"{brand} {_ITEMS[item]} {_SIZES[size]}{suffix}")
    product_factory = members[0][rng.integers(len(members[0]), size=len(product_code))]

    return Network(
        stages=stages,
        location_id=location_id,
        location_name=location_name,
        tier=tier,
        latitude=latitude,
        longitude=longitude,
        distance_km=distance,
        members=members,
        near_cum=near_cum,
        jump_cum=jump_cum,
        dup_cum=dup_cum,
        dup_near_cum=dup_near_cum,
        air_cum=air_cum,
        has_air_lane=has_air_lane,
        air_lanes=lanes,
        pos_of=pos_of,
        operators=operators,
        devices=devices,
        device_skew_s=device_skew_s,
        company_code=company_code,
        product_company=product_company,
        product_code=product_code,
        product_name=np.array(names, dtype=object),
        product_factory=product_factory,
        serial_stride=settings.serial_stride,
        serial_issued=settings.serial_issued,
    )
