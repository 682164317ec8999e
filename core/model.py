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


class ScalarRecord:
    """One record's readings as it came (one time and flag, the values by metric name), read as a sequence
    of ``Reading``: what the JSON telemetry codec's fast path gives ingest instead of a list of ``Reading``
    objects. Ingest builds typed columns from ``names``/``values`` directly (``ingest.pipeline``): at ten
    readings a message, one object per reading was most of the per-reading Python cost (issue 14)."""

    __slots__ = ("ts_ns", "names", "values", "flag")

    def __init__(self, ts_ns: int, names: list[str], values: list[float | int], flag: str = FLAG_NORMAL) -> None:
        self.ts_ns = ts_ns
        self.names = names
        self.values = values  # finite ints or floats (checked by the codec), one per name
        self.flag = flag

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Reading:
        return Reading(self.ts_ns, self.names[i], float(self.values[i]), self.flag)

    def __iter__(self):
        ts, flag = self.ts_ns, self.flag
        return (Reading(ts, n, float(v), flag) for n, v in zip(self.names, self.values))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (ScalarRecord, list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"ScalarRecord({list(self)!r})"


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

    readings: list[Reading] | ScalarRecord = field(default_factory=list)  # ScalarRecord: JSON fast path
    positions: list[Position] = field(default_factory=list)
    traffic: list[TrafficObservation] = field(default_factory=list)
    # Device-level records that are not time series (HJ 212 CN 2021/2041 state, JT/T 808 registration):
    events: list[dict] = field(default_factory=list)
    # What the codec had to repair to read the message (a tolerated field deviation, e.g. JT/T 808
    # "bare_7d_check"): the data is good, but ingest counts and logs it so a repaired frame never passes
    # for a well-formed one.
    repairs: tuple[str, ...] = ()
