"""Pollution-pulse scores for river stations: a robust z-score of each value against the station's
own recent past (median and MAD of the preceding ``window`` periods, the current one excluded), so a
slug of pollutant stands out whatever the station's normal level is."""
from __future__ import annotations

import numpy as np
from numba import njit

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x 1.4826 = its standard deviation


@njit(cache=True, nogil=True)
def robust_scores(values, valid, window, min_baseline, scale_floor):
    """z[k, t] = (x - median(baseline)) / max(1.4826 * MAD(baseline), scale_floor); NaN where the value is
    invalid or fewer than ``min_baseline`` valid baseline values exist. values/valid: (n_st, n_t)."""
    n_st, n_t = values.shape
    z = np.full((n_st, n_t), np.nan)
    buf = np.empty(window, np.float64)
    dev = np.empty(window, np.float64)
    for k in range(n_st):
        for t in range(n_t):
            if not valid[k, t]:
                continue
            m = 0
            for j in range(max(0, t - window), t):
                if valid[k, j]:
                    buf[m] = values[k, j]
                    m += 1
            if m < min_baseline or m == 0:
                continue
            med = np.median(buf[:m])
            for j in range(m):
                dev[j] = abs(buf[j] - med)
            scale = MAD_TO_SIGMA * np.median(dev[:m])
            if scale < scale_floor:
                scale = scale_floor
            z[k, t] = (values[k, t] - med) / scale
    return z


@njit(cache=True, nogil=True)
def window_peak(scores, station, lo, hi):
    """Largest score of ``station`` in periods [lo, hi] (clipped to the grid) and where; (-inf, -1) when
    no finite score lies in the window, (NaN, -1) when the window is outside the grid."""
    n_t = scores.shape[1]
    if lo < 0:
        lo = 0
    if hi > n_t - 1:
        hi = n_t - 1
    if lo > hi:
        return np.nan, -1
    best = -np.inf
    at = -1
    for t in range(lo, hi + 1):
        s = scores[station, t]
        if s == s and s > best:
            best = s
            at = t
    return best, at
