"""``wulian chaos --cluster``: the chaos run against cluster mode (issue 15).

The same sources, verification and run loop as city mode (``run.run_faults``); what changes is what
"ingest" is: routers and workers (``nats_cluster`` members, child processes) on a private 3-node NATS
cluster, behind a front door: the NATS nodes' MQTT listener (``ingest.nats_front_door``) or the
throwaway stack's Mosquitto. Faults in turn, under load: kill -9 of a worker (partition takeover
timed), of a router, of the NATS node leading the stream (brought back), a front-door restart, a
worker added mid-run, and kill -9 of the front door while it holds a queue for the stopped routers;
with the NATS front door also device accounts changed under load (each change reloads the nodes).

Takeover time: from the SIGKILL of a worker until every partition is locked by a live worker again
(the killed session's advisory locks end with its connection; the others claim a partition seen free
for ``takeover_delay_s``).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import numpy as np

from wulian.ingest import jetstream as j
from wulian.ingest import nats_cluster as nc
from wulian.ingest.chaos.faults import ChaosEnv, Fault, KillBrokerQueued, RestartBroker
from wulian.ingest.chaos.run import ChaosConfig, create_rules, progress_stderr, run_faults, wait_ingest_ready
from wulian.ingest.chaos.stack import ChaosStack
from wulian.ingest.migrations import migrate
from wulian.ingest.worker import LOCK_PARTITION
from wulian.settings import child_env

PARTITIONS = 16
_PARTITION_LOCKS = ("SELECT objid::int AS objid, pid FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = $1 AND objsubid = 2 AND granted")


def kill9_pid(pid: int | None) -> None:
    """SIGKILL a process and reap it when it is our child (so it is not left a zombie)."""
    if not nc._alive(pid):
        return
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while nc._alive(pid) and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)


class ClusterMembers:
    """The routers and workers of a chaos run, in the role city mode's ``IngestProcess`` plays."""

    def __init__(self, stack: ChaosStack, state: nc.ClusterState, env: dict[str, str], routers: int = 2,
                 workers: int = 2) -> None:
        self.stack, self.state, self.env = stack, state, env
        self.names = [f"r{i}" for i in range(1, routers + 1)] + [f"w{i}" for i in range(1, workers + 1)]

    def member(self, name: str) -> nc.Member:
        return next(m for m in self.state.members if m.name == name)

    def start(self, name: str | None = None) -> None:
        """(Re)start one member, or every member that is not running."""
        for n in [name] if name else self.names:
            nc.start_member(self.state, "router" if n.startswith("r") else "worker", n, self.env)
            if n not in self.names:
                self.names.append(n)

    def alive(self) -> bool:
        return all(nc._alive(m.pid) for m in self.state.members if m.name in self.names)

    def exit_info(self) -> str:
        return "not running: " + ", ".join(m.name for m in self.state.members
                                          if m.name in self.names and not nc._alive(m.pid))

    def workers(self) -> int:
        return sum(1 for n in self.names if n.startswith("w"))

    def kill9(self, name: str) -> None:
        kill9_pid(self.member(name).pid)

    def stop_intake(self) -> None:
        """Stop the routers (SIGTERM): the broker queues their shares in their sessions."""
        for m in self.state.members:
            if m.role == "router":
                nc.stop_pid(m.pid)

    def stop(self) -> None:
        nc.stop_members(self.state)


async def lock_holders(dsn: str) -> tuple[dict[int, int], set[int]]:
    """partition -> PostgreSQL backend pid holding its lock, and the pids of every live backend."""
    con = await asyncpg.connect(dsn)
    try:
        rows = await con.fetch(_PARTITION_LOCKS, LOCK_PARTITION)
        alive = {r["pid"] for r in await con.fetch("SELECT pid FROM pg_stat_activity")}
        return {r["objid"]: r["pid"] for r in rows}, alive
    finally:
        await con.close()


async def wait_partitions(dsn: str, partitions: int, holders: int | None = None, dead: set[int] = frozenset(),
                          timeout: float = 120.0) -> float:
    """Seconds until every partition is locked by a live session other than ``dead`` (by ``holders``
    distinct sessions, if given)."""
    t0 = time.monotonic()
    while True:
        locks, alive = await lock_holders(dsn)
        owners = set(locks.values())
        if len(locks) == partitions and not owners & dead and owners <= alive \
                and (holders is None or len(owners) == holders):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{len(locks)} of {partitions} partitions locked by {len(owners)} workers"
                               f" after {timeout:.0f}s")
        await asyncio.sleep(0.05)


@dataclass
class KillWorker:
    """kill -9 of worker ``victim`` ``times`` times; each: takeover timed, then the worker restarted."""

    victim: str = "w1"
    times: int = 2
    every_s: float = 3.0
    name: str = "kill_worker"

    async def inject(self, env: ChaosEnv) -> dict:
        takeovers = []
        for k in range(self.times):
            if k:
                await asyncio.sleep(self.every_s)
            # the victim must hold partitions (after its restart: once the rebalance gave it its share)
            await wait_partitions(env.stack.dsn, PARTITIONS, env.ingest.workers())
            before, _ = await lock_holders(env.stack.dsn)
            t0 = time.monotonic()
            await asyncio.to_thread(env.ingest.kill9, self.victim)
            env.progress(f"worker {self.victim} killed (SIGKILL)")
            # the victim's lock session is the holder that ends with it (its locks go with it)
            t_gone = time.monotonic()
            while True:
                _, alive = await lock_holders(env.stack.dsn)
                dead = set(before.values()) - alive
                if dead or time.monotonic() - t_gone > 30:
                    break
                await asyncio.sleep(0.02)
            if not dead:
                raise RuntimeError(f"no lock session ended with worker {self.victim}")
            await wait_partitions(env.stack.dsn, PARTITIONS, dead=dead)
            takeovers.append(time.monotonic() - t0)
            env.progress(f"every partition taken over after {takeovers[-1]:.2f}s")
            await asyncio.to_thread(env.ingest.start, self.victim)
        return {"takeover_s": [round(t, 3) for t in takeovers]}


@dataclass
class KillRouter:
    """kill -9 of a router; restarted with the same id after ``down_s`` (its session holds its share)."""

    victim: str = "r1"
    down_s: float = 2.0
    name: str = "kill_router"

    async def inject(self, env: ChaosEnv) -> None:
        await asyncio.to_thread(env.ingest.kill9, self.victim)
        env.progress(f"router {self.victim} killed (SIGKILL)")
        await asyncio.sleep(self.down_s)
        await asyncio.to_thread(env.ingest.start, self.victim)


@dataclass
class KillLaneRouter:
    """NATS front door: kill -9 of the router holding the lane the devices publish to (``lane``), restarted
    with the same id after ``down_s``. ``handover_s``: from the SIGKILL until another router (or the
    victim's next incarnation) holds the lane, has replayed the victim's unacknowledged messages and
    fetches again (the lane's consumer delivers a newer message than when it took over), i.e. messages
    flow to ``WL`` again. Deliveries to the victim's last pull request, still open at the kill, do not
    count: they go to no one."""

    lane: str = "grid"  # the chaos sources' stream (run.run_fault)
    down_s: float = 2.0
    name: str = "kill_router"

    async def inject(self, env: ChaosEnv) -> dict:
        from wulian.ingest.nats_front_door import MQTT_STREAM, lane, lane_holders

        durable = lane("wl", self.lane).durable
        con = await j.connect(env.ingest.state.urls, "chaos-handover")
        try:
            js = con.jetstream(timeout=5)
            lease = (await lane_holders(js, incarnation=True)).get(self.lane)
            if lease is None:
                raise RuntimeError(f"no router holds lane {self.lane}")
            victim = lease.rsplit("/", 1)[0]
            t0 = time.monotonic()
            await asyncio.to_thread(env.ingest.kill9, victim)
            env.progress(f"router {victim} (lane {self.lane}) killed (SIGKILL)")
            restart = asyncio.create_task(self._restart(env, victim))
            taken_at_seq = None
            while True:
                with contextlib.suppress(Exception):
                    holder = (await lane_holders(js, incarnation=True)).get(self.lane)
                    seq = (await js.consumer_info(MQTT_STREAM, durable)).delivered.stream_seq
                    if taken_at_seq is None and holder and holder != lease:
                        taken_at_seq = seq
                    elif taken_at_seq is not None and seq > taken_at_seq:
                        break
                if time.monotonic() - t0 > 120:
                    raise TimeoutError(f"lane {self.lane} not routed again 120 s after killing {victim}")
                await asyncio.sleep(0.05)
            handover = time.monotonic() - t0
            env.progress(f"lane {self.lane} routed again by {holder} after {handover:.2f}s")
            await restart
        finally:
            await con.close()
        return {"killed_router": victim, "new_holder": holder, "handover_s": round(handover, 3)}

    async def _restart(self, env: ChaosEnv, victim: str) -> None:
        await asyncio.sleep(self.down_s)
        await asyncio.to_thread(env.ingest.start, victim)


async def stream_leader(urls: list[str], timeout: float = 5.0) -> str | None:
    """The server name leading the stream's Raft group, None when it has none (or nobody answers)."""
    con = await j.connect(urls, "chaos-leader-probe")
    try:
        info = await con.jetstream(timeout=timeout).stream_info(j.STREAM)
        return info.cluster.leader if info.cluster else None
    except Exception:
        return None
    finally:
        await con.close()


async def wait_leader(urls: list[str], timeout: float = 120.0) -> str:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        leader = await stream_leader(urls, 2.0)
        if leader:
            return leader
        await asyncio.sleep(0.2)
    raise TimeoutError(f"stream {j.STREAM} had no leader for {timeout:.0f}s")


@dataclass
class KillNatsNode:
    """kill -9 of the NATS node leading the stream, started again on its store after ``down_s``."""

    down_s: float = 5.0
    name: str = "kill_nats_node"

    async def inject(self, env: ChaosEnv) -> dict:
        state: nc.ClusterState = env.ingest.state
        leader = await wait_leader(state.urls)
        node = next(n for n in state.nodes if n.name == leader)
        t0 = time.monotonic()
        await asyncio.to_thread(kill9_pid, node.pid)
        env.progress(f"NATS node {leader} (stream leader) killed (SIGKILL)")
        others = [u for u, n in zip(state.urls, state.nodes) if n is not node]
        new_leader = await wait_leader(others)
        elected_s = time.monotonic() - t0
        env.progress(f"stream leader {new_leader} after {elected_s:.2f}s")
        await asyncio.sleep(max(0.0, self.down_s - elected_s))
        await asyncio.to_thread(nc.start_node, state, node)
        env.progress(f"NATS node {leader} started again")
        return {"killed_node": leader, "new_leader_s": round(elected_s, 3)}


@dataclass
class AddWorker:
    """A third worker started mid-run: partitions move to it after the rebalance delay."""

    worker: str = "w3"
    name: str = "add_worker"

    async def inject(self, env: ChaosEnv) -> dict:
        t0 = time.monotonic()
        await asyncio.to_thread(env.ingest.start, self.worker)
        env.progress(f"worker {self.worker} started")
        await wait_partitions(env.stack.dsn, PARTITIONS, env.ingest.workers())
        return {"rebalanced_s": round(time.monotonic() - t0, 3)}


@dataclass
class RestartFrontDoor:
    """NATS front door: graceful restart (SIGTERM) of the node the devices publish to."""

    down_s: float = 2.0
    name: str = "restart_broker"

    async def inject(self, env: ChaosEnv) -> None:
        node = env.ingest.state.nodes[0]
        await asyncio.to_thread(nc.stop_node, node)
        env.progress(f"front door node {node.name} stopped for {self.down_s:.0f}s")
        await asyncio.sleep(self.down_s)
        await asyncio.to_thread(nc.start_node, env.ingest.state, node)
        env.progress(f"front door node {node.name} started")


@dataclass
class KillFrontDoorQueued:
    """NATS front door: routers stopped for ``queue_s`` (the PUBACKed messages wait in ``$MQTT_msgs``),
    kill -9 of the node the devices publish to, restart after ``down_s``, routers back."""

    queue_s: float = 3.0
    down_s: float = 1.0
    name: str = "kill_broker_queued"

    async def inject(self, env: ChaosEnv) -> None:
        node = env.ingest.state.nodes[0]
        await asyncio.to_thread(env.ingest.stop_intake)
        env.progress(f"routers stopped; the front door queues for {self.queue_s:.0f}s")
        await asyncio.sleep(self.queue_s)
        await asyncio.to_thread(kill9_pid, node.pid)
        env.progress(f"front door node {node.name} killed (SIGKILL) with a queue")
        await asyncio.sleep(self.down_s)
        await asyncio.to_thread(nc.start_node, env.ingest.state, node)
        env.progress(f"front door node {node.name} started")
        await asyncio.to_thread(env.ingest.start)


@dataclass
class ReloadAccounts:
    """NATS front door: device accounts added and removed under load (``wulian device add|remove``), each
    change a SIGHUP of every node, which rereads ``accounts.conf`` (ingest/nats_accounts.py) while
    devices publish and routers and workers use JetStream."""

    changes: int = 10
    every_s: float = 0.5
    name: str = "reload_accounts"

    async def inject(self, env: ChaosEnv) -> dict:
        from wulian.ingest.nats_accounts import NatsAccounts
        from wulian.ingest.provisioning import generate_password

        cdir = Path(env.ingest.state.dir)
        accounts = NatsAccounts(cdir, reload=lambda: nc.reload(cdir))
        ids = [f"RA{i:03d}" for i in range(self.changes // 2)]
        for dev in ids:
            await asyncio.to_thread(accounts.set_password, dev, generate_password())
            await asyncio.sleep(self.every_s)
        for dev in ids:
            await asyncio.to_thread(accounts.remove, dev)
            await asyncio.sleep(self.every_s)
        env.progress(f"{2 * len(ids)} account changes, each a reload of the {nc.NODES} nodes")
        return {"reloads": 2 * len(ids)}


def cluster_faults(front_door: str = "nats") -> list[Fault]:
    if front_door == "nats":
        return [KillWorker(), KillLaneRouter(), KillNatsNode(), RestartFrontDoor(), AddWorker(),
                KillFrontDoorQueued(), ReloadAccounts()]
    return [KillWorker(), KillRouter(), KillNatsNode(), RestartBroker(), AddWorker(), KillBrokerQueued()]


def takeover_p99(faults: list[dict]) -> float | None:
    samples = [t for f in faults for t in f.get("takeover_s", [])]
    return round(float(np.percentile(samples, 99)), 3) if samples else None


def member_env(stack: ChaosStack, urls: list[str], extra: dict[str, str], front_door: str) -> dict[str, str]:
    user, pw = stack.mqtt_account("ingest")
    creds = {"WULIAN_MQTT__USERNAME": user, "WULIAN_MQTT__PASSWORD": pw} if user else {}
    return child_env(WULIAN_STACK__DIR=str(stack.dir), WULIAN_DB__DSN=stack.dsn,
                     WULIAN_MQTT__PORT=str(stack.mqtt_port), WULIAN_CLUSTER__NATS_URLS=json.dumps(urls),
                     WULIAN_CLUSTER__PARTITIONS=str(PARTITIONS), WULIAN_CLUSTER__TAKEOVER_DELAY_S="1.0",
                     WULIAN_CLUSTER__REBALANCE_DELAY_S="3", WULIAN_MQTT__SESSION_EXPIRY_S="600",
                     WULIAN_CLUSTER__FRONT_DOOR=front_door, WULIAN_LOG_LEVEL="INFO", **creds, **extra)


def cluster_config(quick: bool = False, front_door: str = "nats", **kw) -> ChaosConfig:
    base = dict(rate_msgs=400.0, devices=20, pre_s=4.0 if quick else 8.0, post_s=6.0 if quick else 15.0,
                settle_s=90.0, faults=cluster_faults(front_door), field_devices=0, pending_rule=True)
    return ChaosConfig(**{**base, **kw})


def nats_device_params(port: int, account: tuple[str, str]):
    """Devices of the NATS front door: MQTT 3.1.1 under the simulator account (``ClusterState.mqtt_account``:
    the nodes refuse a client without one)."""
    from wulian.ingest.mqtt_client import MqttParams

    user, password = account
    return lambda client_id: MqttParams("127.0.0.1", port, client_id, username=user, password=password, protocol=4)


async def run_cluster_chaos(cfg: ChaosConfig, progress=progress_stderr, keep_dir: bool = False,
                            front_door: str = "nats") -> dict:
    """A throwaway stack, a private 3-node NATS cluster, 2 routers and 2 workers; ``cfg.faults`` in turn.
    ``front_door``: devices publish to the stack's Mosquitto, or to the NATS nodes' MQTT listener."""
    from wulian.ingest.nats_front_door import ensure_front_door, mqtt_hello

    stack = ChaosStack.fresh("chaos-cluster")
    progress(f"stack in {stack.dir} (postgresql :{stack.pg_port}, mosquitto :{stack.mqtt_port})")
    await asyncio.to_thread(stack.up)
    cdir = Path(stack.dir) / "nats"
    nats_door = front_door == "nats"
    state = await asyncio.to_thread(nc.up, cdir, 20.0, nats_door)
    members = ClusterMembers(stack, state, member_env(stack, state.urls, dict(cfg.ingest_env), front_door))
    devices = nats_device_params(state.nodes[0].mqtt_port, state.mqtt_account) if nats_door else None
    env = ChaosEnv(stack, members, progress=progress, front_door=devices)
    try:
        con = await asyncpg.connect(stack.dsn)
        try:
            await migrate(con)
            rules = await create_rules(con, cfg.pending_rule)
        finally:
            await con.close()
        nats = await j.connect(state.urls, "chaos-cluster")
        try:
            await j.ensure_stream(nats, PARTITIONS, 3)
            if nats_door:
                await asyncio.to_thread(mqtt_hello, "127.0.0.1", state.nodes[0].mqtt_port, 10.0, *state.mqtt_account)
                await ensure_front_door(nats)
        finally:
            await nats.close()
        progress(f"NATS {' '.join(state.addresses)}; stream {j.STREAM} ({PARTITIONS} partitions, replicas 3)")
        members.start()
        await wait_partitions(stack.dsn, PARTITIONS, 2)
        ready_s = await wait_ingest_ready(stack, params=devices)
        progress(f"routers and workers ready after {ready_s:.1f}s")
        result = await run_faults(env, cfg, rules)
        result.update(mode="cluster", front_door=front_door, partitions=PARTITIONS, nats_nodes=nc.NODES,
                      stream_replicas=3, takeover_p99_s=takeover_p99(result["faults"]))
        return result
    finally:
        members.stop()
        nc.down(cdir)
        await asyncio.to_thread(stack.down, not keep_dir)
