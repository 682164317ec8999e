"""The soak run: a long steady load at half the measured maximum, watching what drifts.

1. Maximum: ingest is stopped while a backlog is published into its persistent session, then started;
   the rate at which it drains the backlog into the database is its maximum (so the publisher's own
   speed does not cap the figure). ``--rate`` skips this.
2. Load: sequence-numbered sources at half that rate for the given minutes, with the chaos sawtooth rule
   armed. A probe raises one alert per second on its own devices (a low reading, then a high one) and
   times publish -> alert row committed (the alert is written in the data's transaction).
3. Drift: ingest's RSS sampled every 5 s; p99 alert latency and p99 commit time (ingest's Prometheus
   histogram, bucket upper bounds) over the first and the last window; progress every 30 s.
4. End: everything acknowledged must be stored once (``lost``, ``duplicates``) and the sawtooth alerts
   must match the reference.
"""
from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from dataclasses import dataclass

import asyncpg
import numpy as np
import orjson

from wulian.ingest.chaos import verify
from wulian.ingest.chaos.run import REGION, create_rule, progress_stderr, wait_ingest_ready
from wulian.ingest.chaos.sources import SeqSource, SourceSpec
from wulian.ingest.chaos.stack import ChaosStack, IngestProcess, free_port
from wulian.ingest.mqtt_client import MqttPublisher

PROBE_RULE = {"id": 0, "name": "soak probe", "kind": "upper", "stream": "air", "metric": "probe",
              "threshold": 100.0, "clear_threshold": 50.0, "severity": "warning"}


@dataclass
class SoakConfig:
    minutes: float = 30.0
    rate_msgs: float = 0.0  # 0: half the measured maximum
    devices: int = 200
    extra_values: int = 8  # 10 readings per message
    window_s: float = 120.0  # start and end windows for the latency figures
    measure_msgs: int = 40_000
    progress_every_s: float = 30.0


def _p99(xs: list[float]) -> float | None:
    return round(float(np.percentile(np.asarray(xs), 99)), 1) if xs else None


def _scrape_commit_hist(port: int) -> dict[float, float]:
    """Cumulative bucket counts of ``wulian_ingest_commit_seconds`` (le -> count)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line.startswith("wulian_ingest_commit_seconds_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def _hist_p99_ms(a: dict[float, float], b: dict[float, float]) -> float | None:
    """p99 of the observations between two scrapes: the upper bound of the bucket that holds it."""
    if not a or not b:
        return None
    les = sorted(b)
    counts = [b[le] - a.get(le, 0.0) for le in les]
    total = counts[-1]
    if total <= 0:
        return None
    for le, c in zip(les, counts):
        if c >= 0.99 * total:
            return round(le * 1000, 1) if le != float("inf") else None
    return None


async def _count_seq(dsn: str, devices: list[str]) -> int:
    con = await asyncpg.connect(dsn)
    try:
        return await verify.stored_count(con, devices)
    finally:
        await con.close()


async def measure_max(stack: ChaosStack, ingest: IngestProcess, cfg: SoakConfig, progress) -> float:
    """Messages/s ingest drains from a backlog held by the broker for its session."""
    devices = tuple(f"max-{i:03d}" for i in range(cfg.devices))
    base_ms = time.time_ns() // 1_000_000 - 7_200_000
    spec = SourceSpec(REGION, "grid", devices, 1e9, cfg.extra_values, base_ms, 10)
    ingest.stop()
    src = SeqSource(stack.mqtt_params(f"soak-max-{uuid.uuid4().hex[:4]}"), spec, max_inflight=5000)
    src.pub.connect()
    for k in range(cfg.measure_msgs):
        i = k % len(devices)
        src.pub.publish(src.topic(i), src.payload(k // len(devices)))
    await asyncio.to_thread(src.pub.wait_acked, 120)
    src.pub.close()
    progress(f"backlog of {cfg.measure_msgs} messages queued for ingest; starting it")
    ingest.start()
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        n = await _count_seq(stack.dsn, list(devices))
        samples.append((time.monotonic(), n))
        if n >= cfg.measure_msgs:
            break
        await asyncio.sleep(0.5)
    moving = [(t, n) for t, n in samples if 0 < n < cfg.measure_msgs] or samples
    (t0, n0), (t1, n1) = moving[0], samples[-1]
    return (n1 - n0) / max(t1 - t0, 1e-3)


class AlertProbe:
    """Once a second: a low reading then a high one on one of ten probe devices; the latency is from the
    high reading's publish to its alert row being visible."""

    def __init__(self, stack: ChaosStack) -> None:
        self.stack = stack
        self.pub = MqttPublisher(stack.mqtt_params(f"soak-probe-{uuid.uuid4().hex[:4]}"))
        self.samples: list[tuple[float, float]] = []  # (monotonic time, latency ms)
        self.timeouts = 0
        self._k = 0

    async def run(self, until: float) -> None:
        self.pub.connect()
        con = await asyncpg.connect(self.stack.dsn)
        try:
            while time.monotonic() < until:
                t_next = time.monotonic() + 1.0
                await self._one(con)
                await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        finally:
            await con.close()
            self.pub.close()

    async def _one(self, con) -> None:
        dev = f"probe-{self._k % 10}"
        self._k += 1
        topic = f"wl/{REGION}/air/{dev}/telemetry"
        now = time.time_ns() // 1_000_000
        self.pub.publish(topic, orjson.dumps({"ts": now - 1, "values": {"probe": 0.0}}))
        t0 = time.perf_counter()
        self.pub.publish(topic, orjson.dumps({"ts": now, "values": {"probe": 500.0}}))
        while time.perf_counter() - t0 < 30:
            if await con.fetchval("SELECT 1 FROM alerts WHERE device_id = $1"
                                  " AND raised_at = timestamptz 'epoch' + $2::bigint * interval '1 millisecond'",
                                  dev, now):
                self.samples.append((time.monotonic(), (time.perf_counter() - t0) * 1000))
                return
            await asyncio.sleep(0.005)
        self.timeouts += 1


def _progress(msg: str) -> None:
    progress_stderr(msg, "soak")


async def run_soak(cfg: SoakConfig, progress=_progress) -> dict:
    stack = ChaosStack.fresh("soak")
    progress(f"stack in {stack.dir} (postgresql :{stack.pg_port}, mosquitto :{stack.mqtt_port})")
    await asyncio.to_thread(stack.up)
    metrics_port = free_port()
    ingest = IngestProcess(stack, f"soak-ingest-{uuid.uuid4().hex[:6]}", stack.dir / "ingest.log",
                           {"WULIAN_INGEST__METRICS_PORT": str(metrics_port)})
    try:
        con = await asyncpg.connect(stack.dsn)
        try:
            from wulian.ingest.migrations import migrate

            await migrate(con)
            rule_id = await create_rule(con)
            await con.execute("INSERT INTO rules (definition) VALUES ($1::jsonb)", orjson.dumps(PROBE_RULE).decode())
        finally:
            await con.close()
        ingest.start()
        await wait_ingest_ready(stack)
        measured = None
        rate = cfg.rate_msgs
        if not rate:
            measured = await measure_max(stack, ingest, cfg, progress)
            rate = measured / 2
            progress(f"maximum {measured:,.0f} msg/s ({measured * (2 + cfg.extra_values):,.0f} readings/s);"
                     f" soaking at {rate:,.0f} msg/s")
            await wait_ingest_ready(stack)
        devices = tuple(f"soak-{i:04d}" for i in range(cfg.devices))
        base_ms = time.time_ns() // 1_000_000 - 3_600_000
        step_ms = max(1, int(3_600_000 / max(1.0, rate / cfg.devices * cfg.minutes * 60 * 1.2)))
        spec = SourceSpec(REGION, "grid", devices, rate, cfg.extra_values, base_ms, step_ms)
        src = SeqSource(stack.mqtt_params(f"soak-src-{uuid.uuid4().hex[:4]}"), spec, max_inflight=5000)
        probe = AlertProbe(stack)
        t_start = time.monotonic()
        t_end = t_start + cfg.minutes * 60
        window = min(cfg.window_s, cfg.minutes * 60 / 4)
        src.start()
        probe_task = asyncio.create_task(probe.run(t_end))
        rss: list[tuple[float, int]] = []
        hist_at: dict[str, dict] = {"start0": _scrape_commit_hist(metrics_port)}
        last_progress = t_start
        while (now := time.monotonic()) < t_end:
            await asyncio.sleep(5)
            now = time.monotonic()
            rss.append((now - t_start, ingest.rss()))
            src.compact()
            if "start1" not in hist_at and now - t_start >= window:
                hist_at["start1"] = _scrape_commit_hist(metrics_port)
            if "end0" not in hist_at and t_end - now <= window:
                hist_at["end0"] = _scrape_commit_hist(metrics_port)
            if now - last_progress >= cfg.progress_every_s:
                last_progress = now
                lat = [ms for t, ms in probe.samples if t > now - cfg.progress_every_s]
                progress(f"{(now - t_start) / 60:5.1f} min: sent {src.published:,}, acked {src.acked_count():,},"
                         f" ingest RSS {rss[-1][1] / 2**20:,.0f} MiB, alert p99 {_p99(lat)} ms")
            if not ingest.alive():
                progress(f"ingest exited (code {ingest.proc.returncode})")
                break
        hist_at["end1"] = _scrape_commit_hist(metrics_port)
        src.stop()
        await probe_task
        never_acked = await asyncio.to_thread(src.drain, 120)
        acked = {d: src.acked_seqs(i) for i, d in enumerate(devices)}
        n_acked = sum(len(a) for a in acked.values())
        progress(f"load stopped: {src.published:,} sent, {n_acked:,} acknowledged; waiting for ingest")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and await _count_seq(stack.dsn, list(devices)) < n_acked:
            await asyncio.sleep(1)
        src.close()
        con = await asyncpg.connect(stack.dsn)
        try:
            stored = await verify.stored_seqs(con, list(devices))
            counts = verify.count_loss(acked, stored)
            alerts = await verify.check_alerts(con, rule_id, stored, base_ms, step_ms)
        finally:
            await con.close()
        elapsed = time.monotonic() - t_start
        lat_start = [ms for t, ms in probe.samples if t - t_start <= window]
        lat_end = [ms for t, ms in probe.samples if t_end - t <= window]
        warm = [r for t, r in rss if t >= min(60.0, window)] or [r for _, r in rss]
        rss_start, rss_end = (warm[0], warm[-1]) if warm else (0, 0)
        return {
            "minutes": round(elapsed / 60, 1),
            "max_msgs_per_s": round(measured, 1) if measured else None,
            "rate_msgs_per_s": round(rate, 1),
            "readings_per_s": round(rate * (2 + cfg.extra_values), 1),
            "devices": cfg.devices,
            **counts,
            "never_acked": never_acked,
            "alerts_consistent": verify.alerts_consistent(alerts),
            "sawtooth_alerts": alerts["alerts"],
            "rss_start_mib": round(rss_start / 2**20, 1),
            "rss_end_mib": round(rss_end / 2**20, 1),
            "rss_growth_mib": round((rss_end - rss_start) / 2**20, 1),
            "rss_growth_pct": round(100 * (rss_end - rss_start) / rss_start, 1) if rss_start else None,
            "window_s": window,
            "alert_latency_p99_ms_start": _p99(lat_start),
            "alert_latency_p99_ms_end": _p99(lat_end),
            "alert_probes": len(probe.samples),
            "alert_probe_timeouts": probe.timeouts,
            "commit_p99_ms_start": _hist_p99_ms(hist_at.get("start0", {}), hist_at.get("start1", {})),
            "commit_p99_ms_end": _hist_p99_ms(hist_at.get("end0", {}), hist_at.get("end1", {})),
            "ingest_exited": not ingest.alive(),
            "ok": counts["lost"] == 0 and counts["duplicates"] == 0 and verify.alerts_consistent(alerts),
        }
    finally:
        ingest.stop()
        await asyncio.to_thread(stack.down, True)
