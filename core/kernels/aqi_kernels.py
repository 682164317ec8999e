"""IAQI/AQI over whole station x period grids, exact on integer micro-units.

Concentrations are turned into int64 micro-units (1e-6 of the unit) once; the HJ 633-2026 GB/T 8170
rounding (half to even) and the round-up of the interpolated IAQI are then integer operations, so the
kernel gives the same integers as the Decimal reference in ``core.environment.aqi`` for every input with
at most six decimals, with no float edge such as 50/35*35 = 50.000000000000007.

Codes in the per-indicator output: >= 0 an IAQI, -1 missing/invalid input, -2 not computed by rule
(HJ 633-2012: SO2 1-h or O3 8-h above 800).
"""
from __future__ import annotations

import numpy as np
from numba import njit

SCALE = 1_000_000  # micro-units per unit
MISSING = -1
NOT_COMPUTED = -2
# Indicator positions, the order of core.environment.tables.INDICATORS.
I_SO2_1H, I_SO2_24H, I_O3_8H = 0, 1, 7
I_CO_1H, I_CO_24H = 4, 5
_MAX_CONC = 1.0e9  # anything above is "above the top breakpoint"; keeps micro-units inside int64


@njit(cache=True, nogil=True)
def _round_half_even(x, unit):
    """x rounded to a multiple of unit, ties to the even multiple (GB/T 8170 四舍六入五成双)."""
    q = x // unit
    r = x - q * unit
    if 2 * r > unit or (2 * r == unit and q % 2 == 1):
        q += 1
    return q * unit


@njit(cache=True, nogil=True)
def iaqi_micro(c, ind, edition, bp, bp_ok, levels):
    """IAQI code of one indicator for a concentration in micro-units (c >= 0)."""
    if edition == 1:
        unit = SCALE // 10 if (ind == I_CO_1H or ind == I_CO_24H) else SCALE
        c = _round_half_even(c, unit)
    nbp = bp.shape[2]
    for k in range(1, nbp):
        if not bp_ok[edition, ind, k]:
            break
        hi = bp[edition, ind, k] * SCALE
        if c <= hi:
            lo = bp[edition, ind, k - 1] * SCALE
            num = (levels[k] - levels[k - 1]) * (c - lo)
            den = hi - lo
            return levels[k - 1] + (num + den - 1) // den
    if ind == I_SO2_1H:
        return 200 if edition == 1 else NOT_COMPUTED
    if ind == I_O3_8H:
        return 300 if edition == 1 else NOT_COMPUTED
    return levels[nbp - 1]


@njit(cache=True, nogil=True)
def to_micro(x):
    """Float concentration -> micro-units; -1 for NaN or negative (invalid for AQI)."""
    if not (x >= 0.0):
        return -1
    if x > _MAX_CONC:
        x = _MAX_CONC
    return np.int64(np.round(x * SCALE))


@njit(cache=True, nogil=True)
def aqi_grid(conc, edition, members, bp, bp_ok, levels, iaqi_out, aqi_out, primary_out, nmissing_out):
    """AQI for every column of ``conc`` (n_indicators, n_rows) float64, NaN = missing.

    edition: int8 per row (0 = 2012, 1 = 2026); members: bool (2, n_indicators), the indicators of the
    report for each edition. Writes iaqi_out int16 (n_indicators, n_rows) codes, aqi_out int16 (-1 when
    no indicator), primary_out int32 bitmask of indicators at the maximum when AQI > 50, nmissing_out
    int8 count of report indicators without a value (2012 SO2 1-h > 800 falls back to SO2 24-h).
    """
    n_ind, n = conc.shape
    for j in range(n):
        ed = edition[j]
        for i in range(n_ind):
            c = to_micro(conc[i, j])
            iaqi_out[i, j] = MISSING if c < 0 else iaqi_micro(c, i, ed, bp, bp_ok, levels)
        best = -1
        nmiss = 0
        for i in range(n_ind):
            if not members[ed, i]:
                continue
            v = iaqi_out[i, j]
            if v == NOT_COMPUTED and i == I_SO2_1H:
                v = iaqi_out[I_SO2_24H, j]  # HJ 633-2012: SO2 from the 24-h mean
            elif v == NOT_COMPUTED:
                continue  # HJ 633-2012 O3 8-h > 800: O3 is carried by O3 1-h, also a member
            if v < 0:
                nmiss += 1
            elif v > best:
                best = v
        mask = 0
        if best > 50:
            for i in range(n_ind):
                if not members[ed, i]:
                    continue
                v = iaqi_out[i, j]
                if v == NOT_COMPUTED and i == I_SO2_1H:
                    if iaqi_out[I_SO2_24H, j] == best:
                        mask |= 1 << I_SO2_24H
                elif v == best:
                    mask |= 1 << i
        aqi_out[j] = best
        primary_out[j] = mask
        nmissing_out[j] = nmiss
