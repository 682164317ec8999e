"""Episodes: a condition holding over consecutive periods (exceedance, heavy pollution, off-target water).

Every rule in this package reports its alarms as ``Episode`` records; the alarm engine raises them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.kernels.runs import find_runs


@dataclass(frozen=True, slots=True)
class Episode:
    """``start_ns``..``end_ns`` (end exclusive: the end of the last period) with the peak inside."""

    rule: str  # e.g. "source_exceedance", "heavy_pollution", "water_below_target"
    subject: str  # source / station / plant id
    item: str  # pollutant, indicator or water item ("" when the rule is about the whole record)
    start_ns: int
    end_ns: int
    peak: float
    peak_ns: int
    periods: int  # how many periods (hours, days) the episode lasted
    threshold: float
    basis: str = ""  # what was compared: "converted 1-h mean", "AQI", "class", standard edition ...

    @property
    def duration_s(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


def episodes_from_grid(
    cond: np.ndarray,
    values: np.ndarray,
    t0_ns: int,
    step_ns: int,
    *,
    rule: str,
    subjects: list[str],
    items: list[str],
    thresholds: np.ndarray | list[float],
    min_periods: int = 1,
    basis: str = "",
) -> list[Episode]:
    """Episodes from a (n_keys, n_periods) condition grid; row k is ``subjects[k]`` / ``items[k]``."""
    cond = np.ascontiguousarray(cond, dtype=np.bool_)
    values = np.ascontiguousarray(values, dtype=np.float64)
    key, start, stop, peak, peak_at = find_runs(cond, values, max(1, int(min_periods)))
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (cond.shape[0],))
    return [
        Episode(
            rule=rule,
            subject=subjects[k],
            item=items[k],
            start_ns=t0_ns + int(s) * step_ns,
            end_ns=t0_ns + int(e) * step_ns,
            peak=float(p),
            peak_ns=t0_ns + int(pa) * step_ns,
            periods=int(e - s),
            threshold=float(thresholds[k]),
            basis=basis,
        )
        for k, s, e, p, pa in zip(key.tolist(), start, stop, peak, peak_at)
    ]
