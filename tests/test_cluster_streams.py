"""Custom streams in cluster mode (issue 15): a stream created in the registry while routers and workers
run (``stream_registry.create_stream``, what ``wulian stream add`` runs) is routed by both front doors,
decoded and alarmed by the workers without a restart: every PUBACKed message stored once, its default
rule raised once per device, a topic of an unregistered stream dead-lettered with its reason. And a
router whose persistent session still holds the per-stream shares of earlier routers loses none of
what was queued under them when it moves to the one wildcard share.

One NATS cluster for the module, with MQTT listeners (the NATS front door needs them; the Mosquitto
front door only uses its JetStream)."""
from __future__ import annotations

import asyncio
import threading
import time
import uuid

import asyncpg
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import wait_until
from tests.helpers import disable_registry_stream_rules
from tests.test_cluster import PARTITIONS, REGION, _publish, _q, cluster  # noqa: F401
from tests.test_cluster_nats import _has_lane, _publish_311, nats_mqtt_state  # noqa: F401
from wulian.core.streams import StreamDef
from wulian.ingest import jetstream as j
from wulian.ingest.aio import stop_task
from wulian.ingest.codecs.errors import BAD_TOPIC, UNKNOWN_STREAM
from wulian.ingest.mqtt_client import MqttParams
from wulian.ingest.nats_front_door import ensure_front_door, mqtt_hello
from wulian.ingest.router import Router, legacy_subscriptions
from wulian.ingest import stream_registry
from wulian.ingest.stream_registry import RegistryWatcher, create_stream

DEVICES = 12
THRESHOLD = 35.0


@pytest.fixture(scope="module")
def nats_urls(nats_mqtt_state):  # noqa: F811 - the cluster fixture's NATS: this module's one cluster
    return nats_mqtt_state.urls


async def _partitions_claimed(c) -> None:
    try:
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM cluster_partitions", PARTITIONS), timeout=60)
    except TimeoutError:
        n = await _q(c.dsn, "SELECT count(*) FROM cluster_partitions")
        raise AssertionError(f"{n} of {PARTITIONS} partitions claimed\n{c.logs()}")


def greenhouse(name: str) -> StreamDef:
    return StreamDef.from_dict({
        "name": name, "title": "温室大棚",
        "metrics": {"air_temp": {"unit": "°C", "min": -30, "max": 60}, "humidity": {"unit": "%", "min": 0, "max": 100}},
        "device_types": [],
        "default_rules": [{"name": "温室高温", "kind": "upper", "metric": "air_temp", "threshold": THRESHOLD,
                           "severity": "major"}],
    })


async def _add_stream(dsn: str, name: str) -> int:
    con = await asyncpg.connect(dsn)
    try:
        async with con.transaction():
            (rule_id,) = await create_stream(con, greenhouse(name), actor="test", source="cli")
    finally:
        await con.close()
    return rule_id


def _greenhouse_workload(name: str, tag: str, t0_ms: int) -> list[tuple[str, dict]]:
    """Per device 20, 40, 41 °C: one raise each (40 crosses the threshold, 41 stays above). One device is
    named ``telemetry``: its alert events' topic (``wl/<region>/alerts/<stream>/telemetry``) matches the
    routers' telemetry share."""
    devices = [f"G{tag}{d:03d}" for d in range(DEVICES - 1)] + ["telemetry"]
    return [(f"wl/{REGION}/{name}/{dev}/telemetry", {"ts": t0_ms + k * 1000, "values": {"air_temp": v, "humidity": 50}})
            for k, v in enumerate((20.0, 40.0, 41.0)) for dev in devices]


async def _check_stream(dsn: str, name: str, rule_id: int, messages: int, readings: int, logs,
                        dead_letter: bool = True) -> None:
    """Every message through a partition once, every reading stored once, one raise per device, and (with
    ``dead_letter``) one dead letter: the unregistered stream's message."""
    try:
        await wait_until(lambda: _q(dsn, "SELECT coalesce(sum(messages), 0) >= $1 FROM cluster_partitions",
                                    messages), timeout=120)
        await wait_until(lambda: _q(dsn, "SELECT count(*) = $1 FROM alerts WHERE rule_id = $2", DEVICES, rule_id),
                         timeout=60)
    except TimeoutError:
        raise AssertionError(f"messages {await _q(dsn, 'SELECT sum(messages) FROM cluster_partitions')} of "
                             f"{messages}\n{logs()}")
    assert await _q(dsn, "SELECT sum(messages) FROM cluster_partitions") == messages  # each sequence once
    assert await _q(dsn, "SELECT sum(duplicates) FROM cluster_partitions") == 0
    assert await _q(dsn, "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device"
                         " WHERE d.stream = $1", name) == readings
    assert await _q(dsn, "SELECT count(DISTINCT (r.device, r.metric, r.time)) FROM readings r"
                         " JOIN devices d ON d.id = r.device WHERE d.stream = $1", name) == readings
    assert await _q(dsn, "SELECT count(*) FROM alert_events e JOIN alerts a ON a.id = e.alert_id"
                         " WHERE a.rule_id = $1 AND e.event IN ('raised', 'cleared')", rule_id) == DEVICES
    con = await asyncpg.connect(dsn)
    try:
        dead = [tuple(r) for r in await con.fetch("SELECT topic, reason, detail FROM dead_letters")]
    finally:
        await con.close()
    assert dead == ([(f"wl/{REGION}/nosuchstream/X1/telemetry", BAD_TOPIC, UNKNOWN_STREAM)] if dead_letter else [])


async def test_stream_added_while_the_cluster_runs_is_routed_through_mosquitto(cluster):  # noqa: F811
    """Mosquitto front door: routers on the per-kind shares. The alert events the workers publish on the
    same broker do not match them, except those of a device named ``telemetry``: dropped by the routers,
    not dead-lettered."""
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    for name in ("r1", "r2"):
        c.start("router", name)
    for name in ("w1", "w2"):
        c.start("worker", name)
    await _partitions_claimed(c)
    await asyncio.sleep(1.0)  # both routers subscribed
    name = f"gh{tag}"
    rule_id = await _add_stream(c.dsn, name)  # no restart, no wait: the workers learn it from the database
    docs = _greenhouse_workload(name, tag, t0)
    docs.append((f"wl/{REGION}/nosuchstream/X1/telemetry", {"ts": t0, "values": {"air_temp": 1.0}}))
    events = _AlertEvents(c.mqtt_port)
    with events:
        await asyncio.to_thread(_publish, c.mqtt_port, docs)
        await _check_stream(c.dsn, name, rule_id, len(docs), 3 * DEVICES * 2, c.logs)
        await wait_until(lambda: events.count >= DEVICES, timeout=60)  # the raises went out on the broker
    # the router that got device "telemetry"'s event got it before its share of these messages (one
    # session, in order): once these are stored, that event has passed it and reached no partition
    # (sum(messages) counts these and the data, the one dead letter is unchanged)
    more = _pollution(tag, t0, 0, 2)
    await asyncio.to_thread(_publish, c.mqtt_port, more)
    await wait_until(lambda: _q(c.dsn, "SELECT coalesce(sum(messages), 0) = $1 FROM cluster_partitions",
                                len(docs) + len(more)), timeout=120)
    assert await _q(c.dsn, "SELECT count(*) FROM dead_letters") == 1
    assert await _q(c.dsn, "SELECT count(*) FROM readings") == 3 * DEVICES * 2 + len(more)


async def test_stream_added_while_the_cluster_runs_is_routed_through_the_nats_front_door(cluster, nats_mqtt_state):  # noqa: F811
    """NATS front door: devices publish MQTT 3.1.1 to a NATS node; the router pulls every topic."""
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    door = nats_mqtt_state.nodes[0]
    nc = await j.connect(nats_mqtt_state.urls, "test")
    try:
        await asyncio.to_thread(mqtt_hello, "127.0.0.1", door.mqtt_port, 10.0, *nats_mqtt_state.mqtt_account)
        await ensure_front_door(nc)
    finally:
        await nc.close()
    c.env["WULIAN_CLUSTER__FRONT_DOOR"] = "nats"
    c.start("router", "f1")
    for name in ("w1", "w2"):
        c.start("worker", name)
    await _partitions_claimed(c)
    name = f"gh{tag}"
    rule_id = await _add_stream(c.dsn, name)
    # The router creates the new stream's lane when the registry tells it (LISTEN, within ~1 s); until
    # then nats-server keeps no message of that stream (no interested consumer): devices are provisioned
    # after their stream, so wait for the lane as they would. No unregistered stream here: the NATS door
    # routes lanes only (a device account may not publish outside its own stream anyway; README Limits).
    nc = await j.connect(nats_mqtt_state.urls, "test")
    try:
        await wait_until(lambda: _has_lane(nc, name), timeout=60)
    finally:
        await nc.close()
    docs = _greenhouse_workload(name, tag, t0)
    await asyncio.to_thread(_publish_311, door.mqtt_port, docs, nats_mqtt_state.mqtt_account)
    await _check_stream(c.dsn, name, rule_id, len(docs), 3 * DEVICES * 2, c.logs, dead_letter=False)
    # partitioned by device like a built-in stream (before, the router sent an unknown stream to partition 0)
    assert await _q(c.dsn, "SELECT count(*) FROM cluster_partitions WHERE messages > 0") > 1


class _AlertEvents:
    """Counts alert events on the broker (``wl/+/alerts/#``) while in the ``with``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ev-{uuid.uuid4().hex[:8]}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_connect = lambda cl, *_: cl.subscribe("wl/+/alerts/#", qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_message(self, *_) -> None:
        self.count += 1

    def __enter__(self):
        self._client.connect("127.0.0.1", self.port)
        self._client.loop_start()
        assert self._subscribed.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def _old_router_session(port: int, client_id: str) -> None:
    """What a router before this change left on the broker: a persistent session holding one share per
    built-in stream (and, from here on, the messages queued for it under them)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    subscribed = threading.Event()
    client.on_connect = lambda cl, *_: cl.subscribe([(t, 1) for t in legacy_subscriptions()])
    client.on_subscribe = lambda *_: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect("127.0.0.1", port, clean_start=True, properties=props)
    client.loop_start()
    try:
        assert subscribed.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()


def _pollution(tag: str, t0_ms: int, start: int, rounds: int) -> list[tuple[str, dict]]:
    return [(f"wl/{REGION}/pollution/M{tag}{d:03d}/telemetry", {"ts": t0_ms + k * 1000, "values": {"SO2": 10.0}})
            for k in range(start, start + rounds) for d in range(DEVICES)]


async def test_router_moves_its_session_from_the_per_stream_shares_to_the_wildcard(cluster, nats_urls):  # noqa: F811
    """The session of an earlier router (per-stream shares) with messages queued under them; the new
    router resumes it: the queue is routed, the old shares are unsubscribed once the wildcard is granted
    (afterwards each message arrives once), and what was published during the move is stored once."""
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    rid = f"m{tag}"
    c.started_routers.add(rid)  # its session is ended after the test (Cluster.stop_all)
    await asyncio.to_thread(_old_router_session, c.mqtt_port, rid)
    queued = _pollution(tag, t0, 0, 10)
    await asyncio.to_thread(_publish, c.mqtt_port, queued)  # queued for the offline old session
    c.start("worker", "w1")
    await _partitions_claimed(c)
    router = Router(MqttParams("127.0.0.1", c.mqtt_port, rid, session_expiry_s=300), nats_urls, PARTITIONS, 3)
    during = _pollution(tag, t0, 10, 10)
    task = asyncio.create_task(router.run())
    try:
        await asyncio.to_thread(_publish, c.mqtt_port, during)  # while the router connects and moves
        await wait_until(lambda: router.consumer.unsubacks >= 1 or task.done(), timeout=30)
        assert not task.done(), task
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM readings", len(queued) + len(during)),
                         timeout=120)
        received = router.consumer.received
        after = _pollution(tag, t0, 20, 10)
        await asyncio.to_thread(_publish, c.mqtt_port, after)
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM readings",
                                    len(queued) + len(during) + len(after)), timeout=120)
        assert router.consumer.received - received == len(after)  # the old shares are gone: each once
    finally:
        await stop_task(task)
    assert await _q(c.dsn, "SELECT sum(duplicates) FROM cluster_partitions") == 0
    assert await _q(c.dsn, "SELECT count(*) FROM dead_letters") == 0
    print(f"router session moved: {len(queued)} queued under the old shares routed, {len(during)} published during"
          f" the move, {router.duplicates} of those delivered under both filters (dropped by JetStream)")


async def test_registry_refresh_reads_the_database_once_for_concurrent_callers(test_dsn):
    """What a worker does on a topic of an unknown stream: ``refresh(since)`` reloads unless a reload begun
    at or after ``since`` completed, so a stream committed before ``since`` is known after it, whether
    or not its NOTIFY arrived, and partitions asking together share one read."""
    before = stream_registry.current()
    watcher = RegistryWatcher(test_dsn, poll_s=3600)
    await watcher.start()
    try:
        name = f"gh{uuid.uuid4().hex[:6]}"
        await _add_stream(test_dsn, name)
        since = time.monotonic()
        reloads = watcher.reloads
        await asyncio.gather(*(watcher.refresh(since) for _ in range(8)))
        assert name in stream_registry.current()
        assert watcher.reloads - reloads <= 2  # one read for all eight (not eight), and the NOTIFY's own
        seen = stream_registry.current()
        await watcher.refresh(since)
        assert watcher.reloads - reloads <= 2 and stream_registry.current() is seen
        await watcher.refresh(time.monotonic())  # a later question reads again; unchanged: same object
        assert stream_registry.current() is seen
    finally:
        await watcher.stop()
        stream_registry.install(before)
        await disable_registry_stream_rules(test_dsn)


async def test_a_watcher_stops_when_its_database_no_longer_answers(test_dsn, monkeypatch):
    """The watcher's connection runs through a relay that stops passing bytes on (a database host gone
    silent, not refusing): ``stop()`` gives the close CLOSE_TIMEOUT_S and then drops the connection, so
    the service stopping (a worker, a router, ingest) is not held for ever."""
    monkeypatch.setattr(stream_registry, "CLOSE_TIMEOUT_S", 1.0)
    host, port = test_dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)
    silent = asyncio.Event()
    links: list[asyncio.StreamWriter] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not silent.is_set():
                writer.write(data)
                await writer.drain()

    async def accept(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(host, int(port))
        links.extend((cw, sw))
        await asyncio.gather(relay(cr, sw), relay(sr, cw), return_exceptions=True)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    relayed = test_dsn.replace(f"@{host}:{port}/", f"@127.0.0.1:{server.sockets[0].getsockname()[1]}/")
    before = stream_registry.current()
    watcher = RegistryWatcher(relayed, poll_s=3600)
    try:
        await watcher.start()
        silent.set()
        done, _ = await asyncio.wait([asyncio.create_task(watcher.stop())], timeout=15)
        assert done, "stop() waited on a database that does not answer"  # before: for ever
        assert watcher._con.is_closed()
    finally:
        stream_registry.install(before)
        for w in links:
            w.close()
        server.close()
