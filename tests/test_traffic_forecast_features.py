"""Issue 20's forecaster features (format 3): their values by hand, the area departure and the jump hinges
each earning their place on a synthetic road built with the structure they model, and a model saved
before them (format 2) still loading and forecasting as it did."""
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


def glitches(n=6, seed=5):
    """Slow drifts that persist (small changes carry on) and one-bin detector glitches that do not (a
    drop of 25 that is back the next bin): linear in the last change, the two want opposite signs;
    the jump hinges at +-regime_drop tell them apart."""
    rng = np.random.default_rng(seed)
    rows = DAYS * 288
    drift = np.zeros((rows, n))
    for t in range(1, rows):
        drift[t] = 0.97 * drift[t - 1] + rng.normal(0.0, 1.5, n)
    values = 60.0 + drift
    values[rng.random((rows, n)) < 0.03] -= 25.0
    return values, np.eye(n)


def held_out_rmse(values, adjacency, params, step, after_drop=None):
    """RMSE ``step`` steps ahead on the 2 days after the fitted 4 (only after a last change below
    -after_drop when given)."""
    model = TrafficForecaster(params).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    test = values[FIT_ROWS:]
    ends = np.arange(11, test.shape[0] - step)
    pred = model.forecast_series(test, FIT_ROWS * STEP_S * NS, ends)[:, step - 1]
    err = test[ends + step] - pred
    if after_drop is not None:
        err = err[test[ends] - test[ends - 1] < -after_drop]
        assert err.size > 50
    return float(np.sqrt(np.mean(err ** 2)))


# the linear features on their own: the residual net (format 4, tests/test_traffic_residual_net.py) would
# learn some of the same structure and blur what each feature adds
BASE = TrafficForecastParams(utc_offset_s=0, weekend_profile=False, net_hidden=0)


def test_the_area_departure_sees_a_jam_coming_from_two_hops_away():
    values, adjacency = upstream_waves()
    without = held_out_rmse(values, adjacency, replace(BASE, area_anomaly=False), 6)
    with_area = held_out_rmse(values, adjacency, replace(BASE, area_anomaly=True), 6)
    assert with_area < 0.9 * without, (with_area, without)


def test_the_jump_hinges_learn_that_a_one_bin_collapse_is_a_glitch():
    values, adjacency = glitches()
    without = held_out_rmse(values, adjacency, replace(BASE, jump_hinges=0), 1, after_drop=15.0)
    with_jumps = held_out_rmse(values, adjacency, BASE, 1, after_drop=15.0)
    assert with_jumps < 0.9 * without, (with_jumps, without)


def test_area_and_hinge_features_by_hand():
    """The kernel's last features are A2 d, A4 d (d = x - p now, A the row-normalised graph), the departure
    hinges max(d - r, 0), min(d + 3 r, 0), then per step j = 1, 2 back the jump hinges max(c - r, 0),
    min(c + r, 0) of c = x[t-j] - x, with r = regime_drop, on every horizon."""
    from wulian.core.kernels import traffic_forecast as kern
    from wulian.core.traffic.forecaster import build_graph

    n, n_lags, n_h, r = 4, 12, 2, 5.0
    g = build_graph(chain(n), 2)
    x_now = np.array([40.0, 58.0, 70.0, 61.0])
    p_now = np.full(n, 60.0)
    xw = np.tile(x_now, (n_lags, 1))
    xw[-2] += [8.0, 0.0, -8.0, 2.0]  # one step back: a drop of 8, nothing, a rise of 8, a small drop
    xw[-3] += [0.0, 20.0, 0.0, -20.0]  # two steps back
    params = replace(BASE, top_k=2, horizons=n_h, regime_drop=r)
    assert params.jump_hinges == 2
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
    c1, c2 = xw[-2] - x_now, xw[-3] - x_now
    want = np.stack([a2, a4, np.maximum(d - r, 0.0), np.minimum(d + 3 * r, 0.0),
                     np.maximum(c1 - r, 0.0), np.minimum(c1 + r, 0.0), np.maximum(c2 - r, 0.0),
                     np.minimum(c2 + r, 0.0)], axis=1)
    for h in range(n_h):
        np.testing.assert_allclose(feats[:, h, -8:], want)
    assert want[0, 3] == -5.0 and want[2, 2] == 5.0  # the hinges are live where the departure is large
    assert want[0, 4] == 3.0 and want[2, 5] == -3.0 and want[3, 4] == 0.0 and want[3, 7] == -15.0


@pytest.fixture(scope="module")
def waves():
    values, adjacency = upstream_waves(n=6)
    return values, adjacency


def test_format_3_round_trips(waves):
    values, adjacency = waves
    model = TrafficForecaster(BASE).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    assert FORMAT_VERSION >= 3 and model.params.area_anomaly and model.params.dev_hinges
    recent, t_last = values[FIT_ROWS:FIT_ROWS + 12], (FIT_ROWS + 11) * STEP_S * NS
    clone = TrafficForecaster.from_bytes(model.to_bytes())
    assert clone.params == model.params
    np.testing.assert_array_equal(clone.forecast(recent, t_last), model.forecast(recent, t_last))


def test_a_format_2_model_loads_with_the_new_features_off(waves):
    """A model saved before issue 20's features has no coefficients for them and no parameter naming
    them: it must load with them off (the new defaults would read past its coefficient rows)."""
    values, adjacency = waves
    old_params = replace(BASE, area_anomaly=False, dev_hinges=False, jump_hinges=0)
    model = TrafficForecaster(old_params).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    arrays = model.to_arrays()
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["version"] = 2
    for name in ("area_anomaly", "dev_hinges", "jump_hinges"):
        del meta["params"][name]
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    old = TrafficForecaster.from_arrays(arrays)
    assert not old.params.area_anomaly and not old.params.dev_hinges and not old.params.jump_hinges
    recent, t_last = values[FIT_ROWS:FIT_ROWS + 12], (FIT_ROWS + 11) * STEP_S * NS
    np.testing.assert_array_equal(old.forecast(recent, t_last), model.forecast(recent, t_last))
    meta["version"] = 99
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with pytest.raises(ValueError, match="unsupported forecaster format 99"):
        TrafficForecaster.from_arrays(arrays)


def test_jump_hinges_must_fit_in_the_input_window(waves):
    values, adjacency = waves
    with pytest.raises(ValueError, match="jump_hinges must be in 0..11"):
        TrafficForecaster(replace(BASE, jump_hinges=12)).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)


def test_normal_equations_match_the_sum_of_outer_products(waves):
    """The accumulation sums the horizon-independent block once per window (not once per horizon): the
    result must be the plain sum of every (window, horizon) outer product, gaps and the series' end
    included, and ysum the targets' squares and count."""
    from wulian.core.kernels import traffic_forecast as kern
    from wulian.core.traffic.forecaster import build_graph

    values, adjacency = waves
    v = values[:200].copy()
    v[50:54, 2] = np.nan  # targets missing for some horizons only: the per-horizon path
    v[120, 4] = np.nan
    n, n_h, n_lags, r = v.shape[1], BASE.horizons, BASE.n_lags, BASE.regime_drop
    g = build_graph(adjacency, BASE.top_k)
    prof = 60.0 + np.sin(np.arange(200) / 15.0)[:, None] * np.ones(n)
    opts = BASE.opts()
    n_f = kern.n_features(n_lags, BASE.top_k, opts)
    gram, rhs, ysum = np.zeros((n_h, n, 2, n_f, n_f)), np.zeros((n_h, n, 2, n_f)), np.zeros((n_h, n, 2, 2))
    kern.accumulate_normal_equations(v, prof, n_lags - 1, 198, n_lags, g.ptr, g.idx, g.w, g.top_k, r, opts,
                                     gram, rhs, ysum)
    want_g, want_r, want_y = np.zeros_like(gram), np.zeros_like(rhs), np.zeros_like(ysum)
    feats, regime = np.empty((n, n_h, n_f)), np.empty(n, np.int64)
    work = np.empty((n_lags + 2 + n_h + kern.N_WORK_EXTRA, n))
    for t in range(n_lags - 1, 199):
        p_tgt = prof[np.minimum(t + 1 + np.arange(n_h), 199)]
        kern.window_features(v[t - n_lags + 1:t + 1], prof[t], p_tgt, g.ptr, g.idx, g.w, g.top_k, r, opts, feats,
                             regime, work)
        for h in range(min(n_h, 199 - t)):
            for i in range(n):
                dy = v[t + 1 + h, i] - work[n_lags - 1, i]
                if np.isfinite(dy):
                    x = feats[i, h]
                    want_g[h, i, regime[i]] += np.outer(x, x)
                    want_r[h, i, regime[i]] += x * dy
                    want_y[h, i, regime[i]] += (dy * dy, 1.0)
    np.testing.assert_allclose(gram, want_g, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rhs, want_r, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ysum, want_y, rtol=1e-12)
    assert want_y[..., 1].sum() > 0 and want_y[:, 2, :, 1].sum() < want_y[:, 0, :, 1].sum()  # the gaps count


def test_block_normal_equations_sum_and_leave_out(waves):
    """With the residual net's folds, the fit sums its normal equations from the blocks' (kept compact)
    instead of a second pass: the sum is the single pass's, a block left out is the other blocks', and
    the sum without keeping the blocks is bit for bit the same (``forecast(net=False)`` relies on it)."""
    from wulian.core.traffic.forecaster import build_graph

    values, adjacency = waves
    v = values[:200].copy()
    v[50:54, 2] = np.nan  # windows with a missing target: a block's full squares (``rest``)
    v[120, 4] = np.nan
    model = TrafficForecaster(replace(BASE, net_folds=4))
    model.graph = build_graph(adjacency, BASE.top_k)
    prof = 60.0 + np.sin(np.arange(200) / 15.0)[:, None] * np.ones(v.shape[1])
    blocks, gram, rhs = model._block_normal_equations(v, prof, keep=True)
    _, gram_2, rhs_2 = model._block_normal_equations(v, prof, keep=False)
    np.testing.assert_array_equal(gram, gram_2)
    np.testing.assert_array_equal(rhs, rhs_2)
    whole, whole_r, _ = model._normal_equations(v, prof)
    np.testing.assert_allclose(gram, whole, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(rhs, whole_r, rtol=1e-12, atol=1e-9)
    folds = model._fold_ends(200)
    assert len(blocks) == len(folds) == 4 and sum(b[2] is not None for b in blocks) >= 2
    out = np.empty_like(gram)
    for b, blk in enumerate(folds):
        g_lo, r_lo = model._leave_out(gram, rhs, blocks[b], out)
        want_g, want_r = np.zeros_like(gram), np.zeros_like(rhs)
        for other in folds[:b] + folds[b + 1:]:
            g_o, r_o, _ = model._normal_equations(v, prof, int(other[0]), int(other[-1]))
            want_g += g_o
            want_r += r_o
        np.testing.assert_allclose(g_lo, want_g, rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(r_lo, want_r, rtol=1e-10, atol=1e-8)
