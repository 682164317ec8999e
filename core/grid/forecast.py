"""Per-feeder load forecast for the next hours: a time-of-day profile scaled by the recent level.

forecast(t) = P[slot(t)] x (1 + (r - 1) x 2^(-(t - t_last) / half_life)), with P the feeder's mean load per
time-of-day slot over the history (separately for working days and weekends when asked), and
r = recent level / P[slot(t_last)]: today's deviation from the usual profile, fading back to the profile.
Closed form, no fitting loop; good enough for hours ahead and for flagging feeders heading to their limit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_DAY, NS_PER_MIN


@dataclass(frozen=True, slots=True)
class LoadProfile:
    """(n_feeders, 2, slots_per_day) mean load; axis 1: 0 working day, 1 weekend (same if not split)."""

    mean: np.ndarray
    count: np.ndarray
    slot_ns: int
    utc_offset_ns: int

    def _index(self, ts_ns):
        local = np.asarray(ts_ns, np.int64) + self.utc_offset_ns
        slot = (local % NS_PER_DAY) // self.slot_ns
        weekend = ((local // NS_PER_DAY + 3) % 7) >= 5  # 1970-01-01 was a Thursday: +3 makes Monday 0
        return slot, weekend.astype(np.int64)

    def at(self, feeder: int, ts_ns) -> np.ndarray:
        slot, we = self._index(ts_ns)
        return self.mean[feeder, we, slot]


def fit_profile(feeder, ts_ns, load, n_feeders: int, slot_ns: int = 15 * NS_PER_MIN, split_weekend: bool = True,
                utc_offset_ns: int = CHINA_OFFSET_NS) -> LoadProfile:
    """Mean load per feeder, day type and time-of-day slot. Empty cells borrow the other day type, then
    the feeder's overall mean."""
    slots = NS_PER_DAY // slot_ns
    prof = LoadProfile(np.zeros((n_feeders, 2, slots)), np.zeros((n_feeders, 2, slots)), slot_ns, utc_offset_ns)
    slot, we = prof._index(ts_ns)
    if not split_weekend:
        we = np.zeros_like(we)
    load = np.asarray(load, np.float64)
    ok = ~np.isnan(load)
    cell = (np.asarray(feeder, np.int64) * 2 + we) * slots + slot
    size = n_feeders * 2 * slots
    s = np.bincount(cell[ok], weights=load[ok], minlength=size).reshape(n_feeders, 2, slots)
    c = np.bincount(cell[ok], minlength=size).reshape(n_feeders, 2, slots).astype(np.float64)
    if not split_weekend:
        s[:, 1], c[:, 1] = s[:, 0], c[:, 0]
    mean = np.full(s.shape, np.nan)
    np.divide(s, c, out=mean, where=c > 0)
    other = mean[:, ::-1, :]
    mean = np.where(np.isnan(mean), other, mean)
    overall = np.nanmean(mean.reshape(n_feeders, -1), axis=1) if size else np.zeros(0)
    mean = np.where(np.isnan(mean), overall[:, None, None], mean)
    return LoadProfile(mean, c, slot_ns, utc_offset_ns)


def forecast(profile: LoadProfile, feeder: int, t_last: int, recent_level: float, horizon_ns: int,
             step_ns: int | None = None, half_life_ns: int = 2 * 3600 * 10**9) -> tuple[np.ndarray, np.ndarray]:
    """Times (ns) and forecast load for (t_last, t_last + horizon], one value per step (default: slot)."""
    step = step_ns or profile.slot_ns
    t = t_last + step * np.arange(1, horizon_ns // step + 1, dtype=np.int64)
    base_now = float(profile.at(feeder, t_last))
    r = recent_level / base_now if base_now else 1.0
    fade = np.exp2(-(t - t_last) / half_life_ns)
    return t, profile.at(feeder, t) * (1.0 + (r - 1.0) * fade)
