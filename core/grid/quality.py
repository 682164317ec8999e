"""Power-quality rules and qualification rates per meter and China day.

Limits (2008 editions, in force 2009-05-01):
* GB/T 12325 supply voltage deviation: one band per class (core.grid.limits): 220 V single-phase +7 % /
  -10 %; 20 kV and below three-phase +/-7 %; 35 kV and above a configured band whose ends add up to at
  most 10 % (default +7 % / -3 %). Each sample and the day verdict are judged against the same band.
* GB/T 15945 frequency deviation: +/-0.2 Hz (may be relaxed to +/-0.5 Hz for small systems).
* GB/T 15543 negative-sequence unbalance at the PCC: 2 % normally, 4 % short-time.

Qualification rate (合格率) = qualified samples / judged samples of the day: with regular sampling this
equals the time-based rate (1 - time out of limits / time monitored). Interruptions (collapsed voltage)
are excluded from the voltage, frequency and unbalance rates and reported separately.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from wulian.core.grid.limits import KV20_BAND, KV35_DEFAULT_BAND, V220_BAND, check_kv35_band
from wulian.core.kernels import grid_quality as k
from wulian.core.timebase import CHINA_OFFSET_NS, NS_PER_MIN



class VoltageClass(IntEnum):
    V220 = k.VC_220V
    KV20_AND_BELOW = k.VC_20KV
    KV35_AND_ABOVE = k.VC_35KV


class Bit(IntEnum):
    V_HIGH = k.B_V_HIGH
    V_LOW = k.B_V_LOW
    FREQ = k.B_FREQ
    UNBALANCE = k.B_UNBALANCE
    UNBALANCE_MAX = k.B_UNBALANCE_MAX
    OVERLOAD = k.B_OVERLOAD
    LOW_PF = k.B_LOW_PF
    COLLAPSE = k.B_COLLAPSE


@dataclass(frozen=True, slots=True)
class GridParams:
    freq_nom: float = 50.0
    freq_tol: float = 0.2  # 0.5 for small-capacity systems
    unb_limit_pct: float = 2.0
    unb_short_limit_pct: float = 4.0
    overload_factor: float = 1.0  # current above rated x this
    pf_min: float = 0.9  # typical 力调 assessment threshold for large users (0.85 for agriculture)
    collapse_frac: float = 0.1  # every phase below 10 % of nominal: interruption
    utc_offset_ns: int = CHINA_OFFSET_NS
    kv35_upper_pct: float = KV35_DEFAULT_BAND[0]  # 35 kV band: |upper| + |lower| <= 10 % (GB/T 12325 §4.1)
    kv35_lower_pct: float = KV35_DEFAULT_BAND[1]

    def __post_init__(self) -> None:
        check_kv35_band(self.kv35_upper_pct, self.kv35_lower_pct)

    def voltage_bands(self) -> tuple[np.ndarray, np.ndarray]:
        """(upper, lower) deviation limits in %, indexed by VoltageClass."""
        bands = {VoltageClass.V220: V220_BAND, VoltageClass.KV20_AND_BELOW: KV20_BAND,
                 VoltageClass.KV35_AND_ABOVE: (self.kv35_upper_pct, self.kv35_lower_pct)}
        hi = np.zeros(len(VoltageClass))
        lo = np.zeros(len(VoltageClass))
        for vc, (up, low) in bands.items():
            hi[vc], lo[vc] = up, low
        return hi, lo


@dataclass(frozen=True, slots=True)
class GridMeters:
    """Per-meter registry columns aligned with the dense meter index."""

    u_nom: np.ndarray  # nominal voltage of the metered quantity (phase or line), V
    vclass: np.ndarray  # int8 VoltageClass
    rated_a: np.ndarray  # rated current, A (0: no overload rule)
    line_voltages: np.ndarray  # bool: ua/ub/uc are line-to-line (exact unbalance) rather than phase
    feeder: np.ndarray  # int32 dense feeder key

    @classmethod
    def uniform(cls, n: int, u_nom: float = 220.0, vclass: int = VoltageClass.V220, rated_a: float = 0.0,
                line_voltages: bool = False) -> GridMeters:
        return cls(np.full(n, u_nom), np.full(n, vclass, np.int8), np.full(n, rated_a),
                   np.full(n, line_voltages, bool), np.zeros(n, np.int32))


@dataclass(frozen=True, slots=True)
class GridSamples:
    """Samples sorted by (meter, time); NaN where a phase or quantity is not metered."""

    starts: np.ndarray
    ts_ns: np.ndarray
    ua: np.ndarray
    ub: np.ndarray
    uc: np.ndarray
    freq: np.ndarray
    ia: np.ndarray
    ib: np.ndarray
    ic: np.ndarray
    pf: np.ndarray

    @classmethod
    def from_unsorted(cls, meter, n_meters: int, ts_ns, **cols) -> GridSamples:
        """``cols``: any of ua, ub, uc, freq, ia, ib, ic, pf (missing ones become NaN)."""
        order = np.lexsort((ts_ns, meter))
        starts = np.zeros(n_meters + 1, np.int64)
        np.cumsum(np.bincount(meter, minlength=n_meters), out=starts[1:])
        n = len(ts_ns)
        get = {c: (np.asarray(cols[c], np.float64)[order] if c in cols else np.full(n, np.nan))
               for c in ("ua", "ub", "uc", "freq", "ia", "ib", "ic", "pf")}
        return cls(starts, np.asarray(ts_ns, np.int64)[order], **get)

    def __len__(self) -> int:
        return len(self.ts_ns)


@dataclass(frozen=True, slots=True)
class DayQuality:
    """Per meter x day (n_meters, n_days) counts and extremes; rates are properties."""

    day0: int
    bits: np.ndarray  # per sample Bit flags
    n_samples: np.ndarray
    n_v: np.ndarray
    n_v_ok: np.ndarray
    n_f: np.ndarray
    n_f_ok: np.ndarray
    n_unb: np.ndarray
    n_unb_ok: np.ndarray
    n_unb_over_max: np.ndarray
    n_overload: np.ndarray
    n_pf: np.ndarray
    n_pf_low: np.ndarray
    n_collapse: np.ndarray
    dev_max: np.ndarray  # % (NaN: no voltage)
    dev_min: np.ndarray
    unb_max: np.ndarray

    @property
    def voltage_rate(self) -> np.ndarray:
        return _ratio(self.n_v_ok, self.n_v)

    @property
    def frequency_rate(self) -> np.ndarray:
        return _ratio(self.n_f_ok, self.n_f)

    @property
    def unbalance_rate(self) -> np.ndarray:
        return _ratio(self.n_unb_ok, self.n_unb)

    def unbalance_day_ok(self) -> np.ndarray:
        """GB/T 15543 read as: the 95 % value within the normal limit (at most 5 % of the day's samples
        above it) and no sample above the short-time limit. False where there was nothing to judge."""
        return (self.n_unb > 0) & (self.n_unb - self.n_unb_ok <= 0.05 * self.n_unb) & (self.n_unb_over_max == 0)

    def kv35_day_ok(self) -> np.ndarray:
        """Day verdict for 35 kV and above: every judged sample within the class band (GridParams
        kv35_upper_pct / kv35_lower_pct, ends adding up to <= 10 %, GB/T 12325-2008 §4.1). The same band
        as ``voltage_rate``, so the verdict holds exactly when the rate is 1.0. False where there was no
        voltage to judge."""
        return (self.n_v > 0) & (self.n_v_ok == self.n_v)


def quality_records(q: DayQuality, meter_ids=None, vclass=None) -> list[dict]:
    """Per meter-day rows for a power-quality statistics table (meters with samples that day only).
    ``day`` is the China-time day number (days since 1970-01-01)."""
    vr, fr, ur = q.voltage_rate, q.frequency_rate, q.unbalance_rate
    unb_ok, kv35 = q.unbalance_day_ok(), q.kv35_day_ok()
    rows = []
    for m, d in zip(*np.nonzero(q.n_samples)):
        row = {"meter": meter_ids[m] if meter_ids is not None else int(m), "day": q.day0 + int(d),
               "samples": int(q.n_samples[m, d]), "interruptions": int(q.n_collapse[m, d]),
               "voltage_rate": _f(vr[m, d]), "frequency_rate": _f(fr[m, d]), "unbalance_rate": _f(ur[m, d]),
               "unbalance_day_ok": bool(unb_ok[m, d]) if q.n_unb[m, d] else None,
               "dev_max_pct": _f(q.dev_max[m, d]), "dev_min_pct": _f(q.dev_min[m, d]),
               "unbalance_max_pct": _f(q.unb_max[m, d]), "overload_samples": int(q.n_overload[m, d]),
               "low_pf_samples": int(q.n_pf_low[m, d])}
        if vclass is not None and int(vclass[m]) == VoltageClass.KV35_AND_ABOVE:
            row["kv35_day_ok"] = bool(kv35[m, d])
        rows.append(row)
    return rows


def _f(x) -> float | None:
    return None if np.isnan(x) else float(x)


def _ratio(num, den):
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=np.asarray(den) > 0)
    return out


def day_quality(samples: GridSamples, meters: GridMeters, day0: int, n_days: int,
                params: GridParams = GridParams()) -> DayQuality:
    shape = (len(samples.starts) - 1, n_days)
    bits = np.zeros(len(samples), np.int32)
    counts = [np.zeros(shape, np.int32) for _ in range(12)]
    ext = [np.full(shape, np.nan) for _ in range(3)]
    k.grid_quality(samples.starts, samples.ts_ns, samples.ua, samples.ub, samples.uc, samples.freq, samples.ia,
                   samples.ib, samples.ic, samples.pf, np.asarray(meters.u_nom, np.float64),
                   np.asarray(meters.vclass, np.int8), np.asarray(meters.rated_a, np.float64),
                   np.asarray(meters.line_voltages, bool), params.utc_offset_ns, day0, n_days, params.freq_nom,
                   params.freq_tol, params.unb_limit_pct, params.unb_short_limit_pct, params.overload_factor,
                   params.pf_min, params.collapse_frac, *params.voltage_bands(), bits, *counts, *ext)
    return DayQuality(day0, bits, *counts, *ext)


@dataclass(frozen=True, slots=True)
class Runs:
    meter: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    open: np.ndarray

    def __len__(self) -> int:
        return len(self.meter)


def violation_runs(samples: GridSamples, bits: np.ndarray, which: int, min_ns: int = 0,
                   max_gap_ns: int = 15 * NS_PER_MIN) -> Runs:
    """Episodes per meter where any of the ``which`` Bit flags holds (e.g. Bit.OVERLOAD, or
    Bit.COLLAPSE for a meter-level outage), lasting at least ``min_ns``."""
    cap = max(256, len(bits) // 50)
    while True:
        out = (np.empty(cap, np.int32), np.empty(cap, np.int64), np.empty(cap, np.int64), np.empty(cap, bool))
        n = k.bit_runs(samples.starts, samples.ts_ns, bits, int(which), max_gap_ns, min_ns, *out)
        if n <= cap:
            return Runs(*(a[:n] for a in out))
        cap = n


def warm() -> None:
    """Compile the kernels on tiny inputs before the first real batch."""
    s = GridSamples.from_unsorted(np.zeros(2, np.int64), 1, np.array([0, 60 * 10**9]), ua=[220.0, 0.0],
                                  ub=[220.0, 0.0], uc=[220.0, 0.0], ia=[1.0, 0.0], pf=[0.95, 0.9], freq=[50.0, 50.0])
    m = GridMeters.uniform(1, vclass=VoltageClass.KV20_AND_BELOW, rated_a=10.0)
    q = day_quality(s, m, 0, 1)
    violation_runs(s, q.bits, Bit.COLLAPSE)
    from wulian.core.grid.transformer import trend_warnings
    trend_warnings(s.starts, s.ts_ns, s.ua, np.array([250.0]))
