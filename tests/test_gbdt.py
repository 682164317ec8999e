"""Histogram GBDT kernel: learns a conjunction a linear score cannot, honours sample weights, raw-feature
prediction reproduces the binned training decisions, deterministic, NaN goes left."""
from __future__ import annotations

import numpy as np
import pytest

from wulian.core.kernels import gbdt as G


def conjunction(n, seed):
    """y = (x0 > 0) & (x1 > 0) with 3 % label flips and 3 noise features; also returns the clean label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    clean = ((X[:, 0] > 0) & (X[:, 1] > 0)).astype(np.float64)
    y = np.where(rng.random(n) < 0.03, 1.0 - clean, clean)
    return X, y, clean


def logistic_accuracy(X, y, Xt, yt):
    """Newton-fitted logistic regression (the linear baseline)."""
    A = np.c_[np.ones(len(X)), X]
    beta = np.zeros(A.shape[1])
    for _ in range(25):
        p = 1 / (1 + np.exp(-A @ beta))
        beta += np.linalg.solve(A.T @ (A * (p * (1 - p))[:, None]) + 1e-6 * np.eye(A.shape[1]), A.T @ (y - p))
    return float(((np.c_[np.ones(len(Xt)), Xt] @ beta > 0) == yt).mean())


@pytest.fixture(scope="module")
def model():
    X, y, _ = conjunction(20_000, 0)
    edges = G.bin_edges(X, 64)
    Xb = G.binned(X, edges)
    return X, y, edges, Xb, G.fit(Xb, y, np.ones(len(y)), n_trees=60, max_leaves=8)


def test_learns_conjunction_a_linear_score_cannot(model):
    X, y, edges, _, m = model
    f, tb, l, r, v, base = m
    Xt, _, clean = conjunction(10_000, 1)
    s = G.predict(Xt, f, G.thresholds_to_values(tb, f, edges), l, r, v, base)
    acc = ((s > 0) == clean).mean()
    lin = logistic_accuracy(X, y, Xt, clean)
    assert acc > 0.95
    assert lin < 0.9 and acc > lin + 0.05


def test_shapes_and_leaf_count(model):
    *_, m = model
    f, tb, l, r, v, _ = m
    assert f.shape == tb.shape == l.shape == r.shape == v.shape == (60, 15)
    assert f.dtype == tb.dtype == l.dtype == r.dtype == np.int32 and v.dtype == np.float64
    n_split = (f >= 0).sum(axis=1)
    assert (n_split >= 1).all() and (n_split <= 7).all()


def test_sample_weights_shift_predictions(model):
    X, y, _, Xb, m = model
    w = np.where(y == 1, 5.0, 1.0)
    m2 = G.fit(Xb, y, w, n_trees=60, max_leaves=8)
    p1 = G.sigmoid(G.predict_binned(Xb, m[0], m[1], m[2], m[3], m[4], m[5]))
    p2 = G.sigmoid(G.predict_binned(Xb, m2[0], m2[1], m2[2], m2[3], m2[4], m2[5]))
    assert m2[5] > m[5]
    assert p2.mean() > p1.mean() + 0.05


def test_raw_prediction_equals_binned_decisions():
    X, y, _ = conjunction(5_000, 2)
    rng = np.random.default_rng(3)
    X[rng.random(X.shape) < 0.1] = np.nan
    X[:, 4] = np.round(X[:, 4])  # a low-cardinality feature: fewer, padded edges
    edges = G.bin_edges(X, 32)
    assert np.isinf(edges[4]).any()
    Xb = G.binned(X, edges)
    f, tb, l, r, v, base = G.fit(Xb, y, np.ones(len(y)), n_trees=30)
    raw = G.predict(X, f, G.thresholds_to_values(tb, f, edges), l, r, v, base)
    assert np.array_equal(raw, G.predict_binned(Xb, f, tb, l, r, v, base))


def test_deterministic(model):
    _, y, _, Xb, m = model
    m2 = G.fit(Xb, y, np.ones(len(y)), n_trees=60, max_leaves=8)
    for a, b in zip(m, m2):
        assert np.array_equal(a, b)


def test_nan_goes_left_as_minus_infinity():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4_000, 2))
    X[:500, 0] = np.nan
    y = (np.isnan(X[:, 0]) | (X[:, 0] < -1)).astype(np.float64)  # NaN behaves as very low: learnable
    edges = G.bin_edges(X, 16)
    Xb = G.binned(X, edges)
    assert (Xb[:500, 0] == 0).all()
    f, tb, l, r, v, base = G.fit(Xb, y, np.ones(len(y)), n_trees=30)
    tv = G.thresholds_to_values(tb, f, edges)
    s = G.predict(X, f, tv, l, r, v, base)
    assert ((s > 0) == y).mean() > 0.98
    x = np.array([np.nan, 0.3])
    assert G.predict_one(x, f, tv, l, r, v, base) == G.predict_one(np.array([-np.inf, 0.3]), f, tv, l, r, v, base)


def test_bin_edges_and_binning():
    X = np.array([[0.0], [1.0], [1.0], [2.0], [np.nan], [np.inf]])
    edges = G.bin_edges(X, 8)
    assert edges.shape == (1, 7)
    finite = edges[0][np.isfinite(edges[0])]
    assert (np.diff(finite) > 0).all() and np.isinf(edges[0][finite.size:]).all()
    b = G.binned(X, edges)
    assert b.dtype == np.uint8 and b[4, 0] == 0
    assert (np.diff(b[[0, 1, 3, 5], 0].astype(int)) >= 0).all()
    with pytest.raises(ValueError):
        G.bin_edges(X, 300)
