"""Lianjiang water quality: stations with their current GB 3838 class against target, and pulse events."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery
from wulian.api.paging import Page, paging
from wulian.api.time_range import utc
from wulian.api.schemas_environment import (
    PulseEventPublic,
    PulseEventsPublic,
    WaterClassNow,
    WaterStationPublic,
    WaterStationsPublic,
)
from wulian.core.const import REGION_PATTERN

router = APIRouter(prefix="/v1/water", tags=["water"])
_CLASS = "time, overall_class, item_class::text AS item_class, means::text AS means, compliant"



def _now(prefix: str, row) -> WaterClassNow | None:
    if row[f"{prefix}time"] is None:
        return None
    return WaterClassNow(time=row[f"{prefix}time"], overall_class=row[f"{prefix}overall_class"],
                         item_class=orjson.loads(row[f"{prefix}item_class"]), means=orjson.loads(row[f"{prefix}means"]),
                         compliant=row[f"{prefix}compliant"])


@router.get("/stations", response_model=WaterStationsPublic)
async def stations(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    river: str | None = None,
    page: Annotated[Page, Depends(paging(default=500, maximum=5000))] = Page(500),
):
    """Water stations upstream -> downstream per river: target class, latest hourly and daily class,
    and the share of compliant hours over the 7 days up to the latest one."""
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT d.device_id, d.region, d.name, d.attrs->>'river' AS river, (d.attrs->>'km')::float8 AS km,"
            " coalesce((d.attrs->>'lake')::boolean, false) AS lake,"
            " coalesce(d.attrs->>'target_class', 'III') AS target_class,"
            " h.time AS h_time, h.overall_class AS h_overall_class, h.item_class AS h_item_class, h.means AS h_means,"
            " h.compliant AS h_compliant, y.time AS y_time, y.overall_class AS y_overall_class,"
            " y.item_class AS y_item_class, y.means AS y_means, y.compliant AS y_compliant,"
            " (SELECT avg(c.compliant::int) FROM env_water_hourly c WHERE c.device = d.id"
            "   AND c.time > h.time - interval '7 days' AND c.time <= h.time) AS compliance_7d"
            " FROM devices d"
            f" LEFT JOIN LATERAL (SELECT {_CLASS} FROM env_water_hourly x WHERE x.device = d.id"
            "   ORDER BY time DESC LIMIT 1) h ON true"
            f" LEFT JOIN LATERAL (SELECT {_CLASS} FROM env_water_daily x WHERE x.device = d.id"
            "   ORDER BY time DESC LIMIT 1) y ON true"
            " WHERE d.stream = 'water' AND ($1::text IS NULL OR d.region = $1)"
            " AND ($2::text IS NULL OR d.attrs->>'river' = $2) AND ($3::text[] IS NULL OR d.region = ANY($3))"
            " ORDER BY d.attrs->>'river' NULLS LAST, (d.attrs->>'km')::float8 NULLS LAST, d.device_id"
            " LIMIT $4 OFFSET $5", region, river, user.region_filter(), page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = [WaterStationPublic(
        device_id=r["device_id"], region=r["region"], name=r["name"], river=r["river"], km=r["km"], lake=r["lake"],
        target_class=r["target_class"], current=_now("h_", r), today=_now("y_", r),
        compliance_7d=float(r["compliance_7d"]) if r["compliance_7d"] is not None else None) for r in rows]
    return WaterStationsPublic(data=data, count=len(data), next_cursor=nxt)


@router.get("/events", response_model=PulseEventsPublic)
async def events(
    pool: PoolDep,
    user: CurrentUser,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN)] = None,
    river: str | None = None,
    item: str | None = None,
    from_: Annotated[datetime | None, Query(alias="from")] = None,
    to: Annotated[datetime | None, Query()] = None,
    page: Annotated[Page, Depends(paging())] = Page(100),
):
    """Pollution pulses traced upstream, newest first, with the segment each most likely entered."""
    start, end = utc(from_), utc(to)
    if start and end and end <= start:
        raise BadQuery("'to' must be after 'from'")
    where = ("($1::text IS NULL OR d.region = $1) AND ($2::text IS NULL OR e.river = $2)"
             " AND ($3::text IS NULL OR e.item = $3) AND ($4::timestamptz IS NULL OR e.time >= $4)"
             " AND ($5::timestamptz IS NULL OR e.time < $5) AND ($6::text[] IS NULL OR d.region = ANY($6))")
    args = (region, river, item, start, end, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT e.time, d.device_id AS detected_at, d.region, e.river, e.item, e.peak_value, e.peak_score,"
            " e.entry_upstream, e.entry_downstream, e.entry_km_from, e.entry_km_to, e.confidence,"
            " e.evidence::text AS evidence FROM env_pulse_events e JOIN devices d ON d.id = e.device"
            f" WHERE {where} ORDER BY e.time DESC, d.device_id LIMIT $7 OFFSET $8", *args, page.fetch,
            page.offset)
    rows, nxt = page.done(rows)
    data = []
    for r in rows:
        d = dict(r)
        ev = orjson.loads(d["evidence"]) if d["evidence"] else []
        d["evidence"] = ev if isinstance(ev, list) else [ev]  # the job writes a list; tolerate older rows
        data.append(PulseEventPublic(**d))
    return PulseEventsPublic(data=data, count=len(data), next_cursor=nxt)
