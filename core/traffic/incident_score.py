"""The learned incident score: gradient-boosted trees over the detector's evidence, taught by injection.

Why: the rule detector ANDs its tests (sudden drop, links slowing after it, not recurrent, not area-wide)
and every variant of them fell on one trade-off (issue 20: about 52 % of injected incidents at 4.4 false
alarms a day on Los-loop). Each test throws away how strongly it held; trees over the same evidence
(``core.kernels.incident_features``: the segment's drop against forecast, level and profile over three
bins, its two strongest links', the recurrence count, the area share) weigh it jointly and keep the
conjunctions (the segment AND its links) that a linear score cannot.

A collapse that starts in congestion was the score's blind spot (about 55 % found, against 87-100 % of
the shapes that start in free flow): by its ratios alone it looks like congestion's own stop-and-go. So
the evidence also says which regime the segment is in and how unusual the step is there (the reading
and recent level against the free-flow cap, the step against the highest of the last 3 readings, the
segment's recent volatility), and ``shape_weights`` weighs each shape's positives (the congested one
more, being the harder one to tell apart).

No incident labels exist, so the score is taught the way the detector is judged: incidents of the
``TRAINING_SHAPES`` are injected into the learning rows (``inject_incident``: the segment collapses and
the queue reaches its strongest links 2 and 4 bins later), their bins ``label_bins`` after the start are
positives, every clean bin a negative (the rows are taken to be incident-free, as for the rules).

Out of sample where it matters: the learning rows are the training rows but their latest ``holdout``
share, with a forecaster fitted on them alone; the threshold k is the smallest of ``score_grid`` whose
replay of the holdout (forecast out of sample, recurrence from the learning rows only) raises at most
``fa_budget`` incidents per segment and day, as the rules' k is chosen. Detector faults are screened by
the kernel's health tests before any score, so a broken loop is never incident evidence.
"""
from __future__ import annotations

import numpy as np

from wulian.core.kernels import gbdt
from wulian.core.kernels import traffic_incidents as kern
from wulian.core.timebase import NS_PER_S
from wulian.core.timebase import S_PER_DAY as SECONDS_PER_DAY
from wulian.core.traffic.forecaster import TrafficForecaster
from wulian.core.traffic.incidents import (
    TRAINING_SHAPES, IncidentParams, _learn_tables, draw_start, horizon_forecasts, inject_incident, recurrence_table,
)

INJECTED_BINS = 12  # an injected incident lasts an hour, as the evaluation's
WARM_BINS = 24  # replayed before an injection's start, so levels and lags are warm
BIN_EDGES = 64


def learn_score(model: TrafficForecaster, values: np.ndarray, adjacency: np.ndarray, t0_ns: int,
                params: IncidentParams) -> tuple[tuple[np.ndarray, np.ndarray, float], float, list] | None:
    """((tf, tv, base) trees, threshold k, curve [(k, holdout raises/day)]) from training rows values [T, N]
    (row k at t0_ns + k step); None when the rows are too few to hold a day out and still learn."""
    step_ns = model.step_s * NS_PER_S
    t_len, n = values.shape
    n_learn = t_len - int(round(params.holdout * t_len))
    if params.holdout <= 0 or n_learn * model.step_s / SECONDS_PER_DAY < params.min_learn_days:
        return None
    learn = values[:n_learn]
    fitted = TrafficForecaster(model.params).fit(learn, adjacency, t0_ns, model.step_s)
    tables = _learn_tables(fitted, learn, t0_ns, params)
    own = recurrence_table(learn, t0_ns, params)[1]  # each learning row's own day, left out of its count

    def replay(vals, row0, first_row, own_rows=None):
        """Features and scores of rows of ``vals`` (starting at absolute row ``row0``) from a fresh state."""
        rows, fc = horizon_forecasts(fitted, vals, t0_ns + row0 * step_ns, params.horizon, first_row)
        ts = t0_ns + (row0 + rows) * step_ns
        rec = tables.recurrence_at(ts)
        if own_rows is not None:
            rec = rec - own_rows[row0 + rows]
        return rows, tables.features(ts, vals[rows], fc, fitted.profile_at(ts), rec)[1]

    lead = fitted.params.n_lags + params.horizon
    rows, feats = replay(learn, 0, lead, own)
    clean = feats.reshape(-1, feats.shape[-1])
    clean = clean[np.isfinite(clean[:, 0])]

    rng = np.random.default_rng(params.train_seed)
    top = fitted.profile.max(axis=(0, 1))
    has_links = np.flatnonzero((np.asarray(adjacency) > 0).sum(axis=1) > 1)
    lo, hi = lead + WARM_BINS + 1, n_learn - INJECTED_BINS - 1
    positives, shape_of = [], []
    if len(has_links) == 0 or hi <= lo:
        return None
    for i_shape, (severity, where) in enumerate(TRAINING_SHAPES.values()):
        for _ in range(params.train_per_shape):
            try:
                seg, start = draw_start(rng, learn, top, has_links, where, lo, hi)
            except ValueError:  # a road that never congests (or never flows freely) teaches the other shapes
                break
            first = start - WARM_BINS - lead
            window = learn[first:start + max(params.label_bins) + 1]
            inj, _ = inject_incident(window, adjacency, seg, start - first, INJECTED_BINS, severity=severity)
            r, f = replay(inj, first, lead, own)
            for b in params.label_bins:
                i = np.searchsorted(r, start - first + b)
                if i < len(r) and r[i] == start - first + b and np.isfinite(f[i, seg, 0]):
                    positives.append(f[i, seg])
                    shape_of.append(i_shape)
    if not positives:
        return None
    pos = np.asarray(positives)
    x = np.vstack([clean, pos])
    y = np.r_[np.zeros(len(clean)), np.ones(len(pos))]
    sw = np.asarray(params.shape_weights, np.float64)[np.asarray(shape_of)]
    w = np.r_[np.ones(len(clean)), sw * (params.pos_weight * len(clean) / sw.sum())]
    edges = gbdt.bin_edges(x, BIN_EDGES)
    feature, thr_bin, left, right, value, base = gbdt.fit(gbdt.binned(x, edges), y, w, n_trees=params.trees,
                                                           learning_rate=params.tree_rate,
                                                           max_leaves=params.tree_leaves)
    thr = gbdt.thresholds_to_values(thr_bin, feature, edges)
    trees = (np.ascontiguousarray(np.stack([feature, left, right]), np.int32),
             np.ascontiguousarray(np.stack([thr, value]), np.float64), float(base))

    # the threshold: the holdout days, forecast out of sample, recurrence from the learning rows only
    first = n_learn - lead - WARM_BINS
    rows_h, fc_h = horizon_forecasts(fitted, values[first:], t0_ns + first * step_ns, params.horizon, lead)
    ts_h = t0_ns + (first + rows_h) * step_ns
    judge = tables._copy(params)
    judge.trees = trees
    scores, _ = judge.features(ts_h, values[first:][rows_h], fc_h, fitted.profile_at(ts_h), tables.recurrence_at(ts_h))
    held = first + rows_h >= n_learn
    scores = scores[held]
    days = held.sum() * model.step_s / SECONDS_PER_DAY
    budget = params.fa_budget * n
    curve = [(float(k), raises(scores, k, params.clear_after) / days) for k in sorted(params.score_grid)]
    ok = [k for k, fa in curve if fa <= budget]
    k = ok[0] if ok else min(curve, key=lambda c: (c[1], c[0]))[0]
    return trees, k, curve


def raises(scores: np.ndarray, k: float, clear_after: int) -> int:
    """How many incidents the learned decision raises over scores [R, N] at threshold k (the kernel's rule:
    above k raises, ``clear_after`` scored bins at or below it clear; unscored bins change nothing)."""
    return int(kern.count_raises(np.ascontiguousarray(scores, np.float64), float(k), int(clear_after)))
