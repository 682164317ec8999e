"""Alerts for regulators: list, detail with history, acknowledge, close, and a live SSE stream."""
from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.errors import ApiError, NotFound
from wulian.api.schemas import AlertAction, AlertDetail, AlertEventPublic, AlertPublic, AlertsPublic
from wulian.core.alarms.lifecycle import Action, AlertState, IllegalTransition
from wulian.core.alarms.rules import Severity
from wulian.core.const import DEVICE_ID_PATTERN, Stream
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
    stream: Stream | None = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    rule: int | None = None,
    severity: Severity | None = None,
    state: AlertState | None = None,
    since: Annotated[datetime | None, Query(description="raised at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="raised before (ISO 8601)")] = None,
    cursor: Annotated[int | None, Query(ge=0, description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """Newest first; page with ``cursor=<next_cursor>`` until ``next_cursor`` is null."""
    rows = await _fetch(pool, user, region, stream, device, rule, severity, state, since, until, cursor, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return AlertsPublic(data=[AlertPublic(**dict(r)) for r in rows], count=len(rows),
                        next_cursor=rows[-1]["id"] if more else None)


async def _fetch(pool, user, region, stream, device, rule, severity, state, since, until, cursor, limit):
    async with pool.acquire() as con:
        return await con.fetch(
            f"SELECT {_COLS} FROM alerts WHERE ($1::text[] IS NULL OR region = ANY($1))"
            " AND ($2::text IS NULL OR region = $2) AND ($3::text IS NULL OR stream = $3)"
            " AND ($4::text IS NULL OR device_id = $4) AND ($5::bigint IS NULL OR rule_id = $5)"
            " AND ($6::text IS NULL OR severity = $6) AND ($7::text IS NULL OR state = $7)"
            " AND ($8::timestamptz IS NULL OR raised_at >= $8) AND ($9::timestamptz IS NULL OR raised_at < $9)"
            " AND ($10::bigint IS NULL OR id < $10) ORDER BY id DESC LIMIT $11",
            user.region_filter(), region, stream and stream.value, device, rule, severity and severity.value,
            state and state.value, since, until, cursor, limit)


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
                updated = await transition_alert(con, alert_id, row["state"], action, user.name, comment)
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
