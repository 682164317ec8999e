"""HJ 76 data validity: minute samples -> valid hourly means -> valid daily means, and completeness.

* A sample is valid when its flag is one of ``core.const.VALID_FLAGS`` (N, case-insensitive; no flag
  counts as N) and the value is finite. Every other flag is invalid: maintenance, calibration, fault,
  stopped, manual set value, over range, communication fault, the 2005 power fault P, and any flag no
  HJ 212 edition defines.
* An hour is valid with at least 45 distinct valid minutes, a day with at least 20 valid hours
  (CEMS data validity of HJ 75-2017 / HJ 76-2017; GB 3095 Table 4 uses the same 45 min / 20 h).
* The daily valid-data rate is valid hours / 24 (HJ 75 有效数据率 on the hourly basis).
Grids start at ``t0_ns``; daily grids need ``t0_ns`` at a China midnight (``day_aligned_start``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.const import VALID_FLAGS
from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_DAY, NS_PER_HOUR, china_day_start_ns
from wulian.core.kernels.hourly_validity import hourly_to_daily, minute_to_hourly

MIN_VALID_MINUTES = 45
MIN_VALID_HOURS = 20

# Valid by flag code (ASCII; 0 = no flag, as core.alarms.flag_code gives it). A positive table, so that a
# flag outside the tables (H, V, a stray byte) can never count as valid.
_VALID_BYTE = np.zeros(256, dtype=np.bool_)
_VALID_BYTE[0] = True
for _f in VALID_FLAGS:
    _VALID_BYTE[ord(_f)] = True
    _VALID_BYTE[ord(_f.lower())] = True


@dataclass(frozen=True, slots=True)
class HourlyGrid:
    """Hourly means per series key (rows) and hour (columns from ``t0_ns``) with their validity."""

    t0_ns: int
    mean: np.ndarray  # float64, NaN where no valid sample
    n_valid_minutes: np.ndarray  # int16
    n_minutes: np.ndarray  # int16, minutes with any sample, valid or not
    valid: np.ndarray  # bool, n_valid_minutes >= 45

    @property
    def hour_start_ns(self) -> np.ndarray:
        return self.t0_ns + np.arange(self.mean.shape[1], dtype=np.int64) * NS_PER_HOUR

    def valid_mean(self) -> np.ndarray:
        """Means of valid hours only (NaN elsewhere): what rules and AQI may use."""
        return np.where(self.valid, self.mean, np.nan)


@dataclass(frozen=True, slots=True)
class DailyGrid:
    """Daily means over valid hours per key and China day from ``t0_ns``."""

    t0_ns: int
    mean: np.ndarray
    n_valid_hours: np.ndarray
    valid: np.ndarray  # n_valid_hours >= 20

    @property
    def day_start_ns(self) -> np.ndarray:
        return self.t0_ns + np.arange(self.mean.shape[1], dtype=np.int64) * NS_PER_DAY

    @property
    def valid_data_rate(self) -> np.ndarray:
        return self.n_valid_hours / 24.0

    def valid_mean(self) -> np.ndarray:
        return np.where(self.valid, self.mean, np.nan)


def valid_mask(flags: np.ndarray | list, values: np.ndarray) -> np.ndarray:
    """Sample validity from data flags and values. ``flags``: one-character strings or their ASCII
    codes as uint8 (the fast form); an empty flag counts as normal."""
    values = np.asarray(values, dtype=np.float64)
    flags = np.asarray(flags)
    if flags.dtype == np.uint8:
        codes = flags
    else:
        codes = np.frombuffer(
            "".join((f or "N")[0] for f in flags.tolist()).encode("ascii", "replace"), dtype=np.uint8
        )
    return _VALID_BYTE[codes] & np.isfinite(values)


def day_aligned_start(ts_ns: int) -> int:
    """China midnight at or before ``ts_ns``: the ``t0_ns`` to use when daily grids are wanted."""
    return china_day_start_ns(ts_ns)


def aggregate_hourly(
    keys: np.ndarray,
    ts_ns: np.ndarray,
    values: np.ndarray,
    valid: np.ndarray,
    t0_ns: int,
    n_keys: int,
    n_hours: int,
    min_minutes: int = MIN_VALID_MINUTES,
) -> HourlyGrid:
    """Minute/real-time samples (int32 keys, int64 ns, float64 values, bool valid) -> ``HourlyGrid``."""
    if t0_ns % NS_PER_HOUR:
        raise ValueError("t0_ns must be on an hour boundary")
    mean, nv, na, ok = minute_to_hourly(
        np.ascontiguousarray(keys, dtype=np.int32),
        np.ascontiguousarray(ts_ns, dtype=np.int64),
        np.ascontiguousarray(values, dtype=np.float64),
        np.ascontiguousarray(valid, dtype=np.bool_),
        np.int64(t0_ns), n_keys, n_hours, min_minutes,
    )
    return HourlyGrid(t0_ns, mean, nv, na, ok)


def aggregate_daily(hourly: HourlyGrid, min_hours: int = MIN_VALID_HOURS) -> DailyGrid:
    """Valid hourly means -> daily means with the 20-hour validity; the grid must start at China midnight."""
    if (hourly.t0_ns + CHINA_OFFSET_NS) % NS_PER_DAY:
        raise ValueError("hourly grid must start at a China midnight for daily values")
    mean, nvh, ok = hourly_to_daily(hourly.mean, hourly.valid, min_hours)
    return DailyGrid(hourly.t0_ns, mean, nvh, ok)


@dataclass(frozen=True, slots=True)
class CompletenessAlert:
    """A device whose valid-data rate for one China day fell below the configured rate."""

    device: str
    day_start_ns: int
    rate: float
    min_rate: float


def device_valid_rate(daily: DailyGrid, device_of_key: np.ndarray, n_devices: int) -> np.ndarray:
    """Valid-data rate per device and day: valid hours over 24 x monitored items, (n_devices, n_days)."""
    dev = np.asarray(device_of_key, dtype=np.int64)
    hours = np.zeros((n_devices, daily.mean.shape[1]))
    np.add.at(hours, dev, daily.n_valid_hours.astype(np.float64))
    items = np.bincount(dev, minlength=n_devices).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hours / (24.0 * items[:, None])


def completeness_alerts(
    daily: DailyGrid, device_of_key: np.ndarray, devices: list[str], min_rate: float
) -> list[CompletenessAlert]:
    """One alert per device and day whose valid-data rate is below ``min_rate`` (e.g. 0.9)."""
    rates = device_valid_rate(daily, device_of_key, len(devices))
    starts = daily.day_start_ns
    out = []
    for d, day in zip(*np.nonzero(rates < min_rate)):
        out.append(CompletenessAlert(devices[d], int(starts[day]), float(rates[d, day]), min_rate))
    return out


@dataclass(frozen=True, slots=True)
class HourlyComparison:
    """Device-uploaded hourly values (HJ 212 CN 2061) against our own minute aggregation."""

    difference: np.ndarray  # uploaded - ours, NaN where either is absent or our hour is not valid
    mismatch: np.ndarray  # bool: |difference| > abs_tol + rel_tol * |ours|
    compared: int
    mismatches: int


def compare_uploaded_hourly(
    ours: HourlyGrid, uploaded: np.ndarray, abs_tol: float = 0.0, rel_tol: float = 0.05
) -> HourlyComparison:
    """Check CN 2061 hourly values (same grid shape, NaN = not uploaded) against our valid hours.

    Uploaded values are stored as they come; this only says where they disagree with the minutes.
    """
    uploaded = np.asarray(uploaded, dtype=np.float64)
    both = ours.valid & np.isfinite(uploaded) & np.isfinite(ours.mean)
    diff = np.where(both, uploaded - ours.mean, np.nan)
    with np.errstate(invalid="ignore"):
        mismatch = both & (np.abs(diff) > abs_tol + rel_tol * np.abs(ours.mean))
    return HourlyComparison(diff, mismatch, int(both.sum()), int(mismatch.sum()))
