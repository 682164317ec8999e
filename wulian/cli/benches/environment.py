"""``wulian bench environment [--json] [--quick]``: the environment core against numpy equivalents.

1. Air: minute data of 6 pollutants at N stations over D days (default 500 x 7, ~30 M samples) ->
   HJ 76 hourly means with validity (45 distinct valid minutes) -> real-time AQI per station and hour.
   Figure: ``station_days_per_s``; the numpy baseline (bincount/unique + vectorised integer IAQI) does
   the same work on the same data, and both results are checked equal.
2. Water: GB 3838 single-factor class over 21 routine items for R stations x 1 year hourly
   (default 100 x 8760); numpy baseline with broadcast comparisons.
Data generation and JIT compilation are outside the timed regions; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from wulian.cli.benches import with_machine

from wulian.core.environment.aqi_series import POLLUTANTS, aqi_arrays, hourly_aqi
from wulian.core.environment.editions import EDITION_2026_START_NS
from wulian.core.timebase import NS_PER_HOUR, NS_PER_MIN
from wulian.core.environment.tables import INDICATORS, ROUTINE_WATER_ITEMS, WATER_ITEMS
from wulian.core.environment.validity import aggregate_hourly, valid_mask
from wulian.core.environment.warmup import warmup
from wulian.core.environment.water import classify_many, water_arrays
from wulian.core.kernels.aqi_kernels import SCALE

_LEVELS = {"SO2": 12.0, "NO2": 45.0, "CO": 0.9, "O3": 90.0, "PM10": 80.0, "PM2.5": 45.0}
_HOURLY_KEYS = ("SO2_1H", "NO2_1H", "CO_1H", "O3_1H", "PM10_24H", "PM25_24H")  # 2026 real-time set


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("environment", help="HJ 76 hourly validity + AQI, and GB 3838 classes, vs numpy")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quick", action="store_true", help="small sizes (50 stations x 2 days, 10 x 30 days)")
    p.add_argument("--stations", type=int, default=500)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--chunk", type=int, default=100, help="air stations processed per batch")
    p.add_argument("--river-stations", type=int, default=100)
    p.add_argument("--river-days", type=int, default=365)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=run)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _minute_batch(rng: np.random.Generator, n_st: int, days: int, t0: int):
    """Minute samples for n_st stations x 6 pollutants, ~2 % gaps and ~4 % flagged (M/C/D)."""
    n_min = days * 1440
    n_keys = n_st * len(POLLUTANTS)
    keys = np.repeat(np.arange(n_keys, dtype=np.int32), n_min)
    ts = t0 + np.tile(np.arange(n_min, dtype=np.int64) * NS_PER_MIN, n_keys)
    level = np.repeat(np.tile(np.array([_LEVELS[p] for p in POLLUTANTS]), n_st), n_min)
    values = np.round(level * rng.lognormal(0.0, 0.5, keys.shape[0]), 1)
    flags = np.full(keys.shape[0], ord("N"), np.uint8)
    bad = rng.random(keys.shape[0]) < 0.04
    flags[bad] = rng.choice(np.frombuffer(b"MCD", np.uint8), int(bad.sum()))
    # Outages: on ~10 % of series-days a 2-hour calibration/fault block, so some hours are invalid.
    for k, d in zip(*np.nonzero(rng.random((n_keys, days)) < 0.10)):
        s = k * n_min + d * 1440 + int(rng.integers(0, 1440 - 120))
        flags[s : s + 120] = ord("C")
    keep = rng.random(keys.shape[0]) >= 0.02
    return keys[keep], ts[keep], values[keep], flags[keep], n_keys


# ---- numpy baseline -------------------------------------------------------------------------------
def numpy_hourly(keys, ts, values, valid, t0, n_keys, n_hours):
    d = ts - t0
    h = d // NS_PER_HOUR
    minute = (d - h * NS_PER_HOUR) // NS_PER_MIN
    inside = (h >= 0) & (h < n_hours) & (keys >= 0) & (keys < n_keys)
    cell = keys.astype(np.int64) * n_hours + h
    v = valid & inside
    n = n_keys * n_hours
    sums = np.bincount(cell[v], weights=values[v], minlength=n)
    cnt = np.bincount(cell[v], minlength=n)
    x = np.sort(cell[v] * 60 + minute[v])  # distinct valid minutes (np.sort + diff beats np.unique here)
    distinct = x[np.r_[True, x[1:] != x[:-1]]]
    n_valid = np.bincount(distinct // 60, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(cnt > 0, sums / cnt, np.nan)
    return mean.reshape(n_keys, n_hours), (n_valid >= 45).reshape(n_keys, n_hours)


def numpy_aqi_2026_hourly(conc: np.ndarray) -> np.ndarray:
    """Real-time AQI (HJ 633-2026) for (6, n) 1-h concentrations in the order of _HOURLY_KEYS."""
    bp_all, ok_all, levels = aqi_arrays()
    best = np.full(conc.shape[1], -1, np.int64)
    for row, key in enumerate(_HOURLY_KEYS):
        i = INDICATORS.index(key)
        c = conc[row]
        have = np.isfinite(c) & (c >= 0)
        micro = np.round(np.where(have, np.minimum(c, 1e9), 0.0) * SCALE).astype(np.int64)
        unit = SCALE // 10 if key.startswith("CO_") else SCALE
        q = micro // unit
        r = micro - q * unit
        q += (2 * r > unit) | ((2 * r == unit) & (q % 2 == 1))
        micro = q * unit
        bp = bp_all[1, i][ok_all[1, i]] * SCALE
        k = np.searchsorted(bp, micro, side="left")
        top = k >= bp.size
        k = np.clip(k, 1, bp.size - 1)
        lo, hi = bp[k - 1], bp[k]
        num = (levels[k] - levels[k - 1]) * (micro - lo)
        iaqi = levels[k - 1] + (num + (hi - lo) - 1) // (hi - lo)
        iaqi = np.where(top, 200 if key == "SO2_1H" else 500, iaqi)
        best = np.maximum(best, np.where(have, iaqi, -1))
    return best


def numpy_water_class(values: np.ndarray, items, lake: np.ndarray) -> np.ndarray:
    cmp, lim = water_arrays(tuple(items))
    out = np.zeros(values.shape[0], np.int8)
    for s in range(0, values.shape[0], 100_000):
        v = values[s : s + 100_000]
        lk = lake[s : s + 100_000]
        limits = np.where(lk[:, None, None], lim[1][None], lim[0][None])  # (n, items, 5)
        gt = (v[:, :, None] > limits).sum(axis=2)
        lt = (v[:, :, None] < limits).sum(axis=2)
        cls = np.where(cmp[None, :] == 0, 1 + gt, 1 + lt)
        in_range = (v >= limits[:, :, 0]) & (v <= limits[:, :, 1])
        cls = np.where(cmp[None, :] == 2, np.where(in_range, 1, 6), cls)
        cls = np.where(np.isfinite(v), cls, 0)
        out[s : s + 100_000] = cls.max(axis=1)
    return out


# ---- runs -------------------------------------------------------------------------------------------
def _warm() -> float:
    t = time.perf_counter()
    warmup()
    rng = np.random.default_rng(0)
    k, ts, v, f, n_keys = _minute_batch(rng, 1, 1, EDITION_2026_START_NS)
    g = aggregate_hourly(k, ts, v, valid_mask(f, v), EDITION_2026_START_NS, n_keys, 24)
    hourly_aqi({p: g.valid_mean()[i : i + 1] for i, p in enumerate(POLLUTANTS)}, EDITION_2026_START_NS)
    classify_many(np.ones((2, len(ROUTINE_WATER_ITEMS))), ROUTINE_WATER_ITEMS, False)
    return time.perf_counter() - t


def bench_air(stations: int, days: int, chunk: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    t0 = EDITION_2026_START_NS  # a China midnight under HJ 633-2026
    n_hours = days * 24
    t_numba = t_numpy = 0.0
    samples = 0
    agree = True
    valid_hours = total_hours = 0
    for first in range(0, stations, chunk):
        n_st = min(chunk, stations - first)
        keys, ts, values, flags, n_keys = _minute_batch(rng, n_st, days, t0)
        samples += ts.shape[0]
        _log(f"air: stations {first}..{first + n_st - 1} ({ts.shape[0]:,} samples)")

        t = time.perf_counter()
        g = aggregate_hourly(keys, ts, values, valid_mask(flags, values), t0, n_keys, n_hours)
        vm = g.valid_mean().reshape(n_st, len(POLLUTANTS), n_hours)
        grid = hourly_aqi({p: vm[:, i] for i, p in enumerate(POLLUTANTS)}, t0)
        t_numba += time.perf_counter() - t

        t = time.perf_counter()
        mean, ok = numpy_hourly(keys, ts, values, valid_mask(flags, values), t0, n_keys, n_hours)
        vm_np = np.where(ok, mean, np.nan).reshape(n_st, len(POLLUTANTS), n_hours)
        aqi_np = numpy_aqi_2026_hourly(vm_np.transpose(1, 0, 2).reshape(len(POLLUTANTS), -1))
        t_numpy += time.perf_counter() - t

        agree &= bool(np.array_equal(ok, g.valid)) and bool(np.allclose(mean, g.mean, equal_nan=True))
        agree &= bool(np.array_equal(aqi_np.reshape(n_st, n_hours), grid.aqi.astype(np.int64)))
        valid_hours += int(g.valid.sum())
        total_hours += g.valid.size
    sd = stations * days
    return {
        "stations": stations, "days": days, "pollutants": len(POLLUTANTS), "minute_samples": samples,
        "edition": "HJ633-2026",
        "numba_s": round(t_numba, 3), "numpy_s": round(t_numpy, 3),
        "station_days_per_s": round(sd / t_numba, 1),
        "numpy_station_days_per_s": round(sd / t_numpy, 1),
        "samples_per_s": round(samples / t_numba),
        "speedup_vs_numpy": round(t_numpy / t_numba, 2),
        "valid_hour_share": round(valid_hours / max(total_hours, 1), 4),
        "results_agree": agree,
    }


def bench_water(stations: int, days: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    items = ROUTINE_WATER_ITEMS
    n = stations * days * 24
    class3 = np.array([float(WATER_ITEMS[k][3][min(2, len(WATER_ITEMS[k][3]) - 1)]) for k in items])
    values = np.round(rng.lognormal(-1.2, 0.5, (n, len(items))) * class3, 5)  # mostly I-III, some worse
    values[:, items.index("pH")] = np.round(rng.normal(7.5, 0.6, n), 2)
    values[:, items.index("DO")] = np.round(rng.normal(6.5, 1.5, n), 2)
    values[rng.random(values.shape) < 0.05] = np.nan
    lake = np.repeat(rng.random(stations) < 0.2, days * 24)
    _log(f"water: {n:,} station-hours x {len(items)} items")
    t = time.perf_counter()
    _, overall = classify_many(values, items, lake)
    t_numba = time.perf_counter() - t
    t = time.perf_counter()
    overall_np = numpy_water_class(values, items, lake)
    t_numpy = time.perf_counter() - t
    return {
        "stations": stations, "hours": days * 24, "items": len(items), "station_hours": n,
        "numba_s": round(t_numba, 3), "numpy_s": round(t_numpy, 3),
        "station_hours_per_s": round(n / t_numba),
        "numpy_station_hours_per_s": round(n / t_numpy),
        "speedup_vs_numpy": round(t_numpy / t_numba, 2),
        "class_share": {c: round(float((overall == i + 1).mean()), 4) for i, c in
                        enumerate(("I", "II", "III", "IV", "V", "劣V"))},
        "results_agree": bool(np.array_equal(overall, overall_np)),
    }


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.stations, args.days, args.river_stations, args.river_days = 50, 2, 10, 30
    _log("warming kernels (JIT compile or cache load)")
    warm = _warm()
    out = {
        "benchmark": "environment",
        "warmup_s": round(warm, 2),
        "air_hourly_validity_aqi": bench_air(args.stations, args.days, args.chunk, args.seed),
        "water_class": bench_water(args.river_stations, args.river_days, args.seed),
    }
    ok = out["air_hourly_validity_aqi"]["results_agree"] and out["water_class"]["results_agree"]
    out = with_machine(out)
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"machine: {out['machine']}")
        a, w = out["air_hourly_validity_aqi"], out["water_class"]
        print(f"air: {a['station_days_per_s']} station-days/s (numpy {a['numpy_station_days_per_s']}, "
              f"x{a['speedup_vs_numpy']}), agree={a['results_agree']}")
        print(f"water: {w['station_hours_per_s']} station-hours/s (numpy {w['numpy_station_hours_per_s']}, "
              f"x{w['speedup_vs_numpy']}), agree={w['results_agree']}")
    return 0 if ok else 1
