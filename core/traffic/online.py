"""The online traffic service's pure parts: its parameters in km/h, the 5-minute grid, the road graph as
a matrix, and carrying incident-detector state across a refit.

The forecaster and detector defaults were tuned on Los-loop in mph; live detectors report km/h, so the
speed thresholds here are the mph ones converted (5 mph regime drop ~ 8 km/h; the detector's settings
through ``IncidentParams.in_units``, its incident floor ``min_drop_kmh``).
Nothing here touches the database or the clock: ``ingest.jobs.traffic`` feeds it rows and times.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np

from wulian.core.timebase import CHINA_OFFSET_S, NS_PER_S
from wulian.core.traffic.forecaster import TrafficForecaster, TrafficForecastParams
from wulian.core.traffic.incidents import IncidentDetector, IncidentParams, learn_detector

MPH_TO_KMH = 1.609344
# Flow has no congested regime of its own in the model: one coefficient set (a drop no series reaches).
_ONE_REGIME = 1e12


@dataclass(frozen=True, slots=True)
class OnlineParams:
    """How the service forecasts, refits and detects. Speeds in km/h."""

    step_s: int = 300  # grid step (5-minute bins)
    horizons: int = 12  # forecast 1..12 steps (5..60 min)
    history_days: float = 7.0  # training window of a refit
    min_fit_bins: int = 288  # no model before a day of history (the model needs a day profile)
    min_segment_bins: int = 24  # a segment with fewer observed bins in the window is left out of a fit
    refit_every_s: int = 86_400  # data time between refits
    new_segment_refit_s: int = 3_600  # earliest refit after an unknown segment starts reporting
    backfill_bins: int = 36  # bins forecast on a region's first run (3 h: the detector needs a past)
    max_bins_per_run: int = 288  # catch-up bound after an outage: only the newest day is forecast
    lag_s: int = 60  # a bin is complete this long after its end (late messages first)
    utc_offset_s: int = CHINA_OFFSET_S  # local time of the roads for the time-of-day profile (China)
    regime_drop_kmh: float = 8.0
    min_drop_kmh: float = 24.0
    incident_horizon: int = 3  # residual against the forecast issued this many steps earlier
    net_hidden: int | None = None  # the speed forecaster's residual net (None: TrafficForecastParams' default; 0 = off)

    @property
    def step_ns(self) -> int:
        return self.step_s * NS_PER_S

    def forecaster_params(self) -> TrafficForecastParams:
        net = {} if self.net_hidden is None else {"net_hidden": self.net_hidden}
        return TrafficForecastParams(horizons=self.horizons, regime_drop=self.regime_drop_kmh,
                                     utc_offset_s=self.utc_offset_s, **net)

    def flow_params(self) -> TrafficForecastParams:
        """Flow without the residual net: it was chosen and measured on speeds only."""
        return TrafficForecastParams(horizons=self.horizons, regime_drop=_ONE_REGIME, utc_offset_s=self.utc_offset_s,
                                     net_hidden=0)

    def incident_params(self) -> IncidentParams:
        """The Los-loop (mph) detector settings in km/h, with the configured incident floor."""
        return replace(IncidentParams(horizon=self.incident_horizon, step_s=self.step_s,
                                      utc_offset_s=self.utc_offset_s).in_units(MPH_TO_KMH),
                       min_drop=self.min_drop_kmh)


def last_complete_bin(now_ns: int, step_s: int, lag_s: int) -> int:
    """Start (ns) of the newest bin [t, t + step) that ended at least ``lag_s`` before ``now_ns``."""
    step_ns = step_s * NS_PER_S
    return (now_ns - lag_s * NS_PER_S) // step_ns * step_ns - step_ns


def dense_grid(bin_ns: np.ndarray, column: np.ndarray, values: np.ndarray, t0_ns: int, n_bins: int,
               n_cols: int, step_s: int) -> np.ndarray:
    """[n_bins, n_cols] float64 grid (NaN = no data) from per-bin rows: row (bin_ns - t0) / step, column
    ``column``. Rows outside the grid, negative columns and NULL values (NaN) are dropped."""
    out = np.full((n_bins, n_cols), np.nan)
    row = (np.asarray(bin_ns, np.int64) - int(t0_ns)) // (step_s * NS_PER_S)
    col = np.asarray(column, np.int64)
    val = np.asarray(values, np.float64)
    keep = (row >= 0) & (row < n_bins) & (col >= 0) & (col < n_cols) & np.isfinite(val)
    out[row[keep], col[keep]] = val[keep]
    return out


def adjacency_matrix(segments: np.ndarray, a: np.ndarray, b: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """[N, N] weights for segments (device ids in model order) from directed links a -> b (row a lists b
    as a neighbour); links to segments outside the list are ignored, the diagonal is 1."""
    segments = np.asarray(segments, np.int64)
    pos = {int(s): k for k, s in enumerate(segments)}
    out = np.eye(segments.shape[0])
    for x, y, w in zip(np.asarray(a).tolist(), np.asarray(b).tolist(), np.asarray(weight, np.float64).tolist()):
        i, j = pos.get(int(x)), pos.get(int(y))
        if i is not None and j is not None and i != j and w > 0:
            out[i, j] = w
    return out


def carry_detector(old: IncidentDetector | None, old_segments, new_segments,
                   new: IncidentDetector) -> IncidentDetector:
    """The refitted model's detector ``new`` (new scales and threshold) with the open runs, incidents and
    faults of segments that were in the old model (matched by device id), so a refit neither forgets
    nor re-raises one."""
    if old is None:
        return new
    old_pos = {int(s): k for k, s in enumerate(old_segments)}
    src, dst = [], []
    for k, s in enumerate(new_segments):
        j = old_pos.get(int(s))
        if j is not None and j < old.n_segments:
            src.append(j)
            dst.append(k)
    if src:
        new.state_i[dst] = old.state_i[src]
        new.state_f[dst] = old.state_f[src]
    return new


def parse_incident_spec(text: str) -> tuple[str, int]:
    """``SEGMENT@STEP`` (segment as sensor id or column index, step a row of the replay)."""
    seg, sep, step = text.rpartition("@")
    if not sep or not seg or not step.strip().lstrip("-").isdigit():
        raise ValueError(f"incident must look like SEGMENT@STEP, got {text!r}")
    if int(step) < 0:
        raise ValueError(f"incident step must be >= 0, got {step}")
    return seg.strip(), int(step)


def detector_to_bytes(det: IncidentDetector) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **det.to_arrays())
    return buf.getvalue()


def detector_from_bytes(data: bytes) -> IncidentDetector:
    """The detector saved by ``detector_to_bytes``; ValueError for anything else (e.g. the state of the
    earlier per-segment detector, which a refit replaces)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return IncidentDetector.from_arrays({k: z[k] for k in z.files})
    except (KeyError, TypeError, OSError, ValueError) as exc:
        raise ValueError(f"not a saved incident detector: {exc}") from exc


@dataclass(frozen=True, slots=True)
class FittedModels:
    """What a refit produces: the speed forecaster, a flow forecaster when flow was reported, and the
    incident detector learned on the same rows (``bands``: each segment's typical band, for the record)."""

    speed: TrafficForecaster
    flow: TrafficForecaster | None
    detector: IncidentDetector
    bands: np.ndarray  # float64 [N], km/h below the forecast (k x median hourly scale, at least min_drop)


def fit_online(speed: np.ndarray, flow: np.ndarray | None, adjacency: np.ndarray, t0_ns: int,
               params: OnlineParams) -> FittedModels:
    """Fit the speed (and, with at least a day of flow values, the flow) forecaster on grids [T, N] whose
    row k is the bin at t0_ns + k step, and learn the incident detector from the same rows."""
    model = TrafficForecaster(params.forecaster_params()).fit(speed, adjacency, t0_ns, params.step_s)
    det = learn_detector(model, speed, t0_ns, params.incident_params(), adjacency=adjacency)
    bands = np.maximum(det.band_k * np.median(det.scale_table, axis=0), det.params.min_drop)
    flow_model = None
    if flow is not None and np.isfinite(flow).sum() >= params.min_fit_bins:
        try:
            flow_model = TrafficForecaster(params.flow_params()).fit(flow, adjacency, t0_ns, params.step_s)
        except ValueError:
            flow_model = None  # too sparse to fit: speed forecasts only
    return FittedModels(speed=model, flow=flow_model, detector=det, bands=np.asarray(bands, np.float64))
