"""Dashboards of registry streams (core.streams): one per stream that has a dashboard spec, one
time-series panel per listed metric (its readings per device, in the metric's unit). Built from the
``streams`` table when a database is at hand, else from the shipped profiles (core.streams_profiles).
Reads readings/devices/metrics, plus the derived tables of the shipped profiles (dashboards/profiles.py),
which the read-only role is granted like every catalogue dashboard's."""
from __future__ import annotations

from wulian.core.streams import StreamDef
from wulian.dashboards.common import READINGS, READINGS_TABLES, REGION, device_var, readings_where
from wulian.dashboards.model import Dashboard, Panel, Query
from wulian.dashboards.profiles import DERIVED_PANELS

FOLDER = "Streams"
UID_PREFIX = "wulian-stream-"


def stream_dashboard(sdef: StreamDef) -> Dashboard | None:
    """The dashboard a stream's spec describes; None for a stream without one (or a built-in stream,
    whose dashboards are code)."""
    if sdef.builtin or not sdef.dashboard:
        return None
    panels = []
    for p in sdef.dashboard["panels"]:
        m = p["metric"]
        unit = sdef.metrics[m].unit or ""
        sql = (f"SELECT $__timeGroupAlias(r.time, $__interval), d.device_id AS metric, avg(r.value) AS value\n"
               f"FROM {READINGS}\nWHERE {readings_where(sdef.name)} AND m.name = '{m}'\nGROUP BY 1, 2\nORDER BY 1")
        panels.append(Panel(p.get("title") or m, "timeseries", (Query(sql, tables=READINGS_TABLES),),
                            description=sdef.metrics[m].description or f"{m} per device ({unit or 'no unit'}).",
                            unit=f"suffix: {unit}" if unit and unit != "1" else ""))
    panels += DERIVED_PANELS.get(sdef.name, ())  # a shipped profile's derived tables (its jobs key on the name)
    title = sdef.dashboard.get("title") or sdef.title or sdef.name
    return Dashboard(uid=f"{UID_PREFIX}{sdef.name}", title=f"Wulian · {title}", folder=FOLDER,
                     description=f"Registry stream {sdef.name}: dashboard from its spec (no code).",
                     variables=(REGION, device_var(sdef.name)), panels=tuple(panels), tags=("stream", sdef.name))


def stream_dashboards(defs) -> tuple[Dashboard, ...]:
    return tuple(d for d in (stream_dashboard(s) for s in defs) if d is not None)


def profile_defs() -> list[StreamDef]:
    from wulian.core.streams_profiles import PROFILES

    return [StreamDef.from_dict(p) for p in PROFILES.values()]
