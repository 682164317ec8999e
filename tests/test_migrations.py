import asyncpg
import orjson
import pytest

from wulian.core.alarms.rules import Rule
from wulian.core.const import INVALID_FLAGS
from wulian.ingest.migrations import SQL_DIR, available, migrate


async def test_migrate_twice_is_idempotent(test_dsn):
    con = await asyncpg.connect(test_dsn)
    try:
        assert await migrate(con) == []  # the session fixture applied everything already
        assert await migrate(con) == []
        versions = [r["version"] for r in await con.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [v for v, _, _ in available()]
        hypertables = {r["hypertable_name"] for r in await con.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"readings", "vehicle_positions", "traffic_observations", "dead_letters"} <= hypertables
    finally:
        await con.close()


async def test_fresh_database_migrates_from_zero(pg_stack):
    admin_dsn = pg_stack.db.dsn.rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "wulian_mig_check" WITH (FORCE)')
    await admin.execute('CREATE DATABASE "wulian_mig_check"')
    try:
        con = await asyncpg.connect(admin_dsn.rsplit("/", 1)[0] + "/wulian_mig_check")
        try:
            first = await migrate(con)
            second = await migrate(con)
            assert first == [v for v, _, _ in available()] and second == []
        finally:
            await con.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "wulian_mig_check" WITH (FORCE)')
        await admin.close()


async def test_retention_drops_old_chunks_only(pool):
    from wulian.ingest.retention import apply_retention

    async with pool.acquire() as con:
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ('RET1', 'test', 'traffic')"
                                 " RETURNING id")
        await con.execute(
            "INSERT INTO traffic_observations (time, device, speed_kmh) VALUES"
            " (now() - interval '900 days', $1, 10), (now(), $1, 20)", dev)
        dropped = await apply_retention(con)
        assert dropped["traffic_observations"] >= 1
        left = await con.fetch("SELECT speed_kmh FROM traffic_observations WHERE device = $1", dev)
        assert [r["speed_kmh"] for r in left] == [20.0]


async def test_stored_rules_with_the_old_default_exclude_the_power_fault_flag(pool):
    # Rules are stored with their exclude_flags spelled out, so the former default (without HJ/T 212-2005
    # P, power fault) would stay in force for every rule saved before P became invalid.
    old_default = {**Rule(1, "hi", "upper", threshold=1).to_dict(), "exclude_flags": "BCDFMST"}
    custom = {**old_default, "exclude_flags": "D"}
    async with pool.acquire() as con:
        ids = [await con.fetchval("INSERT INTO rules (definition) VALUES ($1::jsonb) RETURNING id",
                                  orjson.dumps(d).decode()) for d in (old_default, custom)]
        try:
            await con.execute((SQL_DIR / "0103_rules_exclude_power_fault.sql").read_text(encoding="utf-8"))
            got = [Rule.from_dict({**orjson.loads(await con.fetchval(
                "SELECT definition::text FROM rules WHERE id = $1", i)), "id": i}) for i in ids]
        finally:
            await con.execute("DELETE FROM rules WHERE id = ANY($1::bigint[])", ids)
    assert got[0].exclude_flags == INVALID_FLAGS and "P" in got[0].exclude_flags
    assert got[1].exclude_flags == frozenset("D")  # chosen by hand: left alone


async def test_device_secrets_migration_moves_secrets_out_of_attrs(pg_stack):
    """0102 on a database whose devices still hold the HJ 212 PW and the JT/T 808 auth code in attrs."""
    admin_dsn = pg_stack.db.dsn.rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "wulian_mig_secrets" WITH (FORCE)')
    await admin.execute('CREATE DATABASE "wulian_mig_secrets"')
    try:
        con = await asyncpg.connect(admin_dsn.rsplit("/", 1)[0] + "/wulian_mig_secrets")
        try:
            await con.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                              " applied_at timestamptz NOT NULL DEFAULT now())")
            for version, name, path in available():
                if version < 102:
                    await con.execute(path.read_text(encoding="utf-8"))
                    await con.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name)
            await con.execute(
                "INSERT INTO devices (device_id, region, stream, device_type, attrs) VALUES"
                " ('ST1', 'r', 'pollution', 'hj212', '{\"hj212_pw\": \"246810\", \"hj212_crc\": \"modbus\"}'),"
                " ('VT1', 'r', 'vehicle', 'jt808',"
                "  '{\"jt808_auth\": \"c0de\", \"jt808_terminal\": {\"plate\": \"A\"}}'),"
                " ('PL1', 'r', 'air', NULL, '{\"lat\": 23.1}')")
            assert await migrate(con) == [v for v, _, _ in available() if v >= 102]
            secrets = {(r["device_id"], r["kind"]): r["secret"]
                       for r in await con.fetch("SELECT device_id, kind, secret FROM device_secrets")}
            assert secrets == {("ST1", "hj212_pw"): "246810", ("VT1", "jt808_auth"): "c0de"}
            attrs = {r["device_id"]: r["attrs"] for r in await con.fetch("SELECT device_id, attrs::text FROM devices")}
            assert attrs == {"ST1": '{"hj212_crc": "modbus"}', "VT1": '{"jt808_terminal": {"plate": "A"}}',
                             "PL1": '{"lat": 23.1}'}
            with pytest.raises(asyncpg.CheckViolationError):  # never again in attrs
                await con.execute("UPDATE devices SET attrs = attrs || '{\"hj212_pw\": \"1\"}' WHERE device_id = 'PL1'")
        finally:
            await con.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "wulian_mig_secrets" WITH (FORCE)')
        await admin.close()
