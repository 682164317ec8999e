"""Alarm core: rule model, compiler, numba kernels and their numpy / pure-Python references.

Behaviour tests run against all three implementations (``impl`` fixture); a hypothesis test checks that they
agree transition for transition on random rules and readings, including late, duplicate, flagged and NaN
points and interleaved timer ticks.
"""
from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wulian.core.alarms import (AlarmEngine, Rule, RuleError, RuleKind, SeriesCatalogue, SeriesKey, Severity,
                         TransitionKind, Transitions, flag_code, flag_codes)
from wulian.core.alarms.compiler import bind_series, compile_rules
from wulian.core.const import INVALID_FLAGS
from wulian.core.kernels import alarm_kernels as K

S = 1_000_000_000
MIN = 60 * S
T0 = 1_767_225_600 * S  # 2026-01-01T00:00:00Z
R, U, C = TransitionKind.RAISE, TransitionKind.UPDATE, TransitionKind.CLEAR


@pytest.fixture(params=["numba", "numpy", "python"])
def impl(request):
    return request.param


def keys(n: int, stream: str = "air", metric: str = "pm25") -> list[SeriesKey]:
    return [SeriesKey(stream, f"d{i}", metric, "aqms") for i in range(n)]


def make(impl: str, *rules: Rule, n: int = 1) -> AlarmEngine:
    return AlarmEngine(list(rules), keys(n), impl=impl)


def feed(eng: AlarmEngine, *points) -> list[tuple]:
    """points: (minute, value) or (minute, value, flag) or (series, minute, value, flag); returns
    (kind, minute, value, count) per transition."""
    rows = [p if len(p) == 4 else (0, p[0], p[1], p[2] if len(p) == 3 else "N") for p in points]
    s, m, v, f = zip(*rows)
    tr = eng.update_many(list(s), [T0 + round(x * MIN) for x in m], list(v), list(f))
    return [(k, (t - T0) / MIN, val, c) for _, _, k, t, val, _, c in tr.rows()]


def tick(eng: AlarmEngine, minute: float) -> list[tuple]:
    return [(k, (t - T0) / MIN, v, c) for _, _, k, t, v, _, c in eng.tick(T0 + round(minute * MIN)).rows()]


def kinds(rows) -> list:
    return [(k, m) for k, m, *_ in rows]


# -- rule model -------------------------------------------------------------------------------------------

def test_kind_codes_match_kernels():
    assert [k.code for k in RuleKind] == [K.UPPER, K.LOWER, K.RANGE, K.RATE, K.FLATLINE, K.MISSING, K.FLAG, K.BIT,
                                          K.TREND]
    assert (int(R), int(U), int(C)) == (K.RAISE, K.UPDATE, K.CLEAR)


@pytest.mark.parametrize("kwargs", [
    dict(kind="upper"),  # no threshold
    dict(kind="upper", threshold=10, clear_threshold=12),  # clear on the wrong side
    dict(kind="lower", threshold=10, clear_threshold=8),
    dict(kind="range", low=5, high=1),
    dict(kind="range", low=1, high=5, clear_low=0),
    dict(kind="rate_of_change", threshold=-1),
    dict(kind="flatline", duration_s=0),
    dict(kind="missing_data"),
    dict(kind="data_flag"),
    dict(kind="bit", bit=63),
    dict(kind="bit"),
    dict(kind="upper", threshold=1, pending_s=-1),
    dict(kind="upper", threshold=math.inf),
    dict(kind="upper", threshold=1, severity="fatal"),
    dict(kind="sideways", threshold=1),
    dict(kind="data_flag", flags="D#"),
    dict(kind="trend", horizon_s=600),  # no limit
    dict(kind="trend", high=5, horizon_s=0),
    dict(kind="trend", high=5, low=6, horizon_s=60),
    dict(kind="trend", high=5, horizon_s=60, min_points=1),
])
def test_invalid_rules_are_rejected(kwargs):
    with pytest.raises(RuleError):
        Rule(1, "r", **kwargs)


def test_rule_round_trips_through_json():
    rules = [
        Rule(7, "SO2 limit", RuleKind.UPPER, Severity.CRITICAL, stream="pollution", metric="a21026-Rtd",
             threshold=35.0, clear_threshold=30.0, pending_s=300, keep_firing_s=600),
        Rule(8, "pH", "range", "minor", low=6.0, high=9.0, clear_low=6.2, clear_high=8.8),
        Rule(9, "fault", "data_flag", flags="dfb", device_type="cems"),
        Rule(10, "SOS", "bit", "critical", stream="vehicle", metric="alarm_bits", bit=0, bit_name="emergency"),
    ]
    for rule in rules:
        back = Rule.from_dict(json.loads(json.dumps(rule.to_dict())))
        assert back == rule
    assert rules[2].flags == frozenset("DFB")  # normalised to upper case
    assert rules[0].exclude_flags == INVALID_FLAGS
    with pytest.raises(RuleError):
        Rule.from_dict({**rules[0].to_dict(), "treshold": 3})


def test_flag_codes():
    assert flag_code("N") == ord("N") and flag_code("d") == ord("D") and flag_code(None) == 0
    assert flag_codes(["N", None, "m"]).tolist() == [78, 0, 77]  # object array
    assert flag_codes(["n", "D", "", "Mx"]).tolist() == [78, 68, 0, 77]  # str array, vectorised
    assert flag_codes(np.array([68], np.uint8)).dtype == np.uint8


# -- compiler ---------------------------------------------------------------------------------------------

def test_bindings_follow_rule_scope():
    cat = SeriesCatalogue([SeriesKey("air", "a1", "pm25", "aqms"), SeriesKey("air", "a1", "o3", "aqms"),
                           SeriesKey("water", "w1", "pH", "buoy"), SeriesKey("air", "a2", "pm25", None)])
    rules = [Rule(1, "all", "missing_data", duration_s=60),
             Rule(2, "pm", "upper", metric="pm25", threshold=75),
             Rule(3, "a1", "upper", device_id="a1", threshold=1),
             Rule(4, "buoys", "data_flag", device_type="buoy", flags="D"),
             Rule(5, "nothing", "upper", stream="grid", threshold=1),
             Rule(6, "off", "upper", threshold=1, enabled=False)]
    table = compile_rules(rules)
    counts, b_rule = bind_series(table, cat)
    assert counts.tolist() == [3, 2, 2, 2]
    assert table.ids[b_rule].tolist() == [1, 2, 3, 1, 3, 1, 4, 1, 2]
    with pytest.raises(RuleError):
        compile_rules([rules[0], rules[0]])


def test_series_grow_on_demand_and_keep_state(impl):
    eng = make(impl, Rule(1, "hi", "upper", threshold=10, pending_s=120), n=1)
    feed(eng, (0, 20))  # pending starts for series 0
    for i in range(1, 40):  # several capacity doublings
        assert eng.add_series([SeriesKey("air", f"n{i}", "pm25")]).tolist() == [i]
    assert eng.add_series([SeriesKey("air", "d0", "pm25", "aqms")]).tolist() == [0]  # known key
    assert eng.n_series == 40 and eng.n_bindings == 40
    assert kinds(feed(eng, (0, 2, 20, "N"), (39, 2, 20, "N"))) == [(R, 2)]  # series 0 pending survived
    with pytest.raises(IndexError):
        eng.update_one(40, T0, 1.0)
    with pytest.raises(ValueError):
        eng.update_many([0, 0], [T0], [1.0, 2.0])


# -- rule kinds -------------------------------------------------------------------------------------------

def test_upper_raise_update_hysteresis_clear(impl):
    eng = make(impl, Rule(1, "hi", "upper", threshold=100, clear_threshold=80))
    rows = feed(eng, (0, 100), (1, 101), (2, 150), (3, 90), (4, 120), (5, 80), (6, 200))
    # 100 is not above the limit; 90 is inside the hysteresis band (still firing); 80 clears.
    assert rows == [(R, 1, 101, 1), (U, 2, 150, 2), (U, 4, 120, 3), (C, 5, 80, 3), (R, 6, 200, 1)]


def test_lower_and_range(impl):
    eng = make(impl, Rule(1, "low", "lower", threshold=5, clear_threshold=6),
               Rule(2, "band", "range", low=6, high=9, clear_low=6.5, clear_high=8.5), n=1)
    tr = eng.update_many([0] * 6, [T0 + i * MIN for i in range(6)], [7, 4.9, 5.5, 6.2, 9.5, 8.5])
    got = [(rid, k, (t - T0) // MIN) for _, rid, k, t, *_ in tr.rows()]
    assert got == [(1, R, 1), (2, R, 1),  # 4.9: below both
                   (2, U, 2), (1, C, 3),  # 5.5 still out of band; 6.2 clears "low" but not the band
                   (2, U, 4), (2, C, 5)]  # 9.5 above; 8.5 back in the clear band


def test_rate_of_change_per_minute(impl):
    eng = make(impl, Rule(1, "jump", "rate_of_change", threshold=10, clear_threshold=5))
    rows = feed(eng, (0, 50), (0.5, 57), (1.0, 65, "C"), (1.5, 64), (3.5, 70), (4.5, 76))
    # 50 -> 57 in 30 s = 14/min raises; the calibration point is skipped, so 57 -> 64 over 1 min = 7/min is
    # between clear (5) and raise (10): still firing; 64 -> 70 over 2 min = 3/min clears; 6/min stays clear.
    assert rows == [(R, 0.5, pytest.approx(14.0), 1), (C, 3.5, pytest.approx(3.0), 1)]


def test_flatline(impl):
    eng = make(impl, Rule(1, "stuck", "flatline", duration_s=600, tolerance=0.05))
    rows = feed(eng, *[(m, 42.0 + (0.01 if m % 2 else 0)) for m in range(0, 12)], (12, 43))
    assert rows == [(R, 10, 600.0, 1), (U, 11, 660.0, 2), (C, 12, 0.0, 2)]


def test_trend_warns_before_a_rising_limit(impl):
    # 1 unit/min towards 20 from 10: the line reaches 20 at minute 10; a 5.5-minute horizon warns from minute 5.
    eng = make(impl, Rule(1, "rising", "trend", high=20, horizon_s=330, window_s=600, min_points=3))
    rows = feed(eng, *[(m, 10.0 + m) for m in range(0, 8)])
    assert kinds(rows) == [(R, 5), (U, 6), (U, 7)]
    assert [round(v, 6) for _, _, v, _ in rows] == [300.0, 240.0, 180.0]  # seconds to the limit
    assert kinds(feed(eng, *[(m, 17.0) for m in range(8, 40)]))[-1][0] == C  # levelled off: clears


def test_trend_needs_enough_points_and_ignores_flat_noise(impl):
    eng = make(impl, Rule(1, "rising", "trend", high=20, horizon_s=3600, window_s=600, min_points=4))
    assert feed(eng, (0, 10), (1, 15), (2, 19)) == []  # steep, but only three readings
    assert kinds(feed(eng, (3, 19.5))) == [(R, 3)]
    rng = np.random.default_rng(1)
    flat = make(impl, Rule(1, "rising", "trend", high=20, horizon_s=1800, window_s=600, min_points=4))
    assert feed(flat, *[(m, 15.0 + rng.normal(0, 0.3)) for m in range(240)]) == []


def test_trend_falling_limit_and_already_past(impl):
    eng = make(impl, Rule(1, "draining", "trend", low=0.0, horizon_s=120, min_points=2))
    assert kinds(feed(eng, (0, 10), (1, 5))) == [(R, 1)]  # 5 per minute: at 0 in one minute
    eng = make(impl, Rule(1, "rising", "trend", high=20, horizon_s=60, min_points=2))
    rows = feed(eng, (0, 25), (1, 25))
    assert rows == [(R, 1, 0.0, 1)]  # flat but already past the limit: 0 s to go


def test_trend_state_survives_a_restart(impl):
    rule = Rule(1, "rising", "trend", high=20, horizon_s=330, window_s=600, min_points=3)
    before = make(impl, rule, Rule(2, "hi", "upper", threshold=30))
    feed(before, *[(m, 10.0 + m) for m in range(0, 4)])
    after = make(impl, rule, Rule(2, "hi", "upper", threshold=30))
    after.load_state(_round_trip(before.state_arrays()))
    assert kinds(feed(after, (4, 14), (5, 15))) == [(R, 5)]  # the slope of minutes 0-3 was kept
    fresh = make(impl, rule)
    assert kinds(feed(fresh, (4, 14), (5, 15))) == []  # (without it: two points only)


def test_missing_data_without_incoming_data(impl):
    eng = make(impl, Rule(1, "offline", "missing_data", duration_s=600, pending_s=60), n=2)
    feed(eng, (0, 0, 1.0, "N"))
    assert tick(eng, 5) == []
    assert tick(eng, 10.5) == []  # silent 10.5 min: offline, but pending 1 min not yet over
    # Raise carries the due time (10 + 1 min), not the tick time; series 1 (never seen) started being
    # watched at the first tick (minute 5).
    assert tick(eng, 11.5) == [(R, 11, 11.5 * 60, 1)]
    assert tick(eng, 12) == []  # no repeat while offline
    assert kinds(tick(eng, 16)) == [(R, 16)]
    assert kinds(feed(eng, (0, 13, 2.0, "D"))) == [(C, 13)]  # any reading, even flagged, is a sign of life


def test_missing_data_raise_time_does_not_depend_on_tick_rate(impl):
    a = make(impl, Rule(1, "offline", "missing_data", duration_s=300))
    b = make(impl, Rule(1, "offline", "missing_data", duration_s=300))
    feed(a, (0, 1.0))
    feed(b, (0, 1.0))
    rows_a = [r for m in range(1, 30) for r in tick(a, m * 0.25)]
    rows_b = tick(b, 7.25)
    assert [r[:2] for r in rows_a] == [r[:2] for r in rows_b] == [(R, 5)]


def test_data_flag_rule_and_flag_exclusion(impl):
    eng = make(impl, Rule(1, "fault", "data_flag", flags="DFB"),
               Rule(2, "hi", "upper", threshold=100, pending_s=120), n=1)
    tr = eng.update_many([0] * 5, [T0 + i * MIN for i in range(5)], [150, 999, 150, 10, 150],
                         ["N", "D", "n", "M", "N"])
    got = [(rid, k, (t - T0) // MIN, flag) for _, rid, k, t, _, flag, _ in tr.rows()]
    # The D reading raises the fault rule and is invisible to the exceedance rule: it neither raises (999) nor
    # breaks the pending period started at minute 0, nor does the maintenance point at minute 3.
    assert got == [(1, R, 1, "D"), (1, C, 2, "N"), (2, R, 2, "N"), (2, U, 4, "N")]


def test_power_fault_readings_never_raise_exceedance(impl):
    # HJ/T 212-2005 P (电源故障, power fault) is invalid data: a default rule must not see it, in either case.
    eng = make(impl, Rule(1, "hi", "upper", threshold=100))
    assert "P" in Rule(2, "x", "upper", threshold=1).exclude_flags
    assert feed(eng, (0, 150, "P"), (1, 999, "p"), (2, 10, "N")) == []
    assert kinds(feed(eng, (3, 150, "N"))) == [(R, 3)]


def test_bit_rule(impl):
    eng = make(impl, Rule(1, "overspeed", "bit", bit=1, bit_name="overspeed"))
    rows = feed(eng, (0, 0b01), (1, 0b10), (2, 0b11), (3, float("nan")), (4, -2.0), (5, 2.0 ** 40 + 1))
    assert kinds(rows) == [(R, 1), (U, 2), (C, 5)]


# -- pending, keep-firing, order policy -------------------------------------------------------------------

def test_pending_period(impl):
    eng = make(impl, Rule(1, "hi", "upper", threshold=10, pending_s=300))
    assert feed(eng, (0, 11), (2, 12), (4, 9), (5, 11), (9, 11)) == []  # a dip at 4 restarts the period
    assert kinds(feed(eng, (10, 11))) == [(R, 10)]  # exactly pending_s later is enough


def test_keep_firing(impl):
    eng = make(impl, Rule(1, "hi", "upper", threshold=10, clear_threshold=8, keep_firing_s=300))
    assert kinds(feed(eng, (0, 11), (1, 5), (3, 11))) == [(R, 0), (U, 3)]  # re-trigger inside keep-firing
    assert feed(eng, (4, 5), (6, 9), (7, 5), (11, 5)) == []  # band reading at 6 restarts keep-firing
    assert kinds(feed(eng, (12, 5))) == [(C, 12)]
    # Timer release: clear condition seen at 20, nothing after; the tick clears at 20 + 5 min.
    feed(eng, (13, 11), (20, 1))
    assert tick(eng, 24) == []
    rows = tick(eng, 30)
    assert [(k, m, c) for k, m, _, c in rows] == [(C, 25, 1)] and math.isnan(rows[0][2])


def test_late_and_duplicate_readings_are_ignored(impl):
    eng = make(impl, Rule(1, "hi", "upper", threshold=10), Rule(2, "jump", "rate_of_change", threshold=100))
    batch = [(0, 5), (1, 20), (2, 21)]
    first = feed(eng, *batch)
    assert kinds(first) == [(R, 1), (U, 2)]
    assert feed(eng, *batch) == []  # replayed batch: nothing moves
    assert feed(eng, (1.5, 500)) == []  # late: neither the threshold nor the rate sees it
    assert kinds(feed(eng, (3, 22))) == [(U, 3)]
    state = eng.state_arrays()
    assert state["count"].tolist() == [3, 0]  # open alert with 3 triggers; rate rule never fired


def test_unsorted_batch_is_taken_in_time_order(impl):
    points = [(0, 0, 5.0, "N"), (1, 3, 20.0, "N"), (0, 2, 12.0, "N"), (0, 1, 9.0, "N"), (1, 1, 30.0, "N"),
              (0, 2, 99.0, "N"), (1, 2, 1.0, "N")]
    a = make(impl, Rule(1, "hi", "upper", threshold=10, clear_threshold=8), n=2)
    b = make(impl, Rule(1, "hi", "upper", threshold=10, clear_threshold=8), n=2)
    shuffled = a.update_many(*_cols(points))
    ordered = b.update_many(*_cols(sorted(points, key=lambda p: p[1])))  # stable: (0, 2, 12) before 99
    assert shuffled.same_as(ordered) and len(shuffled) == 4
    assert np.all(np.diff(shuffled.ts_ns) >= 0)


def _cols(points):
    s, m, v, f = zip(*points)
    return list(s), [T0 + x * MIN for x in m], list(v), list(f)


# -- persistence ------------------------------------------------------------------------------------------

def _round_trip(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as z:
        return {k: z[k] for k in z.files}


def test_restart_in_the_middle_of_a_pending_period(impl):
    rules = [Rule(1, "hi", "upper", threshold=10, pending_s=600), Rule(2, "offline", "missing_data", duration_s=900)]
    before = make(impl, *rules, n=2)
    feed(before, (0, 0, 20, "N"), (0, 5, 20, "N"), (1, 0, 1, "N"))
    saved = _round_trip(before.state_arrays())

    after = make(impl, *rules, n=2)
    after.load_state(saved)
    assert kinds(feed(after, (0, 10, 20, "N"))) == [(R, 10)]  # pending counted from minute 0, not restarted
    assert kinds(feed(after, (0, 11, 20, "N"))) == [(U, 11)]
    assert [(r[0], r[1]) for r in tick(after, 16)] == [(R, 15)]  # series 1 silent since minute 0

    again = make(impl, *rules, n=2)
    again.load_state(_round_trip(after.state_arrays()))
    assert kinds(feed(again, (0, 12, 30, "N"))) == [(U, 12)]  # an open alert is not raised twice
    assert tick(again, 17) == []
    assert sorted(again.active()) == [(0, 1), (1, 2)]


def test_set_rules_keeps_state_of_surviving_rules(impl):
    eng = make(impl, Rule(1, "hi", "upper", threshold=10), Rule(2, "stuck", "flatline", duration_s=120), n=1)
    feed(eng, (0, 20), (1, 20))
    eng.set_rules([Rule(1, "hi", "upper", threshold=15), Rule(2, "stuck", "lower", threshold=0),
                   Rule(3, "new", "upper", threshold=100)])
    assert eng.n_bindings == 3
    rows = eng.update_many([0], [T0 + 2 * MIN], [200.0])
    assert sorted((rid, k) for _, rid, k, *_ in rows.rows()) == [(1, U), (3, R)]


def test_load_state_rejects_other_versions():
    eng = make("numba", Rule(1, "hi", "upper", threshold=10))
    state = eng.state_arrays()
    state["version"] = np.array([99])
    with pytest.raises(ValueError):
        eng.load_state(state)


# -- implementations agree --------------------------------------------------------------------------------

_rule_strategy = st.one_of(
    st.builds(lambda t, c, p, k: dict(kind="upper", threshold=t, clear_threshold=t - c, pending_s=p, keep_firing_s=k),
              st.integers(0, 6), st.integers(0, 2), st.sampled_from([0, 60, 120]), st.sampled_from([0, 60, 180])),
    st.builds(lambda t, c, p, k: dict(kind="lower", threshold=t, clear_threshold=t + c, pending_s=p, keep_firing_s=k),
              st.integers(0, 6), st.integers(0, 2), st.sampled_from([0, 60]), st.sampled_from([0, 120])),
    st.builds(lambda lo, w, c, k: dict(kind="range", low=lo, high=lo + w, clear_low=lo + min(c, w / 2),
                                       clear_high=lo + w - min(c, w / 2), keep_firing_s=k),
              st.integers(0, 4), st.integers(0, 4), st.integers(0, 1), st.sampled_from([0, 60])),
    st.builds(lambda t, c, p: dict(kind="rate_of_change", threshold=t, clear_threshold=max(t - c, 0), pending_s=p),
              st.sampled_from([0.5, 1, 2, 4]), st.integers(0, 1), st.sampled_from([0, 60])),
    st.builds(lambda d, tol: dict(kind="flatline", duration_s=d, tolerance=tol),
              st.sampled_from([60, 120, 180]), st.sampled_from([0, 1])),
    st.builds(lambda d, p, k: dict(kind="missing_data", duration_s=d, pending_s=p, keep_firing_s=k),
              st.sampled_from([60, 150]), st.sampled_from([0, 30]), st.sampled_from([0, 60])),
    st.builds(lambda fl, k: dict(kind="data_flag", flags=fl, keep_firing_s=k),
              st.sampled_from(["D", "DFB", "M"]), st.sampled_from([0, 60])),
    st.builds(lambda b: dict(kind="bit", bit=b), st.integers(0, 3)),
    st.builds(lambda lo, hi, h, w, n, k: dict(kind="trend", low=lo, high=hi, horizon_s=h, window_s=w, min_points=n,
                                             keep_firing_s=k),
              st.sampled_from([None, 0, 2]), st.sampled_from([None, 6, 8]), st.sampled_from([60, 600]),
              st.sampled_from([60, 300]), st.sampled_from([2, 3]), st.sampled_from([0, 60]))
    .filter(lambda d: d["low"] is not None or d["high"] is not None),
)
_value = st.one_of(st.integers(-1, 8).map(float), st.just(float("nan")), st.just(2.5))
_reading = st.tuples(st.integers(0, 2), st.integers(0, 24), _value, st.sampled_from("NNNNNMDBF"))
_step = st.one_of(st.lists(_reading, min_size=1, max_size=12), st.integers(0, 30).map(lambda m: ("tick", m)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_params=st.lists(_rule_strategy, min_size=1, max_size=4),
       scoped=st.lists(st.booleans(), min_size=4, max_size=4),
       steps=st.lists(_step, min_size=1, max_size=8))
def test_numba_numpy_python_agree(rule_params, scoped, steps):
    rules = [Rule(i + 1, f"r{i}", device_id="d1" if scoped[i] else None, **p) for i, p in enumerate(rule_params)]
    # 40 series, readings on 3: small batches take the kernel's argsort path, larger ones the counting sort.
    engines = [AlarmEngine(rules, keys(40), impl=impl) for impl in ("numba", "numpy", "python")]
    half = MIN // 2  # readings every 30 s so equal times (duplicates) happen
    for step in steps:
        if isinstance(step, tuple) and step[0] == "tick":
            outs = [e.tick(T0 + step[1] * half) for e in engines]
        else:
            s, m, v, f = zip(*step)
            outs = [e.update_many(list(s), [T0 + x * half for x in m], list(v), list(f)) for e in engines]
        assert outs[0].same_as(outs[1]), "numba != numpy"
        assert outs[0].same_as(outs[2]), "numba != python"
        assert _as_rows(outs[0]) == _as_rows(outs[2])  # same order too
    states = [e.state_arrays() for e in engines]
    for other in states[1:]:
        for name, arr in states[0].items():
            assert np.array_equal(arr, other[name], equal_nan=arr.dtype.kind == "f"), name


def _as_rows(tr: Transitions) -> list:
    return [tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in row) for row in tr.rows()]


@pytest.mark.parametrize("n_series", [5, 1000])  # counting sort, stable argsort
def test_group_by_series(n_series):
    rng = np.random.default_rng(n_series)
    series = rng.integers(-1, 7, 50).astype(np.int32)
    ts = rng.integers(0, 4, 50).astype(np.int64)
    values = np.arange(50, dtype=np.float64)
    flags = np.arange(50, dtype=np.uint8)
    gt, gv, gf, group_series, starts = K.group_by_series(series, ts, values, flags, n_series)
    keep = np.nonzero((series >= 0) & (series < n_series))[0]
    o = keep[np.lexsort((ts[keep], series[keep]))]  # stable: equal times keep arrival order
    assert gt.tolist() == ts[o].tolist() and gv.tolist() == values[o].tolist() and gf.tolist() == flags[o].tolist()
    assert group_series.tolist() == sorted(set(series[keep].tolist()))
    assert np.repeat(group_series, np.diff(starts)).tolist() == series[o].tolist()
