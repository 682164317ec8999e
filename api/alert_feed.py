"""Fan-out of alert changes to Server-Sent Events subscribers.

Every change to an alert is announced with ``pg_notify('wulian_alerts', json)`` in the transaction that
makes it, so subscribers see only committed changes, whoever made them (ingest's engine or this API).
One LISTEN connection per API process feeds an asyncio queue per subscriber. The payload is
``ingest.alert_store.event_payload``; the store announces every change.
"""
from __future__ import annotations

import asyncio
import logging

import asyncpg
import orjson

from wulian.core.const import ALERT_CHANNEL as CHANNEL
log = logging.getLogger(__name__)


class AlertFeed:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._con: asyncpg.Connection | None = None
        self._subs: set[asyncio.Queue] = set()
        self._lock = asyncio.Lock()

    async def _ensure(self) -> None:
        async with self._lock:
            if self._con is None or self._con.is_closed():
                self._con = await asyncpg.connect(self.dsn)
                await self._con.add_listener(CHANNEL, self._on_notify)

    def _on_notify(self, con, pid, channel, payload: str) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            log.warning("bad alert notification payload: %r", payload[:200])
            return
        for q in list(self._subs):
            if q.qsize() < 10_000:  # a stuck client loses its own backlog, nobody else's
                q.put_nowait(event)

    async def subscribe(self) -> asyncio.Queue:
        await self._ensure()
        q: asyncio.Queue = asyncio.Queue()
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subs.discard(q)

    async def close(self) -> None:
        if self._con is not None and not self._con.is_closed():
            await self._con.close()

