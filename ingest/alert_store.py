"""Alert rows in the database: raise (or update the open one), update, clear. Used by the alarm engine's
transitions and by derived-data jobs that find episodes (exceedances, classes worse than target, ...).

The partial unique index ``alerts_one_open`` keeps one open alert per (rule, device, metric): raising
an alert that is already open updates it, clearing one that is not open does nothing. Each raise and
clear is announced with ``pg_notify('wulian_alerts', ...)`` inside the caller's transaction.
"""
from __future__ import annotations

from dataclasses import dataclass

import asyncpg
import orjson

from wulian.core.const import ALERT_CHANNEL as CHANNEL
from wulian.core.numbers import finite_or_none as _num
_TS = "timestamptz 'epoch' + ($1::bigint / 1000) * interval '1 microsecond'"

_RAISE = f"""
INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title, raised_at, last_seen,
                    first_value, last_value, peak_value, count)
VALUES ($2, $3, $4, $5, $6, $7, $8, 'active', $9, {_TS}, {_TS}, $10, $10, $10, 1)
ON CONFLICT (rule_id, device, metric) WHERE state IN ('active', 'acknowledged')
DO UPDATE SET last_seen = GREATEST(alerts.last_seen, EXCLUDED.last_seen), last_value = EXCLUDED.last_value,
              count = alerts.count + 1, updated_at = now()
RETURNING id, (xmax = 0) AS inserted"""
_UPDATE = f"""
UPDATE alerts SET last_seen = GREATEST(last_seen, {_TS}), last_value = $5, count = count + $8, updated_at = now(),
       peak_value = CASE WHEN $6 THEN LEAST(peak_value, $7) ELSE GREATEST(peak_value, $7) END
WHERE rule_id = $2 AND device = $3 AND metric = $4 AND state IN ('active', 'acknowledged')"""
_CLEAR = f"""
UPDATE alerts SET state = 'cleared', cleared_at = {_TS}, updated_at = now()
WHERE rule_id = $2 AND device = $3 AND metric = $4 AND state IN ('active', 'acknowledged')
RETURNING id"""
_EVENT = ("INSERT INTO alert_events (alert_id, event, actor, value, event_time)"
          f" VALUES ($2, $3, $5, $4, {_TS})")


@dataclass(frozen=True, slots=True)
class AlertTarget:
    """Where an alert belongs: the rule and the device's registry identity; metric '' for device-level."""

    rule_id: int
    device: int
    device_id: str
    region: str
    stream: str
    metric: str
    severity: str
    title: str


def _event(alert_id: int, event: str, state: str, t: AlertTarget, value: float | None) -> dict:
    return {"id": alert_id, "event": event, "state": state, "region": t.region, "stream": t.stream,
            "device_id": t.device_id, "rule_id": t.rule_id, "metric": t.metric, "severity": t.severity,
            "title": t.title, "last_value": value}


async def _notify(con: asyncpg.Connection, ev: dict) -> None:
    await con.execute("SELECT pg_notify($1, $2)", CHANNEL, orjson.dumps(ev).decode())


async def raise_alert(con: asyncpg.Connection, t: AlertTarget, ts_ns: int, value: float | None,
                      actor: str = "engine") -> dict | None:
    """Open an alert (or count a repeated trigger of the open one). Returns the event if one was opened."""
    v = _num(value)
    row = await con.fetchrow(_RAISE, ts_ns, t.rule_id, t.device, t.device_id, t.region, t.stream, t.metric,
                             t.severity, t.title, v)
    if not row["inserted"]:
        return None
    await con.execute(_EVENT, ts_ns, row["id"], "raised", v, actor)
    ev = _event(row["id"], "raised", "active", t, v)
    await _notify(con, ev)
    return ev


async def update_alert(con: asyncpg.Connection, t: AlertTarget, ts_ns: int, value: float | None,
                       lower_is_worse: bool = False) -> None:
    v = _num(value)
    await con.execute(_UPDATE, ts_ns, t.rule_id, t.device, t.metric, v, lower_is_worse, v, 1)


class UpdateCoalescer:
    """Repeated triggers of open alerts, folded per alert and written with one ``executemany``.

    In an alarm storm nearly every transition is an UPDATE (an open alert triggered again); writing them
    one statement each made a batch's transaction last seconds. Per alert only the newest time and
    value, the extreme value and the number of triggers matter. A RAISE or CLEAR of the same alert must
    see its pending update first: call :meth:`flush_one` before it."""

    def __init__(self) -> None:
        # (rule, device, metric) -> [ts_ns, last value, peak value, count, lower_is_worse]
        self._pending: dict[tuple[int, int, str], list] = {}

    def add(self, t: AlertTarget, ts_ns: int, value: float | None, lower_is_worse: bool) -> None:
        v = _num(value)
        key = (t.rule_id, t.device, t.metric)
        cur = self._pending.get(key)
        if cur is None:
            self._pending[key] = [ts_ns, v, v, 1, lower_is_worse]
            return
        if ts_ns >= cur[0]:
            cur[0], cur[1] = ts_ns, v
        if v is not None:
            cur[2] = v if cur[2] is None else (min(cur[2], v) if lower_is_worse else max(cur[2], v))
        cur[3] += 1

    async def flush_one(self, con: asyncpg.Connection, t: AlertTarget) -> None:
        cur = self._pending.pop((t.rule_id, t.device, t.metric), None)
        if cur is not None:
            await con.execute(_UPDATE, cur[0], t.rule_id, t.device, t.metric, cur[1], cur[4], cur[2], cur[3])

    async def flush(self, con: asyncpg.Connection) -> None:
        if self._pending:
            await con.executemany(_UPDATE, [(c[0], r, d, m, c[1], c[4], c[2], c[3])
                                            for (r, d, m), c in self._pending.items()])
            self._pending.clear()


async def clear_alert(con: asyncpg.Connection, t: AlertTarget, ts_ns: int, value: float | None,
                      actor: str = "engine") -> dict | None:
    """Clear the open alert of ``t`` if there is one. Returns the event if one was cleared."""
    v = _num(value)
    row = await con.fetchrow(_CLEAR, ts_ns, t.rule_id, t.device, t.metric)
    if row is None:
        return None
    await con.execute(_EVENT, ts_ns, row["id"], "cleared", v, actor)
    ev = _event(row["id"], "cleared", "cleared", t, v)
    await _notify(con, ev)
    return ev
