"""Alarm rule evaluation: a batch of readings (or a timer tick) against per-binding state, emitting transitions.

A *binding* is one (series, rule) pair that applies (built by ``core.alarms.compiler``). Bindings are grouped
by series: the bindings of series ``s`` are ``series_ptr[s]:series_ptr[s + 1]``. Rule parameters live in two
small tables indexed by the binding's rule (``rf`` float64 and ``ri`` int64, columns named below), so the
per-binding arrays stay small.

State (all mutated in place, all plain arrays so the caller can persist them):

* ``seen_ts[s]``: event time of the newest reading accepted for series ``s`` (``NO_TS`` if none).
* ``bstate[b, :]`` int64 row per binding:
  - count: > 0 while an alert is open (its trigger count); <= 0 when none (minus the last alert's count);
  - since: while closed, when the condition started holding (pending period); while open, since when the
    clear condition has held (keep-firing); ``NO_TS`` when neither runs;
  - reference time (rate: previous reading; flatline: start of the run; missing data: watch start for a
    series never seen).
  A row per binding (rather than one array per field), and three fields only, because a batch over a
  million series streams through all of it: bytes per binding are what the kernel's speed is made of.
* ``bref[b]``: reference value (rate: previous value; flatline: anchor value).
* ``bacc[b, :]`` float64 (trend rules only): exponentially weighted least-squares sums, see ``A_*``.

Order policy (deliberate): a reading is *accepted* only if it is newer than ``seen_ts`` of its series. Late
readings (older than the newest already accepted) and duplicates (same time) are ignored by every rule: alert
state is a function of each series in time order, re-evaluating history for one late point would have to
rewrite transitions already published, and ignoring equal times makes replays (MQTT QoS 1 redelivery)
idempotent. Within one batch the order does not matter: each series' readings are taken in stable time
order, so only a point older than one accepted in an earlier batch is dropped. Late readings are still
stored by the writer; they just do not move alarms.

Exclusion: a reading whose flag is in the rule's exclude mask (by default HJ 212 flags for maintenance,
calibration, fault ... see ``core.const.INVALID_FLAGS``) or whose value is NaN is invisible to the value rules
(upper, lower, range, rate, flatline): it neither advances nor resets their pending, hysteresis or reference.
It still counts as the device being alive (missing data) and is seen by data-flag and bit rules.

Flatline compares each value with the first value of the current run (the anchor), so a slow drift ends the
run once it has moved more than the tolerance. Bit rules read the value as an integer status word and skip
values that are NaN, negative or beyond int64.

Trend (time to threshold) fits a line to the recent readings by least squares with exponential weights
``exp(-age / window)``: constant state per binding, no buffer of past readings. The fitted value now and
the slope give the seconds until the line reaches ``high`` (rising) or ``low`` (falling): 0 when the fit is
already past it, NaN when it moves away or is flat. A gap longer than the window starts afresh (what a
device said before it went silent says little about now). Trigger: the current run has at least
``min_points`` readings and the time to threshold is at most the horizon; clear: otherwise. ``value`` of a
trend transition is that time in seconds. The sums are re-centred on the newest reading at each update
(x = 0 now) so they stay small whatever the epoch. A weighted fit lags a fresh ramp by about a window:
a shorter window warns sooner, a longer one is calmer on noise.

Per binding, the common state machine (``_advance``), given ``trigger`` and ``clear`` for one accepted reading:

* inactive: ``trigger`` starts (or continues) the pending period; RAISE once it has held ``pending`` ns
  (0: at once). A non-triggering reading resets the pending period.
* active: ``trigger`` -> UPDATE (count + 1). ``clear`` (the hysteresis clear threshold is met) starts the
  keep-firing period; CLEAR once clear has held ``keep`` ns (0: at once). A reading that neither triggers nor
  clears (between clear and raise thresholds) keeps the alert firing and restarts keep-firing.

The timer kernel raises missing-data alerts without incoming data and releases keep-firing clears that have
fallen due; its transitions carry the exact due time, not the tick time, so results do not depend on how
often the timer runs.
"""
from __future__ import annotations

import numpy as np
from numba import njit

# Rule kinds (core.alarms.rules.RuleKind uses these codes).
UPPER = 1
LOWER = 2
RANGE = 3
RATE = 4
FLATLINE = 5
MISSING = 6
FLAG = 7
BIT = 8
TREND = 9

# Transition kinds (core.alarms.rules.TransitionKind).
RAISE = 1
UPDATE = 2
CLEAR = 3

NO_TS = -9223372036854775808  # int64 min: "no time"

# Columns of the float64 rule table ``rf``.
RF_LO = 0  # lower limit (lower, range)
RF_HI = 1  # upper limit (upper, range, rate per minute)
RF_CLEAR_LO = 2  # clear at or above this (lower, range)
RF_CLEAR_HI = 3  # clear at or below this (upper, range, rate)
RF_TOL = 4  # flatline: values within this of the anchor count as the same
RF_HORIZON = 5  # trend: warn when the limit is this many seconds away or less
RF_WINDOW = 6  # trend: time constant (s) of the readings' exponential weights
RF_MIN_N = 7  # trend: readings needed in the current run before the slope is trusted
RF_COLS = 8

# Columns of the int64 rule table ``ri``.
RI_KIND = 0
RI_PENDING = 1  # ns
RI_KEEP = 2  # ns
RI_DURATION = 3  # ns (flatline, missing)
RI_FLAGS = 4  # data-flag rule: mask of flags that trigger (bit code - 48)
RI_EXCLUDE = 5  # value rules: mask of flags whose readings are ignored
RI_BIT = 6  # bit rule: bit index in the status word
RI_COLS = 7

# Columns of the per-binding int64 state ``bstate``.
S_COUNT = 0
S_SINCE = 1
S_REF_TS = 2
S_COLS = 3

# Columns of the per-binding float64 trend accumulators ``bacc`` (only trend rules use them; the engine gives
# the array zero columns when no trend rule is loaded). Sums over the readings, each weighted
# w = exp(-age / window), of x = seconds relative to the newest reading (so x <= 0) and the value v.
A_W = 0  # sum w
A_X = 1  # sum w x
A_V = 2  # sum w v
A_XX = 3  # sum w x^2
A_XV = 4  # sum w x v
A_N = 5  # readings in the current run (a gap longer than the window starts a new run)
A_COLS = 6

_NS_PER_MIN = 60e9
_NS_PER_S = 1e9
_WORD_LIMIT = 9.2e18  # status words must fit in int64


@njit(cache=True, nogil=True)
def flag_in_mask(mask, code):
    """Whether flag ``code`` (ASCII '0'..'n') is in ``mask`` (bit ``code - 48``)."""
    if code < 48 or code >= 111:
        return False
    return ((mask >> (code - 48)) & 1) == 1


@njit(cache=True, nogil=True)
def group_by_series(series, ts, values, flags, n_series):
    """The batch copied into series order (ascending), each series in stable time order; readings of series
    outside ``0..n_series-1`` dropped.

    Returns ``(ts, values, flags, group_series, group_start)``: group g holds the readings
    ``group_start[g]:group_start[g + 1]`` of series ``group_series[g]``. A counting sort when the batch is
    large against the catalogue (its scattered writes are cheap, where reading the batch in a random order
    later would not be), else a stable argsort. Each group is then put in time order by insertion sort,
    which costs nothing when a device's readings arrive in time order, as they usually do.
    """
    n = series.shape[0]
    if n * 16 >= n_series:
        pos = np.zeros(n_series + 1, np.int32)  # a batch holds far fewer than 2**31 readings
        for i in range(n):
            s = series[i]
            if s >= 0 and s < n_series:
                pos[s + 1] += 1
        n_groups = 0
        for s in range(n_series):
            if pos[s + 1] > 0:
                n_groups += 1
            pos[s + 1] += pos[s]
        m = pos[n_series]
        gt = np.empty(m, np.int64)
        gv = np.empty(m, np.float64)
        gf = np.empty(m, np.uint8)
        group_series = np.empty(n_groups, np.int32)
        group_start = np.empty(n_groups + 1, np.int64)
        g = 0
        for s in range(n_series):
            if pos[s + 1] > pos[s]:
                group_series[g] = s
                group_start[g] = pos[s]
                g += 1
        group_start[n_groups] = m
        for i in range(n):
            s = series[i]
            if s >= 0 and s < n_series:
                j = pos[s]
                pos[s] = j + 1
                gt[j] = ts[i]
                gv[j] = values[i]
                gf[j] = flags[i]
    else:
        order = np.argsort(series, kind="mergesort")
        m = 0
        n_groups = 0
        for j in range(n):
            s = series[order[j]]
            if s >= 0 and s < n_series:
                if m == 0 or s != series[order[m - 1]]:
                    n_groups += 1
                order[m] = order[j]
                m += 1
        gt = np.empty(m, np.int64)
        gv = np.empty(m, np.float64)
        gf = np.empty(m, np.uint8)
        group_series = np.empty(n_groups, np.int32)
        group_start = np.empty(n_groups + 1, np.int64)
        g = 0
        for j in range(m):
            i = order[j]
            if j == 0 or series[i] != series[order[j - 1]]:
                group_series[g] = series[i]
                group_start[g] = j
                g += 1
            gt[j] = ts[i]
            gv[j] = values[i]
            gf[j] = flags[i]
        group_start[n_groups] = m
    for k in range(n_groups):
        a = group_start[k]
        for j in range(a + 1, group_start[k + 1]):  # stable insertion sort by time
            t = gt[j]
            if gt[j - 1] <= t:
                continue
            v = gv[j]
            f = gf[j]
            q = j
            while q > a and gt[q - 1] > t:
                gt[q] = gt[q - 1]
                gv[q] = gv[q - 1]
                gf[q] = gf[q - 1]
                q -= 1
            gt[q] = t
            gv[q] = v
            gf[q] = f
    return gt, gv, gf, group_series, group_start


@njit(cache=True, nogil=True)
def _advance(bstate, b, trigger, clear, t, pending, keep):
    """The common state machine for one accepted reading; returns the transition kind or 0."""
    count = bstate[b, S_COUNT]
    if count > 0:
        if trigger:
            bstate[b, S_COUNT] = count + 1
            bstate[b, S_SINCE] = NO_TS
            return UPDATE
        if clear:
            if bstate[b, S_SINCE] == NO_TS:
                bstate[b, S_SINCE] = t
            if t - bstate[b, S_SINCE] >= keep:
                bstate[b, S_COUNT] = -count
                bstate[b, S_SINCE] = NO_TS
                return CLEAR
            return 0
        bstate[b, S_SINCE] = NO_TS
        return 0
    if trigger:
        if bstate[b, S_SINCE] == NO_TS:
            bstate[b, S_SINCE] = t
        if t - bstate[b, S_SINCE] >= pending:
            bstate[b, S_COUNT] = 1
            bstate[b, S_SINCE] = NO_TS
            return RAISE
        return 0
    bstate[b, S_SINCE] = NO_TS
    return 0


@njit(cache=True, nogil=True)
def trend_update(bacc, b, last_ts, t, v, window_s):
    """Fold reading (t, v) into binding ``b``'s weighted sums (previous reading at ``last_ts``)."""
    d = 0.0 if last_ts == NO_TS else np.float64(t - last_ts) / _NS_PER_S
    if last_ts == NO_TS or d > window_s:
        for c in range(A_COLS):
            bacc[b, c] = 0.0
    else:
        a = np.exp(-d / window_s)
        w, x, sv, xx, xv = bacc[b, A_W], bacc[b, A_X], bacc[b, A_V], bacc[b, A_XX], bacc[b, A_XV]
        bacc[b, A_W] = a * w
        bacc[b, A_X] = a * (x - d * w)
        bacc[b, A_V] = a * sv
        bacc[b, A_XX] = a * (xx - 2.0 * d * x + d * d * w)
        bacc[b, A_XV] = a * (xv - d * sv)
    bacc[b, A_W] += 1.0
    bacc[b, A_V] += v
    bacc[b, A_N] += 1.0


@njit(cache=True, nogil=True)
def time_to_limit(w, x, sv, xx, xv, lo, hi):
    """Seconds until the weighted least-squares line reaches ``hi`` rising or ``lo`` falling (0 when
    already past; NaN when it moves away, is flat, or the points do not determine a line)."""
    den = w * xx - x * x
    if not den > 0.0:
        return np.nan
    slope = (w * xv - x * sv) / den
    level = (sv - slope * x) / w
    if level >= hi or level <= lo:
        return 0.0
    if slope > 0.0 and hi < np.inf:
        return (hi - level) / slope
    if slope < 0.0 and lo > -np.inf:
        return (lo - level) / slope
    return np.nan


@njit(cache=True, nogil=True)
def evaluate_batch(series, ts, values, flags, series_ptr, b_rule, rf, ri, seen_ts, bstate, bref, bacc,
                   max_per_series):
    """Evaluate every binding of every accepted reading; mutate state; return the transitions.

    ``series`` int32, ``ts`` int64 ns, ``values`` float64, ``flags`` uint8 ASCII codes (0 = none), any order.
    ``max_per_series`` bounds the bindings of one series (sizes the output). Returns
    ``(binding int64, kind int8, ts int64, value float64, flag uint8, count int64)`` in processing order
    (series, then time, then binding: grouping by series keeps each series' state in cache). ``value`` is
    the reading's value, except rate rules (absolute change per minute), flatline rules (seconds flat) and
    trend rules (seconds to the limit).
    """
    n = series.shape[0]
    n_series = series_ptr.shape[0] - 1
    cap = n * max_per_series
    out_b = np.empty(cap, np.int64)
    out_kind = np.empty(cap, np.int8)
    out_ts = np.empty(cap, np.int64)
    out_value = np.empty(cap, np.float64)
    out_flag = np.empty(cap, np.uint8)
    out_count = np.empty(cap, np.int64)
    gt, gv, gf, group_series, group_start = group_by_series(series, ts, values, flags, n_series)
    m = 0
    for g in range(group_series.shape[0]):
        s = group_series[g]
        b0 = series_ptr[s]
        b1 = series_ptr[s + 1]
        for j in range(group_start[g], group_start[g + 1]):
            t = gt[j]
            if t <= seen_ts[s]:
                continue  # late or duplicate: see the order policy
            seen_ts[s] = t
            if b0 == b1:
                continue
            v = gv[j]
            f = gf[j]
            for b in range(b0, b1):
                r = b_rule[b]
                kind = ri[r, RI_KIND]
                metric = v
                if kind == MISSING:
                    trigger = False
                    clear = True
                elif kind == FLAG:
                    trigger = flag_in_mask(ri[r, RI_FLAGS], f)
                    clear = not trigger
                elif kind == BIT:
                    if not (v >= 0.0 and v < _WORD_LIMIT):
                        continue
                    trigger = ((np.int64(v) >> ri[r, RI_BIT]) & 1) == 1
                    clear = not trigger
                else:
                    if np.isnan(v) or flag_in_mask(ri[r, RI_EXCLUDE], f):
                        continue
                    if kind == UPPER:
                        trigger = v > rf[r, RF_HI]
                        clear = v <= rf[r, RF_CLEAR_HI]
                    elif kind == LOWER:
                        trigger = v < rf[r, RF_LO]
                        clear = v >= rf[r, RF_CLEAR_LO]
                    elif kind == RANGE:
                        trigger = v < rf[r, RF_LO] or v > rf[r, RF_HI]
                        clear = v >= rf[r, RF_CLEAR_LO] and v <= rf[r, RF_CLEAR_HI]
                    elif kind == RATE:
                        ref_ts = bstate[b, S_REF_TS]
                        ref_v = bref[b]
                        bstate[b, S_REF_TS] = t
                        bref[b] = v
                        if ref_ts == NO_TS or t <= ref_ts:
                            continue  # first point: nothing to compare with
                        metric = abs(v - ref_v) * _NS_PER_MIN / np.float64(t - ref_ts)
                        trigger = metric > rf[r, RF_HI]
                        clear = metric <= rf[r, RF_CLEAR_HI]
                    elif kind == FLATLINE:
                        ref_ts = bstate[b, S_REF_TS]
                        if ref_ts == NO_TS or abs(v - bref[b]) > rf[r, RF_TOL]:
                            bstate[b, S_REF_TS] = t
                            bref[b] = v
                            metric = 0.0
                            trigger = False
                            clear = True
                        else:
                            metric = np.float64(t - ref_ts) / _NS_PER_S
                            trigger = t - ref_ts >= ri[r, RI_DURATION]
                            clear = False
                    elif kind == TREND:
                        trend_update(bacc, b, bstate[b, S_REF_TS], t, v, rf[r, RF_WINDOW])
                        bstate[b, S_REF_TS] = t
                        metric = time_to_limit(bacc[b, A_W], bacc[b, A_X], bacc[b, A_V], bacc[b, A_XX],
                                               bacc[b, A_XV], rf[r, RF_LO], rf[r, RF_HI])
                        trigger = bacc[b, A_N] >= rf[r, RF_MIN_N] and metric <= rf[r, RF_HORIZON]
                        clear = not trigger
                    else:
                        continue
                code = _advance(bstate, b, trigger, clear, t, ri[r, RI_PENDING], ri[r, RI_KEEP])
                if code != 0:
                    out_b[m] = b
                    out_kind[m] = code
                    out_ts[m] = t
                    out_value[m] = metric
                    out_flag[m] = f
                    out_count[m] = abs(bstate[b, S_COUNT])
                    m += 1
    return (out_b[:m].copy(), out_kind[:m].copy(), out_ts[:m].copy(), out_value[:m].copy(),
            out_flag[:m].copy(), out_count[:m].copy())


@njit(cache=True, nogil=True)
def evaluate_timers(now, b_series, b_rule, rf, ri, seen_ts, bstate, bref):
    """Timer pass at event time ``now``: raise missing-data alerts, release due keep-firing clears.

    A missing-data binding whose series was never seen starts watching at the first tick (its reference
    time), so a device registered but silent is reported ``duration`` after monitoring began. RAISE carries
    ``due = last seen + duration + pending`` and value = seconds silent at ``now``; a timer CLEAR carries
    ``clear since + keep`` and value NaN. Same output tuple as ``evaluate_batch``, in binding order.
    """
    n_b = b_rule.shape[0]
    out_b = np.empty(n_b, np.int64)
    out_kind = np.empty(n_b, np.int8)
    out_ts = np.empty(n_b, np.int64)
    out_value = np.empty(n_b, np.float64)
    out_flag = np.zeros(n_b, np.uint8)
    out_count = np.empty(n_b, np.int64)
    m = 0
    for b in range(n_b):
        r = b_rule[b]
        count = bstate[b, S_COUNT]
        if ri[r, RI_KIND] == MISSING:
            since = seen_ts[b_series[b]]
            if since == NO_TS:
                if bstate[b, S_REF_TS] == NO_TS:
                    bstate[b, S_REF_TS] = now
                since = bstate[b, S_REF_TS]
            if now - since >= ri[r, RI_DURATION]:
                if count > 0:
                    bstate[b, S_SINCE] = NO_TS  # silent again: still firing
                    continue
                bstate[b, S_SINCE] = since + ri[r, RI_DURATION]
                due = bstate[b, S_SINCE] + ri[r, RI_PENDING]
                if due <= now:
                    bstate[b, S_COUNT] = 1
                    bstate[b, S_SINCE] = NO_TS
                    out_b[m] = b
                    out_kind[m] = RAISE
                    out_ts[m] = due
                    out_value[m] = np.float64(now - since) / _NS_PER_S
                    out_count[m] = 1
                    m += 1
                continue
        if count > 0 and bstate[b, S_SINCE] != NO_TS:
            due = bstate[b, S_SINCE] + ri[r, RI_KEEP]
            if due <= now:
                bstate[b, S_COUNT] = -count
                bstate[b, S_SINCE] = NO_TS
                out_b[m] = b
                out_kind[m] = CLEAR
                out_ts[m] = due
                out_value[m] = np.nan
                out_count[m] = count
                m += 1
    return (out_b[:m].copy(), out_kind[:m].copy(), out_ts[:m].copy(), out_value[:m].copy(),
            out_flag[:m].copy(), out_count[:m].copy())


@njit(cache=True, nogil=True)
def watch_bindings(series, series_ptr, bstate):
    """The bindings of ``series`` and a copy of their state rows, gathered in one pass (before a batch)."""
    n = 0
    for i in range(series.shape[0]):
        n += series_ptr[series[i] + 1] - series_ptr[series[i]]
    b = np.empty(n, np.int64)
    rows = np.empty((n, S_COLS), np.int64)
    k = 0
    for i in range(series.shape[0]):
        for j in range(series_ptr[series[i]], series_ptr[series[i] + 1]):
            b[k] = j
            for c in range(S_COLS):
                rows[k, c] = bstate[j, c]
            k += 1
    return b, rows


@njit(cache=True, nogil=True)
def changed_bindings(b, before, bstate, b_rule, ri):
    """Those of the watched bindings ``b`` whose pending or keep-firing period (since), open/closed state or
    flatline run start changed since ``before`` (``watch_bindings``)."""
    out = np.empty(b.shape[0], np.int64)
    m = 0
    for k in range(b.shape[0]):
        j = b[k]
        changed = bstate[j, S_SINCE] != before[k, S_SINCE] or (bstate[j, S_COUNT] > 0) != (before[k, S_COUNT] > 0)
        if not changed and ri[b_rule[j], RI_KIND] == FLATLINE:
            changed = bstate[j, S_REF_TS] != before[k, S_REF_TS]
        if changed:
            out[m] = j
            m += 1
    return out[:m].copy()
