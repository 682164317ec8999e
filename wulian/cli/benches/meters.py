"""``wulian bench meters``: 四表合一 register arithmetic, anomaly rules and collection rates.

Default: 1,000,000 meters x 96 readings (15-minute collection, one day). The numba pass runs on all of it;
the baseline (the same per meter-day statistics vectorised with numpy, ``consumption_numpy``) runs on a
subset in the same process and is scaled per reading for the ratio.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wulian.core.meters import anomalies, collection
from wulian.core.meters.consumption import (
    ConsumptionParams, MeterKind, MeterReadings, MeterTable, consumption, consumption_numpy, warm,
)
from wulian.core.timebase import NS_PER_S as _S
from wulian.core.timebase import china_day
from wulian.cli.benches import emit

_DAY_START = 1_764_086_400 * _S  # 2025-11-26 00:00 China time


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def synth(n_meters: int, per_day: int = 96, seed: int = 2) -> tuple[MeterReadings, MeterTable]:
    """Registers with day-shaped use; 1 % missed slots, a few rollovers, replacements and tampering."""
    rng = np.random.default_rng(seed)
    step = 86_400 * _S // per_day
    use = rng.gamma(2.0, 0.05, (n_meters, per_day))
    use *= rng.random((n_meters, per_day)) < 0.5  # half the intervals without use
    use[rng.random(n_meters) < 0.01] = 0.0  # vacant homes
    use[rng.random(n_meters) < 0.005] += 0.02  # leaks / pilot flames that never stop
    reg = np.cumsum(use, axis=1)
    del use
    reg += rng.uniform(0, 1e5, (n_meters, 1))
    wrap = rng.random(n_meters) < 0.001
    reg[wrap] += 1e5 - 1.0  # these pass 99999.99 during the day
    np.mod(reg, 1e5, out=reg)
    tamper = np.flatnonzero(rng.random(n_meters) < 0.0005)
    reg[tamper, per_day // 2:] -= 500.0
    ts = np.empty((n_meters, per_day), np.int64)
    ts[:] = _DAY_START + np.arange(per_day, dtype=np.int64) * step  # 00:00 ... 23:45
    missed = rng.random((n_meters, per_day)) < 0.01
    reg[missed] = np.nan  # a missed slot arrives as a gap; NaN rows keep the arrays rectangular
    replaced = np.zeros((n_meters, per_day), bool)
    rep = np.flatnonzero(rng.random(n_meters) < 0.0005)
    replaced[rep, per_day // 3] = True
    reg[rep, per_day // 3:] -= reg[rep, per_day // 3][:, None] - 1.0
    base = np.full(n_meters * per_day, np.nan)
    starts = np.arange(n_meters + 1, dtype=np.int64) * per_day
    readings = MeterReadings(starts, ts.ravel(), reg.ravel(), replaced.ravel(), base)
    table = MeterTable(
        kind=rng.integers(0, 4, n_meters).astype(np.int8),
        modulus=np.full(n_meters, 1e5),
        max_rate_per_h=np.full(n_meters, 50.0),
        concentrator=(np.arange(n_meters) // 500).astype(np.int32),
    )
    return readings, table


def _subset(r: MeterReadings, t: MeterTable, n: int) -> tuple[MeterReadings, MeterTable]:
    e = int(r.starts[n])
    return (MeterReadings(r.starts[: n + 1].copy(), r.ts_ns[:e], r.register[:e], r.replaced[:e], r.base[:e]),
            MeterTable(t.kind[:n], t.modulus[:n], t.max_rate_per_h[:n], t.concentrator[:n]))


def run(args: argparse.Namespace) -> int:
    n = 50_000 if args.quick else args.meters
    _log("compiling kernels ...")
    warm()
    _log(f"synthesising {n} meters x {args.per_day} readings ...")
    readings, table = synth(n, args.per_day)
    day0 = int(china_day(_DAY_START))
    n_days = 1
    p = ConsumptionParams()

    _log("consumption + anomaly rules + collection rate (numba) ...")
    t0 = time.perf_counter()
    c = consumption(readings, table, day0, n_days, p)
    t_cons = time.perf_counter() - t0
    zero = anomalies.zero_consumption(c, 1)
    leak = anomalies.night_leak(c, 0.05, 1)
    gas = anomalies.gas_never_stops(c, 1, min_slots=int(args.per_day * 0.9))
    leak_meters = int((leak.flagged & (table.kind == MeterKind.WATER)).sum())  # the rules apply per kind
    gas_meters = int((gas.flagged & (table.kind == MeterKind.GAS)).sum())
    ev = anomalies.register_events(readings, c)
    rate = collection.success_rate(c, table, args.per_day)
    total_s = time.perf_counter() - t0
    rps = len(readings) / total_s

    nb = max(1, min(args.baseline_meters, n))
    sub_r, sub_t = _subset(readings, table, nb)
    _log(f"baseline: vectorised numpy consumption on {nb} meters ...")
    t0 = time.perf_counter()
    consumption_numpy(sub_r, sub_t, day0, n_days)
    base_rps = len(sub_r) / (time.perf_counter() - t0)

    codes = np.bincount(c.code.astype(np.int64), minlength=9)
    out = {
        "bench": "meters",
        "meters": n,
        "readings": len(readings),
        "consumption_seconds": round(t_cons, 3),
        "total_seconds": round(total_s, 3),
        "readings_per_s": round(rps),
        "baseline": {"kind": "vectorised numpy equivalent (consumption_numpy), subset, scaled per reading",
                     "readings": len(sub_r), "readings_per_s": round(base_rps)},
        "speedup": round(rps / base_rps, 2),
        "found": {"rollover": int(codes[2]), "replaced": int(codes[3]), "reset": int(codes[4]),
                  "backwards": int(codes[5]), "missing": int(codes[8]), "register_events": len(ev.index),
                  "zero_consumption_meters": int(zero.flagged.sum()), "night_leak_water_meters": leak_meters,
                  "gas_never_stops_meters": gas_meters},
        "collection_rate_mean": float(np.nanmean(rate[:, 0])),
    }
    emit(out, args.json)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("meters", help="四表合一 register arithmetic over a day of 15-minute readings")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="50,000 meters instead of --meters")
    p.add_argument("--meters", type=int, default=1_000_000)
    p.add_argument("--per-day", type=int, default=96)
    p.add_argument("--baseline-meters", type=int, default=50_000)
    p.set_defaults(func=run)
