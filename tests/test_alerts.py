"""Alarms end to end: rules through the API, the engine in ingest, the lifecycle, roles, regions, SSE."""
import asyncio
import time
import uuid
from datetime import datetime, timedelta, timezone

import httpx
import orjson
import pytest
import uvicorn

from wulian.api.app import create_app
from wulian.api.auth import create_key
from wulian.ingest.mqtt_client import MqttConsumer, MqttPublisher
from wulian.ingest.service import mqtt_params, running_ingestor
from tests.conftest import wait_until
from tests.services import free_port

NOW_MS = lambda: time.time_ns() // 1_000_000  # noqa: E731


@pytest.fixture
async def keys(pool):
    region = f"r{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:
        out = {
            "region": region,
            "admin": await create_key(con, name="admin", role="admin", regions=[]),
            "operator": await create_key(con, name="op", role="operator", regions=[region]),
            "regulator": await create_key(con, name="reg", role="regulator", regions=[region]),
            "other": await create_key(con, name="elsewhere", role="operator", regions=["elsewhere"]),
            "expired": await create_key(con, name="old", role="admin", regions=[], expires_days=1),
            "revoked": await create_key(con, name="gone", role="admin", regions=[]),
        }
        await con.execute("UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE name = 'old'")
        await con.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1", out["revoked"].split("_")[1])
    return out


def h(key):
    return {"Authorization": f"Bearer {key}"}


async def _rule(api, admin, **body):
    r = await api.post("/v1/rules", json=body, headers=h(admin))
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _publish(settings, topic, docs):
    with MqttPublisher(mqtt_params(settings, client_id=f"pub-{uuid.uuid4().hex[:6]}")) as pub:
        for d in docs:
            pub.publish(topic, orjson.dumps(d))
        assert pub.wait_acked(10)


async def test_threshold_alert_lifecycle_roles_and_regions(settings, pool, api, keys):
    region = keys["region"]
    dev = f"PS{uuid.uuid4().hex[:6]}"
    rule_id = await _rule(api, keys["admin"], name="SO2 over permit", kind="upper", stream="pollution",
                          device_id=dev, metric="SO2", threshold=100.0, clear_threshold=80.0, severity="major")
    topic = f"wl/{region}/pollution/{dev}/telemetry"
    t0 = NOW_MS() - 60_000
    watcher = MqttConsumer(mqtt_params(settings, client_id=f"watch-{uuid.uuid4().hex[:6]}"), [f"wl/{region}/alerts/#"])
    await watcher.start()
    async with running_ingestor(settings, pool) as ing:
        _publish(settings, topic, [{"ts": t0 + k * 1000, "values": {"SO2": v}}
                                   for k, v in enumerate([50, 120, 130, 125])])
        await wait_until(lambda: ing.stats.messages >= 4, event=ing.committed)
        r = await api.get("/v1/alerts", params={"device": dev}, headers=h(keys["regulator"]))
        assert r.status_code == 200
        (alert,) = r.json()["data"]
        assert (alert["state"], alert["rule_id"], alert["count"], alert["last_value"]) == ("active", rule_id, 3, 125.0)
        assert alert["first_value"] == 120.0 and alert["peak_value"] == 130.0
        # hysteresis: 90 is below the threshold but above the clear threshold -> still open
        _publish(settings, topic, [{"ts": t0 + 5000, "values": {"SO2": 90}}])
        await wait_until(lambda: ing.stats.messages >= 5, event=ing.committed)
        r = await api.get(f"/v1/alerts/{alert['id']}", headers=h(keys["regulator"]))
        assert r.json()["state"] == "active"
        # acknowledge (regulator may), then the value clears
        r = await api.post(f"/v1/alerts/{alert['id']}/ack", json={"comment": "plant called"}, headers=h(keys["regulator"]))
        assert r.status_code == 200 and r.json()["state"] == "acknowledged" and r.json()["acknowledged_by"] == "reg"
        _publish(settings, topic, [{"ts": t0 + 6000, "values": {"SO2": 70}}])
        await wait_until(lambda: ing.stats.messages >= 6, event=ing.committed)
    r = await api.get(f"/v1/alerts/{alert['id']}", headers=h(keys["regulator"]))
    body = r.json()
    assert body["state"] == "cleared"
    assert [e["event"] for e in body["history"]] == ["raised", "acknowledged", "cleared"]
    # illegal and forbidden moves
    assert (await api.post(f"/v1/alerts/{alert['id']}/ack", headers=h(keys["regulator"]))).status_code == 409
    assert (await api.post(f"/v1/alerts/{alert['id']}/close", headers=h(keys["regulator"]))).status_code == 403
    r = await api.post(f"/v1/alerts/{alert['id']}/close", json={"comment": "fixed"}, headers=h(keys["operator"]))
    assert r.status_code == 200 and r.json()["state"] == "closed"
    r = await api.post(f"/v1/alerts/{alert['id']}/ack", headers=h(keys["operator"]))
    assert r.status_code == 409 and r.json()["error"] == "illegal_transition"
    # another region sees nothing of it
    r = await api.get("/v1/alerts", params={"device": dev}, headers=h(keys["other"]))
    assert r.json()["data"] == []
    assert (await api.get(f"/v1/alerts/{alert['id']}", headers=h(keys["other"]))).status_code == 404
    assert (await api.post(f"/v1/alerts/{alert['id']}/ack", headers=h(keys["other"]))).status_code == 404
    assert (await api.get(f"/v1/devices/{dev}", headers=h(keys["other"]))).status_code == 404
    # the events went out over MQTT too
    got = await asyncio.wait_for(watcher.get_batch(10, 0.2), 10)
    watcher.stop()
    events = [orjson.loads(m.payload) for m in got]
    assert got[0].topic == f"wl/{region}/alerts/pollution/{dev}"
    assert [e["event"] for e in events][:2] == ["raised", "cleared"]


async def test_missing_data_raised_by_timer_without_incoming_data(settings, pool, api, keys):
    region = keys["region"]
    dev = f"LJ{uuid.uuid4().hex[:6]}"
    await _rule(api, keys["admin"], name="station offline", kind="missing_data", stream="water",
                device_id=dev, duration_s=600, severity="minor")
    async with running_ingestor(settings, pool) as ing:
        ts = NOW_MS()
        _publish(settings, f"wl/{region}/water/{dev}/telemetry", [{"ts": ts, "values": {"DO": 6.0}}])
        await wait_until(lambda: ing.stats.messages >= 1, event=ing.committed)
        early = await ing.alarms.tick(ts * 1_000_000 + 599 * 10**9)
        assert len(early.transitions) == 0
        late = await ing.alarms.tick(ts * 1_000_000 + 601 * 10**9)
        assert len(late.transitions) == 1
    r = await api.get("/v1/alerts", params={"device": dev}, headers=h(keys["operator"]))
    (alert,) = r.json()["data"]
    assert alert["title"] == "station offline (DO)" and alert["metric"] == "DO" and alert["severity"] == "minor"


async def test_restart_in_the_middle_of_a_pending_period(settings, pool, api, keys):
    region = keys["region"]
    dev = f"GM{uuid.uuid4().hex[:6]}"
    await _rule(api, keys["admin"], name="overvoltage", kind="upper", stream="grid", device_id=dev, metric="Ua",
                threshold=235.4, pending_s=60, severity="critical")
    topic = f"wl/{region}/grid/{dev}/telemetry"
    t0 = NOW_MS() - 120_000
    async with running_ingestor(settings, pool) as ing:
        _publish(settings, topic, [{"ts": t0, "values": {"Ua": 240.0}}, {"ts": t0 + 30_000, "values": {"Ua": 241.0}}])
        await wait_until(lambda: ing.stats.messages >= 2, event=ing.committed)
    # a new process: the pending period that began at t0 must be remembered
    async with running_ingestor(settings, pool) as ing:
        _publish(settings, topic, [{"ts": t0 + 61_000, "values": {"Ua": 242.0}}])
        await wait_until(lambda: ing.stats.messages >= 1, event=ing.committed)
    r = await api.get("/v1/alerts", params={"device": dev}, headers=h(keys["admin"]))
    (alert,) = r.json()["data"]
    assert alert["severity"] == "critical" and alert["state"] == "active"
    assert datetime.fromisoformat(alert["raised_at"]) == datetime.fromtimestamp((t0 + 61_000) / 1000, timezone.utc)


async def test_flagged_data_excluded_and_flag_rule_raises(settings, pool, api, keys):
    region = keys["region"]
    dev = f"PS{uuid.uuid4().hex[:6]}"
    await _rule(api, keys["admin"], name="NOx over", kind="upper", device_id=dev, metric="NOx", threshold=100)
    await _rule(api, keys["admin"], name="analyser fault", kind="data_flag", device_id=dev, flags="DFB")
    t0 = NOW_MS() - 60_000
    async with running_ingestor(settings, pool) as ing:
        _publish(settings, f"wl/{region}/pollution/{dev}/telemetry", [
            {"ts": t0, "values": {"NOx": {"value": 500, "flag": "C"}}},  # calibration: not an exceedance
            {"ts": t0 + 1000, "values": {"NOx": {"value": 50, "flag": "D"}}},  # device fault
        ])
        await wait_until(lambda: ing.stats.messages >= 2, event=ing.committed)
    r = await api.get("/v1/alerts", params={"device": dev}, headers=h(keys["admin"]))
    assert [a["title"] for a in r.json()["data"]] == ["analyser fault (NOx)"]


@pytest.mark.parametrize("which,status", [("expired", 401), ("revoked", 401), ("malformed", 401), ("none", 401),
                                          ("regulator", 200)])
async def test_authentication(api, keys, which, status):
    special = {"none": {}, "malformed": h("not-a-key")}
    headers = special[which] if which in special else h(keys[which])
    r = await api.get("/v1/alerts", headers=headers)
    assert r.status_code == status
    if status == 401:
        assert r.json()["error"] == "unauthorized" and r.json()["message"]


async def test_rules_crud_admin_only_and_validated(api, keys):
    body = {"name": "PM2.5 high", "kind": "upper", "stream": "air", "metric": "PM25", "threshold": 115}
    assert (await api.post("/v1/rules", json=body, headers=h(keys["operator"]))).status_code == 403
    r = await api.post("/v1/rules", json={**body, "threshold": "high"}, headers=h(keys["admin"]))
    assert r.status_code == 422 and "threshold" in r.json()["message"]
    r = await api.post("/v1/rules", json={**body, "bogus": 1}, headers=h(keys["admin"]))
    assert r.status_code == 422
    rid = (await api.post("/v1/rules", json=body, headers=h(keys["admin"]))).json()["id"]
    r = await api.put(f"/v1/rules/{rid}", json={**body, "threshold": 150}, headers=h(keys["admin"]))
    assert r.status_code == 200 and r.json()["definition"]["threshold"] == 150
    assert (await api.get(f"/v1/rules/{rid}", headers=h(keys["regulator"]))).json()["definition"]["id"] == rid
    assert (await api.delete(f"/v1/rules/{rid}", headers=h(keys["admin"]))).status_code == 204
    assert (await api.get(f"/v1/rules/{rid}", headers=h(keys["admin"]))).json()["enabled"] is False
    assert (await api.put("/v1/rules/999999", json=body, headers=h(keys["admin"]))).status_code == 404


async def test_trend_rules_through_the_rules_api(api, keys):
    body = {"name": "vibration rising", "kind": "trend", "stream": "equipment", "metric": "vibration", "high": 7.1,
            "horizon_s": 1800, "window_s": 300, "min_points": 5}
    r = await api.post("/v1/rules", json={**body, "high": None}, headers=h(keys["admin"]))
    assert r.status_code == 422 and "high" in r.json()["message"]
    r = await api.post("/v1/rules", json={**body, "horizon_s": 0}, headers=h(keys["admin"]))
    assert r.status_code == 422 and "horizon_s" in r.json()["message"]
    r = await api.post("/v1/rules", json=body, headers=h(keys["admin"]))
    assert r.status_code == 201, r.text
    d = r.json()["definition"]
    assert (d["kind"], d["high"], d["horizon_s"], d["window_s"], d["min_points"]) == ("trend", 7.1, 1800, 300, 5)
    assert (await api.delete(f"/v1/rules/{d['id']}", headers=h(keys["admin"]))).status_code == 204


async def test_cursor_pagination(settings, pool, api, keys):
    region = keys["region"]
    async with pool.acquire() as con:
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'air') RETURNING id",
                                 f"PG{uuid.uuid4().hex[:6]}", region)
        for k in range(5):
            await con.execute(
                "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title,"
                " raised_at, last_seen) VALUES ($1, $2, 'x', $3, 'air', 'm', 'warning', 'cleared', 't', now(), now())",
                1000 + k, dev, region)
    seen, cursor = [], None
    while True:
        r = await api.get("/v1/alerts", params={"region": region, "limit": 2, **({"cursor": cursor} if cursor else {})},
                          headers=h(keys["regulator"]))
        seen += [a["id"] for a in r.json()["data"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 5 and seen == sorted(seen, reverse=True)


async def test_sse_stream_delivers_alert_changes(settings, pool, keys):
    region = keys["region"]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    serve = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started)
    async with pool.acquire() as con:
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'air') RETURNING id",
                                 f"SS{uuid.uuid4().hex[:6]}", region)
        alert_id = await con.fetchval(
            "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title,"
            " raised_at, last_seen) VALUES (1, $1, 'x', $2, 'air', 'm', 'major', 'active', 't', now(), now())"
            " RETURNING id", dev, region)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            async with c.stream("GET", "/v1/alerts/stream", headers=h(keys["regulator"])) as resp:
                assert resp.status_code == 200
                lines = resp.aiter_lines()
                assert (await anext(lines)).startswith(": connected")
                r = await c.post(f"/v1/alerts/{alert_id}/ack", headers=h(keys["regulator"]))
                assert r.status_code == 200
                data = None
                async for line in lines:
                    if line.startswith("data: "):
                        data = orjson.loads(line[6:])
                        break
        assert data["id"] == alert_id and data["state"] == "acknowledged" and data["event"] == "acknowledged"
    finally:
        server.should_exit = True
        await serve


def test_alarm_service_evaluates_typed_arrays_built_by_the_pipeline():
    """The alarm service takes a ``ReadingArrays`` (core.arrays), not the pipeline's items: the pipeline
    builds the arrays (readings; per position speed/alarm/status bits; per traffic observation the values
    present) and the engine raises on them as it did on the items."""
    import inspect

    import numpy as np

    from wulian.core.alarms import Rule, RuleKind
    from wulian.core.alarms.engine import AlarmEngine
    from wulian.core.arrays import ReadingArrays
    from wulian.core.const import Kind, Stream
    from wulian.core.model import Decoded, Position, Reading, TrafficObservation
    from wulian.ingest import alarm_service
    from wulian.ingest.batch_writer import DeviceInfo
    from wulian.ingest.mqtt_client import InMessage
    from wulian.ingest.pipeline import Item, reading_arrays
    from wulian.ingest.topics import Topic

    t0 = 1_767_225_600 * 10**9
    air = Decoded(readings=[Reading(t0, "pm25", 20.0), Reading(t0, "so2", 3.0, "M"), Reading(t0 + 1, "pm25", 200.0)])
    car = Decoded(positions=[Position(ts_ns=t0, lat=1.0, lon=2.0, speed_kmh=130.0, alarm_bits=5, status_bits=2)])
    road = Decoded(traffic=[TrafficObservation(t0, 40.0, None, 0.3)])
    items = [Item(InMessage(1, i, 1, "t", b""), Topic("r1", stream, dev, Kind.TELEMETRY), dec)
             for i, (stream, dev, dec) in enumerate([(Stream.AIR, "a1", air), (Stream.VEHICLE, "v1", car),
                                                     (Stream.TRAFFIC, "k1", road), (Stream.AIR, "a1", air)])]
    devices = {"a1": DeviceInfo(11, "r1", "air", "station"), "v1": DeviceInfo(12, "r1", "vehicle"),
               "k1": DeviceInfo(13, "r1", "traffic")}
    arrays = reading_arrays(items, devices)
    assert [d.id for d in arrays.devices] == [11, 12, 13] and arrays.devices[0].device_type == "station"
    assert arrays.metrics == ("pm25", "so2", "speed_kmh", "alarm_bits", "status_bits", "occupancy")
    assert arrays.device.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 0, 0, 0]
    assert [arrays.metrics[m] for m in arrays.metric.tolist()][3:8] == [
        "speed_kmh", "alarm_bits", "status_bits", "speed_kmh", "occupancy"]
    assert arrays.value.tolist()[:8] == [20.0, 3.0, 200.0, 130.0, 5.0, 2.0, 40.0, 0.3]
    assert bytes(arrays.flag).decode() == "NMNNNNNNNMN"
    assert (arrays.device.dtype, arrays.metric.dtype, arrays.ts_ns.dtype, arrays.value.dtype, arrays.flag.dtype) == (
        np.int32, np.int32, np.int64, np.float64, np.uint8)
    with pytest.raises(ValueError, match="ts_ns"):
        ReadingArrays((), (), arrays.device, arrays.metric, arrays.ts_ns.astype(np.float64), arrays.value, arrays.flag)

    rules = [Rule(1, "pm25 high", RuleKind.UPPER, stream="air", metric="pm25", threshold=150.0),
             Rule(2, "too fast", RuleKind.UPPER, stream="vehicle", metric="speed_kmh", threshold=120.0)]
    svc = alarm_service.AlarmService(None)  # type: ignore[arg-type]  # evaluate does no I/O
    svc._rules, svc.engine = {r.id: r for r in rules}, AlarmEngine(rules)
    raised = {(svc.meta[s].device_id, svc.meta[s].metric, rule) for s, rule, *_ in svc.evaluate(arrays).transitions.rows()}
    assert raised == {("a1", "pm25", 1), ("v1", "speed_kmh", 2)}
    assert [(m.device, m.device_id, m.stream, m.metric) for m in svc.meta][:3] == [
        (11, "a1", "air", "pm25"), (11, "a1", "air", "so2"), (12, "v1", "vehicle", "speed_kmh")]
    assert len(svc.evaluate(ReadingArrays.empty()).transitions) == 0
    assert "pipeline" not in inspect.getsource(alarm_service) and "Item" not in inspect.getsource(alarm_service)
