"""Feeder outages: a whole feeder's meters silent, or reporting collapsed voltage, for too long.

A sample is *alive* when the meter reported a voltage that did not collapse. A feeder is out during any
stretch of at least ``silence_ns`` with no alive sample from any of its meters, judged inside the
observation window [t_from, t_to) so a feeder silent from the start or to the end is caught too.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.grid.quality import Bit, GridMeters, GridSamples


@dataclass(frozen=True, slots=True)
class FeederOutages:
    feeder: np.ndarray
    start_ns: np.ndarray  # last alive sample before the silence (or t_from)
    end_ns: np.ndarray  # first alive sample after it (or t_to when still out)
    open: np.ndarray  # still out at t_to

    def __len__(self) -> int:
        return len(self.feeder)


def feeder_outages(samples: GridSamples, bits: np.ndarray, meters: GridMeters, t_from: int, t_to: int,
                   silence_ns: int) -> FeederOutages:
    meter_of = np.repeat(np.arange(len(samples.starts) - 1), np.diff(samples.starts))
    has_v = ~(np.isnan(samples.ua) & np.isnan(samples.ub) & np.isnan(samples.uc))
    alive = has_v & ((bits & Bit.COLLAPSE) == 0) & (samples.ts_ns >= t_from) & (samples.ts_ns < t_to)
    feeder = np.asarray(meters.feeder, np.int64)[meter_of[alive]]
    t = samples.ts_ns[alive]
    # Window edges per feeder (that has meters) as sentinels so leading/trailing silences are gaps too.
    fs = np.unique(np.asarray(meters.feeder, np.int64))
    all_f = np.concatenate([fs, feeder, fs])
    all_t = np.concatenate([np.full(len(fs), t_from), t, np.full(len(fs), t_to)])
    order = np.lexsort((all_t, all_f))
    all_f, all_t = all_f[order], all_t[order]
    same = all_f[1:] == all_f[:-1]
    gap = same & (np.diff(all_t) >= silence_ns)
    i = np.flatnonzero(gap)
    end = all_t[i + 1]
    return FeederOutages(all_f[i].astype(np.int32), all_t[i], end, end >= t_to)
