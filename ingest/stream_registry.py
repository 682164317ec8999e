"""The process's stream registry (core.streams): loaded from the ``streams`` table at start and reloaded
when a row changes (LISTEN on STREAMS_CHANNEL, with a periodic reload in case a notification is lost).

Topic parsing and the JSON codec read :func:`current` - a snapshot swapped whole, so a lookup is one
dict access. Without a database (``wulian decode``, fuzz, benches) it is the built-in streams only.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Awaitable, Callable

import asyncpg
import orjson

from wulian.core.streams import BUILTIN_REGISTRY, STREAMS_CHANNEL, StreamDef, StreamError, StreamRegistry
from wulian.ingest.aio import stop_task

log = logging.getLogger(__name__)
_current: StreamRegistry = BUILTIN_REGISTRY
CLOSE_TIMEOUT_S = 10.0  # a watcher's connection left to close this long, then dropped

STREAM_COLUMNS = ("name, title, builtin, scalar, metrics::text AS metrics, device_types,"
                  " default_rules::text AS default_rules, dashboard::text AS dashboard")


def current() -> StreamRegistry:
    return _current


def install(registry: StreamRegistry) -> None:
    global _current
    _current = registry


def stream_def(row) -> StreamDef:
    d = dict(row)
    for k in ("metrics", "default_rules", "dashboard"):
        d[k] = orjson.loads(d[k]) if d[k] is not None else None
    return StreamDef.from_dict({**d, "device_types": list(d["device_types"])}, builtin=d["builtin"])


async def load(con: asyncpg.Connection) -> StreamRegistry:
    defs = []
    for r in await con.fetch(f"SELECT {STREAM_COLUMNS} FROM streams ORDER BY name"):
        try:
            defs.append(stream_def(r))
        except StreamError as exc:  # written around the API: skip it, keep the others
            log.error("stream %s in the database is invalid, ignored: %s", r["name"], exc)
    return StreamRegistry.of(defs)


class RegistryWatcher:
    """Keeps :func:`current` up to date; ``await on_change(registry)`` runs after each reload that changed it.
    An unchanged reload keeps the installed object, so ``current() is seen`` tells a reader (a cluster
    worker's partition) that nothing changed since it last looked."""

    def __init__(self, dsn: str, on_change: Callable[[StreamRegistry], Awaitable[None]] | None = None,
                 poll_s: float = 30.0) -> None:
        self.dsn = dsn
        self.on_change = on_change
        self.poll_s = poll_s
        self._con: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()  # one query at a time on the connection; concurrent refreshes share one
        self._loaded_from = -math.inf  # time.monotonic() when the newest reload started
        self.reloads = 0

    async def _connect(self) -> None:
        self._con = await asyncpg.connect(self.dsn)
        await self._con.add_listener(STREAMS_CHANNEL, lambda *_: self._wake.set())

    async def start(self) -> StreamRegistry:
        await self._connect()
        self._loaded_from = time.monotonic()
        install(await load(self._con))  # the starting state: on_change is for later changes
        self._task = asyncio.create_task(self._run(), name="stream-registry")
        return current()

    async def reload(self) -> None:
        async with self._lock:
            await self._reload()

    async def refresh(self, since: float) -> None:
        """Reload unless a reload that started at or after ``since`` (``time.monotonic()``) has completed:
        a cluster worker that met an unknown stream in a batch it began decoding at ``since`` asks the
        database before dead-lettering, since the stream's NOTIFY may still be on its way."""
        async with self._lock:
            if self._loaded_from < since:
                await self._reload()

    async def _reload(self) -> None:
        if self._con.is_closed():  # the database restarted: listen again (a NOTIFY meanwhile is lost,
            await self._connect()  # the load below reads what it announced)
        started = time.monotonic()
        new = await load(self._con)
        changed = new.streams != current().streams
        self._loaded_from = started
        self.reloads += 1
        if changed:
            install(new)
            log.info("stream registry changed: %d streams (%s)", len(new.streams), ", ".join(new.names()))
            if self.on_change is not None:
                await self.on_change(new)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                await self.reload()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("stream registry reload failed (%s); keeping the current one", exc)

    async def stop(self) -> None:
        await stop_task(self._task)
        if self._con is not None:
            try:  # a database that no longer answers must not keep a stopping service waiting
                await self._con.close(timeout=CLOSE_TIMEOUT_S)
            except (asyncio.TimeoutError, OSError, asyncpg.InterfaceError):
                self._con.terminate()


async def _insert_rules(con: asyncpg.Connection, rules, actor: str) -> list[int]:
    from wulian.core.alarms.rules import Rule

    rule_ids = []
    for r in rules:
        rule_id = await con.fetchval("SELECT nextval(pg_get_serial_sequence('rules', 'id'))")
        rule = Rule.from_dict({**r, "id": rule_id})
        await con.execute("INSERT INTO rules (id, definition, enabled, updated_by) VALUES ($1, $2::jsonb, $3, $4)",
                          rule_id, orjson.dumps(rule.to_dict()).decode(), rule.enabled, actor)
        rule_ids.append(rule_id)
    return rule_ids


def _spec_args(sdef: StreamDef) -> tuple:
    d = sdef.to_dict()
    return (sdef.title, orjson.dumps(d["metrics"]).decode(), list(sdef.device_types),
            orjson.dumps(d["default_rules"]).decode(),
            None if sdef.dashboard is None else orjson.dumps(sdef.dashboard).decode())


async def create_stream(con: asyncpg.Connection, sdef: StreamDef, *, actor: str, source: str,
                        key_id: str | None = None) -> list[int]:
    """Insert a new stream and its default rules (enabled, in ``rules``) in the caller's transaction,
    audited; returns the rule ids. The NOTIFY trigger tells every ingest and API process."""
    from wulian.ingest import audit

    await con.execute(
        "INSERT INTO streams (name, title, builtin, scalar, metrics, device_types, default_rules, dashboard,"
        " updated_by) VALUES ($1, $2, false, true, $3::jsonb, $4, $5::jsonb, $6::jsonb, $7)",
        sdef.name, *_spec_args(sdef), actor)
    rule_ids = await _insert_rules(con, sdef.default_rules, actor)
    await audit.record(con, actor=actor, key_id=key_id, source=source, action="stream.create", object_type="stream",
                       object_id=sdef.name, after={**sdef.to_dict(), "rule_ids": rule_ids})
    return rule_ids


class StreamInUse(ValueError):
    """A stream that cannot be deleted or replaced as asked; the message says why."""


async def _locked(con: asyncpg.Connection, name: str) -> StreamDef | None:
    row = await con.fetchrow(f"SELECT {STREAM_COLUMNS} FROM streams WHERE name = $1 FOR UPDATE", name)
    return None if row is None else stream_def(row)


async def replace_stream(con: asyncpg.Connection, sdef: StreamDef, *, actor: str, source: str,
                         key_id: str | None = None) -> list[int] | None:
    """Replace a registry stream's definition (None: no such stream), audited with before and after.

    Rules already created from default rules are rows of their own, tuned through /v1/rules: they are left
    as they are. A default rule whose name no rule of the stream has yet is created (its id returned)."""
    from wulian.ingest import audit

    before = await _locked(con, sdef.name)
    if before is None:
        return None
    if before.builtin:
        raise StreamInUse(f"{sdef.name!r} is a built-in stream: its tables and jobs are code")
    await con.execute(
        "UPDATE streams SET title = $2, metrics = $3::jsonb, device_types = $4, default_rules = $5::jsonb,"
        " dashboard = $6::jsonb, updated_at = now(), updated_by = $7 WHERE name = $1",
        sdef.name, *_spec_args(sdef), actor)
    have = {r["name"] for r in await con.fetch(
        "SELECT definition->>'name' AS name FROM rules WHERE definition->>'stream' = $1", sdef.name)}
    rule_ids = await _insert_rules(con, [r for r in sdef.default_rules if r["name"] not in have], actor)
    await audit.record(con, actor=actor, key_id=key_id, source=source, action="stream.update", object_type="stream",
                       object_id=sdef.name, before=before.to_dict(), after={**sdef.to_dict(), "rule_ids": rule_ids})
    return rule_ids


async def delete_stream(con: asyncpg.Connection, name: str, *, actor: str, source: str,
                        key_id: str | None = None) -> list[int] | None:
    """Delete a registry stream with no devices (None: no such stream), disabling the rules scoped to it
    (kept, like every rule, for the alerts that name them); audited. Returns the disabled rule ids."""
    from wulian.ingest import audit

    before = await _locked(con, name)
    if before is None:
        return None
    if before.builtin:
        raise StreamInUse(f"{name!r} is a built-in stream: its tables and jobs are code")
    devices = await con.fetchval("SELECT count(*) FROM devices WHERE stream = $1", name)
    if devices:
        raise StreamInUse(f"stream {name!r} has {devices} devices: delete or move them first")
    disabled = [r["id"] for r in await con.fetch(
        "UPDATE rules SET enabled = false, updated_at = now(), updated_by = $2,"
        " definition = jsonb_set(definition, '{enabled}', 'false')"
        " WHERE definition->>'stream' = $1 AND enabled RETURNING id", name, actor)]
    await con.execute("DELETE FROM streams WHERE name = $1", name)
    await audit.record(con, actor=actor, key_id=key_id, source=source, action="stream.delete", object_type="stream",
                       object_id=name, before=before.to_dict(), after={"disabled_rule_ids": disabled})
    return disabled
