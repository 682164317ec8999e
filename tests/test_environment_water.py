"""GB 3838-2002 classes: every item at every limit (river and lake TP), just beyond each limit, the
worst-item rule, the kernel against the exact path, target episodes and the CLI."""
from __future__ import annotations

import json
from decimal import Decimal

import numpy as np
import pytest

from wulian.core.environment.tables import ROUTINE_WATER_ITEMS, TP_LAKE_LIMITS, WATER_CLASSES, WATER_ITEMS
from wulian.core.environment.water import (
    below_target_episodes,
    class_name,
    class_number,
    classify_grid,
    classify_many,
    classify_sample,
    item_class_exact,
)
from wulian.cli.commands import water_class as water_cmd
from tests.cli import run_command as _cli



HOUR = 3_600_000_000_000


def _limit_cases():
    for key, (_, _, cmp, limits) in WATER_ITEMS.items():
        if cmp == "range":
            continue
        for lake in (False, True):
            if lake and key != "TP":
                continue
            lims = TP_LAKE_LIMITS if lake else limits
            for k in range(5):
                yield key, lake, k, lims


@pytest.mark.parametrize("key,lake,k,lims", list(_limit_cases()))
def test_class_at_and_beyond_each_limit(key, lake, k, lims):
    cmp = WATER_ITEMS[key][2]
    lim = [Decimal(x) for x in lims]
    # At the limit: the best class sharing that limit (equal limits -> the better class).
    best = next(j for j in range(5) if lim[j] == lim[k]) + 1
    assert item_class_exact(key, lims[k], lake) == best
    # Just beyond it (worse side): the next class with a different limit, or 劣V past V.
    step = lim[k] / 1000
    beyond = lim[k] + step if cmp == "le" else lim[k] - step
    worse = next((j + 1 for j in range(k + 1, 5) if lim[j] != lim[k]), 6)
    assert item_class_exact(key, beyond, lake) == worse
    # The float kernel agrees at the limit and beyond it.
    for value, expected in ((float(lims[k]), best), (float(beyond), worse)):
        cls, overall = classify_many(np.array([[value]]), (key,), lake)
        assert cls[0, 0] == expected and overall[0] == expected


def test_tp_river_and_lake_columns():
    assert class_name(item_class_exact("TP", "0.05", lake=False)) == "II"
    assert class_name(item_class_exact("TP", "0.05", lake=True)) == "III"
    assert class_name(item_class_exact("TP", "0.2", lake=True)) == "V"
    assert class_name(item_class_exact("TP", "0.21", lake=True)) == "劣V"
    assert class_name(item_class_exact("TP", "0.4", lake=False)) == "V"


@pytest.mark.parametrize("ph,expected", [("6", "I"), ("9", "I"), ("7.5", "I"), ("5.99", "劣V"), ("9.01", "劣V")])
def test_ph_range(ph, expected):
    assert class_name(item_class_exact("pH", ph)) == expected


def test_do_is_greater_is_better():
    assert [class_name(item_class_exact("DO", v)) for v in ("8", "7.5", "7.4", "6", "5", "3", "2", "1.99")] == [
        "I", "I", "II", "II", "III", "IV", "V", "劣V"]


def test_worst_item_sets_the_class_and_main_pollutants():
    r = classify_sample({"pH": 7.1, "DO": 6.5, "CODMn": 5.0, "NH3_N": 1.6, "TP": 0.5, "Cd": 0.006})
    assert r.item_class == {"pH": "I", "DO": "II", "CODMn": "III", "NH3_N": "V", "TP": "劣V", "Cd": "V"}
    assert r.overall == "劣V" and r.quality_zh == "重度污染"
    assert r.exceedance_multiple["TP"] == 1.5 and r.exceedance_multiple["NH3_N"] == 0.6
    assert r.main_pollutants == ("Cd", "TP", "NH3_N")  # heavy metal first, then worst class
    good = classify_sample({"DO": 7.6, "CODMn": 3.9, "NH3_N": 0.4})
    assert good.overall == "II" and good.main_pollutants == () and good.quality_zh == "优"


def test_class_number_names():
    assert [class_number(n) for n in WATER_CLASSES] == [1, 2, 3, 4, 5, 6]
    assert class_number("Ⅳ") == 4 and class_number("劣Ⅴ") == 6
    assert class_name(0) is None


def test_kernel_matches_exact_on_random_samples():
    rng = np.random.default_rng(11)
    items = ROUTINE_WATER_ITEMS
    scale = np.array([float(WATER_ITEMS[k][3][-1]) for k in items]) * 1.3
    vals = np.round(rng.uniform(0, 1, (500, len(items))) * scale, 4)
    vals[rng.random(vals.shape) < 0.1] = np.nan
    lake = rng.random(500) < 0.3
    cls, overall = classify_many(vals, items, lake)
    for i in range(0, 500, 7):
        sample = {k: repr(float(vals[i, j])) for j, k in enumerate(items) if np.isfinite(vals[i, j])}
        r = classify_sample(sample, lake=bool(lake[i]))
        assert class_name(int(overall[i])) == r.overall
        for j, k in enumerate(items):
            assert class_name(int(cls[i, j])) == r.item_class.get(k)


def test_grid_and_target_episodes():
    n_h = 12
    means = {"DO": np.full((2, n_h), 6.5), "NH3_N": np.full((2, n_h), 0.4)}
    means["NH3_N"][0, 3:9] = 1.2  # IV for 6 hours at station A
    means["NH3_N"][1, 3:5] = 1.2  # 2 hours only at station B
    means["DO"][1, 8] = np.nan  # a missing item does not stop the class from the others
    cls, overall = classify_grid(means)
    assert cls.shape == (2, 2, n_h) and overall[0, 3] == 4 and overall[0, 0] == 2 and overall[1, 8] == 2
    eps = below_target_episodes(overall, ["III", "III"], ["A", "B"], 0, HOUR, min_periods=4)
    got = [(e.subject, e.start_ns, e.end_ns, e.peak, e.periods) for e in eps]
    assert got == [("A", 3 * HOUR, 9 * HOUR, 4.0, 6)]
    assert below_target_episodes(overall, [2, 2], ["A", "B"], 0, HOUR, 2)[1].subject == "B"
    lake_cls, _ = classify_grid({"TP": np.full((2, 1), 0.05)}, lake_station=np.array([False, True]))
    assert lake_cls[0, :, 0].tolist() == [2, 3]


def test_cli_water_class(capsys):
    assert _cli(water_cmd, ["water-class", "--json", "DO=4", "CODMn=6", "NH3_N=2.1", "TP=0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["item_class"] == {"DO": "IV", "CODMn": "III", "NH3_N": "劣V", "TP": "II"}
    assert out["overall"] == "劣V"
    assert _cli(water_cmd, ["water-class", "--lake", "TP=0.05"]) == 0
    assert "overall: III" in capsys.readouterr().out
    assert _cli(water_cmd, ["water-class", "XX=1"]) == 2
    assert _cli(water_cmd, ["water-class", "DO=abc"]) == 2


def test_hj212_water_codes_map_to_items():
    from wulian.core.environment.codes import AIR_CODES, water_item

    assert water_item("w21003-Avg") == ("NH3_N", 1.0)
    assert water_item("w20111-Rtd") == ("Hg", 1e-3)  # µg/L -> mg/L
    assert water_item("a21026-Rtd") is None
    assert all(item in WATER_ITEMS for item, _ in (water_item(f"{c}-Avg") for c in
                                                   ("w01001", "w01009", "w01019", "w21011", "w20120")))
    assert sorted(AIR_CODES.values()) == sorted(["SO2", "NO2", "CO", "O3", "PM10", "PM2.5"])


def test_grid_means_float_noise_does_not_change_class():
    mean = np.mean([0.1, 0.2])  # 0.15000000000000002
    assert mean > 0.15
    _, overall = classify_grid({"NH3_N": np.array([[mean]])})
    assert overall[0, 0] == 1
    _, hg = classify_grid({"Hg": np.array([[0.0000505]])})  # still above the 0.00005 limit
    assert hg[0, 0] == 3
