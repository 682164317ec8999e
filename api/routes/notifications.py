"""Notification channels, routes and the delivery outbox (issue 17).

Channels and routes are configuration (admins); the outbox is readable by operators within their regions,
and a ``failed`` notification can be retried. A channel's secret is written, never returned
(``has_secret`` says whether one is set) and its URL is returned with query values masked.
Lists page like every list route (:mod:`wulian.api.paging`); every write lands in the audit log
(:mod:`wulian.ingest.audit`) with the public view before/after, so no secret reaches it.
"""
from __future__ import annotations

from datetime import datetime, time
from typing import Annotated, Literal
from urllib.parse import urlsplit

import asyncpg
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, Field, field_validator

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import ApiError, BadQuery, NotFound
from wulian.api.paging import ListPage, Page, paging
from wulian.api.time_range import utc
from wulian.core.alarms.rules import Severity
from wulian.core.const import Stream
from wulian.ingest import audit
from wulian.ingest.alert_store import NOTIFY_WAKE_CHANNEL
from wulian.ingest.notify_channels import redact_url

router = APIRouter(tags=["notifications"])
ChannelKind = Literal["webhook", "wecom", "dingtalk", "feishu"]
RoutedEvent = Literal["raised", "acknowledged", "cleared", "closed"]
NotificationState = Literal["pending", "delivered", "failed"]
_NAME = r"^[\w .:@()/-]{1,100}$"
_URL = r"^https?://[\x21-\x7e]{1,2000}$"  # printable ASCII: an IRI is sent percent-encoded
_ID = Annotated[int, Field(ge=1, le=2**31 - 1)]
# Quiet hours as China wall-clock "HH:MM" (a bare time is not an OpenAPI "time", which needs an offset).
_HHMM = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="China time HH:MM")


class Conflict(ApiError):
    status = 409
    code = "conflict"


def _check_url(url: str | None) -> str | None:
    """A URL the sender can send to: one urlsplit reads, with a host (pattern alone lets "http://[x" by)."""
    if url is None:
        return url
    try:
        host = urlsplit(url).hostname
    except ValueError as exc:
        raise ValueError(f"not a usable URL: {exc}") from None
    if not host:
        raise ValueError("the URL has no host")
    return url


class ChannelIn(BaseModel):
    name: str = Field(pattern=_NAME)
    kind: ChannelKind
    url: str = Field(pattern=_URL, description="robot or webhook URL (query values are masked when read back)")
    _url_ok = field_validator("url")(_check_url)
    secret: str | None = Field(None, min_length=1, max_length=500, pattern=r"^[^\x00]*$",
                               description="HMAC key (webhook), sign secret (DingTalk/Feishu) or robot key "
                                           "(WeCom); write-only")
    enabled: bool = True
    quiet_start: str | None = Field(None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                                    description="China time HH:MM; with quiet_end: only critical is sent")
    quiet_end: str | None = _HHMM
    rate_per_window: int = Field(0, ge=0, le=100000, description="sends per notify.rate_window_s (0: no limit)")


class ChannelPatch(BaseModel):
    url: str | None = Field(None, pattern=_URL)
    _url_ok = field_validator("url")(_check_url)
    secret: str | None = Field(None, min_length=1, max_length=500, pattern=r"^[^\x00]*$")
    enabled: bool | None = None
    quiet_start: str | None = _HHMM
    quiet_end: str | None = _HHMM
    clear_quiet_hours: bool = False
    rate_per_window: int | None = Field(None, ge=0, le=100000)


class ChannelPublic(BaseModel):
    id: int
    name: str
    kind: str
    url: str
    enabled: bool
    quiet_start: str | None = _HHMM
    quiet_end: str | None = _HHMM
    rate_per_window: int
    has_secret: bool
    created_at: datetime
    updated_at: datetime


class ChannelsPublic(ListPage):
    data: list[ChannelPublic]


class RouteIn(BaseModel):
    name: str = Field(pattern=_NAME)
    enabled: bool = True
    regions: list[Annotated[str, Field(pattern=r"^[\w-]{1,64}$")]] = Field(default=[], max_length=100)
    streams: list[Stream] = Field(default=[], max_length=20)
    severities: list[Severity] = Field(default=[], max_length=4)
    rule_ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] = Field(default=[], max_length=1000)
    events: list[RoutedEvent] = Field(default=["raised"], min_length=1, max_length=4)
    channels: list[_ID] = Field(min_length=1, max_length=20,
                                description="escalation chain: the first at once, each next one after "
                                            "escalate_after_s more without acknowledgement")
    escalate_after_s: float | None = Field(None, gt=0, le=7 * 86400)
    escalate_severities: list[Severity] = Field(default=["major", "critical"], max_length=4)


class RoutePublic(RouteIn):
    id: int
    created_at: datetime
    updated_at: datetime


class RoutesPublic(ListPage):
    data: list[RoutePublic]


class NotificationPublic(BaseModel):
    id: int
    idempotency_key: str
    alert_id: int | None
    alert_event_id: int | None
    route_id: int | None
    channel_id: int
    step: int
    severity: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_attempt_at: datetime | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None


class NotificationsPublic(ListPage):
    data: list[NotificationPublic]


_CH = ("c.id, c.name, c.kind, c.url, c.enabled, c.quiet_start, c.quiet_end, c.rate_per_window,"
       " (s.channel IS NOT NULL) AS has_secret, c.created_at, c.updated_at")
_CH_FROM = "notify_channels c LEFT JOIN notify_channel_secrets s ON s.channel = c.id"
_RT = ("id, name, enabled, regions, streams, severities, rule_ids, events, channels, escalate_after_s,"
       " escalate_severities, created_at, updated_at")
_NT = ("id, idempotency_key, alert_id, alert_event_id, route_id, channel_id, step, severity, state, attempts,"
       " next_attempt_at, last_attempt_at, last_error, created_at, delivered_at")


def _hhmm(t: time | None) -> str | None:
    return None if t is None else t.strftime("%H:%M")


def _time(text: str | None) -> time | None:
    return None if text is None else time.fromisoformat(text)


def _channel(row) -> ChannelPublic:
    return ChannelPublic(**{**dict(row), "url": redact_url(row["url"]), "quiet_start": _hhmm(row["quiet_start"]),
                            "quiet_end": _hhmm(row["quiet_end"])})


def _quiet_ok(start, end) -> None:
    if (start is None) != (end is None):
        raise BadQuery("quiet_start and quiet_end go together")


async def _channel_row(con, channel_id: int):
    row = await con.fetchrow(f"SELECT {_CH} FROM {_CH_FROM} WHERE c.id = $1", channel_id)
    if row is None:
        raise NotFound(f"channel {channel_id} not found")
    return row


async def _audit(con, user, action: str, object_type: str, object_id: int, before: BaseModel | None,
                 after: BaseModel | None, *, secret_written: bool = False, region: str | None = None) -> None:
    """One audit entry for a write, inside its transaction. ``before``/``after`` are the public views (a
    channel's URL with query values masked, no secret); a secret written by this request shows only as
    ``"secret": "***"`` in ``after``, never its value."""
    b = None if before is None else before.model_dump(mode="json")
    a = None if after is None else after.model_dump(mode="json")
    if secret_written and a is not None:
        a["secret"] = audit.MASK
    await audit.record(con, actor=user.name, key_id=user.key_id, source="api", action=action,
                       object_type=object_type, object_id=object_id, region=region, before=b, after=a)


@router.get("/v1/channels", response_model=ChannelsPublic)
async def list_channels(pool: PoolDep, user: CurrentUser,
                        page: Annotated[Page, Depends(paging(keyset=1))] = Page(100)):
    """Channels by id (admin only)."""
    user.require("admin")
    async with pool.acquire() as con:
        rows = await con.fetch(f"SELECT {_CH} FROM {_CH_FROM} WHERE ($1::int IS NULL OR c.id > $1) ORDER BY c.id"
                               " LIMIT $2", page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return ChannelsPublic(data=[_channel(r) for r in rows], count=len(rows), next_cursor=nxt)


@router.post("/v1/channels", response_model=ChannelPublic, status_code=201,
             responses={409: {"description": "a channel of that name exists"}})
async def create_channel(body: ChannelIn, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    _quiet_ok(body.quiet_start, body.quiet_end)
    async with pool.acquire() as con, con.transaction():
        try:
            cid = await con.fetchval(
                "INSERT INTO notify_channels (name, kind, url, enabled, quiet_start, quiet_end, rate_per_window)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id", body.name, body.kind, body.url, body.enabled,
                _time(body.quiet_start), _time(body.quiet_end), body.rate_per_window)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"a channel named {body.name!r} exists") from None
        if body.secret is not None:
            await con.execute("INSERT INTO notify_channel_secrets (channel, secret) VALUES ($1, $2)", cid, body.secret)
        out = _channel(await _channel_row(con, cid))
        await _audit(con, user, "channel.create", "notify_channel", cid, None, out,
                     secret_written=body.secret is not None)
        return out


@router.get("/v1/channels/{channel_id}", response_model=ChannelPublic)
async def get_channel(channel_id: int, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con:
        return _channel(await _channel_row(con, channel_id))


@router.patch("/v1/channels/{channel_id}", response_model=ChannelPublic)
async def update_channel(channel_id: int, body: ChannelPatch, pool: PoolDep, user: CurrentUser):
    """Changing quiet hours or the rate limit makes the channel's waiting notifications due again."""
    user.require("admin")
    async with pool.acquire() as con, con.transaction():
        row = await con.fetchrow(f"SELECT {_CH} FROM {_CH_FROM} WHERE c.id = $1 FOR UPDATE OF c", channel_id)
        if row is None:
            raise NotFound(f"channel {channel_id} not found")
        start, end = row["quiet_start"], row["quiet_end"]
        if body.clear_quiet_hours:
            start = end = None
        if body.quiet_start is not None or body.quiet_end is not None:
            start, end = _time(body.quiet_start) or start, _time(body.quiet_end) or end
        _quiet_ok(start, end)
        await con.execute(
            "UPDATE notify_channels SET url = COALESCE($2, url), enabled = COALESCE($3, enabled), quiet_start = $4,"
            " quiet_end = $5, rate_per_window = COALESCE($6, rate_per_window), updated_at = now() WHERE id = $1",
            channel_id, body.url, body.enabled, start, end, body.rate_per_window)
        if body.secret is not None:
            await con.execute("INSERT INTO notify_channel_secrets (channel, secret) VALUES ($1, $2) ON CONFLICT"
                              " (channel) DO UPDATE SET secret = EXCLUDED.secret, updated_at = now()",
                              channel_id, body.secret)
        await con.execute("UPDATE notifications SET next_attempt_at = now() WHERE channel_id = $1"
                          " AND state = 'pending' AND next_attempt_at > now()", channel_id)
        await con.execute("SELECT pg_notify($1, '')", NOTIFY_WAKE_CHANNEL)
        out = _channel(await _channel_row(con, channel_id))
        await _audit(con, user, "channel.update", "notify_channel", channel_id, _channel(row), out,
                     secret_written=body.secret is not None)
        return out


@router.delete("/v1/channels/{channel_id}", status_code=204,
               responses={409: {"description": "routes still use the channel"}})
async def delete_channel(channel_id: int, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con, con.transaction():
        row = await con.fetchrow(f"SELECT {_CH} FROM {_CH_FROM} WHERE c.id = $1 FOR UPDATE OF c", channel_id)
        if row is None:
            raise NotFound(f"channel {channel_id} not found")
        used = await con.fetchval("SELECT string_agg(id::text, ', ') FROM notify_routes WHERE $1 = ANY(channels)",
                                  channel_id)
        if used:
            raise Conflict(f"channel {channel_id} is used by routes {used}")
        await con.execute("DELETE FROM notify_channels WHERE id = $1", channel_id)
        await _audit(con, user, "channel.delete", "notify_channel", channel_id, _channel(row), None)
    return Response(status_code=204)


# --- routes ------------------------------------------------------------------------------------------

async def _check_channels(con, ids: list[int]) -> None:
    known = {r["id"] for r in await con.fetch("SELECT id FROM notify_channels WHERE id = ANY($1::int[])", ids)}
    missing = sorted(set(ids) - known)
    if missing:
        raise BadQuery(f"unknown channels: {missing}")


def _values(items) -> list[str]:
    return [getattr(x, "value", x) for x in items]


def _route_args(body: RouteIn) -> tuple:
    return (body.name, body.enabled, body.regions, _values(body.streams), _values(body.severities), body.rule_ids,
            list(body.events), body.channels, body.escalate_after_s, _values(body.escalate_severities))


@router.get("/v1/routes", response_model=RoutesPublic)
async def list_routes(pool: PoolDep, user: CurrentUser,
                      page: Annotated[Page, Depends(paging(keyset=1))] = Page(100)):
    """Routes by id (admin only)."""
    user.require("admin")
    async with pool.acquire() as con:
        rows = await con.fetch(f"SELECT {_RT} FROM notify_routes WHERE ($1::int IS NULL OR id > $1) ORDER BY id"
                               " LIMIT $2", page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return RoutesPublic(data=[RoutePublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.post("/v1/routes", response_model=RoutePublic, status_code=201)
async def create_route(body: RouteIn, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con, con.transaction():
        await _check_channels(con, body.channels)
        row = await con.fetchrow(
            "INSERT INTO notify_routes (name, enabled, regions, streams, severities, rule_ids, events, channels,"
            f" escalate_after_s, escalate_severities) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {_RT}",
            *_route_args(body))
        out = RoutePublic(**dict(row))
        await _audit(con, user, "route.create", "notify_route", out.id, None, out)
    return out


@router.get("/v1/routes/{route_id}", response_model=RoutePublic)
async def get_route(route_id: int, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con:
        row = await con.fetchrow(f"SELECT {_RT} FROM notify_routes WHERE id = $1", route_id)
    if row is None:
        raise NotFound(f"route {route_id} not found")
    return RoutePublic(**dict(row))


@router.put("/v1/routes/{route_id}", response_model=RoutePublic)
async def replace_route(route_id: int, body: RouteIn, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con, con.transaction():
        await _check_channels(con, body.channels)
        before = await con.fetchrow(f"SELECT {_RT} FROM notify_routes WHERE id = $1 FOR UPDATE", route_id)
        if before is None:
            raise NotFound(f"route {route_id} not found")
        row = await con.fetchrow(
            "UPDATE notify_routes SET name = $2, enabled = $3, regions = $4, streams = $5, severities = $6,"
            " rule_ids = $7, events = $8, channels = $9, escalate_after_s = $10, escalate_severities = $11,"
            f" updated_at = now() WHERE id = $1 RETURNING {_RT}", route_id, *_route_args(body))
        out = RoutePublic(**dict(row))
        await _audit(con, user, "route.update", "notify_route", route_id, RoutePublic(**dict(before)), out)
    return out


@router.delete("/v1/routes/{route_id}", status_code=204)
async def delete_route(route_id: int, pool: PoolDep, user: CurrentUser):
    user.require("admin")
    async with pool.acquire() as con, con.transaction():
        before = await con.fetchrow(f"DELETE FROM notify_routes WHERE id = $1 RETURNING {_RT}", route_id)
        if before is None:
            raise NotFound(f"route {route_id} not found")
        await _audit(con, user, "route.delete", "notify_route", route_id, RoutePublic(**dict(before)), None)
    return Response(status_code=204)


# --- the outbox ----------------------------------------------------------------------------------------

_REGION_SCOPE = "($1::text[] IS NULL OR payload->>'region' = ANY($1))"


@router.get("/v1/notifications", response_model=NotificationsPublic)
async def list_notifications(
    pool: PoolDep,
    user: CurrentUser,
    state: NotificationState | None = None,
    channel: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None,
    alert: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="created at or after (ISO 8601; naive "
                                                                      "means UTC)")] = None,
    to: Annotated[datetime | None, Query(description="created before (ISO 8601, exclusive; naive means UTC)")]
    = None,
    page: Annotated[Page, Depends(paging(maximum=500, keyset=1))] = Page(100),
):
    """Newest first, within the key's regions; ``state=failed`` lists what needs a look (``last_error``)."""
    user.require("operator")
    start, end = utc(from_), utc(to)
    if start is not None and end is not None and end <= start:
        raise BadQuery("'to' must be after 'from'")
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT {_NT} FROM notifications WHERE {_REGION_SCOPE} AND ($2::text IS NULL OR state = $2)"
            " AND ($3::int IS NULL OR channel_id = $3) AND ($4::bigint IS NULL OR alert_id = $4)"
            " AND ($5::timestamptz IS NULL OR created_at >= $5) AND ($6::timestamptz IS NULL OR created_at < $6)"
            " AND ($7::bigint IS NULL OR id < $7) ORDER BY id DESC LIMIT $8",
            user.region_filter(), state, channel, alert, start, end, page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return NotificationsPublic(data=[NotificationPublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.post("/v1/notifications/{notification_id}/retry", response_model=NotificationPublic,
             responses={409: {"description": "only a failed notification can be retried"}})
async def retry_notification(notification_id: int, pool: PoolDep, user: CurrentUser):
    """A ``failed`` notification goes back to ``pending`` with its attempts reset (same idempotency key)."""
    user.require("operator")
    async with pool.acquire() as con, con.transaction():
        row = await con.fetchrow(f"SELECT {_NT}, payload->>'region' AS region FROM notifications WHERE id = $1"
                                 f" AND {_REGION_SCOPE.replace('$1', '$2')} FOR UPDATE", notification_id,
                                 user.region_filter())
        if row is None:
            raise NotFound(f"notification {notification_id} not found")
        if row["state"] != "failed":
            raise Conflict(f"notification {notification_id} is {row['state']}, not failed")
        out = await con.fetchrow(
            "UPDATE notifications SET state = 'pending', attempts = 0, next_attempt_at = now(), updated_at = now()"
            f" WHERE id = $1 RETURNING {_NT}", notification_id)
        await con.execute("SELECT pg_notify($1, '')", NOTIFY_WAKE_CHANNEL)
        public = NotificationPublic(**dict(out))
        before = NotificationPublic(**{k: v for k, v in dict(row).items() if k != "region"})
        await _audit(con, user, "notification.retry", "notification", notification_id, before, public,
                     region=row["region"])
    return public
