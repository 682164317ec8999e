"""Panels of the shipped profiles' derived tables (ingest/jobs/{charging,coldchain,energy}.py), appended
to the profile's stream dashboard (dashboards/streams.py) - what its users look at beyond raw readings:
utilisation per station and district, trip compliance, standard coal per enterprise, use above the
enterprise's own profile."""
from __future__ import annotations

from wulian.dashboards.common import CHINA_DAYS_IN_RANGE, NO_COMPLETE_DAY, overlaps_range
from wulian.dashboards.model import Panel, Query


def _devices(stream: str, alias: str = "d") -> str:
    return f"{alias}.stream = '{stream}' AND {alias}.region IN ($region) AND {alias}.device_id IN ($device)"


_CHARGING = (
    Panel(
        "Utilisation per station (daily)", "barchart",
        (Query(f"""SELECT u.station, 100 * sum(u.charging_s) / nullif(sum(u.period_s), 0) AS utilisation_pct,
       count(DISTINCT u.device) AS chargers
FROM charger_utilisation_daily u JOIN devices d ON d.id = u.device
WHERE u.day {CHINA_DAYS_IN_RANGE} AND {_devices('charging')}
GROUP BY 1
ORDER BY 1""", tables=("charger_utilisation_daily", "devices"), format="table"),),
        description="Share of time charging over the China days touching the range, time-weighted over the "
                    "station's chargers (a state reading holds at most 15 minutes).",
        fields=("station", "utilisation_pct"), unit="percent", no_data=NO_COMPLETE_DAY, width=12,
    ),
    Panel(
        "Utilisation per district and day", "table",
        (Query(f"""SELECT to_char(u.day, 'YYYY-MM-DD') AS day, u.district, count(DISTINCT u.device) AS chargers,
       round((100 * sum(u.charging_s) / nullif(sum(u.period_s), 0))::numeric, 1) AS utilisation_pct,
       round((sum(u.fault_s) / 3600)::numeric, 1) AS fault_h, round((sum(u.offline_s) / 3600)::numeric, 1) AS offline_h
FROM charger_utilisation_daily u JOIN devices d ON d.id = u.device
WHERE u.day {CHINA_DAYS_IN_RANGE} AND {_devices('charging')}
GROUP BY 1, 2
ORDER BY 1, 2""", tables=("charger_utilisation_daily", "devices"), format="table"),),
        description="Per China day and district: chargers, utilisation, hours in fault and offline.",
        fields=("day", "district", "chargers", "utilisation_pct", "fault_h", "offline_h"), no_data=NO_COMPLETE_DAY,
        width=12,
    ),
)

_COLDCHAIN = (
    Panel(
        "Trips: temperature compliance", "table",
        (Query(f"""SELECT d.device_id AS truck, t.start_time, t.end_time, t.open,
       round((100 * t.compliance)::numeric, 1) AS compliance_pct,
       round((t.out_of_range_s / 60)::numeric, 1) AS minutes_out, round((t.no_data_s / 60)::numeric, 1) AS minutes_no_data,
       t.max_temp, t.low_c, t.high_c
FROM coldchain_trips t JOIN devices d ON d.id = t.device
WHERE {overlaps_range("t.start_time", "t.end_time")} AND {_devices('coldchain')}
ORDER BY t.start_time DESC, d.device_id
LIMIT 200""", tables=("coldchain_trips", "devices"), format="table"),),
        description="Trips (waybills, dispatch to delivery) overlapping the range: share of the trip inside the "
                    "band; minutes without a reading are not compliant.",
        fields=("truck", "start_time", "end_time", "open", "compliance_pct", "minutes_out", "max_temp"),
        no_data="No trips in the range", width=24,
    ),
)

_ENERGY = (
    Panel(
        "Standard coal per enterprise (daily, tce)", "barchart",
        (Query(f"""SELECT to_char(e.day, 'YYYY-MM-DD') AS day, e.enterprise, sum(e.tce) AS tce
FROM energy_daily e
WHERE e.day {CHINA_DAYS_IN_RANGE} AND e.region IN ($region)
GROUP BY 1, 2
ORDER BY 1, 2""", tables=("energy_daily",), format="table"),),
        description="Electricity (0.1229 kgce/kWh), natural gas, steam (by enthalpy) and new water in tonnes of "
                    "standard coal, GB/T 2589-2020.",
        fields=("day", "enterprise", "tce"), no_data=NO_COMPLETE_DAY, width=12,
    ),
    Panel(
        "Use above the enterprise's own profile", "table",
        (Query(f"""SELECT a.enterprise, a.start_time, a.end_time, a.hours, round(a.consumption_kwh::numeric) AS kwh,
       round(a.baseline_kwh::numeric) AS baseline_kwh, a.open
FROM energy_anomalies a
WHERE {overlaps_range("a.start_time", "a.end_time")} AND a.region IN ($region)
ORDER BY a.start_time DESC
LIMIT 200""", tables=("energy_anomalies",), format="table"),),
        description="Runs of hours above median + k x spread of the same hour of the week over the last four "
                    "weeks.",
        fields=("enterprise", "start_time", "end_time", "hours", "kwh", "baseline_kwh", "open"),
        no_data="No anomalies", width=12,
    ),
)

DERIVED_PANELS: dict[str, tuple[Panel, ...]] = {"charging": _CHARGING, "coldchain": _COLDCHAIN, "energy": _ENERGY}
