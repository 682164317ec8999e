"""Device events (what codecs decode besides time series, and what the JT/T 808 gateway answers itself)
end as ``device_events`` rows, written once whatever the redelivery, and served region-scoped by
``GET /v1/devices/{id}/events``."""
import asyncio
import time
import uuid

import orjson
import pytest

from wulian.api.app import create_app
from wulian.api.auth import create_key
from wulian.ingest import pipeline
from wulian.ingest.batch_writer import write_events
from wulian.ingest.codecs import hj212, jt808
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.gateways.base import GatewayConfig, GatewayLimits
from wulian.ingest.gateways.jt808_gateway import Jt808Gateway
from wulian.ingest.gateways.registry import DeadLetterSink, DeviceRegistry
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.device_store import DeviceSpec, upsert as upsert_device
from wulian.ingest.rows import event_row, event_rows
from wulian.ingest.service import mqtt_params, running_ingestor
from tests.conftest import wait_until
from tests.helpers import asgi_client

REGION, OTHER = "evcity", "evother"
NS = 1_000_000_000


def _mn() -> str:
    return "77" + str(uuid.uuid4().int)[:22]


def _phone() -> str:
    return "1" + str(uuid.uuid4().int)[:10]


def _state_packet(mn: str, ts_ns: int, rs: int) -> bytes:
    """CN 2021 (equipment running state, HJ 212-2017 Appendix C) for two pieces of equipment."""
    return hj212.encode(cn="2021", mn=mn, pw="123456", qn=hj212.format_china_time(ts_ns, millis=True),
                        cp=f"DataTime={hj212.format_china_time(ts_ns)};SB1-RS={rs};SB2-RS=1")


def _upload_with_bad_value(mn: str, ts_ns: int) -> bytes:
    """CN 2011 with one value that is not a number: a reading and an ``hj212_bad_values`` event."""
    return hj212.encode(cn="2011", mn=mn, pw="123456", qn=hj212.format_china_time(ts_ns, millis=True),
                        cp=f"DataTime={hj212.format_china_time(ts_ns)};a21026-Rtd=12.5,a21026-Flag=N;"
                           f"a21002-Rtd=--,a21002-Flag=N")


async def _events(pool, device_id: str) -> list:
    async with pool.acquire() as con:
        return await con.fetch(
            "SELECT e.time, e.kind, e.code, e.region, e.stream, e.detail::text AS detail FROM device_events e"
            " JOIN devices d ON d.id = e.device WHERE d.device_id = $1 ORDER BY e.time, e.kind", device_id)


@pytest.fixture
async def api(settings, pool):
    """An httpx client factory on the real app: ``await api(role, regions)`` gives a client for a new key."""
    app = create_app(settings)
    clients = []
    async with app.router.lifespan_context(app):
        async def make(role="admin", regions=()):
            async with pool.acquire() as con:
                key = await create_key(con, name=f"ev-{role}", role=role, regions=list(regions))
            c = asgi_client(app, {"Authorization": f"Bearer {key}"})
            clients.append(c)
            return c

        yield make
        for c in clients:
            await c.aclose()


class _NoPublisher:
    def publish_async(self, topic, payload, qos=1):  # registration and authentication publish nothing
        raise AssertionError(f"unexpected publish to {topic}")


async def _read_frame(reader) -> jt808.Jt808Message:
    start = await asyncio.wait_for(reader.readexactly(1), 5)
    return jt808.decode(start + await asyncio.wait_for(reader.readuntil(b"\x7e"), 5))


async def test_hj212_state_and_jt808_registration_end_as_rows_served_by_the_api(settings, pool, api):
    mn, phone = _mn(), _phone()
    async with pool.acquire() as con:
        await upsert_device(con, DeviceSpec(mn, REGION, "pollution", "hj212", secrets={"hj212_pw": "123456"}))
        await upsert_device(con, DeviceSpec(phone, REGION, "vehicle", "jt808"))
    t0 = (time.time_ns() // NS - 600) * NS

    # HJ 212 over MQTT: an equipment state (SB1 in state 4) and an upload with a value that is not a number
    with MqttPublisher(mqtt_params(settings, client_id=f"ev-{uuid.uuid4().hex[:6]}")) as pub:
        async with running_ingestor(settings, pool) as ing:
            pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", _state_packet(mn, t0, 4))
            pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", _upload_with_bad_value(mn, t0 + 60 * NS))
            assert pub.wait_acked(10)
            await wait_until(lambda: ing.stats.messages >= 2, event=ing.committed)
            assert ing.stats.dead_letters == 0

    # JT/T 808 registration and authentication, answered by the gateway itself (never on MQTT)
    sink = DeadLetterSink(pool, flush_s=0.01)
    await sink.start()
    gw = Jt808Gateway(DeviceRegistry(pool), _NoPublisher(), sink,
                      GatewayConfig(region=REGION, limits=GatewayLimits(answer_timeout_s=5.0)))
    await gw.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(jt808.encode(0x0100, phone, 1, jt808.register_body(
            province=44, city=500, maker="ACME", model="M1", terminal_id="T1", plate_color=1, plate="粤D12345")))
        reg = await _read_frame(reader)
        assert reg.payload.result == 0
        writer.write(jt808.encode(0x0102, phone, 2, jt808.auth_body("wrong")))
        assert (await _read_frame(reader)).payload.result == 1
        # 2019 body; a NUL inside the software version: jsonb refuses \u0000, the event must still be written
        writer.write(jt808.encode(0x0102, phone, 3, jt808.auth_body(
            reg.payload.auth_code, edition="2019", imei="860000000000001", software_version="V1\x002")))
        assert (await _read_frame(reader)).payload.result == 0
        writer.close()
        await wait_until(lambda: sink.events_written == 3)
    finally:
        await gw.stop()
        await sink.stop()

    rows = await _events(pool, mn)
    assert [(r["kind"], r["code"], r["region"], r["stream"]) for r in rows] == [
        ("hj212_equipment_state", None, REGION, "pollution"), ("hj212_bad_values", None, REGION, "pollution")]
    assert rows[0]["time"].timestamp() == t0 / NS  # DataTime, not the receive time
    assert rows[1]["time"].timestamp() == t0 / NS + 60  # no time of its own: its readings' DataTime
    assert orjson.loads(rows[0]["detail"])["equipment"] == {"SB1": {"RS": 4.0}, "SB2": {"RS": 1.0}}
    assert orjson.loads(rows[1]["detail"])["items"] == [["a21002-Rtd", "--"]]
    rows = await _events(pool, phone)
    assert sorted((r["kind"], r["code"]) for r in rows) == [
        ("jt808_auth", "bad_auth_code"), ("jt808_auth", "ok"), ("jt808_register", "ok")]
    details = [orjson.loads(r["detail"]) for r in rows]
    reg_detail = next(d for d in details if "maker" in d)
    assert (reg_detail["maker"], reg_detail["plate"]) == ("ACME", "粤D12345")
    auth_detail = next(d for d in details if d.get("imei"))
    assert (auth_detail["imei"], auth_detail["software_version"]) == ("860000000000001", "V1\ufffd2")
    assert all(reg.payload.auth_code not in r["detail"] and "wrong" not in r["detail"] for r in rows)

    # the API: newest first, region-scoped, time filters, cursor pages
    admin = await api()
    r = await admin.get(f"/v1/devices/{mn}/events")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [e["kind"] for e in body["data"]] == ["hj212_bad_values", "hj212_equipment_state"]
    assert body["data"][1]["detail"]["equipment"]["SB1"] == {"RS": 4.0} and body["next_cursor"] is None
    r = await admin.get(f"/v1/devices/{phone}/events", params={"kind": "jt808_register"})
    assert [(e["kind"], e["code"], e["detail"]["model"]) for e in r.json()["data"]] == [("jt808_register", "ok", "M1")]
    since = (t0 + 30 * NS) / NS
    r = await admin.get(f"/v1/devices/{mn}/events", params={"from": _iso(since)})
    assert [e["kind"] for e in r.json()["data"]] == ["hj212_bad_values"]
    r = await admin.get(f"/v1/devices/{mn}/events", params={"to": _iso(since)})
    assert [e["kind"] for e in r.json()["data"]] == ["hj212_equipment_state"]
    r = await admin.get(f"/v1/devices/{mn}/events", params={"from": _iso(since), "to": _iso(since - 1)})
    assert r.status_code == 422 and "after" in r.json()["message"]

    own = await api("regulator", [REGION])
    other = await api("operator", [OTHER])
    assert (await own.get(f"/v1/devices/{phone}/events")).json()["count"] == 3
    for path in (f"/v1/devices/{phone}/events", f"/v1/devices/{mn}/events", "/v1/devices/NOPE-404/events"):
        r = await other.get(path)
        assert r.status_code == 404 and r.json()["error"] == "not_found", path


def _iso(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch_s))


async def test_cursor_pages_newest_first_through_equal_times(pool, api):
    """Ten events at five times (two per time): pages of three see each once, newest first."""
    phone = _phone()
    async with pool.acquire() as con:
        await upsert_device(con, DeviceSpec(phone, REGION, "vehicle", "jt808"))
        t0 = (time.time_ns() // NS - 3600) * NS
        rows = [event_row(phone, {"kind": kind, "ts_ns": t0 + (k // 2) * NS, "n": k}, 0)
                for k, kind in enumerate(["jt808_auth", "jt808_logout"] * 5)]
        async with con.transaction():
            assert await write_events(con, rows) == 10
    client = await api()
    seen, cursor, pages = [], None, 0
    while True:
        r = await client.get(f"/v1/devices/{phone}/events", params={"limit": 3, **({"cursor": cursor} if cursor else {})})
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [e["detail"]["n"] for e in body["data"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 4 and sorted(seen) == list(range(10)) and len(seen) == 10
    assert [k // 2 for k in seen] == [4, 4, 3, 3, 2, 2, 1, 1, 0, 0]  # newest first
    for bad in ("abc", "1_2_3", "99999999999999999999_1", "1_99999999999999999999"):
        r = await client.get(f"/v1/devices/{phone}/events", params={"cursor": bad})
        assert r.status_code == 422, (bad, r.text)


async def test_redelivered_messages_and_retried_gateway_writes_write_nothing_twice(settings, pool):
    """Commit without acking, drop the connection: the broker redelivers, the events are not doubled."""
    mn = _mn()
    async with pool.acquire() as con:
        await upsert_device(con, DeviceSpec(mn, REGION, "pollution", "hj212", secrets={"hj212_pw": "123456"}))
    t0 = (time.time_ns() // NS - 600) * NS
    packets = [_state_packet(mn, t0, 1), _state_packet(mn, t0 + 60 * NS, 4), _upload_with_bad_value(mn, t0)]
    with MqttPublisher(mqtt_params(settings, client_id=f"ev-{uuid.uuid4().hex[:6]}")) as pub:
        async with running_ingestor(settings, pool) as ing:
            ing.consumer.ack_many = lambda msgs: 0  # crash between commit and ack
            for p in packets:
                pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", p)
            assert pub.wait_acked(10)
            await wait_until(lambda: ing.stats.messages >= 3, event=ing.committed)
    first = await _events(pool, mn)
    assert len(first) == 3
    async with running_ingestor(settings, pool) as ing2:  # same session: the 3 messages come again
        await wait_until(lambda: ing2.stats.messages >= 3, event=ing2.committed)
        assert ing2.stats.records == 0 and ing2.stats.duplicates == 3 + 1  # 3 events, 1 reading
    assert await _events(pool, mn) == first
    # a station resending the same packet (its answer was lost) is the same event too
    with MqttPublisher(mqtt_params(settings, client_id=f"ev-{uuid.uuid4().hex[:6]}")) as pub:
        async with running_ingestor(settings, pool) as ing3:
            pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", packets[1])
            assert pub.wait_acked(10)
            await wait_until(lambda: ing3.stats.messages >= 1, event=ing3.committed)
    assert await _events(pool, mn) == first

    # the gateway's sink retrying rows whose commit it could not confirm: written once
    phone = _phone()
    async with pool.acquire() as con:
        await upsert_device(con, DeviceSpec(phone, REGION, "vehicle", "jt808"))
    sink = DeadLetterSink(pool)
    row = event_row(phone, {"kind": "jt808_auth", "phone": phone, "result": "ok"}, time.time_ns())
    sink.add_event(row)
    await sink.flush()
    sink.add_event(row)
    await sink.flush()
    assert sink.events_written == 1 and len(await _events(pool, phone)) == 1
    # a row the database refuses is dropped, not retried for ever ahead of the dead letters
    sink.add("gateway/jt808/test", phone, "jt808", "gateway:bad_checksum", "test", b"\x7e")
    sink.add_event((time.time_ns(), phone, "jt808_auth", None, "{not json"))
    await sink.flush()
    assert (sink.written, sink.dropped, sink.events_written) == (1, 1, 1)
    async with pool.acquire() as con:
        assert await con.fetchval("SELECT count(*) FROM dead_letters WHERE device_id = $1", phone) == 1


async def test_a_malformed_event_refuses_its_message_only(settings, pool, monkeypatch):
    """An event that cannot be stored dead-letters its message (bad_event) before the transaction: the
    rest of the batch is written."""
    mn, good = _mn(), _mn()
    async with pool.acquire() as con:
        for d in (mn, good):
            await upsert_device(con, DeviceSpec(d, REGION, "pollution", "hj212", secrets={"hj212_pw": "123456"}))
    real = pipeline.decode_message

    def with_bad_event(stream, kind, payload, now_ns, limits):
        decoded = real(stream, kind, payload, now_ns, limits)
        if mn.encode() in payload:
            decoded.events.append({"kind": "hj212_equipment_state", "equipment": {"SB1": {1, 2}}})  # a set
        return decoded

    monkeypatch.setattr(pipeline, "decode_message", with_bad_event)
    t0 = (time.time_ns() // NS - 600) * NS
    future = time.time_ns() + 86400 * NS
    with MqttPublisher(mqtt_params(settings, client_id=f"ev-{uuid.uuid4().hex[:6]}")) as pub:
        async with running_ingestor(settings, pool) as ing:
            pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", _upload_with_bad_value(mn, t0))
            pub.publish(f"wl/{REGION}/pollution/{good}/hj212", _upload_with_bad_value(good, t0))
            pub.publish(f"wl/{REGION}/pollution/{good}/hj212", _state_packet(good, t0, 2))
            pub.publish(f"wl/{REGION}/pollution/{good}/hj212", _state_packet(good, future, 2))  # time policy
            assert pub.wait_acked(10)
            await wait_until(lambda: ing.stats.messages >= 4, event=ing.committed)
    async with pool.acquire() as con:
        dead = {(r["device_id"], r["reason"]) for r in await con.fetch(
            "SELECT device_id, reason FROM dead_letters WHERE device_id = ANY($1)", [mn, good])}
        readings = await con.fetchval(
            "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id = ANY($1)", [mn, good])
    assert dead == {(mn, "bad_event"), (good, "ts_in_future")}
    assert readings == 1  # the good device's upload; the refused message is refused whole
    assert [r["kind"] for r in await _events(pool, good)] == ["hj212_bad_values", "hj212_equipment_state"]
    assert await _events(pool, mn) == []


def test_event_rows_time_code_and_refusals():
    ts = 1_795_658_400 * NS
    # own time wins; else the newest record's; else the receive time
    assert event_row("D1", {"kind": "cjt188", "ts_ns": ts, "status": "0400"}, 5)[0:4] == (ts, "D1", "cjt188", "0400")
    assert event_row("D1", {"kind": "dlt645", "ts_ns": None, "error_code": 4}, 5)[0::3] == (5, "04")
    assert event_row("D1", {"kind": "jt808_auth", "result": "ok", "error_code": 1}, 5)[3] == "ok"
    from wulian.core.model import Decoded, Position
    decoded = Decoded(positions=[Position(ts, 23.0, 116.0), Position(ts + NS, 23.0, 116.0)],
                      events=[{"kind": "jt808_backfill", "count": 2}])
    assert [r[0] for r in event_rows("D1", decoded, 7)] == [ts + NS]
    assert [r[0] for r in event_rows("D1", Decoded(events=[{"kind": "jt808_register"}]), 7)] == [7]
    assert orjson.loads(event_row("D1", {"kind": "x", "raw": b"\x01\xab", "t": (1, 2)}, 0)[4]) == {
        "raw": "01AB", "t": [1, 2]}
    for bad in ({"ts_ns": ts}, {"kind": "Bad Kind"}, {"kind": "x", "ts_ns": "now"}, {"kind": "x", "v": object()},
                {"kind": "x", "v": 2**70}, {"kind": "x", "v": "y" * 20_000}, ["kind", "x"]):
        with pytest.raises(CodecError) as err:
            event_row("D1", bad, 0)
        assert err.value.reason == "bad_event"
