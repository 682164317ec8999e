"""The HTTP API against the real database (ASGI in-process, lifespan run)."""
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from wulian.api.auth import create_key
from tests.helpers import api_client


@pytest.fixture
async def client(settings, pool):
    async with pool.acquire() as con:
        key = await create_key(con, name="test-admin", role="admin", regions=[])
    async with api_client(settings, {"Authorization": f"Bearer {key}"}) as c:
        yield c


@pytest.fixture
async def seeded(pool):
    """A device with readings at known times: 12 values at 5-minute steps from 10:00 China time."""
    dev_id = f"API{uuid.uuid4().hex[:6]}"
    t0 = datetime(2026, 11, 26, 2, 0, tzinfo=timezone.utc)  # 10:00 in Asia/Shanghai
    async with pool.acquire() as con:
        dev = await con.fetchval(
            "INSERT INTO devices (device_id, region, stream, name) VALUES ($1, 'apicity', 'pollution', 'Stack 1')"
            " RETURNING id", dev_id)
        so2 = await con.fetchval("SELECT id FROM metrics WHERE name = 'SO2'")
        await con.executemany(
            "INSERT INTO readings (time, device, metric, value, flag) VALUES ($1, $2, $3, $4, 'N')",
            [(t0 + timedelta(minutes=5 * k), dev, so2, float(k)) for k in range(12)])
        await con.execute("UPDATE devices SET last_seen = now() WHERE id = $1", dev)
    return dev_id, t0


async def test_healthz_reports_database_and_broker(client):
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "database": True, "broker": True}


async def test_healthz_degraded_when_broker_unreachable(settings, pool):
    from tests.services import free_port

    settings.mqtt.port = free_port()
    async with api_client(settings) as c:
        r = await c.get("/healthz")
    assert r.status_code == 503 and r.json()["broker"] is False and r.json()["database"] is True


async def test_devices_list_get_and_404(client, seeded):
    dev_id, _ = seeded
    r = await client.get("/v1/devices", params={"region": "apicity"})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] >= 1 and dev_id in [d["device_id"] for d in body["data"]]
    r = await client.get(f"/v1/devices/{dev_id}")
    assert r.status_code == 200 and r.json()["name"] == "Stack 1" and r.json()["online"] is True
    r = await client.get("/v1/devices/NOPE-404")
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.get("/v1/devices", params={"stream": "bogus"})
    assert r.status_code == 422 and "stream" in r.json()["message"]


async def test_latest_values(client, seeded):
    dev_id, t0 = seeded
    r = await client.get(f"/v1/devices/{dev_id}/latest")
    assert r.status_code == 200
    (so2,) = [v for v in r.json()["values"] if v["metric"] == "SO2"]
    assert so2["value"] == 11.0
    assert datetime.fromisoformat(so2["time"]) == t0 + timedelta(minutes=55)


async def test_readings_time_buckets(client, seeded):
    dev_id, t0 = seeded
    q = {"device": dev_id, "metric": "SO2", "from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat(),
         "bucket": "15m"}
    r = await client.get("/v1/readings", params=q)
    assert r.status_code == 200
    data = r.json()["data"]
    assert [(d["avg"], d["min"], d["max"], d["count"]) for d in data] == [
        (1.0, 0.0, 2.0, 3), (4.0, 3.0, 5.0, 3), (7.0, 6.0, 8.0, 3), (10.0, 9.0, 11.0, 3)]
    # a China-time day bucket starts at 00:00 +08:00 = 16:00 UTC the day before
    r = await client.get("/v1/readings", params={**q, "bucket": "1d"})
    (day,) = r.json()["data"]
    assert datetime.fromisoformat(day["time"]) == datetime(2026, 11, 25, 16, 0, tzinfo=timezone.utc)
    assert day["count"] == 12


@pytest.mark.parametrize(
    "override,status,needle",
    [
        ({"bucket": "5x"}, 422, "bucket"),
        ({"bucket": "0m"}, 422, "bucket"),
        ({"from": "2026-11-27T00:00:00Z"}, 422, "after"),
        ({"from": "yesterday"}, 422, "from"),
        ({"metric": "no such"}, 422, "metric"),
        ({"metric": "Nope"}, 404, "metric"),
        ({"device": "NOPE-404"}, 404, "device"),
        ({"bucket": "1s", "from": "2020-01-01T00:00:00Z"}, 422, "buckets"),
    ],
)
async def test_readings_validation_is_4xx_with_message(client, seeded, override, status, needle):
    dev_id, t0 = seeded
    q = {"device": dev_id, "metric": "SO2", "from": t0.isoformat(), "to": "2026-11-26T12:00:00Z", "bucket": "1h"}
    r = await client.get("/v1/readings", params={**q, **override})
    assert r.status_code == status, r.text
    assert needle in r.json()["message"]
