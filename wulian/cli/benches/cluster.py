"""``wulian bench cluster``: the ``bench ingest`` workload through routers -> JetStream -> workers.

Method: a private PostgreSQL + Mosquitto (``ChaosStack``, the deployed configuration on free ports) and a
private 3-node NATS cluster (``nats_cluster``, stream replicas 3). Per run (1, 2, 4 workers by default):
a fresh database and stream, the routers and workers started as ``wulian router|worker`` child
processes, a wait until the workers have split every partition between them, then the QoS 1 messages
are published live and the clock stops when ``cluster_partitions`` counts every message committed. CPU
per stage is the difference of ``utime + stime`` (``/proc/<pid>/stat``) over that window: routers,
the three NATS nodes, workers, the PostgreSQL server (the postmaster, its live children, and what its
exited children left in its ``cutime + cstime``) and the MQTT broker (Mosquitto; with the NATS front door,
the default, the MQTT listener is in the NATS nodes, so its cost is in theirs). The publisher runs in this
process and is not counted in any stage. Lost and duplicated readings are counted in the database.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from wulian.cli.benches import emit
from wulian.cli.benches.ingest import make_messages
from wulian.evaluation.traffic import cpu_model
from wulian.settings import get_settings

STAGES = ("router", "nats", "worker", "postgresql", "mqtt_broker")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _progress(msg: str) -> None:
    print(f"[bench cluster] {msg}", file=sys.stderr, flush=True)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, state, is index 0)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def cpu_seconds(pid: int | None, children: bool = False) -> float:
    """utime + stime of a process (all threads); with ``children``, also of its reaped children."""
    st = _stat(pid) if pid else None
    if st is None:
        return 0.0
    ticks = int(st[11]) + int(st[12])  # utime, stime (fields 14, 15)
    if children:
        ticks += int(st[13]) + int(st[14])  # cutime, cstime (fields 16, 17)
    return ticks / CLK_TCK


def server_cpu_seconds(root: int | None) -> float:
    """A forking server (PostgreSQL): the root, its reaped children, its live children."""
    if not root:
        return 0.0
    total = cpu_seconds(root, children=True)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and int(st[1]) == root:  # ppid (field 4)
                total += cpu_seconds(int(entry))
    return total


async def _q(dsn: str, sql: str, *args):
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetchval(sql, *args)
    finally:
        await con.close()


async def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.2)


def _publish(params, messages) -> None:
    from wulian.ingest.mqtt_client import MqttPublisher

    with MqttPublisher(params, max_inflight=5000) as pub:
        for topic, payload in messages:
            pub.publish(topic, payload)
        if not pub.wait_acked(600):
            raise RuntimeError("broker did not acknowledge every message")


async def _door_pulling(state) -> bool:
    """The NATS front door: a router is pulling (a pull request waits on a consumer of ``$MQTT_msgs``), so
    the clock does not count a standby router waiting for the lease of the previous run's."""
    from wulian.ingest import jetstream as j
    from wulian.ingest.nats_front_door import MQTT_STREAM

    nats = await j.connect(state.urls, "bench-cluster-probe")
    try:
        return any(c.num_waiting for c in await nats.jetstream().consumers_info(MQTT_STREAM))
    finally:
        await nats.close()


async def one_run(stack, state, n_workers: int, args, messages, run_id: str) -> dict:
    from wulian.ingest import jetstream as j
    from wulian.ingest import nats_cluster as nc
    from wulian.ingest.migrations import migrate
    from wulian.ingest.worker import LOCK_PARTITION
    from wulian.settings import child_env

    admin_dsn = stack.dsn.rsplit("/", 1)[0] + "/postgres"
    db = f"wulian_bench_cluster_{n_workers}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{db}"
    con = await asyncpg.connect(dsn)
    await migrate(con)
    # every reading passes through the alarm engine, as in bench ingest (this rule never fires)
    await con.execute("INSERT INTO rules (definition) VALUES ($1::jsonb)", json.dumps(
        {"name": "bench ceiling", "kind": "upper", "stream": "grid", "threshold": 1e12}))
    await con.close()
    nats = await j.connect(state.urls, "bench-cluster")
    try:  # a fresh stream per run: the fresh database knows no sequence
        await nats.jetstream().delete_stream(j.STREAM)
    except Exception:
        pass
    await j.ensure_stream(nats, args.partitions, 3)
    nats_door = args.front_door == "nats"
    if nats_door:  # the routers' consumer, before the first message (it survives across runs)
        from wulian.ingest.nats_front_door import ensure_front_door, mqtt_hello

        await asyncio.to_thread(mqtt_hello, "127.0.0.1", state.nodes[0].mqtt_port, 10.0, *state.mqtt_account)
        await ensure_front_door(nats)
    await nats.close()
    user, pw = stack.mqtt_account("ingest")
    creds = {"WULIAN_MQTT__USERNAME": user, "WULIAN_MQTT__PASSWORD": pw} if user else {}
    env = child_env(WULIAN_STACK__DIR=str(stack.dir), WULIAN_DB__DSN=dsn, WULIAN_MQTT__PORT=str(stack.mqtt_port),
                    WULIAN_CLUSTER__NATS_URLS=json.dumps(state.urls),
                    WULIAN_CLUSTER__PARTITIONS=str(args.partitions), WULIAN_CLUSTER__TAKEOVER_DELAY_S="0.5",
                    WULIAN_CLUSTER__REBALANCE_DELAY_S="1", WULIAN_MQTT__SESSION_EXPIRY_S="300",
                    WULIAN_CLUSTER__FRONT_DOOR=args.front_door, WULIAN_LOG_LEVEL="WARNING", **creds)
    # the same router ids in every run: a router's MQTT session is a member of the shared subscription
    # while it lives (300 s here), so a new id per run would leave the old one's share queued, unread
    members = [nc.start_member(state, "router", f"r{i}-{run_id}", env) for i in range(1, args.routers + 1)]
    members += [nc.start_member(state, "worker", f"w{i}-{run_id}-{n_workers}", env) for i in range(1, n_workers + 1)]
    try:
        # every partition claimed, by every worker (fair share after the rebalance delay)
        await _wait(lambda: _q(dsn, "SELECT count(*) = $1 AND count(DISTINCT pid) = $2 FROM pg_locks WHERE"
                                    " locktype = 'advisory' AND classid = $3 AND objsubid = 2 AND granted",
                               args.partitions, n_workers, LOCK_PARTITION), 120, "workers did not claim the partitions")
        await _wait(lambda: _q(dsn, "SELECT count(*) = $1 FROM cluster_partitions", args.partitions), 120,
                    "partitions not ready")
        await asyncio.sleep(2.0)  # routers subscribed; rebalancing settled
        if nats_door:
            await _wait(lambda: _door_pulling(state), 120, "no router pulls from the NATS front door")
        pids = {"router": [m.pid for m in members if m.role == "router"],
                "worker": [m.pid for m in members if m.role == "worker"],
                "nats": [n.pid for n in state.nodes]}
        pg_root = int((stack.dir / "pg" / "postmaster.pid").read_text().split()[0])
        broker = None if nats_door else stack.broker_pid()  # the NATS door's broker is the NATS nodes

        def snapshot() -> dict[str, float]:
            out = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
            out["postgresql"] = server_cpu_seconds(pg_root)
            out["mqtt_broker"] = cpu_seconds(broker)
            return out

        n = len(messages)
        cpu0, t0 = snapshot(), time.perf_counter()
        await asyncio.to_thread(_publish, publisher_params(stack, state, nats_door), messages)
        await _wait(lambda: _q(dsn, "SELECT coalesce(sum(messages), 0) >= $1 FROM cluster_partitions", n),
                    args.timeout, "not every message was committed")
        elapsed, cpu1 = time.perf_counter() - t0, snapshot()
        alive = all(nc._alive(m.pid) for m in members)
    finally:
        for m in members:
            nc.stop_pid(m.pid)
        state.members = [m for m in state.members if m not in members]
        state.save()
    expected = n * args.per_msg
    con = await asyncpg.connect(dsn)
    stored = await con.fetchval("SELECT count(*) FROM readings")
    distinct = await con.fetchval("SELECT count(*) FROM (SELECT DISTINCT device, metric, time FROM readings) x")
    committed = int(await con.fetchval("SELECT coalesce(sum(messages), 0) FROM cluster_partitions"))
    await con.close()
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.close()
    per_m = 1e6 / expected
    return {"routers": args.routers, "workers": n_workers, "messages": n, "readings": expected,
            "seconds": round(elapsed, 3), "readings_per_s": round(expected / elapsed, 1),
            "lost": expected - distinct, "duplicates": stored - distinct, "messages_committed": committed,
            "members_alive_at_end": alive,
            "cpu_s_per_million_readings": {k: round((cpu1[k] - cpu0[k]) * per_m, 2) for k in STAGES}}


def publisher_params(stack, state, nats_door: bool):
    """The bench's publisher: the simulator account, on the NATS nodes' MQTT listener (MQTT 3.1.1) or on
    Mosquitto."""
    from wulian.ingest.mqtt_client import MqttParams

    client_id = f"bench-pub-{uuid.uuid4().hex[:6]}"
    if not nats_door:
        return stack.mqtt_params(client_id)
    user, password = state.mqtt_account
    return MqttParams("127.0.0.1", state.nodes[0].mqtt_port, client_id, username=user, password=password,
                      protocol=4)


async def bench(args: argparse.Namespace) -> dict:
    from wulian.ingest import nats_cluster as nc
    from wulian.ingest.chaos.stack import ChaosStack

    if args.partitions is None:
        args.partitions = get_settings().cluster.partitions
    args.front_door = args.front_door or get_settings().cluster.front_door
    stack = ChaosStack.fresh("bench-cluster")
    run_id = uuid.uuid4().hex[:4]
    messages = make_messages(args.messages, args.per_msg, args.devices, "bench", prefix="wl")
    runs = []
    try:
        _progress(f"stack in {stack.dir}")
        await asyncio.to_thread(stack.up)
        state = await asyncio.to_thread(nc.up, Path(stack.dir) / "nats", 20.0, args.front_door == "nats")
        for w in args.workers:
            r = await one_run(stack, state, w, args, messages, run_id)
            _progress(f"{w} worker(s): {r['readings_per_s']:,.0f} readings/s, lost {r['lost']}, "
                      f"duplicates {r['duplicates']}, CPU s/M readings {r['cpu_s_per_million_readings']}")
            runs.append(r)
    finally:
        if not args.keep:
            nc.down(Path(stack.dir) / "nats")
            await asyncio.to_thread(stack.down)
            shutil.rmtree(stack.dir, ignore_errors=True)
    return {"mode": "live-publish", "cpu": cpu_model(), "cores": os.cpu_count(),
            "note": "shared machine: other processes ran beside this bench; CPU seconds are this run's "
                    "processes only, wall-clock throughput is not",
            "qos": 1, "readings_per_msg": args.per_msg, "devices": args.devices, "partitions": args.partitions,
            "front_door": args.front_door, "nats_nodes": nc.NODES, "stream_replicas": 3, "runs": runs}


def run(args: argparse.Namespace) -> int:
    emit(asyncio.run(bench(args)), args.json)
    return 0


def _workers(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2,4, got {text!r}")
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cluster", help="MQTT -> routers -> JetStream -> workers -> TimescaleDB; CPU per stage")
    p.add_argument("--json", action="store_true")
    p.add_argument("--messages", type=int, default=10_000, help="QoS 1 messages per run (issue 15: 100000)")
    p.add_argument("--per-msg", type=int, default=10)
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--workers", type=_workers, default=[1, 2, 4], help="worker counts, one run each")
    p.add_argument("--routers", type=int, default=1)
    p.add_argument("--partitions", type=int, help="stream partitions (default: the cluster.partitions setting)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for every commit")
    p.add_argument("--front-door", choices=["nats", "mosquitto"], default=None,
                   help="where the publisher sends (default: the cluster.front_door setting, nats)")
    p.add_argument("--keep", action="store_true", help="leave the stack and the NATS cluster running")
    p.set_defaults(func=run)
