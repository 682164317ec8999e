"""Lianjiang watershed: station classes along the river over time in GB 3838 colours, the latest class
per station against its target, pollution pulses traced upstream, water-quality series.

Classes and pulses come from the ``water_quality`` job (core/sql/0010): GB 3838-2002 single-factor
method, the station class being its worst item. Stations are ordered along the river by ``attrs.km``.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import READINGS, READINGS_TABLES, REGION, WATER_CLASS_MAPPINGS, device_filter, device_var
from wulian.dashboards.common import WATER_CLASS_THRESHOLDS
from wulian.dashboards.common import metric_var, readings_where
from wulian.dashboards.model import Dashboard, Panel, Query

_STATIONS = device_filter(Stream.WATER)
_KM = "(d.attrs->>'km')::float8"
_LABEL = f"d.device_id || coalesce(' · ' || (d.attrs->>'river') || ' ' || ({_KM})::text || ' km', '')"

DASHBOARD = Dashboard(
    uid="wulian-water",
    title="Wulian · Lianjiang",
    folder="Lianjiang",
    description="Station classes along the river (GB 3838-2002), compliance with target classes, pollution "
                "pulses, water-quality series.",
    variables=(REGION, device_var(Stream.WATER, "Station"), metric_var(Stream.WATER, "Parameter")),
    panels=(
        Panel(
            "Water stations: latest class", "geomap",
            (Query(f"""SELECT w.overall AS class, d.device_id AS name, (d.attrs->>'lat')::float8 AS latitude,
       (d.attrs->>'lon')::float8 AS longitude, w.overall_class, w.target, w.compliant, w.time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, overall, overall_class, target, compliant FROM env_water_hourly
    WHERE device = d.id AND $__timeFilter(time)
    ORDER BY time DESC LIMIT 1) w
WHERE {_STATIONS} AND d.attrs ? 'lat' AND d.attrs ? 'lon'""", tables=("env_water_hourly", "devices"), format="table"),),
            description="Latest hourly GB 3838 class in the bulletin colours (I-II blue, III green, IV yellow, V "
                        "orange, 劣V red); coordinates from the registry (attrs.lat / attrs.lon).",
            fields=("class", "name", "overall_class", "time"), thresholds=WATER_CLASS_THRESHOLDS, decimals=0,
            no_data="No station with coordinates reported in this range", width=24, height=10,
        ),
        Panel(
            "Station class along the river", "statetimeline",
            (Query(f"""SELECT $__timeGroupAlias(w.time, $__interval), {_LABEL} AS metric, max(w.overall) AS class
FROM env_water_hourly w JOIN devices d ON d.id = w.device
WHERE $__timeFilter(w.time) AND {_STATIONS}
GROUP BY 1, 2, {_KM}
ORDER BY 1, {_KM} NULLS LAST, 2""", tables=("env_water_hourly", "devices")),),
            description="Hourly class, upstream first (the worst hour when an interval holds several). "
                        "6 = 劣V.",
            mappings=WATER_CLASS_MAPPINGS, width=24, height=10, interval="1h",
        ),
        Panel(
            "Latest class per station", "table",
            (Query(f"""SELECT d.device_id AS station, d.attrs->>'river' AS river, {_KM} AS km, w.overall_class,
       w.overall AS class, w.target, w.compliant, w.item_class::text AS items, w.time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, overall, overall_class, target, compliant, item_class FROM env_water_hourly
    WHERE device = d.id AND $__timeFilter(time)
    ORDER BY time DESC LIMIT 1) w
WHERE {_STATIONS}
ORDER BY km NULLS LAST, station""", tables=("env_water_hourly", "devices"), format="table"),),
            description="Target: the class the stretch must meet (attrs.target_class, default III).",
            fields=("station", "river", "km", "class", "target", "compliant", "items", "time"),
            mappings=WATER_CLASS_MAPPINGS, mapped_field="class", width=12,
        ),
        Panel(
            "Pollution pulses", "table",
            (Query(f"""SELECT p.time, d.device_id AS detected_at, p.river, p.item, p.peak_value,
       coalesce(p.entry_upstream, '(source)') || ' → ' || p.entry_downstream AS entry_between,
       p.entry_km_from, p.entry_km_to, p.confidence
FROM env_pulse_events p JOIN devices d ON d.id = p.device
WHERE $__timeFilter(p.time) AND {_STATIONS}
ORDER BY p.time DESC
LIMIT 200""", tables=("env_pulse_events", "devices"), format="table"),),
            description="Peaks traced upstream to the stretch where they most likely entered the river.",
            fields=("time", "detected_at", "river", "item", "peak_value", "entry_between", "entry_km_from",
                    "entry_km_to", "confidence"),
            decimals=2, no_data="No pulses", width=12,
        ),
        Panel(
            "Water-quality parameters", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval), d.device_id || ' ' || m.name AS metric,
       avg(r.value) AS value
FROM {READINGS}
WHERE {readings_where(Stream.WATER, metric=True)}
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Measured; mg/L except pH and temperature (°C).", width=24,
        ),
    ),
)
