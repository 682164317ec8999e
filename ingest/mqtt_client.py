"""A manual-ack MQTT 5 consumer and a QoS 1 publisher: with ``paho_fast`` (paho's internals patched for
speed, version-checked), the only modules that import paho.

Consumer contract (ack after commit):
- persistent session (``clean_start=False`` + ``SessionExpiryInterval``) so a restarted ingest resumes
  what the broker held for it; ``ReceiveMaximum`` bounds the unacknowledged messages in flight, which is
  the backpressure when the database stalls;
- ``_on_message`` runs on paho's network thread and only appends to a deque, waking the asyncio side
  once when the deque goes from empty to non-empty;
- acks carry the connection generation they were received on: after a reconnect paho reuses message
  ids and the broker redelivers what was unacknowledged, so acks from an older generation are dropped.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Iterable

from paho.mqtt.client import CallbackAPIVersion, MQTTMessage, MQTTMessageInfo
from paho.mqtt.enums import MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from wulian.ingest import paho_fast

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MqttParams:
    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    session_expiry_s: int = 86400
    receive_maximum: int = 20000
    tls: bool = False
    ca_file: str | None = None
    protocol: int = 5  # 4: MQTT 3.1.1 (a device of nats-server's MQTT listener, which has no MQTT 5)


@dataclass(frozen=True, slots=True)
class InMessage:
    """A received message; ``gen`` is the connection generation it arrived on."""

    gen: int
    mid: int
    qos: int
    topic: str
    payload: bytes


MAX_OUTSTANDING = 30_000  # published but not yet acknowledged, per publisher (see MqttPublisher.publish)


def _client(params: MqttParams, *, manual_ack: bool, clean_session: bool = False) -> paho_fast.StockClient:
    c = paho_fast.install()(  # the buffered transport on verified paho versions, stock paho otherwise
        CallbackAPIVersion.VERSION2,
        client_id=params.client_id,
        protocol=MQTTProtocolVersion.MQTTv311 if params.protocol == 4 else MQTTProtocolVersion.MQTTv5,
        manual_ack=manual_ack,
        **({"clean_session": clean_session} if params.protocol == 4 else {}),
    )
    if params.username:
        c.username_pw_set(params.username, params.password)
    if params.tls:
        ctx = ssl.create_default_context(cafile=params.ca_file)
        c.tls_set_context(ctx)
    c.reconnect_delay_set(min_delay=1, max_delay=5)
    return c


class MqttConsumer:
    """Subscribes with QoS 1 and hands messages to asyncio; ack them with :meth:`ack_many` after commit."""

    def __init__(self, params: MqttParams, topics: Iterable[str], retired: Iterable[str] = ()) -> None:
        self.params = params
        self.topics = list(topics)
        # filters an earlier version subscribed this session to: unsubscribed on every connect once the
        # broker granted ``topics`` (never before, so a message matches one of them at every moment);
        # what the session had queued under them is still delivered
        self.retired = [t for t in retired if t not in self.topics]
        self._sub_mid: int | None = None
        self._queue: deque[InMessage] = deque()
        self._gen = 0
        self._connected = threading.Event()
        self._subscribed = threading.Event()  # the broker's SUBACK for the first connection's subscribe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._waiting = False  # get_batch is (about to be) waiting for the wake-up
        self._client = _client(params, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_unsubscribe = self._on_unsubscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_message_raw = self._on_message_raw  # BufferedClient: no MQTTMessage per message
        self.received = 0
        self.acked = 0
        self.stale_acks = 0
        self.subacks = 0  # SUBACKs received (add_topics' subscriptions included)
        self.unsubacks = 0  # UNSUBACKs received (``retired``)

    # -- paho thread ---------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("mqtt connect refused: %s", reason_code)
            return
        self._gen += 1
        _, self._sub_mid = client.subscribe([(t, 1) for t in self.topics])
        self._connected.set()
        log.info(
            "mqtt connected to %s:%s as %s (session present: %s, generation %d)",
            self.params.host, self.params.port, self.params.client_id, flags.session_present, self._gen,
        )

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.subacks += 1
        if mid == self._sub_mid and self.retired:
            refused = [t for t, rc in zip(self.topics, reason_codes) if rc.is_failure]
            if refused:
                log.error("mqtt subscribe refused for %s: keeping the earlier filters %s", refused, self.retired)
            else:
                client.unsubscribe(self.retired)
        self._subscribed.set()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        self.unsubacks += 1

    def add_topics(self, topics: Iterable[str]) -> list[str]:
        """Subscribe to filters not yet subscribed (a stream created at run time); kept for reconnects."""
        new = [t for t in topics if t not in self.topics]
        if new:
            self.topics = self.topics + new
            if self._connected.is_set():
                self._client.subscribe([(t, 1) for t in new])
        return new

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._connected.clear()
        log.warning("mqtt disconnected from %s:%s: %s", self.params.host, self.params.port, reason_code)

    def _on_message(self, client, userdata, msg: MQTTMessage) -> None:
        try:
            self._take(msg.mid, msg.qos, msg.topic, msg.payload)
        except Exception:  # an exception escaping a callback kills paho's network thread
            log.exception("mqtt on_message failed (topic %r)", getattr(msg, "topic", "?"))

    def _on_message_raw(self, mid: int, qos: int, topic: bytes, payload: bytes) -> None:
        try:
            self._take(mid, qos, topic.decode("utf-8"), payload)
        except Exception:  # e.g. a topic that is not UTF-8, as with paho's MQTTMessage.topic
            log.exception("mqtt on_message failed (topic %r)", topic)

    def _take(self, mid: int, qos: int, topic: str, payload: bytes) -> None:
        """Queue one received message (paho's network thread)."""
        self._queue.append(InMessage(self._gen, mid, qos, topic, payload))
        self.received += 1
        # after the append: get_batch sets _waiting before it last looks at the queue, so either it
        # sees this message or this sees it waiting. (Testing "was the queue empty" before the append
        # lost the wake-up when get_batch emptied the queue in between: the last messages of a
        # burst sat unread until more came, found by bench ingest draining 100,000 messages.)
        if self._waiting and self._loop is not None:
            self._waiting = False
            self._loop.call_soon_threadsafe(self._wake.set)

    # -- asyncio side --------------------------------------------------------------------------
    async def start(self, timeout: float = 10.0) -> None:
        self._loop = asyncio.get_running_loop()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.params.session_expiry_s
        props.ReceiveMaximum = min(65535, self.params.receive_maximum)
        self._client.connect_async(
            self.params.host, self.params.port, self.params.keepalive, clean_start=False, properties=props
        )
        self._client.loop_start()
        # Connected is not yet subscribed: a new session misses what is published before its SUBACK.
        if not await asyncio.to_thread(self._subscribed.wait, timeout):
            raise ConnectionError(f"cannot connect to MQTT broker {self.params.host}:{self.params.port}")

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish on the consumer's connection (alert events); paho queues it while disconnected."""
        self._client.publish(topic, payload, qos=qos)

    @property
    def backlog(self) -> int:
        """Messages received but not yet taken by the pipeline."""
        return len(self._queue)

    async def get_batch(self, max_n: int, max_wait_s: float) -> list[InMessage]:
        """Wait for at least one message, then up to ``max_wait_s`` for the batch to fill."""
        while not self._queue:
            self._wake.clear()
            self._waiting = True
            if self._queue:
                self._waiting = False
                break
            await self._wake.wait()
        deadline = time.monotonic() + max_wait_s
        while len(self._queue) < max_n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(left, 0.002))
        q = self._queue
        n = min(max_n, len(q))
        return [q.popleft() for _ in range(n)]

    def ack_many(self, messages: Iterable[InMessage]) -> int:
        """PUBACK messages in arrival order; those from an older connection are skipped (redelivered)."""
        gen = self._gen
        acks = []
        for m in messages:
            if m.qos == 0:
                continue
            if m.gen != gen:
                self.stale_acks += 1
                continue
            acks.append((m.mid, m.qos))
        self._client.ack_batch(acks)
        self.acked += len(acks)
        return len(acks)


class MqttPublisher:
    """QoS 1 publisher that counts PUBACKs: the ground truth of what the broker accepted."""

    def __init__(self, params: MqttParams, max_inflight: int = 1000, persistent: bool = False,
                 window: int | None = None) -> None:
        self.params = params
        # persistent: resume the session (clean_start=False + SessionExpiryInterval) after a broker
        # restart, as chaos and soak publishers do; paho resends unacknowledged QoS 1 either way.
        self.persistent = persistent
        # window: :meth:`publish` blocks while this many await their PUBACK, and paho sends each message
        # at once (its own in-flight limit off). paho's limit rescans the whole outgoing queue on every
        # PUBACK (``Client._update_inflight``), quadratic with thousands queued: preloading 100,000
        # messages took 72-87 s that way, a small window does it in a fraction (issue 14).
        self.window = window
        self._client = _client(params, manual_ack=False, clean_session=not persistent)
        self._client.max_inflight_messages_set(0 if window else max_inflight)
        self._client.max_queued_messages_set(0)
        self._client.on_connect = self._on_connect
        self._client.on_publish = self._on_publish
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._acked = threading.Condition(self._lock)
        self.published = 0
        self.acked = 0
        self.refused = 0
        # publish_async: mid -> future awaiting its PUBACK; ``_early`` holds PUBACKs that arrived before
        # publish() returned the mid (paho calls on_publish under its own mutex, so the two sides must
        # not hold each other's locks: whichever comes second completes the future).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._futures: dict[int, asyncio.Future] = {}
        self._early: dict[int, bool] = {}
        self._max_packet: int | None = None

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not reason_code.is_failure:
            self._max_packet = getattr(properties, "MaximumPacketSize", None) or self._max_packet
            self._connected.set()

    def _oversize(self, topic: str, payload: bytes | str) -> bool:
        """Over the broker's Maximum Packet Size (CONNACK)? paho does not check it: the broker would drop
        the connection, paho would resend the same packet after reconnecting, and the publisher would
        be wedged for good (found by the fuzz tests). Such a message is refused here instead."""
        if self._max_packet is None:
            return False
        n = len(payload.encode() if isinstance(payload, str) else payload)
        return n + len(topic.encode()) + 16 > self._max_packet

    def _refuse(self) -> MQTTMessageInfo:
        with self._acked:
            self.refused += 1
            self._acked.notify_all()
        info = MQTTMessageInfo(0)
        info.rc = MQTTErrorCode.MQTT_ERR_PAYLOAD_SIZE
        return info

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        ok = not reason_code.is_failure
        with self._acked:
            if ok:
                self.acked += 1
            else:
                self.refused += 1
            self._acked.notify_all()
            if self._loop is None:
                return
            fut = self._futures.pop(mid, None)
            if fut is None:
                self._early[mid] = ok
        if fut is not None:
            self._loop.call_soon_threadsafe(_resolve, fut, ok)

    def _connect_args(self) -> dict:
        if self.params.protocol == 4:  # MQTT 3.1.1: the session is the constructor's clean_session
            return {}
        props = None
        if self.persistent:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.params.session_expiry_s
        return dict(clean_start=not self.persistent, properties=props)

    def connect(self, timeout: float = 10.0) -> "MqttPublisher":
        self._client.connect(self.params.host, self.params.port, self.params.keepalive, **self._connect_args())
        self._client.loop_start()
        if not self._connected.wait(timeout):
            raise ConnectionError(f"cannot connect to MQTT broker {self.params.host}:{self.params.port}")
        return self

    def connect_in_background(self) -> "MqttPublisher":
        """Connect (and reconnect) on paho's thread without waiting: for a publisher whose messages can
        wait, such as a worker's alert-event outbox, so the process does not need the broker up to start;
        QoS 1 messages published meanwhile are sent once the connection is made."""
        self._client.connect_async(self.params.host, self.params.port, self.params.keepalive,
                                   **self._connect_args())
        self._client.loop_start()
        return self

    def publish(self, topic: str, payload: bytes | str, qos: int = 1):
        """Queue a message; the returned info's ``is_published()`` turns true on the broker's PUBACK
        (``rc`` is MQTT_ERR_PAYLOAD_SIZE, and it counts as refused, when it exceeds the broker's limit).

        Blocks while ``MAX_OUTSTANDING`` (or ``window``) messages await their PUBACK: paho numbers messages
        with 16-bit ids when they are queued, so more than 65,535 outstanding would reuse ids and lose them."""
        limit = min(self.window or MAX_OUTSTANDING, MAX_OUTSTANDING)
        if self.published - self.acked - self.refused >= limit:
            with self._acked:
                while self.published - self.acked - self.refused >= limit:
                    self._acked.wait(1.0)
        self.published += 1
        if self._oversize(topic, payload):
            return self._refuse()
        return self._client.publish(topic, payload, qos=qos)

    def publish_async(self, topic: str, payload: bytes | str, qos: int = 1) -> asyncio.Future:
        """Publish from the event loop; the future resolves to True on the broker's PUBACK (False if it
        refused the message). Gateways answer a device only after that. Do not mix with
        :meth:`publish` on one publisher, and call it from one loop only."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        fut = self._loop.create_future()
        info = self._refuse() if self._oversize(topic, payload) else self._client.publish(topic, payload, qos=qos)
        self.published += 1
        # not queued (e.g. over the broker's packet limit); NO_CONN means queued until the reconnect,
        # so wait for its PUBACK rather than tell the device "failure" for data that will arrive
        # (found by wulian chaos: JT/T 808 reports refused during a broker restart, then stored)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            fut.set_result(False)
            return fut
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._futures[info.mid] = fut
        if early is not None:
            fut.set_result(early)
        return fut

    @property
    def connected(self) -> bool:
        return self._client.is_connected()

    @property
    def pending(self) -> int:
        """publish_async messages still waiting for their PUBACK."""
        return len(self._futures)

    def wait_acked(self, timeout: float = 30.0) -> bool:
        """Block until every published message was acknowledged (or refused) by the broker."""
        deadline = time.monotonic() + timeout
        with self._acked:
            while self.acked + self.refused < self.published:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked.wait(left)
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> "MqttPublisher":
        return self.connect()

    def __exit__(self, *exc) -> None:
        self.close()


def _resolve(fut: asyncio.Future, ok: bool) -> None:
    if not fut.done():  # the waiter may have given up (cancelled) meanwhile
        fut.set_result(ok)
