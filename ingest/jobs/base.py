"""What a derived-data job is, and its watermark helpers.

A job turns raw hypertables into derived ones (hourly source values, AQI, water classes, forecasts,
vehicle violations, ...). It runs every ``interval_s``; each run processes the time range from its
watermark to a safe end (``now - lag_s``, so late data still arrives first), writes results
idempotently (upserts keyed by time), raises or clears alerts through ``ingest.alert_store``, and
advances the watermark in the same transaction.
"""
from __future__ import annotations

from datetime import datetime
from typing import Protocol

import asyncpg

from wulian.core.timebase import dt_to_ns, ns_to_dt


class Job(Protocol):
    name: str
    interval_s: float

    async def run_once(self, pool: asyncpg.Pool, now_ns: int) -> dict:
        """Process what is due; returns figures for the log (rows written, alerts raised, ...)."""


async def get_watermark(con: asyncpg.Connection, job: str, default: datetime) -> datetime:
    upto = await con.fetchval("SELECT upto FROM job_watermarks WHERE job = $1", job)
    return upto or default


async def set_watermark(con: asyncpg.Connection, job: str, upto: datetime, stats: str | None = None) -> None:
    await con.execute(
        "INSERT INTO job_watermarks (job, upto, stats) VALUES ($1, $2, $3::jsonb)"
        " ON CONFLICT (job) DO UPDATE SET upto = EXCLUDED.upto, stats = EXCLUDED.stats, updated_at = now()",
        job, upto, stats)


class WindowedJob:
    """A job that processes ``[watermark, now - lag)`` in spans of at most ``max_span_ns``, in one
    transaction with the watermark's advance. Subclasses set ``name``, ``interval_s``, ``lag_ns``,
    ``backfill_ns`` (how far back a job with no watermark starts), ``max_span_ns`` and implement ``_run``."""

    name: str
    interval_s: float
    lag_ns: int
    backfill_ns: int
    max_span_ns: int

    async def run_once(self, pool: asyncpg.Pool, now_ns: int) -> dict:
        import orjson

        end_ns = now_ns - self.lag_ns
        async with pool.acquire() as con, con.transaction():
            wm_ns = dt_to_ns(await get_watermark(con, self.name, ns_to_dt(end_ns - self.backfill_ns)))
            end_ns = min(end_ns, wm_ns + self.max_span_ns)
            if end_ns <= wm_ns:
                return {"skipped": "nothing new"}
            stats = await self._run(con, wm_ns, end_ns)
            await set_watermark(con, self.name, ns_to_dt(end_ns), orjson.dumps(stats).decode())
        return stats

    async def _run(self, con: asyncpg.Connection, wm_ns: int, end_ns: int) -> dict:
        raise NotImplementedError
