"""Network-aware incident detection on forecast errors, with detector faults told apart.

An incident slows a segment and, within minutes, its upstream neighbours; a lone detector that drops,
reads zero, sticks or jumps about is more often broken. So (kernel ``core.kernels.traffic_incidents``)
each 5-minute bin is judged for all segments at once:

- detector health first: zeros, impossible speeds, flatlines and erratic jumps are FAULT events (an
  alert of their own kind), and such a reading is never incident evidence nor confirms a neighbour;
- the error against the forecast made ``horizon`` steps earlier, in robust sigmas of that segment's
  errors at that hour of day (``learn_detector`` replays the training rows: MAD per segment and hour),
  must stay below -k for ``raise_after`` bins, starting with a sudden drop from the segment's own recent
  level (``level_drop``: a jam the forecast expected to clear that just goes on is no incident);
- and the queue must spread: ``nb_need`` of the segment's ``nb_count`` strongest road links start
  slowing (below ``nb_ratio`` x their forecast and ``nb_level`` x their recent level) ``nb_follow`` to
  ``nb_follow_max`` bins after the segment did. A link that slowed first means the slowdown came from
  there (a bottleneck further on, rush hour), so it does not confirm. The road graph is symmetric, so
  "upstream" is whichever link slows after the segment. A lone drop is raised only with ``alone_after``
  set (or on a segment without links);
- and the drop must be neither recurrent nor area-wide (issue 20: most false alarms on Los-loop's test
  days were rush-hour breakdowns that look exactly like a spreading incident): no raise where the
  segment dropped suddenly within ``rec_window`` bins of this time of day on more than ``rec_max``
  learning days of the same day type (``recurrence_table``), nor while more than ``area_max`` segments
  beyond its 2-hop neighbourhood dropped suddenly in the last ``area_window`` bins. Such a run is dropped.

With the road graph, ``learn_detector`` also learns a score that then decides instead of the tests
(``core.traffic.incident_score``: gradient-boosted trees over the same evidence, taught by incidents
injected into the training rows): the health tests, fault events, state and persistence stay; ``rules()``
gives the test-based detector back. On Los-loop it found 90-91 % of injected incidents at 3.0-3.4 false
alarms per day in 6.7-6.8 minutes, where the tests found 52-57 % at 4.4-6.8 in 10.3-11.5 (README, traffic).

The main threshold k and whether the relative test is on are chosen on the training rows only: on their
latest ``holdout`` share, judged with scales and recurrence learned on the rows before it, the smallest
k of ``k_grid`` that raises at most ``fa_budget`` incidents per segment and day, relative test on first
(else the fewest raises); with fewer than ``min_learn_days`` of rows the default k is kept (the budget
is not measurable there). A bin is also low, whatever the scale, below ``rel_low`` x both the forecast
and the time-of-day profile: a scale learned from a quiet night or two days is unreliable, a halved
speed is not. The settings that are not learned (area_max, rec_max, fa_budget) were chosen on a
validation slice cut from the end of Los-loop's training rows (README, traffic service).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np

from wulian.core.kernels import traffic_incidents as kern
from wulian.core.timebase import CHINA_OFFSET_S, NS_PER_S
from wulian.core.timebase import S_PER_DAY as SECONDS_PER_DAY
from wulian.core.traffic.forecaster import TrafficForecaster, build_graph, time_slots

RAISE = kern.RAISE
CLEAR = kern.CLEAR
FAULT = kern.FAULT
FAULT_CLEAR = kern.FAULT_CLEAR
FAULT_NAMES = {kern.FAULT_ZERO: "zero", kern.FAULT_IMPOSSIBLE: "impossible", kern.FAULT_FLATLINE: "flatline",
               kern.FAULT_ERRATIC: "erratic"}
# the detector compares readings with the forecasts the model would make without its residual net
# (``TrafficForecaster.forecast(net=False)``: the blend fitted without the net's term), learning and
# live: the net follows a forming jam sooner and explained part of an incident away. Los-loop with the
# net, 0.8 split: 86.7 % found on the net's forecasts, 84.4 % with only the net's term dropped from its
# blend, 87.8 % on the unblended linear forecasts, 90.0 % so (the figures without a net, exactly)
DETECTOR_NET = False


@dataclass(frozen=True, slots=True)
class IncidentParams:
    """Detector settings. Speeds are in the series' units: the defaults are mph (Los-loop);
    ``in_units(1.609344)`` converts them for km/h."""

    horizon: int = 3  # compare with the forecast made this many steps earlier (3 x 5 min = 15 min)
    k: float = 6.0  # main threshold in robust sigmas (learn_detector chooses it from k_grid)
    k_grid: tuple[float, ...] = (3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 12.0, 14.0, 16.0)
    fa_budget: float = 0.015  # incidents per segment and day allowed on the training rows (~3/day on 207)
    rel_low: float = 0.75  # also low below this fraction of both the forecast and the profile (0: off)
    prof_low: float = 0.0  # every onset also below this fraction of the time-of-day profile (0: off)
    min_learn_days: float = 3.0  # fewer training days cannot show a budget of ~0.01/segment-day: keep k
    k_nb: float = 2.5  # a neighbour confirms below this many sigmas...
    min_drop: float = 10.0  # an incident is at least this far below the forecast
    nb_min_drop: float = 5.0  # ...and this far below its own forecast
    raise_after: int = 2  # consecutive low bins with confirming neighbours
    alone_after: int = 0  # consecutive low bins that raise without them (0: never, unless a segment has no links)
    nb_need: int = 2  # confirming road links needed (fewer if a segment has fewer links)
    nb_count: int = 2  # only the strongest this many links may confirm (0: all of nb_top)
    nb_follow: int = 1  # a link confirms only if it began slowing >= this many bins after us (-1: any order)
    nb_follow_max: int = 4  # ...and at most this many bins after us (-1: no limit)
    nb_ratio: float = 0.85  # a link is slowing below this fraction of its forecast (0: below -k_nb sigmas)
    level_alpha: float = 0.3  # recent level: exponential average, this weight on the newest reading (~30 min)
    level_drop: float = 0.75  # a run starts only below this fraction of the recent level (0: off)
    nb_level: float = 0.9  # a link is slowing only below this fraction of its own recent level (0: off)
    area_max: int = 20  # raise only while at most this many segments beyond our 2-hop neighbourhood... (-1: off)
    area_window: int = 6  # ...had a sudden drop (level_drop, min_drop) in the last this many bins (30 min)
    rec_max: int = 0  # raise only if at most this many learning days of the same day type had a sudden drop...
    rec_window: int = 6  # ...of the segment within this many bins of this time of day (-1 rec_max: off)
    holdout: float = 0.35  # k and the relative test are chosen on this latest share of the learning rows
    learned: bool = True  # learn the incident score (``incident_score``) when the road graph is given
    score_grid: tuple[float, ...] = tuple(float(x) for x in np.arange(0.0, 10.01, 0.25))  # its thresholds
    train_per_shape: int = 600  # incidents of each TRAINING_SHAPES injected into the learning rows
    train_seed: int = 20  # their draw (fixed: the same rows learn the same detector)
    label_bins: tuple[int, ...] = (1, 2, 3)  # bins after an injected start taught as "incident"
    pos_weight: float = 0.05  # the positives' total weight, as a share of the clean bins'
    shape_weights: tuple[float, ...] = (1.0, 1.0, 2.0)  # TRAINING_SHAPES' positives' weights (congestion x2)
    trees: int = 200  # gradient-boosted trees (core.kernels.gbdt)
    tree_leaves: int = 15
    tree_rate: float = 0.1
    clear_after: int = 2  # consecutive recovered bins to clear
    nb_window: int = 3  # a neighbour's drop confirms for this many bins
    zero: float = 0.5  # a reading at or below this is a dead detector
    hi: float = 100.0  # above this is impossible
    flat_eps: float = 1e-6  # readings closer than this are "the same"
    flat_bins: int = 6  # this many identical readings (below the free-flow cap) are a stuck detector
    spike_jump: float = 40.0  # two opposite jumps larger than this in a row: an erratic detector
    fault_after: int = 2  # bins of zero / impossible / erratic evidence to raise a fault
    fault_clear: int = 6  # clean bins to clear a fault
    cap_fraction: float = 0.995  # free-flow cap = this x the segment's training maximum
    scale_buckets: int = 24  # robust scale per hour of day...
    scale_smooth: int = 1  # ...pooled with +-this many neighbouring hours
    min_scale: float = 1.0  # floor of the robust scale
    scale_tail: float = 0.0  # 0: MAD; else the scale is this quantile of the drops per segment and hour
    step_s: int = 300
    utc_offset_s: int = CHINA_OFFSET_S

    def in_units(self, factor: float) -> "IncidentParams":
        """The same detector for speeds in other units (speed value x factor)."""
        return replace(self, min_drop=self.min_drop * factor, nb_min_drop=self.nb_min_drop * factor,
                       zero=self.zero * factor, hi=self.hi * factor, spike_jump=self.spike_jump * factor,
                       min_scale=self.min_scale * factor)

    def cfg(self, k: float | None = None) -> np.ndarray:
        c = np.zeros(kern.N_CFG)
        c[kern.C_K] = self.k if k is None else k
        c[kern.C_K_NB] = self.k_nb
        c[kern.C_MIN_DROP] = self.min_drop
        c[kern.C_NB_MIN_DROP] = self.nb_min_drop
        c[kern.C_RAISE_AFTER] = self.raise_after
        c[kern.C_ALONE_AFTER] = self.alone_after
        c[kern.C_CLEAR_AFTER] = self.clear_after
        c[kern.C_NB_WINDOW] = self.nb_window
        c[kern.C_ZERO] = self.zero
        c[kern.C_HI] = self.hi
        c[kern.C_FLAT_EPS] = self.flat_eps
        c[kern.C_FLAT_BINS] = self.flat_bins
        c[kern.C_SPIKE_JUMP] = self.spike_jump
        c[kern.C_FAULT_AFTER] = self.fault_after
        c[kern.C_FAULT_CLEAR] = self.fault_clear
        c[kern.C_STEP_NS] = self.step_s * NS_PER_S
        c[kern.C_REL_LOW] = self.rel_low
        c[kern.C_PROF_LOW] = self.prof_low
        c[kern.C_NB_NEED] = self.nb_need
        c[kern.C_NB_COUNT] = self.nb_count
        c[kern.C_NB_FOLLOW] = self.nb_follow
        c[kern.C_NB_RATIO] = self.nb_ratio
        c[kern.C_NB_FOLLOW_MAX] = self.nb_follow_max
        c[kern.C_LEVEL_ALPHA] = self.level_alpha
        c[kern.C_LEVEL_DROP] = self.level_drop
        c[kern.C_NB_LEVEL] = self.nb_level
        c[kern.C_AREA_MAX] = self.area_max
        c[kern.C_AREA_WINDOW] = self.area_window
        c[kern.C_REC_MAX] = self.rec_max
        return c


TRAINING_SHAPES = {  # name: (severity, start): the incidents a learned score is taught, and scored on
    "collapse": (0.35, "free"),  # to 35 % of the speed in free-flowing traffic
    "partial": (0.6, "free"),  # a slowdown to 60 %
    "congestion": (0.35, "congested"),  # a collapse starting in already slow traffic
}
FREE_FLOW = 0.8  # a "free" start: at least this share of the segment's top profile speed
CONGESTED = 0.6  # a "congested" start: at most this share


def draw_start(rng: np.random.Generator, values: np.ndarray, top: np.ndarray, candidates: np.ndarray,
               where: str, lo: int, hi: int) -> tuple[int, int]:
    """(segment, start row) for an injected incident: a segment of ``candidates`` and a row in [lo, hi)
    whose previous reading is free-flowing (``FREE_FLOW`` x top), congested (``CONGESTED`` x top) or any."""
    for _ in range(10_000):
        seg, start = int(rng.choice(candidates)), int(rng.integers(lo, hi))
        v = values[start - 1, seg]
        if (where == "free" and v >= FREE_FLOW * top[seg]) or (where == "congested" and v <= CONGESTED * top[seg]) \
                or where == "any":
            return seg, start
    raise ValueError(f"no {where} start found in rows {lo}..{hi}")


@dataclass(frozen=True, slots=True)
class DetectorEvents:
    """Events of one bin or a replay, as arrays in order. ``kind``: RAISE / CLEAR (incident), FAULT /
    FAULT_CLEAR (detector fault, ``code`` says which: FAULT_NAMES); ``value``: observed - forecast for
    incidents, the reading for faults; ``row``: the bin's row in a replay (0 for one bin)."""

    row: np.ndarray  # int64
    segment: np.ndarray  # int32
    kind: np.ndarray  # int8
    code: np.ndarray  # int8
    value: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.segment.shape[0])


class IncidentDetector:
    """Stateful detector over a fixed set of N segments (a new segment means a new model and detector).

    ``update_bin(ts_ns, observed[N], forecast[N])`` per bin, in time order; ``replay`` for many rows.
    """

    def __init__(self, scale_table: np.ndarray, cap: np.ndarray, nb_top: np.ndarray,
                 params: IncidentParams | None = None, recurrence: np.ndarray | None = None) -> None:
        """scale_table [buckets, N] robust error spread per hour bucket; cap [N] free-flow cap (a flat
        reading at or above it is not a fault); nb_top [N, K] each segment's strongest neighbours;
        recurrence [2, slots of a day, N] (weekday, weekend) how many learning days had a sudden drop of
        the segment near that time of day (None: no history, nothing is recurrent)."""
        self.params = params or IncidentParams()
        self.scale_table = np.ascontiguousarray(scale_table, dtype=np.float64)
        self.cap = np.ascontiguousarray(cap, dtype=np.float64)
        self.nb_top = np.ascontiguousarray(nb_top, dtype=np.int32)
        n = self.cap.shape[0]
        if recurrence is None:
            recurrence = np.zeros((2, SECONDS_PER_DAY // self.params.step_s, n))
        self.recurrence = np.ascontiguousarray(recurrence, dtype=np.float64)
        if self.scale_table.shape[1] != n or self.nb_top.shape[0] != n or self.recurrence.shape[2] != n:
            raise ValueError("scale_table, cap, nb_top and recurrence disagree on the number of segments")
        self.k = float(self.params.k)
        self.band_k = self.k  # the rules' k in sigmas (band); k is the learned score's threshold with trees
        self.trees: tuple[np.ndarray, np.ndarray, float] | None = None  # (tf, tv, base): learned score
        self.state_i, self.state_f = kern.new_state(n)
        self.curve: list[tuple[float, float]] = []  # (k, training false alarms / day) when learned

    @property
    def n_segments(self) -> int:
        return int(self.cap.shape[0])

    @property
    def active(self) -> np.ndarray:
        """Segments with an open incident (bool [N])."""
        return self.state_i[:, kern.S_ACTIVE] == 1

    @property
    def faulty(self) -> np.ndarray:
        """Segments with an open detector fault (bool [N])."""
        return self.state_i[:, kern.S_FAULT_ON] == 1

    @property
    def held(self) -> np.ndarray:
        """Segments whose readings forecasts should not use now (bool [N]): fault evidence in their latest
        bin or an open fault."""
        out = np.zeros(self.n_segments, np.bool_)
        kern.held_flags(self.state_i, out)
        return out

    def health(self, ts_ns: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """``held`` after each of rows ts [R] of observed [R, N], from a fresh state. The health tests read
        only the readings, so this needs no forecast and may come before the forecasts it masks."""
        det = self._copy(self.params)
        det.k = np.inf
        obs = np.ascontiguousarray(observed, np.float64)
        nan = np.full(obs.shape, np.nan)
        ts = np.ascontiguousarray(ts_ns, np.int64)
        return det._run(ts, obs, nan, nan, np.zeros(obs.shape), False)[7]

    @property
    def k_grid(self) -> tuple[float, ...]:
        """The thresholds a curve runs over: score thresholds with a learned score, else sigmas."""
        return self.params.score_grid if self.trees is not None else self.params.k_grid

    def band(self, ts_ns: int) -> np.ndarray:
        """Speed drop [N] that counts as low at this time by the rules: max(k x scale, min_drop)."""
        return np.maximum(self.band_k * self.scale_table[self.bucket(np.array([ts_ns]))[0]], self.params.min_drop)

    def bucket(self, ts_ns: np.ndarray) -> np.ndarray:
        p = self.params
        local_s = np.asarray(ts_ns, np.int64) // NS_PER_S + p.utc_offset_s
        return ((local_s % SECONDS_PER_DAY) * self.scale_table.shape[0] // SECONDS_PER_DAY).astype(np.int64)

    def reset(self) -> None:
        self.state_i, self.state_f = kern.new_state(self.n_segments)

    def with_threshold(self, k: float) -> "IncidentDetector":
        """A fresh detector with the same scales and another main threshold (for threshold curves)."""
        det = self._copy(self.params)
        det.k = float(k)
        if self.trees is None:
            det.band_k = det.k
        return det

    def _copy(self, params: IncidentParams) -> "IncidentDetector":
        det = IncidentDetector(self.scale_table, self.cap, self.nb_top, params, self.recurrence)
        det.k, det.band_k, det.trees, det.curve = self.k, self.band_k, self.trees, self.curve
        return det

    def with_params(self, **changes) -> "IncidentDetector":
        """A fresh detector with the same learned tables and threshold and some settings changed."""
        return self._copy(replace(self.params, **changes))

    def rules(self) -> "IncidentDetector":
        """The same detector deciding by its tests, without the learned score (k: the rules' own)."""
        det = self._copy(self.params)
        det.trees, det.k = None, self.band_k
        return det

    def _trees(self) -> tuple[np.ndarray, np.ndarray, float]:
        if self.trees is None:
            return np.zeros((3, 0, 1), np.int32), np.zeros((2, 0, 1)), 0.0
        return self.trees

    def _cfg(self) -> np.ndarray:
        c = self.params.cfg(self.k)
        c[kern.C_LEARNED] = 1.0 if self.trees is not None else 0.0
        c[kern.C_TREE_BASE] = self._trees()[2]
        return c

    def recurrence_at(self, ts_ns: np.ndarray) -> np.ndarray:
        """[R, N] the recurrence counts at times ts [R] (their slot of the local day and day type)."""
        p = self.params
        slot, _, day_type = time_slots(np.asarray(ts_ns, np.int64), p.step_s, p.utc_offset_s)
        return self.recurrence[day_type, slot % self.recurrence.shape[1]]

    def replay(self, ts_ns: np.ndarray, observed: np.ndarray, forecast: np.ndarray,
               profile: np.ndarray | None = None, recurrence: np.ndarray | None = None) -> DetectorEvents:
        """Feed rows ts [R] of observed / forecast / time-of-day profile [R, N] (NaN allowed; no profile:
        the relative test uses the forecast alone) in order; the events. ``recurrence`` [R, N] replaces
        the learned counts (``learn_detector`` replays its own rows leaving each row's day out)."""
        ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
        obs = np.ascontiguousarray(observed, dtype=np.float64)
        fc = np.ascontiguousarray(forecast, dtype=np.float64)
        prof = np.full(obs.shape, np.nan) if profile is None else np.ascontiguousarray(profile, dtype=np.float64)
        rec = self.recurrence_at(ts) if recurrence is None else np.ascontiguousarray(recurrence, dtype=np.float64)
        if obs.ndim != 2 or obs.shape != fc.shape or obs.shape != prof.shape or obs.shape != rec.shape \
                or obs.shape[0] != ts.shape[0] or obs.shape[1] != self.n_segments:
            raise ValueError(f"observed/forecast/profile must be [{ts.shape[0]}, {self.n_segments}], got {obs.shape},"
                             f" {fc.shape}, {prof.shape}")
        return DetectorEvents(*self._run(ts, obs, fc, prof, rec, False)[:5])

    def _run(self, ts, obs, fc, prof, rec, dump: bool):
        tf, tv, _ = self._trees()
        return kern.detect_series(ts, obs, fc, prof, rec, self.bucket(ts), self.scale_table, self.cap, self.nb_top,
                                  self._cfg(), self.state_i, self.state_f, tf, tv, dump)

    def scored(self, ts_ns, observed, forecast, profile) -> tuple[np.ndarray, DetectorEvents]:
        """A learned detector's replay with the score kept: (scores [R, N], fault events). The score does
        not depend on k, so ``at_threshold`` gives any k's incidents from it without another replay."""
        det = self._copy(self.params)
        det.k = np.inf
        ts = np.ascontiguousarray(ts_ns, np.int64)
        obs = np.ascontiguousarray(observed, np.float64)
        out = det._run(ts, obs, np.ascontiguousarray(forecast, np.float64),
                       np.ascontiguousarray(profile, np.float64), det.recurrence_at(ts), False)
        faults = out[2] != RAISE
        return out[5], DetectorEvents(*(a[faults] for a in out[:5]))

    def at_threshold(self, scores: np.ndarray, faults: DetectorEvents, k: float) -> DetectorEvents:
        """The incident raises of scores [R, N] at threshold k, with the fault events (no clears)."""
        rows, segs = kern.raise_events(np.ascontiguousarray(scores, np.float64), float(k), int(self.params.clear_after))
        m = len(rows)
        return DetectorEvents(np.r_[faults.row, rows], np.r_[faults.segment, segs].astype(np.int32),
                              np.r_[faults.kind, np.full(m, RAISE, np.int8)].astype(np.int8),
                              np.r_[faults.code, np.zeros(m, np.int8)].astype(np.int8),
                              np.r_[faults.value, np.full(m, np.nan)])

    def features(self, ts_ns, observed, forecast, profile, recurrence, learned: bool = True):
        """Replay rows (as ``replay``) and return (scores [R, N], features [R, N, F]) of the learned score
        (NaN where a segment was not scored: faulty, no forecast). Used to train and to choose k."""
        det = self._copy(self.params)
        if learned and det.trees is None:
            det.trees = (np.zeros((3, 0, 1), np.int32), np.zeros((2, 0, 1)), 0.0)  # features, no raises
        det.k = np.inf
        out = det._run(np.ascontiguousarray(ts_ns, np.int64), np.ascontiguousarray(observed, np.float64),
                       np.ascontiguousarray(forecast, np.float64), np.ascontiguousarray(profile, np.float64),
                       np.ascontiguousarray(recurrence, np.float64), True)
        return out[5], out[6]

    def update_bin(self, ts_ns: int, observed: np.ndarray, forecast: np.ndarray,
                   profile: np.ndarray | None = None) -> DetectorEvents:
        """One bin for every segment (NaN = not reported / no forecast / no profile)."""
        return self.replay(np.array([ts_ns], np.int64), np.asarray(observed, np.float64)[None, :],
                           np.asarray(forecast, np.float64)[None, :],
                           None if profile is None else np.asarray(profile, np.float64)[None, :])

    # -- persistence ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Scales, threshold and per-segment state as plain arrays, so a restart resumes open runs."""
        p = asdict(self.params)
        p["k_grid"] = list(p["k_grid"])
        return {"params": np.frombuffer(json.dumps(p).encode(), dtype=np.uint8), "k": np.array([self.k]),
                "scale_table": self.scale_table, "cap": self.cap, "nb_top": self.nb_top,
                "recurrence": np.minimum(self.recurrence, 255).astype(np.uint8),  # day counts: 1 byte each
                "state_i": self.state_i, "state_f": self.state_f,
                "curve": np.asarray(self.curve, np.float64).reshape(-1, 2), "band_k": np.array([self.band_k]),
                **({} if self.trees is None else {"tree_tf": self.trees[0], "tree_tv": self.trees[1],
                                                  "tree_base": np.array([self.trees[2]])})}

    @classmethod
    def from_arrays(cls, arrays) -> "IncidentDetector":
        p = json.loads(bytes(np.asarray(arrays["params"], np.uint8)).decode())
        for key in ("k_grid", "score_grid", "label_bins", "shape_weights"):
            if key in p:
                p[key] = tuple(p[key])
        det = cls(arrays["scale_table"], arrays["cap"], arrays["nb_top"], IncidentParams(**p),
                  arrays["recurrence"] if "recurrence" in arrays else None)  # older saves: none
        det.k = float(np.asarray(arrays["k"])[0])
        det.band_k = float(np.asarray(arrays["band_k"])[0]) if "band_k" in arrays else det.k
        if "tree_tf" in arrays:  # older saves decide by the rules
            det.trees = (np.ascontiguousarray(arrays["tree_tf"], np.int32),
                         np.ascontiguousarray(arrays["tree_tv"], np.float64), float(np.asarray(arrays["tree_base"])[0]))
        det.state_i, det.state_f = kern.widen_state(arrays["state_i"], arrays["state_f"])
        det.curve = [tuple(map(float, r)) for r in np.asarray(arrays["curve"], np.float64).reshape(-1, 2)]
        return det


def horizon_forecasts(model: TrafficForecaster, values: np.ndarray, t0_ns: int, horizon: int,
                      first_row: int = 0, held: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, forecasts [len(rows), N]): for each row from ``first_row`` on (and after a full input window
    plus the horizon), the forecast of that row made ``horizon`` steps before it; with ``held`` [T, N]
    (``IncidentDetector.health``) as ``unheld_forecasts`` makes them."""
    t_len = values.shape[0]
    ends = np.arange(max(model.params.n_lags - 1, first_row - horizon), t_len - horizon, dtype=np.int64)
    return ends + horizon, unheld_forecasts(model, values, t0_ns, ends, held)[:, horizon - 1]


def unheld_forecasts(model: TrafficForecaster, values: np.ndarray, t0_ns: int, ends: np.ndarray,
                     held: np.ndarray | None) -> np.ndarray:
    """``model.forecast_series`` [W, H, N] (as the detector uses them: ``DETECTOR_NET``) where each window
    leaves out (NaN) the whole input window of the segments ``held`` [T, N] at its end: an erratic or dead
    detector's readings otherwise move its neighbours' forecasts, and a neighbour standing in a jam then
    looks like an incident. The online job does the same bin by bin with ``IncidentDetector.held``."""
    out = model.forecast_series(values, t0_ns, ends, DETECTOR_NET)
    if held is None:
        return out
    mask = np.asarray(held, np.bool_)[ends]
    some = np.flatnonzero(mask.any(axis=1))
    if some.size == 0:
        return out
    _, group = np.unique(np.packbits(mask[some], axis=1), axis=0, return_inverse=True)
    for g in range(int(group.max()) + 1):
        sel = some[group.ravel() == g]
        blind = np.array(values, dtype=np.float64)
        blind[:, mask[sel[0]]] = np.nan
        out[sel] = model.forecast_series(blind, t0_ns, ends[sel], DETECTOR_NET)
    return out


def robust_scale_table(resid: np.ndarray, bucket: np.ndarray, n_buckets: int, smooth: int,
                       floor: float, tail: float = 0.0) -> np.ndarray:
    """[n_buckets, N]: 1.4826 x MAD of resid [R, N] per bucket, pooling +-smooth neighbouring buckets
    (circular); a bucket without data takes the segment's overall value, then the floor. With ``tail``
    > 0 the scale is instead the ``tail`` quantile of the drops (-resid) there: how deep this segment's
    forecast misses go at this hour, so routine rush-hour collapses do not count as unusual."""
    if tail > 0:
        resid = -np.asarray(resid, np.float64)
    out = np.full((n_buckets, resid.shape[1]), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN, replaced below
        for b in range(n_buckets):
            near = np.zeros(resid.shape[0], bool)
            for d in range(-smooth, smooth + 1):
                near |= bucket == (b + d) % n_buckets
            if near.any():
                x = resid[near]
                out[b] = np.nanquantile(x, tail, axis=0) if tail > 0 else \
                    1.4826 * np.nanmedian(np.abs(x - np.nanmedian(x, axis=0)), axis=0)
        overall = np.nanquantile(resid, tail, axis=0) if tail > 0 else \
            1.4826 * np.nanmedian(np.abs(resid - np.nanmedian(resid, axis=0)), axis=0)
    out = np.where(np.isfinite(out), out, overall[None, :])
    return np.maximum(np.nan_to_num(out, nan=floor), floor)


def learn_detector(model: TrafficForecaster, values: np.ndarray, t0_ns: int,
                   params: IncidentParams | None = None, adjacency: np.ndarray | None = None) -> IncidentDetector:
    """A detector for a fitted model from its training rows values [T, N] (row k at t0_ns + k step): the
    robust error scale per segment and hour from the rows replayed through the model, the free-flow caps,
    the model's strongest road links, the recurrence table (``recurrence_table``), and the main
    threshold: the smallest k of ``k_grid`` whose replay raises at most ``fa_budget`` incidents per
    segment and day, first with the relative test on, then off; if none does, the setting with the fewest
    raises (the rows are taken to be incident-free, as far as anyone knows; real incidents in them only
    make the choice more cautious).

    The replay that chooses is the latest ``holdout`` share of the rows, judged with scales and
    recurrence learned on the rows before it, the way the days after training will be judged (a
    recurrence learned on the same rows would know every breakdown in them). When the rows before it are
    fewer than ``min_learn_days``, all rows are replayed with each row's own day left out of the
    recurrence. With fewer than ``min_learn_days`` of rows in all: the default k, relative test on.

    With the road graph (``adjacency``) and ``learned`` set, the detector then decides by a learned score
    (``core.traffic.incident_score``) with its threshold chosen the same way; the rules' tables, k and
    fault tests stay (``rules()`` gives that detector back)."""
    params = params or IncidentParams(step_s=model.step_s, utc_offset_s=model.params.utc_offset_s)
    values = np.asarray(values, np.float64)
    base = _learn_tables(model, values, t0_ns, params)
    rows, fc = horizon_forecasts(model, values, t0_ns, params.horizon)
    ts = t0_ns + rows * (model.step_s * NS_PER_S)
    prof = model.profile_at(ts)
    days = len(rows) * model.step_s / SECONDS_PER_DAY
    n_cal = values.shape[0] - int(round(params.holdout * values.shape[0]))
    if params.holdout > 0 and n_cal * model.step_s / SECONDS_PER_DAY >= params.min_learn_days:
        judge = _learn_tables(model, values[:n_cal], t0_ns, params)
        held = rows >= n_cal
        ts, obs, fc, prof = ts[held], values[rows[held]], fc[held], prof[held]
        rec = judge.recurrence_at(ts)
        days = len(ts) * model.step_s / SECONDS_PER_DAY
    else:
        judge = base
        # each training row is judged against the other days only, as a test day will be
        rec = base.recurrence_at(ts) - recurrence_table(values, t0_ns, params)[1][rows]
        obs = values[rows]
    budget = params.fa_budget * values.shape[1]
    if len(rows) * model.step_s / SECONDS_PER_DAY < params.min_learn_days:
        # A budget of ~0.01 raises per segment-day is not measurable on so few days (one raise is over
        # it), and a short history's scales are themselves unsure: keep the default k and the relative
        # test (below rel_low x forecast and profile), which needs no scale.
        det = base.with_threshold(params.k)
        det.curve = [(float(params.k), _raises_per_day(det, ts, obs, fc, prof, rec, days))]
        return det
    # (relative test on, then off) x k ascending: the first within the budget, else the fewest raises
    best = None
    for rel in dict.fromkeys((params.rel_low, 0.0)):
        var = judge.with_params(rel_low=rel)
        curve = [(float(k), _raises_per_day(var.with_threshold(k), ts, obs, fc, prof, rec, days))
                 for k in sorted(params.k_grid)]
        ok = [k for k, fa in curve if fa <= budget]
        k, fa = (ok[0], 0.0) if ok else min(curve, key=lambda c: (c[1], c[0]))
        if ok or best is None or fa < best[2]:
            best = (rel, k, fa if not ok else -1.0, curve)
        if ok:
            break
    rel, k, _, curve = best
    det = base.with_params(rel_low=rel).with_threshold(k)
    det.curve = curve
    if params.learned and adjacency is not None:
        from wulian.core.traffic.incident_score import learn_score

        learned = learn_score(model, values, np.asarray(adjacency, np.float64), t0_ns, det.params)
        if learned is not None:
            det.trees, det.k, det.curve = learned
    return det


def _learn_tables(model: TrafficForecaster, values: np.ndarray, t0_ns: int,
                  params: IncidentParams) -> IncidentDetector:
    """A detector (default k) with the scales, caps and recurrence learned on rows values [T, N]."""
    rows, fc = horizon_forecasts(model, values, t0_ns, params.horizon)
    ts = t0_ns + rows * (model.step_s * NS_PER_S)
    probe = IncidentDetector(np.ones((params.scale_buckets, values.shape[1])), np.ones(values.shape[1]),
                             model.graph.top_k, params)
    table = robust_scale_table(values[rows] - fc, probe.bucket(ts), params.scale_buckets, params.scale_smooth,
                               params.min_scale, params.scale_tail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cap = params.cap_fraction * np.nanmax(values, axis=0)
    cap = np.where(np.isfinite(cap), cap, np.inf)
    return IncidentDetector(table, cap, model.graph.top_k, params, recurrence_table(values, t0_ns, params)[0])


def recurrence_table(values: np.ndarray, t0_ns: int, params: IncidentParams) -> tuple[np.ndarray, np.ndarray]:
    """(table [2, slots of a day, N], own [T, N]) from rows values [T, N] (row k at t0_ns + k step): per day
    type (weekday, weekend) and time of day, on how many days each segment dropped suddenly (the
    detector's ``sudden`` test against its recent level) within ``rec_window`` bins of that time; ``own``
    is each row's own day's share, so a replay of these rows can leave it out. Rush-hour breakdowns
    recur at about the same time on working days; an incident happens once."""
    values = np.ascontiguousarray(values, np.float64)
    t_len, n = values.shape
    onsets = kern.sudden_drops(values, params.level_alpha, params.level_drop, params.min_drop, params.zero)
    slot, day, day_type = time_slots(t0_ns + np.arange(t_len, dtype=np.int64) * (params.step_s * NS_PER_S),
                                     params.step_s, params.utc_offset_s)
    n_slots = SECONDS_PER_DAY // params.step_s
    table = np.zeros((2, n_slots, n))
    own = np.zeros((t_len, n))
    for d in np.unique(day):
        m = day == d
        hit = np.zeros((n_slots, n), bool)
        hit[slot[m]] = onsets[m]
        near = hit.copy()
        for k in range(1, max(params.rec_window, 0) + 1):
            near[k:] |= hit[:-k]
            near[:-k] |= hit[k:]
        table[day_type[m][0]] += near
        own[m] = near[slot[m]]
    return table, own


def _raises_per_day(det: IncidentDetector, ts, obs, fc, prof, rec, days: float) -> float:
    ev = det.replay(ts, obs, fc, prof, rec)
    return float((ev.kind == RAISE).sum() / days) if days else 0.0


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




FAULT_SHAPES = ("zeros", "flatline", "erratic")


def inject_fault(values: np.ndarray, segment: int, start: int, duration: int, shape: str,
                 hi: float = 70.0) -> tuple[np.ndarray, np.ndarray]:
    """Copy of values [T, N] with a detector fault on ``segment`` for rows [start, start + duration):
    ``zeros`` (a dead loop reads 0), ``flatline`` (stuck at the value of row start - 1) or ``erratic``
    (alternating between 10 % and 100 % of ``hi``, the road's top speed). The road itself is unchanged,
    so its neighbours read normally. Returns (values, faulty bool [T, N])."""
    out = np.array(values, dtype=np.float64)
    faulty = np.zeros(out.shape, dtype=np.bool_)
    rows = np.arange(max(start, 0), min(start + duration, out.shape[0]))
    if shape == "zeros":
        out[rows, segment] = 0.0
    elif shape == "flatline":
        out[rows, segment] = out[max(start - 1, 0), segment]
    elif shape == "erratic":
        out[rows, segment] = np.where((rows - start) % 2 == 0, 0.1 * hi, hi)
    else:
        raise ValueError(f"unknown fault shape {shape!r}; one of {FAULT_SHAPES}")
    faulty[rows, segment] = True
    return out, faulty
