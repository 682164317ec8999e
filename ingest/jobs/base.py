"""The one framework of derived-data jobs.

A job turns raw hypertables into derived ones (hourly source values, AQI, water classes, forecasts,
vehicle violations, ...). It runs every ``interval_s``. Each run processes, per watermark key (the
job's name, or one key per region), the data from the key's watermark to a safe end (late data arrive
first) in ONE transaction under the key's advisory lock: the reads, the idempotent upserts, the alerts
(through ``ingest.alert_store``) and the watermark's advance commit together or not at all, and two
``wulian derive`` processes never process the same key at once.

Subclasses implement ``run_key`` (and ``keys`` for more than one watermark); ``SpanJob`` is the shape
of jobs that take ``[watermark, now - lag)`` in spans of at most ``max_span_ns``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import asyncpg
import orjson

from wulian.core.timebase import dt_to_ns, ns_to_dt


class Job(Protocol):
    name: str
    interval_s: float

    async def run_once(self, pool: asyncpg.Pool, now_ns: int) -> dict:
        """Process what is due; returns figures for the log (rows written, alerts raised, ...)."""


async def get_watermark(con: asyncpg.Connection, key: str) -> int | None:
    """The key's watermark (UTC ns), None before its first run."""
    upto = await con.fetchval("SELECT upto FROM job_watermarks WHERE job = $1", key)
    return None if upto is None else dt_to_ns(upto)


async def set_watermark(con: asyncpg.Connection, key: str, upto_ns: int, stats: dict) -> None:
    await con.execute(
        "INSERT INTO job_watermarks (job, upto, stats) VALUES ($1, $2, $3::jsonb)"
        " ON CONFLICT (job) DO UPDATE SET upto = EXCLUDED.upto, stats = EXCLUDED.stats, updated_at = now()",
        key, ns_to_dt(upto_ns), orjson.dumps(stats).decode())


async def lock_key(con: asyncpg.Connection, key: str) -> None:
    """Hold the key's advisory lock until the transaction ends (a second process waits, then finds the
    watermark already advanced)."""
    await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)


@dataclass(frozen=True, slots=True)
class Done:
    """What ``run_key`` did: the new watermark (None: nothing processed, the watermark stays) and figures."""

    upto_ns: int | None
    stats: dict


class WindowedJob:
    """Runs ``run_key`` for each of ``keys`` in its own locked transaction with the watermark's advance."""

    name: str
    interval_s: float

    async def keys(self, con: asyncpg.Connection) -> list[str]:
        return [self.name]

    async def run_key(self, con: asyncpg.Connection, key: str, watermark_ns: int | None, now_ns: int) -> Done:
        raise NotImplementedError

    def summary(self, by_key: dict[str, dict]) -> dict:
        """The run's figures from each key's (one key: its own)."""
        return next(iter(by_key.values())) if len(by_key) == 1 else by_key

    async def run_once(self, pool: asyncpg.Pool, now_ns: int) -> dict:
        async with pool.acquire() as con:
            keys = await self.keys(con)
        out = {}
        for key in keys:
            async with pool.acquire() as con, con.transaction():
                await lock_key(con, key)
                done = await self.run_key(con, key, await get_watermark(con, key), now_ns)
                if done.upto_ns is not None:
                    await set_watermark(con, key, done.upto_ns, done.stats)
            out[key] = done.stats
        return self.summary(out)


class SpanJob(WindowedJob):
    """``[watermark, now - lag)`` in spans of at most ``max_span_ns``; a job with no watermark starts
    ``backfill_ns`` back. Subclasses set ``name``, ``interval_s``, ``lag_ns``, ``backfill_ns``,
    ``max_span_ns`` and implement ``_run``."""

    lag_ns: int
    backfill_ns: int
    max_span_ns: int

    async def run_key(self, con: asyncpg.Connection, key: str, watermark_ns: int | None, now_ns: int) -> Done:
        end_ns = now_ns - self.lag_ns
        wm_ns = end_ns - self.backfill_ns if watermark_ns is None else watermark_ns
        end_ns = min(end_ns, wm_ns + self.max_span_ns)
        if end_ns <= wm_ns:
            return Done(None, {"skipped": "nothing new"})
        return Done(end_ns, await self._run(con, wm_ns, end_ns))

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        raise NotImplementedError


__all__ = ["Job", "WindowedJob", "SpanJob", "Done", "get_watermark", "set_watermark", "lock_key"]
