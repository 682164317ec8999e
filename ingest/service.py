"""Assemble and run the ingest service from settings (entry point: ``wulian ingest``)."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import logging

import asyncpg
from wulian.ingest.aio import stop_task
from wulian.ingest.alarm_service import AlarmService
from wulian.ingest.batch_writer import BatchWriter, init_connection
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.health import Health, db_probe, serve_metrics
from wulian.ingest.migrations import migrate
from wulian.ingest.mqtt_client import MqttConsumer, MqttParams
from wulian.ingest.pipeline import IngestConfig, Ingestor
from wulian.ingest.retention import set_compression, set_retention
from wulian.ingest.stream_registry import RegistryWatcher
from wulian.ingest.topics import subscriptions
from wulian.settings import Settings

log = logging.getLogger(__name__)


def mqtt_params(settings: Settings, client_id: str | None = None) -> MqttParams:
    q = settings.mqtt
    return MqttParams(
        host=q.host, port=int(q.port), client_id=client_id or q.client_id, username=q.username,
        password=q.password, keepalive=q.keepalive, session_expiry_s=q.session_expiry_s,
        receive_maximum=q.receive_maximum, tls=q.tls, ca_file=str(q.ca_file) if q.ca_file else None,
    )


def ingest_config(settings: Settings) -> IngestConfig:
    i = settings.ingest
    ns = 1_000_000_000
    return IngestConfig(
        batch_size=i.batch_size,
        batch_delay_s=i.batch_delay_ms / 1000.0,
        topic_prefix=settings.mqtt.topic_prefix,
        limits=PayloadLimits(
            max_bytes=i.max_payload_bytes,
            future_tolerance_ns=int(i.future_tolerance_s * ns),
            past_limit_ns=int(i.past_limit_days * 86400 * ns),
        ),
        retention_interval_s=settings.db.retention_interval_s,
        max_inflight=i.commit_inflight,
    )


def tune_gc() -> None:
    """Ingest allocates ~10 short-lived objects per reading and keeps a batch alive while it commits;
    the default gen-0 threshold (700) makes the collector rescan the live batch thousands of times a
    second. Freeze what startup allocated and collect young objects far less often (no cycles are
    created per message, so nothing accumulates)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


async def create_pool(settings: Settings) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        settings.db.dsn, min_size=settings.db.pool_min, max_size=settings.db.pool_max, init=init_connection
    )


@contextlib.asynccontextmanager
async def running_ingestor(settings: Settings, pool: asyncpg.Pool, client_id: str | None = None):
    """An Ingestor subscribed and running as a task; yields it, stops it on exit."""
    prefix = settings.mqtt.topic_prefix

    async def streams_changed(_registry) -> None:
        """A stream was created: subscribe to its topics and take its default rules now."""
        consumer.add_topics(subscriptions(prefix))
        await alarms.reload_rules_if_changed()

    registry = RegistryWatcher(settings.db.dsn, on_change=streams_changed)
    await registry.start()  # before subscribing: the registry's streams are the subscriptions
    consumer = MqttConsumer(mqtt_params(settings, client_id), subscriptions(prefix))
    writer = BatchWriter(pool, auto_register=settings.ingest.auto_register)
    alarms = AlarmService(pool, publish=consumer.publish, topic_prefix=settings.mqtt.topic_prefix,
                          tick_interval_s=settings.alarms.tick_interval_s,
                          save_interval_s=settings.alarms.save_interval_s,
                          rules_poll_s=settings.alarms.rules_poll_s)
    await alarms.start()
    ingestor = Ingestor(consumer, writer, ingest_config(settings), alarms=alarms)
    ingestor.streams = registry  # tests await its reloads
    await consumer.start()
    task = asyncio.create_task(ingestor.run(), name="ingestor")
    try:
        yield ingestor
    finally:
        await stop_task(task)
        await alarms.stop()
        consumer.stop()
        await registry.stop()


async def run_ingest(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """``wulian ingest``: until ``stop`` is set (the command sets it on SIGINT/SIGTERM)."""
    async with await create_pool(settings) as pool:
        async with pool.acquire() as con:
            await migrate(con)
            await set_retention(con, settings.db.retention_days)
            await set_compression(con, settings.db.compress_after_days)
        tune_gc()
        health = Health({"database": lambda: db_probe(pool)})
        if settings.ingest.metrics_port:
            serve_metrics(settings.ingest.metrics_host, settings.ingest.metrics_port, health)
        async with running_ingestor(settings, pool) as ingestor:
            health.add("broker", lambda: ingestor.consumer.connected)
            log.info("ingest running: mqtt %s:%s, batch %d", settings.mqtt.host, settings.mqtt.port,
                     settings.ingest.batch_size)
            await health.run(stop)
