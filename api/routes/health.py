from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from wulian.api.deps import PoolDep, SettingsDep
from wulian.api.schemas import Health

router = APIRouter(tags=["health"])


async def _broker_reachable(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2.0)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


@router.get("/livez")
async def livez() -> dict:
    """Liveness: the process serves requests (a supervisor restarts it when this fails)."""
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(pool: PoolDep, settings: SettingsDep):
    """Readiness: the database answers and the broker accepts connections (same as /healthz)."""
    return await healthz(pool, settings)


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
async def healthz(pool: PoolDep, settings: SettingsDep):
    try:
        async with pool.acquire(timeout=2.0) as con:
            db_ok = await con.fetchval("SELECT true", timeout=2.0)
    except Exception:
        db_ok = False
    broker_ok = await _broker_reachable(settings.mqtt.host, int(settings.mqtt.port))
    body = Health(status="ok" if db_ok and broker_ok else "degraded", database=bool(db_ok), broker=broker_ok)
    return JSONResponse(body.model_dump(), status_code=200 if db_ok and broker_ok else 503)
