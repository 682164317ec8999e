"""两客一危 vehicles (JT/T 808): latest positions, speed, violations, regulator KPIs per enterprise.

Violations and daily KPIs come from the ``vehicles`` job (core/sql/0030), which applies each vehicle's
class limits, fatigue and night-ban rules; the activity table is computed from positions directly.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import CHINA_DAYS_IN_RANGE, NO_COMPLETE_DAY, REGION, device_var, overlaps_range
from wulian.dashboards.model import Dashboard, Override, Panel, Query, Threshold

# Dangerous-goods vehicles are limited to 80 km/h on expressways (道路危险货物运输管理规定); coaches to
# 100 km/h. The raw panels flag the stricter limit; the violations table applies each vehicle's own.
_OVERSPEED_KMH = 80
_VEHICLES = "d.stream = 'vehicle' AND d.region IN ($region) AND d.device_id IN ($device)"
_TABLES = ("vehicle_positions", "devices")

DASHBOARD = Dashboard(
    uid="wulian-vehicles",
    title="Wulian · Vehicles",
    folder="Vehicles",
    description="Coaches and dangerous-goods vehicles: where they are, how fast, alarms, KPIs per enterprise.",
    variables=(REGION, device_var(Stream.VEHICLE, "Vehicle")),
    panels=(
        Panel(
            "Latest positions", "geomap",
            (Query(f"""SELECT d.device_id AS name, p.lat AS latitude, p.lon AS longitude, p.speed_kmh AS speed,
       p.heading, p.time
FROM devices d
CROSS JOIN LATERAL (
    SELECT time, lat, lon, speed_kmh, heading FROM vehicle_positions
    WHERE device = d.id AND $__timeFilter(time)
    ORDER BY time DESC LIMIT 1) p
WHERE {_VEHICLES}""", tables=_TABLES, format="table"),),
            fields=("speed", "name", "time"), unit="velocitykmh", width=12, height=12,
            thresholds=(Threshold(None, "green"), Threshold(_OVERSPEED_KMH, "red")),
        ),
        Panel(
            "Vehicle track", "geomap",
            (Query(f"""SELECT p.speed_kmh AS speed, d.device_id AS name, p.lat AS latitude, p.lon AS longitude, p.time
FROM vehicle_positions p JOIN devices d ON d.id = p.device
WHERE $__timeFilter(p.time) AND {_VEHICLES}
ORDER BY d.device_id, p.time
LIMIT 20000""", tables=_TABLES, format="table"),),
            description="The chosen vehicles' tracks over the range (pick one vehicle for a single track), coloured "
                        "by speed; at most 20 000 points.",
            fields=("speed", "name"), unit="velocitykmh", width=12, height=12, layer="route",
            thresholds=(Threshold(None, "green"), Threshold(_OVERSPEED_KMH, "red")),
        ),
        Panel(
            "Speed", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(p.time, $__interval), d.device_id AS metric, avg(p.speed_kmh) AS value
FROM vehicle_positions p JOIN devices d ON d.id = p.device
WHERE $__timeFilter(p.time) AND {_VEHICLES}
GROUP BY 1, 2
ORDER BY 1""", tables=_TABLES),),
            unit="velocitykmh", width=12, height=12,
            thresholds=(Threshold(None, "green"), Threshold(_OVERSPEED_KMH, "red")),
        ),
        Panel(
            "Violations", "table",
            (Query(f"""SELECT d.device_id AS vehicle, coalesce(d.attrs->>'enterprise', '(unassigned)') AS enterprise,
       v.rule, v.start_time, v.end_time, v.end_time - v.start_time AS duration, v.value, v.open
FROM vehicle_violations v JOIN devices d ON d.id = v.device
WHERE {overlaps_range("v.start_time", "v.end_time")}
  AND v.start_time >= $__timeFrom()::timestamptz - interval '1 day' AND {_VEHICLES}
ORDER BY v.start_time DESC
LIMIT 500""", tables=("vehicle_violations", "devices"), format="table"),),
            description="Overspeed, fatigue driving, night ban, geofence, route deviation and terminal alarms "
                        "overlapping the range (started at most a day before it). value: the peak speed, "
                        "hours driven, ... as the rule defines.",
            fields=("vehicle", "enterprise", "rule", "start_time", "end_time", "duration", "value", "open"),
            no_data="No violations", width=24,
        ),
        Panel(
            "Violations per rule", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(v.start_time, $__interval), v.rule AS metric, count(*) AS value
FROM vehicle_violations v JOIN devices d ON d.id = v.device
WHERE $__timeFilter(v.start_time) AND {_VEHICLES}
GROUP BY 1, 2
ORDER BY 1""", tables=("vehicle_violations", "devices")),),
            description="Episodes by the interval they started in.",
            stacked=True, no_data="No violations", width=12,
        ),
        Panel(
            "Regulator KPIs per enterprise", "table",
            (Query(f"""SELECT k.grp AS enterprise, k.region, count(*) AS days, max(k.registered) AS registered,
       avg(k.network_rate) AS network_rate, avg(k.online_rate) AS online_rate,
       avg(k.track_completeness) AS track_completeness, avg(k.valid_rate) AS valid_rate,
       avg(k.drift_rate) AS drift_rate, sum(k.overspeed_count) AS overspeed, sum(k.fatigue_hours) AS fatigue_hours,
       sum(k.night_violations) AS night_violations
FROM vehicle_kpis k
WHERE k.day {CHINA_DAYS_IN_RANGE} AND k.scope = 'enterprise' AND k.region IN ($region)
GROUP BY 1, 2
ORDER BY 1, 2""", tables=("vehicle_kpis",), format="table"),),
            description="入网率, 上线率, 轨迹完整率, 数据合格率, 漂移率: means of the daily rates over the China "
                        "days touching the range; counts summed.",
            fields=("enterprise", "region", "days", "registered", "network_rate", "online_rate",
                    "track_completeness", "valid_rate", "drift_rate", "overspeed", "fatigue_hours",
                    "night_violations"),
            decimals=3, no_data=NO_COMPLETE_DAY, width=12,
            overrides=tuple(Override(f, "unit", "percentunit") for f in (
                "network_rate", "online_rate", "track_completeness", "valid_rate", "drift_rate")),
        ),
        Panel(
            "Activity per enterprise", "table",
            (Query(f"""WITH v AS (
    SELECT coalesce(d.attrs->>'enterprise', '(unassigned)') AS enterprise, d.id,
           count(p.time) AS fixes,
           coalesce(max(p.mileage_km) - min(p.mileage_km), 0) AS km,
           count(*) FILTER (WHERE p.speed_kmh > {_OVERSPEED_KMH}) AS overspeed_fixes,
           count(*) FILTER (WHERE p.alarm_bits <> 0) AS alarm_fixes
    FROM devices d LEFT JOIN vehicle_positions p ON p.device = d.id AND $__timeFilter(p.time)
    WHERE {_VEHICLES}
    GROUP BY 1, 2)
SELECT enterprise, count(*) AS vehicles, count(*) FILTER (WHERE fixes > 0) AS reporting,
       100.0 * count(*) FILTER (WHERE fixes > 0) / count(*) AS online_pct,
       sum(km) AS km, sum(overspeed_fixes) AS overspeed_fixes, sum(alarm_fixes) AS alarm_fixes
FROM v
GROUP BY 1
ORDER BY 1""", tables=_TABLES, format="table"),),
            description=f"Over the range. Overspeed: fixes above {_OVERSPEED_KMH} km/h. Alarm: JT/T 808 alarm "
                        "word non-zero.",
            fields=("enterprise", "vehicles", "reporting", "online_pct", "km", "overspeed_fixes", "alarm_fixes"),
            decimals=1, width=24,
        ),
    ),
)
