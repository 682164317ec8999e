"""Logical backups of the Wulian database: ``pg_dump -Fd`` out, ``pg_restore`` into a new database.

TimescaleDB hypertables dump and restore with the plain tools when the restore is bracketed by
``timescaledb_pre_restore()`` / ``timescaledb_post_restore()`` (TimescaleDB docs, "Migrate the entire
database at once": pre_restore stops background workers and puts the extension in restoring mode so
its catalog rows are restored as data; post_restore brings it back and restarts the jobs, retention
policies included). The target must run the same TimescaleDB version as the source. For continuous
archiving (point-in-time recovery) use pgBackRest instead; deploy/debian/README.md says how.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import asyncpg

MANIFEST = "wulian-backup.json"


class BackupError(RuntimeError):
    """pg_dump/pg_restore failed, or the target is not a new database."""


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise BackupError(f"{name} not found (Debian: apt-get install postgresql-client)")
    return exe


@dataclass(frozen=True, slots=True)
class BackupInfo:
    dir: str
    timescaledb: str
    server_version: str
    seconds: float
    bytes: int


async def backup(dsn: str, out_dir: Path, jobs: int = 2) -> BackupInfo:
    """Dump the database in directory format into ``out_dir`` (must not exist yet), with a manifest."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise BackupError(f"{out_dir} exists: a backup goes into a new directory")
    con = await asyncpg.connect(dsn)
    try:
        ext = await con.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        server = await con.fetchval("SHOW server_version")
    finally:
        await con.close()
    t0 = time.monotonic()
    proc = subprocess.run([_tool("pg_dump"), "--format=directory", f"--jobs={jobs}", "--file", str(out_dir),
                           "--dbname", dsn], capture_output=True, text=True)
    if proc.returncode != 0:
        raise BackupError(f"pg_dump failed: {proc.stderr.strip()[-2000:]}")
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    info = BackupInfo(str(out_dir), ext, server, round(time.monotonic() - t0, 3), size)
    (out_dir / MANIFEST).write_text(json.dumps(asdict(info), indent=1) + "\n")
    return info


async def restore(dsn: str, in_dir: Path) -> dict:
    """Restore a :func:`backup` into the (new, empty) database of ``dsn``. In one job: a parallel
    pg_restore loads TimescaleDB's catalog tables out of their foreign-key order (chunk before
    hypertable) and fails, as measured here with ``--jobs=2``."""
    in_dir = Path(in_dir)
    manifest = json.loads((in_dir / MANIFEST).read_text()) if (in_dir / MANIFEST).exists() else None
    if manifest is None:
        raise BackupError(f"{in_dir} is not a Wulian backup (no {MANIFEST})")
    con = await asyncpg.connect(dsn)
    try:
        tables = await con.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        if tables:
            raise BackupError("the target database is not empty: restore into a new database")
        await con.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        ext = await con.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
        if ext != manifest["timescaledb"]:
            raise BackupError(f"backup is of TimescaleDB {manifest['timescaledb']}, the target has {ext}: "
                              "install the same version (ALTER EXTENSION timescaledb UPDATE) first")
        await con.execute("SELECT timescaledb_pre_restore()")
        t0 = time.monotonic()
        try:
            # --no-owner: the restoring role owns the objects (the source's roles need not exist here)
            proc = subprocess.run([_tool("pg_restore"), "--no-owner", "--dbname", dsn,
                                   str(in_dir)], capture_output=True, text=True)
        finally:
            await con.execute("SELECT timescaledb_post_restore()")
    finally:
        await con.close()
    if proc.returncode != 0:
        raise BackupError(f"pg_restore failed: {proc.stderr.strip()[-2000:]}")
    return {"restored": str(in_dir), "timescaledb": ext, "seconds": round(time.monotonic() - t0, 3)}
