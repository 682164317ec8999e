"""The device store is the one writer of ``devices``; each caller's on-conflict policy does what it says."""
from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from wulian.ingest import device_store
from wulian.ingest.device_store import DeviceSpec

ROOT = Path(__file__).resolve().parent.parent
_WRITE = re.compile(r"(?i)\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+devices\b")


def test_only_the_device_store_writes_the_registry():
    bad = [f"{p.relative_to(ROOT)}:{n}" for d in ("core", "ingest", "api", "simulators", "dashboards", "wulian")
           for p in (ROOT / d).rglob("*.py") if p.name != "device_store.py"
           for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if _WRITE.search(line)]
    assert not bad, "write devices through ingest/device_store.py:\n" + "\n".join(bad)


async def _row(con, device_id):
    return await con.fetchrow("SELECT region, stream, device_type, name, attrs::text AS attrs, auto_registered,"
                              " removed_at IS NOT NULL AS removed FROM devices WHERE device_id = $1", device_id)


async def test_policies(pool):
    tag = uuid.uuid4().hex[:6]
    a, b = f"DS{tag}A", f"DS{tag}B"
    async with pool.acquire() as con:
        first = await device_store.upsert_many(con, [DeviceSpec(a, "dsa", "air", "t1", "A", {"x": 1, "y": 1}),
                                                     DeviceSpec(b, "dsa", "air", None, None, {"x": 1})])
        assert [r.created for r in first] == [True, True] and [r.device_id for r in first] == [a, b]
        # in place, existing wins: region/stream/type/name kept, attrs merged, the existing place returned
        (r,) = await device_store.upsert_many(con, [DeviceSpec(a, "dsb", "water", "t2", "A2", {"x": 2})],
                                              device_store.ADD_MISSING)
        assert (r.region, r.stream, r.created) == ("dsa", "air", False)
        row = await _row(con, a)
        assert (row["device_type"], row["name"], row["attrs"]) == ("t1", "A", '{"x": 2, "y": 1}')
        # redefine: the spec moves the device and replaces the attrs
        await device_store.upsert_many(con, [DeviceSpec(a, "dsb", "water", "t2", "A2", {"z": 3})],
                                       device_store.REDEFINE)
        row = await _row(con, a)
        assert (row["region"], row["stream"], row["device_type"], row["name"], row["attrs"]) == \
            ("dsb", "water", "t2", "A2", '{"z": 3}')
        # provisioning: spec wins where given, attrs merged; a removed device comes back, not by auto
        assert await device_store.mark_removed(con, b) is False
        assert await device_store.mark_removed(con, b) is True
        await device_store.upsert(con, DeviceSpec(b, "dsa", "air", attrs={"w": 1}), device_store.AUTO_PROVISION)
        assert (await _row(con, b))["removed"]
        await device_store.upsert(con, DeviceSpec(b, "dsa", "air", "t3", attrs={"w": 2}))
        row = await _row(con, b)
        assert not row["removed"] and row["device_type"] == "t3" and row["attrs"] == '{"w": 2, "x": 1}'
        # ingest's auto-registration never touches an existing row
        await device_store.register_missing(con, {b: ("dsc", "meter"), f"DS{tag}C": ("dsc", "meter")})
        assert (await _row(con, b))["region"] == "dsa"
        assert (await _row(con, f"DS{tag}C"))["auto_registered"]
        assert await device_store.mark_removed(con, f"DS{tag}NONE") is None


async def test_a_bad_spec_writes_nothing(pool):
    tag = uuid.uuid4().hex[:6]
    async with pool.acquire() as con:
        with pytest.raises(ValueError, match="hj212_pw is a secret"):
            await device_store.upsert_many(con, [DeviceSpec(f"DS{tag}OK", "dsa", "air"),
                                                 DeviceSpec(f"DS{tag}BAD", "dsa", "air", attrs={"hj212_pw": "1"})])
        assert await device_store.find(con, f"DS{tag}OK") is None
