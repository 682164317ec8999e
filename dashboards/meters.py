"""四表合一 (electricity, water, gas, heat): consumption per type, anomalies, collection success.

Daily consumption, anomalies (leaks, backwards registers, zero use, ...) and collection rates come from
the ``meters`` job (core/sql/0030), which knows register widths and replacements. The interval panels
read the raw registers: consumption is the sum of positive steps between consecutive readings of a
meter; a negative step is counted as a rollback, never subtracted.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import CHINA_DAYS_IN_RANGE, NO_COMPLETE_DAY, READINGS, READINGS_TABLES, REGION, device_filter
from wulian.dashboards.common import device_var, metric_var, overlaps_range, readings_where
from wulian.dashboards.model import Dashboard, Override, Panel, Query, Threshold

_STEPS = f"""WITH s AS (
    SELECT r.time, d.device_id AS meter, m.name AS register,
           r.value - lag(r.value) OVER (PARTITION BY r.device, r.metric ORDER BY r.time) AS step
    FROM {READINGS}
    WHERE {readings_where(Stream.METER, metric=True)})"""

_METERS = device_filter(Stream.METER)

DASHBOARD = Dashboard(
    uid="wulian-meters",
    title="Wulian · 四表合一",
    folder="四表合一",
    description="Electricity, water, gas and heat meters read together: consumption, register checks, "
                "collection success.",
    variables=(REGION, device_var(Stream.METER, "Meter"), metric_var(Stream.METER, "Register")),
    panels=(
        Panel(
            "Daily consumption per type", "barchart",
            (Query(f"""SELECT to_char(c.day, 'YYYY-MM-DD') AS day,
       sum(c.consumption) FILTER (WHERE c.metric = 'elec_kwh') AS elec_kwh,
       sum(c.consumption) FILTER (WHERE c.metric = 'water_m3') AS water_m3,
       sum(c.consumption) FILTER (WHERE c.metric = 'gas_m3') AS gas_m3,
       sum(c.consumption) FILTER (WHERE c.metric = 'heat_kwh') AS heat_kwh
FROM meter_consumption_daily c JOIN devices d ON d.id = c.device
WHERE c.day {CHINA_DAYS_IN_RANGE} AND {_METERS}
GROUP BY 1
ORDER BY 1""", tables=("meter_consumption_daily", "devices"), format="table"),),
            description="Per China day touching the range, over the selected meters; kWh (elec, heat), m³ "
                        "(water, gas).",
            fields=("day", "elec_kwh", "water_m3", "gas_m3", "heat_kwh"), no_data=NO_COMPLETE_DAY, width=12,
        ),
        Panel(
            "Anomalies", "table",
            (Query(f"""SELECT d.device_id AS meter, a.metric AS register, a.kind, a.start_time, a.end_time, a.value,
       a.previous, a.open
FROM meter_anomalies a JOIN devices d ON d.id = a.device
WHERE {overlaps_range("a.start_time", "a.end_time")} AND a.metric IN ($metric) AND {_METERS}
ORDER BY a.start_time DESC
LIMIT 200""", tables=("meter_anomalies", "devices"), format="table"),),
            description="Register events (backwards, reset, replaced, jump, rollover) and day runs (zero "
                        "consumption, night leak, gas never stops) overlapping the range.",
            fields=("meter", "register", "kind", "start_time", "end_time", "value", "previous", "open"),
            no_data="No anomalies", width=12,
        ),
        Panel(
            "Collection success per concentrator", "table",
            (Query(f"""SELECT c.concentrator, c.region, count(*) AS days, max(c.meters) AS meters,
       sum(c.expected) AS expected, sum(c.received) AS received,
       sum(c.received)::float8 / nullif(sum(c.expected), 0) AS success_rate
FROM meter_collection_daily c
WHERE c.day {CHINA_DAYS_IN_RANGE} AND c.region IN ($region)
GROUP BY 1, 2
ORDER BY success_rate NULLS FIRST, 1""", tables=("meter_collection_daily",), format="table"),),
            description="采集成功率: readings received / expected over the China days touching the range.",
            fields=("concentrator", "region", "days", "meters", "expected", "received", "success_rate"),
            decimals=3, no_data=NO_COMPLETE_DAY, width=12,
            overrides=(Override("success_rate", "unit", "percentunit"),),
        ),
        Panel(
            "Consumption per interval", "timeseries",
            (Query(f"""{_STEPS}
SELECT $__timeGroupAlias(time, $__interval), register AS metric, sum(step) AS value
FROM s
WHERE step >= 0
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="From the raw registers, per interval; kWh (elec_kwh, heat_kwh), m³ (water_m3, gas_m3).",
            width=12,
        ),
        Panel(
            "Register checks", "table",
            (Query(f"""{_STEPS}
SELECT meter, register, count(step) AS steps,
       coalesce(sum(step) FILTER (WHERE step >= 0), 0) AS consumption,
       count(*) FILTER (WHERE step < 0) AS rollbacks,
       coalesce(sum(step) FILTER (WHERE step >= 0), 0) = 0 AS zero_use
FROM s
GROUP BY 1, 2
ORDER BY rollbacks DESC, zero_use DESC, meter, register""", tables=READINGS_TABLES, format="table"),),
            description="Rollbacks: register went down. Zero use: no consumption over the whole range.",
            fields=("meter", "register", "steps", "consumption", "rollbacks", "zero_use"), width=12,
        ),
        Panel(
            "Meters read per interval", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval, 0),
       100.0 * count(DISTINCT r.device) / (
           SELECT greatest(count(*), 1) FROM devices
           WHERE stream = 'meter' AND region IN ($region) AND device_id IN ($device)) AS "meters read"
FROM {READINGS}
WHERE {readings_where(Stream.METER)}
GROUP BY 1
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Share of the selected meters with at least one reading in each interval (1 h at "
                        "least); intervals without any reading show 0 (Grafana fills the gaps).",
            unit="percent", min=0, max=100, interval="1h",
            thresholds=(Threshold(None, "red"), Threshold(95, "orange"), Threshold(99, "green")), width=12,
        ),
    ),
)
