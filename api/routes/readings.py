from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from wulian.api.auth import CurrentUser
from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.errors import BadQuery, NotFound
from wulian.api.paging import Page, paging
from wulian.api.schemas import ReadingBucket, ReadingsPublic
from wulian.api.time_range import utc
from wulian.core.const import DEVICE_ID_PATTERN, METRIC_PATTERN
from wulian.core.timebase import CHINA_TZ_NAME

router = APIRouter(prefix="/v1/readings", tags=["readings"])
_BUCKET_RE = re.compile(r"^(\d{1,4})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_bucket(text: str) -> timedelta:
    """``30s``, ``5m``, ``1h``, ``1d``; day buckets are China-time days (Asia/Shanghai midnight)."""
    m = _BUCKET_RE.match(text)
    if not m or int(m.group(1)) == 0:
        raise BadQuery("bucket must look like 30s, 5m, 1h or 1d")
    return timedelta(seconds=int(m.group(1)) * _UNIT_S[m.group(2)])



@router.get("", response_model=ReadingsPublic)
async def readings(
    pool: PoolDep,
    settings: SettingsDep,
    user: CurrentUser,
    device: Annotated[str, Query(pattern=DEVICE_ID_PATTERN)],
    metric: Annotated[str, Query(pattern=METRIC_PATTERN)],
    from_: Annotated[datetime, Query(alias="from", description="ISO 8601; naive means UTC")],
    to: Annotated[datetime, Query(description="ISO 8601, exclusive; naive means UTC")],
    bucket: Annotated[str, Query(description="30s, 5m, 1h, 1d (China-time days)")] = "5m",
    page: Annotated[Page, Depends(paging(default=1000, maximum=10000))] = Page(1000),
):
    start, end = utc(from_), utc(to)
    if end <= start:
        raise BadQuery("'to' must be after 'from'")
    width = parse_bucket(bucket)
    if (end - start) / width > settings.api.max_rows:
        raise BadQuery(f"more than {settings.api.max_rows} buckets: widen the bucket or narrow the range")
    async with pool.acquire() as con:
        ids = await con.fetchrow(
            "SELECT d.id AS dev, d.region, (SELECT id FROM metrics WHERE name = $2) AS met"
            " FROM (SELECT 1) one LEFT JOIN devices d ON d.device_id = $1", device, metric)
        if ids["dev"] is None or not user.can_see(ids["region"]):
            raise NotFound(f"device {device!r} not found")
        if ids["met"] is None:
            raise NotFound(f"metric {metric!r} not found")
        rows = await con.fetch(
            "SELECT time_bucket($1::interval, time, $6) AS time, avg(value) AS avg, min(value) AS min,"
            " max(value) AS max, count(*) AS count FROM readings"
            " WHERE device = $2 AND metric = $3 AND time >= $4 AND time < $5 GROUP BY 1 ORDER BY 1 LIMIT $7 OFFSET $8",
            width, ids["dev"], ids["met"], start, end, CHINA_TZ_NAME, page.fetch, page.offset)
    rows, nxt = page.done(rows)
    data = [ReadingBucket(**dict(r)) for r in rows]
    return ReadingsPublic(device_id=device, metric=metric, bucket=bucket, data=data, count=len(data), next_cursor=nxt)
