"""``wulian derive``: run every derived-data job (modules in ``ingest/jobs/``) on its schedule.

Any number of ``wulian derive`` processes may run (one per machine in cluster mode): each job's schedule
is a cluster singleton, lease ``derive/<job>`` (``ingest.leases``), so one process runs it and the
others stand by and take it over when its holder dies. A window is processed once even without the
lease (``--once`` runs take none): ``ingest.jobs.base`` runs each watermark key in one transaction under
the key's advisory lock and re-reads the watermark inside it.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
import os
import pkgutil
import socket
import time

import asyncpg
from prometheus_client import Counter, Histogram

from wulian.ingest import jobs
from wulian.ingest.leases import Lease
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


def job_lease(name: str) -> str:
    return f"derive/{name}"


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


async def run_derive(settings: Settings, only: set[str] | None = None, once: bool = False,
                     stop: asyncio.Event | None = None) -> dict:
    async with asyncpg.create_pool(settings.db.dsn, min_size=1, max_size=4) as pool:
        selected = discover(settings, only)
        if once:
            return {j.name: await run_job_once(j, pool) for j in selected}
        health = Health({"database": lambda: db_probe(pool)})
        if settings.derive.metrics_port:
            serve_metrics(settings.derive.metrics_host, settings.derive.metrics_port, health)
        log.info("derive: scheduling %s", ", ".join(j.name for j in selected) or "no jobs")
        holder = f"derive-{socket.gethostname()}-{os.getpid()}"
        leases = [Lease(settings.db.dsn, job_lease(j.name), holder) for j in selected]
        await asyncio.gather(health.run(stop), *(lease.run(lambda j=j: _loop(j, pool), stop)
                                                 for lease, j in zip(leases, selected)))
    return {}
