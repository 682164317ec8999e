"""A small city of simulated devices for every stream, with daily profiles and noise.

Pure: ``DeviceSim.sample(ts_ns)`` returns the JSON record a device would publish at that time.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wulian.core.const import Stream
from wulian.core.timebase import CHINA_OFFSET_S, NS_PER_S, S_PER_DAY

_REGISTER_EPOCH_S = 1_767_196_800.0  # 2026-01-01 00:00 +08:00: simulated meters were installed then


def _hour_of_day(ts_ns: int) -> float:
    return ((ts_ns // NS_PER_S + CHINA_OFFSET_S) % S_PER_DAY) / 3600.0


def _daily(ts_ns: int, peak_hour: float, depth: float) -> float:
    """1 +- depth, peaking at ``peak_hour`` China time."""
    return 1.0 + depth * math.cos((_hour_of_day(ts_ns) - peak_hour) / 24.0 * 2 * math.pi)


def _commute(ts_ns: int) -> float:
    """0..1 traffic demand with morning and evening peaks."""
    h = _hour_of_day(ts_ns)
    return min(1.0, 0.15 + 0.85 * (math.exp(-((h - 8.0) ** 2) / 2.0) + math.exp(-((h - 18.0) ** 2) / 2.5)))


@dataclass
class DeviceSim:
    device_id: str
    stream: Stream
    rng: np.random.Generator
    base: dict[str, float] = field(default_factory=dict)
    state: dict[str, float] = field(default_factory=dict)

    def sample(self, ts_ns: int) -> dict:
        ts_ms = ts_ns // 1_000_000
        r = self.rng
        if self.stream is Stream.VEHICLE:
            return self._vehicle(ts_ms)
        if self.stream is Stream.TRAFFIC:
            demand = _commute(ts_ns)
            free = self.base["free_speed"]
            speed = max(3.0, free * (1.0 - 0.6 * demand**2) + r.normal(0, 2.0))
            return {"ts": ts_ms, "speed": round(speed, 1), "flow": round(1800 * demand + r.normal(0, 40), 0),
                    "occupancy": round(min(1.0, 0.05 + 0.5 * demand**2), 3)}
        if self.stream is Stream.METER:
            # Registers are a function of time, never of the process: a restarted simulator must not make
            # them go backwards. Use follows a daily cycle: d/dt = rate * (1 + 0.6 cos(...)) > 0.
            elapsed = ts_ns / 1e9 - _REGISTER_EPOCH_S
            cycle = 0.6 * math.sin(2 * math.pi * elapsed / S_PER_DAY) * S_PER_DAY / (2 * math.pi)
            values = {name: round(self.state[name] + rate_h / 3600.0 * (elapsed + cycle), 3)
                      for name, rate_h in self.base.items()}
            return {"ts": ts_ms, "values": values}
        peak = {Stream.POLLUTION: 14.0, Stream.AIR: 8.0, Stream.WATER: 15.0, Stream.GRID: 19.0}[self.stream]
        depth = 0.0 if self.stream is Stream.GRID else 0.25
        f = _daily(ts_ns, peak, depth)
        values = {}
        for name, b in self.base.items():
            if name in ("Ua", "Ub", "Uc"):
                v = b * (1 + r.normal(0, 0.01))
            elif name == "freq":
                v = 50.0 + r.normal(0, 0.02)
            elif name == "PF":
                v = min(1.0, 0.93 + r.normal(0, 0.02))
            elif name == "pH":
                v = b + r.normal(0, 0.1)
            elif name in ("Ia", "Ib", "Ic", "P"):
                v = b * _daily(ts_ns, peak, 0.35) * (1 + r.normal(0, 0.05))
            else:
                v = max(0.0, b * f * (1 + r.normal(0, 0.08)))
            values[name] = round(v, 3)
        return {"ts": ts_ms, "values": values}

    def _vehicle(self, ts_ms: int) -> dict:
        s, r = self.state, self.rng
        last = s.get("t_ms", ts_ms)
        dt = max(0.0, (ts_ms - last) / 1000.0)
        s["t_ms"] = ts_ms
        s["heading"] = (s["heading"] + r.normal(0, 8)) % 360
        speed = max(0.0, min(110.0, s["speed"] + r.normal(0, 4)))
        s["speed"] = speed
        d_m = speed / 3.6 * dt
        s["lat"] += d_m * math.cos(math.radians(s["heading"])) / 111_320.0
        s["lon"] += d_m * math.sin(math.radians(s["heading"])) / (111_320.0 * math.cos(math.radians(s["lat"])))
        s["mileage"] += d_m / 1000.0
        return {"ts": ts_ms, "lat": round(s["lat"], 6), "lon": round(s["lon"], 6), "speed": round(speed, 1),
                "heading": round(s["heading"], 1), "altitude": 12.0, "alarm": 0, "status": 3,
                "mileage": round(s["mileage"], 3)}


# metric -> typical value, per stream
_PROFILES: dict[Stream, dict[str, float]] = {
    Stream.POLLUTION: {"SO2": 35.0, "NOx": 80.0, "PM": 8.0, "O2": 9.5, "flow": 120000.0},
    Stream.AIR: {"PM25": 35.0, "PM10": 60.0, "SO2": 10.0, "NO2": 30.0, "O3": 90.0, "CO": 0.8},
    Stream.WATER: {"DO": 6.0, "CODMn": 5.0, "NH3_N": 0.8, "TP": 0.15, "pH": 7.4, "temp": 24.0},
    Stream.GRID: {"Ua": 220.0, "Ub": 220.0, "Uc": 220.0, "Ia": 80.0, "Ib": 78.0, "Ic": 82.0, "P": 52.0,
                  "PF": 0.93, "freq": 50.0},
    Stream.METER: {"elec_kwh": 1.2, "water_m3": 0.03, "gas_m3": 0.05, "heat_kwh": 2.0},  # per hour
}

DEFAULT_FLEET = {
    Stream.POLLUTION: 20, Stream.AIR: 10, Stream.WATER: 8, Stream.GRID: 30,
    Stream.METER: 30, Stream.VEHICLE: 20, Stream.TRAFFIC: 20,
}
_PREFIX = {
    Stream.POLLUTION: "PS", Stream.AIR: "AQ", Stream.WATER: "LJ", Stream.GRID: "GM",
    Stream.METER: "FM", Stream.VEHICLE: "VH", Stream.TRAFFIC: "TS",
}


def build_city(counts: dict[Stream, int] | None = None, seed: int = 7) -> list[DeviceSim]:
    """The default fleet (or ``counts`` per stream), deterministic for a seed."""
    counts = counts or DEFAULT_FLEET
    master = np.random.default_rng(seed)
    fleet = []
    for stream, n in counts.items():
        for i in range(n):
            rng = np.random.default_rng(master.integers(1 << 62))
            dev = DeviceSim(f"{_PREFIX[stream]}{i + 1:04d}", stream, rng)
            if stream is Stream.VEHICLE:
                dev.state = {"lat": 23.354 + rng.normal(0, 0.03), "lon": 116.682 + rng.normal(0, 0.05),
                             "heading": rng.uniform(0, 360), "speed": rng.uniform(30, 80), "mileage": 0.0}
            elif stream is Stream.TRAFFIC:
                dev.base = {"free_speed": float(rng.uniform(45, 90))}
            elif stream is Stream.METER:
                dev.base = {k: v * float(rng.uniform(0.5, 1.5)) for k, v in _PROFILES[stream].items()}
                dev.state = {k: float(rng.uniform(100, 5000)) for k in dev.base}  # register at installation
            else:
                dev.base = {k: v * float(rng.uniform(0.7, 1.3)) for k, v in _PROFILES[stream].items()}
            fleet.append(dev)
    return fleet
