"""Cluster mode's lossless MQTT front door: nats-server's MQTT listener -> JetStream -> ``WL`` partitions.

nats-server (2.9) stores every QoS 1 PUBLISH its MQTT listener receives in the JetStream stream
``$MQTT_msgs`` (subject ``$MQTT.msgs.<topic with / as .>``) *before* it sends the PUBACK, so a kill -9
of the node loses nothing a device was told was received (Mosquitto 2.0 writes its queue only every
``autosave_interval``; measured in docs/cluster.md). NATS MQTT is MQTT 3.1.1 only and has no
``$share``: routers pull durable JetStream consumers on ``$MQTT_msgs`` instead, publish each message to
its partition of ``WL`` with the same ``Nats-Msg-Id`` as the MQTT router, and ack it only after ``WL``'s
PubAck.

**Lanes.** Two routers pulling one consumer publish their batches to ``WL`` in either order, and a
device's readings arriving out of order are late to the alarm engine (measured: alerts raised twice
and missed). So the intake is cut into lanes, one durable consumer per stream (filter
``$MQTT.msgs.<prefix>.*.<stream>.>``; nats-server 2.9 allows one filter subject per consumer): a
device's messages are all in its stream's lane, and each lane is pulled by one router at a time. The
lanes must not overlap: ``$MQTT_msgs`` has interest retention (a message goes once every consumer
whose filter matches it has acked it), and with a catch-all consumer beside the per-stream ones
nats-server 2.9.10 removed messages before the stream's lane had delivered them (measured: 14 of
6,440 lost under load, none without the catch-all; docs/cluster.md). Hence no "rest" lane: the
built-in streams' lanes are created with the front door, a registry stream's lane by the routers
(given a dsn they watch the registry) as soon as the stream exists, and every router picks up lanes
created by others. A message whose stream has no lane is not stored by nats-server at all (no
consumer is interested), though PUBACKed: a device publishing to a stream before it is registered.

**Leases.** Each lane has a lease, a key in a JetStream key-value bucket whose entries expire after
``LEASE_TTL_S`` unless renewed (every ``LEASE_RENEW_S``). Every router also keeps a member key there;
a router aims at a fair share of the lanes (ceil(lanes / members)), takes free lanes up to it and
gives lanes back above it after ``REBALANCE_S`` (at a batch boundary, everything acked; at its share it
does not take a lane it gave back for 2 x ``REBALANCE_S``, the time a router under its share has to
take it, however slow its ticks under load). A holder stops
fetching ``LEASE_MARGIN_S`` before its lease could have expired on the server (it counts from before
its last successful renewal was sent), so it never pulls a lane another router took.

**Hand-over without waiting for redelivery.** A router taking a lane over (its predecessor was killed,
or lost its lease) does not wait ``ACK_WAIT_S`` for the server to redeliver the predecessor's unacked
batch: it reads the lane consumer's ack floor and last delivered stream sequence and re-reads that
range straight from ``$MQTT_msgs`` (``next_by_subj`` message gets, in order), republishes it (``WL``
drops what the predecessor had already published, by ``Nats-Msg-Id``), and only then fetches. When
the server redelivers those messages later they are acked without routing (sequence <= the replayed
range). A failed NATS request of the lane (fetch, consumer info, message get) starts the lane over the
same way, so a message delivered but not routed is never overtaken by a newer one of its device.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import nats
import orjson
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from wulian.core.const import Stream
from wulian.ingest import jetstream as j
from wulian.ingest.aio import raise_if_cancelled, stop_task
from wulian.ingest.router import topic_partition

log = logging.getLogger(__name__)

MQTT_STREAM = "$MQTT_msgs"  # nats-server's own stream for MQTT QoS 1 messages
MQTT_SUBJECT_PREFIX = "$MQTT.msgs."
LANE_DURABLE_PREFIX = "wulian_lane_"
LEGACY_DURABLE = "wulian_routers"  # the one consumer of earlier versions: it overlaps every lane, so it goes
ACK_WAIT_S = 15.0  # only a fallback now (a hand-over replays the unacked range itself): > an election
LEASE_BUCKET = "wulian_router_lanes"  # (the single lease of earlier versions was "wulian_router_lease")
LEASE_TTL_S = 3.0  # bounds the hand-over after kill -9 of a router (the rest is a replay of < 1 s)
LEASE_RENEW_S = 0.5
LEASE_CALL_S = 1.0  # timeout of a lease call
LEASE_MARGIN_S = 0.5  # a holder stops fetching this long before its lease could expire on the server
FETCH_S = 1.0  # longest fetch (the server ends the pull request then: no delivery after the lease)
FETCH_MIN_S = 0.2
REBALANCE_S = 3.0  # above its fair share this long before a router gives lanes back
LANES_POLL_S = 5.0  # how often a router looks for lanes created by others (a registry stream's)
STOP_STEP_S = 10.0  # longest wait for each step of a stopping router's clean-up (a TTL frees the rest)
REPLAY_CHUNKS = 16  # concurrent sequential readers over a replayed range (one get is ~1-2 ms)


def topic_of(subject: str) -> str:
    """Undo nats-server's topic -> subject mapping (``/`` became ``.``). nats-server 2.9 refuses a topic
    with a ``.`` (it closes the device's connection, no PUBACK: measured), so none reaches here."""
    s = subject[len(MQTT_SUBJECT_PREFIX):] if subject.startswith(MQTT_SUBJECT_PREFIX) else subject
    return s.replace(".", "/")


@dataclass(frozen=True)
class Lane:
    """One stream's durable consumer on ``$MQTT_msgs``: every topic ``<prefix>/<region>/<stream>/...``."""

    name: str  # the stream
    durable: str
    filter: str


def lane(prefix: str, stream: str) -> Lane:
    return Lane(stream, f"{LANE_DURABLE_PREFIX}{stream}",
                f"{MQTT_SUBJECT_PREFIX}{prefix.replace('/', '.')}.*.{stream}.>")


def builtin_lanes(prefix: str = "wl") -> list[Lane]:
    return [lane(prefix, s.value) for s in Stream]


def consumer_config(ln: Lane, batch: int) -> ConsumerConfig:
    """``max_ack_pending`` is two batches: a killed holder's unacked batch stays pending until the server
    redelivers it (``ACK_WAIT_S``), and its successor (which replayed it) must fetch a batch meanwhile."""
    return ConsumerConfig(durable_name=ln.durable, filter_subject=ln.filter,
                          ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                          ack_wait=ACK_WAIT_S, max_ack_pending=2 * batch, max_deliver=-1)


async def ensure_lanes(js, prefix: str, streams, batch: int = 2000) -> list[str]:
    """Create the lanes of ``streams`` that do not exist (an existing one keeps its position); returns
    the streams whose lane was created."""
    created = []
    for name in streams:
        ln = lane(prefix, name)
        try:
            await js.consumer_info(MQTT_STREAM, ln.durable)
        except nats.js.errors.NotFoundError as exc:
            if getattr(exc, "err_code", None) != 10014:  # JSConsumerNotFoundErr; else no stream yet
                raise
            await js.add_consumer(MQTT_STREAM, consumer_config(ln, batch))
            created.append(name)
    return created


async def lane_streams(nc: nats.NATS) -> list[str]:
    """The streams that have a lane: consumer names on ``$MQTT_msgs`` (the MQTT sessions' consumers are
    there too, hence names only, paged)."""
    out, offset = [], 0
    while True:
        resp = await nc.request(f"$JS.API.CONSUMER.NAMES.{MQTT_STREAM}", orjson.dumps({"offset": offset}),
                                timeout=LEASE_CALL_S * 5)
        page = orjson.loads(resp.data)
        if "error" in page:
            raise RuntimeError(f"consumer names of {MQTT_STREAM}: {page['error']}")
        names = page.get("consumers") or []
        out += [n[len(LANE_DURABLE_PREFIX):] for n in names if n.startswith(LANE_DURABLE_PREFIX)]
        offset += len(names)
        if not names or offset >= page.get("total", 0):
            return out


async def ensure_front_door(nc: nats.NATS, prefix: str = "wl", batch: int = 2000, streams=(),
                            timeout: float = 60.0) -> None:
    """The lanes of the built-in streams (and of ``streams``) on ``$MQTT_msgs``. nats-server creates that
    stream when the first MQTT client connects (``mqtt_hello``); retried until it exists. The single
    consumer of earlier versions is deleted once the lanes exist: it overlaps them, and overlapping
    consumers on an interest stream lose messages in nats-server 2.9.10 (measured, docs/cluster.md); what
    it had not acked is still stored and the new lanes deliver it."""
    js = nc.jetstream(timeout=10)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await ensure_lanes(js, prefix, [s.value for s in Stream] + [s for s in streams], batch)
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await js.delete_consumer(MQTT_STREAM, LEGACY_DURABLE)
                log.warning("deleted the single routers' consumer %s of an earlier version (lanes replace it)",
                            LEGACY_DURABLE)
            return
        except (nats.js.errors.NotFoundError, nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError,
                nats.js.errors.APIError) as exc:
            if loop.time() > deadline:
                raise RuntimeError(f"no {MQTT_STREAM} stream: has an MQTT client connected? ({exc!r})") from exc
            await asyncio.sleep(0.5)


def mqtt_hello(host: str, port: int, timeout: float = 10.0, username: str | None = None,
               password: str | None = None) -> None:
    """One MQTT 3.1.1 CONNECT / CONNACK / DISCONNECT (MQTT 3.1.1 3.1, 3.2, 3.14): makes nats-server create
    its MQTT streams, so the routers' consumers can exist before any device publishes. The nodes refuse
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


def lane_key(lane: str) -> str:
    return f"lane.{lane}"


def member_key(name: str) -> str:
    return "member." + "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


async def lease_bucket(js):
    return await js.create_key_value(bucket=LEASE_BUCKET, ttl=LEASE_TTL_S, history=1, replicas=3)


async def lane_holders(js, incarnation: bool = False) -> dict[str, str]:
    """stream -> the router holding its lane (the router's name; ``incarnation``: ``name/<process>``, which
    tells a restarted router from its killed self), for the lanes held now. The keys come from the
    bucket's stream info, not a key listing: nats-py's listing waits for as many entries as its consumer
    had pending, and entries expiring meanwhile (a 3 s TTL, renewed twice a second) left it waiting."""
    kv = await js.key_value(LEASE_BUCKET)
    info = await js.stream_info(f"KV_{LEASE_BUCKET}", subjects_filter=f"$KV.{LEASE_BUCKET}.lane.>")
    out = {}
    for subject in info.state.subjects or {}:
        key = subject[len(f"$KV.{LEASE_BUCKET}."):]
        with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            e = await kv.get(key)
            if e.value:
                v = e.value.decode()
                out[key[len("lane."):]] = v if incarnation else v.rsplit("/", 1)[0]
    return out


@dataclass
class Lease:
    """One held lane: its key revision, and until when (monotonic) this router may fetch."""

    lane: Lane
    rev: int
    valid_until: float
    task: asyncio.Task | None = None
    stop: asyncio.Event = field(default_factory=asyncio.Event)  # give the lane back at a batch boundary
    above_share_since: float | None = None
    given_back: bool = False  # stopped by the rebalance (not lost, not failed)


class NatsFrontDoorRouter:
    """``wulian router`` when ``cluster.front_door`` is ``nats``: ``$MQTT_msgs`` lanes -> ``WL`` partitions."""

    def __init__(self, name: str, nats_urls: list[str], partitions: int, replicas: int, prefix: str = "wl",
                 batch: int = 2000, dsn: str | None = None) -> None:
        self.name = name
        self.urls = nats_urls
        self.partitions = partitions
        self.replicas = replicas
        self.prefix = prefix
        self.batch = batch
        self.routed = 0
        self.replayed = 0
        self.duplicates = 0
        self.dsn = dsn  # given: the router creates the lanes of registry streams (``wulian stream add``)
        self.lanes: dict[str, Lane] = {ln.name: ln for ln in builtin_lanes(prefix)}
        self.held: dict[str, Lease] = {}
        self.me = f"{name}/{uuid.uuid4().hex[:12]}"  # this incarnation: a restarted router is another holder
        self._part: dict[str, int] = {}
        self._ljs = None  # JetStream context of the lease calls
        self._js = None
        self._registry = None  # RegistryWatcher, with a dsn
        self._watcher_task: asyncio.Task | None = None
        self._free: set[str] = set()  # lanes found free on the last tick (at the share)
        self._gave: dict[str, float] = {}  # lane -> when (monotonic) this router gave it back above its share

    def partition(self, topic: str) -> int:
        return topic_partition(self._part, topic, self.prefix, self.partitions)

    def preference(self) -> list[Lane]:
        """Lanes in this router's order of preference (rendezvous hash): routers start on different lanes."""
        def rank(ln: Lane) -> bytes:
            return hashlib.blake2b(f"{self.name}/{ln.name}".encode(), digest_size=8).digest()

        return sorted(self.lanes.values(), key=rank)

    async def _publish(self, js, msgs: list[tuple[str, bytes]]) -> None:
        """Publish (topic, payload) to their partitions, in order, retrying until every one has its PubAck."""
        rx = str(time.time_ns())
        todo = msgs
        delay = 0.2
        while todo:
            results = await asyncio.gather(*(js.publish(
                j.subject(self.partition(topic)), data,
                headers={j.HDR_MSG_ID: j.message_id(topic, data), j.HDR_TOPIC: topic, j.HDR_RX_NS: rx},
            ) for topic, data in todo), return_exceptions=True)
            failed = [t for t, r in zip(todo, results) if isinstance(r, BaseException)]
            self.duplicates += sum(1 for r in results if not isinstance(r, BaseException) and r.duplicate)
            if failed:
                log.warning("JetStream publish failed for %d of %d messages; retrying in %.1fs",
                            len(failed), len(todo), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            todo = failed

    async def _replay(self, js, lane: Lane) -> int:
        """Republish, in stream order, the lane's messages delivered but not acked (a predecessor's batch,
        or ours before a failure); returns the last stream sequence covered (0: nothing delivered)."""
        info = await js.consumer_info(MQTT_STREAM, lane.durable)
        floor, upto = info.ack_floor.stream_seq, info.delivered.stream_seq
        if not info.num_ack_pending or upto <= floor:
            return upto
        bounds = [floor + (upto - floor) * k // REPLAY_CHUNKS for k in range(REPLAY_CHUNKS + 1)]

        async def read(lo: int, hi: int) -> list:  # messages of the lane in (lo, hi], in order
            out, seq = [], lo
            while seq < hi:
                try:
                    m = await js.get_msg(MQTT_STREAM, seq=seq + 1, subject=lane.filter, next=True)
                except nats.js.errors.NotFoundError:
                    break
                if m.seq > hi:
                    break
                out.append(m)
                seq = m.seq
            return out

        chunks = await asyncio.gather(*(read(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo))
        msgs = [(topic_of(m.subject), m.data) for c in chunks for m in c]
        await self._publish(js, msgs)
        self.replayed += len(msgs)
        log.info("router %s: lane %s: replayed %d unacknowledged messages (stream seq %d..%d)",
                 self.name, lane.name, len(msgs), floor + 1, upto)
        return upto

    async def _lane(self, js, lease: Lease) -> None:
        """Route one lane while its lease is valid; starts over (replay first) after any NATS failure."""
        lane = lease.lane
        while not lease.stop.is_set():
            sub = None
            try:
                replayed = await self._replay(js, lane)
                sub = await js.pull_subscribe_bind(lane.durable, stream=MQTT_STREAM)
                while not lease.stop.is_set():
                    left = lease.valid_until - time.monotonic()
                    if left < FETCH_MIN_S + 0.2:  # renewal late: pause (a successor replays what we hold)
                        await asyncio.sleep(0.1)
                        continue
                    try:
                        msgs = await sub.fetch(self.batch, timeout=min(FETCH_S, left - 0.2))
                    except (nats.errors.TimeoutError, asyncio.TimeoutError):
                        continue
                    route = [m for m in msgs if m.metadata.sequence.stream > replayed]
                    if route:
                        await self._publish(js, [(topic_of(m.subject), m.data) for m in route])
                        self.routed += len(route)
                    await asyncio.gather(*(m.ack() for m in msgs))  # only now: every message is in WL
                return
            except nats.errors.Error as exc:  # e.g. a node died under a request, the consumer's leader moved
                log.warning("router %s: lane %s: NATS request failed (%r); starting the lane over",
                            self.name, lane.name, exc)
                await asyncio.sleep(0.5)
            finally:
                if sub is not None:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    async def _renew(self, kv, lease: Lease) -> bool:
        sent = time.monotonic()
        try:
            lease.rev = await kv.update(lane_key(lease.lane.name), self.me.encode(), last=lease.rev)
        except nats.js.errors.KeyWrongLastSequenceError:
            log.warning("router %s: lost the lease of lane %s", self.name, lease.lane.name)
            return False
        except nats.errors.Error as exc:  # e.g. during a leader election: retried within the TTL
            log.warning("router %s: lease renewal of lane %s failed (%r); retrying", self.name, lease.lane.name, exc)
            return True
        lease.valid_until = sent + LEASE_TTL_S - LEASE_MARGIN_S
        return True

    async def _drop(self, lease: Lease) -> None:
        """Stop routing a lane at once (lease lost): what it fetched and did not ack, the next holder replays."""
        self.held.pop(lease.lane.name, None)
        lease.stop.set()
        await stop_task(lease.task)  # its failure, if any, is moot now: the lane is gone

    async def _release(self, kv, lease: Lease) -> None:
        """Free a lane whose task has ended (given back at a batch boundary, or failed): delete its key,
        so another router takes it on its next tick."""
        self.held.pop(lease.lane.name, None)
        if lease.given_back:
            self._gave[lease.lane.name] = time.monotonic()
        exc = lease.task.exception() if lease.task and not lease.task.cancelled() else None
        if exc is not None:
            log.error("router %s: lane %s failed (%r); lease freed", self.name, lease.lane.name, exc)
        with contextlib.suppress(nats.errors.Error):
            await kv.delete(lane_key(lease.lane.name), last=lease.rev)

    async def _members(self) -> int:
        """Routers alive: member keys not expired (one stream-info request, not a key listing)."""
        info = await self._ljs.stream_info(f"KV_{LEASE_BUCKET}", subjects_filter=f"$KV.{LEASE_BUCKET}.member.>")
        return max(1, len(info.state.subjects or {}))

    async def _tick(self, js, kv) -> None:
        for lease in list(self.held.values()):
            if lease.task and lease.task.done():
                await self._release(kv, lease)
            elif not await self._renew(kv, lease):
                await self._drop(lease)
        members = await self._members()
        share = math.ceil(len(self.lanes) / members)
        now = time.monotonic()
        active = [self.held[ln.name] for ln in self.preference() if ln.name in self.held
                  and not self.held[ln.name].stop.is_set()]
        if len(active) > share:  # give back the least preferred, once above the share for a while
            for lease in active[share:]:
                lease.above_share_since = lease.above_share_since or now
                if now - lease.above_share_since >= REBALANCE_S:
                    log.info("router %s: giving lane %s back (fair share %d of %d lanes, %d routers)",
                             self.name, lease.lane.name, share, len(self.lanes), members)
                    lease.given_back = True
                    lease.stop.set()  # the lane's task ends after its batch; the next tick frees the key
            return
        for lease in active:
            lease.above_share_since = None
        free = set()
        for lane in self.preference():
            if lane.name in self.held:
                continue
            if len(self.held) >= share:
                # at its share a router still takes a lane found free on two ticks in a row: the router
                # counted for it may be the dead one (its member key not yet expired, or renewed by its
                # restarting incarnation), and a router under its share takes a lane at once; not one it
                # gave back itself lately, which is the other router's to take (under load its ticks may
                # come slower than ours: retaking it at once kept it from ever getting its share)
                if now - self._gave.get(lane.name, -math.inf) < 2 * REBALANCE_S:
                    continue
                try:
                    await kv.get(lane_key(lane.name))
                    continue
                except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                    free.add(lane.name)
                    if lane.name not in self._free:
                        continue
            sent = time.monotonic()
            try:
                rev = await kv.create(lane_key(lane.name), self.me.encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # held by another router
            lease = Lease(lane, rev, sent + LEASE_TTL_S - LEASE_MARGIN_S)
            lease.task = asyncio.create_task(self._lane(js, lease))
            self.held[lane.name] = lease
            log.info("router %s: lane %s taken (%d held, fair share %d)", self.name, lane.name,
                     len(self.held), share)
        self._free = free

    async def _ensure_registry_lanes(self) -> None:
        """Lanes for the registry's streams that have none yet (created once; any router may)."""
        from wulian.ingest.stream_registry import current

        missing = [n for n in current().names() if n not in self.lanes]
        if missing:
            for name in await ensure_lanes(self._js, self.prefix, missing, self.batch):
                log.info("router %s: lane created for registry stream %s", self.name, name)
            for name in missing:
                self.lanes[name] = lane(self.prefix, name)

    async def _registry_changed(self, registry) -> None:
        try:
            await self._ensure_registry_lanes()
        except nats.errors.Error as exc:  # the next poll (LANES_POLL_S) tries again
            log.warning("router %s: lanes of new registry streams not created yet (%r)", self.name, exc)

    async def _watch_registry(self) -> None:
        """With a dsn: the registry loaded and watched apart from the lease loop, so a database that does not
        answer never delays a renewal."""
        from wulian.ingest.stream_registry import RegistryWatcher

        while self._registry is None:
            watcher = RegistryWatcher(self.dsn, on_change=self._registry_changed)
            try:
                await asyncio.wait_for(watcher.start(), 30)
                self._registry = watcher
                await self._registry_changed(None)
            except Exception as exc:  # database down or refused: retried, the built-in lanes run meanwhile
                with contextlib.suppress(Exception):
                    await watcher.stop()
                log.warning("router %s: stream registry not loaded (%r); built-in lanes only, retrying",
                            self.name, exc)
                await asyncio.sleep(LANES_POLL_S)

    async def _refresh_lanes(self, nc) -> None:
        """The registry's streams get their lanes; lanes created by other routers join the fair share."""
        if self._registry is not None:
            await self._ensure_registry_lanes()
        for name in await lane_streams(nc):
            self.lanes.setdefault(name, lane(self.prefix, name))

    async def run(self) -> None:
        kv = None
        nc = await j.connect(self.urls, f"router-{self.name}")
        try:
            while True:  # a node restarting or a leader election answers nothing for a few seconds
                try:
                    self.partitions = await j.ensure_stream(nc, self.partitions, self.replicas)
                    await ensure_front_door(nc, self.prefix, self.batch, timeout=3600)
                    js = self._js = nc.jetstream(timeout=10)
                    await lease_bucket(js)
                    # lease calls time out quickly: a renewal stuck in an election must not hold the others
                    self._ljs = nc.jetstream(timeout=LEASE_CALL_S)
                    kv = await self._ljs.key_value(LEASE_BUCKET)
                    break
                except nats.errors.Error as exc:
                    log.warning("router %s: JetStream not answering (%r); retrying", self.name, exc)
                    await asyncio.sleep(LEASE_RENEW_S)
            log.info("router %s: NATS MQTT front door (%s), %d partitions", self.name, MQTT_STREAM, self.partitions)
            if self.dsn:
                self._watcher_task = asyncio.create_task(self._watch_registry())
            polled = -math.inf
            while True:
                try:
                    if time.monotonic() - polled >= LANES_POLL_S:
                        polled = time.monotonic()
                        await self._refresh_lanes(nc)
                    await kv.put(member_key(self.name), self.me.encode())
                    await self._tick(js, kv)
                except (nats.errors.Error, RuntimeError) as exc:  # the bucket's node died: held leases run out
                    log.warning("router %s: lease bucket unavailable (%r); retrying", self.name, exc)
                await asyncio.sleep(LEASE_RENEW_S)
                raise_if_cancelled()  # a cancel one of the calls above swallowed (ingest/aio.py)
        finally:  # stopped (not killed): free what we hold, so the others need not wait for the TTL
            await self._stop(kv, nc)

    async def _stop(self, kv, nc) -> None:
        """Each step bounded by STOP_STEP_S: a connection that no longer answers must not keep the process
        from stopping (what is not freed here expires with its TTL)."""
        async def step(what: str, aw) -> None:
            try:
                await asyncio.wait_for(aw, STOP_STEP_S)
            except asyncio.TimeoutError:
                log.warning("router %s: stopping: %s took over %.0f s; left to its TTL", self.name, what, STOP_STEP_S)
            except (nats.errors.Error, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("router %s: stopping: %s failed (%r)", self.name, what, exc)

        for lease in list(self.held.values()):
            await step(f"lane {lease.lane.name}", self._drop(lease))
            if kv is not None:
                await step(f"lease of {lease.lane.name}", kv.delete(lane_key(lease.lane.name), last=lease.rev))
        if kv is not None:
            await step("membership", kv.delete(member_key(self.name)))
        if self._watcher_task is not None:
            await step("the stream registry's loader", stop_task(self._watcher_task))
        if self._registry is not None:
            await step("the stream registry's connection", self._registry.stop())
        await step("the NATS connection", nc.close())
