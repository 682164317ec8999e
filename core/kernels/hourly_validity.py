"""Minute -> hour -> day aggregation with HJ 76 / GB 3095 validity counts.

Input is struct-of-arrays of minute (or real-time) samples: int32 dense series keys, int64 ns times,
float64 values and a bool "valid" mask (flag in VALID_FLAGS and value finite), in any order.
The output is a dense (n_keys, n_hours) grid starting at ``t0_ns`` (an hour boundary).

Validity counts distinct valid *minutes*, not samples: a device reporting every 30 s does not reach
45 minutes in 23 minutes. Each (key, hour) keeps a 60-bit mask of the minutes seen.
"""
from __future__ import annotations

import numpy as np
from numba import njit

NS_PER_MIN = 60_000_000_000
NS_PER_HOUR = 3_600_000_000_000


@njit(cache=True, nogil=True)
def _popcount64(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@njit(cache=True, nogil=True)
def minute_to_hourly(keys, ts, values, valid, t0_ns, n_keys, n_hours, min_minutes):
    """Hourly means of valid samples and the HJ 76 hour validity (>= min_minutes valid minutes).

    Returns (mean float64, n_valid_minutes int16, n_minutes int16, hour_valid bool), each
    (n_keys, n_hours). mean is NaN where the hour has no valid sample; samples outside the grid or with
    keys outside [0, n_keys) are ignored.
    """
    sums = np.zeros((n_keys, n_hours), np.float64)
    nsamp = np.zeros((n_keys, n_hours), np.int32)
    seen = np.zeros((n_keys, n_hours), np.uint64)
    good = np.zeros((n_keys, n_hours), np.uint64)
    one = np.uint64(1)
    for i in range(ts.shape[0]):
        k = keys[i]
        if k < 0 or k >= n_keys:
            continue
        d = ts[i] - t0_ns
        if d < 0:
            continue
        h = d // NS_PER_HOUR
        if h >= n_hours:
            continue
        bit = one << np.uint64((d - h * NS_PER_HOUR) // NS_PER_MIN)
        seen[k, h] |= bit
        if valid[i]:
            good[k, h] |= bit
            sums[k, h] += values[i]
            nsamp[k, h] += 1
    mean = np.full((n_keys, n_hours), np.nan)
    n_valid = np.zeros((n_keys, n_hours), np.int16)
    n_all = np.zeros((n_keys, n_hours), np.int16)
    ok = np.zeros((n_keys, n_hours), np.bool_)
    for k in range(n_keys):
        for h in range(n_hours):
            if nsamp[k, h] > 0:
                mean[k, h] = sums[k, h] / nsamp[k, h]
            nv = _popcount64(good[k, h])
            n_valid[k, h] = nv
            n_all[k, h] = _popcount64(seen[k, h])
            ok[k, h] = nv >= min_minutes
    return mean, n_valid, n_all, ok


@njit(cache=True, nogil=True)
def hourly_to_daily(mean, hour_valid, min_hours):
    """Daily means over valid hours (the grid must start at a day boundary, 24 columns a day).

    Returns (mean float64, n_valid_hours int16, day_valid bool), each (n_keys, n_days); the mean is
    computed whenever some hour is valid, ``day_valid`` says whether it meets ``min_hours``.
    """
    n_keys, n_hours = mean.shape
    n_days = n_hours // 24
    out = np.full((n_keys, n_days), np.nan)
    nvh = np.zeros((n_keys, n_days), np.int16)
    ok = np.zeros((n_keys, n_days), np.bool_)
    for k in range(n_keys):
        for d in range(n_days):
            s = 0.0
            n = 0
            for h in range(d * 24, d * 24 + 24):
                if hour_valid[k, h]:
                    s += mean[k, h]
                    n += 1
            if n > 0:
                out[k, d] = s / n
            nvh[k, d] = n
            ok[k, d] = n >= min_hours
    return out, nvh, ok


@njit(cache=True, nogil=True)
def moving_mean(mean, valid, window, min_valid):
    """Trailing moving mean over ``window`` hours ending at each hour (inclusive), NaN unless at least
    ``min_valid`` of those hours are valid (GB 3095: 8-h O3 needs 6, 24-h means need 20)."""
    n_keys, n_hours = mean.shape
    out = np.full((n_keys, n_hours), np.nan)
    for k in range(n_keys):
        for h in range(n_hours):
            s = 0.0
            n = 0
            for j in range(max(0, h - window + 1), h + 1):  # summed afresh: no running-sum drift
                if valid[k, j]:
                    s += mean[k, j]
                    n += 1
            if n >= min_valid and n > 0:
                out[k, h] = s / n
    return out


@njit(cache=True, nogil=True)
def daily_max_8h(mean, valid, min_valid, min_windows, limit):
    """O3 daily maximum 8-h mean per natural day (grid starts at a day boundary).

    The 8-h means are those whose window lies inside the day, hours [k, k+8) for k = 0..16 (labelled
    08:00..24:00 by their end, HJ 663-2013 §4.1); each needs ``min_valid`` valid hours, the day needs
    ``min_windows`` valid 8-h means, except that a maximum above ``limit`` counts even with fewer
    (an exceedance cannot be undone by the missing hours). Returns (max float64, valid bool).
    """
    n_keys, n_hours = mean.shape
    n_days = n_hours // 24
    out = np.full((n_keys, n_days), np.nan)
    ok = np.zeros((n_keys, n_days), np.bool_)
    for k in range(n_keys):
        for d in range(n_days):
            best = -1.0
            nwin = 0
            for start in range(d * 24, d * 24 + 17):
                s = 0.0
                n = 0
                for h in range(start, start + 8):
                    if valid[k, h]:
                        s += mean[k, h]
                        n += 1
                if n >= min_valid:
                    nwin += 1
                    if s / n > best:
                        best = s / n
            if nwin > 0:
                out[k, d] = best
                ok[k, d] = nwin >= min_windows or best > limit
    return out, ok


@njit(cache=True, nogil=True)
def daily_max_1h(mean, valid, min_hours):
    """Daily maximum of the valid hourly means; valid with >= ``min_hours`` valid hours."""
    n_keys, n_hours = mean.shape
    n_days = n_hours // 24
    out = np.full((n_keys, n_days), np.nan)
    ok = np.zeros((n_keys, n_days), np.bool_)
    for k in range(n_keys):
        for d in range(n_days):
            best = -np.inf
            n = 0
            for h in range(d * 24, d * 24 + 24):
                if valid[k, h]:
                    n += 1
                    if mean[k, h] > best:
                        best = mean[k, h]
            if n > 0:
                out[k, d] = best
            ok[k, d] = n >= min_hours
    return out, ok
