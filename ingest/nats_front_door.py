"""Cluster mode's lossless MQTT front door: nats-server's MQTT listener -> JetStream -> ``WL`` partitions.

nats-server (2.9) stores every QoS 1 PUBLISH its MQTT listener receives in the JetStream stream
``$MQTT_msgs`` (subject ``$MQTT.msgs.<topic with / as .>``) *before* it sends the PUBACK, so a kill -9
of the node loses nothing a device was told was received (Mosquitto 2.0 writes its queue only every
``autosave_interval``; measured in docs/cluster.md). NATS MQTT is MQTT 3.1.1 only and has no
``$share``: instead of a shared subscription, every router pulls from one durable JetStream consumer
on ``$MQTT_msgs`` (a queue group in effect), publishes each message to its partition of ``WL`` with
the same ``Nats-Msg-Id`` as the MQTT router, and acks it only after ``WL``'s PubAck.

One router pulls at a time: two routers fetching at once publish their batches to ``WL`` in either
order, and a device's readings arriving out of order are late to the alarm engine (measured with 2
routers: alerts raised twice and missed). The active router holds a lease, a key in a JetStream
key-value bucket whose entries expire after ``LEASE_TTL_S`` unless renewed; the others (and one that
lost it) wait for it. A router taking over while messages are still unacknowledged (its predecessor
was killed) waits ``ACK_WAIT_S`` first, so the server redelivers those before anything newer. ``$MQTT_msgs``
keeps a message while a consumer is interested (interest retention): ``ensure_front_door`` creates
the durable consumer before devices publish, and it outlives every router.
"""
from __future__ import annotations

import asyncio
import logging
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from wulian.ingest import jetstream as j
from wulian.ingest.router import topic_partition

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"  # nats-server's own stream for MQTT QoS 1 messages
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."
DURABLE = "wulian_routers"
ACK_WAIT_S = 15.0  # > a JetStream leader election (4-9 s measured): a live router's batch is not resent
LEASE_BUCKET = "wulian_router_lease"
LEASE_KEY = "active"
LEASE_TTL_S = 10.0  # longer than a JetStream leader election, so an election rarely moves the lease
LEASE_RENEW_S = 1.0


def topic_of(subject: str) -> str:
    """Undo nats-server's topic -> subject mapping (``/`` became ``.``). nats-server 2.9 refuses a topic
    with a ``.`` (it closes the device's connection, no PUBACK: measured), so none reaches here."""
    s = subject[len(MQTT_SUBJECT_PREFIX):] if subject.startswith(MQTT_SUBJECT_PREFIX) else subject
    return s.replace(".", "/")


def consumer_config(prefix: str, max_ack_pending: int) -> ConsumerConfig:
    return ConsumerConfig(durable_name=DURABLE, filter_subject=f"{MQTT_SUBJECT_PREFIX}{prefix}.>",
                          ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                          ack_wait=ACK_WAIT_S, max_ack_pending=max_ack_pending, max_deliver=-1)


async def ensure_front_door(nc: nats.NATS, prefix: str = "wl", batch: int = 2000, timeout: float = 60.0) -> None:
    """The routers' durable consumer on ``$MQTT_msgs``. nats-server creates that stream when the first
    MQTT client connects (``wait_mqtt_stream`` callers connect one first); retried until it exists."""
    js = nc.jetstream(timeout=10)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            try:  # an existing consumer is kept as it is: it holds the routers' position
                await js.consumer_info(MQTT_STREAM, DURABLE)
            except nats.js.errors.NotFoundError as exc:
                if getattr(exc, "err_code", None) != 10014:  # JSConsumerNotFoundErr; else no stream yet
                    raise
                await js.add_consumer(MQTT_STREAM, consumer_config(prefix, batch))
            return
        except (nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
                nats.js.errors.APIError) as exc:
            if loop.time() > deadline:
                raise RuntimeError(f"no {MQTT_STREAM} stream: has an MQTT client connected? ({exc!r})") from exc
            await asyncio.sleep(0.5)


def mqtt_hello(host: str, port: int, timeout: float = 10.0, username: str | None = None,
               password: str | None = None) -> None:
    """One MQTT 3.1.1 CONNECT / CONNACK / DISCONNECT (MQTT 3.1.1 3.1, 3.2, 3.14): makes nats-server create
    its MQTT streams, so the routers' consumer can exist before any device publishes. The nodes refuse
    a client without an account (ingest/nats_accounts.py): pass one that may connect over MQTT."""
    import socket

    def field(b: bytes) -> bytes:
        return len(b).to_bytes(2, "big") + b

    cid = b"wulian-front-door"
    flags = 0x02 | (0xC0 if username is not None else 0)  # clean session (+ user name and password)
    var = b"\x00\x04MQTT\x04" + bytes([flags]) + b"\x00\x3c"  # protocol name, level 4, keep alive 60 s
    body = var + field(cid)
    if username is not None:
        body += field(username.encode()) + field((password or "").encode())
    if len(body) > 127:  # one byte of remaining length (MQTT 3.1.1 2.2.3) holds every name we send
        raise ValueError("MQTT hello: user name and password too long")
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(bytes([0x10, len(body)]) + body)
        ack = s.recv(4)
        if len(ack) < 4 or ack[0] != 0x20 or ack[3] != 0:
            raise ConnectionError(f"MQTT listener {host}:{port} refused the connection ({ack!r})")
        s.sendall(b"\xe0\x00")


class LeaseLost(Exception):
    """Another router holds the lease now (ours expired, e.g. while NATS elected a leader)."""


class NatsFrontDoorRouter:
    """``wulian router`` when ``cluster.front_door`` is ``nats``: ``$MQTT_msgs`` -> ``WL`` partitions."""

    def __init__(self, name: str, nats_urls: list[str], partitions: int, replicas: int, prefix: str = "wl",
                 batch: int = 2000) -> None:
        self.name = name
        self.urls = nats_urls
        self.partitions = partitions
        self.replicas = replicas
        self.prefix = prefix
        self.batch = batch
        self.routed = 0
        self.duplicates = 0
        self._part: dict[str, int] = {}

    def partition(self, topic: str) -> int:
        return topic_partition(self._part, topic, self.prefix, self.partitions)

    async def _route(self, js, msgs) -> None:
        rx = str(time.time_ns())
        todo = [(topic_of(m.subject), m) for m in msgs]
        delay = 0.2
        while todo:
            results = await asyncio.gather(*(js.publish(
                j.subject(self.partition(topic)), m.data,
                headers={j.HDR_MSG_ID: j.message_id(topic, m.data), j.HDR_TOPIC: topic, j.HDR_RX_NS: rx},
            ) for topic, m in todo), return_exceptions=True)
            failed = [t for t, r in zip(todo, results) if isinstance(r, BaseException)]
            self.duplicates += sum(1 for r in results if not isinstance(r, BaseException) and r.duplicate)
            if failed:
                log.warning("JetStream publish failed for %d of %d messages; retrying in %.1fs",
                            len(failed), len(todo), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            todo = failed
        await asyncio.gather(*(m.ack() for m in msgs))  # only now: every message is in WL

    async def _acquire(self, js):
        """Wait for the lease; returns the bucket and the revision to renew."""
        kv = await js.create_key_value(bucket=LEASE_BUCKET, ttl=LEASE_TTL_S, history=1,
                                       replicas=min(3, self.replicas))
        waiting = False
        while True:
            try:
                return kv, await kv.create(LEASE_KEY, self.name.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                if not waiting:
                    log.info("router %s: standby (another router holds the lease)", self.name)
                    waiting = True
            except nats.errors.Error as exc:
                log.warning("lease bucket unavailable (%r); retrying", exc)
            await asyncio.sleep(LEASE_RENEW_S)

    async def _renew(self, kv, rev: int) -> None:
        """Renew the lease until that fails for good (another router holds it now)."""
        while True:
            await asyncio.sleep(LEASE_RENEW_S)
            try:
                rev = await kv.update(LEASE_KEY, self.name.encode(), last=rev)
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                raise LeaseLost(f"router {self.name} lost its lease") from exc
            except nats.errors.Error as exc:  # e.g. during a leader election: retried within the TTL
                log.warning("lease renewal failed (%r); retrying", exc)

    async def run(self) -> None:
        nc = await j.connect(self.urls, f"router-{self.name}")
        try:
            while True:  # a node restarting or a leader election answers nothing for a few seconds
                try:
                    self.partitions = await j.ensure_stream(nc, self.partitions, self.replicas)
                    await ensure_front_door(nc, self.prefix, self.batch, timeout=3600)
                    break
                except nats.errors.Error as exc:
                    log.warning("router %s: JetStream not answering (%r); retrying", self.name, exc)
                    await asyncio.sleep(LEASE_RENEW_S)
            js = nc.jetstream(timeout=10)
            while True:  # active while holding the lease, standby otherwise
                try:
                    kv, rev = await self._acquire(js)
                except nats.errors.Error as exc:  # e.g. the bucket's node killed: the client reconnects
                    log.warning("router %s: lease bucket unavailable (%r); retrying", self.name, exc)
                    await asyncio.sleep(LEASE_RENEW_S)
                    continue
                renew = asyncio.create_task(self._renew(kv, rev))
                try:
                    await self._pull(js, renew)
                except LeaseLost as exc:
                    log.warning("%s; standby", exc)
                except nats.errors.Error as exc:
                    # a NATS node died under a request (consumer info, a lease call): what this router
                    # did not ack comes back to whoever pulls next, in order, so stand by and start over
                    log.warning("router %s: NATS request failed (%r); standing by", self.name, exc)
                    await asyncio.sleep(LEASE_RENEW_S)
                finally:
                    renew.cancel()
        finally:
            await nc.close()

    async def _pull(self, js, renew: asyncio.Task) -> None:
        info = await js.consumer_info(MQTT_STREAM, DURABLE)
        if info.num_ack_pending:  # a killed predecessor's batch: let it come back first, in order
            log.info("router %s: %d messages of a previous router unacknowledged; waiting %.0fs",
                     self.name, info.num_ack_pending, ACK_WAIT_S)
            await asyncio.sleep(ACK_WAIT_S)
        sub = await js.pull_subscribe_bind(DURABLE, stream=MQTT_STREAM)
        log.info("router %s: active; NATS MQTT front door (%s), %d partitions", self.name, MQTT_STREAM,
                 self.partitions)
        while not renew.done():
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            except nats.errors.Error as exc:  # e.g. the consumer's leader moving: unacked comes again
                log.warning("fetch from %s failed (%r); retrying", MQTT_STREAM, exc)
                await asyncio.sleep(0.5)
                continue
            if msgs:
                await self._route(js, msgs)
                self.routed += len(msgs)
        renew.result()  # raises why the lease ended
