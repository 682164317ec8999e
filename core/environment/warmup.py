"""Compile (or load from the numba cache) every environment kernel on tiny arrays, so the first real
batch after start-up does not pay for compilation. Call once from the worker before subscribing."""
from __future__ import annotations

import numpy as np

from wulian.core.environment.aqi_series import POLLUTANTS, daily_aqi, heavy_pollution_warnings, hourly_aqi
from wulian.core.environment.editions import EDITION_2026_START_NS
from wulian.core.timebase import NS_PER_MIN
from wulian.core.environment.pulse import trace_pulses
from wulian.core.environment.river import River, RiverStation
from wulian.core.environment.sources import exceedance_episodes
from wulian.core.environment.validity import aggregate_daily, aggregate_hourly, valid_mask
from wulian.core.environment.water import classify_grid


def warmup() -> None:
    """Run each kernel once with the dtypes the real calls use."""
    t0 = EDITION_2026_START_NS
    n = 48 * 60
    ts = t0 + np.arange(n, dtype=np.int64) * NS_PER_MIN
    values = np.ones(n)
    hourly = aggregate_hourly(np.zeros(n, np.int32), ts, values,
                              valid_mask(np.full(n, ord("N"), np.uint8), values), t0, 1, 48)
    aggregate_daily(hourly)
    exceedance_episodes(hourly, ["w"], ["x"], [0.5])
    means = {p: hourly.valid_mean() for p in POLLUTANTS}
    heavy_pollution_warnings(hourly_aqi(means, t0), ["w"], 2)
    daily_aqi(means, t0)
    classify_grid({"DO": hourly.mean, "NH3_N": hourly.mean})
    river = River("warm", (RiverStation("a", 0.0), RiverStation("b", 1.0)))
    trace_pulses(river, np.ones((2, 48)), t0, 3_600_000_000_000, 10.0)
