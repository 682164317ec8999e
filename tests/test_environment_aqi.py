"""AQI per HJ 633-2012 / HJ 633-2026: worked examples, every breakpoint, special cases, rounding,
edition choice by timestamp, the numba grid path against the exact path, warnings and the CLI."""
from __future__ import annotations

import json
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wulian.core.environment.aqi import category_for, city_aqi, compute_aqi, iaqi_exact
from wulian.core.environment.aqi_series import (
    POLLUTANTS,
    aqi_many,
    city_indicators,
    daily_aqi,
    heavy_pollution_warnings,
    hourly_aqi,
)
from wulian.core.environment.editions import EDITION_2026_START_NS, aqi_edition_for
from wulian.core.timebase import NS_PER_DAY, NS_PER_HOUR
from wulian.core.environment.tables import (
    BREAKPOINTS,
    EDITION_2012,
    EDITION_2026,
    EDITIONS,
    IAQI_LEVELS,
    INDICATORS,
)
from wulian.cli.commands import aqi as aqi_cmd
from tests.cli import run_command as _cli
from tests.data import load_json


def _examples() -> list[dict]:
    return load_json("standards/aqi_examples.json")["examples"]


def _report(example: dict) -> str:
    return "daily" if example["report"] == "daily" else "hourly"


@pytest.mark.parametrize("example", _examples(), ids=lambda e: e["id"])
def test_worked_example_reproduces(example):
    result = compute_aqi(example["inputs"], example["edition"], _report(example))
    published = example["expected_published"]
    if example["exact"]:
        assert result.aqi == published["aqi"]
    else:
        assert published["aqi"] - 1 <= result.aqi <= published["aqi"]
    for key, value in published.get("iaqi", {}).items():
        assert result.iaqi[key] == value, key
    if "primary" in published:
        assert set(result.primary) == set(published["primary"])
    if "category_zh" in published:
        assert result.category.category_zh == published["category_zh"]
    if "level_zh" in published:
        assert result.category.level_zh == published["level_zh"]
    assert result.edition == example["edition"]


def test_examples_include_both_editions_and_reports():
    exact = [e for e in _examples() if e["exact"]]
    assert {e["edition"] for e in exact} == {EDITION_2012, EDITION_2026}
    assert {_report(e) for e in exact} == {"hourly", "daily"}


@pytest.mark.parametrize("example", _examples(), ids=lambda e: e["id"])
def test_collector_recomputation_agrees_except_float_artifacts(example):
    """The collector's per-indicator IAQIs agree with ours, except where they came from float arithmetic:
    an exact integer quotient (e.g. 50/35 x 35) that floats pushed just above the integer and ceil to +1."""
    result = compute_aqi(example["inputs"], example["edition"], _report(example))
    for key, value in example["recomputed_by_collector"]["iaqi"].items():
        if result.iaqi[key] == value:
            continue
        assert value == result.iaqi[key] + 1, key
        bp = BREAKPOINTS[example["edition"]][key]
        c = Fraction(Decimal(str(example["inputs"][key])))
        k = next(i for i in range(1, len(bp)) if c <= bp[i])
        slope = Fraction(IAQI_LEVELS[k] - IAQI_LEVELS[k - 1], bp[k] - bp[k - 1])
        exact = slope * (c - bp[k - 1]) + IAQI_LEVELS[k - 1]
        assert exact.denominator == 1 and exact == result.iaqi[key]


def _boundaries():
    for edition in EDITIONS:
        for key in INDICATORS:
            for k, bp in enumerate(BREAKPOINTS[edition][key]):
                if bp is not None:
                    yield edition, key, k, bp


@pytest.mark.parametrize("edition,key,k,bp", list(_boundaries()))
def test_every_breakpoint_boundary(edition, key, k, bp):
    """At a breakpoint the IAQI is the level exactly; just above it the next segment starts and rounds up."""
    assert iaqi_exact(key, bp, edition) == IAQI_LEVELS[k]
    above = Decimal(bp) + (Decimal("0.1") if key.startswith("CO_") else Decimal(1))
    nxt = BREAKPOINTS[edition][key][k + 1] if k + 1 < 8 else None
    got = iaqi_exact(key, above, edition)
    if nxt is not None:
        assert IAQI_LEVELS[k] < got <= IAQI_LEVELS[k + 1]
    elif key == "SO2_1H":
        assert got == (200 if edition == EDITION_2026 else None)
    elif key == "O3_8H":
        assert got == (300 if edition == EDITION_2026 else None)
    else:
        assert got == 500
    if k > 0:  # just below: still inside the lower segment
        below = Decimal(bp) - (Decimal("0.1") if key.startswith("CO_") else Decimal(1))
        assert IAQI_LEVELS[k - 1] < iaqi_exact(key, below, edition) <= IAQI_LEVELS[k]


def test_pm_columns_differ_between_editions():
    assert iaqi_exact("PM25_24H", 75, EDITION_2012) == 100
    assert iaqi_exact("PM25_24H", 75, EDITION_2026) == 114
    assert iaqi_exact("PM10_24H", 150, EDITION_2012) == 100
    assert iaqi_exact("PM10_24H", 150, EDITION_2026) == 112
    assert iaqi_exact("PM25_24H", 60, EDITION_2026) == 100


def test_round_up_not_nearest():
    # 珠海吉大 2013: PM2.5 60 -> 81.25 -> 82; 林芝 2021: O3 8-h 30 -> 15 exactly; O3 1-h 30 -> 9.375 -> 10.
    assert iaqi_exact("PM25_24H", 60, EDITION_2012) == 82
    assert iaqi_exact("O3_1H", 30, EDITION_2012) == 10
    assert iaqi_exact("PM25_24H", 21, EDITION_2012) == 30  # 30 exactly: no float push to 31
    assert iaqi_exact("PM25_24H", 35, EDITION_2012) == 50


def test_2026_rounds_concentration_half_even_first():
    # 60.5 -> 60 (even) -> IAQI 100; 61.5 -> 62 -> 100 + 50/55*2 = 101.8 -> 102.
    assert iaqi_exact("PM25_24H", "60.5", EDITION_2026) == 100
    assert iaqi_exact("PM25_24H", "61.5", EDITION_2026) == 102
    assert iaqi_exact("PM25_24H", "60.51", EDITION_2026) == iaqi_exact("PM25_24H", 61, EDITION_2026)
    # CO to 0.1 mg/m3: 2.25 -> 2.2, 2.35 -> 2.4; 2012 takes the value as is.
    assert iaqi_exact("CO_24H", "2.25", EDITION_2026) == iaqi_exact("CO_24H", "2.2", EDITION_2026) == 55
    assert iaqi_exact("CO_24H", "2.35", EDITION_2026) == 60
    assert iaqi_exact("CO_24H", "2.25", EDITION_2012) == 57
    assert iaqi_exact("CO_24H", 2.45, EDITION_2026) == 60  # float 2.45 read as the decimal 2.45 -> 2.4


def test_so2_1h_above_800():
    r26 = compute_aqi({"SO2_1H": 801, "SO2_24H": 100}, EDITION_2026, "hourly")
    assert r26.iaqi["SO2_1H"] == 200 and r26.aqi == 200
    r12 = compute_aqi({"SO2_1H": 801, "SO2_24H": 1000}, EDITION_2012, "hourly")
    assert r12.iaqi["SO2_1H"] is None
    assert r12.iaqi["SO2_24H"] == 225  # 200 + 100/800*200 = 225
    assert r12.aqi == 225 and r12.primary == ("SO2",)
    no24 = compute_aqi({"SO2_1H": 801, "PM25_24H": 10}, EDITION_2012, "hourly")
    assert "SO2_24H" in no24.missing and no24.aqi == iaqi_exact("PM25_24H", 10, EDITION_2012)
    assert compute_aqi({"SO2_1H": 800}, EDITION_2012).iaqi["SO2_1H"] == 200


def test_o3_8h_above_800():
    r26 = compute_aqi({"O3_8H": 801}, EDITION_2026, "daily")
    assert r26.iaqi["O3_8H"] == 300 and r26.aqi == 300 and r26.primary == ("O3_8H",)
    r12 = compute_aqi({"O3_8H": 801, "O3_1H": 900}, EDITION_2012, "daily")
    assert r12.iaqi["O3_8H"] is None
    assert r12.aqi == iaqi_exact("O3_1H", 900, EDITION_2012) == 350
    assert r12.primary == ("O3_1H",)


def test_primary_pollutant_rules():
    at50 = compute_aqi({"PM10_24H": 50, "PM25_24H": 35}, EDITION_2012, "daily")
    assert at50.aqi == 50 and at50.primary == ()
    tie = compute_aqi({"PM10_24H": 250, "PM25_24H": 115}, EDITION_2012, "daily")
    assert tie.aqi == 150 and set(tie.primary) == {"PM10", "PM2.5"}


@pytest.mark.parametrize(
    "aqi,level,category,hexcode",
    [(0, 1, "优", "#00E400"), (50, 1, "优", "#00E400"), (51, 2, "良", "#FFFF00"), (100, 2, "良", "#FFFF00"),
     (101, 3, "轻度污染", "#FF7E00"), (150, 3, "轻度污染", "#FF7E00"), (151, 4, "中度污染", "#FF0000"),
     (200, 4, "中度污染", "#FF0000"), (201, 5, "重度污染", "#99004C"), (300, 5, "重度污染", "#99004C"),
     (301, 6, "严重污染", "#7E0023"), (500, 6, "严重污染", "#7E0023")],
)
def test_categories(aqi, level, category, hexcode):
    cat = category_for(aqi)
    assert (cat.level, cat.category_zh, cat.hex) == (level, category, hexcode)


def test_report_membership_and_missing_rule():
    # O3_1H is not a 2026 daily indicator: computed but not counted.
    r = compute_aqi({"O3_1H": 1000, "PM25_24H": 10}, EDITION_2026, "daily")
    assert r.iaqi["O3_1H"] == 400 and r.aqi == iaqi_exact("PM25_24H", 10, EDITION_2026)
    # 2026 §5.3.1: incomplete and AQI <= 100 -> not publishable; above 100 -> publishable.
    assert not compute_aqi({"PM25_24H": 59}, EDITION_2026).publishable
    assert compute_aqi({"PM25_24H": 100}, EDITION_2026).publishable
    assert compute_aqi({"PM25_24H": 59}, EDITION_2012).publishable
    full = {"SO2_1H": 5, "NO2_1H": 5, "CO_1H": 0.5, "O3_1H": 5, "PM10_24H": 5, "PM25_24H": 5}
    assert compute_aqi(full, EDITION_2026).publishable and compute_aqi(full, EDITION_2026).missing == ()
    assert compute_aqi({"PM25_24H": 80}, EDITION_2012).exceeding == ("PM2.5",)
    assert compute_aqi({"PM25_24H": 80}, EDITION_2026).exceeding == ()
    with pytest.raises(ValueError):
        compute_aqi({"PM2.5": 3}, EDITION_2012)


def test_edition_by_timestamp():
    assert aqi_edition_for(EDITION_2026_START_NS - 1) == EDITION_2012
    assert aqi_edition_for(EDITION_2026_START_NS) == EDITION_2026
    # 2026-03-01 00:00 China time is 2026-02-28 16:00 UTC
    assert EDITION_2026_START_NS == 1_772_294_400 * 10**9


def test_grid_kernel_matches_exact_path():
    rng = np.random.default_rng(7)
    n = 3000
    scale = np.array([1000, 3000, 4000, 1200, 160, 70, 1300, 1000, 700, 600], dtype=float)
    conc = np.round(rng.uniform(0, 1, (10, 1, n)) * scale[:, None, None], 1)
    conc[:, :, :40] = np.array([bp or 0 for bp in BREAKPOINTS[EDITION_2026]["PM25_24H"]] * 5)[:40]
    conc[rng.random(conc.shape) < 0.05] = np.nan
    starts = np.where(np.arange(n) % 2 == 0, EDITION_2026_START_NS - NS_PER_HOUR, EDITION_2026_START_NS)
    for report in ("hourly", "daily"):
        grid = aqi_many(conc, starts, report)
        for j in range(n):
            edition = EDITIONS[int(grid.edition[j])]
            assert edition == aqi_edition_for(int(starts[j]))
            vals = {k: float(conc[i, 0, j]) for i, k in enumerate(INDICATORS) if np.isfinite(conc[i, 0, j])}
            exact = compute_aqi(vals, edition, report)
            assert grid.aqi[0, j] == (-1 if exact.aqi is None else exact.aqi)
            assert set(grid.primary(0, j)) == set(exact.primary)
            assert bool(grid.publishable[0, j]) == exact.publishable


def _hourly_fields(n_st: int, n_h: int, seed: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    levels = {"SO2": 10, "NO2": 40, "CO": 0.8, "O3": 80, "PM10": 60, "PM2.5": 35}
    return {p: rng.uniform(0.5, 1.5, (n_st, n_h)) * v for p, v in levels.items()}


def test_hourly_aqi_grid_and_edition_switch():
    t0 = EDITION_2026_START_NS - 2 * NS_PER_DAY
    f = _hourly_fields(3, 96)
    f["PM2.5"][:] = 75.0
    grid = hourly_aqi(f, t0)
    assert list(grid.edition[:48]) == [0] * 48 and list(grid.edition[48:]) == [1] * 48
    assert (grid.iaqi[INDICATORS.index("PM25_24H"), :, :48] == 100).all()  # 2012 column
    assert (grid.iaqi[INDICATORS.index("PM25_24H"), :, 48:] == 114).all()  # 2026 column
    # 2012 hourly carries O3 8-h once 6 valid hours exist; 2026 does not use it.
    assert grid.iaqi[INDICATORS.index("O3_8H"), 0, 4] == -1 and grid.iaqi[INDICATORS.index("O3_8H"), 0, 10] > 0
    j = 60
    vals = {"SO2_1H": f["SO2"][1, j], "NO2_1H": f["NO2"][1, j], "CO_1H": f["CO"][1, j], "O3_1H": f["O3"][1, j],
            "PM10_24H": f["PM10"][1, j], "PM25_24H": f["PM2.5"][1, j]}
    assert grid.aqi[1, j] == compute_aqi(vals, EDITION_2026, "hourly").aqi


def test_daily_aqi_validity_and_o3_8h():
    t0 = EDITION_2026_START_NS  # a China midnight
    f = {p: np.full((2, 48), 10.0) for p in POLLUTANTS}
    f["O3"][0, 0:24] = 0.0
    f["O3"][0, 10:18] = 200.0  # one 8-h window inside day 0 at 200 -> max 8-h 200
    f["PM2.5"][1, 0:5] = np.nan  # 19 valid hours on day 0 at station 1 -> PM2.5 daily invalid
    grid = daily_aqi(f, t0)
    assert grid.report == "daily" and list(grid.edition) == [1, 1]
    assert grid.iaqi[INDICATORS.index("O3_8H"), 0, 0] == iaqi_exact("O3_8H", 200, EDITION_2026)
    assert grid.iaqi[INDICATORS.index("PM25_24H"), 1, 0] == -1
    assert grid.n_missing[1, 0] == 1 and grid.n_missing[1, 1] == 0


def test_heavy_pollution_warning_needs_consecutive_hours():
    t0 = EDITION_2026_START_NS
    f = {p: np.full((2, 30), 10.0) for p in POLLUTANTS}
    f["PM2.5"][0, 5:11] = 160.0  # 6 h at IAQI > 200
    f["PM2.5"][1, 5:9] = 160.0  # 4 h only
    grid = hourly_aqi(f, t0)
    eps = heavy_pollution_warnings(grid, ["A", "B"], min_hours=5)
    assert len(eps) == 1
    e = eps[0]
    assert (e.subject, e.periods, e.start_ns, e.end_ns) == ("A", 6, t0 + 5 * NS_PER_HOUR, t0 + 11 * NS_PER_HOUR)
    assert e.peak == iaqi_exact("PM25_24H", 160, EDITION_2026) and "HJ633-2026" in e.basis


def test_city_aqi_uses_mean_concentrations():
    stations = [{"PM25_24H": 70, "PM10_24H": 90}, {"PM25_24H": 80, "PM10_24H": None}]
    means, result = city_aqi(stations, EDITION_2012, "daily")
    assert means["PM25_24H"] == 75 and means["PM10_24H"] == 90
    assert result.aqi == 100
    ind = np.full((10, 3, 1), np.nan)
    ind[INDICATORS.index("PM25_24H"), :, 0] = [70, 80, 10]
    city = city_indicators(ind, np.array([0, 0, 1]), 2)
    assert city[INDICATORS.index("PM25_24H"), :, 0].tolist() == [75.0, 10.0]


def test_cli_aqi_json(capsys):
    rc = _cli(aqi_cmd, ["aqi", "--edition", "2026", "--json", "PM25_24H=75", "PM10_24H=150",
                        "SO2_1H=500", "NO2_1H=200", "CO_1H=10", "O3_1H=200"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["aqi"] == 114 and out["primary"] == ["PM2.5"] and out["category_zh"] == "轻度污染"
    assert out["iaqi"]["PM10_24H"] == 112 and out["edition"] == EDITION_2026


def test_cli_aqi_text_and_errors(capsys):
    assert _cli(aqi_cmd, ["aqi", "--edition", "2012", "--daily", "SO2_24H=11", "NO2_24H=23",
                          "CO_24H=0.6", "PM10_24H=27", "PM25_24H=21", "O3_8H=87"]) == 0
    text = capsys.readouterr().out
    assert "AQI 44" in text and "优" in text and "HJ633-2012 daily" in text
    assert _cli(aqi_cmd, ["aqi", "--edition", "2012", "PM2.5=3"]) == 2
    assert _cli(aqi_cmd, ["aqi", "--at", "2026-03-01T00:00", "PM25_24H=75"]) == 0
    assert "AQI 114" in capsys.readouterr().out


def test_pm_24h_moving_mode_only_in_2012_hours():
    t0 = EDITION_2026_START_NS - 2 * NS_PER_DAY
    f = _hourly_fields(1, 96)
    f["PM2.5"][0, :] = 10.0
    f["PM2.5"][0, 47] = 300.0  # a single 1-h spike in the last 2012 hour, and one in the first 2026 hour
    f["PM2.5"][0, 48] = 300.0
    grid = hourly_aqi(f, t0, pm_2012="24h")
    pm = INDICATORS.index("PM25_24H")
    moving = (23 * 10.0 + 300.0) / 24
    assert grid.iaqi[pm, 0, 47] == iaqi_exact("PM25_24H", moving, EDITION_2012)  # 24-h moving mean
    assert grid.iaqi[pm, 0, 48] == iaqi_exact("PM25_24H", 300, EDITION_2026)  # 2026: the 1-h value


def test_grid_rows_name_their_edition():
    t0 = EDITION_2026_START_NS - NS_PER_HOUR
    f = {p: np.full((1, 2), 10.0) for p in POLLUTANTS}
    f["CO"][:] = 1.0
    f["PM2.5"][:] = 75.0
    rows = hourly_aqi(f, t0).rows(["st-1"])
    assert [(r["edition"], r["aqi"], r["category_zh"], r["primary"]) for r in rows] == [
        (EDITION_2012, 100, "良", ["PM2.5"]), (EDITION_2026, 114, "轻度污染", ["PM2.5"])]
    assert rows[0]["iaqi"]["PM25_24H"] == 100 and rows[1]["publishable"]


def test_float_noise_in_means_is_ignored_by_both_paths():
    noisy = 75.00000000000001
    assert iaqi_exact("PM25_24H", noisy, EDITION_2012) == 100
    assert iaqi_exact("PM25_24H", "75.00000000000001", EDITION_2012) == 101  # a decimal string is exact
    grid = aqi_many(np.array([[[np.nan]]] * 9 + [[[noisy]]]), np.array([0]), "hourly")
    assert grid.aqi[0, 0] == 100


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    values=st.lists(st.one_of(st.none(), st.decimals(min_value=0, max_value=4000, places=3)), min_size=10,
                    max_size=10),
    edition=st.sampled_from([0, 1]),
    report=st.sampled_from(["hourly", "daily"]),
)
def test_property_kernel_equals_exact(values, edition, report):
    conc = np.array([[[np.nan if v is None else float(v)]] for v in values])
    start = EDITION_2026_START_NS if edition else EDITION_2026_START_NS - NS_PER_HOUR
    grid = aqi_many(conc, np.array([start]), report)
    exact = compute_aqi({k: v for k, v in zip(INDICATORS, values) if v is not None}, EDITIONS[edition], report)
    assert grid.aqi[0, 0] == (-1 if exact.aqi is None else exact.aqi)
    assert set(grid.primary(0, 0)) == set(exact.primary)
    for i, k in enumerate(INDICATORS):
        if values[i] is not None:
            code = iaqi_exact(k, values[i], EDITIONS[edition])
            assert grid.iaqi[i, 0, 0] == (-2 if code is None else code)
