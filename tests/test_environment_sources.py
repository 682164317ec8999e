"""HJ 76 validity (45 minutes / 20 hours, flags), O2 conversion, emission mass, exceedance episodes,
CN 2061 comparison, completeness alerts and boundary monitors."""
from __future__ import annotations

import numpy as np
import pytest

from wulian.core.const import INVALID_FLAGS, VALID_FLAGS
from wulian.core.environment.editions import EDITION_2026_START_NS
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR
from wulian.core.environment.sources import (
    DEFAULT_BOUNDARY_LIMITS,
    SourceSpec,
    boundary_exceedances,
    converted_hourly,
    emission_mass,
    evaluate_source,
    exceedance_episodes,
    o2_convert,
)
from wulian.core.environment.validity import (
    HourlyGrid,
    aggregate_daily,
    aggregate_hourly,
    compare_uploaded_hourly,
    completeness_alerts,
    day_aligned_start,
    valid_mask,
)
from wulian.core.kernels.hourly_validity import daily_max_8h, moving_mean

T0 = EDITION_2026_START_NS  # a China midnight


def _minutes(n_minutes: int, value: float = 10.0, hour: int = 0, key: int = 0, step_s: int = 60):
    ts = T0 + hour * NS_PER_HOUR + np.arange(n_minutes * 60 // step_s, dtype=np.int64) * step_s * 10**9
    return np.full(ts.shape, key, np.int32), ts, np.full(ts.shape, value)


@pytest.mark.parametrize("n,valid", [(44, False), (45, True), (60, True)])
def test_hour_needs_45_valid_minutes(n, valid):
    keys, ts, vals = _minutes(n)
    g = aggregate_hourly(keys, ts, vals, np.ones(n, bool), T0, 1, 1)
    assert g.n_valid_minutes[0, 0] == n and bool(g.valid[0, 0]) is valid
    assert g.mean[0, 0] == 10.0


def test_flagged_minutes_do_not_count():
    keys, ts, vals = _minutes(60)
    vals[:10] = 1000.0
    flags = np.array(["N"] * 60, dtype=object)
    flags[:10] = ["M", "C", "D", "F", "B", "S", "T", "m", "c", "d"]
    ok = valid_mask(flags, vals)
    assert ok.sum() == 50
    g = aggregate_hourly(keys, ts, vals, ok, T0, 1, 1)
    assert g.valid[0, 0] and g.n_valid_minutes[0, 0] == 50 and g.n_minutes[0, 0] == 60
    assert g.mean[0, 0] == 10.0  # the flagged 1000s are not averaged in
    flags[10:16] = "D"  # now 44 valid minutes
    g2 = aggregate_hourly(keys, ts, vals, valid_mask(flags, vals), T0, 1, 1)
    assert not g2.valid[0, 0] and g2.n_valid_minutes[0, 0] == 44


def test_valid_mask_forms_agree():
    flags = list("NMCDFBSTHPVZ") + ["n", "", "c", "p"]
    vals = np.ones(len(flags))
    vals[0] = np.nan
    as_str = valid_mask(np.array(flags, dtype=object), vals)
    as_bytes = valid_mask(np.frombuffer("".join(f or "N" for f in flags).encode(), dtype=np.uint8), vals)
    assert as_str.tolist() == as_bytes.tolist()
    expected = [(f or "N").upper() in VALID_FLAGS for f in flags]  # only N: flags no edition defines too
    expected[0] = False  # NaN value
    assert as_str.tolist() == expected
    assert valid_mask(np.zeros(1, np.uint8), np.ones(1)).tolist() == [True]  # code 0: no flag sent


def test_power_fault_minutes_do_not_make_a_valid_hour():
    # A 2005 logger flags a power fault P (电源故障) for 20 minutes of the hour: 40 valid minutes < 45.
    keys, ts, vals = _minutes(60)
    flags = np.array(["N"] * 60, dtype=object)
    flags[:20] = "P"
    ok = valid_mask(flags, vals)
    assert ok.sum() == 40 and not set(INVALID_FLAGS) & set(flags[ok])
    g = aggregate_hourly(keys, ts, vals, ok, T0, 1, 1)
    assert not g.valid[0, 0] and g.n_valid_minutes[0, 0] == 40
    codes = np.frombuffer("".join(flags).encode(), dtype=np.uint8)
    assert valid_mask(codes, vals).sum() == 40  # the uint8 form the jobs use agrees


def test_sub_minute_samples_count_minutes_not_samples():
    keys, ts, vals = _minutes(23, step_s=30)  # 46 samples in 23 distinct minutes
    g = aggregate_hourly(keys, ts, vals, np.ones(ts.shape, bool), T0, 1, 1)
    assert g.n_valid_minutes[0, 0] == 23 and not g.valid[0, 0]


def test_out_of_grid_samples_ignored():
    keys = np.array([0, 0, 5, -1], np.int32)
    ts = np.array([T0 - 1, T0 + 2 * NS_PER_HOUR, T0, T0], np.int64)
    g = aggregate_hourly(keys, ts, np.ones(4), np.ones(4, bool), T0, 1, 2)
    assert g.n_minutes.sum() == 0


@pytest.mark.parametrize("hours,valid", [(19, False), (20, True)])
def test_day_needs_20_valid_hours(hours, valid):
    mean = np.full((1, 24), 5.0)
    ok = np.zeros((1, 24), bool)
    ok[0, :hours] = True
    mean[0, hours:] = 999.0  # invalid hours must not enter the daily mean
    d = aggregate_daily(HourlyGrid(T0, mean, np.zeros_like(mean, np.int16), np.zeros_like(mean, np.int16), ok))
    assert d.n_valid_hours[0, 0] == hours and bool(d.valid[0, 0]) is valid and d.mean[0, 0] == 5.0
    assert d.valid_data_rate[0, 0] == pytest.approx(hours / 24)


def test_daily_grid_must_start_at_china_midnight():
    g = HourlyGrid(T0 + NS_PER_HOUR, np.zeros((1, 24)), np.zeros((1, 24), np.int16),
                   np.zeros((1, 24), np.int16), np.ones((1, 24), bool))
    with pytest.raises(ValueError):
        aggregate_daily(g)
    assert day_aligned_start(T0 + 5 * NS_PER_HOUR) == T0
    assert day_aligned_start(T0 - 1) == T0 - NS_PER_DAY


def test_o2_conversion():
    # Coal boiler, reference 9 %: 100 mg/m3 at 12 % O2 -> 100 x 12/9 = 133.33
    spec = SourceSpec("boiler-1", "gas", {"SO2": 200.0}, source_type="coal_boiler")
    assert spec.reference_o2_pct() == 9.0
    assert float(o2_convert(100.0, 12.0, 9.0)) == pytest.approx(133.3333333)
    assert float(o2_convert(100.0, 9.0, 9.0)) == pytest.approx(100.0)  # at reference O2 nothing changes
    assert float(o2_convert(100.0, 3.0, 6.0)) == pytest.approx(100.0 * 15 / 18)  # below reference: lower
    assert np.isnan(o2_convert(100.0, 21.0, 9.0))
    assert float(o2_convert(100.0, 20.5, 9.0, o2_ceiling=19.0)) == pytest.approx(600.0)
    assert SourceSpec("b", "gas", source_type="gas_turbine").reference_o2_pct() == 15.0
    assert SourceSpec("b", "gas", source_type="coal_boiler", reference_o2=6.0).reference_o2_pct() == 6.0
    assert SourceSpec("w", "water").reference_o2_pct() is None


def _grid(mean, valid=None) -> HourlyGrid:
    mean = np.atleast_2d(np.asarray(mean, float))
    valid = np.ones(mean.shape, bool) if valid is None else np.atleast_2d(np.asarray(valid, bool))
    z = np.zeros(mean.shape, np.int16)
    return HourlyGrid(T0, mean, z, z, valid)


def test_converted_hourly_and_exceedance_episodes():
    conc = _grid([90, 90, 120, 130, 90, 140, 150, 160, 90, 90])
    o2 = _grid([9.0] * 10, [1, 1, 1, 1, 1, 1, 0, 1, 1, 1])
    conv = converted_hourly(conc, o2, 9.0)
    assert not conv.valid[0, 6]  # O2 hour invalid -> converted hour invalid
    eps = exceedance_episodes(conv, ["boiler-1"], ["SO2"], [100.0])
    assert [(e.start_ns, e.end_ns, e.peak, e.periods) for e in eps] == [
        (T0 + 2 * NS_PER_HOUR, T0 + 4 * NS_PER_HOUR, 130.0, 2),
        (T0 + 5 * NS_PER_HOUR, T0 + 6 * NS_PER_HOUR, 140.0, 1),  # the invalid hour 6 ends it
        (T0 + 7 * NS_PER_HOUR, T0 + 8 * NS_PER_HOUR, 160.0, 1),
    ]
    assert eps[0].peak_ns == T0 + 3 * NS_PER_HOUR and eps[0].duration_s == 7200
    assert eps[0].basis == "converted 1-h mean" and eps[0].threshold == 100.0
    assert exceedance_episodes(conv, ["b"], ["SO2"], [100.0], min_hours=2)[0].periods == 2
    # converted value is what is judged: 90 mg/m3 at 15 % O2 with 9 % reference -> 135 > 100
    high_o2 = converted_hourly(_grid([90.0]), _grid([15.0]), 9.0)
    assert len(exceedance_episodes(high_o2, ["b"], ["SO2"], [100.0])) == 1


def test_emission_mass():
    conc = _grid(np.full(48, 50.0))  # mg/m3
    flow = _grid(np.full(48, 20.0), np.r_[np.ones(47), 0])  # m3/s, last hour invalid
    m = emission_mass(conc, flow)
    assert m.hourly_kg[0, 0] == pytest.approx(50 * 20 * 3600 / 1e6)  # 3.6 kg
    assert np.isnan(m.hourly_kg[0, 47])
    assert m.daily_kg[0].tolist() == pytest.approx([3.6 * 24, 3.6 * 23])
    assert m.daily_hours[0].tolist() == [24, 23]


def test_compare_uploaded_hourly():
    ours = _grid([[10.0, 10.0, 10.0, 10.0]], [[1, 1, 1, 0]])
    uploaded = np.array([[10.2, 12.0, np.nan, 50.0]])
    cmp = compare_uploaded_hourly(ours, uploaded, abs_tol=0.1, rel_tol=0.05)
    assert cmp.compared == 2 and cmp.mismatches == 1
    assert cmp.mismatch[0].tolist() == [False, True, False, False]
    assert cmp.difference[0, 0] == pytest.approx(0.2) and np.isnan(cmp.difference[0, 3])


def test_completeness_alerts_per_device():
    valid = np.ones((3, 48), bool)
    valid[0, 24:36] = False  # device A, item 0: half of day 2 missing
    d = aggregate_daily(_grid(np.ones((3, 48)), valid))
    alerts = completeness_alerts(d, np.array([0, 0, 1]), ["A", "B"], min_rate=0.9)
    assert [(a.device, a.day_start_ns) for a in alerts] == [("A", T0 + NS_PER_DAY)]
    assert alerts[0].rate == pytest.approx(36 / 48)


def test_boundary_monitor_limits_per_plant():
    hourly = _grid([[3.0, 5.0, 5.0], [0.5, 0.5, 0.1], [0.05, 0.07, 0.07]])
    eps = boundary_exceedances(hourly, ["P1", "P1", "P2"], ["NMHC", "benzene", "H2S"], {"P2": {"H2S": 0.1}})
    assert [(e.subject, e.item, e.periods, e.threshold) for e in eps] == [
        ("P1", "NMHC", 2, DEFAULT_BOUNDARY_LIMITS["NMHC"]),
        ("P1", "benzene", 2, DEFAULT_BOUNDARY_LIMITS["benzene"]),
    ]


def test_moving_mean_and_daily_max_8h():
    mean = np.arange(48, dtype=float)[None, :]
    ok = np.ones((1, 48), bool)
    ok[0, 10:13] = False
    mm = moving_mean(mean, ok, 8, 6)
    assert mm[0, 7] == pytest.approx(3.5) and np.isnan(mm[0, 4])
    assert np.isnan(mm[0, 14]) and np.isnan(mm[0, 17])  # only 5 valid hours in those windows
    assert mm[0, 18] == pytest.approx(np.mean(np.arange(13, 19)))  # 6 valid hours: 13..18
    m8, v8 = daily_max_8h(mean, np.ones((1, 48), bool), 6, 14, 160.0)
    assert m8[0].tolist() == [np.mean(np.arange(16, 24)), np.mean(np.arange(40, 48))]
    assert v8[0].all()
    sparse = np.zeros((1, 48), bool)
    sparse[0, 0:8] = True  # a single valid 8-h window: not enough unless above the limit
    _, v = daily_max_8h(mean, sparse, 6, 14, 160.0)
    assert not v[0, 0]
    _, v_hi = daily_max_8h(mean + 200.0, sparse, 6, 14, 160.0)
    assert v_hi[0, 0]


def test_evaluate_source_stack_gas():
    spec = SourceSpec("plant-7/boiler-2", "gas", {"SO2": 100.0, "NOx": 150.0}, source_type="coal_boiler")
    measured = _grid([[90.0, 90.0, 60.0], [100.0, 100.0, 100.0], [5.0, 5.0, 5.0]])  # SO2, NOx, dust
    o2 = _grid([[9.0, 12.0, 12.0]])
    flow = _grid([[10.0, 10.0, 10.0]])
    out = evaluate_source(spec, measured, ["SO2", "NOx", "dust"], o2, flow)
    assert out.reference_o2 == 9.0
    assert out.judged.mean[0].tolist() == pytest.approx([90.0, 120.0, 80.0])
    assert [(e.item, e.periods, e.peak) for e in out.episodes] == [("SO2", 1, pytest.approx(120.0))]
    assert "9 % O2" in out.episodes[0].basis
    assert out.mass.hourly_kg[1, 0] == pytest.approx(100 * 10 * 3600 / 1e6)  # mass uses measured values
    water = evaluate_source(SourceSpec("outlet-1", "water", {"COD": 50.0}), _grid([[40.0, 60.0]]), ["COD"])
    assert water.reference_o2 is None and water.mass is None
    assert [(e.item, e.start_ns, e.basis) for e in water.episodes] == [("COD", T0 + NS_PER_HOUR,
                                                                       "measured 1-h mean")]
