"""Key pollution sources (HJ 212): hourly values against permit limits, exceedance episodes, data validity.

Hourly values, exceedances and completeness come from the ``source_hourly`` job (core/sql/0010): HJ 75/76
validity, conversion to the reference oxygen content, the permit limit from the registry. The raw panels
below them show what the analysers sent.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import INVALID_FLAGS_SQL, READINGS, READINGS_TABLES, REGION, device_filter, device_var
from wulian.dashboards.common import metric_var, overlaps_range, readings_where
from wulian.dashboards.model import Dashboard, Override, Panel, Query, Threshold

_WHERE = readings_where(Stream.POLLUTION, metric=True)
_SOURCES = device_filter(Stream.POLLUTION)
_HOURLY = ("env_source_hourly", "devices")

DASHBOARD = Dashboard(
    uid="wulian-pollution",
    title="Wulian · Pollution sources",
    folder="Pollution sources",
    description="Stack gas and wastewater outlets: converted hourly values against permit limits, exceedance "
                "episodes, valid-data rate, raw measurements.",
    variables=(REGION, device_var(Stream.POLLUTION, "Source"), metric_var(Stream.POLLUTION, "Pollutant")),
    panels=(
        Panel(
            "Sources: exceedance state", "geomap",
            (Query(f"""SELECT (coalesce(e.open_episodes, 0) > 0)::int AS exceeding, d.device_id AS name,
       d.name AS label, (d.attrs->>'lat')::float8 AS latitude, (d.attrs->>'lon')::float8 AS longitude,
       coalesce(e.open_episodes, 0) AS open_episodes, e.pollutants
FROM devices d
LEFT JOIN LATERAL (
    SELECT count(*) AS open_episodes, string_agg(DISTINCT x.pollutant, ', ') AS pollutants FROM env_exceedances x
    WHERE x.device = d.id AND {overlaps_range("x.start_time", "x.end_time")}
      AND (x.open OR x.end_time >= $__timeTo()::timestamptz - interval '1 hour')) e ON true
WHERE {_SOURCES} AND d.attrs ? 'lat' AND d.attrs ? 'lon'""", tables=("env_exceedances", "devices"), format="table"),),
            description="Red: an exceedance episode still open (or ending in the last hour of the range); green: "
                        "within limits. Coordinates from the registry (attrs.lat / attrs.lon).",
            fields=("exceeding", "name", "pollutants"), thresholds=(Threshold(None, "green"), Threshold(1, "red")),
            decimals=0, no_data="No source with coordinates", width=24, height=10,
        ),
        Panel(
            "Hourly concentration vs permit limit", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(h.time, $__interval), d.device_id || ' ' || h.pollutant AS metric,
       avg(h.converted) AS value
FROM env_source_hourly h JOIN devices d ON d.id = h.device
WHERE $__timeFilter(h.time) AND h.valid AND h.pollutant IN ($metric) AND {_SOURCES}
GROUP BY 1, 2
ORDER BY 1""", tables=_HOURLY),
             Query(f"""SELECT $__timeGroupAlias(h.time, $__interval),
       d.device_id || ' ' || h.pollutant || ' limit' AS metric, max(h.limit_value) AS value
FROM env_source_hourly h JOIN devices d ON d.id = h.device
WHERE $__timeFilter(h.time) AND h.limit_value IS NOT NULL AND h.pollutant IN ($metric) AND {_SOURCES}
GROUP BY 1, 2
ORDER BY 1""", tables=_HOURLY, ref_id="B")),
            description="Valid hours (>= 45 valid minutes), converted to the reference O2 for stack gas; dashed "
                        "series: the permit limit judged against.",
            overrides=(Override("/ limit$/", "custom.lineStyle", {"fill": "dash", "dash": [10, 10]}, regex=True),),
            width=24, interval="1h",
        ),
        Panel(
            "Exceedance episodes", "table",
            (Query(f"""SELECT d.device_id AS source, e.pollutant, e.start_time, e.end_time, e.hours, e.peak,
       e.limit_value, round((e.peak / nullif(e.limit_value, 0))::numeric, 2) AS peak_ratio, e.open
FROM env_exceedances e JOIN devices d ON d.id = e.device
WHERE {overlaps_range("e.start_time", "e.end_time")}
  AND e.start_time >= $__timeFrom()::timestamptz - interval '30 days'
  AND e.pollutant IN ($metric) AND {_SOURCES}
ORDER BY e.start_time DESC
LIMIT 200""", tables=("env_exceedances", "devices"), format="table"),),
            description="Consecutive hours above the permit limit overlapping the range (started at most 30 days "
                        "before it).",
            fields=("source", "pollutant", "start_time", "end_time", "hours", "peak", "limit_value", "peak_ratio",
                    "open"),
            no_data="No exceedances", width=12,
        ),
        Panel(
            "Valid-hour rate per source", "table",
            (Query(f"""SELECT d.device_id AS source, count(DISTINCT h.time) AS hours,
       count(*) FILTER (WHERE h.valid)::float8 / count(*) AS valid_rate,
       string_agg(DISTINCT h.pollutant, ', ') FILTER (WHERE NOT h.valid) AS invalid_items,
       max(h.time) FILTER (WHERE h.valid) AS last_valid_hour
FROM env_source_hourly h JOIN devices d ON d.id = h.device
WHERE $__timeFilter(h.time) AND {_SOURCES}
GROUP BY 1
ORDER BY valid_rate, source""", tables=_HOURLY, format="table"),),
            description="Valid item-hours (>= 45 valid minutes, HJ 75/76) / item-hours written by the hourly job "
                        "in the range; the daily completeness alert applies the same rule per China day.",
            fields=("source", "hours", "valid_rate", "invalid_items", "last_valid_hour"), decimals=3, width=12,
            overrides=(Override("valid_rate", "unit", "percentunit"),
                       Override("valid_rate", "thresholds", {"mode": "absolute", "steps": [
                           {"value": None, "color": "red"}, {"value": 0.75, "color": "orange"},
                           {"value": 0.9, "color": "green"}]}),
                       Override("valid_rate", "custom.cellOptions", {"type": "color-text"})),
        ),
        Panel(
            "Measured concentrations (raw)", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval), d.device_id || ' ' || m.name AS metric,
       avg(r.value) AS value
FROM {READINGS}
WHERE {_WHERE}
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="As the analysers sent them, every flag, not converted.", width=24,
        ),
        Panel(
            "Valid-sample rate (raw)", "table",
            (Query(f"""SELECT d.device_id AS source, m.name AS pollutant, count(*) AS samples,
       100.0 * count(*) FILTER (WHERE r.flag NOT IN ({INVALID_FLAGS_SQL})) / count(*) AS valid_pct,
       max(r.time) AS last_sample
FROM {READINGS}
WHERE {_WHERE}
GROUP BY 1, 2
ORDER BY valid_pct, source, pollutant""", tables=READINGS_TABLES, format="table"),),
            description="Samples not flagged F, M, S, D, C, T or B (HJ 212 data flags) over the range.",
            fields=("source", "pollutant", "samples", "valid_pct", "last_sample"), unit="percent", width=12,
            thresholds=(Threshold(None, "red"), Threshold(75, "orange"), Threshold(90, "green")),
        ),
        Panel(
            "Data flags", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval), r.flag AS metric, count(*) AS value
FROM {READINGS}
WHERE {_WHERE}
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Samples per HJ 212 flag (N normal, F stopped, M maintenance, D fault, ...).", width=12,
        ),
    ),
)
