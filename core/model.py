"""Records that travel between codecs, ingest, kernels and storage. Defined once, imported everywhere.

Times are integer nanoseconds since the Unix epoch, UTC (``ts_ns``): exact, cheap to compare, and
what the numba kernels take.

The per-record types (Reading, Position, TrafficObservation) are slotted but not frozen: ingest builds
hundreds of thousands per second and a frozen dataclass's ``__init__`` costs 4x more (it goes through
``object.__setattr__``). Treat them as immutable all the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from wulian.core.const import FLAG_NORMAL


@dataclass(slots=True)
class Reading:
    """One scalar value of one metric of one device (``readings`` row, device from the topic)."""

    ts_ns: int
    metric: str
    value: float
    flag: str = FLAG_NORMAL


@dataclass(slots=True)
class Position:
    """One vehicle position report (``vehicle_positions`` row). Speed km/h, heading degrees from north."""

    ts_ns: int
    lat: float
    lon: float
    speed_kmh: float = 0.0
    heading: float = 0.0
    altitude_m: float = 0.0
    alarm_bits: int = 0  # JT/T 808 alarm flag word (protocols.md), 0 for JSON sources without one
    status_bits: int = 0  # JT/T 808 status word
    mileage_km: float | None = None
    extra: dict = field(default_factory=dict)  # decoded additional items, kept verbatim
    protocol_edition: int | None = None  # JT/T 808 edition of the frame (2013, 2019); None for JSON


@dataclass(slots=True)
class TrafficObservation:
    """One detector interval on a road segment (``traffic_observations`` row)."""

    ts_ns: int
    speed_kmh: float
    flow_vph: float | None = None
    occupancy: float | None = None


@dataclass(slots=True)
class Decoded:
    """What one MQTT message decodes to. Exactly the lists for its stream are filled."""

    readings: list[Reading] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    traffic: list[TrafficObservation] = field(default_factory=list)
    # Device-level records that are not time series (HJ 212 CN 2021/2041 state, JT/T 808 registration):
    events: list[dict] = field(default_factory=list)
    # What the codec had to repair to read the message (a tolerated field deviation, e.g. JT/T 808
    # "bare_7d_check"): the data is good, but ingest counts and logs it so a repaired frame never passes
    # for a well-formed one.
    repairs: tuple[str, ...] = ()
