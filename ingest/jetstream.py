"""The JetStream stream between routers and workers: its shape, the partition of a device, message ids.

One stream (``STREAM``) with subjects ``wl.p.<n>`` for n in [0, P); P is fixed when the stream is created
(written in its description and checked by every router and worker, since changing it would move
devices between partitions and split their alarm state). The partition of a device is CRC-32 of its id
mod P: stable across processes, machines and Python versions (``hash()`` is salted per process).
"""
from __future__ import annotations

import hashlib
import zlib
from urllib.parse import quote, unquote, urlsplit

import nats
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

STREAM = "WL"
SUBJECT_PREFIX = "wl.p"
DESCRIPTION_PREFIX = "wulian partitions="
HDR_TOPIC = "Wl-Topic"  # the MQTT topic the message came on
HDR_RX_NS = "Wl-Rx-Ns"  # when the router received it: the decode's "now" (a redelivery decodes alike)
HDR_MSG_ID = "Nats-Msg-Id"  # JetStream drops a second publish with the same id within the window
DUPLICATE_WINDOW_S = 600.0  # a router restarted by its supervisor re-publishes well within this


def partition_of(device_id: str, partitions: int) -> int:
    return zlib.crc32(device_id.encode()) % partitions


def subject(partition: int) -> str:
    return f"{SUBJECT_PREFIX}.{partition}"


def message_id(topic: str, payload: bytes) -> str:
    """Stable over re-publishes of one MQTT message (QoS 1 redelivery to another router, a device's
    retry): the digest of topic and payload. Two different messages with the same topic and payload
    within the window are one message; they would also be the same rows (same device, times, values),
    except for a payload without timestamps, which a device must not send twice within the window."""
    h = hashlib.blake2b(topic.encode(), digest_size=16)
    h.update(b"\0")
    h.update(payload)
    return h.hexdigest()


def stream_config(partitions: int, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=STREAM, description=f"{DESCRIPTION_PREFIX}{partitions}", subjects=[f"{SUBJECT_PREFIX}.*"],
        retention=RetentionPolicy.LIMITS, storage=StorageType.FILE, num_replicas=replicas,
        duplicate_window=DUPLICATE_WINDOW_S, discard=DiscardPolicy.OLD, max_age=7 * 86400.0,
    )


def with_account(url: str, user: str, password: str) -> str:
    """``url`` with the account in it, unless it has one already (a URL of ``cluster.nats_urls``)."""
    u = urlsplit(url)
    if u.username is not None:
        return url
    return u._replace(netloc=f"{quote(user, safe='')}:{quote(password, safe='')}@{u.netloc}").geturl()


async def connect(urls: list[str], name: str) -> nats.NATS:
    """``urls`` may carry the account (``nats://user:password@host:port``, how the cluster's service account
    reaches routers and workers): it is passed as nats-py's user/password, so it also applies to the
    servers the cluster advertises (nats-py adds those without credentials)."""
    servers, auth = [], {}
    for url in urls:
        u = urlsplit(url)
        if u.username is not None:
            auth = {"user": unquote(u.username), "password": unquote(u.password or "")}
            url = u._replace(netloc=u.netloc.rsplit("@", 1)[1]).geturl()
        servers.append(url)
    return await nats.connect(servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                              connect_timeout=5, **auth)


async def ensure_stream(nc: nats.NATS, partitions: int, replicas: int, timeout: float = 30.0) -> int:
    """Create the stream if missing; return its partition count (the stream's, which wins)."""
    import asyncio

    js = nc.jetstream()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:  # a fresh cluster answers "no meta leader" until it has elected one
        try:
            try:
                info = await js.stream_info(STREAM)
            except nats.js.errors.NotFoundError:
                info = await js.add_stream(stream_config(partitions, replicas))
            break
        except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError, nats.js.errors.APIError):
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.5)
    desc = info.config.description or ""
    if not desc.startswith(DESCRIPTION_PREFIX):
        raise RuntimeError(f"stream {STREAM} exists but was not created by wulian (description {desc!r})")
    return int(desc[len(DESCRIPTION_PREFIX):])
