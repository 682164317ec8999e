"""Registers -> interval and daily consumption, with rollover and meter replacement handled.

``consumption(readings, meters, day0, n_days)`` runs one pass of
core.kernels.meter_registers.register_consumption and returns per-reading deltas/codes and per
meter x China-day statistics that the anomaly rules and the collection rate read.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from wulian.core.kernels import meter_registers as k
from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_DAY, NS_PER_HOUR, NS_PER_MIN



class Code(IntEnum):
    OK = k.C_OK
    FIRST = k.C_FIRST
    ROLLOVER = k.C_ROLLOVER
    REPLACED = k.C_REPLACED
    RESET = k.C_RESET
    BACKWARDS = k.C_BACKWARDS
    DUPLICATE = k.C_DUPLICATE
    JUMP = k.C_JUMP
    MISSING = k.C_MISSING


class MeterKind(IntEnum):
    ELECTRICITY = 0
    WATER = 1
    GAS = 2
    HEAT = 3


@dataclass(frozen=True, slots=True)
class MeterReadings:
    """Register readings sorted by (meter, time); meter m owns rows starts[m]:starts[m + 1].

    ``replaced`` marks readings where the collector reports a meter replacement, ``base`` the new meter's
    start register there (NaN if not reported)."""

    starts: np.ndarray  # int64
    ts_ns: np.ndarray  # int64
    register: np.ndarray  # float64, in the meter's unit (kWh, m3, GJ)
    replaced: np.ndarray  # bool
    base: np.ndarray  # float64

    @property
    def n_meters(self) -> int:
        return len(self.starts) - 1

    def __len__(self) -> int:
        return len(self.ts_ns)

    @classmethod
    def from_unsorted(cls, meter, n_meters: int, ts_ns, register, replaced=None, base=None) -> MeterReadings:
        order = np.lexsort((ts_ns, meter))
        starts = np.zeros(n_meters + 1, np.int64)
        np.cumsum(np.bincount(meter, minlength=n_meters), out=starts[1:])
        n = len(ts_ns)
        rep = np.zeros(n, bool) if replaced is None else np.asarray(replaced, bool)
        b = np.full(n, np.nan) if base is None else np.asarray(base, np.float64)
        return cls(starts, np.asarray(ts_ns, np.int64)[order], np.asarray(register, np.float64)[order],
                   rep[order], b[order])


@dataclass(frozen=True, slots=True)
class MeterTable:
    """Per-meter registry columns aligned with the dense meter index."""

    kind: np.ndarray  # int8 MeterKind
    modulus: np.ndarray  # float64 register width, e.g. 1e6 for XXXXXX.XX; 0 = never wraps
    max_rate_per_h: np.ndarray  # float64 plausible peak consumption per hour; 0 = no limit
    concentrator: np.ndarray  # int32 dense key of the concentrator (集中器) collecting the meter

    @classmethod
    def uniform(cls, n: int, kind: MeterKind = MeterKind.ELECTRICITY, modulus: float = 1e6,
                max_rate_per_h: float = 0.0) -> MeterTable:
        return cls(np.full(n, kind, np.int8), np.full(n, modulus), np.full(n, max_rate_per_h),
                   np.zeros(n, np.int32))

    def __len__(self) -> int:
        return len(self.kind)


@dataclass(frozen=True, slots=True)
class ConsumptionParams:
    jitter: float = 1e-3  # a backwards step this small reads as no consumption (below register resolution)
    reset_below: float = 10.0  # a register falling below this is taken as a new meter starting
    slot_ns: int = 15 * NS_PER_MIN  # collection slot: 96 readings a day
    night_from_ns: int = 2 * NS_PER_HOUR  # minimum night flow window, China time
    night_to_ns: int = 4 * NS_PER_HOUR
    utc_offset_ns: int = CHINA_OFFSET_NS


@dataclass(frozen=True, slots=True)
class Consumption:
    """Per reading: delta (NaN where none) and Code; per meter x day (n_meters, n_days): the rest."""

    day0: int
    delta: np.ndarray
    code: np.ndarray
    day_sum: np.ndarray
    day_slots: np.ndarray
    day_bad: np.ndarray
    day_min_rate: np.ndarray
    day_min_night_rate: np.ndarray
    day_backwards: np.ndarray


def daily_records(c: Consumption, meter_ids=None) -> list[dict]:
    """Per meter-day rows for a daily consumption table (cells with any reading or interval only).
    ``complete`` is False when some interval of the day had no usable delta (replacement, tamper,
    jump), so the sum undercounts."""
    rows = []
    for m, d in zip(*np.nonzero((c.day_slots > 0) | (c.day_bad > 0) | (c.day_sum != 0))):
        mn, night = c.day_min_rate[m, d], c.day_min_night_rate[m, d]
        rows.append({"meter": meter_ids[m] if meter_ids is not None else int(m), "day": c.day0 + int(d),
                     "consumption": float(c.day_sum[m, d]), "readings": int(c.day_slots[m, d]),
                     "complete": bool(c.day_bad[m, d] == 0), "backwards": int(c.day_backwards[m, d]),
                     "min_rate_per_h": None if np.isnan(mn) else float(mn),
                     "min_night_rate_per_h": None if np.isnan(night) else float(night)})
    return rows


def consumption(readings: MeterReadings, meters: MeterTable, day0: int, n_days: int,
                params: ConsumptionParams = ConsumptionParams()) -> Consumption:
    n = len(readings)
    shape = (readings.n_meters, n_days)
    delta = np.empty(n, np.float64)
    code = np.empty(n, np.int8)
    out = (np.zeros(shape), np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.full(shape, np.nan),
           np.full(shape, np.nan), np.zeros(shape, np.int32))
    k.register_consumption(readings.starts, readings.ts_ns, readings.register, readings.replaced, readings.base,
                           np.asarray(meters.modulus, np.float64), np.asarray(meters.max_rate_per_h, np.float64),
                           params.jitter, params.reset_below, params.utc_offset_ns, day0, n_days, params.slot_ns,
                           params.night_from_ns, params.night_to_ns, delta, code, *out)
    return Consumption(day0, delta, code, *out)


def consumption_numpy(readings: MeterReadings, meters: MeterTable, day0: int, n_days: int,
                      params: ConsumptionParams = ConsumptionParams()) -> Consumption:
    """The same day statistics with vectorised numpy, for the benchmark ratio and as a cross-check.

    Simplification: each reading is compared with the row before it (no skipping of duplicate or
    missing rows, no collector-flagged replacements), which matches the kernel on clean registers.
    """
    r, ts = readings.register, readings.ts_ns
    n_m = readings.n_meters
    m = np.repeat(np.arange(n_m), np.diff(readings.starts))
    code = np.full(len(r), Code.OK, np.int8)
    code[readings.starts[:-1][np.diff(readings.starts) > 0]] = Code.FIRST
    d = np.diff(r)
    dt_h = np.diff(ts) / NS_PER_HOUR
    same = m[1:] == m[:-1]
    mod = np.asarray(meters.modulus, np.float64)[m[1:]]
    rate = np.asarray(meters.max_rate_per_h, np.float64)[m[1:]]
    allowed = np.where(rate > 0, rate * dt_h, np.inf)
    wrap = d + mod
    fwd = d >= -params.jitter
    d_ok = np.maximum(d, 0.0)
    roll = ~fwd & (mod > 0) & (wrap >= 0) & np.where(rate > 0, wrap <= allowed, wrap < 0.5 * mod)
    c = np.where(fwd, np.where(d_ok > allowed, Code.JUMP, Code.OK),
                 np.where(roll, Code.ROLLOVER, np.where(r[1:] < params.reset_below, Code.RESET, Code.BACKWARDS)))
    c = np.where(np.isnan(r[1:]), Code.MISSING, c)
    delta = np.where(c == Code.OK, d_ok, np.where(c == Code.ROLLOVER, wrap, np.nan))
    code[1:] = np.where(same, c, code[1:])
    out_delta = np.full(len(r), np.nan)
    out_delta[1:] = np.where(same, delta, np.nan)

    local = ts + params.utc_offset_ns
    size = n_m * n_days
    day_r = local // NS_PER_DAY - day0
    ok_r = ~np.isnan(r) & (day_r >= 0) & (day_r < n_days)
    slots = np.bincount(m[ok_r] * n_days + day_r[ok_r], minlength=size)
    day_i = (ts[1:] - 1 + params.utc_offset_ns) // NS_PER_DAY - day0
    in_i = same & (day_i >= 0) & (day_i < n_days) & ~np.isnan(r[1:])
    good = in_i & ~np.isnan(delta)
    cell = m[1:] * n_days + day_i
    day_sum = np.bincount(cell[good], weights=delta[good], minlength=size)
    day_bad = np.bincount(cell[in_i & np.isnan(delta)], minlength=size)
    day_back = np.bincount(cell[in_i & (c == Code.BACKWARDS)], minlength=size)
    rt = delta / dt_h

    def cell_min(mask):
        out = np.full(size, np.nan)
        idx = np.flatnonzero(mask)
        if len(idx):
            cells = cell[idx]
            first = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1]])  # cells are contiguous runs
            out[cells[first]] = np.minimum.reduceat(rt[idx], first)
        return out

    t0 = local[:-1] % NS_PER_DAY
    night = (good & ((local[:-1] // NS_PER_DAY - day0) == day_i) & (t0 >= params.night_from_ns)
             & (t0 + np.diff(ts) <= params.night_to_ns))
    shape = (n_m, n_days)
    return Consumption(day0, out_delta, code, day_sum.reshape(shape), slots.reshape(shape).astype(np.int32),
                       day_bad.reshape(shape).astype(np.int32), cell_min(good).reshape(shape),
                       cell_min(night).reshape(shape), day_back.reshape(shape).astype(np.int32))


def warm() -> None:
    """Compile the register kernels on tiny inputs before the first real batch."""
    rd = MeterReadings.from_unsorted(np.array([0, 0]), 1, np.array([0, 900 * 10**9]), np.array([1.0, 2.0]))
    consumption(rd, MeterTable.uniform(1), 0, 1)
    k.runs_of_true(np.zeros((1, 1), bool))
