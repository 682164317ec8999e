"""What gateways need from the database: device identity lookups (cached), per-device attributes
(JT/T 808 auth codes), auto-provisioning, and a buffered sink for dead letters and device events.

Lookups are cached for ``ttl_s`` so a reconnect storm of thousands of terminals costs one query per
device, not one per frame; a changed attribute written through this registry updates the cache.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass

import asyncpg

from wulian.ingest.batch_writer import EVENT_STAGING_DDL, write_events
from wulian.ingest.provisioning import DeviceSpec, upsert_device
from wulian.ingest.rows import DeadLetter, EventRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    region: str
    stream: str
    device_type: str | None
    attrs: dict


def _record(row: asyncpg.Record) -> DeviceRecord:
    attrs = row["attrs"]
    if isinstance(attrs, str):  # jsonb without a registered codec
        attrs = json.loads(attrs)
    return DeviceRecord(row["device_id"], row["region"], row["stream"], row["device_type"], attrs or {})


class DeviceRegistry:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 30.0, miss_ttl_s: float = 5.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.miss_ttl_s = miss_ttl_s
        self._cache: dict[str, tuple[float, DeviceRecord | None]] = {}
        self._inflight: dict[str, asyncio.Future] = {}

    async def get(self, device_id: str) -> DeviceRecord | None:
        now = time.monotonic()
        hit = self._cache.get(device_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        fut = self._inflight.get(device_id)
        if fut is not None:  # one query per device however many frames wait for it
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[device_id] = fut
        try:
            async with self.pool.acquire() as con:
                row = await con.fetchrow(
                    "SELECT device_id, region, stream, device_type, attrs FROM devices WHERE device_id = $1",
                    device_id)
            rec = _record(row) if row is not None else None
            self._cache[device_id] = (now + (self.ttl_s if rec else self.miss_ttl_s), rec)
            fut.set_result(rec)
            return rec
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._inflight[device_id]

    async def set_attrs(self, device_id: str, patch: dict, *, protocol_edition: int | None = None
                        ) -> DeviceRecord | None:
        """Merge ``patch`` into the device's attrs and, if given, set the protocol edition it speaks
        (``devices.protocol_edition``), in one statement committed before it returns."""
        async with self.pool.acquire() as con:
            row = await con.fetchrow(
                "UPDATE devices SET attrs = attrs || $2::jsonb,"
                " protocol_edition = coalesce($3::smallint, protocol_edition) WHERE device_id = $1 "
                "RETURNING device_id, region, stream, device_type, attrs", device_id, json.dumps(patch),
                protocol_edition)
        rec = _record(row) if row is not None else None
        self._cache[device_id] = (time.monotonic() + self.ttl_s, rec)
        return rec

    async def provision(self, spec: DeviceSpec) -> DeviceRecord:
        """Auto-provisioning: register a device the gateway did not know (``auto_registered``)."""
        async with self.pool.acquire() as con:
            await upsert_device(con, spec, auto=True)
        self._cache.pop(spec.device_id, None)
        rec = await self.get(spec.device_id)
        assert rec is not None
        return rec


class DeadLetterSink:
    """Buffers gateway dead letters, and the device events a gateway answers itself (JT/T 808
    registration, authentication), and writes them in the background (one transaction per flush), so a
    flood of garbage costs the gateway an append per frame, not a round trip."""

    def __init__(self, pool: asyncpg.Pool, *, flush_s: float = 0.2, max_buffer: int = 100_000) -> None:
        self.pool = pool
        self.flush_s = flush_s
        self.max_buffer = max_buffer
        self._buf: list[DeadLetter] = []
        self._events: list[EventRow] = []
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self.written = 0
        self.events_written = 0  # rows inserted (an event retried after an unclear commit counts once)
        self.dropped = 0

    def add(self, topic: str, device_id: str | None, kind: str, reason: str, detail: str, payload: bytes) -> None:
        if len(self._buf) >= self.max_buffer:
            self.dropped += 1
            return
        self._buf.append(DeadLetter(topic, device_id, kind, reason, detail[:1000], bytes(payload[:65536])))
        self._wake.set()

    def add_event(self, row: EventRow) -> None:
        if len(self._events) >= self.max_buffer:
            self.dropped += 1
            return
        self._events.append(row)
        self._wake.set()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gateway-dead-letters")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await asyncio.sleep(self.flush_s)
            try:
                await self.flush()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("gateway dead letters not written yet: %s", exc)
                self._wake.set()
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        if not self._buf and not self._events:
            return
        batch, self._buf = self._buf, []
        events, self._events = self._events, []
        try:
            async with self.pool.acquire() as con, con.transaction():
                if batch:
                    await con.copy_records_to_table(
                        "dead_letters", columns=["topic", "device_id", "kind", "reason", "detail", "payload"],
                        records=[(d.topic, d.device_id, d.kind, d.reason, d.detail, d.payload) for d in batch])
                if events:
                    inserted = await self._write_events(con, events)
        except BaseException:
            self._buf[:0] = batch
            self._events[:0] = events
            raise
        self.written += len(batch)
        if events:
            self.events_written += inserted

    async def _write_events(self, con: asyncpg.Connection, events: list[EventRow]) -> int:
        """Events in a savepoint: rows the database refuses for their data are dropped (logged), never
        retried for ever ahead of the dead letters."""
        try:
            async with con.transaction():
                await con.execute(EVENT_STAGING_DDL)  # a gateway's pool has no init hook; idempotent
                return await write_events(con, events)
        except asyncpg.DataError as exc:
            log.error("gateway device events refused by the database, %d dropped: %s", len(events), exc)
            self.dropped += len(events)
            return 0
