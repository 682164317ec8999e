"""Smart grid: power-quality statistics per meter and day, feeder load forecasts (ingest/jobs/grid.py)."""
from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery
from wulian.api.paging import Page, paging
from wulian.api.schemas_energy import (FeederForecastPublic, FeederForecastsPublic, ForecastPoint, GridQualityListPublic,
                                GridQualityPublic)
from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN

router = APIRouter(prefix="/v1/grid", tags=["grid"])


@router.get("/quality", response_model=GridQualityListPublic)
async def quality(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    feeder: str | None = None,
    from_: Annotated[date | None, Query(alias="from", description="first China-time day (YYYY-MM-DD)")] = None,
    to: Annotated[date | None, Query(description="last China-time day, inclusive")] = None,
    page: Annotated[Page, Depends(paging(default=500, maximum=5000))] = Page(500),
):
    if from_ and to and to < from_:
        raise BadQuery("'to' must not be before 'from'")
    where = """($1::text IS NULL OR d.region = $1) AND ($2::text IS NULL OR d.device_id = $2)
        AND ($3::text IS NULL OR d.attrs->>'feeder' = $3) AND ($4::date IS NULL OR q.day >= $4)
        AND ($5::date IS NULL OR q.day <= $5) AND ($6::text[] IS NULL OR d.region = ANY($6))"""
    args = (region, device, feeder, from_, to, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.region, d.attrs->>'feeder' AS feeder, q.* FROM grid_quality_daily q"
            f" JOIN devices d ON d.id = q.device WHERE {where} ORDER BY q.day DESC, d.device_id LIMIT $7 OFFSET $8",
            *args, page.fetch, page.offset)
    rows, nxt = page.done(rows)
    return GridQualityListPublic(data=[GridQualityPublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/forecast", response_model=FeederForecastsPublic)
async def forecast(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    feeder: str | None = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    """The latest forecast of each feeder (every target time of its newest issue)."""
    async with pool.acquire() as con:
        rows = await con.fetch(
            """SELECT f.region, f.feeder, f.issued_at, f.target_time, f.load_kw FROM feeder_forecasts f
               JOIN (SELECT region, feeder, max(issued_at) AS issued FROM feeder_forecasts GROUP BY 1, 2) l
                 ON l.region = f.region AND l.feeder = f.feeder AND l.issued = f.issued_at
               WHERE ($1::text IS NULL OR f.region = $1) AND ($2::text IS NULL OR f.feeder = $2)
                 AND ($3::text[] IS NULL OR f.region = ANY($3))
               ORDER BY f.region, f.feeder, f.target_time""", region, feeder, user.region_filter())
    out: dict[tuple[str, str], FeederForecastPublic] = {}
    for r in rows:
        key = (r["region"], r["feeder"])
        if key not in out:
            out[key] = FeederForecastPublic(region=r["region"], feeder=r["feeder"], issued_at=r["issued_at"], data=[])
        out[key].data.append(ForecastPoint(time=r["target_time"], load_kw=r["load_kw"]))
    data, nxt = page.window(list(out.values()))
    return FeederForecastsPublic(data=data, count=len(data), next_cursor=nxt)
