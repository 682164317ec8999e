from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query

from api.auth import CurrentUser
from api.deps import PoolDep
from api.errors import NotFound
from api.schemas import DevicePublic, DevicesPublic, LatestPublic, LatestValue
from core.const import DEVICE_ID_PATTERN, Stream

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
    stream: Stream | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
):
    where = ("($1::text IS NULL OR region = $1) AND ($2::text IS NULL OR stream = $2)"
             " AND ($3::text[] IS NULL OR region = ANY($3))")
    args = (region, stream.value if stream else None, user.region_filter())
    async with pool.acquire() as con:
        rows = await con.fetch(
            f"SELECT {_COLS} FROM devices WHERE {where} ORDER BY device_id LIMIT $4 OFFSET $5", *args, limit, offset
        )
        count = await con.fetchval(f"SELECT count(*) FROM devices WHERE {where}", *args)
    return DevicesPublic(data=[_device(r) for r in rows], count=count)


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
        dev = await con.fetchrow("SELECT id, stream, region FROM devices WHERE device_id = $1", device_id)
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
