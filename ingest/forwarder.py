"""HJ 212 upstream forwarding (数据转发, ``wulian forward hj212``): the key pollution sources' data packets
go on to upstream (provincial) platforms as HJ 212 packets under each upstream's own MN/PW.

Intake: a persistent MQTT session on ``{prefix}/+/+/+/hj212`` (the gateway's raw packets). Packets of a
forwarded station with CN 2011/2051/2061/2031 are rewritten (MN, PW, CRC; QN, ST, Flag and CP as the
station sent them) and written to ``forward_outbox``; the MQTT message is acknowledged only after that
commit, so nothing is lost between broker and outbox, and the outbox's unique key (station QN or
DataTime) drops redeliveries.

Delivery: one link per upstream sends the outbox in id order (so in order per station), one packet at a
time; a packet whose Flag asks for an answer (bit A) is marked sent only when the upstream's 9014 for its
QN arrives (HJ 212-2017 §6.1, Appendix C), one that does not once it is written. A timeout or a closed
connection: reconnect with exponential backoff and resend from the first unsent packet (at least once; the
upstream drops a repeated QN/DataTime through its own unique reading key). A 9011 with QnRtn other than 1
(Table 7: PW/MN error...) marks the packet ``refused`` with the reason, and the link goes on.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass

import asyncpg

from wulian.ingest import audit
from wulian.ingest import outbox_metrics as m
from wulian.ingest.codecs import hj212
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.mqtt_client import MqttConsumer

log = logging.getLogger(__name__)
FORWARD_CNS = hj212.DATA_CNS  # 2011 real time, 2051 minute, 2061 hour, 2031 day (HJ 212-2017 Table 9)
SUBSCRIBED_MESSAGE = "hj212 forwarder subscribed"


@dataclass(frozen=True, slots=True)
class ForwardConfig:
    poll_s: float = 2.0
    batch: int = 200
    answer_timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    mapping_refresh_s: float = 10.0

    @classmethod
    def of(cls, forward_settings) -> "ForwardConfig":
        return cls(**{f: getattr(forward_settings, f) for f in cls.__dataclass_fields__})


def rewrite(packet: hj212.Hj212Packet, mn: str, pw: str) -> bytes:
    """The station's packet under the upstream's MN and PW (new length and Appendix A CRC)."""
    return hj212.encode(cn=packet.cn, mn=mn, st=packet.st, pw=pw, qn=packet.qn, flag=packet.flag,
                        pnum=packet.pnum, pno=packet.pno, cp=packet.cp_raw)


def packet_key(packet: hj212.Hj212Packet) -> str:
    """What identifies a packet of a station: its QN, else its DataTime, else its CP's digest."""
    return packet.qn or packet.param("DataTime") or hashlib.sha256(packet.cp_raw.encode()).hexdigest()[:32]


_UPSTREAM_COLS = "id, name, host, port, enabled"
_STATION_SQL = ("SELECT u.name AS upstream, s.device_id, s.upstream_mn, (k.upstream IS NOT NULL) AS has_pw"
                " FROM forward_stations s JOIN forward_upstreams u ON u.id = s.upstream LEFT JOIN"
                " forward_station_secrets k ON (k.upstream, k.device_id) = (s.upstream, s.device_id)"
                " WHERE s.upstream = $1 AND s.device_id = $2")


async def add_upstream(con: asyncpg.Connection, name: str, host: str, port: int, *, actor: str | None = None) -> int:
    """Add or change the upstream ``name`` (``wulian forward upstream``); audited as a CLI write."""
    async with con.transaction():
        before = await con.fetchrow(f"SELECT {_UPSTREAM_COLS} FROM forward_upstreams WHERE name = $1 FOR UPDATE",
                                    name)
        after = await con.fetchrow(
            "INSERT INTO forward_upstreams (name, host, port) VALUES ($1, $2, $3) ON CONFLICT (name)"
            f" DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port RETURNING {_UPSTREAM_COLS}", name, host, port)
        await audit.record(con, actor=actor or audit.cli_actor(), source="cli",
                           action="forward_upstream.update" if before else "forward_upstream.create",
                           object_type="forward_upstream", object_id=name, before=before and dict(before),
                           after=dict(after))
    return after["id"]


async def add_station(con: asyncpg.Connection, upstream: str, device_id: str, upstream_mn: str,
                      upstream_pw: str, *, actor: str | None = None) -> None:
    """Forward ``device_id`` to ``upstream`` as ``upstream_mn``/``upstream_pw`` (the PW in its own table).
    Audited as a CLI write; the PW never reaches the log (masked)."""
    async with con.transaction():
        up = await con.fetchval("SELECT id FROM forward_upstreams WHERE name = $1", upstream)
        if up is None:
            raise LookupError(f"no upstream named {upstream!r}")
        before = await con.fetchrow(_STATION_SQL, up, device_id)
        await con.execute("INSERT INTO forward_stations (upstream, device_id, upstream_mn) VALUES ($1, $2, $3)"
                          " ON CONFLICT (upstream, device_id) DO UPDATE SET upstream_mn = EXCLUDED.upstream_mn",
                          up, device_id, upstream_mn)
        await con.execute("INSERT INTO forward_station_secrets (upstream, device_id, upstream_pw) VALUES ($1, $2, $3)"
                          " ON CONFLICT (upstream, device_id) DO UPDATE SET upstream_pw = EXCLUDED.upstream_pw",
                          up, device_id, upstream_pw)
        after = await con.fetchrow(_STATION_SQL, up, device_id)
        await audit.record(con, actor=actor or audit.cli_actor(), source="cli",
                           action="forward_station.update" if before else "forward_station.create",
                           object_type="forward_station", object_id=f"{upstream}/{device_id}",
                           before=_station_view(before), after=_station_view(after))


def _station_view(row) -> dict | None:
    """A station mapping for the audit log: the PW shows only as set (masked), never its value."""
    if row is None:
        return None
    d = dict(row)
    d["upstream_pw"] = audit.MASK if d.pop("has_pw") else None
    return d


_INSERT = ("INSERT INTO forward_outbox (upstream, device_id, cn, packet_key, packet, ack_requested)"
           " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (upstream, device_id, cn, packet_key) DO NOTHING")


class Forwarder:
    def __init__(self, pool: asyncpg.Pool, cfg: ForwardConfig) -> None:
        self.pool = pool
        self.cfg = cfg
        self.mapping: dict[str, list[tuple[int, str, str]]] = {}  # device -> [(upstream, MN, PW)]
        self.upstreams: dict[int, asyncpg.Record] = {}
        self.wake: dict[int, asyncio.Event] = {}
        self._mapping_at = 0.0

    async def refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._mapping_at < self.cfg.mapping_refresh_s:
            return
        async with self.pool.acquire() as con:
            rows = await con.fetch(
                "SELECT s.upstream, s.device_id, s.upstream_mn, k.upstream_pw FROM forward_stations s"
                " JOIN forward_upstreams u ON u.id = s.upstream AND u.enabled"
                " JOIN forward_station_secrets k ON (k.upstream, k.device_id) = (s.upstream, s.device_id)")
            ups = await con.fetch("SELECT id, name, host, port FROM forward_upstreams WHERE enabled")
        mapping: dict[str, list[tuple[int, str, str]]] = {}
        for r in rows:
            mapping.setdefault(r["device_id"], []).append((r["upstream"], r["upstream_mn"], r["upstream_pw"]))
        self.mapping = mapping
        self.upstreams = {u["id"]: u for u in ups}
        for uid in self.upstreams:
            self.wake.setdefault(uid, asyncio.Event())
        self._mapping_at = time.monotonic()

    def outbox_rows(self, topic: str, payload: bytes) -> list[tuple]:
        """The outbox rows of one MQTT message (none for stations not forwarded and non-data CNs)."""
        parts = topic.split("/")
        targets = self.mapping.get(parts[3]) if len(parts) == 5 else None
        if not targets:
            return []
        try:
            packet = hj212.decode(payload)
        except CodecError as exc:  # the gateway checked it already; a bad one is ingest's dead letter
            log.warning("forwarder: packet of %s not decodable (%s): skipped", parts[3], exc.reason)
            return []
        if packet.cn not in FORWARD_CNS:
            return []
        key = packet_key(packet)
        return [(up, parts[3], packet.cn, key, rewrite(packet, mn, pw), packet.ack_requested)
                for up, mn, pw in targets]

    async def intake(self, consumer: MqttConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:  # get_batch waits for a first message: bounded, so an idle forwarder sees stop
                msgs = await asyncio.wait_for(consumer.get_batch(1000, 0.2), 1.0)
            except asyncio.TimeoutError:
                continue
            if not msgs:
                continue
            await self.refresh()
            rows = [row for msg in msgs for row in self.outbox_rows(msg.topic, msg.payload)]
            if rows:
                async with self.pool.acquire() as con, con.transaction():
                    await con.executemany(_INSERT, rows)
                for up in {r[0] for r in rows}:
                    m.FORWARD_QUEUED.labels(self.upstreams[up]["name"] if up in self.upstreams else str(up)).inc(
                        sum(1 for r in rows if r[0] == up))
                    if up in self.wake:
                        self.wake[up].set()
            consumer.ack_many(msgs)  # after the outbox commit: a crash before it means a redelivery

    async def link(self, upstream_id: int, stop: asyncio.Event) -> None:
        """Send upstream ``upstream_id``'s outbox in order, forever (reconnecting with backoff)."""
        cfg = self.cfg
        backoff = cfg.backoff_base_s
        reader = writer = None
        buf = bytearray()
        wake = self.wake.setdefault(upstream_id, asyncio.Event())
        while not stop.is_set():
            up = self.upstreams.get(upstream_id)
            name = up["name"] if up else str(upstream_id)
            async with self.pool.acquire() as con:
                rows = await con.fetch("SELECT id, packet, ack_requested FROM forward_outbox WHERE upstream = $1"
                                       " AND state = 'pending' ORDER BY id LIMIT $2", upstream_id, cfg.batch)
                m.FORWARD_BACKLOG.labels(name).set(await con.fetchval(
                    "SELECT count(*) FROM forward_outbox WHERE upstream = $1 AND state = 'pending'", upstream_id))
            if not rows or up is None:
                wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(wake.wait(), cfg.poll_s)
                continue
            current = rows[0]
            try:
                if writer is None:
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(up["host"], up["port"]),
                                                            cfg.connect_timeout_s)
                    buf.clear()
                for r in rows:
                    current = r
                    writer.write(r["packet"])
                    await writer.drain()
                    outcome, detail = "sent", None
                    if r["ack_requested"]:
                        qn = hj212.decode(r["packet"]).qn
                        outcome, detail = await asyncio.wait_for(self._answer(reader, buf, qn), cfg.answer_timeout_s)
                    async with self.pool.acquire() as con:
                        await con.execute("UPDATE forward_outbox SET state = $2, last_error = $3, sent_at = now(),"
                                          " attempts = attempts + 1 WHERE id = $1", r["id"], outcome, detail)
                    (m.FORWARD_SENT if outcome == "sent" else m.FORWARD_REFUSED).labels(name).inc()
                backoff = cfg.backoff_base_s
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
                m.FORWARD_FAILURES.labels(name).inc()
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.warning("forwarder: upstream %s failed (%s); retrying in %.1fs", name, error, backoff)
                with contextlib.suppress(Exception):
                    async with self.pool.acquire() as con:
                        await con.execute("UPDATE forward_outbox SET attempts = attempts + 1, last_error = $2"
                                          " WHERE id = $1", current["id"], error)
                if writer is not None:
                    writer.close()
                reader = writer = None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(cfg.backoff_max_s, backoff * 2)
        if writer is not None:
            writer.close()

    @staticmethod
    async def _answer(reader: asyncio.StreamReader, buf: bytearray, qn: str | None) -> tuple[str, str | None]:
        """Read until the upstream answers packet ``qn``: ('sent', None) for 9014, ('refused', why) for a
        9011 with QnRtn != 1. Other packets (the upstream's own commands) are ignored."""
        while True:
            frames, rest = hj212.split_packets(bytes(buf))
            buf[:] = rest
            for frame in frames:
                try:
                    p = hj212.decode(frame, crc_modes=hj212.CRC_MODES)
                except CodecError:
                    continue
                if p.qn != qn:
                    continue
                if p.cn == "9014":
                    return "sent", None
                if p.cn == "9011" and p.param("QnRtn") not in (None, "1"):
                    return "refused", f"upstream answered 9011 QnRtn={p.param('QnRtn')}"
            chunk = await reader.read(65536)
            if not chunk:
                raise ConnectionError("upstream closed the connection")
            buf += chunk


FORWARD_LEASE = "forward/hj212"  # cluster-singleton lease of ``wulian forward hj212`` (ingest.leases)


async def run_forwarder(settings, stop: asyncio.Event | None = None) -> None:
    """``wulian forward hj212``: intake + one link per enabled upstream, with its metrics endpoint."""
    from wulian.ingest.health import serve_metrics
    from wulian.ingest.service import mqtt_params

    stop = stop or asyncio.Event()
    f = settings.forward
    consumer = MqttConsumer(mqtt_params(settings, client_id=f.client_id), [f"{settings.mqtt.topic_prefix}/+/+/+/hj212"])
    async with asyncpg.create_pool(settings.db.dsn, min_size=2, max_size=8) as pool:
        if f.metrics_port:
            serve_metrics(f.metrics_host, f.metrics_port)
        fwd = Forwarder(pool, ForwardConfig.of(f))
        await fwd.refresh(force=True)
        await consumer.start()
        log.info("%s: %d upstream(s), %d station(s)", SUBSCRIBED_MESSAGE, len(fwd.upstreams), len(fwd.mapping))
        tasks = {uid: asyncio.create_task(fwd.link(uid, stop)) for uid in fwd.upstreams}
        intake = asyncio.create_task(fwd.intake(consumer, stop))
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), f.mapping_refresh_s)
                await fwd.refresh()
                for uid in fwd.upstreams.keys() - tasks.keys():  # upstreams added while running
                    tasks[uid] = asyncio.create_task(fwd.link(uid, stop))
                for t in [intake, *tasks.values()]:
                    if t.done() and t.exception():
                        raise t.exception()
        finally:
            stop.set()
            await asyncio.gather(intake, *tasks.values(), return_exceptions=True)
            consumer.stop()
