"""Alerts for regulators: list, detail with history, acknowledge, close, and a live SSE stream."""
from __future__ import annotations

import asyncio
from datetime import datetime
from enum import StrEnum
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.errors import ApiError, NotFound
from wulian.api.paging import DEPRECATED_ALIAS, Page, paging, pick
from wulian.api.routes.streams import check_stream
from wulian.api.schemas import (AlertAction, AlertDetail, AlertEventPublic, AlertPublic, AlertsPublic, AlertStatPublic,
                                AlertStatsPublic)
from wulian.core.alarms.lifecycle import Action, AlertState, IllegalTransition
from wulian.core.alarms.rules import Severity
from wulian.core.const import DEVICE_ID_PATTERN, STREAM_PATTERN
from wulian.core.timebase import CHINA_TZ_NAME
from wulian.ingest.alert_store import ALERT_COLUMNS as _COLS
from wulian.ingest.alert_store import EVENT_FIELDS, STATE_AFTER, event_payload, transition_alert

router = APIRouter(prefix="/v1/alerts", tags=["alerts"])

class Conflict(ApiError):
    status = 409
    code = "illegal_transition"


@router.get("", response_model=AlertsPublic)
async def list_alerts(
    pool: PoolDep,
    user: CurrentUser,
    region: str | None = None,
    stream: Annotated[str | None, Query(pattern=STREAM_PATTERN, description="a registry stream")] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    rule: int | None = None,
    severity: Severity | None = None,
    state: AlertState | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="raised at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="raised before (ISO 8601)")] = None,
    since: Annotated[datetime | None, Query(description=DEPRECATED_ALIAS.format("from"), deprecated=True)] = None,
    until: Annotated[datetime | None, Query(description=DEPRECATED_ALIAS.format("to"), deprecated=True)] = None,
    page: Annotated[Page, Depends(paging(maximum=500, keyset=1))] = Page(100),
):
    """Newest first."""
    await check_stream(pool, stream)
    cursor = page.after[0] if page.after else None
    rows = await _fetch(pool, user, region, stream, device, rule, severity, state, pick(from_, since, "from"),
                        pick(to, until, "to"), cursor, page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return AlertsPublic(data=[AlertPublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


async def _fetch(pool, user, region, stream, device, rule, severity, state, since, until, cursor, limit):
    async with pool.acquire() as con:
        return await con.fetch(
            f"SELECT {_COLS} FROM alerts WHERE ($1::text[] IS NULL OR region = ANY($1))"
            " AND ($2::text IS NULL OR region = $2) AND ($3::text IS NULL OR stream = $3)"
            " AND ($4::text IS NULL OR device_id = $4) AND ($5::bigint IS NULL OR rule_id = $5)"
            " AND ($6::text IS NULL OR severity = $6) AND ($7::text IS NULL OR state = $7)"
            " AND ($8::timestamptz IS NULL OR raised_at >= $8) AND ($9::timestamptz IS NULL OR raised_at < $9)"
            " AND ($10::bigint IS NULL OR id < $10) ORDER BY id DESC LIMIT $11",
            user.region_filter(), region, stream, device, rule, severity and severity.value,
            state and state.value, since, until, cursor, limit)


class StatsBy(StrEnum):
    REGION = "region"
    STREAM = "stream"
    SEVERITY = "severity"
    RULE = "rule"
    DAY = "day"


# dimension -> SQL expression, named as AlertStatPublic's field
_DIMS = {StatsBy.REGION: "region", StatsBy.STREAM: "stream", StatsBy.SEVERITY: "severity",
         StatsBy.RULE: "rule_id", StatsBy.DAY: f"(raised_at AT TIME ZONE '{CHINA_TZ_NAME}')::date AS day"}
# seconds from raising; NULL (left out of the percentiles) when never reached; a device clock ahead of ours
# (raised_at is the reading's time) counts as 0, not negative
_SECS = "(CASE WHEN {0} >= raised_at THEN extract(epoch FROM {0} - raised_at) WHEN {0} IS NOT NULL THEN 0 END)::float8"


def _pct(q: float, col: str) -> str:
    return f"percentile_cont({q}) WITHIN GROUP (ORDER BY {_SECS.format(col)})"


@router.get("/stats", response_model=AlertStatsPublic)
async def alert_stats(
    pool: PoolDep,
    user: CurrentUser,
    by: Annotated[list[StatsBy] | None, Query(description="group by (repeatable): region, stream, severity, rule, "
                                                          "day (China day of raised_at); default region")] = None,
    region: str | None = None,
    stream: Annotated[str | None, Query(pattern=STREAM_PATTERN, description="a registry stream")] = None,
    severity: Severity | None = None,
    rule: int | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="raised at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="raised before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging(default=500, maximum=5000))] = Page(500),
):
    """Alert counts and the time to acknowledge (``tta``) and to clear (``ttc``), measured from
    ``raised_at``, as p50/p90 in seconds, per group: the figures a bureau is assessed on. Only the
    alerts within the key's regions count."""
    await check_stream(pool, stream)
    dims = list(dict.fromkeys(by or [StatsBy.REGION]))
    select = ", ".join(_DIMS[d] for d in dims)
    keys = ", ".join(str(i + 1) for i in range(len(dims)))
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT {select}, count(*) AS alerts, count(*) FILTER (WHERE state IN ('active', 'acknowledged'))"
            " AS open, count(acknowledged_at) AS acknowledged, count(cleared_at) AS cleared,"
            f" {_pct(0.5, 'acknowledged_at')} AS tta_p50_s, {_pct(0.9, 'acknowledged_at')} AS tta_p90_s,"
            f" {_pct(0.5, 'cleared_at')} AS ttc_p50_s, {_pct(0.9, 'cleared_at')} AS ttc_p90_s"
            " FROM alerts WHERE ($1::text[] IS NULL OR region = ANY($1)) AND ($2::text IS NULL OR region = $2)"
            " AND ($3::text IS NULL OR stream = $3) AND ($4::text IS NULL OR severity = $4)"
            " AND ($5::bigint IS NULL OR rule_id = $5) AND ($6::timestamptz IS NULL OR raised_at >= $6)"
            " AND ($7::timestamptz IS NULL OR raised_at < $7)"
            f" GROUP BY {keys} ORDER BY {keys} LIMIT $8 OFFSET $9",
            user.region_filter(), region, stream, severity and severity.value, rule, from_, to,
            page.fetch, page.offset)
    rows, nxt = page.done(rows)
    return AlertStatsPublic(by=[d.value for d in dims], data=[AlertStatPublic(**dict(r)) for r in rows],
                            count=len(rows), next_cursor=nxt)


async def _visible(con, alert_id: int, user) -> dict:
    row = await con.fetchrow(f"SELECT {_COLS} FROM alerts WHERE id = $1", alert_id)
    if row is None or not user.can_see(row["region"]):
        raise NotFound(f"alert {alert_id} not found")
    return row


_REPLAY = f"""
SELECT e.id AS event_id, e.event, e.value, e.comment, a.id, a.last_value, {', '.join('a.' + f for f in EVENT_FIELDS)}
FROM alert_events e JOIN alerts a ON a.id = e.alert_id
WHERE e.id > $1 AND e.time > now() - $2 * interval '1 second' AND e.event <> 'updated'
  AND ($3::text[] IS NULL OR a.region = ANY($3)) AND ($4::text IS NULL OR a.region = $4)
ORDER BY e.id LIMIT $5"""


def _sse(ev: dict) -> str:
    return f"id: {ev['event_id']}\nevent: alert\ndata: {orjson.dumps(ev).decode()}\n\n"


async def _replay(pool, settings, user, region: str | None, after: int) -> list[dict]:
    """The events after ``after`` (within the replay window), as the live stream announced them."""
    async with pool.acquire() as con:
        rows = await con.fetch(_REPLAY, after, settings.api.sse_replay_window_s, user.region_filter(), region,
                               settings.api.sse_replay_max)
    out = []
    for r in rows:
        value = r["value"] if r["value"] is not None else r["last_value"]
        out.append(event_payload(r["id"], r["event"], STATE_AFTER.get(r["event"], "active"), last_value=value,
                                 event_id=r["event_id"], comment=r["comment"] if r["event"] == "escalated" else None,
                                 **{f: r[f] for f in EVENT_FIELDS}))
    return out


@router.get("/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "alert changes as SSE"}})
async def stream_alerts(
    request: Request, pool: PoolDep, settings: SettingsDep, user: CurrentUser, region: str | None = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=2**63 - 1, description=(
        "resume: the id of the last event received; every later event (within api.sse_replay_window_s) is "
        "sent first, in order, then live ones"))] = None,
):
    """Server-Sent Events: one ``alert`` event per committed change, within the key's regions. Each event's
    ``id`` is its alert-history event id, so a reconnecting client (EventSource sends ``Last-Event-ID``)
    misses nothing."""
    feed = request.app.state.alert_feed
    queue = await feed.subscribe()  # before the replay query: nothing falls between the two
    try:
        missed = await _replay(pool, settings, user, region, last_event_id) if last_event_id is not None else []
    except BaseException:
        feed.unsubscribe(queue)
        raise

    async def events():
        last = last_event_id or 0
        try:
            yield ": connected\n\n"
            for ev in missed:
                last = ev["event_id"]
                yield _sse(ev)
            while True:
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=15.0)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if not user.can_see(ev.get("region", "")) or (region and ev.get("region") != region):
                    continue
                eid = ev.get("event_id")
                if eid is None or eid <= last:  # already replayed
                    continue
                last = eid
                yield _sse(ev)
        finally:
            feed.unsubscribe(queue)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get("/{alert_id}", response_model=AlertDetail)
async def get_alert(alert_id: int, pool: PoolDep, user: CurrentUser):
    async with pool.acquire() as con:
        row = await _visible(con, alert_id, user)
        hist = await con.fetch(
            "SELECT time, event, actor, comment, value, event_time FROM alert_events WHERE alert_id = $1 ORDER BY id",
            alert_id)
    return AlertDetail(**dict(row), history=[AlertEventPublic(**dict(h)) for h in hist])


async def _transition(pool, user, alert_id: int, action: Action, comment: str | None) -> AlertPublic:
    async with pool.acquire() as con:
        async with con.transaction():
            row = await _visible(con, alert_id, user)
            try:
                updated = await transition_alert(con, alert_id, row["state"], action, user.name, comment,
                                                 key_id=user.key_id)
            except IllegalTransition as exc:
                raise Conflict(str(exc)) from None
            if updated is None:  # changed under us (e.g. cleared by the engine meanwhile)
                raise Conflict(f"alert {alert_id} changed state concurrently; reload it")
    return AlertPublic(**dict(updated))


@router.post("/{alert_id}/ack", response_model=AlertPublic, responses={409: {"description": "illegal transition"}})
async def ack_alert(alert_id: int, pool: PoolDep, user: CurrentUser, body: AlertAction | None = None):
    user.require("regulator")
    return await _transition(pool, user, alert_id, Action.ACK, body.comment if body else None)


@router.post("/{alert_id}/close", response_model=AlertPublic, responses={409: {"description": "illegal transition"}})
async def close_alert(alert_id: int, pool: PoolDep, user: CurrentUser, body: AlertAction | None = None):
    user.require("operator")
    return await _transition(pool, user, alert_id, Action.CLOSE, body.comment if body else None)
