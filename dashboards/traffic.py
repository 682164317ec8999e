"""Road traffic: observed vs forecast speed per segment, incidents, flow and occupancy, segments now.

Forecasts and incidents come from the traffic job (core/sql/0020_traffic.sql): forecasts are issued
every step for several horizons; the panel compares observations with the next-step forecast.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import REGION, device_var
from wulian.dashboards.model import Dashboard, Panel, Query, Threshold

_SEGMENTS = "d.stream = 'traffic' AND d.region IN ($region) AND d.device_id IN ($device)"
_FROM = "traffic_observations o JOIN devices d ON d.id = o.device"
_TABLES = ("traffic_observations", "devices")
_SPEED_COLOURS = (Threshold(None, "red"), Threshold(20, "orange"), Threshold(40, "green"))


def _series(column: str) -> Query:
    return Query(f"""SELECT $__timeGroupAlias(o.time, $__interval), d.device_id AS metric, avg(o.{column}) AS value
FROM {_FROM}
WHERE $__timeFilter(o.time) AND {_SEGMENTS}
GROUP BY 1, 2
ORDER BY 1""", tables=_TABLES)


DASHBOARD = Dashboard(
    uid="wulian-traffic",
    title="Wulian · Traffic",
    folder="Traffic",
    description="Road segments: observed vs forecast speed, incidents, flow and occupancy.",
    variables=(REGION, device_var(Stream.TRAFFIC, "Segment")),
    panels=(
        Panel(
            "Segments: speed vs forecast", "geomap",
            (Query(f"""SELECT round((o.speed_kmh / nullif(f.speed_kmh, 0))::numeric, 2)::float8 AS speed_ratio,
       d.device_id AS name, (d.attrs->>'lat')::float8 AS latitude, (d.attrs->>'lon')::float8 AS longitude,
       o.speed_kmh AS observed_kmh, f.speed_kmh AS forecast_kmh, o.time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, speed_kmh FROM traffic_observations
    WHERE device = d.id AND $__timeFilter(time) ORDER BY time DESC LIMIT 1) o
LEFT JOIN LATERAL (
    SELECT speed_kmh FROM traffic_forecasts
    WHERE device = d.id AND horizon_steps = 1 AND $__timeFilter(issued_at) AND time <= o.time
    ORDER BY time DESC LIMIT 1) f ON true
WHERE {_SEGMENTS} AND d.attrs ? 'lat' AND d.attrs ? 'lon'""", tables=("traffic_observations", "traffic_forecasts",
                                                                     "devices"), format="table"),),
            description="Latest observed speed over the one-step forecast for the same time: below 0.5 red, below "
                        "0.8 orange. Coordinates from the registry (attrs.lat / attrs.lon of the detector).",
            fields=("speed_ratio", "name", "observed_kmh", "forecast_kmh"),
            thresholds=(Threshold(None, "red"), Threshold(0.5, "orange"), Threshold(0.8, "green")), decimals=2,
            no_data="No segment with coordinates", width=24, height=10,
        ),
        Panel(
            "Observed vs forecast speed", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(o.time, $__interval), d.device_id || ' observed' AS metric,
       avg(o.speed_kmh) AS value
FROM {_FROM}
WHERE $__timeFilter(o.time) AND {_SEGMENTS}
GROUP BY 1, 2
ORDER BY 1""", tables=_TABLES),
             Query(f"""SELECT $__timeGroupAlias(f.time, $__interval), d.device_id || ' forecast' AS metric,
       avg(f.speed_kmh) AS value
FROM traffic_forecasts f JOIN devices d ON d.id = f.device
WHERE $__timeFilter(f.issued_at) AND f.horizon_steps = 1 AND {_SEGMENTS}
GROUP BY 1, 2
ORDER BY 1""", tables=("traffic_forecasts", "devices"), ref_id="B")),
            description="Observed speed and the forecast made one step earlier for the same interval.",
            unit="velocitykmh", width=24,
        ),
        Panel(
            "Incidents", "table",
            (Query(f"""SELECT d.device_id AS segment, i.state, i.started_at, i.detected_at, i.ended_at,
       i.expected_kmh, i.observed_kmh, i.min_speed_kmh
FROM traffic_incidents i JOIN devices d ON d.id = i.device
WHERE i.region IN ($region) AND d.device_id IN ($device)
  AND i.detected_at <= $__timeTo() AND (i.ended_at IS NULL OR i.ended_at >= $__timeFrom())
ORDER BY i.detected_at DESC
LIMIT 200""", tables=("traffic_incidents", "devices"), format="table"),),
            description="Observed speed far below the forecast for at least two intervals; open or overlapping "
                        "the range.",
            fields=("segment", "state", "started_at", "detected_at", "ended_at", "expected_kmh", "observed_kmh",
                    "min_speed_kmh"),
            decimals=1, no_data="No incidents", width=24,
        ),
        Panel("Flow", "timeseries", (_series("flow_vph"),), unit="veh/h", width=12),
        Panel("Occupancy", "timeseries", (_series("occupancy"),), unit="percentunit", width=12),
        Panel(
            "Segments now", "table",
            (Query(f"""SELECT d.device_id AS segment, l.speed_kmh AS speed, l.flow_vph AS flow, l.occupancy,
       a.mean_speed, l.time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, speed_kmh, flow_vph, occupancy FROM traffic_observations
    WHERE device = d.id AND $__timeFilter(time)
    ORDER BY time DESC LIMIT 1) l
CROSS JOIN LATERAL (
    SELECT avg(speed_kmh) AS mean_speed FROM traffic_observations
    WHERE device = d.id AND $__timeFilter(time)) a
WHERE {_SEGMENTS}
ORDER BY speed""", tables=_TABLES, format="table"),),
            description="Latest observation per segment and its mean speed over the range, slowest first.",
            fields=("segment", "speed", "flow", "occupancy", "mean_speed", "time"), decimals=1, width=24,
        ),
    ),
)
