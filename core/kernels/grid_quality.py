"""Numba kernels for supply power quality: per-sample violation bits, per meter x day statistics,
violation runs, and trend-to-limit estimates for transformers.

Samples are struct-of-arrays sorted by (meter, time); ``starts`` (int64, n_meters + 1) gives each meter's
slice. Missing phases (single-phase meters) and missing quantities are NaN.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from wulian.core.timebase import NS_PER_DAY as _DAY_NS  # a compile-time constant in the kernels

# Nominal voltage classes (GB/T 12325-2008); their deviation bands are core.grid.limits.
VC_220V = 0  # 220 V single-phase
VC_20KV = 1  # 20 kV and below, three-phase
VC_35KV = 2  # 35 kV and above

# Per-sample violation bits.
B_V_HIGH = 1
B_V_LOW = 2
B_FREQ = 4
B_UNBALANCE = 8  # above the normal limit (2 %)
B_UNBALANCE_MAX = 16  # above the short-time limit (4 %)
B_OVERLOAD = 32
B_LOW_PF = 64
B_COLLAPSE = 128  # every present phase below the collapse fraction of nominal: interruption

_HOUR_NS = 3_600_000_000_000


@njit(cache=True, nogil=True)
def unbalance_line_pct(a, b, c):
    """Negative-sequence voltage unbalance (%) from the three line-to-line voltage magnitudes.

    Line voltages sum to zero as phasors, so their magnitudes fix the triangle and the sequence
    components exactly (GB/T 15543-2008 Appendix A):
    eps = sqrt((1 - sqrt(3 - 6L)) / (1 + sqrt(3 - 6L))), L = (a^4 + b^4 + c^4) / (a^2 + b^2 + c^2)^2.
    """
    s2 = a * a + b * b + c * c
    if not s2 > 0.0:
        return np.nan
    L = (a**4 + b**4 + c**4) / (s2 * s2)
    q = 3.0 - 6.0 * L
    if q < 0.0:  # degenerate triangle (one line voltage lost)
        return 100.0
    r = math.sqrt(q)
    return 100.0 * math.sqrt(max(0.0, (1.0 - r) / (1.0 + r)))


@njit(cache=True, nogil=True)
def unbalance_phase_pct(a, b, c):
    """Unbalance estimate (%) from phase-to-neutral magnitudes: max deviation from the mean / mean.
    Phase magnitudes do not determine the negative sequence (the zero sequence hides in them); this
    is the usual field approximation when only phase voltages are metered."""
    m = (a + b + c) / 3.0
    if not m > 0.0:
        return np.nan
    return 100.0 * max(abs(a - m), abs(b - m), abs(c - m)) / m


_EPS = 1e-9  # limits are inclusive; absorbs the rounding of e.g. (235.4 - 220) / 220 * 100


@njit(cache=True, nogil=True, inline="always")
def _dev_ok(dev, vclass, dev_hi, dev_lo):
    return dev_lo[vclass] - _EPS <= dev <= dev_hi[vclass] + _EPS


@njit(cache=True, nogil=True)
def grid_quality(
    starts, ts, ua, ub, uc, freq, ia, ib, ic, pf,
    u_nom, vclass, rated_a, line_voltages,
    utc_offset_ns, day0, n_days, freq_nom, freq_tol, unb_limit, unb_short_limit, overload_factor, pf_min,
    collapse_frac, dev_hi, dev_lo,
    bits, n_samples, n_v, n_v_ok, n_f, n_f_ok, n_unb, n_unb_ok, n_unb_over_max, n_overload, n_pf, n_pf_low,
    n_collapse, dev_max, dev_min, unb_max,
):
    """Classify every sample (``bits``) and accumulate per meter x China day counts (in place).

    Voltage deviation is (U - U_nom) / U_nom x 100 per present phase; a sample is voltage-qualified when
    every present phase is within its class band [``dev_lo[class]``, ``dev_hi[class]``] (%, indexed by
    VC_*). Collapsed samples (interruptions) are left out of
    voltage, frequency and unbalance statistics. Unbalance is computed for three-phase meters with all
    phases present, from line voltages when ``line_voltages[m]`` else by the phase approximation.
    Overload: the largest phase current above ``rated_a[m] x overload_factor``. Low power factor:
    |pf| < ``pf_min``.
    """
    for m in range(starts.shape[0] - 1):
        un = u_nom[m]
        vc = vclass[m]
        rated = rated_a[m] * overload_factor
        lv = line_voltages[m]
        for i in range(starts[m], starts[m + 1]):
            d = (ts[i] + utc_offset_ns) // _DAY_NS - day0
            b = 0
            present = 0
            low_all = True
            vmax = -1e300
            vmin = 1e300
            for u in (ua[i], ub[i], uc[i]):
                if not math.isnan(u):
                    present += 1
                    if u >= collapse_frac * un:
                        low_all = False
                    dev = (u - un) / un * 100.0
                    vmax = max(vmax, dev)
                    vmin = min(vmin, dev)
            collapsed = present > 0 and low_all
            if collapsed:
                b |= B_COLLAPSE
            elif present > 0:
                if not _dev_ok(vmax, vc, dev_hi, dev_lo) and vmax > 0.0:
                    b |= B_V_HIGH
                if not _dev_ok(vmin, vc, dev_hi, dev_lo) and vmin < 0.0:
                    b |= B_V_LOW
            f = freq[i]
            f_present = not math.isnan(f) and not collapsed
            if f_present and abs(f - freq_nom) > freq_tol + _EPS:
                b |= B_FREQ
            unb = np.nan
            if vc != VC_220V and present == 3 and not collapsed:
                unb = unbalance_line_pct(ua[i], ub[i], uc[i]) if lv else unbalance_phase_pct(ua[i], ub[i], uc[i])
                if unb > unb_limit + _EPS:
                    b |= B_UNBALANCE
                if unb > unb_short_limit + _EPS:
                    b |= B_UNBALANCE_MAX
            imax = -1.0
            for cur in (ia[i], ib[i], ic[i]):
                if not math.isnan(cur) and abs(cur) > imax:
                    imax = abs(cur)
            if rated > 0.0 and imax > rated:
                b |= B_OVERLOAD
            p = pf[i]
            if not math.isnan(p) and abs(p) < pf_min:
                b |= B_LOW_PF
            bits[i] = b
            if d < 0 or d >= n_days:
                continue
            n_samples[m, d] += 1
            if collapsed:
                n_collapse[m, d] += 1
                continue
            if present > 0:
                n_v[m, d] += 1
                if (b & (B_V_HIGH | B_V_LOW)) == 0:
                    n_v_ok[m, d] += 1
                if math.isnan(dev_max[m, d]) or vmax > dev_max[m, d]:
                    dev_max[m, d] = vmax
                if math.isnan(dev_min[m, d]) or vmin < dev_min[m, d]:
                    dev_min[m, d] = vmin
            if f_present:
                n_f[m, d] += 1
                if (b & B_FREQ) == 0:
                    n_f_ok[m, d] += 1
            if not math.isnan(unb):
                n_unb[m, d] += 1
                if (b & B_UNBALANCE) == 0:
                    n_unb_ok[m, d] += 1
                if (b & B_UNBALANCE_MAX) != 0:
                    n_unb_over_max[m, d] += 1
                if math.isnan(unb_max[m, d]) or unb > unb_max[m, d]:
                    unb_max[m, d] = unb
            if (b & B_OVERLOAD) != 0:
                n_overload[m, d] += 1
            if not math.isnan(p):
                n_pf[m, d] += 1
                if (b & B_LOW_PF) != 0:
                    n_pf_low[m, d] += 1


@njit(cache=True, nogil=True)
def bit_runs(starts, ts, bits, mask, max_gap_ns, min_ns, ev_key, ev_start, ev_end, ev_open):
    """Runs of consecutive samples with ``bits & mask`` set, per key, lasting at least ``min_ns``
    (first to last sample); a silence longer than ``max_gap_ns`` ends a run. Returns the number of runs
    (only the first len(ev_key) are written)."""
    cap = ev_key.shape[0]
    n = 0
    for m in range(starts.shape[0] - 1):
        on = False
        t0 = 0
        t1 = 0
        for i in range(starts[m], starts[m + 1]):
            hit = (bits[i] & mask) != 0
            if on and (not hit or ts[i] - t1 > max_gap_ns):
                if t1 - t0 >= min_ns:
                    if n < cap:
                        ev_key[n] = m
                        ev_start[n] = t0
                        ev_end[n] = t1
                        ev_open[n] = False
                    n += 1
                on = False
            if hit:
                if not on:
                    on = True
                    t0 = ts[i]
                t1 = ts[i]
        if on and t1 - t0 >= min_ns:
            if n < cap:
                ev_key[n] = m
                ev_start[n] = t0
                ev_end[n] = t1
                ev_open[n] = True
            n += 1
    return n


@njit(cache=True, nogil=True)
def trend_to_limit(starts, ts, values, limits, window_ns, level, slope_per_h, eta_ns, n_used):
    """Per key: least-squares line through the samples in the last ``window_ns`` before the key's last
    sample; ``level`` is the fitted value at that last time, ``slope_per_h`` its slope, ``eta_ns`` the
    time until the line reaches ``limits[key]`` (0 if already there, -1 if flat/falling or too few
    samples)."""
    for m in range(starts.shape[0] - 1):
        s = starts[m]
        e = starts[m + 1]
        level[m] = np.nan
        slope_per_h[m] = np.nan
        eta_ns[m] = -1
        n_used[m] = 0
        if e <= s:
            continue
        t_end = ts[e - 1]
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        sxy = 0.0
        k = 0
        for i in range(e - 1, s - 1, -1):
            if t_end - ts[i] > window_ns:
                break
            y = values[i]
            if math.isnan(y):
                continue
            x = (ts[i] - t_end) / _HOUR_NS
            sx += x
            sy += y
            sxx += x * x
            sxy += x * y
            k += 1
        n_used[m] = k
        if k < 3:
            continue
        den = k * sxx - sx * sx
        if den <= 0.0:
            continue
        b = (k * sxy - sx * sy) / den
        a = (sy - b * sx) / k  # value at x = 0, i.e. at the last sample
        level[m] = a
        slope_per_h[m] = b
        if a >= limits[m]:
            eta_ns[m] = 0
        elif b > 0.0:
            eta_ns[m] = np.int64((limits[m] - a) / b * _HOUR_NS)
