"""Numba kernels for 四表合一 register arithmetic: cumulative registers -> interval and daily consumption.

Readings are struct-of-arrays sorted by (meter, time); ``starts`` (int64, n_meters + 1) gives each meter's
slice. A register only counts up, modulo its width (``modulus``, e.g. 1e6 for a XXXXXX.XX kWh register);
everything else that happens to it is classified per reading in ``code``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from wulian.core.timebase import NS_PER_DAY as _DAY_NS  # a compile-time constant in the kernels

# Per-reading classification.
C_OK = 0
C_FIRST = 1  # first reading of the meter in this batch: baseline only
C_ROLLOVER = 2  # wrapped past the register width; delta = r + modulus - prev
C_REPLACED = 3  # replacement flagged by the collector; delta from the new meter's start value if known
C_RESET = 4  # replacement detected: the register fell to near zero
C_BACKWARDS = 5  # went backwards (tamper or fault); no consumption, new baseline
C_DUPLICATE = 6  # same or earlier time than the previous reading: ignored
C_JUMP = 7  # forward step beyond the meter's plausible rate: no consumption, new baseline
C_MISSING = 8  # NaN register value: ignored

_HOUR_NS = 3_600_000_000_000


@njit(cache=True, nogil=True)
def register_consumption(
    starts, ts, reg, replaced, base, modulus, max_rate_per_h, jitter, reset_below,
    utc_offset_ns, day0, n_days, slot_ns, night_from_ns, night_to_ns,
    delta, code, day_sum, day_slots, day_bad, day_min_rate, day_min_night_rate, day_backwards,
):
    """Interval deltas and per meter x China-day statistics in one pass; fills the output arrays.

    Per reading i (after the meter's previous accepted reading p at time tp):
      * ``replaced[i]``: the collector says a new meter starts here; delta = reg - base[i] when the new
        meter's start value is known (finite), else NaN;
      * d = reg - p >= -jitter: normal (small negative jitter reads as 0), unless d exceeds
        ``max_rate_per_h[m]`` x hours (then C_JUMP);
      * d < -jitter: a rollover when d + modulus is a plausible consumption (within the rate limit, or
        under half a register turn when the meter has no limit); otherwise a detected replacement when
        the new value is below ``reset_below``; otherwise the register went backwards.
    An interval belongs to the China day containing its end minus 1 ns, so the interval ending exactly
    at 00:00 counts for the day before (as a daily freeze at midnight does).

    Day outputs (n_meters, n_days): consumption sum, distinct ``slot_ns`` slots with a reading, intervals
    without a usable delta, the minimum interval rate (units/h, NaN if no interval), the minimum rate
    over intervals lying wholly inside [night_from, night_to) of that day, and backwards steps.
    """
    for m in range(starts.shape[0] - 1):
        s = starts[m]
        e = starts[m + 1]
        have = False
        p = 0.0
        tp = 0
        last_slot = -1
        mod = modulus[m]
        rate = max_rate_per_h[m]
        for i in range(s, e):
            t = ts[i]
            r = reg[i]
            delta[i] = np.nan
            if math.isnan(r):
                code[i] = C_MISSING
                continue
            if have and t <= tp:
                code[i] = C_DUPLICATE
                continue
            local = t + utc_offset_ns
            d_idx = local // _DAY_NS - day0
            in_days = 0 <= d_idx < n_days
            slot = local // slot_ns
            if in_days and slot != last_slot:
                day_slots[m, d_idx] += 1
            last_slot = slot
            if not have:
                code[i] = C_FIRST
                have = True
                p = r
                tp = t
                continue
            dt = t - tp
            allowed = rate * (dt / _HOUR_NS) if rate > 0.0 else -1.0
            c = C_OK
            dv = np.nan
            if replaced[i]:
                c = C_REPLACED
                if not math.isnan(base[i]) and r >= base[i]:
                    dv = r - base[i]
            else:
                d = r - p
                if d >= -jitter:
                    if d < 0.0:
                        d = 0.0
                    if allowed >= 0.0 and d > allowed:
                        c = C_JUMP
                    else:
                        dv = d
                else:
                    w = d + mod
                    ok_roll = False
                    if mod > 0.0 and w >= 0.0:
                        ok_roll = w <= allowed if allowed >= 0.0 else w < 0.5 * mod
                    if ok_roll:
                        c = C_ROLLOVER
                        dv = w
                    elif r < reset_below:
                        c = C_RESET
                    else:
                        c = C_BACKWARDS
            code[i] = c
            delta[i] = dv
            # Day of the interval: the day containing (t - 1 ns).
            dd = (t - 1 + utc_offset_ns) // _DAY_NS - day0
            if 0 <= dd < n_days:
                if math.isnan(dv):
                    day_bad[m, dd] += 1
                    if c == C_BACKWARDS:
                        day_backwards[m, dd] += 1
                else:
                    day_sum[m, dd] += dv
                    rt = dv / (dt / _HOUR_NS)
                    if math.isnan(day_min_rate[m, dd]) or rt < day_min_rate[m, dd]:
                        day_min_rate[m, dd] = rt
                    t0 = (tp + utc_offset_ns) % _DAY_NS
                    day_start = (tp + utc_offset_ns) // _DAY_NS
                    t1 = t0 + dt  # interval end measured from the start's midnight
                    if (day_start - day0 == dd and t0 >= night_from_ns and t1 <= night_to_ns):
                        if math.isnan(day_min_night_rate[m, dd]) or rt < day_min_night_rate[m, dd]:
                            day_min_night_rate[m, dd] = rt
            p = r
            tp = t


@njit(cache=True, nogil=True)
def runs_of_true(mask):
    """Per row of a (rows, days) boolean matrix: the longest run of True and the run ending at the last
    column (the one still going)."""
    rows, cols = mask.shape
    longest = np.zeros(rows, np.int32)
    current = np.zeros(rows, np.int32)
    for r in range(rows):
        run = 0
        best = 0
        for c in range(cols):
            if mask[r, c]:
                run += 1
                if run > best:
                    best = run
            else:
                run = 0
        longest[r] = best
        current[r] = run
    return longest, current
