"""``wulian router``: MQTT (shared subscription) -> JetStream partitions; stateless, any number.

Each router joins one shared subscription per payload kind, ``$share/wulian/<prefix>/+/+/+/<kind>``
(``telemetry``, ``hj212``, ...), with manual ack and a persistent session (Mosquitto queues a member's
share while it is away, and a restarted router resumes it under the same client id). They cover every
stream, built-in or registry, so a router needs no database: a stream created in the registry (``wulian
stream add``) is routed as soon as its devices publish, and the worker, which watches the registry,
decodes it or dead-letters a topic of an unknown stream (``bad_topic``). Filtering on the kind rather
than taking ``+/+/+/+`` keeps out the alert events the workers publish on the same broker
(``<prefix>/<region>/alerts/<stream>/<device_id>``). Measured with the wildcard: every event went
through a router to be dropped, and, interleaved with the readings in Mosquitto's round robin, it moved
devices from one router to the other; tests/test_cluster_nats.py's leader kill then missed raises in 2
of 4 runs (one: 477 of 480 raise events), since readings of one device routed by two routers can reach JetStream
out of order (docs/cluster.md, Limits). An event of a device named like a kind still matches: dropped
here. A topic whose last segment is no kind is not received (city mode dead-letters it).

Per message: the partition of its device (``jetstream.partition_of`` of the topic's device segment; a
topic of another shape goes to partition 0, where the worker dead-letters it), a publish of the raw
payload with a ``Nats-Msg-Id`` stable over re-publishes, and only once every PubAck of the batch is in,
the MQTT acks. A router killed between PubAck and MQTT ack gets the messages again and re-publishes
them; JetStream drops them as duplicates.

Routers before the registry was routed subscribed one ``$share`` per built-in stream. A router's session
may still hold those (and messages queued under them): it subscribes the per-kind shares first and
unsubscribes the old filters only once the broker granted the new ones (``MqttConsumer.retired``), so
no message falls between them; one delivered under both meanwhile is published twice and dropped by
JetStream as a duplicate.
"""
from __future__ import annotations

import asyncio
import logging
import time

from wulian.core.const import Kind, Stream
from wulian.ingest import jetstream as j
from wulian.ingest.mqtt_client import InMessage, MqttConsumer, MqttParams
from wulian.ingest.topics import device_segment, is_alert_event

log = logging.getLogger(__name__)

SHARE_GROUP = "wulian"


def shared_subscriptions(prefix: str = "wl") -> list[str]:
    """Every stream's topics, built-in or registry (``{prefix}/{region}/{stream}/{device}/{kind}``), one
    filter per kind (a code enum, unlike streams)."""
    return [f"$share/{SHARE_GROUP}/{prefix}/+/+/+/{k.value}" for k in Kind]


def legacy_subscriptions(prefix: str = "wl") -> list[str]:
    """The per-stream shares of routers before registry streams were routed: unsubscribed after the
    per-kind ones are granted (a router's persistent session may still hold them)."""
    return [f"$share/{SHARE_GROUP}/{prefix}/+/{s.value}/+/+" for s in Stream]


def topic_partition(cache: dict[str, int], topic: str, prefix: str, partitions: int) -> int:
    """The partition of a message: a stable hash of its topic's device segment, cached per topic (a router
    sees the same devices' topics again and again). No registry is consulted, so a stream created at run
    time is partitioned like any other; a topic of another shape goes to partition 0, whose worker
    dead-letters it with the reason."""
    p = cache.get(topic)
    if p is None:
        device_id = device_segment(topic, prefix)
        p = j.partition_of(device_id, partitions) if device_id else 0
        if len(cache) < 1_000_000:
            cache[topic] = p
    return p


class Router:
    def __init__(self, params: MqttParams, nats_urls: list[str], partitions: int, replicas: int,
                 prefix: str = "wl", batch: int = 2000, batch_delay_s: float = 0.02) -> None:
        self.consumer = MqttConsumer(params, shared_subscriptions(prefix), retired=legacy_subscriptions(prefix))
        self.urls = nats_urls
        self.partitions = partitions
        self.replicas = replicas
        self.prefix = prefix
        self.batch = batch
        self.batch_delay_s = batch_delay_s
        self.routed = 0
        self.duplicates = 0
        self.alert_events = 0  # alert events of devices named like a kind: received and dropped
        self._part: dict[str, int] = {}

    def partition(self, topic: str) -> int:
        return topic_partition(self._part, topic, self.prefix, self.partitions)

    async def _publish_all(self, js, messages: list[InMessage]) -> None:
        rx = str(time.time_ns())
        delay = 0.2
        todo = messages
        while todo:
            results = await asyncio.gather(*(js.publish(
                j.subject(self.partition(m.topic)), m.payload,
                headers={j.HDR_MSG_ID: j.message_id(m.topic, m.payload), j.HDR_TOPIC: m.topic, j.HDR_RX_NS: rx},
            ) for m in todo), return_exceptions=True)
            failed = [m for m, r in zip(todo, results) if isinstance(r, BaseException)]
            self.duplicates += sum(1 for r in results if not isinstance(r, BaseException) and r.duplicate)
            if failed:
                log.warning("JetStream publish failed for %d of %d messages (%r); retrying in %.1fs",
                            len(failed), len(todo), next(r for r in results if isinstance(r, BaseException)), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            todo = failed

    async def run(self) -> None:
        nc = await j.connect(self.urls, f"router-{self.consumer.params.client_id}")
        try:
            got = await j.ensure_stream(nc, self.partitions, self.replicas)
            if got != self.partitions:
                log.warning("stream %s has %d partitions (setting says %d): using the stream's",
                            j.STREAM, got, self.partitions)
                self.partitions = got
            js = nc.jetstream(timeout=10)
            await self.consumer.start()
            log.info("router %s: %d partitions, %d NATS servers", self.consumer.params.client_id,
                     self.partitions, len(self.urls))
            while True:
                messages = await self.consumer.get_batch(self.batch, self.batch_delay_s)
                data = [m for m in messages if not is_alert_event(m.topic, self.prefix)]
                await self._publish_all(js, data)
                self.consumer.ack_many(messages)  # only now: every message is in JetStream
                self.routed += len(data)
                self.alert_events += len(messages) - len(data)
        finally:
            self.consumer.stop()
            await nc.close()
