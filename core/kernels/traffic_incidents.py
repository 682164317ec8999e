"""Numba kernels for the network-aware incident detector (``core.traffic.incidents``).

One call handles one 5-minute bin for every segment at once, because a segment's verdict depends on its
neighbours' in the same bin. Per bin and segment, in this order:

1. detector health: a reading at or below ``zero`` (a dead loop reports 0), above ``hi`` (no road
   allows it), ``flat_bins`` identical readings below the segment's free-flow cap (a stuck detector;
   Los-loop saturates at 70 mph, which is not a fault), or two opposite jumps larger than
   ``spike_jump`` in a row (an erratic detector) are fault evidence. Evidence in ``fault_after`` bins in
   a row raises a FAULT event; ``fault_clear`` clean bins clear it. A segment with fault evidence or an
   open fault gives no incident evidence and confirms no neighbour.
2. the forecast error in robust sigmas, z = (observed - forecast) / scale, with scale the segment's
   robust spread of errors at this time of day;
3. a bin is low when z < -k with a drop of ``min_drop``, or (whatever the scale says, which a short or
   quiet history makes unreliable) when the reading is below ``rel_low`` x the forecast and below
   ``rel_low`` x the segment's time-of-day profile (a recurrent rush-hour slump is in the profile, so it
   is not evidence), again with a drop of ``min_drop``. Once a run has started, the following bins are
   judged against the speed expected at its start (the short-horizon forecast follows a collapse after
   a few bins and would hide it): low while below that speed minus the band that opened the run.
   An incident needs ``raise_after`` low bins in a row, and either an
   upstream/downstream neighbour (the segment's strongest road links) below -k_nb sigmas within the last
   ``nb_window`` bins, or ``alone_after`` bins in a row (a lone drop must last longer: it is more often
   a detector). ``clear_after`` bins back within the band of the speed expected at the start clear it.

State is two arrays per segment (int64 [N, NI], float64 [N, NF]), so it round-trips through npz.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# event kinds
RAISE = 1
CLEAR = -1
FAULT = 2
FAULT_CLEAR = -2
# fault codes (event ``code``)
NO_FAULT = 0
FAULT_ZERO = 1
FAULT_IMPOSSIBLE = 2
FAULT_FLATLINE = 3
FAULT_ERRATIC = 4

# cfg: float64 settings array
C_K = 0  # main threshold, robust sigmas below the forecast
C_K_NB = 1  # a neighbour confirms below this many sigmas
C_MIN_DROP = 2  # and at least this far below its forecast (speed units)
C_NB_MIN_DROP = 3
C_RAISE_AFTER = 4
C_ALONE_AFTER = 5
C_CLEAR_AFTER = 6
C_NB_WINDOW = 7  # bins a neighbour's drop counts as confirmation
C_ZERO = 8
C_HI = 9
C_FLAT_EPS = 10
C_FLAT_BINS = 11
C_SPIKE_JUMP = 12
C_FAULT_AFTER = 13
C_FAULT_CLEAR = 14
C_STEP_NS = 15
C_REL_LOW = 16  # a bin is also low below this fraction of the forecast AND of the time-of-day profile
C_PROF_LOW = 17  # every onset also needs the reading below this fraction of the profile (0: off)
N_CFG = 18

# int64 state columns
S_LAST_TS = 0
S_LOW_RUN = 1
S_OK_RUN = 2
S_ACTIVE = 3
S_FLAT_RUN = 4
S_FAULT_RUN = 5
S_FAULT_OK = 6
S_FAULT_ON = 7
S_FAULT_CODE = 8
S_NB_LOW_TS = 9
N_STATE_I = 10
# float64 state columns
F_PREV = 0
F_PREV_JUMP = 1
F_EXPECTED = 2
F_BAND = 3
N_STATE_F = 4

NO_TS = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def new_state(n):
    """Fresh (int, float) state for n segments."""
    si = np.zeros((n, N_STATE_I), np.int64)
    sf = np.full((n, N_STATE_F), np.nan)
    for s in range(n):
        si[s, S_LAST_TS] = NO_TS
        si[s, S_NB_LOW_TS] = NO_TS
    return si, sf


@njit(cache=True, nogil=True)
def detect_bin(t, obs, fc, prof, scale, cap, nb_top, cfg, si, sf, z, out_seg, out_kind, out_code, out_val, n_out):
    """Advance every segment by the bin at time t (ns). obs/fc/prof/scale/cap are [N] (NaN obs = not
    reported, NaN fc = no forecast, NaN prof = no profile: the relative test uses the forecast alone); nb_top [N, K] the strongest neighbours (a segment padded with itself).
    z [N] is scratch. Appends events from index n_out and returns the new count; out_* need 2 N free
    slots (at most one incident and one fault event per segment and bin)."""
    n = obs.shape[0]
    step = np.int64(cfg[C_STEP_NS])
    gap = step + step // 2
    k = cfg[C_K]
    for s in range(n):
        z[s] = np.nan
        o = obs[s]
        if not np.isfinite(o):
            continue
        last = si[s, S_LAST_TS]
        if last != NO_TS:
            if t <= last:
                continue
            if t - last > gap:  # a missing bin breaks every run
                si[s, S_LOW_RUN] = 0
                si[s, S_OK_RUN] = 0
                si[s, S_FLAT_RUN] = 0
                sf[s, F_PREV] = np.nan
                sf[s, F_PREV_JUMP] = np.nan
        si[s, S_LAST_TS] = t
        # 1. health
        code = NO_FAULT
        d = o - sf[s, F_PREV]
        if o <= cfg[C_ZERO]:
            code = FAULT_ZERO
        elif o > cfg[C_HI]:
            code = FAULT_IMPOSSIBLE
        if np.isfinite(d) and abs(d) <= cfg[C_FLAT_EPS]:
            si[s, S_FLAT_RUN] += 1
        else:
            si[s, S_FLAT_RUN] = 0
        flat = si[s, S_FLAT_RUN] >= 1 and o < cap[s]  # a repeated reading: never incident evidence
        if code == NO_FAULT and flat and si[s, S_FLAT_RUN] + 1 >= cfg[C_FLAT_BINS]:
            code = FAULT_FLATLINE
        pj = sf[s, F_PREV_JUMP]
        if code == NO_FAULT and np.isfinite(d) and np.isfinite(pj) and abs(d) > cfg[C_SPIKE_JUMP] \
                and abs(pj) > cfg[C_SPIKE_JUMP] and d * pj < 0:
            code = FAULT_ERRATIC
        sf[s, F_PREV] = o
        sf[s, F_PREV_JUMP] = d
        if code != NO_FAULT:
            si[s, S_FAULT_RUN] += 1
            si[s, S_FAULT_OK] = 0
            need = 1 if code == FAULT_FLATLINE else cfg[C_FAULT_AFTER]
            if si[s, S_FAULT_ON] == 0 and si[s, S_FAULT_RUN] >= need:
                si[s, S_FAULT_ON] = 1
                si[s, S_FAULT_CODE] = code
                out_seg[n_out] = s
                out_kind[n_out] = FAULT
                out_code[n_out] = code
                out_val[n_out] = o
                n_out += 1
        else:
            si[s, S_FAULT_RUN] = 0
            if si[s, S_FAULT_ON] == 1:
                si[s, S_FAULT_OK] += 1
                if si[s, S_FAULT_OK] >= cfg[C_FAULT_CLEAR]:
                    si[s, S_FAULT_ON] = 0
                    si[s, S_FAULT_OK] = 0
                    out_seg[n_out] = s
                    out_kind[n_out] = FAULT_CLEAR
                    out_code[n_out] = si[s, S_FAULT_CODE]
                    out_val[n_out] = o
                    n_out += 1
        if code != NO_FAULT or flat or si[s, S_FAULT_ON] == 1:
            si[s, S_LOW_RUN] = 0
            continue
        # 2. forecast error in robust sigmas
        f = fc[s]
        sc = scale[s]
        if np.isfinite(f) and np.isfinite(sc) and sc > 0:
            z[s] = (o - f) / sc
            if z[s] < -cfg[C_K_NB] and o - f < -cfg[C_NB_MIN_DROP]:
                si[s, S_NB_LOW_TS] = t
    # 3. decisions, now that every neighbour's evidence of this bin is known
    window = np.int64(cfg[C_NB_WINDOW]) * step
    for s in range(n):
        zs = z[s]
        if not np.isfinite(zs):
            continue
        o = obs[s]
        f = fc[s]
        drop = o - f
        band = max(k * scale[s], cfg[C_MIN_DROP])
        if si[s, S_ACTIVE] == 0:
            low = False
            if si[s, S_LOW_RUN] > 0:  # a run goes on while below the speed expected at its start
                low = o < sf[s, F_EXPECTED] - sf[s, F_BAND]
                if not low:
                    si[s, S_LOW_RUN] = 0
            if si[s, S_LOW_RUN] == 0:
                rel = cfg[C_REL_LOW]
                p = prof[s]
                by_sigma = zs < -k
                by_ratio = rel > 0 and o < rel * f and (not np.isfinite(p) or o < rel * p)
                low = (by_sigma or by_ratio) and drop < -cfg[C_MIN_DROP]
                if low and cfg[C_PROF_LOW] > 0 and np.isfinite(p) and o >= cfg[C_PROF_LOW] * p:
                    low = False  # no slower than usual at this time of day: recurrent, not an incident
                if low:
                    sf[s, F_EXPECTED] = f
                    b = band if by_sigma else max((1.0 - rel) * f, cfg[C_MIN_DROP])
                    if by_sigma and by_ratio:
                        b = min(band, max((1.0 - rel) * f, cfg[C_MIN_DROP]))
                    sf[s, F_BAND] = b
            if low:
                si[s, S_LOW_RUN] += 1
            run = si[s, S_LOW_RUN]
            if run >= cfg[C_RAISE_AFTER]:
                support = run >= cfg[C_ALONE_AFTER]
                for j in range(nb_top.shape[1]):
                    nb = nb_top[s, j]
                    if nb != s and si[nb, S_NB_LOW_TS] != NO_TS and t - si[nb, S_NB_LOW_TS] <= window:
                        support = True
                if support:
                    si[s, S_ACTIVE] = 1
                    si[s, S_OK_RUN] = 0
                    out_seg[n_out] = s
                    out_kind[n_out] = RAISE
                    out_code[n_out] = NO_FAULT
                    out_val[n_out] = drop
                    n_out += 1
        else:
            if o >= sf[s, F_EXPECTED] - sf[s, F_BAND]:
                si[s, S_OK_RUN] += 1
                if si[s, S_OK_RUN] >= cfg[C_CLEAR_AFTER]:
                    si[s, S_ACTIVE] = 0
                    si[s, S_LOW_RUN] = 0
                    si[s, S_OK_RUN] = 0
                    out_seg[n_out] = s
                    out_kind[n_out] = CLEAR
                    out_code[n_out] = NO_FAULT
                    out_val[n_out] = drop
                    n_out += 1
            else:
                si[s, S_OK_RUN] = 0
    return n_out


@njit(cache=True, nogil=True)
def detect_series(ts, obs, fc, prof, bucket, scale_table, cap, nb_top, cfg, si, sf):
    """detect_bin over rows: ts [R], obs/fc/prof [R, N], bucket [R] (row of scale_table [B, N]).
    Returns (row, segment, kind, code, value) of every event, in order."""
    r_len, n = obs.shape
    cap_out = 2 * n * r_len + 1
    out_seg = np.empty(cap_out, np.int32)
    out_kind = np.empty(cap_out, np.int8)
    out_code = np.empty(cap_out, np.int8)
    out_val = np.empty(cap_out, np.float64)
    out_row = np.empty(cap_out, np.int64)
    z = np.empty(n)
    n_out = 0
    for r in range(r_len):
        m = detect_bin(ts[r], obs[r], fc[r], prof[r], scale_table[bucket[r]], cap, nb_top, cfg, si, sf, z,
                       out_seg, out_kind, out_code, out_val, n_out)
        for e in range(n_out, m):
            out_row[e] = r
        n_out = m
    return out_row[:n_out], out_seg[:n_out], out_kind[:n_out], out_code[:n_out], out_val[:n_out]


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
