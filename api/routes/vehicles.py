"""两客一危 vehicles: a vehicle's track, violations and regulator KPIs (from ingest/jobs/vehicles.py)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from enum import StrEnum
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.schemas_energy import (TrackPoint, TrackPublic, VehicleKpiPublic, VehicleKpisPublic, ViolationPublic,
                                ViolationsPublic)
from wulian.api.time_range import check_range, utc
from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN, Stream
from wulian.ingest import device_store

router = APIRouter(prefix="/v1/vehicles", tags=["vehicles"])
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
MAX_TRACK_DAYS = 7


class RuleName(StrEnum):
    OVERSPEED = "overspeed"
    FATIGUE = "fatigue"
    FATIGUE_24H = "fatigue_24h"
    NIGHT_COACH = "night_coach"
    OFFLINE_JUMP = "offline_jump"
    GEOFENCE = "geofence"
    ROUTE_DEVIATION = "route_deviation"
    OVERTIME_PARKING = "overtime_parking"
    TERMINAL_ALARM = "terminal_alarm"
    NIGHT_BAN = "night_ban"


class KpiScope(StrEnum):
    ENTERPRISE = "enterprise"
    REGION = "region"


# Fixed paths first: /violations and /kpis must never be taken for a vehicle id.
@router.get("/violations", response_model=ViolationsPublic)
async def violations(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    enterprise: str | None = None,
    rule: RuleName | None = None,
    open: bool | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="started at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    start, end = utc(from_), utc(to)
    check_range(start, end)
    where = """d.stream = 'vehicle' AND ($1::text IS NULL OR d.region = $1) AND ($2::text IS NULL OR d.device_id = $2)
        AND ($3::text IS NULL OR d.attrs->>'enterprise' = $3) AND ($4::text IS NULL OR v.rule = $4)
        AND ($5::bool IS NULL OR v.open = $5) AND ($6::timestamptz IS NULL OR v.start_time >= $6)
        AND ($7::timestamptz IS NULL OR v.start_time < $7) AND ($8::text[] IS NULL OR d.region = ANY($8))"""
    args = (region, device, enterprise, rule.value if rule else None, open, start, end, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.region, d.attrs->>'enterprise' AS enterprise, v.rule, v.aux, v.start_time,"
            " v.end_time, extract(epoch FROM v.end_time - v.start_time)::float8 AS duration_s, v.value, v.open,"
            f" v.details::text AS details FROM vehicle_violations v JOIN devices d ON d.id = v.device WHERE {where}"
            " ORDER BY v.start_time DESC, d.device_id, v.rule LIMIT $9 OFFSET $10", *args, page.fetch,
            page.offset)
    rows, nxt = page.done(rows)
    data = [ViolationPublic(**{**dict(r), "details": orjson.loads(r["details"])}) for r in rows]
    return ViolationsPublic(data=data, count=len(data), next_cursor=nxt)


@router.get("/kpis", response_model=VehicleKpisPublic)
async def kpis(
    pool: PoolDep,
    user: CurrentUser,
    scope: KpiScope = KpiScope.ENTERPRISE,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    group: Annotated[str | None, Query(description="enterprise name (scope=enterprise)")] = None,
    from_: Annotated[date | None, Query(alias="from", description="first China-time day (YYYY-MM-DD)")] = None,
    to: Annotated[date | None, Query(description="last China-time day, inclusive")] = None,
    page: Annotated[Page, Depends(paging(default=500, maximum=5000))] = Page(500),
):
    check_range(from_, to)
    where = """scope = $1 AND ($2::text IS NULL OR region = $2) AND ($3::text IS NULL OR grp = $3)
        AND ($4::date IS NULL OR day >= $4) AND ($5::date IS NULL OR day <= $5)
        AND ($6::text[] IS NULL OR region = ANY($6))"""
    args = (scope.value, region, group, from_, to, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(f'SELECT *, grp AS "group" FROM vehicle_kpis WHERE {where}'
                               " ORDER BY day DESC, region, grp LIMIT $7 OFFSET $8", *args, page.fetch,
                               page.offset)
    rows, nxt = page.done(rows)
    return VehicleKpisPublic(data=[VehicleKpiPublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/{device_id}/track", response_model=TrackPublic)
async def track(
    device_id: DeviceId,
    pool: PoolDep,
    user: CurrentUser,
    from_: Annotated[datetime | None, Query(alias="from", description="ISO 8601 (default: 24 h before 'to')")] = None,
    to: Annotated[datetime | None, Query(description="ISO 8601, exclusive (default: now)")] = None,
    page: Annotated[Page, Depends(paging(default=10_000, maximum=100_000))] = Page(10_000),
):
    end = utc(to) or datetime.now(timezone.utc)
    start = utc(from_) or end - timedelta(days=1)
    if end <= start:
        raise BadQuery("'to' must be after 'from'")
    if end - start > timedelta(days=MAX_TRACK_DAYS):
        raise BadQuery(f"a track spans at most {MAX_TRACK_DAYS} days: narrow 'from'/'to'")
    async with pool.acquire() as con:
        dev = await device_store.find(con, device_id)
        if dev is None or not user.can_see(dev["region"]):
            raise NotFound(f"vehicle {device_id!r} not found")
        if dev["stream"] != Stream.VEHICLE:
            raise NotFound(f"device {device_id!r} is not a vehicle (stream {dev['stream']!r})")
        rows = await con.fetch(
            "SELECT time, lat, lon, speed_kmh, heading, altitude_m, alarm_bits, status_bits, mileage_km"
            " FROM vehicle_positions WHERE device = $1 AND time >= $2 AND time < $3 ORDER BY time LIMIT $4 OFFSET $5",
            dev["id"], start, end, page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = [TrackPoint(**dict(r)) for r in rows]
    return TrackPublic(device_id=device_id, data=data, count=len(data), next_cursor=nxt, truncated=nxt is not None)
