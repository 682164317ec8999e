"""The metrics endpoint of the long-running services, with health next to it.

One small HTTP server per process (a thread, as prometheus_client's own): ``/metrics`` (Prometheus),
``/livez`` (the asyncio loop still runs: its heartbeat is recent) and ``/readyz`` (the service's probes,
e.g. the database answers and the broker is connected, all passed at the last heartbeat). The probes
run on the service's own event loop (:meth:`Health.run`), so the HTTP thread only reads their results.
Used by ingest, derive, the gateways, the notification sender and the forwarder; the API has its own
``/livez`` and ``/readyz`` (api/routes/health.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import threading
import time
from socketserver import ThreadingMixIn
from typing import Awaitable, Callable
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

log = logging.getLogger(__name__)

Probe = Callable[[], bool | Awaitable[bool]]


class Health:
    """Liveness by heartbeat, readiness by probes. Without :meth:`run` (no loop to watch) the process is
    live as long as it serves, and ready."""

    def __init__(self, probes: dict[str, Probe] | None = None, interval_s: float = 5.0,
                 stale_after_s: float = 30.0) -> None:
        self.probes = dict(probes or {})
        self.interval_s, self.stale_after_s = interval_s, stale_after_s
        self.results: dict[str, bool] = {name: False for name in self.probes}
        self.last_beat: float | None = None

    def add(self, name: str, probe: Probe) -> None:
        self.probes[name] = probe
        self.results[name] = False

    async def check(self) -> None:
        """Run every probe once (a probe that raises or takes longer than the interval failed)."""
        for name, probe in self.probes.items():
            try:
                value = probe()
                if inspect.isawaitable(value):
                    value = await asyncio.wait_for(value, self.interval_s)
                self.results[name] = bool(value)
            except Exception as exc:  # noqa: BLE001 - any failure means not ready
                log.debug("health probe %s failed: %r", name, exc)
                self.results[name] = False
        self.last_beat = time.monotonic()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """The heartbeat: probes every ``interval_s`` on the service's loop, until ``stop`` is set."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.check()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def live(self) -> bool:
        return self.last_beat is None or time.monotonic() - self.last_beat < self.stale_after_s

    def ready(self) -> bool:
        return self.live() and all(self.results.values())


async def db_probe(pool) -> bool:
    async with pool.acquire(timeout=2.0) as con:
        return await con.fetchval("SELECT true", timeout=2.0)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - scrapes every few seconds would flood the log
        pass


def health_app(health: Health, metrics=None):
    metrics = metrics or make_wsgi_app(REGISTRY)

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path not in ("/livez", "/readyz"):
            return metrics(environ, start_response)
        ok = health.live() if path == "/livez" else health.ready()
        body = json.dumps({"status": "ok" if ok else "failing", "live": health.live(),
                           "checks": health.results}).encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    return app


def serve_metrics(host: str, port: int, health: Health | None = None) -> WSGIServer:
    """Serve /metrics, /livez and /readyz on ``host:port`` in a daemon thread (port 0: a free one, read
    ``server.server_port``); ``server.shutdown()`` stops it."""
    server = make_server(host, port, health_app(health or Health()), _Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True).start()
    log.info("metrics and health on http://%s:%d/{metrics,livez,readyz}", host, server.server_port)
    return server
