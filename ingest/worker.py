"""``wulian worker``: JetStream partitions -> today's pipeline (decode, alarm engine, COPY); any number.

Ownership: a worker holds, on one dedicated PostgreSQL session, a member lock (so workers can count
each other) and one advisory lock per partition it owns. A worker that dies loses its session and so
its locks; the others take the free partitions after ``takeover_delay_s``. Fair share is ceil(P / live
workers); a worker above it gives the excess away only after membership was stable ``rebalance_delay_s``,
so a restarting worker moves its own partitions, not everyone's.

Exactly-once effect: per batch, ONE transaction holds the rows, the partition's alert transitions, its
alarm-engine snapshot (``alarm_engine_state`` row ``partition/<n>``) and the compare-and-set of its last
stream sequence (``cluster_partitions``); the JetStream ack comes after the commit. A worker claiming a
partition loads the snapshot and recreates the partition's durable pull consumer at the committed
sequence + 1: the database, not the consumer's ack floor, says where to resume. Order within a partition
is kept (an ack-wait redelivery after newer messages would otherwise be skipped as committed), and
anything redelivered at or below the committed sequence is acked and skipped: no row is written twice,
no alert fires twice.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import asyncpg
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from wulian.core.arrays import ReadingArrays
from wulian.ingest import jetstream as j
from wulian.ingest.alarm_service import AlarmService
from wulian.ingest.batch_writer import BatchWriter, WriteResult
from wulian.ingest.mqtt_client import InMessage
from wulian.ingest.pipeline import Batch, IngestConfig, Ingestor, _transient, build_rows, reading_arrays
from wulian.ingest.rows import BatchRows

log = logging.getLogger(__name__)

LOCK_MEMBER = 1501  # advisory lock classes (pg_advisory_lock(int4, int4)): (class, worker slot)
LOCK_PARTITION = 1502  # (class, partition)
MAX_WORKERS = 1024
STATE_PREFIX = "partition/"
_LOCKS_HELD = ("SELECT objid::int AS k FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
               " AND objsubid = 2 AND granted AND database = (SELECT oid FROM pg_database"
               " WHERE datname = current_database())")


class Fenced(Exception):
    """The partition's committed sequence moved under us: another worker owns it now."""


def state_name(partition: int) -> str:
    return f"{STATE_PREFIX}{partition}"


class PartitionAlarms(AlarmService):
    """The alarm engine of one partition: its snapshot is written in every transaction that writes its
    transitions (batches and timer ticks), never on its own, so it always matches what is committed."""

    async def write(self, con, *, pending) -> None:
        await super().write(con, pending=pending)
        await self.save_state(con)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class PartitionRunner:
    def __init__(self, worker: "Worker", partition: int) -> None:
        self.w = worker
        self.p = partition
        self.last_seq = 0
        self.messages = 0
        self.task: asyncio.Task | None = None
        self.ready = asyncio.Event()  # state loaded, consumer positioned (takeover complete)

    async def _load(self) -> None:
        async with self.w.pool.acquire() as con:
            await con.execute("INSERT INTO cluster_partitions (partition) VALUES ($1) ON CONFLICT DO NOTHING", self.p)
            self.last_seq = await con.fetchval("SELECT last_seq FROM cluster_partitions WHERE partition = $1", self.p)

    async def _consumer(self, js):
        durable = f"wl_p{self.p}"
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(j.STREAM, durable)
        await js.add_consumer(j.STREAM, ConsumerConfig(
            durable_name=durable, filter_subject=j.subject(self.p), ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.last_seq + 1,
            ack_wait=self.w.ack_wait_s, max_ack_pending=4 * self.w.batch, max_deliver=-1))
        return await js.pull_subscribe_bind(durable, stream=j.STREAM)

    async def run(self) -> None:
        w = self.w
        await self._load()
        alarms = PartitionAlarms(w.pool, state_name=state_name(self.p), reconcile=False, save_interval_s=1e9,
                                 tick_interval_s=w.tick_interval_s, topic_prefix=w.config.topic_prefix)
        await alarms.start()
        ing = Ingestor(None, w.writer, w.config, alarms=alarms)  # its decode and resolve, our commit
        try:
            sub = await self._consumer(w.js)
            self.ready.set()
            log.info("partition %d claimed by %s at sequence %d", self.p, w.name, self.last_seq)
            while True:
                try:
                    msgs = await sub.fetch(w.batch, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                if not msgs:
                    continue
                await self._process(ing, alarms, msgs)
        finally:
            await alarms.stop()

    def _decode(self, ing: Ingestor, msgs) -> Batch:
        """Decode runs of messages with one router receive time each, with that time as "now"."""
        out = Batch([])
        run: list[InMessage] = []
        rx = None
        for m in msgs + [None]:
            h = (m.headers or {}) if m is not None else {}
            mrx = h.get(j.HDR_RX_NS)
            if run and (m is None or mrx != rx):
                now = int(rx) if rx and rx.isdigit() else time.time_ns()
                ing.clock_ns = lambda now=now: now
                b = ing.decode_batch(run)
                out.messages += b.messages
                out.items += b.items
                out.dead += b.dead
                run = []
            if m is not None:
                rx = mrx
                run.append(InMessage(0, m.metadata.sequence.stream, 1, h.get(j.HDR_TOPIC, ""), m.data))
        return out

    async def _process(self, ing: Ingestor, alarms: PartitionAlarms, msgs) -> None:
        fresh = [m for m in msgs if m.metadata.sequence.stream > self.last_seq]
        if fresh:
            batch = self._decode(ing, fresh)
            new_seq = fresh[-1].metadata.sequence.stream
            async with alarms.lock:
                pending = await self._commit(ing, alarms, batch, new_seq)
            alarms.after_commit(pending)
            self.last_seq = new_seq
            self.messages += len(fresh)
        await msgs[-1].ack()  # AckPolicy.ALL: acknowledges the whole fetch

    async def _commit(self, ing: Ingestor, alarms: PartitionAlarms, batch: Batch, new_seq: int):
        w, old, n = self.w, self.last_seq, len(batch.messages)

        async def cas(con) -> None:
            status = await con.execute(
                "UPDATE cluster_partitions SET last_seq = $2, owner = $3, messages = messages + $4,"
                " updated_at = now() WHERE partition = $1 AND last_seq = $5", self.p, new_seq, w.name, n, old)
            if status != "UPDATE 1":
                raise Fenced(f"partition {self.p}: committed sequence is no longer {old}")

        async def count(con, res: WriteResult) -> None:
            if res.duplicates:
                await con.execute("UPDATE cluster_partitions SET duplicates = duplicates + $2 WHERE partition = $1",
                                  self.p, res.duplicates)

        pending = None
        delay = 0.2
        while True:
            try:
                items, devices, metric_ids = await ing._resolve(batch)
                if pending is None:  # the engine sees each batch once, whatever the retries
                    arrays = reading_arrays(items, devices) if alarms.has_rules else ReadingArrays.empty()
                    pending = alarms.evaluate(arrays)

                async def also(con, pending=pending) -> None:
                    await cas(con)  # first: takes the row lock, so a fenced worker stops before writing
                    await alarms.write(con, pending=pending)

                rows = build_rows(items, devices, metric_ids)
                rows.dead_letters = batch.dead
                try:
                    await w.writer.write(rows, also, count)
                except Fenced:
                    raise
                except Exception as exc:
                    if _transient(exc):
                        raise
                    # the database refused some data: rows (idempotent) by bisection first, then one
                    # transaction with the dead letters, alerts, snapshot and sequence
                    res = await ing._write_isolating(items, [], devices, metric_ids)
                    await w.writer.write(BatchRows(dead_letters=batch.dead), also)
                    log.warning("partition %d: %d rows refused by the database went to dead letters",
                                self.p, res.dead_letters)
                return pending
            except Exception as exc:
                if isinstance(exc, Fenced) or not _transient(exc):
                    raise
                log.warning("database unavailable (%s); partition %d batch held, retrying in %.1fs",
                            type(exc).__name__, self.p, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class Worker:
    def __init__(self, name: str, dsn: str, nats_urls: list[str], partitions: int, replicas: int,
                 config: IngestConfig = IngestConfig(), batch: int = 2000, takeover_delay_s: float = 1.0,
                 rebalance_delay_s: float = 10.0, ack_wait_s: float = 60.0, tick_interval_s: float = 5.0,
                 auto_register: bool = True, poll_s: float = 0.25) -> None:
        self.name = name
        self.dsn = dsn
        self.urls = nats_urls
        self.partitions = partitions
        self.replicas = replicas
        self.config = config
        self.batch = batch
        self.takeover_delay_s = takeover_delay_s
        self.rebalance_delay_s = rebalance_delay_s
        self.ack_wait_s = ack_wait_s
        self.tick_interval_s = tick_interval_s
        self.auto_register = auto_register
        self.poll_s = poll_s
        self.runners: dict[int, PartitionRunner] = {}
        self.pool: asyncpg.Pool | None = None
        self.writer: BatchWriter | None = None
        self.js = None

    async def _stop_runner(self, p: int) -> None:
        r = self.runners.pop(p)
        # cancel until it is done: Python 3.11's asyncio.wait_for (inside nats-py's fetch) swallows a
        # cancel that lands as its inner get completes (CPython gh-86296, fixed in 3.12), and the runner
        # then fetches on; a single cancel + await hung this coordinator for good (wulian chaos --cluster)
        while r.task is not None and not r.task.done():
            r.task.cancel()
            await asyncio.wait({r.task}, timeout=1.0)

    async def _claim(self, lockcon, p: int) -> bool:
        if not await lockcon.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_PARTITION, p):
            return False
        r = self.runners[p] = PartitionRunner(self, p)
        r.task = asyncio.create_task(r.run(), name=f"partition-{p}")
        return True

    async def _coordinate(self, lockcon) -> None:
        slot = None
        for k in range(MAX_WORKERS):
            if await lockcon.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_MEMBER, k):
                slot = k
                break
        if slot is None:
            raise RuntimeError(f"more than {MAX_WORKERS} workers")
        log.info("worker %s joined as member %d", self.name, slot)
        members_seen, changed_at = 0, time.monotonic()
        free_since: dict[int, float] = {}
        while True:
            for p, r in list(self.runners.items()):  # a partition whose runner failed is given back
                if r.task.done():
                    exc = r.task.exception() if not r.task.cancelled() else None
                    log.warning("partition %d stopped (%r); releasing it", p, exc, exc_info=exc)
                    self.runners.pop(p)
                    await lockcon.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_PARTITION, p)
            members = len(await lockcon.fetch(_LOCKS_HELD, LOCK_MEMBER))
            locked = {r["k"] for r in await lockcon.fetch(_LOCKS_HELD, LOCK_PARTITION)}
            now = time.monotonic()
            if members != members_seen:
                members_seen, changed_at = members, now
            target = math.ceil(self.partitions / max(members, 1))
            free = [p for p in range(self.partitions) if p not in locked]
            free_since = {p: free_since.get(p, now) for p in free}
            for p in free:
                if len(self.runners) >= target:
                    break
                if now - free_since[p] >= self.takeover_delay_s:
                    await self._claim(lockcon, p)
            if len(self.runners) > target and now - changed_at >= self.rebalance_delay_s:
                for p in sorted(self.runners, reverse=True)[: len(self.runners) - target]:
                    await self._stop_runner(p)  # nothing uncommitted is acked: the next owner re-reads it
                    await lockcon.fetchval("SELECT pg_advisory_unlock($1, $2)", LOCK_PARTITION, p)
                    log.info("partition %d released by %s (fair share %d)", p, self.name, target)
            await asyncio.sleep(self.poll_s)

    async def run(self) -> None:
        from wulian.ingest.batch_writer import init_connection

        nc = await j.connect(self.urls, f"worker-{self.name}")
        try:
            got = await j.ensure_stream(nc, self.partitions, self.replicas)
            self.partitions = got
            self.js = nc.jetstream(timeout=10)
            async with asyncpg.create_pool(self.dsn, min_size=1, max_size=8, init=init_connection) as pool:
                self.pool = pool
                self.writer = BatchWriter(pool, auto_register=self.auto_register)
                while True:
                    lockcon = await asyncpg.connect(self.dsn)
                    try:
                        await self._coordinate(lockcon)
                    except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError) as exc:
                        log.warning("lock session lost (%r): stopping every partition", exc)
                    finally:
                        for p in list(self.runners):
                            await self._stop_runner(p)
                        with contextlib.suppress(Exception):
                            await lockcon.close()
                    await asyncio.sleep(1.0)
        finally:
            await nc.close()
