from __future__ import annotations

from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.paging import after_time as after_time_of
from wulian.api.routes.streams import check_stream
from wulian.api.schemas import DeviceEventPublic, DeviceEventsPublic, DevicePublic, DevicesPublic, LatestPublic, LatestValue
from wulian.api.time_range import utc
from wulian.core.const import DEVICE_ID_PATTERN, EVENT_KIND_PATTERN, STREAM_PATTERN, Stream
from wulian.ingest import device_store

router = APIRouter(prefix="/v1/devices", tags=["devices"])
DeviceId = Annotated[str, Path(pattern=DEVICE_ID_PATTERN)]
ONLINE_WINDOW = "15 minutes"  # a device that sent data this recently counts as online

_COLS = f"""device_id, region, stream, device_type, name, attrs::text AS attrs, auto_registered, created_at,
            last_seen, coalesce(last_seen > now() - interval '{ONLINE_WINDOW}', false) AS online"""


def _device(row) -> DevicePublic:
    d = dict(row)
    d["attrs"] = orjson.loads(d["attrs"]) if d["attrs"] else {}
    return DevicePublic(**d)


@router.get("", response_model=DevicesPublic)
async def list_devices(
    pool: PoolDep,
    user: CurrentUser,
    region: str | None = None,
    stream: Annotated[str | None, Query(pattern=STREAM_PATTERN, description="a registry stream")] = None,
    page: Annotated[Page, Depends(paging(keyset=1))] = Page(100),
):
    """Devices by id."""
    await check_stream(pool, stream)
    where = ("($1::text IS NULL OR region = $1) AND ($2::text IS NULL OR stream = $2)"
             " AND ($3::text[] IS NULL OR region = ANY($3)) AND ($4::text IS NULL OR device_id > $4)")
    args = (region, stream, user.region_filter(), page.after and str(page.after[0]))
    async with pool.acquire() as con:
        rows = await con.fetch(f"SELECT {_COLS} FROM devices WHERE {where} ORDER BY device_id LIMIT $5", *args,
                               page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["device_id"],))
    return DevicesPublic(data=[_device(r) for r in rows], count=len(rows), next_cursor=nxt)


@router.get("/{device_id}", response_model=DevicePublic)
async def get_device(device_id: DeviceId, pool: PoolDep, user: CurrentUser):
    async with pool.acquire() as con:
        row = await con.fetchrow(f"SELECT {_COLS} FROM devices WHERE device_id = $1", device_id)
    if row is None or not user.can_see(row["region"]):
        raise NotFound(f"device {device_id!r} not found")
    return _device(row)


@router.get("/{device_id}/latest", response_model=LatestPublic)
async def latest(device_id: DeviceId, pool: PoolDep, user: CurrentUser):
    async with pool.acquire() as con:
        dev = await device_store.find(con, device_id)
        if dev is None or not user.can_see(dev["region"]):
            raise NotFound(f"device {device_id!r} not found")
        out = LatestPublic(device_id=device_id, stream=dev["stream"])
        if dev["stream"] == Stream.VEHICLE:
            row = await con.fetchrow(
                "SELECT time, lat, lon, speed_kmh, heading, altitude_m, alarm_bits, status_bits, mileage_km"
                " FROM vehicle_positions WHERE device = $1 ORDER BY time DESC LIMIT 1", dev["id"])
            out.position = dict(row) if row else None
        elif dev["stream"] == Stream.TRAFFIC:
            row = await con.fetchrow(
                "SELECT time, speed_kmh, flow_vph, occupancy FROM traffic_observations"
                " WHERE device = $1 ORDER BY time DESC LIMIT 1", dev["id"])
            out.traffic = dict(row) if row else None
        else:
            # one index probe per catalogue metric on (device, metric, time DESC)
            rows = await con.fetch(
                "SELECT m.name AS metric, r.time, r.value, r.flag FROM metrics m CROSS JOIN LATERAL"
                " (SELECT time, value, flag FROM readings WHERE device = $1 AND metric = m.id"
                "  ORDER BY time DESC LIMIT 1) r ORDER BY m.name", dev["id"])
            out.values = [LatestValue(**dict(r)) for r in rows]
    return out


@router.get("/{device_id}/events", response_model=DeviceEventsPublic)
async def device_events(
    device_id: DeviceId,
    pool: PoolDep,
    user: CurrentUser,
    from_: Annotated[datetime | None, Query(alias="from", description="at or after (ISO 8601; naive means UTC)")]
    = None,
    to: Annotated[datetime | None, Query(description="before (ISO 8601, exclusive; naive means UTC)")] = None,
    kind: Annotated[str | None, Query(pattern=EVENT_KIND_PATTERN, description="e.g. jt808_register")] = None,
    page: Annotated[Page, Depends(paging(maximum=500, keyset=2))] = Page(100),
):
    """What the device reported besides time series (registration, equipment state, meter errors, ...),
    newest first; page with ``cursor=<next_cursor>`` until ``next_cursor`` is null."""
    start, end = utc(from_), utc(to)
    if start is not None and end is not None and end <= start:
        raise BadQuery("'to' must be after 'from'")
    after_time = after_id = None
    if page.after is not None:
        after_time, after_id = after_time_of(page), page.after[1]
        if not isinstance(after_id, int) or after_time is None:
            raise BadQuery("cursor is not a next_cursor of this route")
    async with pool.acquire() as con:
        dev = await device_store.find(con, device_id)
        if dev is None or not user.can_see(dev["region"]):
            raise NotFound(f"device {device_id!r} not found")
        rows = await con.fetch(
            "SELECT id, time, kind, code, detail::text AS detail FROM device_events WHERE device = $1"
            " AND ($2::timestamptz IS NULL OR time >= $2) AND ($3::timestamptz IS NULL OR time < $3)"
            " AND ($4::text IS NULL OR kind = $4)"
            " AND ($5::timestamptz IS NULL OR (time <= $5 AND (time, id) < ($5, $6::bigint)))"
            " ORDER BY time DESC, id DESC LIMIT $7",
            dev["id"], start, end, kind, after_time, after_id, page.fetch)
    rows, nxt = page.done(rows, key=lambda r: (r["time"], r["id"]))
    data = [DeviceEventPublic(time=r["time"], kind=r["kind"], code=r["code"], detail=orjson.loads(r["detail"]))
            for r in rows]
    return DeviceEventsPublic(device_id=device_id, data=data, count=len(data), next_cursor=nxt)
