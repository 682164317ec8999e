"""四表合一 meters: daily consumption of a meter and register/consumption anomalies (ingest/jobs/meters.py)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.time_range import check_range, day_range, utc
from wulian.api.schemas_energy import ConsumptionDay, ConsumptionPublic, MeterAnomaliesPublic, MeterAnomalyPublic
from wulian.core.const import DEVICE_ID_PATTERN, METRIC_PATTERN, REGION_PATTERN, Stream
from wulian.ingest import device_store

router = APIRouter(prefix="/v1/meters", tags=["meters"])
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
KINDS = ("backwards", "reset", "replaced", "jump", "rollover", "zero_consumption", "night_leak", "gas_never_stops")




# Fixed path first: /anomalies must never be taken for a meter id.
@router.get("/anomalies", response_model=MeterAnomaliesPublic)
async def anomalies(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    device: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    kind: Annotated[str | None, Query(description=", ".join(KINDS))] = None,
    open: bool | None = None,
    from_: Annotated[datetime | None, Query(alias="from", description="started at or after (ISO 8601)")] = None,
    to: Annotated[datetime | None, Query(description="started before (ISO 8601)")] = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    if kind is not None and kind not in KINDS:
        raise BadQuery(f"kind must be one of {', '.join(KINDS)}")
    start, end = utc(from_), utc(to)
    check_range(start, end)
    where = """($1::text IS NULL OR d.region = $1) AND ($2::text IS NULL OR d.device_id = $2)
        AND ($3::text IS NULL OR a.kind = $3) AND ($4::bool IS NULL OR a.open = $4)
        AND ($5::timestamptz IS NULL OR a.start_time >= $5) AND ($6::timestamptz IS NULL OR a.start_time < $6)
        AND ($7::text[] IS NULL OR d.region = ANY($7))"""
    args = (region, device, kind, open, start, end, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.region, a.metric, a.kind, a.start_time, a.end_time, a.value, a.previous, a.open"
            f" FROM meter_anomalies a JOIN devices d ON d.id = a.device WHERE {where}"
            " ORDER BY a.start_time DESC, d.device_id, a.metric, a.kind LIMIT $8 OFFSET $9", *args, page.fetch,
            page.offset)
    rows, nxt = page.done(rows)
    return MeterAnomaliesPublic(data=[MeterAnomalyPublic(**dict(r)) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/{device_id}/consumption", response_model=ConsumptionPublic)
async def consumption(
    device_id: DeviceId,
    pool: PoolDep,
    user: CurrentUser,
    metric: Annotated[str | None, Query(pattern=METRIC_PATTERN, description="register, e.g. water_m3")] = None,
    from_: Annotated[date | None, Query(alias="from", description="first China-time day (default: 30 days back)")
                     ] = None,
    to: Annotated[date | None, Query(description="last China-time day, inclusive (default: today)")] = None,
    page: Annotated[Page, Depends(paging(default=1000, maximum=5000))] = Page(1000),
):
    first, last = day_range(from_, to, default_days=30)
    async with pool.acquire() as con:
        dev = await device_store.find(con, device_id)
        if dev is None or not user.can_see(dev["region"]):
            raise NotFound(f"meter {device_id!r} not found")
        if dev["stream"] != Stream.METER:
            raise NotFound(f"device {device_id!r} is not a meter (stream {dev['stream']!r})")
        rows = await con.fetch(
            "SELECT metric, day, consumption, readings, complete, backwards, min_rate_per_h, min_night_rate_per_h"
            " FROM meter_consumption_daily WHERE device = $1 AND day >= $2 AND day <= $3"
            " AND ($4::text IS NULL OR metric = $4) ORDER BY metric, day LIMIT $5 OFFSET $6", dev["id"], first, last,
            metric, page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = [ConsumptionDay(**dict(r)) for r in rows]
    return ConsumptionPublic(device_id=device_id, data=data, count=len(data), next_cursor=nxt)
