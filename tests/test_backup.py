"""`wulian db backup DIR` / `wulian db restore DIR`: a populated database comes back row for row in a new
database (count and checksum of every table, sequences, hypertables and their retention jobs)."""
import os
import subprocess
import sys
import uuid
from pathlib import Path
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from tests.conftest import fresh_database
from wulian.ingest.backup import BackupError, restore

N_DEVICES, N_READINGS, N_ALERTS = 20, 30_000, 50


async def _populate(dsn: str) -> None:
    con = await asyncpg.connect(dsn)
    try:
        t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
        ids = [await con.fetchval("INSERT INTO devices (device_id, region, stream, name) VALUES ($1, 'bk', "
                                  "'pollution', $2) RETURNING id", f"BK{k:03d}", f"站点 {k}")
               for k in range(N_DEVICES)]
        metric = await con.fetchval("SELECT id FROM metrics WHERE name = 'SO2'")
        # 30 000 readings over 60 days: many chunks of the hypertable
        await con.copy_records_to_table("readings", columns=["time", "device", "metric", "value", "flag"], records=[
            (t0 + timedelta(minutes=3 * k), ids[k % N_DEVICES], metric, k * 0.25, "N") for k in range(N_READINGS)])
        await con.executemany(
            "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title,"
            " raised_at, last_seen, first_value) VALUES ($1, $2, $3, 'bk', 'pollution', 'SO2', 'major', $4, $5,"
            " $6, $6, $7)",
            [(k % 3 + 1, ids[k % N_DEVICES], f"BK{k % N_DEVICES:03d}", "cleared" if k % 2 else "closed",
              f"SO2 超标 {k}", t0 + timedelta(hours=k), float(k)) for k in range(N_ALERTS)])
    finally:
        await con.close()


async def _fingerprint(dsn: str) -> dict:
    """table -> (rows, md5 of all rows in a fixed order); plus sequences, hypertables, jobs."""
    con = await asyncpg.connect(dsn)
    try:
        tables = [r["tablename"] for r in await con.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")]
        out = {}
        for t in tables:
            out[t] = tuple(await con.fetchrow(
                f'SELECT count(*) AS n, md5(coalesce(string_agg(x::text, chr(10) ORDER BY x::text), \'\')) AS h '
                f'FROM "{t}" AS x'))
        out["~sequences"] = [tuple(r) for r in await con.fetch(
            "SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1")]
        out["~hypertables"] = [tuple(r) for r in await con.fetch(
            "SELECT hypertable_name, num_chunks FROM timescaledb_information.hypertables ORDER BY 1")]
        out["~jobs"] = [tuple(r) for r in await con.fetch(
            "SELECT proc_name, hypertable_name, config::text FROM timescaledb_information.jobs"
            " WHERE hypertable_name IS NOT NULL ORDER BY 1, 2")]
        return out
    finally:
        await con.close()


def _wulian(dsn: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WULIAN_DB__DSN": dsn}
    return subprocess.run([str(Path(sys.executable).parent / "wulian"), *args], env=env, capture_output=True, text=True)


async def test_backup_and_restore_into_a_new_database_brings_every_row_back(pg_stack, tmp_path):
    async with fresh_database(pg_stack, "wulian_bk_src") as src, fresh_database(pg_stack, "wulian_bk_dst") as dst:
        await _populate(src)
        before = await _fingerprint(src)
        assert before["readings"][0] == N_READINGS and before["alerts"][0] == N_ALERTS
        assert dict(before["~hypertables"])["readings"] > 5

        # the target: a new, empty database (fresh_database migrated it: start it over empty)
        admin = await asyncpg.connect(dst.rsplit("/", 1)[0] + "/postgres")
        name = f"wulian_bk_new_{uuid.uuid4().hex[:8]}"
        await admin.execute(f'CREATE DATABASE "{name}"')
        new = dst.rsplit("/", 1)[0] + f"/{name}"
        try:
            r = _wulian(src, "db", "backup", str(tmp_path / "bk"))
            assert r.returncode == 0, r.stderr
            print("backup:", r.stdout.strip())  # figures for the README (pytest -s)
            r = _wulian(new, "db", "restore", str(tmp_path / "bk"))
            assert r.returncode == 0, r.stderr
            print("restore:", r.stdout.strip())
            after = await _fingerprint(new)
            assert after == before  # every table: same rows, same content; sequences, chunks, jobs
            # the restored database works: a new alert gets the next id, not a duplicate
            con = await asyncpg.connect(new)
            try:
                nxt = await con.fetchval(
                    "INSERT INTO alerts (rule_id, device, device_id, region, stream, severity, state, title,"
                    " raised_at, last_seen) SELECT 1, id, device_id, 'bk', 'pollution', 'minor', 'active', 'x',"
                    " now(), now() FROM devices LIMIT 1 RETURNING id")
                assert nxt == N_ALERTS + 1
            finally:
                await con.close()
            # restoring over a database that has data is refused, and it is left as it was
            r = _wulian(new, "db", "restore", str(tmp_path / "bk"))
            assert r.returncode == 1 and "not empty" in r.stderr
            # a backup never overwrites
            r = _wulian(src, "db", "backup", str(tmp_path / "bk"))
            assert r.returncode == 1 and "exists" in r.stderr
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.close()


async def test_restore_refuses_a_directory_that_is_not_a_backup(pg_stack, tmp_path):
    async with fresh_database(pg_stack, "wulian_bk_x") as dsn:
        with pytest.raises(BackupError, match="not a Wulian backup"):
            await restore(dsn, tmp_path)
