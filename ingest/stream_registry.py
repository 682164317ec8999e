"""The process's stream registry (core.streams): loaded from the ``streams`` table at start and reloaded
when a row changes (LISTEN on STREAMS_CHANNEL, with a periodic reload in case a notification is lost).

Topic parsing and the JSON codec read :func:`current` - a snapshot swapped whole, so a lookup is one
dict access. Without a database (``wulian decode``, fuzz, benches) it is the built-in streams only.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Callable

import asyncpg
import orjson

from wulian.core.streams import BUILTIN_REGISTRY, STREAMS_CHANNEL, StreamDef, StreamError, StreamRegistry

log = logging.getLogger(__name__)
_current: StreamRegistry = BUILTIN_REGISTRY

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
    """Keeps :func:`current` up to date; ``await on_change(registry)`` runs after each reload that changed it."""

    def __init__(self, dsn: str, on_change: Callable[[StreamRegistry], None] | None = None,
                 poll_s: float = 30.0) -> None:
        self.dsn = dsn
        self.on_change = on_change
        self.poll_s = poll_s
        self._con: asyncpg.Connection | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.reloads = 0

    async def start(self) -> StreamRegistry:
        self._con = await asyncpg.connect(self.dsn)
        await self._con.add_listener(STREAMS_CHANNEL, lambda *_: self._wake.set())
        install(await load(self._con))  # the starting state: on_change is for later changes
        self._task = asyncio.create_task(self._run(), name="stream-registry")
        return current()

    async def reload(self) -> None:
        new = await load(self._con)
        changed = new.streams != current().streams
        install(new)
        if changed and self.on_change is not None:
            await self.on_change(new)
        self.reloads += 1

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
            self._wake.clear()
            try:
                await self.reload()
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("stream registry reload failed (%s); keeping the current one", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._con is not None:
            await self._con.close()


async def create_stream(con: asyncpg.Connection, sdef: StreamDef, *, actor: str, source: str,
                        key_id: str | None = None) -> list[int]:
    """Insert a new stream and its default rules (enabled, in ``rules``) in the caller's transaction,
    audited; returns the rule ids. The NOTIFY trigger tells every ingest and API process."""
    from wulian.core.alarms.rules import Rule
    from wulian.ingest import audit

    d = sdef.to_dict()
    await con.execute(
        "INSERT INTO streams (name, title, builtin, scalar, metrics, device_types, default_rules, dashboard,"
        " updated_by) VALUES ($1, $2, false, true, $3::jsonb, $4, $5::jsonb, $6::jsonb, $7)",
        sdef.name, sdef.title, orjson.dumps(d["metrics"]).decode(), list(sdef.device_types),
        orjson.dumps(d["default_rules"]).decode(), None if sdef.dashboard is None else orjson.dumps(sdef.dashboard).decode(),
        actor)
    rule_ids = []
    for r in sdef.default_rules:
        rule_id = await con.fetchval("SELECT nextval(pg_get_serial_sequence('rules', 'id'))")
        rule = Rule.from_dict({**r, "id": rule_id})
        await con.execute("INSERT INTO rules (id, definition, enabled, updated_by) VALUES ($1, $2::jsonb, $3, $4)",
                          rule_id, orjson.dumps(rule.to_dict()).decode(), rule.enabled, actor)
        rule_ids.append(rule_id)
    await audit.record(con, actor=actor, key_id=key_id, source=source, action="stream.create", object_type="stream",
                       object_id=sdef.name, after={**d, "rule_ids": rule_ids})
    return rule_ids
