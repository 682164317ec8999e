"""Cluster-singleton duties on PostgreSQL session-level advisory locks (leases), and the lock helpers the
worker's partition ownership shares.

A lease is the advisory lock ``(LEASE_CLASS, key(name))`` held by one session, on a connection dedicated to
it. The lock lives exactly as long as that session: when the holder's process dies its socket closes and
PostgreSQL frees the lock at once; when its host vanishes the server's TCP keepalives (``KEEPALIVES``) end
the session within ~``KEEPALIVE_BOUND_S``. Standbys try the lock every ``retry_s``, so a duty moves within
about ``retry_s`` of its holder's session ending. The holder checks its session every ``check_s`` and
cancels its duty as soon as the check fails (its lock may already be another's): the duty stops on its own
side too. Duties that write keep their own idempotence (watermarks, unique keys) for the short overlap a
lost network can still leave; the lease is what keeps them from running twice in the normal case.

The holder is visible to operators: the lease connection's ``application_name`` is
``wulian-lease:<name>:<holder>`` (pg_stat_activity), and :func:`holders` lists them.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from typing import Awaitable, Callable

import asyncpg
from prometheus_client import Gauge

log = logging.getLogger(__name__)

LEASE_CLASS = 1503  # advisory lock class of leases (the worker's are 1501 member, 1502 partition)
APP_PREFIX = "wulian-lease:"
# server-side keepalives of lock sessions: a holder whose host vanished loses its session (and locks)
# after idle + interval * count seconds instead of the kernel default (hours)
KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}
KEEPALIVE_BOUND_S = 5 + 2 * 3
LEASE_HELD = Gauge("wulian_lease_held", "1 while this process holds the cluster-singleton lease", ["lease"])

_HELD = ("SELECT objid::bigint AS k, pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1"
         " AND objsubid = 2 AND granted AND database = (SELECT oid FROM pg_database"
         " WHERE datname = current_database())")


def key(name: str) -> int:
    """The lock key of a lease name: CRC-32 (stable across processes and versions), kept non-negative so
    it reads back unchanged from ``pg_locks.objid``."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


async def lock_session(dsn: str, app_name: str) -> asyncpg.Connection:
    """A connection for session-level locks: keepalives bound how long a vanished holder keeps them."""
    return await asyncpg.connect(dsn, server_settings={**KEEPALIVES, "application_name": app_name[:63]})


async def try_lock(con: asyncpg.Connection, cls: int, k: int) -> bool:
    return await con.fetchval("SELECT pg_try_advisory_lock($1, $2)", cls, k)


async def unlock(con: asyncpg.Connection, cls: int, k: int) -> bool:
    return await con.fetchval("SELECT pg_advisory_unlock($1, $2)", cls, k)


async def held(con: asyncpg.Connection, cls: int) -> dict[int, int]:
    """Every granted lock of class ``cls`` in this database, by any session: key -> holder's backend pid."""
    return {r["k"]: r["pid"] for r in await con.fetch(_HELD, cls)}


async def holders(con: asyncpg.Connection) -> dict[str, str]:
    """Lease name -> holder name, for every lease held now (from the holders' application names)."""
    rows = await con.fetch(
        "SELECT a.application_name AS app FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.classid = $1 AND l.objsubid = 2 AND l.granted"
        " AND a.application_name LIKE $2", LEASE_CLASS, APP_PREFIX + "%")
    out = {}
    for r in rows:
        name, _, holder = r["app"][len(APP_PREFIX):].partition(":")
        out[name] = holder
    return out


class Lease:
    """One cluster-singleton duty: ``await Lease(dsn, name, holder).run(duty)`` runs ``duty()`` while this
    process holds the lease, waits as a standby otherwise, and returns when the duty returns or ``stop``
    is set (the duty sees ``stop`` too and gets ``stop_grace_s`` to finish before it is cancelled). A duty
    that fails, or whose session was lost, gives the lease up and contends again only after
    ``failed_backoff_s`` (a standby may do better). A database that refuses
    the very first connection is an error (a wrong DSN answers at once); later outages are waited out."""

    def __init__(self, dsn: str, name: str, holder: str, retry_s: float = 1.0, check_s: float = 1.0,
                 failed_backoff_s: float = 5.0, stop_grace_s: float = 30.0) -> None:
        self.dsn = dsn
        self.name = name
        self.holder = holder
        self.key = key(name)
        self.retry_s = retry_s
        self.check_s = check_s
        self.failed_backoff_s = failed_backoff_s
        self.stop_grace_s = stop_grace_s
        self._connected_once = False
        self.held = False
        self.acquired = 0  # times this process took the lease (tests, logs)

    async def _acquire(self, stop: asyncio.Event) -> asyncpg.Connection | None:
        """Wait for the lease; the session holding it, or None once ``stop`` is set."""
        con = None
        while not stop.is_set():
            try:
                if con is None or con.is_closed():
                    con = await lock_session(self.dsn, f"{APP_PREFIX}{self.name}:{self.holder}")
                    self._connected_once = True
                if await try_lock(con, LEASE_CLASS, self.key):
                    return con
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                if not self._connected_once:
                    raise
                log.warning("lease %s: database unavailable (%r); retrying", self.name, exc)
                if con is not None:
                    con.terminate()
                con = None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.retry_s)
        if con is not None:
            await con.close()
        return None

    async def _session_lost(self, con: asyncpg.Connection) -> None:
        """Returns when the lease's session no longer answers (its lock may be another's by now)."""
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await asyncio.wait_for(con.fetchval("SELECT 1"), timeout=max(self.check_s, 1.0))
            except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("lease %s: session lost (%r)", self.name, exc)
                return

    async def run(self, duty: Callable[[], Awaitable[None]], stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            con = await self._acquire(stop)
            if con is None:
                return
            self.held, self.acquired = True, self.acquired + 1
            LEASE_HELD.labels(self.name).set(1)
            log.info("lease %s taken by %s", self.name, self.holder)
            work = asyncio.create_task(duty(), name=f"lease-{self.name}")
            lost = asyncio.create_task(self._session_lost(con))
            stopping = asyncio.create_task(stop.wait())
            failed = False
            try:
                await asyncio.wait([work, lost, stopping], return_when=asyncio.FIRST_COMPLETED)
                if stopping.done() and not work.done():
                    await asyncio.wait([work, lost], timeout=self.stop_grace_s, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (work, lost, stopping):
                    t.cancel()
                await asyncio.gather(work, lost, stopping, return_exceptions=True)
                self.held = False
                LEASE_HELD.labels(self.name).set(0)
                if work.done() and not work.cancelled() and work.exception() is not None:
                    failed = True
                    log.error("lease %s: duty failed; giving the lease up", self.name, exc_info=work.exception())
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(con.close(), 5)  # the session's end frees the lock
                if not con.is_closed():
                    con.terminate()
            if work.done() and not work.cancelled() and not failed:
                return  # the duty finished
            log.info("lease %s released by %s", self.name, self.holder)
            if failed or (lost.done() and not lost.cancelled()):  # let a standby take it first
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.failed_backoff_s)
