"""Issue 20's forecaster features (format 3): each one earns its place on a synthetic road built with the
structure it models, and a model saved before them (format 2) still loads and forecasts as it did."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from wulian.core.traffic.forecaster import FORMAT_VERSION, TrafficForecaster, TrafficForecastParams

STEP_S = 300
NS = 1_000_000_000
DAYS = 6
FIT_ROWS = 4 * 288  # fitted on 4 days, scored on the 2 after them


def chain(n: int) -> np.ndarray:
    adjacency = np.eye(n)
    for i in range(n - 1):
        adjacency[i, i + 1] = adjacency[i + 1, i] = 1.0
    return adjacency


def upstream_waves(n=12, seed=3):
    """Jams that start at the downstream end of a chain at random times and travel upstream one segment
    every 3 bins: segment i slows 3 bins after i + 1, 6 after i + 2. Two hops away is what says, half an
    hour ahead, that a jam is coming; the direct neighbours only say it 15 minutes ahead."""
    rng = np.random.default_rng(seed)
    rows = DAYS * 288
    values = 60.0 + rng.normal(0.0, 1.0, (rows, n))
    for start in rng.choice(np.arange(20, rows - 80), size=60, replace=False):
        for j in range(n):
            s = start + 3 * (n - 1 - j)
            values[s:s + 12, j] -= 25.0
    return values, chain(n)


def held_out_rmse(values, adjacency, params, step):
    model = TrafficForecaster(params).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    test = values[FIT_ROWS:]
    ends = np.arange(11, test.shape[0] - step)
    pred = model.forecast_series(test, FIT_ROWS * STEP_S * NS, ends)[:, step - 1]
    return float(np.sqrt(np.mean((test[ends + step] - pred) ** 2)))


BASE = TrafficForecastParams(utc_offset_s=0, weekend_profile=False)


def test_the_area_departure_sees_a_jam_coming_from_two_hops_away():
    values, adjacency = upstream_waves()
    without = held_out_rmse(values, adjacency, replace(BASE, area_anomaly=False, dev_hinges=False), 6)
    with_area = held_out_rmse(values, adjacency, replace(BASE, area_anomaly=True, dev_hinges=False), 6)
    assert with_area < 0.9 * without, (with_area, without)


def test_area_and_hinge_features_by_hand():
    """The kernel's last four features are A2 d, A4 d (d = x - p now, A the row-normalised graph) and
    max(d - r, 0), min(d + 3 r, 0) with r = regime_drop, on every horizon."""
    from wulian.core.kernels import traffic_forecast as kern
    from wulian.core.traffic.forecaster import build_graph

    n, n_lags, n_h, r = 4, 12, 2, 5.0
    g = build_graph(chain(n), 2)
    x_now = np.array([40.0, 58.0, 70.0, 61.0])
    p_now = np.full(n, 60.0)
    xw = np.tile(x_now, (n_lags, 1))
    params = replace(BASE, top_k=2, horizons=n_h, regime_drop=r)
    opts = params.opts()
    n_f = kern.n_features(n_lags, 2, opts)
    feats = np.empty((n, n_h, n_f))
    work = np.empty((n_lags + 2 + n_h + kern.N_WORK_EXTRA, n))
    kern.window_features(xw, p_now, np.tile(p_now, (n_h, 1)), g.ptr, g.idx, g.w, g.top_k, r, opts, feats,
                         np.empty(n, np.int64), work)
    a = np.zeros((n, n))
    for i in range(n - 1):
        a[i, i + 1] = a[i + 1, i] = 1.0
    a /= a.sum(axis=1, keepdims=True)
    d = x_now - p_now
    a2 = np.linalg.matrix_power(a, 2) @ d
    a4 = np.linalg.matrix_power(a, 4) @ d
    want = np.stack([a2, a4, np.maximum(d - r, 0.0), np.minimum(d + 3 * r, 0.0)], axis=1)
    for h in range(n_h):
        np.testing.assert_allclose(feats[:, h, -4:], want)
    assert want[0, 3] == -5.0 and want[2, 2] == 5.0  # the hinges are live where the departure is large


@pytest.fixture(scope="module")
def waves():
    values, adjacency = upstream_waves(n=6)
    return values, adjacency


def test_format_3_round_trips(waves):
    values, adjacency = waves
    model = TrafficForecaster(BASE).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    assert FORMAT_VERSION == 3 and model.params.area_anomaly and model.params.dev_hinges
    recent, t_last = values[FIT_ROWS:FIT_ROWS + 12], (FIT_ROWS + 11) * STEP_S * NS
    clone = TrafficForecaster.from_bytes(model.to_bytes())
    assert clone.params == model.params
    np.testing.assert_array_equal(clone.forecast(recent, t_last), model.forecast(recent, t_last))


def test_a_format_2_model_loads_with_the_new_features_off(waves):
    """A model saved before issue 20's features has no coefficients for them and no parameter naming
    them: it must load with them off (the new defaults would read past its coefficient rows)."""
    values, adjacency = waves
    old_params = replace(BASE, area_anomaly=False, dev_hinges=False)
    model = TrafficForecaster(old_params).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    arrays = model.to_arrays()
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["version"] = 2
    for name in ("area_anomaly", "dev_hinges"):
        del meta["params"][name]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    old = TrafficForecaster.from_arrays(arrays)
    assert not old.params.area_anomaly and not old.params.dev_hinges
    recent, t_last = values[FIT_ROWS:FIT_ROWS + 12], (FIT_ROWS + 11) * STEP_S * NS
    np.testing.assert_array_equal(old.forecast(recent, t_last), model.forecast(recent, t_last))
    meta["version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with pytest.raises(ValueError, match="unsupported forecaster format 99"):
        TrafficForecaster.from_arrays(arrays)
