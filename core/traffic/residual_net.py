"""A small pooled neural net for what the traffic forecaster's linear model leaves.

The linear per-segment model (``core.traffic.forecaster``) has one slope per feature and regime; the
residual net is a different family: one hidden layer of ReLU units shared by every segment, reading
a segment's recent changes, its departures from the profile (own, neighbours', 2 hops, network),
the profile's expected changes, the linear forecasts themselves, its level, the time of day (1-3
harmonics) and its neighbours' recent levels (format 5), and predicting the linear model's error at
every horizon at once. The forecaster trains it on every training row (features from the
leave-one-day-out profile, as the linear fit uses) and weighs its output per horizon on the validation
slice, like its other blend terms.

Float32, plain mini-batch Adam with a fixed seed and a learning rate falling linearly over the passes:
the same rows give the same net. The training loop is a numba kernel (``core.kernels.residual_net``);
the initial weights and each epoch's order of the rows are drawn here with numpy. Several members
(seeds) are trained side by side and averaged; they are kept as one wider net.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wulian.core.kernels import traffic_forecast as kern
from wulian.core.kernels import residual_net as kern_net

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
    p_rows = np.concatenate([np.reshape(p_now, (n_w, 1, n)), p_tgt], axis=1).reshape(-1, n)
    return net_inputs_rows(np.reshape(xc, (-1, n)), np.arange(1, n_w + 1) * n_lags - 1, n_lags, p_rows,
                           np.arange(n_w) * (p_tgt.shape[1] + 1), raw, slot, n_slots, ptr, idx, w, harmonics, nb_lags)


def net_inputs_rows(filled: np.ndarray, x_ends: np.ndarray, n_lags: int, prof_rows: np.ndarray, p_ends: np.ndarray,
                    raw: np.ndarray, slot: np.ndarray, n_slots: int, ptr: np.ndarray, idx: np.ndarray, w: np.ndarray,
                    harmonics: int = 1, nb_lags: tuple[int, ...] = ()) -> np.ndarray:
    """``net_inputs`` for windows of rows: window t's values are the rows x_ends[t] - n_lags + 1 ..
    x_ends[t] of filled [., N], its profile now and at each target the rows p_ends[t] .. p_ends[t] + H of
    prof_rows [., N] (no copy of the rows per window)."""
    lags = np.asarray(nb_lags, np.int64).reshape(-1)
    if lags.size and (lags.min() < 1 or lags.max() >= n_lags):
        raise ValueError(f"neighbour lags must be in 1..{n_lags - 1}, got {nb_lags}")
    n_w, n_h, n = raw.shape
    x_ends, p_ends = np.asarray(x_ends, np.int64), np.asarray(p_ends, np.int64)
    if n_w and (x_ends.min() < n_lags - 1 or x_ends.max() >= len(filled) or p_ends.min() < 0
                or p_ends.max() + n_h >= len(prof_rows)):
        raise ValueError("windows out of the rows")
    out = np.empty((n_w, n, n_lags - 1 + 2 * n_h + 6 + 2 * int(harmonics) + lags.size), np.float32)
    kern.net_inputs(np.ascontiguousarray(filled, np.float64), x_ends, int(n_lags),
                    np.ascontiguousarray(prof_rows, np.float64), p_ends,
                    np.ascontiguousarray(raw, np.float64), np.asarray(slot, np.int64), int(n_slots), ptr, idx, w,
                    int(harmonics), lags, out)
    return out


@dataclass(frozen=True, slots=True)
class NetParams:
    hidden: int = 64
    epochs: int = 4
    batch: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    lr_end: float = 1.0  # the learning rate at the end, as a share of lr (linear decay)
    members: int = 1  # nets trained with seeds seed, seed + 1, ... and averaged


def fit_net(x: np.ndarray, y: np.ndarray, prm: NetParams) -> dict[str, np.ndarray]:
    """Train on inputs x [S, F] and targets y [S, H] (a row with any NaN target is left out): standardised
    inputs, targets scaled by their spread, mean squared error, mini-batch Adam (``kern_net.train_net``).
    ``prm.members`` nets are trained side by side (initial weights from seeds seed, seed + 1, ...; the rows
    in the same order, drawn from ``seed``) and averaged into one net: their hidden units side by side,
    each output layer divided by the count. Same inputs, so the same standardisation; ``net_predict``
    needs no change and one wide product costs less than several. Returns the arrays."""
    ok = np.isfinite(y).all(axis=1)
    xs, mu, sd = kern_net.standardise(np.ascontiguousarray(x, np.float32), ok)
    y = y[ok].astype(np.float32)
    ysd = np.float32(y.std() + 1e-6)
    y = np.ascontiguousarray(y / ysd)
    n_m, n_in, n_out = max(prm.members, 1), xs.shape[1], y.shape[1]
    rngs = [np.random.default_rng(prm.seed + k) for k in range(n_m)]
    w1 = np.concatenate([rng.normal(0.0, 1.0, (n_in, prm.hidden)) / np.sqrt(n_in) for rng in rngs], axis=1)
    w1 = np.ascontiguousarray(w1, np.float32)
    orders = np.empty((prm.epochs, xs.shape[0]), np.int64)
    for e in range(prm.epochs):
        orders[e] = rngs[0].permutation(xs.shape[0])
    b1 = np.zeros(n_m * prm.hidden, np.float32)
    w2t, b2 = np.zeros((n_m, n_out, prm.hidden), np.float32), np.zeros((n_m, n_out), np.float32)
    lrs = prm.lr * np.linspace(1.0, prm.lr_end, prm.epochs + 1)
    kern_net.train_net(xs, y, orders, int(prm.batch), lrs, float(prm.weight_decay), w1, b1, w2t, b2)
    k = np.float32(n_m)
    return {"w1": w1, "b1": b1, "w2": np.ascontiguousarray(w2t.transpose(0, 2, 1).reshape(-1, n_out)) / k,
            "b2": (b2.sum(axis=0) / k).astype(np.float32), "mu": mu, "sd": sd, "ysd": np.asarray(ysd)}


def net_predict(net: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Predicted linear-model errors [..., H] for inputs x [..., F]."""
    flat = np.ascontiguousarray(x, np.float32).reshape(-1, x.shape[-1])
    out = np.empty((flat.shape[0], net["b2"].shape[0]))
    kern_net.predict_net(flat, net["mu"].astype(np.float32), net["sd"].astype(np.float32),
                         np.ascontiguousarray(net["w1"], np.float32), net["b1"].astype(np.float32),
                         np.ascontiguousarray(net["w2"].T, np.float32), net["b2"].astype(np.float32),
                         np.float32(net["ysd"]), out)
    return out.reshape(x.shape[:-1] + (-1,))
