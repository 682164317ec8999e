"""A small pooled neural net for what the traffic forecaster's linear model leaves (pure numpy).

The linear per-segment model (``core.traffic.forecaster``) has one slope per feature and regime; the
residual net is a different family: one hidden layer of ReLU units shared by every segment, reading
a segment's recent changes, its departures from the profile (own, neighbours', 2 hops, network),
the profile's expected changes, the linear forecasts themselves, its level, the time of day (1-3
harmonics) and its neighbours' recent levels (format 5), and predicting the linear model's error at every horizon at once. The forecaster trains it on the head
of the training rows (features from the leave-one-day-out profile, as the linear fit uses) and
weighs its output per horizon on the validation slice, like its other blend terms.

Float32, plain mini-batch Adam with a fixed seed: the same rows give the same net. Several members
(seeds) can be averaged; they are kept as one wider net.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from wulian.core.kernels import traffic_forecast as kern

NET_ARRAYS = ("w1", "b1", "w2", "b2", "mu", "sd", "ysd")  # a fitted net's state, in ``to_arrays`` order


def net_inputs(xc: np.ndarray, p_now: np.ndarray, p_tgt: np.ndarray, raw: np.ndarray, slot: np.ndarray,
               n_slots: int, ptr: np.ndarray, idx: np.ndarray, w: np.ndarray, harmonics: int = 1,
               nb_lags: tuple[int, ...] = ()) -> np.ndarray:
    """Inputs [W, N, F] float32 for windows (``kern.net_inputs`` says which): xc [W, L, N] gap-filled
    values, p_now [W, N] and p_tgt [W, H, N] the profile now and at each target, raw [W, H, N] the
    linear forecasts, slot [W] the time-of-day slot of each window's last row; ``harmonics`` of the
    time of day, the neighbours' mean level ``nb_lags`` steps ago (each < L). The defaults are format
    4's inputs."""
    n_w, n_lags, n = xc.shape
    lags = np.asarray(nb_lags, np.int64).reshape(-1)
    if lags.size and (lags.min() < 1 or lags.max() >= n_lags):
        raise ValueError(f"neighbour lags must be in 1..{n_lags - 1}, got {nb_lags}")
    out = np.empty((n_w, n, n_lags - 1 + 2 * p_tgt.shape[1] + 6 + 2 * int(harmonics) + lags.size), np.float32)
    kern.net_inputs(np.ascontiguousarray(xc, np.float64), np.ascontiguousarray(p_now, np.float64),
                    np.ascontiguousarray(p_tgt, np.float64), np.ascontiguousarray(raw, np.float64),
                    np.asarray(slot, np.int64), int(n_slots), ptr, idx, w, int(harmonics), lags, out)
    return out


# Rows per matrix product while training. OpenBLAS spreads a product over its threads past a size that a
# 512-row mini-batch crosses, and on 2 shared cores waking them cost more than the work: 512 x 43 @ 43 x 64
# took 3.3 ms of CPU, 256 rows 0.013 ms (the whole fit on the development split: 34.7 s -> 13.0 s of CPU).
PRODUCT_ROWS = 256


def _rows_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b, computed PRODUCT_ROWS rows of a at a time."""
    if a.shape[0] <= PRODUCT_ROWS:
        return a @ b
    return np.concatenate([a[i:i + PRODUCT_ROWS] @ b for i in range(0, a.shape[0], PRODUCT_ROWS)])


def _inner_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a.T @ b (a [R, P], b [R, Q]), summed over PRODUCT_ROWS rows at a time."""
    out = a[:PRODUCT_ROWS].T @ b[:PRODUCT_ROWS]
    for i in range(PRODUCT_ROWS, a.shape[0], PRODUCT_ROWS):
        out += a[i:i + PRODUCT_ROWS].T @ b[i:i + PRODUCT_ROWS]
    return out


@dataclass(frozen=True, slots=True)
class NetParams:
    hidden: int = 64
    epochs: int = 4
    batch: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    members: int = 1  # nets trained with seeds seed, seed + 1, ... and averaged


def fit_net(x: np.ndarray, y: np.ndarray, prm: NetParams) -> dict[str, np.ndarray]:
    """``prm.members`` nets (``fit_one_net``, seeds seed, seed + 1, ...) averaged, stored as one net: their
    hidden units side by side, each output layer divided by the count. Same inputs, so the same
    standardisation; ``net_predict`` needs no change and one wide product costs less than several."""
    nets = [fit_one_net(x, y, replace(prm, seed=prm.seed + k)) for k in range(max(prm.members, 1))]
    if len(nets) == 1:
        return nets[0]
    k = np.float32(len(nets))
    return nets[0] | {"w1": np.concatenate([n["w1"] for n in nets], axis=1),
                      "b1": np.concatenate([n["b1"] for n in nets]),
                      "w2": np.concatenate([n["w2"] for n in nets], axis=0) / k,
                      "b2": (np.sum([n["b2"] for n in nets], axis=0) / k).astype(np.float32)}


def fit_one_net(x: np.ndarray, y: np.ndarray, prm: NetParams) -> dict[str, np.ndarray]:
    """Train on inputs x [S, F] and targets y [S, H] (a row with any NaN target is left out): standardised
    inputs, targets scaled by their spread, mean squared error, mini-batch Adam. Returns the net's arrays."""
    ok = np.isfinite(y).all(axis=1)
    x, y = x[ok], y[ok].astype(np.float32)
    mu, sd = x.mean(axis=0), x.std(axis=0) + np.float32(1e-6)
    x = (x - mu) / sd
    ysd = np.float32(y.std() + 1e-6)
    y = y / ysd
    rng = np.random.default_rng(prm.seed)
    n_in, n_out = x.shape[1], y.shape[1]
    par = {"w1": (rng.normal(0.0, 1.0, (n_in, prm.hidden)) / np.sqrt(n_in)).astype(np.float32),
           "b1": np.zeros(prm.hidden, np.float32), "w2": np.zeros((prm.hidden, n_out), np.float32),
           "b2": np.zeros(n_out, np.float32)}
    m1 = {k: np.zeros_like(v) for k, v in par.items()}
    m2 = {k: np.zeros_like(v) for k, v in par.items()}
    step = 0
    for _ in range(prm.epochs):
        order = rng.permutation(x.shape[0])
        for s in range(0, x.shape[0], prm.batch):
            b = order[s:s + prm.batch]
            xb = x[b]
            z = _rows_product(xb, par["w1"]) + par["b1"]
            a = np.maximum(z, 0.0)
            g_out = (_rows_product(a, par["w2"]) + par["b2"] - y[b]) * np.float32(2.0 / (len(b) * n_out))
            g_a = _rows_product(g_out, par["w2"].T)
            g_a[z <= 0.0] = 0.0
            grads = {"w1": _inner_product(xb, g_a), "b1": g_a.sum(axis=0), "w2": _inner_product(a, g_out),
                     "b2": g_out.sum(axis=0)}
            step += 1
            c1, c2 = 1.0 - 0.9 ** step, 1.0 - 0.999 ** step
            for k, p in par.items():
                g = grads[k] + prm.weight_decay * p if k[0] == "w" else grads[k]
                m1[k] = 0.9 * m1[k] + 0.1 * g
                m2[k] = 0.999 * m2[k] + 0.001 * g * g
                p -= (prm.lr * (m1[k] / c1) / (np.sqrt(m2[k] / c2) + 1e-8)).astype(np.float32)
    return par | {"mu": mu, "sd": sd, "ysd": np.asarray(ysd)}


def net_predict(net: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Predicted linear-model errors [..., H] for inputs x [..., F]."""
    a = np.maximum(((x - net["mu"]) / net["sd"]) @ net["w1"] + net["b1"], 0.0)
    return ((a @ net["w2"] + net["b2"]) * net["ysd"]).astype(np.float64)
