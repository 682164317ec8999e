"""What gateways need from the database: device identity lookups (cached), credentials from the
device-secret store, auto-provisioning, and a buffered sink for dead letters and device events.

Lookups are cached for ``ttl_s`` so a reconnect storm of thousands of terminals costs one query per
device, not one per frame. A cache must never keep a revoked credential or a removed device alive, so
the registry answers from its cache only while it LISTENs on ``DEVICE_CREDENTIALS_CHANNEL``: triggers
announce every change to ``device_secrets`` and every removal (core/sql/0102_device_secrets.sql), and the
device is dropped from the cache as the notification arrives (within milliseconds of the commit). While
the listening connection is down (not started, or lost), every lookup asks the database; when it comes
back the cache starts empty. A lookup per frame instead would cost a database round trip per packet
(README: field gateways); a short TTL alone would leave a removed device accepted for that long.

When the database cannot be reached, the last known record is used (stale-if-error, as before this
registry listened): revoking a credential needs the database, so none can be revoked while it is away;
only a change committed in the instant before it went away, whose notification never arrived, could be
missed until it is back. Devices never seen are refused meanwhile (the lookup raises).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg

from wulian.core.const import DEVICE_CREDENTIALS_CHANNEL
from wulian.ingest import device_secrets, device_store
from wulian.ingest.aio import stop_task
from wulian.ingest.batch_writer import EVENT_STAGING_DDL, write_events
from wulian.ingest.device_store import DeviceSpec
from wulian.ingest.rows import DeadLetter, EventRow

log = logging.getLogger(__name__)
RELISTEN_S = 1.0  # pause between attempts to re-establish a lost LISTEN connection
DB_RETRY_S = 1.0  # after a failed lookup, known devices are answered from the cache this long without asking
_DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    device_id: str
    region: str
    stream: str
    device_type: str | None
    attrs: dict
    removed: bool = False  # ``wulian device remove``: refused, never auto-provisioned again
    secrets: dict = field(default_factory=dict, repr=False)  # kind -> secret (ingest/device_secrets.py)


class DeviceRegistry:
    def __init__(self, pool: asyncpg.Pool, *, ttl_s: float = 30.0, miss_ttl_s: float = 5.0) -> None:
        self.pool = pool
        self.ttl_s = ttl_s
        self.miss_ttl_s = miss_ttl_s
        self._cache: dict[str, tuple[float, DeviceRecord | None]] = {}
        self._inflight: dict[str, asyncio.Future] = {}
        self._stale: set[str] = set()  # announced while their lookup was in flight: not to be cached
        self._db_down_until = 0.0  # monotonic time until which known devices skip the database
        self.listening = False
        self.listen_pid: int | None = None  # server pid of the LISTEN connection
        self.invalidations = 0  # notifications received (tests wait on it)
        self.invalidated = asyncio.Event()
        self._listen_task: asyncio.Task | None = None

    # -- invalidation ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen for credential changes (and cache from then on); the gateway calls it on start."""
        if self._listen_task is None:
            ready = asyncio.get_running_loop().create_future()
            self._listen_task = asyncio.create_task(self._listen(ready), name="device-registry-listen")
            await asyncio.wait({ready, self._listen_task}, return_when=asyncio.FIRST_COMPLETED)

    async def stop(self) -> None:
        if self._listen_task is not None:
            await stop_task(self._listen_task)
            self._listen_task = None

    async def _listen(self, ready: asyncio.Future) -> None:
        while True:
            lost = asyncio.Event()

            def on_lost(_con) -> None:
                lost.set()

            try:
                async with self.pool.acquire() as con:
                    con.add_termination_listener(on_lost)
                    await con.add_listener(DEVICE_CREDENTIALS_CHANNEL, self._on_notify)
                    try:
                        self._cache.clear()  # whatever changed while not listening is unknown
                        self._stale.update(self._inflight)
                        self.listening, self.listen_pid = True, con.get_server_pid()
                        if not ready.done():
                            ready.set_result(True)
                        await lost.wait()
                        log.warning("device registry: LISTEN connection lost; not caching until it is back")
                    finally:
                        self._forget_all()
                        con.remove_termination_listener(on_lost)
                        if not con.is_closed():
                            with contextlib.suppress(Exception):
                                await con.remove_listener(DEVICE_CREDENTIALS_CHANNEL, self._on_notify)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: retried; lookups meanwhile go to the database
                log.warning("device registry: not listening for credential changes (%s); not caching", exc)
            if not ready.done():
                ready.set_result(False)
            await asyncio.sleep(RELISTEN_S)

    def _forget_all(self) -> None:
        """Notifications may be missed from now on: the cache is no longer trusted (kept only for
        stale-if-error), and lookups in flight must not refresh it."""
        self.listening = False
        self._stale.update(self._inflight)

    def _on_notify(self, _con, _pid, _channel, device_id: str) -> None:
        self._cache.pop(device_id, None)
        if device_id in self._inflight:
            self._stale.add(device_id)
        self.invalidations += 1
        self.invalidated.set()

    def cached(self, device_id: str) -> bool:
        """True while a lookup of ``device_id`` would be answered from the cache (the database being up)."""
        hit = self._cache.get(device_id)
        return self.listening and hit is not None and hit[0] > time.monotonic()

    # -- lookups -----------------------------------------------------------------------------------
    async def get(self, device_id: str) -> DeviceRecord | None:
        now = time.monotonic()
        hit = self._cache.get(device_id)
        if hit is not None and (hit[0] > now and self.listening or now < self._db_down_until):
            return hit[1]
        fut = self._inflight.get(device_id)
        if fut is not None:  # one query per device however many frames wait for it
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[device_id] = fut
        try:
            try:
                async with self.pool.acquire() as con:
                    row = await device_secrets.fetch_device(con, device_id)
            except _DB_ERRORS:
                self._db_down_until = time.monotonic() + DB_RETRY_S
                hit = self._cache.get(device_id)  # not dropped by a notification meanwhile
                if hit is None:
                    raise
                fut.set_result(hit[1])  # stale-if-error (module docstring)
                return hit[1]
            rec = DeviceRecord(**row) if row is not None else None
            if device_id not in self._stale:
                self._cache[device_id] = (now + (self.ttl_s if rec else self.miss_ttl_s), rec)
            fut.set_result(rec)
            return rec
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._inflight[device_id]
            self._stale.discard(device_id)

    async def update(self, device_id: str, *, attrs: dict | None = None, secrets: dict | None = None,
                     protocol_edition: int | None = None) -> None:
        """Merge ``attrs`` into the device's attributes, set ``secrets`` and, if given, the protocol
        edition it speaks (``devices.protocol_edition``), in one transaction committed before it returns;
        the next lookup reads them back."""
        async with self.pool.acquire() as con:
            async with con.transaction():
                await device_store.update(con, device_id, attrs=attrs, protocol_edition=protocol_edition)
                if secrets:
                    await device_secrets.put(con, device_id, secrets)
        self._cache.pop(device_id, None)
        if device_id in self._inflight:
            self._stale.add(device_id)

    async def provision(self, spec: DeviceSpec) -> DeviceRecord:
        """Auto-provisioning: register a device the gateway did not know (``auto_registered``)."""
        async with self.pool.acquire() as con:
            await device_store.upsert(con, spec, device_store.AUTO_PROVISION)
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
        self._flushing = asyncio.Lock()
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
            await stop_task(self._task)
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
        """Write what is buffered; a flush already under way is waited for first, so that when this
        returns everything added before the call is committed (not merely taken by the other flush)."""
        async with self._flushing:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
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
