"""Traffic forecasts and incidents (written every 5 minutes by the ``traffic`` derive job)."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser, Principal
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import DEPRECATED_ALIAS, Page, paging, pick
from wulian.api.schemas_traffic import (
    TrafficForecastPublic, TrafficForecastsPublic, TrafficIncidentPublic, TrafficIncidentsPublic,
)
from wulian.api.time_range import utc
from wulian.core.const import DEVICE_ID_PATTERN, Stream
from wulian.ingest import device_store

router = APIRouter(prefix="/v1/traffic", tags=["traffic"])
STEP_MIN = 5  # forecasts are on 5-minute bins, horizons 1..12 bins
MAX_HORIZON_MIN = 60
DEFAULT_HORIZON_MIN = 15
Segment = Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="the segment's detector id")]

_F_COLS = "f.issued_at, f.time, f.horizon_min, f.speed_kmh, f.flow_vph, f.model_id"
_I_COLS = """i.id, d.device_id AS segment, i.region, i.state, i.started_at, i.detected_at, i.ended_at, i.expected_kmh,
             i.observed_kmh, i.min_speed_kmh, i.min_residual AS min_residual_kmh, i.band_kmh, i.alert_id"""


class IncidentState(StrEnum):
    OPEN = "open"
    CLEARED = "cleared"



def _horizon_steps(minutes: int) -> int:
    if minutes % STEP_MIN or not STEP_MIN <= minutes <= MAX_HORIZON_MIN:
        raise BadQuery(f"horizon must be a multiple of {STEP_MIN} minutes from {STEP_MIN} to {MAX_HORIZON_MIN}, "
                       f"got {minutes}")
    return minutes // STEP_MIN


async def _segment(con: asyncpg.Connection, device_id: str, user: Principal):
    dev = await device_store.find(con, device_id)
    if dev is None or not user.can_see(dev["region"]):
        raise NotFound(f"segment {device_id!r} not found")
    if dev["stream"] != Stream.TRAFFIC:
        raise NotFound(f"device {device_id!r} is not a traffic segment (stream {dev['stream']})")
    return dev


@router.get("/forecast", response_model=TrafficForecastsPublic)
async def forecast(
    pool: PoolDep,
    user: CurrentUser,
    segment: Segment = None,
    horizon: Annotated[int | None, Query(description="minutes ahead: 5, 10, ..., 60")] = None,
    region: str | None = None,
    page: Annotated[Page, Depends(paging(default=500))] = Page(500),
):
    """The latest forecast. With ``segment``: at ``horizon`` minutes, or every horizon of its latest issue
    when ``horizon`` is left out. Without: every visible segment's latest forecast at ``horizon``
    (default 15 minutes), by segment id."""
    steps = _horizon_steps(horizon) if horizon is not None else None
    async with pool.acquire() as con:
        if segment is not None:
            dev = await _segment(con, segment, user)
            if steps is not None:
                rows = await con.fetch(
                    f"SELECT {_F_COLS} FROM traffic_forecasts f WHERE f.device = $1 AND f.horizon_steps = $2"
                    " ORDER BY f.issued_at DESC LIMIT 1 OFFSET $3", dev["id"], steps, page.offset)
            else:
                rows = await con.fetch(
                    f"SELECT {_F_COLS} FROM traffic_forecasts f WHERE f.device = $1 AND f.issued_at ="
                    " (SELECT max(issued_at) FROM traffic_forecasts WHERE device = $1) ORDER BY f.horizon_steps"
                    " LIMIT $2 OFFSET $3", dev["id"], page.fetch, page.offset)
            if not rows and not page.offset:
                raise NotFound(f"no forecast for segment {segment!r} yet")
            rows, nxt = page.done(rows)
            data = [TrafficForecastPublic(segment=segment, region=dev["region"], **dict(r)) for r in rows]
        else:
            rows = await con.fetch(
                f"SELECT d.device_id AS segment, d.region, {_F_COLS} FROM devices d CROSS JOIN LATERAL"
                " (SELECT * FROM traffic_forecasts f WHERE f.device = d.id AND f.horizon_steps = $1"
                "  ORDER BY f.issued_at DESC LIMIT 1) f"
                " WHERE d.stream = 'traffic' AND ($2::text[] IS NULL OR d.region = ANY($2))"
                " AND ($3::text IS NULL OR d.region = $3) ORDER BY d.device_id LIMIT $4 OFFSET $5",
                steps or DEFAULT_HORIZON_MIN // STEP_MIN, user.region_filter(), region, page.fetch, page.offset)
            rows, nxt = page.done(rows)
            data = [TrafficForecastPublic(**dict(r)) for r in rows]
    return TrafficForecastsPublic(data=data, count=len(data), next_cursor=nxt)


@router.get("/incidents", response_model=TrafficIncidentsPublic)
async def incidents(
    pool: PoolDep,
    user: CurrentUser,
    region: str | None = None,
    segment: Segment = None,
    state: IncidentState | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="still open at or after (ISO 8601; naive = UTC)")]
    = None,
    to: Annotated[datetime | None, Query(description="started before (ISO 8601; naive = UTC)")] = None,
    since: Annotated[datetime | None, Query(description=DEPRECATED_ALIAS.format("from"), deprecated=True)] = None,
    until: Annotated[datetime | None, Query(description=DEPRECATED_ALIAS.format("to"), deprecated=True)] = None,
    page: Annotated[Page, Depends(paging(maximum=500, keyset=1))] = Page(100),
):
    """Incidents overlapping [from, to), newest first."""
    since, until = utc(pick(from_, since, "from")), utc(pick(to, until, "to"))
    if since is not None and until is not None and until <= since:
        raise BadQuery("'to' must be after 'from'")
    async with pool.acquire() as con:
        dev_id = (await _segment(con, segment, user))["id"] if segment is not None else None
        rows = await con.fetch(
            f"SELECT {_I_COLS} FROM traffic_incidents i JOIN devices d ON d.id = i.device"
            " WHERE ($1::text[] IS NULL OR i.region = ANY($1)) AND ($2::text IS NULL OR i.region = $2)"
            " AND ($3::int IS NULL OR i.device = $3) AND ($4::text IS NULL OR i.state = $4)"
            " AND ($5::timestamptz IS NULL OR coalesce(i.ended_at, 'infinity') >= $5)"
            " AND ($6::timestamptz IS NULL OR i.started_at < $6) AND ($7::bigint IS NULL OR i.id < $7)"
            " ORDER BY i.id DESC LIMIT $8",
            user.region_filter(), region, dev_id, state and state.value, since, until,
            page.after and page.after[0], page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["id"],))
    return TrafficIncidentsPublic(data=[TrafficIncidentPublic(**dict(r)) for r in rows], count=len(rows),
                                  next_cursor=nxt)
