"""Rows of one ingest batch, ready for the writer: what decoding produced, with registry ids resolved."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class DeadLetter:
    topic: str
    device_id: str | None
    kind: str | None
    reason: str
    detail: str
    payload: bytes


@dataclass(slots=True)
class BatchRows:
    # (ts_ns, device, metric, value, flag)
    readings: list[tuple[int, int, int, float, str]] = field(default_factory=list)
    # (ts_ns, device, lat, lon, speed, heading, altitude, alarm_bits, status_bits, mileage, extra_json)
    positions: list[tuple] = field(default_factory=list)
    # (ts_ns, device, speed, flow, occupancy)
    traffic: list[tuple[int, int, float, float | None, float | None]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    last_seen: dict[int, int] = field(default_factory=dict)  # device -> newest ts_ns in this batch

    @property
    def n_records(self) -> int:
        return len(self.readings) + len(self.positions) + len(self.traffic)
