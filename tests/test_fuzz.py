"""Bad input through the real ingest pipeline: every topic kind, mutated and truncated frames, oversized
payloads, deep JSON, NaN/Infinity, timestamps far away, unknown metrics, SQL metacharacters in every
identifier. Nothing crashes, every refused packet is one dead letter with its reason, good data in the
same batch is kept (``ingest.chaos.fuzz``)."""
import asyncio
import json
import random
import threading
import time
import uuid

import asyncpg
import orjson
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from wulian.core.const import DEVICE_ID_PATTERN, REGION_PATTERN, Kind, Stream
from wulian.ingest.batch_writer import init_connection
from wulian.ingest.chaos.fuzz import (CODECS, LIMITS, SQL_META, FuzzRunner, Packet, control_packets, fuzz_batch,
                               fuzz_packet, mutate, seed_payload)
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.codecs.registry import decode_message
from wulian.ingest.mqtt_client import InMessage, MqttPublisher
from wulian.ingest.pipeline import Ingestor
from wulian.ingest.service import mqtt_params, running_ingestor
from wulian.ingest.topics import parse_topic
from tests.conftest import wait_until

NOW_NS = time.time_ns()
NOW_MS = NOW_NS // 1_000_000
FAST = hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KINDS = sorted(CODECS)


def _decoder() -> Ingestor:
    return Ingestor(None, None)  # type: ignore[arg-type]  # decode_batch needs neither broker nor database


def _decode(packets: list[Packet]):
    msgs = [InMessage(1, i + 1, 1, p.topic, p.payload) for i, p in enumerate(packets)]
    batch = _decoder().decode_batch(msgs)
    assert len(batch.items) + len(batch.dead) == len(msgs)
    crashes = [d for d in batch.dead if d.reason == "decoder_error"]
    assert not crashes, crashes[0].detail
    assert all(d.reason for d in batch.dead)
    return batch


# -- decode only: many examples, no services -------------------------------------------------------

@FAST
@given(codec=st.sampled_from(KINDS), payload=st.binary(max_size=3000))
def test_random_bytes_never_crash_a_codec(codec, payload):
    stream, kind = CODECS[codec]
    try:
        decode_message(Stream(stream), Kind(kind), payload, NOW_NS, LIMITS)
    except CodecError as exc:
        assert exc.reason and isinstance(exc.reason, str)


@FAST
@given(seed=st.integers(0, 2**32), codec=st.sampled_from(KINDS))
def test_mutated_truncated_and_oversized_packets_are_refused_with_a_reason(seed, codec):
    rng = random.Random(seed)
    _decode([fuzz_packet(rng, codec, NOW_MS) for _ in range(20)])


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=5),
                                                        st.dictionaries(st.text(max_size=10), kids, max_size=5)),
                     max_leaves=40)


@FAST
@given(stream=st.sampled_from(list(Stream)), doc=_json, ts=st.one_of(_json_leaf, st.integers()),
       values=st.dictionaries(st.sampled_from(["SO2", "x", "", "1a", *SQL_META]), _json, max_size=4))
def test_arbitrary_json_nan_infinity_and_deep_nesting_never_crash(stream, doc, ts, values):
    records = [doc, {"ts": ts, "values": values, "lat": doc, "lon": ts, "speed": doc}, {"batch": [doc]}]
    deep = b'{"ts": 1, "values": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    packets = [Packet("t", f"wl/fz/{stream.value}/D1/telemetry", json.dumps(r).encode()) for r in records]
    packets.append(Packet("t", f"wl/fz/{stream.value}/D1/telemetry", deep))
    batch = _decode(packets)
    for it in batch.items:  # whatever was accepted is finite and inside the time policy
        for r in it.decoded.readings:
            assert r.value == r.value and abs(r.value) != float("inf")
            assert NOW_NS - LIMITS.past_limit_ns <= r.ts_ns <= NOW_NS + LIMITS.future_tolerance_ns + 60 * 10**9


@FAST
@given(segments=st.lists(st.one_of(st.sampled_from(SQL_META), st.text(max_size=12)), min_size=0, max_size=7))
def test_topics_with_sql_metacharacters_are_refused_or_match_the_grammar(segments):
    import re

    topic = "/".join(segments)
    try:
        t = parse_topic(topic)
    except CodecError as exc:
        assert exc.reason == "bad_topic"
        return
    assert re.fullmatch(REGION_PATTERN, t.region) and re.fullmatch(DEVICE_ID_PATTERN, t.device_id)
    assert not any(c in topic for c in "'\";\\% \x00")


def test_time_policy_refuses_far_past_and_future_with_distinct_reasons():
    def reason(ts_ms):
        try:
            decode_message(Stream.AIR, Kind.TELEMETRY, orjson.dumps({"ts": ts_ms, "values": {"PM25": 1}}),
                           NOW_NS, LIMITS)
        except CodecError as exc:
            return exc.reason
        return "ok"

    day = 86_400_000
    assert reason(NOW_MS) == "ok"
    assert reason(NOW_MS + 9 * 60_000) == "ok"  # within the 10-minute clock tolerance
    assert reason(NOW_MS + 11 * 60_000) == "ts_in_future"
    assert reason(NOW_MS - 3649 * day) == "ok"
    assert reason(NOW_MS - 3651 * day) == "ts_too_old"
    assert reason(0) == "ts_too_old"
    assert reason(1.8e302) == "bad_ts"  # finite in ms, infinite in ns: once a codec crash


# -- through decode + commit on the real database ---------------------------------------------------

def _with_runner(dsn: str, body):
    """Run ``body(runner, run)`` with a FuzzRunner whose pool lives on a loop in its own thread;
    ``run(coro)`` waits for a coroutine there (hypothesis drives sync functions)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def run(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    try:
        async def open_pool():
            return await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection)

        pool = run(open_pool())
        try:
            return body(FuzzRunner(pool), run)
        finally:
            run(pool.close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_fuzzed_batches_commit_with_every_refusal_dead_lettered(test_dsn):
    def body(runner, run):
        @hsettings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(seed=st.integers(0, 2**32), size=st.integers(1, 60))
        def prop(seed, size):
            run(runner.run_batch(fuzz_batch(random.Random(seed), size)))

        prop()
        return runner.report

    rep = _with_runner(test_dsn, body)
    assert rep.batches >= 25 and not rep.codec_crashes
    assert sum(rep.stored.values()) > 0 and sum(rep.rejected.values()) > 0


def test_every_hostile_kind_gets_its_reason_and_the_good_data_is_kept(test_dsn):
    dev = f"H{uuid.uuid4().hex[:8]}"
    top = f"wl/fz/air/{dev}/telemetry"
    ok = orjson.dumps({"ts": NOW_MS, "values": {"PM25": 12.0, "new_metric_" + dev: 3.0}})
    hostile = {
        "bad_json": b'{"ts": 1, "values": {"x": NaN}}',
        "too_large": orjson.dumps({"ts": NOW_MS, "values": {"x": 1}, "pad": "p" * (LIMITS.max_bytes + 1)}),
        "ts_in_future": orjson.dumps({"ts": NOW_MS + 3_600_000, "values": {"x": 1}}),
        "ts_too_old": orjson.dumps({"ts": NOW_MS - 4000 * 86_400_000, "values": {"x": 1}}),
        "bad_metric": orjson.dumps({"ts": NOW_MS, "values": {"x'; DROP TABLE readings; --": 1}}),
        "empty": b"[]",
        "bad_record": b"[1]",
    }
    packets = [Packet("ok", top, ok)]
    packets += [Packet(reason, f"wl/fz/air/{dev}{i}/telemetry", p) for i, (reason, p) in enumerate(hostile.items())]
    packets += [Packet("bad_topic", f"wl/fz/air/{dev}{m}/telemetry", ok) for m in ("'--", '"', ";b", "%", " ", "/x")]
    packets += [Packet("bad_topic", f"wl/{m}/air/{dev}/telemetry", ok) for m in ("r'1", "R", "")]
    packets += [Packet("bad_topic", f"wl/fz/air/{dev}/'; DROP TABLE devices; --", ok)]
    packets += [Packet("jt808-bad", "wl/fz/vehicle/013800138000/jt808", b"\x7e\x02\x00\x7e")]
    packets += control_packets(random.Random(1), NOW_MS)

    async def go(runner):
        await runner.run_batch(packets)
        async with runner.pool.acquire() as con:
            rows = await con.fetch("SELECT topic, reason FROM dead_letters WHERE topic = ANY($1::text[])",
                                   [p.topic for p in packets])
            stored = await con.fetchval("SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device"
                                        " WHERE d.device_id = $1", dev)
            names = await con.fetchval("SELECT count(*) FROM metrics WHERE name = $1", "new_metric_" + dev)
            tables = await con.fetchval("SELECT count(*) FROM pg_tables WHERE tablename IN ('readings', 'devices')")
        return rows, stored, names, tables

    rows, stored, names, tables = _with_runner(test_dsn, lambda r, run: run(go(r)))
    by_topic = {r["topic"]: r["reason"] for r in rows}
    for i, reason in enumerate(hostile):
        assert by_topic[f"wl/fz/air/{dev}{i}/telemetry"] == reason
    bad_topics = [p.topic for p in packets if p.codec == "bad_topic"]
    assert len(bad_topics) == 10 and all(by_topic[t] == "bad_topic" for t in bad_topics)
    assert top not in by_topic
    assert stored == 2 and names == 1 and tables == 2  # good message kept, unknown metric catalogued


# -- a smaller pass through the real broker and a running ingestor ----------------------------------

def _delivered_to_ingest(topic: str, region: str) -> bool:
    """A valid MQTT topic name that ingest's subscriptions (``wl/+/{stream}/+/+``) match; the broker
    routes others nowhere, by design."""
    parts = topic.split("/")
    return (not any(c in topic for c in "+#\x00") and len(parts) == 5 and parts[:2] == ["wl", region]
            and parts[2] in {s.value for s in Stream})


async def test_fuzz_through_the_broker_every_packet_stored_or_dead_lettered(settings, pool):
    rng = random.Random(7)
    region = f"fz{uuid.uuid4().hex[:6]}"
    packets = []
    for i in range(300):
        p = fuzz_packet(rng, KINDS[i % len(KINDS)], NOW_MS)
        topic = p.topic.replace("wl/fuzz/", f"wl/{region}/", 1)
        if _delivered_to_ingest(topic, region):
            packets.append(Packet(p.codec, topic, p.payload))
    good = control_packets(rng, NOW_MS, 5)
    good = [Packet(p.codec, p.topic.replace("wl/fuzz/", f"wl/{region}/"), p.payload, True) for p in good]
    packets += good
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"fz-{uuid.uuid4().hex[:6]}"), max_inflight=500) as pub:
            for p in packets:
                pub.publish(p.topic, p.payload)
            assert pub.wait_acked(30)
        await wait_until(lambda: ing.stats.messages >= len(packets), timeout=60, event=ing.committed)
        assert ing.stats.messages == len(packets)
    async with pool.acquire() as con:
        dead = await con.fetchval("SELECT count(*) FROM dead_letters WHERE topic LIKE $1", f"wl/{region}/%")
        crashes = await con.fetchval("SELECT count(*) FROM dead_letters WHERE topic LIKE $1 AND reason = 'decoder_error'",
                                     f"wl/{region}/%")
        devices = [p.topic.split("/")[3] for p in good]
        kept = await con.fetchval("SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device"
                                  " WHERE d.device_id = ANY($1::text[])", devices)
    assert crashes == 0
    assert kept == 2 * len(good)
    assert 0 < dead < len(packets) and ing.stats.dead_letters == dead


async def test_payload_limits_at_broker_and_at_ingest(settings, pool):
    """Over 1 MiB the broker refuses the packet (the publisher is not wedged by it); over the ingest
    limit (256 KiB by default) the message is a ``too_large`` dead letter; the next message flows."""
    dev = f"L{uuid.uuid4().hex[:8]}"
    topic = f"wl/limits/air/{dev}/telemetry"
    big = orjson.dumps({"ts": NOW_MS, "values": {"x": 1}, "pad": "p" * (1100 * 1024)})
    large = orjson.dumps({"ts": NOW_MS, "values": {"x": 1}, "pad": "p" * (300 * 1024)})
    ok = orjson.dumps({"ts": NOW_MS, "values": {"PM25": 5.0}})
    async with running_ingestor(settings, pool) as ing:
        with MqttPublisher(mqtt_params(settings, client_id=f"lim-{uuid.uuid4().hex[:6]}")) as pub:
            assert pub.publish(topic, big).rc != 0
            pub.publish(topic, large)
            pub.publish(topic, ok)
            assert pub.wait_acked(10) and pub.acked == 2 and pub.refused == 1
        await wait_until(lambda: ing.stats.messages >= 2, event=ing.committed)
    async with pool.acquire() as con:
        reasons = [r["reason"] for r in await con.fetch("SELECT reason FROM dead_letters WHERE device_id = $1", dev)]
        stored = await con.fetchval("SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device"
                                    " WHERE d.device_id = $1", dev)
    assert reasons == ["too_large"] and stored == 1


async def test_gateway_ports_survive_garbage_and_still_answer(settings, pool):
    """Every gateway port, over TCP: mutated and truncated frames, junk without delimiters, frames over
    the size limit, half-written frames left hanging. The gateway keeps serving: a real station and a
    real terminal connecting afterwards are answered, and the junk left dead letters."""
    from wulian.ingest.gateways.base import GatewayConfig, GatewayLimits
    from wulian.ingest.gateways.service import running_gateway
    from wulian.simulators.field_devices import Hj212Station, Jt808Terminal

    tag = uuid.uuid4().hex[:6]
    cfg = GatewayConfig(region="fzgw", auto_provision=True,
                        limits=GatewayLimits(answer_timeout_s=5, auth_fail_limit=10**6, idle_timeout_s=5))
    rng = random.Random(808212)
    ts_ms = NOW_MS - 120_000
    seeds = {"hj212": [seed_payload(rng, "hj212", f"FZ{i:06d}", ts_ms) for i in range(3)],
             "jt808": [seed_payload(rng, "jt808", f"0139{i:08d}", ts_ms) for i in range(3)]}
    async with running_gateway(settings, "hj212", pool, port=0, config=cfg, client_id=f"fzgw-h-{tag}") as gh, \
            running_gateway(settings, "jt808", pool, port=0, config=cfg, client_id=f"fzgw-j-{tag}") as gj:
        for gw, proto in ((gh, "hj212"), (gj, "jt808")):
            for _ in range(25):
                reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                chunks = [mutate(rng, rng.choice(seeds[proto])) for _ in range(rng.randrange(1, 6))]
                chunks += rng.choice(([], [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))],
                                      [b"#" * 9000], [b"\x7e" + b"\x01" * 9000 + b"\x7e"], [seeds[proto][0][:20]]))
                try:
                    for c in chunks:
                        writer.write(c)
                    await writer.drain()
                    await asyncio.wait_for(reader.read(4096), 0.05)
                except (TimeoutError, ConnectionError):
                    pass
                writer.close()
        station = Hj212Station(f"8811{int(tag, 16):012d}{'0' * 8}", "123456", answer_timeout_s=5)
        reader, writer = await asyncio.open_connection("127.0.0.1", gh.port)
        assert await station.upload(reader, writer, bytearray(), time.time_ns() // 10**9 * 10**9)
        writer.close()
        terminal = Jt808Terminal("13" + str(int(tag, 16) % 10**9).rjust(9, "0"), answer_timeout_s=5)
        reader, writer = await asyncio.open_connection("127.0.0.1", gj.port)
        assert await terminal.login(reader, writer, bytearray())
        writer.close()
        assert gh.stats.dead_letters > 0 and gj.stats.dead_letters > 0
