"""Readings of a detector with fault evidence stay out of the forecasts (issue 20): an erratic loop must not
move its neighbours' forecasts, or a neighbour standing in a jam looks like an incident."""
from __future__ import annotations

import numpy as np
import pytest

from wulian.core.traffic.forecaster import TrafficForecaster, TrafficForecastParams
from wulian.core.traffic.incidents import (
    DETECTOR_NET, IncidentParams, horizon_forecasts, inject_fault, learn_detector, unheld_forecasts,
)
from tests.test_traffic_model import NS, STEP_S, synthetic_road


@pytest.fixture(scope="module")
def fitted():
    values, adjacency = synthetic_road()
    fit_rows = 6 * 288
    model = TrafficForecaster(TrafficForecastParams(utc_offset_s=0)).fit(values[:fit_rows], adjacency, 0, STEP_S)
    det = learn_detector(model, values[:fit_rows], 0, IncidentParams(step_s=STEP_S, utc_offset_s=0))
    return model, det, values, fit_rows


@pytest.fixture(scope="module")
def erratic(fitted):
    """Segment 2 erratic for 12 bins from 16:40 (free flow: the first jump is already > spike_jump)."""
    model, det, values, fit_rows = fitted
    start, seg = fit_rows + 200, 2
    bad, _ = inject_fault(values, seg, start, 12, "erratic", hi=70.0)
    ts = np.arange(values.shape[0], dtype=np.int64) * STEP_S * NS
    return start, seg, bad, ts, det.health(ts, bad)


def test_health_holds_an_erratic_detector_from_its_second_jump_until_it_clears(fitted, erratic):
    _, det, values, _ = fitted
    start, seg, bad, ts, held = erratic
    assert not det.health(ts, values)[start - 50:start + 50].any()  # clean readings: nothing held
    assert held[:start + 1].sum() == 0  # one jump is no evidence yet
    assert held[start + 1:start + 12, seg].all()  # evidence from the second jump, then an open fault
    assert held[start + 12 + det.params.fault_clear:, seg].sum() == 0  # cleared after fault_clear clean bins
    assert held[:, [0, 1, 3, 4, 5]].sum() == 0


def test_a_held_detector_leaves_its_neighbours_forecasts_as_if_it_had_read_nothing(fitted, erratic):
    model, _, _, fit_rows = fitted
    start, seg, bad, _, held = erratic
    ends = np.arange(start + 2, start + 10)
    got = unheld_forecasts(model, bad, 0, ends, held)
    silent = bad.copy()
    silent[:, seg] = np.nan
    np.testing.assert_allclose(got, model.forecast_series(silent, 0, ends, DETECTOR_NET))  # as the detector reads
    raw = model.forecast_series(bad, 0, ends, DETECTOR_NET)
    assert np.abs(raw[:, :, [1, 3]] - got[:, :, [1, 3]]).max() > 0.5  # the garbage did move the links
    # the held segment's own forecast comes from its profile and links: a road speed, not garbage
    assert np.all((got[:, :, seg] > 30.0) & (got[:, :, seg] < 70.0))
    # windows that end with nothing held are the plain forecasts
    calm = np.arange(fit_rows + 20, fit_rows + 30)
    np.testing.assert_array_equal(unheld_forecasts(model, bad, 0, calm, held),
                                  model.forecast_series(bad, 0, calm, DETECTOR_NET))
    rows, fc = horizon_forecasts(model, bad, 0, 3, start, held)
    np.testing.assert_allclose(fc[rows == start + 5], got[ends == start + 2][:, 2])
