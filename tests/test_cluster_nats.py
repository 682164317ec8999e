"""kill -9 of the NATS node leading the stream, under load, and its restart on the same store: every
PUBACKed message is stored once (lost 0, duplicates 0), each alert raised once, and the stream has a
leader again among the two survivors; the restarted node catches up as a current replica.

Reliability (issue 15; in an earlier version 1 of 4 runs left the stream leaderless > 2 min): the kill
waits until the freshly created stream's Raft group has every replica current (``stream_info`` cluster
replicas ``current`` and no lag), so the kill does not land while the followers are still catching up
with the stream's creation; see docs/cluster.md, "NATS node kill"."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
import uuid

import asyncpg
import nats
import orjson
import pytest
from paho.mqtt.client import CallbackAPIVersion, Client
from paho.mqtt.enums import MQTTProtocolVersion

from tests.conftest import ROOT, fresh_database, wait_until
from tests.test_cluster import (PARTITIONS, Cluster, _add_rule, _check, _publish, _q, _workload,  # noqa: F401
                                cluster, nats_urls)
from wulian.ingest import jetstream as j
from wulian.ingest.aio import stop_task
from wulian.ingest import nats_cluster
from wulian.ingest.chaos.cluster import kill9_pid, stream_leader, wait_leader
from wulian.ingest.nats_front_door import (MQTT_STREAM, NatsFrontDoorRouter, builtin_lanes, ensure_front_door,
                                          ensure_lanes, lane, lane_holders, lane_streams, mqtt_hello)
from wulian.settings import child_env


async def _replicas_current(urls: list[str]) -> bool:
    con = await j.connect(urls, "test-replicas")
    try:
        info = await con.jetstream(timeout=5).stream_info(j.STREAM)
    except Exception:
        return False
    finally:
        await con.close()
    c = info.cluster
    return bool(c and c.leader and c.replicas and len(c.replicas) == nats_cluster.NODES - 1
                and all(r.current and not r.offline for r in c.replicas))


async def test_cluster_loses_nothing_through_a_kill_of_the_stream_leader(cluster, nats_urls):
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    state = nats_cluster.ClusterState.load(ROOT / ".stack" / f"test-nats-{os.getpid()}")
    await _add_rule(c.dsn)
    for name in ("r1", "r2"):
        c.start("router", name)
    for name in ("w1", "w2"):
        c.start("worker", name)
    await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM cluster_partitions", PARTITIONS), timeout=60)
    await asyncio.sleep(1.0)  # both routers subscribed
    docs1, raises1 = _workload(tag, t0, 0, 10)
    await asyncio.to_thread(_publish, c.mqtt_port, docs1)
    await wait_until(lambda: _replicas_current(nats_urls), timeout=60)
    leader = await stream_leader(nats_urls)
    node = next(n for n in state.nodes if n.name == leader)
    docs2, raises2 = _workload(tag, t0, 10, 30)
    publishing = asyncio.create_task(asyncio.to_thread(_publish, c.mqtt_port, docs2))
    await asyncio.sleep(0.5)  # under load
    killed = time.monotonic()
    kill9_pid(node.pid)
    survivors = [u for u, n in zip(state.urls, state.nodes) if n is not node]
    new_leader = await wait_leader(survivors, timeout=120)
    elected_s = time.monotonic() - killed
    await publishing
    nats_cluster.start_node(state, node)
    await _check(c, len(docs1) + len(docs2), raises1 + raises2)
    await wait_until(lambda: _replicas_current(nats_urls), timeout=120)  # the restarted node caught up
    print(f"stream leader {leader} killed; {new_leader} leads after {elected_s:.2f} s")
    assert new_leader != leader


@pytest.fixture(scope="module")
def nats_mqtt_state():
    """A second 3-node cluster whose nodes also listen for MQTT (cluster.front_door = "nats")."""
    cdir = ROOT / ".stack" / f"test-nats-mqtt-{os.getpid()}"
    state = nats_cluster.up(cdir, mqtt=True)
    yield state
    nats_cluster.down(cdir)
    shutil.rmtree(cdir, ignore_errors=True)


def _publish_311(port: int, docs: list[tuple[str, dict]], account: tuple[str, str]) -> None:
    """A device speaking MQTT 3.1.1 (all NATS MQTT accepts), QoS 1, every PUBACK awaited."""
    c = Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}",
               protocol=MQTTProtocolVersion.MQTTv311)
    c.username_pw_set(*account)
    c.max_inflight_messages_set(500)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        infos = [c.publish(topic, orjson.dumps(doc), qos=1) for topic, doc in docs]
        for info in infos:
            info.wait_for_publish(60)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


async def test_nats_front_door_keeps_a_queue_through_kill9_of_the_node(pg_stack, nats_mqtt_state, tmp_path):
    """Devices -> NATS MQTT (node n1) -> $MQTT_msgs -> router -> WL -> workers. The router is stopped, so
    the PUBACKed messages wait in $MQTT_msgs; n1 (the devices' node) gets kill -9 and comes back; the
    router resumes the durable consumer: lost 0, duplicates 0, each alert once."""
    state = nats_mqtt_state
    nc = await j.connect(state.urls, "test")
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(j.STREAM)
        await j.ensure_stream(nc, PARTITIONS, 3)
        await asyncio.to_thread(mqtt_hello, "127.0.0.1", state.nodes[0].mqtt_port, 10.0, *state.mqtt_account)
        await ensure_front_door(nc)
    finally:
        await nc.close()
    door = state.nodes[0]
    async with fresh_database(pg_stack, "wulian_front_door") as dsn:
        c = Cluster(dsn, 1, state.urls, tmp_path)  # the MQTT port is not used by these routers
        c.env["WULIAN_CLUSTER__FRONT_DOOR"] = "nats"
        c.dsn = dsn
        try:
            tag, t0 = uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
            await _add_rule(dsn)
            c.start("router", "f1")
            for name in ("w1", "w2"):
                c.start("worker", name)
            await wait_until(lambda: _q(dsn, "SELECT count(*) = $1 FROM cluster_partitions", PARTITIONS), timeout=60)
            docs1, raises1 = _workload(tag, t0, 0, 10)
            await asyncio.to_thread(_publish_311, door.mqtt_port, docs1, state.mqtt_account)
            await wait_until(lambda: _q(dsn, "SELECT count(*) = $1 FROM readings", len(docs1)), timeout=120)
            c.kill("f1")  # the consumer is gone: what follows is queued in $MQTT_msgs
            docs2, raises2 = _workload(tag, t0, 10, 20)
            await asyncio.to_thread(_publish_311, door.mqtt_port, docs2, state.mqtt_account)
            kill9_pid(door.pid)
            nats_cluster.start_node(state, door)
            c.start("router", "f1")
            await _check(c, len(docs1) + len(docs2), raises1 + raises2)
        finally:
            c.stop_all()


_STUCK_ROUTER = """
import asyncio, sys
from pathlib import Path
from wulian.ingest.nats_front_door import NatsFrontDoorRouter

class Stuck(NatsFrontDoorRouter):
    '''Publishes half of a lane's first batch of 2+ messages to WL, then hangs: it dies holding them unacked.'''
    async def _publish(self, js, msgs):
        if len(msgs) >= 2:
            await super()._publish(js, msgs[:len(msgs) // 2])
            Path(sys.argv[2]).write_text(str(len(msgs)))
            await asyncio.Event().wait()
        await super()._publish(js, msgs)

asyncio.run(Stuck("stuck", sys.argv[1].split(","), 16, 3).run())
"""


def _device_docs(tag: str, streams: tuple[str, ...], devices: int, n: int) -> list[tuple[str, dict]]:
    """Per (stream, device) ``n`` messages with a sequence number, interleaved across devices."""
    return [(f"wl/r1/{s}/{tag}-{s}-{d}/telemetry", {"seq": k, "ts": k})
            for k in range(n) for s in streams for d in range(devices)]


async def _wl_contents(js) -> list[tuple[str, int]]:
    """(topic, seq) of every message in WL, partition by partition in stream order."""
    info = await js.stream_info(j.STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        m = await js.get_msg(j.STREAM, seq)
        out.append((m.headers[j.HDR_TOPIC], orjson.loads(m.data)["seq"]))
    return out


async def _fresh_wl(state) -> None:
    nc = await j.connect(state.urls, "test")
    try:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(j.STREAM)
        await j.ensure_stream(nc, 16, 3)
        await wait_until(lambda: _mqtt_up(state.nodes[0].mqtt_port, state.mqtt_account), timeout=60)  # a node restarted just before
        await ensure_front_door(nc)
        await ensure_lanes(nc.jetstream(), "wl", ["custom"])  # a registry stream's lane, as routers create it
    finally:
        await nc.close()


async def _mqtt_up(port: int, account: tuple[str, str]) -> bool:
    """The node's MQTT listener answers (it closes connections until its JetStream is ready)."""
    try:
        await asyncio.to_thread(mqtt_hello, "127.0.0.1", port, 10.0, *account)
        return True
    except OSError:  # ConnectionError included
        return False


async def _lanes_drained(nc) -> bool:
    js = nc.jetstream()
    infos = [await js.consumer_info(MQTT_STREAM, lane("wl", s).durable) for s in await lane_streams(nc)]
    return all(i.num_ack_pending == 0 and i.num_pending == 0 for i in infos)


async def test_router_killed_with_unacked_messages_hands_over_without_loss_or_reorder(nats_mqtt_state, tmp_path):
    """A router dies (kill -9) holding lane batches it fetched, half published to WL, none acked; a second
    router takes the lanes over. Every message of four streams (one of them a registry stream, with its own lane) is in
    WL exactly once, each device's in the order it published them; and once the server has redelivered
    the dead router's batches (ACK_WAIT_S later) nothing more is added: the takeover replayed them."""
    state = nats_mqtt_state
    await _fresh_wl(state)
    tag = uuid.uuid4().hex[:5]
    streams = ("air", "water", "grid", "custom")
    docs = _device_docs(tag, streams, 3, 60)
    marker = tmp_path / "stuck"
    stuck = subprocess.Popen([sys.executable, "-c", _STUCK_ROUTER, ",".join(state.urls), str(marker)],
                             cwd=ROOT, env=child_env(WULIAN_LOG_LEVEL="INFO"))
    try:
        nc = await j.connect(state.urls, "test")
        js = nc.jetstream(timeout=10)
        await wait_until(lambda: _holds_all(nc, "stuck"), timeout=60)
        await asyncio.to_thread(_publish_311, state.nodes[0].mqtt_port, docs, state.mqtt_account)
        await wait_until(marker.exists, timeout=60)
        pending = sum([(await js.consumer_info(MQTT_STREAM, lane("wl", s).durable)).num_ack_pending
                       for s in await lane_streams(nc)])
        assert pending > 0  # the dead router's batches are unacked when it dies
        kill9_pid(stuck.pid)
        taker = NatsFrontDoorRouter("taker", state.urls, 16, 3)
        run = asyncio.create_task(taker.run())
        try:
            await wait_until(lambda: _wl_count(js, len(docs)), timeout=120)
            assert taker.replayed > 0
            await wait_until(lambda: _lanes_drained(nc), timeout=120)  # redeliveries came and were acked
            got = await _wl_contents(js)
        finally:
            await stop_task(run)
        await nc.close()
    finally:
        stuck.kill()
        stuck.wait()
    want = [(t, d["seq"]) for t, d in docs]
    assert sorted(got) == sorted(want)  # each exactly once
    by_topic: dict[str, list[int]] = {}
    for t, k in got:
        by_topic.setdefault(t, []).append(k)
    assert all(seqs == sorted(seqs) for seqs in by_topic.values()), "a device's messages reordered in WL"


async def _holds_all(nc, name: str) -> bool:
    with contextlib.suppress(Exception):
        held = (await lane_holders(nc.jetstream())).values()
        return sum(1 for h in held if h == name) == len(await lane_streams(nc))
    return False


async def _wl_count(js, n: int) -> bool:
    return (await js.stream_info(j.STREAM)).state.messages >= n


async def test_routers_share_the_lanes_and_keep_each_device_in_order(nats_mqtt_state):
    """Two routers: each takes half of the lanes (fair share) and routes its lanes' messages; WL holds
    every message once, each device's in order."""
    state = nats_mqtt_state
    await _fresh_wl(state)
    nc = await j.connect(state.urls, "test")
    js = nc.jetstream(timeout=10)
    routers = [NatsFrontDoorRouter(n, state.urls, 16, 3) for n in ("a", "b")]
    runs = [asyncio.create_task(r.run()) for r in routers]
    try:
        async def split() -> bool:
            with contextlib.suppress(Exception):
                held = list((await lane_holders(js)).values())
                n = len(await lane_streams(nc))
                return sorted((held.count("a"), held.count("b"))) == [n // 2, n - n // 2]
            return False

        await wait_until(split, timeout=60)
        tag = uuid.uuid4().hex[:5]
        docs = _device_docs(tag, ("air", "water", "grid", "meter", "vehicle", "traffic", "pollution"), 2, 40)
        await asyncio.to_thread(_publish_311, state.nodes[0].mqtt_port, docs, state.mqtt_account)
        await wait_until(lambda: _wl_count(js, len(docs)), timeout=120)
        await wait_until(lambda: _lanes_drained(nc), timeout=60)
        got = await _wl_contents(js)
    finally:
        await asyncio.gather(*(stop_task(r) for r in runs))
        await nc.close()
    assert all(r.routed > 0 for r in routers), [r.routed for r in routers]
    assert sorted(got) == sorted((t, d["seq"]) for t, d in docs)
    by_topic: dict[str, list[int]] = {}
    for t, k in got:
        by_topic.setdefault(t, []).append(k)
    assert all(seqs == sorted(seqs) for seqs in by_topic.values())


async def test_a_lane_given_back_is_left_to_a_slower_router(nats_mqtt_state):
    """A router above its share gives lanes back and, at its share, leaves them to the other router for
    2 x REBALANCE_S however slowly that one ticks (under load the giver's next tick retook them before the
    slow router's came, forever: CI saw one router at 5 lanes of 8 for a minute). With nobody taking them
    (the other router is dead after all) it takes them back after that."""
    from wulian.ingest.nats_front_door import LEASE_BUCKET, REBALANCE_S, member_key

    state = nats_mqtt_state
    await _fresh_wl(state)
    nc = await j.connect(state.urls, "test")
    js = nc.jetstream(timeout=10)
    solo = NatsFrontDoorRouter("solo", state.urls, 16, 3)
    run = asyncio.create_task(solo.run())
    try:
        await wait_until(lambda: _holds_all(nc, "solo"), timeout=60)
        n = len(solo.held)
        kv = await js.key_value(LEASE_BUCKET)

        async def slow_member():  # a second router that is alive but never gets round to taking a lane
            while True:
                await kv.put(member_key("slow"), b"slow/x")
                await asyncio.sleep(0.5)

        ghost = asyncio.create_task(slow_member())
        try:
            await wait_until(lambda: len(solo.held) <= (n + 1) // 2, timeout=30)
            given = time.monotonic()
            counts = []
            # the lanes given back are freed as their batches end, a tick or more apart under load: watch
            # REBALANCE_S of the 2 x REBALANCE_S each is left alone (without the rule one came back in ~1 s)
            while time.monotonic() - given < REBALANCE_S:
                counts.append(len(solo.held))
                await asyncio.sleep(0.2)
            assert max(counts) == (n + 1) // 2, counts  # the given-back lanes stayed free for the slow router
        finally:
            await stop_task(ghost)
            await kv.delete(member_key("slow"))
        await wait_until(lambda: len(solo.held) == n, timeout=30)  # nobody took them: back to the survivor
    finally:
        await stop_task(run)
        await nc.close()


async def test_a_stream_added_to_the_registry_gets_its_lane_and_is_routed(pg_stack, nats_mqtt_state):
    """A router with the database creates the lane of a stream added by ``wulian stream add`` (its
    NOTIFY), takes it, and routes the new stream's messages to WL, each device's in order."""
    from wulian.core.streams import BUILTIN_REGISTRY, StreamDef
    from wulian.ingest import stream_registry

    state = nats_mqtt_state
    await _fresh_wl(state)
    name = f"gh_{uuid.uuid4().hex[:6]}"
    nc = await j.connect(state.urls, "test")
    js = nc.jetstream(timeout=10)
    async with fresh_database(pg_stack, "wulian_lanes") as dsn:
        router = NatsFrontDoorRouter("reg", state.urls, 16, 3, dsn=dsn)
        run = asyncio.create_task(router.run())
        try:
            await wait_until(lambda: _holds_all(nc, "reg"), timeout=60)
            assert name not in await lane_streams(nc)
            con = await asyncpg.connect(dsn)
            try:
                sdef = StreamDef.from_dict({"name": name, "title": "温室", "metrics": {"air_temp": {"unit": "°C"}}})
                async with con.transaction():
                    await stream_registry.create_stream(con, sdef, actor="test", source="cli")
            finally:
                await con.close()
            await wait_until(lambda: _has_lane(nc, name), timeout=60)
            docs = _device_docs(uuid.uuid4().hex[:5], (name,), 3, 30)
            await asyncio.to_thread(_publish_311, state.nodes[0].mqtt_port, docs, state.mqtt_account)
            await wait_until(lambda: _wl_count(js, len(docs)), timeout=120)
            got = await _wl_contents(js)
        finally:
            await stop_task(run)
            stream_registry.install(BUILTIN_REGISTRY)  # the watcher installed the test database's registry
            await nc.close()
    assert sorted(got) == sorted((t, d["seq"]) for t, d in docs)
    by_topic: dict[str, list[int]] = {}
    for t, k in got:
        by_topic.setdefault(t, []).append(k)
    assert all(seqs == sorted(seqs) for seqs in by_topic.values())


async def _has_lane(nc, stream: str) -> bool:
    return stream in await lane_streams(nc)


async def test_the_single_consumer_of_earlier_versions_is_replaced_by_the_lanes(nats_mqtt_state):
    """An upgraded cluster: the old catch-all consumer overlaps every lane (lossy on nats-server 2.9.10),
    so ensure_front_door deletes it once the lanes exist."""
    from nats.js.api import AckPolicy, ConsumerConfig

    from wulian.ingest.nats_front_door import LEGACY_DURABLE

    nc = await j.connect(nats_mqtt_state.urls, "test")
    try:
        js = nc.jetstream(timeout=10)
        await asyncio.to_thread(mqtt_hello, "127.0.0.1", nats_mqtt_state.nodes[0].mqtt_port, 10.0,
                                *nats_mqtt_state.mqtt_account)
        await ensure_front_door(nc)
        await js.add_consumer(MQTT_STREAM, ConsumerConfig(durable_name=LEGACY_DURABLE, filter_subject="$MQTT.msgs.wl.>",
                                                          ack_policy=AckPolicy.EXPLICIT))
        await ensure_front_door(nc)
        with pytest.raises(nats.js.errors.NotFoundError):
            await js.consumer_info(MQTT_STREAM, LEGACY_DURABLE)
        assert {ln.name for ln in builtin_lanes()} <= set(await lane_streams(nc))
    finally:
        await nc.close()


async def test_a_stopping_router_frees_its_lanes_past_a_connection_that_no_longer_answers(nats_mqtt_state, monkeypatch):
    """Stopping (SIGTERM, a cancelled task) waits STOP_STEP_S at most for each clean-up step: a database
    connection that never answers its close no longer keeps the router from stopping, and the lanes
    are still freed for the others at once."""
    from wulian.ingest import nats_front_door as fd

    class Unanswered:
        async def stop(self):
            await asyncio.Event().wait()

    monkeypatch.setattr(fd, "STOP_STEP_S", 1.0)
    state = nats_mqtt_state
    await _fresh_wl(state)
    nc = await j.connect(state.urls, "test")
    router = NatsFrontDoorRouter("stopper", state.urls, 16, 3)
    run = asyncio.create_task(router.run())
    try:
        await wait_until(lambda: _holds_all(nc, "stopper"), timeout=60)
        router._registry = Unanswered()
        run.cancel()
        done, _ = await asyncio.wait([run], timeout=30)
        assert run in done, "the router did not stop"  # without the bound: waits for ever
        held = await lane_holders(nc.jetstream(timeout=10))
        assert "stopper" not in held.values(), held
    finally:
        await stop_task(run)
        await nc.close()
