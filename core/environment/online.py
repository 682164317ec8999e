"""Pure helpers of the online environment jobs (``ingest/jobs/``): separating device-made hourly
values from minute data, and turning episodes found over a run's window into alert actions.

A job run covers the new periods ``[new_from, data_end)`` plus some look-back; episodes that ended
before ``new_from`` were handled by an earlier run and are left alone, so running again over the same
data raises nothing twice.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from wulian.core.timebase import NS_PER_HOUR, china_day_start_ns
from wulian.core.environment.episodes import Episode


def split_avg(keys: np.ndarray, ts_ns: np.ndarray, is_avg: np.ndarray, has_sample_key: np.ndarray,
              t0_ns: int, n_keys: int, n_hours: int) -> tuple[np.ndarray, np.ndarray]:
    """Which ``-Avg`` samples are minute data (CN 2051) and which are hourly uploads (CN 2061).

    An hourly upload is the only ``-Avg`` value of its key in its hour and is stamped on the hour
    (CN 2061 DataTime is the start of the hour, HJ 212-2017 Table 4). The others are minute data, used
    only for keys without real-time samples (``has_sample_key[key]`` False). Returns (minute, hourly)
    boolean masks over the samples.
    """
    keys = np.asarray(keys, dtype=np.int64)
    ts = np.asarray(ts_ns, dtype=np.int64)
    is_avg = np.asarray(is_avg, dtype=bool)
    hour = (ts - t0_ns) // NS_PER_HOUR
    inside = is_avg & (hour >= 0) & (hour < n_hours) & (keys >= 0) & (keys < n_keys)
    cell = np.where(inside, keys * n_hours + hour, 0)
    counts = np.bincount(cell[inside], minlength=n_keys * n_hours)
    on_hour = (ts - t0_ns) % NS_PER_HOUR == 0
    hourly = inside & on_hour & (counts[cell] == 1)
    minute = inside & ~hourly & ~np.asarray(has_sample_key, dtype=bool)[np.clip(keys, 0, max(n_keys - 1, 0))]
    return minute, hourly


def uploaded_hourly(keys: np.ndarray, ts_ns: np.ndarray, values: np.ndarray, valid: np.ndarray,
                    mask: np.ndarray, t0_ns: int, n_keys: int, n_hours: int) -> np.ndarray:
    """(n_keys, n_hours) grid of device-made hourly values (NaN where none, or flagged invalid)."""
    out = np.full((n_keys, n_hours), np.nan)
    sel = np.asarray(mask, dtype=bool) & np.asarray(valid, dtype=bool)
    k = np.asarray(keys, dtype=np.int64)[sel]
    h = (np.asarray(ts_ns, dtype=np.int64)[sel] - t0_ns) // NS_PER_HOUR
    out[k, h] = np.asarray(values, dtype=np.float64)[sel]
    return out


@dataclass(frozen=True, slots=True)
class AlertAction:
    """Raise (or count again) the episode's alert at ``ts_ns``, or clear it at ``ts_ns``."""

    kind: str  # "raise" | "clear"
    episode: Episode
    ts_ns: int
    value: float


def episode_actions(episodes: Iterable[Episode], new_from_ns: int, data_end_ns: int, step_ns: int,
                    min_periods: int = 1) -> list[AlertAction]:
    """Alert actions for the episodes of one run, in time order.

    * An episode that ended before ``new_from_ns`` is old news: nothing.
    * One that reaches into the new periods is raised at the period it was confirmed (its start plus
      ``min_periods - 1`` periods); raising an open alert only counts it again.
    * One that ends before ``data_end_ns`` is cleared at its end; one that reaches the end of the data
      stays open for the next run. An episode ending exactly at ``new_from_ns`` was open after the
      last run and is cleared now.
    The caller's look-back must cover ``min_periods`` periods so that such an episode is still seen.
    """
    out: list[AlertAction] = []
    for ep in sorted(episodes, key=lambda e: (e.start_ns, e.subject, e.item)):
        if ep.end_ns < new_from_ns:
            continue
        if ep.end_ns > new_from_ns:
            at = ep.start_ns + (max(min_periods, 1) - 1) * step_ns
            out.append(AlertAction("raise", ep, max(at, ep.start_ns), ep.peak))
        if ep.end_ns < data_end_ns:
            out.append(AlertAction("clear", ep, ep.end_ns, ep.peak))
    out.sort(key=lambda a: (a.ts_ns, a.kind != "raise"))
    return out


@dataclass(frozen=True, slots=True)
class RunWindow:
    """What one job run covers. New periods are ``[new_from_ns, end_ns)``; the grid starts earlier, at
    a China midnight ``t0_ns`` at or before the look-back, and spans whole days (``n_hours % 24 == 0``)."""

    new_from_ns: int
    end_ns: int
    t0_ns: int
    n_hours: int

    def completed_days(self) -> list[int]:
        """Day indices (columns of a daily grid from ``t0_ns``) whose day ended inside the new periods."""
        out = []
        for d in range(self.n_hours // 24):
            day_end = self.t0_ns + (d + 1) * 24 * NS_PER_HOUR
            if self.new_from_ns < day_end <= self.end_ns:
                out.append(d)
        return out

    def load_from_ns(self, lookback_h: int) -> int:
        """Earliest raw data a run needs: the look-back before the new hours, or the start of the first
        day completed in this run (daily values need the whole day). Hours of the grid before this
        stay empty and are never written."""
        start = self.new_from_ns - lookback_h * NS_PER_HOUR
        days = self.completed_days()
        if days:
            start = min(start, self.t0_ns + days[0] * 24 * NS_PER_HOUR)
        return max(start, self.t0_ns)

    def new_hours(self) -> range:
        """Hour columns of the new periods."""
        return range((self.new_from_ns - self.t0_ns) // NS_PER_HOUR, (self.end_ns - self.t0_ns) // NS_PER_HOUR)


def plan_window(watermark_ns: int | None, now_ns: int, *, lag_s: float, backfill_h: int, max_span_h: int,
                lookback_h: int) -> RunWindow | None:
    """The window of a run: from the watermark (or ``backfill_h`` before now on a first run, at a China
    midnight) to the last whole hour older than ``lag_s``, at most ``max_span_h`` hours. None: nothing due."""
    end = (now_ns - int(lag_s * 1e9)) // NS_PER_HOUR * NS_PER_HOUR
    start = watermark_ns if watermark_ns is not None else china_day_start_ns(end - backfill_h * NS_PER_HOUR)
    if end <= start:
        return None
    end = min(end, start + max_span_h * NS_PER_HOUR)
    t0 = china_day_start_ns(start - lookback_h * NS_PER_HOUR)
    n_hours = -(-(end - t0) // (24 * NS_PER_HOUR)) * 24
    return RunWindow(start, end, t0, n_hours)
