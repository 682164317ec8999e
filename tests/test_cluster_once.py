"""Cluster mode, duties that must run exactly once (docs/cluster.md "Who runs what"): leases of
cluster-singleton duties (one holder runs, a standby takes over when the holder's session ends), the
derive jobs under two ``wulian derive`` processes through kill -9, and per-partition duties through kill -9
of a worker: each device's missing-data alert raised once, each alert event published to MQTT once,
retention moved to the surviving worker."""
from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import asyncpg
import orjson
import pytest

from tests.conftest import ROOT, fresh_database, wait_until
from tests.test_cluster import PARTITIONS, REGION, Cluster, _publish, _q, cluster, nats_urls  # noqa: F401 (fixtures)
from wulian.ingest import jetstream as j
from wulian.ingest import leases
from wulian.ingest.derive_service import discover, job_lease
from wulian.ingest.mqtt_client import MqttConsumer, MqttParams
from wulian.ingest.worker import LOCK_PARTITION, RETENTION_LEASE, Fenced, PartitionAlarms, PartitionRunner, state_name

DEVICES = 24


async def _holders(dsn: str) -> dict[str, str]:
    con = await asyncpg.connect(dsn)
    try:
        return await leases.holders(con)
    finally:
        await con.close()


async def test_a_lease_runs_its_duty_in_one_holder_and_moves_when_the_session_ends(test_dsn):
    name = f"test/{uuid.uuid4().hex[:8]}"
    running: list[str] = []
    ran: list[str] = []

    async def duty(who: str) -> None:
        running.append(who)
        ran.append(who)
        try:
            await asyncio.Event().wait()
        finally:
            running.remove(who)

    a = leases.Lease(test_dsn, name, "a", retry_s=0.2, check_s=0.2)
    b = leases.Lease(test_dsn, name, "b", retry_s=0.2, check_s=0.2)
    ta = asyncio.create_task(a.run(lambda: duty("a")))
    await wait_until(lambda: a.held)
    tb = asyncio.create_task(b.run(lambda: duty("b")))
    try:
        await wait_until(lambda: b._connected_once)
        await asyncio.sleep(1.0)  # the standby tried about five times
        assert running == ["a"] and ran == ["a"] and not b.held
        assert (await _holders(test_dsn))[name] == "a"
        con = await asyncpg.connect(test_dsn)
        try:
            pid = (await leases.held(con, leases.LEASE_CLASS))[leases.key(name)]
            t0 = time.monotonic()
            await con.execute("SELECT pg_terminate_backend($1)", pid)  # the holder's session ends
            await wait_until(lambda: b.held, timeout=10)
            handover_s = time.monotonic() - t0
            await wait_until(lambda: running == ["b"], timeout=10)  # a noticed and stopped its duty
            assert ran == ["a", "b"] and not a.held
            assert (await leases.holders(con))[name] == "b"
        finally:
            await con.close()
        print(f"lease handover after the holder's session ended: {handover_s:.2f} s (retry 0.2 s)")
    finally:
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)
    assert running == []


async def test_a_failing_duty_gives_the_lease_up_and_a_bad_dsn_is_an_error(test_dsn, pg_stack):
    name = f"test/{uuid.uuid4().hex[:8]}"
    calls = []

    async def failing() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    a = leases.Lease(test_dsn, name, "a", retry_s=0.1, failed_backoff_s=0.2)
    b = leases.Lease(test_dsn, name, "b", retry_s=0.1)
    took = asyncio.Event()

    async def steady() -> None:
        took.set()
        await asyncio.Event().wait()

    ta = asyncio.create_task(a.run(failing))
    await wait_until(lambda: calls)
    tb = asyncio.create_task(b.run(steady))
    try:
        await asyncio.wait_for(took.wait(), 10)  # a released the lease when its duty failed
        assert (await _holders(test_dsn))[name] == "b"
    finally:
        for t in (ta, tb):
            t.cancel()
        await asyncio.gather(ta, tb, return_exceptions=True)
    bad = test_dsn.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await leases.Lease(bad, name, "c").run(steady)


async def test_a_new_claim_fences_the_previous_owners_ticks_and_commits(pool):
    """A worker that lost its partition (its lock session ended, another claimed it) must not commit a
    timer tick's alerts: the claim's fence moved (batch commits check the same fence in their CAS)."""
    p = 100_000 + uuid.uuid4().int % 100_000
    try:
        old_fence = await PartitionRunner(SimpleNamespace(pool=pool, name="old"), p)._load()
        old = PartitionAlarms(pool, state_name=state_name(p), partition=p, outbox=False)
        old.fence = old_fence
        async with pool.acquire() as con, con.transaction():
            await old.guard(con)  # still the owner: the tick may commit
        new_fence = await PartitionRunner(SimpleNamespace(pool=pool, name="new"), p)._load()
        assert new_fence == old_fence + 1
        with pytest.raises(Fenced):
            async with pool.acquire() as con, con.transaction():
                await old.guard(con)
        assert old.fenced
        assert await pool.fetchval("SELECT owner FROM cluster_partitions WHERE partition = $1", p) == "new"
    finally:
        await pool.execute("DELETE FROM cluster_partitions WHERE partition = $1", p)


async def test_two_derive_processes_run_each_job_in_one_and_the_survivor_takes_all_after_kill9(pg_stack, tmp_path):
    """``wulian derive`` twice against one database: every job's lease is held, each job runs in its
    holder only; kill -9 of one process hands its jobs to the other."""
    async with fresh_database(pg_stack, "wulian_derive_lease") as dsn:
        env = {**os.environ, "WULIAN_DB__DSN": dsn, "WULIAN_DERIVE__METRICS_PORT": "0"}
        names = [job.name for job in discover(pg_stack)]
        assert names
        procs, logs = {}, {}
        for who in ("d1", "d2"):
            logs[who] = tmp_path / f"{who}.log"
            procs[who] = subprocess.Popen([sys.executable, "-m", "wulian", "derive"], env=env, cwd=ROOT,
                                          stdout=subprocess.DEVNULL, stderr=open(logs[who], "wb"))
        holder_of = {f"derive-{os.uname().nodename}-{p.pid}": who for who, p in procs.items()}

        async def all_held() -> dict[str, str] | None:
            h = await _holders(dsn)
            return h if all(job_lease(n) in h for n in names) else None

        def ran(who: str, job: str) -> bool:
            return re.search(rf"job {re.escape(job)}(:| failed)", logs[who].read_text()) is not None

        try:
            held = await wait_until(all_held, timeout=120)
            owner = {n: holder_of[held[job_lease(n)]] for n in names}
            await wait_until(lambda: all(ran(owner[n], n) for n in names), timeout=120)
            for n in names:  # the standby never ran a job it does not hold
                other = "d2" if owner[n] == "d1" else "d1"
                assert not ran(other, n), (n, owner)
            victim = max(("d1", "d2"), key=lambda w: sum(o == w for o in owner.values()))
            survivor = "d2" if victim == "d1" else "d1"
            moved = [n for n in names if owner[n] == victim]
            procs[victim].send_signal(signal.SIGKILL)
            procs[victim].wait(10)
            t0 = time.monotonic()

            async def survivor_holds_all() -> bool:
                h = await _holders(dsn)
                return all(holder_of.get(h.get(job_lease(n))) == survivor for n in names)

            await wait_until(survivor_holds_all, timeout=60)
            handover_s = time.monotonic() - t0
            await wait_until(lambda: all(ran(survivor, n) for n in moved), timeout=120)
            print(f"derive: {len(names)} job leases, {len(moved)} moved to the survivor {handover_s:.2f} s"
                  " after kill -9 of their holder")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()


async def _rule(dsn: str, body: dict) -> None:
    await _q(dsn, "INSERT INTO rules (definition) VALUES ($1::jsonb) RETURNING id", json.dumps(body))


async def _drain(watcher: MqttConsumer, into: list[dict], quiet_s: float) -> None:
    """Collect alert events until none came for ``quiet_s``."""
    while True:
        try:
            msgs = await asyncio.wait_for(watcher.get_batch(1000, 0.05), quiet_s)
        except asyncio.TimeoutError:
            return
        into.extend(orjson.loads(m.payload) for m in msgs)
        watcher.ack_many(msgs)


async def test_missing_data_and_alert_events_once_through_a_worker_kill9(cluster):
    """Each device sends one SO2 reading over the threshold, then nothing: an upper alert from the batch
    and, 8 s later, a missing-data alert from its partition's timer. The worker owning half the partitions
    is killed -9 right after the readings are committed: the survivor takes its partitions, raises their
    missing-data alerts from the committed engine state, and publishes what the dead worker left in the
    outbox. Every alert exists once, is announced on MQTT once; retention is held by the survivor."""
    c, tag = cluster, uuid.uuid4().hex[:5]
    c.env["WULIAN_ALARMS__TICK_INTERVAL_S"] = "0.5"
    await _rule(c.dsn, {"name": "SO2 over permit", "kind": "upper", "stream": "pollution", "metric": "SO2",
                        "threshold": 100.0, "clear_threshold": 80.0, "severity": "major"})
    await _rule(c.dsn, {"name": "no SO2 data", "kind": "missing_data", "stream": "pollution", "metric": "SO2",
                        "duration_s": 8.0, "severity": "warning"})
    watcher = MqttConsumer(MqttParams("127.0.0.1", c.mqtt_port, f"watch-{tag}"), [f"wl/{REGION}/alerts/#"])
    await watcher.start()
    events: list[dict] = []
    try:
        for name in ("r1", "r2"):  # both: an earlier test's r2 session is still a member of the share
            c.start("router", name)
        for name in ("w1", "w2"):
            c.start("worker", name)
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM cluster_partitions WHERE fence > 0",
                                    PARTITIONS), timeout=60)
        await wait_until(lambda: _q(c.dsn, "SELECT count(DISTINCT owner) = 2 FROM cluster_partitions"), timeout=60)
        await wait_until(lambda: _holders(c.dsn), timeout=30)
        await asyncio.sleep(1.0)  # the router subscribed
        devices = [f"M{tag}{d:03d}" for d in range(DEVICES)]
        now_ms = time.time_ns() // 1_000_000
        await asyncio.to_thread(_publish, c.mqtt_port, [
            (f"wl/{REGION}/pollution/{dev}/telemetry", {"ts": now_ms, "values": {"SO2": 120.0}}) for dev in devices])
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM readings", DEVICES), timeout=60)
        w1_parts = {r["partition"] for r in await _fetch(c.dsn, "SELECT partition FROM cluster_partitions"
                                                                  " WHERE owner = 'w1'")}
        c.kill("w1")
        killed_at = time.monotonic()
        missing_before = await _q(c.dsn, "SELECT count(*) FROM alerts a JOIN rules r ON r.id = a.rule_id"
                                         " WHERE r.definition->>'kind' = 'missing_data'")
        orphans = [d for d in devices if j.partition_of(d, PARTITIONS) in w1_parts]
        assert w1_parts and orphans  # the killed worker owned partitions, with devices on them
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM pg_locks WHERE locktype = 'advisory'"
                                            " AND classid = $2 AND objsubid = 2 AND granted", PARTITIONS,
                                    LOCK_PARTITION), timeout=30)
        takeover_s = time.monotonic() - killed_at
        try:
            await wait_until(lambda: _q(c.dsn, "SELECT count(*) = $1 FROM alerts", 2 * DEVICES), timeout=90)
        except TimeoutError:
            raise AssertionError(f"{await _q(c.dsn, 'SELECT count(*) FROM alerts')} alerts\n{c.logs()}")
        await wait_until(lambda: _q(c.dsn, "SELECT count(*) = 0 FROM alert_publish_outbox"), timeout=30)
        await _drain(watcher, events, quiet_s=3.0)  # six more timer ticks: nothing new may come
        rows = await _fetch(c.dsn, "SELECT a.device_id, r.definition->>'kind' AS kind, count(e.*) AS raised"
                                   " FROM alerts a JOIN rules r ON r.id = a.rule_id LEFT JOIN alert_events e"
                                   " ON e.alert_id = a.id AND e.event = 'raised' GROUP BY 1, 2")
        assert sorted((r["device_id"], r["kind"], r["raised"]) for r in rows) == sorted(
            (d, k, 1) for d in devices for k in ("upper", "missing_data"))
        assert await _q(c.dsn, "SELECT count(*) FROM alerts WHERE state = 'active'") == 2 * DEVICES
        # announced once by event_id: a worker killed between the broker's PUBACK and its outbox delete
        # repeats what it had in flight (at least once there, docs/cluster.md; CI saw one such repeat), and
        # a repeat is the same event, which a consumer drops by its event_id
        per_event: dict[int, list[dict]] = {}
        for ev in events:
            per_event.setdefault(ev["event_id"], []).append(ev)
        raised_ids = {r["id"] for r in await _fetch(c.dsn, "SELECT e.id FROM alert_events e JOIN alerts a ON a.id ="
                                                          " e.alert_id WHERE e.event = 'raised'"
                                                          " AND a.device_id = ANY($1::text[])", devices)}
        assert set(per_event) == raised_ids and len(per_event) == 2 * DEVICES, sorted(per_event)
        assert all(e == evs[0] for evs in per_event.values() for e in evs)
        repeats = len(events) - len(per_event)
        assert repeats <= len(orphans) * 2, repeats  # only the killed worker's alerts can repeat
        assert sorted((evs[0]["device_id"], evs[0]["event"]) for evs in per_event.values()) == sorted(
            (d, "raised") for d in devices for _ in range(2))
        assert (await _holders(c.dsn))[RETENTION_LEASE] == "w2"
        print(f"worker kill -9: takeover {takeover_s:.2f} s; {len(orphans)} devices on its partitions,"
              f" {missing_before} missing-data alerts raised before the kill, {DEVICES - missing_before} after;"
              f" {len(per_event)} alert events on MQTT ({repeats} repeated by the killed worker)")
    finally:
        watcher.stop()


async def _fetch(dsn: str, sql: str, *args):
    con = await asyncpg.connect(dsn)
    try:
        return await con.fetch(sql, *args)
    finally:
        await con.close()
