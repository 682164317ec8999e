"""Storage (issue 16): on this TimescaleDB edition (Apache: no compression, no built-in policies)
migration 0130 is a no-op and today's retention stays; bytes per reading measured for the README."""
from datetime import datetime, timedelta, timezone

import asyncpg

from tests.conftest import fresh_database
from wulian.ingest.migrations import available
from wulian.ingest.retention import edition, set_compression

N = 200_000  # readings: 20 devices x 5 metrics x 2000 time steps, the shape of real streams


async def test_this_edition_is_apache_and_the_compression_migration_is_a_no_op(pool):
    assert 130 in {v for v, _, _ in available()}
    async with pool.acquire() as con:
        assert await con.fetchval("SELECT 130 IN (SELECT version FROM schema_migrations)")
        assert await edition(con) == "apache"
        assert not await con.fetchval("SELECT bool_or(compression_enabled) FROM timescaledb_information.hypertables")
        jobs = await con.fetch("SELECT proc_name FROM timescaledb_information.jobs"
                               " WHERE proc_name IN ('policy_compression', 'policy_retention')")
        assert jobs == []
        keep = dict(await con.fetch("SELECT hypertable, extract(day FROM keep)::int FROM retention_policies"))
        assert keep["readings"] == 400 and keep["vehicle_positions"] == 180 and keep["dead_letters"] == 90
        assert await set_compression(con, 7) is False  # the setting cannot act here, and says so


async def test_bytes_per_reading_on_this_edition(pg_stack):
    async with fresh_database(pg_stack, "wulian_storage") as dsn:
        con = await asyncpg.connect(dsn)
        try:
            t0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
            devices = [await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, 'st',"
                                          " 'energy') RETURNING id", f"ST{k:02d}") for k in range(20)]
            metrics = [r[0] for r in await con.fetch("SELECT id FROM metrics ORDER BY id LIMIT 5")]
            steps = N // (len(devices) * len(metrics))
            await con.copy_records_to_table(
                "readings", columns=["time", "device", "metric", "value", "flag"],
                records=[(t0 + timedelta(minutes=15 * s), d, m, 220.0 + (s * 7 + d * 3 + m) % 97 / 10, "N")
                         for s in range(steps) for d in devices for m in metrics])
            await con.execute("ANALYZE readings")
            total = await con.fetchval("SELECT hypertable_size('readings')")
            heap = await con.fetchval(
                "SELECT sum(pg_relation_size(format('%I.%I', chunk_schema, chunk_name)::regclass))"
                " FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'")
        finally:
            await con.close()
    per_reading, heap_per_reading = int(total) / N, int(heap) / N
    print(f"readings: {N} rows, {total} bytes = {per_reading:.1f} B/reading ({heap_per_reading:.1f} table,"
          f" {per_reading - heap_per_reading:.1f} indexes)")
    # a row is 24 B header + 8 time + 4 device + 4 metric + 8 value + flag, plus two indexes
    assert 40 < heap_per_reading < 120 and 80 < per_reading < 300
