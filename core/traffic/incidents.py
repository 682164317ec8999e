"""Incident detection from forecast residuals, incident injection, and its evaluation.

An incident is an observed speed far below what was forecast ``horizon`` steps earlier, for at least
two intervals. Comparing with a forecast made some steps back matters: a one-step forecast already
contains the collapse after one interval and would never see a second.

The band is learned per segment. ``learn_bands`` replays the training rows through the fitted model and
takes, per segment, the depth that a run of ``raise_after`` residuals exceeds in only ``band_quantile``
of the training intervals: road residuals are heavy-tailed, and on Los-loop a quantile of the run
itself gives about half the false alarms of a multiple of sigma at the same detection rate. ``IncidentDetector.from_forecaster`` is the
fallback without training rows: ``band_k`` robust sigmas of the residuals stored with the model.
Either way the band is never narrower than ``min_drop``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from wulian.core.kernels import traffic_incidents as kern
from wulian.core.traffic.forecaster import NS_PER_S, SECONDS_PER_DAY, TrafficForecaster, build_graph

RAISE = kern.RAISE
CLEAR = kern.CLEAR
_NO_TS = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class IncidentParams:
    """Detector settings; speeds in the series' units (``min_drop`` 15 was chosen for mph: ~24 km/h)."""

    horizon: int = 3  # compare with the forecast made this many steps earlier (3 x 5 min = 15 min)
    band_quantile: float = 0.001  # learn_bands: share of training intervals whose run exceeds the band
    band_k: float = 6.0  # from_forecaster: band = band_k x robust sigma of the residuals at that horizon
    min_drop: float = 15.0  # never a narrower band than this
    raise_after: int = 2  # consecutive low intervals to raise
    clear_after: int = 2  # consecutive recovered intervals to clear
    step_s: int = 300


@dataclass(frozen=True, slots=True)
class IncidentEvents:
    """Raise / clear events of one batch, as arrays in input order."""

    segment: np.ndarray  # int32
    ts_ns: np.ndarray  # int64
    kind: np.ndarray  # int8: RAISE (+1) or CLEAR (-1)
    residual: np.ndarray  # float64, observed - forecast at the event

    def __len__(self) -> int:
        return int(self.segment.shape[0])


class IncidentDetector:
    """Stateful detector for segments 0..N-1; state grows when a larger segment index arrives."""

    def __init__(self, band: np.ndarray, params: IncidentParams | None = None) -> None:
        """band [N]: how far below the forecast (speed units) an observation must be to count as low."""
        self.params = params or IncidentParams()
        band = np.nan_to_num(np.asarray(band, dtype=np.float64), nan=0.0)
        self.threshold = np.maximum(band, self.params.min_drop)
        n = self.threshold.shape[0]
        self._low_run = np.zeros(n, np.int64)
        self._ok_run = np.zeros(n, np.int64)
        self._active = np.zeros(n, np.int8)
        self._last_ts = np.full(n, _NO_TS, np.int64)
        self._expected = np.zeros(n, np.float64)

    @classmethod
    def from_forecaster(cls, model: TrafficForecaster, params: IncidentParams | None = None) -> "IncidentDetector":
        """Bands of ``band_k`` robust sigmas of a fitted forecaster's residuals at the detection horizon."""
        params = params or IncidentParams(step_s=model.step_s)
        return cls(params.band_k * model.resid_sigma[params.horizon - 1], params)

    @property
    def active(self) -> np.ndarray:
        """Segments with an open incident (bool [N])."""
        return self._active.astype(bool)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Bands and per-segment state as plain arrays, so a restarted service resumes open incidents."""
        params = np.array([getattr(self.params, k) for k in IncidentParams.__slots__], dtype=np.float64)
        return {"params": params, "threshold": self.threshold, "low_run": self._low_run, "ok_run": self._ok_run,
                "active": self._active, "last_ts": self._last_ts, "expected": self._expected}

    @classmethod
    def from_arrays(cls, arrays) -> "IncidentDetector":
        kinds = {k: type(getattr(IncidentParams(), k)) for k in IncidentParams.__slots__}
        values = np.asarray(arrays["params"], dtype=np.float64)
        params = IncidentParams(**{k: kinds[k](v) for k, v in zip(IncidentParams.__slots__, values)})
        det = cls(np.zeros(0), params)
        det.threshold = np.array(arrays["threshold"], dtype=np.float64)
        det._low_run = np.array(arrays["low_run"], dtype=np.int64)
        det._ok_run = np.array(arrays["ok_run"], dtype=np.int64)
        det._active = np.array(arrays["active"], dtype=np.int8)
        det._last_ts = np.array(arrays["last_ts"], dtype=np.int64)
        det._expected = np.array(arrays["expected"], dtype=np.float64)
        return det

    def _grow(self, n: int) -> None:
        extra = n - self.threshold.shape[0]
        if extra <= 0:
            return
        self.threshold = np.concatenate([self.threshold, np.full(extra, self.params.min_drop)])
        self._low_run = np.concatenate([self._low_run, np.zeros(extra, np.int64)])
        self._ok_run = np.concatenate([self._ok_run, np.zeros(extra, np.int64)])
        self._active = np.concatenate([self._active, np.zeros(extra, np.int8)])
        self._last_ts = np.concatenate([self._last_ts, np.full(extra, _NO_TS, np.int64)])
        self._expected = np.concatenate([self._expected, np.zeros(extra)])

    def update_many(self, segment_idx, ts_ns, observed, forecast) -> IncidentEvents:
        """Feed observations with the forecast made ``horizon`` steps before each; return the events."""
        seg = np.ascontiguousarray(segment_idx, dtype=np.int32)
        ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
        obs = np.ascontiguousarray(observed, dtype=np.float64)
        fc = np.ascontiguousarray(forecast, dtype=np.float64)
        if not (seg.shape == ts.shape == obs.shape == fc.shape):
            raise ValueError("segment_idx, ts_ns, observed and forecast must have the same length")
        if seg.size and seg.min() < 0:
            raise ValueError("negative segment index")
        if seg.size:
            self._grow(int(seg.max()) + 1)
        m = seg.shape[0]
        out_seg = np.empty(m, np.int32)
        out_ts = np.empty(m, np.int64)
        out_kind = np.empty(m, np.int8)
        out_resid = np.empty(m, np.float64)
        p = self.params
        n = kern.incident_update(seg, ts, obs, fc, self.threshold, self._low_run, self._ok_run, self._active,
                                 self._last_ts, self._expected, int(p.step_s) * NS_PER_S, int(p.raise_after), int(p.clear_after),
                                 out_seg, out_ts, out_kind, out_resid)
        return IncidentEvents(out_seg[:n].copy(), out_ts[:n].copy(), out_kind[:n].copy(), out_resid[:n].copy())


def horizon_forecasts(model: TrafficForecaster, values: np.ndarray, t0_ns: int, horizon: int,
                      first_row: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, forecasts [len(rows), N]): for each row from ``first_row`` on (and after a full input window
    plus the horizon), the forecast of that row made ``horizon`` steps before it."""
    t_len = values.shape[0]
    ends = np.arange(max(model.params.n_lags - 1, first_row - horizon), t_len - horizon, dtype=np.int64)
    return ends + horizon, model.forecast_series(values, t0_ns, ends)[:, horizon - 1]


def learn_bands(model: TrafficForecaster, values: np.ndarray, t0_ns: int,
                params: IncidentParams | None = None) -> np.ndarray:
    """Per-segment bands [N] from training rows values [T, N] (row k at t0_ns + k step): the depth below
    the forecast that ``raise_after`` consecutive residuals all exceed in ``band_quantile`` of intervals.
    A segment with too few runs falls back to ``band_k`` robust sigmas."""
    params = params or IncidentParams(step_s=model.step_s)
    rows, fc = horizon_forecasts(model, values, t0_ns, params.horizon)
    resid = values[rows] - fc
    run = resid.copy()  # the least negative residual of each run of raise_after intervals
    for k in range(1, params.raise_after):
        run[:-k] = np.fmax(run[:-k], resid[k:])
    run = run[: run.shape[0] - params.raise_after + 1]
    fallback = params.band_k * model.resid_sigma[params.horizon - 1]
    if run.shape[0] * params.band_quantile < 0.5:
        return fallback
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a segment without data: fallback below
        band = -np.nanquantile(run, params.band_quantile, axis=0)
    return np.where(np.isfinite(band), band, fallback)


def inject_incident(values: np.ndarray, adjacency: np.ndarray, segment: int, start: int, duration: int,
                    severity: float = 0.35, hops: int = 2, fanout: int = 2, spread_steps: int = 2,
                    hop_relief: float = 0.5, recovery: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Copy of values [T, N] with an incident: a sudden collapse on ``segment`` that spreads upstream.

    From row ``start`` the segment runs at ``severity`` x its speed for ``duration`` rows and recovers
    over ``recovery`` rows. The queue reaches the ``fanout`` most strongly linked neighbours of each
    reached segment ``spread_steps`` rows per hop later, up to ``hops`` hops, each hop less severe (its
    lost fraction multiplied by ``hop_relief``). The adjacency is symmetric, so the strongest links stand
    in for upstream. Returns (values, affected bool [T, N]).
    """
    out = np.array(values, dtype=np.float64)
    affected = np.zeros(out.shape, dtype=np.bool_)
    graph = build_graph(adjacency, fanout)
    stop = start + duration
    reached = {int(segment)}
    frontier = [int(segment)]
    kern.collapse(out, affected, int(segment), start, stop, severity, recovery)
    for hop in range(1, hops + 1):
        factor = 1.0 - (1.0 - severity) * hop_relief**hop
        nxt = []
        for s in frontier:
            lo, hi = graph.ptr[s], graph.ptr[s + 1]
            for j in graph.top_k[s][: hi - lo]:
                j = int(j)
                if j not in reached:
                    reached.add(j)
                    nxt.append(j)
                    kern.collapse(out, affected, j, start + hop * spread_steps, stop, factor, recovery)
        frontier = nxt
    return out, affected


@dataclass(frozen=True, slots=True)
class IncidentReport:
    """Detection on injected incidents over a test period."""

    injected: int
    detected: int
    detection_rate: float
    false_alarms: int  # raises on the same period without injections
    false_alarms_per_day: float
    mean_time_to_detect_min: float  # from the collapse to the raise, detected incidents only
    horizon_steps: int
    injected_free_flow: int  # incidents that struck free-flowing traffic (>= 80 % of the profile's peak)
    detected_free_flow: int

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__slots__}


def replay(model: TrafficForecaster, band: np.ndarray, values: np.ndarray, t0_ns: int, params: IncidentParams,
           first_row: int = 0) -> tuple[IncidentEvents, np.ndarray]:
    """Detector events over the rows of values [T, N] from first_row on, as the service would see them:
    each row against the forecast made ``horizon`` steps before it. Returns (events, rows replayed)."""
    rows, fc = horizon_forecasts(model, values, t0_ns, params.horizon, first_row)
    n = values.shape[1]
    seg = np.tile(np.arange(n, dtype=np.int32), len(rows))
    ts = np.repeat(t0_ns + rows * (model.step_s * NS_PER_S), n)
    det = IncidentDetector(band, params)
    return det.update_many(seg, ts, values[rows].ravel(), fc.ravel()), rows


def evaluate_incidents(model: TrafficForecaster, band: np.ndarray, values: np.ndarray, adjacency: np.ndarray,
                       t0_ns: int, params: IncidentParams | None = None, n_incidents: int = 20,
                       duration: int = 12, severity: float = 0.35, seed: int = 0) -> IncidentReport:
    """Inject incidents one at a time into values [T, N] (the test period) and score the detector.

    False alarms are the raises on the clean period. An injected incident is detected when a raise
    occurs on a segment it affects between its start and its end (and not in the clean replay at the
    same segment and time); time to detect runs from the collapse. Incidents start at random rows and
    segments (with neighbours) drawn from ``seed``. Those striking already slow traffic are the hard
    ones, so the free-flowing subset is reported apart.
    """
    params = params or IncidentParams(step_s=model.step_s)
    t_len = values.shape[0]
    lead = model.params.n_lags + params.horizon  # first row with a forecast made from a full window
    step_ns = model.step_s * NS_PER_S
    clean, rows = replay(model, band, values, t0_ns, params, lead)
    clean_raises = clean.kind == RAISE
    raises = int(clean_raises.sum())
    clean_keys = set(zip(clean.segment[clean_raises].tolist(), clean.ts_ns[clean_raises].tolist()))
    free_flow = model.profile.max(axis=(0, 1))
    days = len(rows) * model.step_s / SECONDS_PER_DAY
    rng = np.random.default_rng(seed)
    has_nb = np.flatnonzero((np.asarray(adjacency) > 0).sum(axis=1) > 1)
    detected, delays, injected_ff, detected_ff = 0, [], 0, 0
    for _ in range(n_incidents):
        seg = int(rng.choice(has_nb))
        start = int(rng.integers(lead + 1, t_len - duration - 1))
        is_ff = bool(values[start - 1, seg] >= 0.8 * free_flow[seg])
        injected_ff += is_ff
        injected, affected = inject_incident(values, adjacency, seg, start, duration, severity=severity)
        events, _ = replay(model, band, injected, t0_ns, params, lead)
        row = (events.ts_ns - t0_ns) // step_ns
        hit = (events.kind == RAISE) & (row >= start) & (row < start + duration)
        hit &= affected[np.clip(row, 0, t_len - 1), events.segment]
        hit &= np.array([(s, t) not in clean_keys for s, t in zip(events.segment.tolist(), events.ts_ns.tolist())],
                        dtype=bool)
        if hit.any():
            detected += 1
            detected_ff += is_ff
            delays.append(float(row[hit].min() - start) * model.step_s / 60.0)
    return IncidentReport(
        injected=n_incidents, detected=detected, detection_rate=detected / n_incidents if n_incidents else 0.0,
        false_alarms=raises, false_alarms_per_day=raises / days if days else 0.0,
        mean_time_to_detect_min=float(np.mean(delays)) if delays else float("nan"), horizon_steps=params.horizon,
        injected_free_flow=injected_ff, detected_free_flow=detected_ff,
    )
