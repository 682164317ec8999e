"""The environment jobs' shape (source_hourly, air_quality, water_quality): ``EnvJob`` on the job framework
(ingest.jobs.base), registry rows, raw readings as struct-of-arrays, hourly grids, alert targets. Not a
job itself (no ``create``)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import orjson

from wulian.core.environment.metric_names import AVG, MetricRole
from wulian.core.alarms.system_rules import SystemRule
from wulian.core.environment.online import RunWindow, plan_window, split_avg, uploaded_hourly
from wulian.core.environment.validity import HourlyGrid, aggregate_hourly, valid_mask
from wulian.core.timebase import ns_to_dt
from wulian.ingest import device_store
from wulian.ingest.alert_store import AlertTarget, target_of
from wulian.ingest.jobs.base import Done, WindowedJob


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
    return [EnvDevice(r["id"], r["device_id"], r["region"], r["stream"], r["device_type"], r["name"], r["attrs"])
            for r in await device_store.of_stream(con, stream)]


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


def target(rule: SystemRule, dev: EnvDevice, metric: str, detail: str = "") -> AlertTarget:
    title = f"{rule.title}: {dev.device_id}" + (f" {metric}" if metric else "") + (f" ({detail})" if detail else "")
    return target_of(rule, dev, metric, title)


def jdump(obj) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()


class EnvJob(WindowedJob):
    """An environment job: per run, the window from its watermark (``core.environment.online.plan_window``:
    whole hours, a China midnight on a first run), the stream's devices and samples (with ``lookback_h``
    of context), the figures (``counters`` start at 0) and ``await self._compute(con, devices, samples,
    window, stats)`` when there is data. Subclasses set ``name``, ``stream``, ``counters``, ``cfg`` (lag_s,
    backfill_h, max_span_h, interval_s) and implement ``lookback_h``, ``metric_role`` and ``_compute``."""

    stream: str
    counters: tuple[str, ...]

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.interval_s = cfg.interval_s

    @property
    def lookback_h(self) -> int:
        raise NotImplementedError

    def metric_role(self, metric: str, dev: EnvDevice) -> MetricRole | None:
        raise NotImplementedError

    async def _compute(self, con, devices: list[EnvDevice], samples: Samples, window: RunWindow, stats: dict) -> None:
        raise NotImplementedError

    async def run_key(self, con: asyncpg.Connection, key: str, watermark_ns: int | None, now_ns: int) -> Done:
        cfg, lookback_h = self.cfg, self.lookback_h
        window = plan_window(watermark_ns, now_ns, lag_s=cfg.lag_s, backfill_h=cfg.backfill_h,
                             max_span_h=cfg.max_span_h, lookback_h=lookback_h)
        if window is None:
            return Done(None, {"due": False})
        devices = await load_devices(con, self.stream)
        samples = await load_samples(con, devices, self.metric_role, window.load_from_ns(lookback_h), window.end_ns)
        stats = {"from": str(ns_to_dt(window.new_from_ns)), "to": str(ns_to_dt(window.end_ns)),
                 **dict.fromkeys(self.counters, 0)}
        if samples.series:
            await self._compute(con, devices, samples, window, stats)
        return Done(window.end_ns, stats)
