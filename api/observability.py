"""Prometheus metrics of the API (latency and count by route template and status) at ``/metrics``."""
from __future__ import annotations

import time

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter("wulian_api_requests_total", "API requests", ["method", "route", "status"])
LATENCY = Histogram("wulian_api_request_seconds", "API request latency", ["method", "route"],
                    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
RATE_LIMITED = Counter("wulian_api_rate_limited_total", "requests refused by the per-key rate limit")
AUTH_FAILURES = Counter("wulian_api_auth_failures_total", "requests refused for a missing/bad key", ["reason"])


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template, never the raw path: bounded labels
        LATENCY.labels(request.method, path).observe(time.perf_counter() - t0)
        REQUESTS.labels(request.method, path, str(response.status_code)).inc()
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
