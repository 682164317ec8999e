"""The one owner of alert rows: raise (or update the open one), update, clear, acknowledge, close, the
event JSON every change announces, and the episode helpers of derived-data jobs. Used by the alarm
engine's transitions (ingest.alarm_service), the derived-data jobs (ingest.jobs) and the API's
acknowledge/close routes and the notification sender's escalation pass; nothing else writes ``alerts``,
``alert_events`` or, for alert events, the ``notifications`` outbox.

The partial unique index ``alerts_one_open`` keeps one open alert per (rule, device, metric): raising
an alert that is already open updates it, clearing one that is not open does nothing. Each raise and
clear is announced with ``pg_notify('wulian_alerts', ...)`` inside the caller's transaction, and in that
same transaction the notification routes that match the event write their outbox rows (:func:`notify`):
a notification exists if and only if its alert transition committed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from wulian.core.alarms.lifecycle import Action, AlertState, allowed_from, apply
from wulian.core.alarms.system_rules import SystemRule
from wulian.core.const import ALERT_CHANNEL as CHANNEL
from wulian.core.numbers import finite_or_none as _num
from wulian.ingest import audit

# The columns of an alert as the API returns it (``api.schemas.AlertPublic``).
ALERT_COLUMNS = """id, rule_id, device_id, region, stream, metric, severity, state, title, raised_at, last_seen,
           first_value, last_value, peak_value, count, acknowledged_at, acknowledged_by, ack_comment,
           cleared_at, closed_at, closed_by, close_comment"""
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
          f" VALUES ($2, $3, $5, $4, {_TS}) RETURNING id")
# The state an alert is in right after each event (SSE replay rebuilds payloads from the history).
STATE_AFTER = {"raised": "active", "acknowledged": "acknowledged", "cleared": "cleared", "closed": "closed",
               "escalated": "active"}
NOTIFY_WAKE_CHANNEL = "wulian_notify"  # pg_notify'd when outbox rows are written: wakes the sender


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


EVENT_FIELDS = ("region", "stream", "device_id", "rule_id", "metric", "severity", "title")


def event_payload(alert_id: int, event: str, state: str, *, region: str, stream: str, device_id: str, rule_id: int,
                  metric: str, severity: str, title: str, last_value: float | None, event_id: int | None = None,
                  comment: str | None = None) -> dict:
    """The JSON of one alert change, as ``pg_notify`` announces it, the SSE stream forwards it (its id is
    ``event_id``, the ``alert_events`` row) and notifications carry it."""
    ev = {"id": alert_id, "event_id": event_id, "event": event, "state": state, "region": region,
          "stream": stream, "device_id": device_id, "rule_id": rule_id, "metric": metric, "severity": severity,
          "title": title, "last_value": last_value}
    if comment is not None:
        ev["comment"] = comment
    return ev


def _event(alert_id: int, event: str, state: str, t: AlertTarget, value: float | None, event_id: int) -> dict:
    return event_payload(alert_id, event, state, last_value=value, event_id=event_id,
                         **{f: getattr(t, f) for f in EVENT_FIELDS})


# The routes matching an event ($2 region, $3 stream, $4 severity, $5 rule, $6 event) write the first
# channel's outbox row; a 'raised' event of an escalating route also schedules its escalation.
_ROUTE = """
WITH m AS (
    SELECT id, channels, escalate_after_s, escalate_severities FROM notify_routes
    WHERE enabled AND $6 = ANY(events) AND (cardinality(regions) = 0 OR $2 = ANY(regions))
      AND (cardinality(streams) = 0 OR $3 = ANY(streams)) AND (cardinality(severities) = 0 OR $4 = ANY(severities))
      AND (cardinality(rule_ids) = 0 OR $5 = ANY(rule_ids))
), ins AS (
    INSERT INTO notifications (idempotency_key, alert_id, alert_event_id, route_id, channel_id, step, severity, payload)
    SELECT 'wl-' || $7::bigint::text || '-' || m.id || '-0', $1::bigint, $7::bigint, m.id, m.channels[1], 0,
           $4::text, $8::jsonb FROM m
    ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1
), esc AS (
    INSERT INTO alert_escalations (alert_id, route_id, next_step, due_at)
    SELECT $1, m.id, 1, now() + m.escalate_after_s * interval '1 second' FROM m
    WHERE $6 = 'raised' AND m.escalate_after_s IS NOT NULL AND $4 = ANY(m.escalate_severities)
      AND cardinality(m.channels) > 1
    ON CONFLICT DO NOTHING RETURNING 1
)
SELECT (SELECT count(*) FROM ins) AS queued, (SELECT count(*) FROM esc) AS escalations"""


async def notify(con: asyncpg.Connection, ev: dict) -> None:
    """Announce ``ev`` on the alert channel and write the outbox rows of the notification routes it
    matches, in the caller's transaction: both exist when (and only if) the transition commits."""
    await con.execute("SELECT pg_notify($1, $2)", CHANNEL, orjson.dumps(ev).decode())
    if ev.get("event_id") is None:
        return
    queued = await con.fetchval(_ROUTE, ev["id"], ev["region"], ev["stream"], ev["severity"], ev["rule_id"],
                                ev["event"], ev["event_id"], orjson.dumps(ev).decode())
    if queued:
        await con.execute("SELECT pg_notify($1, '')", NOTIFY_WAKE_CHANNEL)
    if ev["event"] in ("acknowledged", "cleared", "closed"):  # only an active alert escalates
        await con.execute("DELETE FROM alert_escalations WHERE alert_id = $1", ev["id"])


def target_of(rule: SystemRule, device, metric: str = "", title: str | None = None,
              severity: str | None = None) -> AlertTarget:
    """The target of a built-in rule's alert on ``device`` (anything with id, device_id, region, stream)."""
    return AlertTarget(rule.rule_id, device.id, device.device_id, device.region, device.stream, metric,
                       severity or rule.severity, title or rule.title)


async def raise_alert(con: asyncpg.Connection, t: AlertTarget, ts_ns: int, value: float | None,
                      actor: str = "engine") -> dict | None:
    """Open an alert (or count a repeated trigger of the open one). Returns the event if one was opened."""
    v = _num(value)
    row = await con.fetchrow(_RAISE, ts_ns, t.rule_id, t.device, t.device_id, t.region, t.stream, t.metric,
                             t.severity, t.title, v)
    if not row["inserted"]:
        return None
    eid = await con.fetchval(_EVENT, ts_ns, row["id"], "raised", v, actor)
    ev = _event(row["id"], "raised", "active", t, v, eid)
    await notify(con, ev)
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
    eid = await con.fetchval(_EVENT, ts_ns, row["id"], "cleared", v, actor)
    ev = _event(row["id"], "cleared", "cleared", t, v, eid)
    await notify(con, ev)
    return ev


# --- acknowledge and close (people, through the API) -------------------------------------------------

async def transition_alert(con: asyncpg.Connection, alert_id: int, state: str, action: Action, actor: str,
                           comment: str | None, *, key_id: str | None = None,
                           source: str = "api") -> asyncpg.Record | None:
    """Acknowledge or close alert ``alert_id`` whose current state is ``state`` (lifecycle.IllegalTransition
    when the action is not allowed from it), record the event, audit it and announce it. Returns the updated
    row (``ALERT_COLUMNS``), or None when the alert changed state meanwhile (e.g. cleared by the engine)."""
    new_state: AlertState = apply(state, action)
    if action is Action.ACK:
        sets = "acknowledged_at = now(), acknowledged_by = $3, ack_comment = $4"
    else:
        sets = "closed_at = now(), closed_by = $3, close_comment = $4"
    row = await con.fetchrow(
        f"UPDATE alerts SET state = $2, {sets}, updated_at = now()"
        f" WHERE id = $1 AND state = ANY($5::text[]) RETURNING {ALERT_COLUMNS}",
        alert_id, new_state.value, actor, comment, [s.value for s in allowed_from(action)])
    if row is None:
        return None
    eid = await con.fetchval("INSERT INTO alert_events (alert_id, event, actor, comment) VALUES ($1, $2, $3, $4)"
                             " RETURNING id", alert_id, action.value, actor, comment)
    after = {"state": row["state"], "comment": comment}
    if action is Action.ACK:
        after |= {"acknowledged_at": row["acknowledged_at"], "acknowledged_by": row["acknowledged_by"]}
    else:
        after |= {"closed_at": row["closed_at"], "closed_by": row["closed_by"]}
    await audit.record(con, actor=actor, key_id=key_id, source=source, action="alert.ack" if action is Action.ACK else "alert.close",
                       object_type="alert", object_id=alert_id, region=row["region"], before={"state": state},
                       after=after)
    await notify(con, event_payload(row["id"], action.value, row["state"], last_value=row["last_value"],
                                    event_id=eid, **{f: row[f] for f in EVENT_FIELDS}))
    return row


async def ack_alert(con: asyncpg.Connection, alert_id: int, state: str, actor: str,
                    comment: str | None = None) -> asyncpg.Record | None:
    return await transition_alert(con, alert_id, state, Action.ACK, actor, comment)


async def close_alert(con: asyncpg.Connection, alert_id: int, state: str, actor: str,
                      comment: str | None = None) -> asyncpg.Record | None:
    return await transition_alert(con, alert_id, state, Action.CLOSE, actor, comment)


# --- escalation (the notification sender's pass) ----------------------------------------------------

_DUE_ESCALATIONS = f"""
SELECT e.alert_id, e.route_id, e.next_step, r.name AS route, r.channels, r.escalate_after_s,
       {', '.join('a.' + c.strip() for c in ALERT_COLUMNS.split(','))}
FROM alert_escalations e JOIN notify_routes r ON r.id = e.route_id JOIN alerts a ON a.id = e.alert_id
WHERE e.due_at <= now() ORDER BY e.due_at LIMIT $1 FOR UPDATE OF e SKIP LOCKED"""


async def escalate_due(con: asyncpg.Connection, limit: int = 100) -> int:
    """Escalate every due escalation of a still active (unacknowledged) alert: an ``escalated`` event in
    the alert's history, an outbox row for the route's next channel, and the step after it scheduled.
    Call inside a transaction. Returns the number of escalations made."""
    made = 0
    for e in await con.fetch(_DUE_ESCALATIONS, limit):
        step, channels = e["next_step"], e["channels"]
        if e["state"] != "active" or step >= len(channels):  # acknowledged or over meanwhile
            await con.execute("DELETE FROM alert_escalations WHERE alert_id = $1 AND route_id = $2",
                              e["alert_id"], e["route_id"])
            continue
        channel = channels[step]
        comment = f"route {e['route']!r} step {step}: not acknowledged, notifying channel {channel}"
        eid = await con.fetchval("INSERT INTO alert_events (alert_id, event, actor, comment) VALUES ($1, 'escalated',"
                                 " 'escalation', $2) RETURNING id", e["alert_id"], comment)
        ev = event_payload(e["alert_id"], "escalated", "active", last_value=e["last_value"], event_id=eid,
                           comment=comment, **{f: e[f] for f in EVENT_FIELDS})
        ev["escalation_step"] = step
        await con.execute("SELECT pg_notify($1, $2)", CHANNEL, orjson.dumps(ev).decode())
        await con.execute(
            "INSERT INTO notifications (idempotency_key, alert_id, alert_event_id, route_id, channel_id, step,"
            " severity, payload) VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb) ON CONFLICT DO NOTHING",
            f"wl-{eid}-{e['route_id']}-{step}", e["alert_id"], eid, e["route_id"], channel, step, e["severity"],
            orjson.dumps(ev).decode())
        if step + 1 < len(channels):
            await con.execute("UPDATE alert_escalations SET next_step = $3,"
                              " due_at = now() + $4 * interval '1 second' WHERE alert_id = $1 AND route_id = $2",
                              e["alert_id"], e["route_id"], step + 1, e["escalate_after_s"])
        else:
            await con.execute("DELETE FROM alert_escalations WHERE alert_id = $1 AND route_id = $2",
                              e["alert_id"], e["route_id"])
        made += 1
    if made:
        await con.execute("SELECT pg_notify($1, '')", NOTIFY_WAKE_CHANNEL)
    return made


# --- episodes of derived-data jobs ---------------------------------------------------------------------

_SAME_EPISODE = ("SELECT state FROM alerts WHERE rule_id = $1 AND device = $2 AND metric = $3"
                 " AND raised_at = timestamptz 'epoch' + ($4::bigint / 1000) * interval '1 microsecond'"
                 " ORDER BY id DESC LIMIT 1")


async def raise_once(con: asyncpg.Connection, t: AlertTarget, ts_ns: int, value: float | None,
                     lower_is_worse: bool = False) -> bool:
    """Raise the alert of an episode confirmed at ``ts_ns`` unless that very episode already has one
    (a re-run over the same hours, or a later run of an ongoing episode: then only its peak/last value
    is updated). Returns True if an alert was opened."""
    state = await con.fetchval(_SAME_EPISODE, t.rule_id, t.device, t.metric, ts_ns)
    if state is not None:
        if state in ("active", "acknowledged"):
            await update_alert(con, t, ts_ns, value, lower_is_worse)
        return False
    if await raise_alert(con, t, ts_ns, value) is not None:
        return True
    await update_alert(con, t, ts_ns, value, lower_is_worse)  # an older episode's alert is still open
    return False


async def apply_actions(con: asyncpg.Connection, actions: Sequence,
                        target_of: Callable[..., AlertTarget], lower_is_worse: bool = False) -> dict:
    """Raise/clear alerts for episode actions (``kind`` 'raise' | 'clear', ``ts_ns``, ``value``, as
    core.environment.online.AlertAction); returns counts of alerts opened and cleared."""
    raised = cleared = 0
    for a in actions:
        t = target_of(a)
        if a.kind == "raise":
            if await raise_once(con, t, a.ts_ns, a.value, lower_is_worse):
                raised += 1
        elif await clear_alert(con, t, a.ts_ns, a.value) is not None:
            cleared += 1
    return {"alerts_raised": raised, "alerts_cleared": cleared}


@dataclass(slots=True)
class AlertCounts:
    raised: int = 0
    cleared: int = 0
    updated: int = 0

    def as_dict(self) -> dict:
        return {"raised": self.raised, "cleared": self.cleared, "alert_updates": self.updated}


async def sync_alert(con: asyncpg.Connection, target: AlertTarget, rule: SystemRule, *, inserted: bool,
                     was_open: bool | None, open_: bool, start_ns: int, end_ns: int, value: float | None,
                     counts: AlertCounts) -> None:
    """Move the alert of one upserted episode along: a new episode raises at its start (and, if already
    over, clears at its end: the alert keeps the history); a known open one that is over clears; a known
    open one counts an update; a known one that was over and is open again raises."""
    v = _num(value)
    if inserted or (open_ and not was_open):
        if await raise_alert(con, target, start_ns, v) is not None:
            counts.raised += 1
        if not open_ and rule.auto_clear:
            if await clear_alert(con, target, end_ns, v) is not None:
                counts.cleared += 1
    elif was_open and not open_:
        if rule.auto_clear and await clear_alert(con, target, end_ns, v) is not None:
            counts.cleared += 1
    elif open_:
        await update_alert(con, target, end_ns, v)
        counts.updated += 1
