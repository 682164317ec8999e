"""Numba kernels of the traffic forecaster's residual net (``core.traffic.residual_net``): its training
(``train_net``, after ``standardise``) and its forward pass (``predict_net``).

One hidden layer of ReLU units, mean squared error, mini-batch Adam with weight decay on the weights
only. The whole loop (epochs, batches, forward, backward, update) runs here in float32 over plain loops:
in numpy each mini-batch was a dozen small array operations whose per-call overhead (and OpenBLAS
waking its threads for a 512-row product) was most of the time. The random parts (the initial weights,
each epoch's row order) come in from the caller, so the result is deterministic.
"""
from __future__ import annotations

import numpy as np
from numba import njit

ADAM_B1 = 0.9
ADAM_B2 = 0.999
ADAM_EPS = 1e-8
CHUNK = 256  # rows per pass of ``predict_net``


@njit(cache=True, nogil=True, fastmath=True)
def train_net(x, y, orders, batch, lrs, weight_decay, w1, b1, w2t, b2):
    """Train in place M nets side by side on standardised inputs x [S, F] and scaled targets y [S, H]
    (float32), visiting rows in orders [E, S] (one permutation per epoch) ``batch`` at a time: w1 [F, M*U]
    and b1 [M*U] (member m's hidden units are columns m*U..(m+1)*U), w2t [M, H, U] (the output layers,
    transposed), b2 [M, H]. Each member's loss: mean over the batch and H of its squared error. The
    members share nothing but the rows, so this is M separate trainings in one pass over the data: the
    rows gathered once and one wide first-layer product (3 members of 64 units: 0.47 against 0.53 us per
    row, pass and member, Intel Xeon). The learning rate goes linearly from lrs[e] to lrs[e + 1] over
    epoch e (lrs [E + 1])."""
    n_s, n_in = x.shape
    n_m, n_out, n_u = w2t.shape
    n_hid = n_m * n_u
    f32 = np.float32
    weight_decay = f32(weight_decay)
    # Adam moments, one pair per parameter array
    m_w1, v_w1 = np.zeros_like(w1), np.zeros_like(w1)
    m_b1, v_b1 = np.zeros_like(b1), np.zeros_like(b1)
    m_w2, v_w2 = np.zeros_like(w2t), np.zeros_like(w2t)
    m_b2, v_b2 = np.zeros_like(b2), np.zeros_like(b2)
    # the batch's gradients
    g_w1, g_b1 = np.empty_like(w1), np.empty_like(b1)
    g_w2, g_b2 = np.empty_like(w2t), np.empty_like(b2)
    xb = np.empty((batch, n_in), np.float32)  # the batch's rows, gathered
    hid = np.empty((batch, n_hid), np.float32)  # hidden units' pre-activations, then their gradients
    act = np.empty((n_m, batch, n_u), np.float32)  # their outputs (ReLU), member by member
    g_hid = np.empty((n_m, batch, n_u), np.float32)  # the hidden outputs' gradients, member by member
    g_o = np.empty((n_m, batch, n_out), np.float32)  # the outputs' gradients
    sink = np.zeros(1, np.float32)  # where the prefetching reads go
    step = 0
    for e in range(orders.shape[0]):
        for s0 in range(0, n_s, batch):
            n_b = min(s0 + batch, n_s) - s0
            scale = f32(2.0 / (n_b * n_out))
            lr = f32(lrs[e] + (lrs[e + 1] - lrs[e]) * s0 / n_s)  # linear within the epoch
            # read a word of every cache line of the batch's rows first, so their misses overlap (the rows are
            # scattered over tens of MB): 0.88 -> 0.62 us per row on 300k rows, the copy below then hits
            touch = f32(0.0)
            for i in range(n_b):
                r = orders[e, s0 + i]
                for f in range(0, n_in, 16):
                    touch += x[r, f]
                touch += x[r, n_in - 1] + y[r, 0] + y[r, n_out - 1]
            sink[0] += touch  # kept, so the reads are too
            for i in range(n_b):
                xb[i] = x[orders[e, s0 + i]]
                hid[i] = b1
            _add_product(xb, w1, hid, n_b)
            g_b2[:] = 0.0
            for m in range(n_m):
                lo = m * n_u
                act_m, g_om, w2m, b2m, g_b2m = act[m], g_o[m], w2t[m], b2[m], g_b2[m]
                for i in range(n_b):
                    h_i, a_i, y_i = hid[i], act_m[i], y[orders[e, s0 + i]]
                    for u in range(n_u):
                        a_i[u] = max(h_i[lo + u], f32(0.0))
                    for h in range(n_out):
                        w2h = w2m[h]
                        acc = b2m[h] - y_i[h]
                        for u in range(n_u):
                            acc += a_i[u] * w2h[u]
                        g_om[i, h] = acc * scale
                        g_b2m[h] += g_om[i, h]
                    g_hid[m, i] = 0.0
                _add_product(g_om, w2m, g_hid[m], n_b)  # back through the output layer
            g_b1[:] = 0.0
            for i in range(n_b):
                h_i = hid[i]
                for m in range(n_m):
                    lo = m * n_u
                    a_i, gh_i = act[m, i], g_hid[m, i]
                    for u in range(n_u):
                        v = gh_i[u] if a_i[u] > 0.0 else f32(0.0)  # back through the ReLU
                        h_i[lo + u] = v
                        g_b1[lo + u] += v
            g_w1[:] = 0.0
            g_w2[:] = 0.0
            _add_inner_product(xb, hid, g_w1, n_b)
            for m in range(n_m):
                _add_inner_product(g_o[m], act[m], g_w2[m], n_b)
            step += 1
            c1 = f32(1.0 - ADAM_B1 ** step)
            c2 = f32(1.0 - ADAM_B2 ** step)
            _adam(w1.ravel(), g_w1.ravel(), m_w1.ravel(), v_w1.ravel(), lr, weight_decay, c1, c2)
            _adam(b1, g_b1, m_b1, v_b1, lr, f32(0.0), c1, c2)
            _adam(w2t.ravel(), g_w2.ravel(), m_w2.ravel(), v_w2.ravel(), lr, weight_decay, c1, c2)
            _adam(b2.ravel(), g_b2.ravel(), m_b2.ravel(), v_b2.ravel(), lr, f32(0.0), c1, c2)


@njit(cache=True, nogil=True, fastmath=True)
def predict_net(x, mu, sd, w1, b1, w2t, b2, ysd, out):
    """out [R, H] (float64) = the net's output for inputs x [R, F] (float32; mu, sd: their standardisation,
    ysd: the targets' scale), CHUNK rows at a time: no [R, U] temporaries and no BLAS threads, which for
    a single forecast (207 rows) cost more than the products."""
    n_r, n_in = x.shape
    n_out, n_hid = w2t.shape
    xb = np.empty((CHUNK, n_in), np.float32)
    hid = np.empty((CHUNK, n_hid), np.float32)
    for r0 in range(0, n_r, CHUNK):
        n_b = min(r0 + CHUNK, n_r) - r0
        for i in range(n_b):
            for f in range(n_in):
                xb[i, f] = (x[r0 + i, f] - mu[f]) / sd[f]
            hid[i] = b1
        _add_product(xb, w1, hid, n_b)
        for i in range(n_b):
            h_i = hid[i]
            for h in range(n_out):
                w2h = w2t[h]
                acc = b2[h]
                for u in range(n_hid):
                    acc += max(h_i[u], np.float32(0.0)) * w2h[u]
                out[r0 + i, h] = acc * ysd


# The two products below take 8 terms per pass over an output row: the row is read and written an eighth as
# often as term by term, which was what bounded the speed (21 -> 44 GFLOP/s on the development machine).
@njit(cache=True, nogil=True, fastmath=True)
def _add_product(a, w, out, n):
    """out[:n] += a[:n] @ w (a [B, K], w [K, U], out [B, U])."""
    n_k, n_u = w.shape
    k8 = n_k - n_k % 8
    for b in range(n):
        a_b, o_b = a[b], out[b]
        for k in range(0, k8, 8):
            a0, a1, a2, a3 = a_b[k], a_b[k + 1], a_b[k + 2], a_b[k + 3]
            a4, a5, a6, a7 = a_b[k + 4], a_b[k + 5], a_b[k + 6], a_b[k + 7]
            w0, w1, w2, w3, w4, w5, w6, w7 = w[k], w[k + 1], w[k + 2], w[k + 3], w[k + 4], w[k + 5], w[k + 6], w[k + 7]
            for u in range(n_u):
                o_b[u] += (a0 * w0[u] + a1 * w1[u] + a2 * w2[u] + a3 * w3[u]) \
                    + (a4 * w4[u] + a5 * w5[u] + a6 * w6[u] + a7 * w7[u])
        for k in range(k8, n_k):
            a_k, w_k = a_b[k], w[k]
            for u in range(n_u):
                o_b[u] += a_k * w_k[u]


@njit(cache=True, nogil=True, fastmath=True)
def _add_inner_product(a, g, out, n):
    """out += a[:n].T @ g[:n] (a [B, K], g [B, U], out [K, U])."""
    n_k, n_u = out.shape
    n8 = n - n % 8
    for b in range(0, n8, 8):
        g0, g1, g2, g3, g4, g5, g6, g7 = g[b], g[b + 1], g[b + 2], g[b + 3], g[b + 4], g[b + 5], g[b + 6], g[b + 7]
        for k in range(n_k):
            a0, a1, a2, a3 = a[b, k], a[b + 1, k], a[b + 2, k], a[b + 3, k]
            a4, a5, a6, a7 = a[b + 4, k], a[b + 5, k], a[b + 6, k], a[b + 7, k]
            o_k = out[k]
            for u in range(n_u):
                o_k[u] += (a0 * g0[u] + a1 * g1[u] + a2 * g2[u] + a3 * g3[u]) \
                    + (a4 * g4[u] + a5 * g5[u] + a6 * g6[u] + a7 * g7[u])
    for b in range(n8, n):
        g_b = g[b]
        for k in range(n_k):
            a_bk, o_k = a[b, k], out[k]
            for u in range(n_u):
                o_k[u] += a_bk * g_b[u]


@njit(cache=True, nogil=True)
def standardise(x, keep):
    """The rows of x [S, F] where ``keep``, each column less its mean over them and divided by its spread
    (+1e-6): float32 [K, F], and the mean and spread float32 [F] (sums in float64)."""
    n_in = x.shape[1]
    rows = np.flatnonzero(keep)
    mu = np.zeros(n_in)
    for r in rows:
        for f in range(n_in):
            mu[f] += x[r, f]
    mu /= max(rows.size, 1)
    var = np.zeros(n_in)
    for r in rows:
        for f in range(n_in):
            d = x[r, f] - mu[f]
            var[f] += d * d
    sd = np.sqrt(var / max(rows.size, 1)) + 1e-6
    out = np.empty((rows.size, n_in), np.float32)
    for i in range(rows.size):
        for f in range(n_in):
            out[i, f] = (x[rows[i], f] - mu[f]) / sd[f]
    return out, mu.astype(np.float32), sd.astype(np.float32)


@njit(cache=True, nogil=True, fastmath=True)
def _adam(p, g, m, v, lr, weight_decay, c1, c2):
    """One Adam step on flat float32 arrays (``c1``, ``c2``: the bias corrections 1 - beta ** step)."""
    f32 = np.float32
    b1c, b2c = f32(ADAM_B1), f32(ADAM_B2)
    for i in range(p.size):
        gi = g[i] + weight_decay * p[i]
        m[i] = b1c * m[i] + (f32(1.0) - b1c) * gi
        v[i] = b2c * v[i] + (f32(1.0) - b2c) * gi * gi
        p[i] -= lr * (m[i] / c1) / (np.sqrt(v[i] / c2) + f32(ADAM_EPS))
