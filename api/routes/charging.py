"""Charging profile: utilisation per charger, station or district and China day (ingest/jobs/charging.py)."""
from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.paging import Page, paging
from wulian.api.time_range import day_range
from wulian.api.schemas_profiles import UtilisationPublic, UtilisationRow
from wulian.core.const import REGION_PATTERN

router = APIRouter(prefix="/v1/charging", tags=["charging"])
_KEY = {"charger": "d.device_id", "station": "u.station", "district": "u.district"}


@router.get("/utilisation", response_model=UtilisationPublic)
async def utilisation(
    pool: PoolDep,
    user: CurrentUser,
    by: Annotated[Literal["charger", "station", "district"], Query(description="group chargers by")] = "station",
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    district: str | None = None,
    from_: Annotated[date | None, Query(alias="from", description="first China day (default: 7 days back)")] = None,
    to: Annotated[date | None, Query(description="last China day, inclusive (default: today)")] = None,
    page: Annotated[Page, Depends(paging(default=1000, maximum=5000))] = Page(1000),
):
    """Share of time charging (state 1), time-weighted over the group's chargers: sum of charging time /
    sum of time computed (a day in progress counts up to the job's last run)."""
    first, last = day_range(from_, to, default_days=7)
    key = _KEY[by]
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT {key} AS key, min(u.district) AS district, u.day, count(*)::int AS chargers,"
            " sum(u.charging_s) / nullif(sum(u.period_s), 0) AS utilisation, sum(u.charging_s) / 3600 AS charging_h,"
            " sum(u.fault_s) / 3600 AS fault_h, sum(u.offline_s) / 3600 AS offline_h"
            " FROM charger_utilisation_daily u JOIN devices d ON d.id = u.device"
            " WHERE u.day >= $1 AND u.day <= $2 AND ($3::text IS NULL OR d.region = $3)"
            " AND ($4::text IS NULL OR u.district = $4) AND ($5::text[] IS NULL OR d.region = ANY($5))"
            f" GROUP BY {key}, u.day ORDER BY u.day, {key} LIMIT $6 OFFSET $7",
            first, last, region, district, user.region_filter(), page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = [UtilisationRow(**{**dict(r), "utilisation": r["utilisation"] or 0.0}) for r in rows]
    return UtilisationPublic(by=by, data=data, count=len(data), next_cursor=nxt)
