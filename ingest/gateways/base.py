"""What the HJ 212 and JT/T 808 gateways share: the asyncio server, connection limits, idle timeout,
frame-size limit, per-IP auth-failure throttling, dead letters, answer-after-PUBACK and metrics.

A connection reads a chunk, cuts it into frames (the protocol's splitter), and hands each frame to the
protocol's session, which returns what to do: an immediate answer (bytes), a pending publish whose
answer is written only once the broker has acknowledged it (:class:`Pending`), or nothing. Everything
a chunk produced is published before the first PUBACK is awaited, and answers are written in frame
order. Any exception in one connection closes that connection only.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Protocol

from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.gateways import metrics as m
from wulian.ingest.gateways.registry import DeadLetterSink, DeviceRegistry
from wulian.ingest.rows import event_row

log = logging.getLogger(__name__)


class Publisher(Protocol):
    def publish_async(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future: ...


@dataclass(frozen=True, slots=True)
class GatewayLimits:
    max_connections: int = 20000
    idle_timeout_s: float = 300.0
    max_frame_bytes: int = 4096
    answer_timeout_s: float = 10.0
    auth_fail_limit: int = 5  # failures per IP within the window; then the IP is refused for the window
    auth_fail_window_s: float = 60.0
    read_bytes: int = 65536


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    prefix: str = "wl"
    region: str = "shantou"  # region of auto-provisioned devices
    auto_provision: bool = False
    limits: GatewayLimits = GatewayLimits()


@dataclass(slots=True)
class Pending:
    """A published packet: ``answer`` is written when ``ack`` resolves True (the broker has it)."""

    ack: asyncio.Future
    answer: bytes | None
    on_refused: bytes | None = None  # written if the broker refused the message


@dataclass(slots=True)
class GatewayStats:
    """Per-instance counters (the Prometheus ones are process-wide); tests and benchmarks read these."""

    connections: int = 0
    connections_total: int = 0
    refused: dict = field(default_factory=lambda: defaultdict(int))
    frames: dict = field(default_factory=lambda: defaultdict(int))
    repaired: dict = field(default_factory=lambda: defaultdict(int))  # by repair reason
    auth_failures: int = 0
    published: int = 0
    answered: int = 0
    publish_failures: int = 0
    dead_letters: int = 0


class AuthThrottle:
    """Per-IP sliding window of identity failures."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, ip: str, now: float) -> deque[float] | None:
        q = self._fails.get(ip)
        if q is None:
            return None
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._fails[ip]
            return None
        return q

    def blocked(self, ip: str, now: float) -> bool:
        q = self._recent(ip, now)
        return q is not None and len(q) >= self.limit

    def fail(self, ip: str, now: float) -> bool:
        """Record a failure; True when the IP is now blocked."""
        q = self._recent(ip, now)
        if q is None:
            q = self._fails[ip] = deque()
        q.append(now)
        return len(q) >= self.limit


class Session:
    """One device connection; subclasses implement :meth:`on_frame`."""

    def __init__(self, gateway: "Gateway", ip: str) -> None:
        self.gateway = gateway
        self.ip = ip
        self.closing = False  # set to close the connection after the current chunk's answers
        self.device_id: str | None = None

    async def on_frame(self, frame: bytes) -> bytes | Pending | None:
        raise NotImplementedError

    def auth_failed(self, reason: str) -> None:
        gw = self.gateway
        gw.stats.auth_failures += 1
        m.AUTH_FAILURES.labels(gw.protocol, reason).inc()
        if gw.throttle.fail(self.ip, time.monotonic()):
            self.closing = True

    def dead_letter(self, reason: str, detail: str, frame: bytes, device_id: str | None = None) -> None:
        self.gateway.dead_letter(self.ip, reason, detail, frame, device_id or self.device_id)


class Gateway:
    """Base server; subclasses set ``protocol`` and implement ``split`` and ``session``."""

    protocol = "?"

    def __init__(self, registry: DeviceRegistry, publisher: Publisher, dead_letters: DeadLetterSink,
                 config: GatewayConfig = GatewayConfig()) -> None:
        self.registry = registry
        self.publisher = publisher
        self.dead_letters = dead_letters
        self.config = config
        self.limits = config.limits
        self.throttle = AuthThrottle(config.limits.auth_fail_limit, config.limits.auth_fail_window_s)
        self.stats = GatewayStats()
        self.server: asyncio.base_events.Server | None = None
        self.port: int | None = None
        self._tasks: set[asyncio.Task] = set()
        # benchmarks: seconds from a published frame's arrival to its answer (PUBACK included)
        self.on_answer: Callable[[float], None] | None = None

    # -- protocol hooks ------------------------------------------------------------------------------
    def split(self, buffer: bytes) -> tuple[list[bytes], bytes]:
        raise NotImplementedError

    def session(self, ip: str) -> Session:
        raise NotImplementedError

    # -- shared helpers ------------------------------------------------------------------------------
    def topic(self, region: str, stream: str, device_id: str) -> str:
        return f"{self.config.prefix}/{region}/{stream}/{device_id}/{self.protocol}"

    def frame(self, outcome: str) -> None:
        self.stats.frames[outcome] += 1
        m.FRAMES.labels(self.protocol, outcome).inc()

    def repaired(self, reasons: tuple[str, ...]) -> None:
        """A frame the codec read only after a tolerated repair (its ``repairs``): counted by reason."""
        for reason in reasons:
            self.stats.repaired[reason] += 1
            m.FRAMES_REPAIRED.labels(self.protocol, reason).inc()

    def dead_letter(self, ip: str, reason: str, detail: str, frame: bytes, device_id: str | None) -> None:
        self.stats.dead_letters += 1
        self.dead_letters.add(f"gateway/{self.protocol}/{ip}", device_id, self.protocol, f"gateway:{reason}",
                              detail, frame)

    def device_events(self, ip: str, device_id: str, events: list[dict], frame: bytes) -> None:
        """Record events the gateway answers itself (they never reach MQTT), stamped with the time they
        arrived; one that cannot be stored becomes a dead letter instead."""
        now = time.time_ns()
        for ev in events:
            try:
                row = event_row(device_id, ev, now)
            except CodecError as exc:
                self.dead_letter(ip, exc.reason, exc.detail, frame, device_id)
                continue
            self.dead_letters.add_event(row)

    def publish(self, topic: str, frame: bytes) -> asyncio.Future:
        self.stats.published += 1
        return self.publisher.publish_async(topic, frame, 1)

    # -- server --------------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port=0`` picks a free one). The registry starts listening
        for credential changes first, so that its cache is never stale."""
        await self.registry.start()
        self.server = await asyncio.start_server(self._accept, host, port, backlog=4096,
                                                 limit=self.limits.read_bytes)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 5.0)
            self.server = None
        await self.registry.stop()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        ip = peer[0] if peer else "?"
        proto = self.protocol
        try:
            if self.stats.connections >= self.limits.max_connections:
                self._refuse("too_many_connections")
                return
            if self.throttle.blocked(ip, time.monotonic()):
                self._refuse("auth_throttled")
                return
            self.stats.connections += 1
            self.stats.connections_total += 1
            m.CONNECTIONS.labels(proto).inc()
            m.CONNECTIONS_TOTAL.labels(proto).inc()
            try:
                await self._serve(self.session(ip), reader, writer)
            finally:
                self.stats.connections -= 1
                m.CONNECTIONS.labels(proto).dec()
        except asyncio.CancelledError:
            pass
        except Exception:  # one bad connection never takes the gateway down
            log.exception("%s gateway: connection from %s failed", proto, ip)
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    def _refuse(self, reason: str) -> None:
        self.stats.refused[reason] += 1
        m.CONNECTIONS_REFUSED.labels(self.protocol, reason).inc()

    async def _serve(self, session: Session, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self.limits
        rest = b""
        while not session.closing:
            try:
                data = await asyncio.wait_for(reader.read(limits.read_bytes), limits.idle_timeout_s)
            except TimeoutError:
                self._refuse("idle")
                return
            except ConnectionError:
                return
            if not data:
                return
            received = time.perf_counter()
            try:
                frames, rest = self.split(rest + data)
            except CodecError as exc:  # a frame larger than the limit: drop the connection
                session.dead_letter(exc.reason, exc.detail, (rest + data)[:limits.max_frame_bytes + 64])
                self.frame("too_large")
                self._refuse("frame_too_large")
                return
            if not frames:
                continue
            outcomes = []
            for frame in frames:
                if len(frame) > limits.max_frame_bytes:
                    session.dead_letter("too_large", f"{len(frame)} bytes > {limits.max_frame_bytes}",
                                        frame[:limits.max_frame_bytes])
                    self.frame("too_large")
                    continue
                outcomes.append(await session.on_frame(frame))
                if session.closing:
                    break
            await self._answer(outcomes, writer, received)
        self._refuse("closed_by_gateway")

    async def _answer(self, outcomes: list, writer: asyncio.StreamWriter, received: float) -> None:
        proto = self.protocol
        wrote = False
        for out in outcomes:
            if out is None:
                continue
            published = isinstance(out, Pending)
            if published:
                try:
                    ok = await asyncio.wait_for(asyncio.shield(out.ack), self.limits.answer_timeout_s)
                except TimeoutError:
                    self.stats.publish_failures += 1
                    m.PUBLISH_FAILURES.labels(proto, "timeout").inc()
                    continue  # no answer: the device resends, ingest's unique keys absorb a duplicate
                if not ok:
                    self.stats.publish_failures += 1
                    m.PUBLISH_FAILURES.labels(proto, "refused").inc()
                    if out.on_refused is not None:
                        writer.write(out.on_refused)
                        wrote = True
                    continue
                out = out.answer
                if out is None:
                    continue
            writer.write(out)
            wrote = True
            self.stats.answered += 1
            latency = time.perf_counter() - received
            m.ANSWER_SECONDS.labels(proto).observe(latency)
            if published and self.on_answer is not None:
                self.on_answer(latency)
        if wrote:
            with contextlib.suppress(ConnectionError):
                await writer.drain()
