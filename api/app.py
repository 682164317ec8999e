"""FastAPI application factory for regulators and operators."""
from __future__ import annotations

import contextlib

import asyncpg
from fastapi import FastAPI

from api import errors
from api.routes import devices, health, readings
from wulian.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with asyncpg.create_pool(
            settings.db.dsn, min_size=1, max_size=settings.db.pool_max
        ) as pool:
            app.state.pool = pool
            yield

    app = FastAPI(title="Wulian API", version="0.1.0", lifespan=lifespan,
                  description="Telemetry, devices and alerts for city monitoring (物联)")
    app.state.settings = settings
    errors.install(app)
    for module in (health, devices, readings):
        app.include_router(module.router)
    return app
