"""Pollution sources: hourly values with HJ 76 validity, and exceedance episodes."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.schemas_environment import ExceedancePublic, ExceedancesPublic, SourceHourPublic, SourceHoursPublic
from wulian.api.time_range import utc
from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN, Stream
from wulian.ingest import device_store

router = APIRouter(prefix="/v1/sources", tags=["sources"])
_HOUR_COLS = ("time, pollutant, measured, converted, reference_o2, valid_minutes, minutes, valid, uploaded,"
              " uploaded_mismatch, flow, mass_kg, limit_value, exceeded, rule")



@router.get("/exceedances", response_model=ExceedancesPublic)
async def exceedances(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    pollutant: str | None = None,
    open: bool | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="episodes ending after this")] = None,
    to: Annotated[datetime | None, Query(description="episodes starting before this")] = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    """Exceedance episodes (sources on the converted 1-h mean, boundary monitors on the 1-h mean), newest first."""
    start, end = utc(from_), utc(to)
    if start and end and end <= start:
        raise BadQuery("'to' must be after 'from'")
    where = ("($1::text IS NULL OR d.region = $1) AND ($2::text IS NULL OR d.device_id = $2)"
             " AND ($3::text IS NULL OR e.pollutant = $3) AND ($4::boolean IS NULL OR e.open = $4)"
             " AND ($5::timestamptz IS NULL OR e.end_time > $5) AND ($6::timestamptz IS NULL OR e.start_time < $6)"
             " AND ($7::text[] IS NULL OR d.region = ANY($7))")
    args = (region, device, pollutant, open, start, end, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.region, d.name, e.pollutant, e.rule, e.start_time, e.end_time, e.hours, e.peak,"
            " e.peak_time, e.limit_value, e.basis, e.open FROM env_exceedances e JOIN devices d ON d.id = e.device"
            f" WHERE {where} ORDER BY e.start_time DESC, d.device_id, e.pollutant LIMIT $8 OFFSET $9",
            *args, page.fetch, page.offset)
    rows, nxt = page.done(rows)
    return ExceedancesPublic(data=[ExceedancePublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/{device_id}/hourly", response_model=SourceHoursPublic)
async def source_hourly(
    pool: PoolDep,
    settings: SettingsDep,
    user: CurrentUser,
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN)],
    from_: Annotated[datetime, Query(alias="from", description="ISO 8601; naive means UTC")],
    to: Annotated[datetime, Query(description="ISO 8601, exclusive")],
    pollutant: str | None = None,
    page: Annotated[Page, Depends(paging(default=1000, maximum=10000))] = Page(1000),
):
    """Hourly values of one source: measured and O2-converted means, validity, emission, limit, exceeded."""
    start, end = utc(from_), utc(to)
    if end <= start:
        raise BadQuery("'to' must be after 'from'")
    async with pool.acquire() as con:
        dev = await device_store.find(con, device_id)
        if dev is None or not user.can_see(dev["region"]):
            raise NotFound(f"source {device_id!r} not found")
        if dev["stream"] != Stream.POLLUTION:
            raise BadQuery(f"{device_id!r} is not a pollution source")
        rows = await con.fetch(
            f"SELECT {_HOUR_COLS} FROM env_source_hourly WHERE device = $1 AND time >= $2 AND time < $3"
            " AND ($4::text IS NULL OR pollutant = $4) ORDER BY time, pollutant LIMIT $5 OFFSET $6",
            dev["id"], start, end, pollutant, page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = [SourceHourPublic(**dict(r)) for r in rows]
    return SourceHoursPublic(device_id=device_id, data=data, count=len(data), next_cursor=nxt)
