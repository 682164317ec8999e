"""Lianjiang surface-water classes (GB 3838-2002) and station targets.

Single-factor evaluation (GB 3838 §5.1; 地表水环境质量评价办法(试行) 环办[2011]22号): each item gets the
best class whose limit it meets (a value equal to a limit belongs to that class; where two classes share
a limit the better one wins), worse than V is 劣V, pH outside 6~9 is 劣V and inside is I; the sample,
hour or day takes the worst item class. By default the 21 routine items are evaluated (no water
temperature, TN, fecal coliform); lakes and reservoirs read TP from their own column.
Hourly and daily classes are the classes of the hourly/daily mean concentrations.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

import numpy as np

from wulian.core.environment.aqi import to_decimal
from wulian.core.environment.episodes import Episode, episodes_from_grid
from wulian.core.environment.tables import (
    ROUTINE_WATER_ITEMS,
    TP_LAKE_LIMITS,
    WATER_CLASSES,
    WATER_ITEMS,
    WATER_QUALITY_LABEL,
)
from wulian.core.kernels.water_class import CMP_GE, CMP_LE, CMP_RANGE, classify_matrix

_CMP = {"le": CMP_LE, "ge": CMP_GE, "range": CMP_RANGE}
# Heavy metals and cyanide come first among main pollutants when they exceed (2011 method).
_PRIORITY_ITEMS = frozenset({"CN", "Hg", "Cd", "Cr6", "Pb", "As", "Cu", "Zn", "Se"})


def class_name(number: int) -> str | None:
    """1..6 -> I..劣V; 0 -> None (not evaluated)."""
    return WATER_CLASSES[number - 1] if number else None


def class_number(name: str) -> int:
    """I..V / 劣V (also "V+" / "劣Ⅴ") -> 1..6."""
    name = name.strip().replace("Ⅴ", "V").replace("Ⅳ", "IV").replace("Ⅲ", "III").replace("Ⅱ", "II")
    name = name.replace("Ⅰ", "I")
    if name in ("V+", "worse_than_V"):
        name = "劣V"
    return WATER_CLASSES.index(name) + 1


def _limits(key: str, lake: bool) -> tuple[str, ...]:
    return TP_LAKE_LIMITS if (key == "TP" and lake) else WATER_ITEMS[key][3]


def item_class_exact(key: str, value: object, lake: bool = False) -> int:
    """Class number (1..6) of one item value, compared in ``Decimal``; 0 if missing."""
    if key not in WATER_ITEMS:
        raise ValueError(f"unknown water item {key!r}; known: {', '.join(WATER_ITEMS)}")
    c = to_decimal(value)
    if c is None:
        return 0
    cmp = WATER_ITEMS[key][2]
    lim = [Decimal(x) for x in _limits(key, lake)]
    if cmp == "range":
        return 1 if lim[0] <= c <= lim[1] else 6
    for k, limit in enumerate(lim):
        if (cmp == "le" and c <= limit) or (cmp == "ge" and c >= limit):
            return k + 1
    return 6


@dataclass(frozen=True, slots=True)
class WaterClassResult:
    """Class of one sample: per item and overall, with the 2011 method's qualitative label."""

    item_class: dict[str, str]
    overall: str | None
    quality_zh: str | None
    exceedance_multiple: dict[str, float]  # (C - S_III) / S_III for items above class III (not pH/DO)
    main_pollutants: tuple[str, ...]  # only when worse than III, at most 3
    lake: bool

    def as_dict(self) -> dict:
        return {
            "item_class": dict(self.item_class),
            "overall": self.overall,
            "quality_zh": self.quality_zh,
            "exceedance_multiple": dict(self.exceedance_multiple),
            "main_pollutants": list(self.main_pollutants),
            "water_body": "lake/reservoir" if self.lake else "river",
        }


def classify_sample(values: Mapping[str, object], lake: bool = False) -> WaterClassResult:
    """Single-factor class of one sample; every given item is classed (routine or not) and counts."""
    classes = {k: item_class_exact(k, v, lake) for k, v in values.items()}
    classes = {k: c for k, c in classes.items() if c}
    worst = max(classes.values(), default=0)
    mult: dict[str, float] = {}
    for k, c in classes.items():
        if WATER_ITEMS[k][2] == "le" and c > 3:
            s3 = Decimal(_limits(k, lake)[2])
            mult[k] = float(round((to_decimal(values[k]) - s3) / s3, 2))
    main: tuple[str, ...] = ()
    if worst > 3:
        ranked = sorted(
            (k for k, c in classes.items() if c > 3),
            key=lambda k: (k not in _PRIORITY_ITEMS, -classes[k], -mult.get(k, 0.0)),
        )
        main = tuple(ranked[:3])
    name = class_name(worst)
    return WaterClassResult(
        item_class={k: class_name(c) for k, c in classes.items()},
        overall=name,
        quality_zh=WATER_QUALITY_LABEL[name] if name else None,
        exceedance_multiple=mult,
        main_pollutants=main,
        lake=lake,
    )


@lru_cache(maxsize=None)
def water_arrays(items: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Comparison codes (n_items,) and limits (2 [river, lake], n_items, 5) for the kernel."""
    cmp = np.array([_CMP[WATER_ITEMS[k][2]] for k in items], dtype=np.int8)
    lim = np.zeros((2, len(items), 5))
    for j, k in enumerate(items):
        for col, lake in enumerate((False, True)):
            raw = [float(x) for x in _limits(k, lake)]
            lim[col, j, : len(raw)] = raw
    return cmp, lim


def classify_many(
    values: np.ndarray, items: Sequence[str] = ROUTINE_WATER_ITEMS, lake: np.ndarray | bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Classes for a matrix of samples (n, n_items) in the order of ``items`` (NaN = not measured).

    Returns (item classes int8 (n, n_items), overall int8 (n,)), numbers 1..6, 0 = nothing evaluated.
    Float comparison: a value parsed from the same text as a limit compares equal to it.
    """
    items = tuple(items)
    cmp, lim = water_arrays(items)
    values = np.ascontiguousarray(values, dtype=np.float64)
    lake_arr = np.empty(values.shape[0], np.bool_)  # always a fresh writable array: one kernel signature
    lake_arr[:] = lake
    return classify_matrix(values, lake_arr, cmp, lim)


def classify_grid(
    means: Mapping[str, np.ndarray], lake_station: np.ndarray | bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Station x period classes from per-item mean grids (n_stations, n_periods), e.g. hourly or daily
    means. Means are first rounded to 1e-9 mg/L so float noise (mean of 0.1 and 0.2 =
    0.15000000000000002) does not push a value at a limit into the worse class. Returns (item classes
    int8 (n_items, n_st, n_per) in the order of ``means``, overall int8 (n_st, n_per))."""
    items = tuple(means)
    first = np.asarray(means[items[0]])
    n_st, n_per = first.shape
    mat = np.stack([np.asarray(means[k], dtype=np.float64).reshape(-1) for k in items], axis=1).round(9)
    lake = np.repeat(np.broadcast_to(np.asarray(lake_station, dtype=np.bool_), (n_st,)), n_per)
    cls, worst = classify_many(mat, items, lake)
    return cls.T.reshape(len(items), n_st, n_per), worst.reshape(n_st, n_per)


def below_target_episodes(
    overall: np.ndarray,
    target: Sequence[str] | np.ndarray,
    stations: list[str],
    t0_ns: int,
    step_ns: int,
    min_periods: int,
) -> list[Episode]:
    """Episodes where a station's class is worse than its target class for ``min_periods`` consecutive
    periods (e.g. 6 hours). Unevaluated periods (0) end an episode. ``peak`` is the worst class number."""
    tgt = np.array([t if isinstance(t, (int, np.integer)) else class_number(t) for t in target], dtype=np.int8)
    cond = overall > tgt[:, None]
    return episodes_from_grid(
        cond, overall.astype(np.float64), t0_ns, step_ns, rule="water_below_target", subjects=list(stations),
        items=[""] * len(stations), thresholds=tgt.astype(np.float64), min_periods=min_periods,
        basis="GB3838-2002 single-factor class",
    )
