"""Traffic detectors replaying the real Los-loop week over MQTT, time-compressed, with injected incidents.

Each Los-loop sensor becomes a segment ``los-<sensor id>`` publishing ``{"ts", "speed"}`` (km/h) on
``wl/{region}/traffic/{segment}/telemetry``. Row k of the data is stamped ``start + k x 5 min``; the
default start is a China-time Thursday midnight (the data's row 0 is a Thursday 00:00 local) far enough
back that the whole replay lies in the past, so the time-of-day and weekday pattern lands where the
forecaster expects it. Rows go out ``speedup`` per second; a row whose stamp is still in the future
waits for the clock, so a replay that catches up with the present continues in real time.

``--incident SEGMENT@ROW`` collapses a segment's speed from that row on and spreads the queue to its most
strongly linked neighbours (``core.traffic.incidents.inject_incident``). ``register_segments`` writes
the segments and the road graph (``road_links``) so the traffic job can use the adjacency.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import numpy as np
import orjson

from wulian.core.const import Stream
from wulian.core.traffic.incidents import inject_incident
from wulian.core.traffic.online import MPH_TO_KMH
from wulian.ingest import device_store
from wulian.ingest.mqtt_client import MqttParams, MqttPublisher
from wulian.core.timebase import CHINA_OFFSET_S, S_PER_DAY
from wulian.core.timebase import NS_PER_S as NS
from wulian.ingest.topics import topic_for
from wulian.simulators.los_loop import load_los_loop

SEGMENT_PREFIX = "los-"
STEP_S = 300
_THURSDAY = 3  # Monday = 0; 2012-03-01, the data's first day, was a Thursday
HISTORY_CHUNK = 1000  # records per history message (the payload limit is 10,000)


@dataclass(frozen=True, slots=True)
class Replay:
    """What is replayed: speeds [T, N] in km/h (NaN = silent), the adjacency among the N segments, and
    where injected incidents act (bool [T, N])."""

    segment_ids: tuple[str, ...]
    sensor_ids: tuple[str, ...]
    speeds_kmh: np.ndarray
    adjacency: np.ndarray
    affected: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.speeds_kmh.shape[0])


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    region: str = "shantou"
    start_ns: int = 0  # stamp of data row 0
    first_row: int = 0
    n_rows: int = 0  # 0: to the end of the data
    history_rows: int = 0  # the first rows go out at once, batched per segment
    speedup: float = 1.0  # rows per second after the history (0: as fast as the broker acks)
    step_s: int = STEP_S
    prefix: str = "wl"
    progress_s: float = 5.0


def neighbourhood(adjacency: np.ndarray, seed: int, size: int) -> np.ndarray:
    """``size`` segment indices grown from ``seed`` along the strongest links (breadth first), so a
    subset keeps its road graph; topped up with the lowest remaining indices if the component is smaller."""
    a = np.asarray(adjacency)
    n = a.shape[0]
    size = min(size, n)
    picked, seen, frontier = [seed], {seed}, [seed]
    while frontier and len(picked) < size:
        nxt = []
        for s in frontier:
            for j in np.argsort(-a[s], kind="stable"):
                j = int(j)
                if a[s, j] <= 0 or len(picked) >= size:
                    break
                if j not in seen:
                    seen.add(j)
                    picked.append(j)
                    nxt.append(j)
        frontier = nxt
    picked += [j for j in range(n) if j not in seen][: size - len(picked)]
    return np.array(sorted(picked), dtype=np.int64)


def load_replay(data_dir: str | Path | None = None, sensors: int = 0, around: str | None = None,
                prefix: str = SEGMENT_PREFIX) -> Replay:
    """Los-loop in km/h (the packaged week unless ``data_dir`` is given), segment ids ``prefix + sensor id``
    (device ids are global: a second replay in another region needs another prefix); ``sensors`` > 0 keeps
    a connected subset of that many grown from ``around`` (a sensor id; default the best-connected sensor)."""
    data = load_los_loop(data_dir)
    speeds = data.speeds * MPH_TO_KMH
    adjacency = data.adjacency
    ids = data.sensor_ids
    if 0 < sensors < len(ids):
        degree = (adjacency > 0).sum(axis=1)
        seed = ids.index(around) if around is not None else int(np.argmax(degree))
        keep = neighbourhood(adjacency, seed, sensors)
        speeds, adjacency = speeds[:, keep], adjacency[np.ix_(keep, keep)]
        ids = tuple(ids[k] for k in keep)
    return Replay(segment_ids=tuple(prefix + s for s in ids), sensor_ids=ids,
                  speeds_kmh=np.ascontiguousarray(speeds), adjacency=np.ascontiguousarray(adjacency),
                  affected=np.zeros(speeds.shape, dtype=bool))


def resolve_segment(replay: Replay, text: str) -> int:
    """Column of a segment given as device id, sensor id or column index."""
    if text in replay.segment_ids:
        return replay.segment_ids.index(text)
    if text in replay.sensor_ids:
        return replay.sensor_ids.index(text)
    if text.isdigit() and int(text) < len(replay.segment_ids):
        return int(text)
    raise ValueError(f"unknown segment {text!r} (a sensor id, 'los-<id>' or a column 0..{len(replay.segment_ids) - 1})")


def with_incident(replay: Replay, segment: int, row: int, duration: int = 12, severity: float = 0.35) -> Replay:
    """The replay with an incident on ``segment`` from ``row``: speed x ``severity`` for ``duration`` rows,
    spreading upstream to the strongest-linked neighbours."""
    if not 0 <= row < replay.rows:
        raise ValueError(f"incident row {row} outside the data's 0..{replay.rows - 1}")
    speeds, affected = inject_incident(replay.speeds_kmh, replay.adjacency, segment, row, duration, severity=severity)
    return replace(replay, speeds_kmh=speeds, affected=replay.affected | affected)


def default_start_ns(now_ns: int, n_rows: int, step_s: int = STEP_S) -> int:
    """The latest China-time Thursday midnight from which ``n_rows`` rows all lie in the past."""
    latest = (now_ns // NS - n_rows * step_s + CHINA_OFFSET_S) // S_PER_DAY  # local day number
    day = latest - (latest + 3 - _THURSDAY) % 7  # 1970-01-01 (day 0) was a Thursday: (day + 3) % 7 = weekday
    return (day * S_PER_DAY - CHINA_OFFSET_S) * NS


def record(ts_ns: int, speed_kmh: float) -> dict:
    return {"ts": ts_ns // 1_000_000, "speed": round(float(speed_kmh), 2)}


def history_messages(replay: Replay, start_ns: int, rows: range, step_s: int = STEP_S) -> Iterable[tuple[int, bytes]]:
    """(segment column, payload) batches of up to HISTORY_CHUNK records covering ``rows``."""
    for s in range(len(replay.segment_ids)):
        batch = []
        for r in rows:
            v = replay.speeds_kmh[r, s]
            if np.isfinite(v):
                batch.append(record(start_ns + r * step_s * NS, v))
            if len(batch) == HISTORY_CHUNK:
                yield s, orjson.dumps({"batch": batch})
                batch = []
        if batch:
            yield s, orjson.dumps({"batch": batch})


def run_replay(params: MqttParams, replay: Replay, plan: ReplayPlan, clock: Callable[[], int] = time.time_ns,
               sleep: Callable[[float], None] = time.sleep, stop: Callable[[], bool] = lambda: False) -> dict:
    """Publish the plan's rows (QoS 1); returns published / acked / refused counts and the last row sent."""
    topics = [topic_for(plan.region, Stream.TRAFFIC.value, d, "telemetry", plan.prefix) for d in replay.segment_ids]
    end = replay.rows if plan.n_rows <= 0 else min(replay.rows, plan.first_row + plan.n_rows)
    hist_end = min(end, plan.first_row + plan.history_rows)
    step_ns = plan.step_s * NS
    last_row = -1
    with MqttPublisher(params, max_inflight=5000) as pub:
        if hist_end > plan.first_row:
            for s, payload in history_messages(replay, plan.start_ns, range(plan.first_row, hist_end), plan.step_s):
                pub.publish(topics[s], payload)
            last_row = hist_end - 1
            _log(f"[traffic-replay] history rows {plan.first_row}..{last_row} published")
        t_next = time.monotonic()
        next_progress = t_next + plan.progress_s
        for r in range(hist_end, end):
            if stop():
                break
            ts = plan.start_ns + r * step_ns
            wait_s = (ts - clock()) / NS
            if wait_s > 0:
                sleep(wait_s)  # never stamp the future: the replay has caught up with the clock
            for s, topic in enumerate(topics):
                v = replay.speeds_kmh[r, s]
                if np.isfinite(v):
                    pub.publish(topic, orjson.dumps(record(ts, v)))
            last_row = r
            if plan.speedup > 0:
                t_next += 1.0 / plan.speedup
                lag = t_next - time.monotonic()
                if lag > 0:
                    sleep(lag)
            if time.monotonic() >= next_progress:
                next_progress = time.monotonic() + plan.progress_s
                _log(f"[traffic-replay] row {r} published {pub.published} acked {pub.acked}")
        pub.wait_acked(30.0)
        return {"published": pub.published, "acked": pub.acked, "refused": pub.refused, "last_row": last_row,
                "segments": len(topics)}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def register_segments(con: asyncpg.Connection, region: str, replay: Replay, source: str = "los-loop") -> dict:
    """Register the segments (devices, stream traffic) and their road graph (``road_links``, both
    directions of every positive off-diagonal adjacency weight). Idempotent; a segment already registered
    in another region or stream is an error."""
    async with con.transaction():
        rows = await device_store.upsert_many(con, [
            device_store.DeviceSpec(seg, region, Stream.TRAFFIC.value, "loop_detector", f"Los-loop sensor {sensor}",
                                    {"sensor": sensor, "source": source})
            for seg, sensor in zip(replay.segment_ids, replay.sensor_ids)], device_store.ADD_MISSING)
        wrong = [r.device_id for r in rows if r.region != region or r.stream != Stream.TRAFFIC.value]
        if wrong:
            raise ValueError(f"segments already registered in another region or stream: {', '.join(wrong[:5])}"
                             " (choose another segment id prefix)")
        ids = {r.device_id: r.id for r in rows}
        dev = np.array([ids[d] for d in replay.segment_ids], dtype=np.int64)
        a = np.array(replay.adjacency, dtype=np.float64)
        np.fill_diagonal(a, 0.0)
        i, j = np.nonzero(a > 0)
        await con.execute(
            "INSERT INTO road_links (a, b, weight, source)"
            " SELECT l.*, $4::text FROM unnest($1::int[], $2::int[], $3::float8[]) AS l"
            " ON CONFLICT (a, b) DO UPDATE SET weight = EXCLUDED.weight, source = EXCLUDED.source, updated_at = now()",
            dev[i].tolist(), dev[j].tolist(), a[i, j].tolist(), source)
    return {"segments": len(ids), "links": int(i.size)}
