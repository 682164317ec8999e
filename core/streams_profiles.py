"""Profiles shipped as data (issue 19): registry rows (core.streams) with default rules and a dashboard
spec for the systems the city plans name. Installed with ``wulian stream add --profile NAME``; nothing
here is code the ingest or the alarm engine knows about - a profile is exactly what an operator could
POST to ``/v1/streams``.

Default rules are alarm rule kinds (core.alarms.rules; equipment's early warning is the ``trend`` kind:
time to threshold from the recent slope). What a per-reading rule cannot say is computed by derive jobs
over the stored readings (ingest/jobs/).
"""
from __future__ import annotations

import math
from types import MappingProxyType

# Standard coal (GB/T 2589-2020): one definition, in core.profiles.standard_coal; re-exported here for
# the profile's users.
from wulian.core.profiles.standard_coal import (  # noqa: F401
    KGCE_PER_KWH_ELECTRICITY, KGCE_PER_M3_NATURAL_GAS, KGCE_PER_T_WATER, KJ_PER_KGCE, kgce_of_steam)


def time_to_threshold(times_s: list[float], values: list[float], limit: float) -> float | None:
    """Seconds until a least-squares line through the recent (time, value) points reaches ``limit``
    from below; None when it is flat or falling (never), 0 when already at or past it. Unweighted, on a
    list: for reports and checks; the alarm engine's ``trend`` kind is its streaming, weighted form."""
    n = len(times_s)
    if n < 2:
        return None
    mt, mv = sum(times_s) / n, sum(values) / n
    den = sum((t - mt) ** 2 for t in times_s)
    if den == 0:
        return None
    slope = sum((t - mt) * (v - mv) for t, v in zip(times_s, values)) / den
    now_v = mv + slope * (times_s[-1] - mt)
    if now_v >= limit:
        return 0.0
    if slope <= 0 or not math.isfinite(slope):
        return None
    return (limit - now_v) / slope


def _panels(*metrics: tuple[str, str]) -> list[dict]:
    return [{"metric": m, "title": t} for m, t in metrics]


COLDCHAIN = {
    "name": "coldchain", "title": "冷链运输与冷库",
    "metrics": {
        "temperature": {"unit": "°C", "min": -40, "max": 40, "description": "compartment air temperature"},
        "humidity": {"unit": "%", "min": 0, "max": 100},
        "door_open": {"unit": "1", "min": 0, "max": 1, "description": "1 = door open"},
        "trip": {"unit": "1", "min": 0, "max": 1,
                 "description": "1 while a waybill is in transit (dispatch to delivery sign-off): trips and "
                                "their compliance (core/profiles/coldchain.py)"},
        "lat": {"unit": "°", "min": -90, "max": 90, "description": "WGS-84"},
        "lon": {"unit": "°", "min": -180, "max": 180, "description": "WGS-84"},
    },
    "device_types": ["reefer_truck", "cold_store"],
    "default_rules": [
        # Chilled goods 2-8 °C (GSP cold chain for medicines/vaccines); a short excursion while loading
        # is tolerated: the alert is raised only after 10 minutes outside the band (pending_s).
        {"name": "冷链温度超限", "kind": "range", "metric": "temperature", "low": 2.0, "high": 8.0,
         "pending_s": 600.0, "severity": "major",
         "description": "outside 2-8 °C for longer than the 10-minute grace period"},
        {"name": "厢门开启过久", "kind": "upper", "metric": "door_open", "threshold": 0.5,
         "pending_s": 300.0, "severity": "minor", "description": "door open for more than 5 minutes"},
    ],
    "dashboard": {"title": "冷链运输与冷库", "panels": _panels(
        ("temperature", "温度"), ("humidity", "湿度"), ("door_open", "厢门"))},
}

CHARGING = {
    "name": "charging", "title": "电动汽车充电设施",
    "metrics": {
        "state": {"unit": "1", "min": 0, "max": 3, "description": "0 idle, 1 charging, 2 fault, 3 reserved"},
        "power_kw": {"unit": "kW", "min": 0, "max": 600},
        "energy_kwh": {"unit": "kWh", "min": 0, "description": "energy delivered, cumulative register"},
        "fault_code": {"unit": "1", "min": 0, "max": 65535, "description": "0 = no fault"},
    },
    "device_types": ["ev_charger"],
    "default_rules": [
        {"name": "充电桩故障", "kind": "upper", "metric": "fault_code", "threshold": 0.5, "severity": "major",
         "description": "the charger reports a non-zero fault code"},
        {"name": "充电桩离线", "kind": "missing_data", "metric": "state", "duration_s": 900.0,
         "severity": "minor", "description": "no status for 15 minutes"},
    ],
    "dashboard": {"title": "电动汽车充电设施", "panels": _panels(
        ("power_kw", "充电功率"), ("state", "状态"), ("energy_kwh", "累计充电量"))},
}

ENERGY = {
    "name": "energy", "title": "企业能源管理中心",
    "metrics": {
        "electricity_kwh": {"unit": "kWh", "min": 0, "description": "cumulative register"},
        "gas_m3": {"unit": "m³", "min": 0, "description": "natural gas, cumulative, standard conditions"},
        "steam_t": {"unit": "t", "min": 0, "description": "steam, cumulative"},
        "water_t": {"unit": "t", "min": 0, "description": "new water, cumulative"},
        "power_kw": {"unit": "kW", "min": 0, "max": 200_000, "description": "active power demand"},
    },
    "device_types": ["energy_meter"],
    "default_rules": [
        # Contract demand (需量) differs per enterprise: a placeholder to scope per device.
        {"name": "用电需量超限", "kind": "upper", "metric": "power_kw", "threshold": 2000.0,
         "clear_threshold": 1900.0, "severity": "warning",
         "description": "demand above the contracted 2000 kW (set per enterprise)"},
    ],
    "dashboard": {"title": "企业能源管理中心", "panels": _panels(
        ("power_kw", "用电负荷"), ("electricity_kwh", "电量"), ("gas_m3", "天然气"), ("steam_t", "蒸汽"),
        ("water_t", "水"))},
}

EQUIPMENT = {
    "name": "equipment", "title": "石化装置转动设备",
    "metrics": {
        "vibration": {"unit": "mm/s", "min": 0, "max": 100, "description": "velocity RMS, 10-1000 Hz"},
        "temperature": {"unit": "°C", "min": -40, "max": 250, "description": "bearing temperature"},
        "pressure": {"unit": "MPa", "min": 0, "max": 40, "description": "discharge pressure"},
    },
    "device_types": ["pump", "compressor"],
    "default_rules": [
        # ISO 10816-3 (group 1, rigid): 4.5 mm/s zone B/C (restricted operation), 7.1 mm/s zone C/D (damage).
        {"name": "振动超限", "kind": "upper", "metric": "vibration", "threshold": 7.1, "clear_threshold": 4.5,
         "severity": "critical", "description": "ISO 10816-3 zone D"},
        {"name": "轴承温度超限", "kind": "upper", "metric": "temperature", "threshold": 95.0,
         "clear_threshold": 90.0, "severity": "major"},
        # Early warnings (trend kind): at the slope of the last few minutes (weights e^(-age/5 min), >= 5
        # readings), the value reaches the limit within 30 minutes - time to plan a stop before zone D or
        # the bearing limit. A shorter window reacts sooner to a ramp, a longer one is calmer on noise.
        {"name": "振动趋势预警", "kind": "trend", "metric": "vibration", "high": 7.1, "horizon_s": 1800.0,
         "window_s": 300.0, "min_points": 5, "severity": "warning",
         "description": "vibration will reach ISO 10816-3 zone D (7.1 mm/s) within 30 minutes at its recent slope"},
        {"name": "轴承温度趋势预警", "kind": "trend", "metric": "temperature", "high": 95.0, "horizon_s": 1800.0,
         "window_s": 300.0, "min_points": 5, "severity": "warning",
         "description": "bearing temperature will reach 95 °C within 30 minutes at its recent slope"},
    ],
    "dashboard": {"title": "石化装置转动设备", "panels": _panels(
        ("vibration", "振动速度"), ("temperature", "轴承温度"), ("pressure", "出口压力"))},
}

PROFILES: MappingProxyType = MappingProxyType(
    {p["name"]: p for p in (COLDCHAIN, CHARGING, ENERGY, EQUIPMENT)})
