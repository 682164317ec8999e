"""Rules and a series catalogue compiled into the dense arrays the alarm kernels loop over.

The catalogue gives every series (stream, device type, device, metric) a dense int32 index. Compiling
produces a small rule table (one row of parameters per enabled rule) and *bindings*: for each series, in
index order, the rules whose scope covers it, so the kernels reach a series' bindings through
``series_ptr[s]:series_ptr[s + 1]`` without any Python in the loop.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from wulian.core.alarms.rules import Rule, RuleError, RuleKind, VALUE_KINDS, flag_mask
from wulian.core.kernels import alarm_kernels as K

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """Identity of one series: a metric of a device. ``device_type`` may be unknown (None)."""

    stream: str
    device_id: str
    metric: str
    device_type: str | None = None


class SeriesCatalogue:
    """Series index <-> key, plus per-column integer codes so rule scopes match with numpy, not loops.

    Indexes are assigned in order of first appearance and never change; persist the catalogue (keys in
    index order) together with the engine state.
    """

    _COLUMNS = ("stream", "device_type", "device_id", "metric")

    def __init__(self, keys: Iterable[SeriesKey] = ()) -> None:
        self._keys: list[SeriesKey] = []
        self._index: dict[SeriesKey, int] = {}
        self._vocab: dict[str, dict[str | None, int]] = {c: {} for c in self._COLUMNS}
        self._codes: dict[str, list[int]] = {c: [] for c in self._COLUMNS}
        self.add_many(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def add_many(self, keys: Iterable[SeriesKey]) -> np.ndarray:
        """Index of each key (int32), adding the ones not seen before at the end."""
        out = []
        index, vocab, codes = self._index, self._vocab, self._codes
        for key in keys:
            i = index.get(key)
            if i is None:
                i = len(self._keys)
                index[key] = i
                self._keys.append(key)
                for col in self._COLUMNS:
                    v = vocab[col]
                    value = getattr(key, col)
                    code = v.get(value)
                    if code is None:
                        code = v[value] = len(v)
                    codes[col].append(code)
            out.append(i)
        return np.asarray(out, dtype=np.int32)

    def index(self, key: SeriesKey) -> int | None:
        return self._index.get(key)

    def key(self, i: int) -> SeriesKey:
        return self._keys[i]

    def keys(self) -> list[SeriesKey]:
        """All keys in index order (what to persist)."""
        return list(self._keys)

    def column_codes(self, column: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return np.asarray(self._codes[column][start:stop], dtype=np.int64)

    def code_of(self, column: str, value: str | None) -> int:
        """Code of a value in a column, -1 if no series has it."""
        return self._vocab[column].get(value, -1)


@dataclass(frozen=True, slots=True, eq=False)
class RuleTable:
    """Enabled rules as parameter rows; row ``r`` is ``rules[r]`` (``ids[r]`` its id)."""

    rules: tuple[Rule, ...]
    ids: np.ndarray  # int64 [R]
    rf: np.ndarray  # float64 [R, K.RF_COLS]
    ri: np.ndarray  # int64 [R, K.RI_COLS]

    def __len__(self) -> int:
        return len(self.rules)


def compile_rules(rules: Sequence[Rule]) -> RuleTable:
    """The parameter table of the enabled rules; ids must be unique."""
    live = tuple(r for r in rules if r.enabled)
    ids = [r.id for r in live]
    if len(set(ids)) != len(ids):
        raise RuleError("rule ids must be unique")
    rf = np.zeros((len(live), K.RF_COLS), np.float64)
    ri = np.zeros((len(live), K.RI_COLS), np.int64)
    for row, rule in enumerate(live):
        kind = rule.kind
        if kind is RuleKind.UPPER or kind is RuleKind.RATE_OF_CHANGE:
            rf[row, K.RF_HI] = rule.threshold
            rf[row, K.RF_CLEAR_HI] = rule.clear_value
        elif kind is RuleKind.LOWER:
            rf[row, K.RF_LO] = rule.threshold
            rf[row, K.RF_CLEAR_LO] = rule.clear_value
        elif kind is RuleKind.RANGE:
            rf[row, K.RF_LO] = rule.low
            rf[row, K.RF_HI] = rule.high
            rf[row, K.RF_CLEAR_LO], rf[row, K.RF_CLEAR_HI] = rule.clear_band
        elif kind is RuleKind.TREND:
            rf[row, K.RF_LO] = -np.inf if rule.low is None else rule.low
            rf[row, K.RF_HI] = np.inf if rule.high is None else rule.high
            rf[row, K.RF_HORIZON] = rule.horizon_s
            rf[row, K.RF_WINDOW] = rule.window_s
            rf[row, K.RF_MIN_N] = rule.min_points
        rf[row, K.RF_TOL] = rule.tolerance
        ri[row, K.RI_KIND] = kind.code
        ri[row, K.RI_PENDING] = round(rule.pending_s * _NS)
        ri[row, K.RI_KEEP] = round(rule.keep_firing_s * _NS)
        ri[row, K.RI_DURATION] = round(rule.duration_s * _NS)
        ri[row, K.RI_FLAGS] = flag_mask(rule.flags)
        ri[row, K.RI_EXCLUDE] = flag_mask(rule.exclude_flags) if kind in VALUE_KINDS else 0
        ri[row, K.RI_BIT] = rule.bit or 0
    return RuleTable(live, np.asarray(ids, dtype=np.int64), rf, ri)


def bind_series(table: RuleTable, catalogue: SeriesCatalogue, start: int = 0, stop: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """Bindings of series ``start:stop``: (bindings per series int64, rule row of each binding int32).

    Bindings come series by series, rules in table order, so appending a later range keeps the grouping.
    """
    stop = len(catalogue) if stop is None else stop
    n = max(stop - start, 0)
    match = np.ones((n, len(table)), dtype=bool)
    for col in SeriesCatalogue._COLUMNS:
        codes = catalogue.column_codes(col, start, stop)
        for r, rule in enumerate(table.rules):
            want = getattr(rule, col)
            if want is not None:
                match[:, r] &= codes == catalogue.code_of(col, want)
    counts = match.sum(axis=1, dtype=np.int64)
    b_rule = np.nonzero(match)[1].astype(np.int32)
    return counts, b_rule
