"""Pieces every dashboard shares: template variables, colour scales from the standards, SQL fragments.

SQL conventions (Grafana PostgreSQL datasource, expanded by ``verify.expand``):
- every hypertable read carries ``$__timeFilter(<alias>.time)`` so chunk exclusion and the
  ``(device, metric, time)`` / ``(time)`` indexes bound the scan to the picked range;
- series are bucketed with ``$__timeGroupAlias(<col>, $__interval)`` so a panel returns about one row
  per pixel column, whatever the range;
- multi-value variables are used as ``IN ($var)`` (Grafana quotes and joins the values); the rendered JSON
  turns each into a form where an empty selection means no filter, never ``IN ()`` (render.empty_safe);
- map panels take coordinates from the registry (attrs.lat / attrs.lon, WGS-84) and their base map from
  the ``dashboards.tile_url`` setting (a self-hosted XYZ tile server; render.basemap);
- "latest" panels probe the ``(device, ... time DESC)`` indexes once per device with ``LATERAL ... LIMIT 1``.
"""
from __future__ import annotations

from wulian.core.const import INVALID_FLAGS, Stream
from wulian.core.timebase import CHINA_TZ_NAME
from wulian.core.environment.tables import AQI_CATEGORIES, BREAKPOINTS, EDITION_2012, WATER_CLASSES
from wulian.dashboards.model import Threshold, ValueText, Variable

REGION = Variable(
    "region", "Region", "SELECT DISTINCT region FROM devices ORDER BY 1", tables=("devices",),
)


def device_var(stream: Stream, label: str = "Device") -> Variable:
    """Devices of one stream in the chosen regions."""
    return Variable(
        "device", label,
        f"SELECT device_id FROM devices WHERE stream = '{stream}' AND region IN ($region) ORDER BY 1",
        tables=("devices",),
    )


def metric_var(stream: Stream, label: str = "Metric") -> Variable:
    """Metrics catalogued for one stream."""
    return Variable(
        "metric", label, f"SELECT name FROM metrics WHERE stream = '{stream}' ORDER BY 1", tables=("metrics",),
    )


# HJ 212 flags whose data does not count as valid (core.const.INVALID_FLAGS), as an SQL list.
INVALID_FLAGS_SQL = ", ".join(f"'{f}'" for f in sorted(INVALID_FLAGS))

# Readings of one stream in range, joined to the registry and catalogue, filtered by the variables.
# Use as: f"SELECT ... FROM {READINGS} WHERE {readings_where(Stream.AIR)} ..."
READINGS = "readings r JOIN devices d ON d.id = r.device JOIN metrics m ON m.id = r.metric"
READINGS_TABLES = ("readings", "devices", "metrics")


def readings_where(stream: Stream, device: bool = True, metric: bool = False) -> str:
    parts = ["$__timeFilter(r.time)", f"d.stream = '{stream}'", "d.region IN ($region)"]
    if device:
        parts.append("d.device_id IN ($device)")
    if metric:
        parts.append("m.name IN ($metric)")
    return " AND ".join(parts)


# AQI colours (HJ 633 Appendix A) as thresholds on the AQI scale: level n starts above the previous
# level's upper bound (AQI 51 is 良, so the step sits at 50 + epsilon as Grafana colours ">= value").
AQI_THRESHOLDS = tuple(
    Threshold(None if i == 0 else AQI_CATEGORIES[i - 1][0] + 0.5, cat[6]) for i, cat in enumerate(AQI_CATEGORIES)
)

# The same colours on the PM2.5 concentration scale (24-h IAQI breakpoints, HJ 633-2012 Table 1): the
# air dashboard shows raw PM2.5 until the AQI table lands. A breakpoint value itself belongs to the lower
# level (C = BP_Hi gives IAQI_Hi); stations report whole ug/m3, hence the half-unit offset.
PM25_THRESHOLDS = tuple(
    Threshold(None if i == 0 else BREAKPOINTS[EDITION_2012]["PM25_24H"][i] + 0.5, cat[6])
    for i, cat in enumerate(AQI_CATEGORIES)
)

# GB 3838 class colours. The standard prescribes none; this is the scheme Chinese water bulletins
# commonly use (I-II blue, III green, IV yellow, V orange, 劣V red).
_WATER_COLOURS = ("#1F78D1", "#56A3F0", "#37872D", "#F2CC0C", "#FF780A", "#E02F44")
# The same colours as thresholds on the class number (1..6), for map markers.
WATER_CLASS_THRESHOLDS = tuple(Threshold(None if i == 0 else i + 0.5, c) for i, c in enumerate(_WATER_COLOURS))
WATER_CLASS_MAPPINGS = tuple(
    ValueText(i + 1, name, colour) for i, (name, colour) in enumerate(zip(WATER_CLASSES, _WATER_COLOURS))
)

# Derived daily tables hold complete China days only (a ``date`` column): the days the picked range
# touches, and at least the last complete one, so a live "last 6 hours" still shows yesterday's figures.
_FROM_DAY = f"($__timeFrom()::timestamptz AT TIME ZONE '{CHINA_TZ_NAME}')::date"
_TO_DAY = f"($__timeTo()::timestamptz AT TIME ZONE '{CHINA_TZ_NAME}')::date"
CHINA_DAYS_IN_RANGE = f"BETWEEN least({_FROM_DAY}, {_TO_DAY} - 1) AND {_TO_DAY}"
NO_COMPLETE_DAY = "No complete China day yet"


def overlaps_range(start: str, end: str) -> str:
    """An episode [start, end] that overlaps the picked range."""
    return f"{start} <= $__timeTo() AND {end} >= $__timeFrom()"


def device_filter(stream: Stream, alias: str = "d") -> str:
    """The registry rows of a stream chosen by the region and device variables."""
    return f"{alias}.stream = '{stream}' AND {alias}.region IN ($region) AND {alias}.device_id IN ($device)"
