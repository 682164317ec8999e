"""Reference implementations of the alarm kernels: vectorised numpy and plain Python.

Same arguments, same in-place state updates and the same transitions as ``core.kernels.alarm_kernels``
(the Python one even in the same order; the numpy one equal once canonically sorted). They exist to
cross-check the numba kernels in tests and as the baselines of ``wulian bench alarms``; the engine can run
on them with ``AlarmEngine(..., impl="numpy" | "python")``.
"""
from __future__ import annotations

import math

import numpy as np

from wulian.core.kernels import alarm_kernels as K

NO_TS = K.NO_TS
_NS_PER_MIN = 60e9
_NS_PER_S = 1e9
_WORD_LIMIT = 9.2e18


def _empty_out():
    return (np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0, np.int64), np.empty(0, np.float64),
            np.empty(0, np.uint8), np.empty(0, np.int64))


# -- numpy -----------------------------------------------------------------------------------------------

def _flag_in_mask_np(mask: np.ndarray, code: np.ndarray) -> np.ndarray:
    code = code.astype(np.int64)
    ok = (code >= 48) & (code < 111)
    return ok & (((mask >> np.where(ok, code - 48, 0)) & 1) == 1)


def evaluate_batch_numpy(series, ts, values, flags, series_ptr, b_rule, rf, ri, seen_ts, bstate, bref, bacc,
                         max_per_series):
    """Vectorised over series: readings are ranked within their series, and round k evaluates every series'
    k-th accepted reading at once (a binding appears at most once per round, so fancy assignment is safe)."""
    n_series = series_ptr.shape[0] - 1
    idx = np.nonzero((series >= 0) & (series < n_series))[0]
    idx = idx[np.lexsort((ts[idx], series[idx]))]  # stable: equal times keep arrival order
    s = series[idx].astype(np.int64)
    t = ts[idx]
    first = np.ones(idx.shape[0], bool)
    first[1:] = (s[1:] != s[:-1]) | (t[1:] != t[:-1])
    accept = first & (t > seen_ts[s])
    idx, s, t = idx[accept], s[accept], t[accept]
    if idx.shape[0] == 0:
        return _empty_out()
    pos = np.arange(idx.shape[0])
    group_start = np.ones(idx.shape[0], bool)
    group_start[1:] = s[1:] != s[:-1]
    rank = pos - np.maximum.accumulate(np.where(group_start, pos, 0))
    last = np.ones(idx.shape[0], bool)
    last[:-1] = group_start[1:]
    seen_ts[s[last]] = t[last]

    by_rank = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[by_rank], np.arange(rank.max() + 2))
    outs = []
    for k in range(rank.max() + 1):
        sel = by_rank[bounds[k]: bounds[k + 1]]
        i = idx[sel]
        outs.append(_round_numpy(s[sel], t[sel], values[i], flags[i], series_ptr, b_rule, rf, ri, bstate, bref,
                                 bacc))
    return tuple(np.concatenate([o[j] for o in outs]) for j in range(6))


def _round_numpy(rs, rt, rv, rfl, series_ptr, b_rule, rf, ri, bstate, bref, bacc):
    """One reading per series: expand to bindings, compute trigger/clear per kind, run the state machine."""
    start = series_ptr[rs]
    cnt = series_ptr[rs + 1] - start
    rep = np.repeat(np.arange(rs.shape[0]), cnt)
    offsets = np.cumsum(cnt) - cnt
    b = start[rep] + (np.arange(rep.shape[0]) - offsets[rep])
    t, v, f = rt[rep], rv[rep], rfl[rep]
    r = b_rule[b]
    kind = ri[r, K.RI_KIND]
    nb = b.shape[0]
    trigger = np.zeros(nb, bool)
    clear = np.zeros(nb, bool)
    ev = np.ones(nb, bool)
    metric = v.astype(np.float64).copy()

    is_value = ((kind >= K.UPPER) & (kind <= K.FLATLINE)) | (kind == K.TREND)
    ev &= ~(is_value & (np.isnan(v) | _flag_in_mask_np(ri[r, K.RI_EXCLUDE], f)))
    ev &= is_value | (kind == K.MISSING) | (kind == K.FLAG) | (kind == K.BIT)

    def put(m, trig, clr):
        trigger[m] = trig
        clear[m] = clr

    m = ev & (kind == K.UPPER)
    put(m, v[m] > rf[r[m], K.RF_HI], v[m] <= rf[r[m], K.RF_CLEAR_HI])
    m = ev & (kind == K.LOWER)
    put(m, v[m] < rf[r[m], K.RF_LO], v[m] >= rf[r[m], K.RF_CLEAR_LO])
    m = ev & (kind == K.RANGE)
    put(m, (v[m] < rf[r[m], K.RF_LO]) | (v[m] > rf[r[m], K.RF_HI]),
        (v[m] >= rf[r[m], K.RF_CLEAR_LO]) & (v[m] <= rf[r[m], K.RF_CLEAR_HI]))

    m = np.nonzero(ev & (kind == K.RATE))[0]
    if m.size:
        bm = b[m]
        ref_ts, ref_v = bstate[bm, K.S_REF_TS].copy(), bref[bm].copy()
        bstate[bm, K.S_REF_TS] = t[m]
        bref[bm] = v[m]
        has = (ref_ts != NO_TS) & (t[m] > ref_ts)
        ev[m[~has]] = False
        h = m[has]
        metric[h] = np.abs(v[h] - ref_v[has]) * _NS_PER_MIN / (t[h] - ref_ts[has]).astype(np.float64)
        put(h, metric[h] > rf[r[h], K.RF_HI], metric[h] <= rf[r[h], K.RF_CLEAR_HI])

    m = np.nonzero(ev & (kind == K.FLATLINE))[0]
    if m.size:
        bm = b[m]
        ref_ts, ref_v = bstate[bm, K.S_REF_TS], bref[bm]
        reset = (ref_ts == NO_TS) | (np.abs(v[m] - ref_v) > rf[r[m], K.RF_TOL])
        mr, mf = m[reset], m[~reset]
        bstate[b[mr], K.S_REF_TS] = t[mr]
        bref[b[mr]] = v[mr]
        metric[mr] = 0.0
        put(mr, False, True)
        flat = t[mf] - ref_ts[~reset]
        metric[mf] = flat.astype(np.float64) / _NS_PER_S
        put(mf, flat >= ri[r[mf], K.RI_DURATION], False)

    m = np.nonzero(ev & (kind == K.TREND))[0]
    if m.size:
        bm, rm = b[m], r[m]
        _trend_update_numpy(bacc, bm, bstate[bm, K.S_REF_TS], t[m], v[m], rf[rm, K.RF_WINDOW])
        bstate[bm, K.S_REF_TS] = t[m]
        acc = bacc[bm]
        metric[m] = _time_to_limit_numpy(acc, rf[rm, K.RF_LO], rf[rm, K.RF_HI])
        with np.errstate(invalid="ignore"):
            hit = (acc[:, K.A_N] >= rf[rm, K.RF_MIN_N]) & (metric[m] <= rf[rm, K.RF_HORIZON])
        put(m, hit, ~hit)

    m = ev & (kind == K.MISSING)
    put(m, False, True)
    m = ev & (kind == K.FLAG)
    hit = _flag_in_mask_np(ri[r[m], K.RI_FLAGS], f[m])
    put(m, hit, ~hit)
    m = ev & (kind == K.BIT)
    ok = (v >= 0.0) & (v < _WORD_LIMIT)
    ev &= ~m | ok
    m &= ok
    words = np.where(m, v, 0.0).astype(np.int64)
    hit = ((words[m] >> ri[r[m], K.RI_BIT]) & 1) == 1
    put(m, hit, ~hit)

    e = np.nonzero(ev)[0]
    be, te, re = b[e], t[e], r[e]
    code = _advance_numpy(bstate, be, trigger[e], clear[e], te, ri[re, K.RI_PENDING], ri[re, K.RI_KEEP])
    o = np.nonzero(code)[0]
    return (be[o], code[o], te[o], metric[e][o], f[e][o].astype(np.uint8), np.abs(bstate[be[o], K.S_COUNT]))


def _trend_update_numpy(bacc, b, last_ts, t, v, window):
    """The kernel's ``trend_update`` on unique bindings at once (exp through libm, like the kernel)."""
    unseen = last_ts == NO_TS
    d = np.where(unseen, 0, t - np.where(unseen, 0, last_ts)).astype(np.float64) / _NS_PER_S
    fresh = unseen | (d > window)
    a = np.array([math.exp(x) for x in (-d / window).tolist()], np.float64)
    w, x, sv, xx, xv, n = (bacc[b, c] for c in (K.A_W, K.A_X, K.A_V, K.A_XX, K.A_XV, K.A_N))
    new = np.stack([a * w, a * (x - d * w), a * sv, a * (xx - 2.0 * d * x + d * d * w), a * (xv - d * sv), n],
                   axis=1)
    new[fresh] = 0.0
    new[:, K.A_W] += 1.0
    new[:, K.A_V] += v
    new[:, K.A_N] += 1.0
    bacc[b] = new


def _time_to_limit_numpy(acc, lo, hi):
    """The kernel's ``time_to_limit`` row by row."""
    w, x, sv, xx, xv = (acc[:, c] for c in (K.A_W, K.A_X, K.A_V, K.A_XX, K.A_XV))
    out = np.full(acc.shape[0], np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = w * xx - x * x
        ok = den > 0.0
        slope = (w * xv - x * sv) / den
        level = (sv - slope * x) / w
        past = ok & ((level >= hi) | (level <= lo))
        up = ok & ~past & (slope > 0.0) & (hi < np.inf)
        down = ok & ~past & ~up & (slope < 0.0) & (lo > -np.inf)
        out[past] = 0.0
        out[up] = ((hi - level) / slope)[up]
        out[down] = ((lo - level) / slope)[down]
    return out


def _advance_numpy(bstate, b, trigger, clear, t, pending, keep):
    """The kernel's ``_advance`` on unique bindings at once; returns transition codes (int8, 0 = none)."""
    code = np.zeros(b.shape[0], np.int8)
    count = bstate[b, K.S_COUNT]
    since = bstate[b, K.S_SINCE]
    act = count > 0

    m = act & trigger
    bstate[b[m], K.S_COUNT] = count[m] + 1
    bstate[b[m], K.S_SINCE] = NO_TS
    code[m] = K.UPDATE

    m = np.nonzero(act & ~trigger & clear)[0]
    cs = np.where(since[m] == NO_TS, t[m], since[m])
    bstate[b[m], K.S_SINCE] = cs
    done = m[t[m] - cs >= keep[m]]
    bstate[b[done], K.S_COUNT] = -count[done]
    bstate[b[done], K.S_SINCE] = NO_TS
    code[done] = K.CLEAR

    m = np.nonzero(~act & trigger)[0]
    cond = np.where(since[m] == NO_TS, t[m], since[m])
    bstate[b[m], K.S_SINCE] = cond
    up = m[t[m] - cond >= pending[m]]
    bstate[b[up], K.S_COUNT] = 1
    bstate[b[up], K.S_SINCE] = NO_TS
    code[up] = K.RAISE

    m = ~trigger & ~(act & clear)  # neither firing nor clearing: pending or keep-firing restarts
    bstate[b[m], K.S_SINCE] = NO_TS
    return code


def evaluate_timers_numpy(now, b_series, b_rule, rf, ri, seen_ts, bstate, bref):
    """The timer pass over all bindings at once; output in binding order like the kernel."""
    now = np.int64(now)
    nb = b_rule.shape[0]
    kind = ri[b_rule, K.RI_KIND]
    count = bstate[:, K.S_COUNT].copy()
    act = count > 0
    code = np.zeros(nb, np.int8)
    ts = np.zeros(nb, np.int64)
    value = np.full(nb, np.nan)

    miss = np.nonzero(kind == K.MISSING)[0]
    since = seen_ts[b_series[miss]]
    unseen = since == NO_TS
    fresh = miss[unseen & (bstate[miss, K.S_REF_TS] == NO_TS)]
    bstate[fresh, K.S_REF_TS] = now
    since = np.where(unseen, bstate[miss, K.S_REF_TS], since)
    duration = ri[b_rule[miss], K.RI_DURATION]
    off = now - since >= duration
    offline = np.zeros(nb, bool)
    offline[miss[off]] = True

    bstate[miss[off & act[miss]], K.S_SINCE] = NO_TS
    sel = off & ~act[miss]
    m = miss[sel]
    bstate[m, K.S_SINCE] = since[sel] + duration[sel]
    due = bstate[m, K.S_SINCE] + ri[b_rule[m], K.RI_PENDING]
    fire = due <= now
    up = m[fire]
    bstate[up, K.S_COUNT] = 1
    bstate[up, K.S_SINCE] = NO_TS
    code[up] = K.RAISE
    ts[up] = due[fire]
    value[up] = (now - since[sel][fire]).astype(np.float64) / _NS_PER_S

    m = np.nonzero(~offline & act & (bstate[:, K.S_SINCE] != NO_TS))[0]
    due = bstate[m, K.S_SINCE] + ri[b_rule[m], K.RI_KEEP]
    fire = due <= now
    dn = m[fire]
    bstate[dn, K.S_COUNT] = -count[dn]
    bstate[dn, K.S_SINCE] = NO_TS
    code[dn] = K.CLEAR
    ts[dn] = due[fire]

    o = np.nonzero(code)[0]
    return (o.astype(np.int64), code[o], ts[o], value[o], np.zeros(o.shape[0], np.uint8),
            np.abs(bstate[o, K.S_COUNT]))


# -- pure Python -----------------------------------------------------------------------------------------

def _flag_in_mask(mask: int, code: int) -> bool:
    return 48 <= code < 111 and (mask >> (code - 48)) & 1 == 1


def evaluate_batch_python(series, ts, values, flags, series_ptr, b_rule, rf, ri, seen_ts, bstate, bref, bacc,
                          max_per_series):
    """Reading by reading, binding by binding, on Python lists (state is converted in and the touched rows
    written back once per call, as a pure-Python engine would simply keep it in lists)."""
    ser, tsl, vl, fl = series.tolist(), ts.tolist(), values.tolist(), flags.tolist()
    n_series = series_ptr.shape[0] - 1
    rfl, ril = rf.tolist(), ri.tolist()
    ptr, brule = series_ptr.tolist(), b_rule.tolist()
    seen, rows, refs, accs = seen_ts.tolist(), bstate.tolist(), bref.tolist(), bacc.tolist()
    touched_s: set[int] = set()
    touched_b: set[int] = set()
    out: list[tuple] = []
    for i in sorted(range(len(ser)), key=lambda i: (ser[i], tsl[i])):  # the kernel's order
        s, t = ser[i], tsl[i]
        if not 0 <= s < n_series or t <= seen[s]:
            continue
        seen[s] = t
        touched_s.add(s)
        v, f = vl[i], fl[i]
        for b in range(ptr[s], ptr[s + 1]):
            r = brule[b]
            pf, pi = rfl[r], ril[r]
            kind = pi[K.RI_KIND]
            st = rows[b]
            touched_b.add(b)
            metric = v
            if kind == K.MISSING:
                trigger, clear = False, True
            elif kind == K.FLAG:
                trigger = _flag_in_mask(pi[K.RI_FLAGS], f)
                clear = not trigger
            elif kind == K.BIT:
                if not (v >= 0.0 and v < _WORD_LIMIT):
                    continue
                trigger = (int(v) >> pi[K.RI_BIT]) & 1 == 1
                clear = not trigger
            else:
                if math.isnan(v) or _flag_in_mask(pi[K.RI_EXCLUDE], f):
                    continue
                if kind == K.UPPER:
                    trigger, clear = v > pf[K.RF_HI], v <= pf[K.RF_CLEAR_HI]
                elif kind == K.LOWER:
                    trigger, clear = v < pf[K.RF_LO], v >= pf[K.RF_CLEAR_LO]
                elif kind == K.RANGE:
                    trigger = v < pf[K.RF_LO] or v > pf[K.RF_HI]
                    clear = pf[K.RF_CLEAR_LO] <= v <= pf[K.RF_CLEAR_HI]
                elif kind == K.RATE:
                    ref_ts, ref_v = st[K.S_REF_TS], refs[b]
                    st[K.S_REF_TS], refs[b] = t, v
                    if ref_ts == NO_TS or t <= ref_ts:
                        continue
                    metric = abs(v - ref_v) * _NS_PER_MIN / float(t - ref_ts)
                    trigger, clear = metric > pf[K.RF_HI], metric <= pf[K.RF_CLEAR_HI]
                elif kind == K.FLATLINE:
                    ref_ts = st[K.S_REF_TS]
                    if ref_ts == NO_TS or abs(v - refs[b]) > pf[K.RF_TOL]:
                        st[K.S_REF_TS], refs[b] = t, v
                        metric, trigger, clear = 0.0, False, True
                    else:
                        metric = float(t - ref_ts) / _NS_PER_S
                        trigger, clear = t - ref_ts >= pi[K.RI_DURATION], False
                elif kind == K.TREND:
                    acc = accs[b]
                    _trend_update_python(acc, st[K.S_REF_TS], t, v, pf[K.RF_WINDOW])
                    st[K.S_REF_TS] = t
                    metric = _time_to_limit_python(acc, pf[K.RF_LO], pf[K.RF_HI])
                    trigger = acc[K.A_N] >= pf[K.RF_MIN_N] and metric <= pf[K.RF_HORIZON]
                    clear = not trigger
                else:
                    continue
            code = _advance_python(st, trigger, clear, t, pi[K.RI_PENDING], pi[K.RI_KEEP])
            if code:
                out.append((b, code, t, metric, f, abs(st[K.S_COUNT])))
    if touched_s:
        ts_idx = np.fromiter(touched_s, np.int64, len(touched_s))
        seen_ts[ts_idx] = [seen[s] for s in ts_idx.tolist()]
    if touched_b:
        b_idx = np.fromiter(touched_b, np.int64, len(touched_b))
        bstate[b_idx] = [rows[b] for b in b_idx.tolist()]
        bref[b_idx] = [refs[b] for b in b_idx.tolist()]
        if bacc.shape[1]:
            bacc[b_idx] = [accs[b] for b in b_idx.tolist()]
    return _pack(out)


def _trend_update_python(acc: list[float], last_ts: int, t: int, v: float, window: float) -> None:
    d = 0.0 if last_ts == NO_TS else float(t - last_ts) / _NS_PER_S
    if last_ts == NO_TS or d > window:
        acc[:] = [0.0] * K.A_COLS
    else:
        a = math.exp(-d / window)
        w, x, sv, xx, xv, n = acc
        acc[:] = [a * w, a * (x - d * w), a * sv, a * (xx - 2.0 * d * x + d * d * w), a * (xv - d * sv), n]
    acc[K.A_W] += 1.0
    acc[K.A_V] += v
    acc[K.A_N] += 1.0


def _time_to_limit_python(acc: list[float], lo: float, hi: float) -> float:
    w, x, sv, xx, xv, _ = acc
    den = w * xx - x * x
    if not den > 0.0:
        return math.nan
    slope = (w * xv - x * sv) / den
    level = (sv - slope * x) / w
    if level >= hi or level <= lo:
        return 0.0
    if slope > 0.0 and hi < math.inf:
        return (hi - level) / slope
    if slope < 0.0 and lo > -math.inf:
        return (lo - level) / slope
    return math.nan


def _advance_python(st: list[int], trigger: bool, clear: bool, t: int, pending: int, keep: int) -> int:
    count = st[K.S_COUNT]
    if count > 0:
        if trigger:
            st[K.S_COUNT], st[K.S_SINCE] = count + 1, NO_TS
            return K.UPDATE
        if clear:
            if st[K.S_SINCE] == NO_TS:
                st[K.S_SINCE] = t
            if t - st[K.S_SINCE] >= keep:
                st[K.S_COUNT], st[K.S_SINCE] = -count, NO_TS
                return K.CLEAR
            return 0
        st[K.S_SINCE] = NO_TS
        return 0
    if trigger:
        if st[K.S_SINCE] == NO_TS:
            st[K.S_SINCE] = t
        if t - st[K.S_SINCE] >= pending:
            st[K.S_COUNT], st[K.S_SINCE] = 1, NO_TS
            return K.RAISE
        return 0
    st[K.S_SINCE] = NO_TS
    return 0


def _pack(out: list[tuple]):
    if not out:
        return _empty_out()
    b, kind, t, value, flag, count = zip(*out)
    return (np.array(b, np.int64), np.array(kind, np.int8), np.array(t, np.int64), np.array(value, np.float64),
            np.array(flag, np.uint8), np.array(count, np.int64))


def evaluate_timers_python(now, b_series, b_rule, rf, ri, seen_ts, bstate, bref):
    """The timer pass binding by binding."""
    now = int(now)
    ril, seen, rows = ri.tolist(), seen_ts.tolist(), bstate.tolist()
    out: list[tuple] = []
    for b, (s, r) in enumerate(zip(b_series.tolist(), b_rule.tolist())):
        pi, st = ril[r], rows[b]
        count = st[K.S_COUNT]
        if pi[K.RI_KIND] == K.MISSING:
            since = seen[s]
            if since == NO_TS:
                if st[K.S_REF_TS] == NO_TS:
                    st[K.S_REF_TS] = now
                since = st[K.S_REF_TS]
            if now - since >= pi[K.RI_DURATION]:
                if count > 0:
                    st[K.S_SINCE] = NO_TS
                    continue
                st[K.S_SINCE] = since + pi[K.RI_DURATION]
                due = st[K.S_SINCE] + pi[K.RI_PENDING]
                if due <= now:
                    st[K.S_COUNT], st[K.S_SINCE] = 1, NO_TS
                    out.append((b, K.RAISE, due, (now - since) / _NS_PER_S, 0, 1))
                continue
        if count > 0 and st[K.S_SINCE] != NO_TS:
            due = st[K.S_SINCE] + pi[K.RI_KEEP]
            if due <= now:
                st[K.S_COUNT], st[K.S_SINCE] = -count, NO_TS
                out.append((b, K.CLEAR, due, math.nan, 0, count))
    if rows:
        bstate[:] = rows
    return _pack(out)
