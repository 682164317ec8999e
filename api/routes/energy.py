"""Energy profile: daily energy per enterprise in standard coal, and use above the enterprise's own
profile (ingest/jobs/energy.py)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.paging import Page, paging
from wulian.api.time_range import check_range, day_range, utc
from wulian.api.schemas_profiles import EnergyAnomaliesPublic, EnergyAnomaly, EnergyDay, EnergyDaysPublic
from wulian.core.const import REGION_PATTERN

router = APIRouter(prefix="/v1/energy", tags=["energy"])


@router.get("/daily", response_model=EnergyDaysPublic)
async def daily(
    pool: PoolDep,
    user: CurrentUser,
    enterprise: str | None = None,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    from_: Annotated[date | None, Query(alias="from", description="first China day (default: 30 days back)")] = None,
    to: Annotated[date | None, Query(description="last China day, inclusive (default: today)")] = None,
    page: Annotated[Page, Depends(paging(default=1000, maximum=5000))] = Page(1000),
):
    """Energy per enterprise and China day by carrier, and its total in tonnes of standard coal (tce;
    GB/T 2589-2020 coefficients, core/profiles/standard_coal.py)."""
    first, last = day_range(from_, to, default_days=30)
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT region, enterprise, day, meters, electricity_kwh, gas_m3, steam_t, water_t, tce FROM energy_daily"
            " WHERE day >= $1 AND day <= $2 AND ($3::text IS NULL OR enterprise = $3)"
            " AND ($4::text IS NULL OR region = $4) AND ($5::text[] IS NULL OR region = ANY($5))"
            " ORDER BY day, region, enterprise LIMIT $6 OFFSET $7",
            first, last, enterprise, region, user.region_filter(), page.fetch, page.offset)
    rows, nxt = page.done(rows)
    return EnergyDaysPublic(data=[EnergyDay(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/anomalies", response_model=EnergyAnomaliesPublic)
async def anomalies(
    pool: PoolDep,
    user: CurrentUser,
    enterprise: str | None = None,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    open: bool | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="started at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    """Runs of hours whose electricity use was above the enterprise's hour-of-week baseline, newest first."""
    start, end = utc(from_), utc(to)
    check_range(start, end)
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT region, enterprise, start_time, end_time, open, hours, consumption_kwh, baseline_kwh"
            " FROM energy_anomalies WHERE ($1::text IS NULL OR enterprise = $1) AND ($2::text IS NULL OR region = $2)"
            " AND ($3::bool IS NULL OR open = $3) AND ($4::timestamptz IS NULL OR start_time >= $4)"
            " AND ($5::timestamptz IS NULL OR start_time < $5) AND ($6::text[] IS NULL OR region = ANY($6))"
            " ORDER BY start_time DESC, region, enterprise LIMIT $7 OFFSET $8",
            enterprise, region, open, start, end, user.region_filter(), page.fetch, page.offset)
    rows, nxt = page.done(rows)
    return EnergyAnomaliesPublic(data=[EnergyAnomaly(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)
