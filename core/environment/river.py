"""The river as the tracing sees it: stations ordered upstream -> downstream by chainage, and a
flow-dependent travel time between them.

Mean velocity follows at-a-station hydraulic geometry, v = a * Q^b (Leopold & Maddock), fitted per
segment from gaugings or dye tests; without a fit the river-wide coefficients apply. A pulse reaches a
station ``sum(L_i / v_i)`` after passing the one upstream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.environment.water import class_number


@dataclass(frozen=True, slots=True)
class RiverStation:
    """A water-quality station; ``km`` is the distance along the river from its upstream reference."""

    station_id: str
    km: float
    target_class: str = "III"
    lake: bool = False  # station on a lake/reservoir stretch (TP lake column)

    @property
    def target_number(self) -> int:
        return class_number(self.target_class)


@dataclass(frozen=True, slots=True)
class River:
    """Stations sorted upstream -> downstream. ``segment_coeffs[i]`` is (a, b) for the segment from
    station i to i+1 (None: the river-wide ``velocity_a``/``velocity_b``)."""

    name: str
    stations: tuple[RiverStation, ...]
    velocity_a: float = 0.25  # m/s at Q = 1 m³/s
    velocity_b: float = 0.35
    min_velocity: float = 0.02  # m/s; keeps near-zero flow from giving infinite travel times
    segment_coeffs: tuple[tuple[float, float] | None, ...] = ()

    def __post_init__(self) -> None:
        kms = [s.km for s in self.stations]
        if any(b <= a for a, b in zip(kms, kms[1:])):
            raise ValueError("stations must be ordered upstream -> downstream with increasing km")
        if self.segment_coeffs and len(self.segment_coeffs) != len(self.stations) - 1:
            raise ValueError("segment_coeffs needs one entry per segment")

    def index(self, station_id: str) -> int:
        for i, s in enumerate(self.stations):
            if s.station_id == station_id:
                return i
        raise KeyError(station_id)

    def velocity(self, segment: int, flow_m3s: float) -> float:
        """Mean velocity (m/s) on segment ``segment`` (station i -> i+1) at discharge ``flow_m3s``."""
        coeffs = self.segment_coeffs[segment] if self.segment_coeffs else None
        a, b = coeffs if coeffs is not None else (self.velocity_a, self.velocity_b)
        return max(self.min_velocity, a * max(flow_m3s, 0.0) ** b)

    def travel_time_s(self, upstream: int, downstream: int, flow_m3s: float | np.ndarray) -> float:
        """Seconds for water to go from station ``upstream`` to ``downstream`` (indices). ``flow_m3s`` is
        one discharge for the whole stretch or one per segment (length n_stations - 1)."""
        if downstream < upstream:
            raise ValueError("downstream index must not be above upstream")
        flows = np.broadcast_to(np.asarray(flow_m3s, dtype=np.float64), (max(len(self.stations) - 1, 1),))
        total = 0.0
        for seg in range(upstream, downstream):
            length_m = (self.stations[seg + 1].km - self.stations[seg].km) * 1000.0
            total += length_m / self.velocity(seg, float(flows[seg]))
        return total
