"""Versioned SQL migrations from ``core/sql/NNNN_name.sql``, applied once each, in order, idempotently.

A PostgreSQL advisory lock serialises concurrent ``migrate`` calls (ingest and API may start together).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import asyncpg

SQL_DIR = Path(__file__).resolve().parent.parent / "core" / "sql"
_LOCK_KEY = 0x57554C49  # "WULI"
log = logging.getLogger(__name__)


def available() -> list[tuple[int, str, Path]]:
    out = []
    for path in sorted(SQL_DIR.glob("*.sql")):
        m = re.match(r"^(\d{4})_(\w+)\.sql$", path.name)
        if m:
            out.append((int(m.group(1)), m.group(2), path))
    return out


async def migrate(con: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; returns the versions applied (empty when up to date)."""
    applied_now: list[int] = []
    await con.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await con.fetch("SELECT version FROM schema_migrations")}
        for version, name, path in available():
            if version in done:
                continue
            async with con.transaction():
                await con.execute(path.read_text(encoding="utf-8"))
                await con.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            log.info("applied migration %04d_%s", version, name)
            applied_now.append(version)
    finally:
        await con.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
