"""HJ 212 and JT/T 808 gateways over real sockets: devices -> gateway -> broker -> ingest -> database."""
import asyncio
import time
import uuid

import pytest

from wulian.core.kernels.checksums import crc_hj212
from wulian.ingest import device_secrets
from wulian.ingest.codecs import hj212, jt808
from wulian.ingest.gateways.base import AuthThrottle, GatewayConfig, GatewayLimits
from wulian.ingest.gateways.hj212_gateway import Hj212Gateway, crc_modes, restamp
from wulian.ingest.gateways.jt808_gateway import Jt808Gateway, batch_frames
from wulian.ingest.gateways.registry import DeadLetterSink, DeviceRegistry
from wulian.ingest.gateways.service import running_gateway
from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.device_store import DeviceSpec, upsert as upsert_device
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.simulators.field_devices import Hj212Station, Jt808Terminal
from tests.conftest import wait_until
from tests.test_jt808 import bare_7d_frame

REGION = "gwcity"
NS = 1_000_000_000


def _config(**limits) -> GatewayConfig:
    return GatewayConfig(region=REGION, limits=GatewayLimits(answer_timeout_s=5.0, **limits))


async def _add(pool, device_id, stream, device_type, **attrs):
    """A registry row; ``hj212_pw=`` / ``jt808_auth=`` go to the device-secret store."""
    secrets = {k: attrs.pop(k) for k in list(attrs) if k in device_secrets.KINDS}
    async with pool.acquire() as con:
        await upsert_device(con, DeviceSpec(device_id, REGION, stream, device_type, attrs=attrs, secrets=secrets))


async def _secrets(pool, device_id):
    async with pool.acquire() as con:
        return await device_secrets.get(con, device_id)


async def _fetchval(pool, sql, *args):
    async with pool.acquire() as con:
        return await con.fetchval(sql, *args)


async def _dead(pool, device_id):
    async with pool.acquire() as con:
        return sorted(r["reason"] for r in await con.fetch(
            "SELECT reason FROM dead_letters WHERE device_id = $1", device_id))


def _tag() -> str:
    return uuid.uuid4().hex[:8]


def _phone() -> str:
    return "1" + str(uuid.uuid4().int)[:10]


def _mn() -> str:
    return "88" + str(uuid.uuid4().int)[:22]


async def _read_line(reader, timeout=5.0) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)


async def _read_frame(reader, timeout=5.0) -> jt808.Jt808Message:
    start = await asyncio.wait_for(reader.readexactly(1), timeout)
    assert start == b"\x7e"
    rest = await asyncio.wait_for(reader.readuntil(b"\x7e"), timeout)
    return jt808.decode(start + rest)


def _upload(mn, pw, ts_ns, crc_mode="hj212", flag=5, value=12.5):
    return hj212.encode_data(mn=mn, pw=pw, data_time_ns=ts_ns, qn=hj212.format_china_time(ts_ns, millis=True),
                             values={"a21026": {"Rtd": value, "Flag": "N"}, "a21002": {"Rtd": 40.0, "Flag": "N"}},
                             flag=flag, crc_mode=crc_mode)


def _bad_check(frame: bytes) -> bytes:
    """The same frame with a wrong check code (properly escaped)."""
    raw = bytearray(jt808.unescape(frame[1:-1]))
    raw[-1] ^= 0x01
    return jt808.escape(bytes(raw))


class FakePublisher:
    """Holds every publish until the test resolves its PUBACK."""

    def __init__(self):
        self.sent: list[tuple[str, bytes, asyncio.Future]] = []
        self.event = asyncio.Event()

    def publish_async(self, topic, payload, qos=1):
        fut = asyncio.get_running_loop().create_future()
        self.sent.append((topic, payload, fut))
        self.event.set()
        return fut


@pytest.fixture
async def fake_gateways(pool):
    """Both gateways on free ports with a publisher the test controls."""
    pub = FakePublisher()
    sink = DeadLetterSink(pool, flush_s=0.01)
    await sink.start()
    gws = {}
    for cls in (Hj212Gateway, Jt808Gateway):
        gw = cls(DeviceRegistry(pool), pub, sink, _config(auth_fail_limit=3))
        await gw.start("127.0.0.1", 0)
        gws[cls.protocol] = gw
    yield gws, pub, sink
    for gw in gws.values():
        await gw.stop()
    await sink.stop()


# --- end to end through the real broker and ingest -----------------------------------------------

async def test_station_and_terminal_data_lands_in_database(settings, pool):
    mn, mn_modbus, phone = _mn(), _mn(), _phone()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="654321")
    await _add(pool, mn_modbus, "pollution", "hj212", hj212_pw="111111", hj212_crc="modbus")
    await _add(pool, phone, "vehicle", "jt808")
    station = Hj212Station(mn, "654321", answer_timeout_s=5)
    modbus_station = Hj212Station(mn_modbus, "111111", crc_mode="modbus", answer_timeout_s=5)
    terminal = Jt808Terminal(phone, answer_timeout_s=5)
    ts = (time.time_ns() // NS - 60) * NS
    tag = _tag()
    async with running_ingestor(settings, pool) as ing, \
            running_gateway(settings, "hj212", pool, port=0, config=_config(), client_id=f"gw-h-{tag}") as gh, \
            running_gateway(settings, "jt808", pool, port=0, config=_config(), client_id=f"gw-j-{tag}") as gj:
        for st in (station, modbus_station):
            reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
            assert await st.upload(reader, writer, bytearray(), ts)
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
        buf = bytearray()
        assert await terminal.login(reader, writer, buf)
        for k in range(3):
            frame, serial = terminal._frame(0x0200, terminal.location(ts + k * 10 * NS))
            ans = await terminal._request(reader, writer, buf, frame, serial, 0x8001)
            assert (ans.result, ans.msg_id) == (0, 0x0200)
        writer.close()
        await wait_until(lambda: ing.stats.messages >= 5, event=ing.committed)
        assert gh.stats.answered == 2 and gj.stats.answered >= 4  # 3 reports + the auth answer
    sql = "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id = $1"
    assert await _fetchval(pool, sql, mn) == 13  # 10 pollutants, 3 of them with ZsRtd too
    assert await _fetchval(pool, sql, mn_modbus) == 13  # accepted under its tolerated CRC, re-stamped
    assert await _fetchval(pool, sql + " AND r.time = to_timestamp($2)", mn, ts / NS) == 13
    rows = await _fetchval(pool, "SELECT count(*) FROM vehicle_positions p JOIN devices d ON d.id = p.device "
                                 "WHERE d.device_id = $1 AND p.mileage_km > 0", phone)
    assert rows == 3
    assert await _secrets(pool, phone) == {device_secrets.JT808_AUTH: terminal.auth_code}
    attrs = await _fetchval(pool, "SELECT attrs::text FROM devices WHERE device_id = $1", phone)
    assert "jt808_terminal" in attrs and terminal.auth_code not in attrs


async def test_raw_hj212_and_jt808_over_mqtt_land_in_database(settings, pool):
    """Topic kinds hj212/jt808 carry raw packets; a broken one is dead-lettered with its reason."""
    mn, phone = _mn(), _phone()
    ts = (time.time_ns() // NS - 120) * NS
    good = _upload(mn, "123456", ts)
    bad = good[:-6] + (b"0000" if good[-6:-2] != b"0000" else b"1111") + b"\r\n"
    frame = jt808.encode(0x0200, phone, 7, jt808.location_body(ts_ns=ts, lat=23.1, lon=116.6, speed_kmh=30))
    bad_frame = _bad_check(frame)
    with MqttPublisher(mqtt_params(settings, client_id=f"raw-{_tag()}")) as pub:
        async with running_ingestor(settings, pool) as ing:
            pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", good)
            pub.publish(f"wl/{REGION}/pollution/{mn}/hj212", bad)
            pub.publish(f"wl/{REGION}/vehicle/{phone}/jt808", frame)
            pub.publish(f"wl/{REGION}/vehicle/{phone}/jt808", bad_frame)
            assert pub.wait_acked(10)
            await wait_until(lambda: ing.stats.messages >= 4, event=ing.committed)
    sql = "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id = $1"
    assert await _fetchval(pool, sql, mn) == 2
    assert await _fetchval(pool, "SELECT count(*) FROM vehicle_positions p JOIN devices d ON d.id = p.device "
                                 "WHERE d.device_id = $1", phone) == 1
    assert await _dead(pool, mn) == ["bad_crc"]
    assert await _dead(pool, phone) == ["bad_checksum"]


# --- answers after PUBACK ------------------------------------------------------------------------

async def test_hj212_answer_only_after_puback(pool, fake_gateways):
    gws, pub, _ = fake_gateways
    mn = _mn()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="123456")
    ts = (time.time_ns() // NS) * NS
    reader, writer = await asyncio.open_connection("127.0.0.1", gws["hj212"].port)
    writer.write(_upload(mn, "123456", ts))
    await wait_until(lambda: len(pub.sent) == 1, event=pub.event)
    topic, payload, fut = pub.sent[0]
    assert topic == f"wl/{REGION}/pollution/{mn}/hj212" and hj212.decode(payload).mn == mn
    read = asyncio.ensure_future(_read_line(reader))
    await asyncio.sleep(0.2)  # nothing to await: the absence of an answer before the PUBACK
    assert not read.done()
    fut.set_result(True)
    answer = hj212.decode(await read)
    assert (answer.cn, answer.st, answer.qn) == ("9014", "91", hj212.format_china_time(ts, millis=True))
    # Flag without bit A: published, never answered; a refused publish is not answered either
    writer.write(_upload(mn, "123456", ts + NS, flag=4))
    writer.write(_upload(mn, "123456", ts + 2 * NS))
    await wait_until(lambda: len(pub.sent) == 3, event=pub.event)
    pub.sent[1][2].set_result(True)
    pub.sent[2][2].set_result(False)
    writer.write(_upload(mn, "123456", ts + 3 * NS))
    await wait_until(lambda: len(pub.sent) == 4, event=pub.event)
    pub.sent[3][2].set_result(True)
    answer = hj212.decode(await _read_line(reader))
    assert answer.qn == hj212.format_china_time(ts + 3 * NS, millis=True)  # the next answer is for upload 4
    assert gws["hj212"].stats.publish_failures == 1
    writer.close()


async def test_jt808_register_auth_then_location_answered_after_puback(pool, fake_gateways):
    gws, pub, sink = fake_gateways
    phone = _phone()
    await _add(pool, phone, "vehicle", "jt808")
    reader, writer = await asyncio.open_connection("127.0.0.1", gws["jt808"].port)
    body = jt808.location_body(ts_ns=time.time_ns(), lat=23.3, lon=116.6)
    writer.write(jt808.encode(0x0200, phone, 1, body))  # before authentication: refused
    ans = await _read_frame(reader)
    assert (ans.msg_id, ans.payload.result, ans.payload.serial) == (0x8001, 1, 1)
    writer.write(jt808.encode(0x0100, phone, 2, jt808.register_body(
        province=44, city=500, maker="ACME", model="M1", terminal_id="T1", plate_color=1, plate="粤D12345")))
    reg = await _read_frame(reader)
    assert reg.msg_id == 0x8100 and reg.payload.result == 0 and reg.payload.auth_code
    writer.write(jt808.encode(0x0102, phone, 3, jt808.auth_body(reg.payload.auth_code)))
    ans = await _read_frame(reader)
    assert (ans.payload.msg_id, ans.payload.result) == (0x0102, 0)
    writer.write(jt808.encode(0x0200, phone, 4, body))
    await wait_until(lambda: len(pub.sent) == 1, event=pub.event)
    read = asyncio.ensure_future(_read_frame(reader))
    await asyncio.sleep(0.2)  # nothing to await: no answer before the PUBACK
    assert not read.done()
    pub.sent[0][2].set_result(True)
    ans = await read
    assert (ans.payload.serial, ans.payload.msg_id, ans.payload.result) == (4, 0x0200, 0)
    writer.write(jt808.encode(0x0200, phone, 5, body))
    await wait_until(lambda: len(pub.sent) == 2, event=pub.event)
    pub.sent[1][2].set_result(False)  # the broker refused it: the terminal is told "failed"
    ans = await _read_frame(reader)
    assert (ans.payload.serial, ans.payload.result) == (5, 1)
    await sink.flush()
    assert await _dead(pool, phone) == ["gateway:not_authenticated"]
    writer.close()


async def test_jt808_registration_records_the_terminal_edition(pool, fake_gateways):
    """The 0x0100 body's layout tells 2011, 2013 and 2019 apart; the registry keeps it (devices.
    protocol_edition) so the vehicle rules read the terminal's alarm bits with its own table."""
    gws, _, _ = fake_gateways
    for layout in ("2011", "2013", "2019"):
        phone = _phone()
        await _add(pool, phone, "vehicle", "jt808")
        reader, writer = await asyncio.open_connection("127.0.0.1", gws["jt808"].port)
        writer.write(jt808.encode(0x0100, phone, 1, jt808.register_body(
            province=44, city=500, maker="ACME", model="M1", terminal_id="T1", plate_color=1, plate="粤D12345",
            layout=layout), edition="2019" if layout == "2019" else "2013"))
        reg = await _read_frame(reader)
        writer.close()
        assert reg.payload.result == 0
        assert await _fetchval(pool, "SELECT protocol_edition FROM devices WHERE device_id = $1", phone) == int(layout)


async def test_jt808_subpackaged_batch_is_joined_and_republished(pool, fake_gateways):
    gws, pub, _ = fake_gateways
    phone = _phone()
    await _add(pool, phone, "vehicle", "jt808", jt808_auth="code-1")
    reader, writer = await asyncio.open_connection("127.0.0.1", gws["jt808"].port)
    writer.write(jt808.encode(0x0102, phone, 1, jt808.auth_body("code-1")))
    assert (await _read_frame(reader)).payload.result == 0
    t0 = (time.time_ns() // NS - 600) * NS
    bodies = [jt808.location_body(ts_ns=t0 + k * NS, lat=23.0 + k / 1000, lon=116.0) for k in range(40)]
    whole = jt808.batch_body(bodies, kind=1)
    half = len(whole) // 2
    writer.write(jt808.encode(0x0704, phone, 10, whole[:half], package=(2, 1)))
    writer.write(jt808.encode(0x0704, phone, 11, whole[half:], package=(2, 2)))
    await wait_until(lambda: len(pub.sent) >= 2, event=pub.event)
    positions = []
    for _, payload, fut in pub.sent:
        msg = jt808.decode(payload)
        assert msg.msg_id == 0x0704 and msg.body_len <= 1023 and not msg.subpackage
        positions += [loc.ts_ns for loc in msg.payload.locations]
        fut.set_result(True)
    assert positions == [t0 + k * NS for k in range(40)]
    answers = [await _read_frame(reader), await _read_frame(reader)]
    assert [(a.payload.serial, a.payload.result) for a in answers] == [(10, 0), (11, 0)]
    writer.close()


# --- identity ------------------------------------------------------------------------------------

async def test_auth_failures_rejected_counted_and_throttled(pool, fake_gateways):
    gws, pub, sink = fake_gateways
    gh, gj = gws["hj212"], gws["jt808"]
    mn, phone, stranger = _mn(), _phone(), _phone()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="123456")
    await _add(pool, phone, "vehicle", "jt808", jt808_auth="right")
    ts = time.time_ns()
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(_upload(mn, "999999", ts))  # wrong PW
    ans = hj212.decode(await _read_line(reader))
    assert (ans.cn, ans.param("QnRtn")) == ("9011", "3")
    writer.write(_upload(_mn(), "123456", ts))  # unknown MN
    ans = hj212.decode(await _read_line(reader))
    assert (ans.cn, ans.param("QnRtn")) == ("9011", "4")
    writer.close()
    assert gh.stats.auth_failures == 2 and not pub.sent
    await sink.flush()
    assert await _dead(pool, mn) == ["gateway:bad_pw"]

    reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
    writer.write(jt808.encode(0x0102, phone, 1, jt808.auth_body("wrong")))
    assert (await _read_frame(reader)).payload.result == 1
    writer.write(jt808.encode(0x0100, stranger, 2, jt808.register_body(
        province=44, city=500, maker="X", model="Y", terminal_id="Z", plate_color=1, plate="A")))
    assert (await _read_frame(reader)).payload.result == 4  # terminal not in the database
    assert gj.stats.auth_failures == 2
    # a third failure from this IP reaches the limit (3): answered, then the connection is closed
    writer.write(jt808.encode(0x0102, phone, 3, jt808.auth_body("wrong again")))
    assert (await _read_frame(reader)).payload.result == 1
    assert await asyncio.wait_for(reader.read(), 5) == b""
    # ... and the IP is refused for the window
    reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert gj.stats.refused["auth_throttled"] == 1
    gj.throttle = AuthThrottle(3, 60.0)  # the same IP may come back after the window
    reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
    writer.write(jt808.encode(0x0102, phone, 4, jt808.auth_body("right")))
    assert (await _read_frame(reader)).payload.result == 0
    writer.close()


async def test_auto_provisioning_registers_unknown_devices(pool, fake_gateways):
    gws, pub, _ = fake_gateways
    gj, gh = gws["jt808"], gws["hj212"]
    for gw in (gj, gh):
        gw.config = GatewayConfig(region=REGION, auto_provision=True, limits=gw.limits)
    phone, mn = _phone(), _mn()
    reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
    writer.write(jt808.encode(0x0100, phone, 1, jt808.register_body(
        province=44, city=500, maker="X", model="Y", terminal_id="Z", plate_color=1, plate="A")))
    reg = await _read_frame(reader)
    assert reg.payload.result == 0
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(hj212.encode_data(mn=mn, pw="777777", st="22", data_time_ns=time.time_ns(),
                                   values={"a34004": {"Rtd": 35}}, flag=4))
    await wait_until(lambda: any(t.endswith(f"/{mn}/hj212") for t, _, _ in pub.sent), event=pub.event)
    writer.close()
    async with pool.acquire() as con:
        rows = {r["device_id"]: r for r in await con.fetch(
            "SELECT device_id, region, stream, auto_registered FROM devices WHERE device_id = ANY($1)", [phone, mn])}
    assert (rows[phone]["stream"], rows[phone]["auto_registered"]) == ("vehicle", True)
    assert (rows[mn]["stream"], rows[mn]["region"]) == ("air", REGION)
    assert await _secrets(pool, mn) == {device_secrets.HJ212_PW: "777777"}


# --- malformed input -----------------------------------------------------------------------------

async def test_malformed_input_dead_lettered_and_gateway_survives(pool, fake_gateways):
    gws, pub, sink = fake_gateways
    gh, gj = gws["hj212"], gws["jt808"]
    mn, phone = _mn(), _phone()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="123456")
    await _add(pool, phone, "vehicle", "jt808", jt808_auth="ok")
    ts = time.time_ns()
    good = _upload(mn, "123456", ts)
    bad_crc = good[:-6] + b"%04X" % (crc_hj212(good[6:-6]) ^ 0x1111) + b"\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(b"hello gateway\r\n" + bad_crc + b"##00x5garbage\r\n")
    ans = hj212.decode(await _read_line(reader))
    assert (ans.cn, ans.param("QnRtn")) == ("9011", "9")  # CRC error, per HJ 212-2017 Table 7
    writer.write(b"##" + b"9" * 6000)  # no packet ever ends: over the frame limit, connection dropped
    assert await asyncio.wait_for(reader.read(), 5) == b""

    reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
    frame = jt808.encode(0x0102, phone, 1, jt808.auth_body("ok"))
    writer.write(b"\x7e\x01\x02\x7d\x05\x7e" + _bad_check(frame))
    writer.write(frame)  # the good frame after two bad ones is still answered
    ans = await _read_frame(reader)
    assert (ans.payload.serial, ans.payload.result) == (1, 0)
    writer.close()
    await sink.flush()
    assert await _dead(pool, mn) == ["gateway:bad_crc"]
    async with pool.acquire() as con:
        reasons = {r["reason"] for r in await con.fetch(
            "SELECT reason FROM dead_letters WHERE topic LIKE 'gateway/%' AND time > now() - interval '1 minute'")}
    assert {"gateway:bad_frame", "gateway:too_large", "gateway:bad_escape"} <= reasons
    assert "gateway:bad_checksum" in reasons
    # still serving
    reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
    writer.write(_upload(mn, "123456", ts + NS))
    await wait_until(lambda: len(pub.sent) == 1, event=pub.event)
    pub.sent[0][2].set_result(True)
    assert hj212.decode(await _read_line(reader)).cn == "9014"
    writer.close()


async def test_jt808_bare_7d_check_code_accepted_and_counted(pool, fake_gateways):
    gws, pub, sink = fake_gateways
    gj = gws["jt808"]
    phone = _phone()
    await _add(pool, phone, "vehicle", "jt808", jt808_auth="ok")
    reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
    writer.write(jt808.encode(0x0102, phone, 1, jt808.auth_body("ok")))
    assert (await _read_frame(reader)).payload.result == 0
    body = jt808.location_body(ts_ns=time.time_ns(), lat=23.3, lon=116.6)
    frame, serial = bare_7d_frame(0x0200, body, phone.rjust(12, "0"))
    writer.write(frame)
    await wait_until(lambda: len(pub.sent) == 1, event=pub.event)
    assert pub.sent[0][1] == frame  # published as the terminal sent it: ingest repairs and counts it too
    pub.sent[0][2].set_result(True)
    ans = await _read_frame(reader)
    assert (ans.payload.serial, ans.payload.result) == (serial, 0)
    assert dict(gj.stats.repaired) == {"bare_7d_check": 1} and gj.stats.frames["accepted"] == 1
    writer.close()


async def test_connection_limit_and_idle_timeout(pool):
    pub = FakePublisher()
    sink = DeadLetterSink(pool)
    gw = Jt808Gateway(DeviceRegistry(pool), pub, sink, _config(max_connections=1, idle_timeout_s=0.3))
    port = await gw.start("127.0.0.1", 0)
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        await wait_until(lambda: gw.stats.connections == 1)
        r2, w2 = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r2.read(), 5) == b""  # over the limit: closed at once
        assert await asyncio.wait_for(r1.read(), 5) == b""  # silent for longer than the idle timeout
        assert gw.stats.refused["too_many_connections"] == 1 and gw.stats.refused["idle"] == 1
    finally:
        await gw.stop()


# --- pure helpers --------------------------------------------------------------------------------

def test_crc_modes_and_restamp():
    assert crc_modes({}) == ("hj212",)
    assert crc_modes({"hj212_crc": "modbus, bogus,modbus_le"}) == ("hj212", "modbus", "modbus_le")
    pkt = hj212.encode(cn="2011", mn="M1", cp="DataTime=20260101000000;a21026-Rtd=1", crc_mode="modbus_le")
    fixed = restamp(pkt)
    assert hj212.decode(fixed).crc_mode == "hj212" and fixed[:-6] == pkt[:-6]


def test_batch_frames_split_under_the_body_limit():
    t0 = 1_790_000_000 * NS
    bodies = [jt808.location_body(ts_ns=t0 + k * NS, lat=23.0, lon=116.0, items=[(0x01, b"\0\0\0\1")])
              for k in range(100)]
    msg = jt808.Jt808Message(0x0704, 0, "013800000000", 9, "2013", jt808.batch_body(bodies, 1))
    frames = [jt808.decode(f) for f in batch_frames(msg, 9)]
    assert len(frames) > 1 and all(f.body_len <= 1023 for f in frames)
    assert all(f.payload.kind == 1 for f in frames)
    assert [loc.ts_ns for f in frames for loc in f.payload.locations] == [t0 + k * NS for k in range(100)]


def test_auth_throttle_window():
    t = AuthThrottle(2, 10.0)
    assert not t.fail("a", 0.0) and not t.blocked("a", 1.0)
    assert t.fail("a", 1.0) and t.blocked("a", 5.0) and not t.blocked("b", 5.0)
    assert not t.blocked("a", 11.5)  # the first failure left the window


# --- fuzzing: a session never raises, whatever the bytes ------------------------------------------

async def test_mutated_frames_never_raise_in_a_session(pool):
    import random

    from wulian.ingest.gateways.base import Pending

    pub = FakePublisher()
    sink = DeadLetterSink(pool)
    mn, phone = _mn(), _phone()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="123456", hj212_crc="modbus")
    await _add(pool, phone, "vehicle", "jt808", jt808_auth="ok")
    hg = Hj212Gateway(DeviceRegistry(pool), pub, sink, _config())
    jg = Jt808Gateway(DeviceRegistry(pool), pub, sink, _config())
    hs, js = hg.session("10.0.0.1"), jg.session("10.0.0.2")
    js.authenticated, js.device_id, js.device = True, phone, await jg.registry.get(phone)
    js.auth_code = "ok"
    ts = time.time_ns()
    seeds_h = [_upload(mn, "123456", ts), _upload(mn, "123456", ts, crc_mode="modbus"),
               hj212.encode(cn="2021", mn=mn, pw="123456", cp="DataTime=20260101000000;SB1-RS=1")]
    seeds_j = [jt808.encode(0x0200, phone, 1, jt808.location_body(ts_ns=ts, lat=23.0, lon=116.0,
                                                                   items=[(0x01, b"\0\0\0\1")])),
               jt808.encode(0x0704, phone, 2, jt808.batch_body([jt808.location_body(ts_ns=ts, lat=1, lon=2)])),
               jt808.encode(0x0704, phone, 3, b"\x00\x02\x00\x00\x05abcde", package=(2, 1)),
               jt808.encode(0x0100, phone, 4, b"\x00" * 40), jt808.encode(0x0102, phone, 5, b"ok")]
    rng = random.Random(212808)
    for session, seeds in ((hs, seeds_h), (js, seeds_j)):
        for _ in range(300):
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 4)):
                op, i = rng.randrange(3), rng.randrange(len(data))
                if op == 0:
                    data[i] = rng.randrange(256)
                elif op == 1:
                    del data[i]
                else:
                    data.insert(i, rng.choice(b"#&;=,\x7e\x7d\x00\xff"))
            out = await session.on_frame(bytes(data))
            assert out is None or isinstance(out, (bytes, Pending))
            session.closing = False
            hg.throttle = jg.throttle = AuthThrottle(10**9, 1.0)
    assert hg.stats.dead_letters > 0 and jg.stats.dead_letters > 0
    for _, _, fut in pub.sent:
        fut.cancel()


# --- simulators ------------------------------------------------------------------------------------

async def test_simulated_terminal_registers_and_resends_unanswered_reports(pool):
    pub = FakePublisher()
    sink = DeadLetterSink(pool)
    phone = _phone()
    await _add(pool, phone, "vehicle", "jt808")
    gw = Jt808Gateway(DeviceRegistry(pool), pub, sink, GatewayConfig(
        region=REGION, limits=GatewayLimits(answer_timeout_s=0.3)))
    port = await gw.start("127.0.0.1", 0)
    terminal = Jt808Terminal(phone, answer_timeout_s=1.0, retries=3)  # no auth code yet: registers first
    stop = asyncio.Event()
    task = asyncio.create_task(terminal.run("127.0.0.1", port, 60.0, stop))
    try:
        await wait_until(lambda: len(pub.sent) == 1, event=pub.event)  # first report: never acknowledged
        await wait_until(lambda: len(pub.sent) == 2, event=pub.event)  # ... so the terminal sends it again
        assert pub.sent[0][1] == pub.sent[1][1]  # the same frame: same serial and time
        pub.sent[1][2].set_result(True)
        await wait_until(lambda: terminal.stats.answered == 1)
        assert terminal.stats.resent == 1 and terminal.auth_code
        assert gw.stats.publish_failures == 1
    finally:
        stop.set()
        await task
        await gw.stop()


async def test_simulated_station_retries_until_answered(pool):
    pub = FakePublisher()
    sink = DeadLetterSink(pool)
    mn = _mn()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="123456")
    gw = Hj212Gateway(DeviceRegistry(pool), pub, sink, GatewayConfig(
        region=REGION, limits=GatewayLimits(answer_timeout_s=0.3)))
    port = await gw.start("127.0.0.1", 0)
    station = Hj212Station(mn, "123456", answer_timeout_s=1.0, retries=3)
    stop = asyncio.Event()
    task = asyncio.create_task(station.run("127.0.0.1", port, 60.0, stop))
    try:
        await wait_until(lambda: len(pub.sent) == 2, event=pub.event)
        assert pub.sent[0][1] == pub.sent[1][1]
        pub.sent[1][2].set_result(True)
        await wait_until(lambda: station.stats.answered == 1)
        assert station.stats.resent == 1
        assert hj212.to_decoded(hj212.decode(pub.sent[1][1])).readings  # 10 pollutants as readings
    finally:
        stop.set()
        await task
        await gw.stop()


async def test_modbus_crc_refused_unless_enabled_for_the_device(pool, fake_gateways):
    gws, pub, sink = fake_gateways
    mn = _mn()
    await _add(pool, mn, "pollution", "hj212", hj212_pw="123456")  # no hj212_crc: Appendix A only
    reader, writer = await asyncio.open_connection("127.0.0.1", gws["hj212"].port)
    writer.write(_upload(mn, "123456", time.time_ns(), crc_mode="modbus"))
    ans = hj212.decode(await _read_line(reader))
    assert (ans.cn, ans.param("QnRtn")) == ("9011", "9") and not pub.sent
    writer.close()
    await sink.flush()
    assert await _dead(pool, mn) == ["gateway:bad_crc"]


# --- removal: every credential revoked, caches and open connections included ------------------------

def _device_cli(s, action, device_id, **kw):
    import argparse

    from wulian.cli.commands import device as cmd

    args = argparse.Namespace(device_id=device_id, password_file=None, no_broker=False, region=REGION,
                              stream=kw.get("stream", "pollution"), type=kw.get("type"), name=None,
                              mqtt_password=None, hj212_pw=None, hj212_crc=None)
    return (cmd._add if action == "add" else cmd._remove)(args, s)


async def test_removed_device_is_refused_by_gateways_with_it_cached_and_connected(pool, fake_gateways, test_dsn,
                                                                                  tmp_path):
    """`wulian device remove` on a station and a terminal that are connected, authenticated and in the
    gateways' caches: their next packet on the open connection is refused and the connection closed;
    new connections, re-registration and auto-provisioning do not bring them back."""
    from wulian.ingest.provisioning import read_password_file
    from wulian.settings import DbSettings, Settings, StackSettings

    gws, pub, sink = fake_gateways
    gh, gj = gws["hj212"], gws["jt808"]
    s = Settings(db=DbSettings(dsn=test_dsn), stack=StackSettings(dir=tmp_path))
    mn, phone = _mn(), _phone()
    pw = (await _device_cli(s, "add", mn, type="hj212"))["hj212_pw"]
    await _device_cli(s, "add", phone, stream="vehicle", type="jt808")
    ts = (time.time_ns() // NS) * NS
    # the station: one upload accepted and answered
    hr, hw = await asyncio.open_connection("127.0.0.1", gh.port)
    hw.write(_upload(mn, pw, ts))
    await wait_until(lambda: len(pub.sent) == 1, event=pub.event)
    pub.sent[0][2].set_result(True)
    assert hj212.decode(await _read_line(hr)).cn == "9014"
    # the terminal: registered, authenticated, one report accepted and answered
    jr, jw = await asyncio.open_connection("127.0.0.1", gj.port)
    jw.write(jt808.encode(0x0100, phone, 1, jt808.register_body(
        province=44, city=500, maker="X", model="Y", terminal_id="Z", plate_color=1, plate="A")))
    code = (await _read_frame(jr)).payload.auth_code
    jw.write(jt808.encode(0x0102, phone, 2, jt808.auth_body(code)))
    assert (await _read_frame(jr)).payload.result == 0
    body = jt808.location_body(ts_ns=ts, lat=23.3, lon=116.6)
    jw.write(jt808.encode(0x0200, phone, 3, body))
    await wait_until(lambda: len(pub.sent) == 2, event=pub.event)
    pub.sent[1][2].set_result(True)
    assert (await _read_frame(jr)).payload.result == 0
    assert gh.registry.cached(mn) and gj.registry.cached(phone) and gh.registry.listening

    assert await _device_cli(s, "remove", mn) == {
        "device_id": mn, "removed": True, "secrets_revoked": ["hj212_pw"], "credentials_removed": True}
    assert await _device_cli(s, "remove", phone) == {
        "device_id": phone, "removed": True, "secrets_revoked": ["jt808_auth"], "credentials_removed": True}
    assert not {mn, phone} & set(read_password_file(tmp_path / "mosquitto" / "passwd"))
    assert await _secrets(pool, mn) == {} and await _secrets(pool, phone) == {}
    # NOTIFY is asynchronous: the caches drop the devices milliseconds after the commit; wait for that
    # rather than race it (a lookup that misses the cache reads the revocation from the database anyway)
    await wait_until(lambda: not gh.registry.cached(mn), event=gh.registry.invalidated)
    await wait_until(lambda: not gj.registry.cached(phone), event=gj.registry.invalidated)

    hw.write(_upload(mn, pw, ts + NS))  # the same open connection
    ans = hj212.decode(await _read_line(hr))
    assert (ans.cn, ans.param("QnRtn")) == ("9011", "4")
    assert await asyncio.wait_for(hr.read(), 5) == b""  # and hung up
    jw.write(jt808.encode(0x0200, phone, 4, body))
    ans = await _read_frame(jr)
    assert (ans.payload.serial, ans.payload.result) == (4, 1)
    assert await asyncio.wait_for(jr.read(), 5) == b""
    assert len(pub.sent) == 2  # nothing more was published
    # new connections: the old PW, the old code, a fresh registration (auto-provisioning on) are refused
    hr, hw = await asyncio.open_connection("127.0.0.1", gh.port)
    hw.write(_upload(mn, pw, ts + 2 * NS))
    assert hj212.decode(await _read_line(hr)).param("QnRtn") == "4"
    gj.config = GatewayConfig(region=REGION, auto_provision=True, limits=gj.limits)
    jr, jw = await asyncio.open_connection("127.0.0.1", gj.port)
    jw.write(jt808.encode(0x0102, phone, 5, jt808.auth_body(code)))
    assert (await _read_frame(jr)).payload.result == 1
    jr, jw = await asyncio.open_connection("127.0.0.1", gj.port)
    jw.write(jt808.encode(0x0100, phone, 6, jt808.register_body(
        province=44, city=500, maker="X", model="Y", terminal_id="Z", plate_color=1, plate="A")))
    assert (await _read_frame(jr)).payload.result == 4  # terminal not in the database
    assert len(pub.sent) == 2 and await _secrets(pool, phone) == {}
    await sink.flush()
    assert await _dead(pool, mn) == ["gateway:removed_device"] * 2
    assert await _dead(pool, phone) == ["gateway:removed_device"] * 3
    # `wulian device add` brings a removed device back, with a new PW
    pw2 = (await _device_cli(s, "add", mn, type="hj212"))["hj212_pw"]
    await wait_until(lambda: not gh.registry.cached(mn), event=gh.registry.invalidated)
    hr, hw = await asyncio.open_connection("127.0.0.1", gh.port)
    hw.write(_upload(mn, pw2, ts + 3 * NS))
    await wait_until(lambda: len(pub.sent) == 3, event=pub.event)
    pub.sent[2][2].set_result(True)
    assert hj212.decode(await _read_line(hr)).cn == "9014"
    hw.close()


async def test_registry_caches_only_while_listening_for_credential_changes(pool):
    """No cache without the LISTEN connection (never started, or lost); changes made by hand in SQL are
    announced by the triggers too."""
    dev = _mn()
    await _add(pool, dev, "pollution", "hj212", hj212_pw="123456")
    reg = DeviceRegistry(pool)
    assert (await reg.get(dev)).secrets == {device_secrets.HJ212_PW: "123456"}
    assert not reg.cached(dev)  # not started: every lookup asks the database
    await reg.start()
    try:
        assert reg.listening and (await reg.get(dev)).secrets and reg.cached(dev)
        async with pool.acquire() as con:
            await con.execute("UPDATE device_secrets SET secret = '654321' WHERE device_id = $1", dev)
        await wait_until(lambda: not reg.cached(dev), event=reg.invalidated)
        assert (await reg.get(dev)).secrets == {device_secrets.HJ212_PW: "654321"} and reg.cached(dev)
        async with pool.acquire() as con:  # the LISTEN connection dies: the cache is dropped and off
            assert await con.fetchval("SELECT pg_terminate_backend($1)", reg.listen_pid)
        await wait_until(lambda: not reg.listening)
        assert not reg.cached(dev)
        async with pool.acquire() as con:
            await con.execute("UPDATE devices SET removed_at = now() WHERE device_id = $1", dev)
        assert (await reg.get(dev)).removed and not reg.cached(dev)
        await wait_until(lambda: reg.listening)  # back (after RELISTEN_S): caching again
        assert (await reg.get(dev)).removed and reg.cached(dev)
    finally:
        await reg.stop()


async def test_registry_uses_the_last_known_record_while_the_database_is_away(pool, test_dsn):
    """Stale-if-error: nobody can revoke a credential while the database is away, so a known device
    keeps its last record (as before the registry listened); an unknown one is still refused."""
    import asyncpg

    dev = _mn()
    await _add(pool, dev, "pollution", "hj212", hj212_pw="123456")
    own = await asyncpg.create_pool(test_dsn, min_size=1, max_size=1)
    reg = DeviceRegistry(own)
    assert (await reg.get(dev)).secrets and not reg.cached(dev)  # not listening: not trusted
    await own.close()  # the database is away for this registry
    assert (await reg.get(dev)).secrets == {device_secrets.HJ212_PW: "123456"}
    with pytest.raises(asyncpg.InterfaceError):
        await reg.get(_mn())
