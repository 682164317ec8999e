"""The one job framework (ingest.jobs.base) and the one list of built-in rules (core.alarms.builtin)."""
from __future__ import annotations

import uuid

import pytest

from wulian.core.alarms import builtin
from wulian.core.const import SYSTEM_RULE_BASE
from wulian.core.environment.system_rules import HEAVY_POLLUTION
from wulian.core.grid.system_rules import OUTAGE
from wulian.core.meters.system_rules import RUN_RULES
from wulian.core.timebase import NS_PER_HOUR
from wulian.core.traffic.system_rules import TRAFFIC_DETECTOR_FAULT, TRAFFIC_INCIDENT
from wulian.core.vehicles.rules import Rule
from wulian.core.vehicles.system_rules import RULES
from wulian.ingest.derive_service import discover
from wulian.ingest.jobs.base import SpanJob, WindowedJob, get_watermark

NOW = 1_800_000_000 * 10**9
RANGES = {"traffic": range(1, 100), "vehicles": range(100, 200), "grid": range(200, 300), "meters": range(300, 400),
          "environment": range(700, 800), "profiles": range(800, 900)}


def test_builtin_rule_ids_are_stable_and_unique():
    # ids are stored in alert rows: renumbering one would orphan every alert it raised
    assert TRAFFIC_INCIDENT.rule_id == SYSTEM_RULE_BASE + 1 and TRAFFIC_DETECTOR_FAULT.rule_id == SYSTEM_RULE_BASE + 2
    assert RULES[Rule.OVERSPEED].rule_id == SYSTEM_RULE_BASE + 101
    assert OUTAGE.rule_id == SYSTEM_RULE_BASE + 210
    assert RUN_RULES["night_leak"].rule_id == SYSTEM_RULE_BASE + 305
    assert HEAVY_POLLUTION.rule_id == SYSTEM_RULE_BASE + 703
    assert len(builtin.BY_ID) == len(builtin.ALL) == len(builtin.BY_NAME) == 34
    for domain, rules in builtin.DOMAINS.items():
        assert all(r.n in RANGES[domain] for r in rules), domain


def test_every_derive_job_runs_on_the_framework(settings):
    jobs = discover(settings)
    assert {j.name for j in jobs} >= {"air_quality", "grid", "meters", "source_hourly", "traffic", "vehicles",
                                      "water_quality", "charging", "coldchain", "energy"}
    assert all(isinstance(j, WindowedJob) for j in jobs), [j.name for j in jobs if not isinstance(j, WindowedJob)]


class _Probe(SpanJob):
    interval_s = 1.0
    lag_ns = 0
    backfill_ns = NS_PER_HOUR
    max_span_ns = NS_PER_HOUR

    def __init__(self, fail: bool = False) -> None:
        self.name = f"probe/{uuid.uuid4().hex[:8]}"
        self.fail = fail
        self.seen: dict = {}

    async def _run(self, con, wm_ns, end_ns):
        self.seen = {
            "in_transaction": con.is_in_transaction(),
            "locked": await con.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"),
        }
        await con.execute("INSERT INTO job_watermarks (job, upto) VALUES ($1 || '/side', now())", self.name)
        if self.fail:
            raise RuntimeError("boom")
        return {"span": [wm_ns, end_ns]}


async def test_a_run_holds_the_lock_and_commits_with_its_watermark(pool):
    job = _Probe()
    stats = await job.run_once(pool, NOW)
    assert stats == {"span": [NOW - NS_PER_HOUR, NOW]}
    assert job.seen == {"in_transaction": True, "locked": 1}
    async with pool.acquire() as con:
        assert await get_watermark(con, job.name) == NOW
    assert await job.run_once(pool, NOW) == {"skipped": "nothing new"}


async def test_a_failed_run_leaves_nothing_behind(pool):
    job = _Probe(fail=True)
    with pytest.raises(RuntimeError):
        await job.run_once(pool, NOW)
    async with pool.acquire() as con:
        assert await get_watermark(con, job.name) is None
        assert await con.fetchval("SELECT count(*) FROM job_watermarks WHERE job = $1", job.name + "/side") == 0
