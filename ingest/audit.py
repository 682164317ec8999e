"""The append-only audit log (``audit_log``, core/sql/0120): who changed what, when, with the object
before and after. Every write through the API or the CLI calls :func:`record` inside the write's own
transaction, so an entry exists exactly when the change committed.

Secrets never reach the log: keys named like a password, secret, hash or auth code are masked
(:func:`scrub`), whatever object they sit in.
"""
from __future__ import annotations

import contextlib
import getpass
import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import orjson

from wulian.ingest import device_store

SOURCES = ("api", "cli", "system")
MASK = "***"
_SECRET_KEY = re.compile(r"(?i)(pw|passw|secret|hash|auth_?code|token)")


def scrub(value: Any) -> Any:
    """A JSON-able copy of ``value`` with secret-looking keys masked, at any depth."""
    if isinstance(value, dict):
        return {k: (MASK if isinstance(k, str) and _SECRET_KEY.search(k) else scrub(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _json(value: Any) -> str | None:
    if value is None:
        return None
    return orjson.dumps(scrub(value), default=str).decode()


def cli_actor() -> str:
    """Who runs the CLI: the OS user (the CLI has no API key)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


async def record(con: asyncpg.Connection, *, actor: str, source: str, action: str, object_type: str,
                 object_id: Any = None, region: str | None = None, before: Any = None, after: Any = None,
                 key_id: str | None = None) -> int:
    """Append one entry; returns its id. Call inside the transaction of the write it describes."""
    if source not in SOURCES:
        raise ValueError(f"audit source must be one of {SOURCES}")
    return await con.fetchval(
        "INSERT INTO audit_log (actor, key_id, source, action, object_type, object_id, region, before, after)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9::jsonb) RETURNING id",
        actor, key_id, source, action, object_type, None if object_id is None else str(object_id), region,
        _json(before), _json(after))


@contextlib.asynccontextmanager
async def device_change(con: asyncpg.Connection, device_id: str, *, action: str, actor: str | None = None,
                        source: str = "cli") -> AsyncIterator[None]:
    """Wrap a registry write of one device: its row before and after land in the audit log (one entry,
    only if the body succeeded). ``async with device_change(con, id, action="device.provision"): ...``"""
    async with con.transaction():
        before = await device_store.snapshot(con, device_id)
        yield
        after = await device_store.snapshot(con, device_id)
        await record(con, actor=actor or cli_actor(), source=source, action=action, object_type="device",
                     object_id=device_id, region=(after or before or {}).get("region"), before=before, after=after)
