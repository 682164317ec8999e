"""``wulian bench ingest``: readings through the real broker into the real database.

Method: each consumer gets its own persistent MQTT session, which is created, then the fixed set of
messages (QoS 1, ``--per-msg`` readings each) is published into the broker while the consumer is
offline, then the consumer connects and drains it. The three consumers measured in the same run on the
same broker see exactly the same work, and no publisher competes with them for the 2 cores:
- ``bare``: paho subscriber that only counts messages (auto-ack) — the ceiling for any Python consumer;
- ``naive``: one INSERT transaction per message, then its ack (on a subset, it is slow);
- ``wulian``: the ingest pipeline (batch decode, COPY + INSERT ... ON CONFLICT, ack after commit);
- ``batching peer``: what a well-tuned Node-RED or Telegraf setup does: acks on receipt, one INSERT per
  1,000 messages, several statements in flight, no validation, no alarms, no dead letters (a crash loses
  whatever it acknowledged and had not written yet).
Each consumer is timed from when it takes its first messages (connected; for ``wulian``, with its
alarm engine loaded) to its last commit or insert. Lost and duplicated readings are counted in the database afterwards. During each drain the CPU seconds of
the consumer (this process), PostgreSQL and the broker are read from /proc, with the machine's utilisation
(a shared machine's other work shows there, not in ours).
"""
from __future__ import annotations

import argparse
import dataclasses
import asyncio
import json
import os
import sys
import threading
import time
import uuid

import asyncpg
import orjson

from wulian.cli.benches import with_machine
from wulian.cli.benches.machine import CpuWindow, stack_pids
from wulian.ingest.batch_writer import init_connection
from wulian.ingest.migrations import migrate
from wulian.ingest.mqtt_client import MqttConsumer, MqttParams, MqttPublisher
from wulian.ingest.pipeline import IngestStats
from wulian.ingest.service import mqtt_params, tune_gc
from wulian.ingest.topics import subscriptions
from wulian.settings import Settings, get_settings


def _progress(msg: str) -> None:
    print(f"[bench ingest] {msg}", file=sys.stderr, flush=True)


BENCH_PREFIX = "wlbench"  # its own topic tree: no other persistent session on the broker gets copies
PUBLISH_WINDOW = 1000  # the benches' publishers: PUBACKs awaited at most (MqttPublisher.window)


def make_messages(n_msgs: int, per_msg: int, n_devices: int, region: str,
                  prefix: str = BENCH_PREFIX) -> list[tuple[str, bytes]]:
    base = time.time_ns() // 1_000_000 - 86_400_000
    names = [f"m{j}" for j in range(per_msg)]
    out = []
    for k in range(n_msgs):
        d = k % n_devices
        ts = base + (k // n_devices) * 1000
        vals = {name: round(20.0 + (k * 7 + j) % 100 * 0.1, 2) for j, name in enumerate(names)}
        out.append((f"{prefix}/{region}/grid/B{d:05d}/telemetry", orjson.dumps({"ts": ts, "values": vals})))
    return out


def preload(params: MqttParams, consumer_id: str, messages: list[tuple[str, bytes]], prefix: str) -> None:
    """Create the consumer's persistent session, then publish while it is offline."""
    from paho.mqtt.client import CallbackAPIVersion, Client  # bench-only: a throwaway session creator
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = Client(CallbackAPIVersion.VERSION2, client_id=consumer_id, protocol=MQTTProtocolVersion.MQTTv5)
    if params.username:
        c.username_pw_set(params.username, params.password)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(params.host, params.port, clean_start=True, properties=props)
    c.loop_start()
    c.subscribe([(t, 1) for t in subscriptions(prefix)])
    subscribed.wait(10)
    c.disconnect()
    c.loop_stop()
    pub_params = dataclasses.replace(params, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
    t0 = time.perf_counter()
    with MqttPublisher(pub_params, window=PUBLISH_WINDOW) as pub:
        for topic, payload in messages:
            pub.publish(topic, payload)
        if not pub.wait_acked(600):
            raise RuntimeError("broker did not acknowledge every message")
    _progress(f"preloaded {len(messages)} messages for {consumer_id} in {time.perf_counter() - t0:.1f}s")


def drop_session(params: MqttParams, client_id: str) -> None:
    """End a consumer's persistent session (clean start, expiry 0), so the broker keeps nothing of it."""
    from paho.mqtt.client import CallbackAPIVersion, Client
    from paho.mqtt.enums import MQTTProtocolVersion

    c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    if params.username:
        c.username_pw_set(params.username, params.password)
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect(params.host, params.port, clean_start=True)
    c.loop_start()
    connected.wait(10)
    c.disconnect()
    c.loop_stop()


async def run_bare_stock(params: MqttParams, n: int, prefix: str) -> float:
    """Stock paho (no buffered transport, paho's own PUBLISH decoder): subscribe QoS 1, count, auto-ack."""
    from paho.mqtt import _packet

    fast = _packet.decode_publish
    _packet.decode_publish = getattr(fast, "paho", fast)
    try:
        return await _run_bare_stock(params, n, prefix)
    finally:
        _packet.decode_publish = fast


async def _run_bare_stock(params: MqttParams, n: int, prefix: str) -> float:
    from paho.mqtt.client import CallbackAPIVersion, Client  # bench-only: the unmodified client
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    done = threading.Event()
    state = {"n": 0, "t_first": None}

    def on_message(client, userdata, msg):
        if state["t_first"] is None:
            state["t_first"] = time.perf_counter()
        state["n"] += 1
        if state["n"] >= n:
            done.set()

    c = Client(CallbackAPIVersion.VERSION2, client_id=params.client_id, protocol=MQTTProtocolVersion.MQTTv5)
    if params.username:
        c.username_pw_set(params.username, params.password)
    c.on_message = on_message
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe([(t, 1) for t in subscriptions(prefix)])
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    props.ReceiveMaximum = params.receive_maximum
    c.connect(params.host, params.port, clean_start=False, properties=props)
    c.loop_start()
    try:
        await asyncio.to_thread(done.wait, 600)
    finally:
        t_end = time.perf_counter()
        c.disconnect()
        c.loop_stop()
    return n / (t_end - state["t_first"])


async def run_bare(params: MqttParams, n: int, prefix: str) -> float:
    """Our transport (``ingest.mqtt_client``), counting only."""
    consumer = MqttConsumer(params, subscriptions(prefix))
    consumer._client._manual_ack = False  # bare: paho acks on receipt, nothing else is done
    got = 0
    t_first = None
    await consumer.start()
    try:
        while got < n:
            batch = await consumer.get_batch(20000, 0.0)
            if t_first is None:
                t_first = time.perf_counter()
            got += len(batch)
    finally:
        consumer.stop()
    return n / (time.perf_counter() - t_first)


async def run_naive(params: MqttParams, dsn: str, n: int, prefix: str) -> float:
    """Per message: one transaction of INSERTs, then the ack. The design we replace."""
    from wulian.ingest.codecs.telemetry import decode_telemetry
    from wulian.ingest.topics import parse_topic

    consumer = MqttConsumer(params, subscriptions(prefix))
    con = await asyncpg.connect(dsn)
    devices = {r["device_id"]: r["id"] for r in await con.fetch("SELECT id, device_id FROM devices")}
    metrics = {r["name"]: r["id"] for r in await con.fetch("SELECT id, name FROM metrics")}
    sql = ("INSERT INTO readings (time, device, metric, value, flag) VALUES"
           " (timestamptz 'epoch' + ($1::bigint / 1000) * interval '1 microsecond', $2, $3, $4, $5)"
           " ON CONFLICT DO NOTHING")
    await consumer.start()
    done, t_first = 0, None
    try:
        while done < n:
            for msg in await consumer.get_batch(1000, 0.0):
                if t_first is None:
                    t_first = time.perf_counter()
                topic = parse_topic(msg.topic, prefix)
                dec = decode_telemetry(topic.stream, msg.payload)
                dev = devices[topic.device_id]
                async with con.transaction():
                    await con.executemany(sql, [(r.ts_ns, dev, metrics[r.metric], r.value, r.flag) for r in dec.readings])
                consumer.ack_many([msg])
                done += 1
    finally:
        consumer.stop()
        await con.close()
    return n / (time.perf_counter() - t_first)


PEER_MSGS_PER_INSERT = 1000


async def run_peer(params: MqttParams, dsn: str, n: int, inflight: int) -> float:
    """The batching peer: ack on receipt, one ``INSERT ... SELECT FROM unnest`` per 1,000 messages, up to
    ``inflight`` statements at once on their own connections; no validation, no alarms, no dead letters."""
    consumer = MqttConsumer(params, subscriptions(BENCH_PREFIX))
    consumer._client._manual_ack = False  # acknowledged on receipt, as Node-RED's mqtt-in node does
    sql = ("INSERT INTO readings (time, device, metric, value, flag)"
           " SELECT timestamptz 'epoch' + (t / 1000) * interval '1 microsecond', d, m, v, f"
           " FROM unnest($1::bigint[], $2::int[], $3::smallint[], $4::float8[], $5::text[]) AS u(t, d, m, v, f)"
           " ON CONFLICT DO NOTHING")
    async with asyncpg.create_pool(dsn, min_size=inflight, max_size=inflight) as pool:
        async with pool.acquire() as con:
            devices = {r["device_id"]: r["id"] for r in await con.fetch("SELECT id, device_id FROM devices")}
            metrics = {r["name"]: r["id"] for r in await con.fetch("SELECT id, name FROM metrics")}
        slots = asyncio.Semaphore(inflight)
        pending: set[asyncio.Task] = set()

        async def insert(cols) -> None:
            try:
                async with pool.acquire() as con:
                    await con.execute(sql, *cols)
            finally:
                slots.release()

        await consumer.start()
        got, t_first = 0, None
        try:
            while got < n:
                msgs = await consumer.get_batch(PEER_MSGS_PER_INSERT, 0.05)
                if t_first is None:
                    t_first = time.perf_counter()
                got += len(msgs)
                ts, dev, met, val, flag = [], [], [], [], []
                for msg in msgs:
                    body = orjson.loads(msg.payload)
                    d = devices[msg.topic.split("/")[3]]
                    t_ns = body["ts"] * 1_000_000
                    for name, v in body["values"].items():
                        ts.append(t_ns); dev.append(d); met.append(metrics[name]); val.append(v); flag.append("N")
                await slots.acquire()
                task = asyncio.create_task(insert((ts, dev, met, val, flag)))
                pending.add(task)
                task.add_done_callback(pending.discard)
            await asyncio.gather(*pending)
        finally:
            consumer.stop()
    return n / (time.perf_counter() - t_first)


async def run_wulian(settings: Settings, params: MqttParams, n: int) -> tuple[IngestStats, float]:
    """The production assembly (``ingest.service.running_ingestor``): pipeline, writer and alarm engine.
    Timed like the other consumers, from when it takes messages (connected, engine loaded) to the
    commit of the last one; returns the stats and those seconds."""
    from wulian.ingest.service import running_ingestor

    async with asyncpg.create_pool(settings.db.dsn, min_size=2, max_size=4, init=init_connection) as pool:
        async with running_ingestor(settings, pool, client_id=params.client_id) as ing:
            t_first = time.perf_counter()
            while ing.stats.messages < n:
                ing.committed.clear()
                await asyncio.wait_for(ing.committed.wait(), 120)
            elapsed = time.perf_counter() - t_first
        return ing.stats, elapsed


async def bench(args: argparse.Namespace) -> dict:
    s = get_settings()
    n_msgs, per_msg = args.messages, args.per_msg
    admin_dsn = s.db.dsn.rsplit("/", 1)[0] + "/postgres"
    db = "wulian_bench"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{db}"
    s = s.model_copy(update={"db": s.db.model_copy(update={"dsn": dsn})})
    con = await asyncpg.connect(dsn)
    await migrate(con)
    # every reading passes through the alarm engine, as in production (this rule never fires)
    await con.execute("INSERT INTO rules (definition) VALUES ($1::jsonb)", orjson.dumps(
        {"id": 0, "name": "bench ceiling", "kind": "upper", "stream": "grid", "threshold": 1e12}).decode())
    await con.close()
    region, prefix = "bench", BENCH_PREFIX
    s = s.model_copy(update={"mqtt": s.mqtt.model_copy(update={"topic_prefix": prefix})})
    messages = make_messages(n_msgs, per_msg, args.devices, region)
    tune_gc()  # as the ingest service does; applies to every consumer measured here
    pids = {"consumer": os.getpid(), **stack_pids(s)}
    run_id = uuid.uuid4().hex[:6]
    try:
        # bare receive: stock paho, and our buffered transport
        bare_p = mqtt_params(s, client_id=f"bench-bare-{run_id}")
        preload(bare_p, bare_p.client_id, messages, prefix)
        bare = await run_bare_stock(bare_p, n_msgs, prefix)
        drop_session(bare_p, bare_p.client_id)
        _progress(f"bare receive (stock paho): {bare:,.0f} msgs/s")
        buf_p = mqtt_params(s, client_id=f"bench-bare-buffered-{run_id}")
        preload(buf_p, buf_p.client_id, messages, prefix)
        bare_buffered = await run_bare(buf_p, n_msgs, prefix)
        drop_session(buf_p, buf_p.client_id)
        _progress(f"bare receive (wulian transport): {bare_buffered:,.0f} msgs/s")
        # wulian pipeline (first, so the naive run later finds devices registered)
        ours_p = mqtt_params(s, client_id=f"bench-wulian-{run_id}")
        preload(ours_p, ours_p.client_id, messages, prefix)
        cpu_ours = CpuWindow(pids).start()
        stats, elapsed = await run_wulian(s, ours_p, n_msgs)
        cpu_ours.stop()
        drop_session(ours_p, ours_p.client_id)
        ours_msgs = n_msgs / elapsed
        _progress(f"wulian ingest: {ours_msgs:,.0f} msgs/s, {ours_msgs * per_msg:,.0f} readings/s")
        con = await asyncpg.connect(dsn)
        stored = await con.fetchval("SELECT count(*) FROM readings")
        distinct = await con.fetchval("SELECT count(*) FROM (SELECT DISTINCT device, metric, time FROM readings) x")
        await con.execute("TRUNCATE readings")
        await con.close()
        # the batching peer, on the same messages (devices and metrics registered by the run above)
        peer_p = mqtt_params(s, client_id=f"bench-peer-{run_id}")
        preload(peer_p, peer_p.client_id, messages, prefix)
        cpu_peer = CpuWindow(pids).start()
        peer = await run_peer(peer_p, dsn, n_msgs, args.peer_inflight)
        cpu_peer.stop()
        drop_session(peer_p, peer_p.client_id)
        con = await asyncpg.connect(dsn)
        peer_stored = await con.fetchval("SELECT count(*) FROM readings")
        await con.execute("TRUNCATE readings")
        await con.close()
        _progress(f"batching peer: {peer:,.0f} msgs/s, {peer * per_msg:,.0f} readings/s ({peer_stored} stored)")
        # naive consumer on a subset
        n_naive = max(1, n_msgs // args.naive_fraction)
        naive_p = mqtt_params(s, client_id=f"bench-naive-{run_id}")
        preload(naive_p, naive_p.client_id, messages[:n_naive], prefix)
        naive = await run_naive(naive_p, dsn, n_naive, prefix)
        drop_session(naive_p, naive_p.client_id)
        _progress(f"naive per-message insert: {naive:,.0f} msgs/s on {n_naive} messages")
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    expected = n_msgs * per_msg

    def per_million(w: CpuWindow, msgs_per_s: float) -> float | None:
        readings = msgs_per_s * per_msg * w.result["wall_s"]
        return round(w.result["cpu_s_total"] / readings * 1e6, 1) if readings else None

    return {
        "mode": "preloaded-drain",
        "messages": n_msgs,
        "readings": expected,
        "readings_per_msg": per_msg,
        "devices": args.devices,
        "qos": 1,
        "seconds": round(elapsed, 3),
        "msgs_per_s": round(ours_msgs, 1),
        "readings_per_s": round(ours_msgs * per_msg, 1),
        "lost": expected - distinct,
        "duplicates": stored - distinct,
        "bare_msgs_per_s": round(bare, 1),
        "bare_note": "bare = stock paho-mqtt subscriber counting messages (auto-ack); bare_buffered = the same "
                     "with ingest's transport (ingest.mqtt_client: buffered reads, no empty MQTT 5 property "
                     "objects), the ceiling of our receive path",
        "bare_buffered_msgs_per_s": round(bare_buffered, 1),
        "vs_bare_buffered": round(ours_msgs / bare_buffered, 3),
        "naive_msgs_per_s": round(naive, 1),
        "naive_readings_per_s": round(naive * per_msg, 1),
        "naive_messages": n_naive,
        "vs_naive": round(ours_msgs / naive, 2),
        "vs_bare": round(ours_msgs / bare, 3),
        "batches": stats.batches,
        "peer_msgs_per_s": round(peer, 1),
        "peer_readings_per_s": round(peer * per_msg, 1),
        "peer_lost": expected - peer_stored,
        "peer_inflight": args.peer_inflight,
        "vs_batching_peer": round(ours_msgs / peer, 3),
        "peer_note": "batching peer = acks on receipt, one INSERT per 1,000 messages, up to peer_inflight "
                     "statements at once, no validation/alarms/dead letters (a well-tuned Node-RED/Telegraf)",
        "cpu": {"wulian": cpu_ours.result, "batching_peer": cpu_peer.result},
        "cpu_s_per_million_readings": {"wulian": per_million(cpu_ours, ours_msgs),
                                       "batching_peer": per_million(cpu_peer, peer)},
        "cpu_note": "cpu_s: CPU seconds during the drain of the consumer (this process), PostgreSQL (postmaster "
                    "and backends) and the broker, from /proc; machine_utilisation: all CPUs, everyone's work",
    }


def run(args: argparse.Namespace) -> int:
    out = with_machine(asyncio.run(bench(args)))
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ingest", help="MQTT -> TimescaleDB throughput vs bare receive and naive insert")
    p.add_argument("--json", action="store_true")
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--per-msg", type=int, default=10)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--peer-inflight", type=int, default=10, help="batching peer: INSERT statements in flight")
    p.add_argument("--naive-fraction", type=int, default=20, help="naive consumer runs on 1/N of the messages")
    p.set_defaults(func=run)
