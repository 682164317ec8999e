"""Wulian JSON telemetry (topic kind ``telemetry``) -> ``core.model.Decoded`` (README: payload specification).

One message carries one record or a batch (``{"batch": [...]}`` or a JSON array). A message is
accepted or refused whole: any invalid record refuses the message, which then goes to dead letters
with the reason, so a device never has half a message stored.
"""
from __future__ import annotations

import math
import re
from datetime import datetime, timezone

import orjson

from wulian.core.const import DATA_FLAGS, FLAG_NORMAL, METRIC_PATTERN, Kind, Stream
from wulian.core.model import Decoded, Position, Reading, ScalarRecord, TrafficObservation
from wulian.ingest.codecs.contract import PayloadLimits, check_size
from wulian.ingest.codecs.errors import BAD_TOPIC, UNKNOWN_STREAM, CodecError
from wulian.ingest.stream_registry import current

KIND = Kind.TELEMETRY

_METRIC_RE = re.compile(METRIC_PATTERN)
_valid_metrics: set[str] = set()  # names already checked against METRIC_PATTERN (names repeat)
_NUMBER_TYPES = frozenset((float, int))  # bool is its own type: refused, as by _scalar
_NS = 1_000_000_000


def parse_ts(raw: object) -> int:
    """Epoch milliseconds (number) or ISO 8601 with offset (string, naive means UTC) -> epoch ns."""
    if isinstance(raw, bool):
        raise CodecError("bad_ts", "boolean timestamp")
    if isinstance(raw, int):
        return raw * 1_000_000
    if isinstance(raw, float):
        ns = raw * 1_000_000
        if not math.isfinite(ns):  # 1e303 ms is finite, its ns are not (found by wulian fuzz)
            raise CodecError("bad_ts", "non-finite timestamp")
        return int(round(ns))
    if isinstance(raw, str):
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError as exc:
            raise CodecError("bad_ts", str(exc)[:100]) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        delta = dt - datetime(1970, 1, 1, tzinfo=timezone.utc)
        return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000
    raise CodecError("bad_ts", "missing or non-numeric ts")


def _number(raw: object, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise CodecError("bad_value", f"{what} is not a number")
    v = float(raw)
    if not math.isfinite(v):
        raise CodecError("bad_value", f"{what} is not finite")
    return v


def _opt_number(rec: dict, key: str) -> float | None:
    raw = rec.get(key)
    return None if raw is None else _number(raw, key)


def _flag(raw: object) -> str:
    if raw is None:
        return FLAG_NORMAL
    if not isinstance(raw, str) or raw not in DATA_FLAGS:
        raise CodecError("bad_flag", "unknown data flag")
    return raw


def _scalar(rec: dict, out: list[Reading]) -> None:
    ts = parse_ts(rec.get("ts"))
    values = rec.get("values")
    if not isinstance(values, dict) or not values:
        raise CodecError("bad_values", "'values' must be a non-empty object")
    default_flag = _flag(rec.get("flag"))
    append = out.append
    for name, raw in values.items():
        if name not in _valid_metrics:
            if not _METRIC_RE.match(name):
                raise CodecError("bad_metric", "invalid metric name")
            if len(_valid_metrics) < 100_000:
                _valid_metrics.add(name)
        t = type(raw)
        if t is float:  # orjson never yields NaN/Infinity (not JSON), so a float here is finite
            append(Reading(ts, name, raw, default_flag))
        elif t is int:
            append(Reading(ts, name, float(raw), default_flag))
        elif isinstance(raw, dict):
            append(Reading(ts, name, _number(raw.get("value"), name), _flag(raw.get("flag", default_flag))))
        else:
            raise CodecError("bad_value", f"{name} is not a number")


def _position(rec: dict, out: list[Position]) -> None:
    ts = parse_ts(rec.get("ts"))
    lat = _number(rec.get("lat"), "lat")
    lon = _number(rec.get("lon"), "lon")
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        raise CodecError("bad_position", "lat/lon out of range")
    alarm, status = rec.get("alarm", 0), rec.get("status", 0)
    if not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32 for x in (alarm, status)):
        raise CodecError("bad_value", "alarm/status must be 32-bit unsigned integers")
    out.append(
        Position(
            ts_ns=ts, lat=lat, lon=lon,
            speed_kmh=_opt_number(rec, "speed") or 0.0,
            heading=_opt_number(rec, "heading") or 0.0,
            altitude_m=_opt_number(rec, "altitude") or 0.0,
            alarm_bits=alarm, status_bits=status,
            mileage_km=_opt_number(rec, "mileage"),
        )
    )


def _traffic(rec: dict, out: list[TrafficObservation]) -> None:
    ts = parse_ts(rec.get("ts"))
    speed = _number(rec.get("speed"), "speed")
    if speed < 0:
        raise CodecError("bad_value", "negative speed")
    out.append(TrafficObservation(ts, speed, _opt_number(rec, "flow"), _opt_number(rec, "occupancy")))


def decode_telemetry(stream: Stream, payload: bytes, limits: PayloadLimits = PayloadLimits()) -> Decoded:
    """Decode one message of kind ``telemetry``; raises CodecError with a stable reason."""
    check_size(payload, limits)
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CodecError("bad_json", str(exc)[:200]) from None
    if isinstance(doc, dict) and "batch" in doc:
        doc = doc["batch"]
    records = doc if isinstance(doc, list) else [doc]
    if not records:
        raise CodecError("empty", "no records")
    if len(records) > limits.max_records:
        raise CodecError("too_large", f"{len(records)} records > {limits.max_records}")
    out = Decoded()
    if stream in current().scalar:  # the built-in scalar streams and every registry stream
        handle, sink = _scalar, out.readings
    elif stream is Stream.VEHICLE:
        handle, sink = _position, out.positions
    elif stream is Stream.TRAFFIC:
        handle, sink = _traffic, out.traffic
    else:
        raise CodecError(BAD_TOPIC, UNKNOWN_STREAM)
    for rec in records:
        if not isinstance(rec, dict):
            raise CodecError("bad_record", "record is not an object")
        handle(rec, sink)
    return out


def decode_payload(stream: Stream, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """The codec entry point (``contract.DecodeFn``): records carry their own times."""
    return decode_telemetry(stream, payload, limits)


def decode_scalar_fast(payload: bytes, now_ns: int, limits: PayloadLimits, ranges) -> Decoded | None:
    """The common message of a scalar stream, one record ``{"ts": <epoch ms>, "values": {name: number}}``
    (``"flag"`` optional), that passes every check of ``registry.decode_message``: decoded without a
    ``Reading`` per value (a ``ScalarRecord``). Anything else (batches, ISO times, per-value flags, a
    metric name not validated yet) and anything refused gives None: the caller then runs
    ``decode_message``, the reference, which decodes it or says why not. ``ranges``: the stream's
    plausible ranges (``StreamRegistry.ranges``), or None. The caller checked kind and stream."""
    if len(payload) > limits.max_bytes or limits.max_records < 1:
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or "batch" in doc:
        return None
    ts, values = doc.get("ts"), doc.get("values")
    if type(ts) is not int or type(values) is not dict or not values:
        return None
    flag = doc.get("flag")
    if flag is None:
        flag = FLAG_NORMAL
    elif type(flag) is not str or flag not in DATA_FLAGS:
        return None
    names = list(values)
    if not _valid_metrics.issuperset(names):
        return None
    vals = list(values.values())
    if not _NUMBER_TYPES.issuperset(map(type, vals)):  # a float from orjson is finite (JSON has no NaN)
        return None
    ts_ns = ts * 1_000_000
    if not now_ns - limits.past_limit_ns <= ts_ns <= now_ns + limits.future_tolerance_ns:
        return None
    if ranges:
        for name in values.keys() & ranges.keys():
            lo, hi = ranges[name]
            if not lo <= float(values[name]) <= hi:
                return None
    return Decoded(ScalarRecord(ts_ns, names, vals, flag), (), (), ())  # nothing else: shared empty tuples
