"""``wulian db migrate|retention|backup DIR|restore DIR``: schema migrations; dropping chunks past each
table's retention; a logical backup (pg_dump -Fd) and its restore into a new database (ingest/backup.py)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from pathlib import Path

import asyncpg

from wulian.ingest.migrations import migrate
from wulian.ingest.retention import apply_retention
from wulian.settings import get_settings


async def _run(action: str, directory: str | None) -> int:
    from wulian.ingest.backup import BackupError, backup, restore

    dsn = get_settings().db.dsn
    if action in ("backup", "restore"):
        if not directory:
            print(f"wulian db {action}: a directory is required", file=sys.stderr)
            return 2
        try:
            out = asdict(await backup(dsn, Path(directory))) if action == "backup" else \
                await restore(dsn, Path(directory))
        except BackupError as exc:
            print(f"wulian db {action}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(out))
        return 0
    con = await asyncpg.connect(dsn)
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
    p = sub.add_parser("db", help="database schema migrations, retention, backup and restore")
    p.add_argument("action", choices=["migrate", "retention", "backup", "restore"])
    p.add_argument("dir", nargs="?", default=None,
                   help="backup: a new directory to write; restore: a backup directory (target: a new database)")
    p.set_defaults(func=lambda args: asyncio.run(_run(args.action, args.dir)))
