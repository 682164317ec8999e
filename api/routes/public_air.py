"""Public air-quality page (环境质量监测监控信息公开, 空气质量手机APP): ``/public/air`` needs no API key.

It shows only what is published anyway: each air station's newest hourly and daily AQI, level,
category, colour and primary pollutant, with the HJ 633-2012 Table 2 health advice for the level. An
AQI the standard says not to publish (HJ 633-2026 §5.3.1: indicators missing and AQI <= 100) goes out as
NA. Concentrations, device attributes other than the position, and other streams never leave. The page
is static package data (api/static/public_air/) with a map drawn as inline SVG from the stations'
lat/lon: no tile server, CDN, web font or outside script, so it works on an isolated network.
"""
from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel

from wulian.api.auth import RateLimited
from wulian.api.observability import RATE_LIMITED
from wulian.api.deps import PoolDep
from wulian.core.const import REGION_PATTERN, Stream
from wulian.core.environment.tables import AQI_CATEGORIES, AQI_HEALTH_ADVICE

router = APIRouter(prefix="/public", tags=["public"])
PAGE_DIR = Path(__file__).resolve().parent.parent / "static" / "public_air"
MAX_STATIONS = 2000
# The page may load only its own files (and draws its map itself): a stray CDN reference fails loudly.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"


class PublicAqi(BaseModel):
    time: datetime
    edition: str
    publishable: bool
    aqi: int | None  # None: not publishable (NA)
    level: int | None
    category: str | None
    color: str | None
    primary_pollutants: list[str]
    health_effect: str | None  # HJ 633-2012 Table 2
    advice: str | None


class PublicStation(BaseModel):
    station: str
    name: str | None
    region: str
    lat: float | None
    lon: float | None
    hourly: PublicAqi | None
    daily: PublicAqi | None


class PublicLevel(BaseModel):
    level: int
    category: str
    color: str
    aqi_max: int | None
    health_effect: str
    advice: str


class PublicAir(BaseModel):
    stations: list[PublicStation]
    levels: list[PublicLevel]


LEVELS = [PublicLevel(level=lv, category=cat, color=hex_, aqi_max=top, health_effect=AQI_HEALTH_ADVICE[lv][0],
                      advice=AQI_HEALTH_ADVICE[lv][1])
          for top, lv, _, cat, _, _, hex_ in AQI_CATEGORIES]

_COLS = "time, edition, publishable, aqi, level, category, color, primary_pollutants"
_SQL = (
    "SELECT d.device_id, d.name, d.region, d.attrs->'lat' AS lat, d.attrs->'lon' AS lon,"
    f" to_jsonb(h) AS hourly, to_jsonb(dd) AS daily FROM devices d"
    f" LEFT JOIN LATERAL (SELECT {_COLS} FROM env_aqi_hourly x WHERE x.device = d.id ORDER BY time DESC LIMIT 1) h"
    " ON true"
    f" LEFT JOIN LATERAL (SELECT {_COLS} FROM env_aqi_daily x WHERE x.device = d.id ORDER BY time DESC LIMIT 1) dd"
    " ON true WHERE d.stream = $1 AND ($2::text IS NULL OR d.region = $2) ORDER BY d.region, d.device_id LIMIT $3")


def _coord(raw, bound: float) -> float | None:
    """A position from the device's attrs, or None when it is absent or not a real coordinate."""
    try:
        v = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
    return v if v is not None and math.isfinite(v) and abs(v) <= bound else None


def _public(row: dict | None) -> PublicAqi | None:
    if row is None:
        return None
    ok = bool(row["publishable"])
    level = row["level"] if ok else None
    effect, advice = AQI_HEALTH_ADVICE.get(level, (None, None))
    return PublicAqi(time=row["time"], edition=row["edition"], publishable=ok, aqi=row["aqi"] if ok else None,
                     level=level, category=row["category"] if ok else None, color=row["color"] if ok else None,
                     primary_pollutants=row["primary_pollutants"] if ok else [], health_effect=effect, advice=advice)


def _throttle(request: Request) -> None:
    """No key, so the bucket is the client address."""
    host = request.client.host if request.client else "unknown"
    wait = request.app.state.rate_limits.take(f"public:{host}")
    if wait:
        RATE_LIMITED.inc()
        raise RateLimited(wait)


@router.get("/air.json", response_model=PublicAir)
async def public_air_json(
    request: Request,
    pool: PoolDep,
    region: Annotated[str | None, Query(pattern=REGION_PATTERN, description="one city/region only")] = None,
):
    """Newest published hourly and daily AQI of every air station, with the level legend (no key)."""
    _throttle(request)
    async with pool.acquire() as con:
        rows = await con.fetch(_SQL, Stream.AIR.value, region, MAX_STATIONS)
    stations = []
    for r in rows:
        hourly = orjson.loads(r["hourly"]) if isinstance(r["hourly"], str) else r["hourly"]
        daily = orjson.loads(r["daily"]) if isinstance(r["daily"], str) else r["daily"]
        stations.append(PublicStation(
            station=r["device_id"], name=r["name"], region=r["region"],
            lat=_coord(orjson.loads(r["lat"]) if r["lat"] else None, 90),
            lon=_coord(orjson.loads(r["lon"]) if r["lon"] else None, 180),
            hourly=_public(hourly), daily=_public(daily)))
    return PublicAir(stations=stations, levels=LEVELS)


@router.get("/air", response_class=HTMLResponse, include_in_schema=False)
async def public_air_page(request: Request) -> HTMLResponse:
    _throttle(request)
    return HTMLResponse((PAGE_DIR / "index.html").read_text(encoding="utf-8"),
                        headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"})
