"""``wulian derive``: run every derived-data job (modules in ``ingest/jobs/``) on its schedule."""
from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
import time

import asyncpg
from prometheus_client import Counter, Histogram

from wulian.ingest import jobs
from wulian.ingest.health import Health, db_probe, serve_metrics
from wulian.ingest.jobs.base import Job
from wulian.settings import Settings

log = logging.getLogger(__name__)
JOB_RUNS = Counter("wulian_job_runs_total", "derived-data job runs", ["job", "outcome"])
JOB_SECONDS = Histogram("wulian_job_seconds", "derived-data job run time", ["job"])


def discover(settings: Settings, only: set[str] | None = None) -> list[Job]:
    out = []
    for info in sorted(pkgutil.iter_modules(jobs.__path__), key=lambda m: m.name):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{jobs.__name__}.{info.name}")
        create = getattr(module, "create", None)
        if create is None:
            continue
        job = create(settings)
        if only is None or job.name in only:
            out.append(job)
    return out


async def run_job_once(job: Job, pool: asyncpg.Pool, now_ns: int | None = None) -> dict:
    t0 = time.perf_counter()
    try:
        stats = await job.run_once(pool, time.time_ns() if now_ns is None else now_ns)
    except Exception:
        JOB_RUNS.labels(job.name, "error").inc()
        raise
    JOB_RUNS.labels(job.name, "ok").inc()
    JOB_SECONDS.labels(job.name).observe(time.perf_counter() - t0)
    return stats


async def _loop(job: Job, pool: asyncpg.Pool) -> None:
    while True:
        try:
            stats = await run_job_once(job, pool)
            log.info("job %s: %s", job.name, stats)
        except Exception:
            log.exception("job %s failed; next try in %.0fs", job.name, job.interval_s)
        await asyncio.sleep(job.interval_s)


async def run_derive(settings: Settings, only: set[str] | None = None, once: bool = False) -> dict:
    async with asyncpg.create_pool(settings.db.dsn, min_size=1, max_size=4) as pool:
        selected = discover(settings, only)
        if once:
            return {j.name: await run_job_once(j, pool) for j in selected}
        health = Health({"database": lambda: db_probe(pool)})
        if settings.derive.metrics_port:
            serve_metrics(settings.derive.metrics_host, settings.derive.metrics_port, health)
        log.info("derive: running %s", ", ".join(j.name for j in selected) or "no jobs")
        await asyncio.gather(health.run(), *(_loop(j, pool) for j in selected))
    return {}
