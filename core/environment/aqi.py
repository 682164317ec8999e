"""Exact AQI for one set of concentrations (HJ 633-2012 and HJ 633-2026), in ``Decimal``/``Fraction``.

This is the reference path: the CLI, the API's single-value checks and the tests use it; the numba
kernels in ``core.kernels.aqi_kernels`` reproduce it on integer micro-units for whole grids.

Rules applied (clauses of the edition in force):
* IAQI by linear interpolation inside the breakpoint segment containing C (segments share their end
  points, so a breakpoint gives the same IAQI from either side), rounded UP to an integer
  (2012 §6.2 "全部进位取整数", 2026 §4.2.6 "全部向上进位取整数"). Exact rationals, never floats:
  50/35*35 in floats is 50.000000000000007 and would round up to 51.
* 2026 only: the concentration is first rounded per GB/T 8170 (round half to even): integers for
  µg/m³, 0.1 for CO in mg/m³ (2026 §4.2.6).
* SO2 1-h above 800: 2012 - the 1-h IAQI is not computed, the SO2 IAQI comes from the 24-h mean;
  2026 - IAQI 200. O3 8-h above 800: 2012 - the 8-h IAQI is not computed, O3 is reported through its
  1-h IAQI; 2026 - IAQI 300.
* Above the top breakpoint of any other column neither edition says what to do; 500 is reported,
  as the national platform did (哈尔滨 2013-10-21: PM2.5 719 -> 500).
* Primary pollutant(s) only when AQI > 50: every indicator tied at the maximum IAQI.
* Missing indicators (2026 §5.3.1): AQI, primary pollutant and level come from the others and are
  publishable only when that AQI is above 100. 2012 shows missing items as NA and computes the rest.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from fractions import Fraction

from wulian.core.environment.tables import (
    AQI_CATEGORIES,
    BREAKPOINTS,
    EDITION_2012,
    EDITION_2026,
    EDITIONS,
    IAQI_LEVELS,
    INDICATORS,
    POLLUTANT_LABEL,
    REPORT_INDICATORS,
)

REPORTS = ("hourly", "daily")
_TOP_IAQI = 500
_MICRO = Decimal("0.000001")


@dataclass(frozen=True, slots=True)
class AqiCategory:
    """Level, category and colour of an AQI value (HJ 633 Table 2 / Appendix A, same in both editions)."""

    level: int
    level_zh: str
    category_zh: str
    color_zh: str
    rgb: tuple[int, int, int]
    hex: str


@dataclass(frozen=True, slots=True)
class AqiResult:
    """One AQI evaluation; ``edition`` and ``report`` say which rule set produced it."""

    edition: str
    report: str
    iaqi: dict[str, int | None]  # every indicator given; None = not computed (special case / invalid)
    used: tuple[str, ...]  # indicators that entered max(IAQI)
    aqi: int | None
    primary: tuple[str, ...]  # pollutant labels (PM2.5, PM10, SO2, NO2, CO, O3_1H, O3_8H)
    primary_indicators: tuple[str, ...]
    category: AqiCategory | None
    missing: tuple[str, ...]  # report indicators without a valid value
    publishable: bool  # False: publish only concentrations and IAQIs, AQI/primary/level as NA
    exceeding: tuple[str, ...]  # 2012 超标污染物 (IAQI > 100); empty under 2026, which dropped it
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        cat = self.category
        return {
            "edition": self.edition,
            "report": self.report,
            "iaqi": dict(self.iaqi),
            "used": list(self.used),
            "aqi": self.aqi,
            "primary": list(self.primary),
            "level": cat.level if cat else None,
            "level_zh": cat.level_zh if cat else None,
            "category_zh": cat.category_zh if cat else None,
            "color_zh": cat.color_zh if cat else None,
            "rgb": list(cat.rgb) if cat else None,
            "hex": cat.hex if cat else None,
            "missing": list(self.missing),
            "publishable": self.publishable,
            "exceeding": list(self.exceeding),
            "notes": list(self.notes),
        }


def category_for(aqi: int) -> AqiCategory:
    """Level/category/colour for an integer AQI."""
    for upper, level, level_zh, cat, colour, rgb, hexcode in AQI_CATEGORIES:
        if upper is None or aqi <= upper:
            return AqiCategory(level, level_zh, cat, colour, rgb, hexcode)
    raise AssertionError("unreachable")


def to_decimal(value: object) -> Decimal | None:
    """Exact decimal of an input; floats go through their shortest repr (0.1 -> Decimal('0.1'))."""
    if value is None:
        return None
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return None
        d = Decimal(repr(float(value)))
    else:
        try:
            d = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
    return None if not d.is_finite() else d


def round_concentration(indicator: str, conc: Decimal, edition: str) -> Decimal:
    """The concentration the IAQI is computed from: GB/T 8170 rounding under 2026, unchanged under 2012."""
    if edition == EDITION_2012:
        return conc
    quantum = Decimal("0.1") if indicator.startswith("CO_") else Decimal("1")
    return conc.quantize(quantum, rounding=ROUND_HALF_EVEN)


def iaqi_exact(indicator: str, conc: object, edition: str) -> int | None:
    """IAQI of one indicator, rounded up. None when the edition says not to compute it (2012 SO2 1-h or
    O3 8-h above 800) or the concentration is missing or negative."""
    if edition not in EDITIONS:
        raise ValueError(f"unknown edition {edition!r}")
    if indicator not in INDICATORS:
        raise ValueError(f"unknown indicator {indicator!r}")
    c = to_decimal(conc)
    if c is None or c < 0:
        return None
    if isinstance(conc, float):
        # Computed values (means) carry float noise such as 75.00000000000001; like the kernels, take
        # floats to 1e-6 of the unit. Strings and Decimals are used exactly.
        c = c.quantize(_MICRO, rounding=ROUND_HALF_EVEN)
    c = round_concentration(indicator, c, edition)
    bp = BREAKPOINTS[edition][indicator]
    for k in range(1, len(bp)):
        hi = bp[k]
        if hi is None:
            break
        if c <= hi:
            lo = bp[k - 1]
            i_lo, i_hi = IAQI_LEVELS[k - 1], IAQI_LEVELS[k]
            value = Fraction(i_hi - i_lo) * (Fraction(c) - lo) / (hi - lo) + i_lo
            return math.ceil(value)
    # Above the last breakpoint of the column.
    if indicator == "SO2_1H":
        return 200 if edition == EDITION_2026 else None
    if indicator == "O3_8H":
        return 300 if edition == EDITION_2026 else None
    return _TOP_IAQI


def compute_aqi(values: Mapping[str, object], edition: str, report: str = "hourly") -> AqiResult:
    """AQI of one station (or city) and period from indicator concentrations keyed as in ``INDICATORS``.

    Indicators outside the report (e.g. O3_1H in a 2026 daily report) still get an IAQI but do not enter
    the AQI; a note says so. For a 2012 hourly report with SO2_1H above 800, give SO2_24H as well.
    """
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}")
    unknown = sorted(set(values) - set(INDICATORS))
    if unknown:
        raise ValueError(f"unknown indicator(s) {unknown}; expected {list(INDICATORS)}")
    members = REPORT_INDICATORS[(edition, report)]
    notes: list[str] = []
    iaqi: dict[str, int | None] = {}
    for key in INDICATORS:
        if key in values:
            iaqi[key] = iaqi_exact(key, values[key], edition)
            c = to_decimal(values[key])
            if c is not None and c < 0:
                notes.append(f"{key}: negative concentration treated as invalid")

    used = [k for k in members if iaqi.get(k) is not None]
    missing = [k for k in members if iaqi.get(k) is None]

    so2 = to_decimal(values.get("SO2_1H"))
    if "SO2_1H" in members and so2 is not None and iaqi.get("SO2_1H") is None and so2 > 800:
        # 2012 Table 1 note: SO2 1-h above 800 -> the SO2 IAQI is reported from the 24-h mean.
        missing.remove("SO2_1H")
        if iaqi.get("SO2_24H") is not None:
            used.append("SO2_24H")
            notes.append("SO2_1H > 800: SO2 IAQI taken from SO2_24H (HJ 633-2012 Table 1 note)")
        else:
            missing.append("SO2_24H")
            notes.append("SO2_1H > 800: HJ 633-2012 needs SO2_24H for the SO2 IAQI, none given")
    o3 = to_decimal(values.get("O3_8H"))
    if "O3_8H" in members and o3 is not None and iaqi.get("O3_8H") is None and o3 > 800:
        # 2012 Table 1 note: O3 8-h above 800 -> O3 is reported through the 1-h IAQI.
        missing.remove("O3_8H")
        notes.append("O3_8H > 800: O3 reported through O3_1H (HJ 633-2012 Table 1 note)")
        if iaqi.get("O3_1H") is None and "O3_1H" not in missing:
            missing.append("O3_1H")
    for key in iaqi:
        if key not in members and key not in used:
            notes.append(f"{key} is not an indicator of the {edition} {report} report; not counted in AQI")

    aqi = max((iaqi[k] for k in used), default=None)
    primary_ind: tuple[str, ...] = ()
    if aqi is not None and aqi > 50:
        primary_ind = tuple(k for k in used if iaqi[k] == aqi)
    primary = tuple(dict.fromkeys(POLLUTANT_LABEL[k] for k in primary_ind))
    if edition == EDITION_2026 and missing:
        publishable = aqi is not None and aqi > 100
    else:
        publishable = aqi is not None
    exceeding: tuple[str, ...] = ()
    if edition == EDITION_2012:
        exceeding = tuple(dict.fromkeys(POLLUTANT_LABEL[k] for k in used if iaqi[k] > 100))
    return AqiResult(
        edition=edition,
        report=report,
        iaqi=iaqi,
        used=tuple(used),
        aqi=aqi,
        primary=primary,
        primary_indicators=primary_ind,
        category=category_for(aqi) if aqi is not None else None,
        missing=tuple(missing),
        publishable=publishable,
        exceeding=exceeding,
        notes=tuple(notes),
    )


def city_aqi(
    stations: list[Mapping[str, object]], edition: str, report: str = "hourly"
) -> tuple[dict[str, Decimal], AqiResult]:
    """City AQI: per indicator the arithmetic mean over the stations that have a valid value, then the
    AQI of those means (HJ 663 city concentration = mean of its evaluation stations). The means are not
    rounded first (2012) or rounded once per 2026 §4.2.6, which is why published city values can sit one
    above a recomputation from displayed integer concentrations.
    """
    sums: dict[str, Decimal] = {}
    counts: dict[str, int] = {}
    for st in stations:
        for key, raw in st.items():
            c = to_decimal(raw)
            if c is None or c < 0:
                continue
            sums[key] = sums.get(key, Decimal(0)) + c
            counts[key] = counts.get(key, 0) + 1
    means = {k: sums[k] / counts[k] for k in sums}
    return means, compute_aqi(means, edition, report)


__all__ = [
    "EDITION_2012", "EDITION_2026", "AqiCategory", "AqiResult", "category_for", "city_aqi", "compute_aqi",
    "iaqi_exact", "round_concentration", "to_decimal",
]
