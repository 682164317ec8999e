"""Energy and transport scenario: 两客一危 vehicles, grid feeders and 四表合一 households whose data
exercise every rule of ingest/jobs/{vehicles,grid,meters}.py, stamped in the recent past.

Time-compressed: ``build_scenario(end_ns)`` lays out the last day(s) at the real sampling step (10 s
positions, 5 min grid samples, 15 min registers) ending at ``end_ns``; the publisher sends it all at once,
so the derive jobs find whole windows and days to work on. Vehicle plans are given in China local time
and placed at their latest occurrence that ends before ``end_ns``.

What happens (device ids carry ``tag``):
* ``{tag}-C1`` coach on its fixed route: 2 h driving, 30 min rest, 2 h driving (no violation);
* ``{tag}-C2`` coach: 4 h 10 min continuous driving by day (fatigue), then a 25 min rest;
* ``{tag}-C3`` long-distance coach running 01:30-02:40 (02:00-05:00 ban), then parked until 05:10 (overtime parking);
* ``{tag}-T1`` hazardous-goods truck crossing a restricted area, with an emergency alarm bit for 2 min;
* ``{tag}-T2`` hazardous-goods truck: 5 min at 95 km/h (overspeed), then 30 min silent while driving
  (offline displacement);
* feeders ``{tag}-F1`` (3 meters, one overloaded for 30 min, a transformer whose oil heats toward its
  limit) and ``{tag}-F2`` (3 meters, a 40 min voltage sag on one, then a 40 min outage of all);
* households ``{tag}-H1..H4`` (electricity, water, gas): H1 normal, H2 tampered electricity register
  (goes back 30 kWh), H3 water leak (0.05 m3/h day and night) and gas that never stops, H4 misses
  readings (collection rate below 100 %) and names its electricity register as the DL/T 645 codec does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from wulian.core.const import Stream
from wulian.core.timebase import CHINA_OFFSET_NS as _CHINA
from wulian.core.timebase import NS_PER_DAY as _DAY
from wulian.core.timebase import NS_PER_HOUR as _HOUR
from wulian.core.timebase import NS_PER_MIN as _MIN
from wulian.core.timebase import NS_PER_S as _S

_KM_PER_DEG = 111.195

CENTER = (23.354, 116.682)  # Shantou


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    device_id: str
    stream: Stream
    device_type: str
    attrs: dict


@dataclass(frozen=True, slots=True)
class GeofenceSpec:
    name: str
    kind: str  # 'restricted' | 'route'
    points: list[tuple[float, float]]


@dataclass
class Scenario:
    end_ns: int
    devices: list[DeviceSpec] = field(default_factory=list)
    geofences: list[GeofenceSpec] = field(default_factory=list)
    records: dict[str, list[dict]] = field(default_factory=dict)  # device_id -> JSON records in time order
    expect: dict[str, object] = field(default_factory=dict)  # what the jobs should find (for tests, docs)

    def count(self) -> int:
        return sum(len(v) for v in self.records.values())


@dataclass(frozen=True, slots=True)
class Leg:
    minutes: float
    speed_kmh: float
    report: bool = True
    alarm: int = 0


def _offset(p: tuple[float, float], north_km: float, east_km: float) -> tuple[float, float]:
    return (p[0] + north_km / _KM_PER_DEG, p[1] + east_km / (_KM_PER_DEG * math.cos(math.radians(p[0]))))


def _path_point(path: list[tuple[float, float]], s_km: float) -> tuple[float, float]:
    """Point at distance ``s_km`` along ``path``, going back and forth (ping-pong) along it."""
    seg = [math.hypot((b[0] - a[0]) * _KM_PER_DEG, (b[1] - a[1]) * _KM_PER_DEG * math.cos(math.radians(a[0])))
           for a, b in zip(path, path[1:])]
    total = sum(seg)
    s = s_km % (2 * total)
    if s > total:
        s = 2 * total - s
    for (a, b), length in zip(zip(path, path[1:]), seg):
        if s <= length or length == 0:
            f = s / length if length else 0.0
            return (a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f)
        s -= length
    return path[-1]


def _latest_local(end_ns: int, hhmm: str, duration_ns: int) -> int:
    """Latest instant with China local time ``hhmm`` such that instant + duration <= end."""
    h, m = (int(x) for x in hhmm.split(":"))
    tod = h * _HOUR + m * _MIN
    t = ((end_ns - duration_ns + _CHINA) // _DAY) * _DAY + tod - _CHINA
    while t + duration_ns > end_ns:
        t -= _DAY
    return t


def _drive(path, legs: list[Leg], t0: int, step_ns: int, rng: np.random.Generator) -> list[dict]:
    out = []
    s_km = 0.0
    t = t0
    mileage = 10_000.0
    for leg in legs:
        t_end = t + int(leg.minutes * _MIN)
        while t < t_end:
            sp = max(0.0, leg.speed_kmh + (float(rng.normal(0, 1.0)) if leg.speed_kmh > 0 else 0.0))
            if leg.report:
                lat, lon = _path_point(path, s_km)
                out.append({"ts": t // 1_000_000, "lat": round(lat, 6), "lon": round(lon, 6), "speed": round(sp, 1),
                            "heading": 90.0, "alarm": leg.alarm, "status": 3, "mileage": round(mileage + s_km, 2)})
            s_km += sp * step_ns / _HOUR
            t += step_ns
    return out


def _vehicles(sc: Scenario, tag: str, rng: np.random.Generator, step_ns: int) -> None:
    west, east = _offset(CENTER, 0, -40), _offset(CENTER, 0, 40)
    route_c1 = [_offset(CENTER, -5, -40), _offset(CENTER, -5, 0), _offset(CENTER, 5, 40)]
    line = [west, east]
    north = [_offset(west, 10, 0), _offset(east, 10, 0)]  # clear of the restricted area
    fence_c = _path_point(line, 12.0)  # the truck reaches it after 12 km
    fence = [_offset(fence_c, -1, -1), _offset(fence_c, -1, 1), _offset(fence_c, 1, 1), _offset(fence_c, 1, -1)]
    sc.geofences += [GeofenceSpec(f"{tag}-route-C1", "route", route_c1),
                     GeofenceSpec(f"{tag}-no-hazmat", "restricted", fence)]
    plans = [
        (f"{tag}-C1", {"vehicle_class": "coach_line", "enterprise": f"{tag}-coach-co", "route": f"{tag}-route-C1"},
         route_c1, "09:00", [Leg(120, 60), Leg(30, 0), Leg(120, 60), Leg(10, 0)]),
        (f"{tag}-C2", {"vehicle_class": "coach_charter", "enterprise": f"{tag}-coach-co"},
         line, "07:00", [Leg(250, 70), Leg(25, 0), Leg(30, 60)]),
        (f"{tag}-C3", {"vehicle_class": "coach_line", "enterprise": f"{tag}-coach-co", "night_ban": True},
         line, "01:30", [Leg(70, 70), Leg(150, 0)]),
        (f"{tag}-T1", {"vehicle_class": "hazmat", "enterprise": f"{tag}-hazmat-co"},
         line, "10:00", [Leg(8, 60), Leg(2, 60, alarm=1), Leg(30, 60), Leg(10, 0)]),
        (f"{tag}-T2", {"vehicle_class": "hazmat", "enterprise": f"{tag}-hazmat-co"},
         north, "14:00", [Leg(20, 60), Leg(5, 95), Leg(20, 60), Leg(30, 60, report=False), Leg(20, 60)]),
    ]
    for dev, attrs, path, start, legs in plans:
        duration = int(sum(leg.minutes for leg in legs) * _MIN)
        t0 = _latest_local(sc.end_ns, start, duration)
        sc.devices.append(DeviceSpec(dev, Stream.VEHICLE, "jt808_terminal", {**attrs, "plate": f"粤D{dev[-4:]}"}))
        sc.records[dev] = _drive(path, legs, t0, step_ns, rng)
    sc.expect["vehicles"] = {f"{tag}-C2": "fatigue", f"{tag}-C3": "night_coach", f"{tag}-T1": "geofence",
                             f"{tag}-T2": "offline_jump"}


def _grid(sc: Scenario, tag: str, rng: np.random.Generator, hours: float, step_ns: int) -> None:
    end = sc.end_ns // step_ns * step_ns
    t = np.arange(end - int(hours * _HOUR), end + 1, step_ns, dtype=np.int64)
    tod_h = ((t + _CHINA) % _DAY) / _HOUR
    profile = 1.0 + 0.35 * np.cos((tod_h - 19.0) / 24.0 * 2 * np.pi)
    sag = (t >= end - 6 * _HOUR) & (t < end - 6 * _HOUR + 40 * _MIN)
    outage = (t >= end - 3 * _HOUR) & (t < end - 3 * _HOUR + 40 * _MIN)
    overload = (t >= end - 8 * _HOUR) & (t < end - 8 * _HOUR + 30 * _MIN)
    for f in ("F1", "F2"):
        for k in range(1, 4):
            dev = f"{tag}-{f}-M{k}"
            sc.devices.append(DeviceSpec(dev, Stream.GRID, "power_quality_meter",
                                         {"feeder": f"{tag}-{f}", "voltage_class": "20kV", "u_nom": 220.0,
                                          "rated_a": 60.0}))
            u = 221.0 + rng.normal(0, 1.5, len(t))
            i = 35.0 * profile + rng.normal(0, 1.0, len(t))
            if f == "F1" and k == 2:
                i = np.where(overload, 70.0, i)
            if f == "F2" and k == 1:
                u = np.where(sag, 195.0, u)
            silent = outage if f == "F2" else np.zeros(len(t), bool)
            recs = []
            for j in np.flatnonzero(~silent).tolist():
                ua, ub, uc = float(u[j]), float(u[j] + rng.normal(0, 0.5)), float(u[j] + rng.normal(0, 0.5))
                ij = float(i[j])
                p = 3 * 220.0 * ij * 0.95 / 1000.0
                recs.append({"ts": int(t[j]) // 1_000_000, "values": {
                    "Ua": round(ua, 1), "Ub": round(ub, 1), "Uc": round(uc, 1), "Ia": round(ij, 2),
                    "Ib": round(ij, 2), "Ic": round(ij, 2), "P": round(p, 2), "PF": 0.95,
                    "freq": round(50.0 + float(rng.normal(0, 0.02)), 3)}})
            sc.records[dev] = recs
    dev = f"{tag}-F1-TX"
    sc.devices.append(DeviceSpec(dev, Stream.GRID, "transformer_monitor",
                                 {"kind": "transformer", "feeder": f"{tag}-F1", "temp_limit_c": 85.0,
                                  "rated_kw": 400.0}))
    # Oil at 60 degC, heating by 6 degC/h over the last 2 h: reaches 85 degC within the warning horizon.
    temp = 60.0 + 6.0 * np.clip((t - (end - 2 * _HOUR)) / _HOUR, 0, None) + rng.normal(0, 0.2, len(t))
    sc.records[dev] = [{"ts": int(x) // 1_000_000, "values": {"oil_temp": round(float(y), 2),
                                                               "P": round(float(100 * p), 1)}}
                       for x, y, p in zip(t.tolist(), temp, profile)]
    sc.expect["grid"] = {"outage_feeder": f"{tag}-F2", "sag_meter": f"{tag}-F2-M1", "overload_meter": f"{tag}-F1-M2",
                         "transformer": dev}


def _households(sc: Scenario, tag: str, rng: np.random.Generator, days: int, step_ns: int) -> None:
    end = sc.end_ns // step_ns * step_ns
    t = np.arange(end - days * _DAY, end + 1, step_ns, dtype=np.int64)
    h = ((t + _CHINA) % _DAY) / _HOUR
    dt_h = step_ns / _HOUR
    awake = (h >= 6.5) & (h < 23.0)
    meals = ((h >= 6.5) & (h < 7.5)) | ((h >= 11.0) & (h < 12.5)) | ((h >= 17.5) & (h < 19.5))
    for k in range(1, 5):
        dev = f"{tag}-H{k}"
        sc.devices.append(DeviceSpec(dev, Stream.METER, "siebiao_collector",
                                     {"concentrator": f"{tag}-CC1", "register_width": 1_000_000,
                                      "max_rate_per_h": 0}))
        elec = (0.08 + 0.6 * awake + rng.uniform(0, 0.1, len(t))) * dt_h
        water = np.where(awake, rng.uniform(0, 0.04, len(t)), 0.0) * dt_h
        gas = np.where(meals, 0.3, 0.0) * dt_h
        if k == 3:
            water = water + 0.05 * dt_h  # a running toilet: the night minimum never falls to zero
            gas = gas + 0.1 * dt_h  # a pilot flame that never goes out
        e_reg = 2000.0 + np.cumsum(elec)
        if k == 2:
            e_reg = np.where(t >= end - 30 * _HOUR, e_reg - 30.0, e_reg)  # register wound back
        w_reg = 300.0 + np.cumsum(water)
        g_reg = 150.0 + np.cumsum(gas)
        keep = np.ones(len(t), bool)
        if k == 4:
            keep[rng.choice(len(t), size=12, replace=False)] = False
        e_name = "energy_active_import_kwh" if k == 4 else "elec_kwh"  # H4 names it as the DL/T 645 codec does
        sc.records[dev] = [{"ts": int(t[j]) // 1_000_000,
                            "values": {e_name: round(float(e_reg[j]), 3), "water_m3": round(float(w_reg[j]), 4),
                                       "gas_m3": round(float(g_reg[j]), 4)}}
                           for j in np.flatnonzero(keep).tolist()]
    sc.expect["meters"] = {"tamper": f"{tag}-H2", "leak": f"{tag}-H3", "gas": f"{tag}-H3", "gaps": f"{tag}-H4",
                           "concentrator": f"{tag}-CC1"}


def build_scenario(end_ns: int, tag: str = "ET", seed: int = 6, vehicle_step_s: float = 10.0,
                   grid_hours: float = 24.0, grid_step_s: float = 300.0, meter_days: int = 4,
                   meter_step_s: float = 900.0) -> Scenario:
    rng = np.random.default_rng(seed)
    sc = Scenario(end_ns)
    _vehicles(sc, tag, rng, int(vehicle_step_s * _S))
    _grid(sc, tag, rng, grid_hours, int(grid_step_s * _S))
    _households(sc, tag, rng, meter_days, int(meter_step_s * _S))
    return sc


def messages(sc: Scenario, region: str, prefix: str = "wl", per_message: int = 500):
    """(topic, payload dict) pairs: each device's records in batches of ``per_message``."""
    from wulian.ingest.topics import topic_for

    stream_of = {d.device_id: d.stream for d in sc.devices}
    for dev, recs in sc.records.items():
        topic = topic_for(region, stream_of[dev].value, dev, "telemetry", prefix)
        for i in range(0, len(recs), per_message):
            yield topic, {"batch": recs[i:i + per_message]}


async def register(con, sc: Scenario, region: str) -> None:
    """Registry rows with metadata (devices.attrs) and the geofences, upserted by name."""
    import orjson

    from wulian.ingest import device_store

    await device_store.upsert_many(con, [device_store.DeviceSpec(d.device_id, region, d.stream.value, d.device_type,
                                                                 d.device_id, d.attrs) for d in sc.devices],
                                   device_store.REDEFINE_IN_PLACE)
    for g in sc.geofences:
        await con.execute(
            "INSERT INTO geofences (name, region, kind, points) VALUES ($1, $2, $3, $4::jsonb)"
            " ON CONFLICT (name) DO UPDATE SET points = EXCLUDED.points, kind = EXCLUDED.kind, updated_at = now()",
            g.name, region, g.kind, orjson.dumps([list(p) for p in g.points]).decode())


def publish(sc: Scenario, params, region: str, prefix: str = "wl", timeout_s: float = 60.0) -> dict:
    """Publish every record over MQTT (QoS 1); returns published/acked counts."""
    import orjson

    from wulian.ingest.mqtt_client import MqttPublisher

    with MqttPublisher(params, max_inflight=2000) as pub:
        for topic, doc in messages(sc, region, prefix):
            pub.publish(topic, orjson.dumps(doc))
        ok = pub.wait_acked(timeout_s)
        return {"messages": pub.published, "acked": pub.acked, "refused": pub.refused, "records": sc.count(),
                "complete": ok}
