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
   A run starts only below ``level_drop`` x the segment's recent level (an exponential average of its
   healthy readings); a run too old for confirmation restarts at a fresh sudden drop.
   An incident needs ``raise_after`` low bins in a row, and ``nb_need`` of the segment's first
   ``nb_count`` road links (``confirmations``) slowing within the last ``nb_window`` bins, their slowing
   having begun ``nb_follow``..``nb_follow_max`` bins after the run began; or ``alone_after`` bins in a
   row when set (or when the segment has no links). A run that would raise is dropped instead when the
   segment's recurrence count (learning days with a sudden drop near this time of day) is above
   ``rec_max``, or more than ``area_max`` segments beyond its 2-hop neighbourhood dropped suddenly
   (``sudden``) in the last ``area_window`` bins (``area_quiet``). ``clear_after`` bins back within the
   band of the speed expected at the start clear it.

State is two arrays per segment (int64 [N, NI], float64 [N, NF]), so it round-trips through npz.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from wulian.core.kernels import gbdt
from wulian.core.kernels import incident_features as feat

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
C_NB_NEED = 18  # distinct confirming neighbours needed to raise
C_NB_COUNT = 19  # only the first this many of nb_top (the strongest links) may confirm (0: all)
C_NB_FOLLOW = 20  # a neighbour confirms only if its drop began >= this many bins after ours (< 0: off)
C_NB_RATIO = 21  # a neighbour is low below this fraction of its forecast (0: by k_nb sigmas instead)
C_LEVEL_ALPHA = 22  # weight of a new reading in the segment's recent level (exponential average)
C_LEVEL_DROP = 23  # a run starts only below this fraction of the segment's recent level (0: off)
C_NB_LEVEL = 24  # a neighbour is slowing only below this fraction of its recent level (0: off)
C_NB_FOLLOW_MAX = 25  # ...and at most this many bins after (< 0: no limit)
C_AREA_MAX = 26  # raise only while at most this many segments beyond our 2 hops dropped suddenly (< 0: off)
C_AREA_WINDOW = 27  # ...within this many bins (the current one included)
C_REC_MAX = 28  # raise only if at most this many learning days dropped suddenly near this time of day (< 0: off)
C_LEARNED = 29  # 1: the learned score decides (incident_features + trees), not the tests above
C_TREE_BASE = 30  # the trees' base score (log-odds)
N_CFG = 31

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
S_NB_START_TS = 10  # start of the segment's latest streak of neighbour evidence
S_RUN_START_TS = 11  # first bin of the current low run
S_ONSET_TS = 12  # latest sudden drop (below level_drop x the recent level, min_drop down): area-wide activity
N_STATE_I = 13
# float64 state columns
F_PREV = 0
F_PREV_JUMP = 1
F_EXPECTED = 2
F_BAND = 3
F_LEVEL = 4  # recent level: exponential average of the healthy readings
F_LAG_FC = 5  # log ratio to the forecast 1 and 2 bins ago (columns 5, 6): the learned score's history
F_LAG_LVL = 7  # ...to the recent level 1 and 2 bins ago (7, 8)
F_LAG_PROF = 9  # ...to the time-of-day profile a bin ago
F_LAG_STEP = 10  # ...to the highest of the 3 readings before, 1 and 2 bins ago (10, 11)
F_HIST = 12  # the healthy readings 1, 2 and 3 bins ago (12, 13, 14)
F_VOL = 15  # recent volatility: exponential average of the absolute 1-bin log change
N_STATE_F = 16

NO_TS = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def new_state(n):
    """Fresh (int, float) state for n segments."""
    si = np.zeros((n, N_STATE_I), np.int64)
    sf = np.full((n, N_STATE_F), np.nan)
    for s in range(n):
        si[s, S_LAST_TS] = NO_TS
        si[s, S_NB_LOW_TS] = NO_TS
        si[s, S_NB_START_TS] = NO_TS
        si[s, S_RUN_START_TS] = NO_TS
        si[s, S_ONSET_TS] = NO_TS
    return si, sf


def widen_state(si, sf):
    """State saved by an older detector (fewer columns) padded to today's layout (new columns fresh)."""
    si = np.asarray(si, np.int64)
    sf = np.asarray(sf, np.float64)
    fresh_i, fresh_f = new_state(si.shape[0])
    fresh_i[:, : si.shape[1]] = si[:, :N_STATE_I]
    fresh_f[:, : sf.shape[1]] = sf[:, :N_STATE_F]
    return fresh_i, fresh_f


@njit(cache=True, nogil=True)
def detect_bin(t, obs, fc, prof, rec, scale, cap, nb_top, cfg, si, sf, z, lvl, near, out_seg, out_kind,
               out_code, out_val, n_out, tf, tv, cur, xrow, dump, score):
    """Advance every segment by the bin at time t (ns). obs/fc/prof/scale/cap are [N] (NaN obs = not
    reported, NaN fc = no forecast, NaN prof = no profile: the relative test uses the forecast alone);
    rec [N] how many learning days had a sudden drop of the segment near this time of day (recurrence);
    nb_top [N, K] the strongest neighbours (a segment padded with itself).
    z and lvl [N] are scratch, near [N] bool scratch (all False). Appends events from index n_out and
    returns the new count; out_* need 2 N free slots (at most one incident and one fault event per
    segment and bin).
    Learned mode (cfg C_LEARNED): tf int32 [3, T, M] (feature, left, right) and tv float64 [2, T, M]
    (threshold, leaf value) are the trees; cur [N_CUR, N] and xrow [N_FEATURES] scratch; each healthy
    segment's features go to dump [N, N_FEATURES] when it has N rows, its score to score [N] (NaN: none),
    and a score above k raises, ``clear_after`` bins at or below it clear."""
    n = obs.shape[0]
    learned = cfg[C_LEARNED] > 0
    step = np.int64(cfg[C_STEP_NS])
    gap = step + step // 2
    k = cfg[C_K]
    alpha = cfg[C_LEVEL_ALPHA]
    for s in range(n):
        z[s] = np.nan
        lvl[s] = np.nan
        score[s] = np.nan
        for c in range(feat.N_CUR):
            cur[c, s] = np.nan
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
                sf[s, F_LEVEL] = np.nan
                for c in range(F_LAG_FC, N_STATE_F):
                    sf[s, c] = np.nan
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
                n_out = _emit(out_seg, out_kind, out_code, out_val, n_out, s, FAULT, code, o)
        else:
            si[s, S_FAULT_RUN] = 0
            if si[s, S_FAULT_ON] == 1:
                si[s, S_FAULT_OK] += 1
                if si[s, S_FAULT_OK] >= cfg[C_FAULT_CLEAR]:
                    si[s, S_FAULT_ON] = 0
                    si[s, S_FAULT_OK] = 0
                    n_out = _emit(out_seg, out_kind, out_code, out_val, n_out, s, FAULT_CLEAR, si[s, S_FAULT_CODE], o)
        if code != NO_FAULT or flat or si[s, S_FAULT_ON] == 1:
            si[s, S_LOW_RUN] = 0
            si[s, S_NB_LOW_TS] = NO_TS  # a suspect reading confirms no neighbour, nor does its past
            continue
        # 2. forecast error in robust sigmas; the recent level before this reading
        level = sf[s, F_LEVEL]
        lvl[s] = level
        suspect = learned and abs(sf[s, F_PREV_JUMP]) > cfg[C_SPIKE_JUMP]  # maybe an erratic detector's first jump
        if sudden(o, level, cfg[C_LEVEL_DROP], cfg[C_MIN_DROP]) and not suspect:
            si[s, S_ONSET_TS] = t
        sf[s, F_LEVEL] = o if not np.isfinite(level) else level + alpha * (o - level)
        f = fc[s]
        cur[feat.CUR_FC, s] = feat.log_ratio(o, f)
        cur[feat.CUR_LVL, s] = feat.log_ratio(o, level)
        cur[feat.CUR_PROF, s] = feat.log_ratio(o, prof[s])
        cur[feat.CUR_TOP, s] = feat.log_ratio(o, cap[s])
        cur[feat.CUR_STEP, s] = feat.log_ratio(o, _highest(sf, s))
        cur[feat.CUR_OBS, s] = o
        if suspect:  # no evidence for itself, its neighbours or the area until the next bin says
            for c in range(feat.N_CUR):
                cur[c, s] = np.nan
        sc = scale[s]
        if np.isfinite(f) and np.isfinite(sc) and sc > 0:
            z[s] = (o - f) / sc
            nb_ratio = cfg[C_NB_RATIO]
            nb_low = (o < nb_ratio * f) if nb_ratio > 0 else (z[s] < -cfg[C_K_NB])
            if cfg[C_NB_LEVEL] > 0 and np.isfinite(level) and o >= cfg[C_NB_LEVEL] * level:
                nb_low = False  # no slower than a moment ago: a forecast miss, not a spreading queue
            if nb_low and o - f < -cfg[C_NB_MIN_DROP]:
                prev = si[s, S_NB_LOW_TS]
                # a new streak of slowing; or, in a long one, a further sudden drop (below nb_level x
                # the recent level) is taken as a new start, so a queue reaching an already slow road counts
                stale = cfg[C_NB_LEVEL] > 0 and cfg[C_NB_FOLLOW_MAX] >= 0 and \
                    t - si[s, S_NB_START_TS] > np.int64(cfg[C_NB_FOLLOW_MAX]) * step
                if prev == NO_TS or t - prev > gap or stale:
                    si[s, S_NB_START_TS] = t
                si[s, S_NB_LOW_TS] = t
    # 3. decisions, now that every neighbour's evidence of this bin is known
    window = np.int64(cfg[C_NB_WINDOW]) * step
    area_span = np.int64(cfg[C_AREA_WINDOW]) * step
    recent = 0  # segments with a sudden drop within the area window: rush hour breaking down everywhere
    if cfg[C_AREA_MAX] >= 0 or learned:
        for u in range(n):
            if si[u, S_ONSET_TS] != NO_TS and t - si[u, S_ONSET_TS] < area_span:
                recent += 1
    if learned:
        n_out = _learned_decisions(t, obs, fc, rec, cap, nb_top, cfg, si, sf, z, lvl, recent, area_span, near,
                                   out_seg, out_kind, out_code, out_val, n_out, tf, tv, cur, xrow, dump, score)
        _shift_lags(sf, cur)
        return n_out
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
                # a run too old for its links to confirm any more restarts at a fresh sudden drop
                stale = cfg[C_NB_FOLLOW_MAX] >= 0 and \
                    t - si[s, S_RUN_START_TS] > np.int64(cfg[C_NB_FOLLOW_MAX]) * step
                fresh = cfg[C_LEVEL_DROP] > 0 and np.isfinite(lvl[s]) and o < cfg[C_LEVEL_DROP] * lvl[s]
                if not low or (stale and fresh):
                    si[s, S_LOW_RUN] = 0
                    low = False
            if si[s, S_LOW_RUN] == 0:
                rel = cfg[C_REL_LOW]
                p = prof[s]
                by_sigma = zs < -k
                by_ratio = rel > 0 and o < rel * f and (not np.isfinite(p) or o < rel * p)
                low = (by_sigma or by_ratio) and drop < -cfg[C_MIN_DROP]
                if low and cfg[C_PROF_LOW] > 0 and np.isfinite(p) and o >= cfg[C_PROF_LOW] * p:
                    low = False  # no slower than usual at this time of day: recurrent, not an incident
                if low and cfg[C_LEVEL_DROP] > 0 and np.isfinite(lvl[s]) and o >= cfg[C_LEVEL_DROP] * lvl[s]:
                    low = False  # no sudden drop from the recent level: a jam the forecast missed goes on
                if low:
                    sf[s, F_EXPECTED] = f
                    # min_drop guards the onset; the run then goes on while below rel x the expected speed
                    b = band if by_sigma else (1.0 - rel) * f
                    if by_sigma and by_ratio:
                        b = min(band, (1.0 - rel) * f)
                    sf[s, F_BAND] = b
            if low:
                if si[s, S_LOW_RUN] == 0:
                    si[s, S_RUN_START_TS] = t
                si[s, S_LOW_RUN] += 1
            run = si[s, S_LOW_RUN]
            if run >= cfg[C_RAISE_AFTER]:
                count, links = confirmations(s, t, nb_top, cfg, si, window, step)
                # a segment without road links can only raise alone; the others need their links
                support = (links == 0 or cfg[C_ALONE_AFTER] > 0) and run >= max(cfg[C_ALONE_AFTER], 1.0)
                if links > 0 and count >= min(max(cfg[C_NB_NEED], 1.0), links):
                    support = True
                if support and ((cfg[C_REC_MAX] >= 0 and rec[s] > cfg[C_REC_MAX]) or (
                        cfg[C_AREA_MAX] >= 0 and recent > cfg[C_AREA_MAX]
                        and not area_quiet(s, t, nb_top, si, area_span, recent, cfg[C_AREA_MAX], near))):
                    # the segment breaks down around this time on other days (recurrent), or segments all
                    # over the network do right now (rush hour): not an incident. The run is dropped, so
                    # it does not raise later either; only a fresh sudden drop starts another.
                    support = False
                    si[s, S_LOW_RUN] = 0
                if support:
                    si[s, S_ACTIVE] = 1
                    si[s, S_OK_RUN] = 0
                    n_out = _emit(out_seg, out_kind, out_code, out_val, n_out, s, RAISE, NO_FAULT, drop)
        else:
            if o >= sf[s, F_EXPECTED] - sf[s, F_BAND]:
                si[s, S_OK_RUN] += 1
                if si[s, S_OK_RUN] >= cfg[C_CLEAR_AFTER]:
                    si[s, S_ACTIVE] = 0
                    si[s, S_LOW_RUN] = 0
                    si[s, S_OK_RUN] = 0
                    n_out = _emit(out_seg, out_kind, out_code, out_val, n_out, s, CLEAR, NO_FAULT, drop)
            else:
                si[s, S_OK_RUN] = 0
    _shift_lags(sf, cur)
    return n_out


@njit(cache=True, nogil=True)
def _emit(out_seg, out_kind, out_code, out_val, n_out, s, kind, code, val):
    """Append one event; the new count."""
    out_seg[n_out] = s
    out_kind[n_out] = kind
    out_code[n_out] = code
    out_val[n_out] = val
    return n_out + 1


@njit(cache=True, nogil=True)
def _learned_decisions(t, obs, fc, rec, cap, nb_top, cfg, si, sf, z, lvl, recent, area_span, near, out_seg,
                       out_kind, out_code, out_val, n_out, tf, tv, cur, xrow, dump, score):
    """Learned mode of ``detect_bin``'s decisions: every healthy segment with a forecast is scored; a score
    above k raises, ``clear_after`` bins at or below k clear. Faulty readings were screened out before
    (their z is NaN), so a broken detector is never incident evidence here either; a bin that jumped by
    more than ``spike_jump`` is not scored (NaN): an erratic detector shows itself only on its second jump,
    whereas a collapse's score comes from the bins after its jump, when its links have slowed."""
    n = obs.shape[0]
    k = cfg[C_K]
    has_trees = tf.shape[1] > 0
    lag_fc = sf[:, F_LAG_FC:F_LAG_FC + 2]
    lag_lvl = sf[:, F_LAG_LVL:F_LAG_LVL + 2]
    lag_prof = sf[:, F_LAG_PROF]
    lag_step = sf[:, F_LAG_STEP:F_LAG_STEP + 2]
    for s in range(n):
        if not np.isfinite(z[s]):
            continue
        # the area: sudden drops beyond s's own 2-hop neighbourhood (its own queue is not rush hour)
        area_share = (recent - drops_nearby(s, t, nb_top, si, area_span, near)) / n
        feat.fill(xrow, s, cur, lag_fc, lag_lvl, lag_prof, nb_top, rec[s], area_share, lag_step, sf[s, F_VOL],
                  feat.log_ratio(lvl[s], cap[s]))
        if dump.shape[0] == n:
            dump[s, :] = xrow
        if not has_trees:
            continue
        if abs(sf[s, F_PREV_JUMP]) > cfg[C_SPIKE_JUMP]:
            continue  # a jump too large for one bin is the first half of an erratic detector until the next
        sc = gbdt.predict_one(xrow, tf[0], tv[0], tf[1], tf[2], tv[1], cfg[C_TREE_BASE])
        score[s] = sc
        drop = obs[s] - fc[s]
        if si[s, S_ACTIVE] == 0:
            if sc > k:
                si[s, S_ACTIVE] = 1
                si[s, S_OK_RUN] = 0
                n_out = _emit(out_seg, out_kind, out_code, out_val, n_out, s, RAISE, NO_FAULT, drop)
        elif sc <= k:
            si[s, S_OK_RUN] += 1
            if si[s, S_OK_RUN] >= cfg[C_CLEAR_AFTER]:
                si[s, S_ACTIVE] = 0
                si[s, S_OK_RUN] = 0
                n_out = _emit(out_seg, out_kind, out_code, out_val, n_out, s, CLEAR, NO_FAULT, drop)
        else:
            si[s, S_OK_RUN] = 0
    return n_out


@njit(cache=True, nogil=True)
def _highest(sf, s):
    """The highest of segment s's last 3 healthy readings (NaN: none)."""
    h = np.nan
    for c in range(F_HIST, F_HIST + 3):
        v = sf[s, c]
        if np.isfinite(v) and not v <= h:
            h = v
    return h


@njit(cache=True, nogil=True)
def _shift_lags(sf, cur):
    """This bin's ratios and reading become the history the next bin's features read; the volatility
    takes this bin's 1-bin change."""
    for s in range(sf.shape[0]):
        o = cur[feat.CUR_OBS, s]
        r1 = feat.log_ratio(o, sf[s, F_HIST])
        if np.isfinite(r1):
            v = sf[s, F_VOL]
            sf[s, F_VOL] = abs(r1) if not np.isfinite(v) else v + feat.VOL_ALPHA * (abs(r1) - v)
        sf[s, F_HIST + 2] = sf[s, F_HIST + 1]
        sf[s, F_HIST + 1] = sf[s, F_HIST]
        sf[s, F_HIST] = o
        sf[s, F_LAG_STEP + 1] = sf[s, F_LAG_STEP]
        sf[s, F_LAG_STEP] = cur[feat.CUR_STEP, s]
        sf[s, F_LAG_FC + 1] = sf[s, F_LAG_FC]
        sf[s, F_LAG_FC] = cur[feat.CUR_FC, s]
        sf[s, F_LAG_LVL + 1] = sf[s, F_LAG_LVL]
        sf[s, F_LAG_LVL] = cur[feat.CUR_LVL, s]
        sf[s, F_LAG_PROF] = cur[feat.CUR_PROF, s]


@njit(cache=True, nogil=True)
def sudden(o, level, level_drop, min_drop):
    """A sudden drop: a reading below ``level_drop`` x the recent level and at least ``min_drop`` under
    it (off when level_drop is 0). The one definition for the area test and the recurrence table."""
    return level_drop > 0 and np.isfinite(level) and o < level_drop * level and level - o >= min_drop


@njit(cache=True, nogil=True)
def sudden_drops(values, alpha, level_drop, min_drop, zero):
    """bool [T, N]: the rows where each series of values [T, N] drops suddenly (``sudden``) against its
    recent level, the exponential average (weight ``alpha``) of its readings above ``zero``, as
    ``detect_bin`` keeps it; a missing reading (NaN) restarts the level."""
    t_len, n = values.shape
    out = np.zeros((t_len, n), np.bool_)
    for s in range(n):
        level = np.nan
        for t in range(t_len):
            o = values[t, s]
            if not np.isfinite(o):
                level = np.nan
                continue
            if o <= zero:
                continue
            out[t, s] = sudden(o, level, level_drop, min_drop)
            level = o if not np.isfinite(level) else level + alpha * (o - level)
    return out


@njit(cache=True, nogil=True)
def area_quiet(s, t, nb_top, si, area_span, recent, area_max, near):
    """Whether at most ``area_max`` of the ``recent`` segments with a sudden drop lie outside segment s's
    2-hop neighbourhood on the road graph (s, its links, theirs): an incident's own queue is local,
    whereas a rush-hour breakdown drops segments all over the network within minutes. ``near`` [N] is
    False scratch, left False."""
    return recent - drops_nearby(s, t, nb_top, si, area_span, near) <= area_max


@njit(cache=True, nogil=True)
def drops_nearby(s, t, nb_top, si, area_span, near):
    """How many segments of s's 2-hop neighbourhood dropped suddenly within ``area_span`` of t."""
    k = nb_top.shape[1]
    inside = 0
    for a in range(-1, k):
        u = s if a < 0 else nb_top[s, a]
        for b in range(-1, k):
            v = u if b < 0 else nb_top[u, b]
            if not near[v]:
                near[v] = True
                if si[v, S_ONSET_TS] != NO_TS and t - si[v, S_ONSET_TS] < area_span:
                    inside += 1
    for a in range(-1, k):
        u = s if a < 0 else nb_top[s, a]
        for b in range(-1, k):
            near[u if b < 0 else nb_top[u, b]] = False
    return inside


@njit(cache=True, nogil=True)
def confirmations(s, t, nb_top, cfg, si, window, step):
    """(confirming, links): how many of segment s's strongest road links slowed within the last ``window`` ns of t, and
    (with ``nb_follow`` >= 0) began slowing at least ``nb_follow`` (and at most ``nb_follow_max``) bins
    after s's own run began: a
    queue spreads from the incident to the links behind it, whereas a slowdown that reached s from
    a neighbour (a jam growing back from a bottleneck downstream, rush hour) started there first."""
    n_cols = nb_top.shape[1]
    if cfg[C_NB_COUNT] > 0:
        n_cols = min(n_cols, np.int64(cfg[C_NB_COUNT]))
    follow = cfg[C_NB_FOLLOW]
    count = 0
    links = 0
    for j in range(n_cols):
        nb = nb_top[s, j]
        if nb == s:
            continue
        dup = False
        for i in range(j):
            dup = dup or nb_top[s, i] == nb
        if dup:
            continue
        links += 1
        last = si[nb, S_NB_LOW_TS]
        if last == NO_TS or t - last > window:
            continue
        lag = si[nb, S_NB_START_TS] - si[s, S_RUN_START_TS]
        if follow >= 0 and lag < np.int64(follow) * step:
            continue
        if cfg[C_NB_FOLLOW_MAX] >= 0 and lag > np.int64(cfg[C_NB_FOLLOW_MAX]) * step:
            continue  # a jam that started elsewhere long after ours is no sign of ours spreading
        count += 1
    return count, links


@njit(cache=True, nogil=True)
def held_flags(si, out):
    """out [N] = segments whose readings are held back from forecasts: fault evidence in their latest bin
    or an open fault (an erratic or dead detector's readings would steer its neighbours' forecasts)."""
    for s in range(si.shape[0]):
        out[s] = si[s, S_FAULT_RUN] > 0 or si[s, S_FAULT_ON] == 1


@njit(cache=True, nogil=True)
def detect_series(ts, obs, fc, prof, rec, bucket, scale_table, cap, nb_top, cfg, si, sf, tf, tv, dump_features):
    """detect_bin over rows: ts [R], obs/fc/prof/rec [R, N], bucket [R] (row of scale_table [B, N]).
    Returns (row, segment, kind, code, value) of every event, in order, then the learned scores [R, N]
    (NaN unless learned mode), with ``dump_features`` the features [R, N, N_FEATURES] (NaN rows: not
    scored), and ``held_flags`` after each row [R, N]."""
    r_len, n = obs.shape
    cap_out = 2 * n * r_len + 1
    out_seg = np.empty(cap_out, np.int32)
    out_kind = np.empty(cap_out, np.int8)
    out_code = np.empty(cap_out, np.int8)
    out_val = np.empty(cap_out, np.float64)
    out_row = np.empty(cap_out, np.int64)
    z = np.empty(n)
    lvl = np.empty(n)
    near = np.zeros(n, np.bool_)
    cur = np.empty((feat.N_CUR, n))
    xrow = np.empty(feat.N_FEATURES)
    scores = np.full((r_len, n), np.nan)
    feats = np.full((r_len if dump_features else 0, n, feat.N_FEATURES), np.nan)
    no_dump = np.empty((0, feat.N_FEATURES))
    held = np.zeros((r_len, n), np.bool_)
    n_out = 0
    for r in range(r_len):
        dump = feats[r] if dump_features else no_dump
        m = detect_bin(ts[r], obs[r], fc[r], prof[r], rec[r], scale_table[bucket[r]], cap, nb_top, cfg, si, sf, z, lvl,
                       near, out_seg, out_kind, out_code, out_val, n_out, tf, tv, cur, xrow, dump, scores[r])
        for e in range(n_out, m):
            out_row[e] = r
        n_out = m
        held_flags(si, held[r])
    return out_row[:n_out], out_seg[:n_out], out_kind[:n_out], out_code[:n_out], out_val[:n_out], scores, feats, held


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


@njit(cache=True, nogil=True)
def raise_events(scores, k, clear_after):
    """(row, segment) of every incident the learned decision raises over scores [R, N] at threshold k: the
    same rule as ``count_raises``, for curves that need where and when."""
    r_len, n = scores.shape
    rows = np.empty(r_len * n, np.int64)
    segs = np.empty(r_len * n, np.int32)
    m = 0
    for s in range(n):
        active = False
        ok = 0
        for r in range(r_len):
            v = scores[r, s]
            if v != v:
                continue
            if not active:
                if v > k:
                    active = True
                    ok = 0
                    rows[m] = r
                    segs[m] = s
                    m += 1
            elif v <= k:
                ok += 1
                if ok >= clear_after:
                    active = False
                    ok = 0
            else:
                ok = 0
    return rows[:m], segs[:m]


@njit(cache=True, nogil=True)
def count_raises(scores, k, clear_after):
    """How many incidents ``raise_events`` finds (the threshold curve: one pass per k over stored scores)."""
    return raise_events(scores, k, clear_after)[0].shape[0]
