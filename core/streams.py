"""Streams as data: what a stream carries (metrics with units and plausible ranges), which device types it
accepts, its default alarm rules and its dashboard. The seven built-in streams (``const.Stream``) keep
their own tables and jobs; any other stream is scalar (``readings``) and needs no code: a row in the
``streams`` table (core/sql/0140_streams.sql), created through ``/v1/streams`` or ``wulian stream add``.

A registry is an immutable snapshot; ingest keeps the current one and swaps it when the table changes
(NOTIFY on ``STREAMS_CHANNEL``), so checking a reading is a dict lookup, never a database call.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from wulian.core.alarms.rules import Rule, RuleError
from wulian.core.const import ALERTS_SEGMENT, METRIC_PATTERN, SCALAR_STREAMS, STREAM_PATTERN, Stream

STREAMS_CHANNEL = "wulian_streams"  # NOTIFY channel: a stream row changed (payload: its name)
OUT_OF_RANGE = "out_of_range"  # dead-letter reason of a value outside its metric's plausible range
_STREAM_RE = re.compile(STREAM_PATTERN)
_METRIC_RE = re.compile(METRIC_PATTERN)
_RESERVED = frozenset({ALERTS_SEGMENT})  # topic segment of published alerts ({prefix}/{region}/alerts/...)


class StreamError(ValueError):
    """A stream definition that cannot be used; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class MetricDef:
    unit: str | None = None
    min: float | None = None  # plausible range: a value outside it is a device or wiring fault
    max: float | None = None
    description: str | None = None

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> "MetricDef":
        if not isinstance(d, dict):
            raise StreamError(f"metric {name!r}: an object with unit/min/max/description")
        extra = set(d) - {"unit", "min", "max", "description"}
        if extra:
            raise StreamError(f"metric {name!r}: unknown fields {sorted(extra)}")
        lo, hi = d.get("min"), d.get("max")
        for what, v in (("min", lo), ("max", hi)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise StreamError(f"metric {name!r}: {what} must be a finite number")
        if lo is not None and hi is not None and lo > hi:
            raise StreamError(f"metric {name!r}: min {lo} > max {hi}")
        return cls(d.get("unit"), None if lo is None else float(lo), None if hi is None else float(hi),
                   d.get("description"))

    def to_dict(self) -> dict:
        return {k: v for k, v in (("unit", self.unit), ("min", self.min), ("max", self.max),
                                  ("description", self.description)) if v is not None}


@dataclass(frozen=True, slots=True)
class StreamDef:
    name: str
    title: str | None = None
    builtin: bool = False
    scalar: bool = True  # readings-table stream (every non-built-in stream is)
    metrics: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))  # name -> MetricDef
    device_types: tuple[str, ...] = ()  # empty: any
    default_rules: tuple[dict, ...] = ()  # rule definitions (core.alarms.rules), scoped to this stream
    dashboard: dict | None = None  # {"title", "panels": [{"metric", "title"?}]}; None: one panel per metric

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, builtin: bool = False) -> "StreamDef":
        if not isinstance(d, dict):
            raise StreamError("a stream is an object")
        extra = set(d) - {"name", "title", "metrics", "device_types", "default_rules", "dashboard", "builtin",
                          "scalar"}
        if extra:
            raise StreamError(f"unknown fields {sorted(extra)}")
        name = d.get("name")
        if not isinstance(name, str) or not _STREAM_RE.match(name) or name in _RESERVED:
            raise StreamError(f"name must match {STREAM_PATTERN} and not be 'alerts'")
        if not builtin and name in {s.value for s in Stream}:
            raise StreamError(f"{name!r} is a built-in stream")
        metrics = d.get("metrics") or {}
        if not isinstance(metrics, dict):
            raise StreamError("metrics: an object {name: {unit, min, max}}")
        for m in metrics:
            if not _METRIC_RE.match(m):
                raise StreamError(f"metric name {m!r} must match {METRIC_PATTERN}")
        types = d.get("device_types") or []
        if not isinstance(types, list) or not all(isinstance(t, str) and t for t in types):
            raise StreamError("device_types: a list of names")
        rules = d.get("default_rules") or []
        if not isinstance(rules, list):
            raise StreamError("default_rules: a list of rule definitions")
        checked = []
        for i, r in enumerate(rules):
            if not isinstance(r, dict):
                raise StreamError(f"default_rules[{i}]: a rule object")
            if r.get("stream", name) != name:
                raise StreamError(f"default_rules[{i}]: scoped to another stream")
            r = {**r, "stream": name}
            try:
                Rule.from_dict({**r, "id": 1})
            except (RuleError, TypeError, ValueError) as exc:
                raise StreamError(f"default_rules[{i}]: {exc}") from None
            checked.append(r)
        dash = d.get("dashboard")
        if dash is not None:
            panels = dash.get("panels") if isinstance(dash, dict) else None
            if not isinstance(panels, list) or not all(isinstance(p, dict) and p.get("metric") in metrics
                                                       for p in panels):
                raise StreamError("dashboard: {'title', 'panels': [{'metric': <one of metrics>}]}")
        return cls(name, d.get("title"), builtin, bool(d.get("scalar", True)) if builtin else True,
                   MappingProxyType({m: MetricDef.from_dict(m, v) for m, v in metrics.items()}),
                   tuple(types), tuple(checked), dash)

    def to_dict(self) -> dict:
        return {"name": self.name, "title": self.title, "builtin": self.builtin, "scalar": self.scalar,
                "metrics": {m: v.to_dict() for m, v in self.metrics.items()},
                "device_types": list(self.device_types), "default_rules": list(self.default_rules),
                "dashboard": self.dashboard}


BUILTIN_STREAMS: tuple[StreamDef, ...] = tuple(
    StreamDef(s.value, builtin=True, scalar=s in SCALAR_STREAMS) for s in Stream)


@dataclass(frozen=True)
class StreamRegistry:
    """One snapshot of every stream; lookups only."""

    streams: MappingProxyType  # name -> StreamDef

    @classmethod
    def of(cls, defs) -> "StreamRegistry":
        merged = {d.name: d for d in BUILTIN_STREAMS}
        merged.update({d.name: d for d in defs})
        return cls(MappingProxyType(merged))

    def __post_init__(self) -> None:
        object.__setattr__(self, "scalar", frozenset(n for n, d in self.streams.items() if d.scalar))
        # name -> {metric: (lo, hi)} only for streams with at least one bounded metric (None: nothing to check)
        ranges = {}
        for n, d in self.streams.items():
            r = {m: (-math.inf if v.min is None else v.min, math.inf if v.max is None else v.max)
                 for m, v in d.metrics.items() if v.min is not None or v.max is not None}
            if r:
                ranges[n] = r
        object.__setattr__(self, "ranges", MappingProxyType(ranges))

    def __contains__(self, name: object) -> bool:
        return name in self.streams

    def names(self) -> list[str]:
        return sorted(self.streams)

    def key(self, name: str) -> str:
        """The topic's stream as code compares it: the enum member for a built-in stream, else the name."""
        return Stream(name) if self.streams[name].builtin else name


BUILTIN_REGISTRY = StreamRegistry.of(())
