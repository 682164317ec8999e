"""City overview: what operators look at first — alerts, ingest, devices, dead letters."""
from __future__ import annotations

from wulian.dashboards.common import REGION
from wulian.dashboards.model import Dashboard, Panel, Query, Threshold

_SEVERITIES = ("critical", "major", "minor", "warning")
_SEVERITY_COLOURS = tuple(zip(_SEVERITIES, ("dark-red", "orange", "yellow", "blue")))
_OPEN = "state IN ('active', 'acknowledged')"
_ONLINE = "last_seen >= $__timeTo()::timestamptz - interval '15 minutes'"  # as the API's `online`

_ingest_parts = [
    f"""SELECT $__timeGroupAlias(x.time, $__interval), '{label}' AS metric,
       count(*) * 1000.0 / $__interval_ms AS value
FROM {table} x JOIN devices d ON d.id = x.device
WHERE $__timeFilter(x.time) AND d.region IN ($region){extra}
GROUP BY 1, 2"""
    for table, label, extra in (
        ("readings", "scalar readings", ""),
        ("vehicle_positions", "vehicle positions", ""),
        ("traffic_observations", "traffic observations", ""),
    )
]

DASHBOARD = Dashboard(
    uid="wulian-overview",
    title="Wulian · City overview",
    folder="Overview",
    description="Alerts, ingest rate, device availability and dead letters across every stream.",
    variables=(REGION,),
    panels=(
        Panel(
            "Open alerts: acknowledgement", "table",
            (Query(f"""SELECT a.id, a.raised_at, a.region, a.stream, a.device_id, a.severity, a.title, a.state,
       a.acknowledged_by, a.acknowledged_at,
       round(extract(epoch FROM coalesce(a.acknowledged_at, $__timeTo()::timestamptz) - a.raised_at) / 60.0)::int
         AS minutes_to_ack
FROM alerts a
WHERE a.{_OPEN} AND a.region IN ($region) AND a.raised_at <= $__timeTo()
ORDER BY (a.state = 'active') DESC, a.raised_at
LIMIT 500""", tables=("alerts",), format="table"),),
            description="Alerts not yet cleared: unacknowledged first, oldest first; minutes_to_ack counts until now "
                        "for those still waiting.",
            fields=("id", "raised_at", "region", "stream", "device_id", "severity", "title", "state",
                    "acknowledged_by", "acknowledged_at", "minutes_to_ack"),
            no_data="No open alerts", width=24,
        ),
        Panel(
            "Open alerts by stream and severity", "barchart",
            (Query(
                "SELECT stream, "
                + ", ".join(f"count(*) FILTER (WHERE severity = '{s}') AS {s}" for s in _SEVERITIES)
                + f"\nFROM alerts\nWHERE {_OPEN} AND region IN ($region)\nGROUP BY stream\nORDER BY stream",
                tables=("alerts",), format="table"),),
            description="Active and acknowledged alerts (not yet cleared) per stream.",
            fields=("stream", *_SEVERITIES), colors=_SEVERITY_COLOURS, stacked=True, no_data="No open alerts",
            width=8,
        ),
        Panel(
            "Alerts raised", "timeseries",
            (Query(
                """SELECT $__timeGroupAlias(raised_at, $__interval), severity AS metric, count(*) AS value
FROM alerts
WHERE $__timeFilter(raised_at) AND region IN ($region)
GROUP BY 1, 2
ORDER BY 1""", tables=("alerts",)),),
            colors=_SEVERITY_COLOURS, stacked=True, no_data="No alerts raised", width=8,
        ),
        Panel(
            "Devices online / offline", "stat",
            (Query(
                f"""SELECT count(*) FILTER (WHERE {_ONLINE}) AS online,
       count(*) FILTER (WHERE last_seen IS NULL OR NOT ({_ONLINE})) AS offline
FROM devices
WHERE region IN ($region)""", tables=("devices",), format="table"),),
            description="Online: data in the 15 minutes before the end of the range.",
            fields=("online", "offline"), width=8,
        ),
        Panel(
            "Ingest rate (records/s, event time)", "timeseries",
            (Query("\nUNION ALL\n".join(_ingest_parts) + "\nORDER BY 1",
                   tables=("readings", "vehicle_positions", "traffic_observations", "devices")),),
            unit="reqps", width=12,
        ),
        Panel(
            "Devices per stream", "table",
            (Query(
                f"""SELECT stream, count(*) AS devices,
       count(*) FILTER (WHERE {_ONLINE}) AS online,
       count(*) FILTER (WHERE last_seen IS NULL OR NOT ({_ONLINE})) AS offline,
       max(last_seen) AS last_seen
FROM devices
WHERE region IN ($region)
GROUP BY stream
ORDER BY stream""", tables=("devices",), format="table"),),
            fields=("stream", "devices", "online", "offline", "last_seen"), width=12,
        ),
        Panel(
            "Dead letters by reason", "timeseries",
            (Query(
                """SELECT $__timeGroupAlias(time, $__interval), reason AS metric, count(*) AS value
FROM dead_letters
WHERE $__timeFilter(time)
GROUP BY 1, 2
ORDER BY 1""", tables=("dead_letters",)),),
            description="All regions: a refused message's topic need not name a valid region.",
            thresholds=(Threshold(None, "green"), Threshold(1, "red")), no_data="No dead letters", width=12,
        ),
        Panel(
            "Latest dead letters", "table",
            (Query(
                """SELECT time, reason, topic, device_id, kind, detail
FROM dead_letters
WHERE $__timeFilter(time)
ORDER BY time DESC
LIMIT 100""", tables=("dead_letters",), format="table"),),
            fields=("time", "reason", "topic", "device_id", "kind", "detail"), no_data="No dead letters", width=12,
        ),
    ),
)
