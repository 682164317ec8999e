"""Numba kernel for incident detection on forecast residuals (``core.traffic.incidents``).

Per-segment state lives in arrays indexed by int32 segment: the run of low intervals, the run of
recovered intervals, whether an incident is open, the last interval seen and the speed expected when
the incident began. Observations arrive as struct-of-arrays in event-time order per segment.
"""
from __future__ import annotations

import numpy as np
from numba import njit

RAISE = 1
CLEAR = -1


@njit(
    "i8(i4[:], i8[:], f8[:], f8[:], f8[:], i8[:], i8[:], i1[:], i8[:], f8[:], i8, i8, i8, i4[:], i8[:], i1[:], f8[:])",
    cache=True, nogil=True,
)
def incident_update(seg, ts, observed, forecast, threshold, low_run, ok_run, active, last_ts, expected,
                    step_ns, raise_after, clear_after, out_seg, out_ts, out_kind, out_resid):
    """Advance the detector over a batch; write raise (+1) / clear (-1) events; return their count.

    A segment raises when observed - forecast < -threshold[seg] for ``raise_after`` consecutive
    intervals, and clears after ``clear_after`` consecutive intervals back within the threshold of the
    speed expected when it started (the forecast adapts to a standing jam, so the current forecast would
    clear it too early). A missing interval (a gap above 1.5 steps) breaks a run. Non-finite inputs
    and observations not after the segment's last are ignored. out_* must hold len(seg) entries.
    """
    n_out = 0
    gap = step_ns + step_ns // 2
    for k in range(seg.shape[0]):
        s = seg[k]
        t = ts[k]
        obs = observed[k]
        fc = forecast[k]
        if not (np.isfinite(obs) and np.isfinite(fc)):
            continue
        if last_ts[s] != np.iinfo(np.int64).min:
            if t <= last_ts[s]:
                continue
            if t - last_ts[s] > gap:
                low_run[s] = 0
                ok_run[s] = 0
        last_ts[s] = t
        resid = obs - fc
        thr = threshold[s]
        if active[s] == 0:
            if resid < -thr:
                if low_run[s] == 0:
                    expected[s] = fc
                low_run[s] += 1
                if low_run[s] >= raise_after:
                    active[s] = 1
                    ok_run[s] = 0
                    out_seg[n_out] = s
                    out_ts[n_out] = t
                    out_kind[n_out] = RAISE
                    out_resid[n_out] = resid
                    n_out += 1
            else:
                low_run[s] = 0
        else:
            if obs >= expected[s] - thr:
                ok_run[s] += 1
                if ok_run[s] >= clear_after:
                    active[s] = 0
                    low_run[s] = 0
                    ok_run[s] = 0
                    out_seg[n_out] = s
                    out_ts[n_out] = t
                    out_kind[n_out] = CLEAR
                    out_resid[n_out] = resid
                    n_out += 1
            else:
                ok_run[s] = 0
    return n_out


@njit(cache=True, nogil=True)
def collapse(values, affected, segment, start, stop, factor, recovery):
    """Scale values[start:stop, segment] by factor, then ramp linearly back over ``recovery`` rows."""
    t_len = values.shape[0]
    for t in range(max(start, 0), min(stop + recovery, t_len)):
        if t < stop:
            f = factor
        else:
            f = factor + (1.0 - factor) * (t - stop + 1) / (recovery + 1)
        values[t, segment] *= f
        affected[t, segment] = True
