"""``AlarmEngine``: rules + series catalogue + per-binding state, fed batches of readings and timer ticks.

River-shaped: parameters in ``__init__``, state in arrays grown on demand as series appear, batches in
through ``update_many``. Event time is always passed in (``tick(now_ns)``); nothing here reads the clock.
Transitions come back as arrays; the lifecycle layer turns RAISE/UPDATE/CLEAR into alert rows. State is plain
arrays (``state_arrays``/``load_state``) so a restart neither re-raises an open alert nor forgets a pending
period. Semantics (order policy, exclusion, pending, hysteresis, keep-firing) are documented in
``core.kernels.alarm_kernels``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from wulian.core.alarms.compiler import SeriesCatalogue, SeriesKey, bind_series, compile_rules
from wulian.core.alarms.rules import Rule, RuleKind, TransitionKind, flag_code
from wulian.core.kernels import alarm_kernels as K

STATE_VERSION = 2  # 2: per-binding state is (count, since_ns, ref_ts_ns); 1 had five columns
# Per-binding state columns as persisted; meanings in core.kernels.alarm_kernels.
_STATE_COLUMNS = (("count", K.S_COUNT), ("since_ns", K.S_SINCE), ("ref_ts_ns", K.S_REF_TS))


@dataclass(frozen=True, slots=True, eq=False)
class Transitions:
    """Alert transitions as parallel arrays, one row per (series, rule) event.

    ``kind`` is a ``TransitionKind`` code; ``count`` the open alert's trigger count after the event;
    ``flag`` the reading's flag code (0 from the timer); ``value`` see ``alarm_kernels.evaluate_batch``.
    """

    series: np.ndarray  # int32
    rule_id: np.ndarray  # int64
    kind: np.ndarray  # int8
    ts_ns: np.ndarray  # int64
    value: np.ndarray  # float64
    flag: np.ndarray  # uint8
    count: np.ndarray  # int64

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    @classmethod
    def empty(cls) -> Transitions:
        return cls(np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0, np.int64),
                   np.empty(0, np.float64), np.empty(0, np.uint8), np.empty(0, np.int64))

    def canonical(self) -> Transitions:
        """Sorted by (time, series, rule): the order-independent form used to compare implementations."""
        o = np.lexsort((self.rule_id, self.series, self.ts_ns))
        return Transitions(*(getattr(self, f)[o] for f in self.__slots__))

    def same_as(self, other: Transitions) -> bool:
        """Identical rows (values bit-for-bit, NaN equal to NaN) once both are canonical."""
        a, b = self.canonical(), other.canonical()
        return all(np.array_equal(getattr(a, f), getattr(b, f), equal_nan=(f == "value")) for f in self.__slots__)

    def rows(self) -> list[tuple[int, int, TransitionKind, int, float, str, int]]:
        """(series, rule_id, kind, ts_ns, value, flag, count) tuples, for the lifecycle layer and tests."""
        return [(s, r, TransitionKind(k), t, v, chr(f) if f else "", c)
                for s, r, k, t, v, f, c in zip(self.series.tolist(), self.rule_id.tolist(), self.kind.tolist(),
                                               self.ts_ns.tolist(), self.value.tolist(), self.flag.tolist(),
                                               self.count.tolist())]


def flag_codes(flags: Sequence[str | None] | np.ndarray) -> np.ndarray:
    """uint8 flag codes for a sequence of flag strings (``None``/'' -> 0); code arrays pass through."""
    arr = flags if isinstance(flags, np.ndarray) else np.asarray(flags)
    if arr.dtype.kind in "iu":
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.dtype.kind == "U":  # vectorised: first character's code point, upper-cased
        points = np.ascontiguousarray(arr, dtype="U1").view(np.uint32)
        points = np.where((points >= 97) & (points <= 122), points - 32, points)
        return np.where(points < 256, points, 0).astype(np.uint8)
    return np.fromiter((flag_code(f) for f in arr.tolist()), dtype=np.uint8, count=arr.shape[0])


def _implementation(impl: str):
    if impl == "numba":
        return K.evaluate_batch, K.evaluate_timers
    from wulian.core.alarms import reference

    if impl == "numpy":
        return reference.evaluate_batch_numpy, reference.evaluate_timers_numpy
    if impl == "python":
        return reference.evaluate_batch_python, reference.evaluate_timers_python
    raise ValueError(f"unknown alarm implementation {impl!r}")


def _grown(arr: np.ndarray, n: int, fill) -> np.ndarray:
    """``arr`` if it holds ``n`` rows, else a copy with capacity doubled past ``n`` (new rows = fill)."""
    if arr.shape[0] >= n:
        return arr
    cap = max(n, 2 * arr.shape[0], 16)
    out = np.empty((cap,) + arr.shape[1:], arr.dtype)
    out[: arr.shape[0]] = arr
    out[arr.shape[0]:] = fill
    return out


class AlarmEngine:
    """Evaluates rules over series. ``impl`` selects the numba kernels (default) or a reference version.

    Not thread-safe: one caller at a time (the kernels release the GIL, so that caller may be an executor
    thread). The catalogue may be shared; series added to it directly are bound at the next call.
    """

    def __init__(self, rules: Sequence[Rule], catalogue: SeriesCatalogue | Iterable[SeriesKey] = (),
                 *, impl: str = "numba") -> None:
        self.catalogue = catalogue if isinstance(catalogue, SeriesCatalogue) else SeriesCatalogue(catalogue)
        self._evaluate_batch, self._evaluate_timers = _implementation(impl)
        self._set_table(rules)

    # -- structure -------------------------------------------------------------------------------------

    def _set_table(self, rules: Sequence[Rule]) -> None:
        self._table = compile_rules(rules)
        self._n_series = 0
        self._n_bindings = 0
        self._max_per_series = 1
        self._ptr = np.zeros(1, np.int64)
        self._seen = np.empty(0, np.int64)
        self._b_series = np.empty(0, np.int32)
        self._b_rule = np.empty(0, np.int32)
        self._bstate = np.empty((0, K.S_COLS), np.int64)
        self._bref = np.empty(0, np.float64)
        # Trend sums only when a trend rule is loaded: other rule sets pay no bytes per binding for them.
        acc_cols = K.A_COLS if any(r.kind is RuleKind.TREND for r in self._table.rules) else 0
        self._bacc = np.empty((0, acc_cols), np.float64)
        self._bind_new_series()

    def _bind_new_series(self) -> None:
        start, stop = self._n_series, len(self.catalogue)
        if stop <= start:
            return
        counts, b_rule = bind_series(self._table, self.catalogue, start, stop)
        b0, b1 = self._n_bindings, self._n_bindings + b_rule.shape[0]
        self._ptr = _grown(self._ptr, stop + 1, 0)
        self._ptr[start + 1: stop + 1] = self._ptr[start] + np.cumsum(counts)
        self._seen = _grown(self._seen, stop, K.NO_TS)
        self._seen[start:stop] = K.NO_TS
        self._b_series = _grown(self._b_series, b1, 0)
        self._b_series[b0:b1] = np.repeat(np.arange(start, stop, dtype=np.int32), counts)
        self._b_rule = _grown(self._b_rule, b1, 0)
        self._b_rule[b0:b1] = b_rule
        self._bstate = _grown(self._bstate, b1, K.NO_TS)
        self._bstate[b0:b1] = K.NO_TS
        self._bstate[b0:b1, K.S_COUNT] = 0
        self._bref = _grown(self._bref, b1, 0.0)
        self._bref[b0:b1] = 0.0
        self._bacc = _grown(self._bacc, b1, 0.0)
        self._bacc[b0:b1] = 0.0
        if counts.size:
            self._max_per_series = max(self._max_per_series, int(counts.max()))
        self._n_series, self._n_bindings = stop, b1

    @property
    def n_series(self) -> int:
        return self._n_series

    @property
    def n_bindings(self) -> int:
        return self._n_bindings

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The enabled rules, in table order."""
        return self._table.rules

    def add_series(self, keys: Iterable[SeriesKey]) -> np.ndarray:
        """Series indexes (int32) of ``keys``, adding and binding the new ones."""
        idx = self.catalogue.add_many(keys)
        self._bind_new_series()
        return idx

    def set_rules(self, rules: Sequence[Rule]) -> None:
        """Replace the rule set, keeping the state of every (series, rule id) that still binds.

        A rule whose kind changed starts afresh (its reference values would mean something else).
        """
        old_kind = {r.id: r.kind for r in self._table.rules}
        changed = {r.id for r in rules if r.id in old_kind and old_kind[r.id] != r.kind}
        state = self.state_arrays()
        keep = ~np.isin(state["binding_rule_id"], np.fromiter(changed, np.int64, len(changed)))
        for name in ("binding_series", "binding_rule_id", "ref_value", "trend_acc") + tuple(
                n for n, _ in _STATE_COLUMNS):
            state[name] = state[name][keep]
        self._set_table(rules)
        self.load_state(state)

    # -- evaluation ------------------------------------------------------------------------------------

    def update_many(self, series_idx, ts_ns, values, flags=None) -> Transitions:
        """Evaluate a batch (any order; each series is taken in time order) and return its transitions.

        ``flags``: uint8 codes or flag strings (``None`` = all normal). Series must be in the catalogue.
        """
        self._bind_new_series()
        series = np.asarray(series_idx)
        if series.shape[0] and (series.min() < 0 or series.max() >= self._n_series):
            raise IndexError("series index outside the catalogue; add_series first")
        series = np.ascontiguousarray(series, dtype=np.int32)
        ts = np.ascontiguousarray(ts_ns, dtype=np.int64)
        vals = np.ascontiguousarray(values, dtype=np.float64)
        codes = np.zeros(series.shape[0], np.uint8) if flags is None else flag_codes(flags)
        if not series.shape[0] == ts.shape[0] == vals.shape[0] == codes.shape[0]:
            raise ValueError("series_idx, ts_ns, values and flags must have the same length")
        if series.shape[0] == 0:
            return Transitions.empty()
        out = self._evaluate_batch(series, ts, vals, codes, self._ptr[: self._n_series + 1],
                                   self._b_rule[: self._n_bindings], self._table.rf, self._table.ri,
                                   self._seen[: self._n_series], self._bstate[: self._n_bindings],
                                   self._bref[: self._n_bindings], self._bacc[: self._n_bindings],
                                   self._max_per_series)
        return self._transitions(out)

    def update_one(self, series_idx: int, ts_ns: int, value: float, flag: str | None = None) -> Transitions:
        return self.update_many([series_idx], [ts_ns], [value], [flag])

    def tick(self, now_ns: int) -> Transitions:
        """Timer pass at event time ``now_ns``: missing-data raises and due keep-firing clears."""
        self._bind_new_series()
        out = self._evaluate_timers(np.int64(now_ns), self._b_series[: self._n_bindings],
                                    self._b_rule[: self._n_bindings], self._table.rf, self._table.ri,
                                    self._seen[: self._n_series], self._bstate[: self._n_bindings],
                                    self._bref[: self._n_bindings])
        return self._transitions(out)

    def _transitions(self, out) -> Transitions:
        """Kernel output (binding rows) as series/rule ids, in time order (stable: each alert's own
        transitions keep their order)."""
        b, kind, ts, value, flag, count = out
        o = np.argsort(ts, kind="stable")
        b = b[o]
        return Transitions(self._b_series[b], self._table.ids[self._b_rule[b]], kind[o], ts[o], value[o], flag[o],
                           count[o])

    def active(self) -> list[tuple[int, int]]:
        """(series, rule_id) of every firing binding, to reconcile with the open alerts after a restart."""
        a = np.nonzero(self._bstate[: self._n_bindings, K.S_COUNT] > 0)[0]
        return list(zip(self._b_series[a].tolist(), self._table.ids[self._b_rule[a]].tolist()))

    # -- persistence -----------------------------------------------------------------------------------

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Copies of the whole state as named 1-D arrays (``np.savez``-able); keyed by (series, rule id)."""
        nb, ns = self._n_bindings, self._n_series
        out = {
            "version": np.array([STATE_VERSION], np.int64),
            "seen_ts_ns": self._seen[:ns].copy(),
            "binding_series": self._b_series[:nb].copy(),
            "binding_rule_id": self._table.ids[self._b_rule[:nb]],
            "ref_value": self._bref[:nb].copy(),
            # [bindings, A_COLS] trend sums, or [bindings, 0] without trend rules; optional on load (older
            # snapshots lack it: trend rules then start from no points), so STATE_VERSION stays.
            "trend_acc": self._bacc[:nb].copy(),
        }
        for name, col in _STATE_COLUMNS:
            out[name] = self._bstate[:nb, col].copy()
        return out

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore ``state_arrays`` output. Series beyond the catalogue and rules no longer present are dropped;
        bindings without saved state keep their fresh state. Add the persisted catalogue first."""
        if int(np.asarray(state["version"])[0]) != STATE_VERSION:
            raise ValueError("unsupported alarm state version")
        self._bind_new_series()
        seen = np.asarray(state["seen_ts_ns"], np.int64)
        n = min(seen.shape[0], self._n_series)
        self._seen[:n] = seen[:n]
        self._load_bindings(state)

    def _load_bindings(self, state: dict[str, np.ndarray]) -> None:
        """Overwrite the state of the bindings named in ``state`` (by series and rule id); others unchanged."""
        n_rules = len(self._table)
        if n_rules == 0 or self._n_bindings == 0:
            return
        order = np.argsort(self._table.ids)
        sorted_ids = self._table.ids[order]
        s_series = np.asarray(state["binding_series"], np.int64)
        s_ids = np.asarray(state["binding_rule_id"], np.int64)
        pos = np.searchsorted(sorted_ids, s_ids).clip(0, n_rules - 1)
        known = (sorted_ids[pos] == s_ids) & (s_series < self._n_series)
        s_key = s_series * n_rules + order[pos]
        cur_key = self._b_series[: self._n_bindings].astype(np.int64) * n_rules + self._b_rule[: self._n_bindings]
        at = np.searchsorted(cur_key, s_key).clip(0, self._n_bindings - 1)
        hit = known & (cur_key[at] == s_key)
        dst = at[hit]
        self._bref[dst] = np.asarray(state["ref_value"], np.float64)[hit]
        acc = state.get("trend_acc")
        if acc is not None and acc.ndim == 2 and acc.shape[1] == self._bacc.shape[1] > 0:
            self._bacc[dst] = np.asarray(acc, np.float64)[hit]
        for name, col in _STATE_COLUMNS:
            self._bstate[dst, col] = np.asarray(state[name], np.int64)[hit]

    # -- pending journal (city mode: what changed since the last snapshot, see ingest.alarm_service) -------

    def watch(self, series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The bindings of ``series`` (distinct, bound) and a copy of their state rows, before an update."""
        return K.watch_bindings(np.ascontiguousarray(series, np.int64), self._ptr[: self._n_series + 1],
                                self._bstate[: self._n_bindings])

    def changed_since(self, watched: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
        """State rows of the watched bindings whose pending or keep-firing period (``since``), open/closed
        state or flatline run start changed since ``watch``, in the ``load_state`` layout plus the series'
        ``seen_ts_ns`` per row. Rate and trend references move with every reading: not included."""
        b, before = watched
        c = K.changed_bindings(b, before, self._bstate[: self._n_bindings], self._b_rule[: self._n_bindings],
                               self._table.ri)
        series = self._b_series[c]
        out = {"binding_series": series.astype(np.int64), "binding_rule_id": self._table.ids[self._b_rule[c]],
               "ref_value": self._bref[c], "seen_ts_ns": self._seen[series]}
        for name, col in _STATE_COLUMNS:
            out[name] = self._bstate[c, col]
        return out

    def apply_changes(self, rows: dict[str, np.ndarray]) -> None:
        """Put ``changed_since`` rows back (on top of an older snapshot): their bindings take the rows' state,
        their series' newest accepted time rises to the rows' ``seen_ts_ns``."""
        self._bind_new_series()
        series = np.asarray(rows["binding_series"], np.int64)
        if series.shape[0] == 0:
            return
        ok = series < self._n_series
        np.maximum.at(self._seen, series[ok], np.asarray(rows["seen_ts_ns"], np.int64)[ok])
        self._load_bindings(rows)

    # -- compilation -----------------------------------------------------------------------------------

    def warmup(self) -> None:
        """Compile (or load from cache) this engine's kernels on tiny arrays."""
        if self._evaluate_batch is K.evaluate_batch:
            warmup()


def warmup() -> None:
    """Compile the numba alarm kernels with the exact argument types the engine passes."""
    rules = [Rule(1, "hi", RuleKind.UPPER, threshold=1.0), Rule(2, "gone", RuleKind.MISSING_DATA, duration_s=1.0),
             Rule(3, "rising", RuleKind.TREND, high=9.0, horizon_s=60.0)]
    for rs in (rules, rules[:2]):  # with and without trend sums (their array's shape differs)
        eng = AlarmEngine(rs, [SeriesKey("air", "d", "m")])
        watched = eng.watch(np.array([0]))
        eng.update_many([0, 0], [2, 1], [2.0, 0.0], np.array([78, 78], np.uint8))
        eng.changed_since(watched)
        eng.tick(5_000_000_000)
