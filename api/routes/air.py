"""Air quality: station and city AQI (HJ 633, edition per period), hourly or daily."""
from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.schemas_environment import AqiListPublic, AqiPublic
from wulian.api.time_range import utc
from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN, Stream
from wulian.ingest import device_store

router = APIRouter(prefix="/v1/air", tags=["air"])
_STATION_COLS = ("time, edition, aqi, level, category, color, primary_pollutants, iaqi::text AS iaqi,"
                 " concentrations::text AS concentrations, missing, publishable")
_CITY_COLS = "time, edition, aqi, level, category, color, primary_pollutants, iaqi::text AS iaqi, stations"


class Report(StrEnum):
    HOURLY = "hourly"
    DAILY = "daily"



def _aqi(row, station: str, report: str) -> AqiPublic:
    d = dict(row)
    d["iaqi"] = orjson.loads(d["iaqi"])
    if "concentrations" in d:
        d["concentrations"] = orjson.loads(d["concentrations"])
    return AqiPublic(station=station, report=report, **d)


@router.get("/aqi", response_model=AqiListPublic)
async def aqi(
    pool: PoolDep,
    settings: SettingsDep,
    user: CurrentUser,
    from_: Annotated[datetime, Query(alias="from", description="ISO 8601; naive means UTC")],
    to: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    station: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN, description="air station device_id")] = None,
    city: Annotated[str | None, Query(pattern=REGION_PATTERN, description="city AQI instead of a station")] = None,
    report: Report = Report.HOURLY,
    page: Annotated[Page, Depends(paging(default=1000, maximum=10000))] = Page(1000),
):
    """AQI of one station (or one city) over ``[from, to)``; each row names its HJ 633 edition."""
    if (station is None) == (city is None):
        raise BadQuery("give exactly one of 'station' or 'city'")
    start, end = utc(from_), utc(to)
    if end <= start:
        raise BadQuery("'to' must be after 'from'")
    step_h = 1 if report is Report.HOURLY else 24
    if (end - start).total_seconds() / 3600 / step_h > settings.api.max_rows:
        raise BadQuery(f"more than {settings.api.max_rows} rows: narrow the range")
    table = "env_aqi_hourly" if report is Report.HOURLY else "env_aqi_daily"
    async with pool.acquire() as con:
        if station is not None:
            dev = await device_store.find(con, station)
            if dev is None or not user.can_see(dev["region"]):
                raise NotFound(f"station {station!r} not found")
            if dev["stream"] != Stream.AIR:
                raise BadQuery(f"{station!r} is not an air-quality station")
            rows = await con.fetch(f"SELECT {_STATION_COLS} FROM {table} WHERE device = $1 AND time >= $2"
                                   " AND time < $3 ORDER BY time LIMIT $4 OFFSET $5", dev["id"], start, end,
                                   page.fetch, page.offset)
            rows, nxt = page.done(rows)
            data = [_aqi(r, station, report.value) for r in rows]
        else:
            if not user.can_see(city):
                raise NotFound(f"city {city!r} not found")
            rows = await con.fetch(f"SELECT {_CITY_COLS} FROM env_city_aqi WHERE city = $1 AND report = $2"
                                   " AND time >= $3 AND time < $4 ORDER BY time LIMIT $5 OFFSET $6", city,
                                   report.value, start, end, page.fetch, page.offset)
            rows, nxt = page.done(rows)
            data = [_aqi(r, city, report.value) for r in rows]
    return AqiListPublic(data=data, count=len(data), next_cursor=nxt)


@router.get("/aqi/latest", response_model=AqiListPublic)
async def aqi_latest(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    report: Report = Report.HOURLY,
    page: Annotated[Page, Depends(paging(default=500, maximum=5000))] = Page(500),
):
    """The newest AQI of every air station in scope (stations without one are left out)."""
    table = "env_aqi_hourly" if report is Report.HOURLY else "env_aqi_daily"
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT d.device_id, a.* FROM devices d CROSS JOIN LATERAL"
            f" (SELECT {_STATION_COLS} FROM {table} x WHERE x.device = d.id ORDER BY time DESC LIMIT 1) a"
            " WHERE d.stream = 'air' AND ($1::text IS NULL OR d.region = $1)"
            " AND ($2::text[] IS NULL OR d.region = ANY($2)) ORDER BY d.device_id LIMIT $3 OFFSET $4",
            region, user.region_filter(), page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = []
    for r in rows:
        d = dict(r)
        data.append(_aqi({k: v for k, v in d.items() if k != "device_id"}, d["device_id"], report.value))
    return AqiListPublic(data=data, count=len(data), next_cursor=nxt)
