"""Runs of consecutive periods where a condition holds: exceedance episodes, heavy-pollution warnings,
water stations worse than target. One pass over a (n_keys, n_periods) grid."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def find_runs(cond, values, min_len):
    """Maximal runs of True in each row of ``cond`` at least ``min_len`` long.

    Returns (key int32, start int64, stop int64 exclusive, peak float64, peak_at int64) arrays, one
    entry per run, keys ascending then time. ``peak`` is the largest ``values`` inside the run.
    """
    n_keys, n = cond.shape
    cap = 16
    key = np.empty(cap, np.int32)
    start = np.empty(cap, np.int64)
    stop = np.empty(cap, np.int64)
    peak = np.empty(cap, np.float64)
    peak_at = np.empty(cap, np.int64)
    m = 0
    for k in range(n_keys):
        j = 0
        while j < n:
            if not cond[k, j]:
                j += 1
                continue
            s = j
            best = values[k, j]
            best_at = j
            while j < n and cond[k, j]:
                if values[k, j] > best:
                    best = values[k, j]
                    best_at = j
                j += 1
            if j - s >= min_len:
                if m == cap:
                    cap *= 2
                    key = np.concatenate((key, np.empty(m, np.int32)))
                    start = np.concatenate((start, np.empty(m, np.int64)))
                    stop = np.concatenate((stop, np.empty(m, np.int64)))
                    peak = np.concatenate((peak, np.empty(m, np.float64)))
                    peak_at = np.concatenate((peak_at, np.empty(m, np.int64)))
                key[m] = k
                start[m] = s
                stop[m] = j
                peak[m] = best
                peak_at[m] = best_at
                m += 1
    return key[:m], start[:m], stop[:m], peak[:m], peak_at[:m]
