"""The one table of codecs: topic kind -> the codec's ``decode_payload`` (``contract.DecodeFn``).

Every decode of a message's payload goes through :func:`decode_message` (the ingest pipeline, the fuzz
harness); the size limit and the time policy are applied here, once, for every kind.

The field-protocol codecs are imported on first use of their kind: HJ 212 and JT/T 808 load the
compiled checksums (numba), which costs about a second at import, so a deployment that only takes JSON,
and ``wulian decode dlt645``, do not pay it. The imports are plain ``from ... import`` statements in
the loaders below (no module names as strings).
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Callable

from wulian.core.const import Kind, Stream
from wulian.core.model import Decoded
from wulian.ingest.codecs import telemetry
from wulian.ingest.codecs.contract import DecodeFn, PayloadLimits, check_size, check_times
from wulian.core.streams import OUT_OF_RANGE
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.stream_registry import current

__all__ = ["CODECS", "DecodeFn", "PayloadLimits", "decode_message", "decoder"]


def _hj212() -> DecodeFn:
    from wulian.ingest.codecs import hj212
    return hj212.decode_payload


def _jt808() -> DecodeFn:
    from wulian.ingest.codecs import jt808
    return jt808.decode_payload


def _dlt645() -> DecodeFn:
    from wulian.ingest.codecs import dlt645
    return dlt645.decode_payload


def _cjt188() -> DecodeFn:
    from wulian.ingest.codecs import cjt188
    return cjt188.decode_payload


# kind -> loader of its codec's entry point; every Kind has one (tests/test_payload.py checks).
CODECS: MappingProxyType[Kind, Callable[[], DecodeFn]] = MappingProxyType({
    Kind.TELEMETRY: lambda: telemetry.decode_payload,
    Kind.HJ212: _hj212,
    Kind.JT808: _jt808,
    Kind.DLT645: _dlt645,
    Kind.CJT188: _cjt188,
})
_loaded: dict[Kind, DecodeFn] = {Kind.TELEMETRY: telemetry.decode_payload}


def decoder(kind: Kind) -> DecodeFn:
    """The entry point of ``kind``'s codec (imported on first use)."""
    fn = _loaded.get(kind)
    if fn is None:
        load = CODECS.get(kind)
        if load is None:
            raise CodecError("unsupported_kind", f"no codec for {kind}")
        fn = _loaded[kind] = load()
    return fn


def decode_message(stream: Stream | str, kind: Kind, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """Decode and apply the time policy; raises CodecError (the message goes to dead letters)."""
    check_size(payload, limits)
    fn = _loaded.get(kind) or decoder(kind)
    decoded = fn(stream, payload, now_ns, limits)
    check_times(decoded, now_ns, limits)
    ranges = current().ranges.get(stream)
    if ranges is not None and decoded.readings:
        check_ranges(decoded, ranges)
    return decoded


def check_ranges(decoded: Decoded, ranges) -> None:
    """The registry's plausible range per metric (a dict lookup a reading, whatever the codec): a value
    outside it refuses the message, dead-lettered ``out_of_range``; the batch's other messages are written."""
    for r in decoded.readings:
        lim = ranges.get(r.metric)
        if lim is not None and not (lim[0] <= r.value <= lim[1]):
            raise CodecError(OUT_OF_RANGE, f"{r.metric}={r.value:g} outside [{lim[0]:g}, {lim[1]:g}]")
