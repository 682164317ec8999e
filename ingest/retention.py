"""Retention by ``drop_chunks`` (TimescaleDB Apache edition has no retention policies: we schedule it)."""
from __future__ import annotations

import asyncpg


async def apply_retention(con: asyncpg.Connection) -> dict[str, int]:
    """Drop chunks older than each hypertable's ``retention_policies.keep``; returns chunks dropped per table."""
    out: dict[str, int] = {}
    for row in await con.fetch("SELECT hypertable, keep FROM retention_policies ORDER BY hypertable"):
        dropped = await con.fetch(
            "SELECT drop_chunks($1::regclass, older_than => now() - $2::interval)",
            row["hypertable"],
            row["keep"],
        )
        out[row["hypertable"]] = len(dropped)
    return out


async def set_retention(con: asyncpg.Connection, days: dict[str, int]) -> None:
    """Write configured retention (settings ``db.retention_days``) into the policy table."""
    for table, n in days.items():
        await con.execute(
            "INSERT INTO retention_policies (hypertable, keep) VALUES ($1, make_interval(days => $2))"
            " ON CONFLICT (hypertable) DO UPDATE SET keep = EXCLUDED.keep",
            table,
            int(n),
        )


async def edition(con: asyncpg.Connection) -> str:
    """``timescale`` (Community: compression, built-in policies) or ``apache``."""
    return await con.fetchval("SELECT coalesce(current_setting('timescaledb.license', true), 'apache')")


async def set_compression(con: asyncpg.Connection, after_days: int) -> bool:
    """Compress chunks older than ``after_days`` (setting ``db.compress_after_days``) on every hypertable
    migration 0130 made compressible; False (nothing done) on the Apache edition, which cannot."""
    if await edition(con) != "timescale":
        return False
    for row in await con.fetch("SELECT DISTINCT hypertable_name FROM timescaledb_information.compression_settings"
                               " WHERE hypertable_schema = 'public'"):
        await con.execute("SELECT remove_compression_policy($1::regclass, if_exists => true)", row[0])
        await con.execute("SELECT add_compression_policy($1::regclass, compress_after => make_interval(days => $2))",
                          row[0], int(after_days))
    return True
