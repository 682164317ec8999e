"""Topic kind -> decoder of one message's payload into ``core.model.Decoded``.

Field-protocol codecs are imported lazily, so a deployment that only takes JSON does not pay for them.
"""
from __future__ import annotations

import importlib
from typing import Callable

from wulian.core.const import Kind, Stream
from wulian.core.model import Decoded
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.payload import PayloadLimits, check_times, decode_telemetry

# kind -> "module" exposing decode(bytes) and to_decoded(message[, received_ns])
_BINARY = {
    Kind.HJ212: "wulian.ingest.codecs.hj212",
    Kind.JT808: "wulian.ingest.codecs.jt808",
    Kind.DLT645: "wulian.ingest.codecs.dlt645",
    Kind.CJT188: "wulian.ingest.codecs.cjt188",
}
# Meter frames carry no (reliable) time of their own: their readings are stamped with the receive time.
_RECEIVE_TIMED = frozenset({Kind.DLT645, Kind.CJT188})
_cache: dict[Kind, Callable[[bytes, int], Decoded]] = {}


def _binary_decoder(kind: Kind) -> Callable[[bytes, int], Decoded]:
    fn = _cache.get(kind)
    if fn is None:
        try:
            mod = importlib.import_module(_BINARY[kind])
        except ImportError:
            raise CodecError("unsupported_kind", f"no codec for {kind.value}") from None

        if kind in _RECEIVE_TIMED:
            def fn(payload: bytes, now_ns: int, _m=mod) -> Decoded:
                return _m.to_decoded(_m.decode(payload), now_ns)
        else:
            def fn(payload: bytes, now_ns: int, _m=mod) -> Decoded:
                return _m.to_decoded(_m.decode(payload))

        _cache[kind] = fn
    return fn


def decode_message(stream: Stream, kind: Kind, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """Decode and apply the time policy; raises CodecError (the message goes to dead letters)."""
    if kind is Kind.TELEMETRY:
        decoded = decode_telemetry(stream, payload, limits)
    else:
        if len(payload) > limits.max_bytes:
            raise CodecError("too_large", f"{len(payload)} bytes > {limits.max_bytes}")
        decoded = _binary_decoder(kind)(payload, now_ns)
    check_times(decoded, now_ns, limits)
    return decoded
