"""Stored metric names -> what the environment jobs compute with.

Two sources name the same quantity differently: our JSON simulators and clients (``SO2``, ``PM25``,
``NH3_N``, ``flow``) and the HJ 212 codec (``{code}-{field}``: ``a21026-Rtd``, ``w21003-Avg``). Both map
to one canonical name per stream (the names of ``core.environment.aqi_series.POLLUTANTS`` for air,
``core.environment.tables.WATER_ITEMS`` keys for water, the registry's limit keys for sources), a role
and a factor to the rule's unit:

* ``sample`` - a minute or real-time value (JSON, ``-Rtd``): aggregated by the HJ 76 hourly validity.
* ``avg`` - an HJ 212 ``-Avg``: minute data (CN 2051) or a device-made hourly value (CN 2061). The
  codec does not keep the CN, so the job tells them apart by density (``core.environment.online``).
Other HJ 212 fields (Min, Max, Cou, Zs*) are not used: converted values are our own.
"""
from __future__ import annotations

from typing import Final, NamedTuple

from wulian.core.environment.codes import AIR_CODES, SOURCE_CODES, split_metric, water_item
from wulian.core.environment.tables import WATER_ITEMS

SAMPLE = "sample"
AVG = "avg"
_FIELD_ROLE: Final = {"": SAMPLE, "Rtd": SAMPLE, "Avg": AVG}

# JSON names that differ from the canonical ones.
AIR_JSON: Final = {"SO2": "SO2", "NO2": "NO2", "CO": "CO", "O3": "O3", "PM10": "PM10", "PM25": "PM2.5",
                   "PM2.5": "PM2.5"}
# HJ 212 source codes whose canonical name follows the JSON catalogue (a34013 烟尘 = our ``PM``).
_SOURCE_ALIAS: Final = {"dust": "PM"}

# JSON ``flow`` is m³/h (metric catalogue); the mass formula wants m³/s for stack gas and L/s for
# wastewater (core.environment.sources). HJ 212 a00000 / w00000 are already m³/s and L/s.
JSON_FLOW_FACTOR: Final = {"gas": 1.0 / 3600.0, "water": 1000.0 / 3600.0}


class MetricRole(NamedTuple):
    name: str  # canonical
    role: str  # SAMPLE or AVG
    factor: float  # multiply the stored value by this


def air_metric(metric: str) -> MetricRole | None:
    code, field = split_metric(metric)
    if not field:
        name = AIR_JSON.get(metric)
        return MetricRole(name, SAMPLE, 1.0) if name else None
    role = _FIELD_ROLE.get(field)
    name = AIR_CODES.get(code)
    return MetricRole(name, role, 1.0) if name and role else None


def water_metric(metric: str) -> MetricRole | None:
    code, field = split_metric(metric)
    if not field:
        return MetricRole(metric, SAMPLE, 1.0) if metric in WATER_ITEMS else None
    role = _FIELD_ROLE.get(field)
    item = water_item(metric)
    return MetricRole(item[0], role, item[1]) if item and role else None


def source_metric(metric: str, medium: str = "gas") -> MetricRole | None:
    """Pollution-source metrics: pollutants, ``O2`` and ``flow`` (in the units the mass formula takes)."""
    code, field = split_metric(metric)
    if not field:
        if metric == "flow":
            return MetricRole("flow", SAMPLE, JSON_FLOW_FACTOR.get(medium, 1.0))
        if not metric[:1].isalpha():
            return None
        return MetricRole(metric, SAMPLE, 1.0)
    role = _FIELD_ROLE.get(field)
    name = SOURCE_CODES.get(code)
    if not name or not role:
        return None
    return MetricRole(_SOURCE_ALIAS.get(name, name), role, 1.0)
