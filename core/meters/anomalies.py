"""Meter anomaly rules over the per meter x day statistics of core.meters.consumption.

Each rule returns per-meter arrays (numpy), so callers can pick the flagged meters with ``np.flatnonzero``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.kernels.meter_registers import runs_of_true
from wulian.core.meters.consumption import Code, Consumption, MeterReadings


@dataclass(frozen=True, slots=True)
class RunFlag:
    """Per meter: longest run of qualifying days, the run still going at the last day, and the flag
    (the current run reached the required length)."""

    longest: np.ndarray
    current: np.ndarray
    flagged: np.ndarray


def _runs(mask: np.ndarray, need: int) -> RunFlag:
    longest, current = runs_of_true(np.ascontiguousarray(mask))
    return RunFlag(longest, current, current >= need)


def zero_consumption(c: Consumption, n_days: int, min_slots: int = 1) -> RunFlag:
    """No consumption for ``n_days`` consecutive days while the meter kept reporting (>= min_slots
    readings that day): a vacant home, a stuck register, or a bypass."""
    mask = (c.day_slots >= min_slots) & (c.day_bad == 0) & (c.day_sum == 0.0)
    return _runs(mask, n_days)


def night_leak(c: Consumption, threshold_per_h: float, nights: int) -> RunFlag:
    """Water leak: the minimum interval flow in the night window (02:00-04:00 China time) stays above
    ``threshold_per_h`` for ``nights`` consecutive nights. A household's use drops to zero at some
    point of a normal night; a running leak never does."""
    mask = np.nan_to_num(c.day_min_night_rate, nan=-1.0) > threshold_per_h
    return _runs(mask, nights)


def gas_never_stops(c: Consumption, days: int = 1, eps_per_h: float = 0.0, min_slots: int = 90) -> RunFlag:
    """Gas flow that never stops: every interval of the day shows flow above ``eps_per_h`` (so the
    minimum interval rate is above it) on ``days`` consecutive, nearly complete days (>= min_slots)."""
    mask = (np.nan_to_num(c.day_min_rate, nan=-1.0) > eps_per_h) & (c.day_slots >= min_slots)
    return _runs(mask, days)


@dataclass(frozen=True, slots=True)
class RegisterEvents:
    """Readings where the register misbehaved: index into the readings, meter, time, code, previous
    and new register value."""

    index: np.ndarray
    meter: np.ndarray
    ts_ns: np.ndarray
    code: np.ndarray
    previous: np.ndarray
    register: np.ndarray


def register_events(readings: MeterReadings, c: Consumption,
                    codes=(Code.BACKWARDS, Code.RESET, Code.REPLACED, Code.JUMP, Code.ROLLOVER)) -> RegisterEvents:
    """Backwards registers (tamper or fault), detected and flagged replacements, jumps and rollovers."""
    want = np.zeros(256, bool)
    want[[int(x) for x in codes]] = True
    idx = np.flatnonzero(want[c.code.astype(np.uint8)])
    meter = np.searchsorted(readings.starts, idx, side="right") - 1
    prev = np.full(len(idx), np.nan)
    for j, (i, m) in enumerate(zip(idx.tolist(), meter.tolist())):  # events are rare: walk back
        i0 = int(readings.starts[m])
        while i > i0:
            i -= 1
            if c.code[i] not in (Code.DUPLICATE, Code.MISSING):
                prev[j] = readings.register[i]
                break
    return RegisterEvents(idx, meter, readings.ts_ns[idx], c.code[idx], prev, readings.register[idx])
