"""Pollution-pulse tracing on the Lianjiang: when a station sees a pulse, find the river segment where
it most likely entered.

1. Score every station's series with a robust z-score against its own recent past
   (``core.kernels.pulse_trace.robust_scores``); a pulse is a run of periods with score >= threshold.
2. From a detection at station d and time t, walk upstream. Station u should have seen the same pulse
   ``travel_time(u -> d)`` earlier (at the discharge of the time); it is looked for in a window of
   +-max(tol_fraction x travel time, tol_min_periods) around that time. Stations without data in the
   window are skipped (the segment widens across them).
3. The pulse entered between the most upstream station that saw it and the next station upstream that,
   with data, did not. If every upstream station saw it, it came from above the first station. A single
   station that misses a pulse its upstream neighbour sees is taken as a miss rather than as the
   boundary; the P(seen) of its weak score then enters the confidence.
Confidence = P(last upstream station saw it) x P(boundary station did not) x timing agreement, with
P(seen) a logistic of the score around the threshold, and the timing term exp(-e²/2) of the arrival
error in tolerance units. Dilution means upstream stations see a *larger* anomaly; amplitudes are kept
in the evidence for the operator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wulian.core.environment.river import River
from wulian.core.kernels.pulse_trace import robust_scores, window_peak
from wulian.core.kernels.runs import find_runs


@dataclass(frozen=True, slots=True)
class StationEvidence:
    """What one upstream station showed in its expected arrival window."""

    station_id: str
    expected_ns: int
    observed_ns: int | None  # time of the window's peak score; None without data
    score: float | None
    value: float | None
    seen: bool | None  # None: no data in the window


@dataclass(frozen=True, slots=True)
class PulseEvent:
    """A traced pulse: where it was detected, and the segment it most likely entered."""

    item: str
    detected_at: str  # the most downstream station that detected it
    detected_ns: int
    peak_score: float
    peak_value: float
    entry_upstream: str | None  # station just above the entry; None = above the first station
    entry_downstream: str  # most upstream station that saw the pulse
    entry_km: tuple[float | None, float]
    confidence: float
    evidence: tuple[StationEvidence, ...]  # upstream stations, walking up from the detection


@dataclass(frozen=True, slots=True)
class PulseParams:
    """Detection and tracing knobs (per item: e.g. NH3-N, CODMn, conductivity)."""

    threshold: float = 5.0  # robust z for "a pulse"
    window: int = 48  # baseline periods before each value
    min_baseline: int = 24
    merge_gap: int = 6  # runs at one station closer than this (periods) are one pulse
    min_periods: int = 2  # a pulse lasts at least this many periods at or above the threshold
    scale_floor: float = 1e-3  # smallest noise scale (item units): flat series do not explode
    tol_fraction: float = 0.3  # arrival window half-width as a fraction of the travel time
    tol_min_periods: int = 1
    steepness: float = 1.0  # logistic slope of P(seen) in score units


def _p_seen(z: float, p: PulseParams) -> float:
    return 1.0 / (1.0 + math.exp(-(z - p.threshold) / p.steepness))


def pulse_scores(values: np.ndarray, valid: np.ndarray | None, params: PulseParams) -> np.ndarray:
    """Robust z-scores (n_stations, n_periods) for a station x period grid of one item."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    ok = np.isfinite(values) if valid is None else (np.asarray(valid, dtype=np.bool_) & np.isfinite(values))
    return robust_scores(values, np.ascontiguousarray(ok), params.window, params.min_baseline,
                         params.scale_floor)


def _flow_at(flow: float | np.ndarray, t: int, n_seg: int) -> np.ndarray:
    """Per-segment discharge at period t: scalar, per segment (n_seg,), or per station grid (n_st, n_t)
    (a segment takes the flow at its downstream station)."""
    f = np.asarray(flow, dtype=np.float64)
    if f.ndim == 2:
        return f[1:, min(max(t, 0), f.shape[1] - 1)]
    return np.broadcast_to(f, (n_seg,))


def trace_from(
    river: River, scores: np.ndarray, values: np.ndarray, station: int, t: int, t0_ns: int, step_ns: int,
    flow: float | np.ndarray, params: PulseParams, item: str = "",
) -> PulseEvent:
    """Trace one detection (station index, period index of its peak score) upstream."""
    n_seg = max(len(river.stations) - 1, 1)
    flows = _flow_at(flow, t, n_seg)
    evidence: list[StationEvidence] = []
    last_seen, last_z, timing = station, float(scores[station, t]), 1.0
    boundary, boundary_z = None, None
    missed = 1.0  # product of P(seen) over stations passed as misses
    pending: tuple[int, float] | None = None  # a non-seeing station, boundary unless the next one sees
    for u in range(station - 1, -1, -1):
        lag = river.travel_time_s(u, station, flows) * 1e9 / step_ns  # periods
        tol = max(params.tol_fraction * lag, float(params.tol_min_periods))
        expected = t - lag
        z, at = window_peak(scores, u, int(math.floor(expected - tol)), int(math.ceil(expected + tol)))
        exp_ns = t0_ns + int(round(expected * step_ns))
        if not np.isfinite(z):  # no data in the window, or the window is before the grid
            evidence.append(StationEvidence(river.stations[u].station_id, exp_ns, None, None, None, None))
            continue
        seen = z >= params.threshold
        evidence.append(StationEvidence(river.stations[u].station_id, exp_ns, t0_ns + at * step_ns, float(z),
                                        float(values[u, at]), bool(seen)))
        if not seen:
            if pending is not None:
                break
            pending = (u, float(z))
            continue
        if pending is not None:
            missed *= _p_seen(pending[1], params)
            pending = None
        last_seen, last_z = u, float(z)
        timing = math.exp(-0.5 * ((at - expected) / tol) ** 2)
    if pending is not None:
        boundary, boundary_z = pending
    conf = _p_seen(last_z, params) * timing * missed
    if boundary_z is not None:
        conf *= 1.0 - _p_seen(boundary_z, params)
    st = river.stations
    return PulseEvent(
        item=item,
        detected_at=st[station].station_id,
        detected_ns=t0_ns + t * step_ns,
        peak_score=float(scores[station, t]),
        peak_value=float(values[station, t]),
        entry_upstream=st[boundary].station_id if boundary is not None else None,
        entry_downstream=st[last_seen].station_id,
        entry_km=(st[boundary].km if boundary is not None else None, st[last_seen].km),
        confidence=round(conf, 4),
        evidence=tuple(evidence),
    )


def _merge_runs(key, start, stop, peak_at, scores, gap) -> list[tuple[int, int, int, int]]:
    """(station, start, stop, peak) with runs at one station less than ``gap`` apart joined, most
    downstream station first, then time."""
    merged: list[list[int]] = []
    for k, s, e, p in zip(key.tolist(), start.tolist(), stop.tolist(), peak_at.tolist()):
        if merged and merged[-1][0] == k and s - merged[-1][2] < gap:
            last = merged[-1]
            last[2] = e
            if scores[k, p] > scores[k, last[3]]:
                last[3] = p
        else:
            merged.append([k, s, e, p])
    return sorted((tuple(r) for r in merged), key=lambda r: (-r[0], r[3]))


def trace_pulses(
    river: River, values: np.ndarray, t0_ns: int, step_ns: int, flow: float | np.ndarray,
    params: PulseParams = PulseParams(), valid: np.ndarray | None = None, item: str = "",
) -> list[PulseEvent]:
    """Detect pulses at every station of one item grid (rows = ``river.stations``) and trace each once.

    Detections are taken most-downstream first; the upstream detections a trace explains are not traced
    again, so one pulse gives one event (reported at its most downstream detection)."""
    scores = pulse_scores(values, valid, params)
    cond = np.nan_to_num(scores, nan=-np.inf) >= params.threshold
    key, start, stop, _, peak_at = find_runs(cond, np.nan_to_num(scores, nan=-np.inf), 1)
    runs = [r for r in _merge_runs(key, start, stop, peak_at, scores, params.merge_gap)
            if r[2] - r[1] >= params.min_periods]
    consumed: set[int] = set()
    ids = {s.station_id: i for i, s in enumerate(river.stations)}
    events = []
    for n, (k, _s, _e, at) in enumerate(runs):
        if n in consumed:
            continue
        ev = trace_from(river, scores, values, k, at, t0_ns, step_ns, flow, params, item)
        events.append(ev)
        for e in ev.evidence:
            if e.seen:
                u, obs = ids[e.station_id], (e.observed_ns - t0_ns) // step_ns
                consumed.update(m for m, r in enumerate(runs) if r[0] == u and r[1] <= obs < r[2])
    events.sort(key=lambda e: e.detected_ns)
    return events
