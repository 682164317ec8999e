"""Streams as data (issue 19): a stream created through /v1/streams while ingest runs - its devices
publish, an out-of-range value is dead-lettered ``out_of_range`` (the rest of the batch is written), one
of its default rules raises an alert, the device and alert routes filter by it - with no code change
and no restart."""
import uuid

import orjson
import pytest

from wulian.api.auth import create_key
from tests.helpers import disable_registry_stream_rules
from wulian.core.model import Reading
from wulian.core.streams import OUT_OF_RANGE, StreamDef, StreamError, StreamRegistry
from wulian.ingest import stream_registry
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.codecs.registry import decode_message
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.device_store import DeviceSpec
from wulian.ingest.device_store import upsert as upsert_device
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.ingest.topics import parse_topic
from tests.conftest import wait_until

@pytest.fixture(autouse=True)
async def _stream_rules_disabled_after(test_dsn):
    yield
    await disable_registry_stream_rules(test_dsn)


NOW_MS = 1_765_000_000_000


def greenhouse(name: str) -> dict:
    return {
        "name": name, "title": "温室大棚",
        "metrics": {"air_temp": {"unit": "°C", "min": -30, "max": 60}, "humidity": {"unit": "%", "min": 0, "max": 100}},
        "device_types": ["gh_sensor"],
        "default_rules": [{"name": "温室高温", "kind": "upper", "metric": "air_temp", "threshold": 35.0,
                           "severity": "major"}],
        "dashboard": {"title": "温室大棚", "panels": [{"metric": "air_temp"}, {"metric": "humidity"}]},
    }


@pytest.mark.parametrize("bad, why", [
    ({"name": "air"}, "built-in"),
    ({"name": "alerts"}, "alerts"),
    ({"name": "Bad-Name"}, "name must match"),
    ({"name": "x", "metrics": {"t": {"min": 5, "max": 1}}}, "min 5 > max 1"),
    ({"name": "x", "metrics": {"t": {"min": "cold"}}}, "finite number"),
    ({"name": "x", "default_rules": [{"name": "r", "kind": "upper"}]}, "default_rules[0]"),
    ({"name": "x", "default_rules": [{"name": "r", "kind": "upper", "threshold": 1, "stream": "air"}]}, "another"),
    ({"name": "x", "metrics": {"t": {}}, "dashboard": {"panels": [{"metric": "u"}]}}, "dashboard"),
])
def test_invalid_stream_definitions_are_refused(bad, why):
    with pytest.raises(StreamError, match=why.replace("[", r"\[").replace("]", r"\]")):
        StreamDef.from_dict(bad)


def test_registry_decodes_a_new_scalar_stream_and_refuses_out_of_range_values():
    before = stream_registry.current()
    limits = PayloadLimits()
    try:
        with pytest.raises(CodecError):  # not registered: unknown stream
            parse_topic("wl/r1/greenhouse/GH-1/telemetry")
        stream_registry.install(StreamRegistry.of([StreamDef.from_dict(greenhouse("greenhouse"))]))
        topic = parse_topic("wl/r1/greenhouse/GH-1/telemetry")
        assert topic.stream == "greenhouse"
        ok = decode_message(topic.stream, topic.kind, b'{"ts": %d, "values": {"air_temp": 21.5, "co2": 900}}'
                            % NOW_MS, NOW_MS * 1_000_000, limits)
        assert ok.readings == [Reading(NOW_MS * 1_000_000, "air_temp", 21.5, "N"),
                               Reading(NOW_MS * 1_000_000, "co2", 900.0, "N")]  # co2 has no range: kept
        with pytest.raises(CodecError) as exc:
            decode_message(topic.stream, topic.kind, b'{"ts": %d, "values": {"air_temp": 85}}' % NOW_MS,
                           NOW_MS * 1_000_000, limits)
        assert exc.value.reason == OUT_OF_RANGE and "air_temp=85 outside [-30, 60]" in exc.value.detail
        # built-in streams keep their behaviour (no ranges registered for them)
        air = parse_topic("wl/r1/air/AQ-1/telemetry")
        assert decode_message(air.stream, air.kind, b'{"ts": %d, "values": {"PM25": 9999}}' % NOW_MS,
                              NOW_MS * 1_000_000, limits).readings[0].value == 9999.0
    finally:
        stream_registry.install(before)


async def test_stream_created_through_the_api_works_without_code_or_restart(settings, pool, api):
    name = f"gh{uuid.uuid4().hex[:6]}"
    region = "ghr"
    async with pool.acquire() as con:
        admin = await create_key(con, name="stream-admin", role="admin", regions=[])
        regulator = await create_key(con, name="stream-reg", role="regulator", regions=[region])
    h = {"Authorization": f"Bearer {admin}"}
    r = await api.post("/v1/streams", json=greenhouse(name), headers={
        "Authorization": f"Bearer {regulator}"})
    assert r.status_code == 403
    async with running_ingestor(settings, pool) as ing:
        reloads, subacks = ing.streams.reloads, ing.consumer.subacks
        r = await api.post("/v1/streams", json=greenhouse(name), headers=h)
        assert r.status_code == 201, r.text
        (rule_id,) = r.json()["rule_ids"]
        assert (await api.post("/v1/streams", json=greenhouse(name), headers=h)).status_code == 409
        # ingest hears the NOTIFY, reloads and subscribes to the new stream's topics
        await wait_until(lambda: ing.streams.reloads > reloads and ing.consumer.subacks > subacks)
        assert f"wl/+/{name}/+/+" in ing.consumer.topics
        dev = f"GH{uuid.uuid4().hex[:6]}"
        async with pool.acquire() as con:
            with pytest.raises(ValueError, match="accepts device types"):
                await upsert_device(con, DeviceSpec(dev, region, name, device_type="cems"))
            await upsert_device(con, DeviceSpec(dev, region, name, device_type="gh_sensor", name="1号棚"))
        topic = f"wl/{region}/{name}/{dev}/telemetry"
        t0 = NOW_MS
        msgs = [{"ts": t0, "values": {"air_temp": 22.0, "humidity": 60}},
                {"ts": t0 + 1000, "values": {"air_temp": 99.0, "humidity": 60}},  # sensor fault: out of range
                [{"ts": t0 + 2000, "values": {"air_temp": 36.5}}, {"ts": t0 + 3000, "values": {"air_temp": 37.0}}]]
        with MqttPublisher(mqtt_params(settings, client_id=f"pub-{uuid.uuid4().hex[:6]}")) as pub:
            for m in msgs:
                pub.publish(topic, orjson.dumps(m))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages + ing.stats.dead_letters >= 3, event=ing.committed)
    async with pool.acquire() as con:
        values = [r["value"] for r in await con.fetch(
            "SELECT r.value FROM readings r JOIN devices d ON d.id = r.device JOIN metrics m ON m.id = r.metric"
            " WHERE d.device_id = $1 AND m.name = 'air_temp' ORDER BY r.time", dev)]
        dead = await con.fetch("SELECT reason, detail FROM dead_letters WHERE device_id = $1", dev)
    assert values == [22.0, 36.5, 37.0]
    assert [(d["reason"], d["detail"]) for d in dead] == [(OUT_OF_RANGE, "air_temp=99 outside [-30, 60]")]
    r = await api.get("/v1/alerts", params={"stream": name}, headers=h)
    (alert,) = r.json()["data"]
    assert (alert["rule_id"], alert["device_id"], alert["last_value"]) == (rule_id, dev, 37.0)
    r = await api.get("/v1/devices", params={"stream": name}, headers=h)
    assert [d["device_id"] for d in r.json()["data"]] == [dev]
    r = await api.get(f"/v1/streams/{name}", headers=h)
    assert r.json()["metrics"]["air_temp"] == {"unit": "°C", "min": -30.0, "max": 60.0}
    names = [s["name"] for s in (await api.get("/v1/streams", headers=h)).json()["data"]]
    assert names[:7] == sorted(["air", "grid", "meter", "pollution", "traffic", "vehicle", "water"]) and name in names


def test_cli_adds_lists_and_refuses_streams(test_dsn, monkeypatch, tmp_path, capsys):
    from wulian.cli.commands import stream
    from tests.cli import run_command

    monkeypatch.setenv("WULIAN_DB__DSN", test_dsn)
    name = f"cli{uuid.uuid4().hex[:6]}"
    f = tmp_path / "s.json"
    f.write_text(orjson.dumps(greenhouse(name)).decode())
    assert run_command(stream, ["stream", "add", str(f)]) == 0
    assert orjson.loads(capsys.readouterr().out)["created"] == name
    assert run_command(stream, ["stream", "add", str(f)]) == 2
    assert "exists" in capsys.readouterr().out
    assert run_command(stream, ["stream", "list"]) == 0
    assert f"{name}\tregistry\t2 metrics\t温室大棚" in capsys.readouterr().out
    f.write_text('{"name": "air"}')
    assert run_command(stream, ["stream", "add", str(f)]) == 2
    assert "built-in" in capsys.readouterr().out


async def test_streams_are_replaced_and_deleted_by_admins_with_audit(pool, api):
    name = f"gh{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:
        admin = await create_key(con, name="stream-admin2", role="admin", regions=[])
        operator = await create_key(con, name="stream-op", role="operator", regions=["ghr"])
    h = {"Authorization": f"Bearer {admin}"}
    (old_rule,) = (await api.post("/v1/streams", json=greenhouse(name), headers=h)).json()["rule_ids"]
    spec = greenhouse(name)
    spec["metrics"]["co2"] = {"unit": "ppm", "min": 0, "max": 10000}
    spec["default_rules"][0]["threshold"] = 30.0  # an existing rule (by name) is left as it is
    spec["default_rules"].append({"name": "二氧化碳过高", "kind": "upper", "metric": "co2", "threshold": 1500.0})
    assert (await api.put(f"/v1/streams/{name}", json=spec, headers={"Authorization": f"Bearer {operator}"})
            ).status_code == 403
    assert (await api.put(f"/v1/streams/{name}", json={**spec, "name": "other"}, headers=h)).status_code == 422
    r = await api.put("/v1/streams/air", json={"name": "air"}, headers=h)
    assert r.status_code == 422 and "built-in" in r.text
    assert (await api.put("/v1/streams/nosuchstream", json=spec | {"name": "nosuchstream"}, headers=h)
            ).status_code == 404
    r = await api.put(f"/v1/streams/{name}", json=spec, headers=h)
    assert r.status_code == 200, r.text
    (new_rule,) = r.json()["rule_ids"]
    assert (await api.get(f"/v1/streams/{name}", headers=h)).json()["metrics"]["co2"]["unit"] == "ppm"
    async with pool.acquire() as con:
        thresholds = {r["id"]: r["t"] for r in await con.fetch(
            "SELECT id, (definition->>'threshold')::float8 AS t FROM rules WHERE id = ANY($1::bigint[])",
            [old_rule, new_rule])}
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, 'ghr', $2) RETURNING id",
                                 f"D{name}", name)
    assert thresholds == {old_rule: 35.0, new_rule: 1500.0}
    r = await api.delete(f"/v1/streams/{name}", headers=h)
    assert r.status_code == 409 and "1 devices" in r.text
    async with pool.acquire() as con:
        await con.execute("DELETE FROM devices WHERE id = $1", dev)
    assert (await api.delete("/v1/streams/air", headers=h)).status_code == 409
    assert (await api.delete(f"/v1/streams/{name}", headers=h)).status_code == 204
    assert (await api.get(f"/v1/streams/{name}", headers=h)).status_code == 404
    assert (await api.delete(f"/v1/streams/{name}", headers=h)).status_code == 404
    async with pool.acquire() as con:
        enabled = await con.fetch("SELECT enabled FROM rules WHERE id = ANY($1::bigint[])", [old_rule, new_rule])
        audit = await con.fetch("SELECT action, before IS NOT NULL AS had_before FROM audit_log"
                                " WHERE object_type = 'stream' AND object_id = $1 ORDER BY id", name)
    assert [e["enabled"] for e in enabled] == [False, False]
    assert [(a["action"], a["had_before"]) for a in audit] == [
        ("stream.create", False), ("stream.update", True), ("stream.delete", True)]
