"""四表合一 register arithmetic and anomaly rules at their boundaries."""
from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest

from wulian.core.timebase import CHINA_TZ as CN
from wulian.core.meters.anomalies import gas_never_stops, night_leak, register_events, zero_consumption
from wulian.core.meters.collection import success_rate
from wulian.core.meters.consumption import Code, MeterReadings, MeterTable, consumption, consumption_numpy
from wulian.core.timebase import china_day

S = 10**9
MIN = 60 * S
H = 3600 * S
T0 = int(datetime(2026, 11, 20, tzinfo=CN).timestamp()) * S  # 00:00 China time
DAY0 = int(china_day(T0))


def one_meter(values, times=None, replaced=None, base=None, **table) -> tuple[MeterReadings, MeterTable]:
    n = len(values)
    ts = np.array(times if times is not None else [T0 + i * 15 * MIN for i in range(n)], np.int64)
    rd = MeterReadings.from_unsorted(np.zeros(n, np.int64), 1, ts, np.array(values, np.float64), replaced, base)
    return rd, MeterTable.uniform(1, **table)


def test_plain_deltas_and_first_reading():
    rd, mt = one_meter([100.0, 100.5, 101.25, 101.25])
    c = consumption(rd, mt, DAY0, 1)
    assert c.code.tolist() == [Code.FIRST, Code.OK, Code.OK, Code.OK]
    assert np.isnan(c.delta[0]) and c.delta[1:].tolist() == [0.5, 0.75, 0.0]
    assert c.day_sum[0, 0] == pytest.approx(1.25)
    assert c.day_slots[0, 0] == 4


def test_rollover_by_register_width():
    rd, mt = one_meter([999_999.50, 0.25, 1.0], modulus=1e6, max_rate_per_h=10.0)
    c = consumption(rd, mt, DAY0, 1)
    assert c.code[1] == Code.ROLLOVER
    assert c.delta[1] == pytest.approx(0.75)
    assert c.day_sum[0, 0] == pytest.approx(1.5)


def test_rollover_needs_plausible_rate_else_backwards_or_reset():
    # Falling from 500000 to 400000 in 15 min is not a wrap (600000 units); it is a backwards register.
    rd, mt = one_meter([500_000.0, 400_000.0, 400_001.0], modulus=1e6, max_rate_per_h=10.0)
    c = consumption(rd, mt, DAY0, 1)
    assert c.code[1] == Code.BACKWARDS and np.isnan(c.delta[1])
    assert c.delta[2] == pytest.approx(1.0)  # new baseline after the backwards step
    assert c.day_backwards[0, 0] == 1
    # Falling to almost zero is a detected replacement (new meter).
    rd, mt = one_meter([500_000.0, 3.0, 4.0], modulus=1e6, max_rate_per_h=10.0)
    c = consumption(rd, mt, DAY0, 1)
    assert c.code[1] == Code.RESET and c.delta[2] == pytest.approx(1.0)


def test_rollover_without_rate_limit_uses_half_turn():
    rd, mt = one_meter([999_990.0, 5.0, 600_000.0, 100.0], modulus=1e6)
    c = consumption(rd, mt, DAY0, 1)
    assert c.code[1] == Code.ROLLOVER and c.delta[1] == pytest.approx(15.0)
    # 600000 -> 100 would be a 400100 wrap: under half a turn, so still a rollover by this rule...
    assert c.code[3] == Code.ROLLOVER
    rd, mt = one_meter([400_000.0, 300_000.0], modulus=1e6)
    # ...while 400000 -> 300000 would need 900000: backwards.
    assert consumption(rd, mt, DAY0, 1).code[1] == Code.BACKWARDS


def test_flagged_replacement_with_and_without_start_value():
    rd, mt = one_meter([1234.0, 5.0, 6.0], replaced=[False, True, False], base=[np.nan, 4.5, np.nan])
    c = consumption(rd, mt, DAY0, 1)
    assert c.code[1] == Code.REPLACED and c.delta[1] == pytest.approx(0.5)
    assert c.delta[2] == pytest.approx(1.0)
    rd, mt = one_meter([1234.0, 5.0, 6.0], replaced=[False, True, False])
    c = consumption(rd, mt, DAY0, 1)
    assert c.code[1] == Code.REPLACED and np.isnan(c.delta[1]) and c.day_bad[0, 0] == 1


def test_jitter_duplicates_missing_and_jump():
    times = [T0, T0 + 15 * MIN, T0 + 15 * MIN, T0 + 30 * MIN, T0 + 45 * MIN, T0 + 60 * MIN]
    rd, mt = one_meter([10.0, 9.99, 11.0, np.nan, 10.5, 500.0], times=times, max_rate_per_h=20.0)
    from wulian.core.meters.consumption import ConsumptionParams
    c = consumption(rd, mt, DAY0, 1, ConsumptionParams(jitter=0.02))
    assert c.code.tolist() == [Code.FIRST, Code.OK, Code.DUPLICATE, Code.MISSING, Code.OK, Code.JUMP]
    assert c.delta[1] == 0.0  # -0.01 is within the jitter
    assert c.delta[4] == pytest.approx(0.51)


def test_interval_ending_at_midnight_belongs_to_previous_day():
    times = [T0 + 23 * H + 45 * MIN, T0 + 24 * H, T0 + 24 * H + 15 * MIN]
    rd, mt = one_meter([0.0, 1.0, 3.0], times=times)
    c = consumption(rd, mt, DAY0, 2)
    assert c.day_sum[0].tolist() == [1.0, 2.0]


def test_numpy_baseline_matches_kernel():
    rng = np.random.default_rng(3)
    n_m, n_r = 50, 192
    m = np.repeat(np.arange(n_m), n_r)
    ts = np.tile(T0 + np.arange(n_r) * 15 * MIN, n_m)
    reg = (np.cumsum(rng.uniform(0, 2, (n_m, n_r)), axis=1) + rng.uniform(0, 1e6, (n_m, 1))) % 1e6
    mt = MeterTable.uniform(n_m, max_rate_per_h=20.0)
    reg[5] = (999_950.0 + np.cumsum(np.full(n_r, 1.0))) % 1e6  # wraps at reading 49
    reg[3, 100:] -= 50.0  # one backwards step, one replacement-like reset
    reg[7, 150:] = np.arange(42) * 0.5
    rd = MeterReadings.from_unsorted(m, n_m, ts, reg.ravel())
    a = consumption(rd, mt, DAY0, 2)
    b = consumption_numpy(rd, mt, DAY0, 2)
    assert np.array_equal(a.code, b.code)
    assert np.allclose(a.delta, b.delta, equal_nan=True)
    for f in ("day_sum", "day_slots", "day_bad", "day_min_rate", "day_min_night_rate", "day_backwards"):
        assert np.allclose(getattr(a, f), getattr(b, f), equal_nan=True), f
    assert (a.code == Code.BACKWARDS).sum() == 1 and (a.code == Code.RESET).sum() == 1
    assert (a.code == Code.ROLLOVER).sum() >= 1 and a.code[5 * n_r + 49] == Code.ROLLOVER


def _days(daily_use):
    """A meter with 96 readings a day and the day's use spread evenly over them."""
    vals, times, r = [], [], 0.0
    for d, use in enumerate(daily_use):
        for i in range(96):
            t = T0 + d * 24 * H + i * 15 * MIN
            times.append(t)
            vals.append(r)
            r += use / 96
    return vals, times


def test_zero_consumption_for_n_days():
    vals, times = _days([5, 0, 0, 0])
    rd, mt = one_meter(vals + [vals[-1]], times=times + [T0 + 4 * 24 * H])
    c = consumption(rd, mt, DAY0, 4)
    z3 = zero_consumption(c, 3)
    z4 = zero_consumption(c, 4)
    assert z3.current[0] == 3 and z3.flagged[0] and not z4.flagged[0]


def test_night_leak_consecutive_nights_boundary():
    # Constant 0.25 m3/h day and night (a leak; binary-exact steps): above 0.2 three nights running.
    vals, times = _days([6.0, 6.0, 6.0])
    rd, mt = one_meter(vals, times=times, kind=1)
    c = consumption(rd, mt, DAY0, 3)
    assert c.day_min_night_rate[0].tolist() == [0.25] * 3
    assert night_leak(c, 0.2, 3).flagged[0]
    assert not night_leak(c, 0.25, 1).flagged[0]  # must be above the threshold
    assert not night_leak(c, 0.2, 4).flagged[0]


def test_night_window_is_02_to_04_china_time():
    # Zero flow only 04:00-04:15: outside the window, so the night minimum stays the leak rate.
    vals, times, r = [], [], 0.0
    for i in range(97):
        t = T0 + i * 15 * MIN
        vals.append(r)
        times.append(t)
        if i != 16:  # interval 04:00-04:15
            r += 0.01
    rd, mt = one_meter(vals, times=times)
    c = consumption(rd, mt, DAY0, 1)
    assert c.day_min_night_rate[0, 0] == pytest.approx(0.04)
    assert c.day_min_rate[0, 0] == 0.0
    vals[9:] = [v - 0.01 for v in vals[9:]]  # now interval 02:00-02:15 (i = 8 -> 9) has no flow
    rd, mt = one_meter(vals, times=times)
    assert consumption(rd, mt, DAY0, 1).day_min_night_rate[0, 0] == 0.0


def test_gas_never_stops():
    vals, times = _days([6.0, 6.0])
    rd, mt = one_meter(vals + [vals[-1] + 0.0625], times=times + [T0 + 48 * H], kind=2)
    c = consumption(rd, mt, DAY0, 2)
    assert gas_never_stops(c, days=2).flagged[0]
    vals2 = list(vals)
    for j in range(40, len(vals2)):
        vals2[j] -= 0.0625  # one interval without flow on day 0
    rd, mt = one_meter(vals2 + [vals2[-1] + 0.0625], times=times + [T0 + 48 * H], kind=2)
    g = gas_never_stops(consumption(rd, mt, DAY0, 2), days=2)
    assert not g.flagged[0] and g.current[0] == 1


def test_register_events_report_previous_value():
    rd, mt = one_meter([500.0, 500.0, 400.0], max_rate_per_h=10.0)
    c = consumption(rd, mt, DAY0, 1)
    ev = register_events(rd, c)
    assert ev.index.tolist() == [2] and ev.code[0] == Code.BACKWARDS
    assert ev.previous[0] == 500.0 and ev.register[0] == 400.0 and ev.meter[0] == 0


def test_collection_success_rate_per_concentrator():
    # Concentrator 0: meters 0 (96 slots) and 1 (48 slots, each sent twice); concentrator 1: meter 2 silent.
    times = [T0 + i * 15 * MIN for i in range(96)]
    m = [0] * 96 + [1] * 96
    ts = times + [t for t in times[:48] for _ in (0, 1)]
    ts[96:] = [t + (5 * S if j % 2 else 0) for j, t in enumerate(ts[96:])]
    reg = list(range(96)) + list(range(96))
    rd = MeterReadings.from_unsorted(np.array(m), 3, np.array(ts, np.int64), np.array(reg, np.float64))
    mt = MeterTable.uniform(3)
    mt.concentrator[:] = [0, 0, 1]
    rate = success_rate(consumption(rd, mt, DAY0, 1), mt)
    assert rate[0, 0] == pytest.approx((96 + 48) / 192)
    assert rate[1, 0] == 0.0


def test_daily_records_rows():
    from wulian.core.meters.consumption import daily_records
    rd, mt = one_meter([100.0, 100.5, 99.5, 100.0], max_rate_per_h=10.0)
    rows = daily_records(consumption(rd, mt, DAY0, 1), ["W1"])
    assert rows == [{"meter": "W1", "day": DAY0, "consumption": 1.0, "readings": 4, "complete": False,
                     "backwards": 1, "min_rate_per_h": 2.0, "min_night_rate_per_h": None}]


def test_signed_dlt645_registers_are_not_consumption_registers():
    """Combined energies (组合有功, 组合无功1/2) count down when export or capacitive reactive dominates and
    may go negative (DL/T 645-2007 Table A.1 note). The register kernel would read a fall below zero as a
    meter reset, so the meters job reads only registers that never count down; a negative combined
    register is stored as a reading and nothing else."""
    from wulian.ingest.codecs.dlt645 import QUANTITIES
    from wulian.ingest.jobs.meters import REGISTERS
    signed = {q.metric for q in QUANTITIES.values() if q.signed and q.metric}
    assert {"energy_active_combined_kwh", "energy_reactive1_kvarh", "energy_reactive2_kvarh"} <= signed
    assert not signed & set(REGISTERS)
    assert all(not q.signed for q in QUANTITIES.values() if q.metric in REGISTERS)
    assert "energy_active_import_kwh" in REGISTERS
    rd, mt = one_meter([0.5, -1.26, -1.0])  # what the kernel would make of a combined register
    assert consumption(rd, mt, DAY0, 1).code.tolist() == [Code.FIRST, Code.RESET, Code.OK]
