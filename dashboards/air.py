"""Ambient air quality: latest AQI per station on a map in HJ 633 colours, AQI over time, city AQI,
primary pollutants, and the pollutant series the AQI is made of.

AQI rows come from the ``air_quality`` job (core/sql/0010): HJ 633 with the edition in force for each
hour, the colour and the primary pollutants it decided. Station coordinates are registry attributes.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import AQI_THRESHOLDS, PM25_THRESHOLDS, READINGS, READINGS_TABLES, REGION, device_filter
from wulian.dashboards.common import device_var, metric_var, readings_where
from wulian.dashboards.model import Dashboard, Panel, Query

_STATIONS = device_filter(Stream.AIR)
_AQI = ("env_aqi_hourly", "devices")

DASHBOARD = Dashboard(
    uid="wulian-air",
    title="Wulian · Air quality",
    folder="Air quality",
    description="Ambient stations: AQI on a map (HJ 633 colours), AQI over time, city AQI, primary pollutants.",
    variables=(REGION, device_var(Stream.AIR, "Station"), metric_var(Stream.AIR, "Pollutant")),
    panels=(
        Panel(
            "Stations: latest hourly AQI", "geomap",
            (Query(f"""SELECT d.device_id AS name, (d.attrs->>'lat')::float8 AS latitude,
       (d.attrs->>'lon')::float8 AS longitude, a.aqi, a.category,
       array_to_string(a.primary_pollutants, ', ') AS primary_pollutants, a.time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, aqi, category, primary_pollutants FROM env_aqi_hourly
    WHERE device = d.id AND $__timeFilter(time)
    ORDER BY time DESC LIMIT 1) a
WHERE {_STATIONS} AND d.attrs ? 'lat' AND d.attrs ? 'lon'""", tables=_AQI, format="table"),),
            description="Station coordinates come from the device registry (attrs.lat / attrs.lon, WGS-84).",
            fields=("aqi", "name", "category", "time"), thresholds=AQI_THRESHOLDS, decimals=0, width=12, height=12,
        ),
        Panel(
            "AQI per station", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(a.time, $__interval), d.device_id AS metric, max(a.aqi) AS value
FROM env_aqi_hourly a JOIN devices d ON d.id = a.device
WHERE $__timeFilter(a.time) AND {_STATIONS}
GROUP BY 1, 2
ORDER BY 1""", tables=_AQI),),
            description="Hourly (real-time) AQI; the worst hour when an interval holds several.",
            thresholds=AQI_THRESHOLDS, decimals=0, min=0, interval="1h", width=12, height=12,
        ),
        Panel(
            "City AQI", "timeseries",
            (Query("""SELECT $__timeGroupAlias(c.time, $__interval), c.city AS metric, max(c.aqi) AS value
FROM env_city_aqi c
WHERE $__timeFilter(c.time) AND c.report = 'hourly' AND c.city IN ($region)
GROUP BY 1, 2
ORDER BY 1""", tables=("env_city_aqi",)),),
            description="HJ 663: each indicator averaged over the city's stations, then HJ 633.",
            thresholds=AQI_THRESHOLDS, decimals=0, min=0, interval="1h", width=12,
        ),
        Panel(
            "Primary pollutants", "barchart",
            (Query(f"""SELECT p.pollutant, count(*) AS station_hours
FROM env_aqi_hourly a JOIN devices d ON d.id = a.device
CROSS JOIN LATERAL unnest(a.primary_pollutants) AS p(pollutant)
WHERE $__timeFilter(a.time) AND {_STATIONS}
GROUP BY 1
ORDER BY 2 DESC""", tables=_AQI, format="table"),),
            description="Station-hours each pollutant was primary (named only when AQI > 50, HJ 633).",
            fields=("pollutant", "station_hours"), no_data="No primary pollutant (AQI <= 50 throughout)", width=12,
        ),
        Panel(
            "PM2.5 per station", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval), d.device_id AS metric, avg(r.value) AS value
FROM {READINGS}
WHERE {readings_where(Stream.AIR)} AND m.name = 'PM25'
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Coloured by the PM2.5 IAQI breakpoints (HJ 633-2012).",
            unit="conµgm3", thresholds=PM25_THRESHOLDS, width=12,
        ),
        Panel(
            "Pollutants", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval), d.device_id || ' ' || m.name AS metric,
       avg(r.value) AS value
FROM {READINGS}
WHERE {readings_where(Stream.AIR, metric=True)}
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Measured, µg/m³ (CO in mg/m³).", width=12,
        ),
    ),
)
