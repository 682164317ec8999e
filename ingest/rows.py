"""Rows of one ingest batch, ready for the writer: what decoding produced, with registry ids resolved."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import orjson

from wulian.core.const import EVENT_KIND_PATTERN
from wulian.core.model import Decoded
from wulian.ingest.codecs.errors import CodecError

_EVENT_KIND_RE = re.compile(EVENT_KIND_PATTERN)
# The event's short code, when it has one: the gateway's answer (JT/T 808), the meter's error byte
# (DL/T 645) or status word ST (CJ/T 188). The first field present is the code.
EVENT_CODE_FIELDS = ("result", "error_code", "status")
MAX_EVENT_BYTES = 16_384  # one event's detail as JSON; codecs' events are a few hundred bytes


def pg_text(s: str) -> str:
    """A string PostgreSQL can store: no NUL, no lone surrogates (text columns and jsonb refuse both)."""
    if "\x00" in s:
        s = s.replace("\x00", "\ufffd")
    return s.encode("utf-8", "replace").decode("utf-8")


@dataclass(slots=True)
class DeadLetter:
    topic: str
    device_id: str | None
    kind: str | None
    reason: str
    detail: str
    payload: bytes


# One ``device_events`` row before the writer: (ts_ns, device_id, kind, code, detail as JSON text).
# The external device id, not the registry id: the writer joins ``devices``, so the gateways (which
# know only the external id) and ingest stage the same rows.
EventRow = tuple[int, str, str, str | None, str]


@dataclass(slots=True)
class ReadingColumns:
    """A batch's scalar readings as typed columns (struct of arrays), in batch order: the writer sorts
    and COPYs them in binary without a Python object per reading."""

    ts_ns: np.ndarray  # int64, Unix ns
    device: np.ndarray  # int32, devices.id
    metric: np.ndarray  # int32, metrics.id
    value: np.ndarray  # float64
    flag: np.ndarray  # uint8 letters when every flag is one ASCII letter (the data flags are), else str objects

    def __len__(self) -> int:
        return len(self.ts_ns)

    @classmethod
    def empty(cls) -> "ReadingColumns":
        return cls(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int32), np.empty(0, np.float64),
                   np.empty(0, np.uint8))

    @classmethod
    def from_runs(cls, run_ts: list[int], run_dev: list[int], run_flag: list[str], run_len: list[int],
                  metric: Iterable[int], value: list[float]) -> "ReadingColumns":
        """Columns from runs of readings sharing time, device and flag (one run per record); ``metric``
        and ``value`` have one entry per reading."""
        n = len(value)
        lens = np.asarray(run_len, np.int64)
        text = "".join(run_flag)
        if len(text) == len(run_flag) and text.isascii() and "" not in run_flag:  # each one ASCII letter
            flags = np.frombuffer(text.encode("ascii"), np.uint8)
        else:
            flags = np.array(run_flag, object)
        return cls(np.repeat(np.asarray(run_ts, np.int64), lens), np.repeat(np.asarray(run_dev, np.int32), lens),
                   np.fromiter(metric, np.int32, n), np.fromiter(value, np.float64, n), np.repeat(flags, lens))

    def records(self) -> list[tuple[int, int, int, float, str]]:
        """(ts_ns, device, metric, value, flag) tuples: the generic (text) COPY path."""
        flag = self.flag
        flags = (bytes(flag).decode("ascii") if flag.dtype == np.uint8 else flag.tolist())
        return list(zip(self.ts_ns.tolist(), self.device.tolist(), self.metric.tolist(), self.value.tolist(), flags))

    def take(self, order: np.ndarray) -> "ReadingColumns":
        return ReadingColumns(self.ts_ns[order], self.device[order], self.metric[order], self.value[order],
                              self.flag[order])


@dataclass(slots=True)
class BatchRows:
    readings: ReadingColumns = field(default_factory=ReadingColumns.empty)
    # (ts_ns, device, lat, lon, speed, heading, altitude, alarm_bits, status_bits, mileage, extra_json,
    #  protocol_edition)
    positions: list[tuple] = field(default_factory=list)
    # (ts_ns, device, speed, flow, occupancy)
    traffic: list[tuple[int, int, float, float | None, float | None]] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    last_seen: dict[int, int] = field(default_factory=dict)  # device -> newest ts_ns in this batch

    @property
    def n_records(self) -> int:
        return len(self.readings) + len(self.positions) + len(self.traffic) + len(self.events)


def _clean(value: object) -> object:
    """JSON-safe copy: strings PostgreSQL can store, bytes as hex, tuples as lists; anything else that
    is not JSON raises TypeError."""
    if isinstance(value, str):
        return pg_text(value)
    if isinstance(value, dict):
        return {pg_text(str(k)): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex().upper()
    if value is None or isinstance(value, (bool, int, float)):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON")


def _code(event: dict) -> str | None:
    for name in EVENT_CODE_FIELDS:
        value = event.get(name)
        if value is None or isinstance(value, bool):
            continue
        if isinstance(value, int):
            return f"{value:02X}"  # a protocol byte or word, as the standards write them
        return pg_text(str(value))[:32]
    return None


def event_row(device_id: str, event: object, default_ts_ns: int) -> EventRow:
    """One codec event as a row. Its time is its own ``ts_ns`` (HJ 212 DataTime, a meter's time), else
    ``default_ts_ns``; ``kind`` and ``ts_ns`` become columns, the rest is the detail. Raises CodecError
    ``bad_event`` for an event that cannot be stored (no kind, a time that is not an integer, a value
    that is not JSON, too large)."""
    if not isinstance(event, dict):
        raise CodecError("bad_event", f"event is a {type(event).__name__}, not an object")
    kind = event.get("kind")
    if not isinstance(kind, str) or not _EVENT_KIND_RE.match(kind):
        raise CodecError("bad_event", f"event kind {str(kind)[:80]!r} is not {EVENT_KIND_PATTERN}")
    ts = event.get("ts_ns")
    if ts is None:
        ts = default_ts_ns
    elif type(ts) is not int:
        raise CodecError("bad_event", f"{kind}: ts_ns {str(ts)[:40]!r} is not an integer")
    try:
        detail = orjson.dumps(_clean({k: v for k, v in event.items() if k not in ("kind", "ts_ns")}))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise CodecError("bad_event", f"{kind}: {exc}") from None
    if len(detail) > MAX_EVENT_BYTES:
        raise CodecError("bad_event", f"{kind}: {len(detail)} bytes of detail > {MAX_EVENT_BYTES}")
    return ts, device_id, kind, _code(event), detail.decode()


def event_rows(device_id: str, decoded: Decoded, received_ns: int) -> list[EventRow]:
    """A message's events as rows. An event without a time of its own takes its message's newest record
    time (HJ 212 values that were not numbers, JT/T 808 backfill), else the receive time."""
    if not decoded.events:
        return []
    newest = 0
    for records in (decoded.readings, decoded.positions, decoded.traffic):
        for r in records:
            if r.ts_ns > newest:
                newest = r.ts_ns
    default = newest or received_ns
    return [event_row(device_id, ev, default) for ev in decoded.events]
