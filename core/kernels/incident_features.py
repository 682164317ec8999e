"""Evidence features of the learned incident score (``core.traffic.incident_score``), one row per segment and bin.

The same njit function fills the rows the trees are trained on (a replay of the training rows, with and
without injected incidents) and the rows the online detector scores, so training and service cannot
drift apart. Every feature is a log ratio or a count, free of the speed unit:

- the segment's reading against its forecast, its recent level and its time-of-day profile, now and
  1-2 bins ago (``r_fc``, ``r_lvl``, ``r_prof``): how far and how suddenly it fell;
- its two strongest road links the same way (weaker and stronger of the two), now and a bin ago: a queue
  spreading behind an incident slows them after the segment;
- the recurrence count (learning days with a sudden drop here near this time) and the share of the
  network beyond the segment's 2-hop neighbourhood that dropped suddenly in the last half hour: rush
  hour, not an incident (its own queue is left out, or the score would learn to count it);
- conjunctions: the segment's deepest drop of the last 3 bins AND its links' drop now (the weaker of
  the two, so both must hold), and the links' drop now after none a bin ago (they followed us);
- squares of the negative parts of the segment's own ratios (the trees see depth, not only order);
- the regime and how unusual the step is in it (issue 20: a collapse that starts in congestion looks like
  congestion's own stop-and-go by its ratios alone): the reading and the recent level against the
  segment's free-flow cap, the step drop (the reading against the highest of the last 3 readings) now and
  its deepest in 3 bins, the segment's recent volatility (its mean absolute 1-bin log change) and that
  deepest step in units of it, and the two links' step drops now (weaker and stronger).

A missing quantity (no forecast, a faulty link, a fresh level) is 0: "no evidence either way".
"""
from __future__ import annotations

import numpy as np
from numba import njit

# current-bin ratios of every segment, scratch rows of ``cur`` [3, N]
CUR_FC = 0
CUR_LVL = 1
CUR_PROF = 2
CUR_TOP = 3  # the reading against the free-flow cap
CUR_STEP = 4  # the reading against the highest of the last 3 readings
CUR_OBS = 5  # the healthy reading itself (NaN: none), the history the step is taken from
N_CUR = 6
N_FEATURES = 39
VOL_ALPHA = 0.1  # weight of the newest 1-bin change in the segment's volatility (~50 min)
VOL_FLOOR = 0.02  # volatility floor of the step-in-volatility feature (a 2 % change per bin is calm)
RATIO_LO = -2.5  # log ratios clipped to [RATIO_LO, RATIO_HI]: a dead loop is a fault, not a deeper incident
RATIO_HI = 1.0


@njit(cache=True, nogil=True)
def log_ratio(o, ref):
    """log((o + 1) / (ref + 1)), clipped; NaN when either is missing (+1: no blow-up near zero speed)."""
    if not (np.isfinite(o) and np.isfinite(ref)):
        return np.nan
    r = np.log((o + 1.0) / (ref + 1.0))
    return min(max(r, RATIO_LO), RATIO_HI)


@njit(cache=True, nogil=True)
def _z(v):
    return v if np.isfinite(v) else 0.0


@njit(cache=True, nogil=True)
def fill(x, s, cur, lag_fc, lag_lvl, lag_prof, nb_top, rec_s, area_share, lag_step, vol_s, lvl_top):
    """Write segment s's features into x [N_FEATURES]. cur [N_CUR, N]: this bin's ratios of every segment;
    lag_fc / lag_lvl / lag_step [N, 2]: their ratios 1 and 2 bins ago; lag_prof [N]: the profile ratio a
    bin ago; nb_top [N, K]: strongest links (a segment padded with itself has no second link); vol_s: the
    segment's recent volatility (NaN: none yet); lvl_top: its recent level against its free-flow cap."""
    f0, f1, f2 = cur[CUR_FC, s], lag_fc[s, 0], lag_fc[s, 1]
    l0, l1, l2 = cur[CUR_LVL, s], lag_lvl[s, 0], lag_lvl[s, 1]
    x[0], x[1], x[2] = _z(f0), _z(f1), _z(f2)
    x[3], x[4], x[5] = _z(l0), _z(l1), _z(l2)
    x[6], x[7] = _z(cur[CUR_PROF, s]), _z(lag_prof[s])
    j1 = nb_top[s, 0] if nb_top.shape[1] > 0 else s
    j2 = nb_top[s, 1] if nb_top.shape[1] > 1 else j1
    if j1 == s:  # no links: nothing confirms
        nf0 = nf0b = nf1 = nf1b = nl0 = nl0b = nl1 = nl1b = ns0 = ns0b = 0.0
    else:
        if j2 == s:
            j2 = j1
        a, b = _z(cur[CUR_FC, j1]), _z(cur[CUR_FC, j2])
        nf0, nf0b = min(a, b), max(a, b)
        a, b = _z(lag_fc[j1, 0]), _z(lag_fc[j2, 0])
        nf1, nf1b = min(a, b), max(a, b)
        a, b = _z(cur[CUR_LVL, j1]), _z(cur[CUR_LVL, j2])
        nl0, nl0b = min(a, b), max(a, b)
        a, b = _z(lag_lvl[j1, 0]), _z(lag_lvl[j2, 0])
        nl1, nl1b = min(a, b), max(a, b)
        a, b = _z(cur[CUR_STEP, j1]), _z(cur[CUR_STEP, j2])
        ns0, ns0b = min(a, b), max(a, b)
    x[8], x[9], x[10], x[11] = nf0, nf0b, nf1, nf1b
    x[12], x[13], x[14], x[15] = nl0, nl0b, nl1, nl1b
    x[16] = np.log1p(max(rec_s, 0.0))
    x[17] = area_share
    seg_fc = min(x[0], min(x[1], x[2]))
    seg_lvl = min(x[3], min(x[4], x[5]))
    both_fc = max(seg_fc, nf0b)  # the weaker link's ratio: both links and the segment down
    both_lvl = max(seg_lvl, nl0b)
    x[18] = both_fc
    x[19] = both_lvl
    x[20] = max(both_fc, both_lvl)
    x[21] = max(seg_lvl, -nl1b)  # segment down, links not yet down a bin ago
    x[22] = max(both_lvl, -nl1b)
    for i in range(8):
        v = min(x[i], 0.0)
        x[23 + i] = v * v
    x[31] = _z(cur[CUR_TOP, s])
    x[32] = _z(lvl_top)
    st = _z(cur[CUR_STEP, s])
    x[33] = st
    deepest = min(st, min(_z(lag_step[s, 0]), _z(lag_step[s, 1])))
    x[34] = deepest
    x[35] = _z(vol_s)
    x[36] = deepest / max(_z(vol_s), VOL_FLOOR)
    x[37], x[38] = ns0, ns0b
