"""Alarm rules as data: what to watch, where it applies, how loud it is, and how it settles.

A rule is scoped by stream, device type, device and metric; a scope field left ``None`` matches all. Rules
are plain frozen records, validated on construction, and round-trip through ``to_dict``/``from_dict`` for JSON
storage (the ``rules`` table and ``/v1/rules``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import IntEnum, StrEnum
from typing import Any

from wulian.core.const import INVALID_FLAGS
from wulian.core.kernels import alarm_kernels as K


class RuleKind(StrEnum):
    UPPER = "upper"  # value > threshold
    LOWER = "lower"  # value < threshold
    RANGE = "range"  # value < low or value > high
    RATE_OF_CHANGE = "rate_of_change"  # |change| per minute > threshold, against the previous valid reading
    FLATLINE = "flatline"  # value unchanged (within tolerance) for >= duration_s
    MISSING_DATA = "missing_data"  # no reading for >= duration_s (evaluated by the timer)
    DATA_FLAG = "data_flag"  # reading flagged with one of ``flags`` (HJ 212 D/F/B ...): device fault
    BIT = "bit"  # bit ``bit`` of a status word is set (JT/T 808 alarm flags)
    TREND = "trend"  # at the recent slope the value reaches ``high`` (or ``low``) within ``horizon_s``

    @property
    def code(self) -> int:
        return _KIND_CODES[self]


_KIND_CODES = {
    RuleKind.UPPER: K.UPPER,
    RuleKind.LOWER: K.LOWER,
    RuleKind.RANGE: K.RANGE,
    RuleKind.RATE_OF_CHANGE: K.RATE,
    RuleKind.FLATLINE: K.FLATLINE,
    RuleKind.MISSING_DATA: K.MISSING,
    RuleKind.DATA_FLAG: K.FLAG,
    RuleKind.BIT: K.BIT,
    RuleKind.TREND: K.TREND,
}

# Kinds that compare the reading's value and so skip flagged (invalid) data and NaN.
VALUE_KINDS = frozenset({RuleKind.UPPER, RuleKind.LOWER, RuleKind.RANGE, RuleKind.RATE_OF_CHANGE, RuleKind.FLATLINE,
                         RuleKind.TREND})


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"


class TransitionKind(IntEnum):
    RAISE = K.RAISE
    UPDATE = K.UPDATE  # a repeated trigger of an open alert: last value, last seen, count
    CLEAR = K.CLEAR


class RuleError(ValueError):
    """A rule that cannot be evaluated; the message says which field and why."""


def flag_code(flag: str | None) -> int:
    """The uint8 code the kernels take for a data flag: its ASCII code, letters upper-cased (devices send
    ``d`` for ``D``); 0 for none or a character beyond Latin-1."""
    if not flag:
        return 0
    code = ord(flag[0])
    if 97 <= code <= 122:
        code -= 32
    return code if code < 256 else 0


def flag_mask(flags: frozenset[str] | set[str]) -> int:
    """Bit mask of flags (bit ``code - 48``, so digits and capitals fit in 63 bits)."""
    mask = 0
    for f in flags:
        code = flag_code(f)
        if not 48 <= code < 111:
            raise RuleError(f"flag {f!r} is not a digit or letter")
        mask |= 1 << (code - 48)
    return mask


def _norm_flags(flags: Any) -> frozenset[str]:
    if isinstance(flags, str):
        flags = list(flags)
    return frozenset(str(f).upper() for f in flags)


@dataclass(frozen=True, slots=True)
class Rule:
    """One alarm rule. Thresholds are in the metric's unit (rate: per minute); times in seconds.

    ``clear_threshold`` (and ``clear_low``/``clear_high`` for ranges) give hysteresis: an open alert clears
    only once the value is back past it; they default to the raise thresholds. ``pending_s``: the condition
    must hold that long before the alert is raised. ``keep_firing_s``: once the clear condition is met, the
    alert keeps firing that long and clears only if every reading meanwhile was clear too (a due clear is
    released by the timer even if no reading follows).

    ``trend`` warns *before* a limit is reached: a line fitted to the readings of about the last
    ``window_s`` seconds (exponential weights, see ``core.kernels.alarm_kernels``) reaches ``high`` (rising)
    or ``low`` (falling) within ``horizon_s``; it needs ``min_points`` readings with no gap longer than
    ``window_s`` between them, so one noisy pair cannot raise it. Either limit may be left out.
    """

    id: int
    name: str
    kind: RuleKind
    severity: Severity = Severity.MAJOR
    stream: str | None = None
    device_type: str | None = None
    device_id: str | None = None
    metric: str | None = None
    threshold: float | None = None  # upper, lower, rate_of_change
    clear_threshold: float | None = None
    low: float | None = None  # range, trend
    high: float | None = None
    clear_low: float | None = None
    clear_high: float | None = None
    duration_s: float = 0.0  # flatline, missing_data
    tolerance: float = 0.0  # flatline
    horizon_s: float = 0.0  # trend: warn when the limit is at most this far ahead
    window_s: float = 600.0  # trend: the slope is that of about the last window_s seconds
    min_points: float = 5.0  # trend: readings needed before the slope is trusted
    pending_s: float = 0.0
    keep_firing_s: float = 0.0
    flags: frozenset[str] = frozenset()  # data_flag
    bit: int | None = None  # bit
    bit_name: str | None = None
    # Value kinds ignore readings with these flags (HJ 212 maintenance, calibration, fault ...).
    exclude_flags: frozenset[str] = field(default=INVALID_FLAGS)
    enabled: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        try:
            set_(self, "kind", RuleKind(self.kind))
            set_(self, "severity", Severity(self.severity))
        except ValueError as exc:
            raise RuleError(str(exc)) from None
        set_(self, "flags", _norm_flags(self.flags))
        set_(self, "exclude_flags", _norm_flags(self.exclude_flags))
        if not isinstance(self.id, int) or isinstance(self.id, bool) or not 0 <= self.id < 2**62:
            raise RuleError("id must be a non-negative integer")
        if not self.name:
            raise RuleError("name is required")
        for name in ("duration_s", "tolerance", "pending_s", "keep_firing_s", "horizon_s", "window_s", "min_points"):
            x = getattr(self, name)
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x >= 0):
                raise RuleError(f"{name} must be a finite number >= 0")
        for name in ("threshold", "clear_threshold", "low", "high", "clear_low", "clear_high"):
            x = getattr(self, name)
            if x is not None and not (isinstance(x, (int, float)) and math.isfinite(x)):
                raise RuleError(f"{name} must be a finite number")
        flag_mask(self.flags)
        flag_mask(self.exclude_flags)
        self._check_kind()

    def _check_kind(self) -> None:
        k = self.kind
        if k in (RuleKind.UPPER, RuleKind.LOWER, RuleKind.RATE_OF_CHANGE):
            if self.threshold is None:
                raise RuleError(f"{k} rule needs threshold")
            if k is RuleKind.RATE_OF_CHANGE and self.threshold < 0:
                raise RuleError("rate_of_change threshold is an absolute change per minute, >= 0")
            c = self.clear_value
            if (k is RuleKind.LOWER and c < self.threshold) or (k is not RuleKind.LOWER and c > self.threshold):
                raise RuleError("clear_threshold must lie on the normal side of threshold")
        elif k is RuleKind.RANGE:
            if self.low is None or self.high is None or self.low > self.high:
                raise RuleError("range rule needs low <= high")
            lo, hi = self.clear_band
            if not self.low <= lo <= hi <= self.high:
                raise RuleError("range needs low <= clear_low <= clear_high <= high")
        elif k in (RuleKind.FLATLINE, RuleKind.MISSING_DATA):
            if self.duration_s <= 0:
                raise RuleError(f"{k} rule needs duration_s > 0")
        elif k is RuleKind.DATA_FLAG:
            if not self.flags:
                raise RuleError("data_flag rule needs flags")
        elif k is RuleKind.TREND:
            if self.low is None and self.high is None:
                raise RuleError("trend rule needs high (rising limit) or low (falling limit)")
            if self.low is not None and self.high is not None and self.low >= self.high:
                raise RuleError("trend rule needs low < high")
            if self.horizon_s <= 0 or self.window_s <= 0:
                raise RuleError("trend rule needs horizon_s > 0 and window_s > 0")
            if self.min_points < 2:
                raise RuleError("trend rule needs min_points >= 2 (a slope takes two readings)")
        elif k is RuleKind.BIT:
            if not isinstance(self.bit, int) or not 0 <= self.bit <= 62:
                raise RuleError("bit rule needs bit in 0..62")

    @property
    def clear_value(self) -> float:
        """Clear threshold of a single-limit rule (defaults to the raise threshold)."""
        return self.threshold if self.clear_threshold is None else self.clear_threshold

    @property
    def clear_band(self) -> tuple[float, float]:
        """(clear_low, clear_high) of a range rule (default to low/high)."""
        lo = self.low if self.clear_low is None else self.clear_low
        hi = self.high if self.clear_high is None else self.clear_high
        return lo, hi

    def matches(self, stream: str | None, device_type: str | None, device_id: str | None, metric: str | None) -> bool:
        """Whether the rule's scope covers a series (a ``None`` scope field matches anything)."""
        return (
            (self.stream is None or self.stream == stream)
            and (self.device_type is None or self.device_type == device_type)
            and (self.device_id is None or self.device_id == device_id)
            and (self.metric is None or self.metric == metric)
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (flag sets as sorted strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            x = getattr(self, f.name)
            if isinstance(x, frozenset):
                x = "".join(sorted(x))
            elif isinstance(x, StrEnum):
                x = x.value
            out[f.name] = x
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rule:
        """Inverse of ``to_dict``; unknown keys are an error so typos do not pass silently."""
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise RuleError(f"unknown rule fields: {sorted(extra)}")
        return cls(**d)
