"""``wulian bench alarms``: the numba alarm kernel against its numpy and pure-Python references.

Default: 1,000,000 series x 3 rules (upper with pending/hysteresis/keep-firing, rate of change, flatline),
each series reporting once a minute at its own offset for ``--rounds`` minutes, so a batch arrives in time
order and touches series in random order (as devices report). All three implementations run the same batches
through ``AlarmEngine`` from fresh state and must emit identical transitions (numpy: on all series; Python:
on the first ``--python-series`` series, compared with the numba transitions of those series, since series
are independent). Rates are readings per second of ``update_many`` wall time, one core.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from wulian.core.alarms import AlarmEngine, Rule, RuleKind, SeriesKey, Transitions
from wulian.cli.benches import alarm_latency, emit

_NS = 1_000_000_000
_MINUTE = 60 * _NS
_T0 = 1_767_225_600 * _NS  # 2026-01-01T00:00:00Z


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alarms", help="numba alarm kernel vs numpy vs pure Python (identical transitions)")
    p.add_argument("--series", type=int, default=1_000_000)
    p.add_argument("--rounds", type=int, default=5, help="readings per series (one a minute)")
    p.add_argument("--batch", type=int, default=1_000_000, help="readings per update_many call")
    p.add_argument("--python-series", type=int, default=20_000, help="series the pure-Python run covers")
    p.add_argument("--repeat", type=int, default=5, help="numba runs (best and median reported)")
    p.add_argument("--seed", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="100k series, 3 rounds, 5k Python series")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-e2e", action="store_true", help="skip the end-to-end latency part (needs the stack)")
    alarm_latency.add_arguments(p)
    p.set_defaults(func=run)


def bench_rules() -> list[Rule]:
    return [
        Rule(1, "pm25 over limit", RuleKind.UPPER, stream="air", metric="pm25", threshold=150.0,
             clear_threshold=120.0, pending_s=90, keep_firing_s=120),
        Rule(2, "pm25 jump", RuleKind.RATE_OF_CHANGE, stream="air", metric="pm25", threshold=60.0,
             clear_threshold=40.0),
        Rule(3, "pm25 stuck", RuleKind.FLATLINE, stream="air", metric="pm25", duration_s=150, tolerance=0.0),
    ]


def make_readings(n_series: int, rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Time-ordered readings: each series once a minute at its own offset; random walks with spikes, some
    stuck sensors and some maintenance-flagged points."""
    rng = np.random.default_rng(seed)
    offset = rng.integers(0, _MINUTE, n_series)
    level = rng.uniform(20, 140, n_series)
    stuck = rng.random(n_series) < 0.02
    series, ts, values, flags = [], [], [], []
    for k in range(rounds):
        level = np.clip(level + rng.normal(0, 10, n_series), 0, None)
        spike = rng.random(n_series) < 0.03
        v = np.round(np.where(spike, level + rng.uniform(50, 150, n_series), level), 1)
        v = np.where(stuck, 42.0, v)
        f = np.where(rng.random(n_series) < 0.01, ord("M"), ord("N")).astype(np.uint8)
        series.append(np.arange(n_series, dtype=np.int32))
        ts.append(_T0 + k * _MINUTE + offset)
        values.append(v)
        flags.append(f)
    s, t, v, f = (np.concatenate(x) for x in (series, ts, values, flags))
    o = np.argsort(t, kind="stable")
    return s[o], t[o], v[o], f[o]


def _run(engine: AlarmEngine, batches, keep_series: int | None = None) -> tuple[float, float, list]:
    """Feed the batches (optionally only series < keep_series); returns (wall seconds in update_many, this
    thread's CPU seconds in it, transitions per batch with the tick at the batch's last time)."""
    wall = cpu = 0.0
    out = []
    for s, t, v, f in batches:
        if keep_series is not None:
            m = s < keep_series
            s, t, v, f = s[m], t[m], v[m], f[m]
        t0, c0 = time.perf_counter(), time.thread_time()
        tr = engine.update_many(s, t, v, f)
        wall += time.perf_counter() - t0
        cpu += time.thread_time() - c0
        out.append((tr, engine.tick(int(t.max()))))
    return wall, cpu, out


def _only(tr: Transitions, n_series: int) -> Transitions:
    m = tr.series < n_series
    return Transitions(*(getattr(tr, f)[m] for f in tr.__slots__))


def _catalogue(n: int) -> list[SeriesKey]:
    return [SeriesKey("air", f"st{i:07d}", "pm25", "aqms") for i in range(n)]


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.series, args.rounds, args.python_series = 100_000, 3, 5_000
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    n, rules = args.series, bench_rules()
    n_py = min(args.python_series, n)
    log(f"alarms: {n:,} series x {len(rules)} rules, {args.rounds} readings each")
    s, t, v, f = make_readings(n, args.rounds, args.seed)
    edges = range(0, s.shape[0], args.batch)
    batches = [(s[i:i + args.batch], t[i:i + args.batch], v[i:i + args.batch], f[i:i + args.batch]) for i in edges]
    keys = _catalogue(n)

    AlarmEngine(rules, keys[:1]).warmup()
    times, cpu_times, ref = [], [], None
    for rep in range(max(args.repeat, 1)):
        eng = AlarmEngine(rules, keys)
        secs, cpu, out = _run(eng, batches)
        times.append(secs)
        cpu_times.append(cpu)
        ref = ref or out
        log(f"  numba run {rep + 1}: {s.shape[0] / secs:,.0f} readings/s ({s.shape[0] / cpu:,.0f} per CPU s)")
    best = min(times)
    t0 = time.perf_counter()
    eng.tick(int(t[-1]) + _MINUTE)
    tick_ms = (time.perf_counter() - t0) * 1e3

    log("  numpy ...")
    np_secs, np_cpu, np_out = _run(AlarmEngine(rules, keys, impl="numpy"), batches)
    np_same = all(a.same_as(b) and at.same_as(bt) for (a, at), (b, bt) in zip(ref, np_out))

    log(f"  python on {n_py:,} series ...")
    py_secs, py_cpu, py_out = _run(AlarmEngine(rules, keys[:n_py], impl="python"), batches, keep_series=n_py)
    py_same = all(_only(a, n_py).same_as(b) and _only(at, n_py).same_as(bt)
                  for (a, at), (b, bt) in zip(ref, py_out))
    py_readings = int(np.count_nonzero(s < n_py))

    kinds = np.concatenate([a.kind for a, _ in ref] + [at.kind for _, at in ref])
    result = {
        "bench": "alarms",
        "series": n,
        "rules": len(rules),
        "bindings": eng.n_bindings,
        "readings": int(s.shape[0]),
        "batch": args.batch,
        "arrival": "time order, so series in random order within a batch",
        "numba_readings_per_s": round(s.shape[0] / best),
        "numpy_readings_per_s": round(s.shape[0] / np_secs),
        "python_readings_per_s": round(py_readings / py_secs),
        "numba_readings_per_s_median": round(s.shape[0] / float(np.median(times))),
        "numba_runs": len(times),
        "numba_readings_per_cpu_s": round(s.shape[0] / min(cpu_times)),
        "numpy_readings_per_cpu_s": round(s.shape[0] / np_cpu),
        "python_readings_per_cpu_s": round(py_readings / py_cpu),
        "numba_vs_numpy": round(np_secs / best, 1),
        "numba_vs_python": round((s.shape[0] / best) / (py_readings / py_secs), 1),
        "numba_tick_ms": round(tick_ms, 2),
        "transitions": {"raise": int((kinds == 1).sum()), "update": int((kinds == 2).sum()),
                        "clear": int((kinds == 3).sum())},
        "identical_numpy": bool(np_same),
        "identical_python": bool(py_same),
        "python_subset_series": n_py,
        "python_subset_readings": py_readings,
        "python_note": "pure Python measured on the first python_subset_series series (its own rate, not "
                       "scaled); its transitions are compared with the numba run's for those series",
        "timing_note": "readings_per_s: wall time in update_many (numba: best of numba_runs); per_cpu_s: the "
                       "calling thread's CPU time, which leaves out time the shared machine gave to others",
        "target_numba_readings_per_s": 20_000_000,
    }
    if not args.no_e2e:
        log(f"  end to end: publish -> alert event under {args.load:,.0f} readings/s ...")
        result.update(alarm_latency.run_latency(args))
    emit(result, args.json)
    if not (np_same and py_same):
        log("alarms: implementations DISAGREE")
        return 1
    if not result.get("load_reached", True):
        log("alarms: the background load was not reached; the latency figure does not count")
        return 1
    return 0
