"""Numba kernels for the traffic forecaster (``core.traffic.forecaster``).

The model is linear in a small set of features per segment and horizon, all expressed relative to the
segment's last value ``x`` so one pooled coefficient vector means the same thing on every road:

    own lags      x[t-j] - x                       j = 1 .. L-1
    neighbours    nb[t-l] - x                      l = 0 .. 2   (nb = adjacency-weighted mean)
    profile       p[t+h] - x,  p[t] - x            time-of-day profile, target and now
    nb anomaly    nb[t] - pnb[t]                   neighbours against their own profile
    top-k         x_k[t] - x                       the K most strongly linked neighbours, one by one
    hinges        min(p[t+h] - x, 0), min(nb[t] - x, 0)
    intercept     1
    optional      network anomaly, neighbours' expected change, top-k lags (see ``opts``),
                  area anomaly  A2 d, A4 d   (d = x - p[t] on every segment, A the row-normalised graph),
                  departure hinges  max(d - r, 0), min(d + 3 r, 0)   (r = regime_drop),
                  jump hinges  max(x[t-j] - x - r, 0), min(x[t-j] - x + r, 0)   j = 1 .. J

and each segment has two coefficient sets, picked by regime: congested (``x - p[t] < -regime_drop``)
or not. Data are struct-of-arrays: values float64 [T, N], time slots and day types int64 per row,
the neighbour graph in CSR form (int64 pointers, int32 indices, float64 row-normalised weights).
"""
from __future__ import annotations

import numpy as np
from numba import njit

N_NEIGHBOUR_LAGS = 3  # number of nb[t-l] features; a layout fact, not a tunable
# optional feature groups, an int64 array ``opts`` passed to every kernel:
OPT_TOPK_LAGS = 0  # values of each top-k neighbour at t, t-1, ... (this many lags, >= 1)
OPT_NETWORK = 1  # 1: the network-wide anomaly mean_i(x_i - p_i) (the day runs light or heavy everywhere)
OPT_NB_TARGET = 2  # 1: the neighbours' expected change pnb[t+h] - pnb[t]
OPT_AREA = 3  # 1: the departure from the profile averaged over 2 and 4 hops of the road graph
OPT_DEV_HINGE = 4  # 1: hinges of the departure from the profile, max(x - p - d, 0) and min(x - p + 3 d, 0)
OPT_JUMP_HINGE = 5  # J >= 0: hinges of the changes over the last 1..J steps, max(x[t-j] - x - r, 0), min(.. + r, 0)
N_OPTS = 6
N_WORK_EXTRA = 5  # scratch rows of ``work`` past L + 2 + H: the area departure at 0..4 hops


@njit(cache=True, nogil=True)
def n_features(n_lags, top_k, opts):
    """Feature count for a lag window, a top-k neighbour count and the optional feature groups ``opts``
    (see the module docstring)."""
    return (n_lags - 1) + N_NEIGHBOUR_LAGS + 2 + 1 + top_k * opts[OPT_TOPK_LAGS] + 2 + 1 + opts[OPT_NETWORK] \
        + opts[OPT_NB_TARGET] + 2 * opts[OPT_AREA] + 2 * opts[OPT_DEV_HINGE] + 2 * opts[OPT_JUMP_HINGE]


@njit(cache=True, nogil=True)
def horizon_features(n_lags, top_k, opts):
    """Indices of the features that differ between horizons (they involve the profile at t+h):
    p[t+h] - x, its hinge and, when on, the neighbours' expected change. Every other feature of a window
    is the same for all horizons."""
    c_tgt = (n_lags - 1) + N_NEIGHBOUR_LAGS
    c_hinge = c_tgt + 3 + top_k * opts[OPT_TOPK_LAGS]
    out = np.empty(2 + opts[OPT_NB_TARGET], np.int64)
    out[0] = c_tgt
    out[1] = c_hinge
    if opts[OPT_NB_TARGET]:
        out[2] = c_hinge + 3 + opts[OPT_NETWORK]
    return out


@njit(cache=True, nogil=True)
def tod_profile(values, slot, day_type, n_slots, smooth):
    """Time-of-day profile per day type, plus a leave-one-day-out profile for every row.

    values [T, N] are consecutive rows (row k+1 is one slot after row k) and may hold NaN (skipped);
    slot/day_type are int64 per row (0 weekday, 1 weekend). Each slot averages a circular window of
    +-smooth slots. A day type with no data at a slot falls back to all days, and a sensor never seen
    at a slot to its overall mean. Returns (profile [2, n_slots, N], loo [T, N]); loo[t] leaves out
    row t's own day, so features built from it during fitting do not contain the target they predict.
    Memory is O(slots x N) whatever the history length.
    """
    t_len, n = values.shape
    tsum = np.zeros((3, n_slots, n))  # index 2 = all days
    tcnt = np.zeros((3, n_slots, n))
    for t in range(t_len):
        ty = day_type[t]
        for k in range(-smooth, smooth + 1):
            j = (slot[t] + k) % n_slots
            for i in range(n):
                v = values[t, i]
                if np.isfinite(v):
                    tsum[ty, j, i] += v
                    tcnt[ty, j, i] += 1.0
                    tsum[2, j, i] += v
                    tcnt[2, j, i] += 1.0
    prof = np.empty((2, n_slots, n))
    for i in range(n):
        a = 0.0
        c = 0.0
        for s in range(n_slots):
            a += tsum[2, s, i]
            c += tcnt[2, s, i]
        overall = a / c if c > 0 else np.nan
        for ty in range(2):
            for s in range(n_slots):
                if tcnt[ty, s, i] > 0:
                    prof[ty, s, i] = tsum[ty, s, i] / tcnt[ty, s, i]
                elif tcnt[2, s, i] > 0:
                    prof[ty, s, i] = tsum[2, s, i] / tcnt[2, s, i]
                else:
                    prof[ty, s, i] = overall
    loo = np.empty((t_len, n))
    own = np.empty(n)
    own_n = np.empty(n)
    for t in range(t_len):
        s = slot[t]
        ty = day_type[t]
        own[:] = 0.0
        own_n[:] = 0.0
        for k in range(-smooth, smooth + 1):
            r = t + (s + k) % n_slots - s  # the same day's row at the smoothed slot
            if r < 0 or r >= t_len:
                continue
            for i in range(n):
                v = values[r, i]
                if np.isfinite(v):
                    own[i] += v
                    own_n[i] += 1.0
        for i in range(n):
            if tcnt[ty, s, i] - own_n[i] > 0:
                loo[t, i] = (tsum[ty, s, i] - own[i]) / (tcnt[ty, s, i] - own_n[i])
            elif tcnt[2, s, i] - own_n[i] > 0:
                loo[t, i] = (tsum[2, s, i] - own[i]) / (tcnt[2, s, i] - own_n[i])
            else:
                loo[t, i] = prof[ty, s, i]
    return prof, loo


@njit(cache=True, nogil=True)
def neighbour_mean(x, nb_ptr, nb_idx, nb_w, out):
    """out[i] = adjacency-weighted mean of x over i's neighbours with a finite value, weights renormalised
    over those; x[i] itself when it has none."""
    n = x.shape[0]
    for i in range(n):
        acc = 0.0
        wsum = 0.0
        for e in range(nb_ptr[i], nb_ptr[i + 1]):
            v = x[nb_idx[e]]
            if np.isfinite(v):
                acc += nb_w[e] * v
                wsum += nb_w[e]
        out[i] = acc / wsum if wsum > 0.0 else x[i]


@njit(cache=True, nogil=True)
def window_features(xw, p_now, p_tgt, nb_ptr, nb_idx, nb_w, top_k, regime_drop, opts, feats, regime, work,
                    nb_ready=False):
    """Features of one input window for every segment and horizon.

    xw [L, N] is the raw window (NaN allowed: a gap takes the segment's last earlier value, leading gaps
    its first value, an all-missing segment its profile). p_now [N], p_tgt [H, N]; a missing profile
    value stands at the current level. Missing neighbours are left out of the means. Only a segment with
    neither data nor profile gets NaN features. Fills feats [N, H, F] and regime [N] (1 congested);
    work [L + 2 + H + N_WORK_EXTRA, N] is scratch. ``nb_ready``: its rows L + 1 .. L + 1 + H already hold
    the neighbour means of p_now and p_tgt (``profile_neighbour_means``: a fit's windows share their
    profile rows, so a caller computes them once per row, not H + 1 times per window).
    """
    n_lags, n = xw.shape
    n_h = p_tgt.shape[0]
    k_top = top_k.shape[1]
    xc = work[:n_lags]
    nb = work[n_lags]
    pnb = work[n_lags + 1]
    for i in range(n):
        first = np.nan
        for t in range(n_lags):
            if np.isfinite(xw[t, i]):
                first = xw[t, i]
                break
        if not np.isfinite(first):
            first = p_now[i]
        last = first
        for t in range(n_lags):
            v = xw[t, i]
            if np.isfinite(v):
                last = v
            xc[t, i] = last
    if not nb_ready:
        neighbour_mean(p_now, nb_ptr, nb_idx, nb_w, pnb)
    base_nb = n_lags - 1
    for lag in range(N_NEIGHBOUR_LAGS):
        neighbour_mean(xc[n_lags - 1 - lag], nb_ptr, nb_idx, nb_w, nb)
        for i in range(n):
            x = xc[n_lags - 1, i]
            for h in range(n_h):
                feats[i, h, base_nb + lag] = nb[i] - x
    # nb now holds lag N_NEIGHBOUR_LAGS-1; recompute the current neighbour mean for the anomaly/hinge
    neighbour_mean(xc[n_lags - 1], nb_ptr, nb_idx, nb_w, nb)
    k_lags = opts[OPT_TOPK_LAGS]
    net = 0.0
    if opts[OPT_NETWORK]:
        cnt = 0.0
        for i in range(n):
            if np.isfinite(p_now[i]) and np.isfinite(xc[n_lags - 1, i]):
                net += xc[n_lags - 1, i] - p_now[i]
                cnt += 1.0
        net = net / cnt if cnt > 0 else 0.0
    if opts[OPT_NB_TARGET] and not nb_ready:
        for h in range(n_h):
            neighbour_mean(p_tgt[h], nb_ptr, nb_idx, nb_w, work[n_lags + 2 + h])
    if opts[OPT_AREA]:
        # departures from the profile spread over 1, 2, 3, 4 hops (rows n_lags+2+H .. +3 of work)
        a0 = work[n_lags + 2 + n_h]
        for i in range(n):
            d = xc[n_lags - 1, i] - p_now[i]
            a0[i] = d if np.isfinite(d) else 0.0
        for k in range(4):
            neighbour_mean(work[n_lags + 2 + n_h + k], nb_ptr, nb_idx, nb_w, work[n_lags + 3 + n_h + k])
    for i in range(n):
        x = xc[n_lags - 1, i]
        pn = p_now[i] if np.isfinite(p_now[i]) else x
        regime[i] = 1 if x - pn < -regime_drop else 0
        for h in range(n_h):
            f = feats[i, h]
            for j in range(1, n_lags):
                f[j - 1] = xc[n_lags - 1 - j, i] - x
            c = base_nb + N_NEIGHBOUR_LAGS
            d_tgt = (p_tgt[h, i] if np.isfinite(p_tgt[h, i]) else x) - x
            f[c] = d_tgt
            f[c + 1] = pn - x
            f[c + 2] = nb[i] - pnb[i] if np.isfinite(pnb[i]) else 0.0
            c += 3
            for lag in range(k_lags):
                for k in range(k_top):
                    v = xc[n_lags - 1 - lag, top_k[i, k]]
                    f[c + k] = v - x if np.isfinite(v) else 0.0
                c += k_top
            f[c] = min(d_tgt, 0.0)
            f[c + 1] = min(nb[i] - x, 0.0)
            f[c + 2] = 1.0
            c += 3
            if opts[OPT_NETWORK]:
                f[c] = net
                c += 1
            if opts[OPT_NB_TARGET]:
                d = work[n_lags + 2 + h, i] - pnb[i]
                f[c] = d if np.isfinite(d) else 0.0
                c += 1
            if opts[OPT_AREA]:
                f[c] = work[n_lags + 2 + n_h + 2, i]
                f[c + 1] = work[n_lags + 2 + n_h + 4, i]
                c += 2
            if opts[OPT_DEV_HINGE]:
                d = x - pn
                f[c] = max(d - regime_drop, 0.0)
                f[c + 1] = min(d + 3.0 * regime_drop, 0.0)
                c += 2
            for j in range(1, opts[OPT_JUMP_HINGE] + 1):
                d = xc[n_lags - 1 - j, i] - x
                f[c] = max(d - regime_drop, 0.0)
                f[c + 1] = min(d + regime_drop, 0.0)
                c += 2


@njit(cache=True, nogil=True)
def profile_neighbour_means(table, keys, nb_ptr, nb_idx, nb_w, cache, done, out):
    """out [len(keys), N] = the neighbour means of the profile rows table[keys[k]] (table [R, N]), each
    row's computed once into cache [R, N] (done [R] marks those there): ``window_features``'s rows
    L + 1 .. L + 1 + H with nb_ready."""
    for k in range(keys.shape[0]):
        r = keys[k]
        if not done[r]:
            neighbour_mean(table[r], nb_ptr, nb_idx, nb_w, cache[r])
            done[r] = True
        out[k] = cache[r]


@njit(cache=True, nogil=True)
def shared_features(n_lags, top_k, opts):
    """(keep, dep): the indices of the horizon-independent features and of the horizon-dependent ones
    (``horizon_features``), for the split of ``accumulate_parts``."""
    n_f = n_features(n_lags, top_k, opts)
    dep = horizon_features(n_lags, top_k, opts)
    is_dep = np.zeros(n_f, np.bool_)
    for d in dep:
        is_dep[d] = True
    keep = np.empty(n_f - dep.shape[0], np.int64)
    k = 0
    for a in range(n_f):
        if not is_dep[a]:
            keep[k] = a
            k += 1
    return keep, dep


@njit(cache=True, nogil=True)
def accumulate_normal_equations(values, prof_rows, t_first, t_last, n_lags, nb_ptr, nb_idx, nb_w, top_k,
                                regime_drop, opts, gram, rhs, ysum):
    """Add every training window ending in rows [t_first, t_last] to the per-segment normal equations.

    values [T, N] are both inputs (gaps allowed) and targets (a missing target is skipped); prof_rows
    [T, N] is the profile to use per row (leave-one-day-out when fitting). A horizon whose target row
    falls past the end of the arrays is skipped. gram [H, N, 2, F, F], rhs [H, N, 2, F] and ysum
    [H, N, 2, 2] (sum of squared targets, count) accumulate in place: with them the mean squared error
    of any coefficients c on these windows is (c'Gc - 2 c'r + sum y^2) / count, no forecast needed.
    """
    keep, dep = shared_features(n_lags, top_k.shape[1], opts)
    n_h, n = gram.shape[0], gram.shape[1]
    shared = np.zeros((n, 2, keep.shape[0], keep.shape[0]))
    dep_rows = np.zeros((n_h, n, 2, dep.shape[0], gram.shape[3]))
    accumulate_parts(values, prof_rows, t_first, t_last, n_lags, nb_ptr, nb_idx, nb_w, top_k, regime_drop, opts,
                     gram, rhs, ysum, shared, dep_rows)
    add_parts(shared, dep_rows, keep, dep, 1.0, gram)


@njit(cache=True, nogil=True)
def accumulate_parts(values, prof_rows, t_first, t_last, n_lags, nb_ptr, nb_idx, nb_w, top_k, regime_drop, opts,
                     gram, rhs, ysum, shared, dep_rows):
    """``accumulate_normal_equations`` without its last step: the windows whose H targets are all there
    go to shared [N, 2, S, S] (upper triangle) and dep_rows [H, N, 2, D, F] (see below; ``add_parts`` adds them),
    the others straight to gram. Returns the number of (window, segment) pairs of the latter kind (0: gram
    untouched)."""
    t_len, n = values.shape
    n_h = gram.shape[0]
    n_f = gram.shape[3]
    feats = np.empty((n, n_h, n_f))
    regime = np.empty(n, np.int64)
    work = np.empty((n_lags + 2 + n_h + N_WORK_EXTRA, n))
    p_tgt = np.empty((n_h, n))
    # A window whose H targets are all there adds the same outer product of its horizon-independent
    # features to every horizon: it is summed once into ``shared`` and added to each horizon at the end
    # (about 5x less work than H full squares); only the few horizon-dependent rows and columns are
    # summed per horizon. A window missing a target takes the full square per horizon it has.
    keep, dep = shared_features(n_lags, top_k.shape[1], opts)
    n_s = keep.shape[0]
    n_d = dep.shape[0]
    n_partial = 0
    xs = np.empty(n_s)
    nb_cache = np.empty((t_len, n))
    nb_done = np.zeros(t_len, np.bool_)
    keys = np.empty(n_h + 1, np.int64)
    for t in range(max(t_first, n_lags - 1), t_last + 1):
        keys[0] = t
        for h in range(n_h):
            r = min(t + 1 + h, t_len - 1)
            keys[h + 1] = r
            for i in range(n):
                p_tgt[h, i] = prof_rows[r, i]
        profile_neighbour_means(prof_rows, keys, nb_ptr, nb_idx, nb_w, nb_cache, nb_done,
                                work[n_lags + 1:n_lags + 2 + n_h])
        window_features(values[t - n_lags + 1:t + 1], prof_rows[t], p_tgt, nb_ptr, nb_idx, nb_w, top_k,
                        regime_drop, opts, feats, regime, work, True)
        for i in range(n):
            x0 = work[n_lags - 1, i]  # the gap-filled current level: targets are changes from it
            if not np.isfinite(x0):
                continue
            g = regime[i]
            whole = t + n_h < t_len
            if whole:
                for h in range(n_h):
                    if not np.isfinite(values[t + 1 + h, i]):
                        whole = False
                        break
            if not whole:
                n_partial += 1
            else:
                f0 = feats[i, 0]
                for a in range(n_s):
                    xs[a] = f0[keep[a]]
                sm = shared[i, g]
                for a in range(n_s):  # its upper triangle (the square is symmetric)
                    xa = xs[a]
                    row = sm[a]
                    for b in range(a, n_s):
                        row[b] += xa * xs[b]
            for h in range(n_h):
                r = t + 1 + h
                if r >= t_len:
                    break
                y = values[r, i]
                if not np.isfinite(y):
                    continue
                x = feats[i, h]
                dy = y - x0
                gm = gram[h, i, g]
                rv = rhs[h, i, g]
                ysum[h, i, g, 0] += dy * dy
                ysum[h, i, g, 1] += 1.0
                for a in range(n_f):
                    rv[a] += x[a] * dy
                if whole:
                    for k in range(n_d):  # the dependent rows in full; their columns at the end
                        xd = x[dep[k]]
                        row = dep_rows[h, i, g, k]
                        for b in range(n_f):
                            row[b] += xd * x[b]
                else:
                    for a in range(n_f):
                        xa = x[a]
                        row = gm[a]
                        for b in range(n_f):  # the full square: contiguous, so it vectorises
                            row[b] += xa * x[b]
    return n_partial


@njit(cache=True, nogil=True)
def _dep_mask(dep, n_f):
    """[F] bool: the horizon-dependent features ``dep`` among F."""
    out = np.zeros(n_f, np.bool_)
    for d in dep:
        out[d] = True
    return out


@njit(cache=True, nogil=True)
def add_parts(shared, dep_rows, keep, dep, sign, gram):
    """gram [H, N, 2, F, F] += sign x the squares that ``accumulate_parts`` left in shared and dep_rows
    (sign -1: leave those windows out of a sum that has them)."""
    n_h, n = gram.shape[0], gram.shape[1]
    n_f = gram.shape[3]
    n_s = keep.shape[0]
    n_d = dep.shape[0]
    is_dep = _dep_mask(dep, n_f)
    for i in range(n):
        for g in range(2):
            sm = shared[i, g]
            for h in range(n_h):
                gm = gram[h, i, g]
                for a in range(n_s):
                    row = gm[keep[a]]
                    for b in range(n_s):
                        row[keep[b]] += sign * (sm[a, b] if a <= b else sm[b, a])
                for k in range(n_d):
                    d = dep[k]
                    dr = dep_rows[h, i, g, k]
                    for b in range(n_f):
                        gm[d, b] += sign * dr[b]
                        if not is_dep[b]:
                            gm[b, d] += sign * dr[b]


@njit(cache=True, nogil=True)
def _forecast_features(n_lags, coef, lo, hi, out, feats, regime, work):
    """``forecast_window``'s forecasts from the features that ``window_features`` left."""
    n_h, n, _, n_f = coef.shape
    for i in range(n):
        x = work[n_lags - 1, i]  # the gap-filled current level
        g = regime[i]
        for h in range(n_h):
            acc = x
            f = feats[i, h]
            c = coef[h, i, g]
            for a in range(n_f):
                acc += c[a] * f[a]
            out[h, i] = min(max(acc, lo), hi) if np.isfinite(acc) else np.nan


@njit(
    "void(f8[:, :], f8[:], f8[:, :], i8[:], i4[:], f8[:], i4[:, :], f8, i8[:], f8[:, :, :, :], f8, f8, f8[:, :], "
    "f8[:, :, :], i8[:], f8[:, :])",
    cache=True, nogil=True,
)
def forecast_window(xw, p_now, p_tgt, nb_ptr, nb_idx, nb_w, top_k, regime_drop, opts, coef, lo, hi, out,
                    feats, regime, work):
    """Forecast every segment 1..H steps after the window xw [L, N]; out [H, N].

    coef [H, N, 2, F] predicts the change from the segment's current level; forecasts are clipped to
    the [lo, hi] range seen in training. A segment with neither data in the window nor a profile gets NaN. feats/regime/work are scratch (see window_features).
    """
    window_features(xw, p_now, p_tgt, nb_ptr, nb_idx, nb_w, top_k, regime_drop, opts, feats, regime, work)
    _forecast_features(xw.shape[0], coef, lo, hi, out, feats, regime, work)


@njit(cache=True, nogil=True)
def forecast_rows(values, ends, slot, day_type, prof, nb_ptr, nb_idx, nb_w, top_k, regime_drop, opts, coef, lo, hi,
                  n_lags):
    """Forecasts from every window ending at the rows ``ends``; returns [len(ends), H, N].

    slot/day_type are per row and must extend H rows past the last end (rows beyond the data).
    """
    n = values.shape[1]
    n_h, _, _, n_f = coef.shape
    out = np.empty((ends.shape[0], n_h, n))
    feats = np.empty((n, n_h, n_f))
    regime = np.empty(n, np.int64)
    work = np.empty((n_lags + 2 + n_h + N_WORK_EXTRA, n))
    p_tgt = np.empty((n_h, n))
    n_slots = prof.shape[1]
    table = prof.reshape(-1, n)  # row day_type * n_slots + slot
    nb_cache = np.empty(table.shape)
    nb_done = np.zeros(table.shape[0], np.bool_)
    keys = np.empty(n_h + 1, np.int64)
    for w in range(ends.shape[0]):
        t = ends[w]
        keys[0] = day_type[t] * n_slots + slot[t]
        for h in range(n_h):
            r = t + 1 + h
            keys[h + 1] = day_type[r] * n_slots + slot[r]
            for i in range(n):
                p_tgt[h, i] = prof[day_type[r], slot[r], i]
        profile_neighbour_means(table, keys, nb_ptr, nb_idx, nb_w, nb_cache, nb_done, work[n_lags + 1:n_lags + 2 + n_h])
        window_features(values[t - n_lags + 1:t + 1], prof[day_type[t], slot[t]], p_tgt, nb_ptr, nb_idx, nb_w,
                        top_k, regime_drop, opts, feats, regime, work, True)
        _forecast_features(n_lags, coef, lo, hi, out[w], feats, regime, work)
    return out


@njit(cache=True, nogil=True)
def _finite_or_zero(v):
    return v if np.isfinite(v) else 0.0


@njit(cache=True, nogil=True)
def net_inputs(xr, x_ends, n_lags, pr, p_ends, raw, slot, n_slots, nb_ptr, nb_idx, nb_w, n_harm, nb_lags, out):
    """The residual net's inputs (``core.traffic.residual_net``) for W windows into out [W, N, F] float32.

    Window t reads the rows x_ends[t] - L + 1 .. x_ends[t] of the gap-filled values xr [., N] (NaN where
    unknown) and the profile now and at each target, the rows p_ends[t] .. p_ends[t] + H of pr [., N] (a
    fit passes its rows once, not a copy per window); raw [W, H, N] the linear forecasts, slot [W] the
    time of day of each window's last row. Per segment, relative to its level x (the profile where x is
    unknown): the L-1 earlier values, the H profile values and the H forecasts; then its departure
    d = x - p, d averaged over 1 and 2 hops and over the network, the neighbours' mean level minus x, x,
    the time of day as sine and cosine of its first ``n_harm`` harmonics (one cannot draw a rush hour),
    and for each lag l of ``nb_lags`` the neighbours' mean level l steps ago minus now (a jam arriving
    from next door). An unknown input is 0. F = (L - 1) + 2 H + 6 + 2 n_harm + len(nb_lags).
    """
    n_w, n_h, n = raw.shape
    x = np.empty(n)
    dev = np.empty(n)
    nb1 = np.empty(n)
    nb2 = np.empty(n)
    harm = np.empty(2 * n_harm)  # the time of day's harmonics: the same for every segment of a window
    for t in range(n_w):
        xc = xr[x_ends[t] - n_lags + 1:x_ends[t] + 1]
        p_now = pr[p_ends[t]]
        p_tgt = pr[p_ends[t] + 1:p_ends[t] + 1 + n_h]
        net = 0.0
        for i in range(n):
            v = xc[n_lags - 1, i]
            x[i] = v if np.isfinite(v) else p_now[i]
            dev[i] = _finite_or_zero(x[i] - p_now[i])
            net += dev[i]
        net /= n
        for i in range(n):
            acc = 0.0
            for e in range(nb_ptr[i], nb_ptr[i + 1]):
                acc += nb_w[e] * dev[nb_idx[e]]
            nb1[i] = acc
        for i in range(n):
            acc = 0.0
            for e in range(nb_ptr[i], nb_ptr[i + 1]):
                acc += nb_w[e] * nb1[nb_idx[e]]
            nb2[i] = acc
        ang = 2.0 * np.pi * slot[t] / n_slots
        for k in range(n_harm):
            harm[2 * k] = np.sin((k + 1) * ang)
            harm[2 * k + 1] = np.cos((k + 1) * ang)
        for i in range(n):
            o = out[t, i]
            xi = x[i]
            c = 0
            for j in range(n_lags - 1):
                o[c] = _finite_or_zero(xc[j, i] - xi)
                c += 1
            for h in range(n_h):
                o[c] = _finite_or_zero(p_tgt[h, i] - xi)
                o[c + n_h] = _finite_or_zero(raw[t, h, i] - xi)
                c += 1
            c += n_h
            acc = 0.0
            for e in range(nb_ptr[i], nb_ptr[i + 1]):
                acc += nb_w[e] * _finite_or_zero(x[nb_idx[e]])
            o[c] = dev[i]
            o[c + 1] = nb1[i]
            o[c + 2] = nb2[i]
            o[c + 3] = net
            o[c + 4] = _finite_or_zero(acc - xi)
            o[c + 5] = _finite_or_zero(xi)
            c += 6
            for k in range(2 * n_harm):
                o[c + k] = harm[k]
            c += 2 * n_harm
            for lag in nb_lags:
                acc = 0.0
                for e in range(nb_ptr[i], nb_ptr[i + 1]):
                    j = nb_idx[e]
                    acc += nb_w[e] * _finite_or_zero(xc[n_lags - 1 - lag, j] - x[j])
                o[c] = acc
                c += 1


@njit(cache=True, nogil=True)
def shrunk_solve(gram, rhs, lam_by_h, prior, out):
    """Each segment's ridge fit shrunk towards the pooled one: out[h, i, r] = (G + lam I)^-1 (b + lam prior)
    with G = gram[h, i, r], b = rhs[h, i, r], lam = lam_by_h[h] > 0, prior [H, 2, F].

    G is a sum of outer products (symmetric, positive semi-definite), so G + lam I is positive definite
    and a Cholesky factor of its lower triangle solves it: half the work of an LU, without the per-call
    overhead of ``np.linalg.solve`` on thousands of small systems.
    """
    n_h, n, n_r, n_f, _ = gram.shape
    fac = np.empty((n_f, n_f))
    z = np.empty(n_f)
    for h in range(n_h):
        lam = lam_by_h[h]
        for i in range(n):
            for r in range(n_r):
                g = gram[h, i, r]
                for j in range(n_f):  # G + lam I = fac fac', fac lower triangular, by rows
                    fj = fac[j]
                    for c in range(j + 1):
                        fc = fac[c]
                        s = g[j, c]
                        for k in range(c):
                            s -= fj[k] * fc[k]
                        if c < j:
                            fj[c] = s / fc[c]
                        else:
                            fj[j] = np.sqrt(s + lam)
                b = rhs[h, i, r]
                pr = prior[h, r]
                for j in range(n_f):  # fac z = b + lam prior
                    s = b[j] + lam * pr[j]
                    fj = fac[j]
                    for k in range(j):
                        s -= fj[k] * z[k]
                    z[j] = s / fj[j]
                o = out[h, i, r]
                for j in range(n_f - 1, -1, -1):  # fac' o = z
                    s = z[j]
                    for k in range(j + 1, n_f):
                        s -= fac[k, j] * o[k]
                    o[j] = s / fac[j, j]


@njit(cache=True, nogil=True)
def nan_mad(x, out):
    """out[j] = the median over i of |x[i, j] - m_j|, m_j the median of column j, both over its non-NaN
    values (NaN when it has none): ``np.nanmedian`` twice along axis 0 without its per-column Python loop
    (the same values: both average the two middle ones of an even count)."""
    n_r, n_c = x.shape
    buf = np.empty(n_r)
    for j in range(n_c):
        k = 0
        for i in range(n_r):
            v = x[i, j]
            if not np.isnan(v):
                buf[k] = v
                k += 1
        if k == 0:
            out[j] = np.nan
            continue
        med = np.median(buf[:k])
        for i in range(k):
            buf[i] = abs(buf[i] - med)
        out[j] = np.median(buf[:k])
