"""FastAPI application factory for regulators and operators.

Every module in ``api/routes/`` that defines ``router`` is included, so a new resource is a new file.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil

import asyncpg
from fastapi import FastAPI

from wulian.api import docs, errors, export, observability, routes
from wulian.api.alert_feed import AlertFeed
from wulian.api.rate_limit import TokenBuckets
from wulian.settings import Settings


def _routers():
    for info in sorted(pkgutil.iter_modules(routes.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{routes.__name__}.{info.name}")
        if hasattr(module, "router"):
            yield module.router


def create_app(settings: Settings) -> FastAPI:
    """The app for ``settings``, built once by the entry point (``wulian api``) and kept on
    ``app.state.settings`` for the routes (``deps.SettingsDep``)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async with asyncpg.create_pool(settings.db.dsn, min_size=1, max_size=settings.db.pool_max) as pool:
            app.state.pool = pool
            app.state.alert_feed = AlertFeed(settings.db.dsn)
            try:
                yield
            finally:
                await app.state.alert_feed.close()

    app = FastAPI(title="Wulian API", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Telemetry, devices and alerts for city monitoring (物联)")
    app.state.settings = settings
    app.state.rate_limits = TokenBuckets(settings.api.rate_limit_per_s, settings.api.rate_limit_burst)
    errors.install(app)
    observability.install(app)
    for router in _routers():
        app.include_router(router)
    errors.install_openapi(app)
    export.install(app)
    docs.install(app)
    return app
