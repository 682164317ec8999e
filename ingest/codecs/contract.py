"""The decode contract every codec follows (``registry`` holds the table of codecs by topic kind).

A codec module declares ``KIND`` (its topic kind) and one entry point with the ``DecodeFn`` signature,
``decode_payload(stream, payload, now_ns, limits) -> Decoded``: the message's payload into records,
raising ``CodecError`` with a stable reason when it refuses it. The checks common to every kind (the
size limit before decoding, the time policy after) are applied by ``registry.decode_message``, once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from wulian.core.const import Stream
from wulian.core.model import Decoded
from wulian.ingest.codecs.errors import CodecError

_NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class PayloadLimits:
    """Time policy: readings stamped outside [now - past, now + future] are refused (clock faults)."""

    max_bytes: int = 256 * 1024
    max_records: int = 10_000
    future_tolerance_ns: int = 600 * _NS
    past_limit_ns: int = 3650 * 86400 * _NS


class DecodeFn(Protocol):
    """One codec's entry point: ``now_ns`` stamps frames that carry no time of their own (meters)."""

    def __call__(self, stream: Stream, payload: bytes, now_ns: int, limits: PayloadLimits, /) -> Decoded: ...


def check_size(payload: bytes, limits: PayloadLimits) -> None:
    if len(payload) > limits.max_bytes:
        raise CodecError("too_large", f"{len(payload)} bytes > {limits.max_bytes}")


def check_times(decoded: Decoded, now_ns: int, limits: PayloadLimits) -> None:
    """The time policy, for every kind of payload: refuse the message if any record is out of range."""
    hi = now_ns + limits.future_tolerance_ns
    lo = now_ns - limits.past_limit_ns
    for records in (decoded.readings, decoded.positions, decoded.traffic):
        for r in records:
            _check_time(r.ts_ns, now_ns, lo, hi)
    for ev in decoded.events:  # an event's own time (HJ 212 DataTime of a CN 2021 state) as well
        t = ev.get("ts_ns") if isinstance(ev, dict) else None
        if type(t) is int:
            _check_time(t, now_ns, lo, hi)


def _check_time(t: int, now_ns: int, lo: int, hi: int) -> None:
    if t > hi:
        raise CodecError("ts_in_future", f"{(t - now_ns) / _NS:.0f}s ahead")
    if t < lo:
        raise CodecError("ts_too_old", f"{(now_ns - t) / _NS / 86400:.0f} days old")
