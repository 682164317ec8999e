"""Database glue shared by the environment jobs (source_hourly, air_quality, water_quality): registry
rows, raw readings as struct-of-arrays, alert actions, upserts. Not a job itself (no ``create``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import orjson

from wulian.core.environment.metric_names import AVG, MetricRole
from wulian.core.environment.online import AlertAction, RunWindow, plan_window, split_avg, uploaded_hourly
from wulian.core.environment.system_rules import SystemRule
from wulian.core.environment.validity import HourlyGrid, aggregate_hourly, valid_mask
from wulian.core.numbers import finite_or_none as fnum
from wulian.ingest.alert_store import AlertTarget, clear_alert, raise_alert, update_alert
from wulian.ingest.jobs.base import dt_to_ns, get_watermark, ns_to_dt, set_watermark


@dataclass(frozen=True, slots=True)
class EnvDevice:
    id: int
    device_id: str
    region: str
    stream: str
    device_type: str | None
    name: str | None
    attrs: dict = field(default_factory=dict)


async def load_devices(con: asyncpg.Connection, stream: str) -> list[EnvDevice]:
    rows = await con.fetch(
        "SELECT id, device_id, region, stream, device_type, name, attrs::text AS attrs FROM devices"
        " WHERE stream = $1 ORDER BY id", stream)
    return [EnvDevice(r["id"], r["device_id"], r["region"], r["stream"], r["device_type"], r["name"],
                      orjson.loads(r["attrs"]) if r["attrs"] else {}) for r in rows]


@dataclass(frozen=True, slots=True)
class Samples:
    """Raw readings of a window mapped to series keys: key k is ``series[k]`` = (device index, name)."""

    series: list[tuple[int, str]]
    keys: np.ndarray  # int32
    ts: np.ndarray  # int64 ns
    values: np.ndarray  # float64, already in the rule's unit
    valid: np.ndarray  # bool, HJ 76 sample validity
    is_avg: np.ndarray  # bool, an HJ 212 -Avg value

    def key_index(self) -> dict[tuple[int, str], int]:
        return {s: k for k, s in enumerate(self.series)}


async def load_samples(con: asyncpg.Connection, devices: Sequence[EnvDevice],
                       mapper: Callable[[str, EnvDevice], MetricRole | None], start_ns: int, end_ns: int) -> Samples:
    """Readings of ``devices`` in ``[start_ns, end_ns)`` whose metric ``mapper`` knows."""
    metrics = {r["id"]: r["name"] for r in await con.fetch("SELECT id, name FROM metrics")}
    roles: dict[tuple[int, int], MetricRole | None] = {}
    for i, d in enumerate(devices):
        for mid, name in metrics.items():
            role = mapper(name, d)
            if role is not None:
                roles[(i, mid)] = role
    dev_index = {d.id: i for i, d in enumerate(devices)}
    wanted = sorted({mid for (_, mid) in roles})
    empty = Samples([], np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0), np.zeros(0, bool),
                    np.zeros(0, bool))
    if not devices or not wanted:
        return empty
    rows = await con.fetch(
        "SELECT device, metric, (extract(epoch FROM time) * 1000000)::bigint AS us, value, flag FROM readings"
        " WHERE device = ANY($1::int[]) AND metric = ANY($2::smallint[]) AND time >= $3 AND time < $4",
        [d.id for d in devices], wanted, ns_to_dt(start_ns), ns_to_dt(end_ns))
    series: dict[tuple[int, str], int] = {}
    keys, ts, values, flags, is_avg = [], [], [], [], []
    for dev, mid, us, value, flag in rows:
        i = dev_index[dev]
        role = roles.get((i, mid))
        if role is None:
            continue
        k = series.setdefault((i, role.name), len(series))
        keys.append(k)
        ts.append(us * 1000)
        values.append(value * role.factor)
        flags.append(flag)
        is_avg.append(role.role == AVG)
    if not keys:
        return empty
    v = np.array(values, dtype=np.float64)
    return Samples(list(series), np.array(keys, np.int32), np.array(ts, np.int64), v,
                   valid_mask(flags, v), np.array(is_avg, bool))


def hourly_grid(s: Samples, window: RunWindow, min_minutes: int = 45) -> tuple[HourlyGrid, np.ndarray]:
    """HJ 76 hourly grid over every key plus the grid of device-made hourly values (CN 2061).
    ``min_minutes``: valid minutes an hour needs (45 per HJ 76 / GB 3095; 1 for sparse water samplers)."""
    n_keys = len(s.series)
    has_sample = np.zeros(n_keys, bool)
    has_sample[s.keys[~s.is_avg]] = True
    minute, hourly = split_avg(s.keys, s.ts, s.is_avg, has_sample, window.t0_ns, n_keys, window.n_hours)
    use = ~s.is_avg | minute
    grid = aggregate_hourly(s.keys[use], s.ts[use], s.values[use], s.valid[use], window.t0_ns, n_keys,
                            window.n_hours, min_minutes)
    return grid, uploaded_hourly(s.keys, s.ts, s.values, s.valid, hourly, window.t0_ns, n_keys, window.n_hours)


async def open_window(con: asyncpg.Connection, job: str, now_ns: int, cfg, lookback_h: int) -> RunWindow | None:
    upto = await con.fetchval("SELECT upto FROM job_watermarks WHERE job = $1", job)
    return plan_window(None if upto is None else dt_to_ns(upto), now_ns, lag_s=cfg.lag_s,
                       backfill_h=cfg.backfill_h, max_span_h=cfg.max_span_h, lookback_h=lookback_h)


async def close_window(con: asyncpg.Connection, job: str, window: RunWindow, stats: dict) -> None:
    await set_watermark(con, job, ns_to_dt(window.end_ns), orjson.dumps(stats).decode())


def target(rule: SystemRule, dev: EnvDevice, metric: str, detail: str = "") -> AlertTarget:
    title = f"{rule.title}: {dev.device_id}" + (f" {metric}" if metric else "") + (f" ({detail})" if detail else "")
    return AlertTarget(rule.rule_id, dev.id, dev.device_id, dev.region, dev.stream, metric, rule.severity, title)


_SAME_EPISODE = ("SELECT state FROM alerts WHERE rule_id = $1 AND device = $2 AND metric = $3"
                 " AND raised_at = timestamptz 'epoch' + ($4::bigint / 1000) * interval '1 microsecond'"
                 " ORDER BY id DESC LIMIT 1")


async def raise_once(con: asyncpg.Connection, t: AlertTarget, ts_ns: int, value: float | None,
                     lower_is_worse: bool = False) -> bool:
    """Raise the alert of an episode confirmed at ``ts_ns`` unless that very episode already has one
    (a re-run over the same hours, or a later run of an ongoing episode: then only its peak/last value
    is updated). Returns True if an alert was opened."""
    state = await con.fetchval(_SAME_EPISODE, t.rule_id, t.device, t.metric, ts_ns)
    if state is not None:
        if state in ("active", "acknowledged"):
            await update_alert(con, t, ts_ns, value, lower_is_worse)
        return False
    if await raise_alert(con, t, ts_ns, value) is not None:
        return True
    await update_alert(con, t, ts_ns, value, lower_is_worse)  # an older episode's alert is still open
    return False


async def apply_actions(con: asyncpg.Connection, actions: Sequence[AlertAction],
                        target_of: Callable[[AlertAction], AlertTarget], lower_is_worse: bool = False) -> dict:
    """Raise/clear alerts for episode actions; returns counts of alerts opened and cleared."""
    raised = cleared = 0
    for a in actions:
        t = target_of(a)
        if a.kind == "raise":
            if await raise_once(con, t, a.ts_ns, a.value, lower_is_worse):
                raised += 1
        elif await clear_alert(con, t, a.ts_ns, a.value) is not None:
            cleared += 1
    return {"alerts_raised": raised, "alerts_cleared": cleared}


def jdump(obj) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


__all__ = ["EnvDevice", "Samples", "load_devices", "load_samples", "hourly_grid", "open_window", "close_window",
           "target", "apply_actions", "fnum", "jdump", "ns_to_dt", "get_watermark", "windowed_run"]


async def windowed_run(pool, job: str, now_ns: int, cfg, *, lookback_h: float, stream: str, mapper,
                       counters: tuple[str, ...], compute) -> dict:
    """The shape every environment job runs in: one transaction under the job's advisory lock, the window
    from its watermark, the stream's devices and samples (with ``lookback_h`` of context), the figures
    (``counters`` start at 0), ``await compute(con, devices, samples, window, stats)`` when there is data,
    and the watermark's advance in the same transaction."""
    async with pool.acquire() as con, con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", job)
        window = await open_window(con, job, now_ns, cfg, lookback_h=lookback_h)
        if window is None:
            return {"due": False}
        devices = await load_devices(con, stream)
        samples = await load_samples(con, devices, mapper, window.load_from_ns(lookback_h), window.end_ns)
        stats = {"from": str(ns_to_dt(window.new_from_ns)), "to": str(ns_to_dt(window.end_ns)),
                 **dict.fromkeys(counters, 0)}
        if samples.series:
            await compute(con, devices, samples, window, stats)
        await close_window(con, job, window, stats)
        return stats
