"""GB 3838-2002 single-factor class per item and per sample over (n_samples, n_items) matrices.

Classes are 1..5 for I..V and 6 for 劣V; 0 means "not evaluated" (missing value). The sample class is
the worst evaluated item class (0 when nothing was evaluated).
"""
from __future__ import annotations

import numpy as np
from numba import njit

CMP_LE = 0  # C <= limit (most items)
CMP_GE = 1  # C >= limit (DO)
CMP_RANGE = 2  # limits[0] <= C <= limits[1] for every class (pH)


@njit(cache=True, nogil=True)
def item_class(v, cmp, lim):
    """Class of one value against one item's five limits (equal limits: the better class wins)."""
    if not np.isfinite(v):
        return 0
    if cmp == CMP_RANGE:
        return 1 if (lim[0] <= v and v <= lim[1]) else 6
    for k in range(5):
        if (cmp == CMP_LE and v <= lim[k]) or (cmp == CMP_GE and v >= lim[k]):
            return k + 1
    return 6


@njit(cache=True, nogil=True)
def classify_matrix(values, lake, cmp, limits):
    """values (n, n_items) float64 NaN = missing; lake bool (n,) picks limits[1] (lake/reservoir
    column) or limits[0] (river); cmp int8 (n_items,); limits (2, n_items, 5).
    Returns (item classes int8 (n, n_items), sample class int8 (n,))."""
    n, m = values.shape
    cls = np.zeros((n, m), np.int8)
    worst = np.zeros(n, np.int8)
    for i in range(n):
        col = 1 if lake[i] else 0
        w = 0
        for j in range(m):
            c = item_class(values[i, j], cmp[j], limits[col, j])
            cls[i, j] = c
            if c > w:
                w = c
        worst[i] = w
    return cls, worst
