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
