"""The learned incident score (core.traffic.incident_score): on the synthetic road it finds a spreading collapse
early, stays quiet on clean days, keeps detector faults as faults; its threshold curve agrees with the kernel;
it round-trips; without the road graph or enough history the rules decide."""
from dataclasses import replace

import numpy as np
import pytest

from wulian.core.kernels import traffic_incidents as kern
from wulian.core.traffic.forecaster import TrafficForecaster, TrafficForecastParams
from wulian.core.traffic.incidents import (
    FAULT, RAISE, IncidentDetector, IncidentParams, horizon_forecasts, inject_fault, inject_incident, learn_detector,
)
from tests.test_traffic_model import NS, STEP_S, synthetic_road

PARAMS = IncidentParams(step_s=STEP_S, utc_offset_s=0, train_per_shape=150)
FIT_ROWS = 6 * 288


@pytest.fixture(scope="module")
def learned():
    values, adjacency = synthetic_road()
    model = TrafficForecaster(TrafficForecastParams(utc_offset_s=0)).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    det = learn_detector(model, values[:FIT_ROWS], 0, PARAMS, adjacency=adjacency)
    test, t0 = values[FIT_ROWS:], FIT_ROWS * STEP_S * NS
    rows, fc = horizon_forecasts(model, test, t0, 3, 15)
    return model, det, values, adjacency, test, t0, rows, fc


def test_the_score_is_learned_and_its_threshold_chosen_on_the_holdout(learned):
    _, det, *_ = learned
    assert det.trees is not None and det.k in det.params.score_grid
    # the curve: holdout raises per day fall as the threshold rises, and k is the first within the budget
    fa = [f for _, f in det.curve]
    assert fa == sorted(fa, reverse=True) and dict(det.curve)[det.k] <= det.params.fa_budget * 6
    assert det.band_k in det.params.k_grid  # the rules' k stays for the band


def test_a_spreading_collapse_is_raised_early_and_clean_days_stay_quiet(learned):
    model, det, _, adjacency, test, t0, rows, fc = learned
    ts = t0 + rows * STEP_S * NS
    # the profile is part of the evidence: the service passes it with every bin
    assert len([e for e in det.with_threshold(det.k).replay(ts, test[rows], fc, model.profile_at(ts)).kind if e == RAISE]) == 0
    start = 150
    hit, affected = inject_incident(test, adjacency, segment=3, start=start, duration=12)
    _, fc_hit = horizon_forecasts(model, hit, t0, 3, 15)
    ev = det.with_threshold(det.k).replay(ts, hit[rows], fc_hit, model.profile_at(ts))
    raised = ev.kind == RAISE
    assert raised.any()
    first = rows[ev.row[raised]].min() - start
    assert 0 <= first <= 2
    assert all(affected[rows[r], s] for r, s in zip(ev.row[raised], ev.segment[raised]))


@pytest.mark.parametrize("shape", ["zeros", "flatline", "erratic"])
def test_detector_faults_are_faults_not_incidents(learned, shape):
    model, det, _, _, test, t0, rows, _ = learned
    ts = t0 + rows * STEP_S * NS
    bad, _ = inject_fault(test, 3, 150, 12, shape, hi=70.0)
    _, fc_bad = horizon_forecasts(model, bad, t0, 3, 15)
    ev = det.with_threshold(det.k).replay(ts, bad[rows], fc_bad, model.profile_at(ts))
    assert RAISE not in ev.kind.tolist() and 3 in ev.segment[ev.kind == FAULT].tolist()


def test_thresholding_stored_scores_matches_the_kernel(learned):
    """The curves threshold one scored replay per k (``at_threshold``); the kernel's own decisions must agree."""
    model, det, _, adjacency, test, t0, rows, _ = learned
    ts = t0 + rows * STEP_S * NS
    hit, _ = inject_incident(test, adjacency, segment=2, start=200, duration=12, severity=0.5)
    _, fc = horizon_forecasts(model, hit, t0, 3, 15)
    scores, faults = det.scored(ts, hit[rows], fc, model.profile_at(ts))
    for k in (det.k - 2.0, det.k, det.k + 1.0):
        kernel = det.with_threshold(k).replay(ts, hit[rows], fc, model.profile_at(ts))
        fast = det.at_threshold(scores, faults, k)
        want = sorted(zip(kernel.row[kernel.kind == RAISE].tolist(), kernel.segment[kernel.kind == RAISE].tolist()))
        got = sorted(zip(fast.row[fast.kind == RAISE].tolist(), fast.segment[fast.kind == RAISE].tolist()))
        assert got == want
        assert kern.count_raises(scores, k, det.params.clear_after) == len(want)


def test_round_trip_keeps_the_score_and_an_older_save_decides_by_rules(learned):
    model, det, _, adjacency, test, t0, rows, _ = learned
    ts = t0 + rows * STEP_S * NS
    hit, _ = inject_incident(test, adjacency, segment=3, start=150, duration=12)
    _, fc = horizon_forecasts(model, hit, t0, 3, 15)
    clone = IncidentDetector.from_arrays(det.to_arrays())
    assert clone.k == det.k and clone.band_k == det.band_k and clone.params == det.params
    a = det.with_threshold(det.k).replay(ts, hit[rows], fc, model.profile_at(ts))
    b = clone.with_threshold(clone.k).replay(ts, hit[rows], fc, model.profile_at(ts))
    assert a.row.tolist() == b.row.tolist() and a.segment.tolist() == b.segment.tolist()
    old = {k: v for k, v in det.to_arrays().items() if not k.startswith("tree_") and k != "band_k"}
    rules = IncidentDetector.from_arrays(old)
    assert rules.trees is None and rules.k_grid == rules.params.k_grid


def test_without_the_graph_or_enough_history_the_rules_decide(learned):
    model, _, values, adjacency, *_ = learned
    assert learn_detector(model, values[:FIT_ROWS], 0, PARAMS).trees is None  # no road graph
    assert learn_detector(model, values[:FIT_ROWS], 0, replace(PARAMS, learned=False), adjacency=adjacency).trees is None
    short = values[:4 * 288]  # 2.6 learning days before the holdout: under min_learn_days
    m = TrafficForecaster(TrafficForecastParams(utc_offset_s=0)).fit(short, adjacency, 0, STEP_S)
    assert learn_detector(m, short, 0, PARAMS, adjacency=adjacency).trees is None
