"""Publish -> broker -> ingest -> database, over real sockets."""
import asyncio
import time
import uuid

import asyncpg
import orjson

from wulian.ingest.mqtt_client import MqttPublisher
from wulian.ingest.service import mqtt_params, running_ingestor
from tests.conftest import wait_until

REGION = "testcity"


def _pub(settings):
    return MqttPublisher(mqtt_params(settings, client_id=f"test-pub-{uuid.uuid4().hex[:6]}"))


async def _count(pool, sql, *args):
    async with pool.acquire() as con:
        return await con.fetchval(sql, *args)


async def _device_rows(pool, device_id):
    return await _count(
        pool, "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id = $1", device_id)


async def test_publish_lands_in_database_for_every_stream(settings, pool):
    tag = uuid.uuid4().hex[:6]
    ts = time.time_ns() // 1_000_000
    msgs = {
        f"wl/{REGION}/pollution/PS{tag}/telemetry": {"ts": ts, "values": {"SO2": 12.5, "NOx": 40.0}},
        f"wl/{REGION}/vehicle/VH{tag}/telemetry": {"ts": ts, "lat": 23.3, "lon": 116.6, "speed": 50},
        f"wl/{REGION}/traffic/TS{tag}/telemetry": {"ts": ts, "speed": 33.0, "flow": 1200},
    }
    async with running_ingestor(settings, pool) as ing:
        with _pub(settings) as pub:
            for topic, doc in msgs.items():
                pub.publish(topic, orjson.dumps(doc))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 3, event=ing.committed)
    assert await _device_rows(pool, f"PS{tag}") == 2
    assert await _count(pool, "SELECT count(*) FROM vehicle_positions p JOIN devices d ON d.id = p.device"
                              " WHERE d.device_id = $1 AND p.speed_kmh = 50", f"VH{tag}") == 1
    assert await _count(pool, "SELECT count(*) FROM traffic_observations t JOIN devices d ON d.id = t.device"
                              " WHERE d.device_id = $1 AND t.flow_vph = 1200", f"TS{tag}") == 1
    async with pool.acquire() as con:
        row = await con.fetchrow("SELECT region, stream, auto_registered, last_seen FROM devices WHERE device_id = $1",
                                 f"PS{tag}")
    assert (row["region"], row["stream"], row["auto_registered"]) == (REGION, "pollution", True)
    assert abs(row["last_seen"].timestamp() * 1000 - ts) < 1


async def test_many_messages_none_lost_none_duplicated(settings, pool):
    tag = uuid.uuid4().hex[:6]
    base = time.time_ns() // 1_000_000 - 3_600_000
    n_dev, n_msg = 20, 50
    async with running_ingestor(settings, pool) as ing:
        with _pub(settings) as pub:
            for k in range(n_msg):
                for d in range(n_dev):
                    doc = {"ts": base + k * 1000, "values": {f"m{j}": float(k + j) for j in range(10)}}
                    pub.publish(f"wl/{REGION}/grid/G{tag}{d:02d}/telemetry", orjson.dumps(doc))
            assert pub.wait_acked(30)
        await wait_until(lambda: ing.stats.messages >= n_dev * n_msg, timeout=60, event=ing.committed)
        assert ing.stats.dead_letters == 0
    total = await _count(pool, "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device"
                               " WHERE d.device_id LIKE $1", f"G{tag}%")
    assert total == n_dev * n_msg * 10


async def test_redelivered_messages_create_no_duplicates(settings, pool):
    """Commit without acking, drop the connection: the broker redelivers to the resumed session."""
    tag = uuid.uuid4().hex[:6]
    ts = time.time_ns() // 1_000_000
    async with running_ingestor(settings, pool) as ing:
        ing.consumer.ack_many = lambda msgs: 0  # crash between commit and ack
        with _pub(settings) as pub:
            for k in range(5):
                pub.publish(f"wl/{REGION}/air/AQ{tag}/telemetry", orjson.dumps({"ts": ts + k, "values": {"PM25": k}}))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 5, event=ing.committed)
    assert await _device_rows(pool, f"AQ{tag}") == 5
    # same client id => same persistent session => the 5 unacknowledged messages come again
    async with running_ingestor(settings, pool) as ing2:
        await wait_until(lambda: ing2.stats.messages >= 5, event=ing2.committed)
        assert ing2.stats.duplicates == 5 and ing2.stats.records == 0
    assert await _device_rows(pool, f"AQ{tag}") == 5
    # and now they were acknowledged: a third session receives nothing
    async with running_ingestor(settings, pool) as ing3:
        await asyncio.sleep(0.5)  # nothing to await: absence of delivery
        assert ing3.stats.messages == 0


async def test_bad_payloads_go_to_dead_letters_and_the_rest_is_written(settings, pool):
    tag = uuid.uuid4().hex[:6]
    ts = time.time_ns() // 1_000_000
    good = orjson.dumps({"ts": ts, "values": {"DO": 6.1}})
    bad = {
        "bad_json": b"{oops",
        "bad_value": orjson.dumps({"ts": ts, "values": {"DO": "x"}}),
        "ts_in_future": orjson.dumps({"ts": ts + 86_400_000, "values": {"DO": 1}}),
        "bad_metric": orjson.dumps({"ts": ts, "values": {"1; DROP TABLE readings": 1}}),
    }
    async with running_ingestor(settings, pool) as ing:
        with _pub(settings) as pub:
            pub.publish(f"wl/{REGION}/water/W{tag}/telemetry", good)
            for payload in bad.values():
                pub.publish(f"wl/{REGION}/water/W{tag}/telemetry", payload)
            pub.publish(f"wl/{REGION}/water/W{tag}/telemetry", orjson.dumps({"ts": ts + 1, "values": {"DO": 6.2}}))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 6, event=ing.committed)
    assert await _device_rows(pool, f"W{tag}") == 2
    async with pool.acquire() as con:
        rows = await con.fetch("SELECT reason, payload FROM dead_letters WHERE device_id = $1", f"W{tag}")
    assert sorted(r["reason"] for r in rows) == sorted(bad)
    assert {bytes(r["payload"]) for r in rows} == set(bad.values())


async def test_unknown_devices_rejected_when_auto_register_is_off(settings, pool):
    settings.ingest.auto_register = False
    tag = uuid.uuid4().hex[:6]
    async with pool.acquire() as con:
        await con.execute("INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'meter')", f"K{tag}", REGION)
    ts = time.time_ns() // 1_000_000
    async with running_ingestor(settings, pool) as ing:
        with _pub(settings) as pub:
            pub.publish(f"wl/{REGION}/meter/K{tag}/telemetry", orjson.dumps({"ts": ts, "values": {"water_m3": 1}}))
            pub.publish(f"wl/{REGION}/meter/U{tag}/telemetry", orjson.dumps({"ts": ts, "values": {"water_m3": 1}}))
            pub.publish(f"wl/{REGION}/grid/K{tag}/telemetry", orjson.dumps({"ts": ts, "values": {"Ua": 1}}))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 3, event=ing.committed)
    async with pool.acquire() as con:
        reasons = {r["device_id"] + ":" + r["reason"] for r in await con.fetch(
            "SELECT device_id, reason FROM dead_letters WHERE device_id IN ($1, $2)", f"K{tag}", f"U{tag}")}
        assert await con.fetchval("SELECT count(*) FROM devices WHERE device_id = $1", f"U{tag}") == 0
    assert reasons == {f"U{tag}:unknown_device", f"K{tag}:device_topic_mismatch"}
    assert await _device_rows(pool, f"K{tag}") == 1


async def test_database_outage_holds_acks_until_commit(settings, pool):
    """A failing database delays the ack; nothing is acknowledged before it is durable."""
    tag = uuid.uuid4().hex[:6]
    ts = time.time_ns() // 1_000_000
    async with running_ingestor(settings, pool) as ing:
        real_write = ing.writer.write
        fails = {"n": 0}

        async def flaky(rows, also=None):
            if fails["n"] < 3:
                fails["n"] += 1
                assert ing.consumer.acked == 0
                raise asyncpg.exceptions.ConnectionDoesNotExistError("simulated outage")
            return await real_write(rows, also)

        ing.writer.write = flaky
        with _pub(settings) as pub:
            pub.publish(f"wl/{REGION}/pollution/O{tag}/telemetry", orjson.dumps({"ts": ts, "values": {"SO2": 1}}))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 1, event=ing.committed)
        assert fails["n"] == 3 and ing.stats.write_retries == 3 and ing.consumer.acked == 1
    assert await _device_rows(pool, f"O{tag}") == 1


async def test_database_refusing_one_message_isolates_it(settings, pool):
    """A value the database cannot store (real overflow) dead-letters that message only."""
    tag = uuid.uuid4().hex[:6]
    ts = time.time_ns() // 1_000_000
    async with running_ingestor(settings, pool) as ing:
        with _pub(settings) as pub:
            for k in range(4):
                pub.publish(f"wl/{REGION}/traffic/T{tag}/telemetry", orjson.dumps({"ts": ts + k, "speed": 30.0 + k}))
            pub.publish(f"wl/{REGION}/traffic/T{tag}/telemetry", orjson.dumps({"ts": ts + 9, "speed": 1e300}))
            assert pub.wait_acked(10)
        await wait_until(lambda: ing.stats.messages >= 5, event=ing.committed)
    async with pool.acquire() as con:
        n = await con.fetchval("SELECT count(*) FROM traffic_observations t JOIN devices d ON d.id = t.device"
                               " WHERE d.device_id = $1", f"T{tag}")
        reasons = [r["reason"] for r in await con.fetch("SELECT reason FROM dead_letters WHERE device_id = $1", f"T{tag}")]
    assert n == 4 and reasons == ["db_rejected"]
