"""Simulated fleets for the shipped profiles (core.streams_profiles): refrigerated trucks and cold stores,
EV chargers, enterprise energy meters, petrochemical pumps. Pure: ``sample(ts_ns)`` is the JSON record
the device would publish then.

The first device of each fleet misbehaves at fixed minutes of every hour so the profile's default rules
have something to raise in the demo: a truck warms above 8 °C (minutes 20-44) with its door open
(minutes 0-9), a charger faults (minutes 30-39), a meter exceeds contract demand (minutes 10-19), a
pump's bearing warms 1.5 °C/min (minutes 30-49) and its vibration rises linearly 0.25 mm/s per minute
from 2.5 mm/s (minutes 30-54: ISO 10816 zone D, 7.1 mm/s, is crossed between minutes 48 and 49).

Every truck loads at minutes 0-9 and is on a trip (``trip`` = 1) from minute 10 to the hour, so the
faulty truck's trips last 50 minutes, 25 of them above 8 °C: 50 % compliance. Chargers charge in minutes
0-14 and 30-44 (the faulty one loses 30-39 to its fault): 50 % and 33 % utilisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wulian.core.timebase import NS_PER_S

FLEET_PREFIX = {"coldchain": "CC", "charging": "EV", "energy": "EM", "equipment": "EQ"}
DEVICE_TYPE = {"coldchain": "reefer_truck", "charging": "ev_charger", "energy": "energy_meter", "equipment": "pump"}
_EPOCH_S = 1_577_808_000.0  # 2020-01-01 00:00 +08:00: cumulative registers start then (never go backwards)


@dataclass
class ProfileSim:
    device_id: str
    stream: str
    rng: np.random.Generator
    faulty: bool = False
    base: dict[str, float] = field(default_factory=dict)

    @property
    def device_type(self) -> str:
        return DEVICE_TYPE[self.stream]

    def sample(self, ts_ns: int) -> dict:
        ts_s = ts_ns / NS_PER_S
        minute = int(ts_s // 60) % 60
        v = getattr(self, "_" + self.stream)(ts_s, minute, self.faulty, self.rng)
        return {"ts": ts_ns // 1_000_000, "values": {k: round(float(x), 4) for k, x in v.items()}}

    def _coldchain(self, t: float, m: int, bad: bool, r) -> dict:
        temp = 11.0 if bad and 20 <= m < 45 else 5.0 + r.normal(0, 0.4)
        return {"temperature": temp, "humidity": min(100.0, 85 + r.normal(0, 2)),
                "door_open": 1.0 if bad and m < 10 else 0.0, "trip": 1.0 if m >= 10 else 0.0,
                "lat": self.base["lat"] + 0.01 * math.sin(t / 3600), "lon": self.base["lon"] + 0.01 * math.cos(t / 3600)}

    def _charging(self, t: float, m: int, bad: bool, r) -> dict:
        fault = bad and 30 <= m < 40
        charging = not fault and (m // 15) % 2 == 0
        return {"state": 2.0 if fault else float(charging), "power_kw": self.base["kw"] if charging else 0.0,
                "energy_kwh": self.base["kw"] * 0.4 * (t - _EPOCH_S) / 3600, "fault_code": 23.0 if fault else 0.0}

    def _energy(self, t: float, m: int, bad: bool, r) -> dict:
        h = (t - _EPOCH_S) / 3600
        return {"power_kw": 2300.0 if bad and 10 <= m < 20 else self.base["kw"] * (1 + r.normal(0, 0.05)),
                "electricity_kwh": self.base["kw"] * h, "gas_m3": self.base["gas"] * h,
                "steam_t": self.base["steam"] * h, "water_t": self.base["water"] * h}

    def _equipment(self, t: float, m: int, bad: bool, r) -> dict:
        temp = 65.0 + 1.5 * min(20, m - 30) if bad and m >= 30 else 65.0 + r.normal(0, 0.05)
        vib = 2.5 + 0.25 * (m - 30) if bad and 30 <= m < 55 else 2.5 + abs(r.normal(0, 0.2))
        return {"vibration": vib, "temperature": temp,
                "pressure": 1.6 + r.normal(0, 0.02)}


def build_profile_fleet(profile: str, n: int = 5, seed: int = 7, faults: bool = True) -> list[ProfileSim]:
    """``n`` devices of one profile, deterministic for a seed; with ``faults`` the first misbehaves."""
    master = np.random.default_rng(seed)
    fleet = []
    for i in range(n):
        rng = np.random.default_rng(master.integers(1 << 62))
        base = {"lat": 37.43 + rng.normal(0, 0.05), "lon": 118.67 + rng.normal(0, 0.05),  # Dongying
                "kw": float(rng.choice([7.0, 60.0, 120.0])) if profile == "charging" else float(rng.uniform(800, 1500)),
                "gas": float(rng.uniform(50, 200)), "steam": float(rng.uniform(1, 5)), "water": float(rng.uniform(5, 20))}
        fleet.append(ProfileSim(f"{FLEET_PREFIX[profile]}{i + 1:04d}", profile, rng, faults and i == 0, base))
    return fleet
