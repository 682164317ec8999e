"""Cold-chain profile: trips and their temperature compliance (ingest/jobs/coldchain.py)."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.paging import Page, paging
from wulian.api.time_range import check_range, utc
from wulian.api.schemas_profiles import TripPublic, TripsPublic
from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN

router = APIRouter(prefix="/v1/coldchain", tags=["coldchain"])


@router.get("/trips", response_model=TripsPublic)
async def trips(
    pool: PoolDep,
    user: CurrentUser,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    open: bool | None = None,
    below_pct: Annotated[float | None, Query(ge=0, le=100, description="only trips with compliance below")] = None,
    from_: Annotated[datetime | None, Query(alias="from", description="started at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    """Trips (waybills: dispatch to delivery sign-off), newest first: compliance = share of the trip's time
    inside the product's band; minutes without a temperature reading count as not compliant."""
    start, end = utc(from_), utc(to)
    check_range(start, end)
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.region, t.start_time, t.end_time, t.open, t.low_c, t.high_c,"
            " t.duration_s / 60 AS duration_min, t.compliance * 100 AS compliance_pct,"
            " t.out_of_range_s / 60 AS minutes_out_of_range, t.no_data_s / 60 AS minutes_no_data, t.max_temp,"
            " t.min_temp, t.readings FROM coldchain_trips t JOIN devices d ON d.id = t.device"
            " WHERE ($1::text IS NULL OR d.device_id = $1) AND ($2::text IS NULL OR d.region = $2)"
            " AND ($3::bool IS NULL OR t.open = $3) AND ($4::float8 IS NULL OR t.compliance * 100 < $4)"
            " AND ($5::timestamptz IS NULL OR t.start_time >= $5) AND ($6::timestamptz IS NULL OR t.start_time < $6)"
            " AND ($7::text[] IS NULL OR d.region = ANY($7))"
            " ORDER BY t.start_time DESC, d.device_id LIMIT $8 OFFSET $9",
            device, region, open, below_pct, start, end, user.region_filter(), page.fetch, page.offset)
    rows, nxt = page.done(rows)
    return TripsPublic(data=[TripPublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)
