"""Environment simulators: stack and wastewater sources, a petrochemical boundary monitor, air stations
and Lianjiang water stations, with three scripted events:

* an exceedance episode at the stack (SO2 well over its permit limit on the converted 1-h mean),
  plus a maintenance hour (16 minutes flagged M: 44 valid minutes, not a valid hour), and a boundary
  monitor silent for 4 hours (daily valid-data rate 20/24, below 0.9) with an hour of benzene at twice
  the plant's limit;
* an AQI episode at every air station (PM2.5 driving AQI >= 201 for several hours);
* a discharge pulse (NH3-N) entering the river between two stations and travelling downstream,
  arriving at each station after the river model's travel time and diluted on the way;
  one station sits worse than its target class all along.

Pure record generation (``scenario_records``) is separate from the I/O: ``register_devices`` writes
the registry rows with their ``attrs`` (keys in ``core/sql/0010_environment.sql``) and
``publish_records`` sends JSON telemetry over MQTT. The time-compressed mode stamps records at
simulated minute steps over hours in the recent past, so the jobs have whole hours to work on at once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import orjson

from wulian.core.const import Stream
from wulian.core.timebase import NS_PER_HOUR, NS_PER_MIN
from wulian.core.environment.river import River, RiverStation

RIVER = "lianjiang"
_DAY_NS = 24 * NS_PER_HOUR


@dataclass(frozen=True, slots=True)
class EnvDeviceSpec:
    device_id: str
    stream: Stream
    name: str
    device_type: str
    attrs: dict = field(default_factory=dict)


def env_fleet(tag: str = "", city: str | None = None) -> list[EnvDeviceSpec]:
    """The simulated devices; ``tag`` is inserted in every id so several fleets can coexist; ``city``
    groups the air stations for the city AQI (default: their region)."""
    t = f"{tag}-" if tag else ""
    return [
        EnvDeviceSpec(f"PS-{t}STACK1", Stream.POLLUTION, "燃煤锅炉 1# 排口", "cems",
                      {"source_kind": "stack", "source_type": "coal_boiler", "lat": 23.41, "lon": 116.62,
                       "limits": {"SO2": 35, "NOx": 50, "PM": 10}}),
        EnvDeviceSpec(f"PS-{t}WW1", Stream.POLLUTION, "污水总排口", "wastewater",
                      {"source_kind": "outlet", "limits": {"COD": 50, "NH3_N": 5}}),
        EnvDeviceSpec(f"PB-{t}PLANT1", Stream.POLLUTION, "石化厂界 东", "boundary",
                      {"source_kind": "boundary", "plant": "PLANT1", "limits": {"NMHC": 4.0, "benzene": 0.4}}),
        *[EnvDeviceSpec(f"AQ-{t}{k}", Stream.AIR, f"空气站 {k}", "air_station",
                        {**({"city": city} if city else {}), "lat": lat, "lon": lon})
          for k, (lat, lon) in enumerate([(23.371, 116.708), (23.354, 116.681), (23.392, 116.655)], start=1)],
        *[EnvDeviceSpec(f"LJ-{t}{k:02d}", Stream.WATER, f"练江 {k}# 断面", "water_station",
                        {"river": RIVER, "km": km, "target_class": tgt, "flow_m3s": 30.0,
                         "lat": 23.30 + 0.002 * km, "lon": 116.30 + 0.009 * km})
          for k, (km, tgt) in enumerate([(0.0, "III"), (12.0, "III"), (25.0, "III"), (40.0, "III")], start=1)],
    ]


def river_of(fleet: list[EnvDeviceSpec]) -> River:
    st = [d for d in fleet if d.stream is Stream.WATER]
    return River(RIVER, tuple(RiverStation(d.device_id, float(d.attrs["km"]), d.attrs["target_class"]) for d in st))


@dataclass(frozen=True, slots=True)
class Scenario:
    """When things happen, as hour offsets from ``start_ns`` (an hour boundary)."""

    start_ns: int
    hours: int = 24
    seed: int = 7
    exceedance: tuple[int, int] = (8, 3)  # stack SO2: start hour, hours
    maintenance_hour: int = 4  # 16 minutes flagged M at the stack
    aqi_episode: tuple[int, int] = (12, 6)  # PM2.5 episode: start hour, hours
    pulse_at_h: float = 14.0  # discharge time (hours from start)
    pulse_km: float = 18.0  # where it enters (between stations 2 and 3 of the default fleet)
    pulse_amplitude: float = 4.0  # mg/L NH3-N added at the entry point
    pulse_sigma_min: float = 20.0  # temporal spread at entry
    dilution_per_10km: float = 0.8  # amplitude factor per 10 km travelled
    boundary_outage: tuple[int, int] = (2, 4)  # boundary monitor silent: start hour, hours
    boundary_spike: tuple[int, int] = (20, 1)  # benzene at twice the plant's limit: start hour, hours
    off_target_station: int = 3  # water-station index (0-based) sitting at class IV all along
    water_step_min: int = 5


def _in(h: float, window: tuple[int, int]) -> bool:
    return window[0] <= h < window[0] + window[1]


def _pulse_add(sc: Scenario, river: River, station: int, t_ns: int, flow: float) -> float:
    """NH3-N added by the pulse at ``station`` at ``t_ns``: the river's travel-time model from the entry
    point, a Gaussian widened by dispersion and diluted with distance."""
    km = river.stations[station].km
    if km < sc.pulse_km:
        return 0.0
    # travel from the entry to the station at this segment's velocity model
    seg = max(0, max(i for i, s in enumerate(river.stations) if s.km <= sc.pulse_km))
    travel_s = 0.0
    pos = sc.pulse_km
    for i in range(seg, station):
        nxt = river.stations[i + 1].km
        travel_s += (nxt - pos) * 1000.0 / river.velocity(i, flow)
        pos = nxt
    dist = km - sc.pulse_km
    arrive = sc.start_ns + int(sc.pulse_at_h * NS_PER_HOUR) + int(travel_s * 1e9)
    sigma = sc.pulse_sigma_min * 60e9 * (1.0 + dist / 20.0)
    amp = sc.pulse_amplitude * sc.dilution_per_10km ** (dist / 10.0) / (1.0 + dist / 20.0)
    return amp * math.exp(-0.5 * ((t_ns - arrive) / sigma) ** 2)


def scenario_records(fleet: list[EnvDeviceSpec], sc: Scenario) -> dict[str, list[dict]]:
    """Every device's JSON records over the scenario (minute data; water every ``water_step_min``)."""
    rng = np.random.default_rng(sc.seed)
    river = river_of(fleet)
    water_ids = [s.station_id for s in river.stations]
    out: dict[str, list[dict]] = {}
    n_min = sc.hours * 60
    for dev in fleet:
        recs = []
        kind = dev.attrs.get("source_kind")
        step = sc.water_step_min if dev.stream is Stream.WATER else 1
        for m in range(0, n_min, step):
            t = sc.start_ns + m * NS_PER_MIN
            h = m / 60.0
            ts_ms = t // 1_000_000
            n = lambda s: 1.0 + rng.normal(0.0, s)  # noqa: E731
            if kind == "stack":
                o2 = 10.0 * n(0.02)
                so2 = (60.0 if _in(h, sc.exceedance) else 20.0) * n(0.05)
                flag = "M" if int(h) == sc.maintenance_hour and m % 60 < 16 else "N"
                rec = {"ts": ts_ms, "flag": flag, "values": {
                    "SO2": round(so2, 2), "NOx": round(40.0 * n(0.05), 2), "PM": round(5.0 * n(0.1), 3),
                    "O2": round(o2, 2), "flow": round(120000.0 * n(0.03), 0)}}
            elif kind == "outlet":
                rec = {"ts": ts_ms, "values": {"COD": round(30.0 * n(0.05), 2), "NH3_N": round(2.0 * n(0.05), 3),
                                               "flow": round(200.0 * n(0.05), 1)}}
            elif kind == "boundary":
                if _in(h, sc.boundary_outage):
                    continue
                benzene = 0.8 if _in(h, sc.boundary_spike) else 0.05
                rec = {"ts": ts_ms, "values": {"NMHC": round(1.0 * n(0.1), 3), "benzene": round(benzene * n(0.1), 4)}}
            elif dev.stream is Stream.AIR:
                ep = _in(h, sc.aqi_episode)
                rec = {"ts": ts_ms, "values": {
                    "PM25": round((180.0 if ep else 30.0) * n(0.05), 1),
                    "PM10": round((230.0 if ep else 55.0) * n(0.05), 1),
                    "NO2": round(30.0 * n(0.1), 1), "O3": round(70.0 * n(0.1), 1), "SO2": round(10.0 * n(0.1), 1),
                    "CO": round(0.6 * n(0.1), 2)}}
            else:
                i = water_ids.index(dev.device_id)
                nh3 = (1.2 if i == sc.off_target_station else 0.3) * n(0.03)
                nh3 += _pulse_add(sc, river, i, t, float(dev.attrs.get("flow_m3s", 30.0)))
                rec = {"ts": ts_ms, "values": {
                    "DO": round(7.0 * n(0.02), 2), "CODMn": round(3.0 * n(0.03), 2), "NH3_N": round(nh3, 3),
                    "TP": round(0.08 * n(0.03), 3), "pH": round(7.5 + rng.normal(0, 0.05), 2),
                    "temp": round(22.0 + rng.normal(0, 0.2), 1)}}
            recs.append(rec)
        out[dev.device_id] = recs
    return out


def compressed_start(now_ns: int, hours: int) -> int:
    """Start of a compressed scenario that ends at the last whole hour before ``now_ns``."""
    return (now_ns // NS_PER_HOUR) * NS_PER_HOUR - hours * NS_PER_HOUR


async def register_devices(con, region: str, fleet: list[EnvDeviceSpec]) -> None:
    """Registry rows with their metadata (idempotent: an existing device takes the fleet's definition)."""
    from wulian.ingest import device_store

    await device_store.upsert_many(con, [device_store.DeviceSpec(d.device_id, region, d.stream.value, d.device_type,
                                                                 d.name, d.attrs) for d in fleet],
                                   device_store.REDEFINE)


def publish_records(publisher, region: str, fleet: list[EnvDeviceSpec], records: dict[str, list[dict]],
                    prefix: str = "wl", per_message: int = 60) -> int:
    """Publish each device's records as ``{"batch": [...]}`` messages; returns the message count."""
    from wulian.ingest.topics import topic_for

    sent = 0
    for dev in fleet:
        topic = topic_for(region, dev.stream.value, dev.device_id, "telemetry", prefix)
        recs = records.get(dev.device_id, [])
        for i in range(0, len(recs), per_message):
            publisher.publish(topic, orjson.dumps({"batch": recs[i:i + per_message]}))
            sent += 1
    return sent
