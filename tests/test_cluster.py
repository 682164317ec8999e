"""Cluster mode on loopback: a 3-node NATS JetStream cluster (``wulian cluster``'s own launcher), 2 routers
and 2 workers as subprocesses, the suite's PostgreSQL and Mosquitto. Properties: every PUBACKed message is
stored once (lost 0, duplicate rows 0), each alert is raised exactly once, through kill -9 of a worker and
of a router."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import asyncpg
import orjson
import paho.mqtt.client as mqtt
import pytest

from tests.conftest import ROOT, fresh_database, wait_until
from wulian.ingest import jetstream as j
from wulian.ingest import nats_cluster
from wulian.ingest.mqtt_client import MqttParams, MqttPublisher
from wulian.ingest.worker import LOCK_PARTITION

PARTITIONS = 8
DEVICES = 24
REGION = "shantou"


@pytest.fixture(scope="module")
def nats_urls():
    cdir = ROOT / ".stack" / f"test-nats-{os.getpid()}"
    state = nats_cluster.up(cdir)
    yield state.urls
    nats_cluster.down(cdir)
    shutil.rmtree(cdir, ignore_errors=True)


class Cluster:
    """Routers and workers as child processes of this test, against one database and one stream."""

    def __init__(self, dsn: str, mqtt_port: int, urls: list[str], logdir) -> None:
        self.env = {**os.environ, "WULIAN_DB__DSN": dsn, "WULIAN_MQTT__PORT": str(mqtt_port),
                    "WULIAN_CLUSTER__NATS_URLS": json.dumps(urls),
                    "WULIAN_CLUSTER__FRONT_DOOR": "mosquitto",  # these tests publish to the suite's Mosquitto
                    "WULIAN_CLUSTER__PARTITIONS": str(PARTITIONS), "WULIAN_CLUSTER__TAKEOVER_DELAY_S": "0.5",
                    "WULIAN_CLUSTER__REBALANCE_DELAY_S": "2", "WULIAN_MQTT__SESSION_EXPIRY_S": "300",
                    "WULIAN_ALARMS__TICK_INTERVAL_S": "3600"}
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen] = {}
        self.started_routers: set[str] = set()

    def start(self, role: str, name: str) -> None:
        if role == "router":
            self.started_routers.add(name)
        log = open(self.logdir / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([sys.executable, "-m", "wulian", role, "--id", name], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def kill(self, name: str) -> None:
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait(10)

    def stop_all(self) -> None:
        for name in list(self.procs):
            p = self.procs.pop(name)
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.end_router_sessions()

    def end_router_sessions(self) -> None:
        """The broker is the suite's: a router's persistent session stays a member of the shared
        subscription after its test and would hand a later test's messages (or its own leftovers) across.
        Connecting with a clean start and no expiry ends it."""
        port = int(self.env["WULIAN_MQTT__PORT"])
        for name in sorted(self.started_routers):
            client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
            connected = threading.Event()
            client.on_connect = lambda *_: connected.set()
            try:
                client.connect("127.0.0.1", port, clean_start=True)
            except OSError:
                continue
            client.loop_start()
            connected.wait(10)
            client.disconnect()
            client.loop_stop()

    def logs(self) -> str:
        return "\n".join(f"--- {f.name}\n{f.read_text()[-3000:]}" for f in sorted(self.logdir.glob("*.log")))


@pytest.fixture
async def cluster(pg_stack, broker, nats_urls, tmp_path):
    nc = await j.connect(nats_urls, "test")
    try:  # a stream of its own per test: a fresh database must not see another test's sequences
        await nc.jetstream().delete_stream(j.STREAM)
    except Exception:
        pass
    await j.ensure_stream(nc, PARTITIONS, 3)
    await nc.close()
    async with fresh_database(pg_stack, "wulian_cluster") as dsn:
        c = Cluster(dsn, broker.port, nats_urls, tmp_path)
        c.dsn = dsn
        c.mqtt_port = broker.port
        try:
            yield c
        finally:
            c.stop_all()


async def _q(dsn: str, sql: str, *args):
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetchval(sql, *args)
    finally:
        await con.close()


async def _owned(dsn: str) -> int:
    return await _q(dsn, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
                         " AND objsubid = 2 AND granted", LOCK_PARTITION)


def _publish(port: int, docs: list[tuple[str, dict]]) -> None:
    with MqttPublisher(MqttParams("127.0.0.1", port, f"pub-{uuid.uuid4().hex[:8]}")) as pub:
        for topic, doc in docs:
            pub.publish(topic, orjson.dumps(doc))
        assert pub.wait_acked(60)


def _workload(tag: str, t0_ms: int, start: int, rounds: int) -> tuple[list[tuple[str, dict]], int]:
    """Per device and round one SO2 reading, alternating 50 / 120: a raise on every 120 after a clear."""
    docs, raises = [], 0
    for k in range(start, start + rounds):
        v = 120.0 if k % 2 else 50.0
        for d in range(DEVICES):
            docs.append((f"wl/{REGION}/pollution/C{tag}{d:03d}/telemetry", {"ts": t0_ms + k * 1000, "values": {"SO2": v}}))
            raises += v > 100
    return docs, raises


async def _add_rule(dsn: str) -> None:
    await _q(dsn, "INSERT INTO rules (definition) VALUES ($1::jsonb) RETURNING id", json.dumps(
        {"name": "SO2 over permit", "kind": "upper", "stream": "pollution", "metric": "SO2", "threshold": 100.0,
         "clear_threshold": 80.0, "severity": "major"}))


async def _check(c: Cluster, published: int, raises: int, timeout: float = 120.0) -> None:
    try:
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM readings", published), timeout=timeout)
        await wait_until(lambda: _q(c.dsn, "SELECT coalesce(sum(messages), 0) >= $1 FROM cluster_partitions",
                                    published), timeout=timeout)
    except TimeoutError:
        stored = await _q(c.dsn, "SELECT count(*) FROM readings")
        raise AssertionError(f"stored {stored} of {published}\n{c.logs()}")
    assert await _q(c.dsn, "SELECT sum(messages) FROM cluster_partitions") == published  # each sequence once
    assert await _q(c.dsn, "SELECT sum(duplicates) FROM cluster_partitions") == 0
    assert await _q(c.dsn, "SELECT count(*) FROM dead_letters") == 0
    assert await _q(c.dsn, "SELECT count(*) FROM alert_events WHERE event = 'raised'") == raises
    assert await _q(c.dsn, "SELECT count(*) FROM alerts") == raises


async def test_cluster_stores_each_message_once_through_a_worker_kill(cluster):
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    await _add_rule(c.dsn)
    for name in ("r1", "r2"):
        c.start("router", name)
    for name in ("w1", "w2"):
        c.start("worker", name)
    await wait_until(lambda: _q(c.dsn, "SELECT count(*) = 2 FROM pg_locks WHERE locktype = 'advisory'"
                                        " AND classid = 1501 AND granted"), timeout=60)
    await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM cluster_partitions", PARTITIONS), timeout=60)
    docs1, raises1 = _workload(tag, t0, 0, 20)
    await asyncio.to_thread(_publish, c.mqtt_port, docs1)
    await wait_until(lambda: _q(c.dsn, "SELECT count(*) > 0 FROM readings"), timeout=60)
    c.kill("w1")  # mid-run: its uncommitted batches and unacked messages go to w2
    killed = time.monotonic()
    docs2, raises2 = _workload(tag, t0, 20, 20)
    publishing = asyncio.create_task(asyncio.to_thread(_publish, c.mqtt_port, docs2))
    await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM pg_locks WHERE locktype = 'advisory'"
                                        " AND classid = $2 AND objsubid = 2 AND granted", PARTITIONS, LOCK_PARTITION),
                     timeout=30)
    takeover_s = time.monotonic() - killed
    await publishing
    await _check(c, len(docs1) + len(docs2), raises1 + raises2)
    assert await _q(c.dsn, "SELECT count(DISTINCT owner) FROM cluster_partitions WHERE updated_at >"
                           " now() - interval '1 second' * $1", takeover_s + 60) >= 1
    print(f"takeover after kill -9 of a worker: {takeover_s:.2f} s")
    assert takeover_s < 10


async def test_cluster_loses_nothing_through_a_router_kill(cluster):
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    await _add_rule(c.dsn)
    for name in ("r1", "r2"):
        c.start("router", name)
    c.start("worker", "w1")
    await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM cluster_partitions", PARTITIONS), timeout=60)
    await asyncio.sleep(1.0)  # both routers subscribed
    docs1, raises1 = _workload(tag, t0, 0, 20)
    publishing = asyncio.create_task(asyncio.to_thread(_publish, c.mqtt_port, docs1))
    await asyncio.sleep(0.3)
    c.kill("r1")  # its unacked share stays in its Mosquitto session; re-published on restart, deduplicated
    await publishing
    docs2, raises2 = _workload(tag, t0, 20, 10)
    await asyncio.to_thread(_publish, c.mqtt_port, docs2)
    c.start("router", "r1")
    await _check(c, len(docs1) + len(docs2), raises1 + raises2)


async def test_cluster_up_starts_stops_and_shows_routers_and_workers(cluster, nats_urls):
    """``wulian cluster up --routers 2 --workers 2``: members recorded with the nodes, shown by status,
    stopped by down (here ``stop_members``, which down runs before stopping the nodes)."""
    c, tag, t0 = cluster, uuid.uuid4().hex[:5], time.time_ns() // 1_000_000 - 3_600_000
    cdir = ROOT / ".stack" / f"test-nats-{os.getpid()}"
    state = nats_cluster.ClusterState.load(cdir)
    # routers r1 and r2, the ids the other tests use: an MQTT session of an earlier test's router is
    # still a member of the shared subscription, and only a router with its id takes its share
    nats_cluster.scale(state, 2, 2, env=c.env)
    try:
        st = nats_cluster.status(cdir)
        assert sorted((m["role"], m["name"]) for m in st["members"]) == [("router", "r1"), ("router", "r2"),
                                                                         ("worker", "w1"), ("worker", "w2")]
        assert all(m["up"] for m in st["members"])
        assert nats_cluster.ClusterState.load(cdir).members[0].pid == st["members"][0]["pid"]
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM cluster_partitions", PARTITIONS), timeout=60)
        await asyncio.sleep(1.0)  # the router subscribed
        docs, _ = _workload(tag, t0, 0, 4)
        await asyncio.to_thread(_publish, c.mqtt_port, docs)
        await _check(c, len(docs), 0)
        pids = [m.pid for m in state.members]
    finally:
        nats_cluster.stop_members(state)
    assert not any(nats_cluster._alive(p) for p in pids)
    assert nats_cluster.status(cdir)["members"] == []

