"""``wulian db migrate|retention``: apply schema migrations; drop chunks past each table's retention."""
from __future__ import annotations

import argparse
import asyncio
import json

import asyncpg

from wulian.ingest.migrations import migrate
from wulian.ingest.retention import apply_retention
from wulian.settings import get_settings


async def _run(action: str) -> int:
    con = await asyncpg.connect(get_settings().db.dsn)
    try:
        if action == "migrate":
            applied = await migrate(con)
            print(json.dumps({"applied": applied}))
        else:
            print(json.dumps(await apply_retention(con)))
    finally:
        await con.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("db", help="database schema migrations and retention")
    p.add_argument("action", choices=["migrate", "retention"])
    p.set_defaults(func=lambda args: asyncio.run(_run(args.action)))
