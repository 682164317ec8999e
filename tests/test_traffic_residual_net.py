"""The forecaster's residual net (format 4): its inputs by hand, the online path agreeing with the batch
path, the round trip, a format 3 model loading without it, the net earning its place where the
linear model cannot follow (an interaction of two conditions), and its numba training and forward pass
agreeing with numpy."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from wulian.core.traffic.forecaster import FORMAT_VERSION, TrafficForecaster, TrafficForecastParams
from wulian.core.kernels import residual_net as kern_net
from wulian.core.traffic.residual_net import NetParams, fit_net, net_inputs, net_predict

STEP_S = 300
NS = 1_000_000_000
DAYS = 6
FIT_ROWS = 4 * 288
PARAMS = TrafficForecastParams(utc_offset_s=0, weekend_profile=False, net_hidden=64)  # opt-in


def chain(n: int) -> np.ndarray:
    adjacency = np.eye(n)
    for i in range(n - 1):
        adjacency[i, i + 1] = adjacency[i + 1, i] = 1.0
    return adjacency


def gated_jams(n=12, seed=7):
    """A segment's speed drifts; a jam (-20 for 8 bins) follows only when it has slowed by more than 3
    over the last 3 bins *and* its downstream neighbour is already 10 below it: either alone means
    nothing. A linear model has one slope per input and cannot gate one on the other."""
    rng = np.random.default_rng(seed)
    rows = DAYS * 288
    values = np.empty((rows, n))
    values[:3] = 60.0
    jam = np.zeros(n, np.int64)
    level = 60.0 + np.zeros(n)
    for t in range(3, rows):
        level = 60.0 + 0.9 * (level - 60.0) + rng.normal(0.0, 2.0, n)
        for i in range(n):
            nb = values[t - 1, min(i + 1, n - 1)]
            if jam[i] == 0 and values[t - 1, i] - values[t - 3, i] < -3.0 and nb < values[t - 1, i] - 10.0:
                jam[i] = 8
        values[t] = level - 20.0 * (jam > 0)
        jam = np.maximum(jam - 1, 0)
        values[t, n - 1] -= 15.0 * (rng.random() < 0.3)  # the downstream end slows now and then
    return values, chain(n)


@pytest.fixture(scope="module")
def fitted():
    values, adjacency = gated_jams()
    # a small road has few rows to learn from: more passes than Los-loop's 207 segments need
    return TrafficForecaster(replace(PARAMS, net_epochs=40)).fit(values[:FIT_ROWS], adjacency, 0, STEP_S), values, \
        adjacency


def test_net_inputs_by_hand():
    # 2 windows of 3 values, 2 segments linked to each other, 2 horizons
    xc = np.array([[[50.0, 40.0], [52.0, np.nan], [54.0, 38.0]], [[60.0, 30.0], [60.0, 30.0], [np.nan, 30.0]]])
    p_now = np.array([[55.0, 45.0], [58.0, 35.0]])
    p_tgt = np.full((2, 2, 2), 50.0)
    raw = np.full((2, 2, 2), 49.0)
    ptr, idx, w = np.array([0, 1, 2]), np.array([1, 0], np.int32), np.array([1.0, 1.0])
    out = net_inputs(xc, p_now, p_tgt, raw, np.array([0, 72]), 288, ptr, idx, w)
    assert out.shape == (2, 2, 2 + 2 * 2 + 8) and out.dtype == np.float32
    # lags - x, profile - x, forecasts - x, departure, over 1 and 2 hops, network, neighbours - x, x, time
    np.testing.assert_allclose(out[0, 0], [-4, -2, -4, -4, -5, -5, -1, -7, -1, -4, -16, 54, 0, 1], atol=1e-6)
    np.testing.assert_allclose(out[0, 1], [2, 0, 12, 12, 11, 11, -7, -1, -7, -4, 16, 38, 0, 1], atol=1e-6)
    # segment 0 of window 1 has no current value: its profile stands in (x = 58, departure 0); 06:00
    np.testing.assert_allclose(out[1, 0, [0, 1, 6, 11, 12, 13]], [2, 2, 0, 58, 1, 0], atol=1e-6)


def test_the_net_learns_an_interaction_the_linear_model_cannot(fitted):
    model, values, adjacency = fitted
    linear = TrafficForecaster(replace(PARAMS, net_hidden=0)).fit(values[:FIT_ROWS], adjacency, 0, STEP_S)
    test = values[FIT_ROWS:]
    ends = np.arange(11, test.shape[0] - 1)
    y = test[ends + 1]
    err = {name: float(np.sqrt(np.mean((y - m.forecast_series(test, FIT_ROWS * STEP_S * NS, ends)[:, 0]) ** 2)))
           for name, m in (("net", model), ("linear", linear))}
    assert model.net is not None and model.blend.shape == (PARAMS.horizons, 4)
    assert err["net"] < 0.99 * err["linear"], err  # measured 3.46 against 3.54


def test_online_and_batch_forecasts_agree(fitted):
    """``forecast`` (one window, the live path) and ``forecast_series`` (every window) give the same
    numbers, the net's correction included."""
    model, values, _ = fitted
    end = FIT_ROWS + 100
    one = model.forecast(values[end - 11:end + 1], end * STEP_S * NS)
    many = model.forecast_series(values, 0, np.array([end]))[0]
    np.testing.assert_allclose(one, many, rtol=1e-9, atol=1e-9)


def test_format_4_round_trips_and_a_format_3_model_loads_without_a_net(fitted):
    model, values, _ = fitted
    assert FORMAT_VERSION == 5
    recent, t_last = values[FIT_ROWS:FIT_ROWS + 12], (FIT_ROWS + 11) * STEP_S * NS
    clone = TrafficForecaster.from_bytes(model.to_bytes())
    assert clone.params == model.params
    np.testing.assert_array_equal(clone.forecast(recent, t_last), model.forecast(recent, t_last))
    # a format 3 model: no net parameters, no net arrays, 3 blend weights
    linear = TrafficForecaster(replace(PARAMS, net_hidden=0)).fit(values[:FIT_ROWS], chain(values.shape[1]), 0,
                                                                   STEP_S)
    arrays = saved_as(linear.to_arrays(), 3, ("net_hidden", "net_epochs", "net_folds"))
    old = TrafficForecaster.from_arrays(arrays)
    assert old.net is None and old.params.net_hidden == 0 and old.blend.shape == (PARAMS.horizons, 3)
    np.testing.assert_array_equal(old.forecast(recent, t_last), linear.forecast(recent, t_last))


def test_fit_net_is_deterministic_and_skips_rows_without_targets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 5)).astype(np.float32)
    y = np.stack([np.maximum(x[:, 0], 0.0) * x[:, 1], x[:, 2]], axis=1)
    y[::50, 1] = np.nan
    a, b = fit_net(x, y, NetParams(hidden=16, epochs=60)), fit_net(x, y, NetParams(hidden=16, epochs=60))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    ok = np.isfinite(y).all(axis=1)
    mse = np.mean((net_predict(a, x[ok]) - y[ok]) ** 2, axis=0)
    # the first target has no linear part at all (a least-squares line leaves its whole variance)
    assert mse[0] < 0.5 * np.var(y[ok, 0]) and mse[1] < 0.1, mse


def adam_by_numpy(x, y, orders, batch, lr, wd, w1, b1, w2, b2):
    """The training loop as the numpy path ran it (float64 here): the kernel's reference."""
    par = {"w1": w1.astype(float), "b1": b1.astype(float), "w2": w2.astype(float), "b2": b2.astype(float)}
    m1 = {k: np.zeros_like(v) for k, v in par.items()}
    m2 = {k: np.zeros_like(v) for k, v in par.items()}
    step = 0
    for order in orders:
        for s in range(0, len(order), batch):
            b = order[s:s + batch]
            z = x[b] @ par["w1"] + par["b1"]
            a = np.maximum(z, 0.0)
            g_out = (a @ par["w2"] + par["b2"] - y[b]) * 2.0 / (len(b) * y.shape[1])
            g_a = (g_out @ par["w2"].T) * (z > 0)
            grads = {"w1": x[b].T @ g_a, "b1": g_a.sum(0), "w2": a.T @ g_out, "b2": g_out.sum(0)}
            step += 1
            for k, p in par.items():
                g = grads[k] + wd * p if k[0] == "w" else grads[k]
                m1[k] = 0.9 * m1[k] + 0.1 * g
                m2[k] = 0.999 * m2[k] + 0.001 * g * g
                p -= lr * (m1[k] / (1 - 0.9 ** step)) / (np.sqrt(m2[k] / (1 - 0.999 ** step)) + 1e-8)
    return par


def test_train_kernel_matches_adam_by_numpy():
    """Two epochs of 37 rows in batches of 16 (a short last batch; 11 inputs: the products' 8-term
    passes and their remainders), weight decay on the weights only: the kernel and the numpy loop agree."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 11)).astype(np.float32)
    y = rng.normal(size=(37, 3)).astype(np.float32)
    orders = np.stack([rng.permutation(37) for _ in range(2)])
    w1 = (rng.normal(size=(11, 9)) / 3).astype(np.float32)
    b1 = rng.normal(scale=0.1, size=9).astype(np.float32)
    w2 = (rng.normal(size=(9, 3)) / 3).astype(np.float32)
    b2 = np.zeros(3, np.float32)
    want = adam_by_numpy(x, y, orders, 16, 1e-2, 0.5, w1, b1, w2, b2)
    w2t, b2 = np.ascontiguousarray(w2.T[None]), b2[None].copy()  # one member
    kern_net.train_net(x, y, orders, 16, np.full(orders.shape[0] + 1, 1e-2), 0.5, w1, b1, w2t, b2)
    for k, got in (("w1", w1), ("b1", b1), ("w2", w2t[0].T), ("b2", b2[0])):
        np.testing.assert_allclose(got, want[k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert np.abs(want["w1"] - w1).max() < np.abs(want["w1"]).max()  # it moved: 6 steps of 1e-2


def test_predict_kernel_matches_numpy_over_chunks():
    rng = np.random.default_rng(4)
    n = kern_net.CHUNK + 45  # a full chunk and a part
    net = {"w1": rng.normal(size=(10, 6)).astype(np.float32), "b1": rng.normal(size=6).astype(np.float32),
           "w2": rng.normal(size=(6, 4)).astype(np.float32), "b2": rng.normal(size=4).astype(np.float32),
           "mu": rng.normal(size=10).astype(np.float32), "sd": rng.uniform(0.5, 2, 10).astype(np.float32),
           "ysd": np.asarray(np.float32(3.0))}
    x = rng.normal(size=(n // 3 + 1, 3, 10)).astype(np.float32)
    a = np.maximum(((x.astype(float) - net["mu"]) / net["sd"]) @ net["w1"] + net["b1"], 0.0)
    want = (a @ net["w2"] + net["b2"]) * 3.0
    got = net_predict(net, x)
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_net_inputs_harmonics_and_neighbour_lags_by_hand():
    """Format 5's extra inputs: the time of day's harmonics after the first, then the neighbours' mean
    level l steps ago minus now (a missing value counts 0)."""
    xc = np.array([[[50.0, 40.0], [52.0, np.nan], [54.0, 38.0]]])
    p_now, p_tgt, raw = np.array([[55.0, 45.0]]), np.full((1, 2, 2), 50.0), np.full((1, 2, 2), 49.0)
    ptr, idx, w = np.array([0, 1, 2]), np.array([1, 0], np.int32), np.array([1.0, 1.0])
    base = net_inputs(xc, p_now, p_tgt, raw, np.array([72]), 288, ptr, idx, w)
    out = net_inputs(xc, p_now, p_tgt, raw, np.array([72]), 288, ptr, idx, w, harmonics=2, nb_lags=(1, 2))
    assert out.shape == (1, 2, base.shape[2] + 2 + 2)
    np.testing.assert_array_equal(out[..., :base.shape[2]], base)  # format 4's inputs come first, unchanged
    # 06:00: second harmonic sin(pi) = 0, cos(pi) = -1; segment 0's neighbour (1) was nan then 40 against 38
    # now; segment 1's neighbour (0) was 52 and 50 against 54
    np.testing.assert_allclose(out[0, 0, -4:], [0, -1, 0, 2], atol=1e-6)
    np.testing.assert_allclose(out[0, 1, -4:], [0, -1, -2, -4], atol=1e-6)
    with pytest.raises(ValueError):
        net_inputs(xc, p_now, p_tgt, raw, np.array([72]), 288, ptr, idx, w, nb_lags=(3,))  # past the window


def test_members_side_by_side_train_as_each_alone():
    """The kernel trains M nets in one pass over the rows: each ends as it would trained alone on the
    same rows in the same order (a short last batch, units not a multiple of 8)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(45, 10)).astype(np.float32)
    y = rng.normal(size=(45, 3)).astype(np.float32)
    orders = np.stack([rng.permutation(45) for _ in range(3)])
    n_m, n_u = 3, 7
    w1 = (rng.normal(size=(10, n_m * n_u)) / 3).astype(np.float32)
    w2t = (rng.normal(size=(n_m, 3, n_u)) / 3).astype(np.float32)
    b1, b2 = np.zeros(n_m * n_u, np.float32), rng.normal(size=(n_m, 3)).astype(np.float32)
    alone = []
    for m in range(n_m):
        cols = slice(m * n_u, (m + 1) * n_u)
        arrays = [np.array(a) for a in (w1[:, cols], b1[cols], w2t[m:m + 1], b2[m:m + 1])]  # copies
        kern_net.train_net(x, y, orders, 16, np.full(orders.shape[0] + 1, 1e-2), 1e-3, *arrays)
        alone.append(arrays)
    kern_net.train_net(x, y, orders, 16, np.full(orders.shape[0] + 1, 1e-2), 1e-3, w1, b1, w2t, b2)
    for m, (a_w1, a_b1, a_w2t, a_b2) in enumerate(alone):
        cols = slice(m * n_u, (m + 1) * n_u)
        np.testing.assert_allclose(w1[:, cols], a_w1, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b1[cols], a_b1, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(w2t[m], a_w2t[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b2[m], a_b2[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(alone[0][2], alone[1][2])  # the members differ


def test_net_members_are_averaged_in_one_net():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1500, 4)).astype(np.float32)
    y = np.stack([np.maximum(x[:, 0], 0.0), x[:, 1] * x[:, 2]], axis=1)
    prm = NetParams(hidden=8, epochs=5, members=3)
    both = fit_net(x, y, prm)
    assert both["w1"].shape == (4, 24) and both["w2"].shape == (24, 2)
    # the first member is the net one seed alone trains (same initial weights, same order of the rows)
    first = fit_net(x, y, replace(prm, members=1))
    np.testing.assert_allclose(both["w1"][:, :8], first["w1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(both["w2"][:8] * 3, first["w2"], rtol=1e-4, atol=1e-5)
    second = {k: v[:, 8:16] if k == "w1" else v[8:16] * 3 if k == "w2" else v for k, v in both.items()}
    assert not np.allclose(second["w1"], first["w1"])  # the members differ: different initial weights
    # its output is the mean of the members' outputs
    members = [{k: v[:, s] if k == "w1" else v[s] * 3 if k == "w2" else v[s] if k == "b1" else v
                for k, v in both.items()} for s in (slice(0, 8), slice(8, 16), slice(16, 24))]
    np.testing.assert_allclose(net_predict(both, x), np.mean([net_predict(m, x) for m in members], axis=0),
                               rtol=1e-4, atol=1e-5)


def saved_as(arrays: dict, version: int, unknown: tuple[str, ...]) -> dict:
    """``arrays`` as an earlier format saved them: its version, without the settings it did not know."""
    meta = json.loads(bytes(arrays["meta"]).decode())
    meta["version"] = version
    for name in unknown:
        del meta["params"][name]
    return arrays | {"meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}


def test_a_format_4_net_loads_with_its_own_inputs(fitted):
    """A format 4 model's net read one harmonic and no neighbour lags, with one member: it loads with
    those settings and its inputs keep their width (the new defaults would not fit its first layer)."""
    model, values, _ = fitted
    arrays = saved_as(model.to_arrays(), 4, ("net_members", "net_harmonics", "net_nb_lags"))
    n_in = (PARAMS.n_lags - 1) + 2 * PARAMS.horizons + 8  # format 4's input width
    rng = np.random.default_rng(0)
    arrays |= {"net_w1": rng.normal(0.0, 0.1, (n_in, 16)).astype(np.float32), "net_b1": np.zeros(16, np.float32),
               "net_w2": rng.normal(0.0, 0.1, (16, PARAMS.horizons)).astype(np.float32),
               "net_mu": np.zeros(n_in, np.float32), "net_sd": np.ones(n_in, np.float32)}
    old = TrafficForecaster.from_arrays(arrays)
    assert (old.params.net_members, old.params.net_harmonics, old.params.net_nb_lags) == (1, 1, ())
    end = FIT_ROWS + 100
    one = old.forecast(values[end - 11:end + 1], end * STEP_S * NS)
    np.testing.assert_allclose(one, old.forecast_series(values, 0, np.array([end]))[0], rtol=1e-9, atol=1e-9)
    assert np.all(np.isfinite(one))


def test_the_detector_compares_with_the_forecasts_without_the_net(fitted):
    """With a net, ``net=False`` (what the incident detector uses, learning and replaying) gives the
    forecasts of the same model fitted without a net (the shrinkage and the linear fit do not depend on
    the net; the blend is fitted again without its term), also after a round trip and on the live path;
    the published forecasts differ; without a net the flag changes nothing."""
    from wulian.core.traffic.incidents import DETECTOR_NET, unheld_forecasts

    model, values, adjacency = fitted
    plain = TrafficForecaster(replace(PARAMS, net_hidden=0, net_epochs=40)).fit(values[:FIT_ROWS], adjacency, 0,
                                                                                STEP_S)
    assert not DETECTOR_NET and np.abs(model.blend[:, 3]).max() > 0.1
    assert np.abs(model.blend[:, :3] - model.blend_linear).max() > 0.01  # the net's term moved the others (0.098)
    ends = np.arange(FIT_ROWS + 11, FIT_ROWS + 200)
    linear = model.forecast_series(values, 0, ends, net=False)
    np.testing.assert_array_equal(linear, plain.forecast_series(values, 0, ends))
    np.testing.assert_array_equal(unheld_forecasts(model, values, 0, ends, None), linear)
    published = model.forecast_series(values, 0, ends)
    clone = TrafficForecaster.from_bytes(model.to_bytes())
    np.testing.assert_array_equal(clone.forecast_series(values, 0, ends, net=False), linear)
    # a net saved before the weights without it: its detector learnt on the net's forecasts, they stay
    old = TrafficForecaster.from_arrays({k: v for k, v in model.to_arrays().items() if k != "blend_linear"})
    np.testing.assert_array_equal(old.forecast_series(values, 0, ends, net=False), published)
    assert np.abs(published - linear).mean() > 0.1, np.abs(published - linear).mean()  # measured 0.58
    end = int(ends[50])  # the live path too
    one = model.forecast(values[end - 11:end + 1], end * STEP_S * NS, net=False)
    np.testing.assert_allclose(one, linear[50], rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(plain.forecast_series(values, 0, ends, net=False),
                                  plain.forecast_series(values, 0, ends))
