"""Transformer fault warning: temperature or load trending toward its limit.

A least-squares line through the recent window (default 2 h) of each transformer's series gives the level
now and the slope; the warning fires when the line reaches the limit within ``horizon_ns`` (or is already
there). Used for top-oil/winding temperature against its alarm limit and for load (% of rating) against
100 %.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.kernels.grid_quality import trend_to_limit
from wulian.core.timebase import NS_PER_HOUR



@dataclass(frozen=True, slots=True)
class TrendWarning:
    """Per transformer: fitted level now, slope per hour, time to limit (ns, -1 none) and the flag."""

    level: np.ndarray
    slope_per_h: np.ndarray
    eta_ns: np.ndarray
    samples: np.ndarray
    warn: np.ndarray


def trend_warnings(starts: np.ndarray, ts_ns: np.ndarray, values: np.ndarray, limits: np.ndarray,
                   window_ns: int = 2 * NS_PER_HOUR, horizon_ns: int = 4 * NS_PER_HOUR) -> TrendWarning:
    """``starts``/``ts_ns``/``values``: series sorted by (transformer, time); ``limits`` per transformer."""
    n = len(starts) - 1
    level = np.empty(n)
    slope = np.empty(n)
    eta = np.empty(n, np.int64)
    used = np.empty(n, np.int64)
    trend_to_limit(starts, ts_ns, np.asarray(values, np.float64), np.asarray(limits, np.float64), window_ns,
                   level, slope, eta, used)
    return TrendWarning(level, slope, eta, used, (eta >= 0) & (eta <= horizon_ns))
