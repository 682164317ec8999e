"""Smart grid: supply voltage deviation, phase unbalance, frequency, qualification rates, outages.

Daily qualification rates, power-quality events and feeder outages come from the ``grid`` job
(core/sql/0030), which knows each meter's voltage class; the series panels work on the raw phase values of
220 V supply points.
"""
from __future__ import annotations

from wulian.core.const import Stream
from wulian.dashboards.common import CHINA_DAYS_IN_RANGE, NO_COMPLETE_DAY, READINGS, READINGS_TABLES, REGION, device_filter
from wulian.dashboards.common import device_var
from wulian.dashboards.common import overlaps_range, readings_where
from wulian.dashboards.model import Dashboard, Override, Panel, Query, Threshold

# Simulated and most metered supply points are 220 V single-phase. GB/T 12325-2008: +7 % / -10 % of the
# nominal (198.0 V .. 235.4 V). GB/T 15945-2008: frequency within 50 +- 0.2 Hz.
_NOMINAL_V = 220.0
_PHASES = "('Ua', 'Ub', 'Uc')"
_WHERE = readings_where(Stream.GRID)
_METERS = device_filter(Stream.GRID)

DASHBOARD = Dashboard(
    uid="wulian-grid",
    title="Wulian · Smart grid",
    folder="Smart grid",
    description="Supply quality at metered points: voltage deviation and unbalance, frequency, qualification.",
    variables=(REGION, device_var(Stream.GRID, "Meter")),
    panels=(
        Panel(
            "Voltage deviation", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval), d.device_id || ' ' || m.name AS metric,
       100.0 * (avg(r.value) - {_NOMINAL_V}) / {_NOMINAL_V} AS value
FROM {READINGS}
WHERE {_WHERE} AND m.name IN {_PHASES}
GROUP BY 1, 2
ORDER BY 1""", tables=READINGS_TABLES),),
            description="(U - 220 V) / 220 V per phase; GB/T 12325-2008 allows +7 % / -10 % at 220 V.",
            unit="percent", thresholds=(Threshold(None, "red"), Threshold(-10, "green"), Threshold(7, "red")),
            width=12,
        ),
        Panel(
            "Phase voltage unbalance", "timeseries",
            (Query(f"""WITH b AS (
    SELECT $__timeGroupAlias(r.time, $__interval), d.device_id AS meter,
           avg(r.value) FILTER (WHERE m.name = 'Ua') AS ua,
           avg(r.value) FILTER (WHERE m.name = 'Ub') AS ub,
           avg(r.value) FILTER (WHERE m.name = 'Uc') AS uc
    FROM {READINGS}
    WHERE {_WHERE} AND m.name IN {_PHASES}
    GROUP BY 1, 2)
SELECT time, meter AS metric,
       100.0 * GREATEST(abs(ua - (ua + ub + uc) / 3), abs(ub - (ua + ub + uc) / 3),
                        abs(uc - (ua + ub + uc) / 3)) / ((ua + ub + uc) / 3) AS value
FROM b
WHERE ua IS NOT NULL AND ub IS NOT NULL AND uc IS NOT NULL
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Largest deviation of a phase voltage from the three-phase mean (magnitudes only; the "
                        "negative-sequence unbalance of GB/T 15543 needs phase angles).",
            unit="percent", thresholds=(Threshold(None, "green"), Threshold(2, "orange"), Threshold(4, "red")),
            width=12,
        ),
        Panel(
            "Frequency", "timeseries",
            (Query(f"""SELECT $__timeGroupAlias(r.time, $__interval),
       min(r.value) AS "min", avg(r.value) AS "mean", max(r.value) AS "max"
FROM {READINGS}
WHERE {_WHERE} AND m.name = 'freq'
GROUP BY 1
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Across the selected meters; GB/T 15945-2008 normal limit 50 ± 0.2 Hz.",
            unit="hertz", decimals=3,
            thresholds=(Threshold(None, "red"), Threshold(49.8, "green"), Threshold(50.2001, "red")), width=12,
        ),
        Panel(
            "Qualification rates per meter", "table",
            (Query(f"""SELECT d.device_id AS meter, count(*) AS days, sum(q.samples) AS samples,
       sum(q.voltage_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.voltage_rate IS NOT NULL), 0)
           AS voltage_rate,
       sum(q.frequency_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.frequency_rate IS NOT NULL), 0)
           AS frequency_rate,
       sum(q.unbalance_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.unbalance_rate IS NOT NULL), 0)
           AS unbalance_rate,
       min(q.dev_min_pct) AS dev_min_pct, max(q.dev_max_pct) AS dev_max_pct, sum(q.interruptions) AS interruptions
FROM grid_quality_daily q JOIN devices d ON d.id = q.device
WHERE q.day {CHINA_DAYS_IN_RANGE} AND {_METERS}
GROUP BY 1
ORDER BY voltage_rate NULLS LAST, meter""", tables=("grid_quality_daily", "devices"), format="table"),),
            description="China days touching the range, weighted by samples: voltage (GB/T 12325, by the "
                        "meter's voltage class), frequency (GB/T 15945), unbalance (GB/T 15543).",
            fields=("meter", "days", "samples", "voltage_rate", "frequency_rate", "unbalance_rate", "dev_min_pct",
                    "dev_max_pct", "interruptions"),
            decimals=2, no_data=NO_COMPLETE_DAY, width=12,
            overrides=tuple(Override(f, "unit", "percentunit") for f in ("voltage_rate", "frequency_rate",
                                                                          "unbalance_rate")),
        ),
        Panel(
            "Qualification rate per day", "barchart",
            (Query(f"""SELECT to_char(q.day, 'YYYY-MM-DD') AS day,
       sum(q.voltage_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.voltage_rate IS NOT NULL), 0)
           AS voltage,
       sum(q.frequency_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.frequency_rate IS NOT NULL), 0)
           AS frequency,
       sum(q.unbalance_rate * q.samples) / nullif(sum(q.samples) FILTER (WHERE q.unbalance_rate IS NOT NULL), 0)
           AS unbalance
FROM grid_quality_daily q JOIN devices d ON d.id = q.device
WHERE q.day {CHINA_DAYS_IN_RANGE} AND {_METERS}
GROUP BY 1
ORDER BY 1""", tables=("grid_quality_daily", "devices"), format="table"),),
            description="Per China day over the selected meters, weighted by samples.",
            fields=("day", "voltage", "frequency", "unbalance"), unit="percentunit", min=0.9, max=1,
            no_data=NO_COMPLETE_DAY, width=12,
        ),
        Panel(
            "Outages", "table",
            (Query(f"""SELECT o.region, o.feeder, o.start_time, o.end_time, o.end_time - o.start_time AS duration,
       o.meters, o.open
FROM grid_outages o
WHERE o.region IN ($region) AND {overlaps_range("o.start_time", "o.end_time")}
ORDER BY o.start_time DESC
LIMIT 200""", tables=("grid_outages",), format="table"),),
            description="Every meter of a feeder silent or collapsed at once.",
            fields=("region", "feeder", "start_time", "end_time", "duration", "meters", "open"),
            no_data="No outages", width=12,
        ),
        Panel(
            "Power-quality events", "table",
            (Query(f"""SELECT d.device_id AS meter, e.kind, e.start_time, e.end_time, e.open
FROM grid_events e JOIN devices d ON d.id = e.device
WHERE {overlaps_range("e.start_time", "e.end_time")} AND {_METERS}
ORDER BY e.start_time DESC
LIMIT 200""", tables=("grid_events", "devices"), format="table"),),
            description="Voltage, frequency, unbalance, overload, low power factor and collapse episodes.",
            fields=("meter", "kind", "start_time", "end_time", "open"), no_data="No events", width=12,
        ),
        Panel(
            "Active power", "timeseries",
            (Query(f"""SELECT time, sum(p) AS "total kW"
FROM (
    SELECT $__timeGroupAlias(r.time, $__interval), r.device, avg(r.value) AS p
    FROM {READINGS}
    WHERE {_WHERE} AND m.name = 'P'
    GROUP BY 1, 2) per_meter
GROUP BY 1
ORDER BY 1""", tables=READINGS_TABLES),),
            description="Sum over the selected meters of each meter's mean in the interval.",
            unit="kwatt", width=24,
        ),
    ),
)
