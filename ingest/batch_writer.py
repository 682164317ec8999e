"""The one module that writes telemetry with asyncpg: batched, idempotent inserts (the registry rows it
needs go through ingest/device_store.py).

Per batch, one transaction. Readings (the bulk) are sorted by the unique key (device, metric, time) and
COPYed in PostgreSQL's binary format straight into the hypertable: no staging table, no statement
executor per row, no text parsing, and the index insertions walk the b-tree in order (``bench ingest``:
7.1 PostgreSQL CPU-s per million readings, against 15.3 for ``INSERT ... SELECT FROM unnest(...) ON
CONFLICT DO NOTHING`` and 15.0 for the former text COPY into staging; README, benchmarks). COPY cannot do ON CONFLICT, so a batch holding a reading already stored (a message
redelivered after a crash) fails with a unique violation and is written again through staging.

The other tables, and that second attempt, COPY into per-connection TEMP staging tables (``ON COMMIT
DELETE ROWS``, created once in the pool's ``init`` hook), then ``INSERT ... SELECT ... ON CONFLICT DO
NOTHING`` into the hypertables: the unique indexes (device[, metric], time) are what make a redelivered
message a no-op. Times travel as int ns and become timestamptz exactly (in SQL, or ``pg_copy``).
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import numpy as np

from wulian.ingest import device_store
from wulian.ingest import metrics as m
from wulian.ingest.pg_copy import micros_since_pg_epoch, readings_copy
from wulian.ingest.rows import BatchRows, EventRow, ReadingColumns

log = logging.getLogger(__name__)

_TS = "(timestamptz 'epoch' + (s.ts_ns / 1000) * interval '1 microsecond')"

EVENT_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_device_events
    (ts_ns bigint, device_id text, kind text, code text, detail jsonb) ON COMMIT DELETE ROWS;
"""

STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS stage_readings
    (ts_ns bigint, device integer, metric smallint, value double precision, flag text) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_positions
    (ts_ns bigint, device integer, lat double precision, lon double precision, speed_kmh real, heading real,
     altitude_m real, alarm_bits bigint, status_bits bigint, mileage_km double precision, extra jsonb,
     protocol_edition smallint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS stage_traffic
    (ts_ns bigint, device integer, speed_kmh real, flow_vph real, occupancy real) ON COMMIT DELETE ROWS;
""" + EVENT_STAGING_DDL

_INSERT_READINGS = f"""
INSERT INTO readings (time, device, metric, value, flag)
SELECT {_TS}, s.device, s.metric, s.value, s.flag FROM stage_readings s
ON CONFLICT DO NOTHING"""
_INSERT_POSITIONS = f"""
INSERT INTO vehicle_positions (time, device, lat, lon, speed_kmh, heading, altitude_m, alarm_bits,
                               status_bits, mileage_km, extra, protocol_edition)
SELECT {_TS}, s.device, s.lat, s.lon, s.speed_kmh, s.heading, s.altitude_m, s.alarm_bits, s.status_bits,
       s.mileage_km, s.extra, s.protocol_edition FROM stage_positions s
ON CONFLICT DO NOTHING"""
_INSERT_TRAFFIC = f"""
INSERT INTO traffic_observations (time, device, speed_kmh, flow_vph, occupancy)
SELECT {_TS}, s.device, s.speed_kmh, s.flow_vph, s.occupancy FROM stage_traffic s
ON CONFLICT DO NOTHING"""
# The device's region and stream come from the registry (ingest has checked they match the topic);
# the digest of the detail is part of the unique key, so a redelivered event is a no-op while two
# different events of one kind at the same time are both kept.
_INSERT_EVENTS = f"""
INSERT INTO device_events (time, device, region, stream, kind, code, detail, digest)
SELECT {_TS}, d.id, d.region, d.stream, s.kind, s.code, s.detail, md5(s.detail::text)::uuid
FROM stage_device_events s JOIN devices d ON d.device_id = s.device_id
ON CONFLICT DO NOTHING"""

_READING_COLS = ["ts_ns", "device", "metric", "value", "flag"]
_READING_TABLE_COLS = ["time", "device", "metric", "value", "flag"]
_POSITION_COLS = ["ts_ns", "device", "lat", "lon", "speed_kmh", "heading", "altitude_m", "alarm_bits",
                  "status_bits", "mileage_km", "extra", "protocol_edition"]
_TRAFFIC_COLS = ["ts_ns", "device", "speed_kmh", "flow_vph", "occupancy"]
_EVENT_COLS = ["ts_ns", "device_id", "kind", "code", "detail"]
_DEAD_COLS = ["topic", "device_id", "kind", "reason", "detail", "payload"]


async def init_connection(con: asyncpg.Connection) -> None:
    """Pool ``init`` hook: staging tables live as long as the connection."""
    await con.execute(STAGING_DDL)


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    id: int
    region: str
    stream: str
    device_type: str | None = None


@dataclass(slots=True)
class WriteResult:
    staged: int = 0
    inserted: int = 0
    dead_letters: int = 0
    per_table: dict[str, int] = field(default_factory=dict)

    def merge(self, other: "WriteResult") -> "WriteResult":
        tables = dict(self.per_table)
        for k, v in other.per_table.items():
            tables[k] = tables.get(k, 0) + v
        return WriteResult(self.staged + other.staged, self.inserted + other.inserted,
                           self.dead_letters + other.dead_letters, tables)

    @property
    def duplicates(self) -> int:
        return self.staged - self.inserted


def _inserted(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


class _AlreadyStored(Exception):
    """The direct COPY met a reading already in ``readings``: the batch is written again via staging."""


async def copy_readings(con: asyncpg.Connection, cols: ReadingColumns, direct: bool) -> int:
    """Write readings inside the caller's transaction; returns rows inserted.

    ``direct``: binary COPY into ``readings`` (raises ``_AlreadyStored``, the transaction then aborted, if
    any reading is there already); else binary COPY into staging and ``INSERT ... ON CONFLICT DO
    NOTHING``, which skips those. Sorted by the unique index's key either way."""
    cols = cols.take(np.lexsort((cols.ts_ns, cols.metric, cols.device)))
    if cols.flag.dtype != np.uint8:  # a flag that is not one ASCII letter: the generic text COPY
        await con.copy_records_to_table("stage_readings", records=cols.records(), columns=_READING_COLS)
        return _inserted(await con.execute(_INSERT_READINGS))
    if direct:
        data = readings_copy(micros_since_pg_epoch(cols.ts_ns), cols.device, cols.metric, cols.value, cols.flag)
        try:
            await con.copy_to_table("readings", source=data, format="binary", columns=_READING_TABLE_COLS)
        except asyncpg.UniqueViolationError as exc:
            raise _AlreadyStored() from exc
        return len(cols)
    data = readings_copy(cols.ts_ns, cols.device, cols.metric, cols.value, cols.flag)
    await con.copy_to_table("stage_readings", source=data, format="binary", columns=_READING_COLS)
    return _inserted(await con.execute(_INSERT_READINGS))


async def write_events(con: asyncpg.Connection, events: list[EventRow]) -> int:
    """Stage and insert ``device_events`` rows inside the caller's transaction; returns rows inserted
    (redelivered ones are skipped). The one statement that writes the table: ingest calls it in each
    batch's transaction, the JT/T 808 gateway for what it answers itself (registration, authentication)."""
    await con.copy_records_to_table("stage_device_events", records=events, columns=_EVENT_COLS)
    return _inserted(await con.execute(_INSERT_EVENTS))


class BatchWriter:
    """Registry caches and the batched write; one instance per ingest process."""

    def __init__(self, pool: asyncpg.Pool, *, auto_register: bool = True, auto_add_metrics: bool = True) -> None:
        self.pool = pool
        self.auto_register = auto_register
        self.auto_add_metrics = auto_add_metrics
        self.devices: dict[str, DeviceInfo] = {}
        self.metrics: dict[str, int] = {}

    async def resolve_devices(self, wanted: dict[str, tuple[str, str]]) -> dict[str, DeviceInfo]:
        """Registry rows for ``{device_id: (region, stream)}``; unknown ones are auto-registered if allowed."""
        missing = [d for d in wanted if d not in self.devices]
        if missing:
            async with self.pool.acquire() as con:
                if self.auto_register:
                    await device_store.register_missing(con, {d: wanted[d] for d in missing})
                rows = await device_store.lookup_many(con, missing)
            for r in rows:
                self.devices[r["device_id"]] = DeviceInfo(r["id"], r["region"], r["stream"], r["device_type"])
        return {d: self.devices[d] for d in wanted if d in self.devices}

    async def resolve_metrics(self, names: set[str]) -> dict[str, int]:
        missing = [n for n in names if n not in self.metrics]
        if missing:
            async with self.pool.acquire() as con:
                if self.auto_add_metrics:
                    await con.execute(
                        "INSERT INTO metrics (name, auto_added) SELECT n, true FROM unnest($1::text[]) n"
                        " ON CONFLICT (name) DO NOTHING",
                        missing,
                    )
                rows = await con.fetch("SELECT id, name FROM metrics WHERE name = ANY($1::text[])", missing)
            for r in rows:
                self.metrics[r["name"]] = r["id"]
        return self.metrics

    async def write(self, rows: BatchRows, also: Callable[[asyncpg.Connection], Awaitable[None]] | None = None,
                    last: Callable[[asyncpg.Connection, "WriteResult"], Awaitable[None]] | None = None
                    ) -> WriteResult:
        """Write the batch in one transaction; returns counts. Raises on database failure (nothing acked).

        ``also`` runs inside the same transaction (the alarm engine's transitions), first; ``last`` at its
        end with the counts (cluster mode: the partition's committed sequence)."""
        try:
            return await self._write(rows, also, last, direct=True)
        except _AlreadyStored:
            m.READINGS_RESTAGED.inc()
            log.info("batch of %d readings holds some already stored (redelivered): written via staging",
                     len(rows.readings))
            return await self._write(rows, also, last, direct=False)

    async def _write(self, rows: BatchRows, also, last, direct: bool) -> WriteResult:
        res = WriteResult(staged=rows.n_records, dead_letters=len(rows.dead_letters))
        async with self.pool.acquire() as con:
            async with con.transaction():
                if also is not None:
                    await also(con)
                if rows.readings:
                    res.per_table["readings"] = n = await copy_readings(con, rows.readings, direct)
                    res.inserted += n
                if rows.positions:
                    await con.copy_records_to_table("stage_positions", records=rows.positions, columns=_POSITION_COLS)
                    res.per_table["vehicle_positions"] = n = _inserted(await con.execute(_INSERT_POSITIONS))
                    res.inserted += n
                if rows.traffic:
                    await con.copy_records_to_table("stage_traffic", records=rows.traffic, columns=_TRAFFIC_COLS)
                    res.per_table["traffic_observations"] = n = _inserted(await con.execute(_INSERT_TRAFFIC))
                    res.inserted += n
                if rows.events:
                    res.per_table["device_events"] = n = await write_events(con, rows.events)
                    res.inserted += n
                if rows.dead_letters:
                    await con.copy_records_to_table(
                        "dead_letters",
                        records=[(d.topic, d.device_id, d.kind, d.reason, d.detail, d.payload) for d in rows.dead_letters],
                        columns=_DEAD_COLS,
                    )
                if rows.last_seen:
                    await device_store.touch_last_seen(con, rows.last_seen)
                if last is not None:
                    await last(con, res)
        return res
