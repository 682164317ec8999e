"""Consumption against the enterprise's own profile: an hour-of-week baseline.

An enterprise's load repeats by the week (shifts, weekends), so an hour is compared with the same hour of
the week in the previous ``weeks`` weeks: baseline = their median, spread = their median absolute
deviation (MAD, scaled by 1.4826 to estimate a standard deviation). Both resist one odd week (a holiday,
last month's own anomaly) where a mean and standard deviation would not. The spread is floored at
``min_rel_spread`` of the median: four equal weeks would otherwise make any change an anomaly. An hour is
*high* when consumption > median + k x spread; an anomaly is ``min_hours`` or more consecutive high hours
(one busy hour is not worth a call).
"""
from __future__ import annotations

import warnings

import numpy as np

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x this = its standard deviation
HOURS_PER_WEEK = 168


def baseline(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``history[w, h]``: consumption of hour h, w weeks back (NaN: unknown) -> (median, MAD) per hour
    (NaN where fewer than two weeks are known)."""
    h = np.asarray(history, np.float64)
    known = np.sum(~np.isnan(h), axis=0)
    with warnings.catch_warnings():  # all-NaN hours: NaN is the answer, not a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(h, axis=0)
        mad = np.nanmedian(np.abs(h - med), axis=0)
    med = np.where(known >= 2, med, np.nan)
    return med, np.where(known >= 2, mad, np.nan)


def high_hours(values: np.ndarray, med: np.ndarray, mad: np.ndarray, k: float, min_rel_spread: float) -> np.ndarray:
    """Which hours exceed median + k x spread (False where the baseline is unknown)."""
    spread = np.maximum(MAD_TO_SIGMA * mad, min_rel_spread * np.abs(med))
    with np.errstate(invalid="ignore"):
        return np.asarray(values, np.float64) > med + k * spread


def runs(flags: np.ndarray, min_len: int) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of runs of True at least ``min_len`` long."""
    f = np.concatenate([[False], np.asarray(flags, bool), [False]])
    d = np.diff(f.astype(np.int8))
    starts, stops = np.nonzero(d == 1)[0], np.nonzero(d == -1)[0]
    return [(int(a), int(b)) for a, b in zip(starts, stops) if b - a >= min_len]
