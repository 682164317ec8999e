"""Assemble and run a gateway from settings (entry point: ``wulian gateway hj212|jt808``)."""
from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from wulian.ingest.health import Health, db_probe, serve_metrics
from wulian.ingest.gateways.base import Gateway, GatewayConfig, GatewayLimits
from wulian.ingest.gateways.hj212_gateway import Hj212Gateway
from wulian.ingest.gateways.jt808_gateway import Jt808Gateway
from wulian.ingest.gateways.registry import DeadLetterSink, DeviceRegistry
from wulian.ingest.mqtt_client import MqttParams, MqttPublisher
from wulian.settings import Settings

log = logging.getLogger(__name__)
GATEWAYS: dict[str, type[Gateway]] = {"hj212": Hj212Gateway, "jt808": Jt808Gateway}


def gateway_config(settings: Settings) -> GatewayConfig:
    g = settings.gateway
    return GatewayConfig(
        prefix=settings.mqtt.topic_prefix, region=g.region, auto_provision=g.auto_provision,
        limits=GatewayLimits(max_connections=g.max_connections, idle_timeout_s=g.idle_timeout_s,
                             max_frame_bytes=g.max_frame_bytes, answer_timeout_s=g.answer_timeout_s,
                             auth_fail_limit=g.auth_fail_limit, auth_fail_window_s=g.auth_fail_window_s))


def gateway_mqtt_params(settings: Settings, protocol: str, client_id: str | None = None) -> MqttParams:
    """The gateway's service account (falls back to the mqtt section's credentials)."""
    q, g = settings.mqtt, settings.gateway
    return MqttParams(
        host=q.host, port=int(q.port), client_id=client_id or f"{g.mqtt_client_id}-{protocol}",
        username=g.mqtt_username or q.username,
        password=g.mqtt_password if g.mqtt_username else q.password,
        keepalive=q.keepalive, tls=q.tls, ca_file=str(q.ca_file) if q.ca_file else None)


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, protocol: str, pool: asyncpg.Pool, *, port: int | None = None,
                          config: GatewayConfig | None = None, client_id: str | None = None):
    """A listening gateway (``port=0``: a free port, read it from ``gateway.port``); stops on exit."""
    publisher = MqttPublisher(gateway_mqtt_params(settings, protocol, client_id), max_inflight=20000)
    await asyncio.to_thread(publisher.connect)
    sink = DeadLetterSink(pool)
    await sink.start()
    gw = GATEWAYS[protocol](DeviceRegistry(pool), publisher, sink, config or gateway_config(settings))
    if port is None:
        port = settings.gateway.hj212_port if protocol == "hj212" else settings.gateway.jt808_port
    try:
        gw.port = await gw.start(settings.gateway.host, port)
        yield gw
    finally:
        await gw.stop()
        await sink.stop()
        publisher.close()


async def run_gateway(settings: Settings, protocol: str, stop: asyncio.Event | None = None) -> None:
    g = settings.gateway
    metrics_port = g.hj212_metrics_port if protocol == "hj212" else g.jt808_metrics_port
    async with asyncpg.create_pool(settings.db.dsn, min_size=1, max_size=settings.db.pool_max) as pool:
        health = Health({"database": lambda: db_probe(pool)})
        if metrics_port:
            serve_metrics(g.metrics_host, metrics_port, health)
        async with running_gateway(settings, protocol, pool) as gw:
            health.add("broker", lambda: gw.publisher.connected)
            log.info("%s gateway listening on %s:%s (auto-provision %s), publishing to mqtt %s:%s",
                     protocol, g.host, gw.port, g.auto_provision, settings.mqtt.host, settings.mqtt.port)
            await health.run(stop)
