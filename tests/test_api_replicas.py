"""The API as stateless replicas: two app instances (two servers, each with its own pool and LISTEN
connection) against one database; an alert raised by ingest reaches the SSE stream of both, because the
store announces every change with pg_notify in the transition's transaction (api.alert_feed)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import orjson
import uvicorn

from tests.conftest import wait_until
from tests.services import free_port
from tests.test_alerts import _publish, h, keys  # noqa: F401 (fixture)
from wulian.api.app import create_app
from wulian.ingest.service import running_ingestor



async def _first_event(client: httpx.AsyncClient, key: str, connected: asyncio.Event, device: str) -> dict:
    async with client.stream("GET", "/v1/alerts/stream", headers=h(key)) as resp:
        assert resp.status_code == 200
        lines = resp.aiter_lines()
        assert (await anext(lines)).startswith(": connected")
        connected.set()
        async for line in lines:
            if line.startswith("data: "):
                ev = orjson.loads(line[6:])
                if ev["device_id"] == device:
                    return ev
    raise AssertionError("stream ended")


async def test_an_alert_raised_by_ingest_reaches_sse_on_two_api_replicas(settings, pool, keys):
    region, dev = keys["region"], f"RP{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:  # a rule scoped to this device (no rule is left for other tests)
        rule_id = await con.fetchval("INSERT INTO rules (definition) VALUES ($1::jsonb) RETURNING id", json.dumps(
            {"name": "SO2 over permit", "kind": "upper", "stream": "pollution", "device_id": dev, "metric": "SO2",
             "threshold": 100.0, "clear_threshold": 80.0, "severity": "major"}))
    servers, serving = [], []
    for _ in range(2):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
        servers.append((server, port))
        serving.append(asyncio.create_task(server.serve()))
    try:
        await wait_until(lambda: all(s.started for s, _ in servers))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{servers[0][1]}", timeout=30) as a, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{servers[1][1]}", timeout=30) as b:
            ready = [asyncio.Event(), asyncio.Event()]
            streams = [asyncio.create_task(_first_event(c, keys["regulator"], e, dev)) for c, e in zip((a, b), ready)]
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), 30)
            async with running_ingestor(settings, pool) as ing:
                await asyncio.to_thread(_publish, settings, f"wl/{region}/pollution/{dev}/telemetry",
                                        [{"ts": time.time_ns() // 1_000_000 - 1000, "values": {"SO2": 150.0}}])
                await wait_until(lambda: ing.stats.messages >= 1, event=ing.committed)
                got = await asyncio.wait_for(asyncio.gather(*streams), 30)
        alert_id = await pool.fetchval("SELECT id FROM alerts WHERE device_id = $1 AND rule_id = $2", dev, rule_id)
        for ev in got:
            assert (ev["id"], ev["event"], ev["state"], ev["last_value"]) == (alert_id, "raised", "active", 150.0)
        assert got[0]["event_id"] == got[1]["event_id"]
    finally:
        for s, _ in servers:
            s.should_exit = True
        await asyncio.gather(*serving, return_exceptions=True)
        await pool.execute("UPDATE rules SET enabled = false WHERE definition->>'device_id' = $1", dev)
