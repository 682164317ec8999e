"""Ingest pipeline: broker -> decode -> resolve registry -> evaluate alarms -> one transaction -> ack.

Three asyncio tasks: the decoder, the writer (resolves and evaluates each batch in arrival order, then
starts its transaction on its own pool connection) and the acker (awaits the transactions in batch order
and acknowledges). Up to ``max_inflight`` transactions run at once, so PostgreSQL works on one batch
while Python prepares the next; acknowledgements still go out in arrival order (MQTT 3.1.1 4.6 / MQTT 5
4.6: PUBACKs in the order the PUBLISHes were received), each only after its batch committed. A batch that
changes an alert commits after every earlier batch and before any later one, so alert changes reach the
database in the order the engine produced them. Nothing is acknowledged before its transaction commits; a database outage stops the
writer (retried with backoff) and, through the broker's Receive Maximum, the flow of messages, instead
of dropping data. A batch the database refuses for its data (not for being down) is bisected until the
offending messages are isolated; those go to dead letters and the rest is written.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import asyncpg
import numpy as np
import orjson

from wulian.core.arrays import ReadingArrays, SeriesDevice
from wulian.core.const import FLAG_NORMAL, Kind
from wulian.core.model import Decoded, ScalarRecord
from wulian.ingest import metrics as m
from wulian.ingest.batch_writer import BatchWriter, DeviceInfo, WriteResult
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.codecs.registry import decode_message
from wulian.ingest.codecs.telemetry import decode_scalar_fast
from wulian.ingest.mqtt_client import InMessage, MqttConsumer
from wulian.ingest.retention import apply_retention
from wulian.ingest.rows import BatchRows, DeadLetter, EventRow, ReadingColumns, event_rows, pg_text
from wulian.ingest.stream_registry import current
from wulian.ingest.topics import Topic, parse_topic

if TYPE_CHECKING:
    from wulian.ingest.alarm_service import AlarmService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestConfig:
    batch_size: int = 5000
    batch_delay_s: float = 0.05
    topic_prefix: str = "wl"
    limits: PayloadLimits = PayloadLimits()
    retention_interval_s: float = 3600.0
    retry_max_s: float = 5.0
    max_inflight: int = 2  # transactions committing at once (each on its own connection)


@dataclass(slots=True)
class Item:
    """One decoded message awaiting its write."""

    msg: InMessage
    topic: Topic
    decoded: Decoded
    events: list[EventRow] = field(default_factory=list)  # decoded.events as device_events rows


@dataclass(slots=True)
class Batch:
    messages: list[InMessage]
    items: list[Item] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


@dataclass(slots=True)
class IngestStats:
    messages: int = 0
    records: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    write_retries: int = 0


def _transient(exc: BaseException) -> bool:
    """Database unreachable or restarting (retry) as opposed to refusing this data (isolate it)."""
    if isinstance(exc, (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
        return True
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in ("08", "53", "57", "58", "40")


def _dead(msg: InMessage, topic: Topic | None, reason: str, detail: str) -> DeadLetter:
    return DeadLetter(
        topic=pg_text(msg.topic),  # quoted bytes must not make the dead-letter insert fail
        device_id=topic.device_id if topic else None,
        kind=topic.kind.value if topic else None,
        reason=reason,
        detail=pg_text(detail[:500]),
        payload=msg.payload,
    )


def _repaired(msg: InMessage, topic: Topic, repairs: tuple[str, ...]) -> None:
    """A message the codec could read only after a repair: accepted, but counted and logged by reason."""
    for reason in repairs:
        m.REPAIRED.labels(topic.kind.value, reason).inc()
    log.info("repaired message: topic=%s device=%s repairs=%s", msg.topic, topic.device_id, ",".join(repairs),
             extra={"topic": msg.topic, "device": topic.device_id, "repairs": list(repairs)})


def metric_names(readings) -> list[str]:
    """The metric of each reading (a ``ScalarRecord`` has them as a list already)."""
    return readings.names if type(readings) is ScalarRecord else [r.metric for r in readings]


def build_rows(items: list[Item], devices: dict[str, DeviceInfo], metric_ids: dict[str, int]) -> BatchRows:
    """The batch's rows. Readings become typed columns: per message one run (time, device, flag, length)
    and its names and values appended whole; the arrays are made once per batch."""
    rows = BatchRows()
    positions, traffic, seen = rows.positions, rows.traffic, rows.last_seen
    run_ts: list[int] = []
    run_dev: list[int] = []
    run_flag: list[str] = []
    run_len: list[int] = []
    names: list[str] = []
    values: list[float] = []
    for it in items:
        if it.events:
            rows.events.extend(it.events)
        dev = devices[it.topic.device_id].id
        d = it.decoded
        newest = 0
        rd = d.readings
        if type(rd) is ScalarRecord:
            names.extend(rd.names)
            values.extend(rd.values)
            run_ts.append(rd.ts_ns); run_dev.append(dev); run_flag.append(rd.flag); run_len.append(len(rd.names))
            newest = rd.ts_ns
        else:
            for r in rd:
                names.append(r.metric); values.append(r.value)
                run_ts.append(r.ts_ns); run_dev.append(dev); run_flag.append(r.flag); run_len.append(1)
                if r.ts_ns > newest:
                    newest = r.ts_ns
        for p in d.positions:
            positions.append((p.ts_ns, dev, p.lat, p.lon, p.speed_kmh, p.heading, p.altitude_m, p.alarm_bits,
                              p.status_bits, p.mileage_km, orjson.dumps(p.extra).decode() if p.extra else None,
                              p.protocol_edition))
            newest = max(newest, p.ts_ns)
        for t in d.traffic:
            traffic.append((t.ts_ns, dev, t.speed_kmh, t.flow_vph, t.occupancy))
            newest = max(newest, t.ts_ns)
        if newest and newest > seen.get(dev, 0):
            seen[dev] = newest
    if names:
        rows.readings = ReadingColumns.from_runs(run_ts, run_dev, run_flag, run_len,
                                                 map(metric_ids.__getitem__, names), values)
    return rows


def reading_arrays(items: list[Item], devices: dict[str, DeviceInfo]) -> ReadingArrays:
    """The values the alarm engine evaluates, as typed arrays: every scalar reading; per vehicle position
    ``speed_kmh``, ``alarm_bits``, ``status_bits``; per traffic observation ``speed_kmh``, ``flow_vph``,
    ``occupancy`` (those present). Positions and observations carry no flag: they count as normal.

    Hot path (every batch while rules are enabled): one loop of bound appends, the rest C-level."""
    dev_key: dict[str, int] = {}
    refs: list[SeriesDevice] = []
    run_dev: list[int] = []  # device key of each run of values from one message
    run_len: list[int] = []
    names: list[str] = []
    vals: list[float] = []
    ts: list[int] = []  # per run of values sharing time and flag (a ScalarRecord is one run)
    flags: list[str] = []
    ts_len: list[int] = []
    a_name, a_ts, a_val, a_flag, a_len = names.append, ts.append, vals.append, flags.append, ts_len.append
    for it in items:
        t = it.topic
        d = it.decoded
        k = dev_key.get(t.device_id)
        if k is None:
            info = devices[t.device_id]
            k = dev_key[t.device_id] = len(refs)
            refs.append(SeriesDevice(info.id, t.device_id, t.region, str(t.stream), info.device_type))
        n0 = len(vals)
        rd = d.readings
        if type(rd) is ScalarRecord:
            names.extend(rd.names); vals.extend(rd.values); a_ts(rd.ts_ns); a_flag(rd.flag); a_len(len(rd.names))
        else:
            for r in rd:
                a_name(r.metric); a_ts(r.ts_ns); a_val(r.value); a_flag(r.flag); a_len(1)
        for p in d.positions:
            for name, v in (("speed_kmh", p.speed_kmh), ("alarm_bits", float(p.alarm_bits)),
                            ("status_bits", float(p.status_bits))):
                a_name(name); a_ts(p.ts_ns); a_val(v); a_flag(FLAG_NORMAL); a_len(1)
        for o in d.traffic:
            for name, v in (("speed_kmh", o.speed_kmh), ("flow_vph", o.flow_vph), ("occupancy", o.occupancy)):
                if v is not None:
                    a_name(name); a_ts(o.ts_ns); a_val(v); a_flag(FLAG_NORMAL); a_len(1)
        if len(vals) > n0:
            run_dev.append(k)
            run_len.append(len(vals) - n0)
    n = len(vals)
    met_key: collections.defaultdict[str, int] = collections.defaultdict()
    met_key.default_factory = met_key.__len__  # a name not seen yet gets the next key
    metric = np.fromiter(map(met_key.__getitem__, names), np.int32, n)
    lens = np.asarray(ts_len, np.int64)
    return ReadingArrays(
        tuple(refs), tuple(met_key),
        np.repeat(np.asarray(run_dev, np.int32), np.asarray(run_len, np.int64)),
        metric, np.repeat(np.asarray(ts, np.int64), lens), np.fromiter(vals, np.float64, n),
        np.repeat(_flag_letters(flags), lens),
    )


def _flag_letters(flags: list[str]) -> np.ndarray:
    """Each data flag's first letter as its code point (0 for an empty flag). Flags are one ASCII letter
    (core.const.DATA_FLAGS), so the common case is one join; anything else goes letter by letter."""
    text = "".join(flags)
    if len(text) == len(flags) and text.isascii():
        return np.frombuffer(text.encode("ascii"), np.uint8).copy()
    return np.fromiter((ord(f[0]) if f else 0 for f in flags), np.uint8, len(flags))


class Ingestor:
    def __init__(
        self,
        consumer: MqttConsumer,
        writer: BatchWriter,
        config: IngestConfig = IngestConfig(),
        alarms: "AlarmService | None" = None,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.consumer = consumer
        self.writer = writer
        self.config = config
        self.alarms = alarms
        self.clock_ns = clock_ns
        self.stats = IngestStats()
        self._topics: dict[str, Topic] = {}
        self._queue: asyncio.Queue[Batch] = asyncio.Queue(maxsize=2)
        self._inflight: asyncio.Queue[asyncio.Task] = asyncio.Queue()  # started commits, in batch order
        self._writing: set[asyncio.Task] = set()  # commits not finished yet
        self._slots = asyncio.Semaphore(max(1, config.max_inflight))
        self._tasks: list[asyncio.Task] = []
        self.committed = asyncio.Event()  # set after each commit (tests and benchmarks await it)

    # -- stage 1: decode (CPU, on the loop while the writer awaits the database) -------------
    def decode_batch(self, messages: list[InMessage]) -> Batch:
        batch = Batch(messages)
        now = self.clock_ns()
        limits = self.config.limits
        topics = self._topics
        streams = current()
        scalar, ranges = streams.scalar, streams.ranges
        items = batch.items
        for msg in messages:
            topic = topics.get(msg.topic)
            try:
                if topic is None:
                    topic = parse_topic(msg.topic, self.config.topic_prefix)
                    if len(topics) < 1_000_000:
                        topics[msg.topic] = topic
                if topic.kind is Kind.TELEMETRY and topic.stream in scalar:
                    decoded = decode_scalar_fast(msg.payload, now, limits, ranges.get(topic.stream))
                    if decoded is not None:  # the common message, valid: nothing more to check
                        items.append(Item(msg, topic, decoded, ()))
                        continue
                decoded = decode_message(topic.stream, topic.kind, msg.payload, now, limits)
                # an event that cannot be stored refuses its message here, not the batch's transaction
                events = event_rows(topic.device_id, decoded, now) if decoded.events else []
            except CodecError as exc:
                batch.dead.append(_dead(msg, topic, exc.reason, exc.detail))
                continue
            except Exception as exc:  # a codec bug must not take the pipeline down
                log.exception("decoder crashed on topic %s", msg.topic, extra={"topic": msg.topic})
                batch.dead.append(_dead(msg, topic, "decoder_error", repr(exc)))
                continue
            if decoded.repairs:
                _repaired(msg, topic, decoded.repairs)
            items.append(Item(msg, topic, decoded, events))
        return batch

    async def _decoder(self) -> None:
        while True:
            messages = await self.consumer.get_batch(self.config.batch_size, self.config.batch_delay_s)
            m.MESSAGES_RECEIVED.inc(len(messages))
            m.BATCH_SIZE.observe(len(messages))
            t0 = time.perf_counter()
            batch = self.decode_batch(messages)
            m.DECODE_SECONDS.observe(time.perf_counter() - t0)
            await self._queue.put(batch)
            m.BACKLOG.set(self.consumer.backlog)

    # -- stage 2: resolve, write, ack ---------------------------------------------------------
    async def _resolve(self, batch: Batch) -> tuple[list[Item], dict[str, DeviceInfo], dict[str, int]]:
        wanted = {it.topic.device_id: (it.topic.region, str(it.topic.stream)) for it in batch.items}
        devices = await self.writer.resolve_devices(wanted)
        ok: list[Item] = []
        names: set[str] = set()
        for it in batch.items:
            dev = devices.get(it.topic.device_id)
            if dev is None:
                batch.dead.append(_dead(it.msg, it.topic, "unknown_device", "device not registered"))
            elif dev.region != it.topic.region or dev.stream != str(it.topic.stream):
                batch.dead.append(_dead(it.msg, it.topic, "device_topic_mismatch",
                                        f"registered as {dev.region}/{dev.stream}"))
            else:
                ok.append(it)
                names.update(metric_names(it.decoded.readings))
        metric_ids = await self.writer.resolve_metrics(names) if names else {}
        if all(map(metric_ids.__contains__, names)):
            return ok, devices, metric_ids
        items = []
        for it in ok:
            unknown = next((n for n in metric_names(it.decoded.readings) if n not in metric_ids), None)
            if unknown is not None:
                batch.dead.append(_dead(it.msg, it.topic, "unknown_metric", unknown))
            else:
                items.append(it)
        return items, devices, metric_ids

    async def _write_isolating(self, items: list[Item], dead: list[DeadLetter], devices, metric_ids,
                               also=None) -> WriteResult:
        """Write; if the database refuses the data, bisect to find the refused messages.

        ``also`` (the alert transitions) rides in exactly one committed transaction: the first one."""
        rows = build_rows(items, devices, metric_ids)
        rows.dead_letters = dead
        try:
            return await self.writer.write(rows, also)
        except Exception as exc:
            if _transient(exc) or len(items) == 0:
                raise
            if len(items) == 1:
                it = items[0]
                log.warning("database refused message from %s: %s", it.topic.device_id, exc,
                            extra={"device": it.topic.device_id, "topic": it.msg.topic})
                dead = dead + [_dead(it.msg, it.topic, "db_rejected", str(exc))]
                return await self._write_isolating([], dead, devices, metric_ids, also)
            mid = len(items) // 2
            a = await self._write_isolating(items[:mid], dead, devices, metric_ids, also)
            b = await self._write_isolating(items[mid:], [], devices, metric_ids)
            return a.merge(b)

    async def commit_batch(self, batch: Batch) -> WriteResult:
        """Resolve, evaluate, write and acknowledge one batch, start to finish (replay, fuzz)."""
        return self._finish(await (await self._start(batch)))

    async def _start(self, batch: Batch) -> asyncio.Task:
        """Resolve and evaluate ``batch`` (in arrival order, under the alarm lock) and start its transaction.

        A batch that changes an alert is written while the lock is held, after every earlier batch's
        transaction finished: alert changes commit in the order the engine produced them, and no timer
        tick or later batch comes in between."""
        alarms = self.alarms
        async with alarms.lock if alarms else contextlib.nullcontext():
            items, devices, metric_ids, pending = await self._prepare(batch)
            task = asyncio.create_task(self._write_retrying(batch, items, devices, metric_ids, pending))
            earlier = list(self._writing)
            self._writing.add(task)
            task.add_done_callback(self._writing.discard)
            if pending is not None and len(pending.transitions):
                await asyncio.wait([*earlier, task])
        return task

    def _finish(self, done: tuple) -> WriteResult:
        batch, res, items, devices, metric_ids, pending = done
        self._after_commit(batch, res, items, devices, metric_ids)
        if pending is not None:
            self.alarms.after_commit(pending)
        self.committed.set()
        return res

    async def _retrying(self, what: str, batch: Batch, fn):
        delay = 0.2
        while True:
            try:
                return await fn()
            except Exception as exc:
                if not _transient(exc):
                    raise
                self.stats.write_retries += 1
                m.WRITE_FAILURES.inc()
                log.warning("database unavailable (%s) %s; batch of %d messages held, retrying in %.1fs",
                            type(exc).__name__, what, len(batch.messages), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)

    async def _prepare(self, batch: Batch):
        async def resolve():
            batch.dead = [d for d in batch.dead if d.reason not in ("unknown_device", "device_topic_mismatch",
                                                                  "unknown_metric")]
            return await self._resolve(batch)

        items, devices, metric_ids = await self._retrying("resolving", batch, resolve)
        pending = None
        if self.alarms is not None:  # the engine sees each batch once, whatever the retries
            arrays = reading_arrays(items, devices) if self.alarms.has_rules else ReadingArrays.empty()
            pending = self.alarms.evaluate(arrays)
        return items, devices, metric_ids, pending

    async def _write_retrying(self, batch: Batch, items, devices, metric_ids, pending) -> tuple:
        also = functools.partial(self.alarms.write, pending=pending) if pending is not None else None

        async def write():
            t0 = time.perf_counter()
            res = await self._write_isolating(items, batch.dead, devices, metric_ids, also)
            m.COMMIT_SECONDS.observe(time.perf_counter() - t0)
            return res

        res = await self._retrying("writing", batch, write)
        return batch, res, items, devices, metric_ids, pending

    def _after_commit(self, batch: Batch, res: WriteResult, items, devices, metric_ids) -> None:
        acked = self.consumer.ack_many(batch.messages)
        m.MESSAGES_ACKED.inc(acked)
        m.DUPLICATES.inc(res.duplicates)
        for table, n in res.per_table.items():
            m.RECORDS_WRITTEN.labels(table).inc(n)
        for d in batch.dead:
            m.DEAD_LETTERS.labels(d.reason).inc()
            log.info("dead letter: topic=%s device=%s reason=%s %s", d.topic, d.device_id, d.reason, d.detail,
                     extra={"topic": d.topic, "device": d.device_id, "reason": d.reason})
        s = self.stats
        s.messages += len(batch.messages)
        s.records += res.inserted
        s.duplicates += res.duplicates
        s.dead_letters += res.dead_letters
        s.batches += 1

    async def _writer(self) -> None:
        while True:
            batch = await self._queue.get()
            await self._slots.acquire()  # released by the acker once the batch is acknowledged
            await self._inflight.put(await self._start(batch))

    async def _acker(self) -> None:
        while True:
            task = await self._inflight.get()
            self._finish(await task)
            self._slots.release()

    async def _retention(self) -> None:
        while True:
            await asyncio.sleep(self.config.retention_interval_s)
            try:
                async with self.writer.pool.acquire() as con:
                    dropped = await apply_retention(con)
                log.info("retention: dropped chunks %s", dropped)
            except Exception:
                log.exception("retention run failed")

    async def run(self) -> None:
        """Run until cancelled."""
        self._tasks = [
            asyncio.create_task(self._decoder(), name="ingest-decoder"),
            asyncio.create_task(self._writer(), name="ingest-writer"),
            asyncio.create_task(self._acker(), name="ingest-acker"),
            asyncio.create_task(self._retention(), name="ingest-retention"),
        ]
        try:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            tasks = [*self._tasks, *self._writing]  # unacknowledged commits: the broker redelivers them
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
