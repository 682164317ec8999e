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

Streams: the worker watches the stream registry as city mode's ingest does (``RegistryWatcher``: LISTEN
plus a periodic reload), so a stream created while the cluster runs (``wulian stream add``) is decoded
without a restart. Before each batch a partition that sees a new registry reloads its engine's rules (a
stream's default rules commit with it), so no reading of the stream is evaluated without them; a batch
with a topic of a stream it does not know makes it ask the database once more before dead-lettering
(``bad_topic``, "unknown stream"), since the stream's NOTIFY may not have arrived yet.

Duties besides the partitions (docs/cluster.md): per partition, its owner runs the missing-data timer of
its devices (ticks fenced by ``cluster_partitions.fence``) and publishes its alert events to MQTT from
``alert_publish_outbox`` (written in the transition's transaction, deleted after the PUBACK), so a takeover
carries both. Retention is a cluster singleton (``ingest.leases``): one worker holds the lease and runs it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

import asyncpg
import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from wulian.core.arrays import ReadingArrays
from wulian.ingest import jetstream as j
from wulian.ingest import leases
from wulian.ingest.aio import stop_task
from wulian.ingest import metrics
from wulian.ingest.alarm_service import AlarmService, PendingAlerts
from wulian.ingest.batch_writer import BatchWriter, WriteResult
from wulian.ingest.codecs.errors import BAD_TOPIC, UNKNOWN_STREAM
from wulian.ingest.mqtt_client import InMessage, MqttParams, MqttPublisher
from wulian.ingest.pipeline import Batch, IngestConfig, Ingestor, _transient, build_rows, reading_arrays
from wulian.ingest.retention import apply_retention, set_compression, set_retention
from wulian.ingest.rows import BatchRows, DeadLetter
from wulian.ingest.stream_registry import RegistryWatcher, current

log = logging.getLogger(__name__)

LOCK_MEMBER = 1501  # advisory lock classes (pg_advisory_lock(int4, int4)): (class, worker slot)
LOCK_PARTITION = 1502  # (class, partition)
MAX_WORKERS = 1024
STATE_PREFIX = "partition/"
RETENTION_LEASE = "retention"
_FENCE = "SELECT fence = $2 FROM cluster_partitions WHERE partition = $1 FOR SHARE"


class Fenced(Exception):
    """The partition's committed sequence moved under us: another worker owns it now."""


def state_name(partition: int) -> str:
    return f"{STATE_PREFIX}{partition}"


def _unknown_stream(d: DeadLetter) -> bool:
    return d.reason == BAD_TOPIC and d.detail == UNKNOWN_STREAM


class PartitionAlarms(AlarmService):
    """The alarm engine of one partition: its snapshot is written in every transaction that writes its
    transitions (batches and timer ticks), never on its own, so it always matches what is committed. Its
    alert events go to the partition's outbox in that transaction (when the worker publishes events)."""

    journal_pending = False  # the snapshot itself is committed with each batch

    def __init__(self, *args, partition: int, outbox: bool, **kw) -> None:
        super().__init__(*args, **kw)
        self.partition = partition
        self.outbox = outbox
        self.fence = 0  # the claim's fence (cluster_partitions.fence)
        self.fenced = False
        self.events_due = asyncio.Event()  # set after a commit that wrote outbox rows

    async def write(self, con, *, pending) -> None:
        await super().write(con, pending=pending)
        if self.outbox and pending.events:
            await con.executemany(
                "INSERT INTO alert_publish_outbox (partition, topic, payload) VALUES ($1, $2, $3)",
                [(self.partition, self.event_topic(ev), orjson.dumps(ev)) for ev in pending.events])
        await self.save_state(con)

    async def guard(self, con) -> None:
        """A timer tick commits only while the claim that loaded this engine is the partition's latest."""
        if not await con.fetchval(_FENCE, self.partition, self.fence):
            self.fenced = True
            raise Fenced(f"partition {self.partition}: claimed by another worker since fence {self.fence}")

    def after_commit(self, pending: PendingAlerts) -> None:
        super().after_commit(pending)  # metrics (no direct publish: the outbox is published)
        if self.outbox and pending.events:
            self.events_due.set()

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
        self.streams_seen = None  # the stream registry whose streams' rules the engine has loaded

    async def _load(self) -> int:
        """Claim the partition's row: the new fence waits for any transaction of the previous owner that
        still holds the row, so the engine snapshot loaded after it is the last one committed."""
        async with self.w.pool.acquire() as con:
            await con.execute("INSERT INTO cluster_partitions (partition) VALUES ($1) ON CONFLICT DO NOTHING", self.p)
            row = await con.fetchrow("UPDATE cluster_partitions SET fence = fence + 1, owner = $2 WHERE partition = $1"
                                     " RETURNING last_seq, fence", self.p, self.w.name)
        self.last_seq = row["last_seq"]
        return row["fence"]

    async def _publish_events(self, alarms: PartitionAlarms) -> None:
        """Publish the partition's outbox in id order (the previous owner's leftovers first), QoS 1; a row
        is deleted only after its PUBACK. A crash between PUBACK and delete repeats those events (same
        ``event_id``, for the receiver to drop); a redelivered batch never writes a row (it is skipped as
        committed), so it never repeats one."""
        while True:
            await alarms.events_due.wait()
            alarms.events_due.clear()
            try:
                while await self._publish_some():
                    pass
            except Exception as exc:
                if not _transient(exc):
                    raise
                log.warning("partition %d: alert events held, database unavailable (%s)", self.p, type(exc).__name__)
                await asyncio.sleep(1.0)
                alarms.events_due.set()

    async def _publish_some(self, limit: int = 500) -> int:
        async with self.w.pool.acquire() as con:
            rows = await con.fetch("SELECT id, topic, payload FROM alert_publish_outbox WHERE partition = $1"
                                   " ORDER BY id LIMIT $2", self.p, limit)
        if not rows:
            return 0
        pub = self.w.publisher
        ok = await asyncio.gather(*(pub.publish_async(r["topic"], bytes(r["payload"])) for r in rows))
        for r, sent in zip(rows, ok):
            if not sent:
                log.error("partition %d: alert event refused by the broker on %s (dropped)", self.p, r["topic"])
        async with self.w.pool.acquire() as con:
            await con.execute("DELETE FROM alert_publish_outbox WHERE id = ANY($1::bigint[])", [r["id"] for r in rows])
        metrics.ALERT_EVENTS_PUBLISHED.inc(sum(ok))
        return len(rows)

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
        fence = await self._load()
        alarms = PartitionAlarms(w.pool, state_name=state_name(self.p), reconcile=False, save_interval_s=1e9,
                                 tick_interval_s=w.tick_interval_s, topic_prefix=w.config.topic_prefix,
                                 rules_poll_s=w.rules_poll_s, partition=self.p, outbox=w.publisher is not None)
        alarms.fence = fence
        self.streams_seen = current()  # before the engine loads the rules: they include these streams'
        await alarms.start()
        ing = Ingestor(None, w.writer, w.config, alarms=alarms)  # its decode and resolve, our commit
        publishing = None
        if w.publisher is not None:
            alarms.events_due.set()  # what the previous owner committed but did not publish
            publishing = asyncio.create_task(self._publish_events(alarms), name=f"alert-events-{self.p}")
        try:
            sub = await self._consumer(w.js)
            self.ready.set()
            log.info("partition %d claimed by %s at sequence %d (fence %d)", self.p, w.name, self.last_seq, fence)
            while True:
                if alarms.fenced:
                    raise Fenced(f"partition {self.p}: a timer tick found it claimed by another worker")
                if publishing is not None and publishing.done():
                    publishing.result()  # its failure stops the partition (released, claimed again)
                try:
                    msgs = await sub.fetch(w.batch, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    continue
                if not msgs:
                    continue
                await self._process(ing, alarms, msgs)
        finally:
            if publishing is not None:
                publishing.cancel()
                await asyncio.gather(publishing, return_exceptions=True)
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

    async def _streams_current(self, alarms: PartitionAlarms, since: float | None = None) -> None:
        """Make the engine's rules cover the current stream registry (reloaded first, unless a reload began
        at or after ``since``); held, retrying, while the database is unavailable."""
        delay = 0.2
        while True:
            try:
                if since is not None and self.w.registry is not None:
                    await self.w.registry.refresh(since)
                    since = None
                while self.streams_seen is not current():
                    seen = current()
                    await alarms.reload_rules_if_changed()
                    self.streams_seen = seen
                return
            except Exception as exc:
                if not _transient(exc):
                    raise
                log.warning("database unavailable (%s); partition %d waits for the stream registry",
                            type(exc).__name__, self.p)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _decode_current(self, ing: Ingestor, alarms: PartitionAlarms, msgs) -> Batch:
        """Decode against the newest stream registry, with those streams' rules in the engine. A topic of
        an unknown stream: the registry is read again (a stream created since the last NOTIFY-driven
        reload) and the batch decoded again if it changed; what is still unknown is dead-lettered."""
        await self._streams_current(alarms)
        t0 = time.monotonic()
        batch = self._decode(ing, msgs)  # synchronous: the registry cannot change under it
        if any(map(_unknown_stream, batch.dead)):
            seen = self.streams_seen
            await self._streams_current(alarms, since=t0)
            if self.streams_seen is not seen:
                batch = self._decode(ing, msgs)
        return batch

    async def _process(self, ing: Ingestor, alarms: PartitionAlarms, msgs) -> None:
        fresh = [m for m in msgs if m.metadata.sequence.stream > self.last_seq]
        if fresh:
            batch = await self._decode_current(ing, alarms, fresh)
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
                " updated_at = now() WHERE partition = $1 AND last_seq = $5 AND fence = $6",
                self.p, new_seq, w.name, n, old, alarms.fence)
            if status != "UPDATE 1":
                raise Fenced(f"partition {self.p}: committed sequence is no longer {old} or it was claimed again")

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
                 auto_register: bool = True, poll_s: float = 0.25, rules_poll_s: float = 10.0,
                 mqtt: MqttParams | None = None, retention_days: dict[str, int] | None = None,
                 compress_after_days: int | None = None) -> None:
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
        self.rules_poll_s = rules_poll_s
        self.mqtt = mqtt  # alert events are published to MQTT when set (as city mode does)
        self.publisher: MqttPublisher | None = None
        self.retention_days = retention_days
        self.compress_after_days = compress_after_days
        self.retention_lease = leases.Lease(dsn, RETENTION_LEASE, name)
        self.runners: dict[int, PartitionRunner] = {}
        self.pool: asyncpg.Pool | None = None
        self.writer: BatchWriter | None = None
        self.registry: RegistryWatcher | None = None
        self.js = None

    async def _stop_runner(self, p: int) -> None:
        r = self.runners.pop(p)
        # a single cancel + await hung this coordinator for good (wulian chaos --cluster): ingest/aio.py
        await stop_task(r.task)

    async def _claim(self, lockcon, p: int) -> bool:
        if not await leases.try_lock(lockcon, LOCK_PARTITION, p):
            return False
        r = self.runners[p] = PartitionRunner(self, p)
        r.task = asyncio.create_task(r.run(), name=f"partition-{p}")
        return True

    async def _coordinate(self, lockcon) -> None:
        slot = None
        for k in range(MAX_WORKERS):
            if await leases.try_lock(lockcon, LOCK_MEMBER, k):
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
                    await leases.unlock(lockcon, LOCK_PARTITION, p)
            members = len(await leases.held(lockcon, LOCK_MEMBER))
            locked = set(await leases.held(lockcon, LOCK_PARTITION))
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
                    await leases.unlock(lockcon, LOCK_PARTITION, p)
                    log.info("partition %d released by %s (fair share %d)", p, self.name, target)
            await asyncio.sleep(self.poll_s)

    async def run(self) -> None:
        from wulian.ingest.batch_writer import init_connection

        nc = await j.connect(self.urls, f"worker-{self.name}")
        if self.mqtt is not None:
            # alert events wait in the outbox while the broker is away: ingest does not depend on it
            self.publisher = MqttPublisher(self.mqtt).connect_in_background()
        try:
            got = await j.ensure_stream(nc, self.partitions, self.replicas)
            self.partitions = got
            self.js = nc.jetstream(timeout=10)
            async with asyncpg.create_pool(self.dsn, min_size=1, max_size=8, init=init_connection) as pool:
                self.pool = pool
                self.writer = BatchWriter(pool, auto_register=self.auto_register)
                self.registry = RegistryWatcher(self.dsn)
                await self.registry.start()  # before any partition decodes: registry streams included
                retention = asyncio.create_task(self.retention_lease.run(self._retention), name="retention-lease")
                try:
                    await self._own_partitions()
                finally:
                    retention.cancel()
                    await asyncio.gather(retention, return_exceptions=True)
                    await self.registry.stop()
        finally:
            if self.publisher is not None:
                self.publisher.close()
            await nc.close()

    async def _own_partitions(self) -> None:
        while True:
            lockcon = await leases.lock_session(self.dsn, f"wulian-worker:{self.name}")
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

    async def _retention(self) -> None:
        """The retention singleton (lease ``retention``): the configured policies, then ``drop_chunks`` every
        ``retention_interval_s`` (city mode runs this in its one ingest process)."""
        async with self.pool.acquire() as con:
            if self.retention_days is not None:
                await set_retention(con, self.retention_days)
            if self.compress_after_days is not None:
                await set_compression(con, self.compress_after_days)
        while True:
            try:
                async with self.pool.acquire() as con:
                    dropped = await apply_retention(con)
                log.info("retention (%s): dropped chunks %s", self.name, dropped)
            except Exception:
                log.exception("retention run failed")
            await asyncio.sleep(self.config.retention_interval_s)
