"""The notification sender (``wulian notify``): delivers the outbox that alert transitions write
(ingest.alert_store.notify) and runs the escalation pass.

At least once: a due row is claimed (attempts + 1, next_attempt_at pushed by ``lease_s``) in a short
transaction, sent outside it, then marked delivered. A sender killed between send and mark leaves the
row to come due again after the lease and be resent with the same idempotency key, which the receiver
uses to drop the repeat. Failures back off exponentially (with jitter) and end in ``failed`` with the
last error after ``max_attempts`` (or at once for a 4xx that retrying will not fix). Quiet hours and
rate limits defer a row without spending an attempt.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from datetime import datetime, time as dtime, timedelta, timezone

import asyncpg
import httpx
import orjson

from wulian.core.timebase import CHINA_TZ
from wulian.ingest import outbox_metrics as m
from wulian.ingest.alert_store import NOTIFY_WAKE_CHANNEL, escalate_due
from wulian.ingest.notify_channels import build, response_error

log = logging.getLogger(__name__)
_RATE_LOCK = 0x4E4F5449  # advisory lock class "NOTI": one sender at a time counts a channel's window
QUIET_BYPASS = frozenset({"critical"})  # severities sent during a channel's quiet hours


@dataclass(frozen=True, slots=True)
class SenderConfig:
    poll_s: float = 5.0
    batch: int = 100
    concurrency: int = 8
    timeout_s: float = 10.0
    lease_s: float = 60.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 600.0
    max_attempts: int = 20
    rate_window_s: float = 60.0
    escalation_poll_s: float = 5.0

    @classmethod
    def of(cls, notify_settings) -> "SenderConfig":
        """From ``settings.notify`` (the fields of the same names)."""
        return cls(**{f: getattr(notify_settings, f) for f in cls.__dataclass_fields__})


def backoff_s(cfg: SenderConfig, attempts: int) -> float:
    """Delay before attempt ``attempts + 1``: base * 2^(attempts-1), capped, times a jitter in [0.5, 1]."""
    return min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** max(0, attempts - 1)) * random.uniform(0.5, 1.0)


def quiet_until(start: dtime | None, end: dtime | None, now: datetime) -> datetime | None:
    """The end of the quiet period ``now`` falls in (China wall clock; start > end wraps midnight), or None."""
    if start is None or end is None or start == end:
        return None
    local = now.astimezone(CHINA_TZ)
    t = local.timetz().replace(tzinfo=None)
    inside = start <= t < end if start < end else (t >= start or t < end)
    if not inside:
        return None
    until = local.replace(hour=end.hour, minute=end.minute, second=end.second, microsecond=0)
    if until <= local:
        until += timedelta(days=1)
    return until.astimezone(timezone.utc)


_DUE = """
SELECT n.id, n.idempotency_key, n.channel_id, n.severity, n.payload::text AS payload, n.attempts,
       c.kind, c.url, c.enabled, c.quiet_start, c.quiet_end, c.rate_per_window, s.secret
FROM notifications n JOIN notify_channels c ON c.id = n.channel_id
LEFT JOIN notify_channel_secrets s ON s.channel = c.id
WHERE n.state = 'pending' AND n.next_attempt_at <= now()
ORDER BY n.next_attempt_at, n.id LIMIT $1 FOR UPDATE OF n SKIP LOCKED"""
_DEFER = "UPDATE notifications SET next_attempt_at = $2, updated_at = now() WHERE id = $1"
_CLAIM = ("UPDATE notifications SET attempts = attempts + 1, last_attempt_at = now(),"
          " next_attempt_at = now() + $2 * interval '1 second', updated_at = now() WHERE id = $1")
# The rate-th most recent send of a channel within the window: a slot frees when it leaves the window.
_RATE_EDGE = ("SELECT last_attempt_at FROM notifications WHERE channel_id = $1"
              " AND last_attempt_at > now() - $2 * interval '1 second'"
              " ORDER BY last_attempt_at DESC OFFSET $3 - 1 LIMIT 1")


class Sender:
    def __init__(self, pool: asyncpg.Pool, cfg: SenderConfig, client: httpx.AsyncClient | None = None) -> None:
        self.pool = pool
        self.cfg = cfg
        self.client = client or httpx.AsyncClient(timeout=cfg.timeout_s)
        self.wake = asyncio.Event()
        self.delivered = 0
        self.failed = 0

    async def claim(self) -> list[asyncpg.Record]:
        """Due rows to send now; quiet hours and rate limits push the others later (no attempt spent)."""
        now = datetime.now(timezone.utc)
        out = []
        async with self.pool.acquire() as con, con.transaction():
            for r in await con.fetch(_DUE, self.cfg.batch):
                if not r["enabled"]:
                    await con.execute(_DEFER, r["id"], now + timedelta(seconds=self.cfg.poll_s))
                    continue
                until = quiet_until(r["quiet_start"], r["quiet_end"], now)
                if until is not None and r["severity"] not in QUIET_BYPASS:
                    await con.execute(_DEFER, r["id"], until)
                    m.NOTIFY_DEFERRED.labels("quiet").inc()
                    continue
                rate = r["rate_per_window"]
                if rate:
                    await con.execute("SELECT pg_advisory_xact_lock($1, $2)", _RATE_LOCK, r["channel_id"])
                    edge = await con.fetchval(_RATE_EDGE, r["channel_id"], self.cfg.rate_window_s, rate)
                    if edge is not None:
                        await con.execute(_DEFER, r["id"], edge + timedelta(seconds=self.cfg.rate_window_s))
                        m.NOTIFY_DEFERRED.labels("rate").inc()
                        continue
                await con.execute(_CLAIM, r["id"], self.cfg.lease_s)
                out.append(r)
        return out

    async def deliver(self, r: asyncpg.Record) -> bool:
        key, kind = r["idempotency_key"], r["kind"]
        try:
            req = build(kind, r["url"], r["secret"], orjson.loads(r["payload"]), key, time.time_ns() // 1_000_000)
            t0 = time.perf_counter()
            resp = await self.client.post(req.url, content=req.body, headers=req.headers, timeout=self.cfg.timeout_s)
            m.NOTIFY_SECONDS.observe(time.perf_counter() - t0)
            error, permanent = response_error(kind, resp.status_code, resp.content)
        except (httpx.HTTPError, OSError, ValueError) as exc:
            error, permanent = f"{type(exc).__name__}: {exc}"[:500], False
        attempts = r["attempts"] + 1
        async with self.pool.acquire() as con:
            if error is None:
                await con.execute("UPDATE notifications SET state = 'delivered', delivered_at = now(),"
                                  " last_error = NULL, updated_at = now() WHERE id = $1 AND state = 'pending'", r["id"])
                m.NOTIFY_ATTEMPTS.labels(kind, "delivered").inc()
                self.delivered += 1
                return True
            failed = permanent or attempts >= self.cfg.max_attempts
            await con.execute(
                "UPDATE notifications SET state = $2, last_error = $3, updated_at = now(),"
                " next_attempt_at = now() + $4 * interval '1 second' WHERE id = $1 AND state = 'pending'",
                r["id"], "failed" if failed else "pending", error, backoff_s(self.cfg, attempts))
        m.NOTIFY_ATTEMPTS.labels(kind, "failed" if failed else "retry").inc()
        if failed:
            self.failed += 1
            log.warning("notification %s failed for good after %d attempts: %s", key, attempts, error)
        return False

    async def escalate(self) -> int:
        async with self.pool.acquire() as con, con.transaction():
            n = await escalate_due(con)
        m.NOTIFY_ESCALATIONS.inc(n)
        return n

    async def _next_due_s(self) -> float:
        async with self.pool.acquire() as con:
            row = await con.fetchrow(
                "SELECT count(*) AS n, extract(epoch FROM min(next_attempt_at) - now()) AS due"
                " FROM notifications WHERE state = 'pending'")
        m.NOTIFY_PENDING.set(row["n"])
        return self.cfg.poll_s if row["due"] is None else max(0.0, float(row["due"]))

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set; wakes on the outbox's pg_notify, a row coming due, or a poll."""
        stop = stop or asyncio.Event()
        sem = asyncio.Semaphore(self.cfg.concurrency)
        listener = await self.pool.acquire()
        on_wake = lambda *_: self.wake.set()  # noqa: E731
        await listener.add_listener(NOTIFY_WAKE_CHANNEL, on_wake)
        next_escalation = 0.0
        loop = asyncio.get_running_loop()

        async def one(r):
            async with sem:
                await self.deliver(r)

        try:
            while not stop.is_set():
                if loop.time() >= next_escalation:
                    await self.escalate()
                    next_escalation = loop.time() + self.cfg.escalation_poll_s
                self.wake.clear()
                rows = await self.claim()
                if rows:
                    await asyncio.gather(*(one(r) for r in rows))
                    continue
                wait = min(await self._next_due_s(), self.cfg.poll_s, max(0.0, next_escalation - loop.time()))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._either(self.wake, stop), timeout=max(wait, 0.01))
        finally:
            with contextlib.suppress(Exception):
                await listener.remove_listener(NOTIFY_WAKE_CHANNEL, on_wake)
            await self.pool.release(listener)

    @staticmethod
    async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
        waits = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when wait_for's timeout cancels us: no waiter task outlives the poll
            for t in waits:
                t.cancel()


TEST_PAYLOAD = {"id": 0, "event_id": None, "event": "test", "state": "active", "region": "-", "stream": "-",
                "device_id": "-", "rule_id": 0, "metric": "", "severity": "warning",
                "title": "Wulian 测试消息 test message", "last_value": None, "test": True}


async def send_test(con: asyncpg.Connection, channel: str, client: httpx.AsyncClient) -> str | None:
    """Send a test message on the channel named ``channel`` now (not through the outbox); the error or None."""
    row = await con.fetchrow("SELECT c.kind, c.url, s.secret FROM notify_channels c"
                             " LEFT JOIN notify_channel_secrets s ON s.channel = c.id WHERE c.name = $1", channel)
    if row is None:
        raise LookupError(f"no channel named {channel!r}")
    key = f"wl-test-{time.time_ns()}"
    req = build(row["kind"], row["url"], row["secret"], TEST_PAYLOAD, key, time.time_ns() // 1_000_000)
    try:
        resp = await client.post(req.url, content=req.body, headers=req.headers)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return response_error(row["kind"], resp.status_code, resp.content)[0]


async def run_sender(settings, stop: asyncio.Event | None = None) -> None:
    """``wulian notify run``: the sender with its metrics endpoint, until ``stop`` is set."""
    from wulian.ingest.health import serve_metrics

    cfg = SenderConfig.of(settings.notify)
    async with asyncpg.create_pool(settings.db.dsn, min_size=2, max_size=max(4, cfg.concurrency + 2)) as pool:
        if settings.notify.metrics_port:
            serve_metrics(settings.notify.metrics_host, settings.notify.metrics_port)
        async with httpx.AsyncClient(timeout=cfg.timeout_s) as client:
            log.info("notification sender running (max %d attempts, lease %.0fs)", cfg.max_attempts, cfg.lease_s)
            await Sender(pool, cfg, client).run(stop)
